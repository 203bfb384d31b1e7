//! SDK errors → [`StoreError`]s that name the table, the request and what to do.
//!
//! - `Unavailable` (may succeed if tried again): throttling, timeouts, 5xx, a connection
//!   that failed, credentials that could not be fetched in time. The SDK has already
//!   retried these with its standard backoff before they get here.
//! - `Fatal` (will not): a missing table or index, access denied, no or invalid
//!   credentials, a request DynamoDB rejects as invalid.

use std::error::Error;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use reseq_core::StoreError;

/// Where a table lives, for messages: its name and "region R (endpoint E)".
#[derive(Clone, Debug)]
pub(crate) struct Place {
    pub table: String,
    pub location: String,
}

impl Place {
    pub(crate) fn missing_table(&self) -> StoreError {
        let table = &self.table;
        StoreError::Fatal(format!(
            "DynamoDB table {table} does not exist in {}: create it with `reseq init --table {table}`",
            self.location
        ))
    }

    /// Maps a failed request (`action` is the DynamoDB action, `what` what the store was
    /// doing, e.g. "staging a message of context \"c\"").
    pub(crate) fn error<E>(&self, action: &str, what: &str, err: &SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + Error + 'static,
    {
        let table = &self.table;
        let detail = DisplayErrorContext(err);
        let unavailable = |why: &str| {
            StoreError::Unavailable(format!(
                "DynamoDB table {table}: {what}: {action} {why}, after the SDK's retries: {detail}; it may succeed if \
                 tried again"
            ))
        };
        match err {
            SdkError::ServiceError(_) => {
                let code = err.code().unwrap_or("");
                let message = err.message().unwrap_or("");
                let status = err.raw_response().map_or(0, |r| r.status().as_u16());
                match code {
                    "ResourceNotFoundException" => self.missing_table(),
                    "AccessDeniedException"
                    | "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "IncompleteSignatureException"
                    | "MissingAuthenticationTokenException"
                    | "ExpiredTokenException"
                    | "InvalidClientTokenId"
                    | "AccessDenied" => StoreError::Fatal(format!(
                        "DynamoDB table {table} in {}: {what}: {action} was refused ({code}: {message}): check the AWS \
                         credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, the task or function role) and that they allow \
                         dynamodb:{action} on the table and its indexes",
                        self.location
                    )),
                    "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "LimitExceededException"
                    | "TransactionInProgressException"
                    | "TransactionConflictException" => unavailable("was throttled or conflicted"),
                    "InternalServerError" | "ServiceUnavailable" => unavailable("failed on the server"),
                    "ValidationException" if message.contains("specified index") => StoreError::Fatal(format!(
                        "DynamoDB table {table} in {} has no index `{}`: it was not created by reseq; create a new \
                         table with `reseq init --table NAME` ({message})",
                        self.location,
                        crate::DUE_INDEX
                    )),
                    "ValidationException" if is_about_the_table_name(message) => StoreError::Fatal(format!(
                        "invalid table name {table:?} given by --table (RESEQ_TABLE): DynamoDB refuses it ({message}); \
                         a table name is 3 to 255 letters, digits, '_', '-' or '.', or a table ARN"
                    )),
                    _ if status >= 500 => unavailable("failed on the server"),
                    _ => StoreError::Fatal(format!(
                        "DynamoDB table {table} in {}: {what}: {action} was rejected ({code}: {message}); check that \
                         the table was created by `reseq init` (keys pk S, sk N, index `{}`), else this is a bug in \
                         reseq-dynamodb: please report it",
                        self.location,
                        crate::DUE_INDEX
                    )),
                }
            }
            SdkError::TimeoutError(_) => unavailable("timed out"),
            SdkError::DispatchFailure(failure) => {
                if let Some(creds) = credentials_error(err) {
                    return match creds {
                        CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_) => {
                            unavailable("could not get AWS credentials")
                        }
                        _ => StoreError::Fatal(format!(
                            "DynamoDB table {table}: {what}: no usable AWS credentials for {action}: {detail}; \
                             configure credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a role)"
                        )),
                    };
                }
                // A client built without any credentials provider at all.
                if format!("{detail}").contains("no identity resolver") {
                    return StoreError::Fatal(format!(
                        "DynamoDB table {table}: {what}: no AWS credentials are configured for {action}: {detail}; \
                         configure credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a role)"
                    ));
                }
                if failure.is_user() {
                    return StoreError::Fatal(format!(
                        "DynamoDB table {table}: {what}: {action} could not be sent to {}: {detail}; check the endpoint \
                         and region settings (AWS_REGION, AWS_ENDPOINT_URL_DYNAMODB)",
                        self.location
                    ));
                }
                unavailable(&format!("could not reach DynamoDB in {}", self.location))
            }
            SdkError::ResponseError(_) => unavailable("got an unreadable response"),
            SdkError::ConstructionFailure(_) if format!("{detail}").contains("table_name") => {
                StoreError::Fatal(format!(
                    "invalid table name {table:?} given by --table (RESEQ_TABLE): {action} cannot be sent without a \
                     table name; a table name is 3 to 255 letters, digits, '_', '-' or '.', or a table ARN"
                ))
            }
            SdkError::ConstructionFailure(_) => StoreError::Fatal(format!(
                "DynamoDB table {table}: {what}: {action} could not be built: {detail}; check the region and \
                 endpoint settings (AWS_REGION, AWS_ENDPOINT_URL_DYNAMODB)"
            )),
            _ => unavailable("failed"),
        }
    }

    /// An item this store cannot read.
    pub(crate) fn corrupt(&self, context_id: &str, what: &str, detail: String) -> StoreError {
        StoreError::Corrupt {
            context_id: context_id.to_string(),
            detail: format!(
                "DynamoDB table {}: {what} cannot be read: {detail}; fix or delete the item (pk = the context id) to \
                 start the context over",
                self.table
            ),
        }
    }

    /// A request that could not be built: always a bug here.
    pub(crate) fn bug(&self, what: &str, err: impl std::fmt::Display) -> StoreError {
        StoreError::Fatal(format!(
            "DynamoDB table {}: {what}: {err} (this is a bug in reseq-dynamodb: please report it)",
            self.table
        ))
    }
}

/// Whether a `ValidationException` message is about the table name (its length, its
/// characters, its ARN form), not about a request reseq built.
fn is_about_the_table_name(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("tablename")
        || m.contains("table name")
        || m.contains("table/index name")
        || m.contains("resource name")
        || m.contains("valid arn")
        || m.contains("invalid arn")
}

/// The credentials error somewhere in the error's source chain, if any.
fn credentials_error<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a CredentialsError> {
    let mut next: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(creds) = e.downcast_ref::<CredentialsError>() {
            return Some(creds);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_messages_about_the_table_name_are_told_apart() {
        for about_the_name in [
            "1 validation error detected: Value 'a b' at 'tableName' failed to satisfy constraint: Member must \
             satisfy regular expression pattern: [a-zA-Z0-9_.-]+",
            "TableName must be at least 3 characters long and at most 255 characters long",
            "Valid ARN format is 'arn:<awsPartition>:<vendor>:<region>:<subscriber>:resourceType/resourceName', where \
             Resource name must have length less than or equal to 255",
            "Invalid table/index name.  Table/index names must be between 3 and 255 characters long, and may contain \
             only the characters a-z, A-Z, 0-9, '_', '-', and '.'",
        ] {
            assert!(is_about_the_table_name(about_the_name), "{about_the_name}");
        }
        for other in [
            "One or more parameter values were invalid: Missing the key pk in the item",
            "The provided key element does not match the schema",
        ] {
            assert!(!is_about_the_table_name(other), "{other}");
        }
    }
}
