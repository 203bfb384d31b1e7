//! The staging seam: what the engine needs from durable storage, and nothing more.
//!
//! Every method is one conditional operation a DynamoDB table can do in one request:
//! - [`StagingStore::stage`] is a conditional put (`attribute_not_exists`): a second copy
//!   of a position is reported, never overwritten.
//! - [`StagingStore::commit`] is one conditional write of the context's state item,
//!   guarded by its version. Releasing a run of k messages is one commit: staged
//!   positions below the new cursor count as released, and a store may leave them for
//!   TTL instead of deleting them.
//! - [`StagingStore::staged`] is a query on a range of the sort key.
//!
//! Writes become durable at [`StagingStore::flush`]; a store that writes through makes
//! it a no-op. Callers acknowledge a message to its source only after a flush.

use std::collections::BTreeMap;
use std::future::Future;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::{Attributes, Envelope};
use crate::time::Millis;

/// An inclusive range of positions that were given up on (gap timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    /// The first position of the range.
    pub first: u64,
    /// The last position of the range (included).
    pub last: u64,
}

impl SeqRange {
    /// Whether `seq` is in the range.
    pub fn contains(&self, seq: u64) -> bool {
        self.first <= seq && seq <= self.last
    }
}

/// The handler failed on `seq` and it will be tried again at `not_before`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryState {
    /// The position that failed.
    pub seq: u64,
    /// Attempts counted so far.
    pub attempts: u32,
    /// No retry before then.
    pub not_before: Millis,
    /// The handler's last error.
    pub last_error: String,
    /// Failures while the target was out for every context (the circuit was open): they
    /// back the retry off but count no attempt (SPEC §3: an outage is not poison).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outage_retries: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Waiting messages reached the retention but could not be dead-lettered (no DLQ, or it
/// failed): the sweep tries again at `not_before`, backing off, and the store keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryRetry {
    /// Tries so far.
    pub attempts: u32,
    /// No try before then.
    pub not_before: Millis,
    /// The sink's last error.
    pub last_error: String,
}

/// The context stopped at `seq` (`--on-poison block`) until an operator acts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// The poison message's position.
    pub seq: u64,
    /// Attempts made.
    pub attempts: u32,
    /// The handler's last error.
    pub error: String,
    /// When it blocked.
    pub since: Millis,
}

/// A worker's claim on a context while it releases (SPEC §4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder (`<owner>/<n>`, see [`crate::engine::LeaseConfig`]).
    pub owner: String,
    /// When it runs out unless renewed.
    pub until: Millis,
}

/// Everything the engine knows about one context, stored as one item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextState {
    /// The next position to release.
    pub next: u64,
    /// The last position handed to the handler successfully (the next release's `prev_seq`).
    pub last_released: Option<u64>,
    /// Set by the store: 0 means "not stored yet"; each commit increments it.
    pub version: u64,
    /// Positions given up on (gap timeouts, operators' skips, too-large messages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SeqRange>,
    /// A handler retry that is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryState>,
    /// The context is stopped at a poison message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
    /// The position of the `final` message, once released: the context is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_seq: Option<u64>,
    /// The worker releasing it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// When this state was last written: with no messages waiting, the context's records
    /// expire `retention` after it.
    pub updated_at: Millis,
    /// Since when messages wait in this context (the oldest waiting message's arrival, as
    /// far as the engine knows); `None` when nothing waits. Staging never writes the state:
    /// the engine records this in its own commit when a context starts waiting, which is
    /// what lets gap timers and expiry be found through the state alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<Millis>,
    /// When a sweep must look at this context next (a retry, a gap timeout, retention),
    /// computed by the engine at each commit. Stores index it: [`StagingStore::due`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Millis>,
    /// Expired messages the sink could not take yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_retry: Option<ExpiryRetry>,
    /// An operator asked (`reseq skip`) to move the cursor to this position: the next
    /// sweep (or batch) of a worker records the positions before it as skipped and
    /// disposes of their waiting messages by the `--late` policy; nothing is released
    /// until it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_skip: Option<u64>,
    /// What operators did to this context, newest last (at most [`OPERATOR_LOG`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operator_log: Vec<OperatorAction>,
    /// An instance of a typed sequence (SPEC §5) keeps its processed and waiting types
    /// here; `None` for a numeric context.
    /// Boxed: numeric contexts, the common case, carry one word for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed: Option<Box<TypedState>>,
}

/// The state of one instance of a typed sequence: which types were processed, and which
/// messages wait for their release condition, in arrival order. A waiting message is
/// staged at the position of its idempotence id's hash (see `Envelope::seq`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypedState {
    /// The sequence's name.
    pub sequence: String,
    /// Processed type keys, each with the hash of its message's idempotence id (a second
    /// message of the type is a duplicate if the hash matches, else a conflict).
    #[serde(default)]
    pub processed: BTreeMap<String, u64>,
    /// Messages waiting for their release condition, in arrival order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<TypedWaiting>,
}

/// One message of a typed instance waiting for its release condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypedWaiting {
    /// Its type key.
    pub type_key: String,
    /// Where it is staged: the hash of its idempotence id.
    pub seq: u64,
    /// When it arrived.
    pub received_at: Millis,
}

/// How many operator actions a context's state keeps.
pub const OPERATOR_LOG: usize = 10;

/// One operator action on a context (`reseq skip`, `reseq retry`): who, when, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAction {
    /// `skip` or `retry` (requested), or what a worker did carrying it out.
    pub action: String,
    /// Who.
    pub by: String,
    /// When.
    pub at: Millis,
    /// Why, in the operator's words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What the action found or asked for (e.g. "positions 5..=6 skipped").
    pub detail: String,
}

impl ContextState {
    /// A context never stored: its cursor at `first_seq`, nothing else.
    pub fn new(first_seq: u64) -> ContextState {
        ContextState {
            next: first_seq,
            last_released: None,
            version: 0,
            skipped: Vec::new(),
            retry: None,
            blocked: None,
            final_seq: None,
            lease: None,
            updated_at: Millis(0),
            waiting_since: None,
            due_at: None,
            expiry_retry: None,
            pending_skip: None,
            operator_log: Vec::new(),
            typed: None,
        }
    }

    /// Why this context needs an operator's eye, if it does: what stores index for
    /// [`StagingStore::attention`].
    pub fn attention(&self) -> Option<Attention> {
        if let Some(blocked) = &self.blocked {
            return Some(Attention::Blocked { since: blocked.since });
        }
        self.waiting_since.map(|since| Attention::Waiting { since })
    }

    /// Whether `seq` was given up on.
    pub fn is_skipped(&self, seq: u64) -> bool {
        self.skipped.iter().any(|r| r.contains(seq))
    }

    /// Records positions `first..=last` as skipped, merging with an adjacent range.
    pub fn record_skip(&mut self, first: u64, last: u64) {
        if let Some(prev) = self
            .skipped
            .last_mut()
            .filter(|prev| prev.last.checked_add(1) == Some(first))
        {
            prev.last = last;
            return;
        }
        self.skipped.push(SeqRange { first, last });
    }
}

/// Why a context needs an operator's eye. Stores index this one value per context, in a
/// small sparse index (only such contexts are in it), so that the gauges (oldest waiting
/// age, blocked contexts) and `reseq stuck` read a few index entries and never scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Attention {
    /// Stopped at a poison message (`--on-poison block`) since then.
    Blocked {
        /// When it blocked.
        since: Millis,
    },
    /// Messages wait for a missing position, the oldest since then.
    Waiting {
        /// When the oldest waiting message arrived.
        since: Millis,
    },
}

impl Attention {
    const BLOCKED: &'static str = "blocked#";
    const WAITING: &'static str = "waiting#";

    /// The index key: the kind, then the time zero-padded, so that keys sort by kind and
    /// then by age (a string sort key on DynamoDB, a text column on SQLite).
    pub fn key(self) -> String {
        match self {
            Attention::Blocked { since } => format!("{}{:020}", Self::BLOCKED, since.0),
            Attention::Waiting { since } => format!("{}{:020}", Self::WAITING, since.0),
        }
    }

    /// The key range `[from, to]` of blocked contexts.
    pub fn blocked_range() -> (String, String) {
        (
            Self::BLOCKED.to_string(),
            format!("{}{}", Self::BLOCKED, "9".repeat(20)),
        )
    }

    /// The key range `[from, to]` of contexts waiting since `before` or earlier.
    pub fn waiting_range(before: Millis) -> (String, String) {
        (Self::WAITING.to_string(), Attention::Waiting { since: before }.key())
    }

    /// The attention an index key stands for ([`Attention::key`]'s inverse).
    pub fn parse(key: &str) -> Option<Attention> {
        let time = |digits: &str| digits.parse::<u64>().ok().map(Millis);
        if let Some(rest) = key.strip_prefix(Self::BLOCKED) {
            return time(rest).map(|since| Attention::Blocked { since });
        }
        key.strip_prefix(Self::WAITING)
            .and_then(time)
            .map(|since| Attention::Waiting { since })
    }

    /// Since when.
    pub fn since(self) -> Millis {
        match self {
            Attention::Blocked { since } | Attention::Waiting { since } => since,
        }
    }
}

/// What [`StagingStore::attention`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionQuery {
    /// At most this many blocked contexts, longest blocked first.
    pub blocked_limit: usize,
    /// Contexts whose oldest message has waited since this time or earlier...
    pub waiting_before: Millis,
    /// ...at most this many, oldest first.
    pub waiting_limit: usize,
}

/// Contexts that need an operator's eye (see [`Attention`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AttentionList {
    /// Blocked contexts and since when, longest blocked first.
    pub blocked: Vec<(String, Millis)>,
    /// Contexts with messages waiting since `waiting_before` or earlier, oldest first (a
    /// blocked context is listed only as blocked).
    pub waiting: Vec<(String, Millis)>,
}

impl AttentionList {
    /// Merges per-shard answers (DynamoDB reads one index partition per shard) into one
    /// list, in order, within the limits.
    pub fn merge(parts: Vec<AttentionList>, query: &AttentionQuery) -> AttentionList {
        let mut all = AttentionList::default();
        for part in parts {
            all.blocked.extend(part.blocked);
            all.waiting.extend(part.waiting);
        }
        all.blocked.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        all.waiting.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        all.blocked.truncate(query.blocked_limit);
        all.waiting.truncate(query.waiting_limit);
        all
    }
}

/// A message waiting in the store for its predecessors (or for a handler retry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedMessage {
    /// Its position.
    pub seq: u64,
    /// The source's message id.
    pub message_id: String,
    /// The body, byte for byte.
    pub body: Bytes,
    /// The attributes as received.
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    pub attributes: Attributes,
    /// When it arrived.
    pub received_at: Millis,
    /// [`crate::envelope::body_hash`] of the body: a copy with another hash conflicts.
    pub body_hash: u64,
    /// It closes its context when released.
    #[serde(default)]
    pub is_final: bool,
}

impl StagedMessage {
    /// The message of `env`, to stage.
    pub fn from_envelope(env: Envelope) -> StagedMessage {
        StagedMessage {
            seq: env.seq,
            body_hash: env.body_hash(),
            message_id: env.message_id,
            body: env.body,
            attributes: env.attributes,
            received_at: env.received_at,
            is_final: env.is_final,
        }
    }
}

/// What a conditional put found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageOutcome {
    /// Written: this copy is now the one that counts.
    Staged,
    /// The same position with the same body hash was there already: nothing written.
    AlreadyStaged,
    /// The same position with another body hash was there already: nothing written.
    Conflict,
    /// The message cannot be stored by this store (e.g. over DynamoDB's item size even
    /// compressed): nothing written; the engine dead-letters it as `too-large`.
    TooLarge {
        /// The store's limit.
        limit_bytes: usize,
    },
}

/// How many messages wait at or after a position, and since when the oldest waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Waiting {
    /// How many.
    pub count: u64,
    /// When the oldest arrived.
    pub oldest_received_at: Option<Millis>,
}

/// One conditional write of a context's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The version the writer read (0: the context was not stored).
    pub expected_version: u64,
    /// The new state, or `None` to forget the context (retention ran out). Staged
    /// positions below `state.next` are released: the store deletes them or lets TTL do it.
    pub state: Option<ContextState>,
    /// Staged positions at or above the cursor to remove (dead-lettered as expired).
    pub remove_staged: Vec<u64>,
}

/// What a conditional commit found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Written.
    Committed,
    /// Someone else wrote the state since it was read: nothing written.
    VersionMismatch,
}

/// Which contexts a sweep should look at: those whose `state.due_at <= now`, earliest
/// first, at most `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DueQuery {
    /// Contexts due at or before this time.
    pub now: Millis,
    /// At most this many.
    pub limit: usize,
}

/// Read and write capacity units a store consumed (DynamoDB's billing units).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StoreUsage {
    /// Read capacity units.
    pub read_units: f64,
    /// Write capacity units.
    pub write_units: f64,
}

/// A store failure. `Unavailable` may succeed if tried again; `Fatal` will not.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Throttled, timed out, unreachable: may succeed if tried again.
    #[error("staging store unavailable: {0}")]
    Unavailable(String),
    /// Missing table, access denied, a request the store refuses: will not.
    #[error("staging store failed: {0}")]
    Fatal(String),
    /// A stored item that cannot be read back.
    #[error("staging store holds unreadable data for context {context_id:?}: {detail}")]
    Corrupt {
        /// The context whose item it is.
        context_id: String,
        /// What is wrong with it.
        detail: String,
    },
}

/// Durable staging for the engine. See the module documentation for the semantics each
/// method must honour; `reseq-conformance` checks them for every implementation.
pub trait StagingStore: Send + Sync {
    /// The context's state, or `None` if it was never committed (or has expired).
    fn load(&self, context_id: &str) -> impl Future<Output = Result<Option<ContextState>, StoreError>> + Send;

    /// Conditional put of a waiting message.
    fn stage(
        &self,
        context_id: &str,
        msg: &StagedMessage,
    ) -> impl Future<Output = Result<StageOutcome, StoreError>> + Send;

    /// Up to `limit` staged messages with `from <= seq <= to`, in ascending order. Callers
    /// pass `from >= state.next`; positions below the committed cursor may or may not appear.
    /// The upper bound lets a store read only the window a release can use.
    fn staged(
        &self,
        context_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StagedMessage>, StoreError>> + Send;

    /// Count and age of the staged messages with `seq >= from`. For inspection (the admin
    /// commands): the engine itself never asks, since on DynamoDB it reads every waiting
    /// item; it keeps `waiting_since` in the state instead.
    fn waiting(&self, context_id: &str, from: u64) -> impl Future<Output = Result<Waiting, StoreError>> + Send;

    /// Conditional write of the state (see [`Commit`]).
    fn commit(
        &self,
        context_id: &str,
        commit: &Commit,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// Contexts whose `due_at` has come (see [`DueQuery`]), from an index, not a scan.
    fn due(&self, query: &DueQuery) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Blocked contexts and contexts waiting since a given time, from a small index over
    /// [`ContextState::attention`], never a scan (see [`AttentionQuery`]).
    fn attention(&self, query: &AttentionQuery) -> impl Future<Output = Result<AttentionList, StoreError>> + Send;

    /// Capacity consumed since the store was made, for the metrics; zero for stores that
    /// do not count (only DynamoDB charges by the unit).
    fn usage(&self) -> StoreUsage {
        StoreUsage::default()
    }

    /// Makes every write so far durable.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Keeps the staged messages `seqs` of a context at least until `until`: a store that
    /// expires items on its own (DynamoDB TTL) pushes their expiry out. The engine calls it
    /// for waiting messages past the retention that could not be dead-lettered yet, so that
    /// a store-level expiry never takes a waiting message (SPEC §2). Stores without
    /// expiry have nothing to do.
    fn keep_staged(
        &self,
        context_id: &str,
        seqs: &[u64],
        until: Millis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (context_id, seqs, until);
        async { Ok(()) }
    }
}

/// Several engines (workers) may share one store.
impl<S: StagingStore> StagingStore for std::sync::Arc<S> {
    fn load(&self, context_id: &str) -> impl Future<Output = Result<Option<ContextState>, StoreError>> + Send {
        (**self).load(context_id)
    }
    fn stage(
        &self,
        context_id: &str,
        msg: &StagedMessage,
    ) -> impl Future<Output = Result<StageOutcome, StoreError>> + Send {
        (**self).stage(context_id, msg)
    }
    fn staged(
        &self,
        context_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StagedMessage>, StoreError>> + Send {
        (**self).staged(context_id, from, to, limit)
    }
    fn waiting(&self, context_id: &str, from: u64) -> impl Future<Output = Result<Waiting, StoreError>> + Send {
        (**self).waiting(context_id, from)
    }
    fn commit(
        &self,
        context_id: &str,
        commit: &Commit,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send {
        (**self).commit(context_id, commit)
    }
    fn due(&self, query: &DueQuery) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        (**self).due(query)
    }
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).flush()
    }
    fn attention(&self, query: &AttentionQuery) -> impl Future<Output = Result<AttentionList, StoreError>> + Send {
        (**self).attention(query)
    }
    fn usage(&self) -> StoreUsage {
        (**self).usage()
    }
    fn keep_staged(
        &self,
        context_id: &str,
        seqs: &[u64],
        until: Millis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).keep_staged(context_id, seqs, until)
    }
}
