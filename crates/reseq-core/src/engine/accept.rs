//! The rule for one arriving message: below the first position, past the final one,
//! late, duplicate, conflict, release, wait, or held back. Read this file first.

use super::*;

impl<S: StagingStore, C: Clock> Engine<S, C> {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn accept<H: Handler, D: DeadLetterSink>(
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
                .dead_letter(&work.context_id, &msg, Reason::InvalidSequence, &detail, dlq)
                .await;
            return Ok(());
        }
        if let Some(final_seq) = work.state.final_seq.filter(|f| seq > *f) {
            let detail = format!("context {} closed at its final position {final_seq}", work.context_id);
            let msg = StagedMessage::from_envelope(env);
            bump(&self.counters.late);
            tracing::warn!(decision = "late", context_id = %work.context_id, seq, message_id = %msg.message_id, final_seq, "after the final position: late");
            outcomes[index] = self
                .dead_letter(&work.context_id, &msg, Reason::Late, &detail, dlq)
                .await;
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
    pub(super) async fn second_copy<D: DeadLetterSink>(
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
        self.dead_letter(&work.context_id, msg, Reason::Conflict, &detail, dlq)
            .await
    }

    pub(super) async fn late<H: Handler, D: DeadLetterSink>(
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
                self.dead_letter(&work.context_id, &msg, Reason::Late, &detail, dlq)
                    .await
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
                        self.dead_letter(&work.context_id, &msg, Reason::HandlerFailed, &e, dlq)
                            .await
                    }
                }
            }
        }
    }

    pub(super) async fn dead_letter<D: DeadLetterSink>(
        &self,
        context_id: &str,
        msg: &StagedMessage,
        reason: Reason,
        detail: &str,
        dlq: &D,
    ) -> Outcome {
        let letter = DeadLetter {
            context_id,
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
                    context_id = %context_id,
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
                    context_id = %context_id,
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

    pub(super) fn stalled(&self, work: &Work, now: Millis) -> bool {
        let state = &work.state;
        work.busy
            || work.cut
            || state.blocked.is_some()
            || state.pending_skip.is_some()
            || state.retry.as_ref().is_some_and(|r| now < r.not_before)
    }
}
