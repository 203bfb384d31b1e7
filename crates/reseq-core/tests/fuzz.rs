//! Fuzz targets `extract` and `duration` (docs/RELIABILITY.md, "Fuzzing"), run under
//! plain `cargo test`: every seed of `fuzz/corpus/<target>/` as it is, then random
//! mutations of the seeds and wholly random inputs. Nothing may panic (SPEC §7: nothing a
//! user sends panics the worker), and what comes out must be well-formed.
//!
//! Cases per target: the figure below, or `PROPTEST_CASES` when that is more; a failing case is
//! shrunk and its seed written to `fuzz.proptest-regressions` beside this file, which is
//! checked in and replayed first on every run.

use bytes::Bytes;
use proptest::prelude::*;
use reseq_core::fuzzing::{Mutation, corpus, mutate};
use reseq_core::{AttributeValue, Attributes, Duration, Extractor, RawMessage, Reason};

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

pub fn mutation() -> impl Strategy<Value = Mutation> {
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

/// A seed of the target's corpus, mutated; or random bytes.
fn input(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    let n = seeds.len();
    prop_oneof![
        4 => (0..n, prop::collection::vec(mutation(), 0..8))
            .prop_map(move |(i, ms)| mutate(&seeds[i].1, &ms)),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

// ---------------------------------------------------------------------------------------
// extract

const NAMES: &[&str] = &["contextId", "sequence", "final", "orderId", "seq", ""];
const PATHS: &[&str] = &[
    "/contextId",
    "/sequence",
    "/final",
    "",
    "/",
    "/0",
    "/a/b",
    "/~1",
    "/~",
    "/contextId/0",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[0-9]{1,21}",
        "[a-z0-9 +.-]{0,6}",
        any::<String>(),
        Just("x".repeat(1025)),
        Just("é".repeat(512)),
        Just("true".into()),
    ]
}

fn attribute() -> impl Strategy<Value = AttributeValue> {
    (
        prop_oneof![
            Just("String".to_string()),
            Just("Number".to_string()),
            Just("Binary".to_string()),
            any::<String>()
        ],
        prop::option::of(text()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
    )
        .prop_map(|(data_type, string, binary)| AttributeValue {
            data_type,
            string,
            binary: binary.map(Bytes::from),
        })
}

fn attributes() -> impl Strategy<Value = Attributes> {
    prop::collection::btree_map(
        prop_oneof![4 => prop::sample::select(NAMES).prop_map(String::from), 1 => any::<String>()],
        attribute(),
        0..4,
    )
}

fn path() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        4 => prop::sample::select(PATHS).prop_map(String::from),
        1 => any::<String>()
    ])
}

fn extractor() -> impl Strategy<Value = Extractor> {
    (
        prop::sample::select(NAMES),
        prop::sample::select(NAMES),
        path(),
        path(),
        any::<bool>(),
        path(),
        prop_oneof![Just(reseq_core::extract::SQS_MAX_BODY_BYTES), 0usize..40],
    )
        .prop_map(
            |(context_attr, seq_attr, context_path, seq_path, group, final_path, max)| Extractor {
                context_attr: context_attr.into(),
                seq_attr: seq_attr.into(),
                context_path,
                seq_path,
                context_from_group_id: group,
                final_attr: "final".into(),
                final_path,
                max_body_bytes: max,
                typed: None,
            },
        )
}

const EXTRACTION_REASONS: &[Reason] = &[
    Reason::TooLarge,
    Reason::InvalidJson,
    Reason::MissingContextId,
    Reason::InvalidContextId,
    Reason::MissingSequence,
    Reason::InvalidSequence,
];

fn check_extract(ex: &Extractor, raw: RawMessage) {
    let body = raw.body.clone();
    match ex.extract(raw) {
        Ok(env) => {
            assert!(!env.context_id.is_empty() && env.context_id.len() <= 1024, "{env:?}");
            assert_eq!(env.body, body, "the body is kept byte for byte");
        }
        Err(rejection) => {
            assert!(EXTRACTION_REASONS.contains(&rejection.reason), "{rejection:?}");
            assert!(!rejection.detail.is_empty());
        }
    }
}

#[test]
fn extract_every_seed_as_it_is() {
    for (name, body) in corpus("extract") {
        for ex in [
            Extractor::for_json_lines("/contextId", "/sequence"),
            Extractor::default(),
        ] {
            let raw = RawMessage {
                message_id: name.clone(),
                body: Bytes::from(body.clone()),
                ..RawMessage::default()
            };
            check_extract(&ex, raw);
        }
    }
}

proptest! {
    #![proptest_config(config(5_000))]

    /// Any attributes, any bytes, any group id, any extractor settings.
    #[test]
    fn extract_never_panics(
        ex in extractor(),
        body in input("extract"),
        attributes in attributes(),
        group_id in prop::option::of(text()),
    ) {
        let raw = RawMessage {
            message_id: "m".into(),
            body: Bytes::from(body),
            attributes,
            group_id,
            ..RawMessage::default()
        };
        check_extract(&ex, raw);
    }
}

// ---------------------------------------------------------------------------------------
// duration

fn check_duration(s: &str) {
    if let Ok(d) = s.parse::<Duration>() {
        // What parses prints as something that parses back to the same length.
        let shown = d.to_string();
        assert_eq!(shown.parse::<Duration>(), Ok(d), "{s:?} printed as {shown:?}");
    }
}

#[test]
fn duration_every_seed_as_it_is() {
    for (_, bytes) in corpus("duration") {
        check_duration(&String::from_utf8_lossy(&bytes));
    }
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn duration_never_panics(bytes in input("duration"), s in any::<String>(), n in any::<u64>(), unit in "(ms|s|m|h|d|µs|)") {
        check_duration(&String::from_utf8_lossy(&bytes));
        check_duration(&s);
        check_duration(&format!("{n}{unit}"));
        let d = Duration(n);
        prop_assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
    }
}
