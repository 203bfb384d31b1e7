//! The `bootstrap` binary against a Lambda Runtime API stand-in that omits the
//! `Lambda-Runtime-Deadline-Ms` header: `lambda_runtime` alone panics on such an
//! invocation; the function must answer it instead (its deadline unknown, only the release
//! budget bounding it). Needs DynamoDB Local for the function's table
//! (`eval "$(scripts/emulators.sh env)"`); skips without it, unless
//! `RESEQ_REQUIRE_EMULATORS=1`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// One request: its path and body.
fn read_request(stream: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut line = String::new();
    stream.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    Some((path, body))
}

/// A Runtime API that hands out one scheduled event without a deadline header, reports
/// what the function posts back, and then keeps the next `/next` waiting.
fn runtime_api() -> (u16, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    let handed_out = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            let handed_out = handed_out.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                while let Some((path, body)) = read_request(&mut reader) {
                    if path.ends_with("/invocation/next") {
                        if handed_out.swap(true, Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_secs(3600));
                            return;
                        }
                        let event = br#"{"source":"aws.events","detail-type":"Scheduled Event","detail":{}}"#;
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: req-1\r\nLambda-Runtime-Invoked-Function-Arn: \
                             arn:aws:lambda:us-east-1:000000000000:function:reseq\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n",
                            event.len()
                        );
                        let _ = writer.write_all(head.as_bytes());
                        let _ = writer.write_all(event);
                    } else {
                        let _ = tx.send((path, String::from_utf8_lossy(&body).into_owned()));
                        let _ = writer.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
                    }
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn an_invocation_without_a_deadline_header_is_answered_not_a_panic() {
    let Some(dynamodb_endpoint) = var("AWS_ENDPOINT_URL_DYNAMODB") else {
        assert!(
            var("RESEQ_REQUIRE_EMULATORS").as_deref() != Some("1"),
            "AWS_ENDPOINT_URL_DYNAMODB is not set: run `eval \"$(scripts/emulators.sh env)\"`"
        );
        eprintln!("skipped: AWS_ENDPOINT_URL_DYNAMODB is not set (scripts/emulators.sh)");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let table = format!("lam-deadline-{}-{nanos:x}", std::process::id());
    let dynamodb = reseq_dynamodb::load_client(&reseq_dynamodb::DynamoConfig::default()).await;
    reseq_dynamodb::create_table(&dynamodb, &table)
        .await
        .unwrap_or_else(|e| panic!("creating the table {table}: {e}"));

    let (port, posted) = runtime_api();
    let mut function = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", "reseq")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_ENDPOINT_URL_DYNAMODB", &dynamodb_endpoint)
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
        .env("RESEQ_TABLE", &table)
        .env("RESEQ_OUTPUT", "stdout")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bootstrap");

    // Waits for the function's answer, or for it to exit (a panic, a failed start).
    let started = Instant::now();
    let answer = loop {
        if let Ok(answer) = posted.recv_timeout(Duration::from_millis(100)) {
            break Some(answer);
        }
        if function.try_wait().ok().flatten().is_some() || started.elapsed() > Duration::from_secs(60) {
            break None;
        }
    };
    let _ = function.kill();
    let output = function.wait_with_output().expect("the function's log");
    // Lambda's subscriber logs to stdout.
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let (path, body) = answer.unwrap_or_else(|| panic!("the function did not answer; its log:\n{log}"));
    assert_eq!(path, "/2018-06-01/runtime/invocation/req-1/response", "{body}\n{log}");
    assert!(body.contains("\"swept\""), "{body}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("Deadline"), "the missing header is logged: {log}");
}
