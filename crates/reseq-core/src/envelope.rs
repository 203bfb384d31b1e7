//! The message model (SPEC §1): what arrives ([`RawMessage`]) and what the engine orders
//! ([`Envelope`]).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// One SQS-style message attribute. `data_type` keeps custom suffixes (`Number.float`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeValue {
    /// `String`, `Number` or `Binary`, with any custom suffix.
    pub data_type: String,
    /// The value of a `String` or `Number` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// The value of a `Binary` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<Bytes>,
}

impl AttributeValue {
    /// A `String` attribute.
    pub fn string(s: impl Into<String>) -> AttributeValue {
        AttributeValue {
            data_type: "String".into(),
            string: Some(s.into()),
            binary: None,
        }
    }
    /// A `Number` attribute.
    pub fn number(n: impl ToString) -> AttributeValue {
        AttributeValue {
            data_type: "Number".into(),
            string: Some(n.to_string()),
            binary: None,
        }
    }
}

/// A message's attributes, by name.
pub type Attributes = BTreeMap<String, AttributeValue>;

/// The attribute under which a message's AWS X-Ray trace header (SQS's *system* attribute
/// `AWSTraceHeader`) travels with it: received with the message, staged with its other
/// attributes in every store, handed to the handler in [`crate::Release::attributes`], and
/// sent on by reseq's SQS outputs and DLQ as the system attribute again (never as a
/// message attribute). A message attribute of that name is taken for the same.
pub const TRACE_HEADER: &str = "AWSTraceHeader";

/// A message as received, before its context and position are known.
#[derive(Clone, Debug, Default)]
pub struct RawMessage {
    /// The SQS `MessageId` (in `reseq run`: the input line number).
    pub message_id: String,
    /// The body, byte for byte.
    pub body: Bytes,
    /// The message attributes (and the trace header under [`TRACE_HEADER`]).
    pub attributes: Attributes,
    /// The FIFO `MessageGroupId`, when there is one.
    pub group_id: Option<String>,
    /// When it was received (the retention and gap timeouts count from here).
    pub received_at: Millis,
    /// How many times the source has delivered this message, this time included (SQS
    /// `ApproximateReceiveCount`); 0 when the source does not count. A message held back
    /// by capacity that keeps coming back is staged anyway (see
    /// [`crate::EngineConfig::stage_held_after`]).
    pub receive_count: u32,
}

/// A message whose context and position are known: the unit the engine orders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The context it belongs to.
    pub context_id: String,
    /// Its position in the context.
    pub seq: u64,
    /// As [`RawMessage::message_id`].
    pub message_id: String,
    /// As [`RawMessage::body`].
    pub body: Bytes,
    /// As [`RawMessage::attributes`].
    pub attributes: Attributes,
    /// As [`RawMessage::received_at`].
    pub received_at: Millis,
    /// `final=true`: releasing this message closes the context (SPEC §2).
    pub is_final: bool,
    /// As [`RawMessage::receive_count`].
    pub receive_count: u32,
    /// The message's type key, for a typed sequence (SPEC §5); `None` for a numeric one.
    /// A typed message's `seq` is the hash of its idempotence id.
    pub message_type: Option<String>,
}

impl Envelope {
    /// A minimal envelope, for tests and generators.
    pub fn new(context_id: impl Into<String>, seq: u64, body: impl Into<Bytes>) -> Envelope {
        Envelope {
            context_id: context_id.into(),
            seq,
            message_id: String::new(),
            body: body.into(),
            attributes: Attributes::new(),
            received_at: Millis(0),
            is_final: false,
            receive_count: 0,
            message_type: None,
        }
    }

    /// Identity of the body: two copies of a position with different hashes conflict.
    pub fn body_hash(&self) -> u64 {
        body_hash(&self.body)
    }
}

/// The hash that tells two bodies apart (XXH3, 64 bits).
pub fn body_hash(body: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(body)
}
