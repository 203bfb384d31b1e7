//! # reseq-examples
//!
//! reseq embedded with handlers of one's own, each writing to DynamoDB **fenced** by the
//! release's `(context_id, seq)`:
//!
//! - [`projection::Projection`], run by the long-polling worker
//!   (`src/bin/projection_worker.rs`, binary `projection-worker`): one item per context
//!   holding the latest state, written only if it is newer than what the item holds;
//! - [`balance::Balances`], run as a Lambda function (`src/bin/balance_lambda.rs`, binary
//!   `balance-lambda`): one account per context, each message a deposit or a withdrawal
//!   applied exactly once, in order, and an overdraft stopping the account.
//!
//! **Why the fence.** reseq hands each context's messages to the handler in order and
//! records a release only after the handler returned `Ok` (SPEC §3). So a handler call
//! that succeeded can be made again for the same position: the worker (or the Lambda
//! invocation) died between the handler's write and reseq's commit, or the call outlived
//! its bound (a quarter of the lease) and was retried while the write still landed.
//! `(context_id, seq)` is a fencing token: a target that stores the last position it
//! applied per context, and applies a position only if it is greater — **in the same
//! conditional write as the effect** — turns every such repeat into a no-op. Both
//! handlers here do exactly that with a DynamoDB `ConditionExpression`.
//!
//! `tests/worker.rs` runs `projection-worker` against LocalStack SQS and DynamoDB Local;
//! `tests/lambda.rs` runs `balance-lambda` under `cargo lambda watch`'s Runtime API; both
//! also replay old positions into the handlers and check that nothing was applied twice.

#![warn(missing_docs)]

pub mod balance;
pub mod projection;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
use reseq_core::HandlerError;

/// Whether a failed request was refused by its `ConditionExpression` (for these handlers:
/// the fence, or a business rule checked in the same write).
pub fn is_condition_failure<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "ConditionalCheckFailedException")
}

/// A failed DynamoDB request as reseq's [`HandlerError`]. A `ValidationException` (an item
/// over 400 KB, a value DynamoDB refuses) never succeeds for this message: it is
/// [`HandlerError::Rejected`], dead-lettered as `handler-failed` so that it does not block
/// its context. Anything else (throttling, 5xx, a timeout, a missing table or permission
/// an operator will fix) is [`HandlerError::Retryable`]: reseq tries again with backoff,
/// and while the target fails for several contexts in a row it counts no attempts (an
/// outage is not poison).
pub fn handler_error<E, R>(what: &str, err: &SdkError<E, R>) -> HandlerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = aws_sdk_dynamodb::error::DisplayErrorContext(err).to_string();
    match err.as_service_error().and_then(|e| e.code()) {
        Some("ValidationException") => HandlerError::Rejected(format!("{what}: {detail}")),
        _ => HandlerError::Retryable(format!("{what}: {detail}")),
    }
}

/// Creates the table a handler writes to: on-demand, its key the string attribute `key`
/// (`contextId` for the projection, `accountId` for the balances). Done by your
/// infrastructure in production; the tests make their own.
pub async fn create_table(client: &aws_sdk_dynamodb::Client, table: &str, key: &str) -> Result<(), String> {
    let definition = AttributeDefinition::builder()
        .attribute_name(key)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| e.to_string())?;
    let schema = KeySchemaElement::builder()
        .attribute_name(key)
        .key_type(KeyType::Hash)
        .build()
        .map_err(|e| e.to_string())?;
    client
        .create_table()
        .table_name(table)
        .attribute_definitions(definition)
        .key_schema(schema)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(|e| {
            format!(
                "creating the table {table}: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            )
        })?;
    Ok(())
}
