//! What reseq writes into the SQS messages it sends (the `sqs:` output, the DLQ): FIFO
//! group and deduplication ids, message attributes and text within SQS's limits.
//!
//! ## FIFO ids
//!
//! A `MessageGroupId` or `MessageDeduplicationId` is 1 to 128 characters of printable
//! ASCII without space (alphanumerics and ``!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~``). A context
//! id is up to 1024 bytes of any UTF-8, so:
//! - the group of a context is the context id itself when it fits, else its **hashed
//!   form** `h-<xxh3-128 of the context id, 32 lowercase hex digits>` (34 characters);
//! - the dedup id of a position is `<context>:<seq>` when that fits, else
//!   `<hashed form>:<seq>`.
//!
//! A context id that itself looks like a hashed form (`h-` and 32 hex digits) is hashed
//! too, so no context can take another one's ids. The hashed form is stable (the same
//! context always gets the same group, so its order holds) and a consumer that needs the
//! context id reads the `contextId` attribute, which is always the id itself: a String,
//! or a Binary holding its UTF-8 when it has characters an SQS String refuses (see
//! [`sqs_allows`] and `output::context_attribute`). Only printable ASCII without space is
//! kept as it is in an id, so such a context id is always hashed here.

use std::borrow::Cow;
use std::collections::HashMap;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeNameForSends, MessageSystemAttributeValue};
use reseq_core::{AttributeValue, Attributes, TRACE_HEADER};

/// SQS allows at most this many message attributes per message.
pub const MAX_ATTRIBUTES: usize = 10;
/// SQS's message size limit: the body plus every attribute's name, type and value.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The longest FIFO group or deduplication id.
pub const MAX_FIFO_ID: usize = 128;

const HASH_PREFIX: &str = "h-";
const HASH_HEX_DIGITS: usize = 32;

/// Whether `id` can be a FIFO group or deduplication id as it is.
fn fits_fifo_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_FIFO_ID && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn looks_hashed(id: &str) -> bool {
    id.len() == HASH_PREFIX.len() + HASH_HEX_DIGITS
        && id.starts_with(HASH_PREFIX)
        && id[HASH_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The hashed form of a context id: `h-` and the 128-bit xxh3 in lowercase hex.
pub fn hashed_context(context_id: &str) -> String {
    hash_of(context_id.as_bytes())
}

fn hash_of(bytes: &[u8]) -> String {
    format!("{HASH_PREFIX}{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// The context id as a FIFO id part: itself when it fits, else its hashed form.
fn context_part(context_id: &str) -> Cow<'_, str> {
    if fits_fifo_id(context_id) && !looks_hashed(context_id) {
        Cow::Borrowed(context_id)
    } else {
        Cow::Owned(hashed_context(context_id))
    }
}

/// The `MessageGroupId` of a context (see the module documentation).
pub fn fifo_group_id(context_id: &str) -> String {
    context_part(context_id).into_owned()
}

/// The `MessageDeduplicationId` of a released position, `<context>:<seq>` (or
/// `<hashed form>:<seq>`): SQS drops a repeat of the same release within 5 minutes.
pub fn fifo_dedup_id(context_id: &str, seq: u64) -> String {
    let part = context_part(context_id);
    let plain = format!("{part}:{seq}");
    if plain.len() <= MAX_FIFO_ID {
        plain
    } else {
        format!("{}:{seq}", hashed_context(context_id))
    }
}

/// A stable FIFO id for any list of byte strings, `h-<xxh3-128 hex>`; each part is
/// length-prefixed, so different lists never share an input.
pub fn fifo_id_of(parts: &[&[u8]]) -> String {
    let mut input = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for part in parts {
        input.extend_from_slice(&(part.len() as u64).to_le_bytes());
        input.extend_from_slice(part);
    }
    hash_of(&input)
}

/// Whether SQS accepts `c` in a message body or a string attribute value: `#x9 | #xA |
/// #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF`.
pub fn sqs_allows(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `text` with every character SQS refuses replaced by U+FFFD.
pub fn sqs_text(text: &str) -> Cow<'_, str> {
    if text.chars().all(sqs_allows) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(
            text.chars()
                .map(|c| if sqs_allows(c) { c } else { '\u{FFFD}' })
                .collect(),
        )
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The attributes of a message reseq sends. SQS takes at most [`MAX_ATTRIBUTES`]: reseq's
/// own (`added`) are always set, overwriting an original of the same name; then the
/// original ones follow in name order while there is room. The originals that do not fit
/// are left out, silently (the body is unchanged, and a consumer that needs every
/// attribute reads the input message), as is an original SQS cannot carry (neither a
/// string nor a binary value).
pub fn attributes_for_sqs(
    original: &Attributes,
    added: &[(&str, AttributeValue)],
) -> HashMap<String, MessageAttributeValue> {
    let mut out = HashMap::new();
    for (name, value) in added {
        if let Some(v) = to_sqs(value) {
            out.insert((*name).to_string(), v);
        }
    }
    for (name, value) in original {
        if out.len() >= MAX_ATTRIBUTES {
            break;
        }
        if out.contains_key(name) || name == TRACE_HEADER {
            continue;
        }
        if let Some(v) = to_sqs(value) {
            out.insert(name.clone(), v);
        }
    }
    out
}

/// The message's X-Ray trace header as the system attribute SQS sends on (see
/// [`TRACE_HEADER`]), when it has one.
pub fn trace_for_sqs(
    original: &Attributes,
) -> Option<HashMap<MessageSystemAttributeNameForSends, MessageSystemAttributeValue>> {
    let trace = original.get(TRACE_HEADER)?.string.as_deref()?;
    let value = MessageSystemAttributeValue::builder()
        .data_type("String")
        .string_value(trace)
        .build()
        .ok()?;
    Some(HashMap::from([(
        MessageSystemAttributeNameForSends::AwsTraceHeader,
        value,
    )]))
}

/// The size SQS counts for a message: the body, and each attribute's name, data type and
/// value.
pub fn message_size(body: &str, attributes: &HashMap<String, MessageAttributeValue>) -> usize {
    body.len()
        + attributes
            .iter()
            .map(|(name, v)| {
                name.len()
                    + v.data_type().len()
                    + v.string_value().map_or(0, str::len)
                    + v.binary_value().map_or(0, |b| b.as_ref().len())
            })
            .sum::<usize>()
}

fn to_sqs(value: &AttributeValue) -> Option<MessageAttributeValue> {
    let mut builder = MessageAttributeValue::builder().data_type(&value.data_type);
    if let Some(s) = &value.string {
        builder = builder.string_value(s);
    } else if let Some(b) = &value.binary {
        builder = builder.binary_value(Blob::new(b.to_vec()));
    } else {
        return None;
    }
    builder.build().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_header_is_sent_as_the_system_attribute_not_a_message_attribute() {
        let mut original = Attributes::new();
        original.insert(TRACE_HEADER.into(), AttributeValue::string("Root=1-a-b"));
        original.insert("kept".into(), AttributeValue::string("v"));
        let attributes = attributes_for_sqs(&original, &[]);
        assert_eq!(attributes.keys().collect::<Vec<_>>(), vec!["kept"]);
        let system = trace_for_sqs(&original).expect("a trace header");
        assert_eq!(
            system[&MessageSystemAttributeNameForSends::AwsTraceHeader].string_value(),
            Some("Root=1-a-b")
        );
        assert!(trace_for_sqs(&Attributes::new()).is_none());
    }

    #[test]
    fn short_printable_context_ids_are_their_own_ids() {
        assert_eq!(fifo_group_id("order-1"), "order-1");
        assert_eq!(fifo_dedup_id("order-1", 7), "order-1:7");
        let punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
        assert_eq!(fifo_group_id(punctuation), punctuation);
        let longest = "x".repeat(MAX_FIFO_ID);
        assert_eq!(fifo_group_id(&longest), longest);
    }

    #[test]
    fn other_context_ids_are_hashed_stably() {
        let long = "x".repeat(MAX_FIFO_ID + 1);
        let group = fifo_group_id(&long);
        assert_eq!(group, fifo_group_id(&long));
        assert_eq!(group, hashed_context(&long));
        assert!(group.starts_with("h-") && group.len() == 34, "{group}");
        assert!(
            group[2..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(group, fifo_group_id(&"y".repeat(MAX_FIFO_ID + 1)));
        assert_eq!(fifo_dedup_id(&long, 7), format!("{group}:7"));
        for odd in ["ordre é", "a b", "tab\there", "", "line\n"] {
            let group = fifo_group_id(odd);
            assert!(group.starts_with("h-") && fits_fifo_id(&group), "{odd:?} -> {group}");
            assert_eq!(fifo_dedup_id(odd, u64::MAX), format!("{group}:{}", u64::MAX));
        }
    }

    #[test]
    fn characters_sqs_strings_refuse_are_hashed_into_valid_ids() {
        for odd in ["ctx\u{1}", "a\u{FFFE}", "\u{0}", "del\u{7f}"] {
            let group = fifo_group_id(odd);
            assert!(fits_fifo_id(&group) && group.starts_with("h-"), "{odd:?} -> {group}");
            assert!(fits_fifo_id(&fifo_dedup_id(odd, u64::MAX)));
        }
    }

    #[test]
    fn a_dedup_id_too_long_with_its_position_uses_the_hashed_form() {
        let context = "c".repeat(MAX_FIFO_ID - 2);
        assert_eq!(fifo_group_id(&context), context, "the group fits");
        assert_eq!(fifo_dedup_id(&context, 7), format!("{context}:7"));
        assert_eq!(fifo_dedup_id(&context, 70), format!("{}:70", hashed_context(&context)));
        assert!(fifo_dedup_id(&"c".repeat(1024), u64::MAX).len() <= MAX_FIFO_ID);
    }

    #[test]
    fn a_context_id_that_looks_hashed_cannot_take_another_ones_ids() {
        let long = "z".repeat(500);
        let impostor = hashed_context(&long);
        assert_ne!(fifo_group_id(&impostor), fifo_group_id(&long));
        assert_ne!(fifo_dedup_id(&impostor, 1), fifo_dedup_id(&long, 1));
        assert_eq!(
            fifo_group_id("h-123"),
            "h-123",
            "only the exact hashed shape is hashed again"
        );
    }

    #[test]
    fn ids_of_parts_are_stable_and_unambiguous() {
        let id = fifo_id_of(&[b"m1", b"late", b"ctx", b"3"]);
        assert_eq!(id, fifo_id_of(&[b"m1", b"late", b"ctx", b"3"]));
        assert!(fits_fifo_id(&id));
        assert_ne!(id, fifo_id_of(&[b"m1", b"late", b"ctx", b"4"]));
        assert_ne!(fifo_id_of(&[b"ab", b"c"]), fifo_id_of(&[b"a", b"bc"]));
    }

    #[test]
    fn text_sqs_refuses_is_replaced() {
        assert_eq!(sqs_text("plain\ttext\n"), "plain\ttext\n");
        assert!(matches!(sqs_text("ok é 🎉"), Cow::Borrowed(_)));
        assert_eq!(sqs_text("a\u{0}b\u{1b}c\u{FFFF}"), "a\u{FFFD}b\u{FFFD}c\u{FFFD}");
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aéb", 2), "a");
        assert_eq!(truncate("aéb", 3), "aé");
        assert_eq!(truncate(&"x".repeat(2000), 1024).len(), 1024);
    }

    #[test]
    fn reseq_attributes_win_and_at_most_ten_are_kept() {
        let mut original = Attributes::new();
        for i in 0..12 {
            original.insert(format!("a{i:02}"), AttributeValue::string(i.to_string()));
        }
        original.insert("sequence".into(), AttributeValue::string("999"));
        let added = [
            ("contextId", AttributeValue::string("c")),
            ("sequence", AttributeValue::number(3)),
        ];
        let out = attributes_for_sqs(&original, &added);
        assert_eq!(out.len(), MAX_ATTRIBUTES);
        assert_eq!(out["sequence"].string_value(), Some("3"));
        assert_eq!(out["sequence"].data_type(), "Number");
        assert_eq!(out["contextId"].string_value(), Some("c"));
        for i in 0..8 {
            assert!(out.contains_key(&format!("a{i:02}")), "originals in name order");
        }
        assert!(!out.contains_key("a08"));
    }

    #[test]
    fn sizes_count_body_and_attributes() {
        let mut original = Attributes::new();
        original.insert("k".into(), AttributeValue::string("vv"));
        original.insert(
            "b".into(),
            AttributeValue {
                data_type: "Binary".into(),
                string: None,
                binary: Some(bytes::Bytes::from_static(&[1, 2, 3])),
            },
        );
        let out = attributes_for_sqs(&original, &[]);
        assert_eq!(message_size("body", &out), 4 + (1 + 6 + 2) + (1 + 6 + 3));
    }
}
