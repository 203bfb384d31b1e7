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
//!
//! **Code**: all of it is `reseq_lambda::run` on the built-in output; a handler of your own
//! runs the same way (see the `reseq-lambda` crate's documentation and `examples/`).

use reseq_lambda::LambdaSettings;
use reseq_settings::Resequencer;

fn main() -> Result<(), lambda_runtime::Error> {
    reseq_lambda::run(|_sdk| async { Ok(Resequencer::with_output(LambdaSettings::from_env()?)) })
}
