//! Telling an outage of the target from a poison message (SPEC §3).

use super::*;

/// How many different contexts must fail retryably in a row, with no success between,
/// before the target counts as out: one context failing alone may be poison; several
/// failing together is the target.
pub(super) const OUTAGE_CONTEXTS: usize = 3;

/// The circuit breaker of SPEC §3. Retryable failures of [`OUTAGE_CONTEXTS`] different
/// contexts with no success between open it; any success closes it. While it is open a
/// retryable failure counts no attempt: the context backs off (capped at 60 s) and its
/// next try is the probe. It lives in memory: each worker judges the target for itself.
#[derive(Default)]
pub(super) struct Breaker {
    /// The contexts that failed since the last success, up to [`OUTAGE_CONTEXTS`].
    pub(super) failing: Mutex<Vec<String>>,
}

impl Breaker {
    /// Records a retryable failure; whether the circuit is open now.
    pub(super) fn failed(&self, context_id: &str) -> bool {
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

    pub(super) fn succeeded(&self) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if failing.len() >= OUTAGE_CONTEXTS {
            tracing::info!("the target answers again: outage over");
        }
        failing.clear();
    }
}
