//! The long-polling worker behind `reseq worker` (SPEC §6): several receive loops, each
//! receiving up to 10 messages with long polling and running them through the
//! [`Processor`] (the batch's contexts side by side), extending the messages' visibility
//! while the handler runs and deleting a message only after its commit; a timer sweep;
//! and a graceful stop (SIGTERM, or `--exit-when-idle`) that lets every batch in flight
//! finish, so that nothing half-done is deleted.
//!
//! All loops run as futures of one task: the work is I/O-bound, and nothing needs to be
//! `'static`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
    QueueAttributeName,
};
use futures_util::future::join_all;
use reseq_core::{Clock, DeadLetterSink, Duration, Handler, Hold, StagingStore};
use tokio::sync::watch;

use crate::batch::{Processor, Verdict};
use crate::message::{Received, from_sdk};

/// How the worker receives (`reseq_settings::ReceiveArgs` is the same, as flags).
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The input queue, FIFO or standard.
    pub queue_url: String,
    /// Receive loops: each has at most one batch (10 messages) in flight.
    pub receivers: usize,
    /// Long polling: how long one receive waits for a message (at most 20 s).
    pub wait_time: Duration,
    /// `--visibility-timeout`: the visibility a receive asks for. `None`: the queue's own
    /// (`VisibilityTimeout` is then not sent with `ReceiveMessage`). Either way it is
    /// extended while the batch runs.
    pub visibility_timeout: Option<Duration>,
    /// Stop once nothing was received, processed or swept for this long.
    pub exit_when_idle: Option<Duration>,
    /// How often the timer sweep looks for due contexts.
    pub sweep_every: Duration,
    /// No release starts later than this into a batch (the lease outlives it).
    pub release_budget: Duration,
}

/// What the worker did, for the line it prints at exit.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    /// Messages received (a redelivery counts again).
    pub received: u64,
    /// Messages deleted: settled (released, staged, dead-lettered, duplicates).
    pub deleted: u64,
    /// Receives of messages left on the queue (held, invalid for redrive, failed deletes).
    pub left: u64,
    /// Deletes that failed (the message comes back and is dropped as a duplicate).
    pub delete_failures: u64,
    /// Contexts the timer sweep looked at.
    pub contexts_swept: u64,
    /// Why it stopped: the stop signal, idle, or the queue.
    pub stopped_by: String,
}

/// Why the worker cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The input queue is missing or cannot be used (no retry fixes it).
    #[error(
        "cannot use queue {queue_url}: {detail} (check --queue-url, the region and the credentials' SQS permissions)"
    )]
    Queue {
        /// The input queue.
        queue_url: String,
        /// What SQS answered.
        detail: String,
    },
}

/// What the worker reads about its input queue at start, in the one `GetQueueAttributes`
/// call that also checks that the queue exists and can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue's own `VisibilityTimeout`.
    pub visibility_timeout: Duration,
    /// `maxReceiveCount` of the queue's `RedrivePolicy`, when it has one.
    pub max_receive_count: Option<u32>,
}

/// Reads the queue's `VisibilityTimeout` and `RedrivePolicy`; a wrong URL, a missing
/// queue or missing permissions fail here, at start.
pub async fn inspect_queue(sqs: &Client, queue_url: &str) -> Result<QueueInfo, WorkerError> {
    let output = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| WorkerError::Queue {
            queue_url: queue_url.to_string(),
            detail: crate::describe_sqs_error(&e),
        })?;
    let attributes = output.attributes.unwrap_or_default();
    let visibility_timeout = attributes
        .get(&QueueAttributeName::VisibilityTimeout)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs);
    let max_receive_count = attributes
        .get(&QueueAttributeName::RedrivePolicy)
        .and_then(|policy| max_receive_count(policy));
    Ok(QueueInfo {
        visibility_timeout,
        max_receive_count,
    })
}

/// `maxReceiveCount` of a `RedrivePolicy` (a JSON object; the count a number or a string).
pub fn max_receive_count(policy: &str) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_str(policy).ok()?;
    match value.get("maxReceiveCount")? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// After how many receives a message held back by `--max-staged` is staged anyway: the
/// setting, unless the queue's redrive would move the message to its DLQ first
/// (`maxReceiveCount` ≤ the setting): then `maxReceiveCount − 1`, at least 1.
pub fn stage_held_after(setting: u32, max_receive_count: Option<u32>) -> u32 {
    match max_receive_count {
        Some(max) if max <= setting => max.saturating_sub(1).max(1),
        _ => setting.max(1),
    }
}

/// The timeouts of one `ReceiveMessage` that long-polls `wait`: the client's attempt
/// timeout (10 s) would cut every long poll, so a receive gets the wait plus that much.
pub fn receive_timeouts(wait: Duration) -> aws_sdk_sqs::config::timeout::TimeoutConfig {
    let attempt = wait.as_std().min(std::time::Duration::from_secs(20)) + std::time::Duration::from_secs(10);
    aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .operation_attempt_timeout(attempt)
        .operation_timeout(attempt * 2)
        .build()
}

/// Error codes that no retry fixes: the worker stops and says which queue.
const PERMANENT_CODES: [&str; 6] = [
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidAddress",
    "InvalidClientTokenId",
];

/// The long-polling worker: [`WorkerConfig::receivers`] receive loops (each with one batch
/// of up to 10 in flight, its visibility extended while the handler runs, each message
/// deleted only once settled) and a timer sweep, all on one task, until a stop.
/// `reseq_settings::ResequencerBuilder::run_worker` makes one on DynamoDB, with
/// [`inspect_queue`] and [`stage_held_after`] applied first.
pub struct Worker<S, C, H, D> {
    sqs: Client,
    processor: Processor<S, C, H, D>,
    config: WorkerConfig,
    /// The visibility received messages have: `--visibility-timeout`, else the queue's.
    visibility: Duration,
    started: Instant,
    /// Milliseconds since `started` of the last receive, batch or sweep that did work.
    last_activity: AtomicU64,
    in_flight: AtomicUsize,
    received: AtomicU64,
    deleted: AtomicU64,
    left: AtomicU64,
    delete_failures: AtomicU64,
    contexts_swept: AtomicU64,
}

impl<S: StagingStore, C: Clock, H: Handler, D: DeadLetterSink> Worker<S, C, H, D> {
    /// `queue`: what [`inspect_queue`] read about `config.queue_url` at start.
    pub fn new(sqs: Client, processor: Processor<S, C, H, D>, config: WorkerConfig, queue: QueueInfo) -> Self {
        Worker {
            visibility: config.visibility_timeout.unwrap_or(queue.visibility_timeout),
            sqs,
            processor,
            config,
            started: Instant::now(),
            last_activity: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            left: AtomicU64::new(0),
            delete_failures: AtomicU64::new(0),
            contexts_swept: AtomicU64::new(0),
        }
    }

    /// The processor: after [`Worker::run`], its engine's stats and its store's cost.
    pub fn processor(&self) -> &Processor<S, C, H, D> {
        &self.processor
    }

    /// The visibility received messages have (and are extended to while their batch runs).
    pub fn visibility(&self) -> Duration {
        self.visibility
    }

    /// Runs until `shutdown` resolves, the worker has been idle for `exit_when_idle`, or
    /// the queue turns out unusable (the caller checked it with [`inspect_queue`]). Batches in flight always finish first.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<WorkerReport, WorkerError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let receivers =
            join_all((0..self.config.receivers.max(1)).map(|_| self.receive_loop(stop_rx.clone(), &stop_tx)));
        let sweeper = self.sweep_loop(stop_rx.clone());
        let mut stopped = stop_rx.clone();
        let supervisor = async {
            let reason = tokio::select! {
                _ = shutdown => "signal",
                _ = self.idle() => "idle",
                _ = stopped.wait_for(|stop| *stop) => "error",
            };
            stop_tx.send_replace(true);
            reason
        };
        let (results, (), stopped_by) = tokio::join!(receivers, sweeper, supervisor);
        for result in results {
            result?;
        }
        Ok(WorkerReport {
            received: self.received.load(Relaxed),
            deleted: self.deleted.load(Relaxed),
            left: self.left.load(Relaxed),
            delete_failures: self.delete_failures.load(Relaxed),
            contexts_swept: self.contexts_swept.load(Relaxed),
            stopped_by: stopped_by.to_string(),
        })
    }

    fn queue_error(&self, detail: &str) -> WorkerError {
        WorkerError::Queue {
            queue_url: self.config.queue_url.clone(),
            detail: detail.to_string(),
        }
    }

    fn touch(&self) {
        self.last_activity
            .fetch_max(self.started.elapsed().as_millis() as u64, Relaxed);
    }

    /// Resolves once nothing happened for `exit_when_idle`; never without it.
    async fn idle(&self) {
        let Some(idle) = self.config.exit_when_idle else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now = self.started.elapsed().as_millis() as u64;
            let quiet = now.saturating_sub(self.last_activity.load(Relaxed));
            if self.in_flight.load(Relaxed) == 0 && quiet >= idle.0 {
                return;
            }
        }
    }

    async fn receive_loop(
        &self,
        mut stop: watch::Receiver<bool>,
        stop_tx: &watch::Sender<bool>,
    ) -> Result<(), WorkerError> {
        let mut backoff = std::time::Duration::from_secs(1);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let request = self
                .sqs
                .receive_message()
                .queue_url(&self.config.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(seconds(self.config.wait_time).min(20))
                .set_visibility_timeout(self.config.visibility_timeout.map(seconds))
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
                .customize()
                .config_override(
                    aws_sdk_sqs::config::Builder::default().timeout_config(receive_timeouts(self.config.wait_time)),
                )
                .send();
            // A receive cut short by a stop may have taken messages: they come back after
            // their visibility timeout, undeleted.
            let response = tokio::select! {
                response = request => response,
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
            };
            let messages = match response {
                Ok(output) => {
                    backoff = std::time::Duration::from_secs(1);
                    output.messages.unwrap_or_default()
                }
                Err(err) => {
                    let detail = crate::describe_sqs_error(&err);
                    if err.code().is_some_and(|code| PERMANENT_CODES.contains(&code)) {
                        stop_tx.send_replace(true);
                        return Err(self.queue_error(&detail));
                    }
                    tracing::warn!(queue = %self.config.queue_url, error = %detail, "receive failed; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {},
                        _ = stop.wait_for(|stop| *stop) => return Ok(()),
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(20));
                    continue;
                }
            };
            if messages.is_empty() {
                continue;
            }
            self.in_flight.fetch_add(1, Relaxed);
            self.touch();
            let now = self.processor.engine().clock().now();
            let received: Vec<Received> = messages.into_iter().filter_map(|m| from_sdk(m, now)).collect();
            self.received.fetch_add(received.len() as u64, Relaxed);
            let raws = received.iter().map(|r| r.raw.clone()).collect();
            let deadline = Some(now.plus(self.config.release_budget));
            let verdicts = self
                .with_heartbeat(&received, self.processor.process(raws, deadline))
                .await;
            self.settle(&received, &verdicts).await;
            self.touch();
            self.in_flight.fetch_sub(1, Relaxed);
        }
    }

    /// Runs `work`, extending the visibility of `received` every third of the visibility
    /// timeout, so that a slow handler does not let SQS hand the batch to another worker.
    async fn with_heartbeat<F: Future>(&self, received: &[Received], work: F) -> F::Output {
        let period = (self.visibility.as_std() / 3).max(std::time::Duration::from_millis(200));
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                _ = tokio::time::sleep(period) => {
                    let entries = received.iter().map(|r| (r, seconds(self.visibility)));
                    self.change_visibility(entries).await;
                }
            }
        }
    }

    /// Deletes what may be deleted; brings back sooner what a retry may settle: a busy
    /// context or one held back for capacity after 1 s, a failure after 5 s, and an invalid
    /// message at once (so that the queue's redrive moves it after `maxReceiveCount` quick
    /// receives instead of as many visibility timeouts).
    async fn settle(&self, received: &[Received], verdicts: &[Verdict]) {
        let mut deletable = Vec::new();
        let mut retry_soon = Vec::new();
        for (message, verdict) in received.iter().zip(verdicts) {
            match verdict {
                v if v.deletable() => deletable.push(message),
                Verdict::Held(Hold::Busy | Hold::Capacity) => retry_soon.push((message, 1)),
                Verdict::Invalid(_) => retry_soon.push((message, 0)),
                Verdict::Held(Hold::Failed(reason)) => {
                    tracing::warn!(message_id = %message.raw.message_id, %reason, "not settled; SQS delivers it again");
                    retry_soon.push((message, 5));
                }
                _ => {}
            }
        }
        self.left.fetch_add((received.len() - deletable.len()) as u64, Relaxed);
        if !retry_soon.is_empty() {
            self.change_visibility(retry_soon.into_iter()).await;
        }
        if deletable.is_empty() {
            return;
        }
        let entries: Vec<DeleteMessageBatchRequestEntry> = deletable
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&m.receipt_handle)
                    .build()
                    .ok()
            })
            .collect();
        let result = self
            .sqs
            .delete_message_batch()
            .queue_url(&self.config.queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(output) => {
                let failed = output.failed.len() as u64;
                for f in &output.failed {
                    tracing::warn!(queue = %self.config.queue_url, id = %f.id, code = %f.code, "delete failed; the message comes back and is a duplicate then");
                }
                self.deleted.fetch_add(deletable.len() as u64 - failed, Relaxed);
                self.delete_failures.fetch_add(failed, Relaxed);
            }
            Err(err) => {
                tracing::warn!(queue = %self.config.queue_url, error = %crate::describe_sqs_error(&err), "delete failed; the messages come back and are duplicates then");
                self.delete_failures.fetch_add(deletable.len() as u64, Relaxed);
            }
        }
    }

    async fn change_visibility<'a>(&self, entries: impl Iterator<Item = (&'a Received, i32)>) {
        let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = entries
            .enumerate()
            .filter_map(|(i, (m, secs))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&m.receipt_handle)
                    .visibility_timeout(secs)
                    .build()
                    .ok()
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        let result = self
            .sqs
            .change_message_visibility_batch()
            .queue_url(&self.config.queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        if let Err(err) = result {
            tracing::warn!(queue = %self.config.queue_url, error = %crate::describe_sqs_error(&err), "could not change visibility");
        }
    }

    async fn sweep_loop(&self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.sweep_every.as_std()) => {},
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let deadline = Some(self.processor.engine().clock().now().plus(self.config.release_budget));
            match self.processor.sweep(100, deadline).await {
                Ok(0) => {}
                Ok(found) => {
                    self.contexts_swept.fetch_add(found as u64, Relaxed);
                    self.touch();
                }
                Err(err) => tracing::warn!(error = %err, "timer sweep failed; trying again at the next one"),
            }
        }
    }
}

fn seconds(d: Duration) -> i32 {
    (d.0 / 1000).clamp(0, 43_200) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redrive_policys_count_reads_as_number_or_string() {
        let arn = "arn:aws:sqs:us-east-1:000000000000:dlq";
        assert_eq!(
            max_receive_count(&format!(
                "{{\"deadLetterTargetArn\":\"{arn}\",\"maxReceiveCount\":\"3\"}}"
            )),
            Some(3)
        );
        assert_eq!(max_receive_count("{\"maxReceiveCount\":5}"), Some(5));
        assert_eq!(max_receive_count("{}"), None);
        assert_eq!(max_receive_count("not json"), None);
    }

    #[test]
    fn held_messages_are_staged_before_the_redrive_could_move_them() {
        assert_eq!(stage_held_after(3, None), 3);
        assert_eq!(stage_held_after(3, Some(10)), 3);
        assert_eq!(stage_held_after(3, Some(3)), 2);
        assert_eq!(stage_held_after(3, Some(2)), 1);
        assert_eq!(stage_held_after(3, Some(1)), 1, "at least 1");
        assert_eq!(stage_held_after(5, Some(4)), 3);
    }
}
