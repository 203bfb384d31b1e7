//! The per-context lease (SPEC §4): taking it, the lost-wakeup check, and draining.

use super::*;

impl<S: StagingStore, C: Clock> Engine<S, C> {
    /// Takes the context's lease before the first release of a batch, folded into a
    /// version-conditional write of the state. `false`: another worker holds it (or wrote
    /// the state meanwhile); the context then only stages, and the holder or the wakeup
    /// check after staging releases what became releasable.
    pub(super) async fn acquire(&self, work: &mut Work, now: Millis) -> Result<bool, StoreError> {
        let Some(lease) = &self.config.lease else {
            return Ok(true);
        };
        if work.leased {
            return Ok(true);
        }
        // A version race means another writer moved the state: read it again and retry,
        // a few times, before giving up on this batch.
        for _ in 0..3 {
            if work
                .state
                .lease
                .as_ref()
                .is_some_and(|l| l.owner != work.lease_holder && now < l.until)
            {
                break;
            }
            if let Some(stale) = work.state.lease.as_ref().filter(|l| l.owner != work.lease_holder) {
                bump(&self.counters.leases_taken_over);
                tracing::warn!(
                    decision = "lease-taken-over",
                    context_id = %work.context_id,
                    previous_owner = %stale.owner,
                    expired_at = stale.until.0,
                    "the context's lease ran out under its holder (a worker died or stalled): taking it over"
                );
            }
            let mut state = work.state.clone();
            state.lease = Some(Lease {
                owner: work.lease_holder.clone(),
                until: now.plus(lease.duration),
            });
            state.updated_at = now;
            state.due_at = Some(self.due_at(&state));
            let commit = Commit {
                expected_version: work.loaded_version,
                state: Some(state.clone()),
                remove_staged: vec![],
            };
            match self.store.commit(&work.context_id, &commit).await? {
                CommitOutcome::Committed => {
                    work.loaded_version += 1;
                    work.state.lease = state.lease;
                    work.leased = true;
                    work.dirty = true;
                    return Ok(true);
                }
                CommitOutcome::VersionMismatch => {
                    let fresh = self
                        .store
                        .load(&work.context_id)
                        .await?
                        .unwrap_or_else(|| ContextState::new(self.config.first_seq));
                    if fresh.next != work.state.next || fresh.typed != work.state.typed {
                        // The cursor (or a typed instance's processed and waiting types)
                        // moved under us: what this batch decided no longer holds. Found
                        // by the typed simulation: taking the lease over a fresh version
                        // kept this batch's stale instance and its commit erased another
                        // worker's releases.
                        break;
                    }
                    work.loaded_version = fresh.version;
                    work.state.lease = fresh.lease;
                    work.state.waiting_since = fresh.waiting_since;
                }
            }
        }
        bump(&self.counters.lease_conflicts);
        work.busy = true;
        Ok(false)
    }

    /// The lost-wakeup check of the lease protocol. A holder gives the lease back in its
    /// commit and then looks at the cursor's position; a worker that staged while another
    /// held the lease looks at the state after staging. Each writes, then reads what the
    /// other writes, so at least one of them sees the message that became releasable.
    /// An error is not "nothing to do": the caller makes sure someone looks again.
    pub(super) async fn woken(&self, context_id: &str, now: Millis) -> Result<bool, StoreError> {
        if self.mutation == Mutation::NoLostWakeupCheck {
            return Ok(false);
        }
        let Some(state) = self.store.load(context_id).await? else {
            return Ok(false);
        };
        let held = state.lease.as_ref().is_some_and(|l| now < l.until);
        let stalled = state.blocked.is_some() || state.retry.as_ref().is_some_and(|r| now < r.not_before);
        if held || stalled {
            return Ok(false);
        }
        let next = state.next;
        Ok(!self.store.staged(context_id, next, next, 1).await?.is_empty())
    }

    /// Releases what became releasable in a context outside any batch (after a wakeup),
    /// again and again while more became releasable meanwhile: stopping early would strand
    /// what others staged during this worker's lease. Each round releases something or
    /// finds the lease taken (then its holder checks), so the loop ends when traffic does;
    /// the bound only guards against a livelock. An error says the context may still hold
    /// a releasable message: the caller makes sure someone looks again.
    pub(super) async fn drain<H: Handler, D: DeadLetterSink>(
        &self,
        context_id: &str,
        handler: &H,
        dlq: &D,
        deadline: Option<Millis>,
        recheck: bool,
    ) -> Result<(), String> {
        for _ in 0..10_000 {
            let now = self.clock.now();
            let mut work = self.load(context_id, deadline).await;
            work.recheck = recheck;
            if let Some(err) = work.failed.clone() {
                return Err(err);
            }
            if let Err(err) = self.advance(&mut work, now, handler, dlq, &mut []).await {
                work.failed = Some(err.to_string());
            }
            match self.finish(work, now, dlq, &mut []).await {
                Finished::Wake => continue,
                Finished::Done => return Ok(()),
                Finished::Failed(err) | Finished::Unchecked(err) => return Err(err),
            }
        }
        Ok(())
    }
}
