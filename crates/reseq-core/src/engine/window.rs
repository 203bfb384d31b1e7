//! The window of staged messages read from the store for one context.

use super::*;

impl<S: StagingStore, C: Clock> Engine<S, C> {
    pub(super) async fn ensure_view(&self, work: &mut Work, seq: u64) -> Result<(), StoreError> {
        if !work.view.covers(seq) {
            self.fetch_view(work, seq).await?;
        }
        Ok(())
    }

    /// Reads the staged messages in the window `from..from + width`: the positions a
    /// release can use next. Each further read of the same context covers a wider window.
    pub(super) async fn fetch_view(&self, work: &mut Work, from: u64) -> Result<(), StoreError> {
        let width = work.next_page;
        work.next_page = (width * 4).min(PAGE);
        let last = from.saturating_add(width as u64 - 1);
        let page = self.store.staged(&work.context_id, from, last, width).await?;
        let items = SeqMap::from_sorted(page.into_iter().map(|m| (m.seq, m)).collect());
        work.view = StoreView { items, from, last };
        Ok(())
    }

    pub(super) async fn first_stored_at_or_after(&self, work: &mut Work, seq: u64) -> Result<Option<u64>, StoreError> {
        if let Some(found) = work.view.items.first_at_or_after(seq).filter(|_| work.view.covers(seq)) {
            return Ok(Some(found));
        }
        let first = self.store.staged(&work.context_id, seq, u64::MAX, 1).await?;
        Ok(first.first().map(|m| m.seq))
    }
}
