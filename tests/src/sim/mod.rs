//! The deterministic simulation (issue 9): one `u64` seed drives everything.
//!
//! The seed picks a configuration (queue kind, workers and their clock skews, fault
//! rates, capacity, workload) and then every choice of the run: which task runs next,
//! when time moves, which request fails, which worker dies where. The real
//! `reseq_sqs::batch::Processor` and `reseq_core::Engine` run unchanged over a simulated
//! SQS queue ([`sqs`]) and a simulated DynamoDB table ([`store`]), polled by a
//! single-threaded executor ([`executor`]); there is no thread, no runtime and no wall
//! clock, so a seed replays exactly.
//!
//! A run has a **safety phase** with faults (store errors before applying, writes that
//! applied but timed out, a lagging `due` index, a flaky and sometimes slow target, an
//! unavailable DLQ, workers dying at any await point and coming back) and a **liveness
//! phase** with every fault healed, in which everything must drain within a bound.
//! Checked after every step: handler calls per context in order with the right
//! `prev_seq`, the same body for every release of a position, no two releases of one
//! context at once, the cursor never moving back, and an SQS message deleted only once it
//! is durably staged, released and committed, or dead-lettered. Checked at the end: the
//! queue drained, nothing lost, no context stranded, every dead letter one the workload
//! predicts, repeats only where a fault or crash allows them.

pub mod executor;
pub mod sqs;
pub mod store;
mod typed;

pub use typed::run_typed;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reseq_core::engine::{LeaseConfig, Mutation};
use reseq_core::{
    AttributeValue, Attributes, Clock, DeadLetter, DeadLetterSink, Duration, Engine, EngineConfig, Extractor, Handler,
    HandlerError, Hold, Millis, PoisonPolicy, Reason, Release, SinkError, StagingStore,
};
use reseq_sqs::batch::{InvalidPolicy, Processor, Verdict};

use executor::{SimTime, SkewedClock, Task, poll_once, sleep_until, yield_now};
use sqs::Queue;
use store::{SimStore, StoreFaults};

/// Everything the seed decided before the run starts; printed with a failure.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub fifo: bool,
    /// FIFO groups: one per context, or one per producer (contexts interleave in groups).
    pub group_per_context: bool,
    pub workers: usize,
    pub receivers: usize,
    pub skews_ms: Vec<i64>,
    pub contexts: usize,
    pub positions: u64,
    pub max_staged: u64,
    pub store_faults: StoreFaults,
    /// Out of 1000 handler calls, how many fail retryably during the safety phase.
    pub handler_fail: u32,
    /// Out of 1000 dead letters, how many the DLQ refuses during the safety phase.
    pub dlq_fail: u32,
    /// Out of 1000 steps, in how many a worker dies.
    pub crash: u32,
    pub mutation: Mutation,
}

impl SimConfig {
    pub fn from_seed(seed: u64, mutation: Mutation) -> SimConfig {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x0c0f_f1ce);
        let workers = rng.random_range(1..=4);
        SimConfig {
            seed,
            fifo: rng.random_bool(0.5),
            group_per_context: rng.random_bool(0.5),
            workers,
            receivers: rng.random_range(1..=2),
            skews_ms: (0..workers).map(|_| rng.random_range(-1500..=1500)).collect(),
            contexts: rng.random_range(2..=6),
            positions: rng.random_range(5..=25),
            max_staged: if rng.random_bool(0.3) {
                rng.random_range(1..=4)
            } else {
                10_000
            },
            store_faults: StoreFaults {
                fail_before: rng.random_range(0..=60),
                applied_then_timeout: rng.random_range(0..=30),
                due_lag_ms: rng.random_range(0..=3000),
            },
            handler_fail: rng.random_range(0..=80),
            dlq_fail: rng.random_range(0..=100),
            crash: rng.random_range(0..=15),
            mutation,
        }
    }
}

/// What a passing run did: the figures `docs/RELIABILITY.md` sums up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    pub steps: u64,
    pub messages: u64,
    pub releases: u64,
    pub repeats: u64,
    pub crashes: u64,
    pub store_failed_before: u64,
    pub store_applied_then_timeout: u64,
    pub handler_failures: u64,
    pub dlq_failures: u64,
    pub overtaken_conflicts: u64,
    pub fenced_overlaps: u64,
    /// Simulated time the liveness phase took to drain everything. Beyond
    /// `WAITING_RECHECK`, only the engine's 15-minute net finished the run: a lost
    /// wakeup happened, which the protocol should make rare.
    pub liveness_ms: u64,
    pub dead_letters: BTreeMap<String, u64>,
    pub redriven_invalid: u64,
    /// A digest of the whole trace: two runs of a seed must agree on it.
    pub trace_digest: u64,
}

/// What the workload sent, by SQS message id.
#[derive(Clone, Debug)]
enum Sent {
    Valid {
        context: String,
        seq: u64,
    },
    /// A second copy of a position with another body: it or its twin is a conflict.
    Conflicting {
        context: String,
        seq: u64,
    },
    /// No sequence attribute: the queue's redrive must take it (`--invalid redrive`).
    Invalid,
}

/// What every task shares: the queue, the observations and the checks.
struct Shared {
    time: SimTime,
    /// The table, read directly (past the faults) by the checks.
    table: std::sync::OnceLock<Arc<SimStore>>,
    healed: AtomicBool,
    rng: Mutex<SmallRng>,
    handler_fail: u32,
    dlq_fail: u32,
    poisoned: HashSet<(String, u64)>,
    /// Successful releases per context: (seq, body hash).
    released: Mutex<HashMap<String, Vec<(u64, u64)>>>,
    /// Contexts with a handler call running, and since when.
    in_flight: Mutex<HashMap<String, Millis>>,
    /// Overlaps with a call that outlived its lease (allowed: the target fences them).
    fenced_overlaps: Mutex<u64>,
    dead_letters: Mutex<Vec<(String, u64, String, Reason)>>,
    violations: Mutex<Vec<String>>,
    trace: Mutex<VecDeque<String>>,
    digest: Mutex<u64>,
    handler_failures: Mutex<u64>,
    dlq_failures: Mutex<u64>,
    /// Conflicting copies staged while another copy was being released (a known limit).
    overtaken: Mutex<u64>,
}

impl Shared {
    fn store(&self) -> &SimStore {
        self.table.get().expect("set before any task runs")
    }

    fn roll(&self, per_mille: u32) -> bool {
        !self.healed.load(Ordering::Relaxed)
            && self.rng.lock().unwrap_or_else(|p| p.into_inner()).random_range(0..1000) < per_mille
    }

    fn violation(&self, what: String) {
        self.event(format!("VIOLATION {what}"));
        self.violations.lock().unwrap_or_else(|p| p.into_inner()).push(what);
    }

    fn event(&self, what: String) {
        let mut digest = self.digest.lock().unwrap_or_else(|p| p.into_inner());
        *digest = xxhash(&format!("{}{what}", *digest));
        let mut trace = self.trace.lock().unwrap_or_else(|p| p.into_inner());
        if trace.len() == trace_len() {
            trace.pop_front();
        }
        trace.push_back(format!("t={} {what}", self.time.now().0));
    }
}

/// How many trace lines a failure shows (`RESEQ_SIM_TRACE`, default 60).
fn trace_len() -> usize {
    std::env::var("RESEQ_SIM_TRACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

fn xxhash(s: &str) -> u64 {
    reseq_core::envelope::body_hash(s.as_bytes())
}

/// The target: checks order and bodies, fails when the seed says so.
#[derive(Clone)]
struct SimHandler(Arc<Shared>);

/// Clears a context's in-flight mark when the call ends, or when its worker dies in it.
struct InFlight<'a>(&'a Shared, String);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl Handler for SimHandler {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        let shared = &*self.0;
        let context = msg.context_id.to_string();
        let now = shared.time.now();
        let other = shared
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(context.clone(), now);
        if let Some(started) = other {
            // A call that outlived what the lease allows (production bounds each call to a
            // quarter of the lease; the simulation does not) belongs to a holder whose lease
            // ran out: fenced by `(context, seq)`, not a violation. Otherwise it is one.
            if now.since(started) < HANDLER_BOUND {
                shared.violation(format!("{context}: two releases at once (position {})", msg.seq));
            } else {
                *shared.fenced_overlaps.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            }
        }
        let _in_flight = InFlight(shared, context.clone());
        let slow = shared.rng.lock().unwrap_or_else(|p| p.into_inner()).random_range(0..3);
        for _ in 0..slow {
            yield_now().await;
        }
        if shared.poisoned.contains(&(context.clone(), msg.seq)) {
            return Err(HandlerError::Permanent("simulated: poison".into()));
        }
        if shared.roll(shared.handler_fail) {
            *shared.handler_failures.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            return Err(HandlerError::Retryable("simulated: target unavailable".into()));
        }
        let hash = reseq_core::envelope::body_hash(msg.body);
        let mut released = shared.released.lock().unwrap_or_else(|p| p.into_inner());
        let seen = released.entry(context.clone()).or_default();
        let expected_prev = msg.seq.checked_sub(1).filter(|p| *p >= 1);
        // A poisoned (dead-lettered) predecessor is not released: the one before it is.
        let done = |s: u64| seen.iter().any(|(r, _)| *r == s) || shared.poisoned.contains(&(context.clone(), s));
        if let Some(prev) = expected_prev
            && !done(prev)
        {
            shared.violation(format!("{context}: position {} released before {prev}", msg.seq));
        }
        let mut want_prev = expected_prev;
        while let Some(p) = want_prev.filter(|p| shared.poisoned.contains(&(context.clone(), *p))) {
            want_prev = p.checked_sub(1).filter(|p| *p >= 1);
        }
        if msg.prev_seq != want_prev {
            shared.violation(format!(
                "{context}: position {} released with prev_seq {:?}, expected {want_prev:?}",
                msg.seq, msg.prev_seq
            ));
        }
        // The first staged copy wins. Known limit (ARCHITECTURE.md): a copy staged while
        // another worker releases another copy of that position straight from its batch,
        // after that worker read the position, is overtaken. A release decides from a read
        // made at most a release budget (< the lease) earlier, so a copy staged longer ago
        // than the lease must have been seen.
        if let Some(staged) = ready(shared.store().inner.staged(&context, msg.seq, msg.seq, 1))
            .ok()
            .and_then(|v| v.into_iter().next())
            && staged.body_hash != hash
        {
            let staged_at = shared
                .store()
                .staged_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(context.clone(), msg.seq))
                .copied();
            if staged_at.is_some_and(|at| shared.time.now().since(at) > LEASE) {
                shared.violation(format!(
                    "{context}: position {} released with another body than the copy staged at {staged_at:?}",
                    msg.seq
                ));
            } else {
                *shared.overtaken.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                shared.event(format!(
                    "{context}:{}: a concurrently staged conflicting copy was overtaken",
                    msg.seq
                ));
            }
        }
        let repeat = seen.iter().any(|(s, _)| *s == msg.seq);
        seen.push((msg.seq, hash));
        drop(released);
        shared.event(format!(
            "release {context}:{}{}",
            msg.seq,
            if repeat { " (repeat)" } else { "" }
        ));
        Ok(())
    }
}

#[derive(Clone)]
struct SimDlq(Arc<Shared>);

impl DeadLetterSink for SimDlq {
    async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<(), SinkError> {
        yield_now().await;
        let shared = &*self.0;
        if shared.roll(shared.dlq_fail) {
            *shared.dlq_failures.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            return Err(SinkError("simulated: DLQ unavailable".into()));
        }
        shared.event(format!(
            "dead letter {}:{} {} ({})",
            letter.context_id, letter.seq, letter.reason, letter.message_id
        ));
        shared.dead_letters.lock().unwrap_or_else(|p| p.into_inner()).push((
            letter.context_id.to_string(),
            letter.seq,
            letter.message_id.to_string(),
            letter.reason,
        ));
        Ok(())
    }
}

type SimProcessor = Processor<Arc<SimStore>, SkewedClock, SimHandler, SimDlq>;

struct Worker {
    name: String,
    processor: SimProcessor,
    clock: SkewedClock,
}

const LEASE: Duration = Duration::from_millis(30_000);
/// A release starts within ¾ of the lease; a call that ends within the last quarter, less
/// the clocks' largest disagreement (3 s), ends while the lease holds.
const HANDLER_BOUND: Duration = Duration::from_millis(30_000 / 4 - 3_000);

fn worker(config: &SimConfig, shared: &Arc<Shared>, store: &Arc<SimStore>, index: usize, life: u64) -> Rc<Worker> {
    let clock = SkewedClock {
        time: shared.time.clone(),
        skew_ms: config.skews_ms[index],
    };
    let engine_config = EngineConfig {
        max_staged: config.max_staged,
        on_poison: PoisonPolicy::Skip,
        // Poison is what `poisoned` says; a flaky target must never exhaust attempts.
        max_attempts: u32::MAX,
        lease: Some(LeaseConfig {
            owner: format!("w{index}.{life}"),
            duration: LEASE,
        }),
        stage_held_after: Some(3),
        ..EngineConfig::default()
    };
    let engine = Engine::new(store.clone(), clock.clone(), engine_config).with_mutation(config.mutation);
    Rc::new(Worker {
        name: format!("w{index}.{life}"),
        processor: Processor::new(
            engine,
            Extractor::default(),
            SimHandler(shared.clone()),
            SimDlq(shared.clone()),
            InvalidPolicy::Redrive,
        ),
        clock,
    })
}

/// Polls a future that never waits (the memory store's reads) to completion.
fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = std::task::Waker::noop();
    match future.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("the memory store never waits"),
    }
}

/// One receive loop: receive, process, settle; as `reseq worker` does.
async fn receive_loop(
    w: Rc<Worker>,
    queue: Rc<RefCell<Queue>>,
    shared: Arc<Shared>,
    store: Arc<SimStore>,
    rng_seed: u64,
) {
    let mut rng = SmallRng::seed_from_u64(rng_seed);
    loop {
        let now = w.clock.now();
        let batch = queue.borrow_mut().receive(now, &mut rng);
        if batch.is_empty() {
            sleep_until(&w.clock, now.plus(Duration::from_millis(1000))).await;
            continue;
        }
        shared.event(format!("{} received {} messages", w.name, batch.len()));
        let raws = batch.iter().map(|r| r.raw.clone()).collect();
        let deadline = Some(now.plus(Duration::from_millis(LEASE.0 * 3 / 4)));
        let verdicts = w.processor.process(raws, deadline).await;
        let now = w.clock.now();
        for (received, verdict) in batch.iter().zip(&verdicts) {
            let attr = |n: &str| {
                received
                    .raw
                    .attributes
                    .get(n)
                    .and_then(|a| a.string.clone())
                    .unwrap_or_default()
            };
            shared.event(format!(
                "{} {} ({}:{}): {verdict:?}",
                w.name,
                received.raw.message_id,
                attr("contextId"),
                attr("sequence")
            ));
            let mut q = queue.borrow_mut();
            match verdict {
                v if v.deletable() => {
                    check_durable(&shared, &store, &received.raw);
                    if q.delete(received.index, received.receipt).is_some() {
                        shared.event(format!("{} deleted {}", w.name, received.raw.message_id));
                    }
                }
                Verdict::Held(Hold::Failed(_)) => q.change_visibility(received.index, received.receipt, now, 5000),
                Verdict::Held(_) => q.change_visibility(received.index, received.receipt, now, 1000),
                Verdict::Invalid(_) => q.change_visibility(received.index, received.receipt, now, 0),
                _ => {}
            }
        }
        yield_now().await;
    }
}

/// An SQS message may go only once it is durably staged, released and committed, or
/// dead-lettered (SPEC §4).
fn check_durable(shared: &Shared, store: &SimStore, raw: &reseq_core::RawMessage) {
    let attr = |name: &str| raw.attributes.get(name).and_then(|a| a.string.clone());
    let (Some(context), Some(seq)) = (attr("contextId"), attr("sequence").and_then(|s| s.parse::<u64>().ok())) else {
        shared.violation(format!("invalid message {} deleted", raw.message_id));
        return;
    };
    let next = ready(store.inner.load(&context)).ok().flatten().map_or(1, |s| s.next);
    let staged = ready(store.inner.staged(&context, seq, seq, 1)).is_ok_and(|v| !v.is_empty());
    let dead = shared
        .dead_letters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|(c, s, _, _)| *c == context && *s == seq);
    if !(next > seq || staged || dead) {
        shared.violation(format!(
            "message {} ({context}:{seq}) deleted before it was durable (cursor {next})",
            raw.message_id
        ));
    }
}

async fn sweep_loop(w: Rc<Worker>, shared: Arc<Shared>) {
    loop {
        sleep_until(&w.clock, w.clock.now().plus(Duration::from_millis(5000))).await;
        let deadline = Some(w.clock.now().plus(Duration::from_millis(LEASE.0 * 3 / 4)));
        if let Ok(found) = w.processor.sweep(100, deadline).await
            && found > 0
        {
            shared.event(format!("{} swept {found}", w.name));
        }
    }
}

/// A failed run: everything needed to understand and replay it.
#[derive(Debug)]
pub struct SimFailure {
    pub config: SimConfig,
    pub violations: Vec<String>,
    pub trace_tail: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "simulation seed {} failed", self.config.seed)?;
        writeln!(f, "configuration: {:?}", self.config)?;
        writeln!(f, "violations:")?;
        for v in self.violations.iter().take(20) {
            writeln!(f, "  {v}")?;
        }
        writeln!(f, "trace tail:")?;
        for t in &self.trace_tail {
            writeln!(f, "  {t}")?;
        }
        write!(
            f,
            "replay: cargo run -p reseq-system-tests --bin reseq-sim -- --seed {}{}",
            self.config.seed,
            if self.config.mutation == Mutation::None {
                String::new()
            } else {
                format!(" --mutation {:?}", self.config.mutation)
            }
        )
    }
}

/// Runs one seed. `Ok` carries the figures; `Err` everything a failure needs.
pub fn run(config: SimConfig) -> Result<SimReport, Box<SimFailure>> {
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let time = SimTime::new(Millis(1_800_000_000_000));
    let store = Arc::new(SimStore::new(
        time.clone(),
        SmallRng::seed_from_u64(rng.random()),
        config.store_faults,
    ));
    // maxReceiveCount is high: workers here die every few seconds, and a valid message
    // received that often while its workers die is redriven by SQS too (ARCHITECTURE.md).
    let queue = Rc::new(RefCell::new(Queue::new(config.fifo, 30_000, 100)));

    // The workload: every position of every context, some sent twice, a few conflicting
    // copies, a few invalid messages, a few poison positions; shuffled.
    let mut poisoned = HashSet::new();
    let mut sent: Vec<(String, Sent, Attributes, bytes::Bytes, Option<String>)> = Vec::new();
    for c in 0..config.contexts {
        let context = format!("ctx-{c}");
        for seq in 1..=config.positions {
            let body = bytes::Bytes::from(format!("{context}:{seq}"));
            let mut attrs = Attributes::new();
            attrs.insert("contextId".into(), AttributeValue::string(context.clone()));
            attrs.insert("sequence".into(), AttributeValue::number(seq));
            let producer = rng.random_range(0..3);
            let group = config.fifo.then(|| {
                if config.group_per_context {
                    context.clone()
                } else {
                    format!("producer-{producer}")
                }
            });
            let valid = Sent::Valid {
                context: context.clone(),
                seq,
            };
            let copies = if rng.random_ratio(1, 20) { 2 } else { 1 };
            for _ in 0..copies {
                sent.push((String::new(), valid.clone(), attrs.clone(), body.clone(), group.clone()));
            }
            if rng.random_ratio(1, 40) {
                let other = bytes::Bytes::from(format!("{context}:{seq}:other"));
                let twin = Sent::Conflicting {
                    context: context.clone(),
                    seq,
                };
                sent.push((String::new(), twin, attrs.clone(), other, group.clone()));
            }
            if rng.random_ratio(1, 50) {
                poisoned.insert((context.clone(), seq));
            }
        }
        if rng.random_ratio(1, 3) {
            let mut attrs = Attributes::new();
            attrs.insert("contextId".into(), AttributeValue::string(context.clone()));
            let group = config.fifo.then(|| context.clone());
            sent.push((
                String::new(),
                Sent::Invalid,
                attrs,
                bytes::Bytes::from_static(b"no position"),
                group,
            ));
        }
    }
    sent.shuffle(&mut rng);
    let mut by_id: HashMap<String, Sent> = HashMap::new();
    for (i, (id, what, attrs, body, group)) in sent.iter_mut().enumerate() {
        *id = format!("m{i}");
        by_id.insert(id.clone(), what.clone());
        queue
            .borrow_mut()
            .send(id.clone(), body.clone(), attrs.clone(), group.clone());
    }

    let shared = Arc::new(Shared {
        time: time.clone(),
        table: std::sync::OnceLock::new(),
        healed: AtomicBool::new(false),
        rng: Mutex::new(SmallRng::seed_from_u64(rng.random())),
        handler_fail: config.handler_fail,
        dlq_fail: config.dlq_fail,
        poisoned: poisoned.clone(),
        released: Mutex::default(),
        in_flight: Mutex::default(),
        dead_letters: Mutex::default(),
        violations: Mutex::default(),
        trace: Mutex::default(),
        digest: Mutex::new(config.seed),
        handler_failures: Mutex::new(0),
        dlq_failures: Mutex::new(0),
        overtaken: Mutex::new(0),
        fenced_overlaps: Mutex::new(0),
    });

    let _ = shared.table.set(store.clone());
    // Workers: each is its receive loops and its sweep, as tasks; a crash drops them.
    let mut lives = vec![0u64; config.workers];
    let mut tasks: Vec<(usize, Task<'static>)> = Vec::new();
    let spawn = |index: usize, life: u64, tasks: &mut Vec<(usize, Task<'static>)>, rng: &mut SmallRng| {
        let w = worker(&config, &shared, &store, index, life);
        for _ in 0..config.receivers {
            let fut = receive_loop(w.clone(), queue.clone(), shared.clone(), store.clone(), rng.random());
            tasks.push((index, Box::pin(fut)));
        }
        tasks.push((index, Box::pin(sweep_loop(w, shared.clone()))));
    };
    for index in 0..config.workers {
        spawn(index, 0, &mut tasks, &mut rng);
    }

    let mut report = SimReport {
        messages: sent.len() as u64,
        ..SimReport::default()
    };
    let mut cursors: HashMap<String, u64> = HashMap::new();
    let contexts: Vec<String> = (0..config.contexts).map(|c| format!("ctx-{c}")).collect();
    let safety_steps = 3_000 + 40 * sent.len() as u64;
    let live_bound = 40 * 60 * 1000; // simulated milliseconds for the liveness phase
    let mut live_since: Option<Millis> = None;
    loop {
        report.steps += 1;
        let healed = report.steps > safety_steps;
        if healed && live_since.is_none() {
            live_since = Some(time.now());
            shared.healed.store(true, Ordering::Relaxed);
            store.healed.store(true, Ordering::Relaxed);
            shared.event("faults healed".into());
        }
        // Time moves now and then; faster when the run only waits.
        if rng.random_ratio(1, 4) {
            time.advance(rng.random_range(0..if healed { 2000 } else { 300 }));
        }
        if !healed && rng.random_range(0..1000) < config.crash {
            let index = rng.random_range(0..config.workers);
            tasks.retain(|(w, _)| *w != index);
            lives[index] += 1;
            report.crashes += 1;
            shared.event(format!("crash of worker {index}"));
            spawn(index, lives[index], &mut tasks, &mut rng);
        }
        let pick = rng.random_range(0..tasks.len());
        if poll_once(&mut tasks[pick].1) {
            drop(tasks.swap_remove(pick));
        }
        for context in &contexts {
            let next = ready(store.inner.load(context)).ok().flatten().map_or(1, |s| s.next);
            let before = cursors.insert(context.clone(), next).unwrap_or(1);
            if next < before {
                shared.violation(format!("{context}: cursor moved back from {before} to {next}"));
            }
        }
        if !shared.violations.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            break;
        }
        if let Some(since) = live_since {
            let done = queue.borrow().remaining() == 0
                && all_released(&shared, &contexts, config.positions, &poisoned)
                && all_dead_lettered(&shared, &poisoned);
            if done || time.now().since(since).0 > live_bound {
                break;
            }
        }
    }
    drop(tasks);
    report.liveness_ms = live_since.map_or(0, |since| time.now().since(since).0);

    // The end: drained, nothing lost or stranded, only predicted dead letters.
    let queue = queue.borrow();
    if queue.remaining() != 0 {
        shared.violation(format!("{} messages still on the queue", queue.remaining()));
    }
    for m in &queue.dlq {
        match by_id.get(&m.id) {
            Some(Sent::Invalid) => report.redriven_invalid += 1,
            other => shared.violation(format!(
                "valid message {} ({other:?}) redriven to the queue's DLQ",
                m.id
            )),
        }
    }
    let released = shared.released.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for context in &contexts {
        let got: HashSet<u64> = released
            .get(context)
            .map(|v| v.iter().map(|(s, _)| *s).collect())
            .unwrap_or_default();
        let missing: Vec<u64> = (1..=config.positions)
            .filter(|s| !got.contains(s) && !poisoned.contains(&(context.clone(), *s)))
            .collect();
        if !missing.is_empty() {
            let state = ready(store.inner.load(context));
            shared.violation(format!(
                "{context}: never released {missing:?} (stranded or lost); state {state:?}"
            ));
        }
        let calls = released.get(context).map_or(0, Vec::len) as u64;
        report.releases += calls;
        report.repeats += calls - got.len() as u64;
    }
    let letters = shared.dead_letters.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (context, seq, message_id, reason) in &letters {
        let predicted = match (reason, by_id.get(message_id)) {
            (Reason::HandlerFailed, _) => poisoned.contains(&(context.clone(), *seq)),
            (Reason::Conflict, Some(Sent::Conflicting { context: c, seq: s } | Sent::Valid { context: c, seq: s })) => {
                c == context && s == seq
            }
            _ => false,
        };
        if !predicted {
            shared.violation(format!(
                "unpredicted dead letter {context}:{seq} {reason} ({message_id})"
            ));
        }
        *report.dead_letters.entry(reason.to_string()).or_default() += 1;
    }
    for (context, seq) in &poisoned {
        if !letters
            .iter()
            .any(|(c, s, _, r)| c == context && s == seq && *r == Reason::HandlerFailed)
        {
            shared.violation(format!("poison {context}:{seq} never dead-lettered"));
        }
    }
    let faults = store.fault_counts();
    report.store_failed_before = faults.failed_before;
    report.store_applied_then_timeout = faults.applied_then_timeout;
    report.handler_failures = *shared.handler_failures.lock().unwrap_or_else(|p| p.into_inner());
    report.dlq_failures = *shared.dlq_failures.lock().unwrap_or_else(|p| p.into_inner());
    report.overtaken_conflicts = *shared.overtaken.lock().unwrap_or_else(|p| p.into_inner());
    report.fenced_overlaps = *shared.fenced_overlaps.lock().unwrap_or_else(|p| p.into_inner());
    let faultless = report.crashes == 0 && faults.failed_before == 0 && faults.applied_then_timeout == 0;
    if faultless && report.repeats > 0 {
        shared.violation(format!("{} repeats without a fault or a crash", report.repeats));
    }
    report.trace_digest = *shared.digest.lock().unwrap_or_else(|p| p.into_inner());
    let violations = std::mem::take(&mut *shared.violations.lock().unwrap_or_else(|p| p.into_inner()));
    if violations.is_empty() {
        return Ok(report);
    }
    let trace_tail = shared
        .trace
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    Err(Box::new(SimFailure {
        config,
        violations,
        trace_tail,
    }))
}

fn all_dead_lettered(shared: &Shared, poisoned: &HashSet<(String, u64)>) -> bool {
    let letters = shared.dead_letters.lock().unwrap_or_else(|p| p.into_inner());
    poisoned.iter().all(|(c, s)| {
        letters
            .iter()
            .any(|(lc, ls, _, r)| lc == c && ls == s && *r == Reason::HandlerFailed)
    })
}

fn all_released(shared: &Shared, contexts: &[String], positions: u64, poisoned: &HashSet<(String, u64)>) -> bool {
    let released = shared.released.lock().unwrap_or_else(|p| p.into_inner());
    contexts.iter().all(|c| {
        (1..=positions).all(|s| {
            poisoned.contains(&(c.clone(), s)) || released.get(c).is_some_and(|v| v.iter().any(|(r, _)| *r == s))
        })
    })
}

impl SimReport {
    /// Whether only the engine's 15-minute net drained this run (see `liveness_ms`).
    pub fn needed_the_net(&self) -> bool {
        self.liveness_ms >= reseq_core::engine::WAITING_RECHECK.0
    }
}

/// A line of figures over many reports, for the test output and `docs/RELIABILITY.md`.
pub fn summary(reports: &[SimReport]) -> String {
    let sum = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    let mut letters: BTreeMap<String, u64> = BTreeMap::new();
    for r in reports {
        for (k, v) in &r.dead_letters {
            *letters.entry(k.clone()).or_default() += v;
        }
    }
    let mut out = String::new();
    let _ = write!(
        out,
        "{} seeds, {} steps, {} messages, {} releases ({} repeats), {} crashes, store faults {} failed before + {} \
         applied then timed out, {} handler failures, {} DLQ failures, {} invalid redriven, {} conflicting copies \
         overtaken, {} fenced overlaps, {} runs finished only by the 15-minute net, dead letters {letters:?}",
        reports.len(),
        sum(|r| r.steps),
        sum(|r| r.messages),
        sum(|r| r.releases),
        sum(|r| r.repeats),
        sum(|r| r.crashes),
        sum(|r| r.store_failed_before),
        sum(|r| r.store_applied_then_timeout),
        sum(|r| r.handler_failures),
        sum(|r| r.dlq_failures),
        sum(|r| r.redriven_invalid),
        sum(|r| r.overtaken_conflicts),
        sum(|r| r.fenced_overlaps),
        reports.iter().filter(|r| r.needed_the_net()).count(),
    );
    out
}
