//! Items ⇄ domain values: the table layout, written out by hand (see the crate
//! documentation for the attributes and why each is there).

use std::collections::HashMap;
use std::io::{Read, Write};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use reseq_core::{Attributes, ContextState, Millis, StagedMessage};

pub(crate) type Item = HashMap<String, AttributeValue>;

/// Partition key (S): the context id.
pub const PK: &str = "pk";
/// Sort key (N): [`STATE_SK`] for the state item, the position for a staged message.
pub const SK: &str = "sk";
/// The sort key of a context's state item (below every position, which are `u64`s).
pub const STATE_SK: i64 = -1;

pub(crate) const VERSION: &str = "version";
pub(crate) const STATE: &str = "state";
/// The `due` index's sort key; present only when `state.due_at` is set (sparse index).
pub const DUE_AT: &str = "due_at";
/// The `due` index's partition key: a stable hash of the context id, `0..DUE_SHARDS`.
pub const DUE_SHARD: &str = "due_shard";
/// The global secondary index over state items with a `due_at`.
pub const DUE_INDEX: &str = "due";
/// How many partitions the `due` index spreads state items over.
pub const DUE_SHARDS: u64 = 16;
/// The global secondary index over state items of contexts that are blocked or have
/// messages waiting (sparse: `att` is set only then). Keys only.
pub const ATTENTION_INDEX: &str = "attention";
/// The `attention` index's partition key: the context's `due` shard.
pub const ATT_SHARD: &str = "att_shard";
/// The `attention` index's sort key: `Attention::key` (kind, then zero-padded time).
pub const ATT: &str = "att";

pub(crate) const RECV: &str = "recv";
pub(crate) const HASH: &str = "hash";
pub(crate) const MID: &str = "mid";
pub(crate) const ATTRS: &str = "attrs";
pub(crate) const FIN: &str = "fin";
pub(crate) const BODY: &str = "body";
pub(crate) const Z: &str = "z";
/// The TTL attribute (N, epoch seconds), set on staged items only.
pub const TTL: &str = "ttl";

/// DynamoDB's maximum item size (400 KB, counted as 400 × 1024 bytes: attribute names
/// plus values).
pub const ITEM_LIMIT_BYTES: usize = 400 * 1024;
/// Bodies larger than this are deflate-compressed when that makes them smaller.
pub const COMPRESS_ABOVE_BYTES: usize = 4 * 1024;
/// What a number costs in an item at most (DynamoDB: about one byte per two significant
/// digits, plus one; 38 digits at most). A `u64` has at most 20 digits; counting 21
/// keeps the estimate an upper bound.
const NUMBER_BYTES: usize = 21;

pub(crate) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

/// The `due` shard of a context: stable across processes and versions (xxh3 is a fixed
/// function; `DefaultHasher` is not).
pub fn due_shard(context_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(context_id.as_bytes()) % DUE_SHARDS
}

pub(crate) fn key(context_id: &str, sk: AttributeValue) -> Item {
    HashMap::from([(PK.to_string(), s(context_id)), (SK.to_string(), sk)])
}

pub(crate) fn state_key(context_id: &str) -> Item {
    key(context_id, AttributeValue::N(STATE_SK.to_string()))
}

pub(crate) fn staged_key(context_id: &str, seq: u64) -> Item {
    key(context_id, n(seq))
}

/// The state item, with `state.version` already the new version.
pub(crate) fn state_item(context_id: &str, state: &ContextState, json: String) -> Item {
    let mut item = state_key(context_id);
    item.insert(VERSION.into(), n(state.version));
    item.insert(STATE.into(), AttributeValue::S(json));
    if let Some(due_at) = state.due_at {
        item.insert(DUE_AT.into(), n(due_at.0));
        item.insert(DUE_SHARD.into(), n(due_shard(context_id)));
    }
    if let Some(attention) = state.attention() {
        // The key changes only when a context starts or stops waiting or blocking, or its
        // oldest waiting message changes: most commits leave the index entry as it is, and
        // an unchanged entry costs no index write.
        item.insert(ATT.into(), AttributeValue::S(attention.key()));
        item.insert(ATT_SHARD.into(), n(due_shard(context_id)));
    }
    item
}

/// A staged item, or the room left for the (stored) body when it cannot fit an item.
pub(crate) enum Encoded {
    Item(Item),
    TooLarge { room_for_body: usize },
}

/// Builds a staged item. `ttl` is in epoch seconds.
pub(crate) fn staged_item(context_id: &str, msg: &StagedMessage, attrs: Option<String>, ttl: u64) -> Encoded {
    let (body, compressed) = stored_body(&msg.body);
    let mut item = staged_key(context_id, msg.seq);
    item.insert(RECV.into(), n(msg.received_at.0));
    item.insert(HASH.into(), n(msg.body_hash));
    item.insert(MID.into(), s(&msg.message_id));
    if let Some(attrs) = attrs {
        item.insert(ATTRS.into(), AttributeValue::S(attrs));
    }
    item.insert(FIN.into(), AttributeValue::Bool(msg.is_final));
    if compressed {
        item.insert(Z.into(), AttributeValue::Bool(true));
    }
    item.insert(TTL.into(), n(ttl));
    let body_len = body.len();
    item.insert(BODY.into(), AttributeValue::B(Blob::new(body)));
    let size = item_size(&item);
    if size > ITEM_LIMIT_BYTES {
        return Encoded::TooLarge {
            room_for_body: ITEM_LIMIT_BYTES.saturating_sub(size - body_len),
        };
    }
    Encoded::Item(item)
}

/// The body as it is stored, and whether it is compressed: deflate when the body is over
/// [`COMPRESS_ABOVE_BYTES`] and that makes it smaller.
fn stored_body(body: &Bytes) -> (Vec<u8>, bool) {
    if body.len() > COMPRESS_ABOVE_BYTES {
        let mut enc = DeflateEncoder::new(Vec::with_capacity(body.len() / 2), Compression::default());
        // Writing into a Vec cannot fail.
        if enc.write_all(body).is_ok()
            && let Ok(z) = enc.finish()
            && z.len() < body.len()
        {
            return (z, true);
        }
    }
    (body.to_vec(), false)
}

/// An upper bound of DynamoDB's size of an item: attribute names plus values (strings and
/// binaries by length, numbers at most [`NUMBER_BYTES`], booleans one byte).
pub(crate) fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(v) => v.len(),
                    AttributeValue::B(v) => v.as_ref().len(),
                    AttributeValue::N(_) => NUMBER_BYTES,
                    AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
                    // Not written by this crate; counted generously.
                    _ => 1024,
                }
        })
        .sum()
}

/// Reading attributes back; every error is a sentence saying what is wrong.
pub(crate) fn get_u64(item: &Item, name: &str) -> Result<u64, String> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse::<u64>()
            .map_err(|_| format!("attribute `{name}` is {v:?}, not an unsigned 64-bit integer")),
        Some(other) => Err(format!("attribute `{name}` is not a number: {other:?}")),
        None => Err(format!("attribute `{name}` is missing")),
    }
}

fn get_str<'a>(item: &'a Item, name: &str) -> Result<&'a str, String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        Some(_) => Err(format!("attribute `{name}` is not a string")),
        None => Err(format!("attribute `{name}` is missing")),
    }
}

fn get_bool(item: &Item, name: &str) -> Result<bool, String> {
    match item.get(name) {
        Some(AttributeValue::Bool(v)) => Ok(*v),
        Some(_) => Err(format!("attribute `{name}` is not a boolean")),
        None => Ok(false),
    }
}

/// The state of a state item, with its `version` from the `version` attribute.
pub(crate) fn read_state(item: &Item) -> Result<ContextState, String> {
    let version = get_u64(item, VERSION)?;
    let json = get_str(item, STATE)?;
    let mut state: ContextState =
        serde_json::from_str(json).map_err(|e| format!("attribute `{STATE}` is not a valid state: {e}"))?;
    state.version = version;
    Ok(state)
}

/// A staged message from its item; errors name the position when it is readable.
pub(crate) fn read_staged(item: &Item) -> Result<StagedMessage, String> {
    let seq = get_u64(item, SK)?;
    let at = |e: String| format!("position {seq}: {e}");
    let body = match item.get(BODY) {
        Some(AttributeValue::B(b)) => b.as_ref(),
        Some(_) => return Err(at(format!("attribute `{BODY}` is not binary"))),
        None => return Err(at(format!("attribute `{BODY}` is missing"))),
    };
    let body = if get_bool(item, Z).map_err(at)? {
        // Bounded: a corrupt (or hostile) item must not inflate into gigabytes. No body
        // this crate writes is larger than an SQS message.
        let limit = reseq_core::extract::SQS_MAX_BODY_BYTES;
        let mut out = Vec::with_capacity((body.len() * 4).min(limit));
        DeflateDecoder::new(body)
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| at(format!("the compressed body cannot be inflated: {e}")))?;
        if out.len() > limit {
            return Err(at(format!("the compressed body inflates to more than {limit} bytes")));
        }
        Bytes::from(out)
    } else {
        Bytes::copy_from_slice(body)
    };
    let attributes: Attributes = match item.get(ATTRS) {
        None => Attributes::new(),
        Some(AttributeValue::S(json)) => serde_json::from_str(json)
            .map_err(|e| at(format!("attribute `{ATTRS}` is not valid attributes JSON: {e}")))?,
        Some(_) => return Err(at(format!("attribute `{ATTRS}` is not a string"))),
    };
    Ok(StagedMessage {
        seq,
        message_id: get_str(item, MID).map_err(at)?.to_string(),
        body,
        attributes,
        received_at: Millis(get_u64(item, RECV).map_err(at)?),
        body_hash: get_u64(item, HASH).map_err(at)?,
        is_final: get_bool(item, FIN).map_err(at)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: Vec<u8>) -> StagedMessage {
        StagedMessage {
            seq: u64::MAX,
            message_id: "m".into(),
            body_hash: reseq_core::envelope::body_hash(&body),
            body: Bytes::from(body),
            attributes: Attributes::new(),
            received_at: Millis(u64::MAX),
            is_final: true,
        }
    }

    /// Incompressible bytes.
    fn noise(len: usize) -> Vec<u8> {
        (0..len.div_ceil(8) as u64)
            .flat_map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()).to_le_bytes())
            .take(len)
            .collect()
    }

    fn round_trip(m: &StagedMessage) -> (Item, StagedMessage) {
        let Encoded::Item(item) = staged_item("c", m, None, 1) else {
            panic!("too large")
        };
        let back = read_staged(&item).unwrap();
        (item, back)
    }

    #[test]
    fn small_bodies_are_stored_as_they_are() {
        let m = msg(vec![1; COMPRESS_ABOVE_BYTES]);
        let (item, back) = round_trip(&m);
        assert!(!item.contains_key(Z));
        assert_eq!(back, m);
    }

    #[test]
    fn large_bodies_are_compressed_when_that_helps() {
        let m = msg(vec![b'a'; COMPRESS_ABOVE_BYTES + 1]);
        let (item, back) = round_trip(&m);
        assert_eq!(item.get(Z), Some(&AttributeValue::Bool(true)));
        assert_eq!(back, m);
        let m = msg(noise(10_000));
        let (item, back) = round_trip(&m);
        assert!(!item.contains_key(Z), "incompressible: stored as is");
        assert_eq!(back, m);
    }

    #[test]
    fn an_item_over_the_limit_is_refused_with_the_room_left_for_the_body() {
        match staged_item("c", &msg(noise(ITEM_LIMIT_BYTES)), None, 1) {
            Encoded::TooLarge { room_for_body } => {
                assert!(room_for_body < ITEM_LIMIT_BYTES && room_for_body > ITEM_LIMIT_BYTES - 200)
            }
            Encoded::Item(_) => panic!("fits?"),
        }
    }

    #[test]
    fn numbers_must_be_exact_u64s() {
        for bad in ["-1", "1.5", "1e3", "18446744073709551616", ""] {
            let item = HashMap::from([("x".to_string(), AttributeValue::N(bad.into()))]);
            assert!(get_u64(&item, "x").is_err(), "{bad}");
        }
        let item = HashMap::from([("x".to_string(), n(u64::MAX))]);
        assert_eq!(get_u64(&item, "x"), Ok(u64::MAX));
    }

    #[test]
    fn the_due_shard_is_stable() {
        // Pinned: changing the function would strand state items in the wrong shard of
        // every existing table.
        let pinned: Vec<u64> = ["order-1", "order-2", "", "ünïcode"]
            .iter()
            .map(|c| due_shard(c))
            .collect();
        assert_eq!(pinned, vec![6, 12, 2, 7]);
        assert!((0..1000).all(|i| due_shard(&format!("c{i}")) < DUE_SHARDS));
    }

    /// A compressed body that inflates past the largest body ever written is refused,
    /// without inflating all of it (found reading the codec for the fuzz tests: it was
    /// unbounded, so a corrupt item could take gigabytes).
    #[test]
    fn a_compressed_body_cannot_inflate_without_bound() {
        let huge = vec![0u8; 3 * reseq_core::extract::SQS_MAX_BODY_BYTES];
        let (z, compressed) = stored_body(&Bytes::from(huge));
        assert!(compressed && z.len() < 10_000);
        let mut item = staged_key("c", 1);
        item.insert(BODY.into(), AttributeValue::B(Blob::new(z)));
        item.insert(Z.into(), AttributeValue::Bool(true));
        let err = read_staged(&item).unwrap_err();
        assert!(err.contains("inflates to more than"), "{err}");
    }
}

/// Fuzz target `dynamodb_item` (docs/RELIABILITY.md, "Fuzzing"): decoding a state item or
/// a staged item from any attribute map returns a value or an error and never panics;
/// and what this crate writes reads back the same. Cases: 2,000 per property, or
/// `PROPTEST_CASES` when that is more; failures are saved in `src/codec.proptest-regressions` (checked in).
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use reseq_core::fuzzing::{Mutation, mutate};

    fn config() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse::<u32>().ok())
            .map_or(2_000, |c| c.max(2_000));
        ProptestConfig {
            cases,
            max_shrink_iters: 2048,
            ..ProptestConfig::default()
        }
    }

    fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
        prop::collection::vec(
            prop_oneof![
                (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
                (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
                (any::<usize>(), any::<usize>()).prop_map(|(at, len)| Mutation::Remove { at, len }),
                any::<usize>().prop_map(|at| Mutation::Truncate { at }),
                (any::<usize>(), any::<usize>()).prop_map(|(at, token)| Mutation::Token { at, token }),
            ],
            0..6,
        )
    }

    /// JSON this crate writes (a state, attributes), mutated.
    fn json_text() -> impl Strategy<Value = String> {
        let mut full = ContextState::new(7);
        full.last_released = Some(6);
        full.due_at = Some(Millis(u64::MAX));
        full.final_seq = Some(9);
        let attrs: Attributes = [("contextId".to_string(), reseq_core::AttributeValue::string("a"))].into();
        let seeds = vec![
            serde_json::to_string(&ContextState::new(1)).unwrap(),
            serde_json::to_string(&full).unwrap(),
            serde_json::to_string(&attrs).unwrap(),
            "{}".to_string(),
        ];
        (prop::sample::select(seeds), mutations())
            .prop_map(|(seed, ms)| String::from_utf8_lossy(&mutate(seed.as_bytes(), &ms)).into_owned())
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            Just("-1".to_string()),
            Just(STATE_SK.to_string()),
            Just("18446744073709551616".to_string()),
            Just("1e3".to_string()),
            any::<String>(),
        ]
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            // Valid deflate streams, sometimes damaged.
            (prop::collection::vec(any::<u8>(), 0..64), 0usize..5000, mutations()).prop_map(|(b, zeros, ms)| {
                let mut body = b;
                body.resize(body.len() + zeros, 0);
                let mut enc = DeflateEncoder::new(Vec::new(), Compression::default());
                enc.write_all(&body).unwrap();
                mutate(&enc.finish().unwrap(), &ms)
            }),
        ]
    }

    fn value() -> impl Strategy<Value = AttributeValue> {
        let leaf = prop_oneof![
            3 => prop_oneof![json_text(), any::<String>()].prop_map(AttributeValue::S),
            3 => number().prop_map(AttributeValue::N),
            3 => bytes().prop_map(|b| AttributeValue::B(Blob::new(b))),
            2 => any::<bool>().prop_map(AttributeValue::Bool),
            1 => any::<bool>().prop_map(AttributeValue::Null),
            1 => prop::collection::vec(any::<String>(), 0..3).prop_map(AttributeValue::Ss),
            1 => prop::collection::vec(number(), 0..3).prop_map(AttributeValue::Ns),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(AttributeValue::L),
                prop::collection::hash_map("[a-z]{0,3}", inner, 0..3).prop_map(AttributeValue::M),
            ]
        })
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop::sample::select(vec![
                PK, SK, VERSION, STATE, DUE_AT, DUE_SHARD, RECV, HASH, MID, ATTRS, FIN, BODY, Z, TTL
            ])
            .prop_map(String::from),
            1 => any::<String>(),
        ]
    }

    /// Any attribute map, weighted towards the attributes the codec reads.
    fn item() -> impl Strategy<Value = Item> {
        prop::collection::hash_map(name(), value(), 0..12)
    }

    /// A well-formed staged item with some of its attributes replaced or removed.
    fn damaged_staged_item() -> impl Strategy<Value = Item> {
        (
            prop::collection::vec(any::<u8>(), 0..64),
            prop_oneof![Just(0usize), 4000usize..6000],
            any::<bool>(),
            prop::collection::vec((name(), prop::option::of(value())), 0..3),
        )
            .prop_map(|(mut body, zeros, fin, edits)| {
                // Over COMPRESS_ABOVE_BYTES: stored compressed.
                body.resize(body.len() + zeros, b'z');
                let mut m = msg(body);
                m.is_final = fin;
                let Encoded::Item(mut item) = staged_item("c", &m, Some("{}".into()), 1) else {
                    unreachable!("small bodies fit")
                };
                for (name, value) in edits {
                    match value {
                        Some(v) => item.insert(name, v),
                        None => item.remove(&name),
                    };
                }
                item
            })
    }

    fn msg(body: Vec<u8>) -> StagedMessage {
        StagedMessage {
            seq: 3,
            message_id: "m".into(),
            body_hash: reseq_core::envelope::body_hash(&body),
            body: Bytes::from(body),
            attributes: Attributes::new(),
            received_at: Millis(5),
            is_final: false,
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn decoding_any_item_never_panics(item in prop_oneof![item(), damaged_staged_item()]) {
            if let Ok(m) = read_staged(&item) {
                prop_assert!(m.body.len() <= reseq_core::extract::SQS_MAX_BODY_BYTES);
            }
            let _ = read_state(&item);
        }

        #[test]
        fn what_is_written_reads_back(
            seq in any::<u64>(),
            message_id in any::<String>(),
            body in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..100),
                (any::<u8>(), 4000usize..6000).prop_map(|(b, n)| vec![b; n]),
            ],
            received_at in any::<u64>(),
            is_final in any::<bool>(),
        ) {
            let m = StagedMessage {
                seq,
                message_id,
                body_hash: reseq_core::envelope::body_hash(&body),
                body: Bytes::from(body),
                attributes: Attributes::new(),
                received_at: Millis(received_at),
                is_final,
            };
            let Encoded::Item(item) = staged_item("c", &m, None, 1) else {
                panic!("fits")
            };
            prop_assert_eq!(read_staged(&item).unwrap(), m);
        }
    }
}
