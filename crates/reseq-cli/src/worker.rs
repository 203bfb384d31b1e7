//! `reseq worker`: the long-polling SQS worker (SPEC §6) on the DynamoDB table, for ECS,
//! EC2 or a laptop. The loop itself is `reseq_sqs::worker`; this file reads the flags,
//! connects, handles SIGTERM/SIGINT, and prints what the worker did and what it cost.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use reseq_core::Duration;
use reseq_settings::{
    ExtractArgs, OrderingArgs, SetupError, SqsArgs, TelemetryArgs, aws_config, connect_processor_on, lease_owner,
    positive_duration, sqs_client_from,
};
use reseq_sqs::worker::{Worker, WorkerConfig, inspect_queue, stage_held_after};

#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// The SQS queue to consume (FIFO or standard).
    #[arg(long, env = "RESEQ_QUEUE_URL", value_name = "URL")]
    pub queue_url: String,
    /// Receive loops, each with at most one batch of 10 in flight.
    #[arg(long, env = "RESEQ_RECEIVERS", default_value_t = 4, value_name = "N", value_parser = at_least_one)]
    pub receivers: usize,
    /// Long-polling wait of one receive (at most 20s).
    #[arg(long, env = "RESEQ_WAIT_TIME", default_value = "20s", value_name = "DURATION")]
    pub wait_time: Duration,
    /// Visibility timeout of received messages, extended while their batch runs. Default: the queue's own.
    #[arg(long, env = "RESEQ_VISIBILITY_TIMEOUT", value_name = "DURATION")]
    pub visibility_timeout: Option<Duration>,
    /// How often timers (gap timeouts, retries, retention, dead workers' leases) are swept.
    #[arg(
        long,
        env = "RESEQ_SWEEP_EVERY",
        default_value = "5s",
        value_name = "DURATION",
        value_parser = positive_duration
    )]
    pub sweep_every: Duration,
    /// Exit once nothing was received, released or swept for this long (for scripts and tests).
    #[arg(long, env = "RESEQ_EXIT_WHEN_IDLE", value_name = "DURATION")]
    pub exit_when_idle: Option<Duration>,
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
    if args.wait_time.0 > 20_000 {
        eprintln!(
            "reseq: invalid value '{}' for '--wait-time': SQS long polling waits at most 20s",
            args.wait_time
        );
        return Ok(ExitCode::from(2));
    }
    if let Some(visibility) = args.visibility_timeout.filter(|v| v.0 < 1000 || v.0 > 43_200_000) {
        eprintln!("reseq: invalid value '{visibility}' for '--visibility-timeout': SQS takes 1s to 12h");
        return Ok(ExitCode::from(2));
    }
    if let Err(line) = args.sqs.validate().and_then(|()| args.ordering.validate()) {
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
    let owner = lease_owner("worker");
    let sdk = aws_config().await;
    let sqs = sqs_client_from(&sdk, args.sqs.lease_duration);
    // One GetQueueAttributes: the queue exists and can be read, its visibility timeout and
    // its redrive policy.
    let queue = match inspect_queue(&sqs, &args.queue_url).await {
        Ok(queue) => queue,
        Err(err) => {
            eprintln!("reseq: {}", one_line(&err.to_string()));
            return Ok(ExitCode::from(2));
        }
    };
    if args.visibility_timeout.is_none() && queue.visibility_timeout.0 == 0 {
        eprintln!(
            "reseq: the queue {} given by --queue-url has a VisibilityTimeout of 0s, which leaves every message \
             visible to other receivers while it is handled: give --visibility-timeout (e.g. 30s) or set the \
             queue's",
            args.queue_url
        );
        return Ok(ExitCode::from(2));
    }
    let mut sqs_args = args.sqs.clone();
    sqs_args.stage_held_after = stage_held_after(args.sqs.stage_held_after, queue.max_receive_count);
    let processor = match connect_processor_on(&sdk, sqs.clone(), &args.ordering, &args.extract, &sqs_args, owner).await
    {
        Ok(processor) => processor,
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
    let processor = match args
        .telemetry
        .install(reseq_metrics::Sink::Stderr, Some(&args.queue_url))
    {
        Ok(telemetry) => processor.with_telemetry(telemetry),
        Err(err) => {
            eprintln!("reseq: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    if sqs_args.stage_held_after != args.sqs.stage_held_after {
        tracing::info!(
            max_receive_count = queue.max_receive_count,
            "the queue's redrive policy moves a message after {} receives: messages held back by --max-staged are \
             staged after {} receives instead of --stage-held-after {}",
            queue.max_receive_count.unwrap_or(0),
            sqs_args.stage_held_after,
            args.sqs.stage_held_after
        );
    }
    match args.visibility_timeout {
        Some(visibility) => tracing::info!("receiving with --visibility-timeout {visibility}"),
        None => tracing::info!(
            "receiving with the queue's own visibility timeout, {}",
            queue.visibility_timeout
        ),
    }
    if args.sqs.dlq_url.is_none() {
        tracing::warn!(
            "no --dlq-url: conflicts, late and poison messages stay on the queue until its redrive policy moves them"
        );
    }
    let config = WorkerConfig {
        queue_url: args.queue_url.clone(),
        receivers: args.receivers,
        wait_time: args.wait_time,
        visibility_timeout: args.visibility_timeout,
        exit_when_idle: args.exit_when_idle,
        sweep_every: args.sweep_every,
        release_budget: args.sqs.release_budget(),
    };
    let worker = Worker::new(sqs, processor, config, queue);
    let started = Instant::now();
    let report = worker.run(shutdown_signal(terminate)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let processor = worker.processor();
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

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number ({e})")),
    }
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
