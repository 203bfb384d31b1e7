//! `reseq redrive`: moves dead letters from the DLQ back to the input queue, once their
//! cause is fixed (SPEC §6).
//!
//! Each message is sent first and deleted from the DLQ after: a stop halfway (Ctrl-C, a
//! crash) repeats at most the batch in flight, never loses one. The repeat is harmless:
//! on a FIFO queue the preserved `MessageDeduplicationId` makes SQS drop it within its
//! five-minute window, and reseq drops any copy of a released position as a duplicate.
//! `MessageGroupId` and the message attributes are preserved, less `reseqReason` and
//! `reseqDetail`. `--reason` moves only the dead letters of those reasons; the others are
//! made visible again when the run ends. SQS FIFO semantics limit what one run reaches: a
//! group whose first message stays (filtered out) hides the group's later messages.

use std::collections::HashSet;
use std::process::ExitCode;

use anyhow::{Context, Result};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName,
    QueueAttributeName,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use reseq_core::Reason;

#[derive(Args, Clone, Debug)]
pub struct RedriveArgs {
    /// The dead-letter queue to move messages out of.
    #[arg(long, env = "RESEQ_DLQ_URL", value_name = "URL")]
    pub dlq_url: String,
    /// The queue to move them to (the worker's input queue).
    #[arg(long, env = "RESEQ_QUEUE_URL", value_name = "URL")]
    pub queue_url: String,
    /// Move only dead letters with this reseqReason (repeatable). Default: every message.
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<Reason>,
    /// Show what would move, move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
    /// One JSON object per message on stdout instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

/// The attributes reseq's DLQ adds: not sent back.
const DLQ_ATTRIBUTES: [&str; 2] = ["reseqReason", "reseqDetail"];

pub fn main(args: RedriveArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: RedriveArgs) -> Result<ExitCode> {
    let sqs = reseq_settings::sqs_client().await;
    let depth = match queue_depth(&sqs, &args.dlq_url).await {
        Ok(depth) => depth,
        Err(err) => {
            eprintln!("reseq: --dlq-url {}: {err}", args.dlq_url);
            return Ok(ExitCode::from(2));
        }
    };
    if let Err(err) = queue_depth(&sqs, &args.queue_url).await {
        eprintln!("reseq: --queue-url {}: {err}", args.queue_url);
        return Ok(ExitCode::from(2));
    }
    let fifo = args.queue_url.ends_with(".fifo");
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(depth).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} dead letters looked at, {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    let mut seen: HashSet<String> = HashSet::new();
    // Receipt handles of messages left in the DLQ: made visible again at the end.
    let mut kept: Vec<(String, String)> = Vec::new();
    let (mut moved, mut left, mut empty_receives) = (0u64, 0u64, 0);
    'run: loop {
        if args.max.is_some_and(|max| moved >= max) || empty_receives >= 2 {
            break;
        }
        let received = tokio::select! {
            received = receive(&sqs, &args.dlq_url) => received?,
            _ = &mut stop => {
                bar.println("stopping: nothing in flight is lost (sent messages are deleted from the DLQ only after)");
                break 'run;
            }
        };
        let fresh: Vec<Message> = received
            .into_iter()
            .filter(|m| m.message_id().is_some_and(|id| seen.insert(id.to_string())))
            .collect();
        if fresh.is_empty() {
            empty_receives += 1;
            continue;
        }
        empty_receives = 0;
        let mut done: Vec<(String, String)> = Vec::new();
        for message in fresh {
            bar.inc(1);
            let id = message.message_id().unwrap_or_default().to_string();
            let handle = message.receipt_handle().unwrap_or_default().to_string();
            let reason = string_attribute(&message, "reseqReason");
            let wanted = args.reasons.is_empty() || args.reasons.iter().any(|r| Some(r.as_str()) == reason.as_deref());
            let over = args.max.is_some_and(|max| moved >= max);
            let group = system_attribute(&message, MessageSystemAttributeName::MessageGroupId);
            if args.json {
                let line = serde_json::json!({
                    "message_id": id,
                    "reason": reason,
                    "group": group,
                    "action": if !wanted || over { "kept" } else if args.dry_run { "would-move" } else { "moved" },
                });
                println!("{line}");
            }
            if !wanted || over {
                left += 1;
                kept.push((id, handle));
                continue;
            }
            if args.dry_run {
                moved += 1;
                kept.push((id, handle));
                continue;
            }
            send_back(&sqs, &args.queue_url, fifo, &message)
                .await
                .with_context(|| format!("sending DLQ message {id} to --queue-url {}", args.queue_url))?;
            moved += 1;
            done.push((id, handle));
        }
        delete(&sqs, &args.dlq_url, &done).await?;
        bar.set_message(format!("{moved} moved, {left} kept"));
    }
    release(&sqs, &args.dlq_url, &kept).await;
    bar.finish_and_clear();
    let verb = if args.dry_run { "would move" } else { "moved" };
    eprintln!(
        "reseq redrive: {verb} {moved} message(s) from {} to {}; {left} filtered out and kept in the DLQ",
        args.dlq_url, args.queue_url
    );
    Ok(ExitCode::SUCCESS)
}

async fn queue_depth(sqs: &Client, url: &str) -> Result<u64, String> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| reseq_sqs::describe_sqs_error(&e))?;
    Ok(out
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

async fn receive(sqs: &Client, dlq: &str) -> Result<Vec<Message>> {
    let out = sqs
        .receive_message()
        .queue_url(dlq)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .visibility_timeout(60)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("receiving from --dlq-url {dlq}: {}", reseq_sqs::describe_sqs_error(&e)))?;
    Ok(out.messages.unwrap_or_default())
}

async fn send_back(sqs: &Client, queue: &str, fifo: bool, message: &Message) -> Result<()> {
    let attributes = message.message_attributes().map(|attrs| {
        attrs
            .iter()
            .filter(|(name, _)| !DLQ_ATTRIBUTES.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    });
    let mut send = sqs
        .send_message()
        .queue_url(queue)
        .message_body(message.body().unwrap_or_default())
        .set_message_attributes(attributes);
    if fifo {
        let group = system_attribute(message, MessageSystemAttributeName::MessageGroupId)
            .unwrap_or_else(|| "reseq-redrive".to_string());
        let dedup = system_attribute(message, MessageSystemAttributeName::MessageDeduplicationId)
            .or_else(|| message.message_id().map(str::to_string));
        send = send.message_group_id(group).set_message_deduplication_id(dedup);
    }
    send.send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", reseq_sqs::describe_sqs_error(&e)))?;
    Ok(())
}

async fn delete(sqs: &Client, dlq: &str, done: &[(String, String)]) -> Result<()> {
    for chunk in done.chunks(10) {
        let entries = chunk.iter().enumerate().map(|(i, (_, handle))| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(handle)
                .build()
        });
        let entries: Result<Vec<_>, _> = entries.collect();
        let out = sqs
            .delete_message_batch()
            .queue_url(dlq)
            .set_entries(Some(entries.context("building DeleteMessageBatch")?))
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "deleting moved messages from --dlq-url {dlq}: {}",
                    reseq_sqs::describe_sqs_error(&e)
                )
            })?;
        for failed in out.failed() {
            // Sent but not deleted: it stays in the DLQ and a later run sends it again
            // (deduplicated on FIFO within five minutes, a duplicate to reseq after).
            eprintln!(
                "reseq: a moved message stays in the DLQ as well: {}",
                failed.message().unwrap_or("unknown error")
            );
        }
    }
    Ok(())
}

/// Makes the messages left in the DLQ visible again at once.
async fn release(sqs: &Client, dlq: &str, kept: &[(String, String)]) {
    for chunk in kept.chunks(10) {
        let entries: Result<Vec<_>, _> = chunk
            .iter()
            .enumerate()
            .map(|(i, (_, handle))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .build()
            })
            .collect();
        let Ok(entries) = entries else { continue };
        if let Err(e) = sqs
            .change_message_visibility_batch()
            .queue_url(dlq)
            .set_entries(Some(entries))
            .send()
            .await
        {
            eprintln!(
                "reseq: messages kept in the DLQ become visible again after their visibility timeout (60s): {}",
                reseq_sqs::describe_sqs_error(&e)
            );
        }
    }
}

fn string_attribute(message: &Message, name: &str) -> Option<String> {
    message
        .message_attributes()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value())
        .map(str::to_string)
}

fn system_attribute(message: &Message, name: MessageSystemAttributeName) -> Option<String> {
    message.attributes().and_then(|a| a.get(&name)).cloned()
}
