//! Ordering invariants as properties: for any arrival order, any duplication, any batching,
//! any gaps and any transient handler failures, what reaches the handler is each context's
//! consecutive run, each position once, in order, and every skipped position is recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use reseq_core::testing::{RecordingDlq, RecordingHandler};
use reseq_core::{
    Duration, Engine, EngineConfig, Envelope, HandlerError, LatePolicy, ManualClock, MemoryStore, Millis, Reason,
    StagingStore,
};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Messages of up to 4 contexts with positions 1..=n, some sent twice, in a random order,
/// cut into random batches.
fn traffic() -> impl Strategy<Value = (Vec<(String, u64)>, Vec<usize>)> {
    prop::collection::vec((1u64..25, prop::collection::vec(any::<bool>(), 25)), 1..5).prop_flat_map(|contexts| {
        let mut msgs = Vec::new();
        for (c, (n, dups)) in contexts.iter().enumerate() {
            for seq in 1..=*n {
                msgs.push((format!("ctx-{c}"), seq));
                if dups[seq as usize - 1] {
                    msgs.push((format!("ctx-{c}"), seq));
                }
            }
        }
        let len = msgs.len();
        (Just(msgs).prop_shuffle(), prop::collection::vec(1usize..12, len))
    })
}

fn batches<T: Clone>(items: &[T], sizes: &[usize]) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut rest = items;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at(size.min(rest.len()));
        out.push(batch.to_vec());
        rest = tail;
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_context_is_released_once_in_order((msgs, sizes) in traffic()) {
        let engine = Engine::new(MemoryStore::new(), ManualClock::new(Millis(0)), EngineConfig::default());
        let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
        block_on(async {
            for batch in batches(&msgs, &sizes) {
                let envs = batch.iter().map(|(c, s)| Envelope::new(c.clone(), *s, format!("{c}/{s}"))).collect();
                let outcomes = engine.process(envs, &handler, &dlq).await;
                prop_assert!(outcomes.iter().all(|o| o.is_settled()), "{:?}", outcomes);
            }
            Ok(())
        })?;
        for (c, n) in &highest_positions(&msgs) {
            prop_assert_eq!(handler.seqs(c), (1..=*n).collect::<Vec<_>>());
        }
        for d in handler.delivered() {
            prop_assert_eq!(d.body, format!("{}/{}", d.context_id, d.seq));
        }
        let distinct: BTreeSet<_> = msgs.iter().collect();
        prop_assert_eq!(engine.stats().duplicates, (msgs.len() - distinct.len()) as u64);
        prop_assert!(dlq.letters().is_empty());
    }

    #[test]
    fn gaps_are_skipped_recorded_and_late_arrivals_follow_the_policy(
        contexts in prop::collection::vec((2u64..20, prop::collection::vec(0u8..4, 20)), 1..4),
        delays in prop::collection::vec(0u64..1500, 80),
        order_seed in any::<u64>(),
        sweep_every in 1usize..6,
        policy in prop_oneof![Just(LatePolicy::DeadLetter), Just(LatePolicy::Drop), Just(LatePolicy::Deliver)],
    ) {
        // Position n of every context is always sent; each other position is missing
        // with probability 1/4.
        let mut msgs = Vec::new();
        let mut missing: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (c, (n, coin)) in contexts.iter().enumerate() {
            let id = format!("ctx-{c}");
            for seq in 1..=*n {
                if seq != *n && coin[seq as usize - 1] == 0 {
                    missing.entry(id.clone()).or_default().insert(seq);
                } else {
                    msgs.push((id.clone(), seq));
                }
            }
        }
        let mut rng = order_seed;
        for i in (1..msgs.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            msgs.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let clock = Arc::new(ManualClock::new(Millis(0)));
        let cfg = EngineConfig { gap_timeout: Some(Duration::from_secs(2)), late: policy, ..EngineConfig::default() };
        let engine = Engine::new(MemoryStore::new(), clock.clone(), cfg);
        let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
        block_on(async {
            for (i, (c, s)) in msgs.iter().enumerate() {
                clock.advance(Duration::from_millis(delays[i % delays.len()]));
                let env = Envelope { received_at: reseq_core::Clock::now(&*clock), ..Envelope::new(c.clone(), *s, "b") };
                engine.process(vec![env], &handler, &dlq).await;
                if i % sweep_every == 0 {
                    engine.sweep(&handler, &dlq, 1000).await.unwrap();
                }
            }
            clock.advance(Duration::from_secs(10));
            engine.sweep(&handler, &dlq, 1000).await.unwrap();
        });
        for (c, (n, _)) in contexts.iter().enumerate() {
            let id = format!("ctx-{c}");
            let state = block_on(engine.store().load(&id)).unwrap().expect("state");
            prop_assert_eq!(state.next, n + 1, "everything is released or skipped in the end");
            let on_time: Vec<u64> = handler.delivered().iter().filter(|d| d.context_id == id && !d.late).map(|d| d.seq).collect();
            prop_assert!(on_time.windows(2).all(|w| w[0] < w[1]), "in order, once: {:?}", on_time);
            let skipped: BTreeSet<u64> = state.skipped.iter().flat_map(|r| r.first..=r.last).collect();
            for seq in 1..=*n {
                prop_assert!(on_time.contains(&seq) != skipped.contains(&seq), "{} {}: released xor skipped", id, seq);
            }
            let gone = missing.get(&id).cloned().unwrap_or_default();
            prop_assert!(gone.is_subset(&skipped), "a missing position is recorded as skipped");
            let late: Vec<u64> = skipped.difference(&gone).copied().collect();
            match policy {
                LatePolicy::DeadLetter => {
                    let dead: Vec<u64> = dlq.letters().iter().filter(|l| l.context_id == id && l.reason == Reason::Late).map(|l| l.seq).collect();
                    prop_assert_eq!(sorted(dead), late);
                }
                LatePolicy::Deliver => {
                    let delivered: Vec<u64> = handler.delivered().iter().filter(|d| d.context_id == id && d.late).map(|d| d.seq).collect();
                    prop_assert_eq!(sorted(delivered), late);
                }
                LatePolicy::Drop => {}
            }
        }
        let all_late: usize = contexts.iter().enumerate().map(|(c, _)| {
            let id = format!("ctx-{c}");
            let state = block_on(engine.store().load(&id)).unwrap().unwrap();
            let skipped: BTreeSet<u64> = state.skipped.iter().flat_map(|r| r.first..=r.last).collect();
            skipped.difference(&missing.get(&id).cloned().unwrap_or_default()).count()
        }).sum();
        prop_assert_eq!(engine.stats().late, all_late as u64);
    }

    #[test]
    fn transient_handler_failures_never_break_order(
        (msgs, sizes) in traffic(),
        failures in prop::collection::vec(0u32..4, 100),
    ) {
        let clock = Arc::new(ManualClock::new(Millis(0)));
        let engine = Engine::new(MemoryStore::new(), clock.clone(), EngineConfig::default());
        let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
        for (i, (c, s)) in msgs.iter().enumerate() {
            let k = failures[i % failures.len()];
            handler.fail(c, *s, (0..k).map(|_| HandlerError::Retryable("flaky".into())).collect());
        }
        block_on(async {
            for batch in batches(&msgs, &sizes) {
                let envs = batch.iter().map(|(c, s)| Envelope::new(c.clone(), *s, "b")).collect();
                let outcomes = engine.process(envs, &handler, &dlq).await;
                prop_assert!(outcomes.iter().all(|o| o.is_settled()), "{:?} {:?}", batch, outcomes);
                clock.advance(Duration::from_millis(700));
                engine.sweep(&handler, &dlq, 1000).await.unwrap();
            }
            // Each sweep retries a context once; stop when nothing is due any more.
            for _ in 0..500 {
                clock.advance(Duration::from_secs(60));
                if engine.sweep(&handler, &dlq, 1000).await.unwrap() == 0 {
                    break;
                }
            }
            Ok(())
        })?;
        for (c, n) in &highest_positions(&msgs) {
            prop_assert_eq!(handler.seqs(c), (1..=*n).collect::<Vec<_>>());
        }
    }
}

/// Each context's highest position: the run every context must be released as.
fn highest_positions(msgs: &[(String, u64)]) -> BTreeMap<String, u64> {
    let mut highest: BTreeMap<String, u64> = BTreeMap::new();
    for (c, s) in msgs {
        let n = highest.entry(c.clone()).or_default();
        *n = (*n).max(*s);
    }
    highest
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort();
    v
}
