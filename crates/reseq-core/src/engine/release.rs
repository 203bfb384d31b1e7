//! Releasing: the run from the cursor on, one handler call at a time, with its failure
//! policies (retry, outage, poison), gap skips, operator skips and the close-out after `final`.

use super::*;

impl<S: StagingStore, C: Clock> Engine<S, C> {
    /// Releases every consecutive message from the cursor on, skipping a gap whose
    /// timeout has passed, until a position is missing or the context stalls.
    pub(super) async fn advance<H: Handler, D: DeadLetterSink>(
        &self,
        work: &mut Work,
        now: Millis,
        handler: &H,
        dlq: &D,
        outcomes: &mut [Outcome],
    ) -> Result<(), StoreError> {
        if work.state.typed.is_some() {
            return self.advance_typed(work, now, handler, dlq, outcomes).await;
        }
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

    /// Hands one message to the handler and applies the result to the context.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn release<H: Handler, D: DeadLetterSink>(
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
        // Invariant 2 (the cursor is the truth) and SPEC §4 (order): only the position at
        // the cursor is ever handed to the handler, never one past `final` (invariant 11),
        // and with leases only by the lease holder (invariant 10).
        debug_assert_eq!(
            msg.seq, work.state.next,
            "context {}: release off the cursor",
            work.context_id
        );
        debug_assert!(
            work.state.final_seq.is_none_or(|f| msg.seq <= f),
            "context {}: release past the final position",
            work.context_id
        );
        debug_assert!(
            self.config.lease.is_none() || work.leased,
            "context {}: release without the lease",
            work.context_id
        );
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
                self.counters.released_after(now.since(msg.received_at));
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
                let outcome = self
                    .dead_letter(&work.context_id, &msg, Reason::HandlerFailed, &detail, dlq)
                    .await;
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
            let outcome = self
                .dead_letter(&work.context_id, &msg, Reason::HandlerFailed, &detail, dlq)
                .await;
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
    pub(super) fn retry_later(
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

    pub(super) fn move_past(&self, work: &mut Work, seq: u64) {
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
    pub(super) fn keep_waiting(&self, work: &mut Work, msg: StagedMessage, source: Source, outcomes: &mut [Outcome]) {
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

    /// The context is closed (its `final` position was released): nothing after it is
    /// ever released, whatever the arrival order. Messages that waited beyond the final
    /// position are late, exactly as if they had arrived after it (SPEC §2). One that
    /// cannot be dead-lettered stays staged; the retention sweep dead-letters it later.
    pub(super) async fn close_out<D: DeadLetterSink>(
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
            outcomes[p.index] = self
                .dead_letter(&work.context_id, &p.msg, Reason::Late, &detail(seq), dlq)
                .await;
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
                let outcome = self
                    .dead_letter(&work.context_id, &msg, Reason::Late, &detail(msg.seq), dlq)
                    .await;
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
    pub(super) async fn skip_expired_gap(&self, work: &mut Work, now: Millis) -> Result<bool, StoreError> {
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

    /// Carries out an operator's `reseq skip` (`admin::request_skip`): the messages waiting
    /// before the requested position follow the `--late` policy, the positions are
    /// recorded as skipped and the cursor moves there. Under the lease, like a release.
    /// `false`: not done yet (another worker holds the lease, or the DLQ refused a
    /// message); the request stays and the context stays due.
    pub(super) async fn apply_skip<H: Handler, D: DeadLetterSink>(
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
}

/// A retry of `seq` that counts no attempt (the target, or the DLQ, is out): it backs off
/// on its own count of such retries, kept across them.
pub(super) fn uncounted_retry(work: &Work, seq: u64, attempts: u32, now: Millis, last_error: String) -> RetryState {
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
