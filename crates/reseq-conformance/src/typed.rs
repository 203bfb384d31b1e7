//! Typed sequences (SPEC §5) through the engine on a store: the jEAP Sequential Inbox
//! scenarios, run by every store's conformance suite. Each scenario uses instances of its
//! own (context ids unique to the run), so stores may share a backend.

use std::sync::Arc;

use reseq_core::sequences::{self, SequenceFile};
use reseq_core::testing::{RecordingDlq, RecordingHandler};
use reseq_core::{
    Duration, Engine, EngineConfig, Envelope, HandlerError, ManualClock, Millis, Outcome, Reason, StagingStore,
};

/// The SPEC §5 example, plus a sequence in recording mode until 2100 and one with a short
/// retention.
const FILE: &str = r#"
sequences:
  - name: order-lifecycle
    messages:
      - type: OrderCreated
      - type: StockReserved
        releaseCondition: { predecessor: OrderCreated }
      - type: OrderPaid
        releaseCondition: { predecessor: OrderCreated }
      - type: OrderShipped
        releaseCondition:
          and: [ { predecessor: OrderPaid }, { predecessor: StockReserved } ]
      - type: OrderCancelled
        releaseCondition:
          or: [ { predecessor: OrderPaid }, { predecessor: OrderCreated } ]
  - name: refunds
    retention: 2h
    messages:
      - type: RefundRequested
      - type: RefundPaid
        releaseCondition: { predecessor: RefundRequested }
  - name: migration
    recordingUntil: 2100-01-01T00:00:00Z
    messages:
      - type: AccountOpened
      - type: AccountClosed
        releaseCondition: { predecessor: AccountOpened }
"#;

/// The sequences these scenarios use (the SPEC §5 example first); the simulation's typed
/// run uses them too.
pub fn sequence_file() -> Arc<SequenceFile> {
    file()
}

fn file() -> Arc<SequenceFile> {
    Arc::new(sequences::load("conformance.yaml", FILE).expect("the test's sequence file"))
}

/// A typed engine on `store`, its clock at 1,000,000 ms.
fn engine<S: StagingStore>(store: S) -> (Engine<S, Arc<ManualClock>>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Millis(1_000_000)));
    let config = EngineConfig {
        sequences: Some(file()),
        max_attempts: 3,
        retention: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    (Engine::new(store, clock.clone(), config), clock)
}

/// A message of `type_` for the instance `<sequence>/<context>`, with idempotence id `id`.
fn msg(clock: &ManualClock, sequence: &str, context: &str, type_: &str, id: &str) -> Envelope {
    Envelope {
        context_id: format!("{sequence}/{context}"),
        seq: reseq_core::envelope::body_hash(id.as_bytes()),
        message_id: id.to_string(),
        received_at: reseq_core::Clock::now(clock),
        message_type: Some(type_.to_string()),
        ..Envelope::new("", 0, format!("{type_}:{id}"))
    }
}

/// The bodies the handler received for an instance, in order (`<type>:<id>`).
fn bodies(handler: &RecordingHandler, instance: &str) -> Vec<String> {
    handler
        .delivered()
        .into_iter()
        .filter(|d| d.context_id == instance)
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect()
}

pub async fn typed_sequences_release_by_their_conditions<S: StagingStore>(store: S) {
    let (engine, clock) = engine(store);
    let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
    let run = crate::ctx("typed");
    let instance = format!("order-lifecycle/{run}");
    let send = |batch: Vec<Envelope>| engine.process(batch, &handler, &dlq);
    let m = |t: &str, id: &str| msg(&clock, "order-lifecycle", &run, t, id);

    // A chain released in order when the predecessor arrives last; `and` waits for both.
    let out = send(vec![m("OrderShipped", "s"), m("OrderPaid", "p")]).await;
    assert_eq!(out, vec![Outcome::Staged, Outcome::Staged]);
    // A duplicate of a waiting message creates nothing new.
    assert_eq!(send(vec![m("OrderPaid", "p")]).await, vec![Outcome::Duplicate]);
    assert!(bodies(&handler, &instance).is_empty());
    assert_eq!(send(vec![m("OrderCreated", "c")]).await, vec![Outcome::Released]);
    assert_eq!(
        bodies(&handler, &instance),
        vec!["OrderCreated:c", "OrderPaid:p"],
        "Shipped still waits for StockReserved"
    );
    // A failing predecessor keeps its successors waiting until its retry succeeds.
    let reserved = m("StockReserved", "r");
    handler.fail(
        &instance,
        reserved.seq,
        vec![HandlerError::Retryable("stock service 503".into())],
    );
    assert_eq!(send(vec![reserved]).await, vec![Outcome::Staged]);
    assert_eq!(bodies(&handler, &instance).len(), 2);
    clock.advance(Duration::from_secs(2));
    engine.sweep(&handler, &dlq, 100).await.expect("sweep");
    assert_eq!(
        bodies(&handler, &instance),
        vec!["OrderCreated:c", "OrderPaid:p", "StockReserved:r", "OrderShipped:s"]
    );
    // `or` released by either; the same type with another id is a conflict.
    assert_eq!(send(vec![m("OrderCancelled", "x")]).await, vec![Outcome::Released]);
    assert_eq!(
        send(vec![m("OrderPaid", "p2")]).await,
        vec![Outcome::DeadLettered(Reason::Conflict)]
    );
    let state = engine
        .store()
        .load(&instance)
        .await
        .unwrap()
        .expect("the instance's state");
    let typed = state.typed.expect("a typed instance");
    assert_eq!(
        typed.processed.len(),
        5,
        "every type processed: the instance is complete"
    );
    assert!(typed.waiting.is_empty());

    // A type in no sequence, and a message without a context id, pass at once.
    let stray = Envelope {
        message_type: Some("Unrelated".into()),
        ..msg(&clock, "order-lifecycle", &run, "Unrelated", "u")
    };
    let orphan = Envelope {
        context_id: String::new(),
        ..m("OrderShipped", "o")
    };
    assert_eq!(
        send(vec![stray, orphan]).await,
        vec![Outcome::Released, Outcome::Released]
    );

    // Recording mode: handled at once, recorded, so a successor arriving later passes.
    let migrated = crate::ctx("typed-recording");
    let r = |t: &str, id: &str| msg(&clock, "migration", &migrated, t, id);
    assert_eq!(
        send(vec![r("AccountClosed", "b"), r("AccountOpened", "a")]).await,
        vec![Outcome::Released; 2]
    );
    assert!(dlq.letters().is_empty() || dlq.letters().iter().all(|l| l.reason == Reason::Conflict));
}

pub async fn typed_waiting_messages_expire_to_the_dlq<S: StagingStore>(store: S) {
    let (engine, clock) = engine(store);
    let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
    let run = crate::ctx("typed-expiry");
    let instance = format!("order-lifecycle/{run}");
    let shipped = msg(&clock, "order-lifecycle", &run, "OrderShipped", "s");
    assert_eq!(
        engine.process(vec![shipped], &handler, &dlq).await,
        vec![Outcome::Staged]
    );
    clock.advance(Duration::from_secs(3601));
    engine.sweep(&handler, &dlq, 1000).await.expect("sweep");
    let expired: Vec<Reason> = dlq
        .letters()
        .iter()
        .filter(|l| l.context_id == instance)
        .map(|l| l.reason)
        .collect();
    assert_eq!(
        expired,
        vec![Reason::Expired],
        "waiting messages go to the DLQ, never silently"
    );
    let state = engine.store().load(&instance).await.unwrap();
    assert!(state.and_then(|s| s.typed).is_none_or(|t| t.waiting.is_empty()));
    assert!(bodies(&handler, &instance).is_empty());
}

/// A sequence's own `retention` (here 2h) wins over the engine's (1h).
pub async fn typed_retention_is_the_sequences_own<S: StagingStore>(store: S) {
    let (engine, clock) = engine(store);
    let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
    let run = crate::ctx("typed-retention");
    let instance = format!("refunds/{run}");
    let paid = msg(&clock, "refunds", &run, "RefundPaid", "p");
    assert_eq!(engine.process(vec![paid], &handler, &dlq).await, vec![Outcome::Staged]);
    let mine = |dlq: &RecordingDlq| dlq.letters().iter().filter(|l| l.context_id == instance).count();
    clock.advance(Duration::from_secs(3601));
    engine.sweep(&handler, &dlq, 1000).await.expect("sweep");
    assert_eq!(mine(&dlq), 0, "still within the sequence's 2h");
    clock.advance(Duration::from_secs(3600));
    engine.sweep(&handler, &dlq, 1000).await.expect("sweep");
    assert_eq!(mine(&dlq), 1, "expired after the sequence's 2h");
}

/// For any arrival order of one instance's five types, every release respects its
/// condition, and every type is released exactly once.
pub async fn typed_releases_respect_conditions_in_any_order<S: StagingStore>(store: S) {
    let types = [
        "OrderCreated",
        "StockReserved",
        "OrderPaid",
        "OrderShipped",
        "OrderCancelled",
    ];
    let file = file();
    let sequence = &file.sequences[0];
    let (engine, clock) = engine(store);
    // All 120 orders of the five types, each in an instance of its own.
    let mut orders: Vec<Vec<usize>> = vec![vec![]];
    for _ in 0..types.len() {
        let mut longer = Vec::new();
        for order in &orders {
            for i in (0..types.len()).filter(|i| !order.contains(i)) {
                let mut next = order.clone();
                next.push(i);
                longer.push(next);
            }
        }
        orders = longer;
    }
    assert_eq!(orders.len(), 120);
    let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
    let run = crate::ctx("typed-orders");
    for (n, order) in orders.iter().enumerate() {
        let context = format!("{run}-{n}");
        for &i in order {
            let m = msg(&clock, "order-lifecycle", &context, types[i], &format!("{n}-{i}"));
            // A message not settled comes back, as SQS redelivers it (on a shared backend
            // another case's sweep may race this one's commit).
            for _ in 0..10 {
                let out = engine.process(vec![m.clone()], &handler, &dlq).await;
                if out[0].is_settled() {
                    break;
                }
            }
        }
        let released = bodies(&handler, &format!("order-lifecycle/{context}"));
        let mut done: Vec<String> = Vec::new();
        for body in &released {
            let key = body.split(':').next().unwrap_or_default().to_string();
            let kind = sequence.message(&key).expect("a type of the sequence");
            assert!(
                kind.ready(&|k: &str| done.iter().any(|d| d == k)),
                "order {order:?}: {key} released early: {released:?}"
            );
            done.push(key);
        }
        let mut sorted = done.clone();
        sorted.sort();
        let mut all: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        all.sort();
        assert_eq!(
            sorted, all,
            "order {order:?}: every type released exactly once: {released:?}"
        );
    }
    assert!(dlq.letters().is_empty(), "{:?}", dlq.letters());
}
