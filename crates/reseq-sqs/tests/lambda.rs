//! The Lambda adapter on the memory store and a manual clock: the partial batch response,
//! and a long run cut at the invocation's deadline that the next scheduled event picks up.

use std::sync::Arc;

use reseq_core::testing::{RecordingDlq, RecordingHandler};
use reseq_core::{
    Duration, Engine, EngineConfig, Extractor, Handler, HandlerError, ManualClock, MemoryStore, Millis, Release,
    StagingStore,
};
use reseq_sqs::batch::{InvalidPolicy, Processor};
use reseq_sqs::lambda::handle;
use serde_json::{Value, json};

/// A handler that takes a second of (manual) time per message: a slow downstream.
struct Slow {
    inner: RecordingHandler,
    clock: Arc<ManualClock>,
}

impl Handler for Slow {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        self.clock.advance(Duration::from_secs(1));
        self.inner.handle(msg).await
    }
}

type TestProcessor = Processor<MemoryStore, Arc<ManualClock>, Slow, RecordingDlq>;

fn processor(max_staged: u64) -> (TestProcessor, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Millis(1_795_400_000_000)));
    let lease = reseq_core::engine::LeaseConfig {
        owner: "lambda".into(),
        duration: Duration::from_secs(60),
    };
    let config = EngineConfig {
        lease: Some(lease),
        max_staged,
        ..EngineConfig::default()
    };
    let engine = Engine::new(MemoryStore::new(), clock.clone(), config);
    let handler = Slow {
        inner: RecordingHandler::new(),
        clock: clock.clone(),
    };
    let processor = Processor::new(
        engine,
        Extractor::default(),
        handler,
        RecordingDlq::new(),
        InvalidPolicy::Redrive,
    );
    (processor, clock)
}

fn record(id: &str, group: &str, context: &str, seq: Option<u64>) -> Value {
    let mut attributes = json!({
        "contextId": {"stringValue": context, "dataType": "String", "stringListValues": [], "binaryListValues": []}
    });
    if let Some(seq) = seq {
        attributes["sequence"] = json!({"stringValue": seq.to_string(), "dataType": "Number", "stringListValues": [], "binaryListValues": []});
    }
    json!({
        "messageId": id,
        "receiptHandle": format!("rh-{id}"),
        "body": format!("{context}:{seq:?}"),
        "attributes": {"MessageGroupId": group, "ApproximateReceiveCount": "1"},
        "messageAttributes": attributes,
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:eu-west-1:000000000000:in.fifo",
        "awsRegion": "eu-west-1"
    })
}

fn failures(response: &Value) -> Vec<&str> {
    response["batchItemFailures"]
        .as_array()
        .expect("a partial batch response")
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_run_cut_at_the_deadline_stays_staged_and_the_next_scheduled_event_finishes_it() {
    let (processor, clock) = processor(10_000);
    let start = reseq_core::Clock::now(&*clock);
    let records: Vec<Value> = (1..=10)
        .map(|s| record(&format!("m{s}"), "g", "order-1", Some(s)))
        .collect();
    let deadline = start.plus(Duration::from_millis(3_500));
    let response = handle(&processor, json!({ "Records": records }), deadline)
        .await
        .unwrap();
    assert!(
        failures(&response).is_empty(),
        "every record was released or staged: {response}"
    );
    assert_eq!(processor.handler().inner.seqs("order-1"), vec![1, 2, 3, 4]);
    let state = processor.engine().store().load("order-1").await.unwrap().unwrap();
    assert_eq!(state.next, 5);
    assert!(state.lease.is_none(), "the lease is given back");
    assert!(
        state.due_at.is_some_and(|due| due <= reseq_core::Clock::now(&*clock)),
        "due for the next sweep"
    );

    let scheduled = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
    let later = reseq_core::Clock::now(&*clock).plus(Duration::from_secs(60));
    let swept = handle(&processor, scheduled, later).await.unwrap();
    assert_eq!(swept["swept"], 1);
    assert_eq!(processor.handler().inner.seqs("order-1"), (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_failed_record_fails_the_later_records_of_its_group_only() {
    let (processor, clock) = processor(2);
    let deadline = reseq_core::Clock::now(&*clock).plus(Duration::from_secs(600));
    let records = vec![
        record("a1", "g1", "a", Some(1)),
        record("a9", "g1", "a", Some(9)), // more than 2 ahead: held back (capacity)
        record("b1", "g2", "b", Some(1)),
        record("a2", "g1", "a", Some(2)), // later in the failed group: reported too
        record("x", "g3", "c", None),     // invalid, left for redrive
        record("c1", "g3", "c", Some(1)), // later in that group
        record("b2", "g2", "b", Some(2)),
    ];
    let response = handle(&processor, json!({ "Records": records }), deadline)
        .await
        .unwrap();
    assert_eq!(failures(&response), vec!["a9", "a2", "x", "c1"]);
    assert_eq!(processor.handler().inner.seqs("b"), vec![1, 2]);
    assert_eq!(processor.invalid_count(), 1);
}

/// A record as [`record`] makes it, without its `messageId`.
fn record_without_id(group: &str, context: &str, seq: u64) -> Value {
    let mut record = record("unused", group, context, Some(seq));
    record.as_object_mut().unwrap().remove("messageId");
    record
}

#[tokio::test]
async fn a_record_without_message_id_that_was_settled_is_simply_processed() {
    let (processor, clock) = processor(10_000);
    let deadline = reseq_core::Clock::now(&*clock).plus(Duration::from_secs(600));
    let records = vec![
        record("a1", "g1", "a", Some(1)),
        record_without_id("g1", "a", 2),
        record("a3", "g1", "a", Some(3)),
    ];
    let response = handle(&processor, json!({ "Records": records }), deadline)
        .await
        .expect("the batch was processed");
    assert!(failures(&response).is_empty(), "{response}");
    assert_eq!(processor.handler().inner.seqs("a"), vec![1, 2, 3]);
}

#[tokio::test]
async fn a_record_without_message_id_that_cannot_be_deleted_fails_the_whole_batch() {
    let (processor, clock) = processor(2);
    let deadline = reseq_core::Clock::now(&*clock).plus(Duration::from_secs(600));
    let records = vec![
        record("b1", "g2", "b", Some(1)),
        record_without_id("g1", "a", 9), // more than 2 ahead: held back
    ];
    let err = handle(&processor, json!({ "Records": records }), deadline)
        .await
        .expect_err("a held record that cannot be named fails the batch");
    let text = err.to_string();
    assert!(text.contains("record 1") && text.contains("no messageId"), "{text}");
    assert!(text.contains("held") && text.contains("whole batch"), "{text}");
    assert!(!text.contains("was not processed"), "{text}");
}

#[tokio::test]
async fn nothing_after_the_final_position_is_released_through_the_lambda_adapter_either() {
    let (processor, clock) = processor(10_000);
    let deadline = reseq_core::Clock::now(&*clock).plus(Duration::from_secs(600));
    let mut last = record("f2", "g", "f", Some(2));
    last["messageAttributes"]["final"] =
        json!({"stringValue": "true", "dataType": "String", "stringListValues": [], "binaryListValues": []});
    // 2 (final) and 3 arrive first and wait; 1 arrives in a later invocation.
    let first = json!({ "Records": [last, record("f3", "g", "f", Some(3))] });
    assert!(failures(&handle(&processor, first, deadline).await.unwrap()).is_empty());
    let second = json!({ "Records": [record("f1", "g", "f", Some(1))] });
    assert!(failures(&handle(&processor, second, deadline).await.unwrap()).is_empty());
    assert_eq!(processor.handler().inner.seqs("f"), vec![1, 2]);
    let letters = processor.dlq().letters();
    assert_eq!(
        (letters.len(), letters[0].seq, letters[0].reason),
        (1, 3, reseq_core::Reason::Late)
    );
}
