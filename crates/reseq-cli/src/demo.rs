//! `reseq demo`: generated out-of-order traffic through the engine on the embedded store,
//! with a progress bar and a report that verifies what was released. Time is simulated
//! (the clock advances a millisecond every 20 messages), so gap timeouts fire without
//! waiting and every run with the same seed makes the same decisions.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use reseq_core::testing::RecordingDlq;
use reseq_core::{
    Clock, Duration, Engine, EngineConfig, Envelope, Handler, HandlerError, ManualClock, Millis, Reason, Release,
    StagingStore,
};
use reseq_sqlite::SqliteStore;

use crate::traffic::{Traffic, TrafficSpec, context_id, json_line};

#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// How many contexts.
    #[arg(long, env = "RESEQ_CONTEXTS", default_value_t = 1_000)]
    pub contexts: usize,
    /// How many messages in all (before duplicates).
    #[arg(long, env = "RESEQ_MESSAGES", default_value_t = 100_000)]
    pub messages: usize,
    /// Each context's positions are shuffled in blocks of this many.
    #[arg(long, env = "RESEQ_WINDOW", default_value_t = 32)]
    pub window: usize,
    /// Fraction of messages sent twice.
    #[arg(long, env = "RESEQ_DUPLICATES", default_value_t = 0.02)]
    pub duplicates: f64,
    /// Fraction of positions never sent on time.
    #[arg(long, env = "RESEQ_MISSING", default_value_t = 0.001)]
    pub missing: f64,
    /// Simulated gap timeout after which missing positions are skipped.
    #[arg(long, env = "RESEQ_GAP_TIMEOUT", default_value = "5s")]
    pub gap_timeout: Duration,
    /// Messages per engine batch.
    #[arg(long, env = "RESEQ_BATCH", default_value_t = 100)]
    pub batch: usize,
    #[arg(long, env = "RESEQ_SEED", default_value_t = 42)]
    pub seed: u64,
    /// SQLite file to stage in (kept afterwards). Default: a temporary file.
    #[arg(long, env = "RESEQ_STATE")]
    pub state: Option<PathBuf>,
}

/// Simulated arrival rate: 20 messages per millisecond.
const MESSAGES_PER_MS: u64 = 20;

pub fn main(args: DemoArgs) -> Result<ExitCode> {
    let spec = TrafficSpec {
        contexts: args.contexts,
        messages: args.messages,
        window: args.window,
        duplicates: args.duplicates,
        missing: args.missing,
        late: 0.5,
        seed: args.seed,
    };
    eprintln!(
        "reseq demo: {} messages over {} contexts, shuffled in windows of {}, {:.1}% duplicates, {:.2}% missing",
        args.messages,
        args.contexts,
        args.window,
        args.duplicates * 100.0,
        args.missing * 100.0
    );
    let traffic = spec.generate();
    let tempdir = tempfile::tempdir().context("cannot create a temporary directory for the demo's state")?;
    let path = args.state.clone().unwrap_or_else(|| tempdir.path().join("demo.db"));
    let store = SqliteStore::open(&path).with_context(|| format!("cannot open the demo state {}", path.display()))?;
    let clock = Arc::new(ManualClock::new(Millis(1_700_000_000_000)));
    let config = EngineConfig {
        gap_timeout: Some(args.gap_timeout),
        ..EngineConfig::default()
    };
    let engine = Engine::new(store, clock.clone(), config);
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let verifier = Verifier::default();
    let dlq = RecordingDlq::new();

    let total = (traffic.stream.len() + traffic.stragglers.len()) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} messages {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    runtime.block_on(async {
        let batch_size = args.batch.max(1);
        let mut sent = 0u64;
        for (round, chunk) in traffic.stream.chunks(batch_size).enumerate() {
            let batch = chunk
                .iter()
                .map(|m| {
                    sent += 1;
                    if sent.is_multiple_of(MESSAGES_PER_MS) {
                        clock.advance(Duration::from_millis(1));
                    }
                    envelope(*m, clock.now())
                })
                .collect();
            let outcomes = engine.process(batch, &verifier, &dlq).await;
            anyhow::ensure!(
                outcomes.iter().all(|o| o.is_settled()),
                "unsettled outcome: {outcomes:?}"
            );
            if round % 10 == 0 {
                engine.sweep(&verifier, &dlq, 10_000).await?;
                engine.store().flush().await?;
            }
            bar.inc(chunk.len() as u64);
        }
        // Let every gap time out, then send the stragglers: they are late now.
        clock.advance(args.gap_timeout);
        while engine.sweep(&verifier, &dlq, 10_000).await? == 10_000 {}
        let stragglers = traffic.stragglers.iter().map(|m| envelope(*m, clock.now())).collect();
        engine.process(stragglers, &verifier, &dlq).await;
        bar.inc(traffic.stragglers.len() as u64);
        engine.store().flush().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();

    let problems = runtime.block_on(verify(&engine, &traffic, &verifier, &dlq))?;
    let stats = engine.stats();
    println!("reseq demo report");
    println!("  messages sent      {:>10}", total);
    println!("  contexts           {:>10}", args.contexts);
    println!("  released           {:>10}", stats.released);
    println!("  duplicates dropped {:>10}", stats.duplicates);
    println!("  staged (waited)    {:>10}", stats.staged);
    println!(
        "  gaps skipped       {:>10} ({} positions)",
        stats.gaps_skipped, stats.positions_skipped
    );
    println!("  late, to the DLQ   {:>10}", stats.late);
    println!(
        "  throughput         {:>10.0} messages/s (SQLite state: {})",
        total as f64 / elapsed,
        path.display()
    );
    if problems.is_empty() {
        println!("  order verified: every context complete, in order, each position once");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("  ORDER VIOLATED: {} problem(s)", problems.len());
        for p in problems.iter().take(20) {
            println!("    {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn envelope(m: crate::traffic::Msg, now: Millis) -> Envelope {
    Envelope {
        received_at: now,
        ..Envelope::new(context_id(m.context), m.seq, json_line(m))
    }
}

/// The demo's handler: records every release per context and checks each against the last.
#[derive(Default)]
struct Verifier {
    released: Mutex<HashMap<String, Vec<Released>>>,
}

/// One release as the demo saw it: `(seq, prev_seq)`.
type Released = (u64, Option<u64>);

impl Handler for Verifier {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        released
            .entry(msg.context_id.to_string())
            .or_default()
            .push((msg.seq, msg.prev_seq));
        Ok(())
    }
}

/// Checks, per context: releases strictly ascending with a consistent `prev_seq` chain;
/// released and skipped positions together are exactly 1..=last; every position never
/// sent on time was skipped; and nothing sent was lost: each sent position was released,
/// or its position had been skipped and it went to the DLQ as late.
async fn verify<S: StagingStore>(
    engine: &Engine<S, Arc<ManualClock>>,
    traffic: &Traffic,
    verifier: &Verifier,
    dlq: &RecordingDlq,
) -> Result<Vec<String>> {
    let released = std::mem::take(&mut *verifier.released.lock().unwrap_or_else(|p| p.into_inner()));
    let mut problems = Vec::new();
    for (c, last) in traffic.last_seq.iter().enumerate() {
        let id = context_id(c as u32);
        let state = engine
            .store()
            .load(&id)
            .await?
            .with_context(|| format!("no state for {id}"))?;
        let got = released.get(&id).cloned().unwrap_or_default();
        let mut prev = None;
        for &(seq, prev_seq) in &got {
            if prev.is_some_and(|p| seq <= p) || prev_seq != prev {
                problems.push(format!("{id}: released {seq} (prev_seq {prev_seq:?}) after {prev:?}"));
            }
            prev = Some(seq);
        }
        for seq in 1..=*last {
            let was_released = got.iter().any(|(s, _)| *s == seq);
            if was_released == state.is_skipped(seq) {
                problems.push(format!(
                    "{id}: position {seq} released={was_released} skipped={}",
                    state.is_skipped(seq)
                ));
            }
        }
        for seq in &traffic.absent[c] {
            if !state.is_skipped(*seq) {
                problems.push(format!("{id}: missing position {seq} was not recorded as skipped"));
            }
        }
    }
    let late: HashSet<(String, u64)> = dlq
        .letters()
        .into_iter()
        .filter(|l| l.reason == Reason::Late)
        .map(|l| (l.context_id, l.seq))
        .collect();
    for m in traffic.stream.iter().chain(&traffic.stragglers) {
        let id = context_id(m.context);
        let was_released = released.get(&id).is_some_and(|r| r.iter().any(|(s, _)| *s == m.seq));
        if !was_released && !late.contains(&(id.clone(), m.seq)) {
            problems.push(format!(
                "{id}: position {} was sent but neither released nor dead-lettered",
                m.seq
            ));
        }
    }
    Ok(problems)
}
