//! `reseq worker`: the long-polling SQS worker (SPEC §6) on the DynamoDB table, for ECS,
//! EC2 or a laptop. The loop itself is `reseq_sqs::worker`; this file reads the flags,
//! connects, handles SIGTERM/SIGINT, and prints what the worker did and what it cost.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use reseq_settings::{
    ExtractArgs, OrderingArgs, ReceiveArgs, Resequencer, Settings, SetupError, SqsArgs, TelemetryArgs,
};

#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub receive: ReceiveArgs,
    #[command(flatten)]
    pub sqs: SqsArgs,
    #[command(flatten)]
    pub extract: ExtractArgs,
    #[command(flatten)]
    pub ordering: OrderingArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Log lines as text (for people) or json (one object per line, for CloudWatch Logs Insights).
    #[arg(long, env = "RESEQ_LOG_FORMAT", default_value = "text", value_name = "FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn main(args: WorkerArgs) -> Result<ExitCode> {
    if let Err(line) = args
        .receive
        .validate()
        .and_then(|()| args.sqs.validate())
        .and_then(|()| args.ordering.validate())
    {
        eprintln!("reseq: {line}");
        return Ok(ExitCode::from(2));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: WorkerArgs) -> Result<ExitCode> {
    // Listen before anything else: a SIGTERM during start-up (ECS stopping a task that is
    // still connecting) then stops the worker cleanly instead of killing it.
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let settings = Settings {
        ordering: args.ordering,
        extract: args.extract,
        sqs: args.sqs,
        telemetry: args.telemetry,
    };
    // The same builder as a handler of one's own: the output of --output, under a lease.
    let run = match Resequencer::with_output(settings)
        .run_worker(&args.receive, shutdown_signal(terminate))
        .await
    {
        Ok(run) => run,
        Err(err) if err.is_configuration() => {
            let line = match err {
                SetupError::Invalid(line) => line,
                other => other.to_string(),
            };
            eprintln!("reseq: {}", one_line(&line));
            return Ok(ExitCode::from(2));
        }
        Err(err) => return Err(err.into()),
    };
    let (report, seconds) = (&run.report, run.elapsed.as_secs_f64());
    let processor = run.worker.processor();
    let stats = processor.engine().stats();
    let cost = processor.engine().store().cost();
    eprintln!(
        "reseq worker: stopped ({}) after {seconds:.1}s: {} received, {} deleted, {} left on the queue, {} invalid; \
         {} released, {} staged, {} duplicates, {} dead-lettered, {} gaps skipped, {} contexts swept",
        report.stopped_by,
        report.received,
        report.deleted,
        report.left,
        processor.invalid_count(),
        stats.released,
        stats.staged,
        stats.duplicates,
        stats.dead_lettered,
        stats.gaps_skipped,
        report.contexts_swept,
    );
    let per = |n: f64| {
        if report.received == 0 {
            0.0
        } else {
            n / report.received as f64
        }
    };
    eprintln!(
        "reseq worker: DynamoDB cost: {} writes ({:.1} WCU), {} reads ({:.1} RCU); per message received: {:.2} writes, \
         {:.2} WCU, {:.2} reads",
        cost.write_requests(),
        cost.write_units,
        cost.read_requests(),
        cost.read_units,
        per(cost.write_requests() as f64),
        per(cost.write_units),
        per(cost.read_requests() as f64),
    );
    Ok(ExitCode::SUCCESS)
}

/// An error text as one line (SDK texts may carry line breaks).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SIGTERM (ECS stopping a task) or Ctrl-C: stop receiving, finish what is in flight.
async fn shutdown_signal(terminate: Option<tokio::signal::unix::Signal>) {
    let terminate = async {
        match terminate {
            Some(mut signal) => {
                signal.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("stopping: finishing the batches in flight");
}
