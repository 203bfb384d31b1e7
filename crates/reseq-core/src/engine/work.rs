//! The engine's working copy of one context during a batch or a sweep, and the small
//! types its steps pass around.

use super::*;

/// Where a message about to be released comes from: it decides which outcome to settle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// A message of this batch that never waited.
    Batch(usize),
    /// A message of this batch that waited in `pending`.
    Pending(usize),
    /// A message staged by an earlier batch: its source message was settled long ago.
    Store,
}

impl Source {
    pub(super) fn index(self) -> Option<usize> {
        match self {
            Source::Batch(i) | Source::Pending(i) => Some(i),
            Source::Store => None,
        }
    }
}

pub(super) struct Pending {
    pub(super) msg: StagedMessage,
    pub(super) index: usize,
}

/// A small map from position to value, kept as a sorted vector: a context rarely has more
/// than a few entries per batch, and a vector costs one allocation where a `BTreeMap`
/// allocates a whole node.
pub(super) struct SeqMap<T> {
    pub(super) entries: Vec<(u64, T)>,
}

impl<T> SeqMap<T> {
    pub(super) fn new() -> SeqMap<T> {
        SeqMap { entries: Vec::new() }
    }

    pub(super) fn from_sorted(entries: Vec<(u64, T)>) -> SeqMap<T> {
        SeqMap { entries }
    }

    pub(super) fn find(&self, seq: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&seq, |(s, _)| *s)
    }

    pub(super) fn get(&self, seq: u64) -> Option<&T> {
        self.find(seq).ok().map(|i| &self.entries[i].1)
    }

    pub(super) fn insert(&mut self, seq: u64, value: T) {
        match self.find(seq) {
            Ok(i) => self.entries[i].1 = value,
            Err(i) => self.entries.insert(i, (seq, value)),
        }
    }

    pub(super) fn remove(&mut self, seq: u64) -> Option<T> {
        self.find(seq).ok().map(|i| self.entries.remove(i).1)
    }

    pub(super) fn first_at_or_after(&self, seq: u64) -> Option<u64> {
        let i = self.find(seq).unwrap_or_else(|i| i);
        self.entries.get(i).map(|(s, _)| *s)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, v)| v)
    }
}

/// The staged messages read from the store for one context, complete for `from..=last`.
pub(super) struct StoreView {
    pub(super) items: SeqMap<StagedMessage>,
    pub(super) from: u64,
    pub(super) last: u64,
}

impl StoreView {
    pub(super) fn empty() -> StoreView {
        StoreView {
            items: SeqMap::new(),
            from: 1,
            last: 0,
        }
    }

    pub(super) fn covers(&self, seq: u64) -> bool {
        self.from <= seq && seq <= self.last
    }
}

/// The engine's working copy of one context during a batch or a sweep.
pub(super) struct Work {
    pub(super) context_id: String,
    pub(super) state: ContextState,
    pub(super) loaded_version: u64,
    pub(super) dirty: bool,
    pub(super) pending: SeqMap<Pending>,
    pub(super) view: StoreView,
    pub(super) next_page: usize,
    /// The cursor as loaded: once it moves, `state.waiting_since` may describe messages
    /// that were released, and is worked out again.
    pub(super) start_next: u64,
    pub(super) remove_staged: Vec<u64>,
    /// Retention ran out with nothing waiting: the commit deletes the context.
    pub(super) forget: bool,
    /// This work took the context's lease: its commit gives it back.
    pub(super) leased: bool,
    /// The name this work holds a lease under: the configured owner and a number unique to
    /// this engine, so that two calls of one engine never share a lease.
    pub(super) lease_holder: String,
    /// Another worker holds the lease: nothing is released, releasable messages wait.
    pub(super) busy: bool,
    pub(super) released: Vec<usize>,
    pub(super) failed: Option<String>,
    /// Stop releasing at this time (a Lambda invocation's deadline, less a margin).
    pub(super) deadline: Option<Millis>,
    /// The deadline stopped a run: what is left waits, and the commit makes the context
    /// due at once so that the next sweep carries on.
    pub(super) cut: bool,
    /// The indexes of this batch's messages of this context: if the lost-wakeup check
    /// fails after the commit, they are given back to the source (see `unsettle`).
    pub(super) indices: Vec<usize>,
    /// A copy of a staged or released position arrived: with leases, a redelivery may be
    /// all that is left to notice a context a crashed worker did not drain, so it looks.
    pub(super) saw_copy: bool,
    /// A sweep or a drain: no source message will come back to look again if the
    /// lost-wakeup check after a release is lost (error, crash), so the commit that gives
    /// the lease back leaves the context due once the lease would have run out.
    pub(super) recheck: bool,
}

/// What [`Engine::finish`] leaves to do for one context.
pub(super) enum Finished {
    /// Written (or nothing to write), and nothing became releasable.
    Done,
    /// Written, and a message at the cursor waits with no lease held: drain it.
    Wake,
    /// The store failed: nothing of this context was settled (outcomes already held).
    Failed(String),
    /// Written, but the lost-wakeup check failed: whether something waits is unknown.
    Unchecked(String),
}

pub(super) enum Step {
    Continue,
    Stall,
}
