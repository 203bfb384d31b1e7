//! Several store clients racing on one context (issue 3): each task has its own SDK client
//! and store, as separate workers would, on the same DynamoDB Local table. The conformance
//! suite races tasks on one shared store; here nothing is shared but the table.

mod common;

use std::sync::Arc;

use reseq_core::{Commit, CommitOutcome, ContextState, Millis, StageOutcome, StagedMessage, StagingStore};
use reseq_dynamodb::DynamoStore;

const WORKERS: usize = 8;

fn message(seq: u64, body: &str) -> StagedMessage {
    reseq_conformance::message(seq, body)
}

fn state(next: u64) -> ContextState {
    ContextState {
        updated_at: Millis(50_000),
        ..ContextState::new(next)
    }
}

/// One store per worker, each with a client of its own; `None` without DynamoDB Local.
async fn workers() -> Option<Vec<Arc<DynamoStore>>> {
    let mut stores = Vec::with_capacity(WORKERS);
    for _ in 0..WORKERS {
        stores.push(Arc::new(common::store().await?));
    }
    Some(stores)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_staging_one_position_stage_it_once() {
    let Some(stores) = workers().await else { return };
    let id = common::unique("race-stage");
    let barrier = Arc::new(tokio::sync::Barrier::new(WORKERS));
    let mut tasks = tokio::task::JoinSet::new();
    for (worker, store) in stores.into_iter().enumerate() {
        let (id, barrier) = (id.clone(), barrier.clone());
        tasks.spawn(async move {
            let body = if worker % 2 == 0 { "even" } else { "odd" };
            barrier.wait().await;
            (body, store.stage(&id, &message(5, body)).await.unwrap())
        });
    }
    let outcomes = tasks.join_all().await;
    let winners: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| *o == StageOutcome::Staged)
        .map(|(body, _)| *body)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one copy wins: {outcomes:?}");
    for (body, outcome) in &outcomes {
        let expected = if *body == winners[0] {
            [StageOutcome::Staged, StageOutcome::AlreadyStaged]
        } else {
            [StageOutcome::Conflict, StageOutcome::Conflict]
        };
        assert!(expected.contains(outcome), "{body}: {outcome:?} ({outcomes:?})");
    }
    let store = common::store().await.unwrap();
    let staged = store.staged(&id, 0, u64::MAX, 10).await.unwrap();
    assert_eq!(staged.len(), 1);
    assert_eq!(
        &staged[0].body[..],
        winners[0].as_bytes(),
        "the winner's copy is the one stored"
    );
}

/// Every worker commits on the version it read: one wins, the others are told so.
async fn race_commits(remove_staged: Vec<u64>) {
    let Some(stores) = workers().await else { return };
    let id = common::unique("race-commit");
    let first = Commit {
        expected_version: 0,
        state: Some(state(1)),
        remove_staged: vec![],
    };
    assert_eq!(stores[0].commit(&id, &first).await.unwrap(), CommitOutcome::Committed);
    for &seq in &remove_staged {
        stores[0].stage(&id, &message(seq, "x")).await.unwrap();
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(WORKERS));
    let mut tasks = tokio::task::JoinSet::new();
    for (worker, store) in stores.into_iter().enumerate() {
        let (id, barrier, remove_staged) = (id.clone(), barrier.clone(), remove_staged.clone());
        tasks.spawn(async move {
            let c = Commit {
                expected_version: 1,
                state: Some(state(10 + worker as u64)),
                remove_staged,
            };
            barrier.wait().await;
            (worker, store.commit(&id, &c).await.unwrap())
        });
    }
    let outcomes = tasks.join_all().await;
    let winners: Vec<usize> = outcomes
        .iter()
        .filter(|(_, o)| *o == CommitOutcome::Committed)
        .map(|(w, _)| *w)
        .collect();
    assert_eq!(winners.len(), 1, "one writer per version: {outcomes:?}");
    let store = common::store().await.unwrap();
    let loaded = store.load(&id).await.unwrap().unwrap();
    assert_eq!(
        (loaded.version, loaded.next),
        (2, 10 + winners[0] as u64),
        "the winner's state"
    );
    assert!(store.staged(&id, 0, u64::MAX, 100).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_committing_one_version_commit_it_once() {
    race_commits(vec![]).await;
}

/// The same with transactions (a commit that removes staged positions): a transaction
/// cancelled by a conflicting one is retried, so every loser sees `VersionMismatch`,
/// never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_committing_one_version_in_transactions_commit_it_once() {
    race_commits(vec![20, 21, 22]).await;
}
