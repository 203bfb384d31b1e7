//! The built-in outputs behind `--output`: the stdout format (into a buffer), `sqs:` on
//! LocalStack's SQS (FIFO and standard queues, received back), and `http(s)://` against a
//! small HTTP server started by each test on 127.0.0.1.
//!
//! The SQS tests need `AWS_ENDPOINT_URL_SQS` (`eval "$(scripts/emulators.sh env)"`); without
//! it they skip, unless `RESEQ_REQUIRE_EMULATORS=1`, which makes them fail instead. Each
//! test makes queues of its own, so they run in parallel.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use bytes::Bytes;
use reseq_core::{AttributeValue, Attributes, Handler, HandlerError, Release};
use reseq_sqs::ids::hashed_context;
use reseq_sqs::output::{Output, OutputError, OutputTarget};

// ---------------------------------------------------------------- helpers

mod common;
use common::{Queue, attr, attributes, emulator, offline_client, system, unique};

/// A release with the usual defaults.
fn release<'a>(context_id: &'a str, seq: u64, body: &'a Bytes, attributes: &'a Attributes) -> Release<'a> {
    Release {
        context_id,
        seq,
        prev_seq: seq.checked_sub(1),
        message_id: "m-1",
        body,
        attributes,
        late: false,
        attempt: 1,
    }
}

// ---------------------------------------------------------------- stdout

#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn stdout_writes_one_json_object_per_line_in_the_documented_shape() {
    let buffer = SharedBuffer::default();
    let output = Output::json_lines(Box::new(buffer.clone()));
    let mut attrs = attributes(&[("trace", "t-1")]);
    attrs.insert(
        "raw".into(),
        AttributeValue {
            data_type: "Binary".into(),
            string: None,
            binary: Some(Bytes::from_static(b"foo")),
        },
    );
    let body = Bytes::from_static(b"{\"orderId\":\"o-1\",\"n\":1}");
    let first = Release {
        prev_seq: None,
        ..release("o-1", 1, &body, &attrs)
    };
    output.handle(&first).await.expect("written");
    let binary = Bytes::from_static(&[0xff, 0x00, b'a']);
    let none = Attributes::new();
    let second = Release {
        late: true,
        attempt: 3,
        message_id: "m-2",
        ..release("o\"1\n", 7, &binary, &none)
    };
    output.handle(&second).await.expect("written");

    let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("UTF-8 lines");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(text.ends_with('\n'));
    assert_eq!(
        lines[0],
        r#"{"contextId":"o-1","sequence":1,"prevSequence":null,"messageId":"m-1","late":false,"attempt":1,"body":"{\"orderId\":\"o-1\",\"n\":1}","attributes":{"raw":{"dataType":"Binary","binaryValue":"Zm9v"},"trace":{"dataType":"String","stringValue":"t-1"}}}"#
    );
    let second: serde_json::Value = serde_json::from_str(lines[1]).expect("JSON");
    assert_eq!(second["contextId"], "o\"1\n");
    assert_eq!(second["sequence"], 7);
    assert_eq!(second["prevSequence"], 6);
    assert_eq!(second["messageId"], "m-2");
    assert_eq!(second["late"], true);
    assert_eq!(second["attempt"], 3);
    assert_eq!(second["bodyBase64"], "/wBh");
    assert!(second.get("body").is_none());
    assert_eq!(second["attributes"], serde_json::json!({}));
}

struct BrokenPipe;

impl Write for BrokenPipe {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader gone"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_stdout_write_is_retryable() {
    let output = Output::json_lines(Box::new(BrokenPipe));
    let body = Bytes::from_static(b"x");
    let none = Attributes::new();
    match output.handle(&release("c", 1, &body, &none)).await {
        Err(HandlerError::Retryable(text)) => assert!(text.contains("reader gone"), "{text}"),
        other => panic!("expected a retryable error, got {other:?}"),
    }
}

#[tokio::test]
async fn stdout_connects_without_any_aws_call() {
    Output::connect(OutputTarget::Stdout, offline_client(), Duration::from_secs(1))
        .await
        .expect("stdout needs nothing");
}

// ---------------------------------------------------------------- sqs:

async fn sqs_output(client: &Client, queue: &Queue) -> Output {
    let target: OutputTarget = format!("sqs:{}", queue.url).parse().expect("a target");
    Output::connect(target, client.clone(), Duration::from_secs(5))
        .await
        .expect("the queue exists")
}

#[tokio::test]
async fn sqs_fifo_output_keeps_body_and_attributes_and_sets_group_and_dedup_ids() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "out", true).await;
    let output = sqs_output(&client, &queue).await;
    let attrs = attributes(&[("trace", "t-1"), ("contextId", "stale"), ("sequence", "not a number")]);
    let body1 = Bytes::from_static(b"{\"orderId\":\"o-1\",\"seq\":1}");
    let body2 = Bytes::from_static("deux é".as_bytes());
    output.handle(&release("o-1", 1, &body1, &attrs)).await.expect("sent");
    // A repeat of the same release (a retry after a crash) is dropped by SQS.
    output.handle(&release("o-1", 1, &body1, &attrs)).await.expect("sent");
    output.handle(&release("o-1", 2, &body2, &attrs)).await.expect("sent");

    let got = queue.receive(2).await;
    assert_eq!(got.len(), 2, "the repeated release is deduplicated: {got:?}");
    assert_eq!(got[0].body(), Some("{\"orderId\":\"o-1\",\"seq\":1}"));
    assert_eq!(got[1].body(), Some("deux é"));
    for (m, seq) in got.iter().zip(["1", "2"]) {
        assert_eq!(attr(m, "contextId"), Some(("String", "o-1")));
        assert_eq!(attr(m, "sequence"), Some(("Number", seq)));
        assert_eq!(attr(m, "trace"), Some(("String", "t-1")));
        assert_eq!(m.message_attributes().map(HashMap::len), Some(3));
        assert_eq!(system(m, MessageSystemAttributeName::MessageGroupId), Some("o-1"));
        let dedup = format!("o-1:{seq}");
        assert_eq!(
            system(m, MessageSystemAttributeName::MessageDeduplicationId),
            Some(dedup.as_str())
        );
    }
    queue.delete().await;
}

#[tokio::test]
async fn sqs_standard_output_sends_without_fifo_ids() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "out-std", false).await;
    let output = sqs_output(&client, &queue).await;
    let attrs = attributes(&[("trace", "t-9")]);
    let body = Bytes::from_static(b"plain text");
    output
        .handle(&release("acct/42", 9, &body, &attrs))
        .await
        .expect("sent");
    let got = queue.receive(1).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.body(), Some("plain text"));
    assert_eq!(attr(m, "contextId"), Some(("String", "acct/42")));
    assert_eq!(attr(m, "sequence"), Some(("Number", "9")));
    assert_eq!(attr(m, "trace"), Some(("String", "t-9")));
    assert_eq!(system(m, MessageSystemAttributeName::MessageGroupId), None);
    assert_eq!(system(m, MessageSystemAttributeName::MessageDeduplicationId), None);
    queue.delete().await;
}

#[tokio::test]
async fn context_ids_that_are_no_fifo_id_are_hashed_but_kept_in_contextid() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "out-long", true).await;
    let output = sqs_output(&client, &queue).await;
    let long = format!("tenant-{}", "x".repeat(300));
    let spaced = "commande é 7".to_string();
    let none = Attributes::new();
    let body = Bytes::from_static(b"b");
    output.handle(&release(&long, 3, &body, &none)).await.expect("sent");
    output.handle(&release(&spaced, 4, &body, &none)).await.expect("sent");
    let got = queue.receive(2).await;
    assert_eq!(got.len(), 2);
    for (m, (context, seq)) in got.iter().zip([(&long, 3), (&spaced, 4)]) {
        let hashed = hashed_context(context);
        assert!(hashed.starts_with("h-") && hashed.len() == 34);
        assert_eq!(attr(m, "contextId"), Some(("String", context.as_str())));
        assert_eq!(
            system(m, MessageSystemAttributeName::MessageGroupId),
            Some(hashed.as_str())
        );
        let dedup = format!("{hashed}:{seq}");
        assert_eq!(
            system(m, MessageSystemAttributeName::MessageDeduplicationId),
            Some(dedup.as_str())
        );
    }
    queue.delete().await;
}

#[tokio::test]
async fn at_most_ten_attributes_go_and_reseqs_two_always_do() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "out-attrs", true).await;
    let output = sqs_output(&client, &queue).await;
    let mut attrs = Attributes::new();
    for i in 0..12 {
        attrs.insert(format!("a{i:02}"), AttributeValue::string(format!("v{i}")));
    }
    attrs.insert("sequence".into(), AttributeValue::string("999"));
    let body = Bytes::from_static(b"many");
    output.handle(&release("c-1", 5, &body, &attrs)).await.expect("sent");
    let got = queue.receive(1).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    let names = m.message_attributes().expect("attributes");
    assert_eq!(names.len(), 10, "{names:?}");
    assert_eq!(attr(m, "contextId"), Some(("String", "c-1")));
    assert_eq!(attr(m, "sequence"), Some(("Number", "5")));
    for i in 0..8 {
        assert_eq!(attr(m, &format!("a{i:02}")), Some(("String", format!("v{i}").as_str())));
    }
    assert!(!names.contains_key("a08") && !names.contains_key("a11"));
    queue.delete().await;
}

#[tokio::test]
async fn bodies_sqs_cannot_carry_are_rejections_naming_the_queue() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "out-bad", false).await;
    let output = sqs_output(&client, &queue).await;
    let none = Attributes::new();
    let not_utf8 = Bytes::from_static(&[b'a', 0xff]);
    let nul = Bytes::from_static(b"a\0b");
    let empty = Bytes::new();
    let too_long = Bytes::from(vec![b'x'; 1024 * 1024 + 1]);
    for (body, says) in [
        (&not_utf8, "not UTF-8"),
        (&nul, "refuses"),
        (&empty, "empty"),
        (&too_long, "1048576"),
    ] {
        match output.handle(&release("c", 1, body, &none)).await {
            Err(HandlerError::Rejected(text)) => {
                assert!(text.contains(&queue.url) && text.contains(says), "{text}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    assert!(queue.receive(0).await.is_empty(), "nothing was sent");
    queue.delete().await;
}

#[tokio::test]
async fn a_context_id_sqs_strings_refuse_is_sent_as_binary_with_valid_fifo_ids() {
    let Some(client) = emulator().await else { return };
    let queue = Queue::new(&client, "out-binctx", true).await;
    let output = sqs_output(&client, &queue).await;
    let none = Attributes::new();
    let body = Bytes::from_static(b"ok");
    let control = "ctx\u{1}\u{FFFF}";
    output.handle(&release(control, 1, &body, &none)).await.expect("sent");
    let got = queue.receive(1).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    let value = &m.message_attributes().expect("attributes")["contextId"];
    assert_eq!(value.data_type(), "Binary");
    assert_eq!(value.binary_value().map(|b| b.as_ref()), Some(control.as_bytes()));
    assert_eq!(attr(m, "sequence"), Some(("Number", "1")));
    let hashed = hashed_context(control);
    assert_eq!(
        system(m, MessageSystemAttributeName::MessageGroupId),
        Some(hashed.as_str())
    );
    queue.delete().await;
}

#[tokio::test]
async fn a_missing_queue_fails_connect_and_a_queue_gone_later_is_retryable() {
    let Some(client) = emulator().await else { return };
    let endpoint = std::env::var("AWS_ENDPOINT_URL_SQS").unwrap_or_default();
    let missing = format!("{endpoint}/000000000000/{}", unique("missing"));
    let target = OutputTarget::Sqs {
        queue_url: missing.clone(),
    };
    match Output::connect(target, client.clone(), Duration::from_secs(5)).await {
        Err(err @ OutputError::Queue { .. }) => assert!(err.to_string().contains(&missing), "{err}"),
        Err(other) => panic!("expected a queue error, got {other}"),
        Ok(_) => panic!("a missing queue must fail at connect"),
    }

    let queue = Queue::new(&client, "out-gone", false).await;
    let output = sqs_output(&client, &queue).await;
    client
        .delete_queue()
        .queue_url(&queue.url)
        .send()
        .await
        .expect("deleted");
    let none = Attributes::new();
    let body = Bytes::from_static(b"b");
    match output.handle(&release("c", 1, &body, &none)).await {
        Err(HandlerError::Retryable(text)) => assert!(text.contains(&queue.url), "{text}"),
        other => panic!("expected a retryable error, got {other:?}"),
    }
    queue.delete().await;
}

// ---------------------------------------------------------------- http(s)://

/// What the test server answers to every request.
#[derive(Clone, Copy)]
struct Reply {
    status: u16,
    body: &'static str,
    delay: Duration,
}

impl Reply {
    fn status(status: u16, body: &'static str) -> Reply {
        Reply {
            status,
            body,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Clone, Debug)]
struct Received {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A tiny HTTP/1.1 server on 127.0.0.1 (keep-alive, Content-Length bodies) that records
/// every request and how many connections it accepted.
struct Server {
    url: String,
    requests: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
}

impl Server {
    fn start(reply: Reply) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook?x=1", listener.local_addr().expect("address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (recorded, counted) = (requests.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::SeqCst);
                let recorded = recorded.clone();
                std::thread::spawn(move || serve(stream, reply, &recorded));
            }
        });
        Server {
            url,
            requests,
            connections,
        }
    }

    fn requests(&self) -> Vec<Received> {
        self.requests.lock().expect("requests").clone()
    }
}

fn serve(stream: TcpStream, reply: Reply, recorded: &Mutex<Vec<Received>>) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length = headers
            .get("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        recorded.lock().expect("requests").push(Received {
            method,
            path,
            headers,
            body,
        });
        std::thread::sleep(reply.delay);
        let answer = format!(
            "HTTP/1.1 {} Test\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{}",
            reply.status,
            reply.body.len(),
            reply.body
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

async fn http_output(url: &str, timeout: Duration) -> Output {
    let target: OutputTarget = url.parse().expect("an http target");
    Output::connect(target, offline_client(), timeout)
        .await
        .expect("an http output")
}

#[tokio::test]
async fn http_posts_the_body_as_is_with_reseq_headers_on_one_connection() {
    let server = Server::start(Reply::status(200, "ok"));
    let output = http_output(&server.url, Duration::from_secs(5)).await;
    let attrs = attributes(&[("trace", "t")]);
    let json = Bytes::from_static(b"{\"orderId\":\"o 1\",\"n\":[1,2]}");
    output
        .handle(&release("ordre é/1", 1, &json, &attrs))
        .await
        .expect("200 is done");
    let binary = Bytes::from_static(&[0xff, b'{', 0x00]);
    let late = Release {
        late: true,
        attempt: 2,
        prev_seq: None,
        message_id: "m%2",
        ..release("plain-ctx", 5, &binary, &attrs)
    };
    output.handle(&late).await.expect("200 is done");
    let text = Bytes::from_static(b"not json");
    output
        .handle(&release("plain-ctx", 6, &text, &attrs))
        .await
        .expect("200 is done");

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/hook?x=1");
    assert_eq!(first.body, json.to_vec());
    let h = &first.headers;
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["reseq-context-id"], "ordre%20%C3%A9/1");
    assert_eq!(h["reseq-sequence"], "1");
    assert_eq!(h["reseq-prev-sequence"], "0");
    assert_eq!(h["reseq-message-id"], "m-1");
    assert_eq!(h["reseq-attempt"], "1");
    assert!(!h.contains_key("reseq-late"));

    let second = &requests[1];
    assert_eq!(second.body, binary.to_vec());
    let h = &second.headers;
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["reseq-context-id"], "plain-ctx");
    assert_eq!(h["reseq-sequence"], "5");
    assert!(!h.contains_key("reseq-prev-sequence"));
    assert_eq!(h["reseq-message-id"], "m%252");
    assert_eq!(h["reseq-late"], "true");
    assert_eq!(h["reseq-attempt"], "2");
    assert_eq!(requests[2].headers["content-type"], "application/octet-stream");

    assert_eq!(server.connections.load(Ordering::SeqCst), 1, "one connection, reused");
}

#[tokio::test]
async fn http_status_decides_between_retryable_and_permanent() {
    for (status, retryable) in [
        (400, false),
        (404, false),
        (422, false),
        (301, false),
        (408, true),
        (429, true),
        (500, true),
        (503, true),
    ] {
        let server = Server::start(Reply::status(status, "the server says why\nline two"));
        let output = http_output(&server.url, Duration::from_secs(5)).await;
        let body = Bytes::from_static(b"{}");
        let none = Attributes::new();
        let result = output.handle(&release("c", 1, &body, &none)).await;
        let text = match (&result, retryable) {
            (Err(HandlerError::Retryable(text)), true) | (Err(HandlerError::Permanent(text)), false) => text,
            _ => panic!("HTTP {status}: unexpected {result:?}"),
        };
        assert!(text.contains(&status.to_string()), "{text}");
        assert!(text.contains("the server says why line two"), "{text}");
        assert!(text.contains(&server.url), "{text}");
    }
}

#[tokio::test]
async fn an_answer_later_than_the_timeout_is_retryable() {
    let server = Server::start(Reply {
        status: 200,
        body: "too late",
        delay: Duration::from_secs(3),
    });
    let output = http_output(&server.url, Duration::from_millis(300)).await;
    let body = Bytes::from_static(b"{}");
    let none = Attributes::new();
    let started = std::time::Instant::now();
    match output.handle(&release("c", 1, &body, &none)).await {
        Err(HandlerError::Retryable(text)) => assert!(text.contains("within"), "{text}"),
        other => panic!("expected a retryable timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let url = format!("http://127.0.0.1:{port}/");
    let output = http_output(&url, Duration::from_secs(2)).await;
    let body = Bytes::from_static(b"{}");
    let none = Attributes::new();
    match output.handle(&release("c", 1, &body, &none)).await {
        Err(HandlerError::Retryable(text)) => assert!(text.contains(&url), "{text}"),
        other => panic!("expected a retryable error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_https_output_builds_its_tls_client_without_any_request() {
    http_output("https://reseq.invalid/hook", Duration::from_secs(1)).await;
}
