//! What DynamoDB Local never does: refuse access, throttle, fail on the server, cancel a
//! transaction for a conflict, answer a retried write with its own earlier success. A fake
//! DynamoDB endpoint (a plain HTTP server on loopback, answering from a script) plays
//! those, behind the real SDK client. Needs no emulator.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::{Credentials, Region};
use bytes::Bytes;
use reseq_core::{
    Attributes, Commit, CommitOutcome, ContextState, Millis, StageOutcome, StagedMessage, StagingStore, StoreError,
};
use reseq_dynamodb::{DynamoConfig, DynamoStore};
use serde_json::{Value, json};

const TABLE: &str = "fake-table";
const ATTEMPTS: u32 = 2;

/// The requests the fake received: (action, JSON body).
type Log = Arc<Mutex<Vec<(String, Value)>>>;

/// Answers a request: `(action, body, how many earlier requests of that action)` →
/// `(HTTP status, JSON body)`.
type Script = dyn Fn(&str, &Value, usize) -> (u16, Value) + Send + Sync;

/// Starts a fake endpoint answering by `script`; returns a store on it and the log.
fn fake(script: impl Fn(&str, &Value, usize) -> (u16, Value) + Send + Sync + 'static) -> (DynamoStore, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let script: Arc<Script> = Arc::new(script);
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, script) = (log.clone(), script.clone());
                std::thread::spawn(move || serve(stream, &log, &*script));
            }
        });
    }
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("AKIDFAKE", "secret", None, None, "fake"))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(1)),
        )
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    (DynamoStore::new(client, TABLE, DynamoConfig::default()), log)
}

/// HTTP/1.1 with keep-alive, just enough for the SDK's requests.
fn serve(stream: TcpStream, log: &Log, script: &Script) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let (mut length, mut action) = (0usize, String::new());
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "x-amz-target" => action = value.trim().trim_start_matches("DynamoDB_20120810.").to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let nth = {
            let mut log = log.lock().unwrap();
            let nth = log.iter().filter(|(a, _)| *a == action).count();
            log.push((action.clone(), body.clone()));
            nth
        };
        let (status, answer) = script(&action, &body, nth);
        let answer = answer.to_string();
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn error(kind: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"), "message": "scripted"});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    (400, body)
}

fn ok() -> (u16, Value) {
    (200, json!({}))
}

fn actions(log: &Log) -> Vec<String> {
    log.lock().unwrap().iter().map(|(a, _)| a.clone()).collect()
}

fn message(seq: u64, body: &'static str) -> StagedMessage {
    StagedMessage {
        seq,
        message_id: "m".into(),
        body: Bytes::from_static(body.as_bytes()),
        attributes: Attributes::new(),
        received_at: Millis(1),
        body_hash: reseq_core::envelope::body_hash(body.as_bytes()),
        is_final: false,
    }
}

fn commit(expected_version: u64, remove_staged: Vec<u64>) -> Commit {
    Commit {
        expected_version,
        state: Some(ContextState::new(3)),
        remove_staged,
    }
}

#[tokio::test]
async fn access_denied_is_fatal_and_names_the_table_and_the_action() {
    let (store, log) = fake(|_, _, _| error("AccessDeniedException", json!({})));
    let err = store.load("c").await.unwrap_err();
    let StoreError::Fatal(message) = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains(TABLE) && message.contains("dynamodb:GetItem") && message.contains("credentials"),
        "{message}"
    );
    assert_eq!(actions(&log).len(), 1, "not retried");
}

#[tokio::test]
async fn a_missing_table_is_fatal_and_says_how_to_create_it() {
    let (store, _) = fake(|_, _, _| error("ResourceNotFoundException", json!({})));
    let err = store.stage("c", &message(1, "x")).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("DynamoDB table {TABLE} does not exist in region us-east-1"))
            && err.contains(&format!("reseq init --table {TABLE}")),
        "{err}"
    );
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_then_unavailable() {
    for (status, kind) in [
        (400, "ProvisionedThroughputExceededException"),
        (400, "ThrottlingException"),
        (500, "InternalServerError"),
    ] {
        let (store, log) = fake(move |_, _, _| (status, error(kind, json!({})).1));
        let err = store.stage("c", &message(1, "x")).await.unwrap_err();
        let StoreError::Unavailable(message) = &err else {
            panic!("{kind}: {err:?}")
        };
        assert!(message.contains(TABLE) && message.contains(kind), "{message}");
        assert_eq!(actions(&log).len(), ATTEMPTS as usize, "{kind}: the SDK retried");
        assert_eq!(store.cost().put_item, 1, "one request, however many attempts");
    }
}

#[tokio::test]
async fn a_connection_that_fails_is_unavailable() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .credentials_provider(Credentials::new("AKIDFAKE", "secret", None, None, "fake"))
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .build();
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        TABLE,
        DynamoConfig::default(),
    );
    let err = store.load("c").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains(TABLE)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_client_without_credentials_is_fatal() {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:9")
        .build();
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        TABLE,
        DynamoConfig::default(),
    );
    let err = store.load("c").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Fatal(m) if m.contains("credentials") && m.contains(TABLE)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_transaction_cancelled_by_a_conflict_is_tried_again() {
    let (store, log) = fake(|action, _, nth| match (action, nth) {
        ("TransactWriteItems", 0 | 1) => error(
            "TransactionCanceledException",
            json!({"CancellationReasons": [{"Code": "TransactionConflict", "Message": "conflict"}, {"Code": "None"}]}),
        ),
        _ => ok(),
    });
    assert_eq!(
        store.commit("c", &commit(1, vec![7])).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(actions(&log), vec!["TransactWriteItems"; 3]);
    assert_eq!(store.cost().transact_write_items, 3);

    let (store, _) = fake(|_, _, _| {
        error(
            "TransactionCanceledException",
            json!({"CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}]}),
        )
    });
    let err = store.commit("c", &commit(1, vec![7])).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(_)),
        "gives up after a few attempts: {err:?}"
    );
}

#[tokio::test]
async fn a_transaction_cancelled_by_the_version_is_a_mismatch() {
    let (store, _) = fake(|_, _, _| {
        error(
            "TransactionCanceledException",
            json!({"CancellationReasons": [
                {"Code": "ConditionalCheckFailed", "Item": {"version": {"N": "5"}, "state": {"S": "{}"}}},
                {"Code": "None"}
            ]}),
        )
    });
    assert_eq!(
        store.commit("c", &commit(1, vec![7])).await.unwrap(),
        CommitOutcome::VersionMismatch
    );
}

/// The SDK retries a `PutItem` whose answer was lost; the retry then finds the item the
/// first attempt wrote and fails its condition. That is still a success.
#[tokio::test]
async fn a_commit_that_failed_only_against_its_own_earlier_attempt_is_committed() {
    let (store, _) = fake(|_, body, _| error("ConditionalCheckFailedException", json!({"Item": body["Item"]})));
    assert_eq!(
        store.commit("c", &commit(1, vec![])).await.unwrap(),
        CommitOutcome::Committed
    );

    let (store, _) = fake(|_, body, _| {
        let mut other = body["Item"].clone();
        other["state"] = json!({"S": "{\"another\": \"writer\"}"});
        error("ConditionalCheckFailedException", json!({"Item": other}))
    });
    assert_eq!(
        store.commit("c", &commit(1, vec![])).await.unwrap(),
        CommitOutcome::VersionMismatch
    );
}

#[tokio::test]
async fn a_refused_stage_without_the_old_item_reads_its_hash() {
    let hash = message(1, "x").body_hash;
    let (store, log) = fake(move |action, _, _| match action {
        "PutItem" => error("ConditionalCheckFailedException", json!({})),
        _ => (200, json!({"Item": {"hash": {"N": hash.to_string()}}})),
    });
    assert_eq!(
        store.stage("c", &message(1, "x")).await.unwrap(),
        StageOutcome::AlreadyStaged
    );
    assert_eq!(
        store.stage("c", &message(1, "y")).await.unwrap(),
        StageOutcome::Conflict
    );
    assert_eq!(actions(&log), ["PutItem", "GetItem", "PutItem", "GetItem"]);
    let get = &log.lock().unwrap()[1].1;
    assert_eq!(get["ConsistentRead"], json!(true));
}

#[tokio::test]
async fn unprocessed_deletes_are_sent_again() {
    let (store, log) = fake(|action, body, nth| match (action, nth) {
        ("Query", 0) => (
            200,
            json!({"Items": [{"sk": {"N": "4"}}, {"sk": {"N": "9"}}], "Count": 2}),
        ),
        ("Query", _) => (200, json!({"Items": [], "Count": 0})),
        ("BatchWriteItem", 0) => {
            let first = body["RequestItems"][TABLE][0].clone();
            (200, json!({"UnprocessedItems": {TABLE: [first]}}))
        }
        _ => ok(),
    });
    let forget = Commit {
        expected_version: 3,
        state: None,
        remove_staged: vec![],
    };
    assert_eq!(store.commit("c", &forget).await.unwrap(), CommitOutcome::Committed);
    assert_eq!(
        actions(&log),
        ["DeleteItem", "Query", "BatchWriteItem", "BatchWriteItem"],
        "a short page was the last one"
    );
    let log = log.lock().unwrap();
    assert_eq!(log[0].1["ConditionExpression"], json!("#version = :expected"));
    assert_eq!(log[0].1["ExpressionAttributeValues"][":expected"], json!({"N": "3"}));
    assert_eq!(log[3].1["RequestItems"][TABLE].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn staged_reads_every_page_up_to_its_limit() {
    let item = |seq: u64| {
        json!({"pk": {"S": "c"}, "sk": {"N": seq.to_string()}, "recv": {"N": "1"}, "hash": {"N": "2"},
               "mid": {"S": "m"}, "fin": {"BOOL": false}, "body": {"B": "eA=="}})
    };
    let (store, log) = fake(move |_, _, nth| {
        let last = json!({"pk": {"S": "c"}, "sk": {"N": nth.to_string()}});
        (
            200,
            json!({"Items": [item(nth as u64)], "Count": 1, "LastEvaluatedKey": last}),
        )
    });
    let got = store.staged("c", 0, 100, 3).await.unwrap();
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(&got[0].body[..], b"x");
    let log = log.lock().unwrap();
    let limits: Vec<&Value> = log.iter().map(|(_, body)| &body["Limit"]).collect();
    assert_eq!(limits, [&json!(3), &json!(2), &json!(1)]);
    assert!(log.iter().all(|(_, body)| body["ConsistentRead"] == json!(true)));
    assert_eq!(log[1].1["ExclusiveStartKey"]["sk"], json!({"N": "0"}));
    assert_eq!(store.cost().query_pages, 3);
}
