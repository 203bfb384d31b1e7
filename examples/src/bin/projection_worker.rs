//! `projection-worker`: reseq's long-polling SQS worker with a handler of one's own, the
//! [`Projection`] (the latest state of each context in a DynamoDB table, written fenced by
//! `(context_id, seq)`).
//!
//! Settings: `PROJECTION_TABLE` (the projection's table, key `contextId`), and the
//! `RESEQ_*` variables of `reseq worker`: `RESEQ_QUEUE_URL` (required), `RESEQ_TABLE`
//! (reseq's staging table, made by `reseq init`), `RESEQ_DLQ_URL`, `RESEQ_LEASE_DURATION`,
//! `RESEQ_GAP_TIMEOUT`, `RESEQ_EXIT_WHEN_IDLE`, … (`reseq worker --help` lists them).
//! AWS access comes from the standard chain. SIGTERM or Ctrl-C stops it gracefully: the
//! batches in flight finish first.
//!
//! ```sh
//! PROJECTION_TABLE=orders-projection RESEQ_TABLE=reseq RESEQ_QUEUE_URL=$Q/reseq-input.fifo \
//!   RESEQ_DLQ_URL=$Q/reseq-dlq.fifo cargo run -p reseq-examples --bin projection-worker
//! ```

use std::process::ExitCode;

use reseq_examples::projection::Projection;
use reseq_settings::{ReceiveArgs, Resequencer};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            eprintln!("projection-worker: {line}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let table = std::env::var("PROJECTION_TABLE")
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or("PROJECTION_TABLE is not set: the DynamoDB table of the projection (key contextId)")?;
    let receive = ReceiveArgs::from_env()?;
    // One AWS configuration for reseq's clients and the handler's own.
    let sdk = reseq_settings::aws_config().await;
    let projection = Projection::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    // The builder connects to RESEQ_TABLE and RESEQ_DLQ_URL (checked once), runs the
    // engine under a per-context lease and cuts each call of the projection at a quarter
    // of it; run_worker checks the queue and receives until the stop signal.
    let run = Resequencer::from_env(projection)?
        .sdk_config(sdk)
        .run_worker(&receive, stop_signal())
        .await
        .map_err(|err| err.to_string())?;
    let processor = run.worker.processor();
    let stats = processor.engine().stats();
    let projection = &processor.handler().inner;
    eprintln!(
        "projection-worker: stopped ({}) after {:.1}s: {} received, {} released, {} staged, {} duplicates, {} \
         dead-lettered; the projection applied {} positions and dropped {} repeats",
        run.report.stopped_by,
        run.elapsed.as_secs_f64(),
        run.report.received,
        stats.released,
        stats.staged,
        stats.duplicates,
        stats.dead_lettered,
        projection.applied(),
        projection.repeats(),
    );
    Ok(())
}

/// SIGTERM (ECS stopping the task) or Ctrl-C.
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
