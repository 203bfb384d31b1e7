//! `reseq_core::Extractor::extract` on any bytes as the body, under several extractor
//! settings, and on the same bytes as message attributes (the text before the first
//! newline as `contextId`, the rest as `sequence`): never panics, an envelope has a
//! usable context id and the body byte for byte, a rejection an extraction reason.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use reseq_core::{AttributeValue, Extractor, RawMessage, Reason};

fn check(ex: &Extractor, raw: RawMessage) {
    let body = raw.body.clone();
    match ex.extract(raw) {
        Ok(env) => {
            assert!(!env.context_id.is_empty() && env.context_id.len() <= 1024);
            assert_eq!(env.body, body);
        }
        Err(r) => assert!(matches!(
            r.reason,
            Reason::TooLarge
                | Reason::InvalidJson
                | Reason::MissingContextId
                | Reason::InvalidContextId
                | Reason::MissingSequence
                | Reason::InvalidSequence
        )),
    }
}

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let json = Extractor::for_json_lines("/contextId", "/sequence");
    let nested = Extractor {
        final_path: Some("/final".into()),
        context_from_group_id: true,
        max_body_bytes: 64,
        ..Extractor::for_json_lines("/a/0", "/a/1")
    };
    for ex in [&json, &nested, &Extractor::default()] {
        let raw = RawMessage {
            body: body.clone(),
            group_id: Some("g".into()),
            ..RawMessage::default()
        };
        check(ex, raw);
    }
    let text = String::from_utf8_lossy(data);
    let (context, seq) = text.split_once('\n').unwrap_or((&text, ""));
    let mut raw = RawMessage {
        body,
        ..RawMessage::default()
    };
    raw.attributes
        .insert("contextId".into(), AttributeValue::string(context));
    raw.attributes.insert("sequence".into(), AttributeValue::number(seq));
    raw.attributes.insert("final".into(), AttributeValue::string(seq));
    check(&json, raw);
});
