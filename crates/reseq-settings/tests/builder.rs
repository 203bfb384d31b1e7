//! The builder against the local stand-ins (DynamoDB Local, LocalStack SQS): whatever is
//! set, the processor it assembles runs under a per-context lease with every handler
//! call bounded by a quarter of it, for a handler of one's own and for the built-in
//! output alike; a wrong table or a DLQ policy without a DLQ fail at connect.
//!
//! Needs `AWS_ENDPOINT_URL_DYNAMODB` and `AWS_ENDPOINT_URL_SQS`
//! (`eval "$(scripts/emulators.sh env)"`); skips without them, and fails instead under
//! `RESEQ_REQUIRE_EMULATORS=1`.

use reseq_core::{Duration, Handler, HandlerError, Release};
use reseq_settings::{Resequencer, Settings, SetupError, connect_processor};
use reseq_sqs::batch::InvalidPolicy;

struct Noop;

impl Handler for Noop {
    async fn handle(&self, _: &Release<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn emulators() -> Option<()> {
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

async fn table(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("b-{test}-{}-{nanos:x}", std::process::id());
    let client = reseq_dynamodb::load_client(&reseq_dynamodb::DynamoConfig::default()).await;
    reseq_dynamodb::create_table(&client, &name)
        .await
        .unwrap_or_else(|e| panic!("creating the table {name}: {e}"));
    name
}

#[tokio::test]
async fn a_handler_of_ones_own_always_runs_under_the_lease() {
    let Some(()) = emulators() else { return };
    let name = table("own").await;
    let resequencer = Resequencer::builder(Noop)
        .table(&name)
        .lease_duration(Duration::from_secs(20))
        .lease_owner("test-owner")
        .connect()
        .await
        .expect("connect");
    let config = resequencer.processor().engine().config();
    let lease = config.lease.as_ref().expect("a lease, always");
    assert_eq!(lease.duration, Duration::from_secs(20));
    assert_eq!(lease.owner, "test-owner");
    assert_eq!(config.stage_held_after, Some(3));
    assert_eq!(
        resequencer.processor().handler().timeout(),
        std::time::Duration::from_secs(5),
        "a quarter of the lease"
    );
    assert_eq!(resequencer.release_budget(), Duration::from_secs(15));

    // The defaults: a 60 s lease under a generated owner name.
    let resequencer = Resequencer::builder(Noop)
        .table(&name)
        .connect()
        .await
        .expect("connect");
    let lease = resequencer
        .processor()
        .engine()
        .config()
        .lease
        .clone()
        .expect("a lease");
    assert_eq!(lease.duration, Duration::from_secs(60));
    assert!(lease.owner.starts_with("reseq-"), "{}", lease.owner);
}

#[tokio::test]
async fn the_built_in_output_goes_through_the_same_builder() {
    let Some(()) = emulators() else { return };
    let name = table("output").await;
    let mut settings = Settings::default();
    settings.sqs.table = name;
    settings.sqs.lease_duration = Duration::from_secs(8);
    let (processor, _sqs) = connect_processor(&settings.ordering, &settings.extract, &settings.sqs, "o".into())
        .await
        .expect("connect");
    let lease = processor.engine().config().lease.clone().expect("a lease");
    assert_eq!((lease.owner.as_str(), lease.duration), ("o", Duration::from_secs(8)));
    assert_eq!(processor.handler().timeout(), std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn what_cannot_work_fails_at_connect_naming_it() {
    let Some(()) = emulators() else { return };
    let err = Resequencer::builder(Noop)
        .table("no-such-table-anywhere")
        .connect()
        .await
        .err()
        .expect("a missing table fails");
    assert!(matches!(err, SetupError::Table(_)), "{err}");
    assert!(err.is_configuration() && err.to_string().contains("--table"), "{err}");

    let name = table("policy").await;
    let err = Resequencer::builder(Noop)
        .table(&name)
        .invalid(InvalidPolicy::Dlq)
        .connect()
        .await
        .err()
        .expect("--invalid dlq without a DLQ fails");
    assert!(err.to_string().contains("--dlq-url"), "{err}");

    let err = Resequencer::builder(Noop)
        .table(&name)
        .lease_duration(Duration::from_millis(0))
        .connect()
        .await
        .err()
        .expect("a zero lease fails");
    assert!(err.to_string().contains("--lease-duration"), "{err}");

    let err = Resequencer::builder(Noop)
        .table(&name)
        .dlq_url("http://127.0.0.1:4566/000000000000/no-such-dlq")
        .connect()
        .await
        .err()
        .expect("a missing DLQ fails");
    assert!(matches!(err, SetupError::Dlq(_)), "{err}");
}
