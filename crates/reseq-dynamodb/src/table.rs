//! Making the client, creating the table, checking it: what `reseq init` and a worker's
//! start-up do.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TableDescription, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use reseq_core::StoreError;

use crate::codec::{ATT, ATT_SHARD, ATTENTION_INDEX, DUE_AT, DUE_INDEX, DUE_SHARD, PK, SK, TTL};
use crate::error::Place;
use crate::{DynamoConfig, DynamoStore};

/// How long [`create_table`] waits for a new table to become `ACTIVE`.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);
const ACTIVE_POLL: Duration = Duration::from_millis(500);

/// What [`create_table`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// The table was created (and is `ACTIVE`, TTL on).
    Created,
    /// A table of that name existed already, with reseq's layout (TTL is on now).
    AlreadyExisted,
}

/// "region R (endpoint E)", for messages. The SDK keeps the endpoint it resolved to itself,
/// so the endpoint comes from the environment variables that set it.
pub(crate) fn location(client: &Client) -> String {
    let region = client
        .config()
        .region()
        .map_or_else(|| "no region".to_string(), |r| format!("region {r}"));
    let endpoint = ["AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()));
    match endpoint {
        Some(url) => format!("{region} (endpoint {url})"),
        None => region,
    }
}

/// A DynamoDB client from the standard AWS configuration (`AWS_REGION`, `AWS_PROFILE`,
/// `AWS_ENDPOINT_URL_DYNAMODB`, …), with `config`'s retries and timeouts. Retries are
/// the SDK's *standard* mode (exponential backoff with jitter, throttling-aware): with
/// `AWS_MAX_ATTEMPTS` or `AWS_RETRY_MODE` set in the environment, those win.
pub async fn load_client(config: &DynamoConfig) -> Client {
    let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
    client_from(&sdk, config)
}

/// [`load_client`] on an SDK configuration the caller loaded once for every client.
pub fn client_from(sdk: &aws_config::SdkConfig, config: &DynamoConfig) -> Client {
    let mut builder = aws_sdk_dynamodb::config::Builder::from(sdk);
    let env_retries = ["AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"]
        .iter()
        .any(|var| std::env::var_os(var).is_some());
    if !env_retries {
        builder = builder.retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts.max(1)));
    }
    builder = builder.timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_attempt_timeout(config.attempt_timeout)
            .operation_timeout(config.operation_timeout)
            .build(),
    );
    Client::from_conf(builder.build())
}

/// Loads the standard AWS configuration ([`load_client`]) and checks, with one
/// `DescribeTable`, that `table` exists with reseq's layout: a missing table fails at once
/// with an error naming it and the command that creates it.
pub async fn connect(table: &str, config: DynamoConfig) -> Result<DynamoStore, StoreError> {
    let client = load_client(&config).await;
    connect_on(client, table, config).await
}

/// [`connect`] with a client made by [`client_from`].
pub async fn connect_on(client: Client, table: &str, config: DynamoConfig) -> Result<DynamoStore, StoreError> {
    let store = DynamoStore::new(client, table, config);
    let description = describe(store.client(), &store.place).await?;
    match description {
        Some(description) => check_layout(&store.place, &description)?,
        None => return Err(store.place.missing_table()),
    }
    Ok(store)
}

/// Creates `table` with reseq's layout (see the crate documentation), on-demand
/// (`PAY_PER_REQUEST`), waits until it is `ACTIVE`, and turns TTL on for `ttl`.
/// Idempotent: an existing table with reseq's layout is left as it is (TTL turned on if it
/// was off) and reported as [`Created::AlreadyExisted`]; one with another layout is an
/// error. Safe to call from several processes at once.
pub async fn create_table(client: &Client, table: &str) -> Result<Created, StoreError> {
    let place = Place {
        table: table.to_string(),
        location: location(client),
    };
    let key = |name: &str, key_type: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(key_type)
            .build()
            .map_err(|e| place.bug("building CreateTable", e))
    };
    let attr = |name: &str, ty: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ty)
            .build()
            .map_err(|e| place.bug("building CreateTable", e))
    };
    let index = GlobalSecondaryIndex::builder()
        .index_name(DUE_INDEX)
        .key_schema(key(DUE_SHARD, KeyType::Hash)?)
        .key_schema(key(DUE_AT, KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
        .build()
        .map_err(|e| place.bug("building CreateTable", e))?;
    let attention = attention_index(&place)?;
    let result = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(PK, ScalarAttributeType::S)?)
        .attribute_definitions(attr(SK, ScalarAttributeType::N)?)
        .attribute_definitions(attr(DUE_SHARD, ScalarAttributeType::N)?)
        .attribute_definitions(attr(DUE_AT, ScalarAttributeType::N)?)
        .attribute_definitions(attr(ATT_SHARD, ScalarAttributeType::N)?)
        .attribute_definitions(attr(ATT, ScalarAttributeType::S)?)
        .key_schema(key(PK, KeyType::Hash)?)
        .key_schema(key(SK, KeyType::Range)?)
        .global_secondary_indexes(index)
        .global_secondary_indexes(attention)
        .send()
        .await;
    let created = match result {
        Ok(_) => Created::Created,
        Err(err) if err.as_service_error().is_some_and(|e| e.is_resource_in_use_exception()) => Created::AlreadyExisted,
        Err(err) => return Err(place.error("CreateTable", "creating the table", &err)),
    };
    let mut description = wait_active(client, &place).await?;
    if lacks_only_the_attention_index(&place, &description) {
        // A table made by an earlier reseq: add the index it lacks (DynamoDB backfills it
        // from the existing state items).
        add_attention_index(client, &place).await?;
        description = wait_active(client, &place).await?;
    }
    check_layout(&place, &description)?;
    enable_ttl(client, &place).await?;
    Ok(created)
}

fn attention_index(place: &Place) -> Result<GlobalSecondaryIndex, StoreError> {
    let key = |name: &str, key_type: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(key_type)
            .build()
            .map_err(|e| place.bug("building the attention index", e))
    };
    GlobalSecondaryIndex::builder()
        .index_name(ATTENTION_INDEX)
        .key_schema(key(ATT_SHARD, KeyType::Hash)?)
        .key_schema(key(ATT, KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
        .build()
        .map_err(|e| place.bug("building the attention index", e))
}

/// `UpdateTable` creating the `attention` index on a table that has the rest of reseq's
/// layout. Another process adding it at the same time is fine.
async fn add_attention_index(client: &Client, place: &Place) -> Result<(), StoreError> {
    let attr = |name: &str, ty: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ty)
            .build()
            .map_err(|e| place.bug("building UpdateTable", e))
    };
    let index = attention_index(place)?;
    let create = CreateGlobalSecondaryIndexAction::builder()
        .index_name(ATTENTION_INDEX)
        .set_key_schema(Some(index.key_schema().to_vec()))
        .set_projection(index.projection().cloned())
        .build()
        .map_err(|e| place.bug("building UpdateTable", e))?;
    let result = client
        .update_table()
        .table_name(&place.table)
        .attribute_definitions(attr(ATT_SHARD, ScalarAttributeType::N)?)
        .attribute_definitions(attr(ATT, ScalarAttributeType::S)?)
        .global_secondary_index_updates(GlobalSecondaryIndexUpdate::builder().create(create).build())
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(err) if err.as_service_error().is_some_and(|e| e.is_resource_in_use_exception()) => Ok(()),
        Err(err) => Err(place.error("UpdateTable", "adding the attention index", &err)),
    }
}

/// A table with reseq's keys and `due` index but no `attention` index (made by an earlier
/// reseq): the one case `create_table` upgrades. Any other layout is left alone.
fn lacks_only_the_attention_index(place: &Place, description: &TableDescription) -> bool {
    !has_attention_index(description)
        && matches!(check_layout(place, description), Err(StoreError::Fatal(ref m)) if m.contains("earlier reseq"))
}

fn has_attention_index(description: &TableDescription) -> bool {
    description
        .global_secondary_indexes()
        .iter()
        .any(|i| i.index_name() == Some(ATTENTION_INDEX))
}

/// `DescribeTable`, `None` when the table does not exist.
async fn describe(client: &Client, place: &Place) -> Result<Option<TableDescription>, StoreError> {
    match client.describe_table().table_name(&place.table).send().await {
        Ok(out) => Ok(out.table),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(err) => Err(place.error("DescribeTable", "checking the table", &err)),
    }
}

/// Polls `DescribeTable` until the table and its indexes are `ACTIVE`.
async fn wait_active(client: &Client, place: &Place) -> Result<TableDescription, StoreError> {
    let start = std::time::Instant::now();
    loop {
        // Just created, a table may not be visible yet to every reader.
        if let Some(description) = describe(client, place).await? {
            let table_active = description.table_status() == Some(&TableStatus::Active);
            let indexes_active = description
                .global_secondary_indexes()
                .iter()
                .all(|i| i.index_status() == Some(&IndexStatus::Active));
            if table_active && indexes_active {
                return Ok(description);
            }
        }
        if start.elapsed() > ACTIVE_TIMEOUT {
            return Err(StoreError::Unavailable(format!(
                "DynamoDB table {} in {} is not ACTIVE after {} s: check it in the console, and run again",
                place.table,
                place.location,
                ACTIVE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(ACTIVE_POLL).await;
    }
}

/// The table has reseq's keys and `due` index (extra indexes are fine).
fn check_layout(place: &Place, description: &TableDescription) -> Result<(), StoreError> {
    let keys = |schema: &[KeySchemaElement]| -> Vec<(String, KeyType)> {
        schema
            .iter()
            .map(|k| (k.attribute_name().to_string(), k.key_type().clone()))
            .collect()
    };
    let expect = |a: &str, b: &str| vec![(a.to_string(), KeyType::Hash), (b.to_string(), KeyType::Range)];
    let types: Vec<(String, ScalarAttributeType)> = description
        .attribute_definitions()
        .iter()
        .map(|d| (d.attribute_name().to_string(), d.attribute_type().clone()))
        .collect();
    let typed = |name: &str, ty: ScalarAttributeType| types.iter().any(|(n, t)| n == name && *t == ty);
    let table_ok = keys(description.key_schema()) == expect(PK, SK)
        && typed(PK, ScalarAttributeType::S)
        && typed(SK, ScalarAttributeType::N);
    let index_ok = description.global_secondary_indexes().iter().any(|i| {
        i.index_name() == Some(DUE_INDEX)
            && keys(i.key_schema()) == expect(DUE_SHARD, DUE_AT)
            && typed(DUE_SHARD, ScalarAttributeType::N)
            && typed(DUE_AT, ScalarAttributeType::N)
    });
    let attention_ok = description.global_secondary_indexes().iter().any(|i| {
        i.index_name() == Some(ATTENTION_INDEX)
            && keys(i.key_schema()) == expect(ATT_SHARD, ATT)
            && typed(ATT_SHARD, ScalarAttributeType::N)
            && typed(ATT, ScalarAttributeType::S)
    });
    if table_ok && index_ok && !has_attention_index(description) {
        return Err(StoreError::Fatal(format!(
            "DynamoDB table {} in {} was created by an earlier reseq and lacks the global index `{ATTENTION_INDEX}` \
             (on `{ATT_SHARD}` N + `{ATT}` S) that the gauges and `reseq stuck` read: run `reseq init --table {}` \
             once to add it (or add it to your infrastructure code)",
            place.table, place.location, place.table
        )));
    }
    if table_ok && index_ok && attention_ok {
        return Ok(());
    }
    Err(StoreError::Fatal(format!(
        "DynamoDB table {} in {} exists but does not have reseq's layout (keys `{PK}` S + `{SK}` N, global index \
         `{DUE_INDEX}` on `{DUE_SHARD}` N + `{DUE_AT}` N, global index `{ATTENTION_INDEX}` on `{ATT_SHARD}` N + `{ATT}` \
         S): use another table name, and create it with `reseq init \
         --table NAME`",
        place.table, place.location
    )))
}

/// Turns TTL on for the `ttl` attribute unless it is already on (or turning on).
async fn enable_ttl(client: &Client, place: &Place) -> Result<(), StoreError> {
    let current = client
        .describe_time_to_live()
        .table_name(&place.table)
        .send()
        .await
        .map_err(|err| place.error("DescribeTimeToLive", "checking the table's TTL", &err))?;
    if let Some(ttl) = current.time_to_live_description() {
        let status = ttl.time_to_live_status();
        let on = matches!(status, Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling));
        match ttl.attribute_name() {
            Some(TTL) if on => return Ok(()),
            Some(other) if on => {
                return Err(StoreError::Fatal(format!(
                    "DynamoDB table {} in {} has TTL on attribute `{other}`, but reseq expires released messages by \
                     `{TTL}`: use another table, or switch its TTL to `{TTL}`",
                    place.table, place.location
                )));
            }
            _ => {}
        }
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL)
        .build()
        .map_err(|e| place.bug("building UpdateTimeToLive", e))?;
    match client
        .update_time_to_live()
        .table_name(&place.table)
        .time_to_live_specification(spec)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Another process turned it on in between ("TimeToLive is already enabled"), or it
        // is being switched (DynamoDB allows one change per hour).
        Err(err)
            if err
                .as_service_error()
                .and_then(aws_sdk_dynamodb::error::ProvideErrorMetadata::message)
                .is_some_and(|m| m.contains("already enabled")) =>
        {
            Ok(())
        }
        Err(err) => Err(place.error("UpdateTimeToLive", "turning TTL on", &err)),
    }
}
