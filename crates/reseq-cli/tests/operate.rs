//! Operating reseq against the local stand-ins: the metrics a worker emits (parsed from
//! its CloudWatch Embedded Metric Format lines and checked against the traffic sent), its
//! decision logs, and the operator commands `stuck`, `inspect`, `skip`, `retry` and
//! `redrive` on a real table and real queues.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use serde_json::Value;

mod common;
use common::emulators;
use common::sqs_worker::{Msg, Setup, by_context, drain, finish, http_target, run_worker, send, summary_count};

/// The EMF records among a worker's stderr lines.
fn emf_records(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|l| l.starts_with("{\"_aws\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("an EMF line that is not JSON ({e}): {l}")))
        .collect()
}

/// The sum of a counter over the records, for the records whose dimensions are exactly
/// `dimensions` (name → value).
fn total(records: &[Value], metric: &str, dimensions: &[(&str, &str)]) -> f64 {
    records
        .iter()
        .filter(|r| {
            let declared = &r["_aws"]["CloudWatchMetrics"][0];
            let dims: Vec<&str> = declared["Dimensions"][0]
                .as_array()
                .map(|d| d.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            dims.len() == dimensions.len() && dimensions.iter().all(|(k, v)| dims.contains(k) && r[*k] == *v)
        })
        .filter_map(|r| r.get(metric))
        .map(|v| match v {
            Value::Array(values) => values.iter().filter_map(Value::as_f64).sum(),
            other => other.as_f64().unwrap_or(0.0),
        })
        .sum()
}

fn reseq(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_reseq"))
        .args(args)
        .output()
        .expect("run reseq");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), stdout, stderr)
}

fn json(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = reseq(args);
    assert!(ok, "reseq {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("reseq {args:?} printed no JSON ({e}): {stdout}"))
}

/// One record per batch and sweep, in EMF, whose counters add up to the traffic sent; the
/// gauges come from the sweep; every decision an operator needs has a JSON log line with
/// its context, position, message id and reason, and no body.
#[tokio::test]
async fn the_worker_emits_emf_records_whose_counters_match_the_traffic() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("emf", 5).await;
    let mut conflicting = Msg::new("c", 2, "gc");
    conflicting.body = "{\"order\":\"c\",\"step\":2,\"secret\":\"other body\"}".into();
    let messages = vec![
        Msg::new("a", 2, "ga"),
        Msg::new("a", 1, "ga"),
        Msg::new("a", 3, "ga"),
        Msg::new("a", 3, "ga"), // a duplicate (a new dedup id)
        Msg::new("b", 5, "gb"), // waits for 1..4
        Msg::body_only("no context here", "gx"),
        Msg::new("c", 2, "gc"),
        conflicting,
    ];
    send(&setup.sqs, &setup.input, &messages).await;
    let (_, stderr) = run_worker(setup.worker(
        &setup.input,
        &["--invalid", "dlq", "--log-format", "json", "--service", "orders-test"],
    ));
    let records = emf_records(&stderr);
    assert!(!records.is_empty(), "no EMF record in: {stderr}");
    for r in &records {
        assert_eq!(r["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Reseq");
        assert_eq!(r["Service"], "orders-test");
        assert!(
            r.get("contextId").is_none() && r.get("ContextId").is_none(),
            "never a context id: {r}"
        );
    }
    let service = [("Service", "orders-test")];
    assert_eq!(total(&records, "Received", &service), 8.0);
    assert_eq!(total(&records, "Released", &service), 3.0, "a:1..3");
    assert_eq!(total(&records, "Duplicates", &service), 1.0);
    assert_eq!(total(&records, "Invalid", &service), 1.0);
    assert_eq!(total(&records, "Conflicts", &service), 1.0);
    assert_eq!(
        total(&records, "DeadLettered", &service),
        2.0,
        "the invalid one and the conflict"
    );
    for reason in ["missing-context-id", "conflict"] {
        let by_reason = [("Service", "orders-test"), ("Reason", reason)];
        assert_eq!(total(&records, "DeadLettered", &by_reason), 1.0, "{reason}");
    }
    assert_eq!(
        total(&records, "Staged", &service),
        summary_count(&stderr, "staged") as f64,
        "the engine's own count"
    );
    assert!(total(&records, "Sweeps", &service) >= 1.0);
    let latencies: Vec<&Value> = records.iter().filter_map(|r| r.get("ReleaseLatency")).collect();
    assert!(!latencies.is_empty(), "release latencies: {records:?}");
    assert!(
        total(&records, "BatchDuration", &service) > 0.0 || records.iter().any(|r| r.get("BatchDuration").is_some())
    );
    assert!(
        records
            .iter()
            .any(|r| r.get("BlockedContexts").is_some() && r.get("OldestWaitingAge").is_some()),
        "the sweep's gauges: {records:?}"
    );
    assert!(
        total(&records, "DynamoDBWriteUnits", &service) >= 1.0,
        "DynamoDB Local reports consumed capacity"
    );

    // Decision logs: JSON lines with the fields an operator searches on, never a body.
    let logs: Vec<Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{') && !l.starts_with("{\"_aws\""))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let conflict = logs
        .iter()
        .find(|l| l["decision"] == "conflict")
        .unwrap_or_else(|| panic!("no conflict decision in {stderr}"));
    assert_eq!(
        (conflict["context_id"].as_str(), conflict["seq"].as_u64()),
        (Some("c"), Some(2))
    );
    assert!(conflict["message_id"].as_str().is_some_and(|id| !id.is_empty()));
    let dead = logs
        .iter()
        .find(|l| l["decision"] == "dead-lettered" && l["reason"] == "conflict")
        .unwrap_or_else(|| panic!("no dead-lettered decision in {stderr}"));
    assert_eq!(dead["context_id"], "c");
    assert!(!stderr.contains("other body"), "a body was logged");

    // A fresh worker reads the gauges at its first sweep: b:5 has waited since the first run.
    let (_, stderr) = run_worker(setup.worker(&setup.input, &["--service", "orders-test"]));
    let records = emf_records(&stderr);
    let oldest = records
        .iter()
        .filter_map(|r| r.get("OldestWaitingAge").and_then(Value::as_f64))
        .fold(0.0, f64::max);
    assert!(oldest >= 1.0, "b:5 waits: oldest waiting age {oldest} s in {records:?}");
}

/// An operator finds a blocked and a gappy context with `reseq stuck`, reads them with
/// `reseq inspect`, skips past them and retries a third; a worker's sweep carries it out;
/// `reseq redrive` moves the skipped message from the DLQ back, by reason.
#[tokio::test]
async fn an_operator_finds_inspects_skips_retries_and_redrives() {
    if emulators().is_none() {
        return;
    }
    let setup = Setup::new("ops", 5).await;
    let table = setup.name.as_str();
    let (url, accepted) = http_target(Duration::ZERO);
    let mut poison = Msg::new("p", 2, "gp");
    poison.body = "{\"order\":\"p\",\"step\":2,\"poison\":true}".into();
    let mut retried = Msg::new("r", 1, "gr");
    retried.body = "{\"order\":\"r\",\"step\":1,\"poison\":true}".into();
    let messages = vec![
        Msg::new("p", 1, "gp"),
        poison,
        Msg::new("p", 3, "gp"),
        Msg::new("p", 4, "gp"),
        Msg::new("g", 2, "gg"),
        Msg::new("g", 3, "gg"),
        retried,
    ];
    send(&setup.sqs, &setup.input, &messages).await;
    run_worker(setup.worker_to(&setup.input, &url, &[]));
    assert_eq!(accepted.lock().unwrap().clone(), vec![("p".to_string(), 1)]);

    let stuck = json(&["stuck", "--table", table, "--older-than", "0s", "--json"]);
    let kind = |context: &str| {
        stuck
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["context_id"] == context)
            .map(|e| e["kind"].as_str().unwrap().to_string())
    };
    assert_eq!(kind("p").as_deref(), Some("blocked"), "{stuck}");
    assert_eq!(kind("r").as_deref(), Some("blocked"), "{stuck}");
    assert_eq!(kind("g").as_deref(), Some("waiting"), "{stuck}");
    let (ok, text, _) = reseq(&["stuck", "--table", table, "--older-than", "0s"]);
    assert!(
        ok && text.contains("BLOCKED  p") && text.contains("WAITING  g"),
        "{text}"
    );

    let p = json(&["inspect", "p", "--table", table, "--json"]);
    assert_eq!(p["state"]["next"], 2);
    assert_eq!(p["state"]["blocked"]["seq"], 2);
    assert_eq!(p["waiting_positions"], serde_json::json!([2, 3, 4]));
    let g = json(&["inspect", "g", "--table", table, "--json"]);
    assert_eq!(g["gaps"], serde_json::json!([{"first": 1, "last": 1}]));
    let (ok, text, _) = reseq(&["inspect", "p", "--table", table]);
    assert!(
        ok && text.contains("BLOCKED") && text.contains("waiting       3 message(s)"),
        "{text}"
    );
    let (ok, _, err) = reseq(&["inspect", "nobody", "--table", table]);
    assert!(!ok && err.contains("not in the store"), "{err}");

    let (ok, text, err) = reseq(&[
        "skip",
        "p",
        "--to",
        "3",
        "--table",
        table,
        "--by",
        "tester",
        "--reason",
        "bad order",
    ]);
    assert!(ok && text.contains("skip recorded"), "{text}{err}");
    let (ok, _, err) = reseq(&["skip", "g", "--to", "1", "--table", table]);
    assert!(!ok && err.contains("past position 1"), "{err}");
    assert!(reseq(&["skip", "g", "--to", "2", "--table", table]).0);
    assert!(reseq(&["retry", "r", "--table", table, "--by", "tester"]).0);
    let p = json(&["inspect", "p", "--table", table, "--json"]);
    assert_eq!(p["state"]["pending_skip"], 3);
    assert_eq!(p["state"]["operator_log"][0]["by"], "tester");
    assert_eq!(p["state"]["operator_log"][0]["reason"], "bad order");

    // A worker's sweep carries the requests out (to the SQS output, which takes r:1).
    run_worker(setup.worker(&setup.input, &[]));
    let out = by_context(&drain(&setup.sqs, &setup.output).await);
    assert_eq!(out.get("p"), Some(&vec![3, 4]));
    assert_eq!(out.get("g"), Some(&vec![2, 3]));
    assert_eq!(out.get("r"), Some(&vec![1]));
    let stuck = json(&["stuck", "--table", table, "--older-than", "0s", "--json"]);
    assert_eq!(stuck, serde_json::json!([]), "nothing blocked or waiting any more");

    // The DLQ holds p:2 (skipped: late); add a dead letter of another reason.
    let attribute = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .unwrap()
    };
    setup
        .sqs
        .send_message()
        .queue_url(&setup.dlq)
        .message_body("a conflict")
        .message_group_id("x")
        .message_deduplication_id("x-1")
        .message_attributes("reseqReason", attribute("conflict"))
        .send()
        .await
        .unwrap();
    let (ok, _, err) = reseq(&[
        "redrive",
        "--dlq-url",
        &setup.dlq,
        "--queue-url",
        &setup.input,
        "--reason",
        "late",
        "--dry-run",
    ]);
    assert!(ok && err.contains("would move 1 message(s)"), "{err}");
    let (ok, _, err) = reseq(&[
        "redrive",
        "--dlq-url",
        &setup.dlq,
        "--queue-url",
        &setup.input,
        "--reason",
        "late",
    ]);
    assert!(
        ok && err.contains("moved 1 message(s)") && err.contains("1 filtered out"),
        "{err}"
    );
    let back = drain(&setup.sqs, &setup.input).await;
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!((back[0].context(), back[0].seq()), ("p", 2));
    assert!(back[0].body.contains("poison") && !back[0].attributes.contains_key("reseqReason"));
    let kept = drain(&setup.sqs, &setup.dlq).await;
    let reasons: BTreeMap<String, usize> = kept.iter().fold(BTreeMap::new(), |mut m, g| {
        *m.entry(g.attributes.get("reseqReason").cloned().unwrap_or_default())
            .or_default() += 1;
        m
    });
    assert_eq!(reasons, BTreeMap::from([("conflict".to_string(), 1)]), "{kept:?}");
}

/// The X-Ray trace header of an input message (SQS's `AWSTraceHeader` system attribute)
/// reaches the output queue as the same system attribute, also for a message that waited
/// in the table for its predecessor.
#[tokio::test]
async fn the_trace_header_travels_from_input_to_output_through_staging() {
    if emulators().is_none() {
        return;
    }
    use aws_sdk_sqs::types::{
        MessageSystemAttributeName, MessageSystemAttributeNameForSends, MessageSystemAttributeValue,
    };
    let setup = Setup::new("trace", 5).await;
    let trace =
        |seq: u64| format!("Root=1-5759e988-bd862e3fe1be46a99427279{seq};Parent=53995c3f42cd8ad{seq};Sampled=1");
    let attribute = |v: String| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .unwrap()
    };
    // 2 first, while a worker runs (it waits in the table), then 1.
    let worker = setup
        .worker(&setup.input, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the worker");
    for seq in [2u64, 1] {
        let system = MessageSystemAttributeValue::builder()
            .data_type("String")
            .string_value(trace(seq))
            .build()
            .unwrap();
        setup
            .sqs
            .send_message()
            .queue_url(&setup.input)
            .message_body(format!("step {seq}"))
            .message_group_id("producer")
            .message_deduplication_id(format!("t-{seq}"))
            .message_attributes("contextId", attribute("traced".into()))
            .message_attributes("sequence", attribute(seq.to_string()))
            .message_system_attributes(MessageSystemAttributeNameForSends::AwsTraceHeader, system)
            .send()
            .await
            .unwrap();
        // Separate batches, so that 2 is staged before 1 arrives.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (_, stderr) = finish(worker);
    assert_eq!(summary_count(&stderr, "staged"), 1, "2 waited in the table: {stderr}");
    let mut got = Vec::new();
    for _ in 0..5 {
        let out = setup
            .sqs
            .receive_message()
            .queue_url(&setup.output)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
            .send()
            .await
            .unwrap();
        for m in out.messages.unwrap_or_default() {
            let header = m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
                .cloned();
            got.push((m.body.unwrap_or_default(), header));
        }
        if got.len() == 2 {
            break;
        }
    }
    assert_eq!(
        got,
        vec![
            ("step 1".to_string(), Some(trace(1))),
            ("step 2".to_string(), Some(trace(2)))
        ],
        "released in order, each with its own trace header; the worker said: {stderr}"
    );
}
