//! What the binary's test files share: the guard for the local AWS stand-ins, and running
//! `reseq run` ([`reseq_run`]).
#![allow(dead_code)] // Each test file uses its own part of this module.

pub mod reseq_run;
pub mod sqs_worker;

/// The stand-ins' endpoints, or `None` when they are not configured. scripts/test.sh sets
/// RESEQ_REQUIRE_EMULATORS=1, and then a missing endpoint fails the test.
pub fn emulators() -> Option<()> {
    let configured =
        std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_some() && std::env::var_os("AWS_ENDPOINT_URL_SQS").is_some();
    if configured {
        return Some(());
    }
    let message = "the local AWS stand-ins are not configured: run `scripts/emulators.sh start` and \
                   `eval \"$(scripts/emulators.sh env)\"`";
    assert!(std::env::var_os("RESEQ_REQUIRE_EMULATORS").is_none(), "{message}");
    eprintln!("skipped: {message}");
    None
}
