//! Configuration errors of `reseq worker` and `reseq init` (SPEC §7): each exits with
//! code 2 and one line on stderr that names the flag (or its `RESEQ_` variable) and what
//! is wrong. Values that are checked before any AWS call run without the stand-ins; a
//! wrong table, queue, output or DLQ needs them (scripts/emulators.sh) and skips without.

use std::process::{Command, Stdio};

mod common;
use common::emulators;

/// `reseq` with none of reseq's own variables from the test's environment.
fn reseq(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reseq"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RESEQ_") {
            cmd.env_remove(&key);
        }
    }
    let out = cmd.args(args).stdin(Stdio::null()).output().expect("run reseq");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Exit code 2, nothing on stdout, one stderr line naming `flag` and holding `says`.
fn assert_config_error(args: &[&str], flag: &str, says: &str) {
    let (code, stdout, stderr) = reseq(args);
    let what = args.join(" ");
    assert_eq!(code, Some(2), "{what}: exit code; stderr:\n{stderr}");
    assert!(stdout.is_empty(), "{what}: stdout {stdout:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line, got:\n{stderr}");
    assert!(lines[0].contains(flag), "{what}: names {flag}: {}", lines[0]);
    assert!(lines[0].contains(says), "{what}: says {says:?}: {}", lines[0]);
    assert!(
        !lines[0].contains("panicked") && !lines[0].contains("please report"),
        "{}",
        lines[0]
    );
}

const QUEUE: &str = "http://127.0.0.1:1/000000000000/in.fifo";

#[test]
fn a_missing_queue_url_is_named() {
    assert_config_error(&["worker"], "--queue-url", "missing");
}

#[test]
fn zero_values_that_cannot_work_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--sweep-every", "0s"),
        ("--lease-duration", "0s"),
        ("--http-timeout", "0s"),
        ("--max-attempts", "0"),
        ("--receivers", "0"),
        ("--max-staged", "0"),
        ("--stage-held-after", "0"),
        ("--retention", "0s"),
    ] {
        assert_config_error(&["worker", "--queue-url", QUEUE, flag, value], flag, value);
    }
    assert_config_error(&["init", "--max-receive-count", "0"], "--max-receive-count", "0");
}

#[test]
fn a_gap_timeout_that_the_retention_would_always_beat_is_refused() {
    assert_config_error(
        &[
            "worker",
            "--queue-url",
            QUEUE,
            "--gap-timeout",
            "2d",
            "--retention",
            "1d",
        ],
        "--gap-timeout",
        "--retention",
    );
}

#[test]
fn an_http_timeout_longer_than_a_quarter_of_the_lease_is_refused() {
    assert_config_error(
        &[
            "worker",
            "--queue-url",
            QUEUE,
            "--output",
            "http://127.0.0.1:1/in",
            "--lease-duration",
            "20s",
            "--http-timeout",
            "10s",
        ],
        "--http-timeout",
        "5s",
    );
}

#[test]
fn table_names_dynamodb_refuses_are_refused_naming_the_flag() {
    for table in ["", "a b", "x"] {
        assert_config_error(
            &["worker", "--queue-url", QUEUE, "--table", table],
            "--table",
            "table name",
        );
        assert_config_error(&["init", "--table", table], "--table", "table name");
    }
}

/// A FIFO queue of this test's own on LocalStack (made by `reseq init`), and a table.
fn init(name: &str) -> String {
    let (code, stdout, stderr) = reseq(&["init", "--table", name, "--with-queues", "--queue-prefix", name]);
    assert_eq!(code, Some(0), "{stderr}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("queue  input  "))
        .expect("the input queue")
        .to_string()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

#[test]
fn a_wrong_table_queue_output_or_dlq_exits_2_naming_the_resource_and_the_flag() {
    if emulators().is_none() {
        return;
    }
    let name = unique("cfg");
    let input = init(&name);
    let missing_queue = input.replace("-input.fifo", "-missing.fifo");
    let worker = |extra: &[&str]| {
        let mut args = vec!["worker", "--queue-url", &input, "--exit-when-idle", "1s"];
        if !extra.contains(&"--table") {
            args.extend_from_slice(&["--table", &name]);
        }
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, flag: &str, resource: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_config_error(&args, flag, resource);
    };
    let missing_table = format!("{name}-missing");
    run(worker(&["--table", &missing_table]), "--table", &missing_table);
    let arn = "arn:aws:dynamodb:us-east-1:000000000000:table/x y";
    run(worker(&["--table", arn]), "--table", "table name");
    let mut args = worker(&[]);
    args[2] = missing_queue.clone();
    run(args, "--queue-url", &missing_queue);
    let output = format!("sqs:{missing_queue}");
    run(worker(&["--output", &output]), "--output", &missing_queue);
    run(worker(&["--dlq-url", &missing_queue]), "--dlq-url", &missing_queue);
}

#[tokio::test]
async fn a_queue_whose_visibility_is_zero_needs_a_visibility_timeout() {
    if emulators().is_none() {
        return;
    }
    let name = unique("cfg-vis");
    let (code, _, stderr) = reseq(&["init", "--table", &name]);
    assert_eq!(code, Some(0), "{stderr}");
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "0")
        .send()
        .await
        .expect("create a queue")
        .queue_url
        .expect("a URL");
    assert_config_error(
        &["worker", "--queue-url", &queue, "--table", &name],
        "--visibility-timeout",
        "0s",
    );
    let (code, _, stderr) = reseq(&[
        "worker",
        "--queue-url",
        &queue,
        "--table",
        &name,
        "--visibility-timeout",
        "5s",
        "--exit-when-idle",
        "1s",
        "--wait-time",
        "1s",
    ]);
    assert_eq!(code, Some(0), "with --visibility-timeout it runs: {stderr}");
}
