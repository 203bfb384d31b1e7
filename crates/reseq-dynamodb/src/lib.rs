//! # reseq-dynamodb
//!
//! The [`StagingStore`] of reseq on AWS: one DynamoDB table holds every context's state
//! and the messages waiting for their predecessors. Any number of workers (Lambda
//! invocations, ECS tasks) share it safely: every write is conditional.
//!
//! ```no_run
//! # async fn example() -> Result<(), reseq_core::StoreError> {
//! use reseq_dynamodb::{DynamoConfig, create_table, connect, load_client};
//! // Once (what `reseq init` does): idempotent.
//! create_table(&load_client(&DynamoConfig::default()).await, "reseq").await?;
//! // In the worker: fails at once, naming the table, if it does not exist.
//! let store = connect("reseq", DynamoConfig::default()).await?;
//! // … hand it to an `Engine`; report `store.cost()` now and then.
//! # Ok(()) }
//! ```
//!
//! It behaves like the reference [`reseq_core::MemoryStore`] (the `reseq-conformance`
//! suite checks it against DynamoDB Local), with one documented difference: staged
//! positions below the cursor are not deleted by `commit` but left to TTL (below).
//!
//! ## The table
//!
//! | attribute | type | on | what |
//! |---|---|---|---|
//! | `pk` | S | all | partition key: the context id |
//! | `sk` | N | all | sort key: `-1` for the context's **state item**, the position (`seq`) for a **staged item** (a `u64` is exact in a DynamoDB number, which holds 38 digits) |
//! | `version` | N | state | the state's version: every commit is conditional on it |
//! | `state` | S | state | the JSON of [`ContextState`] (as in the SQLite store) |
//! | `due_at` | N | state | `state.due_at` (ms), only when it is set |
//! | `due_shard` | N | state | `xxh3(context id) % 16`, only with `due_at` |
//! | `recv` | N | staged | when it was received (ms) |
//! | `hash` | N | staged | the body hash: a second copy with another hash is a conflict |
//! | `mid` | S | staged | the SQS `MessageId` |
//! | `attrs` | S | staged | the message attributes as JSON; absent when there are none |
//! | `fin` | BOOL | staged | the message closes its context |
//! | `body` | B | staged | the body, deflate-compressed when `z` is present |
//! | `z` | BOOL | staged | `true`: `body` is compressed |
//! | `ttl` | N | staged | epoch **seconds** after which DynamoDB may delete the item |
//!
//! Keys: `pk` (HASH, S), `sk` (RANGE, N). One global secondary index, **`due`**:
//! `due_shard` (HASH, N), `due_at` (RANGE, N), projection `KEYS_ONLY`. It is *sparse*:
//! only state items with a `due_at` carry both of its keys, so it holds exactly the
//! contexts a sweep must look at (a retry, a gap timeout, retention, a blocked context's
//! expiry) and nothing else; staged items never enter it. Spreading it over 16 shards keeps
//! any one index partition from becoming hot; [`StagingStore::due`] queries the 16 shards
//! (`due_at <= now`, ascending, at most `limit` each, in parallel), merges them by
//! `(due_at, context id)` and keeps the first `limit`: no scan, ever. Billing is on demand
//! (`PAY_PER_REQUEST`); TTL is on for `ttl`. [`create_table`] makes exactly this.
//!
//! Numbers in `N` attributes are written as decimal strings of the `u64` and read back
//! with `u64` parsing: anything else (a sign, a fraction, an exponent, out of range) is
//! reported as [`StoreError::Corrupt`] naming the context, never rounded.
//!
//! ## The requests
//!
//! - `load`: `GetItem` of the state item, strongly consistent.
//! - `stage`: `PutItem` conditional on `attribute_not_exists(pk)`. When the condition
//!   fails, DynamoDB returns the existing item (`ReturnValuesOnConditionCheckFailure =
//!   ALL_OLD`) and its `hash` decides between `AlreadyStaged` and `Conflict`: still one
//!   request. A body over 4 KiB is deflate-compressed when that makes it smaller; an item
//!   over DynamoDB's 400 KB limit even so is not written: `StageOutcome::TooLarge` with the
//!   room the item had for the (compressed) body.
//! - `staged(from, to, limit)`: `Query pk = :c AND sk BETWEEN :from AND :to`, strongly
//!   consistent, page after page until `limit` items or the end.
//! - `waiting(from)`: the same `Query` from `from`, projecting `recv` only (count and
//!   oldest).
//! - `commit` with a state: `PutItem` of the state item with `version = expected + 1`,
//!   conditional on `attribute_not_exists(pk)` (expected version 0) or `version =
//!   :expected`. With `remove_staged` it is one `TransactWriteItems` (the conditional put
//!   and up to 99 deletes, atomic; beyond that the rest is deleted by `BatchWriteItem`
//!   after the transaction). A failed condition is `VersionMismatch`; a transaction
//!   cancelled by a conflicting one is retried (a few times, with backoff) before it is
//!   reported as `Unavailable`. A `PutItem` that the SDK retried after it had in fact
//!   succeeded fails its own condition: the returned old item then equals what was
//!   written, and the commit is reported `Committed`, as it was.
//! - `commit` without a state (forget): `DeleteItem` of the state item on the same
//!   condition, then every staged item of the context (`Query` of the keys,
//!   `BatchWriteItem` deletes of 25, unprocessed items retried).
//! - `due`: 16 `Query` pages on the `due` index (eventually consistent, as every index
//!   read: a commit shows up in it within a second or so on AWS).
//! - `flush`: nothing. A write is durable when DynamoDB acknowledges it.
//!
//! ## Write cost, and why TTL is safe
//!
//! `commit` never deletes the staged items below the new cursor: releasing a run of k
//! staged messages costs the one conditional put of the state item, not k + 1 writes.
//! Those released items are never written again and are read only by mistake: every read
//! starts at the cursor. Their `ttl` removes them, free of write capacity.
//!
//! A staged item's `ttl` is `max(received_at, now) + staged_ttl` (default 28 days, twice
//! the default 14-day `--retention`): `now` is the store's wall clock, so a message whose
//! `received_at` comes from a test or demo clock is not expired early. A message that is
//! still *waiting* is never lost to TTL: when a context starts waiting the engine
//! commits a state whose `due_at` is at most `waiting_since + retention`, the sweep finds
//! it through the `due` index at that time, and dead-letters every message still waiting
//! (`expired`) — long before its `ttl`, as long as sweeps run (at least once in
//! `staged_ttl - retention`). Keep `staged_ttl` above the retention with room to spare.
//! The state item has no TTL: the engine forgets a context (the delete above) once its
//! retention ran out with nothing waiting.
//!
//! The store counts what it sends ([`DynamoStore::cost`]): requests by kind and the
//! capacity units DynamoDB reports (`ReturnConsumedCapacity::TOTAL` on every request).
//!
//! ## Errors and retries
//!
//! The SDK retries throttling, timeouts, 5xx and connection failures itself (standard
//! mode, exponential backoff with jitter; [`DynamoConfig::max_attempts`], timeouts from
//! [`DynamoConfig`]). What is still failing after that is
//! [`StoreError::Unavailable`]. A missing table or index, denied access, missing or
//! invalid credentials and rejected requests are [`StoreError::Fatal`], with a message
//! that names the table and what to do; an item this store cannot read is
//! [`StoreError::Corrupt`] naming the context.
//!
//! ## DynamoDB Local
//!
//! The conformance suite and the crate's tests run against DynamoDB Local 3.x
//! (`scripts/emulators.sh start`); `tests/faults.rs` plays what it cannot (a fake
//! endpoint behind the real SDK client). Where DynamoDB Local differs from DynamoDB:
//! - index reads are immediately consistent (on AWS, `due` may lag a commit briefly);
//! - concurrent transactions on one item are serialized, never cancelled with
//!   `TransactionConflict` (the retry of those is tested against the fake);
//! - expired items are not deleted by TTL (not within minutes, at least), and nothing is
//!   ever throttled; consumed capacity is reported as DynamoDB would.
//!
//! It does support `ReturnValuesOnConditionCheckFailure`, transaction cancellation
//! reasons, empty strings and binaries outside keys, and the 400 KB item limit.

#![warn(missing_docs)]

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Delete, DeleteRequest, Put, ReturnConsumedCapacity,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, WriteRequest,
};
use reseq_core::{
    Attention, AttentionList, AttentionQuery, Commit, CommitOutcome, ContextState, DueQuery, Millis, StageOutcome,
    StagedMessage, StagingStore, StoreError, StoreUsage, Waiting,
};

mod codec;
mod cost;
mod error;
mod table;

pub use codec::{
    ATT, ATT_SHARD, ATTENTION_INDEX, COMPRESS_ABOVE_BYTES, DUE_AT, DUE_INDEX, DUE_SHARD, DUE_SHARDS, ITEM_LIMIT_BYTES,
    PK, SK, STATE_SK, TTL, due_shard,
};
pub use cost::Cost;
pub use table::{Created, client_from, connect, connect_on, create_table, load_client};

use codec::{Encoded, Item};
use cost::{Counters, Request};
use error::Place;

/// Items per `TransactWriteItems` (DynamoDB's limit): the state put and 99 deletes.
const TRANSACT_MAX_ITEMS: usize = 100;
/// Requests per `BatchWriteItem` (DynamoDB's limit).
const BATCH_MAX_ITEMS: usize = 25;
/// Attempts of a transaction cancelled by a conflicting one, and of a batch's
/// unprocessed items.
const CONFLICT_ATTEMPTS: u32 = 5;
const UNPROCESSED_ATTEMPTS: u32 = 10;
/// Staged items a forget reads (and then deletes) per round.
const FORGET_ROUND: usize = 1000;

/// Settings of a [`DynamoStore`] and of the client [`load_client`] makes.
#[derive(Clone, Debug)]
pub struct DynamoConfig {
    /// How long after its arrival (or its staging, if later) a staged item may be removed
    /// by TTL: beyond the engine's retention, with a margin ([`DynamoConfig::for_retention`];
    /// [`DynamoConfig::check_retention`] refuses less).
    pub staged_ttl: Duration,
    /// Attempts per request, first included (SDK standard retry mode).
    pub max_attempts: u32,
    /// Time to open a connection.
    pub connect_timeout: Duration,
    /// Time for one attempt of a request.
    pub attempt_timeout: Duration,
    /// Time for a request, every retry included.
    pub operation_timeout: Duration,
}

/// The least a staged item's TTL must outlast the retention by: room for the sweep that
/// dead-letters a waiting message at the retention to run late.
pub const TTL_MARGIN: Duration = Duration::from_secs(24 * 3600);

impl DynamoConfig {
    /// The settings for an engine whose `--retention` is `retention`: staged items live
    /// twice the retention (at least [`TTL_MARGIN`] more), so that a waiting message is
    /// dead-lettered `expired` by the sweep long before DynamoDB's TTL could remove it.
    pub fn for_retention(retention: Duration) -> DynamoConfig {
        DynamoConfig {
            staged_ttl: retention.saturating_add(retention.max(TTL_MARGIN)),
            ..DynamoConfig::default()
        }
    }

    /// Refuses a TTL that would not outlast `retention` by [`TTL_MARGIN`]: DynamoDB could
    /// then delete a waiting message before the engine dead-letters it (SPEC §2).
    pub fn check_retention(&self, retention: Duration) -> Result<(), String> {
        if self.staged_ttl < retention.saturating_add(TTL_MARGIN) {
            return Err(format!(
                "the staged items' TTL ({} s) must outlast --retention ({} s) by at least {} s, or DynamoDB could \
                 delete a waiting message before it is dead-lettered",
                self.staged_ttl.as_secs(),
                retention.as_secs(),
                TTL_MARGIN.as_secs()
            ));
        }
        Ok(())
    }
}

impl Default for DynamoConfig {
    fn default() -> DynamoConfig {
        DynamoConfig {
            // Twice the engine's default 14-day retention (see `for_retention`).
            staged_ttl: Duration::from_secs(28 * 24 * 3600),
            max_attempts: 5,
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(60),
        }
    }
}

/// The DynamoDB [`StagingStore`]; see the crate documentation.
pub struct DynamoStore {
    client: Client,
    place: Place,
    config: DynamoConfig,
    counters: Counters,
}

/// The condition of a commit (or a forget) on the state item's version.
struct Condition {
    expression: &'static str,
    names: Vec<(&'static str, &'static str)>,
    values: Vec<(&'static str, AttributeValue)>,
}

impl Condition {
    /// The state item is at `expected` (0: it does not exist).
    fn version(expected: u64) -> Condition {
        if expected == 0 {
            Condition {
                expression: "attribute_not_exists(#pk)",
                names: vec![("#pk", PK)],
                values: vec![],
            }
        } else {
            Condition {
                expression: "#version = :expected",
                names: vec![("#version", codec::VERSION)],
                values: vec![(":expected", codec::n(expected))],
            }
        }
    }
}

/// A short, jittered, growing pause: 25 ms doubling, capped at 1 s.
fn backoff(attempt: u32) -> Duration {
    let base = 25u64 << attempt.min(6);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = xxhash_rust::xxh3::xxh3_64(&nanos.to_le_bytes()) % (base / 2 + 1);
    Duration::from_millis((base / 2 + jitter).min(1000))
}

impl DynamoStore {
    /// A store on `table` through `client`, without checking the table ([`connect`] does).
    pub fn new(client: Client, table: &str, config: DynamoConfig) -> DynamoStore {
        let place = Place {
            table: table.to_string(),
            location: table::location(&client),
        };
        DynamoStore {
            client,
            place,
            config,
            counters: Counters::default(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.place.table
    }

    /// The SDK client the store uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The settings the store was made with.
    pub fn config(&self) -> &DynamoConfig {
        &self.config
    }

    /// Requests sent and capacity consumed since the store was made or [`Self::reset_cost`].
    pub fn cost(&self) -> Cost {
        self.counters.snapshot()
    }

    /// Starts counting [`Self::cost`] from zero.
    pub fn reset_cost(&self) {
        self.counters.reset();
    }

    /// A staged item's `ttl` (epoch seconds): see the crate documentation.
    fn staged_ttl(&self, received_at: Millis) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        (received_at.0.max(now) / 1000).saturating_add(self.config.staged_ttl.as_secs())
    }

    /// The `body_hash` of a staged item, read consistently; `None` if there is none.
    async fn staged_hash(&self, context_id: &str, seq: u64) -> Result<Option<u64>, StoreError> {
        self.counters.sent(Request::GetItem);
        let out = self
            .client
            .get_item()
            .table_name(self.table())
            .set_key(Some(codec::staged_key(context_id, seq)))
            .consistent_read(true)
            .projection_expression("#hash")
            .expression_attribute_names("#hash", codec::HASH)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| {
                self.place.error(
                    "GetItem",
                    &format!("reading position {seq} of context {context_id:?}"),
                    &e,
                )
            })?;
        self.counters.consumed(Request::GetItem, out.consumed_capacity());
        out.item
            .map(|item| codec::get_u64(&item, codec::HASH))
            .transpose()
            .map_err(|e| self.place.corrupt(context_id, &format!("staged position {seq}"), e))
    }

    /// Pages of `Query` on the context's items with `sk >= from` (and `<= to`), calling
    /// `each` on every item, until `limit` items or the end.
    async fn query_context(
        &self,
        context_id: &str,
        from: u64,
        to: Option<u64>,
        projection: Option<&'static str>,
        limit: usize,
        mut each: impl FnMut(Item) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut seen = 0usize;
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(self.table())
                .consistent_read(true)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":pk", codec::s(context_id))
                .expression_attribute_values(":from", codec::n(from))
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            query = match to {
                Some(to) => query
                    .key_condition_expression("#pk = :pk AND #sk BETWEEN :from AND :to")
                    .expression_attribute_values(":to", codec::n(to)),
                None => query.key_condition_expression("#pk = :pk AND #sk >= :from"),
            };
            if let Some(attribute) = projection {
                query = query
                    .projection_expression("#p")
                    .expression_attribute_names("#p", attribute);
            }
            if limit != usize::MAX {
                query = query.limit(i32::try_from(limit - seen).unwrap_or(i32::MAX));
            }
            self.counters.sent(Request::QueryPage);
            let out = query.send().await.map_err(|e| {
                self.place.error(
                    "Query",
                    &format!("reading the staged messages of context {context_id:?}"),
                    &e,
                )
            })?;
            self.counters.consumed(Request::QueryPage, out.consumed_capacity());
            for item in out.items.unwrap_or_default() {
                if seen == limit {
                    return Ok(());
                }
                seen += 1;
                each(item)?;
            }
            match out.last_evaluated_key {
                Some(key) if seen < limit => start = Some(key),
                _ => return Ok(()),
            }
        }
    }

    /// Commits a new state: one conditional `PutItem`, or a transaction with the deletes.
    async fn write_state(
        &self,
        context_id: &str,
        commit: &Commit,
        state: &ContextState,
    ) -> Result<CommitOutcome, StoreError> {
        let expected = commit.expected_version;
        let version = expected.checked_add(1).ok_or_else(|| {
            StoreError::Fatal(format!(
                "DynamoDB table {}: context {context_id:?} ran out of versions",
                self.table()
            ))
        })?;
        let state = ContextState {
            version,
            ..state.clone()
        };
        let json = serde_json::to_string(&state).map_err(|e| {
            self.place
                .bug(&format!("encoding the state of context {context_id:?}"), e)
        })?;
        let item = codec::state_item(context_id, &state, json.clone());
        let condition = Condition::version(expected);
        // Our own earlier attempt, retried by the SDK after it had succeeded unseen?
        let ours = |old: Option<&Item>| {
            old.is_some_and(|old| {
                codec::get_u64(old, codec::VERSION) == Ok(version)
                    && matches!(old.get(codec::STATE), Some(AttributeValue::S(s)) if *s == json)
            })
        };
        let what = || format!("committing the state of context {context_id:?}");

        let removes: Vec<u64> = commit
            .remove_staged
            .iter()
            .copied()
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        if removes.is_empty() {
            let mut put = self
                .client
                .put_item()
                .table_name(self.table())
                .set_item(Some(item))
                .condition_expression(condition.expression)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            for (k, v) in condition.names {
                put = put.expression_attribute_names(k, v);
            }
            for (k, v) in condition.values {
                put = put.expression_attribute_values(k, v);
            }
            self.counters.sent(Request::PutItem);
            return match put.send().await {
                Ok(out) => {
                    self.counters.consumed(Request::PutItem, out.consumed_capacity());
                    Ok(CommitOutcome::Committed)
                }
                Err(err) => match err.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(e)) if ours(e.item()) => {
                        Ok(CommitOutcome::Committed)
                    }
                    Some(PutItemError::ConditionalCheckFailedException(_)) => Ok(CommitOutcome::VersionMismatch),
                    _ => Err(self.place.error("PutItem", &what(), &err)),
                },
            };
        }

        let (in_transaction, after) = removes.split_at(removes.len().min(TRANSACT_MAX_ITEMS - 1));
        let put = Put::builder()
            .table_name(self.table())
            .set_item(Some(item))
            .condition_expression(condition.expression)
            .set_expression_attribute_names(Some(
                condition
                    .names
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ))
            .set_expression_attribute_values(if condition.values.is_empty() {
                None
            } else {
                Some(
                    condition
                        .values
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                )
            })
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| self.place.bug("building TransactWriteItems", e))?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        for &seq in in_transaction {
            let delete = Delete::builder()
                .table_name(self.table())
                .set_key(Some(codec::staged_key(context_id, seq)))
                .build()
                .map_err(|e| self.place.bug("building TransactWriteItems", e))?;
            items.push(TransactWriteItem::builder().delete(delete).build());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.counters.sent(Request::TransactWriteItems);
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            let err = match result {
                Ok(out) => {
                    self.counters
                        .consumed(Request::TransactWriteItems, out.consumed_capacity());
                    break;
                }
                Err(err) => err,
            };
            let conflict = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
                    let reasons = e.cancellation_reasons();
                    let state_reason = reasons.first().and_then(CancellationReason::code);
                    if state_reason == Some("ConditionalCheckFailed") {
                        return Ok(if ours(reasons[0].item()) {
                            CommitOutcome::Committed
                        } else {
                            CommitOutcome::VersionMismatch
                        });
                    }
                    let codes: Vec<&str> = reasons.iter().filter_map(CancellationReason::code).collect();
                    if codes.contains(&"TransactionConflict") {
                        true
                    } else if codes.iter().any(|c| {
                        matches!(
                            *c,
                            "ThrottlingError" | "ProvisionedThroughputExceeded" | "RequestLimitExceeded"
                        )
                    }) {
                        return Err(StoreError::Unavailable(format!(
                            "DynamoDB table {}: {}: TransactWriteItems was throttled ({codes:?}); it may succeed if \
                             tried again",
                            self.table(),
                            what()
                        )));
                    } else {
                        return Err(StoreError::Fatal(format!(
                            "DynamoDB table {}: {}: TransactWriteItems was cancelled ({codes:?}): {}; check that the \
                             table was created by `reseq init`, else this is a bug in reseq-dynamodb: please report it",
                            self.table(),
                            what(),
                            aws_sdk_dynamodb::error::DisplayErrorContext(&err)
                        )));
                    }
                }
                Some(TransactWriteItemsError::TransactionInProgressException(_)) => true,
                _ => false,
            };
            if !conflict {
                return Err(self.place.error("TransactWriteItems", &what(), &err));
            }
            if attempt >= CONFLICT_ATTEMPTS {
                return Err(StoreError::Unavailable(format!(
                    "DynamoDB table {}: {}: TransactWriteItems was cancelled by conflicting writes {attempt} times: \
                     {}; it may succeed if tried again",
                    self.table(),
                    what(),
                    aws_sdk_dynamodb::error::DisplayErrorContext(&err)
                )));
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
        if !after.is_empty() {
            let keys = after.iter().map(|&seq| codec::staged_key(context_id, seq)).collect();
            self.batch_delete(context_id, keys).await.map_err(|e| {
                let detail = e.to_string();
                StoreError::Unavailable(format!(
                    "{detail} (the state of context {context_id:?} was committed; {} of the positions it removed are \
                     still staged)",
                    after.len()
                ))
            })?;
        }
        Ok(CommitOutcome::Committed)
    }

    /// Forgets a context: the conditional delete of its state item, then every staged item.
    async fn forget(&self, context_id: &str, expected: u64) -> Result<CommitOutcome, StoreError> {
        let condition = Condition::version(expected);
        let mut delete = self
            .client
            .delete_item()
            .table_name(self.table())
            .set_key(Some(codec::state_key(context_id)))
            .condition_expression(condition.expression)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        for (k, v) in condition.names {
            delete = delete.expression_attribute_names(k, v);
        }
        for (k, v) in condition.values {
            delete = delete.expression_attribute_values(k, v);
        }
        self.counters.sent(Request::DeleteItem);
        match delete.send().await {
            Ok(out) => self.counters.consumed(Request::DeleteItem, out.consumed_capacity()),
            Err(err) => {
                if let Some(DeleteItemError::ConditionalCheckFailedException(_)) = err.as_service_error() {
                    return Ok(CommitOutcome::VersionMismatch);
                }
                return Err(self
                    .place
                    .error("DeleteItem", &format!("forgetting context {context_id:?}"), &err));
            }
        }
        // Page by page: deleting what a page found does not disturb the next page.
        loop {
            let mut keys = Vec::new();
            self.query_context(context_id, 0, None, Some(SK), FORGET_ROUND, |item| {
                let seq =
                    codec::get_u64(&item, SK).map_err(|e| self.place.corrupt(context_id, "a staged item's key", e))?;
                keys.push(codec::staged_key(context_id, seq));
                Ok(())
            })
            .await?;
            if keys.is_empty() {
                return Ok(CommitOutcome::Committed);
            }
            let last_round = keys.len() < FORGET_ROUND;
            self.batch_delete(context_id, keys).await.map_err(|e| {
                StoreError::Unavailable(format!(
                    "{e} (context {context_id:?} was forgotten, but some of its staged messages are still stored: \
                     TTL removes them)"
                ))
            })?;
            if last_round {
                return Ok(CommitOutcome::Committed);
            }
        }
    }

    /// Deletes `keys` with `BatchWriteItem`, 25 at a time, retrying unprocessed items.
    async fn batch_delete(&self, context_id: &str, keys: Vec<Item>) -> Result<(), StoreError> {
        for chunk in keys.chunks(BATCH_MAX_ITEMS) {
            let mut requests = chunk
                .iter()
                .map(|key| {
                    DeleteRequest::builder()
                        .set_key(Some(key.clone()))
                        .build()
                        .map(|d| WriteRequest::builder().delete_request(d).build())
                })
                .collect::<Result<Vec<WriteRequest>, _>>()
                .map_err(|e| self.place.bug("building BatchWriteItem", e))?;
            let mut attempt = 0;
            while !requests.is_empty() {
                if attempt == UNPROCESSED_ATTEMPTS {
                    return Err(StoreError::Unavailable(format!(
                        "DynamoDB table {}: deleting staged messages of context {context_id:?}: {} deletes stayed \
                         unprocessed after {UNPROCESSED_ATTEMPTS} attempts (throttled); it may succeed if tried again",
                        self.table(),
                        requests.len()
                    )));
                }
                if attempt > 0 {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                attempt += 1;
                self.counters.sent(Request::BatchWriteItem);
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(self.table(), requests)
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .map_err(|e| {
                        self.place.error(
                            "BatchWriteItem",
                            &format!("deleting staged messages of context {context_id:?}"),
                            &e,
                        )
                    })?;
                self.counters.consumed(Request::BatchWriteItem, out.consumed_capacity());
                requests = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(self.table()))
                    .unwrap_or_default();
            }
        }
        Ok(())
    }

    /// Up to `limit` `(due_at, context id)` of one shard of the `due` index, ascending.
    async fn due_shard(&self, shard: u64, now: Millis, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            self.counters.sent(Request::QueryPage);
            let page = self
                .client
                .query()
                .table_name(self.table())
                .index_name(DUE_INDEX)
                .key_condition_expression("#shard = :shard AND #due <= :now")
                .expression_attribute_names("#shard", DUE_SHARD)
                .expression_attribute_names("#due", DUE_AT)
                .expression_attribute_values(":shard", codec::n(shard))
                .expression_attribute_values(":now", codec::n(now.0))
                .scan_index_forward(true)
                .limit(i32::try_from(limit - out.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| self.place.error("Query", "finding due contexts", &e))?;
            self.counters.consumed(Request::QueryPage, page.consumed_capacity());
            for item in page.items.unwrap_or_default() {
                let Some(AttributeValue::S(context_id)) = item.get(PK) else {
                    return Err(StoreError::Fatal(format!(
                        "DynamoDB table {}: an item of index `{DUE_INDEX}` has no string `{PK}`: the table does not \
                         have reseq's layout",
                        self.table()
                    )));
                };
                let due_at = codec::get_u64(&item, DUE_AT)
                    .map_err(|e| self.place.corrupt(context_id, "the state item's due time", e))?;
                out.push((due_at, context_id.clone()));
            }
            match page.last_evaluated_key {
                Some(key) if out.len() < limit => start = Some(key),
                _ => {
                    out.truncate(limit);
                    return Ok(out);
                }
            }
        }
    }
}

impl DynamoStore {
    /// Up to `limit` `(context id, attention)` of one shard of the `attention` index with
    /// keys in `from..=to`, ascending.
    async fn attention_shard(
        &self,
        shard: u64,
        (from, to): (String, String),
        limit: usize,
    ) -> Result<Vec<(String, Attention)>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut start: Option<Item> = None;
        loop {
            self.counters.sent(Request::QueryPage);
            let page = self
                .client
                .query()
                .table_name(self.table())
                .index_name(ATTENTION_INDEX)
                .key_condition_expression("#shard = :shard AND #att BETWEEN :from AND :to")
                .expression_attribute_names("#shard", ATT_SHARD)
                .expression_attribute_names("#att", ATT)
                .expression_attribute_values(":shard", codec::n(shard))
                .expression_attribute_values(":from", AttributeValue::S(from.clone()))
                .expression_attribute_values(":to", AttributeValue::S(to.clone()))
                .scan_index_forward(true)
                .limit(i32::try_from(limit - out.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| self.place.error("Query", "finding blocked and waiting contexts", &e))?;
            self.counters.consumed(Request::QueryPage, page.consumed_capacity());
            for item in page.items.unwrap_or_default() {
                let (Some(AttributeValue::S(context_id)), Some(AttributeValue::S(key))) = (item.get(PK), item.get(ATT))
                else {
                    return Err(StoreError::Fatal(format!(
                        "DynamoDB table {}: an item of index `{ATTENTION_INDEX}` has no string `{PK}` or `{ATT}`: the \
                         table does not have reseq's layout",
                        self.table()
                    )));
                };
                let attention = Attention::parse(key).ok_or_else(|| {
                    self.place
                        .corrupt(context_id, "the state item's attention key", key.clone())
                })?;
                out.push((context_id.clone(), attention));
            }
            match page.last_evaluated_key {
                Some(key) if out.len() < limit => start = Some(key),
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}

impl StagingStore for DynamoStore {
    /// Two queries per shard of the `attention` index (blocked, waiting), each reading only
    /// up to its limit: 32 small reads whatever the table holds.
    async fn attention(&self, query: &AttentionQuery) -> Result<AttentionList, StoreError> {
        let blocked =
            (0..DUE_SHARDS).map(|shard| self.attention_shard(shard, Attention::blocked_range(), query.blocked_limit));
        let waiting = (0..DUE_SHARDS).map(|shard| {
            self.attention_shard(
                shard,
                Attention::waiting_range(query.waiting_before),
                query.waiting_limit,
            )
        });
        let (blocked, waiting) = futures_util::future::try_join(
            futures_util::future::try_join_all(blocked),
            futures_util::future::try_join_all(waiting),
        )
        .await?;
        let part = |found: Vec<Vec<(String, Attention)>>| {
            found
                .into_iter()
                .flatten()
                .map(|(context_id, attention)| (context_id, attention.since()))
                .collect()
        };
        let parts = vec![AttentionList {
            blocked: part(blocked),
            waiting: part(waiting),
        }];
        Ok(AttentionList::merge(parts, query))
    }

    fn usage(&self) -> StoreUsage {
        let cost = self.cost();
        StoreUsage {
            read_units: cost.read_units,
            write_units: cost.write_units,
        }
    }

    async fn load(&self, context_id: &str) -> Result<Option<ContextState>, StoreError> {
        self.counters.sent(Request::GetItem);
        let out = self
            .client
            .get_item()
            .table_name(self.table())
            .set_key(Some(codec::state_key(context_id)))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| {
                self.place
                    .error("GetItem", &format!("loading context {context_id:?}"), &e)
            })?;
        self.counters.consumed(Request::GetItem, out.consumed_capacity());
        out.item
            .map(|item| codec::read_state(&item))
            .transpose()
            .map_err(|e| self.place.corrupt(context_id, "its state item", e))
    }

    async fn stage(&self, context_id: &str, msg: &StagedMessage) -> Result<StageOutcome, StoreError> {
        let attrs = if msg.attributes.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&msg.attributes).map_err(|e| {
                self.place.bug(
                    &format!("encoding the attributes of a message of context {context_id:?}"),
                    e,
                )
            })?)
        };
        let item = match codec::staged_item(context_id, msg, attrs, self.staged_ttl(msg.received_at)) {
            Encoded::Item(item) => item,
            Encoded::TooLarge { room_for_body } => {
                return Ok(StageOutcome::TooLarge {
                    limit_bytes: room_for_body,
                });
            }
        };
        let what = || format!("staging position {} of context {context_id:?}", msg.seq);
        // The existing copy can vanish between the refused put and the read of its hash
        // (the context was forgotten meanwhile): then the put is tried again.
        for _ in 0..3 {
            self.counters.sent(Request::PutItem);
            let result = self
                .client
                .put_item()
                .table_name(self.table())
                .set_item(Some(item.clone()))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            let err = match result {
                Ok(out) => {
                    self.counters.consumed(Request::PutItem, out.consumed_capacity());
                    return Ok(StageOutcome::Staged);
                }
                Err(err) => err,
            };
            let Some(PutItemError::ConditionalCheckFailedException(refused)) = err.as_service_error() else {
                let message = aws_sdk_dynamodb::error::ProvideErrorMetadata::message(&err).unwrap_or("");
                if message.contains("Item size") {
                    // Our estimate is an upper bound, so this is not expected; say so anyway.
                    return Ok(StageOutcome::TooLarge {
                        limit_bytes: ITEM_LIMIT_BYTES,
                    });
                }
                return Err(self.place.error("PutItem", &what(), &err));
            };
            let hash = match refused.item() {
                Some(old) => Some(codec::get_u64(old, codec::HASH).map_err(|e| {
                    self.place
                        .corrupt(context_id, &format!("staged position {}", msg.seq), e)
                })?),
                None => self.staged_hash(context_id, msg.seq).await?,
            };
            if let Some(hash) = hash {
                return Ok(if hash == msg.body_hash {
                    StageOutcome::AlreadyStaged
                } else {
                    StageOutcome::Conflict
                });
            }
        }
        Err(StoreError::Unavailable(format!(
            "DynamoDB table {}: {}: the position kept appearing and disappearing (another worker is forgetting the \
             context); it may succeed if tried again",
            self.table(),
            what()
        )))
    }

    async fn staged(
        &self,
        context_id: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StagedMessage>, StoreError> {
        let mut out = Vec::new();
        if from > to || limit == 0 {
            return Ok(out);
        }
        self.query_context(context_id, from, Some(to), None, limit, |item| {
            let msg = codec::read_staged(&item).map_err(|e| self.place.corrupt(context_id, "a staged message", e))?;
            out.push(msg);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    async fn waiting(&self, context_id: &str, from: u64) -> Result<Waiting, StoreError> {
        let mut waiting = Waiting::default();
        self.query_context(context_id, from, None, Some(codec::RECV), usize::MAX, |item| {
            let received = codec::get_u64(&item, codec::RECV)
                .map_err(|e| self.place.corrupt(context_id, "a staged message", e))?;
            waiting.count += 1;
            waiting.oldest_received_at = Some(
                waiting
                    .oldest_received_at
                    .map_or(Millis(received), |t| t.min(Millis(received))),
            );
            Ok(())
        })
        .await?;
        Ok(waiting)
    }

    async fn commit(&self, context_id: &str, commit: &Commit) -> Result<CommitOutcome, StoreError> {
        match &commit.state {
            Some(state) => self.write_state(context_id, commit, state).await,
            None => self.forget(context_id, commit.expected_version).await,
        }
    }

    async fn due(&self, query: &DueQuery) -> Result<Vec<String>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let shards = (0..DUE_SHARDS).map(|shard| self.due_shard(shard, query.now, query.limit));
        let mut due: Vec<(u64, String)> = futures_util::future::try_join_all(shards)
            .await?
            .into_iter()
            .flatten()
            .collect();
        due.sort_unstable();
        let mut seen = HashSet::new();
        Ok(due
            .into_iter()
            .filter_map(|(_, id)| seen.insert(id.clone()).then_some(id))
            .take(query.limit)
            .collect())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// One `UpdateItem` per item, conditional on the item existing (it may have been
    /// released and removed meanwhile): `ttl` becomes `until` plus [`TTL_MARGIN`], or
    /// stays if it is later already.
    async fn keep_staged(&self, context_id: &str, seqs: &[u64], until: Millis) -> Result<(), StoreError> {
        let ttl = (until.0 / 1000).saturating_add(TTL_MARGIN.as_secs());
        for &seq in seqs {
            self.counters.sent(Request::UpdateItem);
            let result = self
                .client
                .update_item()
                .table_name(self.table())
                .set_key(Some(codec::staged_key(context_id, seq)))
                .update_expression("SET #ttl = :ttl")
                .condition_expression("attribute_exists(#pk) AND (attribute_not_exists(#ttl) OR #ttl < :ttl)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#ttl", TTL)
                .expression_attribute_values(":ttl", codec::n(ttl))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            match result {
                Ok(out) => self.counters.consumed(Request::UpdateItem, out.consumed_capacity()),
                Err(err)
                    if matches!(
                        err.as_service_error(),
                        Some(UpdateItemError::ConditionalCheckFailedException(_))
                    ) => {}
                Err(err) => {
                    let what = format!("keeping waiting position {seq} of context {context_id:?} beyond its TTL");
                    return Err(self.place.error("UpdateItem", &what, &err));
                }
            }
        }
        Ok(())
    }
}
