//! What an operator can see and mend (`reseq inspect`, `stuck`, `skip`, `retry`).
//!
//! Reading is plain store reads. Mending never releases anything itself: `skip` and
//! `retry` write a request into the context's state (one version-conditional commit,
//! recorded in its operator log with who, when and why) and make the context due now;
//! the workers' next sweep carries it out with their handler, DLQ and lease, through the
//! same engine as every other decision. So an operator needs no access to the output,
//! and a request made while no worker runs waits for the next one.

use serde::Serialize;

use crate::store::{
    AttentionList, AttentionQuery, Commit, CommitOutcome, ContextState, OPERATOR_LOG, OperatorAction, SeqRange,
    StagingStore, StoreError, Waiting,
};
use crate::time::{Duration, Millis};

/// Everything `reseq inspect` shows about one context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContextReport {
    /// The context.
    pub context_id: String,
    /// The stored state: cursor, lease, retry (attempts, last error), blocked, skipped
    /// ranges, when it is next due, operator log.
    pub state: ContextState,
    /// How many messages wait at or after the cursor, and since when.
    pub waiting: Waiting,
    /// The first waiting positions (at most the limit asked for).
    pub waiting_positions: Vec<u64>,
    /// Missing positions between the cursor and the last listed waiting position: what
    /// the context waits for.
    pub gaps: Vec<SeqRange>,
}

/// The report of one context, or `None` if the store has no state for it.
pub async fn inspect<S: StagingStore>(
    store: &S,
    context_id: &str,
    limit: usize,
) -> Result<Option<ContextReport>, StoreError> {
    let Some(state) = store.load(context_id).await? else {
        return Ok(None);
    };
    let waiting = store.waiting(context_id, state.next).await?;
    let staged = store.staged(context_id, state.next, u64::MAX, limit).await?;
    let waiting_positions: Vec<u64> = staged.iter().map(|m| m.seq).collect();
    Ok(Some(ContextReport {
        context_id: context_id.to_string(),
        gaps: gaps(state.next, &waiting_positions),
        state,
        waiting,
        waiting_positions,
    }))
}

/// The ranges of positions from `next` up to the last of `present` (ascending) that are
/// not in `present`.
pub fn gaps(next: u64, present: &[u64]) -> Vec<SeqRange> {
    let mut gaps = Vec::new();
    let mut expected = next;
    for &seq in present {
        if seq > expected {
            gaps.push(SeqRange {
                first: expected,
                last: seq - 1,
            });
        }
        expected = expected.max(seq.saturating_add(1));
    }
    gaps
}

/// Blocked contexts, and contexts whose oldest message has waited `older_than` or more,
/// oldest first (`reseq stuck`), from the attention index.
pub async fn stuck<S: StagingStore>(
    store: &S,
    now: Millis,
    older_than: Duration,
    limit: usize,
) -> Result<AttentionList, StoreError> {
    let query = AttentionQuery {
        blocked_limit: limit,
        waiting_before: Millis(now.0.saturating_sub(older_than.0)),
        waiting_limit: limit,
    };
    store.attention(&query).await
}

/// Who asks for an operator action, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    /// Who (`--by`, default `$USER`).
    pub by: String,
    /// Why (`--reason`).
    pub reason: String,
}

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The store knows no such context.
    #[error("context {0:?} is not in the store (nothing was ever staged or released for it, or it expired)")]
    NoSuchContext(String),
    /// A skip to a position the cursor has passed.
    #[error("context {context_id:?} is past position {to} already (its cursor is at {next}): nothing to skip")]
    AlreadyPast {
        /// The context.
        context_id: String,
        /// The position asked for.
        to: u64,
        /// Its cursor.
        next: u64,
    },
    /// A skip in a context closed by its final message.
    #[error(
        "context {context_id:?} is closed at its final position {final_seq}: nothing after it is ever released, so \
         nothing can be skipped to"
    )]
    Closed {
        /// The context.
        context_id: String,
        /// Its final position.
        final_seq: u64,
    },
    /// A retry of a context that is neither blocked nor retrying.
    #[error(
        "context {0:?} is neither blocked nor retrying: nothing to retry (reseq inspect shows what it waits for; \
         reseq skip moves past a missing position)"
    )]
    NothingToRetry(String),
    /// A worker holds the context's lease.
    #[error(
        "context {context_id:?} is leased by {owner} until {until} ms since the epoch: a worker is releasing it; try \
         again once the lease is given back"
    )]
    Leased {
        /// The context.
        context_id: String,
        /// The lease holder.
        owner: String,
        /// When its lease ends, in ms since the epoch.
        until: u64,
    },
    /// A skip asked of a typed instance, which has no positions.
    #[error(
        "context {context_id:?} is an instance of the typed sequence {sequence}: it has no positions to skip; \
         reseq retry releases a blocked type again, and a missing predecessor is sent by its producer"
    )]
    Typed {
        /// The instance.
        context_id: String,
        /// Its sequence.
        sequence: String,
    },
    /// The state kept changing under the request.
    #[error("context {0:?} kept changing under the request (busy workers): try again")]
    Raced(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an accepted request changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Requested {
    /// The context.
    pub context_id: String,
    /// What was asked.
    pub action: OperatorAction,
    /// The state as written: the workers' next sweep carries the request out.
    pub state: ContextState,
}

/// Asks the workers to move the context's cursor to `to`: positions before it are
/// skipped, and their waiting messages follow the `--late` policy. A blocked context is
/// unblocked by it (the poison message is among the skipped ones).
pub async fn request_skip<S: StagingStore>(
    store: &S,
    context_id: &str,
    to: u64,
    operator: &Operator,
    now: Millis,
) -> Result<Requested, AdminError> {
    request(store, context_id, operator, now, "skip", |state| {
        if let Some(typed) = &state.typed {
            return Err(AdminError::Typed {
                context_id: context_id.to_string(),
                sequence: typed.sequence.clone(),
            });
        }
        if let Some(final_seq) = state.final_seq {
            return Err(AdminError::Closed {
                context_id: context_id.to_string(),
                final_seq,
            });
        }
        if to <= state.next {
            return Err(AdminError::AlreadyPast {
                context_id: context_id.to_string(),
                to,
                next: state.next,
            });
        }
        state.pending_skip = Some(to);
        Ok(format!(
            "positions {}..={} to be skipped (cursor {} → {to})",
            state.next,
            to - 1,
            state.next
        ))
    })
    .await
}

/// Asks the workers to try a blocked (or retrying) context's message again now, with its
/// attempts counted from zero.
pub async fn request_retry<S: StagingStore>(
    store: &S,
    context_id: &str,
    operator: &Operator,
    now: Millis,
) -> Result<Requested, AdminError> {
    request(store, context_id, operator, now, "retry", |state| {
        let detail = match (&state.blocked, &state.retry) {
            (Some(blocked), _) => format!(
                "position {} retried after {} attempt(s) (last error: {})",
                blocked.seq, blocked.attempts, blocked.error
            ),
            (None, Some(retry)) => format!(
                "position {} retried now after {} attempt(s) (last error: {})",
                retry.seq, retry.attempts, retry.last_error
            ),
            (None, None) => return Err(AdminError::NothingToRetry(context_id.to_string())),
        };
        state.blocked = None;
        state.retry = None;
        Ok(detail)
    })
    .await
}

/// Load, change, commit on the version; again if another writer got in between.
async fn request<S: StagingStore>(
    store: &S,
    context_id: &str,
    operator: &Operator,
    now: Millis,
    action: &str,
    change: impl Fn(&mut ContextState) -> Result<String, AdminError>,
) -> Result<Requested, AdminError> {
    for _ in 0..5 {
        let Some(mut state) = store.load(context_id).await? else {
            return Err(AdminError::NoSuchContext(context_id.to_string()));
        };
        if let Some(lease) = state.lease.as_ref().filter(|l| now < l.until) {
            return Err(AdminError::Leased {
                context_id: context_id.to_string(),
                owner: lease.owner.clone(),
                until: lease.until.0,
            });
        }
        let expected = state.version;
        let detail = change(&mut state)?;
        let record = OperatorAction {
            action: action.to_string(),
            by: operator.by.clone(),
            at: now,
            reason: operator.reason.clone(),
            detail,
        };
        state.operator_log.push(record.clone());
        let excess = state.operator_log.len().saturating_sub(OPERATOR_LOG);
        state.operator_log.drain(..excess);
        state.updated_at = now;
        // Due now: the next sweep of any worker carries the request out.
        state.due_at = Some(now);
        let commit = Commit {
            expected_version: expected,
            state: Some(state.clone()),
            remove_staged: Vec::new(),
        };
        if store.commit(context_id, &commit).await? == CommitOutcome::Committed {
            tracing::warn!(
                decision = "operator",
                action,
                context_id,
                by = %operator.by,
                reason = %operator.reason,
                detail = %record.detail,
                "operator request recorded; the next sweep carries it out"
            );
            state.version = expected + 1;
            return Ok(Requested {
                context_id: context_id.to_string(),
                action: record,
                state,
            });
        }
    }
    Err(AdminError::Raced(context_id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_the_missing_positions_up_to_the_last_waiting_one() {
        assert_eq!(gaps(1, &[]), vec![]);
        assert_eq!(gaps(1, &[1, 2]), vec![]);
        assert_eq!(
            gaps(3, &[5, 6, 9]),
            vec![SeqRange { first: 3, last: 4 }, SeqRange { first: 7, last: 8 }]
        );
    }
}
