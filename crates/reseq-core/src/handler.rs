//! The two outputs of the engine: the [`Handler`] that receives released messages, and
//! the [`DeadLetterSink`] that receives what can never be released.

use std::future::Future;

use bytes::Bytes;

use crate::envelope::Attributes;
use crate::reason::Reason;

/// A message handed to the handler, in order. `(context_id, seq)` is a fencing token:
/// a target that stores the highest `seq` it applied per context can drop a repeat.
#[derive(Clone, Copy, Debug)]
pub struct Release<'a> {
    pub context_id: &'a str,
    pub seq: u64,
    /// The position released before this one (`None` for the first, and for late messages).
    pub prev_seq: Option<u64>,
    pub message_id: &'a str,
    pub body: &'a Bytes,
    pub attributes: &'a Attributes,
    /// The position had been skipped and `--late deliver` hands it over anyway.
    pub late: bool,
    /// 1 on the first try, 2 on the first retry, …
    pub attempt: u32,
}

/// Why a handler failed: a retryable failure is tried again with backoff; a permanent one
/// is poison (`--on-poison`); a rejected message is one the target can never take
/// whatever is retried (too large for it, characters it refuses): it is dead-lettered
/// `handler-failed` under either poison policy, so that it never blocks its context.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    #[error("retryable: {0}")]
    Retryable(String),
    #[error("permanent: {0}")]
    Permanent(String),
    #[error("rejected by the target: {0}")]
    Rejected(String),
}

pub trait Handler: Send + Sync {
    fn handle(&self, msg: &Release<'_>) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A message that goes to the dead-letter queue, with the reason users see.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetter<'a> {
    pub context_id: &'a str,
    pub seq: u64,
    pub message_id: &'a str,
    pub body: &'a Bytes,
    pub attributes: &'a Attributes,
    pub reason: Reason,
    pub detail: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("dead-letter queue unavailable: {0}")]
pub struct SinkError(pub String);

pub trait DeadLetterSink: Send + Sync {
    /// Must be durable when it returns `Ok`: the engine forgets the message afterwards.
    fn dead_letter(&self, letter: &DeadLetter<'_>) -> impl Future<Output = Result<(), SinkError>> + Send;
}
