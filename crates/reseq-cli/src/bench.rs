//! `reseq bench`: throughput of the engine on the memory store, and of the whole
//! `reseq run` pipeline (parse, extract, order, write) on a SQLite state file, on the
//! same generated traffic. Figures go to docs/PERFORMANCE.md with this command line.

use std::io::Cursor;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use reseq_core::testing::RecordingDlq;
use reseq_core::{Engine, EngineConfig, Envelope, Handler, HandlerError, MemoryStore, Release, SystemClock};
use reseq_sqlite::SqliteStore;

use crate::run::{DlqFile, RunArgs, execute};
use crate::traffic::{TrafficSpec, context_id, json_line};
use reseq_settings::OrderingArgs;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: usize,
    #[arg(long, default_value_t = 10_000)]
    pub contexts: usize,
    /// Each context's positions are shuffled in blocks of this many.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Fraction of messages sent twice.
    #[arg(long, default_value_t = 0.01)]
    pub duplicates: f64,
    /// Messages per engine batch in the engine measurement.
    #[arg(long, default_value_t = 4096)]
    pub batch: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Run only one measurement: engine, run-sqlite, run-memory, or dynamodb (the write
    /// cost against the table --table on the configured endpoint; not in the default set).
    #[arg(long)]
    pub only: Option<String>,
    /// The DynamoDB table for --only dynamodb (created if missing).
    #[arg(long, env = "RESEQ_TABLE", default_value = "reseq-bench")]
    pub table: String,
}

/// Counts releases; does nothing else, so the engine's own cost is what is measured.
#[derive(Default)]
struct Count(std::sync::atomic::AtomicU64);

impl Handler for Count {
    async fn handle(&self, _msg: &Release<'_>) -> Result<(), HandlerError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

pub fn main(args: BenchArgs) -> Result<ExitCode> {
    let spec = TrafficSpec {
        contexts: args.contexts,
        messages: args.messages,
        window: args.window,
        duplicates: args.duplicates,
        missing: 0.0,
        late: 0.0,
        seed: args.seed,
    };
    if args.only.as_deref() == Some("dynamodb") {
        return bench_dynamodb(&args);
    }
    let traffic = spec.generate();
    let n = traffic.stream.len();
    println!(
        "reseq bench: {n} messages ({} before duplicates) over {} contexts, shuffled in windows of {}, {:.1}% duplicates",
        args.messages,
        args.contexts,
        args.window,
        args.duplicates * 100.0
    );

    // Every distinct (context, position) is released once; the rest are duplicates.
    let distinct: std::collections::HashSet<_> = traffic.stream.iter().map(|m| (m.context, m.seq)).collect();
    let expected = distinct.len() as u64;
    let wanted = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    if wanted("engine") {
        bench_engine(&args, &traffic, expected)?;
    }
    let mut input = Vec::with_capacity(n * 80);
    for m in &traffic.stream {
        input.extend_from_slice(json_line(*m).as_bytes());
        input.push(b'\n');
    }
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let path = dir.path().join("bench.db");
    let run_args = RunArgs {
        input: None,
        state: Some(path.clone()),
        dlq: None,
        context_path: "/contextId".into(),
        seq_path: "/sequence".into(),
        final_path: None,
        sequences: None,
        type_path: "/messageType".into(),
        id_path: None,
        loaded_sequences: None,
        ordering: OrderingArgs {
            first_seq: 1,
            gap_timeout: None,
            late: Default::default(),
            max_staged: 10_000,
            retention: reseq_core::Duration::from_secs(14 * 86_400),
            max_attempts: 5,
            on_poison: Default::default(),
        },
    };
    if wanted("run-sqlite") {
        let store = SqliteStore::open(&path)?;
        let started = Instant::now();
        let run = execute(
            &run_args,
            store,
            Box::new(Cursor::new(input.clone())),
            std::io::sink(),
            &DlqFile::sink(),
        )?;
        report("reseq run, SQLite --state", n, started.elapsed().as_secs_f64());
        anyhow::ensure!(
            run.stats.released == expected,
            "reseq run released {} of {expected}",
            run.stats.released
        );
    }
    if wanted("run-memory") {
        let started = Instant::now();
        let run = execute(
            &run_args,
            MemoryStore::new(),
            Box::new(Cursor::new(input)),
            std::io::sink(),
            &DlqFile::sink(),
        )?;
        report("reseq run, in memory", n, started.elapsed().as_secs_f64());
        anyhow::ensure!(
            run.stats.released == expected,
            "reseq run released {} of {expected}",
            run.stats.released
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The engine alone: envelopes built beforehand, a handler that only counts.
fn bench_engine(args: &BenchArgs, traffic: &crate::traffic::Traffic, expected: u64) -> Result<()> {
    let envelopes: Vec<Envelope> = traffic
        .stream
        .iter()
        .map(|m| Envelope::new(context_id(m.context), m.seq, json_line(*m)))
        .collect();
    let n = envelopes.len();
    let engine = Engine::new(MemoryStore::new(), SystemClock, EngineConfig::default());
    let (count, dlq) = (Count::default(), RecordingDlq::new());
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let mut batches: Vec<Vec<Envelope>> = Vec::new();
    for env in envelopes {
        match batches.last_mut() {
            Some(batch) if batch.len() < args.batch.max(1) => batch.push(env),
            _ => batches.push(vec![env]),
        }
    }
    let started = Instant::now();
    runtime.block_on(async {
        for batch in batches {
            engine.process(batch, &count, &dlq).await;
        }
    });
    report("engine, memory store", n, started.elapsed().as_secs_f64());
    let released = count.0.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(released == expected, "the engine released {released} of {expected}");
    Ok(())
}

/// Requests and capacity per message against DynamoDB (Local), for three traffic shapes,
/// without a lease (FIFO, group = context) and with one, in SQS-sized batches of 10.
fn bench_dynamodb(args: &BenchArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let config = reseq_dynamodb::DynamoConfig::default();
        let client = reseq_dynamodb::load_client(&config).await;
        reseq_dynamodb::create_table(&client, &args.table).await?;
        println!(
            "write cost against DynamoDB table {} ({} messages over {} contexts per row, batches of 10)",
            args.table, args.messages, args.contexts
        );
        println!(
            "  {:<24} {:<6} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "traffic", "lease", "writes/m", "WCU/m", "reads/m", "RCU/m", "msg/s"
        );
        let shapes = [
            ("in order", 1, 0.0),
            ("shuffled, window 16", 16, 0.0),
            ("in order, 10% duplicates", 1, 0.10),
        ];
        for (round, (name, window, duplicates)) in shapes.into_iter().enumerate() {
            for lease in [false, true] {
                let spec = TrafficSpec {
                    contexts: args.contexts,
                    messages: args.messages,
                    window,
                    duplicates,
                    missing: 0.0,
                    late: 0.0,
                    // A fresh seed per row gives fresh context ids: no row sees another's state.
                    seed: args.seed * 100 + round as u64 * 2 + lease as u64,
                };
                let traffic = spec.generate();
                let run = format!("{}-{}", std::process::id(), spec.seed);
                let store = reseq_dynamodb::DynamoStore::new(client.clone(), &args.table, config.clone());
                let lease = lease.then(|| reseq_core::engine::LeaseConfig {
                    owner: "bench".into(),
                    duration: reseq_core::Duration::from_secs(60),
                });
                let engine = Engine::new(
                    store,
                    SystemClock,
                    EngineConfig {
                        lease: lease.clone(),
                        ..EngineConfig::default()
                    },
                );
                let (count, dlq) = (Count::default(), RecordingDlq::new());
                let started = Instant::now();
                for chunk in traffic.stream.chunks(10) {
                    let batch = chunk
                        .iter()
                        .map(|m| Envelope::new(format!("{run}/{}", context_id(m.context)), m.seq, json_line(*m)))
                        .collect();
                    let outcomes = engine.process(batch, &count, &dlq).await;
                    anyhow::ensure!(outcomes.iter().all(|o| o.is_settled()), "unsettled: {outcomes:?}");
                }
                let secs = started.elapsed().as_secs_f64();
                let cost = engine.store().cost();
                let n = traffic.stream.len() as f64;
                println!(
                    "  {name:<24} {:<6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.0}",
                    if lease.is_some() { "yes" } else { "no" },
                    cost.write_requests() as f64 / n,
                    cost.write_units / n,
                    cost.read_requests() as f64 / n,
                    cost.read_units / n,
                    n / secs
                );
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn report(what: &str, n: usize, secs: f64) {
    println!("  {what:<28} {:>10.0} messages/s  ({n} in {secs:.2}s)", n as f64 / secs);
}
