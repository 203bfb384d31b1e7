//! A projection: the latest state of each context, one DynamoDB item per context, written
//! by the long-polling worker (`projection-worker`).
//!
//! The item (key `contextId`):
//!
//! | attribute | what |
//! |---|---|
//! | `lastSeq` | the position the item reflects: the fence |
//! | `state` | that position's message body (the context's latest state) |
//! | `messageId` | that position's SQS message id |
//! | `positions` | every position applied, in the order applied |
//!
//! (`positions` is there so that the example's test can see each position was applied
//! once and in order; a real projection keeps only its state.)

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use aws_sdk_dynamodb::types::AttributeValue;
use reseq_core::{Handler, HandlerError, Release};

/// The projection handler: writes each released message to its context's item, unless
/// the item already reflects that position or a later one.
pub struct Projection {
    client: aws_sdk_dynamodb::Client,
    table: String,
    applied: AtomicU64,
    repeats: AtomicU64,
}

impl Projection {
    /// The projection in `table` (key `contextId`, string; see [`crate::create_table`]).
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Projection {
        Projection {
            client,
            table: table.into(),
            applied: AtomicU64::new(0),
            repeats: AtomicU64::new(0),
        }
    }

    /// Positions written to the table by this process.
    pub fn applied(&self) -> u64 {
        self.applied.load(Relaxed)
    }

    /// Releases the fence dropped: positions the item already reflected (a repeat after
    /// a crash or a timed-out call, or an old position replayed).
    pub fn repeats(&self) -> u64 {
        self.repeats.load(Relaxed)
    }
}

impl Handler for Projection {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        // The state is stored as a DynamoDB string: a body that is not UTF-8 can never be
        // stored, whatever is retried, so it is rejected (dead-lettered `handler-failed`).
        let state = std::str::from_utf8(msg.body).map_err(|_| {
            HandlerError::Rejected(format!(
                "context {:?} position {}: the body is not UTF-8 text",
                msg.context_id, msg.seq
            ))
        })?;
        let written = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("contextId", AttributeValue::S(msg.context_id.to_string()))
            .update_expression(
                "SET lastSeq = :seq, #state = :state, messageId = :message, positions = \
                 list_append(if_not_exists(positions, :none), :position)",
            )
            // The fence: the effect and the position it reflects are one conditional write.
            // A first write (no item yet) or a newer position passes; a position the item
            // already reflects, or an older one, fails the condition and changes nothing.
            // reseq releases each context in order, so `lastSeq < :seq` only ever refuses
            // a repeat of a release that succeeded before (the worker died before
            // committing it, or the call was cut at its bound after the write landed),
            // or an old position replayed (with `--late deliver`, a late message too:
            // a projection of the latest state rightly ignores it).
            .condition_expression("attribute_not_exists(lastSeq) OR lastSeq < :seq")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":seq", AttributeValue::N(msg.seq.to_string()))
            .expression_attribute_values(":state", AttributeValue::S(state.to_string()))
            .expression_attribute_values(":message", AttributeValue::S(msg.message_id.to_string()))
            .expression_attribute_values(":none", AttributeValue::L(Vec::new()))
            .expression_attribute_values(
                ":position",
                AttributeValue::L(vec![AttributeValue::N(msg.seq.to_string())]),
            )
            .send()
            .await;
        match written {
            Ok(_) => {
                self.applied.fetch_add(1, Relaxed);
                Ok(())
            }
            // Already applied: done. Returning an error here would retry for ever.
            Err(err) if crate::is_condition_failure(&err) => {
                self.repeats.fetch_add(1, Relaxed);
                tracing::info!(
                    context_id = msg.context_id,
                    seq = msg.seq,
                    attempt = msg.attempt,
                    "the projection already reflects this position: a repeat, dropped"
                );
                Ok(())
            }
            Err(err) => Err(crate::handler_error(
                &format!("projecting context {:?} position {}", msg.context_id, msg.seq),
                &err,
            )),
        }
    }
}
