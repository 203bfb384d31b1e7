//! Running `reseq worker` against the local stand-ins, for `worker.rs` and `bad_input.rs`:
//! a table and FIFO queues of the test's own (made by `reseq init`), sending messages
//! (with their SQS message ids back), reading a queue dry, running workers and reading
//! their summary, and a tiny HTTP output that answers 400 to a body containing `poison`
//! (a permanent handler failure).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

/// A table and input/DLQ/output FIFO queues of this test's own, made by `reseq init`.
pub struct Setup {
    pub name: String,
    pub sqs: Client,
    pub input: String,
    pub dlq: String,
    pub output: String,
}

impl Setup {
    pub async fn new(test: &str, max_receive_count: u32) -> Setup {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("w-{test}-{}-{nanos:x}", std::process::id());
        let out = Command::new(env!("CARGO_BIN_EXE_reseq"))
            .args(["init", "--table", &name, "--with-queues", "--queue-prefix", &name])
            .args(["--max-receive-count", &max_receive_count.to_string()])
            .output()
            .expect("run reseq init");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let url = |role: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("queue  {role:<6} ")))
                .unwrap_or_else(|| panic!("no {role} queue in {stdout}"))
                .to_string()
        };
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Setup {
            sqs: Client::new(&sdk),
            input: url("input"),
            dlq: url("dlq"),
            output: url("output"),
            name,
        }
    }

    /// A standard (not FIFO) queue of this test.
    pub async fn standard_queue(&self, suffix: &str) -> String {
        let created = self
            .sqs
            .create_queue()
            .queue_name(format!("{}-{suffix}", self.name))
            .send()
            .await
            .expect("create a standard queue");
        created.queue_url.expect("queue url")
    }

    /// `reseq worker` on `queue` to the output queue, with quick test timings, plus `extra`.
    pub fn worker(&self, queue: &str, extra: &[&str]) -> Command {
        self.worker_to(queue, &format!("sqs:{}", self.output), extra)
    }

    /// `reseq worker` on `queue` to `output`, with quick test timings, plus `extra`.
    pub fn worker_to(&self, queue: &str, output: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reseq"));
        cmd.args(["worker", "--queue-url", queue, "--table", &self.name])
            .args(["--output", output, "--dlq-url", &self.dlq])
            .args(["--wait-time", "1s", "--sweep-every", "500ms", "--exit-when-idle", "4s"])
            .args(extra)
            .env("RUST_LOG", "warn");
        cmd
    }

    pub async fn store(&self) -> reseq_dynamodb::DynamoStore {
        reseq_dynamodb::connect(&self.name, reseq_dynamodb::DynamoConfig::default())
            .await
            .expect("connect to the test table")
    }
}

/// One message to send: body, FIFO group and message attributes (name, type, value).
#[derive(Clone, Debug)]
pub struct Msg {
    pub body: String,
    pub group: String,
    pub attributes: Vec<(&'static str, &'static str, String)>,
}

impl Msg {
    /// Context and position as attributes.
    pub fn new(context: &str, seq: u64, group: &str) -> Msg {
        Msg {
            body: format!("{{\"order\":\"{context}\",\"step\":{seq}}}"),
            group: group.into(),
            attributes: vec![
                ("contextId", "String", context.to_string()),
                ("sequence", "Number", seq.to_string()),
            ],
        }
    }

    /// No attributes: only the body.
    pub fn body_only(body: impl Into<String>, group: &str) -> Msg {
        Msg {
            body: body.into(),
            group: group.into(),
            attributes: Vec::new(),
        }
    }
}

/// Sends `messages` in order, 10 per request, each with a dedup id of its own; returns
/// their SQS message ids, in the same order.
pub async fn send(sqs: &Client, queue: &str, messages: &[Msg]) -> Vec<String> {
    static SENDS: AtomicU64 = AtomicU64::new(0);
    let fifo = queue.ends_with(".fifo");
    let mut ids = Vec::new();
    for chunk in messages.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&m.body);
                for (name, data_type, value) in &m.attributes {
                    let value = MessageAttributeValue::builder()
                        .data_type(*data_type)
                        .string_value(value)
                        .build()
                        .unwrap();
                    entry = entry.message_attributes(*name, value);
                }
                if fifo {
                    entry = entry
                        .message_group_id(&m.group)
                        .message_deduplication_id(format!("m-{}", SENDS.fetch_add(1, Relaxed)));
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
        let mut sent: Vec<(usize, String)> = out
            .successful
            .iter()
            .map(|s| (s.id.parse().unwrap(), s.message_id.clone()))
            .collect();
        sent.sort();
        ids.extend(sent.into_iter().map(|(_, id)| id));
    }
    ids
}

/// A message read back from a queue: its body and its String/Number attributes.
#[derive(Clone, Debug)]
pub struct Got {
    pub body: String,
    pub attributes: HashMap<String, String>,
}

impl Got {
    pub fn context(&self) -> &str {
        &self.attributes["contextId"]
    }
    pub fn seq(&self) -> u64 {
        self.attributes["sequence"].parse().unwrap()
    }
}

/// Per context, the positions in the order the output received them.
pub fn by_context(got: &[Got]) -> BTreeMap<String, Vec<u64>> {
    let mut map: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for g in got {
        map.entry(g.context().to_string()).or_default().push(g.seq());
    }
    map
}

/// Reads and deletes everything on `queue` until three receives in a row come back empty.
pub async fn drain(sqs: &Client, queue: &str) -> Vec<Got> {
    let mut got = Vec::new();
    let mut empty = 0;
    while empty < 3 {
        let out = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in messages {
            let attributes = m
                .message_attributes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                .collect();
            got.push(Got {
                body: m.body.clone().unwrap_or_default(),
                attributes,
            });
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle.unwrap())
                .send()
                .await
                .expect("delete");
        }
    }
    got
}

/// What the HTTP output accepted: (context id, position), in arrival order.
pub type Accepted = Arc<Mutex<Vec<(String, u64)>>>;

/// An `http://` output on loopback that answers each request after `delay`: 200, except
/// 400 for a body containing `poison`.
pub fn http_target(delay: Duration) -> (String, Accepted) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let accepted: Accepted = Arc::new(Mutex::new(Vec::new()));
    let record = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = HashMap::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            std::thread::sleep(delay);
            let poison = String::from_utf8_lossy(&body).contains("poison");
            let status = if poison { "400 Bad Request" } else { "200 OK" };
            if !poison {
                let context = headers.get("reseq-context-id").cloned().unwrap_or_default();
                let seq = headers.get("reseq-sequence").and_then(|v| v.parse().ok()).unwrap_or(0);
                record.lock().unwrap().push((context, seq));
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, accepted)
}

/// Waits for a worker started with piped output; returns (stdout, stderr); fails the
/// test if it failed or panicked.
pub fn finish(child: Child) -> (String, String) {
    let out: Output = child.wait_with_output().expect("wait for the worker");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "worker failed: {stderr}");
    assert!(!stderr.contains("panicked"), "the worker panicked: {stderr}");
    (stdout, stderr)
}

/// Runs the worker to its end; returns (stdout, stderr).
pub fn run_worker(mut cmd: Command) -> (String, String) {
    finish(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the worker"),
    )
}

/// A number from the worker's summary line: `… 17 released, …`.
pub fn summary_count(stderr: &str, what: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("reseq worker: stopped"))
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    line.split([':', ',', ';'])
        .find_map(|part| part.trim().strip_suffix(what).and_then(|n| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no '{what}' in {line}"))
}
