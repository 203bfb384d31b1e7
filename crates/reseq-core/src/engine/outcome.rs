//! What became of each message of a batch: the caller acknowledges only settled ones.

use super::*;

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

/// Why a message was not settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The position is more than `max_staged` ahead of the cursor (backpressure).
    Capacity,
    /// Another writer changed the context meanwhile.
    Busy,
    /// The store, the handler or the dead-letter sink failed; the text says which.
    Failed(String),
}
