//! What the SQS tests share: the LocalStack guard, queues of a test's own, and a client
//! that never sends.
#![allow(dead_code)] // Each test file uses its own part of this module.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Region};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use reseq_core::{AttributeValue, Attributes};

/// The SQS client of the emulator, or `None` (the test returns at once) when
/// `AWS_ENDPOINT_URL_SQS` is not set. With `RESEQ_REQUIRE_EMULATORS=1` that fails instead.
/// Never lets a test reach real AWS: without an explicit endpoint nothing runs.
pub async fn emulator() -> Option<Client> {
    if std::env::var("AWS_ENDPOINT_URL_SQS").is_ok_and(|url| !url.is_empty()) {
        let config = aws_config::load_defaults(BehaviorVersion::latest()).await;
        return Some(Client::new(&config));
    }
    let message = "the SQS tests need LocalStack, and AWS_ENDPOINT_URL_SQS is not set: run `scripts/emulators.sh \
                   start` and `eval \"$(scripts/emulators.sh env)\"`, then test again";
    if std::env::var("RESEQ_REQUIRE_EMULATORS").is_ok_and(|v| v == "1") {
        panic!("{message} (RESEQ_REQUIRE_EMULATORS=1: these tests must run, not be skipped)");
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        let _ = writeln!(std::io::stderr(), "skipped: {message}");
    });
    None
}

/// A client that never sends anything.
pub fn offline_client() -> Client {
    Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .build(),
    )
}

pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

/// A new queue of the test's own (deleted at the end of a test that passes).
pub struct Queue {
    pub client: Client,
    pub url: String,
}

impl Queue {
    pub async fn new(client: &Client, prefix: &str, fifo: bool) -> Queue {
        let mut name = unique(prefix);
        let mut request = client.create_queue();
        if fifo {
            name.push_str(".fifo");
            request = request.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let url = request
            .queue_name(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating queue {name}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))
            .queue_url
            .expect("a queue URL");
        Queue {
            client: client.clone(),
            url,
        }
    }

    pub async fn delete(self) {
        let _ = self.client.delete_queue().queue_url(&self.url).send().await;
    }

    /// Receives (and deletes) until `expected` messages came, then waits a second more
    /// for any unexpected extra one.
    pub async fn receive(&self, expected: usize) -> Vec<Message> {
        let mut got = Vec::new();
        let mut empty_after_expected = false;
        for _ in 0..20 {
            let out = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .expect("receive");
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() && got.len() >= expected {
                if empty_after_expected {
                    break;
                }
                empty_after_expected = true;
            }
            for m in messages {
                if let Some(handle) = m.receipt_handle() {
                    self.client
                        .delete_message()
                        .queue_url(&self.url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .expect("delete");
                }
                got.push(m);
            }
        }
        got
    }
}

/// A message attribute as (data type, string value).
pub fn attr<'m>(m: &'m Message, name: &str) -> Option<(&'m str, &'m str)> {
    let value = m.message_attributes()?.get(name)?;
    Some((value.data_type(), value.string_value()?))
}

/// A system attribute (MessageGroupId, …).
pub fn system(m: &Message, name: MessageSystemAttributeName) -> Option<&str> {
    m.attributes()?.get(&name).map(String::as_str)
}

/// String attributes from pairs.
pub fn attributes(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), AttributeValue::string(*v)))
        .collect()
}
