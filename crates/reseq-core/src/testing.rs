//! Test support shared by every crate's tests and by the demo: a handler and a
//! dead-letter sink that record what they get and fail on request, and a store wrapper
//! that counts operations and injects faults.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::time::Millis;
use bytes::Bytes;

use crate::handler::{DeadLetter, DeadLetterSink, Handler, HandlerError, Release, SinkError};
use crate::reason::Reason;
use crate::store::{
    Commit, CommitOutcome, ContextState, DueQuery, StageOutcome, StagedMessage, StagingStore, StoreError, Waiting,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One handler call as the recorder saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// [`Release::context_id`].
    pub context_id: String,
    /// [`Release::seq`].
    pub seq: u64,
    /// [`Release::prev_seq`].
    pub prev_seq: Option<u64>,
    /// [`Release::body`].
    pub body: Bytes,
    /// [`Release::late`].
    pub late: bool,
    /// [`Release::attempt`].
    pub attempt: u32,
}

/// A handler that records every successful call and fails where told to.
#[derive(Default)]
pub struct RecordingHandler {
    delivered: Mutex<Vec<Delivered>>,
    /// `(context, seq)` → the errors to return on the next calls, first to last.
    failures: Mutex<HashMap<(String, u64), Vec<HandlerError>>>,
}

impl RecordingHandler {
    /// A handler that has seen nothing and fails on nothing.
    pub fn new() -> RecordingHandler {
        RecordingHandler::default()
    }

    /// The next calls for `(context_id, seq)` fail with `errors`, in order.
    pub fn fail(&self, context_id: &str, seq: u64, errors: Vec<HandlerError>) {
        lock(&self.failures).insert((context_id.to_string(), seq), errors);
    }

    /// Every successful call, in order.
    pub fn delivered(&self) -> Vec<Delivered> {
        lock(&self.delivered).clone()
    }

    /// The positions delivered for one context, in delivery order.
    pub fn seqs(&self, context_id: &str) -> Vec<u64> {
        lock(&self.delivered)
            .iter()
            .filter(|d| d.context_id == context_id)
            .map(|d| d.seq)
            .collect()
    }
}

impl Handler for RecordingHandler {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        let key = (msg.context_id.to_string(), msg.seq);
        if let Some(errors) = lock(&self.failures).get_mut(&key).filter(|errors| !errors.is_empty()) {
            return Err(errors.remove(0));
        }
        lock(&self.delivered).push(Delivered {
            context_id: msg.context_id.to_string(),
            seq: msg.seq,
            prev_seq: msg.prev_seq,
            body: msg.body.clone(),
            late: msg.late,
            attempt: msg.attempt,
        });
        Ok(())
    }
}

/// One dead letter as the recorder saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// [`DeadLetter::context_id`].
    pub context_id: String,
    /// [`DeadLetter::seq`].
    pub seq: u64,
    /// [`DeadLetter::message_id`].
    pub message_id: String,
    /// [`DeadLetter::body`].
    pub body: Bytes,
    /// [`DeadLetter::reason`].
    pub reason: Reason,
    /// [`DeadLetter::detail`].
    pub detail: String,
}

/// A dead-letter sink that records every letter, and can be made unavailable.
#[derive(Default)]
pub struct RecordingDlq {
    letters: Mutex<Vec<Rejected>>,
    unavailable: std::sync::atomic::AtomicBool,
}

impl RecordingDlq {
    /// A sink that has seen nothing.
    pub fn new() -> RecordingDlq {
        RecordingDlq::default()
    }

    /// Every letter taken, in order.
    pub fn letters(&self) -> Vec<Rejected> {
        lock(&self.letters).clone()
    }

    /// The letters' reasons, in order.
    pub fn reasons(&self) -> Vec<Reason> {
        lock(&self.letters).iter().map(|l| l.reason).collect()
    }

    /// While `true`, every letter fails with a [`SinkError`].
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Relaxed);
    }
}

impl DeadLetterSink for RecordingDlq {
    async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<(), SinkError> {
        if self.unavailable.load(Relaxed) {
            return Err(SinkError("test DLQ set unavailable".into()));
        }
        lock(&self.letters).push(Rejected {
            context_id: letter.context_id.to_string(),
            seq: letter.seq,
            message_id: letter.message_id.to_string(),
            body: letter.body.clone(),
            reason: letter.reason,
            detail: letter.detail.to_string(),
        });
        Ok(())
    }
}

/// The store operations, for counting and fault injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`StagingStore::load`].
    Load,
    /// [`StagingStore::stage`].
    Stage,
    /// [`StagingStore::staged`].
    Staged,
    /// [`StagingStore::waiting`].
    Waiting,
    /// [`StagingStore::commit`].
    Commit,
    /// [`StagingStore::due`].
    Due,
    /// [`StagingStore::flush`].
    Flush,
    /// [`StagingStore::keep_staged`].
    Keep,
}

const OPS: [Op; 8] = [
    Op::Load,
    Op::Stage,
    Op::Staged,
    Op::Waiting,
    Op::Commit,
    Op::Due,
    Op::Flush,
    Op::Keep,
];

/// Wraps a store: counts each operation and fails the ones switched to failing.
pub struct CountingStore<S> {
    /// The wrapped store.
    pub inner: S,
    counts: [AtomicU64; 8],
    failing: Mutex<Vec<Op>>,
    /// The operation to fail once, after letting `nth` calls of it through.
    armed: Mutex<Option<(Op, u32)>>,
    fired: std::sync::atomic::AtomicBool,
}

impl<S> CountingStore<S> {
    /// `inner`, counted, failing nothing yet.
    pub fn new(inner: S) -> CountingStore<S> {
        CountingStore {
            inner,
            counts: Default::default(),
            failing: Mutex::new(Vec::new()),
            armed: Mutex::new(None),
            fired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The `nth` next call of `op` (0: the very next) fails, once.
    pub fn arm_fault(&self, op: Op, nth: u32) {
        *lock(&self.armed) = Some((op, nth));
        self.fired.store(false, Relaxed);
    }

    /// Disarms; whether the armed fault fired since it was armed.
    pub fn disarm_fault(&self) -> bool {
        *lock(&self.armed) = None;
        self.fired.swap(false, Relaxed)
    }

    /// How many calls of `op` were made.
    pub fn count(&self, op: Op) -> u64 {
        self.counts[OPS.iter().position(|o| *o == op).unwrap_or(0)].load(Relaxed)
    }

    /// Store writes so far: staging puts and state commits.
    pub fn writes(&self) -> u64 {
        self.count(Op::Stage) + self.count(Op::Commit)
    }

    /// While `failing`, every call of `op` fails as unavailable.
    pub fn set_failing(&self, op: Op, failing: bool) {
        let mut f = lock(&self.failing);
        f.retain(|o| *o != op);
        if failing {
            f.push(op);
        }
    }

    fn enter(&self, op: Op) -> Result<(), StoreError> {
        if lock(&self.failing).contains(&op) {
            return Err(StoreError::Unavailable(format!("injected fault on {op:?}")));
        }
        let mut armed = lock(&self.armed);
        if let Some((_, nth)) = armed.as_mut().filter(|(armed_op, _)| *armed_op == op) {
            if *nth == 0 {
                *armed = None;
                self.fired.store(true, Relaxed);
                return Err(StoreError::Unavailable(format!("injected one-time fault on {op:?}")));
            }
            *nth -= 1;
        }
        drop(armed);
        self.counts[OPS.iter().position(|o| *o == op).unwrap_or(0)].fetch_add(1, Relaxed);
        Ok(())
    }
}

impl<S: StagingStore> StagingStore for CountingStore<S> {
    async fn load(&self, context_id: &str) -> Result<Option<ContextState>, StoreError> {
        self.enter(Op::Load)?;
        self.inner.load(context_id).await
    }
    async fn stage(&self, context_id: &str, msg: &StagedMessage) -> Result<StageOutcome, StoreError> {
        self.enter(Op::Stage)?;
        self.inner.stage(context_id, msg).await
    }
    async fn staged(
        &self,
        context_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StagedMessage>, StoreError> {
        self.enter(Op::Staged)?;
        self.inner.staged(context_id, from, to, limit).await
    }
    async fn waiting(&self, context_id: &str, from: u64) -> Result<Waiting, StoreError> {
        self.enter(Op::Waiting)?;
        self.inner.waiting(context_id, from).await
    }
    async fn commit(&self, context_id: &str, commit: &Commit) -> Result<CommitOutcome, StoreError> {
        self.enter(Op::Commit)?;
        self.inner.commit(context_id, commit).await
    }
    async fn due(&self, query: &DueQuery) -> Result<Vec<String>, StoreError> {
        self.enter(Op::Due)?;
        self.inner.due(query).await
    }
    async fn attention(&self, query: &crate::store::AttentionQuery) -> Result<crate::store::AttentionList, StoreError> {
        self.inner.attention(query).await
    }
    fn usage(&self) -> crate::store::StoreUsage {
        self.inner.usage()
    }
    async fn flush(&self) -> Result<(), StoreError> {
        self.enter(Op::Flush)?;
        self.inner.flush().await
    }
    async fn keep_staged(&self, context_id: &str, seqs: &[u64], until: Millis) -> Result<(), StoreError> {
        self.enter(Op::Keep)?;
        self.inner.keep_staged(context_id, seqs, until).await
    }
}
