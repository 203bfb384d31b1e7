//! `bootstrap`: reseq as an AWS Lambda function (runtime `provided.al2023`), on the same
//! engine, DynamoDB table, outputs and dead-letter queue as `reseq worker` (SPEC §6).
//!
//! **Configuration**: the `RESEQ_*` environment variables of `reseq worker`, with the same
//! names, defaults and parsers (`reseq_settings`), read from the environment only:
//! `RESEQ_TABLE`, `RESEQ_OUTPUT` (`stdout`, `sqs:<queue-url>`, `http(s)://…`),
//! `RESEQ_DLQ_URL`, `RESEQ_INVALID`, `RESEQ_LEASE_DURATION`, `RESEQ_HTTP_TIMEOUT`,
//! `RESEQ_STAGE_HELD_AFTER` (keep it below the queue's `maxReceiveCount`: the function
//! cannot read the queue's redrive policy), the
//! ordering ones (`RESEQ_FIRST_SEQ`, `RESEQ_GAP_TIMEOUT`, `RESEQ_LATE`, `RESEQ_MAX_STAGED`,
//! `RESEQ_RETENTION`, `RESEQ_MAX_ATTEMPTS`, `RESEQ_ON_POISON`) and the extraction ones
//! (`RESEQ_CONTEXT_ATTR`, `RESEQ_SEQ_ATTR`, `RESEQ_CONTEXT_PATH`, `RESEQ_SEQ_PATH`,
//! `RESEQ_CONTEXT_FROM`, `RESEQ_FINAL_ATTR`, `RESEQ_FINAL_PATH`). AWS access comes from the
//! standard chain (`AWS_REGION`, `AWS_ENDPOINT_URL_SQS`, …); logs follow Lambda's logging
//! controls (`AWS_LAMBDA_LOG_FORMAT=JSON`, `AWS_LAMBDA_LOG_LEVEL`, or `RUST_LOG`). A bad
//! value, a missing table or an unreachable output fails the cold start with one line
//! that names it.
//!
//! **Events**: an SQS event (the queue as event source, with `ReportBatchItemFailures`)
//! is one batch, answered with a partial batch response of FIFO semantics: a record that
//! may not be deleted yet, and every later record of its message group, are returned in
//! `batchItemFailures`. A scheduled EventBridge event (`"source": "aws.events"`, e.g.
//! `rate(1 minute)`) runs the timer sweep — gap timeouts, retries, retention, leases of
//! dead invocations — and answers `{"swept": n}`. Anything else is an error.
//!
//! **Deadline**: no release starts after the invocation's deadline less a margin of
//! max(1 s, 10% of the time left), nor later than 3/4 of `RESEQ_LEASE_DURATION` from the
//! start of the invocation; what is cut there stays staged for the next sweep. (A
//! deadline that is no Unix time, as `cargo lambda watch` sends, leaves only the latter;
//! so does a missing deadline header, which a loopback proxy in front of the Runtime API
//! fills in as 0, with a warning, instead of letting `lambda_runtime` panic.)
//!
//! **Build**: `cargo lambda build --release -p reseq-lambda` (add `--arm64` for Graviton)
//! writes `target/lambda/bootstrap/bootstrap`; `scripts/cargo-lambda.sh` installs a pinned
//! cargo-lambda. Run it locally with `cargo lambda watch -p reseq-lambda` and
//! `cargo lambda invoke --data-file event.json`.

use std::fmt;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use reseq_lambda::{LambdaSettings, invoke, runtime_api, runtime_environment};
use reseq_settings::{connect_processor, lease_owner};
use serde_json::Value;

fn main() -> Result<(), Error> {
    // Before any thread exists: point lambda_runtime at the proxy that fills in a missing
    // deadline header (lambda_runtime panics without it; see reseq_lambda::runtime_api).
    let proxy = match std::env::var("AWS_LAMBDA_RUNTIME_API") {
        Ok(api) if !api.is_empty() => {
            // `host:port` (Lambda), or a URL with a path prefix (cargo lambda watch:
            // `http://host:port/.rt`): the proxy's address keeps the scheme and the prefix,
            // so that requests reach it with their paths unchanged.
            let (scheme, rest) = api
                .strip_prefix("http://")
                .map_or(("", api.as_str()), |r| ("http://", r));
            let (upstream, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
            let (listener, addr) = runtime_api::bind()?;
            let local = format!("{scheme}{addr}{path}");
            // SAFETY: the process is single-threaded here (no runtime, no thread started yet).
            unsafe { std::env::set_var("AWS_LAMBDA_RUNTIME_API", local) };
            Some((listener, upstream.to_string()))
        }
        _ => None,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(proxy))
}

async fn run(proxy: Option<(std::net::TcpListener, String)>) -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let fail = |line: String| {
        tracing::error!("{line}");
        InitError(line)
    };

    runtime_environment(|name| std::env::var(name).ok()).map_err(fail)?;
    if let Some((listener, upstream)) = proxy {
        tokio::spawn(runtime_api::serve(listener, upstream));
    }
    let settings = LambdaSettings::from_env().map_err(fail)?;
    let owner = lease_owner("lambda");
    let (processor, _sqs) = connect_processor(&settings.ordering, &settings.extract, &settings.sqs, owner)
        .await
        .map_err(|err| fail(format!("cannot start: {err}")))?;
    // Lambda extracts the metrics from the function's log output.
    let telemetry = settings
        .telemetry
        .install(reseq_metrics::Sink::Stdout, None)
        .map_err(|err| fail(format!("cannot start: RESEQ_METRICS: {err}")))?;
    let processor = processor.with_telemetry(telemetry);
    if settings.sqs.dlq_url.is_none() {
        tracing::warn!(
            "no RESEQ_DLQ_URL: conflicts, late and poison messages stay on the queue until its redrive policy moves them"
        );
    }
    let budget = settings.sqs.release_budget();

    let processor = &processor;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        invoke(processor, budget, event)
    }))
    .await
}

/// Why the cold start failed: one line, printed as it is (not quoted) when `main` returns it.
struct InitError(String);

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InitError {}
