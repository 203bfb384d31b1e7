//! The dead-letter queue behind `--dlq-url`, on LocalStack's SQS: what a dead letter
//! carries, FIFO groups and deduplication, invalid messages, the limits, and the errors
//! that leave a message on its input queue.
//!
//! The SQS tests need `AWS_ENDPOINT_URL_SQS` (`eval "$(scripts/emulators.sh env)"`); without
//! it they skip, unless `RESEQ_REQUIRE_EMULATORS=1`, which makes them fail instead. Each
//! test makes queues of its own, so they run in parallel.

use std::collections::HashMap;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use bytes::Bytes;
use reseq_core::{AttributeValue, Attributes, DeadLetter, DeadLetterSink, Millis, RawMessage, Reason, Rejection};
use reseq_sqs::dlq::{MAX_DETAIL_BYTES, SqsDeadLetters};
use reseq_sqs::ids::hashed_context;

// ---------------------------------------------------------------- helpers

mod common;
use common::{Queue, attr, attributes, emulator, offline_client, system, unique};

impl Queue {
    fn dlq(&self) -> SqsDeadLetters {
        SqsDeadLetters::new(self.client.clone(), Some(self.url.clone()))
    }
}

fn letter<'a>(
    context_id: &'a str,
    seq: u64,
    message_id: &'a str,
    body: &'a Bytes,
    attributes: &'a Attributes,
    reason: Reason,
    detail: &'a str,
) -> DeadLetter<'a> {
    DeadLetter {
        context_id,
        seq,
        message_id,
        body,
        attributes,
        reason,
        detail,
    }
}

fn raw(message_id: &str, body: &'static [u8], attributes: Attributes, group_id: Option<&str>) -> RawMessage {
    RawMessage {
        message_id: message_id.into(),
        body: Bytes::from_static(body),
        attributes,
        group_id: group_id.map(str::to_string),
        received_at: Millis(0),
        receive_count: 0,
    }
}

// ---------------------------------------------------------------- no queue, no SQS

#[tokio::test]
async fn without_a_dlq_url_nothing_is_dead_lettered_and_the_error_says_where_it_goes() {
    let dlq = SqsDeadLetters::new(offline_client(), None);
    assert_eq!(dlq.queue_url(), None);
    dlq.check().await.expect("nothing to check");
    let body = Bytes::from_static(b"b");
    let none = Attributes::new();
    let err = dlq
        .dead_letter(&letter("c", 3, "m-1", &body, &none, Reason::Conflict, "d"))
        .await
        .expect_err("no queue");
    for part in [
        "no --dlq-url is set",
        "m-1",
        "stays on the input queue",
        "redrive policy",
    ] {
        assert!(err.0.contains(part), "{err}");
    }
    let rejection = Rejection::new(Reason::MissingSequence, "no /seq");
    let err = dlq
        .send_invalid(&raw("m-2", b"{}", Attributes::new(), None), &rejection)
        .await
        .expect_err("no queue");
    assert!(err.0.contains("--dlq-url") && err.0.contains("m-2"), "{err}");
}

#[tokio::test]
async fn a_message_over_the_sqs_limit_with_reseqs_attributes_is_refused_before_sending() {
    // Checked before any request: the URL is never contacted.
    let dlq = SqsDeadLetters::new(offline_client(), Some("http://127.0.0.1:9/000000000000/dlq".into()));
    let body = Bytes::from(vec![b'x'; 1024 * 1024 - 10]);
    let none = Attributes::new();
    let err = dlq
        .dead_letter(&letter(
            "c",
            1,
            "m-big",
            &body,
            &none,
            Reason::TooLarge,
            "too large to stage",
        ))
        .await
        .expect_err("over the limit");
    assert!(err.0.contains("over SQS's limit") && err.0.contains("m-big"), "{err}");
    assert!(err.0.contains("redrive"), "{err}");
    let empty = Bytes::new();
    let err = dlq
        .dead_letter(&letter("c", 1, "m-empty", &empty, &none, Reason::Late, "late"))
        .await
        .expect_err("empty");
    assert!(err.0.contains("empty body"), "{err}");
}

// ---------------------------------------------------------------- on LocalStack

#[tokio::test]
async fn check_accepts_a_queue_and_names_a_missing_one_and_the_flag() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "dlq-check", false).await;
    queue.dlq().check().await.expect("the queue exists");
    let endpoint = std::env::var("AWS_ENDPOINT_URL_SQS").unwrap_or_default();
    let missing = format!("{endpoint}/000000000000/{}", unique("missing"));
    let err = SqsDeadLetters::new(client.clone(), Some(missing.clone()))
        .check()
        .await
        .expect_err("missing");
    assert!(err.0.contains(&missing) && err.0.contains("--dlq-url"), "{err}");
    queue.delete().await;
}

#[tokio::test]
async fn a_dead_letter_keeps_body_and_attributes_and_adds_reason_detail_and_position() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "dlq-std", false).await;
    let dlq = queue.dlq();
    let attrs = attributes(&[("trace", "t-1"), ("contextId", "stale"), ("reseqReason", "forged")]);
    let body = Bytes::from_static("{\"orderId\":\"o-1\",\"note\":\"é\"}".as_bytes());
    dlq.dead_letter(&letter(
        "o-1",
        4,
        "m-1",
        &body,
        &attrs,
        Reason::Conflict,
        "a second copy of position 4 with another body",
    ))
    .await
    .expect("durable");
    let got = queue.receive(1).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.body(), Some("{\"orderId\":\"o-1\",\"note\":\"é\"}"));
    assert_eq!(attr(m, "reseqReason"), Some(("String", "conflict")));
    assert_eq!(
        attr(m, "reseqDetail"),
        Some(("String", "a second copy of position 4 with another body"))
    );
    assert_eq!(attr(m, "contextId"), Some(("String", "o-1")));
    assert_eq!(attr(m, "sequence"), Some(("Number", "4")));
    assert_eq!(attr(m, "trace"), Some(("String", "t-1")));
    assert_eq!(m.message_attributes().map(HashMap::len), Some(5));
    queue.delete().await;
}

#[tokio::test]
async fn details_are_cut_to_1024_bytes_and_cleaned_of_what_sqs_refuses() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "dlq-detail", false).await;
    let dlq = queue.dlq();
    let none = Attributes::new();
    let body = Bytes::from_static(b"b");
    let long = "é".repeat(1000);
    dlq.dead_letter(&letter("c", 1, "m-1", &body, &none, Reason::HandlerFailed, &long))
        .await
        .expect("durable");
    dlq.dead_letter(&letter(
        "c",
        2,
        "m-2",
        &body,
        &none,
        Reason::HandlerFailed,
        "HTTP 400: \u{0}\u{1b}[31mbad",
    ))
    .await
    .expect("a detail with control characters still goes");
    let got = queue.receive(2).await;
    assert_eq!(got.len(), 2);
    let mut details: Vec<String> = got
        .iter()
        .map(|m| attr(m, "reseqDetail").expect("a detail").1.to_string())
        .collect();
    details.sort_by_key(String::len);
    assert_eq!(details[0], "HTTP 400: \u{FFFD}\u{FFFD}[31mbad");
    assert_eq!(details[1].len(), MAX_DETAIL_BYTES - MAX_DETAIL_BYTES % 2);
    assert!(long.starts_with(&details[1]));
    queue.delete().await;
}

#[tokio::test]
async fn a_letter_near_the_size_limit_goes_with_its_detail_cut_to_fit() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "dlq-fit", false).await;
    let dlq = queue.dlq();
    let none = Attributes::new();
    // Body + reseqReason + contextId + sequence leave ~400 bytes for the detail.
    let body = Bytes::from(vec![b'x'; 1024 * 1024 - 500]);
    let long = "é".repeat(1000);
    dlq.dead_letter(&letter("c", 1, "m-fit", &body, &none, Reason::HandlerFailed, &long))
        .await
        .expect("the letter fits once its detail is cut");
    let got = queue.receive(1).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    let detail = attr(m, "reseqDetail").expect("a detail").1;
    assert!(!detail.is_empty() && detail.len() < 500, "{}", detail.len());
    assert!(long.starts_with(detail), "cut at a character boundary");
    let size: usize = m.body().map_or(0, str::len)
        + m.message_attributes()
            .expect("attributes")
            .iter()
            .map(|(k, v)| k.len() + v.data_type().len() + v.string_value().map_or(0, str::len))
            .sum::<usize>();
    assert!(size <= 1024 * 1024, "{size}");
    queue.delete().await;
}

#[tokio::test]
async fn a_context_id_sqs_strings_refuse_goes_as_binary_in_the_dlq() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "dlq-binctx", true).await;
    let dlq = queue.dlq();
    let none = Attributes::new();
    let body = Bytes::from_static(b"b");
    let context = "ctx\u{1}\u{FFFE}";
    dlq.dead_letter(&letter(context, 2, "m-odd", &body, &none, Reason::Late, "late"))
        .await
        .expect("durable");
    let got = queue.receive(1).await;
    assert_eq!(got.len(), 1);
    let value = &got[0].message_attributes().expect("attributes")["contextId"];
    assert_eq!(value.data_type(), "Binary");
    assert_eq!(value.binary_value().map(|b| b.as_ref()), Some(context.as_bytes()));
    assert_eq!(
        system(&got[0], MessageSystemAttributeName::MessageGroupId),
        Some(hashed_context(context).as_str())
    );
    queue.delete().await;
}

#[tokio::test]
async fn a_fifo_dlq_keeps_one_copy_of_a_message_dead_lettered_twice() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "dlq-fifo", true).await;
    let dlq = queue.dlq();
    let none = Attributes::new();
    let body = Bytes::from_static(b"late one");
    let late = letter("o-9", 2, "m-1", &body, &none, Reason::Late, "position 2 was skipped");
    dlq.dead_letter(&late).await.expect("durable");
    // SQS delivered m-1 again (the worker crashed before deleting it): same letter.
    dlq.dead_letter(&late).await.expect("durable");
    // Another message at the same position is another letter.
    let other = DeadLetter {
        message_id: "m-2",
        ..late
    };
    dlq.dead_letter(&other).await.expect("durable");
    // A context id that is no FIFO id goes to its hashed group.
    let long = "L".repeat(200);
    dlq.dead_letter(&DeadLetter {
        context_id: &long,
        ..late
    })
    .await
    .expect("durable");

    let got = queue.receive(3).await;
    assert_eq!(got.len(), 3, "the repeated letter is deduplicated: {got:?}");
    let group = |m: &Message| system(m, MessageSystemAttributeName::MessageGroupId).map(str::to_string);
    let hashed = hashed_context(&long);
    let in_o9: Vec<&Message> = got.iter().filter(|m| group(m).as_deref() == Some("o-9")).collect();
    let in_hashed: Vec<&Message> = got.iter().filter(|m| group(m) == Some(hashed.clone())).collect();
    assert_eq!((in_o9.len(), in_hashed.len()), (2, 1), "{got:?}");
    assert_eq!(attr(in_hashed[0], "contextId"), Some(("String", long.as_str())));
    assert_eq!(attr(in_o9[0], "contextId"), Some(("String", "o-9")));
    let dedups: Vec<_> = got
        .iter()
        .map(|m| system(m, MessageSystemAttributeName::MessageDeduplicationId).expect("a dedup id"))
        .collect();
    assert!(
        dedups.iter().all(|d| d.starts_with("h-") && d.len() <= 128),
        "{dedups:?}"
    );
    assert_ne!(dedups[0], dedups[1]);
    queue.delete().await;
}

#[tokio::test]
async fn invalid_messages_go_as_received_in_their_group_or_reseq_invalid() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "dlq-invalid", true).await;
    let dlq = queue.dlq();
    let missing = Rejection::new(
        Reason::MissingSequence,
        "no attribute sequence and no /sequence in the body",
    );
    let from_group = raw(
        "m-1",
        b"{\"contextId\":\"o-1\"}",
        attributes(&[("contextId", "o-1"), ("sequence", "seven")]),
        Some("o-1"),
    );
    dlq.send_invalid(&from_group, &missing).await.expect("durable");
    // The batch path hands the same invalid message to `dead_letter`, with its group as
    // the context and position 0: the same message in the DLQ, deduplicated.
    let via_sink = DeadLetter {
        context_id: "o-1",
        seq: 0,
        message_id: &from_group.message_id,
        body: &from_group.body,
        attributes: &from_group.attributes,
        reason: missing.reason,
        detail: &missing.detail,
    };
    dlq.dead_letter(&via_sink).await.expect("durable");
    let json = Rejection::new(Reason::InvalidJson, "expected value at line 1 column 1");
    let standard = raw("m-2", b"not json", Attributes::new(), None);
    dlq.send_invalid(&standard, &json).await.expect("durable");

    let got = queue.receive(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let by_id = |id: &str| {
        got.iter()
            .find(|m| attr(m, "reseqReason").is_some_and(|r| r.1 == id))
            .expect(id)
    };
    let first = by_id("missing-sequence");
    assert_eq!(first.body(), Some("{\"contextId\":\"o-1\"}"));
    assert_eq!(attr(first, "reseqReason"), Some(("String", "missing-sequence")));
    assert_eq!(
        attr(first, "reseqDetail"),
        Some(("String", "no attribute sequence and no /sequence in the body"))
    );
    // The original attributes as they came: reseq adds no position it does not know.
    assert_eq!(attr(first, "sequence"), Some(("String", "seven")));
    assert_eq!(attr(first, "contextId"), Some(("String", "o-1")));
    assert_eq!(first.message_attributes().map(HashMap::len), Some(4));
    assert_eq!(system(first, MessageSystemAttributeName::MessageGroupId), Some("o-1"));
    let second = by_id("invalid-json");
    assert_eq!(second.body(), Some("not json"));
    assert_eq!(attr(second, "reseqReason"), Some(("String", "invalid-json")));
    assert_eq!(second.message_attributes().map(HashMap::len), Some(2));
    assert_eq!(
        system(second, MessageSystemAttributeName::MessageGroupId),
        Some("reseq-invalid")
    );
    queue.delete().await;
}

#[tokio::test]
async fn a_body_that_is_not_utf8_goes_with_replacement_characters_and_a_note() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "dlq-bytes", false).await;
    let rejection = Rejection::new(Reason::InvalidJson, "not JSON");
    dlq_send(
        &queue,
        raw("m-1", &[b'a', 0xff, b'b'], Attributes::new(), None),
        &rejection,
    )
    .await;
    let got = queue.receive(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body(), Some("a\u{FFFD}b"));
    let detail = attr(&got[0], "reseqDetail").expect("a detail").1;
    assert!(
        detail.starts_with("not JSON") && detail.contains("not UTF-8"),
        "{detail}"
    );
    queue.delete().await;
}

async fn dlq_send(queue: &Queue, raw: RawMessage, rejection: &Rejection) {
    queue.dlq().send_invalid(&raw, rejection).await.expect("durable");
}

#[tokio::test]
async fn reseqs_attributes_win_when_there_are_more_than_ten() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "dlq-attrs", false).await;
    let mut attrs = Attributes::new();
    for i in 0..12 {
        attrs.insert(format!("a{i:02}"), AttributeValue::string(format!("v{i}")));
    }
    let body = Bytes::from_static(b"b");
    queue
        .dlq()
        .dead_letter(&letter(
            "c",
            8,
            "m-1",
            &body,
            &attrs,
            Reason::Expired,
            "waited past the retention",
        ))
        .await
        .expect("durable");
    let got = queue.receive(1).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.message_attributes().map(HashMap::len), Some(10));
    assert_eq!(attr(m, "reseqReason"), Some(("String", "expired")));
    assert_eq!(attr(m, "reseqDetail"), Some(("String", "waited past the retention")));
    assert_eq!(attr(m, "contextId"), Some(("String", "c")));
    assert_eq!(attr(m, "sequence"), Some(("Number", "8")));
    for i in 0..6 {
        assert_eq!(attr(m, &format!("a{i:02}")), Some(("String", format!("v{i}").as_str())));
    }
    assert_eq!(attr(m, "a06"), None);
    queue.delete().await;
}

#[tokio::test]
async fn a_dlq_gone_at_runtime_is_an_error_naming_it() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "dlq-gone", false).await;
    let dlq = queue.dlq();
    client
        .delete_queue()
        .queue_url(&queue.url)
        .send()
        .await
        .expect("deleted");
    let body = Bytes::from_static(b"b");
    let none = Attributes::new();
    let err = dlq
        .dead_letter(&letter("c", 1, "m-1", &body, &none, Reason::Late, "late"))
        .await
        .expect_err("no queue");
    assert!(err.0.contains(&queue.url) && err.0.contains("m-1"), "{err}");
}
