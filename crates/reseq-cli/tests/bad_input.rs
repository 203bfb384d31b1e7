//! Bad input (SPEC §7), one test per reason, through `reseq run` and through `reseq worker`
//! (docs/RELIABILITY.md, "Bad input"). Each checks the reason, that the rejected line or
//! message is kept byte for byte, one clear log line naming it, and that nothing else was
//! lost.
//!
//! `reseq run` covers `invalid-json`, `missing-context-id`, `invalid-context-id`,
//! `missing-sequence`, `invalid-sequence`, `too-large`, `conflict`, `late` and `expired`.
//! It cannot produce `handler-failed`: its handler writes the line to stdout, and a write
//! error is not the line's fault (it is retried, then the run stops with an error) — no
//! line is ever poison there.
//!
//! `missing-type` and `unknown-type` belong to typed sequences (SPEC §5), which reseq does
//! not implement yet: no path can produce them, so neither is tested here.

mod common;

use std::path::Path;

use common::reseq_run::*;
use serde_json::Value;

/// The one DLQ record of `dlq`, checked: its reason, its line number and its input byte
/// for byte.
fn the_record(dlq: &Path, reason: &str, line: u64, input: &str) -> Value {
    let records = dlq_records(dlq);
    assert_eq!(reasons(&records), [reason], "DLQ records: {records:?}");
    let record = records.into_iter().next().unwrap();
    assert_record_shape(&record);
    assert_eq!(record["line"], line, "{reason}: line number: {record}");
    assert!(
        record["input"].as_str() == Some(input),
        "{reason}: the DLQ record keeps the line byte for byte: {record}"
    );
    record
}

/// The summary on stderr names the reason and its count.
fn assert_stderr_names(stderr: &str, reason: &str) {
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("reseq run: "))
        .unwrap_or_else(|| panic!("no summary on stderr:\n{stderr}"));
    assert!(
        summary.contains(&format!("dead-lettered: {reason} 1")),
        "the summary names {reason}: {summary}"
    );
}

/// Every line of `expected` came out on stdout, once, in this order.
fn assert_released(got: &Finished, expected: &[String], reason: &str) {
    assert_eq!(
        got.stdout_text(),
        lines(expected),
        "{reason}: every other line came out (nothing lost)"
    );
}

/// `bad` between two contexts' valid lines: the valid ones all come out, `bad` is
/// dead-lettered with `reason`.
fn one_bad_line(reason: &str, bad: &str, args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("bad.dlq");
    let input = [msg("a", 1), msg("b", 1), bad.to_string(), msg("a", 2), msg("b", 2)];
    let mut all_args = vec!["--dlq", path_str(&dlq)];
    all_args.extend_from_slice(args);
    let got = run(&all_args, lines(&input).as_bytes());
    got.assert_success(reason);
    the_record(&dlq, reason, 3, bad);
    assert_stderr_names(&got.stderr, reason);
    assert_released(&got, &[msg("a", 1), msg("b", 1), msg("a", 2), msg("b", 2)], reason);
}

#[test]
fn invalid_json() {
    one_bad_line("invalid-json", r#"{"contextId":"a","sequence":3"#, &[]);
}

#[test]
fn missing_context_id() {
    one_bad_line("missing-context-id", r#"{"sequence":3}"#, &[]);
}

#[test]
fn invalid_context_id() {
    one_bad_line("invalid-context-id", r#"{"contextId":{"id":"a"},"sequence":3}"#, &[]);
}

#[test]
fn missing_sequence() {
    one_bad_line("missing-sequence", r#"{"contextId":"a"}"#, &[]);
}

#[test]
fn invalid_sequence() {
    one_bad_line("invalid-sequence", r#"{"contextId":"a","sequence":"3rd"}"#, &[]);
}

#[test]
fn too_large() {
    // One byte over SQS's 1 MiB message limit, the extractor's limit.
    let prefix = r#"{"contextId":"a","sequence":3,"pad":""#;
    let pad = "x".repeat(1024 * 1024 + 1 - prefix.len() - 2);
    let bad = format!("{prefix}{pad}\"}}");
    assert_eq!(bad.len(), 1024 * 1024 + 1);
    one_bad_line("too-large", &bad, &[]);
}

#[test]
fn conflict() {
    // Position 2 of `a` waits for 1; a second copy with another body conflicts (the first
    // copy wins and comes out).
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("conflict.dlq");
    let first = msg_body("a", 2, "first");
    let second = msg_body("a", 2, "second");
    let input = [first.clone(), second.clone(), msg("a", 1), msg("b", 1)];
    let got = run(&["--dlq", path_str(&dlq)], lines(&input).as_bytes());
    got.assert_success("conflict");
    the_record(&dlq, "conflict", 2, &second);
    assert_stderr_names(&got.stderr, "conflict");
    assert_released(&got, &[msg("a", 1), first, msg("b", 1)], "conflict");
}

#[test]
fn late() {
    // With --gap-timeout 0s, a:2 skips the missing a:1 at once; a:1 then arrives late.
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("late.dlq");
    let input = [msg("a", 2), msg("b", 1), msg("a", 1), msg("a", 3)];
    let got = run(
        &["--gap-timeout", "0s", "--dlq", path_str(&dlq)],
        lines(&input).as_bytes(),
    );
    got.assert_success("late");
    the_record(&dlq, "late", 3, &msg("a", 1));
    assert_stderr_names(&got.stderr, "late");
    assert_released(&got, &[msg("a", 2), msg("b", 1), msg("a", 3)], "late");
}

#[test]
fn expired() {
    // A first run stages a:2 (waiting for a:1) in the state file; it waits longer than
    // --retention, and the next run on the same state dead-letters it as expired.
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.db");
    let dlq = tmp.path().join("expired.dlq");
    let args = [
        "--state",
        path_str(&state),
        "--retention",
        "1s",
        "--dlq",
        path_str(&dlq),
    ];
    let first = run(&args, lines(&[msg("b", 1), msg("a", 2)]).as_bytes());
    first.assert_success("expired, first run");
    assert_released(&first, &[msg("b", 1)], "expired, first run");
    assert!(dlq_records(&dlq).is_empty(), "a:2 waits: {:?}", dlq_records(&dlq));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let second = run(&args, lines(&[msg("b", 2)]).as_bytes());
    second.assert_success("expired, second run");
    // The record names the line of the run that brought it.
    the_record(&dlq, "expired", 2, &msg("a", 2));
    assert_stderr_names(&second.stderr, "expired");
    assert_released(&second, &[msg("b", 2)], "expired, second run");
}
