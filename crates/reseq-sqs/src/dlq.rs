//! The dead-letter queue behind `--dlq-url`: conflicts, late messages, expired ones,
//! `--on-poison skip` failures, bodies too large to stage and, with `--invalid dlq`,
//! invalid messages (SPEC §1, §7).
//!
//! Each dead letter is one `SendMessage` with the body as received and its message
//! attributes, plus:
//! - `reseqReason` (String): the SPEC §7 name (`conflict`, `late`, `missing-sequence`, …);
//! - `reseqDetail` (String): what happened, cut to 1024 bytes at a character boundary
//!   (characters SQS refuses replaced by U+FFFD), and shorter when the letter would
//!   otherwise exceed SQS's 1 MiB message size limit (body + attribute names, types and
//!   values); a letter that exceeds it even with an empty detail is a [`SinkError`] that
//!   says so, with the sizes;
//! - `contextId` and `sequence` (Number) when the position is known (not for an invalid
//!   message, whose original attributes are kept as they came); `contextId` is a String,
//!   or a Binary with the UTF-8 bytes when the context id holds characters a String
//!   attribute refuses (as for the `sqs:` output).
//!
//! reseq's attributes overwrite originals of the same name; SQS takes at most 10, so the
//! originals fill what is left in name order and the rest are left out.
//!
//! A **FIFO** DLQ (URL ending in `.fifo`) gets `MessageGroupId` = the context id (or its
//! hashed form, see [`crate::ids`]); for an invalid message the FIFO group it came from,
//! else `reseq-invalid`. The `MessageDeduplicationId` is `h-<xxh3-128 hex>` of (message
//! id, reason, context id, position, body hash): a message dead-lettered twice (SQS
//! delivered it again after a crash before its delete) is one message in the DLQ, if the
//! copies come within SQS's 5-minute deduplication window.
//!
//! `Ok` means SQS took the message (it is durable). Whatever cannot be sent (no
//! `--dlq-url`, too large with reseq's attributes, SQS errors) is a [`SinkError`] saying
//! why: the caller then leaves the message on the input queue, whose redrive policy moves
//! it to the queue's own DLQ.

use std::borrow::Cow;

use aws_sdk_sqs::Client;
use bytes::Bytes;
use reseq_core::{AttributeValue, Attributes, DeadLetter, DeadLetterSink, RawMessage, Reason, Rejection, SinkError};

use crate::ids::{
    MAX_MESSAGE_BYTES, attributes_for_sqs, fifo_group_id, fifo_id_of, message_size, sqs_text, trace_for_sqs, truncate,
};
use crate::output::context_attribute;

/// `reseqDetail` is cut to this many bytes (at a character boundary).
pub const MAX_DETAIL_BYTES: usize = 1024;

/// The FIFO group of an invalid message that came without one (from a standard queue).
pub const INVALID_GROUP: &str = "reseq-invalid";

/// The dead-letter queue behind `--dlq-url`.
#[derive(Clone, Debug)]
pub struct SqsDeadLetters {
    client: Client,
    queue_url: Option<String>,
}

/// One message to send, whatever the path.
struct Letter<'a> {
    message_id: &'a str,
    body: &'a Bytes,
    attributes: &'a Attributes,
    reason: Reason,
    detail: &'a str,
    /// The context and position, when known.
    position: Option<(&'a str, u64)>,
    /// The context, or for an invalid message the FIFO group it came from.
    group: Option<&'a str>,
}

impl SqsDeadLetters {
    /// `queue_url: None`: reseq can dead-letter nothing; every [`DeadLetterSink::dead_letter`]
    /// fails, so such messages stay on the input queue, whose own redrive policy moves them.
    pub fn new(sqs: Client, queue_url: Option<String>) -> SqsDeadLetters {
        SqsDeadLetters { client: sqs, queue_url }
    }

    /// The queue, when one is set.
    pub fn queue_url(&self) -> Option<&str> {
        self.queue_url.as_deref()
    }

    /// Checks that the queue exists and can be reached (`GetQueueAttributes`), so a wrong
    /// URL fails at start. Without a queue there is nothing to check.
    pub async fn check(&self) -> Result<(), SinkError> {
        let Some(url) = &self.queue_url else { return Ok(()) };
        self.client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                SinkError(format!(
                    "cannot use the dead-letter queue {url} given by --dlq-url: {} (check the URL, the region and the \
                     credentials' SQS permissions)",
                    crate::describe_sqs_error(&e)
                ))
            })
    }

    /// Sends an invalid message (`--invalid dlq`) as it was received, with `reseqReason`
    /// and `reseqDetail` from the rejection. Its FIFO group is the one it came from, else
    /// `reseq-invalid`. The same message sent by [`DeadLetterSink::dead_letter`] (with the
    /// group id, or an empty context, and position 0) gets the same deduplication id.
    pub async fn send_invalid(&self, raw: &RawMessage, rejection: &Rejection) -> Result<(), SinkError> {
        self.send(&Letter {
            message_id: &raw.message_id,
            body: &raw.body,
            attributes: &raw.attributes,
            reason: rejection.reason,
            detail: &rejection.detail,
            position: None,
            group: raw.group_id.as_deref(),
        })
        .await
    }

    async fn send(&self, letter: &Letter<'_>) -> Result<(), SinkError> {
        let what = match letter.position {
            Some((context, seq)) => format!(
                "message {} ({}, context {context:?} position {seq})",
                letter.message_id, letter.reason
            ),
            None => format!("message {} ({})", letter.message_id, letter.reason),
        };
        let Some(url) = &self.queue_url else {
            return Err(SinkError(format!(
                "no --dlq-url is set, so {what} cannot be dead-lettered: the message stays on the input queue and its \
                 redrive policy moves it to the queue's own DLQ"
            )));
        };
        if letter.body.is_empty() {
            return Err(SinkError(format!(
                "{what} has an empty body, which SQS does not take: it stays on the input queue for its redrive policy"
            )));
        }
        // A body that came from SQS is text SQS takes; anything else is sent as close to
        // it as SQS allows, and the detail says so.
        let (body, note) = match std::str::from_utf8(letter.body) {
            Ok(text) => match sqs_text(text) {
                Cow::Borrowed(text) => (Cow::Borrowed(text), ""),
                Cow::Owned(text) => (
                    Cow::Owned(text),
                    " [reseq: the body held characters SQS refuses; they were replaced by U+FFFD]",
                ),
            },
            Err(_) => (
                Cow::Owned(sqs_text(&String::from_utf8_lossy(letter.body)).into_owned()),
                " [reseq: the body was not UTF-8; invalid bytes were replaced by U+FFFD]",
            ),
        };
        let detail = if note.is_empty() {
            sqs_text(letter.detail)
        } else {
            Cow::Owned(format!("{}{note}", sqs_text(letter.detail)))
        };
        let detail = truncate(&detail, MAX_DETAIL_BYTES);
        let added = |detail: &str| {
            let mut added = vec![
                ("reseqReason", AttributeValue::string(letter.reason.as_str())),
                ("reseqDetail", AttributeValue::string(detail)),
            ];
            if let Some((context, seq)) = letter.position {
                added.push(("contextId", context_attribute(context)));
                added.push(("sequence", AttributeValue::number(seq)));
            }
            added
        };
        let mut attributes = attributes_for_sqs(letter.attributes, &added(detail));
        let mut size = message_size(&body, &attributes);
        if size > MAX_MESSAGE_BYTES {
            // reseq's detail gives way first: cut it (at a character boundary) to what fits.
            let excess = size - MAX_MESSAGE_BYTES;
            if excess <= detail.len() {
                let short = &detail[..detail.floor_char_boundary(detail.len() - excess)];
                attributes = attributes_for_sqs(letter.attributes, &added(short));
                size = message_size(&body, &attributes);
            }
        }
        if size > MAX_MESSAGE_BYTES {
            return Err(SinkError(format!(
                "{what} cannot be dead-lettered: it is {size} bytes with its attributes and reseq's even with \
                 reseqDetail cut short (body {} bytes), over SQS's limit of {MAX_MESSAGE_BYTES} bytes: it \
                 stays on the input queue for its redrive policy",
                body.len()
            )));
        }
        let mut request = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .set_message_attributes(Some(attributes))
            .set_message_system_attributes(trace_for_sqs(letter.attributes));
        if url.ends_with(".fifo") {
            let context = letter.position.map(|(c, _)| c).or(letter.group).unwrap_or("");
            let group = if context.is_empty() {
                INVALID_GROUP.to_string()
            } else {
                fifo_group_id(context)
            };
            let seq = letter.position.map_or(0, |(_, s)| s).to_string();
            let body_hash = reseq_core::envelope::body_hash(letter.body).to_le_bytes();
            let dedup = fifo_id_of(&[
                letter.message_id.as_bytes(),
                letter.reason.as_str().as_bytes(),
                context.as_bytes(),
                seq.as_bytes(),
                &body_hash,
            ]);
            request = request.message_group_id(group).message_deduplication_id(dedup);
        }
        request.send().await.map(|_| ()).map_err(|e| {
            SinkError(format!(
                "cannot send {what} to the dead-letter queue {url} (--dlq-url): {}",
                crate::describe_sqs_error(&e)
            ))
        })
    }
}

/// The reasons of a message rejected before it had a context and position: the
/// extractor's, never the engine's.
fn is_invalid(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::InvalidJson
            | Reason::MissingContextId
            | Reason::InvalidContextId
            | Reason::MissingSequence
            | Reason::InvalidSequence
            | Reason::MissingType
            | Reason::UnknownType
    )
}

impl DeadLetterSink for SqsDeadLetters {
    /// Sends the letter (see the module documentation). A letter with an invalid-message
    /// reason (`invalid-json`, `missing-context-id`, …) is sent as
    /// [`SqsDeadLetters::send_invalid`] does: its `context_id` is then taken as the FIFO
    /// group it came from (empty for none) and no `contextId`/`sequence` is added.
    async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<(), SinkError> {
        let invalid = is_invalid(letter.reason);
        self.send(&Letter {
            message_id: letter.message_id,
            body: letter.body,
            attributes: letter.attributes,
            reason: letter.reason,
            detail: letter.detail,
            position: (!invalid).then_some((letter.context_id, letter.seq)),
            group: Some(letter.context_id).filter(|c| !c.is_empty()),
        })
        .await?;
        // The one line per dead letter that names the reason as the DLQ does (invalid
        // messages are logged where they are rejected, with theirs).
        if !invalid {
            tracing::warn!(
                message_id = %letter.message_id,
                reason = %letter.reason,
                context_id = %letter.context_id,
                seq = letter.seq,
                detail = %letter.detail,
                "dead-lettered"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_extractors_reasons_are_invalid() {
        assert!(is_invalid(Reason::MissingContextId) && is_invalid(Reason::InvalidJson));
        for engine in [
            Reason::Conflict,
            Reason::Late,
            Reason::Expired,
            Reason::HandlerFailed,
            Reason::TooLarge,
            Reason::MaxStaged,
        ] {
            assert!(!is_invalid(engine), "{engine}");
        }
    }
}
