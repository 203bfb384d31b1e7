//! The ordering engine (SPEC §2–§4): every decision about a message — release, stage,
//! duplicate, conflict, late, skip, retry, block, expire — is made here, and only here.
//!
//! The engine works in batches. A batch is processed message by message in arrival
//! order, so handler calls happen exactly as if each message were processed alone, but
//! store writes are deferred to the end of the batch: per context, the messages still
//! waiting are staged (one conditional put each) and the state is written once (one
//! conditional commit). A run of k consecutive messages released together therefore
//! costs one state write, and a message released in the batch it arrived in is never
//! staged at all. Outcomes tell the caller which messages it may acknowledge.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::envelope::Envelope;
use crate::handler::{DeadLetter, DeadLetterSink, Handler, HandlerError, Release};
use crate::reason::Reason;
use crate::store::{
    Blocked, Commit, CommitOutcome, ContextState, DueQuery, ExpiryRetry, Lease, RetryState, StageOutcome,
    StagedMessage, StagingStore, StoreError, Waiting,
};
use crate::time::{Clock, Duration, Millis};

/// What to do with a message whose position was skipped (`--late`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LatePolicy {
    #[default]
    DeadLetter,
    Drop,
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
    #[default]
    Block,
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

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub first_seq: u64,
    /// `None`: wait for a missing position forever.
    pub gap_timeout: Option<Duration>,
    pub late: LatePolicy,
    /// Positions more than this far ahead of the cursor are held back (backpressure), so a
    /// context never has more than this many messages waiting.
    pub max_staged: u64,
    pub retention: Duration,
    pub max_attempts: u32,
    pub on_poison: PoisonPolicy,
    /// Take a per-context lease before releasing (several workers may see one context at
    /// once: a standard queue, or FIFO with a group that is not the context). `None` when
    /// the source already guarantees one consumer per context (FIFO, group = context).
    pub lease: Option<LeaseConfig>,
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
    pub owner: String,
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
        }
    }
}

/// The batch's messages whose outcome holds only if the context's commit does: what it
/// released, what still waits unwritten in `pending`, and what it judged a duplicate (of
/// those releases, or of an unwritten copy: found by the simulation). When the commit
/// fails or loses its version race, none of them may be acknowledged.
fn unrecorded(work: &Work, outcomes: &[Outcome]) -> Vec<usize> {
    let unwritten = work.pending.values().map(|p| p.index);
    let duplicates = work
        .indices
        .iter()
        .copied()
        .filter(|&i| outcomes[i] == Outcome::Duplicate);
    work.released
        .iter()
        .copied()
        .chain(unwritten)
        .chain(duplicates)
        .collect()
}

/// A retry of `seq` that counts no attempt (the target, or the DLQ, is out): it backs off
/// on its own count of such retries, kept across them.
fn uncounted_retry(work: &Work, seq: u64, attempts: u32, now: Millis, last_error: String) -> RetryState {
    let previous = work.state.retry.as_ref().filter(|r| r.seq == seq);
    let outage_retries = previous.map_or(0, |r| r.outage_retries) + 1;
    RetryState {
        seq,
        attempts,
        not_before: now.plus(retry_backoff(outage_retries)),
        last_error,
        outage_retries,
    }
}

/// Retry delay after the `failures`-th failure: 1 s, doubling, capped at 60 s (SPEC §3).
pub fn retry_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    Duration::from_millis((1000u64 << doublings).min(60_000))
}

/// What happened to one message of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Handed to the handler and committed.
    Released,
    /// Durably staged: it waits for its predecessors (or for a handler retry).
    Staged,
    /// A copy of a position already released or staged: nothing to do.
    Duplicate,
    /// Sent to the dead-letter sink.
    DeadLettered(Reason),
    /// A late message dropped by `--late drop`.
    Dropped,
    /// Not settled: do not acknowledge; the source will deliver it again.
    Held(Hold),
}

impl Outcome {
    /// Whether the caller may acknowledge (delete) the message at its source.
    pub fn is_settled(&self) -> bool {
        !matches!(self, Outcome::Held(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The position is more than `max_staged` ahead of the cursor (backpressure).
    Capacity,
    /// Another writer changed the context meanwhile.
    Busy,
    /// The store, the handler or the dead-letter sink failed; the text says which.
    Failed(String),
}

/// Counters since the engine was created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub received: u64,
    pub released: u64,
    pub staged: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub late: u64,
    pub gaps_skipped: u64,
    pub positions_skipped: u64,
    pub handler_retries: u64,
    pub poison: u64,
    pub blocked: u64,
    pub expired: u64,
    pub dead_lettered: u64,
    pub held: u64,
    pub contexts_forgotten: u64,
    /// Messages held back by `max_staged` that came back `stage_held_after` times and
    /// were staged beyond the window.
    pub held_then_staged: u64,
    /// Retryable failures while the target was out for every context: no attempt counted.
    pub outage_retries: u64,
    /// Expired waiting messages that could not be dead-lettered (retried with backoff).
    pub expiry_failures: u64,
    /// Lost-wakeup checks or drains that failed: the context's messages were given back
    /// to the source so that a redelivery (or the sweep) looks again.
    pub wakeups_failed: u64,
    /// `dead_lettered`, by reason.
    pub dead_lettered_by_reason: BTreeMap<Reason, u64>,
    /// Handler calls that failed (retryable, permanent or rejected).
    pub handler_errors: u64,
    /// Messages not settled, by why: `held` is their sum.
    pub held_capacity: u64,
    pub held_busy: u64,
    pub held_failed: u64,
    /// Releases that found another worker holding the context's lease (they left the
    /// release to it).
    pub lease_conflicts: u64,
    /// Leases taken from a holder whose lease had run out (a worker that died or stalled).
    pub leases_taken_over: u64,
}

/// How long released messages waited, arrival to release, since the last
/// [`Engine::take_release_latencies`]: at most [`LATENCY_SAMPLE`] values, plus the
/// maximum and count of all of them, so that a long drain neither grows it without bound
/// nor hides its worst case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReleaseLatencies {
    pub sample_ms: Vec<u64>,
    pub count: u64,
    pub max_ms: u64,
}

/// How many release latencies [`ReleaseLatencies`] keeps between two reads (the most one
/// CloudWatch Embedded Metric Format record takes per metric).
pub const LATENCY_SAMPLE: usize = 100;

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    released: AtomicU64,
    staged: AtomicU64,
    duplicates: AtomicU64,
    conflicts: AtomicU64,
    late: AtomicU64,
    gaps_skipped: AtomicU64,
    positions_skipped: AtomicU64,
    handler_retries: AtomicU64,
    poison: AtomicU64,
    blocked: AtomicU64,
    expired: AtomicU64,
    dead_lettered: AtomicU64,
    held: AtomicU64,
    contexts_forgotten: AtomicU64,
    held_then_staged: AtomicU64,
    outage_retries: AtomicU64,
    expiry_failures: AtomicU64,
    wakeups_failed: AtomicU64,
    dead_lettered_by: [AtomicU64; Reason::ALL.len()],
    handler_errors: AtomicU64,
    held_capacity: AtomicU64,
    held_busy: AtomicU64,
    held_failed: AtomicU64,
    lease_conflicts: AtomicU64,
    leases_taken_over: AtomicU64,
    latencies: Mutex<ReleaseLatencies>,
}

impl Counters {
    fn released_after(&self, waited: Duration) {
        bump(&self.released);
        let mut latencies = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        latencies.count += 1;
        latencies.max_ms = latencies.max_ms.max(waited.0);
        if latencies.sample_ms.len() < LATENCY_SAMPLE {
            latencies.sample_ms.push(waited.0);
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// A context with messages waiting is swept at least this often (see `due_at`).
pub const WAITING_RECHECK: Duration = Duration::from_millis(15 * 60 * 1000);

/// How many positions the first store read of a context covers; each further read of the
/// same context in a batch covers four times more, up to `PAGE`.
const FIRST_PAGE: usize = 16;
const PAGE: usize = 512;

/// The engine over a store `S` and a clock `C`.
pub struct Engine<S, C> {
    store: S,
    clock: C,
    config: EngineConfig,
    counters: Counters,
    /// Numbers the leases this engine's calls take (see [`LeaseConfig`]).
    lease_calls: AtomicU64,
    /// Tells an outage of the target from a poison message (SPEC §3).
    breaker: Breaker,
    /// A deliberately broken variant, for the simulation to prove it catches it.
    mutation: Mutation,
    /// Contexts whose lost-wakeup check failed in this process: the next sweep checks
    /// them again. The batch given back to the source is the first net (its redelivery
    /// looks again); this is the second, for when no redelivery comes (SQS delivered the
    /// message twice and the other copy was deleted). Found by the simulation's soak.
    unchecked: Mutex<Vec<String>>,
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

/// How many different contexts must fail retryably in a row, with no success between,
/// before the target counts as out: one context failing alone may be poison; several
/// failing together is the target.
const OUTAGE_CONTEXTS: usize = 3;

/// The circuit breaker of SPEC §3. Retryable failures of [`OUTAGE_CONTEXTS`] different
/// contexts with no success between open it; any success closes it. While it is open a
/// retryable failure counts no attempt: the context backs off (capped at 60 s) and its
/// next try is the probe. It lives in memory: each worker judges the target for itself.
#[derive(Default)]
struct Breaker {
    /// The contexts that failed since the last success, up to [`OUTAGE_CONTEXTS`].
    failing: Mutex<Vec<String>>,
}

impl Breaker {
    /// Records a retryable failure; whether the circuit is open now.
    fn failed(&self, context_id: &str) -> bool {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if failing.len() < OUTAGE_CONTEXTS && !failing.iter().any(|c| c == context_id) {
            failing.push(context_id.to_string());
            if failing.len() == OUTAGE_CONTEXTS {
                tracing::warn!(
                    contexts = ?*failing,
                    "the target fails for {OUTAGE_CONTEXTS} contexts in a row: treating it as an outage; \
                     retries back off and count no attempts until it answers again"
                );
            }
        }
        failing.len() >= OUTAGE_CONTEXTS
    }

    fn succeeded(&self) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if failing.len() >= OUTAGE_CONTEXTS {
            tracing::info!("the target answers again: outage over");
        }
        failing.clear();
    }
}

/// Where a message about to be released comes from: it decides which outcome to settle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// A message of this batch that never waited.
    Batch(usize),
    /// A message of this batch that waited in `pending`.
    Pending(usize),
    /// A message staged by an earlier batch: its source message was settled long ago.
    Store,
}

impl Source {
    fn index(self) -> Option<usize> {
        match self {
            Source::Batch(i) | Source::Pending(i) => Some(i),
            Source::Store => None,
        }
    }
}

struct Pending {
    msg: StagedMessage,
    index: usize,
}

/// A small map from position to value, kept as a sorted vector: a context rarely has more
/// than a few entries per batch, and a vector costs one allocation where a `BTreeMap`
/// allocates a whole node.
struct SeqMap<T> {
    entries: Vec<(u64, T)>,
}

impl<T> SeqMap<T> {
    fn new() -> SeqMap<T> {
        SeqMap { entries: Vec::new() }
    }

    fn from_sorted(entries: Vec<(u64, T)>) -> SeqMap<T> {
        SeqMap { entries }
    }

    fn find(&self, seq: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&seq, |(s, _)| *s)
    }

    fn get(&self, seq: u64) -> Option<&T> {
        self.find(seq).ok().map(|i| &self.entries[i].1)
    }

    fn insert(&mut self, seq: u64, value: T) {
        match self.find(seq) {
            Ok(i) => self.entries[i].1 = value,
            Err(i) => self.entries.insert(i, (seq, value)),
        }
    }

    fn remove(&mut self, seq: u64) -> Option<T> {
        self.find(seq).ok().map(|i| self.entries.remove(i).1)
    }

    fn first_at_or_after(&self, seq: u64) -> Option<u64> {
        let i = self.find(seq).unwrap_or_else(|i| i);
        self.entries.get(i).map(|(s, _)| *s)
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, v)| v)
    }
}

/// The staged messages read from the store for one context, complete for `from..=last`.
struct StoreView {
    items: SeqMap<StagedMessage>,
    from: u64,
    last: u64,
}

impl StoreView {
    fn empty() -> StoreView {
        StoreView {
            items: SeqMap::new(),
            from: 1,
            last: 0,
        }
    }

    fn covers(&self, seq: u64) -> bool {
        self.from <= seq && seq <= self.last
    }
}

/// The engine's working copy of one context during a batch or a sweep.
struct Work {
    context_id: String,
    state: ContextState,
    loaded_version: u64,
    dirty: bool,
    pending: SeqMap<Pending>,
    view: StoreView,
    next_page: usize,
    /// The cursor as loaded: once it moves, `state.waiting_since` may describe messages
    /// that were released, and is worked out again.
    start_next: u64,
    remove_staged: Vec<u64>,
    /// Retention ran out with nothing waiting: the commit deletes the context.
    forget: bool,
    /// This work took the context's lease: its commit gives it back.
    leased: bool,
    /// The name this work holds a lease under: the configured owner and a number unique to
    /// this engine, so that two calls of one engine never share a lease.
    lease_holder: String,
    /// Another worker holds the lease: nothing is released, releasable messages wait.
    busy: bool,
    released: Vec<usize>,
    failed: Option<String>,
    /// Stop releasing at this time (a Lambda invocation's deadline, less a margin).
    deadline: Option<Millis>,
    /// The deadline stopped a run: what is left waits, and the commit makes the context
    /// due at once so that the next sweep carries on.
    cut: bool,
    /// The indexes of this batch's messages of this context: if the lost-wakeup check
    /// fails after the commit, they are given back to the source (see `unsettle`).
    indices: Vec<usize>,
    /// A copy of a staged or released position arrived: with leases, a redelivery may be
    /// all that is left to notice a context a crashed worker did not drain, so it looks.
    saw_copy: bool,
    /// A sweep or a drain: no source message will come back to look again if the
    /// lost-wakeup check after a release is lost (error, crash), so the commit that gives
    /// the lease back leaves the context due once the lease would have run out.
    recheck: bool,
}

/// What [`Engine::finish`] leaves to do for one context.
enum Finished {
    /// Written (or nothing to write), and nothing became releasable.
    Done,
    /// Written, and a message at the cursor waits with no lease held: drain it.
    Wake,
    /// The store failed: nothing of this context was settled (outcomes already held).
    Failed(String),
    /// Written, but the lost-wakeup check failed: whether something waits is unknown.
    Unchecked(String),
}

enum Step {
    Continue,
    Stall,
}

impl<S: StagingStore, C: Clock> Engine<S, C> {
    pub fn new(store: S, clock: C, config: EngineConfig) -> Engine<S, C> {
        Engine {
            store,
            clock,
            config,
            counters: Counters::default(),
            lease_calls: AtomicU64::new(0),
            breaker: Breaker::default(),
            mutation: Mutation::None,
            unchecked: Mutex::new(Vec::new()),
        }
    }

    /// This engine, broken on purpose (see [`Mutation`]).
    #[doc(hidden)]
    pub fn with_mutation(mut self, mutation: Mutation) -> Self {
        self.mutation = mutation;
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Relaxed);
        Stats {
            received: get(&c.received),
            released: get(&c.released),
            staged: get(&c.staged),
            duplicates: get(&c.duplicates),
            conflicts: get(&c.conflicts),
            late: get(&c.late),
            gaps_skipped: get(&c.gaps_skipped),
            positions_skipped: get(&c.positions_skipped),
            handler_retries: get(&c.handler_retries),
            poison: get(&c.poison),
            blocked: get(&c.blocked),
            expired: get(&c.expired),
            dead_lettered: get(&c.dead_lettered),
            held: get(&c.held),
            contexts_forgotten: get(&c.contexts_forgotten),
            held_then_staged: get(&c.held_then_staged),
            outage_retries: get(&c.outage_retries),
            expiry_failures: get(&c.expiry_failures),
            wakeups_failed: get(&c.wakeups_failed),
            dead_lettered_by_reason: Reason::ALL
                .into_iter()
                .zip(&c.dead_lettered_by)
                .map(|(reason, n)| (reason, get(n)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            handler_errors: get(&c.handler_errors),
            held_capacity: get(&c.held_capacity),
            held_busy: get(&c.held_busy),
            held_failed: get(&c.held_failed),
            lease_conflicts: get(&c.lease_conflicts),
            leases_taken_over: get(&c.leases_taken_over),
        }
    }

    /// The release latencies since the last call (see [`ReleaseLatencies`]).
    pub fn take_release_latencies(&self) -> ReleaseLatencies {
        std::mem::take(&mut *self.counters.latencies.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Processes a batch in arrival order and returns one outcome per message, in the
    /// same order. Store writes happen at the end; call [`StagingStore::flush`] before
    /// acknowledging settled messages.
    pub async fn process<H: Handler, D: DeadLetterSink>(
        &self,
        batch: Vec<Envelope>,
        handler: &H,
        dlq: &D,
    ) -> Vec<Outcome> {
        self.process_until(batch, handler, dlq, None).await
    }

    /// [`Engine::process`], but no release starts at or after `deadline`: a run cut short
    /// stays staged and committed, its context due at once for the next sweep. A Lambda
    /// function passes its invocation deadline (less a margin) so that a long run never
    /// outlives the invocation.
    pub async fn process_until<H: Handler, D: DeadLetterSink>(
        &self,
        batch: Vec<Envelope>,
        handler: &H,
        dlq: &D,
        deadline: Option<Millis>,
    ) -> Vec<Outcome> {
        let now = self.clock.now();
        let mut outcomes = vec![Outcome::Held(Hold::Failed(String::new())); batch.len()];
        // Which context each message belongs to, as an index into `works`, in order of
        // first appearance: the end-of-batch writes go out in that order.
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        let slots: Vec<usize> = batch
            .iter()
            .map(|env| {
                let next_slot = first_seen.len();
                *first_seen.entry(env.context_id.as_str()).or_insert(next_slot)
            })
            .collect();
        let mut works: Vec<Option<Work>> = (0..first_seen.len()).map(|_| None).collect();
        drop(first_seen);
        for ((index, env), slot) in batch.into_iter().enumerate().zip(slots) {
            bump(&self.counters.received);
            let work = match &mut works[slot] {
                Some(work) => work,
                empty => empty.insert(self.load(&env.context_id, deadline).await),
            };
            work.indices.push(index);
            if let Some(err) = &work.failed {
                outcomes[index] = Outcome::Held(Hold::Failed(err.clone()));
                continue;
            }
            if let Err(err) = self.accept(work, index, env, now, handler, dlq, &mut outcomes).await {
                outcomes[index] = Outcome::Held(Hold::Failed(err.to_string()));
                work.failed = Some(err.to_string());
            }
        }
        let mut woken = Vec::new();
        for work in works.into_iter().flatten() {
            let context_id = work.context_id.clone();
            let indices = work.indices.clone();
            match self.finish(work, now, dlq, &mut outcomes).await {
                Finished::Done => {}
                // Without leases nobody else looks at this context: nothing can be lost.
                Finished::Failed(_) if self.config.lease.is_none() => {}
                Finished::Failed(_) | Finished::Unchecked(_) if self.mutation == Mutation::NoStrandingRepair => {}
                Finished::Wake => woken.push((context_id, indices)),
                // A failure after staging skips the check too (what it staged may be at
                // the cursor, and no lease holder will look), so it is unchecked as well.
                Finished::Failed(err) | Finished::Unchecked(err) => {
                    self.unsettle(&context_id, &indices, &err, &mut outcomes)
                }
            }
        }
        for (context_id, indices) in woken {
            if let Err(err) = self.drain(&context_id, handler, dlq, deadline, false).await
                && self.mutation != Mutation::NoStrandingRepair
            {
                self.unsettle(&context_id, &indices, &err, &mut outcomes);
            }
        }
        for outcome in &outcomes {
            if let Outcome::Held(hold) = outcome {
                bump(&self.counters.held);
                bump(match hold {
                    Hold::Capacity => &self.counters.held_capacity,
                    Hold::Busy => &self.counters.held_busy,
                    Hold::Failed(_) => &self.counters.held_failed,
                });
            }
        }
        outcomes
    }

    /// The lost-wakeup check or the drain after it failed: a message may wait at the
    /// cursor with no one to release it. The batch's messages of that context are given
    /// back to the source, whatever they settled: their redelivery looks again (a copy of
    /// a staged or released position triggers the check, see `saw_copy`). Repeating them
    /// is safe: each comes back as a duplicate, or is staged or dead-lettered again.
    fn unsettle(&self, context_id: &str, indices: &[usize], err: &str, outcomes: &mut [Outcome]) {
        bump(&self.counters.wakeups_failed);
        tracing::warn!(
            context_id,
            error = err,
            "could not check whether the context can release more; its messages are given back to the source \
             so that their redelivery looks again"
        );
        for &i in indices {
            if outcomes[i].is_settled() {
                outcomes[i] = Outcome::Held(Hold::Failed(format!("wakeup check of context {context_id}: {err}")));
            }
        }
        self.check_later(context_id);
    }

    fn check_later(&self, context_id: &str) {
        let mut unchecked = self.unchecked.lock().unwrap_or_else(|p| p.into_inner());
        if !unchecked.iter().any(|c| c == context_id) {
            unchecked.push(context_id.to_string());
        }
    }

    /// Runs the lost-wakeup checks that failed earlier in this process (see `unchecked`).
    async fn recheck<H: Handler, D: DeadLetterSink>(&self, handler: &H, dlq: &D, deadline: Option<Millis>) {
        if self.mutation == Mutation::NoStrandingRepair {
            return;
        }
        let contexts = std::mem::take(&mut *self.unchecked.lock().unwrap_or_else(|p| p.into_inner()));
        for context_id in contexts {
            let checked = match self.woken(&context_id, self.clock.now()).await {
                Ok(true) => self.drain(&context_id, handler, dlq, deadline, true).await,
                Ok(false) => Ok(()),
                Err(err) => Err(err.to_string()),
            };
            if let Err(err) = checked {
                tracing::warn!(context_id = %context_id, error = %err, "lost-wakeup check failed again; the next sweep tries again");
                self.check_later(&context_id);
            }
        }
    }

    /// Fires the timers no new message would fire: gap timeouts, handler retries that are
    /// due, and retention. Returns how many contexts it looked at; a result equal to
    /// `limit` means more may be due.
    pub async fn sweep<H: Handler, D: DeadLetterSink>(
        &self,
        handler: &H,
        dlq: &D,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.sweep_until(handler, dlq, limit, None).await
    }

    /// [`Engine::sweep`] with a release deadline, as in [`Engine::process_until`]. A context
    /// cut short is due again at once: callers loop while time remains.
    pub async fn sweep_until<H: Handler, D: DeadLetterSink>(
        &self,
        handler: &H,
        dlq: &D,
        limit: usize,
        deadline: Option<Millis>,
    ) -> Result<usize, StoreError> {
        self.recheck(handler, dlq, deadline).await;
        let now = self.clock.now();
        let query = DueQuery { now, limit };
        let due = self.store.due(&query).await?;
        let mut no_outcomes = Vec::new();
        for context_id in &due {
            let mut work = self.load(context_id, deadline).await;
            if let Some(err) = work.failed.take() {
                return Err(StoreError::Unavailable(err));
            }
            work.recheck = true;
            let swept = async {
                self.expire(&mut work, now, dlq).await?;
                self.advance(&mut work, now, handler, dlq, &mut no_outcomes).await
            };
            if let Err(err) = swept.await {
                work.failed = Some(err.to_string());
            }
            // A lost wakeup here is caught by the sweep itself: the holder's commit left
            // the context due when its lease would have run out (`recheck`).
            let lost = match self.finish(work, now, dlq, &mut no_outcomes).await {
                Finished::Done | Finished::Failed(_) => None,
                Finished::Wake => self.drain(context_id, handler, dlq, deadline, true).await.err(),
                Finished::Unchecked(err) => Some(err),
            };
            if let Some(err) = lost {
                bump(&self.counters.wakeups_failed);
                self.check_later(context_id);
                tracing::warn!(
                    context_id = context_id.as_str(),
                    error = err,
                    "could not check whether the swept context can release more; a sweep looks again when its \
                     lease would have run out"
                );
            }
        }
        Ok(due.len())
    }

    async fn load(&self, context_id: &str, deadline: Option<Millis>) -> Work {
        let (state, failed) = match self.store.load(context_id).await {
            Ok(Some(state)) => (state, None),
            Ok(None) => (ContextState::new(self.config.first_seq), None),
            Err(err) => (ContextState::new(self.config.first_seq), Some(err.to_string())),
        };
        let state_next = state.next;
        Work {
            context_id: context_id.to_string(),
            loaded_version: state.version,
            state,
            dirty: false,
            pending: SeqMap::new(),
            view: StoreView::empty(),
            next_page: FIRST_PAGE,
            start_next: state_next,
            remove_staged: Vec::new(),
            forget: false,
            leased: false,
            lease_holder: match &self.config.lease {
                Some(lease) => format!("{}/{}", lease.owner, self.lease_calls.fetch_add(1, Relaxed)),
                None => String::new(),
            },
            busy: false,
            released: Vec::new(),
            failed,
            deadline,
            cut: false,
            indices: Vec::new(),
            saw_copy: false,
            recheck: false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn accept<H: Handler, D: DeadLetterSink>(
        &self,
        work: &mut Work,
        index: usize,
        env: Envelope,
        now: Millis,
        handler: &H,
        dlq: &D,
        outcomes: &mut [Outcome],
    ) -> Result<(), StoreError> {
        let seq = env.seq;
        let receive_count = env.receive_count;
        if seq < self.config.first_seq {
            // Never processed, so not a duplicate: a producer counting from another first
            // position would otherwise lose every context's first message without a trace.
            let detail = format!(
                "context {} position {seq} is below the first position {} (--first-seq): it can never be \
                 released; set --first-seq to the producers' first position",
                work.context_id, self.config.first_seq
            );
            let msg = StagedMessage::from_envelope(env);
            tracing::warn!(context_id = %work.context_id, seq, message_id = %msg.message_id, "position below --first-seq: dead-lettered");
            outcomes[index] = self
                .dead_letter(work, &msg, Reason::InvalidSequence, &detail, dlq)
                .await;
            return Ok(());
        }
        if let Some(final_seq) = work.state.final_seq.filter(|f| seq > *f) {
            let detail = format!("context {} closed at its final position {final_seq}", work.context_id);
            let msg = StagedMessage::from_envelope(env);
            bump(&self.counters.late);
            tracing::warn!(decision = "late", context_id = %work.context_id, seq, message_id = %msg.message_id, final_seq, "after the final position: late");
            outcomes[index] = self.dead_letter(work, &msg, Reason::Late, &detail, dlq).await;
            return Ok(());
        }
        if seq < work.state.next {
            if work.state.is_skipped(seq) {
                let msg = StagedMessage::from_envelope(env);
                outcomes[index] = self.late(work, msg, handler, dlq).await;
                return Ok(());
            }
            work.saw_copy = true;
            // A released row the store still keeps (DynamoDB keeps them until TTL) tells
            // a conflicting copy from a duplicate; a position released straight from its
            // batch left no body behind, and its copy counts as a duplicate.
            let msg = StagedMessage::from_envelope(env);
            let released = self.store.staged(&work.context_id, seq, seq, 1).await?;
            outcomes[index] = match released.first() {
                Some(first) if first.seq == seq => self.second_copy(work, first.body_hash, &msg, dlq).await,
                _ => {
                    bump(&self.counters.duplicates);
                    Outcome::Duplicate
                }
            };
            return Ok(());
        }
        let msg = StagedMessage::from_envelope(env);
        if let Some(first) = work.pending.get(seq).map(|p| p.msg.body_hash) {
            outcomes[index] = self.second_copy(work, first, &msg, dlq).await;
            return Ok(());
        }
        if seq == work.state.next && !self.stalled(work, now) {
            self.ensure_view(work, seq).await?;
            if let Some(first) = work.view.items.get(seq).map(|m| m.body_hash) {
                // The staged first copy is releasable: release it now rather than trust
                // that whoever staged it will (it may have crashed before its drain).
                work.saw_copy = true;
                outcomes[index] = self.second_copy(work, first, &msg, dlq).await;
            } else if let Step::Stall = self
                .release(work, msg, Source::Batch(index), now, handler, dlq, outcomes)
                .await?
            {
                return Ok(());
            }
            return self.advance(work, now, handler, dlq, outcomes).await;
        }
        // Out of order (or the context is stalled): it waits. A copy already in the store
        // is found here if the store was read anyway, else by the conditional put.
        if let Some(first) = work.view.covers(seq).then(|| work.view.items.get(seq)).flatten() {
            let first = first.body_hash;
            work.saw_copy = true;
            outcomes[index] = self.second_copy(work, first, &msg, dlq).await;
            return Ok(());
        }
        // Capacity as a window: only positions within `max_staged` of the cursor wait, so
        // a context never holds more than `max_staged` staged messages and the check
        // costs no store read. A held message that keeps coming back is staged anyway:
        // on a FIFO queue it blocks its group, and the message that moves the cursor may
        // be behind it; and the queue's redrive must not take a valid message away.
        if seq - work.state.next > self.config.max_staged {
            if self.config.stage_held_after.is_none_or(|n| receive_count < n) {
                outcomes[index] = Outcome::Held(Hold::Capacity);
                return Ok(());
            }
            bump(&self.counters.held_then_staged);
            tracing::info!(
                context_id = %work.context_id,
                seq,
                message_id = %msg.message_id,
                receive_count,
                next = work.state.next,
                "held back by --max-staged {} times: staged beyond the window so that its queue group is not blocked",
                receive_count
            );
        }
        work.pending.insert(seq, Pending { msg, index });
        outcomes[index] = Outcome::Staged;
        // Nothing became releasable, unless a handler retry is due or the wait outlasted
        // the gap timeout.
        let retry_due = work.state.retry.is_some() && !self.stalled(work, now);
        if retry_due || self.gap_expired(work, now).await? {
            self.advance(work, now, handler, dlq, outcomes).await?;
        }
        Ok(())
    }

    /// A second copy of a waiting position: a duplicate if the body is the same, else a
    /// conflict (the first copy wins).
    async fn second_copy<D: DeadLetterSink>(
        &self,
        work: &Work,
        first_hash: u64,
        msg: &StagedMessage,
        dlq: &D,
    ) -> Outcome {
        if first_hash == msg.body_hash {
            bump(&self.counters.duplicates);
            return Outcome::Duplicate;
        }
        bump(&self.counters.conflicts);
        tracing::warn!(decision = "conflict", context_id = %work.context_id, seq = msg.seq, message_id = %msg.message_id, "a copy with a different body: the first copy wins, this one is dead-lettered");
        let detail = format!(
            "context {} position {} arrived again with a different body; the first copy wins",
            work.context_id, msg.seq
        );
        self.dead_letter(work, msg, Reason::Conflict, &detail, dlq).await
    }

    async fn late<H: Handler, D: DeadLetterSink>(
        &self,
        work: &Work,
        msg: StagedMessage,
        handler: &H,
        dlq: &D,
    ) -> Outcome {
        bump(&self.counters.late);
        tracing::warn!(decision = "late", context_id = %work.context_id, seq = msg.seq, message_id = %msg.message_id, policy = ?self.config.late, "its position was skipped: late");
        match self.config.late {
            LatePolicy::Drop => Outcome::Dropped,
            LatePolicy::DeadLetter => {
                let detail = format!(
                    "context {} position {} was skipped after the gap timeout",
                    work.context_id, msg.seq
                );
                self.dead_letter(work, &msg, Reason::Late, &detail, dlq).await
            }
            LatePolicy::Deliver => {
                let release = Release {
                    context_id: &work.context_id,
                    seq: msg.seq,
                    prev_seq: None,
                    message_id: &msg.message_id,
                    body: &msg.body,
                    attributes: &msg.attributes,
                    late: true,
                    attempt: 1,
                };
                let result = handler.handle(&release).await;
                if result.is_err() {
                    bump(&self.counters.handler_errors);
                }
                match result {
                    Ok(()) => {
                        self.counters.released_after(self.clock.now().since(msg.received_at));
                        Outcome::Released
                    }
                    Err(HandlerError::Retryable(e)) => Outcome::Held(Hold::Failed(format!("handler: {e}"))),
                    Err(HandlerError::Permanent(e) | HandlerError::Rejected(e)) => {
                        bump(&self.counters.poison);
                        self.dead_letter(work, &msg, Reason::HandlerFailed, &e, dlq).await
                    }
                }
            }
        }
    }

    async fn dead_letter<D: DeadLetterSink>(
        &self,
        work: &Work,
        msg: &StagedMessage,
        reason: Reason,
        detail: &str,
        dlq: &D,
    ) -> Outcome {
        let letter = DeadLetter {
            context_id: &work.context_id,
            seq: msg.seq,
            message_id: &msg.message_id,
            body: &msg.body,
            attributes: &msg.attributes,
            reason,
            detail,
        };
        match dlq.dead_letter(&letter).await {
            Ok(()) => {
                bump(&self.counters.dead_lettered);
                bump(&self.counters.dead_lettered_by[reason as usize]);
                tracing::warn!(
                    decision = "dead-lettered",
                    context_id = %work.context_id,
                    seq = msg.seq,
                    message_id = %msg.message_id,
                    reason = %reason,
                    detail,
                    "dead-lettered"
                );
                Outcome::DeadLettered(reason)
            }
            Err(e) => {
                tracing::warn!(
                    decision = "dead-letter-failed",
                    context_id = %work.context_id,
                    seq = msg.seq,
                    message_id = %msg.message_id,
                    reason = %reason,
                    error = %e,
                    "the DLQ did not take the message: it is kept and tried again"
                );
                Outcome::Held(Hold::Failed(e.to_string()))
            }
        }
    }

    fn stalled(&self, work: &Work, now: Millis) -> bool {
        let state = &work.state;
        work.busy
            || work.cut
            || state.blocked.is_some()
            || state.pending_skip.is_some()
            || state.retry.as_ref().is_some_and(|r| now < r.not_before)
    }

    /// Carries out an operator's `reseq skip` (`admin::request_skip`): the messages waiting
    /// before the requested position follow the `--late` policy, the positions are
    /// recorded as skipped and the cursor moves there. Under the lease, like a release.
    /// `false`: not done yet (another worker holds the lease, or the DLQ refused a
    /// message); the request stays and the context stays due.
    async fn apply_skip<H: Handler, D: DeadLetterSink>(
        &self,
        work: &mut Work,
        now: Millis,
        handler: &H,
        dlq: &D,
        outcomes: &mut [Outcome],
    ) -> Result<bool, StoreError> {
        let Some(to) = work.state.pending_skip else {
            return Ok(true);
        };
        let from = work.state.next;
        if to > from {
            if !self.acquire(work, now).await? {
                return Ok(false);
            }
            let mine: Vec<u64> = work
                .pending
                .entries
                .iter()
                .map(|(seq, _)| *seq)
                .filter(|seq| *seq < to)
                .collect();
            for seq in mine {
                let Some(p) = work.pending.remove(seq) else { continue };
                let outcome = self.late(work, p.msg.clone(), handler, dlq).await;
                if !outcome.is_settled() {
                    work.pending.insert(seq, p);
                    return Ok(false);
                }
                outcomes[p.index] = outcome;
            }
            let mut cursor = from;
            loop {
                let page = self.store.staged(&work.context_id, cursor, to - 1, PAGE).await?;
                let full = page.len() == PAGE;
                for msg in page {
                    cursor = msg.seq.saturating_add(1);
                    if !self.late(work, msg, handler, dlq).await.is_settled() {
                        // Those already dead-lettered may be sent again on the next try.
                        return Ok(false);
                    }
                }
                if !full {
                    break;
                }
            }
            work.state.record_skip(from, to - 1);
            work.state.next = to;
            if work.state.blocked.as_ref().is_some_and(|b| b.seq < to) {
                work.state.blocked = None;
            }
            if work.state.retry.as_ref().is_some_and(|r| r.seq < to) {
                work.state.retry = None;
            }
            self.counters.positions_skipped.fetch_add(to - from, Relaxed);
            tracing::warn!(
                decision = "skipped",
                context_id = %work.context_id,
                first = from,
                last = to - 1,
                "an operator's skip carried out: the positions are skipped, their waiting messages were late"
            );
        }
        work.state.pending_skip = None;
        work.dirty = true;
        Ok(true)
    }

    /// Takes the context's lease before the first release of a batch, folded into a
    /// version-conditional write of the state. `false`: another worker holds it (or wrote
    /// the state meanwhile); the context then only stages, and the holder or the wakeup
    /// check after staging releases what became releasable.
    async fn acquire(&self, work: &mut Work, now: Millis) -> Result<bool, StoreError> {
        let Some(lease) = &self.config.lease else {
            return Ok(true);
        };
        if work.leased {
            return Ok(true);
        }
        // A version race means another writer moved the state: read it again and retry,
        // a few times, before giving up on this batch.
        for _ in 0..3 {
            if work
                .state
                .lease
                .as_ref()
                .is_some_and(|l| l.owner != work.lease_holder && now < l.until)
            {
                break;
            }
            if let Some(stale) = work.state.lease.as_ref().filter(|l| l.owner != work.lease_holder) {
                bump(&self.counters.leases_taken_over);
                tracing::warn!(
                    decision = "lease-taken-over",
                    context_id = %work.context_id,
                    previous_owner = %stale.owner,
                    expired_at = stale.until.0,
                    "the context's lease ran out under its holder (a worker died or stalled): taking it over"
                );
            }
            let mut state = work.state.clone();
            state.lease = Some(Lease {
                owner: work.lease_holder.clone(),
                until: now.plus(lease.duration),
            });
            state.updated_at = now;
            state.due_at = Some(self.due_at(&state));
            let commit = Commit {
                expected_version: work.loaded_version,
                state: Some(state.clone()),
                remove_staged: vec![],
            };
            match self.store.commit(&work.context_id, &commit).await? {
                CommitOutcome::Committed => {
                    work.loaded_version += 1;
                    work.state.lease = state.lease;
                    work.leased = true;
                    work.dirty = true;
                    return Ok(true);
                }
                CommitOutcome::VersionMismatch => {
                    let fresh = self
                        .store
                        .load(&work.context_id)
                        .await?
                        .unwrap_or_else(|| ContextState::new(self.config.first_seq));
                    if fresh.next != work.state.next {
                        // The cursor moved under us: what this batch decided no longer holds.
                        break;
                    }
                    work.loaded_version = fresh.version;
                    work.state.lease = fresh.lease;
                    work.state.waiting_since = fresh.waiting_since;
                }
            }
        }
        bump(&self.counters.lease_conflicts);
        work.busy = true;
        Ok(false)
    }

    /// Releases every consecutive message from the cursor on, skipping a gap whose
    /// timeout has passed, until a position is missing or the context stalls.
    async fn advance<H: Handler, D: DeadLetterSink>(
        &self,
        work: &mut Work,
        now: Millis,
        handler: &H,
        dlq: &D,
        outcomes: &mut [Outcome],
    ) -> Result<(), StoreError> {
        if work.state.pending_skip.is_some() && !self.apply_skip(work, now, handler, dlq, outcomes).await? {
            return Ok(());
        }
        while !self.stalled(work, now) {
            let next = work.state.next;
            if work.state.final_seq.is_some_and(|f| next > f) {
                return self.close_out(work, dlq, outcomes).await;
            }
            if let Some(last) = work.state.skipped.iter().find(|r| r.contains(next)).map(|r| r.last) {
                // A position dead-lettered ahead of the cursor (too large to stage).
                work.state.next = last.saturating_add(1);
                work.dirty = true;
                continue;
            }
            self.ensure_view(work, next).await?;
            let (msg, source) = if let Some(stored) = work.view.items.remove(next) {
                if let Some(copy) = work.pending.remove(next) {
                    outcomes[copy.index] = self.second_copy(work, stored.body_hash, &copy.msg, dlq).await;
                }
                (stored, Source::Store)
            } else if let Some(p) = work.pending.remove(next) {
                (p.msg, Source::Pending(p.index))
            } else if self.skip_expired_gap(work, now).await? {
                continue;
            } else {
                return Ok(());
            };
            if let Step::Stall = self.release(work, msg, source, now, handler, dlq, outcomes).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The context is closed (its `final` position was released): nothing after it is
    /// ever released, whatever the arrival order. Messages that waited beyond the final
    /// position are late, exactly as if they had arrived after it (SPEC §2). One that
    /// cannot be dead-lettered stays staged; the retention sweep dead-letters it later.
    async fn close_out<D: DeadLetterSink>(
        &self,
        work: &mut Work,
        dlq: &D,
        outcomes: &mut [Outcome],
    ) -> Result<(), StoreError> {
        let next = work.state.next;
        let final_seq = work.state.final_seq.unwrap_or(next);
        let detail = |seq: u64| {
            format!(
                "context {} closed at its final position {final_seq}; position {seq} comes after it",
                work.context_id
            )
        };
        let pending = std::mem::replace(&mut work.pending, SeqMap::new());
        for (seq, p) in pending.entries {
            bump(&self.counters.late);
            outcomes[p.index] = self.dead_letter(work, &p.msg, Reason::Late, &detail(seq), dlq).await;
            tracing::warn!(decision = "late", context_id = %work.context_id, seq, message_id = %p.msg.message_id, final_seq, outcome = ?outcomes[p.index], "after the final position: late");
        }
        let mut kept = SeqMap::new();
        let mut from = next;
        loop {
            let page = self.store.staged(&work.context_id, from, u64::MAX, PAGE).await?;
            let full = page.len() == PAGE;
            for msg in page {
                from = msg.seq.saturating_add(1);
                if work.remove_staged.contains(&msg.seq) {
                    continue;
                }
                bump(&self.counters.late);
                let outcome = self.dead_letter(work, &msg, Reason::Late, &detail(msg.seq), dlq).await;
                tracing::warn!(decision = "late", context_id = %work.context_id, seq = msg.seq, message_id = %msg.message_id, final_seq, ?outcome, "waited beyond the final position: late (kept staged if the DLQ refused it)");
                if outcome.is_settled() {
                    work.remove_staged.push(msg.seq);
                    work.dirty = true;
                } else {
                    kept.insert(msg.seq, msg);
                }
            }
            if !full {
                break;
            }
        }
        // The window now tells exactly what still waits: what could not be dead-lettered.
        work.view = StoreView {
            items: kept,
            from: next,
            last: u64::MAX,
        };
        Ok(())
    }

    /// If the oldest waiting message has waited `gap_timeout`, records the missing
    /// positions before the lowest waiting one as skipped and moves the cursor there.
    async fn skip_expired_gap(&self, work: &mut Work, now: Millis) -> Result<bool, StoreError> {
        if !self.gap_expired(work, now).await? {
            return Ok(false);
        }
        let next = work.state.next;
        let lowest_stored = self.first_stored_at_or_after(work, next).await?;
        let lowest_pending = work.pending.first_at_or_after(0);
        let Some(lowest) = [lowest_stored, lowest_pending].into_iter().flatten().min() else {
            return Ok(false);
        };
        if lowest <= next {
            return Ok(false);
        }
        work.state.record_skip(next, lowest - 1);
        work.state.next = lowest;
        work.dirty = true;
        tracing::warn!(
            decision = "gap-skipped",
            context_id = %work.context_id,
            first = next,
            last = lowest - 1,
            timeout = %self.config.gap_timeout.unwrap_or_default(),
            "the gap outlasted --gap-timeout: its positions are skipped, the run after it is released"
        );
        bump(&self.counters.gaps_skipped);
        self.counters.positions_skipped.fetch_add(lowest - next, Relaxed);
        Ok(true)
    }

    /// Whether the oldest message waiting in this context has waited `gap_timeout`.
    async fn gap_expired(&self, work: &mut Work, now: Millis) -> Result<bool, StoreError> {
        let Some(timeout) = self.config.gap_timeout else {
            return Ok(false);
        };
        let oldest = self.oldest_waiting(work, false).await?;
        Ok(oldest.is_some_and(|t| now.since(t) >= timeout))
    }

    /// Since when messages wait beyond the cursor. While the cursor has not moved, the
    /// stored `waiting_since` and this batch's own waiting messages tell; once it moved,
    /// the oldest of the waiting messages in the store's window at the cursor (one read if
    /// the window is empty) stands for it: never older than the truth, so a gap is never
    /// skipped early.
    async fn oldest_waiting(&self, work: &mut Work, from_store: bool) -> Result<Option<Millis>, StoreError> {
        let pending = work.pending.values().map(|p| p.msg.received_at).min();
        if work.state.next == work.start_next && !from_store {
            return Ok([work.state.waiting_since, pending].into_iter().flatten().min());
        }
        let next = work.state.next;
        self.ensure_view(work, next).await?;
        let in_view = work
            .view
            .items
            .entries
            .iter()
            .filter(|(seq, _)| *seq >= next)
            .map(|(_, m)| m.received_at)
            .min();
        if let Some(known) = [in_view, pending].into_iter().flatten().min() {
            return Ok(Some(known));
        }
        if work.view.covers(next) && work.view.last == u64::MAX {
            // The window reaches the end (a close-out read everything): nothing waits.
            return Ok(None);
        }
        if work.state.waiting_since.is_none() && !from_store {
            return Ok(None);
        }
        let first = self.store.staged(&work.context_id, next, u64::MAX, 1).await?;
        Ok(first.first().map(|m| m.received_at))
    }

    /// When a sweep must look at this context next: a handler retry, a gap timeout, a
    /// waiting message reaching the retention, or the state itself reaching it.
    fn due_at(&self, state: &ContextState) -> Millis {
        let retention = self.config.retention;
        // The retention timer is rounded up to a hundredth of the retention, so that it
        // stays the same across the commits of a busy context: an index entry whose key
        // does not change costs nothing to keep (DynamoDB charges a changed GSI key twice).
        let granularity = (retention.0 / 100).max(1000);
        let expiry = state.updated_at.plus(retention).0;
        let mut due = Millis(expiry.div_ceil(granularity).saturating_mul(granularity).max(expiry));
        // A worker that dies holding the lease leaves its context to the sweep when the
        // lease runs out.
        if let Some(lease) = &state.lease {
            due = due.min(lease.until);
        }
        if state.pending_skip.is_some() {
            // An operator's skip waits to be carried out: at the next sweep.
            due = due.min(state.updated_at);
        }
        let stalled_by_retry = state.blocked.is_none() && state.retry.is_some();
        if let Some(retry) = state.retry.as_ref().filter(|_| state.blocked.is_none()) {
            due = due.min(retry.not_before);
        }
        if state.waiting_since.is_some() && state.blocked.is_none() {
            // The last net under the lost-wakeup protocol: a context with messages waiting
            // is looked at again at least this often, so that no path that lost its check
            // (a worker dying between the check and the drain while SQS's other delivery
            // of its message was deleted: found by the simulation's soak) strands it until
            // the retention. Costs one state write per interval, only while a context waits.
            due = due.min(state.updated_at.plus(WAITING_RECHECK));
        }
        if let Some(since) = state.waiting_since {
            // Expired messages the DLQ did not take come back when their retry is due.
            let expiry = since.plus(retention);
            due = due.min(match &state.expiry_retry {
                Some(retry) => expiry.max(retry.not_before),
                None => expiry,
            });
            if let Some(gap) = self
                .config
                .gap_timeout
                .filter(|_| state.blocked.is_none() && !stalled_by_retry)
            {
                due = due.min(since.plus(gap));
            }
        }
        due
    }

    /// Hands one message to the handler and applies the result to the context.
    #[allow(clippy::too_many_arguments)]
    async fn release<H: Handler, D: DeadLetterSink>(
        &self,
        work: &mut Work,
        msg: StagedMessage,
        source: Source,
        now: Millis,
        handler: &H,
        dlq: &D,
        outcomes: &mut [Outcome],
    ) -> Result<Step, StoreError> {
        if work.deadline.is_some_and(|deadline| self.clock.now() >= deadline) {
            work.cut = true;
            work.dirty = true;
            self.keep_waiting(work, msg, source, outcomes);
            return Ok(Step::Stall);
        }
        if !self.acquire(work, now).await? {
            self.keep_waiting(work, msg, source, outcomes);
            return Ok(Step::Stall);
        }
        if work.deadline.is_some_and(|deadline| self.clock.now() >= deadline) {
            // Taking the lease took long (a slow store): the release would start too late
            // into the lease to end within it (found by the simulation's soak).
            work.cut = true;
            work.dirty = true;
            self.keep_waiting(work, msg, source, outcomes);
            return Ok(Step::Stall);
        }
        let failures = work
            .state
            .retry
            .as_ref()
            .filter(|r| r.seq == msg.seq)
            .map_or(0, |r| r.attempts);
        let release = Release {
            context_id: &work.context_id,
            seq: msg.seq,
            prev_seq: work.state.last_released,
            message_id: &msg.message_id,
            body: &msg.body,
            attributes: &msg.attributes,
            late: false,
            attempt: failures + 1,
        };
        if self.mutation == Mutation::CommitBeforeHandler {
            let mut moved = work.state.clone();
            moved.next = msg.seq.saturating_add(1);
            moved.last_released = Some(msg.seq);
            let commit = Commit {
                expected_version: work.loaded_version,
                state: Some(moved),
                remove_staged: vec![],
            };
            if let CommitOutcome::Committed = self.store.commit(&work.context_id, &commit).await? {
                work.loaded_version += 1;
            }
        }
        let result = handler.handle(&release).await;
        if result.is_err() {
            bump(&self.counters.handler_errors);
        }
        let error = match result {
            Ok(()) => {
                self.breaker.succeeded();
                self.counters.released_after(self.clock.now().since(msg.received_at));
                self.move_past(work, msg.seq);
                work.state.last_released = Some(msg.seq);
                if msg.is_final {
                    work.state.final_seq = Some(msg.seq);
                }
                if let Some(i) = source.index() {
                    outcomes[i] = Outcome::Released;
                    work.released.push(i);
                }
                return Ok(Step::Continue);
            }
            Err(HandlerError::Rejected(e)) => {
                // The target can never take this message: retrying or blocking cannot
                // help, so it goes to the DLQ under either poison policy.
                tracing::warn!(context_id = %work.context_id, seq = msg.seq, message_id = %msg.message_id, error = %e, "the target rejects this message for good: dead-lettered");
                let detail = format!("the target rejected the message: {e}");
                let outcome = self.dead_letter(work, &msg, Reason::HandlerFailed, &detail, dlq).await;
                if outcome.is_settled() {
                    bump(&self.counters.poison);
                    self.move_past(work, msg.seq);
                    if let Some(i) = source.index() {
                        outcomes[i] = outcome;
                    }
                    return Ok(Step::Continue);
                }
                e
            }
            Err(HandlerError::Retryable(e)) if self.breaker.failed(&work.context_id) => {
                // An outage of the target, not poison: back off, count no attempt.
                bump(&self.counters.outage_retries);
                let retry = uncounted_retry(work, msg.seq, failures, now, e);
                tracing::warn!(decision = "retried", outage = true, context_id = %work.context_id, seq = msg.seq, message_id = %msg.message_id, error = %retry.last_error, retry_at = retry.not_before.0, "the target is out: retrying later, no attempt counted");
                return Ok(self.retry_later(work, msg, source, retry, outcomes));
            }
            Err(HandlerError::Retryable(e)) if failures + 1 < self.config.max_attempts => {
                bump(&self.counters.handler_retries);
                let retry = RetryState {
                    seq: msg.seq,
                    attempts: failures + 1,
                    not_before: now.plus(retry_backoff(failures + 1)),
                    last_error: e,
                    outage_retries: 0,
                };
                tracing::warn!(decision = "retried", context_id = %work.context_id, seq = msg.seq, message_id = %msg.message_id, attempt = retry.attempts, error = %retry.last_error, retry_at = retry.not_before.0, "handler failed: retrying");
                return Ok(self.retry_later(work, msg, source, retry, outcomes));
            }
            Err(HandlerError::Retryable(e) | HandlerError::Permanent(e)) => e,
        };
        bump(&self.counters.poison);
        let attempts = failures + 1;
        if self.config.on_poison == PoisonPolicy::Skip {
            let detail = format!("handler failed after {attempts} attempt(s): {error}");
            let outcome = self.dead_letter(work, &msg, Reason::HandlerFailed, &detail, dlq).await;
            if outcome.is_settled() {
                self.move_past(work, msg.seq);
                if let Some(i) = source.index() {
                    outcomes[i] = outcome;
                }
                return Ok(Step::Continue);
            }
            // The DLQ is out: that is no reason to block a context whose operator chose
            // skip. Try again later (found by the simulation: a DLQ hiccup blocked for good).
            let last_error = format!("{error}; and the DLQ refused it: {outcome:?}");
            let retry = uncounted_retry(work, msg.seq, failures, now, last_error);
            tracing::warn!(context_id = %work.context_id, seq = msg.seq, message_id = %msg.message_id, retry_at = retry.not_before.0, "poison message could not be dead-lettered: trying again later");
            return Ok(self.retry_later(work, msg, source, retry, outcomes));
        }
        bump(&self.counters.blocked);
        tracing::error!(
            decision = "blocked",
            context_id = %work.context_id,
            seq = msg.seq,
            message_id = %msg.message_id,
            attempts,
            error = %error,
            "poison message: the context is blocked at this position until an operator retries or skips it"
        );
        work.state.retry = None;
        work.state.blocked = Some(Blocked {
            seq: msg.seq,
            attempts,
            error,
            since: now,
        });
        work.dirty = true;
        self.keep_waiting(work, msg, source, outcomes);
        Ok(Step::Stall)
    }

    /// Keeps `msg` waiting until `retry.not_before`: the context stalls there.
    fn retry_later(
        &self,
        work: &mut Work,
        msg: StagedMessage,
        source: Source,
        retry: RetryState,
        outcomes: &mut [Outcome],
    ) -> Step {
        work.state.retry = Some(retry);
        work.dirty = true;
        self.keep_waiting(work, msg, source, outcomes);
        Step::Stall
    }

    fn move_past(&self, work: &mut Work, seq: u64) {
        work.state.retry = None;
        work.state.next = seq.saturating_add(1);
        if seq == u64::MAX {
            // No position can follow the last one: the context is complete.
            work.state.final_seq = Some(seq);
        }
        work.dirty = true;
    }

    /// A message the handler did not take stays staged (written at the end of the batch
    /// if it came from this batch).
    fn keep_waiting(&self, work: &mut Work, msg: StagedMessage, source: Source, outcomes: &mut [Outcome]) {
        match source {
            Source::Batch(index) | Source::Pending(index) => {
                outcomes[index] = Outcome::Staged;
                work.pending.insert(msg.seq, Pending { msg, index });
            }
            Source::Store => {
                work.view.items.insert(msg.seq, msg);
            }
        }
    }

    async fn ensure_view(&self, work: &mut Work, seq: u64) -> Result<(), StoreError> {
        if !work.view.covers(seq) {
            self.fetch_view(work, seq).await?;
        }
        Ok(())
    }

    /// Reads the staged messages in the window `from..from + width`: the positions a
    /// release can use next. Each further read of the same context covers a wider window.
    async fn fetch_view(&self, work: &mut Work, from: u64) -> Result<(), StoreError> {
        let width = work.next_page;
        work.next_page = (width * 4).min(PAGE);
        let last = from.saturating_add(width as u64 - 1);
        let page = self.store.staged(&work.context_id, from, last, width).await?;
        let items = SeqMap::from_sorted(page.into_iter().map(|m| (m.seq, m)).collect());
        work.view = StoreView { items, from, last };
        Ok(())
    }

    async fn first_stored_at_or_after(&self, work: &mut Work, seq: u64) -> Result<Option<u64>, StoreError> {
        if let Some(found) = work.view.items.first_at_or_after(seq).filter(|_| work.view.covers(seq)) {
            return Ok(Some(found));
        }
        let first = self.store.staged(&work.context_id, seq, u64::MAX, 1).await?;
        Ok(first.first().map(|m| m.seq))
    }

    /// Dead-letters waiting messages older than the retention (SPEC §2: waiting messages
    /// are never deleted by expiry), then forgets a context with nothing left waiting
    /// whose state is older than the retention.
    async fn expire<D: DeadLetterSink>(&self, work: &mut Work, now: Millis, dlq: &D) -> Result<(), StoreError> {
        // Measured as an age, not against `now - retention`, which saturates at the epoch.
        let retention = self.config.retention;
        if work.state.expiry_retry.as_ref().is_some_and(|r| now < r.not_before) {
            return Ok(());
        }
        let mut from = work.state.next;
        let mut remaining = Waiting::default();
        // Expired messages the DLQ did not take, and why: they stay staged.
        let mut undelivered: Vec<u64> = Vec::new();
        let mut last_error = String::new();
        loop {
            let page = self.store.staged(&work.context_id, from, u64::MAX, PAGE).await?;
            let full = page.len() == PAGE;
            for msg in &page {
                from = msg.seq.saturating_add(1);
                let expired = now.since(msg.received_at) >= retention;
                if expired && undelivered.is_empty() {
                    let detail = format!(
                        "context {} position {} waited longer than the retention ({})",
                        work.context_id, msg.seq, self.config.retention
                    );
                    match self.dead_letter(work, msg, Reason::Expired, &detail, dlq).await {
                        Outcome::Held(hold) => last_error = format!("{hold:?}"),
                        _ => {
                            bump(&self.counters.expired);
                            tracing::warn!(decision = "expired", context_id = %work.context_id, seq = msg.seq, message_id = %msg.message_id, "waited longer than the retention: dead-lettered expired");
                            work.remove_staged.push(msg.seq);
                            work.dirty = true;
                            continue;
                        }
                    }
                }
                if expired {
                    undelivered.push(msg.seq);
                }
                remaining.count += 1;
                remaining.oldest_received_at = Some(
                    remaining
                        .oldest_received_at
                        .map_or(msg.received_at, |t| t.min(msg.received_at)),
                );
            }
            if !full {
                break;
            }
        }
        if undelivered.is_empty() {
            if work.state.expiry_retry.take().is_some() {
                work.dirty = true;
            }
        } else {
            // Never silently, never in a hot loop, never to the store's own expiry: the
            // sweep backs off, and the store keeps the messages beyond the next try.
            let attempts = work.state.expiry_retry.as_ref().map_or(0, |r| r.attempts) + 1;
            let delay = Duration::from_millis(retry_backoff(attempts).0.saturating_mul(5));
            let not_before = now.plus(delay);
            self.counters
                .expiry_failures
                .fetch_add(undelivered.len() as u64, Relaxed);
            tracing::error!(
                context_id = %work.context_id,
                count = undelivered.len(),
                first_seq = undelivered[0],
                attempts,
                error = %last_error,
                retry_at = not_before.0,
                "expired messages could not be dead-lettered (is a DLQ configured and reachable?); they stay staged \
                 and the sweep tries again"
            );
            self.store
                .keep_staged(&work.context_id, &undelivered, not_before.plus(retention))
                .await?;
            work.state.expiry_retry = Some(ExpiryRetry {
                attempts,
                not_before,
                last_error,
            });
            work.dirty = true;
        }
        work.view = StoreView::empty();
        for seq in &work.remove_staged {
            work.view.items.remove(*seq);
        }
        if work.state.waiting_since != remaining.oldest_received_at {
            work.state.waiting_since = remaining.oldest_received_at;
            work.dirty = true;
        }
        if now.since(work.state.updated_at) >= retention && work.loaded_version > 0 {
            // With nothing waiting the context is forgotten; messages still waiting keep
            // it alive, and refreshing `updated_at` stops every sweep finding it again.
            work.forget = remaining.count == 0;
            work.dirty = true;
        }
        Ok(())
    }

    /// Keeps `state.waiting_since` true after the batch: a context that starts waiting
    /// gets it (one state write when a gap opens, none for later arrivals into the same
    /// gap); one whose cursor moved gets it worked out again.
    async fn note_waiting(&self, work: &mut Work, staged_since: Option<Millis>) -> Result<(), StoreError> {
        // A lease holder asks the store too: other workers may have staged meanwhile.
        let since = if work.state.next != work.start_next || work.leased {
            let stored = self.oldest_waiting(work, true).await?;
            [stored, staged_since].into_iter().flatten().min()
        } else {
            [work.state.waiting_since, staged_since].into_iter().flatten().min()
        };
        if since != work.state.waiting_since {
            work.state.waiting_since = since;
            work.dirty = true;
        }
        Ok(())
    }

    /// Writes what the batch decided for one context: the messages still waiting, then
    /// the state. If either fails, nothing released in this batch is settled.
    /// Returns whether the context must be drained again: with leases, a message may have
    /// become releasable while this worker held the lease or waited for it (see `woken`).
    async fn finish<D: DeadLetterSink>(
        &self,
        mut work: Work,
        now: Millis,
        dlq: &D,
        outcomes: &mut [Outcome],
    ) -> Finished {
        let lease_elsewhere = self.config.lease.is_some()
            && work
                .state
                .lease
                .as_ref()
                .is_some_and(|l| l.owner != work.lease_holder && now < l.until);
        // The lease holder writes the state; a write here would only make its commit lose
        // the version race. What this work staged, the holder or `woken` finds.
        let state_writable = work.leased || !(work.busy || lease_elsewhere);
        let mut staged_since: Option<Millis> = None;
        if work.failed.is_none() {
            let pending = std::mem::replace(&mut work.pending, SeqMap::new());
            for (_, p) in pending.entries {
                match self.store.stage(&work.context_id, &p.msg).await {
                    Ok(StageOutcome::Staged) => {
                        bump(&self.counters.staged);
                        staged_since = Some(staged_since.map_or(p.msg.received_at, |t| t.min(p.msg.received_at)));
                    }
                    Ok(StageOutcome::AlreadyStaged) => {
                        bump(&self.counters.duplicates);
                        work.saw_copy = true;
                        outcomes[p.index] = Outcome::Duplicate;
                    }
                    Ok(StageOutcome::TooLarge { .. }) if !state_writable => {
                        // Its position must be recorded as dead-lettered in the state, which
                        // only the lease holder writes: the source brings it back later.
                        outcomes[p.index] = Outcome::Held(Hold::Busy);
                    }
                    Ok(StageOutcome::TooLarge { limit_bytes }) => {
                        let detail = format!(
                            "context {} position {}: the staging store cannot hold this body of {} bytes: it \
                             allows {limit_bytes} bytes once compressed; the position is skipped",
                            work.context_id,
                            p.msg.seq,
                            p.msg.body.len()
                        );
                        tracing::warn!(context_id = %work.context_id, seq = p.msg.seq, message_id = %p.msg.message_id, "too large to stage: dead-lettered, its position is skipped");
                        outcomes[p.index] = self.dead_letter(&work, &p.msg, Reason::TooLarge, &detail, dlq).await;
                        if outcomes[p.index].is_settled() {
                            // A dead-lettered position must not leave a hole the cursor can
                            // never pass: it is recorded like a skipped one.
                            work.state.record_skip(p.msg.seq, p.msg.seq);
                            if work.state.retry.as_ref().is_some_and(|r| r.seq == p.msg.seq) {
                                work.state.retry = None;
                            }
                            if work.state.blocked.as_ref().is_some_and(|b| b.seq == p.msg.seq) {
                                work.state.blocked = None;
                            }
                            work.dirty = true;
                        }
                    }
                    Ok(StageOutcome::Conflict) => {
                        // A copy of a staged position, as `AlreadyStaged` is.
                        work.saw_copy = true;
                        bump(&self.counters.conflicts);
                        let detail = format!(
                            "context {} position {} was already staged with a different body; the first copy wins",
                            work.context_id, p.msg.seq
                        );
                        tracing::warn!(decision = "conflict", context_id = %work.context_id, seq = p.msg.seq, message_id = %p.msg.message_id, "a copy with a different body was staged first: the first copy wins, this one is dead-lettered");
                        outcomes[p.index] = self.dead_letter(&work, &p.msg, Reason::Conflict, &detail, dlq).await;
                    }
                    Err(err) => {
                        outcomes[p.index] = Outcome::Held(Hold::Failed(err.to_string()));
                        work.failed = Some(err.to_string());
                    }
                }
            }
        }
        if work.failed.is_none()
            && let Err(err) = self.note_waiting(&mut work, staged_since).await
        {
            work.failed = Some(err.to_string());
        }
        if work.leased {
            work.state.lease = None;
        }
        if work.state.due_at.is_some_and(|due| due <= now) {
            // A sweep came for this context: whatever it did, its next time must be
            // written, or every sweep would find it again.
            work.dirty = true;
        }
        if !state_writable {
            work.dirty = false;
        }
        if work.failed.is_none() && work.dirty {
            work.state.updated_at = now;
            let mut due_at = self.due_at(&work.state);
            if work.cut {
                due_at = due_at.min(now);
            }
            let recheck = work.recheck && work.leased && self.mutation != Mutation::NoStrandingRepair;
            if let Some(lease) = self.config.lease.as_ref().filter(|_| recheck) {
                // If the check after this commit is lost, a sweep still comes.
                due_at = due_at.min(now.plus(lease.duration));
            }
            work.state.due_at = Some(due_at);
            let commit = Commit {
                expected_version: work.loaded_version,
                state: if work.forget { None } else { Some(work.state.clone()) },
                remove_staged: std::mem::take(&mut work.remove_staged),
            };
            let committed = self.store.commit(&work.context_id, &commit).await;
            tracing::debug!(
                context_id = %work.context_id,
                holder = %work.lease_holder,
                expected = work.loaded_version,
                next = work.state.next,
                leased = work.leased,
                due_at = work.state.due_at.map(|d| d.0),
                outcome = ?committed,
                "commit"
            );
            match committed {
                Ok(CommitOutcome::Committed) => {
                    if commit.state.is_none() {
                        bump(&self.counters.contexts_forgotten);
                    }
                }
                Ok(CommitOutcome::VersionMismatch) => {
                    for i in unrecorded(&work, outcomes) {
                        outcomes[i] = Outcome::Held(Hold::Busy);
                    }
                }
                Err(err) => work.failed = Some(err.to_string()),
            }
        }
        if let Some(err) = work.failed.take() {
            // Nothing of this context was written.
            for i in unrecorded(&work, outcomes) {
                outcomes[i] = Outcome::Held(Hold::Failed(err.clone()));
            }
            return Finished::Failed(err);
        }
        if work.cut {
            // Due at once: the next sweep carries on where the deadline stopped this one.
            return Finished::Done;
        }
        let staged_any = staged_since.is_some();
        let saw_copy = work.saw_copy && self.mutation != Mutation::NoStrandingRepair;
        let check = self.config.lease.is_some() && (work.leased || work.busy || staged_any || saw_copy);
        if !check {
            return Finished::Done;
        }
        let woken = self.woken(&work.context_id, now).await;
        tracing::debug!(context_id = %work.context_id, holder = %work.lease_holder, result = ?woken, "lost-wakeup check");
        match woken {
            Ok(true) => Finished::Wake,
            Ok(false) => Finished::Done,
            Err(err) => Finished::Unchecked(err.to_string()),
        }
    }

    /// The lost-wakeup check of the lease protocol. A holder gives the lease back in its
    /// commit and then looks at the cursor's position; a worker that staged while another
    /// held the lease looks at the state after staging. Each writes, then reads what the
    /// other writes, so at least one of them sees the message that became releasable.
    /// An error is not "nothing to do": the caller makes sure someone looks again.
    async fn woken(&self, context_id: &str, now: Millis) -> Result<bool, StoreError> {
        if self.mutation == Mutation::NoLostWakeupCheck {
            return Ok(false);
        }
        let Some(state) = self.store.load(context_id).await? else {
            return Ok(false);
        };
        let held = state.lease.as_ref().is_some_and(|l| now < l.until);
        let stalled = state.blocked.is_some() || state.retry.as_ref().is_some_and(|r| now < r.not_before);
        if held || stalled {
            return Ok(false);
        }
        let next = state.next;
        Ok(!self.store.staged(context_id, next, next, 1).await?.is_empty())
    }

    /// Releases what became releasable in a context outside any batch (after a wakeup),
    /// again and again while more became releasable meanwhile: stopping early would strand
    /// what others staged during this worker's lease. Each round releases something or
    /// finds the lease taken (then its holder checks), so the loop ends when traffic does;
    /// the bound only guards against a livelock. An error says the context may still hold
    /// a releasable message: the caller makes sure someone looks again.
    async fn drain<H: Handler, D: DeadLetterSink>(
        &self,
        context_id: &str,
        handler: &H,
        dlq: &D,
        deadline: Option<Millis>,
        recheck: bool,
    ) -> Result<(), String> {
        for _ in 0..10_000 {
            let now = self.clock.now();
            let mut work = self.load(context_id, deadline).await;
            work.recheck = recheck;
            if let Some(err) = work.failed.clone() {
                return Err(err);
            }
            if let Err(err) = self.advance(&mut work, now, handler, dlq, &mut []).await {
                work.failed = Some(err.to_string());
            }
            match self.finish(work, now, dlq, &mut []).await {
                Finished::Wake => continue,
                Finished::Done => return Ok(()),
                Finished::Failed(err) | Finished::Unchecked(err) => return Err(err),
            }
        }
        Ok(())
    }
}
