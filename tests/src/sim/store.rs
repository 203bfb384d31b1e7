//! A simulated DynamoDB table behind `StagingStore`: the reference semantics of
//! `MemoryStore` (conditional puts, version-guarded commits) with DynamoDB's faults, drawn
//! from the seed: a request that fails before applying (throttling, a 5xx), a write that
//! applied but reports a timeout, and the `due` index lagging the table (a commit shows up
//! in it only some time later). Every request yields once first, so that other tasks run
//! in between and a worker can die at any await point.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rand::Rng;
use rand::rngs::SmallRng;
use reseq_core::{
    Commit, CommitOutcome, ContextState, DueQuery, MemoryStore, Millis, StageOutcome, StagedMessage, StagingStore,
    StoreError, Waiting,
};

use super::executor::{SimTime, yield_now};

/// Fault rates, out of 1000 requests.
#[derive(Clone, Copy, Debug)]
pub struct StoreFaults {
    pub fail_before: u32,
    pub applied_then_timeout: u32,
    /// How far the `due` index lags behind commits, in simulated milliseconds.
    pub due_lag_ms: u64,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct FaultCounts {
    pub failed_before: u64,
    pub applied_then_timeout: u64,
}

pub struct SimStore {
    pub inner: MemoryStore,
    time: SimTime,
    rng: Mutex<SmallRng>,
    faults: StoreFaults,
    /// Set when the liveness phase starts: no more faults (the lag stays: it is not one).
    pub healed: AtomicBool,
    /// When each context's state was last committed: the `due` index hides it until then
    /// plus the lag.
    committed_at: Mutex<HashMap<String, Millis>>,
    /// When each position was first staged, for the checks.
    pub staged_at: Mutex<HashMap<(String, u64), Millis>>,
    failed_before: AtomicU64,
    applied_then_timeout: AtomicU64,
}

impl SimStore {
    pub fn new(time: SimTime, rng: SmallRng, faults: StoreFaults) -> SimStore {
        SimStore {
            inner: MemoryStore::new(),
            time,
            rng: Mutex::new(rng),
            faults,
            healed: AtomicBool::new(false),
            committed_at: Mutex::new(HashMap::new()),
            staged_at: Mutex::new(HashMap::new()),
            failed_before: AtomicU64::new(0),
            applied_then_timeout: AtomicU64::new(0),
        }
    }

    pub fn fault_counts(&self) -> FaultCounts {
        FaultCounts {
            failed_before: self.failed_before.load(Ordering::Relaxed),
            applied_then_timeout: self.applied_then_timeout.load(Ordering::Relaxed),
        }
    }

    /// Yields, then maybe fails before applying; `Ok(true)`: apply, then report a timeout.
    async fn enter(&self, write: bool) -> Result<bool, StoreError> {
        yield_now().await;
        if self.healed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let roll = self
            .rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .random_range(0..1000u32);
        if roll < self.faults.fail_before {
            self.failed_before.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable("simulated: throttled, nothing applied".into()));
        }
        let lies = write && roll < self.faults.fail_before + self.faults.applied_then_timeout;
        if lies {
            self.applied_then_timeout.fetch_add(1, Ordering::Relaxed);
        }
        Ok(lies)
    }

    fn timed_out<T>(_applied: T) -> Result<T, StoreError> {
        Err(StoreError::Unavailable(
            "simulated: timed out (the write applied)".into(),
        ))
    }
}

impl StagingStore for SimStore {
    async fn load(&self, context_id: &str) -> Result<Option<ContextState>, StoreError> {
        self.enter(false).await?;
        self.inner.load(context_id).await
    }
    async fn stage(&self, context_id: &str, msg: &StagedMessage) -> Result<StageOutcome, StoreError> {
        let lies = self.enter(true).await?;
        let outcome = self.inner.stage(context_id, msg).await?;
        if outcome == StageOutcome::Staged {
            self.staged_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((context_id.to_string(), msg.seq), self.time.now());
        }
        if lies { Self::timed_out(outcome) } else { Ok(outcome) }
    }
    async fn staged(
        &self,
        context_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StagedMessage>, StoreError> {
        self.enter(false).await?;
        self.inner.staged(context_id, from, to, limit).await
    }
    async fn waiting(&self, context_id: &str, from: u64) -> Result<Waiting, StoreError> {
        self.inner.waiting(context_id, from).await
    }
    async fn commit(&self, context_id: &str, commit: &Commit) -> Result<CommitOutcome, StoreError> {
        let lies = self.enter(true).await?;
        let outcome = self.inner.commit(context_id, commit).await?;
        if outcome == CommitOutcome::Committed {
            self.committed_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(context_id.to_string(), self.time.now());
        }
        if lies { Self::timed_out(outcome) } else { Ok(outcome) }
    }
    async fn due(&self, query: &DueQuery) -> Result<Vec<String>, StoreError> {
        self.enter(false).await?;
        // Ask for more than the limit: some are hidden by the lag.
        let wide = DueQuery {
            now: query.now,
            limit: query.limit.saturating_mul(4),
        };
        let found = self.inner.due(&wide).await?;
        let now = self.time.now();
        let committed_at = self.committed_at.lock().unwrap_or_else(|p| p.into_inner());
        let lag = reseq_core::Duration::from_millis(self.faults.due_lag_ms);
        Ok(found
            .into_iter()
            .filter(|c| committed_at.get(c).is_none_or(|at| now.since(*at) >= lag))
            .take(query.limit)
            .collect())
    }
    async fn attention(&self, query: &reseq_core::AttentionQuery) -> Result<reseq_core::AttentionList, StoreError> {
        self.enter(false).await?;
        self.inner.attention(query).await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
