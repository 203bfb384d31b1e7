//! The Lambda function's events, independent of the Lambda runtime: an SQS event is one
//! batch, answered with a partial batch response (FIFO semantics); a scheduled
//! (EventBridge) event fires the timers no new message would fire. The `bootstrap`
//! binary in `reseq-lambda` only wires this to `lambda_runtime`.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use reseq_core::{Clock, DeadLetterSink, Handler, Millis, StagingStore};
use serde_json::{Value, json};

use crate::batch::{Processor, Verdict, failed_records};
use crate::message::from_lambda;

/// How many due contexts one sweep query returns.
const SWEEP_PAGE: usize = 100;

/// Why an invocation failed as a whole (Lambda then retries the whole event).
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// Neither an SQS event nor a scheduled one: the function's triggers are wrong.
    #[error(
        "unsupported event: reseq's function takes SQS events and scheduled (EventBridge) events; check its \
         triggers ({0})"
    )]
    Unsupported(String),
    /// A record without `messageId` that could not be settled: a partial batch response
    /// cannot name it.
    #[error(
        "record {position} of the batch has no messageId and could not be settled ({why}); a partial batch response \
         cannot name it, so the whole batch fails and SQS delivers it again (records settled in this batch come back \
         as duplicates and are dropped)"
    )]
    NoMessageId {
        /// The record's index in the batch.
        position: usize,
        /// Why it could not be settled (held, invalid, behind a failure of its group).
        why: String,
    },
    /// The scheduled sweep could not read or write the store.
    #[error("the timer sweep failed: {0}; the next scheduled event tries again")]
    Sweep(String),
}

/// What the function was invoked with.
#[derive(Debug)]
pub enum Event {
    /// A batch from the input queue's event source mapping.
    Sqs(SqsEvent),
    /// A scheduled (EventBridge) event: run the timer sweep.
    Scheduled,
}

impl Event {
    /// Tells an SQS event (`Records`) from a scheduled one (`source: aws.events` or
    /// `detail-type: Scheduled Event`); anything else is [`LambdaError::Unsupported`].
    pub fn parse(payload: Value) -> Result<Event, LambdaError> {
        if payload.get("Records").is_some() {
            return serde_json::from_value(payload)
                .map(Event::Sqs)
                .map_err(|e| LambdaError::Unsupported(format!("records that are not SQS messages: {e}")));
        }
        let scheduled = payload.get("source").and_then(Value::as_str) == Some("aws.events")
            || payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event");
        if scheduled {
            return Ok(Event::Scheduled);
        }
        let keys: Vec<&str> = payload
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        Err(LambdaError::Unsupported(format!("an event with keys {keys:?}")))
    }
}

/// Handles one invocation. `deadline`: when releases must stop (the invocation's
/// deadline less a margin); a run cut there stays staged and is due for the next sweep.
pub async fn handle<S, C, H, D>(
    processor: &Processor<S, C, H, D>,
    payload: Value,
    deadline: Millis,
) -> Result<Value, LambdaError>
where
    S: StagingStore,
    C: Clock,
    H: Handler,
    D: DeadLetterSink,
{
    match Event::parse(payload)? {
        Event::Sqs(event) => {
            let response = handle_sqs(processor, &event, deadline).await?;
            Ok(serde_json::to_value(response).unwrap_or_else(|_| json!({"batchItemFailures": []})))
        }
        Event::Scheduled => {
            let swept = processor
                .sweep(SWEEP_PAGE, Some(deadline))
                .await
                .map_err(|e| LambdaError::Sweep(e.to_string()))?;
            Ok(json!({ "swept": swept }))
        }
    }
}

/// One SQS batch: every record that may not be deleted is reported as failed, and after
/// a failure every later record of the same FIFO group.
pub async fn handle_sqs<S, C, H, D>(
    processor: &Processor<S, C, H, D>,
    event: &SqsEvent,
    deadline: Millis,
) -> Result<SqsBatchResponse, LambdaError>
where
    S: StagingStore,
    C: Clock,
    H: Handler,
    D: DeadLetterSink,
{
    let now = processor.engine().clock().now();
    let raws = event.records.iter().map(|r| from_lambda(r, now)).collect();
    let verdicts: Vec<Verdict> = processor.process(raws, Some(deadline)).await;
    // A record without a messageId stands in as "\0<position>", which no SQS id is.
    let ids: Vec<String> = event
        .records
        .iter()
        .enumerate()
        .map(|(position, r)| match r.message_id.as_deref() {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => format!("\0{position}"),
        })
        .collect();
    let records: Vec<(&str, Option<&str>)> = event
        .records
        .iter()
        .zip(&ids)
        .map(|(r, id)| (id.as_str(), r.attributes.get("MessageGroupId").map(String::as_str)))
        .collect();
    let failed = failed_records(&records, &verdicts);
    // A record without a messageId cannot be an item failure (an empty itemIdentifier
    // fails the whole batch anyway): if it may not be deleted, the whole batch fails;
    // if it may, it was simply processed.
    for (position, ((id, _), verdict)) in records.iter().zip(&verdicts).enumerate() {
        if !id.starts_with('\0') {
            continue;
        }
        if failed.contains(id) {
            let why = match verdict {
                Verdict::Held(hold) => format!("held: {hold:?}"),
                Verdict::Invalid(rejection) => format!("invalid: {}", rejection.reason),
                _ => "an earlier record of its message group failed".to_string(),
            };
            tracing::warn!(position, %why, "a record without messageId could not be settled: the whole batch fails");
            return Err(LambdaError::NoMessageId { position, why });
        }
        tracing::warn!(
            position,
            "a record without messageId was processed; nothing to report for it"
        );
    }
    let mut response = SqsBatchResponse::default();
    for id in failed {
        response.add_failure(id);
    }
    for (verdict, record) in verdicts.iter().zip(&event.records) {
        if let Verdict::Held(hold) = verdict {
            tracing::info!(message_id = ?record.message_id, ?hold, "not settled: reported as a batch item failure");
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_told_apart() {
        let sqs = json!({"Records": [{"messageId": "1", "body": "x", "eventSource": "aws:sqs"}]});
        assert!(matches!(Event::parse(sqs), Ok(Event::Sqs(e)) if e.records.len() == 1));
        let scheduled = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        assert!(matches!(Event::parse(scheduled), Ok(Event::Scheduled)));
        let other = json!({"hello": 1});
        assert!(Event::parse(other).unwrap_err().to_string().contains("hello"));
        let broken = json!({"Records": 5});
        assert!(matches!(Event::parse(broken), Err(LambdaError::Unsupported(_))));
    }
}
