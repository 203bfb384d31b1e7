//! `reseq init` against the local stand-ins (scripts/emulators.sh): the table and the
//! queues are created, a second run finds them, and the input queue redrives to the DLQ.

use std::process::Command;

use aws_sdk_sqs::types::QueueAttributeName;

mod common;
use common::emulators;

fn init(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_reseq"))
        .arg("init")
        .args(args)
        .output()
        .expect("run reseq init");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn init_creates_the_table_and_queues_once_and_the_input_queue_redrives_to_the_dlq() {
    if emulators().is_none() {
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!("{}-{nanos}", std::process::id());
    let (table, prefix) = (format!("init-{id}"), format!("init-{id}"));
    let args = ["--table", &table, "--with-queues", "--queue-prefix", &prefix];
    let (ok, first, err) = init(&args);
    assert!(ok, "{err}");
    assert!(first.contains(&format!("table  created {table}")), "{first}");
    let (ok, second, err) = init(&args);
    assert!(ok, "a second run is fine: {err}");
    assert!(second.contains(&format!("table  exists  {table}")), "{second}");

    let url = |role: &str| {
        second
            .lines()
            .find_map(|l| l.strip_prefix(&format!("queue  {role:<6} ")))
            .unwrap_or_else(|| panic!("no {role} queue in {second}"))
            .to_string()
    };
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let attrs = |queue: String| {
        let sqs = sqs.clone();
        async move {
            sqs.get_queue_attributes()
                .queue_url(queue)
                .attribute_names(QueueAttributeName::All)
                .send()
                .await
                .unwrap()
                .attributes
                .unwrap_or_default()
        }
    };
    let input = attrs(url("input")).await;
    let dlq = attrs(url("dlq")).await;
    let output = attrs(url("output")).await;
    for queue in [&input, &dlq, &output] {
        assert_eq!(
            queue.get(&QueueAttributeName::FifoQueue).map(String::as_str),
            Some("true")
        );
    }
    let redrive: serde_json::Value =
        serde_json::from_str(input.get(&QueueAttributeName::RedrivePolicy).expect("a redrive policy")).unwrap();
    assert_eq!(
        redrive["deadLetterTargetArn"].as_str(),
        dlq.get(&QueueAttributeName::QueueArn).map(String::as_str)
    );
    assert_eq!(redrive["maxReceiveCount"].to_string().trim_matches('"'), "5");
}

#[test]
fn init_without_a_reachable_dynamodb_fails_naming_the_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_reseq"))
        .args(["init", "--table", "nowhere"])
        .env("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .expect("run reseq init");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere"), "the error names the table: {err}");
    assert!(!err.contains("panicked"), "{err}");
}
