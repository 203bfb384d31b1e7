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
