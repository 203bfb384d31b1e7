//! The shared store conformance suite, on an in-memory database and on a file.

reseq_conformance::store_conformance!(|| async { reseq_sqlite::SqliteStore::in_memory().unwrap() });

/// The same cases on a WAL file in a temporary directory (removed after the case).
mod on_disk {
    use reseq_core::{
        Commit, CommitOutcome, ContextState, DueQuery, StageOutcome, StagedMessage, StagingStore, StoreError, Waiting,
    };
    use reseq_sqlite::SqliteStore;

    /// A file-backed store that owns its directory (dropped after the store).
    struct OnDisk {
        store: SqliteStore,
        _dir: tempfile::TempDir,
    }

    impl OnDisk {
        fn new() -> OnDisk {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path().join("state.db")).unwrap();
            OnDisk { store, _dir: dir }
        }
    }

    impl StagingStore for OnDisk {
        async fn load(&self, id: &str) -> Result<Option<ContextState>, StoreError> {
            self.store.load(id).await
        }
        async fn stage(&self, id: &str, msg: &StagedMessage) -> Result<StageOutcome, StoreError> {
            self.store.stage(id, msg).await
        }
        async fn staged(&self, id: &str, from: u64, to: u64, limit: usize) -> Result<Vec<StagedMessage>, StoreError> {
            self.store.staged(id, from, to, limit).await
        }
        async fn waiting(&self, id: &str, from: u64) -> Result<Waiting, StoreError> {
            self.store.waiting(id, from).await
        }
        async fn commit(&self, id: &str, commit: &Commit) -> Result<CommitOutcome, StoreError> {
            self.store.commit(id, commit).await
        }
        async fn due(&self, query: &DueQuery) -> Result<Vec<String>, StoreError> {
            self.store.due(query).await
        }
        async fn attention(&self, query: &reseq_core::AttentionQuery) -> Result<reseq_core::AttentionList, StoreError> {
            self.store.attention(query).await
        }
        async fn flush(&self) -> Result<(), StoreError> {
            self.store.flush().await
        }
    }

    reseq_conformance::store_conformance!(|| async { OnDisk::new() });
}
