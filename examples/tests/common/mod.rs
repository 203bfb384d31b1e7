//! What the example tests share: the guard for the local AWS stand-ins and unique names.
#![allow(dead_code)] // Each test file uses its own part of this module.

/// Clients of the local stand-ins.
pub struct Stands {
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
}

/// The stand-ins' clients, or `None` when their endpoints are not configured (the test
/// then returns at once). scripts/test.sh sets RESEQ_REQUIRE_EMULATORS=1, and then a
/// missing endpoint fails the test instead. Never lets a test reach real AWS.
pub async fn emulators() -> Option<Stands> {
    let configured =
        std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_some() && std::env::var_os("AWS_ENDPOINT_URL_SQS").is_some();
    if !configured {
        let message = "the local AWS stand-ins are not configured: run `scripts/emulators.sh start` and \
                       `eval \"$(scripts/emulators.sh env)\"`";
        assert!(std::env::var_os("RESEQ_REQUIRE_EMULATORS").is_none(), "{message}");
        eprintln!("skipped: {message}");
        return None;
    }
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Some(Stands {
        sqs: aws_sdk_sqs::Client::new(&sdk),
        dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
    })
}

/// A name of this test run's own: tables and queues are not shared between tests.
pub fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("ex-{test}-{}-{nanos:x}", std::process::id())
}
