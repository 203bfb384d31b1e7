//! Running the `reseq` binary as a user does, for the tests of `reseq run` (`cli.rs`,
//! `run_hostile.rs`): a clean `RESEQ_*` environment, stdin written from a thread, a
//! deadline against hangs, and the JSON lines and DLQ records the tests compare.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any single `reseq` invocation may take before the test fails (and kills it).
/// A safety net against a hang, not a speed check.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(120);

/// `reseq` with a clean environment as far as reseq's own variables go.
pub fn reseq() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reseq"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RESEQ_") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// What one finished invocation did.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Finished {
    pub fn stdout_text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }

    /// Exit code 0 and no panic.
    pub fn assert_success(&self, what: &str) {
        assert_eq!(self.code, Some(0), "{what}: exit code; stderr:\n{}", self.stderr);
        self.assert_no_panic(what);
    }

    pub fn assert_no_panic(&self, what: &str) {
        assert!(
            !self.stderr.contains("panicked"),
            "{what}: the binary panicked; stderr:\n{}",
            self.stderr
        );
    }
}

/// Runs `cmd` with `stdin` as its standard input (written from a thread, so a large input
/// cannot deadlock against a full stdout pipe) and collects everything, failing the test if
/// it takes longer than [`PROCESS_DEADLINE`].
pub fn run_cmd(mut cmd: Command, stdin: &[u8]) -> Finished {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot start reseq");
    let mut child_stdin = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    // A process that exits early (e.g. a usage error) closes its stdin: ignore write errors.
    let writer = thread::spawn(move || {
        let _ = child_stdin.write_all(&input);
    });
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let code = wait_with_deadline(&mut child, PROCESS_DEADLINE);
    let _ = writer.join();
    let stdout = stdout.join().expect("stdout reader");
    let stderr = String::from_utf8_lossy(&stderr.join().expect("stderr reader")).into_owned();
    Finished { code, stdout, stderr }
}

pub fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

pub fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for reseq") {
            return status.code();
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("reseq did not exit within {deadline:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `reseq run <args>` with `stdin`.
pub fn run(args: &[&str], stdin: &[u8]) -> Finished {
    run_env(args, &[], stdin)
}

/// `reseq run <args>` with extra environment variables.
pub fn run_env(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Finished {
    let mut cmd = reseq();
    cmd.arg("run").args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    run_cmd(cmd, stdin)
}

/// A JSON line of the default shape, without newline.
pub fn msg(ctx: &str, seq: u64) -> String {
    format!(r#"{{"contextId":"{ctx}","sequence":{seq}}}"#)
}

/// A JSON line with a body field, without newline.
pub fn msg_body(ctx: &str, seq: u64, body: &str) -> String {
    format!(r#"{{"contextId":"{ctx}","sequence":{seq},"body":"{body}"}}"#)
}

/// Lines joined, each followed by a newline.
pub fn lines(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// The records of a DLQ file (missing file = no records); each must be a JSON object.
pub fn dlq_records(path: &Path) -> Vec<Value> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_record(l, path))
        .collect()
}

pub fn parse_record(line: &str, source: &Path) -> Value {
    let value: Value = serde_json::from_str(line)
        .unwrap_or_else(|err| panic!("DLQ line of {} is not JSON ({err}): {line}", source.display()));
    assert!(value.is_object(), "DLQ line is not a JSON object: {line}");
    value
}

pub fn reasons(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["reason"].as_str().expect("reason is a string").to_owned())
        .collect()
}

/// Every DLQ record has exactly `reason`, `detail`, `line`, `input` with the right types,
/// plus `input_base64` (a string) when the line is not UTF-8.
pub fn assert_record_shape(record: &Value) {
    let object = record.as_object().expect("DLQ record is an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if object.contains_key("input_base64") {
        assert!(record["input_base64"].is_string(), "input_base64 is a string: {record}");
        keys.retain(|k| *k != "input_base64");
    }
    assert_eq!(
        keys,
        ["detail", "input", "line", "reason"],
        "DLQ record fields: {record}"
    );
    assert!(record["reason"].is_string(), "reason is a string: {record}");
    assert!(record["detail"].is_string(), "detail is a string: {record}");
    assert!(
        !record["detail"].as_str().unwrap().is_empty(),
        "detail is not empty: {record}"
    );
    assert!(record["line"].is_u64(), "line is a non-negative integer: {record}");
    assert!(record["line"].as_u64().unwrap() >= 1, "line is 1-based: {record}");
    assert!(record["input"].is_string(), "input is a string: {record}");
}
