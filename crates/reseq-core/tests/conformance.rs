//! The shared store conformance suite against the in-memory reference store.

reseq_conformance::store_conformance!(|| async { reseq_core::MemoryStore::new() });
