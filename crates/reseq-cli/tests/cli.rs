//! End-to-end tests of the `reseq` binary: `reseq run` and `reseq demo` as a user sees
//! them (SPEC §6, §7), including every public scenario of `../shared/scenarios`.
//!
//! Each test starts the real binary with `std::process::Command`, with every `RESEQ_*`
//! variable of the test's own environment removed so that only what a test sets counts.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::reseq_run::*;

/// How long an interactive test waits for a released line.
const LINE_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The JSON objects among stderr's lines (that is where rejected lines go without --dlq).
fn stderr_records(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("stderr record is not JSON ({err}): {l}")))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. The public scenarios (same semantics as ../shared/scenarios/run.sh)
// ---------------------------------------------------------------------------------------

/// `RESEQ_SCENARIOS` (relative to the repository root, as in scripts/test.sh), else
/// `../shared/scenarios` beside the repository.
fn scenarios_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("RESEQ_SCENARIOS") {
        Some(dir) => root.join(dir),
        None => root.join("../shared/scenarios"),
    }
}

/// The `stepN.in.jsonl` files of a scenario, in step order.
fn scenario_steps(dir: &Path) -> Vec<(u64, String)> {
    let mut steps: Vec<(u64, String)> = fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let step = name.strip_suffix(".in.jsonl")?.to_owned();
            let n = step.strip_prefix("step")?.parse().ok()?;
            Some((n, step))
        })
        .collect();
    steps.sort();
    steps
}

/// Runs one scenario; returns what went wrong, if anything.
fn run_scenario(dir: &Path) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let state = tmp.path().join("state.db");
    let args_text = fs::read_to_string(dir.join("args")).map_err(|e| format!("cannot read args: {e}"))?;
    let args: Vec<String> = args_text
        .replace("{state}", path_str(&state))
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let steps = scenario_steps(dir);
    if steps.is_empty() {
        return Err("no stepN.in.jsonl".into());
    }
    for (_, step) in steps {
        let input = fs::read(dir.join(format!("{step}.in.jsonl"))).map_err(|e| format!("{step}: {e}"))?;
        let want_out = fs::read(dir.join(format!("{step}.out.jsonl"))).map_err(|e| format!("{step}: {e}"))?;
        let want_reasons = fs::read_to_string(dir.join(format!("{step}.dlq-reasons")))
            .map_err(|e| format!("{step}: cannot read dlq-reasons: {e}"))?;
        let want_reasons: Vec<&str> = want_reasons.lines().filter(|l| !l.trim().is_empty()).collect();
        let dlq = tmp.path().join(format!("{step}.dlq"));

        let mut cmd = reseq();
        cmd.arg("run").args(&args).arg("--dlq").arg(&dlq);
        let got = run_cmd(cmd, &input);
        if got.code != Some(0) {
            return Err(format!("{step}: exit code {:?}; stderr:\n{}", got.code, got.stderr));
        }
        if got.stderr.contains("panicked") {
            return Err(format!("{step}: panicked; stderr:\n{}", got.stderr));
        }
        if got.stdout != want_out {
            return Err(format!(
                "{step}: stdout differs\n--- want\n{}--- got\n{}",
                String::from_utf8_lossy(&want_out),
                String::from_utf8_lossy(&got.stdout)
            ));
        }
        let got_reasons = match fs::read_to_string(&dlq) {
            Ok(text) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    let v: Value =
                        serde_json::from_str(l).map_err(|e| format!("{step}: DLQ line not JSON ({e}): {l}"))?;
                    v["reason"]
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("{step}: DLQ line without reason: {l}"))
                })
                .collect::<Result<Vec<String>, String>>()?,
            Err(_) => Vec::new(),
        };
        if got_reasons != want_reasons {
            return Err(format!(
                "{step}: dlq reasons differ: got {got_reasons:?} want {want_reasons:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn public_scenarios_pass() {
    let root = scenarios_dir();
    if !root.is_dir() {
        // A clone of the public repository has no scenarios beside it: the project's own
        // tests cover the same behaviours. CI sets RESEQ_REQUIRE_SCENARIOS and never skips.
        assert!(
            std::env::var_os("RESEQ_REQUIRE_SCENARIOS").is_none(),
            "the public scenarios folder {} does not exist (set RESEQ_SCENARIOS, default ../shared/scenarios beside \
             the repository); RESEQ_REQUIRE_SCENARIOS says they must not be skipped",
            root.display()
        );
        eprintln!(
            "SKIPPED: no public scenarios at {} (set RESEQ_SCENARIOS)",
            root.display()
        );
        return;
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .expect("cannot list the scenarios folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no scenario folders in {}", root.display());
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if let Err(problem) = run_scenario(dir) {
            failures.push(format!("FAIL {name}/{problem}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------
// 2. --input
// ---------------------------------------------------------------------------------------

/// A mixed input: out of order, two contexts, a duplicate, a conflict and an invalid line.
fn mixed_input() -> String {
    lines(&[
        msg_body("a", 3, "m3"),
        msg_body("b", 2, "n2"),
        msg_body("a", 1, "m1"),
        String::new(),
        "not json".into(),
        msg_body("a", 1, "m1"),
        msg_body("b", 2, "other"),
        msg_body("a", 2, "m2"),
        msg_body("b", 1, "n1"),
    ])
}

/// What `mixed_input` releases, in order.
fn mixed_released() -> String {
    lines(&[
        msg_body("a", 1, "m1"),
        msg_body("a", 2, "m2"),
        msg_body("a", 3, "m3"),
        msg_body("b", 1, "n1"),
        msg_body("b", 2, "n2"),
    ])
}

#[test]
fn input_file_gives_the_same_output_as_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let input = mixed_input();
    let file = tmp.path().join("in.jsonl");
    fs::write(&file, &input).unwrap();

    let dlq_stdin = tmp.path().join("stdin.dlq");
    let from_stdin = run(&["--dlq", path_str(&dlq_stdin)], input.as_bytes());
    from_stdin.assert_success("stdin");
    let dlq_file = tmp.path().join("file.dlq");
    let from_file = run(&["--input", path_str(&file), "--dlq", path_str(&dlq_file)], b"");
    from_file.assert_success("--input");

    let want = mixed_released();
    assert_eq!(from_stdin.stdout_text(), want, "stdin output");
    assert_eq!(from_file.stdout_text(), want, "--input output");
    assert_eq!(dlq_records(&dlq_stdin), dlq_records(&dlq_file), "the DLQ files differ");
    assert_eq!(reasons(&dlq_records(&dlq_file)), ["invalid-json", "conflict"]);
}

#[test]
fn missing_input_file_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("does-not-exist.jsonl");
    let got = run(&["--input", path_str(&missing)], b"");
    assert_ne!(
        got.code,
        Some(0),
        "a missing --input must fail; stderr:\n{}",
        got.stderr
    );
    assert!(got.code.is_some(), "reseq was killed by a signal");
    got.assert_no_panic("missing --input");
    assert!(
        got.stderr.contains(path_str(&missing)),
        "the message names the missing file {}; stderr:\n{}",
        missing.display(),
        got.stderr
    );
    assert!(got.stdout.is_empty(), "nothing on stdout");
}

// ---------------------------------------------------------------------------------------
// 3. DLQ file format, and rejected lines without --dlq
// ---------------------------------------------------------------------------------------

#[test]
fn dlq_records_have_reason_detail_line_and_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("out.dlq");
    // a:2 waits for a:1; a second a:2 with another body is a conflict.
    let first = msg_body("a", 2, "x");
    let conflicting = msg_body("a", 2, "y");
    let invalid = r#"{"contextId":"a"}"#.to_owned();
    let a1 = msg("a", 1);
    // Line numbers count every line, the blank ones included.
    let input = format!("\n{first}\n\n{conflicting}\n   \n{invalid}\n{a1}\n");
    let got = run(&["--dlq", path_str(&dlq)], input.as_bytes());
    got.assert_success("conflict + invalid");
    assert_eq!(got.stdout_text(), format!("{a1}\n{first}\n"), "the first copy wins");

    let records = dlq_records(&dlq);
    assert_eq!(
        reasons(&records),
        ["conflict", "missing-sequence"],
        "records: {records:?}"
    );
    for record in &records {
        assert_record_shape(record);
    }
    assert_eq!(records[0]["line"], 4);
    assert_eq!(records[0]["input"], conflicting.as_str());
    assert_eq!(records[1]["line"], 6);
    assert_eq!(records[1]["input"], invalid.as_str());
}

#[test]
fn late_line_goes_to_the_dlq_after_a_gap_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("late.dlq");
    let input = lines(&[msg("a", 2), msg("a", 1)]);
    let got = run(&["--gap-timeout", "0ms", "--dlq", path_str(&dlq)], input.as_bytes());
    got.assert_success("late");
    assert_eq!(
        got.stdout_text(),
        lines(&[msg("a", 2)]),
        "a:2 is released once position 1 is skipped"
    );
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["late"], "records: {records:?}");
    assert_record_shape(&records[0]);
    assert_eq!(records[0]["line"], 2);
    assert_eq!(records[0]["input"], msg("a", 1).as_str());
}

#[test]
fn invalid_json_record_keeps_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("x.dlq");
    let got = run(&["--dlq", path_str(&dlq)], b"not json at all\n");
    got.assert_success("invalid json");
    assert!(got.stdout.is_empty());
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["invalid-json"]);
    assert_record_shape(&records[0]);
    assert_eq!(records[0]["line"], 1);
    assert_eq!(records[0]["input"], "not json at all");
}

#[test]
fn dlq_file_is_appended_to() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("append.dlq");
    for _ in 0..2 {
        run(&["--dlq", path_str(&dlq)], b"nope\n").assert_success("append");
    }
    assert_eq!(reasons(&dlq_records(&dlq)), ["invalid-json", "invalid-json"]);
}

#[test]
fn without_dlq_rejected_lines_are_reported_on_stderr() {
    let input = lines(&[
        msg_body("a", 2, "x"),
        msg_body("a", 2, "y"),
        "garbage".into(),
        msg("a", 1),
    ]);
    let got = run(&[], input.as_bytes());
    got.assert_success("no --dlq");
    assert_eq!(
        got.stdout_text(),
        lines(&[msg("a", 1), msg_body("a", 2, "x")]),
        "only released lines on stdout"
    );
    let records = stderr_records(&got.stderr);
    assert_eq!(
        reasons(&records),
        ["conflict", "invalid-json"],
        "stderr:\n{}",
        got.stderr
    );
    for record in &records {
        assert_record_shape(record);
    }
}

#[test]
fn late_policies_drop_and_deliver() {
    let tmp = tempfile::tempdir().unwrap();
    let input = lines(&[msg("a", 2), msg("a", 1)]);

    let dlq = tmp.path().join("drop.dlq");
    let got = run(
        &["--gap-timeout", "0ms", "--late", "drop", "--dlq", path_str(&dlq)],
        input.as_bytes(),
    );
    got.assert_success("--late drop");
    assert_eq!(got.stdout_text(), lines(&[msg("a", 2)]));
    assert_eq!(
        dlq_records(&dlq),
        Vec::<Value>::new(),
        "--late drop writes no DLQ record"
    );

    let dlq = tmp.path().join("deliver.dlq");
    let got = run(
        &["--gap-timeout", "0ms", "--late", "deliver", "--dlq", path_str(&dlq)],
        input.as_bytes(),
    );
    got.assert_success("--late deliver");
    assert_eq!(
        got.stdout_text(),
        lines(&[msg("a", 2), msg("a", 1)]),
        "--late deliver releases the late line"
    );
    assert_eq!(dlq_records(&dlq), Vec::<Value>::new());
}

#[test]
fn a_line_after_the_final_position_is_late() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("final.dlq");
    let last = r#"{"contextId":"a","sequence":1,"last":true}"#;
    let input = format!("{last}\n{}\n", msg("a", 2));
    let got = run(&["--final-path", "/last", "--dlq", path_str(&dlq)], input.as_bytes());
    got.assert_success("--final-path");
    assert_eq!(got.stdout_text(), format!("{last}\n"));
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["late"]);
    assert_eq!(records[0]["line"], 2);
}

#[test]
fn unopenable_state_or_dlq_fails_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing_dir = tmp.path().join("no-such-dir");
    for flag in ["--state", "--dlq"] {
        let file = missing_dir.join("file");
        let got = run(&[flag, path_str(&file)], lines(&[msg("a", 1)]).as_bytes());
        assert!(
            matches!(got.code, Some(c) if c != 0),
            "{flag} in a missing directory fails; got {:?}",
            got.code
        );
        got.assert_no_panic(flag);
        assert!(
            got.stderr.contains(path_str(&file)),
            "{flag}: the message names the file:\n{}",
            got.stderr
        );
        assert!(got.stdout.is_empty(), "{flag}: nothing released");
    }
}

#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    let input: String = (1..=100_000).map(|n| format!("{}\n", msg("a", n))).collect();
    let mut cmd = reseq();
    cmd.arg("run")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot start reseq");
    let mut stdin = child.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let stderr = drain(child.stderr.take().unwrap());
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).expect("read the first line");
    assert_eq!(first, format!("{}\n", msg("a", 1)));
    drop(stdout);
    let code = wait_with_deadline(&mut child, PROCESS_DEADLINE);
    let _ = writer.join();
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    assert!(!stderr.contains("panicked"), "panicked on a closed stdout:\n{stderr}");
    assert!(code.is_some(), "reseq was killed by a signal instead of exiting");
}

// ---------------------------------------------------------------------------------------
// 4. Configuration errors (flags and env vars), and env vars with good values
// ---------------------------------------------------------------------------------------

/// Exit code 2, nothing on stdout, exactly one non-empty stderr line that names `flag`
/// (as `--flag` or as its `RESEQ_` variable).
fn assert_usage_error(got: &Finished, flag: &str, what: &str) {
    assert_eq!(got.code, Some(2), "{what}: exit code; stderr:\n{}", got.stderr);
    got.assert_no_panic(what);
    assert!(
        got.stdout.is_empty(),
        "{what}: nothing on stdout, got {:?}",
        got.stdout_text()
    );
    let stderr_lines: Vec<&str> = got.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(stderr_lines.len(), 1, "{what}: one stderr line, got:\n{}", got.stderr);
    let env_name = format!(
        "RESEQ_{}",
        flag.trim_start_matches('-').replace('-', "_").to_uppercase()
    );
    assert!(
        stderr_lines[0].contains(flag) || stderr_lines[0].contains(&env_name),
        "{what}: the message names {flag}: {}",
        stderr_lines[0]
    );
}

#[test]
fn bad_flag_values_exit_2_with_one_line() {
    let input = lines(&[msg("a", 1)]);
    let cases: &[(&[&str], &str)] = &[
        (&["--gap-timeout", "5x"], "--gap-timeout"),
        (&["--late", "nope"], "--late"),
        (&["--no-such-flag"], "--no-such-flag"),
        (&["--context-path", "orderId"], "--context-path"),
        (&["--seq-path", "seq"], "--seq-path"),
        (&["--max-staged=-3"], "--max-staged"),
        (&["--max-staged", "many"], "--max-staged"),
        (&["--gap-timeout"], "--gap-timeout"),
        (&["--first-seq", "one"], "--first-seq"),
        (&["--retention", "forever"], "--retention"),
    ];
    for (args, flag) in cases {
        let got = run(args, input.as_bytes());
        assert_usage_error(&got, flag, &format!("reseq run {}", args.join(" ")));
    }
}

#[test]
fn bad_env_values_exit_2_with_one_line() {
    let input = lines(&[msg("a", 1)]);
    let cases: &[(&str, &str, &str)] = &[
        ("RESEQ_MAX_STAGED", "abc", "--max-staged"),
        ("RESEQ_GAP_TIMEOUT", "soon", "--gap-timeout"),
        ("RESEQ_LATE", "nope", "--late"),
        ("RESEQ_CONTEXT_PATH", "orderId", "--context-path"),
    ];
    for (var, value, flag) in cases {
        let got = run_env(&[], &[(var, value)], input.as_bytes());
        assert_usage_error(&got, flag, &format!("{var}={value} reseq run"));
    }
}

#[test]
fn env_vars_work_like_flags() {
    let input = lines(&[msg("k", 1), msg("k", 0), msg("k", 2)]);
    let by_flag = run(&["--first-seq", "0"], input.as_bytes());
    by_flag.assert_success("--first-seq 0");
    let by_env = run_env(&[], &[("RESEQ_FIRST_SEQ", "0")], input.as_bytes());
    by_env.assert_success("RESEQ_FIRST_SEQ=0");
    let want = lines(&[msg("k", 0), msg("k", 1), msg("k", 2)]);
    assert_eq!(by_flag.stdout_text(), want);
    assert_eq!(by_env.stdout_text(), want);

    // Pointers and the DLQ file by env var too.
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("env.dlq");
    let nested = [
        "{\"o\":{\"id\":\"x\"},\"v\":\"2\"}",
        "{\"o\":{\"id\":\"x\"},\"v\":\"1\"}",
        "{\"v\":3}",
    ];
    let got = run_env(
        &[],
        &[
            ("RESEQ_CONTEXT_PATH", "/o/id"),
            ("RESEQ_SEQ_PATH", "/v"),
            ("RESEQ_DLQ", path_str(&dlq)),
        ],
        format!("{}\n{}\n{}\n", nested[0], nested[1], nested[2]).as_bytes(),
    );
    got.assert_success("env pointers");
    assert_eq!(got.stdout_text(), format!("{}\n{}\n", nested[1], nested[0]));
    assert_eq!(reasons(&dlq_records(&dlq)), ["missing-context-id"]);

    // A flag wins over its env var.
    let got = run_env(&["--first-seq", "1"], &[("RESEQ_FIRST_SEQ", "0")], input.as_bytes());
    got.assert_success("flag over env");
    assert_eq!(got.stdout_text(), lines(&[msg("k", 1), msg("k", 2)]));
}

// ---------------------------------------------------------------------------------------
// 5. --state across runs
// ---------------------------------------------------------------------------------------

#[test]
fn state_resumes_and_drops_already_released_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.db");
    let dlq = tmp.path().join("state.dlq");
    let args = ["--state", path_str(&state), "--dlq", path_str(&dlq)];
    let (a1, a2, a3) = (msg_body("a", 1, "a1"), msg_body("a", 2, "a2"), msg_body("a", 3, "a3"));
    let (b1, b2) = (msg_body("b", 1, "b1"), msg_body("b", 2, "b2"));

    // Run 1: everything waits.
    let got = run(&args, lines(&[a3.clone(), a2.clone(), b2.clone()]).as_bytes());
    got.assert_success("run 1");
    assert_eq!(got.stdout_text(), "", "run 1 releases nothing");
    assert!(state.exists(), "the state file is created");

    // Run 2: the missing positions arrive; the staged lines follow them.
    let got = run(&args, lines(&[b1.clone(), a1.clone()]).as_bytes());
    got.assert_success("run 2");
    assert_eq!(
        got.stdout_text(),
        lines(&[b1.clone(), b2.clone(), a1.clone(), a2.clone(), a3.clone()])
    );

    // Run 3: every line again: all duplicates, nothing printed, nothing rejected.
    let got = run(
        &args,
        lines(&[a1.clone(), a2.clone(), a3.clone(), b1.clone(), b2.clone()]).as_bytes(),
    );
    got.assert_success("run 3");
    assert_eq!(got.stdout_text(), "", "already released lines are duplicates");
    assert_eq!(dlq_records(&dlq), Vec::<Value>::new(), "duplicates are not DLQ entries");

    // Run 4: the cursor kept its place.
    let a4 = lines(&[msg_body("a", 4, "a4")]);
    let got = run(&args, a4.as_bytes());
    got.assert_success("run 4");
    assert_eq!(got.stdout_text(), a4);
    assert_eq!(dlq_records(&dlq), Vec::<Value>::new());
}

#[test]
fn state_keeps_the_first_copy_for_conflicts_across_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.db");
    let dlq = tmp.path().join("state.dlq");
    let args = ["--state", path_str(&state), "--dlq", path_str(&dlq)];
    run(&args, lines(&[msg_body("a", 2, "first")]).as_bytes()).assert_success("run 1");
    let got = run(&args, lines(&[msg_body("a", 2, "second"), msg("a", 1)]).as_bytes());
    got.assert_success("run 2");
    assert_eq!(got.stdout_text(), lines(&[msg("a", 1), msg_body("a", 2, "first")]));
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["conflict"]);
    assert_eq!(records[0]["line"], 1);
    assert_eq!(records[0]["input"], msg_body("a", 2, "second").as_str());
}

// ---------------------------------------------------------------------------------------
// 6. Bytes
// ---------------------------------------------------------------------------------------

#[test]
fn non_ascii_utf8_is_echoed_byte_for_byte() {
    let l2 = r#"{"contextId":"commande-é","sequence":2,"note":"日本語 🚀 \u00e9"}"#;
    let l1 = r#"{"contextId":"commande-é","sequence":1,"note":"naïve"}"#;
    let got = run(&[], format!("{l2}\n{l1}\n").as_bytes());
    got.assert_success("utf-8");
    assert_eq!(got.stdout_text(), format!("{l1}\n{l2}\n"));
}

#[test]
fn crlf_lines_keep_their_carriage_return() {
    let l2 = msg("a", 2);
    let l1 = msg("a", 1);
    let got = run(&[], format!("{l2}\r\n\r\n{l1}\r\n").as_bytes());
    got.assert_success("crlf");
    assert_eq!(
        got.stdout,
        format!("{l1}\r\n{l2}\r\n").into_bytes(),
        "the \\r is part of the line"
    );
}

#[test]
fn a_line_over_one_mib_is_too_large() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("big.dlq");
    let big = format!(
        r#"{{"contextId":"a","sequence":1,"pad":"{}"}}"#,
        "x".repeat(1024 * 1024 + 16)
    );
    let after = msg("a", 1);
    let got = run(&["--dlq", path_str(&dlq)], format!("{big}\n{after}\n").as_bytes());
    got.assert_success("too large");
    assert_eq!(
        got.stdout_text(),
        lines(&[after]),
        "the line after the big one is unaffected"
    );
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["too-large"]);
    assert_record_shape(&records[0]);
    assert_eq!(records[0]["line"], 1);
    assert_eq!(
        records[0]["input"].as_str().map(str::len),
        Some(big.len()),
        "the DLQ keeps the whole line"
    );
}

#[test]
fn a_line_just_under_one_mib_is_released() {
    let prefix = r#"{"contextId":"a","sequence":1,"pad":""#;
    let suffix = r#""}"#;
    let line = format!(
        "{prefix}{}{suffix}",
        "y".repeat(1024 * 1024 - prefix.len() - suffix.len())
    );
    assert_eq!(line.len(), 1024 * 1024);
    let got = run(&[], format!("{line}\n").as_bytes());
    got.assert_success("1 MiB");
    assert!(
        got.stdout == format!("{line}\n").into_bytes(),
        "a 1 MiB line is released unchanged"
    );
}

#[test]
fn invalid_utf8_inside_a_json_string_is_invalid_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("utf8.dlq");
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"contextId\":\"a\",\"sequence\":1,\"s\":\"\xff\xfe\xc3\"}\n");
    input.extend_from_slice(format!("{}\n", msg("a", 1)).as_bytes());
    let got = run(&["--dlq", path_str(&dlq)], &input);
    got.assert_success("invalid utf-8");
    assert_eq!(got.stdout_text(), lines(&[msg("a", 1)]));
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["invalid-json"]);
    assert_record_shape(&records[0]);
    assert_eq!(records[0]["line"], 1);
}

#[test]
fn invalid_utf8_in_the_context_id_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("ctx.dlq");
    let got = run(&["--dlq", path_str(&dlq)], b"{\"contextId\":\"\x80\",\"sequence\":1}\n");
    got.assert_success("invalid utf-8 context");
    assert!(got.stdout.is_empty());
    assert_eq!(dlq_records(&dlq).len(), 1, "one rejected line");
}

#[test]
fn blank_lines_are_ignored_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("blank.dlq");
    let input = format!("\n\n  \t \n{}\n\r\n\n{}\nbad\n", msg("a", 2), msg("a", 1));
    let got = run(&["--dlq", path_str(&dlq)], input.as_bytes());
    got.assert_success("blank lines");
    assert_eq!(got.stdout_text(), lines(&[msg("a", 1), msg("a", 2)]));
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["invalid-json"], "blank lines are not rejected");
    assert_eq!(records[0]["line"], 8, "blank lines count for line numbers");
}

#[test]
fn last_line_without_newline_is_released_with_one() {
    let input = format!("{}\n{}", msg("a", 2), msg("a", 1));
    let got = run(&[], input.as_bytes());
    got.assert_success("no trailing newline");
    assert_eq!(got.stdout_text(), lines(&[msg("a", 1), msg("a", 2)]));

    let got = run(&[], msg("z", 1).as_bytes());
    got.assert_success("single line without newline");
    assert_eq!(got.stdout_text(), lines(&[msg("z", 1)]));
}

#[test]
fn empty_input_prints_nothing() {
    let got = run(&[], b"");
    got.assert_success("empty input");
    assert!(got.stdout.is_empty());
}

#[test]
fn arbitrary_bytes_never_panic() {
    // Deterministic pseudo-random garbage: binary bytes, NULs, lone \r, odd JSON.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut input = Vec::new();
    for i in 0..300 {
        let len = (next() % 120) as usize;
        match i % 6 {
            0 => input.extend((0..len).map(|_| next() as u8).filter(|b| *b != b'\n')),
            1 => input.extend_from_slice(b"\0\0{\"contextId\":\0}"),
            2 => input.extend_from_slice(b"\r"),
            3 => input.extend_from_slice(
                format!(r#"{{"contextId":"c{}","sequence":{}}}"#, next() % 5, next() % 8).as_bytes(),
            ),
            4 => input.extend_from_slice(
                br#"{"contextId":["x"],"sequence":-1}{"contextId":"a","sequence":18446744073709551616}"#,
            ),
            _ => input.extend_from_slice(br#"{"contextId":"","sequence":1.5e300}"#),
        }
        input.push(b'\n');
    }
    input.extend_from_slice(br#"{"contextId":"a","sequence":"18446744073709551615"}"#);
    input.extend_from_slice(b"\n\xff\xff\xff");
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("garbage.dlq");
    let got = run(&["--dlq", path_str(&dlq), "--gap-timeout", "0ms"], &input);
    got.assert_success("garbage");
    for record in dlq_records(&dlq) {
        assert_record_shape(&record);
    }
}

// ---------------------------------------------------------------------------------------
// 7. --max-staged
// ---------------------------------------------------------------------------------------

#[test]
fn max_staged_holds_back_and_releases_later() {
    let input = lines(&[msg("a", 4), msg("a", 1), msg("a", 2), msg("a", 3)]);
    let got = run(&["--max-staged", "2"], input.as_bytes());
    got.assert_success("max-staged");
    assert_eq!(
        got.stdout_text(),
        lines(&[msg("a", 1), msg("a", 2), msg("a", 3), msg("a", 4)])
    );
    assert!(
        stderr_records(&got.stderr).is_empty(),
        "nothing rejected; stderr:\n{}",
        got.stderr
    );
}

#[test]
fn max_staged_line_that_never_fits_goes_to_the_dlq() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("ms.dlq");
    let got = run(
        &["--max-staged", "2", "--dlq", path_str(&dlq)],
        lines(&[msg("a", 9)]).as_bytes(),
    );
    got.assert_success("max-staged dlq");
    assert!(got.stdout.is_empty());
    let records = dlq_records(&dlq);
    assert_eq!(reasons(&records), ["max-staged"]);
    assert_record_shape(&records[0]);
    assert_eq!(records[0]["line"], 1);
    assert_eq!(records[0]["input"], msg("a", 9).as_str());
}

// ---------------------------------------------------------------------------------------
// 8. stdout vs stderr
// ---------------------------------------------------------------------------------------

#[test]
fn summary_goes_to_stderr_and_stdout_has_only_released_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let dlq = tmp.path().join("s.dlq");
    let got = run(&["--dlq", path_str(&dlq)], mixed_input().as_bytes());
    got.assert_success("summary");
    let want = mixed_released();
    assert_eq!(got.stdout_text(), want, "stdout is exactly the released lines");
    assert!(got.stderr.contains("reseq run"), "a summary on stderr:\n{}", got.stderr);
    assert!(
        got.stderr.contains("released"),
        "the summary counts released lines:\n{}",
        got.stderr
    );
}

// ---------------------------------------------------------------------------------------
// 9. reseq demo
// ---------------------------------------------------------------------------------------

#[test]
fn demo_verifies_order() {
    let mut cmd = reseq();
    cmd.args(["demo", "--messages", "20000", "--contexts", "200"]);
    let got = run_cmd(cmd, b"");
    got.assert_success("demo");
    assert!(
        got.stdout_text().contains("order verified"),
        "stdout:\n{}\nstderr:\n{}",
        got.stdout_text(),
        got.stderr
    );
}

// ---------------------------------------------------------------------------------------
// 10. Interactive use
// ---------------------------------------------------------------------------------------

/// A running `reseq run` whose stdout lines arrive on a channel.
struct Interactive {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Interactive {
    fn start(args: &[&str]) -> Interactive {
        let mut cmd = reseq();
        cmd.arg("run")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("cannot start reseq");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Interactive {
            child,
            stdin,
            lines: rx,
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("cannot write to reseq");
        stdin.flush().expect("cannot flush reseq's stdin");
    }

    fn expect_line(&mut self, want: &str) {
        match self.lines.recv_timeout(LINE_DEADLINE) {
            Ok(got) => assert_eq!(got, want),
            Err(err) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("no line from reseq within {LINE_DEADLINE:?} while its stdin is open ({err}); want {want}");
            }
        }
    }

    /// Closes stdin and waits for the exit code.
    fn finish(mut self) -> Option<i32> {
        drop(self.stdin.take());
        wait_with_deadline(&mut self.child, PROCESS_DEADLINE)
    }
}

#[test]
fn lines_are_released_before_the_input_ends() {
    let mut session = Interactive::start(&[]);
    session.send(&msg("a", 1));
    session.expect_line(&msg("a", 1));
    // An out-of-order pair: the second arrival releases both, still without end of input.
    session.send(&msg("a", 3));
    session.send(&msg("a", 2));
    session.expect_line(&msg("a", 2));
    session.expect_line(&msg("a", 3));
    assert_eq!(session.finish(), Some(0), "exit code after stdin closes");
}

#[test]
fn a_gap_timeout_fires_while_the_input_is_quiet() {
    let mut session = Interactive::start(&["--gap-timeout", "200ms"]);
    session.send(&msg("a", 2));
    // Position 1 never comes: after the timeout a:2 is released, stdin still open.
    session.expect_line(&msg("a", 2));
    assert_eq!(session.finish(), Some(0), "exit code after stdin closes");
}

#[test]
fn lines_are_released_before_the_input_ends_with_state() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("live.db");
    let mut session = Interactive::start(&["--state", path_str(&state)]);
    session.send(&msg("a", 1));
    session.expect_line(&msg("a", 1));
    assert_eq!(session.finish(), Some(0), "exit code after stdin closes");
}
