//! Several workers with leases on one in-memory store (see `reseq_conformance::workers`).

use std::sync::Arc;

use reseq_core::MemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_sharing_contexts_release_each_context_in_order_once() {
    for seed in 0..200 {
        let store = Arc::new(MemoryStore::new());
        reseq_conformance::workers::race(vec![store.clone(); 4], seed, 3, 30, "mem").await;
    }
}
