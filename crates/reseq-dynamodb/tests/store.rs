//! What the conformance suite cannot see: the items themselves (compression, TTL), size
//! limits, table management, fail-fast errors and the write cost, against DynamoDB Local.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use reseq_core::{
    Attributes, Commit, CommitOutcome, ContextState, Millis, StageOutcome, StagedMessage, StagingStore, StoreError,
};
use reseq_dynamodb::{
    Created, DynamoConfig, DynamoStore, ITEM_LIMIT_BYTES, PK, SK, STATE_SK, TTL, connect, create_table, load_client,
};

fn message(seq: u64, body: impl Into<Bytes>) -> StagedMessage {
    let body = body.into();
    StagedMessage {
        seq,
        message_id: format!("m-{seq}"),
        body_hash: reseq_core::envelope::body_hash(&body),
        body,
        attributes: Attributes::new(),
        received_at: Millis(1_000 + seq),
        is_final: false,
    }
}

fn state(next: u64) -> ContextState {
    ContextState {
        updated_at: Millis(50_000),
        ..ContextState::new(next)
    }
}

fn commit(expected: u64, next: u64, remove_staged: Vec<u64>) -> Commit {
    Commit {
        expected_version: expected,
        state: Some(state(next)),
        remove_staged,
    }
}

/// Incompressible bytes.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rand::rngs::SmallRng::seed_from_u64(7).fill_bytes(&mut bytes);
    bytes
}

/// Very compressible bytes that look like real payloads.
fn json_lines(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("{{\"orderId\":\"o-{}\",\"amount\":{i}}}\n", i % 97).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// The raw item of a staged position, read past the store.
async fn raw_item(store: &DynamoStore, context_id: &str, sk: i64) -> Option<HashMap<String, AttributeValue>> {
    store
        .client()
        .get_item()
        .table_name(store.table())
        .key(PK, AttributeValue::S(context_id.into()))
        .key(SK, AttributeValue::N(sk.to_string()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

async fn raw_put(store: &DynamoStore, item: HashMap<String, AttributeValue>) {
    store
        .client()
        .put_item()
        .table_name(store.table())
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_body_over_4_kib_is_stored_compressed_and_round_trips() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("compressed");
    let msg = message(3, json_lines(10_000));
    assert_eq!(store.stage(&id, &msg).await.unwrap(), StageOutcome::Staged);
    let item = raw_item(&store, &id, 3).await.expect("the item");
    assert_eq!(item.get("z"), Some(&AttributeValue::Bool(true)));
    let Some(AttributeValue::B(stored)) = item.get("body") else {
        panic!("no body: {item:?}")
    };
    assert!(
        stored.as_ref().len() < 2_000,
        "compressed to {} bytes",
        stored.as_ref().len()
    );
    assert_eq!(store.staged(&id, 3, 3, 10).await.unwrap(), vec![msg]);

    let small = message(4, json_lines(4_096));
    store.stage(&id, &small).await.unwrap();
    let item = raw_item(&store, &id, 4).await.unwrap();
    assert!(!item.contains_key("z"), "4 KiB and less is stored as it is");
    assert_eq!(store.staged(&id, 4, 4, 10).await.unwrap(), vec![small]);
}

#[tokio::test]
async fn an_incompressible_body_of_1_mib_is_too_large_and_not_written() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("too-large");
    let msg = message(1, random_bytes(1 << 20));
    let outcome = store.stage(&id, &msg).await.unwrap();
    let StageOutcome::TooLarge { limit_bytes } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        limit_bytes < ITEM_LIMIT_BYTES && limit_bytes > ITEM_LIMIT_BYTES - 1_000,
        "the room for the body: {limit_bytes}"
    );
    assert!(raw_item(&store, &id, 1).await.is_none());
    assert_eq!(store.cost().write_requests(), 0, "refused before any request");

    // Just under the limit fits, just over does not.
    let fits = message(2, random_bytes(limit_bytes));
    assert_eq!(store.stage(&id, &fits).await.unwrap(), StageOutcome::Staged);
    assert_eq!(store.staged(&id, 2, 2, 1).await.unwrap(), vec![fits]);
    let over = message(3, random_bytes(limit_bytes + 1));
    assert!(matches!(
        store.stage(&id, &over).await.unwrap(),
        StageOutcome::TooLarge { .. }
    ));
}

#[tokio::test]
async fn a_compressible_body_of_1_mib_is_staged_and_round_trips() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("big-compressible");
    let msg = message(1, json_lines(1 << 20));
    assert_eq!(store.stage(&id, &msg).await.unwrap(), StageOutcome::Staged);
    assert_eq!(store.staged(&id, 0, u64::MAX, 10).await.unwrap(), vec![msg.clone()]);
    assert_eq!(
        store.stage(&id, &msg).await.unwrap(),
        StageOutcome::AlreadyStaged,
        "a second copy is recognised by its hash"
    );
}

#[tokio::test]
async fn a_refused_stage_reads_the_existing_hash_from_the_same_request() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("all-old");
    store.stage(&id, &message(5, "x")).await.unwrap();
    store.reset_cost();
    assert_eq!(
        store.stage(&id, &message(5, "x")).await.unwrap(),
        StageOutcome::AlreadyStaged
    );
    assert_eq!(
        store.stage(&id, &message(5, "y")).await.unwrap(),
        StageOutcome::Conflict
    );
    let cost = store.cost();
    assert_eq!(
        (cost.put_item, cost.get_item),
        (2, 0),
        "ALL_OLD on the refused put: {cost:?}"
    );
}

#[tokio::test]
async fn staged_items_expire_by_ttl_and_never_before_now_plus_the_staged_ttl() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("ttl");
    let before = unix_secs();
    // received_at from a clock far in the past (a test clock): the TTL counts from now.
    store.stage(&id, &message(1, "old clock")).await.unwrap();
    let future = SystemTime::now() + Duration::from_secs(3_600);
    let received = future.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    store
        .stage(
            &id,
            &StagedMessage {
                received_at: Millis(received),
                ..message(2, "later clock")
            },
        )
        .await
        .unwrap();
    let ttl_of = |item: HashMap<String, AttributeValue>| match item.get(TTL) {
        Some(AttributeValue::N(n)) => n.parse::<u64>().unwrap(),
        other => panic!("no ttl: {other:?}"),
    };
    let staged_ttl = DynamoConfig::default().staged_ttl.as_secs();
    assert_eq!(staged_ttl, 28 * 24 * 3600);
    let ttl = ttl_of(raw_item(&store, &id, 1).await.unwrap());
    assert!(ttl >= before + staged_ttl && ttl <= unix_secs() + staged_ttl, "{ttl}");
    let ttl = ttl_of(raw_item(&store, &id, 2).await.unwrap());
    assert_eq!(ttl, received / 1000 + staged_ttl);

    assert_eq!(
        store.commit(&id, &commit(0, 5, vec![])).await.unwrap(),
        CommitOutcome::Committed
    );
    let state_item = raw_item(&store, &id, STATE_SK).await.unwrap();
    assert!(!state_item.contains_key(TTL), "the state item never expires by TTL");
}

#[tokio::test]
async fn connect_to_a_missing_table_fails_fast_naming_it() {
    if common::emulator().is_none() {
        return;
    }
    let table = common::unique("reseq-missing");
    let start = Instant::now();
    let Err(err) = connect(&table, DynamoConfig::default()).await else {
        panic!("connected")
    };
    assert!(start.elapsed() < Duration::from_secs(5), "fast: {:?}", start.elapsed());
    let StoreError::Fatal(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains(&format!("DynamoDB table {table} does not exist"))
            && message.contains(&format!("reseq init --table {table}"))
            && message.contains("127.0.0.1:8000"),
        "{message}"
    );
    // A store made without the check says the same on its first request.
    let store = DynamoStore::new(
        load_client(&DynamoConfig::default()).await,
        &table,
        DynamoConfig::default(),
    );
    let err = store.load("c").await.unwrap_err().to_string();
    assert!(err.contains(&format!("reseq init --table {table}")), "{err}");
}

#[tokio::test]
async fn create_table_is_idempotent_and_turns_ttl_on() {
    if common::emulator().is_none() {
        return;
    }
    let client = load_client(&DynamoConfig::default()).await;
    let table = common::unique("reseq-create");
    assert_eq!(create_table(&client, &table).await.unwrap(), Created::Created);
    assert_eq!(create_table(&client, &table).await.unwrap(), Created::AlreadyExisted);
    let ttl = client.describe_time_to_live().table_name(&table).send().await.unwrap();
    let ttl = ttl.time_to_live_description().expect("a TTL description");
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
    assert_eq!(ttl.attribute_name(), Some(TTL));
    let store = connect(&table, DynamoConfig::default()).await.unwrap();
    assert_eq!(store.table(), table);
    client.delete_table().table_name(&table).send().await.unwrap();
}

#[tokio::test]
async fn create_table_refuses_a_table_of_another_layout() {
    if common::emulator().is_none() {
        return;
    }
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let client = load_client(&DynamoConfig::default()).await;
    let table = common::unique("reseq-foreign");
    client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let err = create_table(&client, &table).await.unwrap_err().to_string();
    assert!(
        err.contains(&table) && err.contains("does not have reseq's layout"),
        "{err}"
    );
    let err = connect(&table, DynamoConfig::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&table) && err.contains("does not have reseq's layout"),
        "{err}"
    );
    client.delete_table().table_name(&table).send().await.unwrap();
}

#[tokio::test]
async fn k_puts_and_one_commit_are_k_plus_1_writes() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("cost");
    let k = 5;
    for seq in 2..2 + k {
        assert_eq!(
            store.stage(&id, &message(seq, "w")).await.unwrap(),
            StageOutcome::Staged
        );
    }
    assert_eq!(
        store.commit(&id, &commit(0, 1, vec![])).await.unwrap(),
        CommitOutcome::Committed
    );
    let cost = store.cost();
    assert_eq!(cost.write_requests(), k + 1, "{cost:?}");
    assert_eq!(cost.put_item, k + 1, "{cost:?}");
    assert!(cost.write_units >= (k + 1) as f64, "{cost:?}");
    assert_eq!(cost.read_requests(), 0, "{cost:?}");

    store.reset_cost();
    store.load(&id).await.unwrap();
    store.staged(&id, 1, u64::MAX, 100).await.unwrap();
    let cost = store.cost();
    assert_eq!(
        (cost.get_item, cost.query_pages, cost.write_requests()),
        (1, 1, 0),
        "{cost:?}"
    );
    assert!(cost.read_units > 0.0 && cost.write_units == 0.0, "{cost:?}");
}

#[tokio::test]
async fn a_commit_that_releases_staged_rows_deletes_nothing() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("release");
    for seq in 1..=5 {
        store.stage(&id, &message(seq, "r")).await.unwrap();
    }
    store.reset_cost();
    assert_eq!(
        store.commit(&id, &commit(0, 6, vec![])).await.unwrap(),
        CommitOutcome::Committed
    );
    let cost = store.cost();
    assert_eq!(
        (
            cost.put_item,
            cost.delete_item,
            cost.transact_write_items,
            cost.batch_write_item
        ),
        (1, 0, 0, 0),
        "{cost:?}"
    );
    // The released rows are left to TTL, and reads from the cursor never see them.
    for seq in 1..=5 {
        assert!(
            raw_item(&store, &id, seq)
                .await
                .is_some_and(|item| item.contains_key(TTL))
        );
    }
    assert!(store.staged(&id, 6, u64::MAX, 10).await.unwrap().is_empty());
    assert_eq!(store.waiting(&id, 6).await.unwrap().count, 0);
}

#[tokio::test]
async fn a_commit_removing_more_than_a_transaction_holds_removes_them_all() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("remove-many");
    for seq in 10..160 {
        store.stage(&id, &message(seq, "x")).await.unwrap();
    }
    store.reset_cost();
    let removed: Vec<u64> = (10..160).filter(|s| *s != 100).collect();
    let c = commit(0, 5, removed);
    assert_eq!(store.commit(&id, &c).await.unwrap(), CommitOutcome::Committed);
    let seqs: Vec<u64> = store
        .staged(&id, 0, u64::MAX, 1000)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, vec![100]);
    let cost = store.cost();
    // 149 removes: 99 in the transaction with the state, 50 in two batches of 25.
    assert_eq!((cost.transact_write_items, cost.batch_write_item), (1, 2), "{cost:?}");
    // The condition still holds the transaction.
    let c = commit(0, 6, vec![100]);
    assert_eq!(store.commit(&id, &c).await.unwrap(), CommitOutcome::VersionMismatch);
    assert_eq!(
        store.staged(&id, 0, u64::MAX, 10).await.unwrap().len(),
        1,
        "nothing removed"
    );
}

#[tokio::test]
async fn forgetting_a_context_deletes_all_of_its_items() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("forget-many");
    for seq in 0..60 {
        store.stage(&id, &message(seq, "x")).await.unwrap();
    }
    assert_eq!(
        store.commit(&id, &commit(0, 30, vec![])).await.unwrap(),
        CommitOutcome::Committed
    );
    let forget = Commit {
        expected_version: 2,
        state: None,
        remove_staged: vec![],
    };
    assert_eq!(
        store.commit(&id, &forget).await.unwrap(),
        CommitOutcome::VersionMismatch
    );
    let forget = Commit {
        expected_version: 1,
        ..forget
    };
    assert_eq!(store.commit(&id, &forget).await.unwrap(), CommitOutcome::Committed);
    assert_eq!(store.load(&id).await.unwrap(), None);
    assert!(store.staged(&id, 0, u64::MAX, 100).await.unwrap().is_empty());
}

#[tokio::test]
async fn unreadable_items_are_reported_as_corrupt_naming_the_context() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("corrupt");
    let s = |v: &str| AttributeValue::S(v.into());
    let n = |v: &str| AttributeValue::N(v.into());
    let base = |sk: &str| HashMap::from([(PK.to_string(), s(&id)), (SK.to_string(), n(sk))]);

    let mut item = base("-1");
    item.insert("version".into(), n("1.5"));
    item.insert("state".into(), s(&serde_json::to_string(&state(1)).unwrap()));
    raw_put(&store, item).await;
    let err = store.load(&id).await.unwrap_err();
    let StoreError::Corrupt { context_id, detail } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(context_id, &id);
    assert!(detail.contains(common::TABLE) && detail.contains("version"), "{detail}");

    let mut item = base("-1");
    item.insert("version".into(), n("1"));
    item.insert("state".into(), s("{not json"));
    raw_put(&store, item).await;
    assert!(matches!(store.load(&id).await, Err(StoreError::Corrupt { .. })));

    store.stage(&id, &message(7, "fine")).await.unwrap();
    let mut item = raw_item(&store, &id, 7).await.unwrap();
    item.insert("hash".into(), n("-3"));
    raw_put(&store, item.clone()).await;
    let err = store.staged(&id, 0, u64::MAX, 10).await.unwrap_err().to_string();
    assert!(
        err.contains(&id) && err.contains("position 7") && err.contains("hash"),
        "{err}"
    );
    item.insert("hash".into(), n("1"));
    item.insert("z".into(), AttributeValue::Bool(true));
    raw_put(&store, item).await;
    let err = store.staged(&id, 0, u64::MAX, 10).await.unwrap_err().to_string();
    assert!(err.contains("inflated"), "{err}");
}

#[tokio::test]
async fn every_field_survives_and_u64_extremes_are_exact() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("extremes");
    let mut attributes = Attributes::new();
    attributes.insert("sequence".into(), reseq_core::AttributeValue::number(u64::MAX));
    let msg = StagedMessage {
        seq: u64::MAX,
        message_id: String::new(),
        body: Bytes::new(),
        attributes,
        received_at: Millis(u64::MAX),
        body_hash: u64::MAX,
        is_final: true,
    };
    assert_eq!(store.stage(&id, &msg).await.unwrap(), StageOutcome::Staged);
    let item = raw_item(&store, &id, -1).await;
    assert!(item.is_none());
    let got = store.staged(&id, u64::MAX, u64::MAX, 1).await.unwrap();
    assert_eq!(got, vec![msg]);
    let due = ContextState {
        due_at: Some(Millis(u64::MAX)),
        next: u64::MAX,
        ..state(0)
    };
    let c = Commit {
        expected_version: 0,
        state: Some(due.clone()),
        remove_staged: vec![],
    };
    assert_eq!(store.commit(&id, &c).await.unwrap(), CommitOutcome::Committed);
    assert_eq!(store.load(&id).await.unwrap(), Some(ContextState { version: 1, ..due }));
}

#[tokio::test]
async fn the_staged_ttl_follows_the_retention_and_a_shorter_one_is_refused() {
    let day = 24 * 3600;
    let sixty_days = Duration::from_secs(60 * day);
    let config = DynamoConfig::for_retention(sixty_days);
    assert_eq!(config.staged_ttl.as_secs(), 120 * day, "twice the retention");
    assert!(config.check_retention(sixty_days).is_ok());
    assert_eq!(
        DynamoConfig::for_retention(Duration::from_secs(3600))
            .staged_ttl
            .as_secs(),
        3600 + day,
        "at least a day beyond a short retention"
    );
    let err = DynamoConfig::default().check_retention(sixty_days).unwrap_err();
    assert!(err.contains("--retention"), "{err}");

    let Some(default_store) = common::store().await else {
        return;
    };
    let store = DynamoStore::new(default_store.client().clone(), common::TABLE, config);
    let id = common::unique("ttl-retention");
    let before = unix_secs();
    store.stage(&id, &message(1, "waits")).await.unwrap();
    let ttl = match raw_item(&store, &id, 1).await.unwrap().get(TTL) {
        Some(AttributeValue::N(n)) => n.parse::<u64>().unwrap(),
        other => panic!("no ttl: {other:?}"),
    };
    assert!(ttl >= before + 120 * day, "a 60-day wait survives: {ttl}");
}

#[tokio::test]
async fn keep_staged_pushes_a_waiting_items_ttl_out_and_never_in() {
    let Some(store) = common::store().await else { return };
    let id = common::unique("keep");
    store.stage(&id, &message(1, "undeliverable")).await.unwrap();
    let ttl_now = |item: Option<HashMap<String, AttributeValue>>| match item.unwrap().get(TTL) {
        Some(AttributeValue::N(n)) => n.parse::<u64>().unwrap(),
        other => panic!("no ttl: {other:?}"),
    };
    let first = ttl_now(raw_item(&store, &id, 1).await);
    let later = Millis((first + 90 * 24 * 3600) * 1000);
    store.reset_cost();
    store.keep_staged(&id, &[1, 2], later).await.unwrap();
    let kept = ttl_now(raw_item(&store, &id, 1).await);
    assert!(kept >= later.0 / 1000, "pushed out: {first} -> {kept}");
    assert!(
        raw_item(&store, &id, 2).await.is_none(),
        "no item is created for a missing position"
    );
    assert_eq!(store.cost().update_item, 2);
    store.keep_staged(&id, &[1], Millis(1000)).await.unwrap();
    assert_eq!(ttl_now(raw_item(&store, &id, 1).await), kept, "never brought forward");
}

#[tokio::test]
async fn a_conflicting_copy_after_the_first_was_released_from_the_table_is_a_conflict() {
    use reseq_core::testing::{RecordingDlq, RecordingHandler};
    use reseq_core::{Engine, EngineConfig, Envelope, ManualClock, Outcome, Reason};
    let Some(store) = common::store().await else { return };
    let id = common::unique("late-conflict");
    let engine = Engine::new(store, ManualClock::new(Millis(1_000)), EngineConfig::default());
    let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
    let msg = |seq: u64, body: &'static str| Envelope::new(id.clone(), seq, body);
    engine.process(vec![msg(2, "two")], &handler, &dlq).await;
    engine.process(vec![msg(1, "one")], &handler, &dlq).await;
    assert_eq!(handler.seqs(&id), vec![1, 2], "2 was released from the table");
    let copies = engine
        .process(vec![msg(2, "two"), msg(2, "another two")], &handler, &dlq)
        .await;
    assert_eq!(
        copies,
        vec![Outcome::Duplicate, Outcome::DeadLettered(Reason::Conflict)]
    );
    assert_eq!(dlq.reasons(), vec![Reason::Conflict]);
}
