//! Time: gap timeouts, retention, since-when messages wait, and when a context is due.

use super::*;

impl<S: StagingStore, C: Clock> Engine<S, C> {
    /// Whether the oldest message waiting in this context has waited `gap_timeout`.
    pub(super) async fn gap_expired(&self, work: &mut Work, now: Millis) -> Result<bool, StoreError> {
        let Some(timeout) = self.config.gap_timeout else {
            return Ok(false);
        };
        let oldest = self.oldest_waiting(work, false).await?;
        Ok(oldest.is_some_and(|t| now.since(t) >= timeout))
    }

    /// Since when messages wait beyond the cursor. While the cursor has not moved, the
    /// stored `waiting_since` and this batch's own waiting messages tell; once it moved,
    /// the oldest of the waiting messages in the store's window at the cursor (one read if
    /// the window is empty) stands for it: never older than the truth, so a gap is never
    /// skipped early.
    pub(super) async fn oldest_waiting(&self, work: &mut Work, from_store: bool) -> Result<Option<Millis>, StoreError> {
        let pending = work.pending.values().map(|p| p.msg.received_at).min();
        if work.state.next == work.start_next && !from_store {
            return Ok([work.state.waiting_since, pending].into_iter().flatten().min());
        }
        let next = work.state.next;
        self.ensure_view(work, next).await?;
        let in_view = work
            .view
            .items
            .entries
            .iter()
            .filter(|(seq, _)| *seq >= next)
            .map(|(_, m)| m.received_at)
            .min();
        if let Some(known) = [in_view, pending].into_iter().flatten().min() {
            return Ok(Some(known));
        }
        if work.view.covers(next) && work.view.last == u64::MAX {
            // The window reaches the end (a close-out read everything): nothing waits.
            return Ok(None);
        }
        if work.state.waiting_since.is_none() && !from_store {
            return Ok(None);
        }
        let first = self.store.staged(&work.context_id, next, u64::MAX, 1).await?;
        Ok(first.first().map(|m| m.received_at))
    }

    /// How long this context's records are kept: its typed sequence's `retention` (SPEC
    /// §5), else `--retention`.
    pub(super) fn retention_of(&self, state: &ContextState) -> Duration {
        let sequence = state.typed.as_ref().and_then(|typed| {
            let file = self.config.sequences.as_deref()?;
            file.sequences.iter().find(|s| s.name == typed.sequence)
        });
        sequence.and_then(|s| s.retention).unwrap_or(self.config.retention)
    }

    /// When a sweep must look at this context next: a handler retry, a gap timeout, a
    /// waiting message reaching the retention, or the state itself reaching it.
    pub(super) fn due_at(&self, state: &ContextState) -> Millis {
        let retention = self.retention_of(state);
        // The retention timer is rounded up to a hundredth of the retention, so that it
        // stays the same across the commits of a busy context: an index entry whose key
        // does not change costs nothing to keep (DynamoDB charges a changed GSI key twice).
        let granularity = (retention.0 / 100).max(1000);
        let expiry = state.updated_at.plus(retention).0;
        let mut due = Millis(expiry.div_ceil(granularity).saturating_mul(granularity).max(expiry));
        // A worker that dies holding the lease leaves its context to the sweep when the
        // lease runs out.
        if let Some(lease) = &state.lease {
            due = due.min(lease.until);
        }
        if state.pending_skip.is_some() {
            // An operator's skip waits to be carried out: at the next sweep.
            due = due.min(state.updated_at);
        }
        let stalled_by_retry = state.blocked.is_none() && state.retry.is_some();
        if let Some(retry) = state.retry.as_ref().filter(|_| state.blocked.is_none()) {
            due = due.min(retry.not_before);
        }
        if state.waiting_since.is_some() && state.blocked.is_none() {
            // The last net under the lost-wakeup protocol: a context with messages waiting
            // is looked at again at least this often, so that no path that lost its check
            // (a worker dying between the check and the drain while SQS's other delivery
            // of its message was deleted: found by the simulation's soak) strands it until
            // the retention. Costs one state write per interval, only while a context waits.
            due = due.min(state.updated_at.plus(WAITING_RECHECK));
        }
        if let Some(since) = state.waiting_since {
            // Expired messages the DLQ did not take come back when their retry is due.
            let expiry = since.plus(retention);
            due = due.min(match &state.expiry_retry {
                Some(retry) => expiry.max(retry.not_before),
                None => expiry,
            });
            if let Some(gap) = self
                .config
                .gap_timeout
                .filter(|_| state.blocked.is_none() && !stalled_by_retry)
            {
                due = due.min(since.plus(gap));
            }
        }
        due
    }

    /// Dead-letters waiting messages older than the retention (SPEC §2: waiting messages
    /// are never deleted by expiry), then forgets a context with nothing left waiting
    /// whose state is older than the retention.
    pub(super) async fn expire<D: DeadLetterSink>(
        &self,
        work: &mut Work,
        now: Millis,
        dlq: &D,
    ) -> Result<(), StoreError> {
        // Measured as an age, not against `now - retention`, which saturates at the epoch.
        let retention = self.retention_of(&work.state);
        if work.state.expiry_retry.as_ref().is_some_and(|r| now < r.not_before) {
            return Ok(());
        }
        let mut from = work.state.next;
        let mut remaining = Waiting::default();
        // Expired messages the DLQ did not take, and why: they stay staged.
        let mut undelivered: Vec<u64> = Vec::new();
        let mut last_error = String::new();
        // The rows read, for a typed instance: a listed message without one is gone.
        let mut rows: Vec<u64> = Vec::new();
        loop {
            let page = self.store.staged(&work.context_id, from, u64::MAX, PAGE).await?;
            let full = page.len() == PAGE;
            for msg in &page {
                from = msg.seq.saturating_add(1);
                rows.push(msg.seq);
                if work
                    .state
                    .typed
                    .as_ref()
                    .is_some_and(|t| !t.waiting.iter().any(|w| w.seq == msg.seq))
                {
                    // A typed instance's row that no longer waits: its message was released
                    // (its copy was staged by a write whose answer was lost). Not a waiting
                    // message, so never dead-lettered: removed.
                    work.remove_staged.push(msg.seq);
                    work.dirty = true;
                    continue;
                }
                let expired = now.since(msg.received_at) >= retention;
                if expired && undelivered.is_empty() {
                    let detail = format!(
                        "context {} position {} waited longer than the retention ({})",
                        work.context_id, msg.seq, retention
                    );
                    match self
                        .dead_letter(&work.context_id, msg, Reason::Expired, &detail, dlq)
                        .await
                    {
                        Outcome::Held(hold) => last_error = format!("{hold:?}"),
                        _ => {
                            bump(&self.counters.expired);
                            tracing::warn!(decision = "expired", context_id = %work.context_id, seq = msg.seq, message_id = %msg.message_id, "waited longer than the retention: dead-lettered expired");
                            work.remove_staged.push(msg.seq);
                            work.dirty = true;
                            continue;
                        }
                    }
                }
                if expired {
                    undelivered.push(msg.seq);
                }
                remaining.count += 1;
                remaining.oldest_received_at = Some(
                    remaining
                        .oldest_received_at
                        .map_or(msg.received_at, |t| t.min(msg.received_at)),
                );
            }
            if !full {
                break;
            }
        }
        if undelivered.is_empty() {
            if work.state.expiry_retry.take().is_some() {
                work.dirty = true;
            }
        } else {
            // Never silently, never in a hot loop, never to the store's own expiry: the
            // sweep backs off, and the store keeps the messages beyond the next try.
            let attempts = work.state.expiry_retry.as_ref().map_or(0, |r| r.attempts) + 1;
            let delay = Duration::from_millis(retry_backoff(attempts).0.saturating_mul(5));
            let not_before = now.plus(delay);
            self.counters
                .expiry_failures
                .fetch_add(undelivered.len() as u64, Relaxed);
            tracing::error!(
                context_id = %work.context_id,
                count = undelivered.len(),
                first_seq = undelivered[0],
                attempts,
                error = %last_error,
                retry_at = not_before.0,
                "expired messages could not be dead-lettered (is a DLQ configured and reachable?); they stay staged \
                 and the sweep tries again"
            );
            self.store
                .keep_staged(&work.context_id, &undelivered, not_before.plus(retention))
                .await?;
            work.state.expiry_retry = Some(ExpiryRetry {
                attempts,
                not_before,
                last_error,
            });
            work.dirty = true;
        }
        if let Some(typed) = work.state.typed.as_mut() {
            // Dead-lettered (expired) waiting messages no longer wait in the instance.
            let removed = &work.remove_staged;
            typed.waiting.retain(|w| !removed.contains(&w.seq));
            let context_id = &work.context_id;
            typed.waiting.retain(|w| {
                let gone = !rows.contains(&w.seq) && now.since(w.received_at) >= retention;
                if gone {
                    // Listed as waiting, but its row is not in the store: nothing is left to
                    // dead-letter or release. Said loudly, and no longer kept due forever.
                    tracing::error!(decision = "expired", context_id = %context_id, message_type = %w.type_key, "a waiting message past the retention has no staged row: dropped from its instance");
                }
                !gone
            });
            // What waits is what the instance lists (a listed message whose row is gone is
            // dropped, with an error, when the instance next tries to release it).
            remaining.count = typed.waiting.len() as u64;
            remaining.oldest_received_at = typed.waiting.iter().map(|w| w.received_at).min();
        }
        work.view = StoreView::empty();
        for seq in &work.remove_staged {
            work.view.items.remove(*seq);
        }
        if work.state.waiting_since != remaining.oldest_received_at {
            work.state.waiting_since = remaining.oldest_received_at;
            work.dirty = true;
        }
        if now.since(work.state.updated_at) >= retention && work.loaded_version > 0 {
            // With nothing waiting the context is forgotten; messages still waiting keep
            // it alive, and refreshing `updated_at` stops every sweep finding it again.
            work.forget = remaining.count == 0;
            work.dirty = true;
        }
        Ok(())
    }

    /// Keeps `state.waiting_since` true after the batch: a context that starts waiting
    /// gets it (one state write when a gap opens, none for later arrivals into the same
    /// gap); one whose cursor moved gets it worked out again.
    pub(super) async fn note_waiting(&self, work: &mut Work, staged_since: Option<Millis>) -> Result<(), StoreError> {
        if let Some(typed) = &work.state.typed {
            // A typed instance lists what waits in its state.
            let since = typed.waiting.iter().map(|w| w.received_at).min();
            if since != work.state.waiting_since {
                work.state.waiting_since = since;
                work.dirty = true;
            }
            return Ok(());
        }
        // A lease holder asks the store too: other workers may have staged meanwhile.
        let since = if work.state.next != work.start_next || work.leased {
            let stored = self.oldest_waiting(work, true).await?;
            [stored, staged_since].into_iter().flatten().min()
        } else {
            [work.state.waiting_since, staged_since].into_iter().flatten().min()
        };
        if since != work.state.waiting_since {
            work.state.waiting_since = since;
            work.dirty = true;
        }
        Ok(())
    }
}
