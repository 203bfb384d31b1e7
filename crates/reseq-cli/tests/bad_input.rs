//! Bad input (SPEC §7), one test per reason, through `reseq run` and through `reseq worker`
//! (docs/RELIABILITY.md, "Bad input"). Each checks the reason, that the rejected line or
//! message is kept byte for byte, one clear log line naming it, and that nothing else was
//! lost.
//!
//! `reseq run` covers `invalid-json`, `missing-context-id`, `invalid-context-id`,
//! `missing-sequence`, `invalid-sequence`, `too-large`, `conflict`, `late` and `expired`.
//! It cannot produce `handler-failed`: its handler writes the line to stdout, and a write
//! error is not the line's fault (it is retried, then the run stops with an error) — no
//! line is ever poison there.
//!
//! `reseq worker` (one test, [`worker_dead_letters_every_reason_and_releases_the_rest`],
//! against LocalStack and DynamoDB Local with `--invalid dlq`) covers all of those and
//! `handler-failed` (`--on-poison skip`, an HTTP output answering 400). Its `too-large` is
//! a body over DynamoDB's item limit (incompressible, 700 KB) that arrives early and must
//! be staged: the extractor's own limit (1 MiB, SQS's) cannot be exceeded through SQS.
//!
//! `missing-type` and `unknown-type` belong to typed sequences (SPEC §5), which reseq does
//! not implement yet: no path can produce them, so neither is tested here.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::reseq_run::*;
use common::sqs_worker::{Msg, Setup, drain, http_target, run_worker, send};
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// The one DLQ record of `dlq`, checked: its reason, its line number and its input byte
/// for byte.
fn the_record(dlq: &Path, reason: &str, line: u64, input: &str) -> Value {
    let records = dlq_records(dlq);
    assert_eq!(reasons(&records), [reason], "DLQ records: {records:?}");
    let record = records.into_iter().next().unwrap();
    assert_record_shape(&record);
    assert_eq!(record["line"], line, "{reason}: line number: {record}");
    assert!(
        record["input"].as_str() == Some(input),
        "{reason}: the DLQ record keeps the line byte for byte: {record}"
    );
    record
}

/// The summary on stderr names the reason and its count.
fn assert_stderr_names(stderr: &str, reason: &str) {
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("reseq run: "))
        .unwrap_or_else(|| panic!("no summary on stderr:\n{stderr}"));
    assert!(
        summary.contains(&format!("dead-lettered: {reason} 1")),
        "the summary names {reason}: {summary}"
    );
}

/// Every line of `expected` came out on stdout, once, in this order.
fn assert_released(got: &Finished, expected: &[String], reason: &str) {
    assert_eq!(
        got.stdout_text(),
        lines(expected),
        "{reason}: every other line came out (nothing lost)"
    );
}

/// `bad` between two contexts' valid lines: the valid ones all come out, `bad` is
/// dead-lettered with `reason`.
fn one_bad_line(reason: &str, bad: &str, args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("bad.dlq");
    let input = [msg("a", 1), msg("b", 1), bad.to_string(), msg("a", 2), msg("b", 2)];
    let mut all_args = vec!["--dlq", path_str(&dlq)];
    all_args.extend_from_slice(args);
    let got = run(&all_args, lines(&input).as_bytes());
    got.assert_success(reason);
    the_record(&dlq, reason, 3, bad);
    assert_stderr_names(&got.stderr, reason);
    assert_released(&got, &[msg("a", 1), msg("b", 1), msg("a", 2), msg("b", 2)], reason);
}

#[test]
fn invalid_json() {
    one_bad_line("invalid-json", r#"{"contextId":"a","sequence":3"#, &[]);
}

#[test]
fn missing_context_id() {
    one_bad_line("missing-context-id", r#"{"sequence":3}"#, &[]);
}

#[test]
fn invalid_context_id() {
    one_bad_line("invalid-context-id", r#"{"contextId":{"id":"a"},"sequence":3}"#, &[]);
}

#[test]
fn missing_sequence() {
    one_bad_line("missing-sequence", r#"{"contextId":"a"}"#, &[]);
}

#[test]
fn invalid_sequence() {
    one_bad_line("invalid-sequence", r#"{"contextId":"a","sequence":"3rd"}"#, &[]);
}

#[test]
fn too_large() {
    // One byte over SQS's 1 MiB message limit, the extractor's limit.
    let prefix = r#"{"contextId":"a","sequence":3,"pad":""#;
    let pad = "x".repeat(1024 * 1024 + 1 - prefix.len() - 2);
    let bad = format!("{prefix}{pad}\"}}");
    assert_eq!(bad.len(), 1024 * 1024 + 1);
    one_bad_line("too-large", &bad, &[]);
}

#[test]
fn conflict() {
    // Position 2 of `a` waits for 1; a second copy with another body conflicts (the first
    // copy wins and comes out).
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("conflict.dlq");
    let first = msg_body("a", 2, "first");
    let second = msg_body("a", 2, "second");
    let input = [first.clone(), second.clone(), msg("a", 1), msg("b", 1)];
    let got = run(&["--dlq", path_str(&dlq)], lines(&input).as_bytes());
    got.assert_success("conflict");
    the_record(&dlq, "conflict", 2, &second);
    assert_stderr_names(&got.stderr, "conflict");
    assert_released(&got, &[msg("a", 1), first, msg("b", 1)], "conflict");
}

#[test]
fn late() {
    // With --gap-timeout 0s, a:2 skips the missing a:1 at once; a:1 then arrives late.
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("late.dlq");
    let input = [msg("a", 2), msg("b", 1), msg("a", 1), msg("a", 3)];
    let got = run(
        &["--gap-timeout", "0s", "--dlq", path_str(&dlq)],
        lines(&input).as_bytes(),
    );
    got.assert_success("late");
    the_record(&dlq, "late", 3, &msg("a", 1));
    assert_stderr_names(&got.stderr, "late");
    assert_released(&got, &[msg("a", 2), msg("b", 1), msg("a", 3)], "late");
}

#[test]
fn expired() {
    // A first run stages a:2 (waiting for a:1) in the state file; it waits longer than
    // --retention, and the next run on the same state dead-letters it as expired.
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.db");
    let dlq = tmp.path().join("expired.dlq");
    let args = [
        "--state",
        path_str(&state),
        "--retention",
        "1s",
        "--dlq",
        path_str(&dlq),
    ];
    let first = run(&args, lines(&[msg("b", 1), msg("a", 2)]).as_bytes());
    first.assert_success("expired, first run");
    assert_released(&first, &[msg("b", 1)], "expired, first run");
    assert!(dlq_records(&dlq).is_empty(), "a:2 waits: {:?}", dlq_records(&dlq));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let second = run(&args, lines(&[msg("b", 2)]).as_bytes());
    second.assert_success("expired, second run");
    // The record names the line of the run that brought it.
    the_record(&dlq, "expired", 2, &msg("a", 2));
    assert_stderr_names(&second.stderr, "expired");
    assert_released(&second, &[msg("b", 2)], "expired, second run");
}

// ---------------------------------------------------------------------------------------
// reseq worker

/// One message per reason (each in a context and FIFO group of its own, with valid
/// neighbours), through three worker runs on one table:
/// 1. everything but what needs a later message or a short retention;
/// 2. `too-large`'s neighbours, after its position 2 was refused for staging;
/// 3. `expired`, with `--retention 2s`.
///
/// Then: the DLQ holds exactly one message per reason, with `reseqReason` and the body
/// byte for byte; the worker's stderr has a line naming its message id and the reason;
/// every valid message reached the output.
/// More than the workers' `--wait-time`.
const LONG_POLL_DRAIN: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn worker_dead_letters_every_reason_and_releases_the_rest() {
    if common::emulators().is_none() {
        return;
    }
    let setup = Setup::new("bad", 5).await;
    let (url, accepted) = http_target(Duration::ZERO);
    let args = [
        "--invalid",
        "dlq",
        "--on-poison",
        "skip",
        "--context-path",
        "/contextId",
        "--seq-path",
        "/sequence",
    ];

    // Bad message per reason: (reason, message); valid ones: (context, positions).
    let mut bad: Vec<(&str, Msg)> = Vec::new();
    let mut valid: Vec<Msg> = (1..=3).map(|s| Msg::new("healthy", s, "healthy")).collect();
    bad.push(("invalid-json", Msg::body_only(r#"{"contextId":"j","sequence":1"#, "j")));
    bad.push(("missing-context-id", Msg::body_only(r#"{"sequence":1}"#, "mc")));
    bad.push((
        "invalid-context-id",
        Msg::body_only(r#"{"contextId":{"id":1},"sequence":1}"#, "ic"),
    ));
    let mut no_seq = Msg::new("ms", 0, "ms");
    no_seq.attributes.truncate(1);
    no_seq.body = r#"{"note":"no sequence"}"#.into();
    bad.push(("missing-sequence", no_seq));
    let mut bad_seq = Msg::new("is", 0, "is");
    bad_seq.attributes[1] = ("sequence", "String", "three".into());
    bad_seq.body = r#"{"note":"sequence three"}"#.into();
    bad.push(("invalid-sequence", bad_seq));
    // conflict: a second copy of a waiting position with another body.
    let mut first = Msg::new("conflict", 2, "conflict");
    first.body = r#"{"copy":"first"}"#.into();
    let mut second = first.clone();
    second.body = r#"{"copy":"second"}"#.into();
    // late: a position after the final one.
    let mut last = Msg::new("late", 1, "late");
    last.attributes.push(("final", "String", "true".into()));
    // handler-failed: the output refuses the body for good.
    let mut poison = Msg::new("sick", 1, "sick");
    poison.body = r#"{"poison":true}"#.into();
    // too-large: position 2 arrives before 1 and cannot be staged (over 400 KB even
    // compressed).
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let noise: String = (0..700_000)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect();
    let mut big = Msg::new("too-large", 2, "too-large");
    big.body = noise;

    let mut phase1: Vec<Msg> = valid.clone();
    for (_, m) in &bad {
        phase1.push(m.clone());
    }
    phase1.extend([first.clone(), second.clone(), Msg::new("conflict", 1, "conflict")]);
    phase1.extend([last.clone(), Msg::new("late", 2, "late")]);
    phase1.extend([poison.clone(), Msg::new("sick", 2, "sick")]);
    valid.extend([Msg::new("conflict", 1, "conflict"), first.clone(), last.clone()]);
    valid.push(Msg::new("sick", 2, "sick"));
    bad.push(("conflict", second));
    bad.push(("late", Msg::new("late", 2, "late")));
    bad.push(("handler-failed", poison));

    let mut ids: BTreeMap<&str, String> = BTreeMap::new();
    let sent = send(&setup.sqs, &setup.input, &phase1).await;
    let big_id = send(&setup.sqs, &setup.input, std::slice::from_ref(&big)).await;
    for (reason, m) in &bad {
        let at = phase1
            .iter()
            .rposition(|p| p.body == m.body && p.attributes == m.attributes);
        ids.insert(reason, sent[at.expect("sent")].clone());
    }
    ids.insert("too-large", big_id[0].clone());
    bad.push(("too-large", big));
    let (_, mut stderr) = run_worker(setup.worker_to(&setup.input, &url, &args));

    // A worker that stopped on idle leaves its last long poll (--wait-time 1s) pending at
    // SQS, which would take (and hide for the visibility timeout) what is sent at once.
    tokio::time::sleep(LONG_POLL_DRAIN).await;

    // 2. too-large's neighbours: 1 is released, 2 was skipped, 3 follows.
    let neighbours = [
        Msg::new("too-large", 1, "too-large"),
        Msg::new("too-large", 3, "too-large"),
    ];
    send(&setup.sqs, &setup.input, &neighbours).await;
    valid.extend(neighbours);
    stderr += &run_worker(setup.worker_to(&setup.input, &url, &args)).1;

    tokio::time::sleep(LONG_POLL_DRAIN).await;

    // 3. expired: position 2 waits for a 1 that never comes, longer than --retention.
    let waits = Msg::new("expired", 2, "expired");
    let expired_id = send(
        &setup.sqs,
        &setup.input,
        &[waits.clone(), Msg::new("healthy", 4, "healthy")],
    )
    .await;
    valid.push(Msg::new("healthy", 4, "healthy"));
    ids.insert("expired", expired_id[0].clone());
    bad.push(("expired", waits));
    let mut short = args.to_vec();
    short.extend(["--retention", "2s"]);
    let started = Instant::now();
    stderr += &run_worker(setup.worker_to(&setup.input, &url, &short)).1;
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the worker outlived the retention"
    );

    // The DLQ: one message per reason, body byte for byte.
    let letters = drain(&setup.sqs, &setup.dlq).await;
    let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in &letters {
        let reason = l.attributes.get("reseqReason").cloned().unwrap_or_default();
        by_reason.entry(reason).or_default().push(l.body.clone());
    }
    let mut failures = Vec::new();
    for (reason, m) in &bad {
        let id = &ids[reason];
        match by_reason.get(*reason).map(Vec::as_slice) {
            Some([body]) if *body == m.body => {}
            Some([body]) => failures.push(format!(
                "{reason}: the DLQ body differs (got {} bytes, sent {})",
                body.len(),
                m.body.len()
            )),
            Some(more) => failures.push(format!("{reason}: {} DLQ messages, want 1", more.len())),
            None => failures.push(format!("{reason}: no DLQ message with reseqReason={reason}")),
        }
        let logged = stderr.lines().any(|l| l.contains(id.as_str()) && l.contains(reason));
        if !logged {
            failures.push(format!("{reason}: no stderr line names message {id} and the reason"));
        }
    }
    let expected_reasons: Vec<&str> = bad.iter().map(|(r, _)| *r).collect();
    for reason in by_reason.keys() {
        if !expected_reasons.contains(&reason.as_str()) {
            failures.push(format!("unexpected DLQ reason {reason:?}: {:?}", by_reason[reason]));
        }
    }

    // Every valid message came out, once.
    let mut want: Vec<(String, u64)> = valid
        .iter()
        .map(|m| (m.attributes[0].2.clone(), m.attributes[1].2.parse().unwrap()))
        .collect();
    want.sort();
    let mut got: Vec<(String, u64)> = accepted.lock().unwrap().iter().map(|(c, s)| (c.clone(), *s)).collect();
    got.sort();
    if got != want {
        failures.push(format!("released {got:?}, want {want:?}"));
    }
    assert!(
        failures.is_empty(),
        "{}\n\nworker stderr:\n{stderr}",
        failures.join("\n")
    );
}
