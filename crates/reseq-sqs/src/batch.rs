//! One batch of SQS messages through the engine, shared by the worker and the Lambda
//! function: extraction, invalid messages (`--invalid`), the contexts of the batch run
//! side by side (each context in order, in one engine call), and one [`Verdict`] per
//! message saying whether it may be deleted from the queue.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use futures_util::future::join_all;
use reseq_core::{
    AttentionList, AttentionQuery, Clock, DeadLetter, DeadLetterSink, Duration, Engine, Envelope, Extractor, Handler,
    Hold, Millis, Outcome, RawMessage, Reason, Rejection, StagingStore, StoreError,
};
use reseq_metrics::{BLOCKED_GAUGE_LIMIT, Observation, Telemetry};

/// How often a sweep reads the attention index for the gauges (32 small queries on
/// DynamoDB): often enough for a one-minute alarm period, cheap at any sweep interval.
/// Under a minute, so that a `rate(1 minute)` schedule arriving a little early still
/// reads them every time.
pub const GAUGE_EVERY: Duration = Duration::from_millis(50_000);

/// What happens to a message whose context id or position is missing or malformed
/// (`--invalid`, SPEC §1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InvalidPolicy {
    /// Leave it undeleted: the queue's redrive policy moves it to the queue's DLQ after
    /// `maxReceiveCount` receives.
    #[default]
    Redrive,
    /// Send it to `--dlq-url` with `reseqReason`/`reseqDetail`, then delete it.
    Dlq,
}

impl FromStr for InvalidPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redrive" => Ok(InvalidPolicy::Redrive),
            "dlq" => Ok(InvalidPolicy::Dlq),
            _ => Err(format!("{s:?} is not an invalid-message policy: use redrive or dlq")),
        }
    }
}

/// What became of one message of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The engine settled it (released, staged, duplicate, dead-lettered, dropped).
    Settled(Outcome),
    /// Invalid, and sent to the DLQ by `--invalid dlq`.
    Rejected(Reason),
    /// Invalid, and left for the queue's redrive policy (or the DLQ could not take it).
    Invalid(Rejection),
    /// Not settled: SQS delivers it again.
    Held(Hold),
}

impl Verdict {
    /// Whether the message may be deleted from the queue: only once it is durably staged,
    /// released and committed, or in a dead-letter queue (SPEC §4, no loss).
    pub fn deletable(&self) -> bool {
        matches!(self, Verdict::Settled(_) | Verdict::Rejected(_))
    }
}

/// The engine, its handler and DLQ, and how to read and reject SQS messages: one batch
/// of received messages in ([`Processor::process`]), one [`Verdict`] per message out —
/// whether it may be deleted from the queue — and the timer sweep
/// ([`Processor::sweep`]). The worker ([`crate::worker::Worker`]) and the Lambda function
/// ([`crate::lambda::handle`]) drive it; `reseq_settings::Resequencer` assembles it on
/// DynamoDB with the per-context lease every SQS processor needs.
///
/// The contract, on the in-memory store (context and position from the `contextId` and
/// `sequence` attributes, [`Extractor::default`]):
///
/// ```
/// use reseq_core::testing::{RecordingDlq, RecordingHandler};
/// use reseq_core::{AttributeValue, Engine, EngineConfig, Extractor, ManualClock, MemoryStore, Millis, RawMessage};
/// use reseq_sqs::batch::{InvalidPolicy, Processor};
///
/// let engine = Engine::new(MemoryStore::new(), ManualClock::new(Millis(0)), EngineConfig::default());
/// let processor = Processor::new(
///     engine,
///     Extractor::default(),
///     RecordingHandler::new(),
///     RecordingDlq::new(),
///     InvalidPolicy::Redrive,
/// );
/// let message = |id: &str, seq: u64| RawMessage {
///     message_id: id.into(),
///     body: format!("step {seq}").into(),
///     attributes: [
///         ("contextId".to_string(), AttributeValue::string("order-1")),
///         ("sequence".to_string(), AttributeValue::number(seq)),
///     ]
///     .into(),
///     ..RawMessage::default()
/// };
/// let no_attributes = RawMessage { message_id: "m-x".into(), body: "?".into(), ..RawMessage::default() };
///
/// let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// // Position 3 arrives first: staged, and deletable (it is durable in the store).
/// let verdicts = runtime.block_on(processor.process(vec![message("m-3", 3), no_attributes], None));
/// assert!(verdicts[0].deletable());
/// // No context id: invalid; under `--invalid redrive` it stays on the queue.
/// assert!(!verdicts[1].deletable());
/// // Positions 1 and 2 release 1, 2 and the waiting 3, in order.
/// let verdicts = runtime.block_on(processor.process(vec![message("m-2", 2), message("m-1", 1)], None));
/// assert!(verdicts.iter().all(|v| v.deletable()));
/// assert_eq!(processor.handler().seqs("order-1"), [1, 2, 3]);
/// ```
pub struct Processor<S, C, H, D> {
    engine: Engine<S, C>,
    extractor: Extractor,
    handler: H,
    dlq: D,
    invalid: InvalidPolicy,
    invalid_count: AtomicU64,
    /// Invalid messages by reason, and how many of them `--invalid dlq` dead-lettered:
    /// the engine never sees them, so the metrics count them here.
    invalid_by_reason: Mutex<BTreeMap<Reason, u64>>,
    invalid_dead_lettered: Mutex<BTreeMap<Reason, u64>>,
    /// Where the metrics of each batch and sweep go.
    telemetry: Telemetry,
    /// Sweeps run, failed, and contexts they looked at, since start (for the metrics).
    sweeps: AtomicU64,
    sweep_errors: AtomicU64,
    contexts_swept: AtomicU64,
    /// When a sweep last read the gauges (see [`GAUGE_EVERY`]).
    gauges_read_at: Mutex<Option<Millis>>,
}

impl<S: StagingStore, C: Clock, H: Handler, D: DeadLetterSink> Processor<S, C, H, D> {
    /// A processor on `engine`: messages are read by `extractor`, released to `handler`,
    /// dead-lettered to `dlq`, and invalid ones left to the queue or dead-lettered as
    /// `invalid` says. No metrics until [`Processor::with_telemetry`].
    pub fn new(engine: Engine<S, C>, extractor: Extractor, handler: H, dlq: D, invalid: InvalidPolicy) -> Self {
        Processor {
            engine,
            extractor,
            handler,
            dlq,
            invalid,
            invalid_count: AtomicU64::new(0),
            invalid_by_reason: Mutex::new(BTreeMap::new()),
            invalid_dead_lettered: Mutex::new(BTreeMap::new()),
            telemetry: Telemetry::off(),
            sweeps: AtomicU64::new(0),
            sweep_errors: AtomicU64::new(0),
            contexts_swept: AtomicU64::new(0),
            gauges_read_at: Mutex::new(None),
        }
    }

    /// This processor, writing one metrics record per batch and per sweep to `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Where the metrics go.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Every counter since start: the engine's, the invalid messages', the sweeps', and
    /// the store's consumed capacity.
    pub fn observation(&self) -> Observation {
        let invalid = self.invalid_by_reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let invalid_dead_lettered = self
            .invalid_dead_lettered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Observation::of(
            &self.engine.stats(),
            &invalid,
            &invalid_dead_lettered,
            self.engine.store().usage(),
        )
        .with_sweeps(
            self.sweeps.load(Relaxed),
            self.sweep_errors.load(Relaxed),
            self.contexts_swept.load(Relaxed),
        )
    }

    /// Blocked contexts and the oldest waiting one, from the store's attention index.
    pub async fn gauges(&self) -> Result<AttentionList, StoreError> {
        let query = AttentionQuery {
            blocked_limit: BLOCKED_GAUGE_LIMIT,
            waiting_before: self.engine_now(),
            waiting_limit: 1,
        };
        self.engine.store().attention(&query).await
    }

    fn record(&self, started: Instant, gauges: Option<AttentionList>) {
        let mut observation = self.observation().with_latencies(self.engine.take_release_latencies());
        observation.batch_duration_ms = Some(started.elapsed().as_millis() as u64);
        if let Some(attention) = gauges {
            observation = observation.with_gauges(&attention, self.engine_now());
        }
        self.telemetry.record(observation);
    }

    /// The engine: its [`Engine::stats`], its store, its clock.
    pub fn engine(&self) -> &Engine<S, C> {
        &self.engine
    }

    /// The handler released messages go to.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Where dead letters go.
    pub fn dlq(&self) -> &D {
        &self.dlq
    }

    /// Invalid messages seen since start.
    pub fn invalid_count(&self) -> u64 {
        self.invalid_count.load(Relaxed)
    }

    /// Processes one batch; one verdict per message, in the same order. No release starts
    /// at or after `deadline`. Everything settled is durable when this returns.
    pub async fn process(&self, batch: Vec<RawMessage>, deadline: Option<Millis>) -> Vec<Verdict> {
        let started = Instant::now();
        let verdicts = self.process_batch(batch, deadline).await;
        self.record(started, None);
        verdicts
    }

    async fn process_batch(&self, batch: Vec<RawMessage>, deadline: Option<Millis>) -> Vec<Verdict> {
        // Every message is either rejected here or handed to the engine below.
        let mut verdicts = vec![Verdict::Held(Hold::Failed(String::new())); batch.len()];
        // The batch's contexts in order of first appearance, each with its messages in
        // arrival order and their indexes in the batch.
        let mut slots: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<(Vec<usize>, Vec<Envelope>)> = Vec::new();
        for (index, raw) in batch.into_iter().enumerate() {
            match self.extractor.extract(raw.clone()) {
                Ok(env) => {
                    let next_slot = slots.len();
                    let slot = *slots.entry(env.context_id.clone()).or_insert(next_slot);
                    if slot == groups.len() {
                        groups.push((Vec::new(), Vec::new()));
                    }
                    groups[slot].0.push(index);
                    groups[slot].1.push(env);
                }
                Err(rejection) => verdicts[index] = self.reject(&raw, rejection).await,
            }
        }
        let runs = groups.into_iter().map(|(indexes, envelopes)| async move {
            let outcomes = self
                .engine
                .process_until(envelopes, &self.handler, &self.dlq, deadline)
                .await;
            (indexes, outcomes)
        });
        let results = join_all(runs).await;
        // If the flush fails, nothing the engine decided is durable: delete none of it.
        let unflushed = self.engine.store().flush().await.err().map(|e| e.to_string());
        for (indexes, outcomes) in results {
            for (index, outcome) in indexes.into_iter().zip(outcomes) {
                verdicts[index] = match (outcome, &unflushed) {
                    (Outcome::Held(hold), _) => Verdict::Held(hold),
                    (_, Some(err)) => Verdict::Held(Hold::Failed(err.clone())),
                    (settled, None) => Verdict::Settled(settled),
                };
            }
        }
        verdicts
    }

    /// Fires the timers of contexts that are due (gap timeouts, retries, retention, the
    /// lease of a dead worker), through the store's due index, until none is left or the
    /// deadline passes. Returns how many contexts it looked at.
    /// One metrics record per sweep; at most every [`GAUGE_EVERY`] it also reads the gauges.
    pub async fn sweep(&self, page: usize, deadline: Option<Millis>) -> Result<usize, StoreError> {
        let started = Instant::now();
        self.sweeps.fetch_add(1, Relaxed);
        let swept = self.sweep_pages(page, deadline).await;
        match &swept {
            Ok(n) => {
                self.contexts_swept.fetch_add(*n as u64, Relaxed);
            }
            Err(_) => {
                self.sweep_errors.fetch_add(1, Relaxed);
            }
        }
        let gauges = self.gauges_if_due().await;
        self.record(started, gauges);
        swept
    }

    async fn gauges_if_due(&self) -> Option<AttentionList> {
        let now = self.engine_now();
        {
            let mut read_at = self.gauges_read_at.lock().unwrap_or_else(|p| p.into_inner());
            if read_at.is_some_and(|at| now.since(at) < GAUGE_EVERY) {
                return None;
            }
            *read_at = Some(now);
        }
        match self.gauges().await {
            Ok(attention) => Some(attention),
            Err(err) => {
                self.sweep_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, "could not read the blocked and waiting contexts for the gauges; the next sweep tries again");
                *self.gauges_read_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
                None
            }
        }
    }

    async fn sweep_pages(&self, page: usize, deadline: Option<Millis>) -> Result<usize, StoreError> {
        let page = page.max(1);
        let mut total = 0;
        loop {
            let found = self
                .engine
                .sweep_until(&self.handler, &self.dlq, page, deadline)
                .await?;
            self.engine.store().flush().await?;
            total += found;
            let out_of_time = deadline.is_some_and(|d| self.engine_now() >= d);
            if found < page || out_of_time {
                return Ok(total);
            }
        }
    }

    fn engine_now(&self) -> Millis {
        self.engine.clock().now()
    }

    async fn reject(&self, raw: &RawMessage, rejection: Rejection) -> Verdict {
        self.invalid_count.fetch_add(1, Relaxed);
        *self
            .invalid_by_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(rejection.reason)
            .or_default() += 1;
        tracing::warn!(
            message_id = %raw.message_id,
            reason = %rejection.reason,
            detail = %rejection.detail,
            "invalid message"
        );
        if self.invalid == InvalidPolicy::Redrive {
            return Verdict::Invalid(rejection);
        }
        // An invalid message has no usable context: its FIFO group stands in for it, so
        // that a FIFO DLQ keeps the group's order.
        let letter = DeadLetter {
            context_id: raw.group_id.as_deref().unwrap_or(""),
            seq: 0,
            message_id: &raw.message_id,
            body: &raw.body,
            attributes: &raw.attributes,
            reason: rejection.reason,
            detail: &rejection.detail,
        };
        match self.dlq.dead_letter(&letter).await {
            Ok(()) => {
                *self
                    .invalid_dead_lettered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(rejection.reason)
                    .or_default() += 1;
                Verdict::Rejected(rejection.reason)
            }
            Err(err) => {
                tracing::warn!(message_id = %raw.message_id, error = %err, "invalid message not dead-lettered; left for redrive");
                Verdict::Invalid(rejection)
            }
        }
    }
}

/// The ids a Lambda partial batch response reports as failed, with FIFO semantics (SPEC
/// §6): a record that may not be deleted fails, and so does every later record of the
/// same message group, so that the group's order holds when SQS delivers them again.
/// Records without a group (a standard queue) fail alone.
pub fn failed_records<'a>(records: &[(&'a str, Option<&'a str>)], verdicts: &[Verdict]) -> Vec<&'a str> {
    let mut failed_groups: Vec<&str> = Vec::new();
    let mut failed = Vec::new();
    for (&(message_id, group), verdict) in records.iter().zip(verdicts) {
        let group_failed = group.is_some_and(|g| failed_groups.contains(&g));
        if group_failed || !verdict.deletable() {
            failed.push(message_id);
            if let Some(g) = group.filter(|_| !group_failed) {
                failed_groups.push(g);
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Verdict {
        Verdict::Held(Hold::Capacity)
    }
    fn ok() -> Verdict {
        Verdict::Settled(Outcome::Released)
    }

    #[test]
    fn after_a_failure_every_later_record_of_the_group_fails_too() {
        let records = [
            ("1", Some("a")),
            ("2", Some("b")),
            ("3", Some("a")),
            ("4", Some("a")),
            ("5", Some("b")),
        ];
        let verdicts = [ok(), held(), ok(), held(), ok()];
        assert_eq!(failed_records(&records, &verdicts), vec!["2", "4", "5"]);
        let verdicts = [held(), ok(), ok(), ok(), ok()];
        assert_eq!(failed_records(&records, &verdicts), vec!["1", "3", "4"]);
    }

    #[test]
    fn on_a_standard_queue_only_the_failed_records_fail() {
        let records = [("1", None), ("2", None), ("3", None)];
        let invalid = Verdict::Invalid(Rejection::new(Reason::MissingSequence, "x"));
        let verdicts = [invalid, ok(), Verdict::Rejected(Reason::InvalidJson)];
        assert_eq!(failed_records(&records, &verdicts), vec!["1"]);
    }

    #[test]
    fn invalid_policy_parses_its_two_names() {
        assert_eq!("redrive".parse(), Ok(InvalidPolicy::Redrive));
        assert_eq!("dlq".parse(), Ok(InvalidPolicy::Dlq));
        assert!("drop".parse::<InvalidPolicy>().unwrap_err().contains("redrive or dlq"));
    }
}
