//! The two outputs of the engine: the [`Handler`] that receives released messages, and
//! the [`DeadLetterSink`] that receives what can never be released.

use std::future::Future;

use bytes::Bytes;

use crate::envelope::Attributes;
use crate::reason::Reason;

/// A message handed to the handler, in order. `(context_id, seq)` is a fencing token:
/// a target that stores the highest `seq` it applied per context can drop a repeat.
///
/// A release is recorded only after the handler returned `Ok`, so a call that succeeded
/// can be made again for the same position (the process died before its commit, or the
/// call outlived its time bound and was retried): make the target's write conditional on
/// the token, in the same write as the effect (see [`Handler`]).
#[derive(Clone, Copy, Debug)]
pub struct Release<'a> {
    /// The context (an order, an account) the message belongs to.
    pub context_id: &'a str,
    /// Its position in the context: each context's releases come in increasing `seq`.
    pub seq: u64,
    /// The position released before this one (`None` for the first, and for late messages).
    pub prev_seq: Option<u64>,
    /// The source's message id (SQS `MessageId`; in `reseq run`, the line number).
    pub message_id: &'a str,
    /// The body, byte for byte as received.
    pub body: &'a Bytes,
    /// The message attributes as received (on SQS, also `AWSTraceHeader`).
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
///
/// The text says what failed; it is logged, kept as the context's last error
/// (`reseq inspect`) and, for a dead-lettered message, sent as its detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Try again later: 1 s backoff doubling to 60 s, at most `--max-attempts` attempts;
    /// while the target fails for several contexts in a row (an outage) no attempt is
    /// counted. The context waits meanwhile.
    #[error("retryable: {0}")]
    Retryable(String),
    /// No retry helps: the message is poison at once (`--on-poison block` stops the
    /// context there, `skip` dead-letters it as `handler-failed`).
    #[error("permanent: {0}")]
    Permanent(String),
    /// The target can never take this message: dead-lettered `handler-failed` under
    /// either poison policy, and the context goes on.
    #[error("rejected by the target: {0}")]
    Rejected(String),
}

/// Where released messages go: your code. The engine calls it once per release, one
/// call at a time per context, in position order, and records the release only after it
/// returned `Ok` — so it may be called again for a position it already handled (after a
/// crash, or a call cut by its time bound): keep the target's write fenced by
/// `(context_id, seq)`. Different contexts may be handled concurrently.
///
/// A handler that appends to a log, fenced, with a failure that a retry fixes, on the
/// in-memory engine:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
///
/// use reseq_core::testing::RecordingDlq;
/// use reseq_core::{Duration, Engine, EngineConfig, Envelope, Handler, HandlerError, ManualClock, MemoryStore, Millis, Release};
///
/// #[derive(Default)]
/// struct Log {
///     lines: Mutex<Vec<String>>,
///     /// The fence: the last position applied per context.
///     applied: Mutex<HashMap<String, u64>>,
/// }
///
/// impl Handler for Log {
///     async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
///         let Ok(text) = std::str::from_utf8(msg.body) else {
///             return Err(HandlerError::Rejected("the log takes text only".into()));
///         };
///         if text == "flaky" && msg.attempt == 1 {
///             return Err(HandlerError::Retryable("the log timed out".into()));
///         }
///         let mut applied = self.applied.lock().unwrap();
///         if applied.get(msg.context_id).is_some_and(|&last| last >= msg.seq) {
///             return Ok(()); // a repeat: applied already
///         }
///         self.lines.lock().unwrap().push(format!("{} #{}: {text}", msg.context_id, msg.seq));
///         applied.insert(msg.context_id.to_string(), msg.seq);
///         Ok(())
///     }
/// }
///
/// let engine = Engine::new(MemoryStore::new(), ManualClock::new(Millis(0)), EngineConfig::default());
/// let (log, dlq) = (Log::default(), RecordingDlq::new());
/// let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
///
/// let batch = vec![
///     Envelope::new("order-1", 2, "paid"),
///     Envelope::new("order-1", 1, "created"),
///     Envelope::new("order-1", 3, "flaky"),
///     Envelope::new("order-1", 4, vec![0xff]),
/// ];
/// let outcomes = runtime.block_on(engine.process(batch, &log, &dlq));
/// assert!(outcomes.iter().all(|o| o.is_settled()), "staged or released: the source may delete them");
/// // 1 and 2 in order; 3 failed once and waits for its retry (and 4 behind it).
/// assert_eq!(log.lines.lock().unwrap().len(), 2);
///
/// engine.clock().advance(Duration::from_secs(2)); // past the 1 s backoff
/// runtime.block_on(engine.sweep(&log, &dlq, 100)).unwrap();
/// assert_eq!(
///     *log.lines.lock().unwrap(),
///     ["order-1 #1: created", "order-1 #2: paid", "order-1 #3: flaky"]
/// );
/// // 4 is not text: rejected, dead-lettered, and the context goes on.
/// assert_eq!(dlq.reasons(), [reseq_core::Reason::HandlerFailed]);
/// ```
pub trait Handler: Send + Sync {
    /// Handles one released message: `Ok` when the target has it (durably, if it must
    /// survive a crash), else what kind of failure it is.
    fn handle(&self, msg: &Release<'_>) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A message that goes to the dead-letter queue, with the reason users see.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetter<'a> {
    /// The message's context (empty when it had none: an invalid message).
    pub context_id: &'a str,
    /// Its position (0 when it had none).
    pub seq: u64,
    /// The source's message id.
    pub message_id: &'a str,
    /// The body, byte for byte.
    pub body: &'a Bytes,
    /// The attributes as received.
    pub attributes: &'a Attributes,
    /// Why it can never be released (SPEC §7: `conflict`, `late`, `expired`, …).
    pub reason: Reason,
    /// What exactly, in words (`reseqDetail` on SQS).
    pub detail: &'a str,
}

/// The dead-letter sink could not take a message: the engine keeps it (staged, or held
/// at the source) and tries again later.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("dead-letter queue unavailable: {0}")]
pub struct SinkError(pub String);

/// Where what can never be released goes (the SQS DLQ, the `--dlq` file).
pub trait DeadLetterSink: Send + Sync {
    /// Must be durable when it returns `Ok`: the engine forgets the message afterwards.
    fn dead_letter(&self, letter: &DeadLetter<'_>) -> impl Future<Output = Result<(), SinkError>> + Send;
}
