//! Fuzz target `lambda_event` (docs/RELIABILITY.md, "Fuzzing"), run under plain
//! `cargo test`: the Lambda function's whole entry point, `reseq_sqs::lambda::handle` (event
//! JSON → `Event::parse` → records → `message::from_lambda` → extraction → engine →
//! partial batch response), on the memory store, with both `--invalid` policies. Inputs:
//! every seed of `fuzz/corpus/lambda_event/` as it is, mutated seeds parsed from bytes as
//! the runtime does (`serde_json` into a `Value`), and generated events whose records have
//! any fields of any JSON type. Nothing may panic (SPEC §7), and a response names only
//! records of the event, by their non-empty `messageId`.
//!
//! Cases: the figures below, or `PROPTEST_CASES` when that is more; failures are shrunk and
//! saved in `fuzz.proptest-regressions` beside this file (checked in, replayed first).

use proptest::prelude::*;
use reseq_core::fuzzing::{Mutation, corpus, mutate};
use reseq_core::testing::{RecordingDlq, RecordingHandler};
use reseq_core::{Duration, Engine, EngineConfig, Extractor, ManualClock, MemoryStore, Millis};
use reseq_sqs::batch::{InvalidPolicy, Processor};
use reseq_sqs::lambda::{Event, handle};
use serde_json::{Value, json};

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse::<u32>().ok())
        .map_or(default_cases, |c| c.max(default_cases));
    ProptestConfig {
        cases,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        (any::<usize>(), any::<usize>()).prop_map(|(at, len)| Mutation::Remove { at, len }),
        (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(from, len, at)| Mutation::Duplicate {
            from,
            len,
            at
        }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), any::<usize>()).prop_map(|(at, token)| Mutation::Token { at, token }),
    ]
}

type FuzzProcessor = Processor<MemoryStore, ManualClock, RecordingHandler, RecordingDlq>;

fn processor(invalid: InvalidPolicy, extractor: Extractor) -> FuzzProcessor {
    let config = EngineConfig {
        lease: Some(reseq_core::engine::LeaseConfig {
            owner: "fuzz".into(),
            duration: Duration::from_secs(60),
        }),
        max_staged: 4,
        ..EngineConfig::default()
    };
    let engine = Engine::new(MemoryStore::new(), ManualClock::new(Millis(1_795_400_000_000)), config);
    Processor::new(engine, extractor, RecordingHandler::new(), RecordingDlq::new(), invalid)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Runs one payload through the function with both invalid-message policies and checks
/// the response.
fn check_event(payload: &Value) {
    // The ids as the event parses (serde also reads a record given as an array,
    // positionally: `["m-1"]` is a record with messageId "m-1").
    let ids: Vec<String> = match Event::parse(payload.clone()) {
        Ok(Event::Sqs(event)) => event.records.into_iter().filter_map(|r| r.message_id).collect(),
        _ => Vec::new(),
    };
    for (invalid, extractor) in [
        (InvalidPolicy::Redrive, Extractor::default()),
        (
            InvalidPolicy::Dlq,
            Extractor {
                context_from_group_id: true,
                ..Extractor::for_json_lines("/contextId", "/sequence")
            },
        ),
    ] {
        let p = processor(invalid, extractor);
        let deadline = Millis(1_795_400_000_000).plus(Duration::from_secs(60));
        let response = block_on(handle(&p, payload.clone(), deadline));
        if let Ok(response) = response
            && let Some(failures) = response.get("batchItemFailures")
        {
            for f in failures.as_array().expect("batchItemFailures is a list") {
                let id = f["itemIdentifier"].as_str().expect("itemIdentifier is a string");
                assert!(
                    !id.is_empty(),
                    "an empty itemIdentifier fails the whole batch: {response}"
                );
                assert!(
                    ids.iter().any(|i| i == id),
                    "{id:?} is not a messageId of the event {payload}"
                );
            }
        }
    }
}

#[test]
fn lambda_event_every_seed_as_it_is() {
    for (name, bytes) in corpus("lambda_event") {
        let payload: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("seed {name}: {e}"));
        check_event(&payload);
    }
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[0-9]{0,21}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field that is usually of the right type and sometimes of any type, or absent.
fn field(usual: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Option<Value>> {
    prop::option::weighted(0.8, prop_oneof![4 => usual, 1 => any_json()])
}

fn string_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[0-9]{1,21}".prop_map(Value::from),
        "[a-z]{0,3}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

fn message_attribute() -> impl Strategy<Value = Value> {
    (
        field(prop_oneof![
            Just(json!("String")),
            Just(json!("Number")),
            Just(json!("Binary")),
            Just(json!("Number.x"))
        ]),
        field(string_value()),
        field(prop_oneof![
            Just(json!("AAEC")),
            Just(json!("not base64!")),
            Just(json!(""))
        ]),
        field(Just(json!([]))),
    )
        .prop_map(|(data_type, string, binary, list)| {
            let mut o = serde_json::Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    o.insert(k.into(), v);
                }
            };
            put("dataType", data_type);
            put("stringValue", string);
            put("binaryValue", binary);
            put("stringListValues", list);
            Value::Object(o)
        })
}

fn record() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        "m[0-3]".prop_map(Value::from),
        Just(json!("")),
        any::<String>().prop_map(Value::from)
    ];
    let body = prop_oneof![
        (prop::sample::select(vec!["a", "b", ""]), 0u64..6)
            .prop_map(|(c, s)| Value::from(json!({"contextId": c, "sequence": s}).to_string())),
        any::<String>().prop_map(Value::from),
    ];
    let system = (field("g[0-1]".prop_map(Value::from)), field(string_value())).prop_map(|(group, count)| {
        let mut o = serde_json::Map::new();
        if let Some(g) = group {
            o.insert("MessageGroupId".into(), g);
        }
        if let Some(c) = count {
            o.insert("ApproximateReceiveCount".into(), c);
        }
        Value::Object(o)
    });
    let attributes = prop::collection::btree_map(
        prop_oneof![
            Just("contextId".to_string()),
            Just("sequence".to_string()),
            Just("final".to_string()),
            "[a-z]{0,4}"
        ],
        message_attribute(),
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()));
    (
        field(id),
        field(body),
        field(system),
        field(attributes),
        field(Just(json!("aws:sqs"))),
    )
        .prop_map(|(id, body, system, attributes, source)| {
            let mut o = serde_json::Map::new();
            for (k, v) in [
                ("messageId", id),
                ("body", body),
                ("attributes", system),
                ("messageAttributes", attributes),
                ("eventSource", source),
            ] {
                if let Some(v) = v {
                    o.insert(k.into(), v);
                }
            }
            Value::Object(o)
        })
}

fn event() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::collection::vec(record(), 0..6).prop_map(|r| json!({ "Records": r })),
        1 => any_json(),
        1 => any_json().prop_map(|v| json!({ "Records": v })),
    ]
}

fn seed_bytes() -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus("lambda_event");
    let n = seeds.len();
    (0..n, prop::collection::vec(mutation(), 0..8)).prop_map(move |(i, ms)| mutate(&seeds[i].1, &ms))
}

proptest! {
    #![proptest_config(config(1_500))]

    /// Generated events: records with any fields of any type.
    #[test]
    fn lambda_event_never_panics(payload in event()) {
        check_event(&payload);
    }

    /// Mutated seeds, from bytes as the Lambda runtime receives them (it hands the
    /// function whatever `serde_json` makes of the payload; bytes that are not JSON never
    /// reach it).
    #[test]
    fn lambda_event_bytes_never_panic(bytes in seed_bytes()) {
        if let Ok(payload) = serde_json::from_slice::<Value>(&bytes) {
            check_event(&payload);
        }
    }
}
