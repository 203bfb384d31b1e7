//! # reseq-sqs
//!
//! reseq on Amazon SQS. The engine in `reseq-core` decides; this crate only translates
//! between SQS and the engine:
//! - [`message`]: SQS messages (from `ReceiveMessage` or a Lambda event) into
//!   [`reseq_core::RawMessage`]s;
//! - [`batch`]: one batch through the engine, contexts side by side, and the Lambda
//!   partial batch response with FIFO semantics;
//! - [`lambda`]: the Lambda function's SQS and scheduled events;
//! - [`worker`]: the long-polling worker behind `reseq worker`;
//! - [`output`]: the built-in handlers behind `--output` (`stdout`, `sqs:<url>`,
//!   `http(s)://…`);
//! - [`bounded`]: every handler call bounded in time, so no release outlives its lease;
//! - [`ids`]: FIFO group/dedup ids and attributes within SQS's limits;
//! - [`dlq`]: the dead-letter queue behind `--dlq-url`, with `reseqReason` and
//!   `reseqDetail` attributes.
//!
//! A processor with a handler of your own is assembled by `reseq_settings::Resequencer`
//! (which always sets the lease SQS needs) and run by its worker or by `reseq_lambda::run`;
//! [`batch::Processor`] shows the batch contract on the in-memory store.

#![warn(missing_docs)]

pub mod batch;
pub mod bounded;
pub mod dlq;
pub mod ids;
pub mod lambda;
pub mod message;
pub mod output;
pub mod worker;

/// An SQS error as one readable line: `Code: message` for an error SQS answered, the
/// error chain for one it did not (timeouts, connection failures). The SDK's full debug
/// form carries the raw HTTP response, which buries the point.
pub fn describe_sqs_error<E, R>(err: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or("no message")
        ),
        None => aws_sdk_sqs::error::DisplayErrorContext(err).to_string(),
    }
}
