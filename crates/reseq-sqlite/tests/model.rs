//! Random operation sequences give the same answers on the SQLite store as on the reference
//! `MemoryStore`, across flushes and reopenings of the file.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use proptest::prelude::*;
use reseq_core::store::{Blocked, RetryState};
use reseq_core::{Attributes, Commit, ContextState, DueQuery, MemoryStore, Millis, StagedMessage, StagingStore};
use reseq_sqlite::SqliteStore;

fn ready<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a store future was not ready at once"),
    }
}

const SEQS: [u64; 10] = [0, 1, 2, 3, 5, 8, i64::MAX as u64, 1 << 63, u64::MAX - 1, u64::MAX];
const CONTEXTS: [&str; 3] = ["a", "b", "ü/ctx"];

#[derive(Clone, Debug)]
struct NewState {
    next: u64,
    blocked: bool,
    retry_at: Option<u64>,
    updated_at: u64,
    due_at: Option<u64>,
}

#[derive(Clone, Debug)]
enum Op {
    Load(usize),
    Stage {
        ctx: usize,
        seq: u64,
        body: u8,
        received_at: u64,
    },
    Staged {
        ctx: usize,
        from: u64,
        limit: usize,
    },
    Waiting {
        ctx: usize,
        from: u64,
    },
    /// `expected: None` commits on the version the store holds.
    Commit {
        ctx: usize,
        expected: Option<u64>,
        state: Option<NewState>,
        remove: Vec<u64>,
    },
    Due {
        now: u64,
        limit: usize,
    },
    Flush,
    Reopen,
}

fn seq() -> impl Strategy<Value = u64> {
    prop::sample::select(SEQS.to_vec())
}

fn time() -> impl Strategy<Value = u64> {
    (0..6u64).prop_map(|t| t * 100)
}

fn op() -> impl Strategy<Value = Op> {
    let ctx = 0..CONTEXTS.len();
    let new_state = (
        seq(),
        any::<bool>(),
        prop::option::of(time()),
        time(),
        prop::option::of(time()),
    )
        .prop_map(|(next, blocked, retry_at, updated_at, due_at)| NewState {
            next,
            blocked,
            retry_at,
            updated_at,
            due_at,
        });
    prop_oneof![
        1 => ctx.clone().prop_map(Op::Load),
        4 => (ctx.clone(), seq(), 0..2u8, time())
            .prop_map(|(ctx, seq, body, received_at)| Op::Stage { ctx, seq, body, received_at }),
        1 => (ctx.clone(), seq(), 0..4usize).prop_map(|(ctx, from, limit)| Op::Staged { ctx, from, limit }),
        1 => (ctx.clone(), seq()).prop_map(|(ctx, from)| Op::Waiting { ctx, from }),
        3 => (ctx, prop::option::weighted(0.2, 0..3u64), prop::option::weighted(0.85, new_state),
              prop::collection::vec(seq(), 0..3))
            .prop_map(|(ctx, expected, state, remove)| Op::Commit { ctx, expected, state, remove }),
        2 => (time(), 0..4usize).prop_map(|(now, limit)| Op::Due { now, limit }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

fn staged_message(seq: u64, body: u8, received_at: u64) -> StagedMessage {
    let body = Bytes::from(vec![b'a' + body; 3]);
    StagedMessage {
        seq,
        message_id: format!("m{seq}"),
        body_hash: reseq_core::envelope::body_hash(&body),
        body,
        attributes: Attributes::new(),
        received_at: Millis(received_at),
        is_final: seq % 2 == 1,
    }
}

fn to_state(s: &NewState) -> ContextState {
    ContextState {
        retry: s.retry_at.map(|t| RetryState {
            seq: s.next,
            attempts: 1,
            not_before: Millis(t),
            last_error: "e".into(),
            outage_retries: 0,
        }),
        blocked: s.blocked.then(|| Blocked {
            seq: s.next,
            attempts: 5,
            error: "b".into(),
            since: Millis(1),
        }),
        updated_at: Millis(s.updated_at),
        due_at: s.due_at.map(Millis),
        ..ContextState::new(s.next)
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let model = MemoryStore::new();
    let mut store = SqliteStore::open(&path).unwrap();
    for (i, op) in ops.into_iter().enumerate() {
        let at = format!("op {i}: {op:?}");
        match op {
            Op::Load(ctx) => {
                prop_assert_eq!(
                    ready(store.load(CONTEXTS[ctx])).unwrap(),
                    ready(model.load(CONTEXTS[ctx])).unwrap(),
                    "{}",
                    at
                );
            }
            Op::Stage {
                ctx,
                seq,
                body,
                received_at,
            } => {
                let m = staged_message(seq, body, received_at);
                prop_assert_eq!(
                    ready(store.stage(CONTEXTS[ctx], &m)).unwrap(),
                    ready(model.stage(CONTEXTS[ctx], &m)).unwrap(),
                    "{}",
                    at
                );
            }
            Op::Staged { ctx, from, limit } => {
                prop_assert_eq!(
                    ready(store.staged(CONTEXTS[ctx], from, u64::MAX, limit)).unwrap(),
                    ready(model.staged(CONTEXTS[ctx], from, u64::MAX, limit)).unwrap(),
                    "{}",
                    at
                );
            }
            Op::Waiting { ctx, from } => {
                prop_assert_eq!(
                    ready(store.waiting(CONTEXTS[ctx], from)).unwrap(),
                    ready(model.waiting(CONTEXTS[ctx], from)).unwrap(),
                    "{}",
                    at
                );
            }
            Op::Commit {
                ctx,
                expected,
                state,
                remove,
            } => {
                let current = ready(model.load(CONTEXTS[ctx])).unwrap().map_or(0, |s| s.version);
                let c = Commit {
                    expected_version: expected.unwrap_or(current),
                    state: state.as_ref().map(to_state),
                    remove_staged: remove,
                };
                prop_assert_eq!(
                    ready(store.commit(CONTEXTS[ctx], &c)).unwrap(),
                    ready(model.commit(CONTEXTS[ctx], &c)).unwrap(),
                    "{}",
                    at
                );
            }
            Op::Due { now, limit } => {
                let q = DueQuery {
                    now: Millis(now),
                    limit,
                };
                prop_assert_eq!(ready(store.due(&q)).unwrap(), ready(model.due(&q)).unwrap(), "{}", at);
            }
            Op::Flush => ready(store.flush()).unwrap(),
            Op::Reopen => {
                ready(store.flush()).unwrap();
                drop(store);
                store = SqliteStore::open(&path).unwrap();
            }
        }
    }
    // Everything agrees at the end, staged bodies included.
    prop_assert_eq!(store.waiting_total().unwrap(), model.waiting_total());
    for id in CONTEXTS {
        prop_assert_eq!(ready(store.load(id)).unwrap(), ready(model.load(id)).unwrap());
        prop_assert_eq!(
            ready(store.staged(id, 0, u64::MAX, usize::MAX)).unwrap(),
            ready(model.staged(id, 0, u64::MAX, usize::MAX)).unwrap()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_sqlite_store_answers_like_the_memory_store(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
