//! Typed sequences (SPEC §5), the second kind of context: a message is released when its
//! type's release condition holds over the types already processed in its instance, and
//! after each release the waiting messages whose condition now holds are released in
//! arrival order. The instance (one per sequence and context id) keeps its processed and
//! waiting types in its state (`TypedState`); a waiting message is staged at the position
//! of its idempotence id's hash, so the store's conditional put deduplicates it like a
//! numeric one. Everything else is shared with numeric contexts: the working copy, the
//! lease (a typed instance decides only under it, so no wakeup is ever lost), the end of
//! batch commit, the DLQ, retention and the sweep.

use super::release::uncounted_retry;
use super::*;
use crate::sequences::{MessageType, Sequence};
use crate::store::{TypedState, TypedWaiting};

impl<S: StagingStore, C: Clock> Engine<S, C> {
    /// The sequence and message type of a typed envelope, or `None` when it is handled at
    /// once (its type is in no sequence, or it has no context id).
    pub(super) fn typed_route(&self, env: &Envelope) -> Option<(&Sequence, &MessageType)> {
        let key = env.message_type.as_deref()?;
        if env.context_id.is_empty() {
            return None;
        }
        self.config.sequences.as_deref()?.find(key)
    }

    /// A typed message with no instance to wait in: handed to the handler at once.
    pub(super) async fn pass_through<H: Handler, D: DeadLetterSink>(
        &self,
        env: Envelope,
        handler: &H,
        dlq: &D,
    ) -> Outcome {
        // Handed over under its context id, or its type when it has none (an SQS output
        // needs a message group).
        let context_id = if env.context_id.is_empty() {
            env.message_type.clone().unwrap_or_default()
        } else {
            env.context_id.clone()
        };
        let msg = StagedMessage::from_envelope(env);
        let release = Release {
            context_id: &context_id,
            seq: msg.seq,
            prev_seq: None,
            message_id: &msg.message_id,
            body: &msg.body,
            attributes: &msg.attributes,
            late: false,
            attempt: 1,
        };
        match handler.handle(&release).await {
            Ok(()) => {
                self.counters.released_after(self.clock.now().since(msg.received_at));
                Outcome::Released
            }
            Err(HandlerError::Retryable(e)) => {
                bump(&self.counters.handler_errors);
                Outcome::Held(Hold::Failed(format!("handler: {e}")))
            }
            Err(HandlerError::Permanent(e) | HandlerError::Rejected(e)) => {
                bump(&self.counters.handler_errors);
                bump(&self.counters.poison);
                self.dead_letter(&context_id, &msg, Reason::HandlerFailed, &e, dlq)
                    .await
            }
        }
    }

    /// The rule for one message of a typed instance (the typed counterpart of `accept`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn accept_typed<H: Handler, D: DeadLetterSink>(
        &self,
        work: &mut Work,
        index: usize,
        env: Envelope,
        now: Millis,
        handler: &H,
        dlq: &D,
        outcomes: &mut [Outcome],
    ) -> Result<(), StoreError> {
        let Some((sequence, kind)) = self.typed_route(&env) else {
            // `process_until` routes only typed messages with an instance here.
            outcomes[index] = Outcome::Held(Hold::Failed("no typed instance for this message".into()));
            return Ok(());
        };
        let key = kind.key().into_owned();
        let msg = StagedMessage::from_envelope(env);
        if work.state.typed.is_none() {
            // A new instance: no position counts as released below its cursor (waiting
            // messages are staged at the hash of their id, anywhere in the u64 range).
            work.state.next = 0;
            work.start_next = 0;
        }
        // An instance decides only under its lease: staging and releasing both change the
        // state, which only the lease holder writes.
        if !self.acquire(work, now).await? {
            outcomes[index] = Outcome::Held(Hold::Busy);
            return Ok(());
        }
        let typed = work.state.typed.get_or_insert_with(|| {
            Box::new(TypedState {
                sequence: sequence.name.clone(),
                ..TypedState::default()
            })
        });
        debug_assert_eq!(
            typed.sequence, sequence.name,
            "context {}: a type of another sequence",
            work.context_id
        );
        // The first message of a type wins: the same id again is a duplicate, another id a
        // conflict. (`waiting` holds this batch's unwritten ones too.)
        let same_id = typed.processed.values().any(|s| *s == msg.seq) || typed.waiting.iter().any(|w| w.seq == msg.seq);
        let seen = typed
            .processed
            .get(&key)
            .copied()
            .or_else(|| typed.waiting.iter().find(|w| w.type_key == key).map(|w| w.seq))
            .or(same_id.then_some(msg.seq));
        if let Some(first) = seen {
            outcomes[index] = if first == msg.seq {
                bump(&self.counters.duplicates);
                Outcome::Duplicate
            } else {
                bump(&self.counters.conflicts);
                tracing::warn!(decision = "conflict", context_id = %work.context_id, message_type = %key, message_id = %msg.message_id, "another message of a type already seen: the first one wins, this one is dead-lettered");
                let detail = format!(
                    "instance {} already has a message of type {key} with another id; the first one wins",
                    work.context_id
                );
                self.dead_letter(&work.context_id, &msg, Reason::Conflict, &detail, dlq)
                    .await
            };
            return Ok(());
        }
        let recording = sequence.recording_until.is_some_and(|until| now < until);
        let ready = recording || kind.ready(&|k: &str| processed(work, k));
        if ready
            && !self.stalled(work, now)
            && let Some(outcome) = self.release_typed(work, &key, msg.clone(), now, handler, dlq).await
        {
            outcomes[index] = outcome;
            if outcomes[index] == Outcome::Released {
                work.released.push(index);
            }
            return self.advance_typed(work, now, handler, dlq, outcomes).await;
        }
        // It waits: staged at the end of the batch, recorded in the instance now.
        if let Some(typed) = work.state.typed.as_mut() {
            typed.waiting.push(TypedWaiting {
                type_key: key,
                seq: msg.seq,
                received_at: msg.received_at,
            });
        }
        work.pending.insert(msg.seq, Pending { msg, index });
        outcomes[index] = Outcome::Staged;
        work.dirty = true;
        Ok(())
    }

    /// Releases, in arrival order, every waiting message whose condition now holds, again
    /// and again while a release makes another one ready.
    pub(super) async fn advance_typed<H: Handler, D: DeadLetterSink>(
        &self,
        work: &mut Work,
        now: Millis,
        handler: &H,
        dlq: &D,
        outcomes: &mut [Outcome],
    ) -> Result<(), StoreError> {
        let Some(sequence) = work
            .state
            .typed
            .as_ref()
            .and_then(|t| {
                self.config
                    .sequences
                    .as_deref()?
                    .sequences
                    .iter()
                    .find(|s| s.name == t.sequence)
            })
            .cloned()
        else {
            return Ok(());
        };
        loop {
            if self.stalled(work, now) {
                return Ok(());
            }
            let recording = sequence.recording_until.is_some_and(|until| now < until);
            let Some(typed) = work.state.typed.as_ref() else {
                return Ok(());
            };
            let next = typed.waiting.iter().position(|w| {
                recording
                    || sequence
                        .message(&w.type_key)
                        .is_some_and(|m| m.ready(&|k: &str| processed(work, k)))
            });
            let Some(at) = next else { return Ok(()) };
            let waiting = typed.waiting[at].clone();
            if !self.acquire(work, now).await? {
                return Ok(());
            }
            let (msg, index) = match work.pending.remove(waiting.seq) {
                Some(p) => (p.msg, Some(p.index)),
                None => match self
                    .store
                    .staged(&work.context_id, waiting.seq, waiting.seq, 1)
                    .await?
                    .pop()
                {
                    Some(msg) => (msg, None),
                    None => {
                        // Its row is gone (expired by the store?): it cannot be released.
                        tracing::error!(context_id = %work.context_id, message_type = %waiting.type_key, "a waiting message's row is missing from the store: forgotten");
                        if let Some(t) = work.state.typed.as_mut() {
                            t.waiting.remove(at);
                        }
                        work.dirty = true;
                        continue;
                    }
                },
            };
            match self
                .release_typed(work, &waiting.type_key, msg.clone(), now, handler, dlq)
                .await
            {
                Some(outcome) => {
                    if let Some(t) = work.state.typed.as_mut() {
                        t.waiting.retain(|w| w.seq != waiting.seq);
                    }
                    match index {
                        Some(i) => {
                            if outcome == Outcome::Released {
                                work.released.push(i);
                            }
                            outcomes[i] = outcome;
                        }
                        None => work.remove_staged.push(waiting.seq),
                    }
                }
                None => {
                    // Not settled (a retry, or the context blocked): it keeps waiting.
                    if let Some(i) = index {
                        work.pending.insert(msg.seq, Pending { msg, index: i });
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Hands one typed message to the handler. `Some(outcome)` when it is settled
    /// (released, or dead-lettered as poison): its type then counts as processed.
    /// `None`: it must wait (a retry is due later, or the context is blocked).
    async fn release_typed<H: Handler, D: DeadLetterSink>(
        &self,
        work: &mut Work,
        key: &str,
        msg: StagedMessage,
        now: Millis,
        handler: &H,
        dlq: &D,
    ) -> Option<Outcome> {
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
            prev_seq: None,
            message_id: &msg.message_id,
            body: &msg.body,
            attributes: &msg.attributes,
            late: false,
            attempt: failures + 1,
        };
        let result = handler.handle(&release).await;
        let error = match result {
            Ok(()) => {
                self.breaker.succeeded();
                self.counters.released_after(now.since(msg.received_at));
                self.processed_now(work, key, msg.seq);
                return Some(Outcome::Released);
            }
            Err(HandlerError::Retryable(e)) if self.breaker.failed(&work.context_id) => {
                // An outage of the target, not poison (SPEC §3): back off, count no attempt.
                bump(&self.counters.handler_errors);
                bump(&self.counters.outage_retries);
                let retry = uncounted_retry(work, msg.seq, failures, now, e);
                tracing::warn!(decision = "retried", outage = true, context_id = %work.context_id, message_type = key, message_id = %msg.message_id, error = %retry.last_error, "the target is out: retrying later, no attempt counted");
                work.state.retry = Some(retry);
                work.dirty = true;
                return None;
            }
            Err(HandlerError::Retryable(e)) if failures + 1 < self.config.max_attempts => {
                bump(&self.counters.handler_errors);
                bump(&self.counters.handler_retries);
                let retry = RetryState {
                    seq: msg.seq,
                    attempts: failures + 1,
                    not_before: now.plus(retry_backoff(failures + 1)),
                    last_error: e,
                    outage_retries: 0,
                };
                tracing::warn!(decision = "retried", context_id = %work.context_id, message_type = key, message_id = %msg.message_id, attempt = retry.attempts, error = %retry.last_error, "handler failed: retrying");
                work.state.retry = Some(retry);
                work.dirty = true;
                return None;
            }
            Err(HandlerError::Retryable(e) | HandlerError::Permanent(e) | HandlerError::Rejected(e)) => {
                bump(&self.counters.handler_errors);
                e
            }
        };
        bump(&self.counters.poison);
        let attempts = failures + 1;
        if self.config.on_poison == PoisonPolicy::Skip {
            let detail = format!("handler failed after {attempts} attempt(s): {error}");
            let outcome = self
                .dead_letter(&work.context_id, &msg, Reason::HandlerFailed, &detail, dlq)
                .await;
            if outcome.is_settled() {
                // The instance moves on: the type counts as processed.
                self.processed_now(work, key, msg.seq);
                return Some(outcome);
            }
        }
        bump(&self.counters.blocked);
        tracing::error!(decision = "blocked", context_id = %work.context_id, message_type = key, message_id = %msg.message_id, attempts, error = %error, "poison message: the instance is blocked at this type until an operator retries it");
        work.state.retry = None;
        work.state.blocked = Some(Blocked {
            seq: msg.seq,
            attempts,
            error,
            since: now,
        });
        work.dirty = true;
        None
    }

    fn processed_now(&self, work: &mut Work, key: &str, seq: u64) {
        if let Some(typed) = work.state.typed.as_mut() {
            typed.processed.insert(key.to_string(), seq);
        }
        work.state.retry = None;
        work.dirty = true;
    }
}

/// Whether type `key` was processed in this instance.
fn processed(work: &Work, key: &str) -> bool {
    work.state.typed.as_ref().is_some_and(|t| t.processed.contains_key(key))
}
