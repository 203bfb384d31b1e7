//! Several workers racing over shared contexts, as on a standard SQS queue: any worker may
//! get any message of any context while another worker holds that context's neighbours.
//! With a per-context lease (SPEC §4), no two workers release one context at once, every
//! position is released once and in order, and nothing is stranded (the lost wakeup).
//! Run against any store; each worker gets a store of its own (its own client).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reseq_core::engine::LeaseConfig;
use reseq_core::testing::RecordingDlq;
use reseq_core::{
    Duration, Engine, EngineConfig, Envelope, Handler, HandlerError, ManualClock, Millis, Release, StagingStore,
};

/// Records deliveries per context and every overlap of two releases of one context.
#[derive(Default)]
struct Target {
    in_flight: Mutex<HashMap<String, bool>>,
    delivered: Mutex<HashMap<String, Vec<u64>>>,
    overlaps: Mutex<Vec<String>>,
}

impl Handler for Target {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        let was_busy = std::mem::replace(
            self.in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(msg.context_id.to_string())
                .or_default(),
            true,
        );
        if was_busy {
            self.overlaps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{} at {}", msg.context_id, msg.seq));
        }
        // Let other workers run in the middle of a release.
        tokio::task::yield_now().await;
        let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        delivered.entry(msg.context_id.to_string()).or_default().push(msg.seq);
        drop(delivered);
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(msg.context_id.to_string(), false);
        Ok(())
    }
}

/// Runs one worker per store over `contexts` contexts of `per_context` positions each,
/// shuffled by `seed`, in batches of 1 to 10; a message whose outcome is not settled goes
/// back to the queue. Panics, naming the seed, if a release overlapped another of its
/// context or a context was not released exactly as 1..=per_context.
pub async fn race<S: StagingStore + 'static>(
    stores: Vec<S>,
    seed: u64,
    contexts: usize,
    per_context: u64,
    prefix: &str,
) {
    let clock = Arc::new(ManualClock::new(Millis(1_000_000)));
    let target = Arc::new(Target::default());
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut messages: Vec<(usize, u64)> = (0..contexts)
        .flat_map(|c| (1..=per_context).map(move |s| (c, s)))
        .collect();
    messages.shuffle(&mut rng);
    let queue = Arc::new(Mutex::new(messages.into_iter().collect::<VecDeque<_>>()));
    let mut tasks = tokio::task::JoinSet::new();
    for (w, store) in stores.into_iter().enumerate() {
        let lease = LeaseConfig {
            owner: format!("worker-{w}"),
            duration: Duration::from_secs(60),
        };
        let engine = Engine::new(
            store,
            clock.clone(),
            EngineConfig {
                lease: Some(lease),
                ..EngineConfig::default()
            },
        );
        let (queue, target, prefix) = (queue.clone(), target.clone(), prefix.to_string());
        let mut rng = SmallRng::seed_from_u64(seed * 31 + w as u64);
        tasks.spawn(async move {
            let dlq = RecordingDlq::new();
            for _ in 0..100_000 {
                let batch: Vec<(usize, u64)> = {
                    let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                    let n = rng.random_range(1..=10).min(q.len());
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    if queue.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                        break;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                let envs = batch
                    .iter()
                    .map(|(c, s)| Envelope::new(format!("{prefix}/ctx-{c}"), *s, format!("{c}:{s}")));
                let outcomes = engine.process(envs.collect(), &*target, &dlq).await;
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                for (msg, outcome) in batch.into_iter().zip(outcomes) {
                    if !outcome.is_settled() {
                        q.push_back(msg); // not acknowledged: the queue delivers it again
                    }
                }
            }
        });
    }
    tasks.join_all().await;
    let overlaps = std::mem::take(&mut *target.overlaps.lock().unwrap_or_else(|p| p.into_inner()));
    assert!(overlaps.is_empty(), "seed {seed}: overlapping releases {overlaps:?}");
    let delivered = std::mem::take(&mut *target.delivered.lock().unwrap_or_else(|p| p.into_inner()));
    for c in 0..contexts {
        let id = format!("{prefix}/ctx-{c}");
        let got = delivered.get(&id).cloned().unwrap_or_default();
        assert_eq!(
            got,
            (1..=per_context).collect::<Vec<_>>(),
            "seed {seed}, {id}: every position once, in order"
        );
    }
}

/// A store that fails as a real one does, decided by a seeded generator: a request that
/// fails before it applies, and a write that applies but reports a timeout. Each request
/// also yields first, so that a worker can die at any await point (see [`race_with_faults`]);
/// [`FaultyStore::hang_load`] makes one load never complete, to kill a worker exactly there.
pub struct FaultyStore<S> {
    inner: Arc<S>,
    rng: Mutex<SmallRng>,
    /// Out of 1000 requests, how many fail; `healed` stops every fault.
    per_mille: u32,
    healed: Arc<std::sync::atomic::AtomicBool>,
    /// Loads still to let through before one hangs for ever; negative: none hangs.
    hang_after: std::sync::atomic::AtomicI64,
}

impl<S: StagingStore> FaultyStore<S> {
    /// Over `inner`, failing `per_mille` of the requests until `healed` is set.
    pub fn new(inner: Arc<S>, seed: u64, per_mille: u32, healed: Arc<std::sync::atomic::AtomicBool>) -> Self {
        FaultyStore {
            inner,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            per_mille,
            healed,
            hang_after: std::sync::atomic::AtomicI64::new(-1),
        }
    }

    /// The `nth` next load (0: the very next) never completes: dropping the future then is
    /// a crash at that await point.
    pub fn hang_load(&self, nth: u32) {
        self.hang_after
            .store(i64::from(nth), std::sync::atomic::Ordering::SeqCst);
    }

    async fn fault(&self, applies: bool) -> Result<bool, reseq_core::StoreError> {
        tokio::task::yield_now().await;
        if self.healed.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        let roll = self.rng.lock().unwrap_or_else(|p| p.into_inner()).random_range(0..1000);
        if roll < self.per_mille {
            return Err(reseq_core::StoreError::Unavailable(
                "injected: failed before applying".into(),
            ));
        }
        Ok(applies && roll < self.per_mille * 3 / 2)
    }

    fn applied_but_timed_out<T>(result: T) -> Result<T, reseq_core::StoreError> {
        drop(result);
        Err(reseq_core::StoreError::Unavailable(
            "injected: applied, then timed out".into(),
        ))
    }
}

impl<S: StagingStore> StagingStore for FaultyStore<S> {
    async fn load(&self, context_id: &str) -> Result<Option<reseq_core::ContextState>, reseq_core::StoreError> {
        if self.hang_after.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            std::future::pending::<()>().await;
        }
        self.fault(false).await?;
        self.inner.load(context_id).await
    }
    async fn stage(
        &self,
        context_id: &str,
        msg: &reseq_core::StagedMessage,
    ) -> Result<reseq_core::StageOutcome, reseq_core::StoreError> {
        let lie = self.fault(true).await?;
        let outcome = self.inner.stage(context_id, msg).await?;
        if lie {
            Self::applied_but_timed_out(outcome)
        } else {
            Ok(outcome)
        }
    }
    async fn staged(
        &self,
        context_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<reseq_core::StagedMessage>, reseq_core::StoreError> {
        self.fault(false).await?;
        self.inner.staged(context_id, from, to, limit).await
    }
    async fn waiting(&self, context_id: &str, from: u64) -> Result<reseq_core::Waiting, reseq_core::StoreError> {
        self.inner.waiting(context_id, from).await
    }
    async fn commit(
        &self,
        context_id: &str,
        commit: &reseq_core::Commit,
    ) -> Result<reseq_core::CommitOutcome, reseq_core::StoreError> {
        let lie = self.fault(true).await?;
        let outcome = self.inner.commit(context_id, commit).await?;
        if lie {
            Self::applied_but_timed_out(outcome)
        } else {
            Ok(outcome)
        }
    }
    async fn due(&self, query: &reseq_core::DueQuery) -> Result<Vec<String>, reseq_core::StoreError> {
        self.fault(false).await?;
        self.inner.due(query).await
    }
    async fn attention(
        &self,
        query: &reseq_core::AttentionQuery,
    ) -> Result<reseq_core::AttentionList, reseq_core::StoreError> {
        self.fault(false).await?;
        self.inner.attention(query).await
    }
    async fn flush(&self) -> Result<(), reseq_core::StoreError> {
        self.inner.flush().await
    }
}

/// Polls `work` at most `polls` times; `None` if it had not finished: the worker died
/// there, and everything it had not acknowledged comes back.
async fn die_after<F: std::future::Future>(polls: u32, work: F) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    let mut left = polls;
    std::future::poll_fn(|cx| match work.as_mut().poll(cx) {
        std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
        std::task::Poll::Pending if left == 0 => std::task::Poll::Ready(None),
        std::task::Poll::Pending => {
            left -= 1;
            std::task::Poll::Pending
        }
    })
    .await
}

/// Checks releases against the order: position `s` only after `s - 1` was released once
/// at least (repeats of a run are the at-least-once window of a fault). Until `healed`,
/// it fails one call in twenty, retryably.
struct OrderedTarget {
    delivered: Mutex<HashMap<String, Vec<u64>>>,
    violations: Mutex<Vec<String>>,
    rng: Mutex<SmallRng>,
    healed: Arc<std::sync::atomic::AtomicBool>,
}

impl Handler for OrderedTarget {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        tokio::task::yield_now().await;
        if !self.healed.load(std::sync::atomic::Ordering::Relaxed)
            && self.rng.lock().unwrap_or_else(|p| p.into_inner()).random_ratio(1, 20)
        {
            return Err(HandlerError::Retryable("injected: target unavailable".into()));
        }
        let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        let seen = delivered.entry(msg.context_id.to_string()).or_default();
        if msg.seq > 1 && !seen.contains(&(msg.seq - 1)) {
            self.violations.lock().unwrap_or_else(|p| p.into_inner()).push(format!(
                "{} at {} before {}",
                msg.context_id,
                msg.seq,
                msg.seq - 1
            ));
        }
        seen.push(msg.seq);
        Ok(())
    }
}

/// [`race`] under faults: `workers` engines with leases over one store, which fails
/// `per_mille` of its requests (before applying, or a write that applied but reports a
/// timeout), a target that fails one call in twenty (retryable), workers that die in the
/// middle of a batch (its messages come back), and redelivery of everything not
/// acknowledged. Then the faults heal, time moves on past
/// the leases and the sweeps run: every position must have been released, in order, and
/// no context stranded. Panics naming the seed.
pub async fn race_with_faults<S: StagingStore + 'static>(
    store: Arc<S>,
    workers: usize,
    seed: u64,
    contexts: usize,
    per_context: u64,
    per_mille: u32,
) {
    let clock = Arc::new(ManualClock::new(Millis(1_000_000)));
    let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let target = OrderedTarget {
        delivered: Mutex::default(),
        violations: Mutex::default(),
        rng: Mutex::new(SmallRng::seed_from_u64(seed ^ 0x5eed)),
        healed: healed.clone(),
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut messages: Vec<(usize, u64)> = (0..contexts)
        .flat_map(|c| (1..=per_context).map(move |s| (c, s)))
        .collect();
    messages.shuffle(&mut rng);
    let mut queue: VecDeque<(usize, u64)> = messages.into_iter().collect();
    let engines: Vec<_> = (0..workers)
        .map(|w| {
            let faulty = FaultyStore::new(
                store.clone(),
                seed.wrapping_mul(7919).wrapping_add(w as u64),
                per_mille,
                healed.clone(),
            );
            let lease = LeaseConfig {
                owner: format!("worker-{w}"),
                duration: Duration::from_secs(60),
            };
            // Retries never run out here: poison is not what this race is about.
            let config = EngineConfig {
                lease: Some(lease),
                max_attempts: u32::MAX,
                ..EngineConfig::default()
            };
            Engine::new(faulty, clock.clone(), config)
        })
        .collect();
    let dlq = RecordingDlq::new();
    let envelope = |(c, s): (usize, u64)| Envelope::new(format!("faults-{seed}/ctx-{c}"), s, format!("{c}:{s}"));
    // The safety phase: up to three batches at once, interleaved at every store request,
    // each to a worker picked at random; now and then a worker dies mid-batch.
    let mut rounds = 0;
    while !queue.is_empty() && rounds < 20_000 {
        rounds += 1;
        let mut runs = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            let n = rng.random_range(1..=10).min(queue.len());
            if n == 0 {
                break;
            }
            let batch: Vec<(usize, u64)> = queue.drain(..n).collect();
            let engine = &engines[rng.random_range(0..workers)];
            let polls = if rng.random_ratio(1, 20) {
                rng.random_range(0..30)
            } else {
                u32::MAX
            };
            let envelopes = batch.iter().copied().map(envelope).collect();
            let (target, dlq) = (&target, &dlq);
            runs.push(async move { (batch, die_after(polls, engine.process(envelopes, target, dlq)).await) });
        }
        for (batch, outcomes) in futures_util::future::join_all(runs).await {
            match outcomes {
                Some(outcomes) => {
                    for (msg, outcome) in batch.into_iter().zip(outcomes) {
                        if !outcome.is_settled() {
                            queue.push_back(msg);
                        }
                    }
                }
                None => queue.extend(batch),
            }
        }
        if rng.random_ratio(1, 50) {
            clock.advance(Duration::from_secs(rng.random_range(1..90)));
            let _ = die_after(
                u32::MAX,
                engines[rng.random_range(0..workers)].sweep(&target, &dlq, 100),
            )
            .await;
        }
    }
    // The liveness phase: no more faults; leases run out; the sweeps must finish it.
    healed.store(true, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..50 {
        while let Some(msg) = queue.pop_front() {
            let outcomes = engines[0].process(vec![envelope(msg)], &target, &dlq).await;
            if !outcomes[0].is_settled() {
                queue.push_back(msg);
                break;
            }
        }
        clock.advance(Duration::from_secs(61));
        while engines[1 % workers].sweep(&target, &dlq, 100).await.unwrap_or(0) == 100 {}
    }
    let violations = std::mem::take(&mut *target.violations.lock().unwrap_or_else(|p| p.into_inner()));
    assert!(
        violations.is_empty(),
        "seed {seed}: released out of order: {violations:?}"
    );
    assert!(queue.is_empty(), "seed {seed}: {} messages never settled", queue.len());
    let delivered = std::mem::take(&mut *target.delivered.lock().unwrap_or_else(|p| p.into_inner()));
    for c in 0..contexts {
        let id = format!("faults-{seed}/ctx-{c}");
        let mut got = delivered.get(&id).cloned().unwrap_or_default();
        got.sort_unstable();
        got.dedup();
        if got == (1..=per_context).collect::<Vec<_>>() {
            continue;
        }
        let state = store.load(&id).await;
        let staged: Vec<u64> = store
            .staged(&id, 0, u64::MAX, 1000)
            .await
            .map(|v| v.iter().map(|m| m.seq).collect())
            .unwrap_or_default();
        panic!(
            "seed {seed}, {id}: stranded or lost; delivered in order: {:?}; state {state:?}; staged {staged:?}; \
             dead letters {:?}; replay: SEEDS and the seed in reseq-core/tests/concurrency.rs",
            delivered.get(&id),
            dlq.reasons()
        );
    }
}
