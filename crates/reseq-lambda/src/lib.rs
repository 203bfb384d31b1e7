//! # reseq-lambda
//!
//! What the `bootstrap` binary (`src/main.rs`) is made of, kept out of it so that it stays
//! a few lines of wiring and so that each piece is tested here:
//! - [`LambdaSettings`]: the `RESEQ_*` environment variables, the same structs (names,
//!   defaults, parsers) as `reseq worker`'s flags, read from the environment only;
//! - [`release_deadline`]: when an invocation's releases must stop;
//! - [`invoke`]: one invocation, from the event's JSON to the response or the error that
//!   makes Lambda retry;
//! - [`runtime_environment`]: whether the process runs where a Lambda Runtime API is;
//! - [`runtime_api`]: the loopback proxy that fills in a missing deadline header, which
//!   `lambda_runtime` would panic on.

pub mod runtime_api;

use clap::{CommandFactory, Parser};
use lambda_runtime::{Diagnostic, LambdaEvent};
use reseq_core::{Clock, DeadLetterSink, Duration, Handler, Millis, StagingStore};
use reseq_settings::{ExtractArgs, OrderingArgs, SqsArgs, TelemetryArgs};
use reseq_sqs::batch::Processor;
use reseq_sqs::lambda::{LambdaError, handle};
use serde_json::Value;

/// The function's configuration: every `RESEQ_*` variable `reseq worker` reads, except the
/// ones about receiving (the event source mapping receives for Lambda).
#[derive(Parser, Clone, Debug)]
#[command(
    name = "bootstrap",
    about = "reseq's AWS Lambda function: configured by RESEQ_* environment variables"
)]
pub struct LambdaSettings {
    #[command(flatten)]
    pub ordering: OrderingArgs,
    #[command(flatten)]
    pub extract: ExtractArgs,
    #[command(flatten)]
    pub sqs: SqsArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl LambdaSettings {
    /// The settings from the process environment alone (no command-line arguments are
    /// read). A bad value gives one line naming the variable, the value and what is wrong.
    /// The checks that involve several values ([`SqsArgs::validate`]) are made here too,
    /// with the variable's name.
    pub fn from_env() -> Result<LambdaSettings, String> {
        let settings = LambdaSettings::try_parse_from(["bootstrap"]).map_err(|e| describe_error(&e))?;
        settings.sqs.validate().map_err(|line| {
            let env = ["--http-timeout", "--lease-duration", "--table"]
                .into_iter()
                .find(|flag| line.contains(&format!("'{flag}'")))
                .map(|flag| {
                    format!(
                        "RESEQ_{}: ",
                        flag.trim_start_matches('-').replace('-', "_").to_uppercase()
                    )
                })
                .unwrap_or_default();
            format!("invalid settings: {env}{line}")
        })?;
        Ok(settings)
    }
}

/// One line for a clap error on environment variables: clap names the flag
/// (`--max-staged <N>`); a function's user set `RESEQ_MAX_STAGED`, so name that too.
fn describe_error(err: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let rendered = err.to_string();
    let first = rendered
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid settings");
    let line = first.strip_prefix("error: ").unwrap_or(first).to_string();
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return format!("invalid settings: {line}");
    };
    let long = arg.split_whitespace().next().unwrap_or("").trim_start_matches("--");
    let command = LambdaSettings::command();
    let env = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned());
    match env {
        Some(env) => format!("invalid settings: {env}: {line}"),
        None => format!("invalid settings: {line}"),
    }
}

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
