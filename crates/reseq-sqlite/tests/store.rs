//! Durability, encoding, locking and damage: what the conformance suite cannot see.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use reseq_core::{
    AttributeValue, Attributes, Commit, CommitOutcome, ContextState, DueQuery, Millis, StageOutcome, StagedMessage,
    StagingStore, StoreError, Waiting,
};
use reseq_sqlite::SqliteStore;

/// The store does its I/O on the calling thread: its futures are ready at once.
fn ready<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a SqliteStore future was not ready at once"),
    }
}

fn msg(seq: u64, body: &str) -> StagedMessage {
    StagedMessage {
        seq,
        message_id: format!("m-{seq}"),
        body: Bytes::copy_from_slice(body.as_bytes()),
        attributes: Attributes::new(),
        received_at: Millis(1_000),
        body_hash: reseq_core::envelope::body_hash(body.as_bytes()),
        is_final: false,
    }
}

fn state(next: u64) -> ContextState {
    ContextState {
        updated_at: Millis(50_000),
        ..ContextState::new(next)
    }
}

fn commit(store: &SqliteStore, id: &str, expected: u64, state: ContextState) -> CommitOutcome {
    ready(store.commit(
        id,
        &Commit {
            expected_version: expected,
            state: Some(state),
            remove_staged: vec![],
        },
    ))
    .unwrap()
}

fn seqs(store: &SqliteStore, id: &str, from: u64) -> Vec<u64> {
    ready(store.staged(id, from, u64::MAX, usize::MAX))
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect()
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path).unwrap()
}

fn error_text<T>(r: Result<T, StoreError>) -> (StoreError, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let text = e.to_string();
            (e, text)
        }
    }
}

#[test]
fn unflushed_writes_roll_back_on_drop_and_flushed_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");

    let store = open(&path);
    assert_eq!(ready(store.stage("a", &msg(3, "x"))).unwrap(), StageOutcome::Staged);
    assert_eq!(commit(&store, "a", 0, state(2)), CommitOutcome::Committed);
    assert_eq!(seqs(&store, "a", 0), vec![3], "reads see unflushed writes");
    drop(store);

    let store = open(&path);
    assert_eq!(
        ready(store.load("a")).unwrap(),
        None,
        "an unflushed commit is gone after a drop"
    );
    assert!(
        seqs(&store, "a", 0).is_empty(),
        "an unflushed stage is gone after a drop"
    );

    assert_eq!(ready(store.stage("a", &msg(3, "x"))).unwrap(), StageOutcome::Staged);
    assert_eq!(commit(&store, "a", 0, state(2)), CommitOutcome::Committed);
    ready(store.flush()).unwrap();
    drop(store);

    let store = open(&path);
    assert_eq!(
        ready(store.load("a")).unwrap().map(|s| (s.next, s.version)),
        Some((2, 1))
    );
    assert_eq!(seqs(&store, "a", 0), vec![3]);
    assert_eq!(
        ready(store.stage("a", &msg(3, "x"))).unwrap(),
        StageOutcome::AlreadyStaged
    );
    assert_eq!(ready(store.stage("a", &msg(3, "y"))).unwrap(), StageOutcome::Conflict);
}

#[test]
fn a_reopened_file_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = open(&path);
        for seq in 1..=20 {
            ready(store.stage("ctx", &msg(seq, "b"))).unwrap();
        }
        assert_eq!(commit(&store, "ctx", 0, state(11)), CommitOutcome::Committed);
        ready(store.flush()).unwrap();
    }
    for round in 1..=3u64 {
        let store = open(&path);
        let loaded = ready(store.load("ctx")).unwrap().unwrap();
        assert_eq!(loaded.version, round);
        assert_eq!(seqs(&store, "ctx", loaded.next), (loaded.next..=20).collect::<Vec<_>>());
        assert_eq!(
            commit(&store, "ctx", round, state(loaded.next + 3)),
            CommitOutcome::Committed
        );
        ready(store.flush()).unwrap();
    }
}

#[test]
fn nothing_is_committed_before_a_flush_however_many_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = open(&path);
    for seq in 0..20_005u64 {
        ready(store.stage("bulk", &msg(seq, "b"))).unwrap();
    }
    drop(store);
    let store = open(&path);
    let w = ready(store.waiting("bulk", 0)).unwrap();
    assert_eq!(w.count, 0, "the caller decides when writes become durable");
}

/// The child half of `a_crash_loses_only_the_unflushed_tail`: runs only when the parent
/// test starts this binary with `RESEQ_SQLITE_CRASH_FILE` set.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os("RESEQ_SQLITE_CRASH_FILE") else {
        return;
    };
    let store = open(Path::new(&path));
    ready(store.stage("c", &msg(1, "flushed"))).unwrap();
    assert_eq!(commit(&store, "c", 0, state(1)), CommitOutcome::Committed);
    ready(store.flush()).unwrap();
    ready(store.stage("c", &msg(2, "not flushed"))).unwrap();
    assert_eq!(commit(&store, "c", 1, state(5)), CommitOutcome::Committed);
    std::process::abort();
}

#[test]
fn a_crash_loses_only_the_unflushed_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("RESEQ_SQLITE_CRASH_FILE", &path)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have crashed");
    let store = open(&path);
    let loaded = ready(store.load("c")).unwrap().unwrap();
    assert_eq!(
        (loaded.next, loaded.version),
        (1, 1),
        "the flushed commit survives, the later one does not"
    );
    assert_eq!(seqs(&store, "c", 0), vec![1]);
}

#[test]
fn u64_positions_and_times_round_trip_and_sort_across_the_sign_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let high = 1u64 << 63;
    let positions = [u64::MAX, 0, high, 1, i64::MAX as u64, high + 1, u64::MAX - 1];
    let store = open(&path);
    for (i, &seq) in positions.iter().enumerate() {
        let m = StagedMessage {
            received_at: Millis(u64::MAX - i as u64),
            body_hash: u64::MAX - 7,
            ..msg(seq, "v")
        };
        assert_eq!(ready(store.stage("big", &m)).unwrap(), StageOutcome::Staged);
    }
    ready(store.flush()).unwrap();
    drop(store);

    let store = open(&path);
    let mut sorted = positions.to_vec();
    sorted.sort();
    assert_eq!(seqs(&store, "big", 0), sorted);
    assert_eq!(
        seqs(&store, "big", i64::MAX as u64),
        vec![i64::MAX as u64, high, high + 1, u64::MAX - 1, u64::MAX]
    );
    assert_eq!(seqs(&store, "big", high + 1), vec![high + 1, u64::MAX - 1, u64::MAX]);
    assert_eq!(seqs(&store, "big", u64::MAX), vec![u64::MAX]);
    let top = ready(store.staged("big", u64::MAX, u64::MAX, 1)).unwrap().remove(0);
    assert_eq!((top.received_at, top.body_hash), (Millis(u64::MAX), u64::MAX - 7));
    assert_eq!(
        ready(store.waiting("big", high)).unwrap(),
        Waiting {
            count: 4,
            oldest_received_at: Some(Millis(u64::MAX - 6))
        }
    );

    // A cursor above i64::MAX releases exactly the positions below it.
    let s = ContextState {
        updated_at: Millis(u64::MAX),
        ..state(high + 1)
    };
    assert_eq!(commit(&store, "big", 0, s), CommitOutcome::Committed);
    assert_eq!(seqs(&store, "big", 0), vec![high + 1, u64::MAX - 1, u64::MAX]);
    let loaded = ready(store.load("big")).unwrap().unwrap();
    assert_eq!(loaded.next, high + 1);

    // `due` compares times above i64::MAX correctly too.
    let q = |now: u64| DueQuery {
        now: Millis(now),
        limit: 10,
    };
    let s = ContextState {
        due_at: Some(Millis(u64::MAX - 1)),
        updated_at: Millis(u64::MAX),
        ..state(u64::MAX)
    };
    assert_eq!(commit(&store, "big", 1, s), CommitOutcome::Committed);
    assert_eq!(seqs(&store, "big", 0), vec![u64::MAX]);
    assert!(ready(store.due(&q(high))).unwrap().is_empty());
    assert!(ready(store.due(&q(u64::MAX - 2))).unwrap().is_empty());
    assert_eq!(ready(store.due(&q(u64::MAX - 1))).unwrap(), vec!["big".to_string()]);
}

#[test]
fn a_second_store_on_the_same_file_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let first = open(&path);
    ready(first.stage("a", &msg(1, "x"))).unwrap();
    ready(first.flush()).unwrap();

    let (err, text) = error_text(SqliteStore::open(&path));
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        text.contains(&path.display().to_string()),
        "the error names the file: {text}"
    );
    assert!(text.contains("in use by another process"), "{text}");

    // The holder is not disturbed, and the file is free once it is dropped.
    ready(first.stage("a", &msg(2, "y"))).unwrap();
    ready(first.flush()).unwrap();
    drop(first);
    let second = open(&path);
    assert_eq!(seqs(&second, "a", 0), vec![1, 2]);
}

/// Edits a closed state file directly.
fn tamper(path: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[test]
fn an_unreadable_state_is_reported_as_corrupt_and_other_contexts_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = open(&path);
        commit(&store, "broken", 0, state(1));
        commit(&store, "fine", 0, state(7));
        let mut attributes = Attributes::new();
        attributes.insert("k".into(), AttributeValue::string("v"));
        ready(store.stage(
            "attrs",
            &StagedMessage {
                attributes,
                ..msg(4, "x")
            },
        ))
        .unwrap();
        ready(store.flush()).unwrap();
    }
    tamper(
        &path,
        "UPDATE contexts SET state = '{\"next\": \"not a number' WHERE context_id = 'broken';
         UPDATE staged SET attributes = '[1, 2' WHERE context_id = 'attrs';",
    );
    let store = open(&path);
    match ready(store.load("broken")) {
        Err(StoreError::Corrupt { context_id, detail }) => {
            assert_eq!(context_id, "broken");
            assert!(detail.contains(&path.display().to_string()), "names the file: {detail}");
            assert!(detail.contains("restore"), "says what to do: {detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match ready(store.staged("attrs", 0, u64::MAX, 10)) {
        Err(StoreError::Corrupt { context_id, detail }) => {
            assert_eq!(context_id, "attrs");
            assert!(detail.contains("position 4"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(ready(store.load("fine")).unwrap().map(|s| s.next), Some(7));
    // The damaged context can still be overwritten or forgotten.
    let forget = Commit {
        expected_version: 1,
        state: None,
        remove_staged: vec![],
    };
    assert_eq!(
        ready(store.commit("broken", &forget)).unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(ready(store.load("broken")).unwrap(), None);
}

#[test]
fn a_file_from_a_newer_reseq_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(open(&path));
    tamper(
        &path,
        &format!("PRAGMA user_version = {}", reseq_sqlite::SCHEMA_VERSION + 1),
    );
    let (err, text) = error_text(SqliteStore::open(&path));
    assert!(matches!(err, StoreError::Fatal(_)), "{err:?}");
    assert!(
        text.contains(&path.display().to_string()) && text.contains("newer reseq"),
        "{text}"
    );
}

/// A state file written by the previous schema (version 1, before the attention index)
/// is upgraded in place when opened: its blocked and waiting contexts are indexed.
#[test]
fn a_version_1_file_is_upgraded_and_its_waiting_contexts_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let waiting = ContextState {
        waiting_since: Some(Millis(1_000)),
        version: 1,
        ..state(3)
    };
    let quiet = ContextState { version: 1, ..state(9) };
    let row = |id: &str, s: &ContextState| {
        format!(
            "INSERT INTO contexts VALUES ('{id}', 1, '{}', NULL, {});",
            serde_json::to_string(s).unwrap(),
            (s.next ^ (1 << 63)) as i64
        )
    };
    tamper(
        &path,
        &format!(
            "CREATE TABLE contexts (context_id TEXT PRIMARY KEY NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, \
             due_at INTEGER, next_seq INTEGER NOT NULL) WITHOUT ROWID;
             CREATE INDEX contexts_due_at ON contexts (due_at) WHERE due_at IS NOT NULL;
             CREATE TABLE staged (context_id TEXT NOT NULL, seq INTEGER NOT NULL, received_at INTEGER NOT NULL, \
             body_hash INTEGER NOT NULL, is_final INTEGER NOT NULL, message_id TEXT NOT NULL, attributes TEXT, \
             body BLOB NOT NULL, PRIMARY KEY (context_id, seq)) WITHOUT ROWID;
             {}{}
             PRAGMA user_version = 1;",
            row("waits", &waiting),
            row("quiet", &quiet)
        ),
    );
    let store = open(&path);
    let query = reseq_core::AttentionQuery {
        blocked_limit: 10,
        waiting_before: Millis(5_000),
        waiting_limit: 10,
    };
    let found = ready(store.attention(&query)).unwrap();
    assert_eq!(found.waiting, vec![("waits".to_string(), Millis(1_000))]);
    assert!(found.blocked.is_empty());
    assert_eq!(ready(store.load("quiet")).unwrap().map(|s| s.next), Some(9));
    drop(store);
    // Opened again: already version 2, nothing to do.
    assert_eq!(ready(open(&path).attention(&query)).unwrap().waiting.len(), 1);
}

#[test]
fn files_that_are_not_state_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let (_, text) = error_text(SqliteStore::open(&garbage));
    assert!(
        text.contains(&garbage.display().to_string()) && text.contains("not an SQLite database"),
        "{text}"
    );

    let other = dir.path().join("other.db");
    tamper(&other, "CREATE TABLE users (name TEXT)");
    let (_, text) = error_text(SqliteStore::open(&other));
    assert!(
        text.contains(&other.display().to_string()) && text.contains("not a reseq state file"),
        "{text}"
    );

    let missing = dir.path().join("no/such/dir/state.db");
    let (_, text) = error_text(SqliteStore::open(&missing));
    assert!(
        text.contains(&missing.display().to_string()) && text.contains("directory exists"),
        "{text}"
    );
}
