//! What the engine counts (atomics, no I/O): the metrics adapter reads [`Stats`].

use super::*;

/// Counters since the engine was created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Messages given to [`Engine::process`].
    pub received: u64,
    /// Messages handed to the handler successfully.
    pub released: u64,
    /// Messages staged to wait for their predecessors.
    pub staged: u64,
    /// Copies of positions already released or staged.
    pub duplicates: u64,
    /// Copies of a position with another body.
    pub conflicts: u64,
    /// Messages whose position had been skipped.
    pub late: u64,
    /// Gaps skipped after the gap timeout.
    pub gaps_skipped: u64,
    /// Positions those gaps (and operators' skips) covered.
    pub positions_skipped: u64,
    /// Handler failures retried later.
    pub handler_retries: u64,
    /// Messages that became poison.
    pub poison: u64,
    /// Contexts stopped at a poison message (`--on-poison block`).
    pub blocked: u64,
    /// Waiting messages past the retention.
    pub expired: u64,
    /// Messages sent to the dead-letter sink.
    pub dead_lettered: u64,
    /// Messages not settled (the source delivers them again).
    pub held: u64,
    /// Idle contexts forgotten after the retention.
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
    /// Held because another writer changed the context meanwhile.
    pub held_busy: u64,
    /// Held because the store, the handler or the sink failed.
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
    /// Some of the latencies, in milliseconds.
    pub sample_ms: Vec<u64>,
    /// How many releases there were.
    pub count: u64,
    /// The longest latency of all of them.
    pub max_ms: u64,
}

/// How many release latencies [`ReleaseLatencies`] keeps between two reads (the most one
/// CloudWatch Embedded Metric Format record takes per metric).
pub const LATENCY_SAMPLE: usize = 100;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) received: AtomicU64,
    pub(super) released: AtomicU64,
    pub(super) staged: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) conflicts: AtomicU64,
    pub(super) late: AtomicU64,
    pub(super) gaps_skipped: AtomicU64,
    pub(super) positions_skipped: AtomicU64,
    pub(super) handler_retries: AtomicU64,
    pub(super) poison: AtomicU64,
    pub(super) blocked: AtomicU64,
    pub(super) expired: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) held: AtomicU64,
    pub(super) contexts_forgotten: AtomicU64,
    pub(super) held_then_staged: AtomicU64,
    pub(super) outage_retries: AtomicU64,
    pub(super) expiry_failures: AtomicU64,
    pub(super) wakeups_failed: AtomicU64,
    pub(super) dead_lettered_by: [AtomicU64; Reason::ALL.len()],
    pub(super) handler_errors: AtomicU64,
    pub(super) held_capacity: AtomicU64,
    pub(super) held_busy: AtomicU64,
    pub(super) held_failed: AtomicU64,
    pub(super) lease_conflicts: AtomicU64,
    pub(super) leases_taken_over: AtomicU64,
    pub(super) latencies: Mutex<ReleaseLatencies>,
    pub(super) latency_count: AtomicU64,
    pub(super) latency_max: AtomicU64,
}

impl Counters {
    /// Counts a release and its latency: atomics on the hot path; the sample's lock is
    /// taken only while the sample is not full (the first values after each read).
    pub(super) fn released_after(&self, waited: Duration) {
        bump(&self.released);
        self.latency_max.fetch_max(waited.0, Relaxed);
        if self.latency_count.fetch_add(1, Relaxed) < LATENCY_SAMPLE as u64 {
            let mut latencies = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
            if latencies.sample_ms.len() < LATENCY_SAMPLE {
                latencies.sample_ms.push(waited.0);
            }
        }
    }

    /// The latencies since the last call, and a fresh start.
    pub(super) fn take_latencies(&self) -> ReleaseLatencies {
        let mut sample = std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|p| p.into_inner()));
        sample.count = self.latency_count.swap(0, Relaxed);
        sample.max_ms = self.latency_max.swap(0, Relaxed);
        sample
    }
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}
