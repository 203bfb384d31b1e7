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
//!
//! One file per concern; this one holds the entry points (`process`, `sweep`) and the
//! batch protocol around them:
//! - `accept.rs`: **the rule for one arriving message** (read it first);
//! - `release.rs`: releasing the run at the cursor, handler failures, gap and operator
//!   skips, the close-out after `final`;
//! - `timers.rs`: gap timeouts, retention, `waiting_since`, when a context is due;
//! - `lease.rs`: the per-context lease, the lost-wakeup check, draining;
//! - `commit.rs`: the end of a batch for one context (stage, commit, look again?);
//! - `window.rs`: the staged messages read from the store for one context;
//! - `work.rs`: the working copy of a context; `config.rs`, `outcome.rs`, `stats.rs`,
//!   `breaker.rs`: settings, results, counters, the outage breaker.
//!
//! ARCHITECTURE.md's invariants are asserted where they are kept (`debug_assert!`, on in
//! every test and in the simulation).

mod accept;
mod breaker;
mod commit;
mod config;
mod lease;
mod outcome;
mod release;
mod stats;
mod timers;
mod typed;
mod window;
mod work;

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

use breaker::*;
pub use config::{EngineConfig, LatePolicy, LeaseConfig, Mutation, PoisonPolicy, retry_backoff};
pub use outcome::{Hold, Outcome};
use stats::*;
pub use stats::{LATENCY_SAMPLE, ReleaseLatencies, Stats};
use work::*;

/// A context with messages waiting is swept at least this often (see `due_at`).
pub const WAITING_RECHECK: Duration = Duration::from_millis(15 * 60 * 1000);

/// How many positions the first store read of a context covers; each further read of the
/// same context in a batch covers four times more, up to `PAGE`.
const FIRST_PAGE: usize = 16;

const PAGE: usize = 512;

/// The engine over a store `S` and a clock `C`: batches of [`Envelope`]s in
/// ([`Engine::process`]), ordered [`Handler`] calls and dead letters out, one
/// [`Outcome`] per message telling the caller whether it may acknowledge it; timers
/// (gap timeouts, retries, retention) fired by [`Engine::sweep`]. One engine may serve
/// many calls at once; several engines (processes) may share a store when each has a
/// [`EngineConfig::lease`].
///
/// ```
/// use reseq_core::testing::{RecordingDlq, RecordingHandler};
/// use reseq_core::{Duration, Engine, EngineConfig, Envelope, ManualClock, MemoryStore, Millis, Outcome};
///
/// let config = EngineConfig { gap_timeout: Some(Duration::from_secs(30)), ..EngineConfig::default() };
/// let engine = Engine::new(MemoryStore::new(), ManualClock::new(Millis(0)), config);
/// let (handler, dlq) = (RecordingHandler::new(), RecordingDlq::new());
/// let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
///
/// // Position 1 never comes: 2 and 3 wait, 2 again is a duplicate.
/// let batch = vec![Envelope::new("a", 3, "c"), Envelope::new("a", 2, "b"), Envelope::new("a", 2, "b")];
/// let outcomes = runtime.block_on(engine.process(batch, &handler, &dlq));
/// assert_eq!(outcomes, [Outcome::Staged, Outcome::Staged, Outcome::Duplicate]);
/// assert!(handler.seqs("a").is_empty());
///
/// // After the gap timeout the sweep skips position 1 and releases 2 and 3, in order.
/// engine.clock().advance(Duration::from_secs(31));
/// runtime.block_on(engine.sweep(&handler, &dlq, 100)).unwrap();
/// assert_eq!(handler.seqs("a"), [2, 3]);
/// assert_eq!(engine.stats().gaps_skipped, 1);
/// ```
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

impl<S: StagingStore, C: Clock> Engine<S, C> {
    /// An engine on `store`, reading the time from `clock`, with `config`'s rules.
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

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The rules it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Its counters since it was created.
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
        self.counters.take_latencies()
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
            if env.message_type.is_some() && self.typed_route(&env).is_none() {
                // A type in no sequence, or no context id: handled at once (SPEC §5).
                outcomes[index] = self.pass_through(env, handler, dlq).await;
                continue;
            }
            let work = match &mut works[slot] {
                Some(work) => work,
                empty => empty.insert(self.load(&env.context_id, deadline).await),
            };
            work.indices.push(index);
            if let Some(err) = &work.failed {
                outcomes[index] = Outcome::Held(Hold::Failed(err.clone()));
                continue;
            }
            let accepted = if env.message_type.is_some() {
                self.accept_typed(work, index, env, now, handler, dlq, &mut outcomes)
                    .await
            } else {
                self.accept(work, index, env, now, handler, dlq, &mut outcomes).await
            };
            if let Err(err) = accepted {
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
}
