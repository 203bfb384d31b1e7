//! `reseq run --sequences`: typed sequences (SPEC §5) through the binary, with the
//! README's example file (docs/sequences.example.yaml).

use std::io::Write;
use std::process::{Command, Stdio};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/sequences.example.yaml");

fn run(args: &[&str], input: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reseq"))
        .arg("run")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run reseq");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines(types: &[&str], order: &str) -> String {
    types
        .iter()
        .map(|t| format!("{{\"messageType\":\"{t}\",\"orderId\":\"{order}\"}}\n"))
        .collect()
}

#[test]
fn a_typed_stream_comes_out_in_the_order_its_conditions_allow() {
    let input = lines(
        &[
            "OrderShipped",
            "OrderPaid",
            "OrderCreated",
            "StockReserved",
            "OrderPaid",
        ],
        "o-1",
    ) + &lines(&["Unsequenced"], "o-1")
        + "{\"messageType\":\"OrderPaid\",\"orderId\":\"o-1\",\"amount\":2}\n";
    let dir = tempfile::tempdir().unwrap();
    let dlq = dir.path().join("dlq.jsonl");
    let (code, stdout, stderr) = run(
        &[
            "--sequences",
            EXAMPLE,
            "--context-path",
            "/orderId",
            "--dlq",
            dlq.to_str().unwrap(),
        ],
        &input,
    );
    assert_eq!(code, 0, "{stderr}");
    let types: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["messageType"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        types,
        [
            "OrderCreated",
            "OrderPaid",
            "StockReserved",
            "OrderShipped",
            "Unsequenced"
        ],
        "{stderr}"
    );
    let dead: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&dlq).unwrap().trim()).unwrap();
    assert_eq!(
        (dead["reason"].as_str(), dead["line"].as_u64()),
        (Some("conflict"), Some(7))
    );
    assert!(stderr.contains("1 duplicates"), "the repeated OrderPaid line: {stderr}");
}

#[test]
fn a_typed_instance_waits_in_the_state_file_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let args = [
        "--sequences",
        EXAMPLE,
        "--context-path",
        "/orderId",
        "--state",
        state.to_str().unwrap(),
    ];
    let (code, stdout, stderr) = run(&args, &lines(&["OrderPaid", "OrderShipped"], "o-2"));
    assert_eq!((code, stdout.as_str()), (0, ""), "both wait: {stderr}");
    let (code, stdout, stderr) = run(&args, &lines(&["OrderCreated", "StockReserved"], "o-2"));
    assert_eq!(code, 0, "{stderr}");
    let types: Vec<&str> = stdout.lines().map(|l| l.split('"').nth(3).unwrap()).collect();
    assert_eq!(types, ["OrderCreated", "OrderPaid", "StockReserved", "OrderShipped"]);
}

#[test]
fn a_bad_sequence_file_is_one_line_naming_the_file_and_line_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.yaml");
    std::fs::write(
        &file,
        "sequences:\n  - name: o\n    messages:\n      - type: A\n      - type: B\n        releaseCondition: { predecessor: Z }\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(&["--sequences", file.to_str().unwrap()], "");
    assert_eq!((code, stdout.as_str()), (2, ""));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("orders.yaml:6") && stderr.contains('Z'), "{stderr}");
    let (code, _, stderr) = run(&["--sequences", "/no/such/file.yaml"], "");
    assert!(code == 2 && stderr.contains("--sequences"), "{stderr}");
}

#[test]
fn inspect_shows_a_typed_instances_processed_and_waiting_types() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let args = [
        "--sequences",
        EXAMPLE,
        "--context-path",
        "/orderId",
        "--state",
        state.to_str().unwrap(),
    ];
    let (code, _, stderr) = run(&args, &lines(&["OrderShipped", "OrderCreated"], "o-3"));
    assert_eq!(code, 0, "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_reseq"))
        .args([
            "inspect",
            "order-lifecycle/o-3",
            "--state",
            state.to_str().unwrap(),
            "--sequences",
            EXAMPLE,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("processed     OrderCreated"), "{text}");
    assert!(
        text.contains("waiting       OrderShipped waits for OrderPaid and StockReserved"),
        "{text}"
    );
    let json = Command::new(env!("CARGO_BIN_EXE_reseq"))
        .args([
            "inspect",
            "order-lifecycle/o-3",
            "--state",
            state.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["state"]["typed"]["waiting"][0]["type_key"], "OrderShipped");
    // A typed instance has no positions: `reseq skip` refuses it, saying what to do.
    let skip = Command::new(env!("CARGO_BIN_EXE_reseq"))
        .args([
            "skip",
            "order-lifecycle/o-3",
            "--to",
            "5",
            "--state",
            state.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&skip.stderr);
    assert!(
        !skip.status.success() && err.contains("typed sequence order-lifecycle"),
        "{err}"
    );
}

mod common;

/// `reseq worker --sequences` on LocalStack SQS and DynamoDB Local: a typed instance's
/// messages, sent in the worst order from several producers, reach the output queue in
/// an order their conditions allow; a second message of a type is a conflict.
#[tokio::test]
async fn the_worker_orders_typed_messages_by_their_conditions() {
    use common::sqs_worker::{Msg, Setup, drain, run_worker, send};
    if common::emulators().is_none() {
        return;
    }
    let setup = Setup::new("typed", 5).await;
    let typed = |t: &str, order: &str, producer: &str| Msg {
        body: format!("{{\"type\":\"{t}\",\"order\":\"{order}\"}}"),
        group: producer.to_string(),
        attributes: vec![
            ("messageType", "String", t.to_string()),
            ("contextId", "String", order.to_string()),
        ],
    };
    let mut messages = Vec::new();
    for order in ["o-1", "o-2"] {
        messages.push(typed("OrderShipped", order, "p1"));
        messages.push(typed("StockReserved", order, "p2"));
        messages.push(typed("OrderPaid", order, "p1"));
        messages.push(typed("OrderCreated", order, "p3"));
    }
    messages.push(typed("OrderPaid", "o-1", "p2")); // another OrderPaid: a conflict
    send(&setup.sqs, &setup.input, &messages).await;
    let (_, stderr) = run_worker(setup.worker(&setup.input, &["--sequences", EXAMPLE]));
    let got = drain(&setup.sqs, &setup.output).await;
    for order in ["o-1", "o-2"] {
        let types: Vec<String> = got
            .iter()
            .filter(|g| g.attributes.get("contextId").is_some_and(|c| c.ends_with(order)))
            .map(|g| {
                serde_json::from_str::<serde_json::Value>(&g.body).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let position = |t: &str| {
            types
                .iter()
                .position(|x| x == t)
                .unwrap_or_else(|| panic!("{order}: no {t} in {types:?}; {stderr}"))
        };
        assert_eq!(types.len(), 4, "{order}: {types:?}");
        assert_eq!(position("OrderCreated"), 0, "{order}: {types:?}");
        assert!(
            position("OrderShipped") > position("OrderPaid").max(position("StockReserved")),
            "{order}: {types:?}"
        );
    }
    let dead = drain(&setup.sqs, &setup.dlq).await;
    let reasons: Vec<&str> = dead
        .iter()
        .filter_map(|g| g.attributes.get("reseqReason").map(String::as_str))
        .collect();
    assert_eq!(reasons, ["conflict"], "{stderr}");
}
