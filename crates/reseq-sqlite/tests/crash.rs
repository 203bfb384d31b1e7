//! Crash and restart on the same SQLite file: at-least-once, never twice what was committed.
//!
//! The model is the real contract of `reseq run` and of a worker. A *source* (a queue)
//! holds the messages; each batch is processed, the store is flushed, and only then are the
//! settled messages acknowledged (removed from the source). Whatever is not acknowledged is
//! delivered again later, in an order the strategy picks. A *crash* drops the engine and
//! the store without a flush, at a point the strategy picks (between batches, after
//! `process` before `flush`, after `flush` before the acknowledgements); injected store
//! failures make one load, stage, read, commit or flush fail in the middle of a batch.
//! The handler stands for the downstream target and survives every crash.
//!
//! Checked for every context, delivery by delivery and at the end:
//! - order: each delivery continues the previous one (`s == prev + 1`) or starts a repeat
//!   (`s <= prev`), and every position below `s` was delivered before: nothing is skipped;
//! - once: nothing below the durable cursor (read after each successful flush) is ever
//!   delivered again, and a position is repeated only after a crash or a store failure;
//! - the cursor only moves forward, and only over delivered positions;
//! - completeness: the source drains, every position was delivered, and after a last
//!   restart the file says `next == n + 1` with nothing waiting.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use reseq_core::testing::{CountingStore, Op, RecordingDlq, RecordingHandler};
use reseq_core::{Duration, Engine, EngineConfig, Envelope, ManualClock, Millis, Outcome, StagingStore};
use reseq_sqlite::SqliteStore;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn config() -> ProptestConfig {
    // An explicit `cases` would override `PROPTEST_CASES`; honour it for longer runs.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Wraps a store and fails the `nth` call (0-based) of one operation, once, while armed.
/// One store call to fail once: the `nth` next call of `op`.
#[derive(Clone, Copy, Debug)]
struct Fault {
    op: Op,
    nth: u32,
}

fn arm(store: &CountingStore<SqliteStore>, fault: Option<Fault>) {
    match fault {
        Some(f) => store.arm_fault(f.op, f.nth),
        None => {
            store.disarm_fault();
        }
    }
}

/// A message in the source: (context index, position).
type Msg = (usize, u64);

fn ctx(c: usize) -> String {
    format!("ctx-{c}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    None,
    /// Between batches: nothing taken from the source.
    Before,
    /// After `process`, before `flush`: the handler saw the batch, the store rolls back.
    AfterProcess,
    /// After a successful `flush`, before the acknowledgements: the batch comes again.
    AfterFlush,
}

#[derive(Clone, Debug)]
struct Step {
    /// How many messages the source hands out, from `take_at` (modulo its length) on.
    size: usize,
    take_at: usize,
    /// Where the unacknowledged ones go back (modulo the source's length + 1).
    put_back_at: usize,
    fault: Option<Fault>,
    crash: Crash,
}

impl Step {
    fn plain(size: usize) -> Step {
        Step {
            size,
            take_at: 0,
            put_back_at: 0,
            fault: None,
            crash: Crash::None,
        }
    }
}

type Engine_ = Engine<CountingStore<SqliteStore>, Arc<ManualClock>>;

/// The source, the downstream (the handler) and what was made durable, across restarts.
struct World {
    _dir: tempfile::TempDir,
    path: PathBuf,
    clock: Arc<ManualClock>,
    engine: Option<Engine_>,
    handler: RecordingHandler,
    dlq: RecordingDlq,
    /// `n` per context: positions `1..=n`.
    lens: Vec<u64>,
    source: Vec<Msg>,
    /// The durable cursor per context, read after the last successful flush.
    committed: Vec<u64>,
    /// Incremented by each crash and each store failure that fired.
    epoch: u64,
    /// Deliveries already checked.
    checked: usize,
    /// Per context: the last position delivered, and `p` such that `1..=p` were all delivered.
    last: Vec<u64>,
    prefix: Vec<u64>,
    /// The epoch of the last delivery of each `(context, position)`.
    delivered_in: HashMap<(usize, u64), u64>,
    crashes: u64,
    repeats: u64,
}

impl World {
    fn new(lens: Vec<u64>, source: Vec<Msg>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let contexts = lens.len();
        let mut world = World {
            _dir: dir,
            path,
            clock: Arc::new(ManualClock::new(Millis(1_000))),
            engine: None,
            handler: RecordingHandler::new(),
            dlq: RecordingDlq::new(),
            lens,
            source,
            committed: vec![1; contexts],
            epoch: 0,
            checked: 0,
            last: vec![0; contexts],
            prefix: vec![0; contexts],
            delivered_in: HashMap::new(),
            crashes: 0,
            repeats: 0,
        };
        world.open();
        world
    }

    fn open(&mut self) {
        let store = SqliteStore::open(&self.path).unwrap();
        self.engine = Some(Engine::new(
            CountingStore::new(store),
            self.clock.clone(),
            EngineConfig::default(),
        ));
    }

    fn engine(&self) -> &Engine_ {
        self.engine.as_ref().unwrap()
    }

    /// Drops the engine and the store without a flush, and starts over on the same file.
    fn crash(&mut self) {
        self.engine = None;
        self.epoch += 1;
        self.crashes += 1;
        self.open();
    }

    /// Hands a batch to the engine and checks what reached the handler.
    async fn process(&mut self, batch: &[Msg]) -> Result<Vec<Outcome>, TestCaseError> {
        self.clock.advance(Duration::from_millis(1));
        let envs = batch
            .iter()
            .map(|&(c, s)| Envelope::new(ctx(c), s, format!("{}/{s}", ctx(c))))
            .collect();
        let outcomes = self.engine().process(envs, &self.handler, &self.dlq).await;
        self.check_deliveries()?;
        Ok(outcomes)
    }

    fn check_deliveries(&mut self) -> Result<(), TestCaseError> {
        let delivered = self.handler.delivered();
        for d in &delivered[self.checked..] {
            let c: usize = d.context_id.strip_prefix("ctx-").and_then(|c| c.parse().ok()).unwrap();
            let s = d.seq;
            let what = format!(
                "delivery of {}:{s} (prefix {}, last {})",
                d.context_id, self.prefix[c], self.last[c]
            );
            let body = format!("{}/{s}", d.context_id);
            prop_assert_eq!(&d.body[..], body.as_bytes(), "{}", what);
            prop_assert!(!d.late, "{}: flagged late", what);
            prop_assert_eq!(d.prev_seq, (s > 1).then(|| s - 1), "{}: prev_seq", what);
            prop_assert!(
                s <= self.prefix[c] + 1,
                "{}: a position before it was never delivered",
                what
            );
            prop_assert!(
                s == self.last[c] + 1 || s <= self.last[c],
                "{}: neither continues the run nor repeats",
                what
            );
            prop_assert!(
                s >= self.committed[c],
                "{}: released again below the durable cursor {}",
                what,
                self.committed[c]
            );
            if let Some(before) = self.delivered_in.insert((c, s), self.epoch) {
                prop_assert!(
                    before < self.epoch,
                    "{}: repeated without a crash or a store failure",
                    what
                );
                self.repeats += 1;
            }
            self.last[c] = s;
            if s == self.prefix[c] + 1 {
                self.prefix[c] = s;
            }
        }
        self.checked = delivered.len();
        Ok(())
    }

    /// Flushes; on success reads the durable cursors and checks they only moved forward,
    /// over delivered positions.
    async fn flush(&mut self) -> Result<bool, TestCaseError> {
        if self.engine().store().flush().await.is_err() {
            return Ok(false);
        }
        for c in 0..self.lens.len() {
            let state = self.engine().store().inner.load(&ctx(c)).await;
            let next = state
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .map_or(1, |s| s.next);
            prop_assert!(
                next >= self.committed[c],
                "{}: cursor went back {} → {next}",
                ctx(c),
                self.committed[c]
            );
            prop_assert!(
                next <= self.prefix[c] + 1,
                "{}: committed {next} but delivered 1..={}",
                ctx(c),
                self.prefix[c]
            );
            self.committed[c] = next;
        }
        Ok(true)
    }

    /// One batch of the strategy's plan, as a worker does it, with its fault and crash.
    async fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        if step.crash == Crash::Before {
            self.crash();
            return Ok(());
        }
        let from = step.take_at % self.source.len();
        let to = (from + step.size).min(self.source.len());
        let batch: Vec<Msg> = self.source.drain(from..to).collect();
        arm(self.engine().store(), step.fault.filter(|f| f.op != Op::Flush));
        let outcomes = self.process(&batch).await?;
        let mut fired = self.engine().store().disarm_fault();
        if step.crash == Crash::AfterProcess {
            self.put_back(batch, step.put_back_at);
            self.crash();
            return Ok(());
        }
        if !fired {
            prop_assert!(
                outcomes.iter().all(Outcome::is_settled),
                "no fault, yet {:?} for {:?}",
                outcomes,
                batch
            );
        }
        arm(self.engine().store(), step.fault.filter(|f| f.op == Op::Flush));
        let flushed = self.flush().await;
        fired |= self.engine().store().disarm_fault();
        if fired {
            self.epoch += 1;
        }
        if !flushed? || step.crash == Crash::AfterFlush {
            self.put_back(batch, step.put_back_at);
            if step.crash == Crash::AfterFlush {
                self.crash();
            }
            return Ok(());
        }
        let unsettled = batch
            .into_iter()
            .zip(&outcomes)
            .filter(|(_, o)| !o.is_settled())
            .map(|(m, _)| m)
            .collect();
        self.put_back(unsettled, step.put_back_at);
        Ok(())
    }

    fn put_back(&mut self, msgs: Vec<Msg>, at: usize) {
        let at = at % (self.source.len() + 1);
        self.source.splice(at..at, msgs);
    }

    /// After the source drained: restart once more and check what the file says.
    async fn check_final(&mut self) -> Result<(), TestCaseError> {
        prop_assert!(self.source.is_empty(), "the source did not drain: {:?}", self.source);
        self.crash();
        let store = &self.engine().store().inner;
        for (c, &n) in self.lens.iter().enumerate() {
            prop_assert_eq!(self.prefix[c], n, "{}: not every position was delivered", ctx(c));
            prop_assert_eq!(
                self.committed[c],
                n + 1,
                "{}: durable cursor after the last flush",
                ctx(c)
            );
            let state = store
                .load(&ctx(c))
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let state = state.ok_or_else(|| TestCaseError::fail(format!("{}: no state in the file", ctx(c))))?;
            prop_assert_eq!(state.next, n + 1, "{}: cursor in the file", ctx(c));
            prop_assert_eq!(state.last_released, Some(n));
            prop_assert!(state.retry.is_none() && state.blocked.is_none(), "{:?}", state);
            let waiting = store
                .waiting(&ctx(c), 0)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(waiting.count, 0, "{}: still waiting", ctx(c));
        }
        prop_assert_eq!(
            store.waiting_total().map_err(|e| TestCaseError::fail(e.to_string()))?,
            0
        );
        prop_assert!(self.dlq.letters().is_empty(), "{:?}", self.dlq.letters());
        Ok(())
    }
}

fn fault() -> impl Strategy<Value = Option<Fault>> {
    let op = prop_oneof![
        Just(Op::Load),
        Just(Op::Stage),
        Just(Op::Staged),
        Just(Op::Commit),
        Just(Op::Flush)
    ];
    prop_oneof![
        6 => Just(None),
        1 => (op, 0u32..4).prop_map(|(op, nth)| Some(Fault { op, nth })),
    ]
}

fn crash() -> impl Strategy<Value = Crash> {
    prop_oneof![
        8 => Just(Crash::None),
        1 => Just(Crash::Before),
        3 => Just(Crash::AfterProcess),
        1 => Just(Crash::AfterFlush),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (1usize..=8, any::<usize>(), any::<usize>(), fault(), crash()).prop_map(
        |(size, take_at, put_back_at, fault, crash)| Step {
            size,
            take_at,
            put_back_at,
            fault,
            crash,
        },
    )
}

/// Up to 4 contexts with positions `1..=n` (`n <= 20`), some sent twice, shuffled; and a
/// plan of batches with their faults and crashes.
fn scenario() -> impl Strategy<Value = (Vec<u64>, Vec<Msg>, Vec<Step>)> {
    prop::collection::vec((1u64..=20, prop::collection::vec(any::<bool>(), 20)), 1..=4).prop_flat_map(|contexts| {
        let lens: Vec<u64> = contexts.iter().map(|(n, _)| *n).collect();
        let mut msgs = Vec::new();
        for (c, (n, dups)) in contexts.iter().enumerate() {
            for seq in 1..=*n {
                msgs.push((c, seq));
                if dups[seq as usize - 1] {
                    msgs.push((c, seq));
                }
            }
        }
        (
            Just(lens),
            Just(msgs).prop_shuffle(),
            prop::collection::vec(step(), 0..40),
        )
    })
}

async fn run(lens: Vec<u64>, source: Vec<Msg>, plan: &[Step]) -> Result<World, TestCaseError> {
    let mut world = World::new(lens, source);
    let mut plan = plan.iter();
    // After the plan, plain batches acknowledge everything: the loop always ends.
    for _ in 0..plan.len() + world.source.len() + 1 {
        if world.source.is_empty() {
            break;
        }
        let step = plan.next().cloned().unwrap_or(Step::plain(8));
        world.step(&step).await?;
    }
    world.check_final().await?;
    Ok(world)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_crash_loses_nothing_and_never_repeats_what_was_committed((lens, source, plan) in scenario()) {
        block_on(run(lens, source, &plan))?;
    }
}

/// The at-least-once window, spelled out: a crash after the handler succeeded but before
/// the flush repeats the run that was in flight — including a message that had been staged
/// and acknowledged earlier — and nothing below the durable cursor.
#[test]
fn a_crash_before_the_flush_repeats_the_run_in_flight_and_nothing_committed() {
    block_on(async {
        let mut world = World::new(vec![5], vec![(0, 5), (0, 4)]);
        let outcomes = world.process(&[(0, 1), (0, 2), (0, 3)]).await.unwrap();
        assert_eq!(outcomes, vec![Outcome::Released; 3]);
        assert!(world.flush().await.unwrap());
        assert_eq!(world.committed, vec![4]);

        // Position 5 waits durably; its message is acknowledged (it leaves the source).
        assert_eq!(world.process(&[(0, 5)]).await.unwrap(), vec![Outcome::Staged]);
        assert!(world.flush().await.unwrap());
        world.source.retain(|m| *m != (0, 5));

        // Position 4 releases 4 and the staged 5; then the process dies before the flush.
        assert_eq!(world.process(&[(0, 4)]).await.unwrap(), vec![Outcome::Released]);
        assert_eq!(world.handler.seqs("ctx-0"), vec![1, 2, 3, 4, 5]);
        world.crash();
        let state = world.engine().store().inner.load("ctx-0").await.unwrap().unwrap();
        assert_eq!(state.next, 4, "the file rolled back to the last flush");

        // The source still holds 4 (never acknowledged): 4 and 5 reach the handler again.
        assert_eq!(world.source, vec![(0, 4)]);
        assert_eq!(world.process(&[(0, 4)]).await.unwrap(), vec![Outcome::Released]);
        assert!(world.flush().await.unwrap());
        world.source.clear();
        let seqs = world.handler.seqs("ctx-0");
        assert_eq!(
            seqs,
            vec![1, 2, 3, 4, 5, 4, 5],
            "at least once: the run in flight is repeated"
        );
        assert!(
            seqs[5..].iter().all(|&s| s >= 4),
            "never below the cursor committed before the crash"
        );
        assert_eq!(world.repeats, 2);
        world.check_final().await.unwrap();
    });
}

/// The checker itself rejects a repeat of a committed position: without this the property
/// above could pass vacuously.
#[test]
fn the_checker_rejects_a_repeat_of_a_committed_position() {
    block_on(async {
        let mut world = World::new(vec![2], vec![]);
        world.process(&[(0, 1)]).await.unwrap();
        assert!(world.flush().await.unwrap());
        // Forge a second release of position 1 by the downstream's own hand.
        let again = reseq_core::Release {
            context_id: "ctx-0",
            seq: 1,
            prev_seq: None,
            message_id: "",
            body: &bytes::Bytes::from("ctx-0/1"),
            attributes: &Default::default(),
            late: false,
            attempt: 1,
        };
        reseq_core::Handler::handle(&world.handler, &again).await.unwrap();
        world.epoch += 1;
        let err = world.check_deliveries().unwrap_err().to_string();
        assert!(err.contains("below the durable cursor"), "{err}");
    });
}

/// A failed store read in the middle of a batch must not settle a message that was never
/// written. Batch `[3, 1]` on an empty context: 3 waits in the batch (nothing read yet),
/// then releasing 1 reads the store, which fails. 3 must then not be acknowledged.
#[test]
fn a_failed_read_does_not_settle_a_message_it_never_staged() {
    block_on(async {
        let mut world = World::new(vec![3], vec![(0, 3), (0, 1), (0, 2)]);
        let batch = world.source[..2].to_vec();
        world.engine().store().arm_fault(Op::Staged, 0);
        let outcomes = world.process(&batch).await.unwrap();
        assert!(world.engine().store().disarm_fault());
        let staged = world
            .engine()
            .store()
            .inner
            .staged("ctx-0", 1, u64::MAX, 10)
            .await
            .unwrap();
        let staged: Vec<u64> = staged.iter().map(|m| m.seq).collect();
        assert!(
            !outcomes[0].is_settled() || staged.contains(&3),
            "position 3 is {:?} (acknowledged) but the store holds only {staged:?}: it is lost",
            outcomes[0]
        );
    });
}
