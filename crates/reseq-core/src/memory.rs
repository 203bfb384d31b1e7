//! An in-memory [`StagingStore`]: the reference implementation of the store semantics,
//! used by `reseq run` without `--state`, by the demo's fast path and by simulations.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::store::{
    Attention, AttentionList, AttentionQuery, Commit, CommitOutcome, ContextState, DueQuery, StageOutcome,
    StagedMessage, StagingStore, StoreError, Waiting,
};
use crate::time::Millis;

#[derive(Default)]
struct Entry {
    state: Option<ContextState>,
    staged: BTreeMap<u64, StagedMessage>,
}

impl Entry {
    fn next(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.next)
    }

    fn due_at(&self) -> Option<Millis> {
        self.state.as_ref().and_then(|s| s.due_at)
    }
}

/// The entry of a context, created if missing, without allocating a key when it exists.
fn entry_mut<'a>(m: &'a mut HashMap<String, Entry>, context_id: &str) -> &'a mut Entry {
    if !m.contains_key(context_id) {
        m.insert(context_id.to_string(), Entry::default());
    }
    m.get_mut(context_id).expect("inserted above")
}

/// The reference [`StagingStore`], in memory: every behaviour the store contract asks for
/// (the conformance suite runs on it), nothing durable. For tests, simulations, examples
/// and `reseq run` without `--state`.
#[derive(Default)]
pub struct MemoryStore {
    contexts: Mutex<HashMap<String, Entry>>,
    /// The largest body it stages, like DynamoDB's item limit; `None`: any size.
    body_limit: Option<usize>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A store that refuses to stage bodies over `bytes` ([`StageOutcome::TooLarge`]), as
    /// a store with an item limit does: lets tests drive the engine's too-large path.
    pub fn with_body_limit(bytes: usize) -> MemoryStore {
        MemoryStore {
            body_limit: Some(bytes),
            ..MemoryStore::default()
        }
    }

    /// How many messages wait in every context together.
    pub fn waiting_total(&self) -> u64 {
        self.with(|m| m.values().map(|e| e.staged.range(e.next()..).count() as u64).sum())
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> T) -> T {
        // A panic while holding the lock cannot leave an entry half-written: every
        // mutation below is a single insert or remove.
        let mut guard = self.contexts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }
}

impl StagingStore for MemoryStore {
    async fn load(&self, context_id: &str) -> Result<Option<ContextState>, StoreError> {
        Ok(self.with(|m| m.get(context_id).and_then(|e| e.state.clone())))
    }

    async fn stage(&self, context_id: &str, msg: &StagedMessage) -> Result<StageOutcome, StoreError> {
        if let Some(limit_bytes) = self.body_limit.filter(|limit| msg.body.len() > *limit) {
            return Ok(StageOutcome::TooLarge { limit_bytes });
        }
        Ok(self.with(|m| {
            let entry = entry_mut(m, context_id);
            match entry.staged.get(&msg.seq) {
                Some(existing) if existing.body_hash == msg.body_hash => StageOutcome::AlreadyStaged,
                Some(_) => StageOutcome::Conflict,
                None => {
                    entry.staged.insert(msg.seq, msg.clone());
                    StageOutcome::Staged
                }
            }
        }))
    }

    async fn staged(
        &self,
        context_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StagedMessage>, StoreError> {
        Ok(self.with(|m| {
            m.get(context_id)
                .map(|e| {
                    e.staged
                        .range(from..=to.max(from))
                        .filter(|(seq, _)| **seq <= to)
                        .take(limit)
                        .map(|(_, msg)| msg.clone())
                        .collect()
                })
                .unwrap_or_default()
        }))
    }

    async fn waiting(&self, context_id: &str, from: u64) -> Result<Waiting, StoreError> {
        Ok(self.with(|m| {
            let Some(entry) = m.get(context_id) else {
                return Waiting::default();
            };
            entry
                .staged
                .range(from..)
                .fold(Waiting::default(), |w, (_, msg)| Waiting {
                    count: w.count + 1,
                    oldest_received_at: Some(w.oldest_received_at.map_or(msg.received_at, |t| t.min(msg.received_at))),
                })
        }))
    }

    async fn commit(&self, context_id: &str, commit: &Commit) -> Result<CommitOutcome, StoreError> {
        Ok(self.with(|m| {
            let current = m
                .get(context_id)
                .and_then(|e| e.state.as_ref())
                .map_or(0, |s| s.version);
            if current != commit.expected_version {
                return CommitOutcome::VersionMismatch;
            }
            match &commit.state {
                None => {
                    m.remove(context_id);
                }
                Some(state) => {
                    let entry = entry_mut(m, context_id);
                    let mut state = state.clone();
                    state.version = commit.expected_version + 1;
                    while entry.staged.first_key_value().is_some_and(|(seq, _)| *seq < state.next) {
                        entry.staged.pop_first();
                    }
                    for seq in &commit.remove_staged {
                        entry.staged.remove(seq);
                    }
                    entry.state = Some(state);
                }
            }
            CommitOutcome::Committed
        }))
    }

    async fn due(&self, query: &DueQuery) -> Result<Vec<String>, StoreError> {
        Ok(self.with(|m| {
            let mut due: Vec<(Millis, &String)> = m
                .iter()
                .filter_map(|(id, e)| e.due_at().filter(|t| *t <= query.now).map(|t| (t, id)))
                .collect();
            due.sort();
            due.into_iter().take(query.limit).map(|(_, id)| id.clone()).collect()
        }))
    }

    async fn attention(&self, query: &AttentionQuery) -> Result<AttentionList, StoreError> {
        let mut list = self.with(|m| {
            let mut list = AttentionList::default();
            for (id, entry) in m.iter() {
                match entry.state.as_ref().and_then(ContextState::attention) {
                    Some(Attention::Blocked { since }) => list.blocked.push((id.clone(), since)),
                    Some(Attention::Waiting { since }) if since <= query.waiting_before => {
                        list.waiting.push((id.clone(), since))
                    }
                    _ => {}
                }
            }
            list
        });
        list = AttentionList::merge(vec![list], query);
        Ok(list)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
