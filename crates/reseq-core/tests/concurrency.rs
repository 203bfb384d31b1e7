//! Several workers on one store, as on a standard SQS queue: any worker may get any
//! message of any context, at the same time as another worker gets its neighbours. With
//! a per-context lease, no two workers release the same context at once, order holds, and
//! nothing waits forever (the lost-wakeup check). SPEC §4.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reseq_core::engine::LeaseConfig;
use reseq_core::testing::RecordingDlq;
use reseq_core::{
    Duration, Engine, EngineConfig, Envelope, Handler, HandlerError, ManualClock, MemoryStore, Millis, Release,
    StagingStore,
};

/// Records deliveries and fails the test if two releases of one context overlap.
#[derive(Default)]
struct Target {
    in_flight: Mutex<HashMap<String, bool>>,
    delivered: Mutex<HashMap<String, Vec<u64>>>,
    overlaps: Mutex<Vec<String>>,
}

impl Handler for Target {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        let busy = std::mem::replace(
            self.in_flight
                .lock()
                .unwrap()
                .entry(msg.context_id.to_string())
                .or_default(),
            true,
        );
        if busy {
            self.overlaps
                .lock()
                .unwrap()
                .push(format!("{} at {}", msg.context_id, msg.seq));
        }
        // Let other workers run in the middle of a release.
        tokio::task::yield_now().await;
        self.delivered
            .lock()
            .unwrap()
            .entry(msg.context_id.to_string())
            .or_default()
            .push(msg.seq);
        self.in_flight.lock().unwrap().insert(msg.context_id.to_string(), false);
        Ok(())
    }
}

async fn run_workers(seed: u64, workers: usize, contexts: usize, per_context: u64) -> (Arc<Target>, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(Millis(1_000_000)));
    let target = Arc::new(Target::default());
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut messages: Vec<(usize, u64)> = (0..contexts)
        .flat_map(|c| (1..=per_context).map(move |s| (c, s)))
        .collect();
    messages.shuffle(&mut rng);
    let queue = Arc::new(Mutex::new(messages.into_iter().collect::<VecDeque<_>>()));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let lease = LeaseConfig {
            owner: format!("worker-{w}"),
            duration: Duration::from_secs(60),
        };
        let config = EngineConfig {
            lease: Some(lease),
            ..EngineConfig::default()
        };
        let engine = Engine::new(store.clone(), clock.clone(), config);
        let (queue, target) = (queue.clone(), target.clone());
        let mut rng = SmallRng::seed_from_u64(seed * 31 + w as u64);
        tasks.spawn(async move {
            let dlq = RecordingDlq::new();
            for _ in 0..10_000 {
                let batch: Vec<(usize, u64)> = {
                    let mut q = queue.lock().unwrap();
                    let n = rng.random_range(1..=10).min(q.len());
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    if queue.lock().unwrap().is_empty() {
                        break;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                let envs = batch
                    .iter()
                    .map(|(c, s)| Envelope::new(format!("ctx-{c}"), *s, format!("{c}:{s}")))
                    .collect();
                let outcomes = engine.process(envs, &*target, &dlq).await;
                let mut q = queue.lock().unwrap();
                for (msg, outcome) in batch.into_iter().zip(outcomes) {
                    if !outcome.is_settled() {
                        q.push_back(msg); // not acknowledged: the queue delivers it again
                    }
                }
            }
        });
    }
    tasks.join_all().await;
    let _ = store.flush().await;
    (target, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_sharing_contexts_release_each_context_in_order_once() {
    for seed in 0..200 {
        let (contexts, per_context) = (3, 30);
        let (target, store) = run_workers(seed, 4, contexts, per_context).await;
        assert!(
            target.overlaps.lock().unwrap().is_empty(),
            "seed {seed}: overlapping releases"
        );
        let delivered = std::mem::take(&mut *target.delivered.lock().unwrap());
        for c in 0..contexts {
            let id = format!("ctx-{c}");
            let got = delivered.get(&id).cloned().unwrap_or_default();
            let state = store.load(&id).await.unwrap();
            let waiting: Vec<u64> = store
                .staged(&id, 0, u64::MAX, 100)
                .await
                .unwrap()
                .iter()
                .map(|m| m.seq)
                .collect();
            assert_eq!(
                got,
                (1..=per_context).collect::<Vec<_>>(),
                "seed {seed}, {id}: every position once, in order; state {state:?}, staged {waiting:?}"
            );
        }
    }
}
