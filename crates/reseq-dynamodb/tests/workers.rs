//! Several workers, each with its own DynamoDB client, racing over shared contexts with
//! leases against DynamoDB Local (see `reseq_conformance::workers`).

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_with_their_own_clients_release_each_context_in_order_once() {
    for seed in 0..3 {
        let mut stores = Vec::new();
        for _ in 0..4 {
            match common::store().await {
                Some(store) => stores.push(store),
                None => return,
            }
        }
        reseq_conformance::workers::race(stores, seed, 3, 20, &common::unique("workers")).await;
    }
}
