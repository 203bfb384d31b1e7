//! `reseq worker` end to end against the local stand-ins (scripts/emulators.sh): SQS
//! queues on LocalStack, the staging table on DynamoDB Local, the real binary. Each test
//! makes its own table and queues, sends traffic, runs workers until they are idle
//! (`--exit-when-idle`), and checks what reached the output and the DLQ.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reseq_core::StagingStore;

mod common;
use common::emulators;
use common::sqs_worker::{Got, Msg, Setup, by_context, drain, finish, http_target, run_worker, send, summary_count};

async fn assert_nothing_waits(store: &reseq_dynamodb::DynamoStore, ends: &BTreeMap<String, u64>) {
    for (context, last) in ends {
        let state = store.load(context).await.unwrap().expect("context state");
        assert_eq!(state.next, last + 1, "context {context} ends at {last}");
        let waiting = store.staged(context, state.next, u64::MAX, 1).await.unwrap();
        assert!(waiting.is_empty(), "context {context} still has messages waiting");
    }
}

/// (a) The main case: 5,000 messages over 200 contexts from several producers, each
/// its own FIFO group, so a context's messages arrive interleaved and out of order; 2%
/// sent twice with new dedup ids. Every context reaches the output complete, in order and
/// once, nothing is left waiting, and the worker prints its DynamoDB write cost.
#[tokio::test]
async fn five_thousand_messages_from_several_producers_come_out_complete_in_order_once() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("a", 5).await;
    let (contexts, per_context, producers) = (200u64, 25u64, 5);
    let mut rng = SmallRng::seed_from_u64(4);
    // Each producer gets a random share of every context's positions, in its own order.
    let mut streams: Vec<Vec<Msg>> = vec![Vec::new(); producers];
    for c in 0..contexts {
        for seq in 1..=per_context {
            let producer = rng.random_range(0..producers);
            let msg = Msg::new(&format!("order-{c}"), seq, &format!("producer-{producer}"));
            streams[producer].push(msg);
        }
    }
    for stream in &mut streams {
        stream.shuffle(&mut rng);
        let copies: Vec<Msg> = stream.iter().filter(|_| rng.random_bool(0.02)).cloned().collect();
        for copy in copies {
            let at = rng.random_range(0..=stream.len());
            stream.insert(at, copy);
        }
    }
    // The producers publish side by side: their messages interleave on the queue.
    let mut all = Vec::new();
    let longest = streams.iter().map(Vec::len).max().unwrap();
    for i in (0..longest).step_by(10) {
        for stream in &streams {
            all.extend(stream.iter().skip(i).take(10).cloned());
        }
    }
    let sent = all.len();
    send(&setup.sqs, &setup.input, &all).await;

    let started = Instant::now();
    let (_, stderr) = run_worker(setup.worker(&setup.input, &["--receivers", "4"]));
    let elapsed = started.elapsed();
    let got = drain(&setup.sqs, &setup.output).await;
    let released = by_context(&got);
    assert_eq!(released.len(), contexts as usize);
    for (context, seqs) in &released {
        assert_eq!(seqs, &(1..=per_context).collect::<Vec<_>>(), "context {context}");
    }
    assert_eq!(
        summary_count(&stderr, "released"),
        contexts * per_context,
        "each position reached the handler once: {stderr}"
    );
    assert_eq!(summary_count(&stderr, "deleted"), sent as u64, "{stderr}");
    let ends = released.keys().map(|c| (c.clone(), per_context)).collect();
    assert_nothing_waits(&setup.store().await, &ends).await;
    assert!(
        drain(&setup.sqs, &setup.input).await.is_empty(),
        "the input queue is empty"
    );

    let cost = stderr
        .lines()
        .find(|l| l.contains("DynamoDB cost"))
        .expect("the worker prints its write cost");
    let report = format!(
        "e2e (a): {sent} messages ({} duplicates) over {contexts} contexts from {producers} FIFO groups, \
         worker with 4 receivers, {:.1}s\n{cost}\n",
        sent as u64 - contexts * per_context,
        elapsed.as_secs_f64()
    );
    eprintln!("{report}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-write-cost.txt");
    let _ = std::fs::write(target, report);
}

/// (b) Malformed messages reach the DLQ by redrive (the default), untouched; with
/// `--invalid dlq` the worker sends them there itself with reseqReason. Valid messages of
/// the same contexts are not held up.
#[tokio::test]
async fn malformed_messages_reach_the_dlq_and_valid_ones_of_their_contexts_go_through() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("b", 2).await;
    let mut messages: Vec<Msg> = (1..=5).map(|s| Msg::new("bad-neighbour", s, "g")).collect();
    let mut no_seq = Msg::new("bad-neighbour", 0, "g");
    no_seq.attributes.retain(|(name, _, _)| *name == "contextId");
    no_seq.body = "no sequence here".into();
    let mut bad_seq = Msg::new("bad-neighbour", 0, "g");
    bad_seq.attributes[1] = ("sequence", "String", "three".into());
    bad_seq.body = "a sequence that is not a number".into();
    messages.insert(1, no_seq);
    messages.insert(3, bad_seq);
    send(&setup.sqs, &setup.input, &messages).await;
    // Redrive: the invalid messages stay until SQS moves them (maxReceiveCount 2).
    let (_, stderr) = run_worker(setup.worker(&setup.input, &["--visibility-timeout", "1s"]));
    let released = by_context(&drain(&setup.sqs, &setup.output).await);
    assert_eq!(released["bad-neighbour"], vec![1, 2, 3, 4, 5], "{stderr}");
    let redriven = drain(&setup.sqs, &setup.dlq).await;
    let mut bodies: Vec<&str> = redriven.iter().map(|g| g.body.as_str()).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec!["a sequence that is not a number", "no sequence here"],
        "{stderr}"
    );
    assert!(
        redriven.iter().all(|g| !g.attributes.contains_key("reseqReason")),
        "moved by SQS, untouched"
    );

    // --invalid dlq: the worker dead-letters them itself, with the reason, at once.
    let mut more: Vec<Msg> = (6..=7).map(|s| Msg::new("bad-neighbour", s, "g")).collect();
    let mut bad = Msg::new("bad-neighbour", 0, "g");
    bad.attributes.truncate(1);
    bad.body = "missing again".into();
    more.insert(1, bad);
    send(&setup.sqs, &setup.input, &more).await;
    let (_, stderr) = run_worker(setup.worker(&setup.input, &["--invalid", "dlq"]));
    assert_eq!(summary_count(&stderr, "invalid"), 1, "{stderr}");
    let released = by_context(&drain(&setup.sqs, &setup.output).await);
    assert_eq!(released["bad-neighbour"], vec![6, 7]);
    let letters = drain(&setup.sqs, &setup.dlq).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].body, "missing again");
    assert_eq!(letters[0].attributes["reseqReason"], "missing-sequence");
    assert!(!letters[0].attributes["reseqDetail"].is_empty());
}

/// (c) Three workers on a standard queue (no order at all, any worker any message) over
/// the same contexts: the per-context lease keeps order and completeness.
#[tokio::test]
async fn three_workers_on_a_standard_queue_keep_every_context_in_order() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("c", 5).await;
    let queue = setup.standard_queue("std").await;
    let (contexts, per_context) = (30u64, 20u64);
    let mut rng = SmallRng::seed_from_u64(7);
    let mut all: Vec<Msg> = (0..contexts)
        .flat_map(|c| (1..=per_context).map(move |s| Msg::new(&format!("acct-{c}"), s, "")))
        .collect();
    all.shuffle(&mut rng);
    send(&setup.sqs, &queue, &all).await;
    // Each worker prints what it releases: every release of every worker is seen, so a
    // position released twice, or after a later one, cannot hide behind the output
    // queue's deduplication.
    let workers: Vec<Child> = (0..3)
        .map(|_| {
            setup
                .worker_to(&queue, "stdout", &["--receivers", "2"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a worker")
        })
        .collect();
    let outputs: Vec<(String, String)> = workers.into_iter().map(finish).collect();
    let summaries: Vec<&str> = outputs.iter().map(|(_, stderr)| stderr.as_str()).collect();
    let mut releases: BTreeMap<String, Vec<(u64, Option<u64>)>> = BTreeMap::new();
    for (stdout, _) in &outputs {
        for line in stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let context = v["contextId"].as_str().unwrap().to_string();
            releases
                .entry(context)
                .or_default()
                .push((v["sequence"].as_u64().unwrap(), v["prevSequence"].as_u64()));
        }
    }
    assert_eq!(releases.len(), contexts as usize);
    for (context, seen) in &mut releases {
        seen.sort();
        // Once each, and each released right after its predecessor: the workers' lines
        // interleave arbitrarily, but `prevSequence` records what the context had released.
        let expected: Vec<(u64, Option<u64>)> = (1..=per_context).map(|s| (s, (s > 1).then(|| s - 1))).collect();
        assert_eq!(seen, &expected, "context {context}: {summaries:?}");
    }
    let released: u64 = summaries.iter().map(|s| summary_count(s, "released")).sum();
    assert_eq!(
        released,
        contexts * per_context,
        "once across the workers: {summaries:?}"
    );
    assert!(
        summaries.iter().filter(|s| summary_count(s, "released") > 0).count() >= 2,
        "the work was shared: {summaries:?}"
    );
    let ends = releases.keys().map(|c| (c.clone(), per_context)).collect();
    assert_nothing_waits(&setup.store().await, &ends).await;
}

/// (d) A worker killed with SIGKILL mid-run, then restarted: nothing is lost and nothing is
/// released out of order. The kill may repeat the run that was in flight; the output
/// queue's dedup id (`<context>:<seq>`) drops such a repeat.
#[tokio::test]
async fn a_worker_killed_mid_run_and_restarted_loses_nothing_and_keeps_order() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("d", 10).await;
    let (contexts, per_context) = (40u64, 25u64);
    let mut rng = SmallRng::seed_from_u64(11);
    let mut all: Vec<Msg> = (0..contexts)
        .flat_map(|c| (1..=per_context).map(move |s| Msg::new(&format!("kill-{c}"), s, &format!("p{}", s % 3))))
        .collect();
    all.shuffle(&mut rng);
    send(&setup.sqs, &setup.input, &all).await;
    // Short lease and visibility: the restarted worker takes over the dead one's contexts
    // and messages within seconds.
    let quick = [
        "--lease-duration",
        "4s",
        "--visibility-timeout",
        "3s",
        "--receivers",
        "2",
    ];
    let mut first = setup
        .worker(&setup.input, &quick)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the worker");
    // Kill it once part of the output is out.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = setup
            .sqs
            .get_queue_attributes()
            .queue_url(&setup.output)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
        let n: u64 = out
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages).cloned())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if n >= 150 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill().expect("SIGKILL the worker");
    let _ = first.wait();
    let (_, stderr) = run_worker(setup.worker(&setup.input, &quick));
    let got = by_context(&drain(&setup.sqs, &setup.output).await);
    assert_eq!(got.len(), contexts as usize, "{stderr}");
    for (context, seqs) in &got {
        assert_eq!(
            seqs,
            &(1..=per_context).collect::<Vec<_>>(),
            "context {context}: {stderr}"
        );
    }
    let ends = got.keys().map(|c| (c.clone(), per_context)).collect();
    assert_nothing_waits(&setup.store().await, &ends).await;
}

/// (e) A handler that fails permanently: `--on-poison block` holds the context at that
/// message (nothing after it is released); `--on-poison skip` dead-letters it as
/// handler-failed and moves on. Other contexts are unaffected either way.
#[tokio::test]
async fn a_permanent_handler_failure_blocks_the_context_or_is_skipped_to_the_dlq() {
    if emulators().is_none() {
        return;
    }
    for policy in ["block", "skip"] {
        let setup = Setup::new(&format!("e{policy}"), 5).await;
        let mut messages = Vec::new();
        for seq in 1..=4 {
            let mut m = Msg::new("sick", seq, "g1");
            if seq == 2 {
                m.body = "{\"poison\":true}".into();
            }
            messages.push(m);
            messages.push(Msg::new("healthy", seq, "g2"));
        }
        send(&setup.sqs, &setup.input, &messages).await;
        let (url, accepted) = http_target(Duration::ZERO);
        let (_, stderr) = run_worker(setup.worker_to(&setup.input, &url, &["--on-poison", policy]));
        let accepted = accepted.lock().unwrap().clone();
        let seqs = |ctx: &str| -> Vec<u64> { accepted.iter().filter(|(c, _)| c == ctx).map(|(_, s)| *s).collect() };
        assert_eq!(seqs("healthy"), vec![1, 2, 3, 4], "{policy}: {stderr}");
        let letters = drain(&setup.sqs, &setup.dlq).await;
        let state = setup.store().await.load("sick").await.unwrap().expect("state");
        if policy == "block" {
            assert_eq!(
                seqs("sick"),
                vec![1],
                "block: nothing after the poison message: {stderr}"
            );
            assert_eq!(state.blocked.as_ref().map(|b| b.seq), Some(2), "blocked at 2");
            assert!(letters.is_empty());
        } else {
            assert_eq!(seqs("sick"), vec![1, 3, 4], "skip: the context moves on: {stderr}");
            assert_eq!(letters.len(), 1, "{stderr}");
            assert_eq!(letters[0].attributes["reseqReason"], "handler-failed");
            assert!(letters[0].attributes["reseqDetail"].contains("400"), "{:?}", letters[0]);
            assert_eq!(state.next, 5);
        }
    }
}

/// (f) A gap that is never filled is skipped after --gap-timeout although no new message
/// arrives for that context: the worker's timer sweep fires it. Output on stdout.
#[tokio::test]
async fn a_gap_never_filled_is_skipped_after_the_gap_timeout_without_new_traffic() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("f", 5).await;
    let messages: Vec<Msg> = [1, 2, 4, 5].iter().map(|&s| Msg::new("gappy", s, "g")).collect();
    send(&setup.sqs, &setup.input, &messages).await;
    let mut worker = Command::new(env!("CARGO_BIN_EXE_reseq"));
    worker
        .args([
            "worker",
            "--queue-url",
            &setup.input,
            "--table",
            &setup.name,
            "--output",
            "stdout",
        ])
        .args([
            "--wait-time",
            "1s",
            "--sweep-every",
            "500ms",
            "--exit-when-idle",
            "4s",
            "--gap-timeout",
            "2s",
        ])
        .env("RUST_LOG", "warn");
    let started = Instant::now();
    let (stdout, stderr) = run_worker(worker);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<u64> = lines.iter().map(|v| v["sequence"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 4, 5], "{stderr}");
    assert_eq!(lines[2]["prevSequence"], 2);
    assert_eq!(summary_count(&stderr, "gaps skipped"), 1, "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the gap timeout"
    );
    let state = setup.store().await.load("gappy").await.unwrap().expect("state");
    assert_eq!(state.next, 6);
    assert!(state.is_skipped(3));
}

/// SIGTERM while a batch is in flight: the worker stops receiving, finishes that batch
/// (its messages are released, committed, then deleted) and exits 0. Nothing it did not
/// finish is deleted: every message is either released or still on the queue.
#[tokio::test]
async fn sigterm_lets_the_batch_in_flight_finish_and_deletes_nothing_half_done() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("term", 5).await;
    let messages: Vec<Msg> = (1..=30).map(|s| Msg::new("slow", s, "g")).collect();
    send(&setup.sqs, &setup.input, &messages).await;
    // A slow downstream: each release takes 300 ms, so a batch of 10 takes 3 s.
    let (url, accepted) = http_target(Duration::from_millis(300));
    let mut worker = setup.worker_to(&setup.input, &url, &["--receivers", "1", "--visibility-timeout", "2s"]);
    let child = worker
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the worker");
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let (_, stderr) = finish(child);
    assert!(stderr.contains("stopped (signal)"), "{stderr}");
    let released: Vec<u64> = accepted.lock().unwrap().iter().map(|(_, s)| *s).collect();
    assert!(
        !released.is_empty() && released.len() < 30,
        "stopped mid-run: {released:?}"
    );
    assert_eq!(released, (1..=released.len() as u64).collect::<Vec<_>>(), "in order");
    assert_eq!(
        summary_count(&stderr, "deleted"),
        released.len() as u64,
        "only what was released: {stderr}"
    );
    // What was not released is still on the queue (after its visibility timeout).
    let left: Vec<u64> = drain(&setup.sqs, &setup.input).await.iter().map(Got::seq).collect();
    let mut all = released.clone();
    all.extend(&left);
    all.sort();
    assert_eq!(
        all,
        (1..=30).collect::<Vec<_>>(),
        "nothing lost: released {released:?}, left {left:?}"
    );
}

/// A batch that takes longer than the visibility timeout: the worker extends the
/// messages' visibility while the handler runs, so SQS never hands them to the other
/// receive loop meanwhile (each message is received once).
#[tokio::test]
async fn sigterm_during_start_up_stops_the_worker_cleanly() {
    // Found by the kill -9 runs: a SIGTERM before the handler was installed killed the
    // worker (exit 143, no summary).
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("term-start", 1).await;
    let (url, _accepted) = http_target(Duration::ZERO);
    let child = setup
        .worker_to(&setup.input, &url, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the worker");
    // As soon as the worker catches SIGTERM (its first act), while it is still connecting:
    // a fixed sleep raced the loading of the binary on a busy machine.
    let caught = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                let mask = status
                    .lines()
                    .find_map(|l| l.strip_prefix("SigCgt:"))?
                    .trim()
                    .to_string();
                u64::from_str_radix(&mask, 16).ok()
            })
            .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
    };
    let started = std::time::Instant::now();
    while !caught(child.id()) && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    // `finish` asserts exit code 0.
    let (_, stderr) = finish(child);
    assert!(stderr.contains("stopped (signal)"), "{stderr}");
}

#[tokio::test]
async fn visibility_is_extended_while_a_slow_batch_runs() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("vis", 5).await;
    let messages: Vec<Msg> = (1..=20).map(|s| Msg::new("slow", s, "g")).collect();
    send(&setup.sqs, &setup.input, &messages).await;
    // 200 ms per release: a batch of 10 takes 2 s, twice the 1 s visibility timeout.
    let (url, accepted) = http_target(Duration::from_millis(200));
    let worker = setup.worker_to(&setup.input, &url, &["--receivers", "2", "--visibility-timeout", "1s"]);
    let (_, stderr) = run_worker(worker);
    let released: Vec<u64> = accepted.lock().unwrap().iter().map(|(_, s)| *s).collect();
    assert_eq!(released, (1..=20).collect::<Vec<_>>(), "{stderr}");
    assert_eq!(
        summary_count(&stderr, "received"),
        20,
        "no message came back while in flight: {stderr}"
    );
    assert_eq!(summary_count(&stderr, "duplicates"), 0, "{stderr}");
}

/// A standard queue of this test's own with a standard DLQ behind a redrive policy of
/// `max_receive_count`; returns (queue, dlq).
async fn standard_with_redrive(setup: &Setup, suffix: &str, max_receive_count: u32) -> (String, String) {
    let dlq = setup.standard_queue(&format!("{suffix}-dlq")).await;
    let arn = setup
        .sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("the DLQ's ARN")
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .expect("an ARN");
    let queue = setup.standard_queue(suffix).await;
    let policy = format!("{{\"deadLetterTargetArn\":\"{arn}\",\"maxReceiveCount\":\"{max_receive_count}\"}}");
    setup
        .sqs
        .set_queue_attributes()
        .queue_url(&queue)
        .attributes(QueueAttributeName::RedrivePolicy, policy)
        .send()
        .await
        .expect("set the redrive policy");
    (queue, dlq)
}

/// Positions 100–110 of a context, then 1, then 2..99: with `--max-staged 2` the first
/// eleven are held back (capacity) again and again. Held messages come back after 1 s
/// (not a visibility timeout), and once received `stage_held_after` times — lowered below
/// the queue's `maxReceiveCount` (3) — they are staged anyway, so the message that moves
/// the cursor gets through and the redrive never moves a valid message to the DLQ.
async fn held_messages_do_not_block_or_get_redriven(setup: &Setup, queue: &str, dlq: &str) {
    let group = if queue.ends_with(".fifo") { "one-group" } else { "" };
    let mut messages: Vec<Msg> = (100..=110).map(|s| Msg::new("held", s, group)).collect();
    messages.push(Msg::new("held", 1, group));
    messages.extend((2..=99).map(|s| Msg::new("held", s, group)));
    send(&setup.sqs, queue, &messages).await;
    let (_, stderr) = run_worker(setup.worker(queue, &["--max-staged", "2"]));
    let released = by_context(&drain(&setup.sqs, &setup.output).await);
    assert_eq!(
        released.get("held"),
        Some(&(1..=110).collect::<Vec<u64>>()),
        "complete and in order: {stderr}"
    );
    let redriven = drain(&setup.sqs, dlq).await;
    assert!(
        redriven.is_empty(),
        "nothing valid was redriven: {} messages; {stderr}",
        redriven.len()
    );
    assert!(
        drain(&setup.sqs, queue).await.is_empty(),
        "the input queue is empty: {stderr}"
    );
}

#[tokio::test]
async fn held_messages_never_deadlock_a_fifo_group_nor_reach_its_dlq() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("held-fifo", 3).await;
    held_messages_do_not_block_or_get_redriven(&setup, &setup.input, &setup.dlq).await;
}

#[tokio::test]
async fn held_messages_on_a_standard_queue_are_staged_before_the_redrive_moves_them() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("held-std", 3).await;
    let (queue, dlq) = standard_with_redrive(&setup, "held", 3).await;
    held_messages_do_not_block_or_get_redriven(&setup, &queue, &dlq).await;
}

/// Without `--visibility-timeout` the worker receives with the queue's own (30 s here),
/// yet an invalid message under `--invalid redrive` is given back at once: the redrive
/// moves it after `maxReceiveCount` quick receives, while the worker runs, not after as
/// many visibility timeouts.
#[tokio::test]
async fn an_invalid_message_is_given_back_at_once_so_the_redrive_moves_it_quickly() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("inv-quick", 2).await;
    let mut invalid = Msg::new("quick", 0, "g");
    invalid.attributes.truncate(1);
    invalid.body = "no sequence".into();
    send(&setup.sqs, &setup.input, &[invalid, Msg::new("quick", 1, "g")]).await;
    let (_, stderr) = run_worker(setup.worker(&setup.input, &[]));
    let redriven = drain(&setup.sqs, &setup.dlq).await;
    assert_eq!(
        redriven.iter().map(|g| g.body.as_str()).collect::<Vec<_>>(),
        vec!["no sequence"],
        "{stderr}"
    );
    let released = by_context(&drain(&setup.sqs, &setup.output).await);
    assert_eq!(released["quick"], vec![1], "{stderr}");
}
