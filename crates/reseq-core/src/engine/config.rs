//! The engine's settings: the policies users choose (`--late`, `--on-poison`), the
//! lease, the retry backoff, and the deliberately broken variants the simulation runs.

use super::*;

/// What to do with a message whose position was skipped (`--late`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LatePolicy {
    /// `dlq`: to the dead-letter sink with reason `late`.
    #[default]
    DeadLetter,
    /// `drop`: counted and dropped.
    Drop,
    /// `deliver`: handed to the handler anyway, with [`Release::late`] set.
    Deliver,
}

impl FromStr for LatePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dlq" => Ok(LatePolicy::DeadLetter),
            "drop" => Ok(LatePolicy::Drop),
            "deliver" => Ok(LatePolicy::Deliver),
            _ => Err(format!("{s:?} is not a late policy: use dlq, drop or deliver")),
        }
    }
}

/// What to do when the handler fails permanently or runs out of attempts (`--on-poison`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PoisonPolicy {
    /// `block`: the context stops at the message until an operator retries or skips it.
    #[default]
    Block,
    /// `skip`: the message is dead-lettered `handler-failed` and the context goes on.
    Skip,
}

impl FromStr for PoisonPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "block" => Ok(PoisonPolicy::Block),
            "skip" => Ok(PoisonPolicy::Skip),
            _ => Err(format!("{s:?} is not a poison policy: use block or skip")),
        }
    }
}

/// The ordering rules (SPEC §2–§4). [`Default`] is the flags' defaults, with no lease:
/// right for one process per context (`reseq run`, tests); every SQS processor sets
/// [`EngineConfig::lease`] (`reseq_settings::Resequencer` always does).
///
/// ```
/// use reseq_core::{Duration, EngineConfig, LatePolicy};
///
/// let config = EngineConfig {
///     gap_timeout: Some(Duration::from_secs(30)),
///     late: LatePolicy::Drop,
///     ..EngineConfig::default()
/// };
/// assert_eq!(config.first_seq, 1);
/// assert!(config.lease.is_none());
/// ```
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The first position of every context (`--first-seq`).
    pub first_seq: u64,
    /// `None`: wait for a missing position forever.
    pub gap_timeout: Option<Duration>,
    /// What a message whose position was skipped becomes (`--late`).
    pub late: LatePolicy,
    /// Positions more than this far ahead of the cursor are held back (backpressure), so a
    /// context never has more than this many messages waiting.
    pub max_staged: u64,
    /// Waiting messages older than this are dead-lettered `expired`; a context idle this
    /// long with nothing waiting is forgotten (`--retention`).
    pub retention: Duration,
    /// Handler attempts before a retryable failure makes the message poison.
    pub max_attempts: u32,
    /// What a poison message does (`--on-poison`).
    pub on_poison: PoisonPolicy,
    /// Take a per-context lease before releasing (several workers may see one context at
    /// once: a standard queue, or FIFO with a group that is not the context). `None` when
    /// the source already guarantees one consumer per context (FIFO, group = context).
    pub lease: Option<LeaseConfig>,
    /// The typed sequences (SPEC §5), when `--sequences` is given: messages with a
    /// `message_type` are ordered by their release conditions instead of by position.
    pub sequences: Option<std::sync::Arc<crate::sequences::SequenceFile>>,
    /// A message held back by `max_staged` that has been received this many times
    /// ([`Envelope::receive_count`]) is staged anyway, beyond the window: backpressure
    /// must not keep a FIFO group blocked for good (the message that moves the cursor may
    /// sit behind it in the same group), nor let the queue's redrive push a valid message
    /// out. SQS sets it below the queue's `maxReceiveCount`; `None`: hold for ever.
    pub stage_held_after: Option<u32>,
}

/// Who this worker is, and how long a lease it takes lasts without renewal. The duration
/// must exceed the time one batch takes to release. Each engine call that takes a lease
/// holds it as `<owner>/<n>`, unique within the engine: concurrent calls of one engine
/// (a worker's receive loops, its sweep) exclude each other as other workers do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// This process's name in the leases (unique among the workers).
    pub owner: String,
    /// How long a lease lasts.
    pub duration: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            first_seq: 1,
            gap_timeout: None,
            late: LatePolicy::DeadLetter,
            max_staged: 10_000,
            retention: Duration::from_secs(14 * 86_400),
            max_attempts: 5,
            on_poison: PoisonPolicy::Block,
            lease: None,
            stage_held_after: None,
            sequences: None,
        }
    }
}

/// Retry delay after the `failures`-th failure: 1 s, doubling, capped at 60 s (SPEC §3).
pub fn retry_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    Duration::from_millis((1000u64 << doublings).min(60_000))
}

/// Deliberately broken variants of the engine (TigerBeetle's "the harness bites"): the
/// system simulation runs each and must catch it within a few hundred seeds. Never set
/// outside those tests; [`Mutation::None`] is the engine.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutation {
    #[default]
    None,
    /// The stranding fixes of issue 8 reverted: a failed lost-wakeup check (or a failure
    /// after staging) settles the batch anyway, a copy does not trigger the check, and a
    /// sweep's commit does not leave its context due.
    NoStrandingRepair,
    /// The lost-wakeup check always answers "nothing to do".
    NoLostWakeupCheck,
    /// The cursor is committed before the handler returns.
    CommitBeforeHandler,
}
