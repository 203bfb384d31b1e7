//! What every DynamoDB test shares: the guard that finds DynamoDB Local, and the table.
#![allow(dead_code)] // Each test file uses its own part of this module.

use reseq_dynamodb::{DynamoConfig, DynamoStore, create_table, load_client};

/// The table the tests share. Every test uses context ids of its own, so tests (and test
/// processes: nextest runs each test in its own) share it; `create_table` is idempotent.
pub const TABLE: &str = "reseq-tests";

/// The DynamoDB Local endpoint from `AWS_ENDPOINT_URL_DYNAMODB`, or `None` when it is not
/// set: the test should then return at once. With `RESEQ_REQUIRE_EMULATORS=1` (set by
/// `scripts/test.sh`) a missing endpoint fails the test instead. Never lets a test reach
/// real AWS: without an explicit endpoint nothing runs.
pub fn emulator() -> Option<String> {
    if let Ok(url) = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        && !url.is_empty()
    {
        return Some(url);
    }
    let message = "the DynamoDB tests need DynamoDB Local, and AWS_ENDPOINT_URL_DYNAMODB is not set: run \
                   `scripts/emulators.sh start` and `eval \"$(scripts/emulators.sh env)\"`, then test again";
    if std::env::var("RESEQ_REQUIRE_EMULATORS").is_ok_and(|v| v == "1") {
        panic!("{message} (RESEQ_REQUIRE_EMULATORS=1: these tests must run, not be skipped)");
    }
    // Once per process, and past the test harness's capture of `eprintln!` (which would
    // hide it: a skipped test passes).
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipped: {message}");
    });
    None
}

/// A unique suffix for names (context ids, tables) of this process.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// A store with a client of its own on [`TABLE`] (created if needed), or `None` (see
/// [`emulator`]).
pub async fn store() -> Option<DynamoStore> {
    emulator()?;
    let config = DynamoConfig::default();
    let client = load_client(&config).await;
    create_table(&client, TABLE)
        .await
        .unwrap_or_else(|e| panic!("creating the test table: {e}"));
    Some(DynamoStore::new(client, TABLE, config))
}
