//! The end of a batch for one context: stage what still waits, write the state once,
//! and say whether anyone must look again.

use super::*;

impl<S: StagingStore, C: Clock> Engine<S, C> {
    /// Writes what the batch decided for one context: the messages still waiting, then
    /// the state. If either fails, nothing released in this batch is settled.
    /// Returns whether the context must be drained again: with leases, a message may have
    /// become releasable while this worker held the lease or waited for it (see `woken`).
    pub(super) async fn finish<D: DeadLetterSink>(
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
                        outcomes[p.index] = self
                            .dead_letter(&work.context_id, &p.msg, Reason::TooLarge, &detail, dlq)
                            .await;
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
                        outcomes[p.index] = self
                            .dead_letter(&work.context_id, &p.msg, Reason::Conflict, &detail, dlq)
                            .await;
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
            // Invariant 2: the cursor only moves forward, and everything below it is done.
            debug_assert!(
                work.state.next >= work.start_next,
                "context {}: the cursor moved back from {} to {}",
                work.context_id,
                work.start_next,
                work.state.next
            );
            debug_assert!(
                work.state
                    .last_released
                    .is_none_or(|l| l < work.state.next || l == u64::MAX),
                "context {}: released {:?} at or above the cursor {}",
                work.context_id,
                work.state.last_released,
                work.state.next
            );
            // Invariant 5: a context is forgotten only when nothing waits in it.
            debug_assert!(
                !work.forget || work.state.waiting_since.is_none(),
                "context {}: forgotten with messages waiting",
                work.context_id
            );
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
}

/// The batch's messages whose outcome holds only if the context's commit does: what it
/// released, what still waits unwritten in `pending`, and what it judged a duplicate (of
/// those releases, or of an unwritten copy: found by the simulation). When the commit
/// fails or loses its version race, none of them may be acknowledged.
pub(super) fn unrecorded(work: &Work, outcomes: &[Outcome]) -> Vec<usize> {
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
