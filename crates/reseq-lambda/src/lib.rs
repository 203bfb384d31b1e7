//! # reseq-lambda
//!
//! reseq as an AWS Lambda function, with the built-in outputs (the `bootstrap` binary,
//! `src/main.rs`) or with a handler of your own: [`run`] is the whole function — call it
//! from `main` with a closure that makes a [`ResequencerBuilder`] — and `bootstrap` is
//! nothing but `run` on the built-in output. The pieces, each tested here:
//! - [`run`] and [`serve`]: the function's start (the Runtime API proxy, the settings, the
//!   table and DLQ checked once, the metrics) and its invocation loop;
//! - [`LambdaSettings`]: the `RESEQ_*` environment variables, the same structs (names,
//!   defaults, parsers) as `reseq worker`'s flags, read from the environment only;
//! - [`release_deadline`]: when an invocation's releases must stop;
//! - [`invoke`]: one invocation, from the event's JSON to the response or the error that
//!   makes Lambda retry;
//! - [`runtime_environment`]: whether the process runs where a Lambda Runtime API is;
//! - [`runtime_api`]: the loopback proxy that fills in a missing deadline header, which
//!   `lambda_runtime` would panic on.
//!
//! ```no_run
//! use reseq_core::{Handler, HandlerError, Release};
//! use reseq_settings::Resequencer;
//!
//! /// Logs each message, in order per context.
//! struct Log;
//!
//! impl Handler for Log {
//!     async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
//!         tracing::info!(context = msg.context_id, seq = msg.seq, "released");
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> Result<(), lambda_runtime::Error> {
//!     // RESEQ_TABLE, RESEQ_DLQ_URL, RESEQ_LEASE_DURATION, … as for `bootstrap`.
//!     reseq_lambda::run(|_sdk| async { Ok(Resequencer::from_env(Log)?) })
//! }
//! ```

#![warn(missing_docs)]

pub mod runtime_api;

use std::fmt;
use std::future::Future;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use reseq_core::{Clock, DeadLetterSink, Duration, Handler, Millis, StagingStore};
use reseq_settings::{Resequencer, ResequencerBuilder, SdkConfig, aws_config, lease_owner};
use reseq_sqs::batch::Processor;
use reseq_sqs::lambda::{LambdaError, handle};
use serde_json::Value;

/// The function's configuration: every `RESEQ_*` variable `reseq worker` reads, except the
/// ones about receiving (the event source mapping receives for Lambda). It is
/// [`reseq_settings::Settings`]; [`LambdaSettings::from_env`] reads it.
pub use reseq_settings::Settings as LambdaSettings;

/// Runs the Lambda function until the runtime stops it: call it from `main`, before any
/// async runtime exists (not under `#[tokio::main]`).
///
/// In order, as `bootstrap` does: it points `lambda_runtime` at a loopback proxy that
/// fills in a missing deadline header ([`runtime_api`]; this rewrites
/// `AWS_LAMBDA_RUNTIME_API`, which is only sound while the process has one thread), starts
/// a tokio runtime, checks that a Lambda Runtime API is there ([`runtime_environment`]),
/// loads the AWS configuration and calls `init` with it — make your handler's clients from
/// it, and return the builder, e.g. [`Resequencer::from_env`] — then connects
/// ([`ResequencerBuilder::connect`]: the table and the DLQ are checked once, the engine
/// runs under the lease, each handler call is bounded by a quarter of it, the lease owner
/// is named `lambda-…` unless set) and [`serve`]s. A failure before the first invocation
/// is one line in the log and fails the cold start.
pub fn run<H, F, Fut>(init: F) -> Result<(), lambda_runtime::Error>
where
    H: Handler + 'static,
    F: FnOnce(SdkConfig) -> Fut,
    Fut: Future<Output = Result<ResequencerBuilder<H>, lambda_runtime::Error>>,
{
    // Before any thread exists: point lambda_runtime at the proxy that fills in a missing
    // deadline header (lambda_runtime panics without it; see runtime_api).
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
            // SAFETY: the process is single-threaded here (no runtime, no thread started
            // yet: `run` must be called from `main` before any).
            unsafe { std::env::set_var("AWS_LAMBDA_RUNTIME_API", local) };
            Some((listener, upstream.to_string()))
        }
        _ => None,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(start(proxy, init))
}

async fn start<H, F, Fut>(proxy: Option<(std::net::TcpListener, String)>, init: F) -> Result<(), lambda_runtime::Error>
where
    H: Handler + 'static,
    F: FnOnce(SdkConfig) -> Fut,
    Fut: Future<Output = Result<ResequencerBuilder<H>, lambda_runtime::Error>>,
{
    lambda_runtime::tracing::init_default_subscriber();
    runtime_environment(|name| std::env::var(name).ok()).map_err(fail)?;
    if let Some((listener, upstream)) = proxy {
        tokio::spawn(runtime_api::serve(listener, upstream));
    }
    let sdk = aws_config().await;
    let builder = init(sdk.clone()).await.map_err(|err| fail(err.to_string()))?;
    let resequencer = builder
        .lease_owner(lease_owner("lambda"))
        .sdk_config(sdk)
        .connect()
        .await
        .map_err(|err| fail(format!("cannot start: {err}")))?;
    serve(resequencer).await
}

/// Serves invocations with a connected [`Resequencer`] until the runtime stops: each SQS
/// event is one batch, answered with a partial batch response; each scheduled event
/// runs the timer sweep ([`invoke`]). It installs the metrics first (default sink: stdout,
/// which Lambda turns into metrics). [`run`] calls it; call it yourself only if you run
/// your own async runtime, and then without the deadline-header proxy.
pub async fn serve<H: Handler + 'static>(resequencer: Resequencer<H>) -> Result<(), lambda_runtime::Error> {
    let settings = resequencer.settings().clone();
    let budget = resequencer.release_budget();
    // Lambda extracts the metrics from the function's log output.
    let telemetry = settings
        .telemetry
        .install(reseq_metrics::Sink::Stdout, None)
        .map_err(|err| fail(format!("cannot start: RESEQ_METRICS: {err}")))?;
    let processor = resequencer.into_processor().with_telemetry(telemetry);
    if settings.sqs.dlq_url.is_none() {
        tracing::warn!(
            "no RESEQ_DLQ_URL: conflicts, late and poison messages stay on the queue until its redrive policy moves them"
        );
    }
    let processor = &processor;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        invoke(processor, budget, event)
    }))
    .await
}

/// Logs a start-up failure and makes it the error `main` returns.
fn fail(line: String) -> lambda_runtime::Error {
    tracing::error!("{line}");
    Box::new(InitError(line))
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

/// When an invocation's releases must stop: a margin before the invocation's own
/// deadline — the larger of 1 s and a tenth of the time left — so that the batch's commit
/// and the response still fit, and never later than `budget` from now (the part of the
/// per-context lease a batch may use: `SqsArgs::release_budget`). A run cut there stays
/// staged and is due for the next sweep. With less than the margin left, the result is
/// at or before `now`: nothing is released, every record is staged or reported failed.
///
/// A deadline before [`EARLIEST_DEADLINE`] is no Unix time in milliseconds (what Lambda's
/// `Lambda-Runtime-Deadline-Ms` header holds): `cargo lambda watch`'s emulator sends the
/// constant `600000`. Such a deadline is unknown, and only the budget bounds the releases.
pub fn release_deadline(now: Millis, invocation_deadline: Millis, budget: Duration) -> Millis {
    if invocation_deadline < EARLIEST_DEADLINE {
        return now.plus(budget);
    }
    let remaining = invocation_deadline.since(now);
    let margin = Duration::from_millis(remaining.0.div_ceil(10).max(1_000));
    invocation_deadline.minus(margin).min(now.plus(budget))
}

/// 2001-09-09T01:46:40Z: no invocation deadline in Unix milliseconds is earlier.
pub const EARLIEST_DEADLINE: Millis = Millis(1_000_000_000_000);

/// One invocation: the SQS batch or the scheduled sweep, with the deadline rule of
/// [`release_deadline`]. An error is returned with its text (and logged by the runtime):
/// Lambda then retries the whole event.
pub async fn invoke<S, C, H, D>(
    processor: &Processor<S, C, H, D>,
    budget: Duration,
    event: LambdaEvent<Value>,
) -> Result<Value, Diagnostic>
where
    S: StagingStore,
    C: Clock,
    H: Handler,
    D: DeadLetterSink,
{
    let now = processor.engine().clock().now();
    let deadline = release_deadline(now, Millis(event.context.deadline), budget);
    tracing::debug!(
        request_id = %event.context.request_id,
        remaining_ms = event.context.deadline.saturating_sub(now.0),
        release_deadline_ms = deadline.0,
        "invocation"
    );
    handle(processor, event.payload, deadline)
        .await
        .map_err(|err| Diagnostic {
            error_type: error_type(&err).into(),
            error_message: err.to_string(),
        })
}

fn error_type(err: &LambdaError) -> &'static str {
    match err {
        LambdaError::Unsupported(_) => "reseq.UnsupportedEvent",
        LambdaError::NoMessageId { .. } => "reseq.NoMessageId",
        LambdaError::Sweep(_) => "reseq.SweepFailed",
    }
}

/// The variables the Lambda service (or `cargo lambda watch`) sets for a function, which
/// `lambda_runtime` reads at start and panics without: checked first, so that running
/// `bootstrap` by hand says what it is instead.
pub fn runtime_environment(get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    let missing: Vec<&str> = [
        "AWS_LAMBDA_RUNTIME_API",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    ]
    .into_iter()
    .filter(|name| get(name).is_none_or(|v| v.is_empty()))
    .collect();
    if !missing.is_empty() {
        return Err(format!(
            "bootstrap is reseq's AWS Lambda function and runs under a Lambda Runtime API (AWS Lambda, or `cargo \
             lambda watch` locally); {} not set. To consume a queue from a shell, run `reseq worker`",
            missing.join(", ")
        ));
    }
    let memory = get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").unwrap_or_default();
    if memory.parse::<i32>().is_err() {
        return Err(format!(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE is {memory:?}, not a number of megabytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(45);
    /// 2026-11-23, in Unix milliseconds.
    const NOW: Millis = Millis(1_795_400_000_000);

    fn after(ms: u64) -> Millis {
        NOW.plus(Duration::from_millis(ms))
    }

    #[test]
    fn the_margin_is_a_tenth_of_the_time_left_and_at_least_a_second() {
        // 30 s left: 3 s margin, under the 45 s budget.
        assert_eq!(release_deadline(NOW, after(30_000), BUDGET), after(27_000));
        // 5 s left: the 1 s floor wins over 500 ms.
        assert_eq!(release_deadline(NOW, after(5_000), BUDGET), after(4_000));
        // 15 min left (Lambda's longest timeout): 90 s margin, but the lease budget is shorter.
        assert_eq!(release_deadline(NOW, after(900_000), BUDGET), NOW.plus(BUDGET));
        // A tenth rounds up: 10_001 ms left gives a 1_001 ms margin.
        assert_eq!(release_deadline(NOW, after(10_001), BUDGET), after(9_000));
    }

    #[test]
    fn no_time_left_releases_nothing_and_never_underflows() {
        assert!(release_deadline(NOW, after(800), BUDGET) <= NOW);
        assert!(release_deadline(NOW, NOW, BUDGET) <= NOW);
        assert!(release_deadline(NOW, NOW.minus(Duration::from_secs(5)), BUDGET) <= NOW);
        assert_eq!(
            release_deadline(Millis(u64::MAX - 1), Millis(u64::MAX), Duration(u64::MAX)),
            Millis(u64::MAX - 1_000)
        );
    }

    #[test]
    fn a_deadline_that_is_no_unix_time_leaves_only_the_budget() {
        // `cargo lambda watch` sends Lambda-Runtime-Deadline-Ms: 600000.
        assert_eq!(release_deadline(NOW, Millis(600_000), BUDGET), NOW.plus(BUDGET));
        assert_eq!(release_deadline(NOW, Millis(0), BUDGET), NOW.plus(BUDGET));
        assert_eq!(release_deadline(Millis(0), Millis(0), BUDGET), Millis(0).plus(BUDGET));
    }

    #[test]
    fn outside_lambda_the_function_says_what_it_is() {
        let lambda = |name: &str| match name {
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE" => Some("128".to_string()),
            _ => Some("x".to_string()),
        };
        assert_eq!(runtime_environment(lambda), Ok(()));
        let err = runtime_environment(|_| None).unwrap_err();
        assert!(
            err.contains("AWS_LAMBDA_RUNTIME_API") && err.contains("reseq worker"),
            "{err}"
        );
        let bad_memory = |name: &str| Some(if name.ends_with("MEMORY_SIZE") { "lots" } else { "x" }.to_string());
        assert!(runtime_environment(bad_memory).unwrap_err().contains("lots"));
    }

    // The environment is process-wide: the tests that set it are one test, in order.
    #[test]
    fn settings_come_from_the_environment_and_a_bad_value_names_its_variable() {
        // SAFETY: no other test of this binary reads or writes these variables.
        unsafe {
            std::env::remove_var("RESEQ_MAX_STAGED");
            std::env::set_var("RESEQ_TABLE", "from-env");
            std::env::set_var("RESEQ_GAP_TIMEOUT", "2s");
        }
        let settings = LambdaSettings::from_env().expect("valid settings");
        assert_eq!(settings.sqs.table, "from-env");
        assert_eq!(settings.ordering.gap_timeout, Some(Duration::from_secs(2)));
        assert_eq!(settings.ordering.max_staged, 10_000);

        unsafe { std::env::set_var("RESEQ_MAX_STAGED", "lots") };
        let err = LambdaSettings::from_env().unwrap_err();
        assert!(err.contains("RESEQ_MAX_STAGED"), "{err}");
        assert!(err.contains("lots"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");

        unsafe {
            std::env::remove_var("RESEQ_MAX_STAGED");
            std::env::set_var("RESEQ_GAP_TIMEOUT", "soon");
        }
        let err = LambdaSettings::from_env().unwrap_err();
        assert!(err.contains("RESEQ_GAP_TIMEOUT") && err.contains("soon"), "{err}");

        unsafe {
            std::env::remove_var("RESEQ_GAP_TIMEOUT");
            std::env::set_var("RESEQ_LEASE_DURATION", "0s");
        }
        let err = LambdaSettings::from_env().unwrap_err();
        assert!(err.contains("RESEQ_LEASE_DURATION") && !err.contains('\n'), "{err}");

        unsafe {
            std::env::set_var("RESEQ_LEASE_DURATION", "8s");
            std::env::set_var("RESEQ_OUTPUT", "http://127.0.0.1:9/in");
        }
        let err = LambdaSettings::from_env().unwrap_err();
        assert!(err.contains("RESEQ_HTTP_TIMEOUT") && err.contains("2s"), "{err}");

        unsafe {
            std::env::remove_var("RESEQ_LEASE_DURATION");
            std::env::remove_var("RESEQ_OUTPUT");
            std::env::set_var("RESEQ_STAGE_HELD_AFTER", "0");
        }
        let err = LambdaSettings::from_env().unwrap_err();
        assert!(err.contains("RESEQ_STAGE_HELD_AFTER"), "{err}");

        unsafe {
            std::env::remove_var("RESEQ_STAGE_HELD_AFTER");
            std::env::set_var("RESEQ_TABLE", "");
        }
        let err = LambdaSettings::from_env().unwrap_err();
        assert!(err.contains("RESEQ_TABLE"), "{err}");

        unsafe {
            std::env::remove_var("RESEQ_TABLE");
        }
    }
}
