//! The shared store conformance suite, against DynamoDB Local: every case on a store with
//! a client of its own, all on one table (the cases use context ids of their own).

mod common;

// The macro runs each case on whatever the factory returns, so a case cannot return early
// when DynamoDB Local is not configured: the factory then ends the test process with
// success, after `common::emulator` said why on stderr. (With RESEQ_REQUIRE_EMULATORS=1
// it fails instead, as every DynamoDB test does.)
reseq_conformance::store_conformance!(|| async {
    match common::store().await {
        Some(store) => store,
        None => std::process::exit(0),
    }
});
