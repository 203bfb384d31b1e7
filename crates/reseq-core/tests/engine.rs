//! The engine's ordering rules (SPEC §2–§4), one behaviour per test, on the memory store.

use std::sync::Arc;

use reseq_core::testing::{CountingStore, Op, RecordingDlq, RecordingHandler};
use reseq_core::{
    Duration, Engine, EngineConfig, Envelope, HandlerError, Hold, LatePolicy, ManualClock, MemoryStore, Millis,
    Outcome, PoisonPolicy, Reason, SeqRange, StagingStore,
};

type TestEngine = Engine<CountingStore<MemoryStore>, Arc<ManualClock>>;

struct Rig {
    engine: TestEngine,
    clock: Arc<ManualClock>,
    handler: RecordingHandler,
    dlq: RecordingDlq,
}

impl Rig {
    fn new(config: EngineConfig) -> Rig {
        Rig::with_store(MemoryStore::new(), config)
    }

    fn with_store(store: MemoryStore, config: EngineConfig) -> Rig {
        let clock = Arc::new(ManualClock::new(Millis(1_000_000)));
        Rig {
            engine: Engine::new(CountingStore::new(store), clock.clone(), config),
            clock,
            handler: RecordingHandler::new(),
            dlq: RecordingDlq::new(),
        }
    }

    fn msg(&self, ctx: &str, seq: u64) -> Envelope {
        self.body(ctx, seq, &format!("{ctx}:{seq}"))
    }

    fn body(&self, ctx: &str, seq: u64, body: &str) -> Envelope {
        Envelope {
            received_at: reseq_core::Clock::now(&*self.clock),
            ..Envelope::new(ctx, seq, body.to_string())
        }
    }

    async fn send(&self, batch: Vec<Envelope>) -> Vec<Outcome> {
        self.engine.process(batch, &self.handler, &self.dlq).await
    }

    async fn one(&self, ctx: &str, seq: u64) -> Outcome {
        self.send(vec![self.msg(ctx, seq)]).await.remove(0)
    }

    async fn sweep(&self) -> usize {
        self.engine.sweep(&self.handler, &self.dlq, 100).await.unwrap()
    }

    async fn state(&self, ctx: &str) -> reseq_core::ContextState {
        self.engine.store().load(ctx).await.unwrap().expect("context state")
    }
}

fn cfg() -> EngineConfig {
    EngineConfig::default()
}

#[tokio::test]
async fn a_consecutive_run_is_released_with_one_state_write_and_no_staging() {
    let rig = Rig::new(cfg());
    let batch = (1..=10).map(|s| rig.msg("a", s)).collect();
    let outcomes = rig.send(batch).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Released), "{outcomes:?}");
    assert_eq!(rig.handler.seqs("a"), (1..=10).collect::<Vec<_>>());
    assert_eq!(
        rig.engine.store().count(Op::Commit),
        1,
        "one cursor write for the whole run"
    );
    assert_eq!(
        rig.engine.store().count(Op::Stage),
        0,
        "released in its own batch: never staged"
    );
    assert_eq!(rig.state("a").await.next, 11);
}

#[tokio::test]
async fn arrivals_3_1_2_5_4_release_as_1_then_2_3_then_4_5() {
    let rig = Rig::new(cfg());
    assert_eq!(rig.one("a", 3).await, Outcome::Staged);
    assert_eq!(rig.one("a", 1).await, Outcome::Released);
    assert_eq!(rig.handler.seqs("a"), vec![1]);
    assert_eq!(rig.one("a", 2).await, Outcome::Released);
    assert_eq!(rig.handler.seqs("a"), vec![1, 2, 3]);
    assert_eq!(rig.one("a", 5).await, Outcome::Staged);
    assert_eq!(rig.one("a", 4).await, Outcome::Released);
    assert_eq!(rig.handler.seqs("a"), vec![1, 2, 3, 4, 5]);
    let prevs: Vec<_> = rig.handler.delivered().iter().map(|d| d.prev_seq).collect();
    assert_eq!(prevs, vec![None, Some(1), Some(2), Some(3), Some(4)]);
    assert_eq!(
        rig.engine.store().inner.waiting("a", 0).await.unwrap().count,
        0,
        "released rows are gone"
    );
}

#[tokio::test]
async fn waiting_costs_one_put_per_message_and_one_state_write_when_the_gap_opens() {
    let rig = Rig::new(cfg());
    let outcomes = rig.send(vec![rig.msg("a", 4), rig.msg("a", 3), rig.msg("a", 2)]).await;
    assert_eq!(outcomes, vec![Outcome::Staged; 3]);
    assert_eq!(rig.engine.store().count(Op::Stage), 3);
    assert_eq!(
        rig.engine.store().count(Op::Commit),
        1,
        "the context starts waiting: its timers need the state"
    );
    assert_eq!(rig.state("a").await.waiting_since, Some(Millis(1_000_000)));
    rig.clock.advance(Duration::from_secs(1));
    assert_eq!(rig.one("a", 6).await, Outcome::Staged);
    assert_eq!(
        rig.engine.store().count(Op::Commit),
        1,
        "more waiting messages in an open gap: no state write"
    );
    rig.one("a", 1).await;
    assert_eq!(rig.handler.seqs("a"), vec![1, 2, 3, 4]);
    assert_eq!(rig.engine.store().count(Op::Commit), 2);
    assert_eq!(
        rig.state("a").await.waiting_since,
        Some(Millis(1_001_000)),
        "6 still waits, since it came"
    );
    rig.one("a", 5).await;
    assert_eq!(rig.state("a").await.waiting_since, None, "nothing waits");
}

#[tokio::test]
async fn the_state_says_when_a_sweep_must_come() {
    let gap = Duration::from_secs(10);
    let rig = Rig::new(EngineConfig {
        gap_timeout: Some(gap),
        retention: Duration::from_secs(3600),
        ..cfg()
    });
    rig.one("a", 1).await;
    // 1_000_000 + 3_600_000, rounded up to a hundredth of the retention (36 s): the timer
    // stays put across the commits of a busy context.
    let expiry = Some(Millis(4_608_000));
    assert_eq!(rig.state("a").await.due_at, expiry, "retention only");
    rig.clock.advance(Duration::from_secs(5));
    rig.one("a", 2).await;
    assert_eq!(
        rig.state("a").await.due_at,
        expiry,
        "a later commit in the same bucket keeps it"
    );
    rig.one("a", 4).await;
    assert_eq!(
        rig.state("a").await.due_at,
        Some(Millis(1_005_000 + 10_000)),
        "the gap timeout"
    );
    rig.handler.fail("b", 1, vec![HandlerError::Permanent("x".into())]);
    rig.one("b", 1).await;
    rig.one("b", 2).await;
    let blocked = rig.state("b").await;
    assert!(blocked.blocked.is_some());
    assert_eq!(
        blocked.due_at,
        Some(Millis(1_005_000 + 3_600_000)),
        "blocked: no gap timer, only its waiting message expiring"
    );
}

#[tokio::test]
async fn duplicates_are_dropped_whether_released_staged_or_in_the_same_batch() {
    let rig = Rig::new(cfg());
    let outcomes = rig
        .send(vec![rig.msg("a", 1), rig.msg("a", 1), rig.msg("a", 3), rig.msg("a", 3)])
        .await;
    assert_eq!(
        outcomes,
        vec![
            Outcome::Released,
            Outcome::Duplicate,
            Outcome::Staged,
            Outcome::Duplicate
        ]
    );
    assert_eq!(rig.one("a", 3).await, Outcome::Duplicate, "staged by an earlier batch");
    assert_eq!(rig.one("a", 1).await, Outcome::Duplicate, "already released");
    assert_eq!(rig.handler.seqs("a"), vec![1]);
    assert_eq!(rig.engine.stats().duplicates, 4);
    assert!(rig.dlq.letters().is_empty());
}

#[tokio::test]
async fn a_second_copy_with_another_body_is_a_conflict_and_the_first_wins() {
    let rig = Rig::new(cfg());
    rig.send(vec![rig.body("a", 2, "x")]).await;
    let out = rig.send(vec![rig.body("a", 2, "y")]).await;
    assert_eq!(out, vec![Outcome::DeadLettered(Reason::Conflict)]);
    let out = rig
        .send(vec![rig.body("a", 3, "p"), rig.body("a", 3, "q"), rig.msg("a", 1)])
        .await;
    assert_eq!(
        out,
        vec![
            Outcome::Released,
            Outcome::DeadLettered(Reason::Conflict),
            Outcome::Released
        ]
    );
    let bodies: Vec<_> = rig.handler.delivered().iter().map(|d| d.body.clone()).collect();
    assert_eq!(bodies, vec!["a:1", "x", "p"]);
    assert_eq!(rig.dlq.reasons(), vec![Reason::Conflict, Reason::Conflict]);
    assert_eq!(rig.dlq.letters()[0].body, "y");
}

#[tokio::test]
async fn a_staged_first_copy_wins_over_an_in_order_copy_of_the_same_position() {
    let rig = Rig::new(cfg());
    rig.send(vec![rig.body("a", 1, "first")]).await;
    // Simulate a copy staged by a worker that saw an older cursor: position 1 is staged
    // and the cursor is at 1.
    let store = rig.engine.store();
    let mut staged = reseq_core::StagedMessage::from_envelope(rig.body("b", 1, "staged"));
    staged.seq = 1;
    store.stage("b", &staged).await.unwrap();
    let out = rig.send(vec![rig.body("b", 1, "other")]).await;
    assert_eq!(out, vec![Outcome::DeadLettered(Reason::Conflict)]);
    assert_eq!(rig.handler.delivered().last().unwrap().body, "staged");
}

#[tokio::test]
async fn a_gap_is_skipped_after_the_timeout_even_without_new_traffic() {
    let rig = Rig::new(EngineConfig {
        gap_timeout: Some(Duration::from_secs(10)),
        ..cfg()
    });
    rig.one("a", 1).await;
    rig.one("a", 4).await;
    rig.clock.advance(Duration::from_millis(9_999));
    rig.sweep().await;
    assert_eq!(rig.handler.seqs("a"), vec![1]);
    rig.clock.advance(Duration::from_millis(1));
    assert_eq!(rig.sweep().await, 1);
    assert_eq!(rig.handler.seqs("a"), vec![1, 4]);
    let state = rig.state("a").await;
    assert_eq!(state.skipped, vec![SeqRange { first: 2, last: 3 }]);
    assert_eq!(rig.handler.delivered()[1].prev_seq, Some(1));
    let stats = rig.engine.stats();
    assert_eq!((stats.gaps_skipped, stats.positions_skipped), (1, 2));
    assert_eq!(rig.sweep().await, 0, "nothing left to do");
}

#[tokio::test]
async fn a_gap_is_also_skipped_when_the_next_message_arrives_late_enough() {
    let rig = Rig::new(EngineConfig {
        gap_timeout: Some(Duration::from_secs(1)),
        ..cfg()
    });
    rig.one("a", 3).await;
    rig.clock.advance(Duration::from_secs(2));
    assert_eq!(rig.one("a", 5).await, Outcome::Staged);
    assert_eq!(rig.handler.seqs("a"), vec![3], "3 waited past the timeout; 5 has not");
    assert_eq!(rig.state("a").await.skipped, vec![SeqRange { first: 1, last: 2 }]);
}

#[tokio::test]
async fn late_messages_follow_the_late_policy() {
    for (policy, expected) in [
        (LatePolicy::DeadLetter, Outcome::DeadLettered(Reason::Late)),
        (LatePolicy::Drop, Outcome::Dropped),
        (LatePolicy::Deliver, Outcome::Released),
    ] {
        let rig = Rig::new(EngineConfig {
            gap_timeout: Some(Duration::from_secs(1)),
            late: policy,
            ..cfg()
        });
        rig.one("a", 2).await;
        rig.clock.advance(Duration::from_secs(1));
        rig.sweep().await;
        assert_eq!(rig.one("a", 1).await, expected, "{policy:?}");
        let late: Vec<_> = rig.handler.delivered().iter().map(|d| (d.seq, d.late)).collect();
        match policy {
            LatePolicy::Deliver => assert_eq!(late, vec![(2, false), (1, true)]),
            _ => assert_eq!(late, vec![(2, false)]),
        }
        assert_eq!(rig.engine.stats().late, 1);
    }
}

#[tokio::test]
async fn positions_too_far_ahead_are_held_back_but_the_context_still_releases() {
    let rig = Rig::new(EngineConfig { max_staged: 2, ..cfg() });
    assert_eq!(rig.one("a", 3).await, Outcome::Staged);
    assert_eq!(
        rig.one("a", 4).await,
        Outcome::Held(Hold::Capacity),
        "more than 2 ahead of the cursor at 1"
    );
    assert!(
        !Outcome::Held(Hold::Capacity).is_settled(),
        "backpressure: not acknowledged"
    );
    assert_eq!(
        rig.one("b", 9).await,
        Outcome::Held(Hold::Capacity),
        "a new context starts at 1 too"
    );
    assert_eq!(
        rig.one("b", 3).await,
        Outcome::Staged,
        "other contexts are not affected"
    );
    assert_eq!(rig.one("a", 1).await, Outcome::Released);
    assert_eq!(rig.handler.seqs("a"), vec![1]);
    assert_eq!(
        rig.one("a", 4).await,
        Outcome::Staged,
        "redelivered once the cursor moved"
    );
    assert_eq!(rig.one("a", 2).await, Outcome::Released);
    assert_eq!(rig.handler.seqs("a"), vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn retryable_failures_back_off_1s_doubling_and_then_succeed() {
    let rig = Rig::new(cfg());
    let retry = || HandlerError::Retryable("downstream 503".into());
    rig.handler.fail("a", 2, vec![retry(), retry()]);
    let out = rig.send(vec![rig.msg("a", 1), rig.msg("a", 2), rig.msg("a", 3)]).await;
    assert_eq!(
        out,
        vec![Outcome::Released, Outcome::Staged, Outcome::Staged],
        "both stay durable"
    );
    let state = rig.state("a").await;
    assert_eq!(
        state.retry.as_ref().map(|r| (r.attempts, r.not_before)),
        Some((1, Millis(1_001_000)))
    );
    rig.clock.advance(Duration::from_millis(999));
    rig.sweep().await;
    assert_eq!(rig.handler.seqs("a"), vec![1]);
    rig.clock.advance(Duration::from_millis(1));
    rig.sweep().await;
    assert_eq!(
        rig.state("a").await.retry.unwrap().not_before,
        Millis(1_003_000),
        "second wait is 2 s"
    );
    rig.clock.advance(Duration::from_secs(2));
    assert_eq!(
        rig.one("a", 4).await,
        Outcome::Released,
        "a new message also retries once due"
    );
    assert_eq!(rig.handler.seqs("a"), vec![1, 2, 3, 4]);
    assert_eq!(rig.handler.delivered()[1].attempt, 3);
    assert_eq!(rig.engine.stats().handler_retries, 2);
}

#[tokio::test]
async fn backoff_caps_at_sixty_seconds() {
    let waits: Vec<u64> = (1..=8).map(|n| reseq_core::engine::retry_backoff(n).0 / 1000).collect();
    assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60]);
}

#[tokio::test]
async fn exhausted_retries_block_the_context_by_default() {
    let rig = Rig::new(EngineConfig {
        max_attempts: 2,
        ..cfg()
    });
    let retry = || HandlerError::Retryable("503".into());
    rig.handler.fail("a", 1, vec![retry(), retry(), retry()]);
    assert_eq!(rig.one("a", 1).await, Outcome::Staged);
    rig.clock.advance(Duration::from_secs(1));
    rig.sweep().await;
    let blocked = rig.state("a").await.blocked.expect("blocked");
    assert_eq!((blocked.seq, blocked.attempts), (1, 2));
    assert_eq!(
        rig.one("a", 2).await,
        Outcome::Staged,
        "nothing after the poison message is released"
    );
    rig.clock.advance(Duration::from_secs(3600));
    rig.sweep().await;
    assert!(rig.handler.seqs("a").is_empty());
    assert_eq!(rig.engine.stats().blocked, 1);
}

#[tokio::test]
async fn a_permanent_failure_with_skip_dead_letters_and_moves_on() {
    let rig = Rig::new(EngineConfig {
        on_poison: PoisonPolicy::Skip,
        ..cfg()
    });
    rig.handler
        .fail("a", 2, vec![HandlerError::Permanent("bad payload".into())]);
    let out = rig.send(vec![rig.msg("a", 3), rig.msg("a", 2), rig.msg("a", 1)]).await;
    assert_eq!(
        out,
        vec![
            Outcome::Released,
            Outcome::DeadLettered(Reason::HandlerFailed),
            Outcome::Released
        ]
    );
    assert_eq!(rig.handler.seqs("a"), vec![1, 3]);
    let letter = &rig.dlq.letters()[0];
    assert_eq!((letter.seq, letter.reason), (2, Reason::HandlerFailed));
    assert!(letter.detail.contains("bad payload"), "{}", letter.detail);
    assert_eq!(rig.one("a", 2).await, Outcome::Duplicate);
}

#[tokio::test]
async fn a_final_message_closes_the_context_and_retention_forgets_it() {
    let rig = Rig::new(EngineConfig {
        retention: Duration::from_secs(60),
        ..cfg()
    });
    let mut last = rig.msg("a", 2);
    last.is_final = true;
    rig.send(vec![rig.msg("a", 1), last]).await;
    assert_eq!(rig.state("a").await.final_seq, Some(2));
    assert_eq!(
        rig.one("a", 3).await,
        Outcome::DeadLettered(Reason::Late),
        "nothing follows the final message"
    );
    rig.clock.advance(Duration::from_secs(60));
    assert_eq!(rig.sweep().await, 1);
    assert_eq!(rig.engine.store().load("a").await.unwrap(), None);
    assert_eq!(rig.engine.stats().contexts_forgotten, 1);
}

#[tokio::test]
async fn waiting_messages_are_dead_lettered_before_retention_forgets_them() {
    let rig = Rig::new(EngineConfig {
        retention: Duration::from_secs(60),
        ..cfg()
    });
    rig.one("a", 1).await;
    rig.one("a", 3).await;
    rig.clock.advance(Duration::from_secs(30));
    rig.one("a", 5).await;
    rig.clock.advance(Duration::from_secs(30));
    rig.sweep().await;
    assert_eq!(
        rig.dlq.letters().iter().map(|l| (l.seq, l.reason)).collect::<Vec<_>>(),
        vec![(3, Reason::Expired)]
    );
    assert!(
        rig.engine.store().load("a").await.unwrap().is_some(),
        "5 still waits: the context stays"
    );
    rig.clock.advance(Duration::from_secs(30));
    rig.sweep().await;
    assert_eq!(rig.dlq.reasons(), vec![Reason::Expired, Reason::Expired]);
    rig.clock.advance(Duration::from_secs(60));
    rig.sweep().await;
    assert_eq!(rig.engine.store().load("a").await.unwrap(), None);
}

#[tokio::test]
async fn a_store_failure_settles_nothing_of_that_context() {
    let rig = Rig::new(cfg());
    rig.engine.store().set_failing(Op::Commit, true);
    let out = rig.send(vec![rig.msg("a", 1), rig.msg("a", 2)]).await;
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Held(Hold::Failed(_)))),
        "{out:?}"
    );
    rig.engine.store().set_failing(Op::Commit, false);
    let out = rig.send(vec![rig.msg("a", 1), rig.msg("a", 2)]).await;
    assert_eq!(
        out,
        vec![Outcome::Released, Outcome::Released],
        "redelivery repeats the run: at least once"
    );
    assert_eq!(rig.handler.seqs("a"), vec![1, 2, 1, 2]);
}

#[tokio::test]
async fn a_failing_load_holds_only_that_context() {
    let rig = Rig::new(cfg());
    rig.engine.store().set_failing(Op::Load, true);
    let out = rig.send(vec![rig.msg("a", 1)]).await;
    assert!(matches!(out[0], Outcome::Held(Hold::Failed(_))));
    rig.engine.store().set_failing(Op::Load, false);
    assert_eq!(rig.one("a", 1).await, Outcome::Released);
}

#[tokio::test]
async fn an_unavailable_dead_letter_queue_holds_the_message() {
    let rig = Rig::new(cfg());
    rig.one("a", 2).await;
    rig.dlq.set_unavailable(true);
    let out = rig.send(vec![rig.body("a", 2, "other")]).await;
    assert!(matches!(out[0], Outcome::Held(Hold::Failed(_))), "{out:?}");
}

/// A store where another writer commits the same context just before each of our commits.
struct RacedStore(MemoryStore);

impl StagingStore for RacedStore {
    async fn load(&self, c: &str) -> Result<Option<reseq_core::ContextState>, reseq_core::StoreError> {
        self.0.load(c).await
    }
    async fn stage(
        &self,
        c: &str,
        m: &reseq_core::StagedMessage,
    ) -> Result<reseq_core::StageOutcome, reseq_core::StoreError> {
        self.0.stage(c, m).await
    }
    async fn staged(
        &self,
        c: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<reseq_core::StagedMessage>, reseq_core::StoreError> {
        self.0.staged(c, from, to, limit).await
    }
    async fn waiting(&self, c: &str, from: u64) -> Result<reseq_core::Waiting, reseq_core::StoreError> {
        self.0.waiting(c, from).await
    }
    async fn commit(
        &self,
        c: &str,
        commit: &reseq_core::Commit,
    ) -> Result<reseq_core::CommitOutcome, reseq_core::StoreError> {
        let theirs = reseq_core::Commit {
            state: Some(reseq_core::ContextState::new(1)),
            ..commit.clone()
        };
        self.0.commit(c, &theirs).await?;
        self.0.commit(c, commit).await
    }
    async fn due(&self, q: &reseq_core::DueQuery) -> Result<Vec<String>, reseq_core::StoreError> {
        self.0.due(q).await
    }
    async fn attention(
        &self,
        q: &reseq_core::AttentionQuery,
    ) -> Result<reseq_core::AttentionList, reseq_core::StoreError> {
        self.0.attention(q).await
    }
    async fn flush(&self) -> Result<(), reseq_core::StoreError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_commit_that_loses_a_race_settles_nothing_it_released() {
    let engine = Engine::new(RacedStore(MemoryStore::new()), ManualClock::new(Millis(0)), cfg());
    let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
    let out = engine
        .process(
            vec![Envelope::new("a", 1, "x"), Envelope::new("a", 3, "z")],
            &handler,
            &dlq,
        )
        .await;
    assert_eq!(
        out,
        vec![Outcome::Held(Hold::Busy), Outcome::Staged],
        "staged is durable; the release is not"
    );
    assert_eq!(handler.seqs("a"), vec![1]);
}

#[tokio::test]
async fn a_failed_read_does_not_settle_a_message_waiting_unwritten_in_the_batch() {
    let rig = Rig::new(cfg());
    rig.engine.store().set_failing(Op::Staged, true);
    let out = rig.send(vec![rig.msg("a", 3), rig.msg("a", 1)]).await;
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Held(Hold::Failed(_)))),
        "3 was never written: {out:?}"
    );
    rig.engine.store().set_failing(Op::Staged, false);
    assert_eq!(rig.engine.store().inner.waiting("a", 0).await.unwrap().count, 0);
}

#[tokio::test]
async fn a_sweep_moves_the_time_of_a_context_it_found_with_nothing_to_do() {
    let rig = Rig::new(cfg());
    let state = reseq_core::ContextState {
        due_at: Some(Millis(1)),
        updated_at: Millis(999_000),
        ..reseq_core::ContextState::new(1)
    };
    let commit = reseq_core::Commit {
        expected_version: 0,
        state: Some(state),
        remove_staged: vec![],
    };
    rig.engine.store().inner.commit("idle", &commit).await.unwrap();
    assert_eq!(rig.sweep().await, 1);
    assert_eq!(rig.sweep().await, 0, "not found again at once");
    assert!(rig.state("idle").await.due_at.is_some_and(|t| t > Millis(1_000_000)));
}

/// A handler that takes `tick` of (manual) time per message, like a slow downstream.
struct SlowHandler<'a> {
    inner: &'a RecordingHandler,
    clock: Arc<ManualClock>,
    tick: Duration,
}

impl reseq_core::Handler for SlowHandler<'_> {
    async fn handle(&self, msg: &reseq_core::Release<'_>) -> Result<(), HandlerError> {
        self.clock.advance(self.tick);
        reseq_core::Handler::handle(self.inner, msg).await
    }
}

#[tokio::test]
async fn a_deadline_stops_a_long_run_which_stays_staged_and_is_due_for_the_next_sweep() {
    for lease in [
        None,
        Some(reseq_core::engine::LeaseConfig {
            owner: "me".into(),
            duration: Duration::from_secs(30),
        }),
    ] {
        let rig = Rig::new(EngineConfig { lease, ..cfg() });
        let slow = SlowHandler {
            inner: &rig.handler,
            clock: rig.clock.clone(),
            tick: Duration::from_secs(1),
        };
        let start = reseq_core::Clock::now(&*rig.clock);
        let batch: Vec<_> = (1..=10).map(|s| rig.msg("a", s)).collect();
        let deadline = Some(start.plus(Duration::from_millis(3_500)));
        let outcomes = rig.engine.process_until(batch, &slow, &rig.dlq, deadline).await;
        assert_eq!(
            rig.handler.seqs("a"),
            vec![1, 2, 3, 4],
            "no release starts after the deadline"
        );
        assert!(outcomes[..4].iter().all(|o| *o == Outcome::Released), "{outcomes:?}");
        assert!(
            outcomes[4..].iter().all(|o| *o == Outcome::Staged),
            "the rest is staged: {outcomes:?}"
        );
        let state = rig.state("a").await;
        assert_eq!(state.next, 5);
        assert!(state.lease.is_none(), "the lease is given back");
        assert!(
            state.due_at.is_some_and(|due| due <= start),
            "due at once: {:?}",
            state.due_at
        );
        // A sweep with a deadline already passed releases nothing and leaves it due.
        let passed = Some(reseq_core::Clock::now(&*rig.clock));
        assert_eq!(rig.engine.sweep_until(&slow, &rig.dlq, 100, passed).await.unwrap(), 1);
        assert_eq!(rig.handler.seqs("a").len(), 4);
        // The next sweep with time to spare carries on in order.
        assert_eq!(rig.sweep().await, 1);
        assert_eq!(rig.handler.seqs("a"), (1..=10).collect::<Vec<_>>());
        assert_eq!(rig.state("a").await.next, 11);
        assert_eq!(rig.sweep().await, 0, "nothing is due any more");
    }
}

/// A handler that, while handling its first message, has the same engine process a second
/// delivery of a message: two calls of one engine at once, as a worker's receive loops make.
struct SecondDelivery<'a> {
    rig: &'a Rig,
    copy: std::sync::Mutex<Option<Envelope>>,
    second: std::sync::Mutex<Vec<Outcome>>,
}

impl reseq_core::Handler for SecondDelivery<'_> {
    async fn handle(&self, msg: &reseq_core::Release<'_>) -> Result<(), HandlerError> {
        let copy = self.copy.lock().unwrap().take();
        if let Some(copy) = copy {
            let outcomes = self
                .rig
                .engine
                .process(vec![copy], &self.rig.handler, &self.rig.dlq)
                .await;
            *self.second.lock().unwrap() = outcomes;
        }
        reseq_core::Handler::handle(&self.rig.handler, msg).await
    }
}

#[tokio::test]
async fn two_calls_of_one_engine_never_hold_a_context_lease_together() {
    let lease = reseq_core::engine::LeaseConfig {
        owner: "worker-1".into(),
        duration: Duration::from_secs(30),
    };
    let rig = Rig::new(EngineConfig {
        lease: Some(lease),
        ..cfg()
    });
    let handler = SecondDelivery {
        rig: &rig,
        copy: std::sync::Mutex::new(Some(rig.msg("a", 1))),
        second: std::sync::Mutex::new(Vec::new()),
    };
    let outcomes = rig.engine.process(vec![rig.msg("a", 1)], &handler, &rig.dlq).await;
    assert_eq!(outcomes, vec![Outcome::Released]);
    assert_eq!(
        *handler.second.lock().unwrap(),
        vec![Outcome::Staged],
        "the second call finds the lease taken and only stages"
    );
    assert_eq!(rig.handler.seqs("a"), vec![1], "position 1 reached the handler once");
    assert_eq!(rig.state("a").await.next, 2);
}

// ------------------------------------------------- found by hostile testing (issue 8)

fn final_msg(rig: &Rig, ctx: &str, seq: u64) -> Envelope {
    Envelope {
        is_final: true,
        ..rig.msg(ctx, seq)
    }
}

#[tokio::test]
async fn nothing_after_the_final_position_is_released_whatever_the_arrival_order() {
    // 2 (final) and 3 wait, then 1 arrives: 1 and 2 are released, 3 is late.
    let rig = Rig::new(cfg());
    let first = rig.send(vec![final_msg(&rig, "f", 2), rig.msg("f", 3)]).await;
    assert_eq!(first, vec![Outcome::Staged, Outcome::Staged]);
    assert_eq!(rig.one("f", 1).await, Outcome::Released);
    assert_eq!(rig.handler.seqs("f"), vec![1, 2]);
    assert_eq!(rig.dlq.reasons(), vec![Reason::Late]);
    assert_eq!(rig.dlq.letters()[0].seq, 3);
    let state = rig.state("f").await;
    assert_eq!((state.final_seq, state.waiting_since), (Some(2), None));
    assert!(rig.engine.store().inner.staged("f", 3, 3, 1).await.unwrap().is_empty());

    // The same in one batch, and fed in order: the same outcome.
    for batch in [
        vec![final_msg(&rig, "g", 2), rig.msg("g", 3), rig.msg("g", 1)],
        vec![rig.msg("h", 1), final_msg(&rig, "h", 2), rig.msg("h", 3)],
    ] {
        let ctx = batch[0].context_id.clone();
        rig.send(batch).await;
        assert_eq!(rig.handler.seqs(&ctx), vec![1, 2], "context {ctx}");
    }
    assert_eq!(rig.dlq.reasons(), vec![Reason::Late; 3]);
}

#[tokio::test]
async fn a_position_below_the_first_is_dead_lettered_not_counted_as_a_duplicate() {
    let rig = Rig::new(cfg());
    let outcomes = rig.send(vec![rig.msg("a", 0), rig.msg("a", 1)]).await;
    assert_eq!(
        outcomes,
        vec![Outcome::DeadLettered(Reason::InvalidSequence), Outcome::Released]
    );
    assert!(rig.dlq.letters()[0].detail.contains("--first-seq"));
    assert_eq!(rig.engine.stats().duplicates, 0);
}

#[tokio::test]
async fn a_held_message_that_keeps_coming_back_is_staged_beyond_the_window() {
    let rig = Rig::new(EngineConfig {
        max_staged: 2,
        stage_held_after: Some(3),
        ..cfg()
    });
    let received = |n: u32| Envelope {
        receive_count: n,
        ..rig.msg("a", 10)
    };
    assert_eq!(rig.send(vec![received(1)]).await, vec![Outcome::Held(Hold::Capacity)]);
    assert_eq!(rig.send(vec![received(2)]).await, vec![Outcome::Held(Hold::Capacity)]);
    assert_eq!(rig.send(vec![received(3)]).await, vec![Outcome::Staged]);
    rig.send((1..10).map(|s| rig.msg("a", s)).collect()).await;
    assert_eq!(rig.handler.seqs("a"), (1..=10).collect::<Vec<_>>());
    assert_eq!(rig.engine.stats().held_then_staged, 1);
}

#[tokio::test]
async fn a_position_too_large_to_stage_is_dead_lettered_and_skipped_not_a_hole() {
    let rig = Rig::with_store(MemoryStore::with_body_limit(10), cfg());
    let big = rig.body("a", 2, "a body over ten bytes");
    assert_eq!(
        rig.send(vec![big, rig.msg("a", 3)]).await,
        vec![Outcome::DeadLettered(Reason::TooLarge), Outcome::Staged]
    );
    assert_eq!(rig.one("a", 1).await, Outcome::Released);
    assert_eq!(
        rig.handler.seqs("a"),
        vec![1, 3],
        "the cursor passes the dead-lettered position"
    );
    let delivered = rig.handler.delivered();
    assert_eq!(delivered[1].prev_seq, Some(1));
    assert_eq!(rig.state("a").await.next, 4);
}

#[tokio::test]
async fn a_message_the_target_rejects_is_dead_lettered_even_under_block() {
    let rig = Rig::new(cfg());
    rig.handler.fail(
        "a",
        1,
        vec![HandlerError::Rejected("1048600 bytes: over the 1048576 limit".into())],
    );
    let outcomes = rig.send(vec![rig.msg("a", 1), rig.msg("a", 2)]).await;
    assert_eq!(
        outcomes,
        vec![Outcome::DeadLettered(Reason::HandlerFailed), Outcome::Released]
    );
    assert!(rig.dlq.letters()[0].detail.contains("1048576"));
    assert!(rig.state("a").await.blocked.is_none());
}

#[tokio::test]
async fn an_outage_of_the_target_across_contexts_is_not_poison() {
    // Every context fails retryably for longer than max_attempts would allow; once the
    // target answers again everything flows, no context blocked, in order.
    let rig = Rig::new(EngineConfig {
        max_attempts: 2,
        ..cfg()
    });
    let contexts = ["c1", "c2", "c3", "c4", "c5"];
    for ctx in contexts {
        rig.handler
            .fail(ctx, 1, vec![HandlerError::Retryable("503".into()); 12]);
    }
    let batch = contexts.iter().flat_map(|c| [rig.msg(c, 1), rig.msg(c, 2)]).collect();
    rig.send(batch).await;
    for _ in 0..40 {
        rig.clock.advance(Duration::from_secs(61));
        rig.sweep().await;
    }
    for ctx in contexts {
        assert_eq!(rig.handler.seqs(ctx), vec![1, 2], "context {ctx}");
        assert!(rig.state(ctx).await.blocked.is_none(), "context {ctx}");
    }
    let stats = rig.engine.stats();
    assert_eq!(stats.blocked, 0);
    assert!(stats.outage_retries > 0);
}

#[tokio::test]
async fn one_context_failing_alone_still_becomes_poison() {
    let rig = Rig::new(EngineConfig {
        max_attempts: 2,
        ..cfg()
    });
    rig.handler.fail("a", 1, vec![HandlerError::Retryable("bad".into()); 5]);
    rig.one("a", 1).await;
    for _ in 0..5 {
        rig.clock.advance(Duration::from_secs(61));
        rig.sweep().await;
    }
    assert!(rig.state("a").await.blocked.is_some());
}

#[tokio::test]
async fn an_expired_message_the_dlq_cannot_take_backs_off_and_stays_staged() {
    let rig = Rig::new(EngineConfig {
        retention: Duration::from_secs(3600),
        ..cfg()
    });
    rig.one("a", 2).await;
    rig.dlq.set_unavailable(true);
    rig.clock.advance(Duration::from_secs(3601));
    assert_eq!(rig.sweep().await, 1);
    let state = rig.state("a").await;
    let retry = state.expiry_retry.clone().expect("the failure is recorded");
    assert!(
        retry.not_before > reseq_core::Clock::now(&*rig.clock),
        "backs off: not due again at once"
    );
    assert_eq!(rig.sweep().await, 0, "no hot loop");
    assert_eq!(rig.engine.stats().expiry_failures, 1);
    assert_eq!(rig.engine.store().count(Op::Keep), 1, "the store is told to keep it");
    assert_eq!(rig.engine.store().inner.staged("a", 2, 2, 1).await.unwrap().len(), 1);
    rig.dlq.set_unavailable(false);
    rig.clock.advance(Duration::from_secs(600));
    assert_eq!(rig.sweep().await, 1);
    assert_eq!(rig.dlq.reasons(), vec![Reason::Expired]);
    assert!(rig.state("a").await.expiry_retry.is_none());
}

fn leased() -> EngineConfig {
    EngineConfig {
        lease: Some(reseq_core::engine::LeaseConfig {
            owner: "w".into(),
            duration: Duration::from_secs(30),
        }),
        ..cfg()
    }
}

/// Position 1 staged at the cursor by a worker that lost the race (it saw another's
/// lease), the lease since given back: only a lost-wakeup check can find it.
async fn stranded_at_the_cursor(store: &impl StagingStore, ctx: &str) {
    let mut one = reseq_core::StagedMessage::from_envelope(Envelope::new(ctx, 1, "a:1"));
    one.received_at = Millis(1_000_000);
    store.stage(ctx, &one).await.unwrap();
}

#[tokio::test]
async fn a_store_error_in_the_lost_wakeup_check_gives_the_batch_back_and_its_redelivery_drains() {
    let rig = Rig::new(leased());
    stranded_at_the_cursor(rig.engine.store(), "a").await;
    // The batch's own load is the first; the lost-wakeup check's the second.
    rig.engine.store().arm_fault(Op::Load, 1);
    let outcomes = rig.send(vec![rig.msg("a", 2)]).await;
    assert!(rig.engine.store().disarm_fault(), "the check's load failed");
    assert!(
        matches!(outcomes[0], Outcome::Held(Hold::Failed(_))),
        "not settled, so the source delivers it again: {outcomes:?}"
    );
    assert!(rig.handler.seqs("a").is_empty());
    // The redelivery is a copy of a staged message: it looks again, and drains.
    assert_eq!(rig.send(vec![rig.msg("a", 2)]).await, vec![Outcome::Duplicate]);
    assert_eq!(rig.handler.seqs("a"), vec![1, 2]);
    assert_eq!(rig.engine.stats().wakeups_failed, 1);
}

#[tokio::test]
async fn a_crash_between_the_lost_wakeup_check_and_the_drain_is_repaired_by_the_redelivery() {
    let clock = Arc::new(ManualClock::new(Millis(1_000_000)));
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let store = Arc::new(reseq_conformance::workers::FaultyStore::new(
        Arc::new(MemoryStore::new()),
        0,
        0,
        healthy,
    ));
    stranded_at_the_cursor(&store, "a").await;
    let handler = RecordingHandler::new();
    let dlq = RecordingDlq::new();
    let crashing = Engine::new(store.clone(), clock.clone(), leased());
    // Loads: the batch's (0), the check's (1), the drain's (2): the worker dies there.
    store.hang_load(2);
    let batch = vec![Envelope::new("a", 2, "a:2")];
    let crashed = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        crashing.process(batch.clone(), &handler, &dlq),
    )
    .await;
    assert!(crashed.is_err(), "the worker died in the drain");
    assert!(handler.seqs("a").is_empty());
    // Nothing was acknowledged: SQS delivers the batch again, to another worker.
    let other = Engine::new(store.clone(), clock.clone(), leased());
    assert_eq!(other.process(batch, &handler, &dlq).await, vec![Outcome::Duplicate]);
    assert_eq!(handler.seqs("a"), vec![1, 2], "the redelivery drained the context");
}

#[tokio::test]
async fn a_lost_wakeup_after_a_sweep_release_is_found_by_a_later_sweep() {
    let rig = Rig::new(leased());
    rig.handler.fail("a", 1, vec![HandlerError::Retryable("once".into())]);
    assert_eq!(rig.one("a", 1).await, Outcome::Staged);
    rig.clock.advance(Duration::from_secs(1));
    // While the sweep holds the lease to retry 1, another worker stages 2: it sees the
    // lease and leaves 2 to the holder, whose check after its commit then fails.
    let handler = SecondDelivery {
        rig: &rig,
        copy: std::sync::Mutex::new(Some(rig.msg("a", 2))),
        second: std::sync::Mutex::new(Vec::new()),
    };
    // Loads: the sweep's (0), the other worker's batch (1) and check (2), the holder's check (3).
    rig.engine.store().arm_fault(Op::Load, 3);
    assert_eq!(rig.engine.sweep(&handler, &rig.dlq, 10).await.unwrap(), 1);
    assert!(rig.engine.store().disarm_fault(), "the holder's check failed");
    assert_eq!(*handler.second.lock().unwrap(), vec![Outcome::Staged]);
    assert_eq!(rig.handler.seqs("a"), vec![1]);
    // Nothing will come back from SQS for 2: the sweep must.
    rig.clock.advance(Duration::from_secs(31));
    rig.sweep().await;
    assert_eq!(rig.handler.seqs("a"), vec![1, 2]);
}

#[tokio::test]
async fn under_skip_a_dlq_that_refuses_the_poison_once_does_not_block_the_context() {
    // Found by the simulation (seeds 69, 77, 100 of reseq-system-tests).
    let rig = Rig::new(EngineConfig {
        on_poison: PoisonPolicy::Skip,
        ..cfg()
    });
    rig.handler.fail("a", 1, vec![HandlerError::Permanent("bad".into()); 2]);
    rig.dlq.set_unavailable(true);
    let outcomes = rig.send(vec![rig.msg("a", 1), rig.msg("a", 2)]).await;
    assert_eq!(outcomes, vec![Outcome::Staged, Outcome::Staged]);
    let state = rig.state("a").await;
    assert!(state.blocked.is_none(), "not blocked: {state:?}");
    assert!(state.retry.is_some(), "tried again later");
    rig.dlq.set_unavailable(false);
    rig.clock.advance(Duration::from_secs(2));
    rig.sweep().await;
    assert_eq!(rig.dlq.reasons(), vec![Reason::HandlerFailed]);
    assert_eq!(rig.handler.seqs("a"), vec![2]);
}

#[tokio::test]
async fn a_duplicate_of_a_copy_that_could_not_be_staged_is_not_settled() {
    // Found by the simulation with the stranding repair reverted: the batch's second
    // copy was acknowledged although the first was never written.
    let rig = Rig::new(cfg());
    rig.engine.store().arm_fault(Op::Stage, 0);
    let outcomes = rig.send(vec![rig.msg("a", 2), rig.msg("a", 2)]).await;
    assert!(rig.engine.store().disarm_fault());
    assert!(
        outcomes.iter().all(|o| !o.is_settled()),
        "neither copy may be deleted: {outcomes:?}"
    );
}

#[tokio::test]
async fn a_commit_that_loses_a_race_settles_no_duplicate_of_what_it_released() {
    // Found by the simulation's soak: the second copy of 1 was acknowledged as a duplicate
    // of a release whose commit then lost its race.
    let engine = Engine::new(RacedStore(MemoryStore::new()), ManualClock::new(Millis(0)), cfg());
    let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
    let batch = vec![Envelope::new("a", 1, "x"), Envelope::new("a", 1, "x")];
    let out = engine.process(batch, &handler, &dlq).await;
    assert_eq!(out, vec![Outcome::Held(Hold::Busy), Outcome::Held(Hold::Busy)]);
}

#[tokio::test]
async fn a_failed_lost_wakeup_check_is_run_again_by_the_next_sweep_even_with_no_redelivery() {
    // Found by the simulation's soak: SQS delivered the message twice, the other copy was
    // deleted, so the redelivery that the given-back batch counted on never came.
    let rig = Rig::new(leased());
    stranded_at_the_cursor(rig.engine.store(), "a").await;
    rig.engine.store().arm_fault(Op::Load, 1);
    let outcomes = rig.send(vec![rig.msg("a", 2)]).await;
    assert!(rig.engine.store().disarm_fault());
    assert!(!outcomes[0].is_settled());
    assert!(rig.handler.seqs("a").is_empty());
    rig.sweep().await;
    assert_eq!(rig.handler.seqs("a"), vec![1, 2], "the sweep checked again and drained");
}

#[tokio::test]
async fn a_context_with_messages_waiting_is_swept_at_least_every_fifteen_minutes() {
    // Found by the simulation's soak: the last net when every lost-wakeup repair missed.
    let rig = Rig::new(leased());
    assert_eq!(rig.one("a", 2).await, Outcome::Staged);
    // Position 1 lands at the cursor behind the engine's back, as a stager whose check
    // was lost would leave it.
    stranded_at_the_cursor(rig.engine.store(), "a").await;
    let due = rig.state("a").await.due_at.expect("due");
    assert!(due <= reseq_core::Clock::now(&*rig.clock).plus(reseq_core::engine::WAITING_RECHECK));
    rig.clock.advance(reseq_core::engine::WAITING_RECHECK);
    rig.sweep().await;
    assert_eq!(rig.handler.seqs("a"), vec![1, 2]);
}

/// A clock that moves a second each time it is read: every store request "takes" time.
struct Ticking(ManualClock);
impl reseq_core::Clock for Ticking {
    fn now(&self) -> Millis {
        let now = self.0.now();
        self.0.advance(Duration::from_secs(1));
        now
    }
}

#[tokio::test]
async fn a_release_does_not_start_when_taking_the_lease_ran_past_the_deadline() {
    // Found by the simulation's soak (seed 1796190009688): a slow lease write let a release
    // start after the budget, and outlive the lease.
    let start = Millis(1_000_000);
    let engine = Engine::new(MemoryStore::new(), Ticking(ManualClock::new(start)), leased());
    let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
    let deadline = Some(start.plus(Duration::from_secs(2)));
    let out = engine
        .process_until(vec![Envelope::new("a", 1, "x")], &handler, &dlq, deadline)
        .await;
    assert_eq!(out, vec![Outcome::Staged], "cut after the lease was taken");
    assert!(handler.seqs("a").is_empty());
}

fn operator() -> reseq_core::admin::Operator {
    reseq_core::admin::Operator {
        by: "ops@example.com".into(),
        reason: "producer bug".into(),
    }
}

#[tokio::test]
async fn an_operator_retry_redrains_a_blocked_context_with_fresh_attempts() {
    let rig = Rig::new(EngineConfig {
        max_attempts: 1,
        ..cfg()
    });
    rig.handler
        .fail("a", 2, vec![HandlerError::Permanent("downstream says no".into())]);
    rig.send(vec![rig.msg("a", 1), rig.msg("a", 2), rig.msg("a", 3)]).await;
    assert_eq!(rig.handler.seqs("a"), vec![1]);
    assert!(rig.state("a").await.blocked.is_some(), "blocked at 2");
    let now = reseq_core::Clock::now(&*rig.clock);
    let done = reseq_core::admin::request_retry(rig.engine.store(), "a", &operator(), now)
        .await
        .unwrap();
    assert_eq!(done.action.action, "retry");
    assert!(done.action.detail.contains("position 2"), "{:?}", done.action);
    // Nothing is released by the request itself: the next sweep does it.
    assert_eq!(rig.handler.seqs("a"), vec![1]);
    rig.sweep().await;
    assert_eq!(rig.handler.seqs("a"), vec![1, 2, 3]);
    let state = rig.state("a").await;
    assert_eq!((state.next, state.blocked.is_none()), (4, true));
    assert_eq!(state.operator_log.len(), 1);
    assert_eq!(state.operator_log[0].by, "ops@example.com");
    // Nothing left to retry.
    let again = reseq_core::admin::request_retry(rig.engine.store(), "a", &operator(), now).await;
    assert!(
        matches!(again, Err(reseq_core::admin::AdminError::NothingToRetry(_))),
        "{again:?}"
    );
}

#[tokio::test]
async fn an_operator_skip_moves_the_cursor_and_the_skipped_messages_are_late() {
    let rig = Rig::new(EngineConfig {
        max_attempts: 1,
        ..cfg()
    });
    // Blocked at 2 (poison), 3 waits, 4 is missing, 5 and 6 wait.
    rig.handler.fail("a", 2, vec![HandlerError::Permanent("poison".into())]);
    rig.send(vec![
        rig.msg("a", 1),
        rig.msg("a", 2),
        rig.msg("a", 3),
        rig.msg("a", 5),
        rig.msg("a", 6),
    ])
    .await;
    let now = reseq_core::Clock::now(&*rig.clock);
    let report = reseq_core::admin::inspect(rig.engine.store(), "a", 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.waiting_positions, vec![2, 3, 5, 6]);
    assert_eq!(report.gaps, vec![SeqRange { first: 4, last: 4 }]);
    let refused = reseq_core::admin::request_skip(rig.engine.store(), "a", 2, &operator(), now).await;
    assert!(
        matches!(refused, Err(reseq_core::admin::AdminError::AlreadyPast { .. })),
        "{refused:?}"
    );
    reseq_core::admin::request_skip(rig.engine.store(), "a", 5, &operator(), now)
        .await
        .unwrap();
    // A message arriving before a sweep carried the skip out waits too.
    assert_eq!(rig.one("a", 4).await, Outcome::Staged);
    assert_eq!(rig.handler.seqs("a"), vec![1]);
    rig.sweep().await;
    assert_eq!(rig.handler.seqs("a"), vec![1, 5, 6], "released from the new cursor on");
    let mut late: Vec<u64> = rig
        .dlq
        .letters()
        .iter()
        .filter(|l| l.reason == Reason::Late)
        .map(|l| l.seq)
        .collect();
    late.sort_unstable();
    assert_eq!(late, vec![2, 3, 4], "the skipped messages follow --late dlq");
    let state = rig.state("a").await;
    assert_eq!(
        (state.next, state.pending_skip, state.blocked.is_none()),
        (7, None, true)
    );
    assert!(
        state.skipped.contains(&SeqRange { first: 2, last: 4 }),
        "{:?}",
        state.skipped
    );
    assert_eq!(state.operator_log[0].action, "skip");
}

#[tokio::test]
async fn stuck_lists_blocked_and_long_waiting_contexts_and_the_index_follows_the_engine() {
    let rig = Rig::new(EngineConfig {
        max_attempts: 1,
        ..cfg()
    });
    rig.handler
        .fail("poisoned", 1, vec![HandlerError::Permanent("x".into())]);
    rig.one("poisoned", 1).await;
    rig.one("gappy", 3).await;
    rig.one("fine", 1).await;
    rig.clock.advance(Duration::from_secs(600));
    let now = reseq_core::Clock::now(&*rig.clock);
    let stuck = reseq_core::admin::stuck(rig.engine.store(), now, Duration::from_secs(300), 10)
        .await
        .unwrap();
    assert_eq!(
        stuck.blocked.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        vec!["poisoned"]
    );
    assert_eq!(
        stuck.waiting.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        vec!["gappy"]
    );
    let recent = reseq_core::admin::stuck(rig.engine.store(), now, Duration::from_secs(900), 10)
        .await
        .unwrap();
    assert!(recent.waiting.is_empty(), "{recent:?}");
    // The gap fills: the context leaves the index.
    rig.send(vec![rig.msg("gappy", 1), rig.msg("gappy", 2)]).await;
    let after = reseq_core::admin::stuck(rig.engine.store(), now, Duration::from_millis(0), 10)
        .await
        .unwrap();
    assert!(after.waiting.is_empty(), "{after:?}");
}

/// SPEC §3 for typed sequences too: while the target fails for several instances at once,
/// retries count no attempt, so an outage longer than `max_attempts` blocks nothing.
#[tokio::test]
async fn an_outage_does_not_block_typed_instances() {
    let file = reseq_core::sequences::load(
        "outage.yaml",
        "sequences:\n  - name: s\n    messages:\n      - type: A\n      - type: B\n        releaseCondition: { predecessor: A }\n",
    )
    .unwrap();
    let rig = Rig::new(EngineConfig {
        max_attempts: 2,
        sequences: Some(Arc::new(file)),
        ..cfg()
    });
    let typed = |ctx: &str, t: &str| Envelope {
        context_id: format!("s/{ctx}"),
        seq: reseq_core::envelope::body_hash(format!("{ctx}-{t}").as_bytes()),
        message_type: Some(t.to_string()),
        received_at: reseq_core::Clock::now(&*rig.clock),
        ..Envelope::new("", 0, format!("{ctx}:{t}"))
    };
    let outage = || {
        (0..6)
            .map(|_| HandlerError::Retryable("503".into()))
            .collect::<Vec<_>>()
    };
    for ctx in ["x", "y", "z"] {
        let a = typed(ctx, "A");
        rig.handler.fail(&a.context_id, a.seq, outage());
        assert_eq!(rig.send(vec![a, typed(ctx, "B")]).await, vec![Outcome::Staged; 2]);
    }
    for _ in 0..40 {
        rig.clock.advance(Duration::from_secs(61));
        rig.sweep().await;
    }
    for ctx in ["x", "y", "z"] {
        let state = rig.state(&format!("s/{ctx}")).await;
        assert!(state.blocked.is_none(), "{ctx}: an outage is not poison: {state:?}");
        assert_eq!(
            state.typed.map(|t| t.processed.len()),
            Some(2),
            "{ctx}: A and B released"
        );
    }
}
