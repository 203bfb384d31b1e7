//! The DynamoDB conformance cases against a LocalStack container started by
//! testcontainers: the path for machines with a Docker engine, where the host-run
//! stand-ins of scripts/emulators.sh are not wanted. Compiled with `--features
//! docker-tests` (scripts/test.sh compiles it, so it keeps compiling) and run only with
//! `RESEQ_DOCKER_TESTS=1`, because the development and CI machines have no Docker engine:
//!
//! ```sh
//! RESEQ_DOCKER_TESTS=1 cargo test -p reseq-dynamodb --features docker-tests --test docker
//! ```
#![cfg(feature = "docker-tests")]

use reseq_dynamodb::{DynamoConfig, DynamoStore, create_table, load_client};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

/// LocalStack's last 4.x tag that runs without an auth token; newer tags need one.
const LOCALSTACK_IMAGE: (&str, &str) = ("localstack/localstack", "4.4.0");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_conforms_against_a_localstack_container() {
    if std::env::var("RESEQ_DOCKER_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set RESEQ_DOCKER_TESTS=1 on a machine with a Docker engine");
        return;
    }
    let container = GenericImage::new(LOCALSTACK_IMAGE.0, LOCALSTACK_IMAGE.1)
        .with_exposed_port(4566.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready."))
        .with_env_var("SERVICES", "dynamodb")
        .start()
        .await
        .expect("start the LocalStack container (is the Docker engine running?)");
    let port = container
        .get_host_port_ipv4(4566)
        .await
        .expect("LocalStack's mapped port");
    // SAFETY of set_var: this test binary runs this one test; nothing else reads the
    // environment concurrently.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL_DYNAMODB", format!("http://127.0.0.1:{port}"));
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    }
    let config = DynamoConfig::default();
    let client = load_client(&config).await;
    create_table(&client, "reseq-docker").await.expect("create the table");
    let store = || DynamoStore::new(client.clone(), "reseq-docker", config.clone());
    reseq_conformance::stage_is_a_conditional_put(store()).await;
    reseq_conformance::staged_is_an_ascending_range_and_limited(store()).await;
    reseq_conformance::commit_is_conditional_on_the_version(store()).await;
    reseq_conformance::commit_releases_positions_below_the_cursor(store()).await;
    reseq_conformance::due_finds_contexts_whose_time_has_come(store()).await;
    reseq_conformance::racing_stagers_stage_a_position_once(store()).await;
    reseq_conformance::workers::race((0..4).map(|_| store()).collect(), 1, 3, 20, "docker").await;
}
