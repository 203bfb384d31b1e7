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
}
