//! `balance-lambda` run for real as a Lambda function on this machine, as
//! `crates/reseq-lambda/tests/invoke.rs` runs `bootstrap`: cargo-lambda's Runtime API
//! emulator (`cargo lambda watch --only-lambda-apis`), the example's binary polling it
//! with the environment Lambda gives a function, and SQS events sent with
//! `cargo lambda invoke --data-file`, against LocalStack SQS (the DLQ) and DynamoDB Local
//! (reseq's table, the accounts' table).
//!
//! Deposits and withdrawals of two accounts arrive out of order across invocations, with
//! a repeat and a malformed body; the balances must come out as if applied once, in
//! order; the malformed one is dead-lettered, an overdraft stops its account. Old
//! positions replayed into the handler change nothing.
//!
//! Needs `AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL_DYNAMODB` and cargo-lambda
//! (`RESEQ_CARGO_LAMBDA`, or `cargo-lambda` on `PATH`): `scripts/test.sh` provides them.
//! Without them the test skips with the reason, and fails instead under
//! `RESEQ_REQUIRE_EMULATORS=1`.

mod common;

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::QueueAttributeName;
use reseq_core::{Engine, EngineConfig, Envelope, ManualClock, MemoryStore, Millis};
use reseq_examples::balance::Balances;
use serde_json::{Value, json};

use common::{Stands, emulators, unique};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `RESEQ_CARGO_LAMBDA`, else `cargo-lambda` on `PATH`; `None` (the test skips) or a
/// failure under `RESEQ_REQUIRE_EMULATORS=1` without it.
fn cargo_lambda() -> Option<PathBuf> {
    let found = var("RESEQ_CARGO_LAMBDA").map(PathBuf::from).or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("cargo-lambda"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = "the Lambda example's test needs cargo-lambda: run `export RESEQ_CARGO_LAMBDA=\"$(scripts/cargo-lambda.sh \
                   path)\"`";
        assert!(var("RESEQ_REQUIRE_EMULATORS").is_none(), "{why}");
        eprintln!("skipped: {why}");
    }
    found
}

/// cargo-lambda's Runtime API emulator and the example function polling it; dropping it
/// kills both and, when the test failed, prints their logs.
struct Function {
    cargo_lambda: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    children: Vec<Child>,
    invocations: usize,
}

impl Function {
    fn start(cargo_lambda: PathBuf, env: &[(&str, String)]) -> Function {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let log = |name: &str| {
            let file = File::create(dir.path().join(name)).expect("a log file");
            (Stdio::from(file.try_clone().expect("a log file")), Stdio::from(file))
        };
        let mut children = Vec::new();
        let mut port = 0;
        // A free port: another process may take it before the emulator does, so try again.
        for _ in 0..3 {
            let free = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let (out, err) = log("emulator.log");
            let mut emulator = Command::new(&cargo_lambda)
                .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes"])
                .args(["--invoke-address", "127.0.0.1", "--invoke-port", &free.to_string()])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .expect("run cargo lambda watch");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30)
                && TcpStream::connect(("127.0.0.1", free)).is_err()
                && emulator.try_wait().ok().flatten().is_none()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            if TcpStream::connect(("127.0.0.1", free)).is_ok() {
                port = free;
                children.push(emulator);
                break;
            }
            kill(emulator);
        }
        assert_ne!(port, 0, "`cargo lambda watch --only-lambda-apis` did not start");
        let (out, err) = log("function.log");
        let child = Command::new(env!("CARGO_BIN_EXE_balance-lambda"))
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt"))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_") // the emulator's default function
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_REGION", var("AWS_REGION").unwrap_or_else(|| "us-east-1".into()))
            .env(
                "AWS_ACCESS_KEY_ID",
                var("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "test".into()),
            )
            .env(
                "AWS_SECRET_ACCESS_KEY",
                var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "test".into()),
            )
            .env("AWS_ENDPOINT_URL_SQS", var("AWS_ENDPOINT_URL_SQS").unwrap_or_default())
            .env(
                "AWS_ENDPOINT_URL_DYNAMODB",
                var("AWS_ENDPOINT_URL_DYNAMODB").unwrap_or_default(),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("start balance-lambda");
        children.push(child);
        Function {
            cargo_lambda,
            port,
            dir,
            children,
            invocations: 0,
        }
    }

    /// `cargo lambda invoke --data-file`: the function's response.
    fn invoke(&mut self, payload: &Value) -> Value {
        self.invocations += 1;
        let file = self.dir.path().join(format!("event-{}.json", self.invocations));
        std::fs::write(&file, serde_json::to_vec_pretty(payload).expect("JSON")).expect("write the event");
        let mut invoke = Command::new(&self.cargo_lambda)
            .args(["lambda", "invoke", "--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &self.port.to_string()])
            .args(["--output-format", "json", "--color", "never", "--data-file"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("run cargo lambda invoke");
        let started = Instant::now();
        while invoke.try_wait().ok().flatten().is_none() {
            let exited = self.children.last_mut().and_then(|f| f.try_wait().ok().flatten());
            assert!(
                exited.is_none(),
                "the function exited ({exited:?}); its log is printed below"
            );
            assert!(started.elapsed() < Duration::from_secs(60), "no answer in 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = invoke.wait_with_output().expect("cargo lambda invoke's output");
        assert!(
            output.status.success(),
            "the invocation failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("a JSON response")
    }
}

fn kill(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Function {
    fn drop(&mut self) {
        for child in self.children.drain(..) {
            kill(child);
        }
        if std::thread::panicking() {
            for name in ["emulator.log", "function.log"] {
                let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                eprintln!("----- {name} -----\n{text}");
            }
        }
    }
}

/// One record of an SQS event from a FIFO queue, as the event source mapping sends it.
fn record(message_id: &str, account: &str, seq: u64, body: &str) -> Value {
    let attribute = |data_type: &str, value: String| json!({"stringValue": value, "dataType": data_type, "stringListValues": [], "binaryListValues": []});
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    json!({
        "messageId": message_id,
        "receiptHandle": format!("AQEB{message_id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": now.to_string(),
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": now.to_string(),
            "SequenceNumber": format!("{now:020}"),
            "MessageGroupId": account,
            "MessageDeduplicationId": message_id,
        },
        "messageAttributes": {
            "contextId": attribute("String", account.to_string()),
            "sequence": attribute("Number", seq.to_string()),
        },
        "md5OfBody": "00000000000000000000000000000000",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:accounts.fifo",
        "awsRegion": "us-east-1",
    })
}

fn failures(response: &Value) -> Vec<String> {
    response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("not a partial batch response: {response}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn balance(stands: &Stands, table: &str, account: &str) -> Option<(i64, u64)> {
    let balances = Balances::new(stands.dynamodb.clone(), table);
    balances.account(account).await.expect("read the account")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_applies_each_account_in_order_once_and_the_fence_drops_replays() {
    let Some(stands) = emulators().await else { return };
    let Some(cargo_lambda) = cargo_lambda() else { return };
    let name = unique("bal");
    reseq_dynamodb::create_table(&stands.dynamodb, &name)
        .await
        .expect("the staging table");
    let accounts = format!("{name}-accounts");
    reseq_examples::create_table(&stands.dynamodb, &accounts, "accountId")
        .await
        .expect("the accounts' table");
    let dlq = stands
        .sqs
        .create_queue()
        .queue_name(format!("{name}-dlq.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("the DLQ")
        .queue_url
        .expect("a queue URL");
    let mut function = Function::start(
        cargo_lambda,
        &[
            ("BALANCE_TABLE", accounts.clone()),
            ("RESEQ_TABLE", name.clone()),
            ("RESEQ_DLQ_URL", dlq.clone()),
            ("RESEQ_METRICS", "off".into()),
        ],
    );
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    let id = |label: &str| format!("{name}-{label}");

    // Account a: position 3 (a withdrawal) before 1; it waits for 2. Account b: 1, a body
    // that is no amount (dead-lettered), 3.
    let response = function.invoke(&json!({"Records": [
        record(&id("a3"), &a, 3, r#"{"amount": -30}"#),
        record(&id("a1"), &a, 1, r#"{"amount": 100}"#),
        record(&id("b1"), &b, 1, r#"{"amount": 10}"#),
        record(&id("b2"), &b, 2, "ten"),
        record(&id("b3"), &b, 3, r#"{"amount": 5}"#),
    ]}));
    assert_eq!(failures(&response), Vec::<String>::new(), "{response}");
    assert_eq!(balance(&stands, &accounts, &a).await, Some((100, 1)));
    assert_eq!(balance(&stands, &accounts, &b).await, Some((15, 3)));

    // Position 2 arrives, with a second delivery of position 1 under another message id:
    // a's 2 and 3 are applied, the repeat is dropped by reseq itself.
    let response = function.invoke(&json!({"Records": [
        record(&id("a2"), &a, 2, r#"{"amount": 50}"#),
        record(&id("a1-again"), &a, 1, r#"{"amount": 100}"#),
    ]}));
    assert_eq!(failures(&response), Vec::<String>::new(), "{response}");
    assert_eq!(balance(&stands, &accounts, &a).await, Some((120, 3)));

    // An overdraft is poison: the account stops there (`--on-poison block`), unchanged.
    function.invoke(&json!({"Records": [record(&id("a4"), &a, 4, r#"{"amount": -500}"#)]}));
    assert_eq!(balance(&stands, &accounts, &a).await, Some((120, 3)));
    drop(function);

    // The malformed body went to the DLQ as handler-failed.
    let got = stands
        .sqs
        .receive_message()
        .queue_url(&dlq)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_attribute_names("All")
        .send()
        .await
        .expect("receive from the DLQ")
        .messages
        .unwrap_or_default();
    let reasons: Vec<(String, String)> = got
        .iter()
        .map(|m| {
            let reason = m.message_attributes().and_then(|a| a.get("reseqReason"));
            (
                m.body().unwrap_or_default().to_string(),
                reason.and_then(|r| r.string_value()).unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(reasons, vec![("ten".to_string(), "handler-failed".to_string())]);

    // A replay of positions 1 to 3 of account a (an engine that lost its record of what
    // it released): the fence drops each, the balance stays 120.
    let handler = Balances::new(stands.dynamodb.clone(), &accounts);
    let engine = Engine::new(MemoryStore::new(), ManualClock::new(Millis(0)), EngineConfig::default());
    let dlq_sink = reseq_core::testing::RecordingDlq::new();
    let replay = [(1, 100), (2, 50), (3, -30)]
        .map(|(seq, amount)| Envelope::new(a.clone(), seq, format!(r#"{{"amount": {amount}}}"#)))
        .to_vec();
    let outcomes = engine.process(replay, &handler, &dlq_sink).await;
    assert!(outcomes.iter().all(|o| o.is_settled()), "{outcomes:?}");
    assert_eq!(engine.stats().released, 3);
    assert_eq!(
        balance(&stands, &accounts, &a).await,
        Some((120, 3)),
        "a replay was applied"
    );
}
