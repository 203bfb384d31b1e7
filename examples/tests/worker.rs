//! `projection-worker` run for real against the local stand-ins (LocalStack SQS, DynamoDB
//! Local): out-of-order, duplicated messages of several contexts interleaved across FIFO
//! groups go in; the projection table must hold, per context, the last position, every
//! position applied once and in order. Then old positions are replayed into the
//! projection (through the engine, as a worker whose commit was lost would replay them)
//! and must change nothing.
//!
//! Needs `AWS_ENDPOINT_URL_SQS` and `AWS_ENDPOINT_URL_DYNAMODB`
//! (`eval "$(scripts/emulators.sh env)"`); skips without them, and fails instead under
//! `RESEQ_REQUIRE_EMULATORS=1` (as `scripts/test.sh` sets it).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use reseq_core::{Engine, EngineConfig, Envelope, Handler, HandlerError, ManualClock, MemoryStore, Millis, Release};
use reseq_examples::projection::Projection;

use common::{emulators, unique};

/// A FIFO queue of this test.
async fn fifo_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.create_queue()
        .queue_name(format!("{name}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating the queue {name}.fifo: {e:?}"))
        .queue_url
        .expect("a queue URL")
}

/// Sends `(context, seq, group)` messages in this order, each with a dedup id of its own.
async fn send(sqs: &aws_sdk_sqs::Client, queue: &str, messages: &[(String, u64, &str)]) {
    for (n, chunk) in messages.chunks(10).enumerate() {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (context, seq, group))| {
                let attribute = |data_type: &str, value: String| {
                    MessageAttributeValue::builder()
                        .data_type(data_type)
                        .string_value(value)
                        .build()
                        .expect("an attribute")
                };
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(format!(r#"{{"order":"{context}","status":"step-{seq}"}}"#))
                    .message_attributes("contextId", attribute("String", context.clone()))
                    .message_attributes("sequence", attribute("Number", seq.to_string()))
                    .message_group_id(*group)
                    .message_deduplication_id(format!("{n}-{i}"))
                    .build()
                    .expect("an entry")
            })
            .collect();
        let sent = sqs
            .send_message_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("send a batch");
        assert!(sent.failed.is_empty(), "{:?}", sent.failed);
    }
}

/// The projection's items: context → (lastSeq, state, positions applied in order).
async fn projection(client: &aws_sdk_dynamodb::Client, table: &str) -> BTreeMap<String, (u64, String, Vec<u64>)> {
    let items = client
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
        .expect("scan the projection")
        .items
        .unwrap_or_default();
    items
        .into_iter()
        .map(|item| {
            let n = |v: &aws_sdk_dynamodb::types::AttributeValue| v.as_n().unwrap().parse::<u64>().unwrap();
            let context = item["contextId"].as_s().unwrap().clone();
            let positions = item["positions"].as_l().unwrap().iter().map(n).collect();
            (
                context,
                (n(&item["lastSeq"]), item["state"].as_s().unwrap().clone(), positions),
            )
        })
        .collect()
}

/// What the projection applies, but whose success is "lost" once per position listed: the
/// write lands, then the call fails as a worker that died before its commit would (reseq
/// releases the position again).
struct LosesTheFirstSuccess {
    inner: Projection,
    lose: std::sync::Mutex<Vec<u64>>,
}

impl Handler for LosesTheFirstSuccess {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        self.inner.handle(msg).await?;
        let mut lose = self.lose.lock().unwrap();
        if let Some(i) = lose.iter().position(|&s| s == msg.seq) {
            lose.remove(i);
            return Err(HandlerError::Retryable("the worker died before its commit".into()));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_projects_each_context_in_order_once_and_the_fence_drops_replays() {
    let Some(stands) = emulators().await else { return };
    let name = unique("proj");
    reseq_dynamodb::create_table(&stands.dynamodb, &name)
        .await
        .expect("the staging table");
    let projection_table = format!("{name}-projection");
    reseq_examples::create_table(&stands.dynamodb, &projection_table, "contextId")
        .await
        .expect("the projection table");
    let input = fifo_queue(&stands.sqs, &format!("{name}-input")).await;
    let dlq = fifo_queue(&stands.sqs, &format!("{name}-dlq")).await;

    // Three orders with 6 steps each, shuffled, two producers (FIFO groups) interleaving
    // contexts, and positions 2 and 5 of order-a sent twice.
    let order = [4u64, 2, 6, 1, 5, 3];
    let mut messages = Vec::new();
    for (i, seq) in order.iter().enumerate() {
        for (c, context) in ["order-a", "order-b", "order-c"].iter().enumerate() {
            let group = if (i + c) % 2 == 0 { "producer-1" } else { "producer-2" };
            messages.push((context.to_string(), *seq, group));
        }
    }
    messages.push(("order-a".into(), 2, "producer-2"));
    messages.push(("order-a".into(), 5, "producer-1"));
    send(&stands.sqs, &input, &messages).await;

    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let (name, projection_table, input, dlq) = (name.clone(), projection_table.clone(), input.clone(), dlq.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_projection-worker"))
                .env("PROJECTION_TABLE", &projection_table)
                .env("RESEQ_QUEUE_URL", &input)
                .env("RESEQ_TABLE", &name)
                .env("RESEQ_DLQ_URL", &dlq)
                .env("RESEQ_WAIT_TIME", "1s")
                .env("RESEQ_SWEEP_EVERY", "500ms")
                .env("RESEQ_EXIT_WHEN_IDLE", "3s")
                .env("RESEQ_METRICS", "off")
                .env("RUST_LOG", "warn")
                .output()
                .expect("run projection-worker")
        }
    })
    .await
    .expect("the worker's thread");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "projection-worker failed: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(90), "{stderr}");
    assert!(
        stderr.contains(" 18 released") && stderr.contains("applied 18 positions"),
        "{stderr}"
    );

    let items = projection(&stands.dynamodb, &projection_table).await;
    assert_eq!(items.len(), 3, "{items:?}");
    for (context, (last, state, positions)) in &items {
        assert_eq!(*last, 6, "{context}");
        assert_eq!(state, &format!(r#"{{"order":"{context}","status":"step-6"}}"#));
        assert_eq!(
            positions,
            &vec![1, 2, 3, 4, 5, 6],
            "{context}: each position once, in order"
        );
    }

    // A replay of old positions: an engine that lost its record of what it released (here
    // a fresh in-memory one) releases order-a's positions 1 to 3 again. The fence drops
    // them: the projection still says 6.
    let replay = Projection::new(stands.dynamodb.clone(), &projection_table);
    let engine = Engine::new(MemoryStore::new(), ManualClock::new(Millis(0)), EngineConfig::default());
    let dlq_sink = reseq_core::testing::RecordingDlq::new();
    let old: Vec<Envelope> = (1..=3)
        .map(|seq| Envelope::new("order-a", seq, format!(r#"{{"order":"order-a","status":"old-{seq}"}}"#)))
        .collect();
    let outcomes = engine.process(old, &replay, &dlq_sink).await;
    assert!(outcomes.iter().all(|o| o.is_settled()), "{outcomes:?}");
    assert_eq!((replay.applied(), replay.repeats()), (0, 3));
    let after = projection(&stands.dynamodb, &projection_table).await;
    assert_eq!(after, items, "a replay of old positions changed the projection");

    // A new context whose first successes are "lost" (the write landed, the worker died
    // before committing): reseq releases positions 1 and 2 again, the fence drops the
    // repeats, and each position is applied once.
    let engine = Engine::new(
        MemoryStore::new(),
        ManualClock::new(Millis(1_000_000)),
        EngineConfig::default(),
    );
    let handler = LosesTheFirstSuccess {
        inner: Projection::new(stands.dynamodb.clone(), &projection_table),
        lose: std::sync::Mutex::new(vec![1, 2]),
    };
    let batch = (1..=3)
        .map(|seq| Envelope::new("order-d", seq, format!("step-{seq}")))
        .collect();
    engine.process(batch, &handler, &dlq_sink).await;
    for _ in 0..10 {
        engine.clock().advance(reseq_core::Duration::from_secs(120));
        engine.sweep(&handler, &dlq_sink, 100).await.expect("sweep");
    }
    let items = projection(&stands.dynamodb, &projection_table).await;
    assert_eq!(items["order-d"].0, 3, "{items:?}");
    assert_eq!(items["order-d"].2, vec![1, 2, 3], "each position applied once");
    assert_eq!(handler.inner.repeats(), 2, "the two repeats were dropped by the fence");
    assert!(dlq_sink.letters().is_empty(), "{:?}", dlq_sink.letters());
}
