//! The `bootstrap` binary run for real as a Lambda function on this machine: cargo-lambda's
//! Lambda Runtime API emulator (`cargo lambda watch --only-lambda-apis`), the function
//! polling it, and events sent with `cargo lambda invoke --data-file`, against the local
//! stand-ins (LocalStack SQS, DynamoDB Local; `scripts/emulators.sh`). Each test has its
//! own table, output and DLQ queues, emulator port and function process.
//!
//! The function process is this package's `bootstrap` (`CARGO_BIN_EXE_bootstrap`), started
//! by the test with the environment Lambda would give it, not by `cargo lambda watch`
//! itself: watch runs `cargo run -p reseq-lambda`, whose feature set differs from a
//! workspace build's (`scripts/test.sh`), so it would rebuild the AWS SDK — minutes —
//! inside the test.
//!
//! Needs `AWS_ENDPOINT_URL_SQS` and `AWS_ENDPOINT_URL_DYNAMODB`
//! (`eval "$(scripts/emulators.sh env)"`) and cargo-lambda: `RESEQ_CARGO_LAMBDA` (the path of
//! the binary, e.g. `export RESEQ_CARGO_LAMBDA="$(scripts/cargo-lambda.sh path)"`) or
//! `cargo-lambda` on `PATH`. Without them the tests skip with the reason, and fail instead
//! under `RESEQ_REQUIRE_EMULATORS=1`.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{Value, json};

/// What the tests need from the machine.
struct Prerequisites {
    cargo_lambda: PathBuf,
    sqs_endpoint: String,
    dynamodb_endpoint: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The endpoints and cargo-lambda, or `None` (the test returns at once) with the reason
/// printed; under `RESEQ_REQUIRE_EMULATORS=1` a missing one fails the test instead. Never
/// lets a test reach real AWS: without explicit endpoints nothing runs.
fn prerequisites() -> Option<Prerequisites> {
    let found = match (var("AWS_ENDPOINT_URL_SQS"), var("AWS_ENDPOINT_URL_DYNAMODB")) {
        (Some(sqs_endpoint), Some(dynamodb_endpoint)) => find_cargo_lambda().map(|cargo_lambda| Prerequisites {
            cargo_lambda,
            sqs_endpoint,
            dynamodb_endpoint,
        }),
        _ => Err(
            "the Lambda tests need LocalStack SQS and DynamoDB Local, and AWS_ENDPOINT_URL_SQS or \
                  AWS_ENDPOINT_URL_DYNAMODB is not set: run `scripts/emulators.sh start` and \
                  `eval \"$(scripts/emulators.sh env)\"`, then test again"
                .to_string(),
        ),
    };
    let why = match found {
        Ok(found) => return Some(found),
        Err(why) => why,
    };
    if var("RESEQ_REQUIRE_EMULATORS").as_deref() == Some("1") {
        panic!("{why} (RESEQ_REQUIRE_EMULATORS=1: these tests must run, not be skipped)");
    }
    // Once per process, and past the test harness's capture (a skipped test passes).
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipped: {why}");
    });
    None
}

/// `RESEQ_CARGO_LAMBDA`, else `cargo-lambda` on `PATH`.
fn find_cargo_lambda() -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(path) = var("RESEQ_CARGO_LAMBDA") {
        let path = PathBuf::from(path);
        return if executable(&path) {
            Ok(path)
        } else {
            Err(format!(
                "RESEQ_CARGO_LAMBDA is {}, which is not an executable file: set it to the output of \
                 `scripts/cargo-lambda.sh path`",
                path.display()
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("cargo-lambda"))
        .find(|p| executable(p))
        .ok_or_else(|| {
            "the Lambda tests need cargo-lambda, and neither RESEQ_CARGO_LAMBDA nor PATH has it: run \
             `export RESEQ_CARGO_LAMBDA=\"$(scripts/cargo-lambda.sh path)\"` (installs a pinned cargo-lambda once, \
             under .emulators/), then test again"
                .to_string()
        })
}

/// A name of this test run's own: tables and queues are not shared between tests.
fn unique(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("lam-{test}-{}-{nanos:x}", std::process::id())
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The test's table, output queue and DLQ (FIFO), made with the SDKs.
struct Setup {
    name: String,
    sqs: Client,
    output: String,
    dlq: String,
}

impl Setup {
    async fn new(test: &str) -> Setup {
        let name = unique(test);
        let dynamodb = reseq_dynamodb::load_client(&reseq_dynamodb::DynamoConfig::default()).await;
        reseq_dynamodb::create_table(&dynamodb, &name)
            .await
            .unwrap_or_else(|e| panic!("creating the table {name}: {e}"));
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let sqs = Client::new(&sdk);
        let output = fifo_queue(&sqs, &format!("{name}-output")).await;
        let dlq = fifo_queue(&sqs, &format!("{name}-dlq")).await;
        Setup { name, sqs, output, dlq }
    }

    /// The function's `RESEQ_*` settings: this test's table, output and DLQ, plus `extra`.
    fn settings(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut settings = vec![
            ("RESEQ_TABLE".to_string(), self.name.clone()),
            ("RESEQ_OUTPUT".to_string(), format!("sqs:{}", self.output)),
            ("RESEQ_DLQ_URL".to_string(), self.dlq.clone()),
        ];
        settings.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        settings
    }

    /// The ARN of the (never created) input queue the events pretend to come from.
    fn input_arn(&self) -> String {
        format!("arn:aws:sqs:us-east-1:000000000000:{}-input.fifo", self.name)
    }
}

async fn fifo_queue(sqs: &Client, name: &str) -> String {
    sqs.create_queue()
        .queue_name(format!("{name}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating the queue {name}.fifo: {e:?}"))
        .queue_url
        .unwrap_or_else(|| panic!("no URL for the queue {name}.fifo"))
}

/// One SQS record of a Lambda event from a FIFO queue, as the event source mapping sends
/// it: `contextId` and (when given) `sequence` message attributes, group = context.
fn record(setup: &Setup, message_id: &str, context: &str, seq: Option<u64>) -> Value {
    let attribute = |data_type: &str, value: String| json!({"stringValue": value, "dataType": data_type, "stringListValues": [], "binaryListValues": []});
    let mut message_attributes = serde_json::Map::new();
    message_attributes.insert("contextId".into(), attribute("String", context.to_string()));
    if let Some(seq) = seq {
        message_attributes.insert("sequence".into(), attribute("Number", seq.to_string()));
    }
    let sent = now_ms().to_string();
    json!({
        "messageId": message_id,
        "receiptHandle": format!("AQEB{message_id}"),
        "body": json!({"order": context, "step": seq, "id": message_id}).to_string(),
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": sent,
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": sent,
            "SequenceNumber": format!("{:020}", now_ms()),
            "MessageGroupId": context,
            "MessageDeduplicationId": message_id,
        },
        "messageAttributes": message_attributes,
        // Lambda sends the body's MD5; the function does not check it.
        "md5OfBody": "00000000000000000000000000000000",
        "eventSource": "aws:sqs",
        "eventSourceARN": setup.input_arn(),
        "awsRegion": "us-east-1",
    })
}

fn sqs_event(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}

fn scheduled_event() -> Value {
    json!({
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": "2026-11-23T12:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:000000000000:rule/reseq-sweep"],
        "detail": {}
    })
}

/// The message ids a partial batch response reports as failed.
fn failures(response: &Value) -> Vec<String> {
    let Some(failures) = response.get("batchItemFailures").and_then(Value::as_array) else {
        panic!("not a partial batch response: {response}");
    };
    let mut ids: Vec<String> = failures
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

/// cargo-lambda's Runtime API emulator and the function polling it. Dropping it kills
/// both (each runs in a process group of its own), also when a test fails; the logs of
/// both are printed then.
struct Function {
    cargo_lambda: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    emulator: Option<Child>,
    function: Option<Child>,
    invocations: usize,
}

impl Function {
    fn start(prerequisites: &Prerequisites, settings: &[(String, String)]) -> Function {
        let mut function = Function {
            cargo_lambda: prerequisites.cargo_lambda.clone(),
            port: 0,
            dir: tempfile::tempdir().expect("a temporary folder"),
            emulator: None,
            function: None,
            invocations: 0,
        };
        function.start_emulator();
        function.start_function(prerequisites, settings);
        function
    }

    fn log(&self, name: &str) -> (PathBuf, Stdio, Stdio) {
        let path = self.dir.path().join(name);
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .expect("a log file");
        let err = file.try_clone().expect("a log file");
        (path, Stdio::from(file), Stdio::from(err))
    }

    /// `cargo lambda watch --only-lambda-apis` on a free port, up when the port answers.
    /// The port is found by binding port 0; another process may take it before the
    /// emulator does, so that is tried again with another port.
    fn start_emulator(&mut self) {
        for _attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let (_, out, err) = self.log("emulator.log");
            let child = Command::new(&self.cargo_lambda)
                .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes"])
                .args(["--invoke-address", "127.0.0.1", "--invoke-port", &port.to_string()])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.cargo_lambda.display()));
            self.emulator = Some(child);
            self.port = port;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return;
                }
                if self
                    .emulator
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some())
                {
                    break; // exited: most likely the port was taken meanwhile
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kill(self.emulator.take());
        }
        panic!("`cargo lambda watch --only-lambda-apis` did not start; see its log above");
    }

    /// The function, with the environment the Lambda service gives it and nothing else.
    fn start_function(&mut self, prerequisites: &Prerequisites, settings: &[(String, String)]) {
        let (_, out, err) = self.log("function.log");
        let child = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{}/.rt", self.port))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_") // the emulator's default function
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/reseq")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_ENDPOINT_URL_SQS", &prerequisites.sqs_endpoint)
            .env("AWS_ENDPOINT_URL_DYNAMODB", &prerequisites.dynamodb_endpoint)
            .env("AWS_REGION", var("AWS_REGION").unwrap_or_else(|| "us-east-1".into()))
            .env(
                "AWS_ACCESS_KEY_ID",
                var("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "test".into()),
            )
            .env(
                "AWS_SECRET_ACCESS_KEY",
                var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "test".into()),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", var("RUST_LOG").unwrap_or_else(|| "info".into()))
            .envs(settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("start bootstrap");
        self.function = Some(child);
    }

    /// Fails the test if the function process has exited (it only exits on a failed start).
    fn check_alive(&mut self) {
        if let Some(status) = self.function.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("the function exited ({status}); its log is printed above");
        }
    }

    /// `cargo lambda invoke --data-file` with `payload`: the function's response, or the
    /// error it returned (cargo-lambda's report of it).
    fn invoke(&mut self, payload: &Value) -> Result<Value, String> {
        self.invocations += 1;
        let file = self.dir.path().join(format!("event-{}.json", self.invocations));
        std::fs::write(&file, serde_json::to_vec_pretty(payload).expect("JSON")).expect("write the event");
        self.check_alive();
        let mut invoke = Command::new(&self.cargo_lambda)
            .args(["lambda", "invoke", "--invoke-address", "127.0.0.1"])
            .args([
                "--invoke-port",
                &self.port.to_string(),
                "--output-format",
                "json",
                "--color",
                "never",
            ])
            .arg("--data-file")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("run cargo lambda invoke");
        let started = Instant::now();
        while invoke.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(60) || self.function_exited() {
                kill(Some(invoke));
                self.check_alive();
                panic!("cargo lambda invoke got no answer in 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = invoke.wait_with_output().expect("cargo lambda invoke's output");
        if output.status.success() {
            let response = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                panic!(
                    "the response is not JSON ({e}): {}",
                    String::from_utf8_lossy(&output.stdout)
                )
            });
            Ok(response)
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn function_exited(&mut self) -> bool {
        self.function
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }
}

/// Kills a child's process group, then the child, and reaps it.
fn kill(child: Option<Child>) {
    let Some(mut child) = child else { return };
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Function {
    fn drop(&mut self) {
        kill(self.function.take());
        kill(self.emulator.take());
        if std::thread::panicking() {
            for name in ["emulator.log", "function.log"] {
                let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                eprintln!("----- {name} -----\n{text}");
            }
        }
    }
}

/// A message read back from the output queue.
#[derive(Debug)]
struct Got {
    context: String,
    seq: u64,
    body: String,
}

/// Reads and deletes the output queue's messages until at least `want` came and one
/// more receive came back empty (or 30 s passed). Deleting each batch before the next
/// receive keeps each FIFO group's order.
async fn receive(sqs: &Client, queue: &str, want: usize) -> Vec<Got> {
    let mut got = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let out = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive from the output queue");
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() && got.len() >= want {
            break;
        }
        for m in messages {
            let attribute = |name: &str| {
                m.message_attributes
                    .as_ref()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value.clone())
                    .unwrap_or_default()
            };
            got.push(Got {
                context: attribute("contextId"),
                seq: attribute("sequence").parse().unwrap_or(u64::MAX),
                body: m.body.clone().unwrap_or_default(),
            });
            if let Some(handle) = m.receipt_handle() {
                sqs.delete_message()
                    .queue_url(queue)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .expect("delete from the output queue");
            }
        }
    }
    got
}

/// Positions released per context, in the order they reached the output.
fn by_context(got: &[Got]) -> BTreeMap<String, Vec<u64>> {
    let mut map: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for g in got {
        map.entry(g.context.clone()).or_default().push(g.seq);
    }
    map
}

/// One batch from a FIFO queue, positions out of order in two contexts, plus two groups
/// whose first record cannot be settled: one held back for capacity (`RESEQ_MAX_STAGED=2`,
/// a position far ahead), one invalid (no sequence; `--invalid redrive` leaves it for the
/// queue's redrive policy). Those records and every later record of their groups are
/// reported as failures, the other groups' are not, and the output queue receives each
/// context in order.
#[tokio::test]
async fn an_sqs_batch_is_released_in_order_and_failures_fail_the_rest_of_their_group() {
    let Some(prerequisites) = prerequisites() else { return };
    let setup = Setup::new("batch").await;
    let mut function = Function::start(&prerequisites, &setup.settings(&[("RESEQ_MAX_STAGED", "2")]));
    let context = |c: &str| format!("{}-{c}", setup.name);
    let (a, b, c, d) = (context("a"), context("b"), context("c"), context("d"));
    let id = |label: &str| format!("{}-{label}", setup.name);

    let records = vec![
        record(&setup, &id("a3"), &a, Some(3)),
        record(&setup, &id("b2"), &b, Some(2)),
        record(&setup, &id("a1"), &a, Some(1)),
        record(&setup, &id("c9"), &c, Some(9)), // beyond the staging window: held back
        record(&setup, &id("b1"), &b, Some(1)),
        record(&setup, &id("d-invalid"), &d, None), // no sequence: invalid
        record(&setup, &id("a2"), &a, Some(2)),
        record(&setup, &id("c1"), &c, Some(1)),
        record(&setup, &id("d1"), &d, Some(1)),
        record(&setup, &id("b3"), &b, Some(3)),
    ];
    let response = function
        .invoke(&sqs_event(records))
        .unwrap_or_else(|e| panic!("the SQS event failed: {e}"));

    let mut expected = vec![id("c9"), id("c1"), id("d-invalid"), id("d1")];
    expected.sort();
    assert_eq!(failures(&response), expected, "response: {response}");

    let got = receive(&setup.sqs, &setup.output, 6).await;
    let released = by_context(&got);
    assert_eq!(released.get(&a), Some(&vec![1, 2, 3]), "{got:?}");
    assert_eq!(released.get(&b), Some(&vec![1, 2, 3]), "{got:?}");
    // c1 and d1 come after their group's first failure: whether they were released now
    // (and are a duplicate when SQS delivers them again) or only then is the adapter's
    // choice; either way nothing but position 1 of c and d can have been released.
    for context in [&c, &d] {
        let seqs = released.get(context).cloned().unwrap_or_default();
        assert!(seqs.is_empty() || seqs == [1], "{context}: {seqs:?}");
    }
    assert_eq!(
        released.keys().filter(|k| ![&a, &b, &c, &d].contains(k)).count(),
        0,
        "{got:?}"
    );
    // Bodies reach the output as they came.
    let a1 = got.iter().find(|g| g.context == a && g.seq == 1).expect("a1 released");
    let body: Value = serde_json::from_str(&a1.body).expect("a JSON body");
    assert_eq!(body["id"], json!(id("a1")));
}

/// A gap in one context, then the scheduled (EventBridge) event after the gap timeout
/// (`RESEQ_GAP_TIMEOUT=1s`): the sweep skips the missing position and releases the
/// waiting messages in order. An event of another kind fails the invocation.
#[tokio::test]
async fn a_scheduled_event_releases_what_waits_after_the_gap_timeout() {
    let Some(prerequisites) = prerequisites() else { return };
    let setup = Setup::new("sweep").await;
    let mut function = Function::start(&prerequisites, &setup.settings(&[("RESEQ_GAP_TIMEOUT", "1s")]));
    let (e, f) = (format!("{}-e", setup.name), format!("{}-f", setup.name));
    let id = |label: &str| format!("{}-{label}", setup.name);

    let records = vec![
        record(&setup, &id("e3"), &e, Some(3)),
        record(&setup, &id("e2"), &e, Some(2)),
        record(&setup, &id("f1"), &f, Some(1)),
    ];
    let response = function
        .invoke(&sqs_event(records))
        .unwrap_or_else(|err| panic!("the SQS event failed: {err}"));
    let staged_at = Instant::now();
    assert_eq!(
        failures(&response),
        Vec::<String>::new(),
        "staged messages are settled: {response}"
    );
    let got = receive(&setup.sqs, &setup.output, 1).await;
    assert_eq!(by_context(&got), BTreeMap::from([(f.clone(), vec![1])]), "{got:?}");

    let err = function.invoke(&json!({"hello": "world"})).unwrap_err();
    assert!(err.contains("unsupported event"), "{err}");

    if let Some(wait) = Duration::from_millis(1_200).checked_sub(staged_at.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    let mut swept = 0;
    let started = Instant::now();
    while swept == 0 && started.elapsed() < Duration::from_secs(15) {
        let response = function
            .invoke(&scheduled_event())
            .unwrap_or_else(|err| panic!("the scheduled event failed: {err}"));
        swept = response["swept"]
            .as_u64()
            .unwrap_or_else(|| panic!("no \"swept\" count: {response}"));
        if swept == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert!(swept >= 1, "no context was due 15 s after a 1 s gap timeout");
    let got = receive(&setup.sqs, &setup.output, 2).await;
    assert_eq!(by_context(&got), BTreeMap::from([(e.clone(), vec![2, 3])]), "{got:?}");

    // The function's metrics: EMF records on its stdout (what Lambda extracts), one per
    // invocation, whose counters add up to what it did.
    let log = std::fs::read_to_string(function.dir.path().join("function.log")).expect("the function's log");
    let records: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with("{\"_aws\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("an EMF line that is not JSON ({err}): {l}")))
        .collect();
    let sum = |name: &str| -> f64 {
        records
            .iter()
            .filter_map(|r| r.get(name))
            .filter_map(Value::as_f64)
            .sum()
    };
    assert_eq!(sum("Received"), 3.0, "{log}");
    assert_eq!(sum("Released"), 3.0, "f1, then e2 and e3 after the gap: {log}");
    assert_eq!(sum("GapsSkipped"), 1.0, "{log}");
    assert!(sum("Sweeps") >= 1.0, "{log}");
    assert!(
        records
            .iter()
            .any(|r| r.get("OldestWaitingAge").is_some() && r.get("BlockedContexts").is_some()),
        "the scheduled sweep's gauges: {log}"
    );
    assert!(
        records.iter().all(|r| r["Service"] == "_"),
        "Service is the function's name: {log}"
    );
}
