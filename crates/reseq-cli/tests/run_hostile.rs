//! `reseq run` against the findings of the hostile test (issue 8): held lines at scale,
//! what is left waiting when the input ends, the DLQ file's bytes, `final` and
//! `--first-seq`. Each test starts the real binary, as `cli.rs` does.

use std::fs;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use serde_json::Value;

mod common;
use common::reseq_run::{Finished, dlq_records, lines, msg, msg_body, path_str, reasons};

/// `reseq run <args>` with `stdin`, which must succeed (exit 0, no panic).
fn run(args: &[&str], stdin: &[u8]) -> Finished {
    let finished = common::reseq_run::run(args, stdin);
    finished.assert_success(&format!("reseq run {}", args.join(" ")));
    finished
}

fn final_msg(ctx: &str, seq: u64) -> String {
    format!(r#"{{"contextId":"{ctx}","sequence":{seq},"final":true}}"#)
}

// ---------------------------------------------------------------------------------------
// Item 12: held lines (--max-staged) are offered again per context, in position order
// ---------------------------------------------------------------------------------------

#[test]
fn reversed_input_with_a_small_max_staged_comes_out_complete_and_in_order() {
    const N: u64 = 20_000;
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("rev.dlq");
    // Two contexts, interleaved, each reversed: almost every line is held back.
    let mut input = Vec::new();
    for seq in (1..=N).rev() {
        input.push(msg("a", seq));
        if seq <= N / 4 {
            input.push(msg("b", seq));
        }
    }
    let got = run(
        &["--max-staged", "50", "--dlq", path_str(&dlq)],
        lines(&input).as_bytes(),
    );
    let out = got.stdout_text();
    let a: Vec<&str> = out.lines().filter(|l| l.contains(r#""a""#)).collect();
    let b: Vec<&str> = out.lines().filter(|l| l.contains(r#""b""#)).collect();
    let want_a: Vec<String> = (1..=N).map(|s| msg("a", s)).collect();
    let want_b: Vec<String> = (1..=N / 4).map(|s| msg("b", s)).collect();
    assert!(a == want_a, "context a: {} lines, not 1..={N} in order", a.len());
    assert!(b == want_b, "context b: {} lines, not 1..={} in order", b.len(), N / 4);
    assert_eq!(out.lines().count() as u64, N + N / 4, "nothing else is printed");
    assert!(
        dlq_records(&dlq).is_empty(),
        "nothing rejected: {:?}",
        dlq_records(&dlq)
    );
}

#[test]
fn of_two_held_copies_of_a_position_the_first_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("copies.dlq");
    let input = tmp.path().join("copies.jsonl");
    // a:5 (body x) is too far ahead (--max-staged 2) and held. Other lines fill the rest of
    // the first batch (4,096 lines, read from a file). In the next batch a:1..4 move the
    // cursor and a second copy of a:5 (body y) comes: the first copy must be the one
    // released, as for any position (SPEC §2: the first copy wins).
    let mut lines_in = vec![msg_body("a", 5, "x")];
    lines_in.extend((1..=4095).map(|s| msg("z", s)));
    lines_in.extend([
        msg("a", 1),
        msg("a", 2),
        msg("a", 3),
        msg("a", 4),
        msg_body("a", 5, "y"),
    ]);
    fs::write(&input, lines(&lines_in)).unwrap();
    let got = run(
        &[
            "--max-staged",
            "2",
            "--dlq",
            path_str(&dlq),
            "--input",
            path_str(&input),
        ],
        b"",
    );
    let out = got.stdout_text();
    let a: Vec<&str> = out.lines().filter(|l| l.contains(r#""a""#)).collect();
    let want = [
        msg("a", 1),
        msg("a", 2),
        msg("a", 3),
        msg("a", 4),
        msg_body("a", 5, "x"),
    ];
    assert_eq!(a, want, "stderr:\n{}", got.stderr);
    assert_eq!(out.lines().count(), 4095 + 5, "z:1..4095 and a:1..5");
    for record in dlq_records(&dlq) {
        assert_ne!(
            record["input"],
            msg_body("a", 5, "x").as_str(),
            "the first copy is not rejected"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Item 8: lines still waiting when an in-memory run ends go to the DLQ file
// ---------------------------------------------------------------------------------------

#[test]
fn in_memory_run_writes_lines_still_waiting_at_the_end_to_the_dlq() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("end.dlq");
    let input = lines(&[msg("a", 3), msg("b", 1), msg("a", 2), msg("b", 4), msg("c", 7)]);
    let got = run(&["--dlq", path_str(&dlq)], input.as_bytes());
    assert_eq!(got.stdout_text(), lines(&[msg("b", 1)]));
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["unreleased"; 4], "records: {records:?}");
    let got_lines: Vec<u64> = records.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(got_lines, [1, 3, 4, 5], "in input order");
    assert_eq!(records[0]["input"], msg("a", 3).as_str());
    assert_eq!(records[1]["input"], msg("a", 2).as_str());
    assert_eq!(records[2]["input"], msg("b", 4).as_str());
    assert_eq!(records[3]["input"], msg("c", 7).as_str());
    for record in &records {
        let detail = record["detail"].as_str().unwrap();
        assert!(detail.contains("--state"), "the detail says how to keep them: {detail}");
    }
    assert!(
        records[0]["detail"].as_str().unwrap().contains("position 1"),
        "{}",
        records[0]
    );
    assert!(
        got.stderr.contains("unreleased"),
        "the summary says so:\n{}",
        got.stderr
    );
}

#[test]
fn with_state_waiting_lines_are_kept_for_the_next_run_not_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("state.dlq");
    let state = tmp.path().join("state.db");
    let args = ["--state", path_str(&state), "--dlq", path_str(&dlq)];
    let got = run(&args, lines(&[msg("a", 3), msg("a", 2)]).as_bytes());
    assert!(got.stdout.is_empty());
    assert!(dlq_records(&dlq).is_empty(), "kept in the state, not dead-lettered");
    let got = run(&args, lines(&[msg("a", 1)]).as_bytes());
    assert_eq!(got.stdout_text(), lines(&[msg("a", 1), msg("a", 2), msg("a", 3)]));
    assert!(dlq_records(&dlq).is_empty());
}

// ---------------------------------------------------------------------------------------
// Item 13: the DLQ file keeps the bytes of a line that is not UTF-8
// ---------------------------------------------------------------------------------------

#[test]
fn dlq_keeps_the_raw_bytes_of_a_line_that_is_not_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("bytes.dlq");
    let bad: &[u8] = b"{\"contextId\":\"a\",\"sequence\":1,\"s\":\"\xff\xfe\xc3\"}";
    let mut input = bad.to_vec();
    input.extend_from_slice(b"\n\x80\x00binary\r\nnot json\n");
    run(&["--dlq", path_str(&dlq)], &input);
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["invalid-json"; 3], "records: {records:?}");
    let decoded = |r: &Value| {
        BASE64_STANDARD
            .decode(
                r["input_base64"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no input_base64: {r}")),
            )
            .expect("standard base64")
    };
    assert_eq!(decoded(&records[0]), bad);
    assert_eq!(decoded(&records[1]), b"\x80\x00binary\r");
    assert!(records[0]["input"].is_string(), "input stays, as text: {}", records[0]);
    assert_eq!(records[2]["input"], "not json");
    assert!(
        records[2].get("input_base64").is_none(),
        "only for lines that are not UTF-8"
    );
}

// ---------------------------------------------------------------------------------------
// Engine fixes of issue 8: `final` closes the context whatever the arrival order, and a
// position below --first-seq is rejected visibly
// ---------------------------------------------------------------------------------------

#[test]
fn nothing_after_the_final_position_is_released_whatever_the_order() {
    let orders = [
        vec![final_msg("f", 2), msg("f", 3), msg("f", 1)],
        vec![msg("f", 1), final_msg("f", 2), msg("f", 3)],
    ];
    for input in orders {
        let tmp = tempfile::tempdir().unwrap();
        let dlq = tmp.path().join("final.dlq");
        let got = run(
            &["--final-path", "/final", "--dlq", path_str(&dlq)],
            lines(&input).as_bytes(),
        );
        assert_eq!(
            got.stdout_text(),
            lines(&[msg("f", 1), final_msg("f", 2)]),
            "input {input:?}; stderr:\n{}",
            got.stderr
        );
        let records = dlq_records(&dlq);
        assert_eq!(reasons(&records), ["late"], "input {input:?}: {records:?}");
        assert_eq!(records[0]["input"], msg("f", 3).as_str());
    }
}

#[test]
fn nothing_after_the_final_position_is_released_across_runs_on_one_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("final.dlq");
    let state = tmp.path().join("final.db");
    let args = [
        "--final-path",
        "/final",
        "--state",
        path_str(&state),
        "--dlq",
        path_str(&dlq),
    ];
    let got = run(&args, lines(&[final_msg("f", 2), msg("f", 3)]).as_bytes());
    assert!(got.stdout.is_empty(), "nothing releasable yet: {}", got.stdout_text());
    let got = run(&args, lines(&[msg("f", 1)]).as_bytes());
    assert_eq!(
        got.stdout_text(),
        lines(&[msg("f", 1), final_msg("f", 2)]),
        "stderr:\n{}",
        got.stderr
    );
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["late"], "records: {records:?}");
    assert_eq!(records[0]["input"], msg("f", 3).as_str());
}

#[test]
fn a_position_below_first_seq_is_rejected_not_dropped_as_a_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("first.dlq");
    let got = run(
        &["--dlq", path_str(&dlq)],
        lines(&[msg("a", 0), msg("a", 1)]).as_bytes(),
    );
    assert_eq!(got.stdout_text(), lines(&[msg("a", 1)]));
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["invalid-sequence"], "records: {records:?}");
    assert_eq!(records[0]["line"], 1);
    assert_eq!(records[0]["input"], msg("a", 0).as_str());
    assert!(
        records[0]["detail"].as_str().unwrap().contains("--first-seq"),
        "the detail names --first-seq: {}",
        records[0]
    );
}
