//! Typed sequences (SPEC §5) in the simulation: the same workers, SQS queue, store faults,
//! crashes, clock skews and flaky target as the numeric run, on instances of the SPEC's
//! `order-lifecycle` sequence. The checks: no type is handed to the target before its
//! release condition holds over the types already handed over in its instance; an SQS
//! message is deleted only once its type is processed, it is staged, or it is a dead
//! letter; and in the end every type of every instance was handed over, nothing is left on
//! the queue, and nothing was dead-lettered.

use super::*;
use reseq_core::extract::TypedExtraction;
use reseq_core::sequences::SequenceFile;

const TYPES: [&str; 5] = [
    "OrderCreated",
    "StockReserved",
    "OrderPaid",
    "OrderShipped",
    "OrderCancelled",
];

/// The conformance suite's sequences: the first is the SPEC §5 `order-lifecycle`.
fn file() -> Arc<SequenceFile> {
    reseq_conformance::typed::sequence_file()
}

/// The target of a typed run: checks each release's condition, fails when the seed says so.
#[derive(Clone)]
struct TypedHandler(Arc<Shared>, Arc<SequenceFile>);

impl Handler for TypedHandler {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        let shared = &*self.0;
        let slow = shared.rng.lock().unwrap_or_else(|p| p.into_inner()).random_range(0..3);
        for _ in 0..slow {
            yield_now().await;
        }
        if shared.roll(shared.handler_fail) {
            *shared.handler_failures.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            return Err(HandlerError::Retryable("simulated: target unavailable".into()));
        }
        let body = String::from_utf8_lossy(msg.body).into_owned();
        let Some(index) = TYPES.iter().position(|t| body.split('|').nth(1) == Some(t)) else {
            shared.violation(format!("{}: released a body of no known type: {body}", msg.context_id));
            return Ok(());
        };
        let mut released = shared.released.lock().unwrap_or_else(|p| p.into_inner());
        let seen = released.entry(msg.context_id.to_string()).or_default();
        let done = |key: &str| seen.iter().any(|(t, _)| TYPES[*t as usize] == key);
        let ready = self.1.sequences[0]
            .message(TYPES[index])
            .is_some_and(|m| m.ready(&done));
        if !ready {
            shared.violation(format!(
                "{}: {} released before its condition held (released before: {:?})",
                msg.context_id,
                TYPES[index],
                seen.iter().map(|(t, _)| TYPES[*t as usize]).collect::<Vec<_>>()
            ));
        }
        let repeat = done(TYPES[index]);
        seen.push((index as u64, msg.seq));
        drop(released);
        shared.event(format!(
            "release {}:{}{}",
            msg.context_id,
            TYPES[index],
            if repeat { " (repeat)" } else { "" }
        ));
        Ok(())
    }
}

type TypedProcessor = Processor<Arc<SimStore>, SkewedClock, TypedHandler, SimDlq>;

struct TypedWorker {
    name: String,
    processor: TypedProcessor,
    clock: SkewedClock,
}

fn typed_worker(
    config: &SimConfig,
    shared: &Arc<Shared>,
    store: &Arc<SimStore>,
    file: &Arc<SequenceFile>,
    index: usize,
    life: u64,
) -> Rc<TypedWorker> {
    let clock = SkewedClock {
        time: shared.time.clone(),
        skew_ms: config.skews_ms[index],
    };
    let engine_config = EngineConfig {
        on_poison: PoisonPolicy::Skip,
        max_attempts: u32::MAX,
        lease: Some(LeaseConfig {
            owner: format!("w{index}.{life}"),
            duration: LEASE,
        }),
        stage_held_after: Some(3),
        sequences: Some(file.clone()),
        ..EngineConfig::default()
    };
    let engine = Engine::new(store.clone(), clock.clone(), engine_config).with_mutation(config.mutation);
    let extractor = Extractor {
        typed: Some(TypedExtraction {
            id_attr: Some("eventId".into()),
            ..TypedExtraction::new(file.clone())
        }),
        ..Extractor::default()
    };
    Rc::new(TypedWorker {
        name: format!("w{index}.{life}"),
        processor: Processor::new(
            engine,
            extractor,
            TypedHandler(shared.clone(), file.clone()),
            SimDlq(shared.clone()),
            InvalidPolicy::Redrive,
        ),
        clock,
    })
}

async fn typed_receive_loop(
    w: Rc<TypedWorker>,
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
        let raws = batch.iter().map(|r| r.raw.clone()).collect();
        let deadline = Some(now.plus(Duration::from_millis(LEASE.0 * 3 / 4)));
        let verdicts = w.processor.process(raws, deadline).await;
        let now = w.clock.now();
        for (received, verdict) in batch.iter().zip(&verdicts) {
            shared.event(format!("{} {}: {verdict:?}", w.name, received.raw.message_id));
            let mut q = queue.borrow_mut();
            match verdict {
                v if v.deletable() => {
                    check_typed_durable(&shared, &store, &received.raw);
                    q.delete(received.index, received.receipt);
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

/// A typed message may go only once its type is processed in its instance (by this
/// message or an earlier copy), it is staged, or it is a dead letter.
fn check_typed_durable(shared: &Shared, store: &SimStore, raw: &reseq_core::RawMessage) {
    let attr = |name: &str| {
        raw.attributes
            .get(name)
            .and_then(|a| a.string.clone())
            .unwrap_or_default()
    };
    let instance = format!("order-lifecycle/{}", attr("contextId"));
    let seq = reseq_core::envelope::body_hash(attr("eventId").as_bytes());
    let state = ready(store.inner.load(&instance)).ok().flatten();
    let processed = state
        .and_then(|s| s.typed)
        .is_some_and(|t| t.processed.get(&attr("messageType")) == Some(&seq));
    let staged = ready(store.inner.staged(&instance, seq, seq, 1)).is_ok_and(|v| !v.is_empty());
    let dead = shared
        .dead_letters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|(c, s, _, _)| *c == instance && *s == seq);
    if !(processed || staged || dead) {
        shared.violation(format!(
            "message {} ({instance} {}) deleted before it was durable",
            raw.message_id,
            attr("messageType")
        ));
    }
}

async fn typed_sweep_loop(w: Rc<TypedWorker>) {
    loop {
        sleep_until(&w.clock, w.clock.now().plus(Duration::from_millis(5000))).await;
        let deadline = Some(w.clock.now().plus(Duration::from_millis(LEASE.0 * 3 / 4)));
        let _ = w.processor.sweep(100, deadline).await;
    }
}

/// Runs one seed of typed traffic: `contexts` instances of the five types, some sent
/// twice, shuffled. `Ok` carries the figures; `Err` everything a failure needs.
pub fn run_typed(config: SimConfig) -> Result<SimReport, Box<SimFailure>> {
    let mut rng = SmallRng::seed_from_u64(config.seed ^ 0x7e5e);
    let time = SimTime::new(Millis(1_800_000_000_000));
    let store = Arc::new(SimStore::new(
        time.clone(),
        SmallRng::seed_from_u64(rng.random()),
        config.store_faults,
    ));
    let queue = Rc::new(RefCell::new(Queue::new(config.fifo, 30_000, 100)));
    let file = file();
    let mut sent: Vec<(Attributes, bytes::Bytes, Option<String>)> = Vec::new();
    for c in 0..config.contexts {
        let context = format!("ctx-{c}");
        for t in TYPES {
            let mut attrs = Attributes::new();
            attrs.insert("contextId".into(), AttributeValue::string(context.clone()));
            attrs.insert("messageType".into(), AttributeValue::string(t));
            attrs.insert("eventId".into(), AttributeValue::string(format!("{context}/{t}")));
            let body = bytes::Bytes::from(format!("{context}|{t}"));
            let producer = rng.random_range(0..3);
            let group = config.fifo.then(|| {
                if config.group_per_context {
                    context.clone()
                } else {
                    format!("producer-{producer}")
                }
            });
            let copies = if rng.random_ratio(1, 10) { 2 } else { 1 };
            for _ in 0..copies {
                sent.push((attrs.clone(), body.clone(), group.clone()));
            }
        }
    }
    sent.shuffle(&mut rng);
    for (i, (attrs, body, group)) in sent.iter().enumerate() {
        queue
            .borrow_mut()
            .send(format!("m{i}"), body.clone(), attrs.clone(), group.clone());
    }
    let shared = Arc::new(Shared {
        time: time.clone(),
        table: std::sync::OnceLock::new(),
        healed: AtomicBool::new(false),
        rng: Mutex::new(SmallRng::seed_from_u64(rng.random())),
        handler_fail: config.handler_fail,
        dlq_fail: config.dlq_fail,
        poisoned: HashSet::new(),
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
    let mut lives = vec![0u64; config.workers];
    let mut tasks: Vec<(usize, Task<'static>)> = Vec::new();
    let spawn = |index: usize, life: u64, tasks: &mut Vec<(usize, Task<'static>)>, rng: &mut SmallRng| {
        let w = typed_worker(&config, &shared, &store, &file, index, life);
        for _ in 0..config.receivers {
            let fut = typed_receive_loop(w.clone(), queue.clone(), shared.clone(), store.clone(), rng.random());
            tasks.push((index, Box::pin(fut)));
        }
        tasks.push((index, Box::pin(typed_sweep_loop(w))));
    };
    for index in 0..config.workers {
        spawn(index, 0, &mut tasks, &mut rng);
    }
    let mut report = SimReport {
        messages: sent.len() as u64,
        ..SimReport::default()
    };
    let instances: Vec<String> = (0..config.contexts)
        .map(|c| format!("order-lifecycle/ctx-{c}"))
        .collect();
    let all_released = |shared: &Shared| {
        let released = shared.released.lock().unwrap_or_else(|p| p.into_inner());
        instances
            .iter()
            .all(|i| (0..TYPES.len() as u64).all(|t| released.get(i).is_some_and(|v| v.iter().any(|(r, _)| *r == t))))
    };
    let safety_steps = 3_000 + 40 * sent.len() as u64;
    let live_bound = 40 * 60 * 1000;
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
        if !shared.violations.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            break;
        }
        if let Some(since) = live_since {
            let done = queue.borrow().remaining() == 0 && all_released(&shared);
            if done || time.now().since(since).0 > live_bound {
                break;
            }
        }
    }
    drop(tasks);
    report.liveness_ms = live_since.map_or(0, |since| time.now().since(since).0);
    let queue = queue.borrow();
    if queue.remaining() != 0 {
        shared.violation(format!("{} messages still on the queue", queue.remaining()));
    }
    if !queue.dlq.is_empty() {
        shared.violation(format!(
            "{} valid messages redriven to the queue's DLQ",
            queue.dlq.len()
        ));
    }
    let released = shared.released.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for instance in &instances {
        let got: Vec<u64> = released
            .get(instance)
            .map(|v| v.iter().map(|(t, _)| *t).collect())
            .unwrap_or_default();
        let missing: Vec<&str> = (0..TYPES.len())
            .filter(|t| !got.contains(&(*t as u64)))
            .map(|t| TYPES[t])
            .collect();
        if !missing.is_empty() {
            let state = ready(store.inner.load(instance));
            shared.violation(format!("{instance}: never released {missing:?}; state {state:?}"));
        }
        let mut distinct = got.clone();
        distinct.sort_unstable();
        distinct.dedup();
        report.releases += got.len() as u64;
        report.repeats += (got.len() - distinct.len()) as u64;
    }
    let letters = shared.dead_letters.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (context, _, message_id, reason) in &letters {
        shared.violation(format!("unpredicted dead letter {context} {reason} ({message_id})"));
        *report.dead_letters.entry(reason.to_string()).or_default() += 1;
    }
    let faults = store.fault_counts();
    report.store_failed_before = faults.failed_before;
    report.store_applied_then_timeout = faults.applied_then_timeout;
    report.handler_failures = *shared.handler_failures.lock().unwrap_or_else(|p| p.into_inner());
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
