//! Finding a message's context id and position (SPEC §1). First match wins: message
//! attributes, then JSON body fields by JSON Pointer, then the FIFO group id.

use crate::envelope::{AttributeValue, Envelope, RawMessage};
use crate::reason::Reason;

/// The longest context id accepted, in bytes (SPEC §1).
pub const MAX_CONTEXT_ID_BYTES: usize = 1024;
/// SQS's message size limit (1 MiB since 2025): a larger body is `too-large`.
pub const SQS_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a message could not become an [`Envelope`]. It is never deleted silently.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    /// The SPEC's reason name (`missing-context-id`, `invalid-sequence`, …).
    pub reason: Reason,
    /// What exactly, in words.
    pub detail: String,
}

impl Rejection {
    /// A rejection for `reason`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// Where to look for the context id, the position and the end marker.
#[derive(Clone, Debug)]
pub struct Extractor {
    /// Message attribute holding the context id (`contextId`).
    pub context_attr: String,
    /// Message attribute holding the position (`sequence`).
    pub seq_attr: String,
    /// JSON Pointer into the body (`/orderId`), or none.
    pub context_path: Option<String>,
    /// JSON Pointer to the position in the body, or none.
    pub seq_path: Option<String>,
    /// Use the FIFO `MessageGroupId` as the context id when nothing else matched.
    pub context_from_group_id: bool,
    /// Message attribute that marks the last message of a context (`final`).
    pub final_attr: String,
    /// JSON Pointer to a boolean (or `"true"`) that marks the last message of a context.
    pub final_path: Option<String>,
    /// Larger bodies are rejected `too-large` (SQS's 1 MiB by default).
    pub max_body_bytes: usize,
    /// Typed sequences (SPEC §5): where a message's type and idempotence id come from.
    /// With it, every message is typed; without it, every message is numeric.
    pub typed: Option<TypedExtraction>,
}

/// Where a typed message's type, context and idempotence id come from (SPEC §5).
#[derive(Clone, Debug)]
pub struct TypedExtraction {
    /// The sequence file: which types exist and what each waits for.
    pub sequences: std::sync::Arc<crate::sequences::SequenceFile>,
    /// Message attribute holding the type (`--type-attr`, default `messageType`).
    pub type_attr: String,
    /// JSON Pointer to the type in the body (`--type-path`), when the attribute is absent.
    pub type_path: Option<String>,
    /// Message attribute holding the idempotence id (`--id-attr`).
    pub id_attr: Option<String>,
    /// JSON Pointer to the idempotence id in the body (`--id-path`).
    pub id_path: Option<String>,
    /// Without `id_attr`/`id_path`, the body is the id (`reseq run`: a line's content)
    /// instead of the source's message id (SQS `MessageId`).
    pub id_is_body: bool,
}

impl TypedExtraction {
    /// Typed extraction for `sequences` with the flags' defaults (type in the
    /// `messageType` attribute, the source's message id as idempotence id).
    pub fn new(sequences: std::sync::Arc<crate::sequences::SequenceFile>) -> TypedExtraction {
        TypedExtraction {
            sequences,
            type_attr: "messageType".into(),
            type_path: None,
            id_attr: None,
            id_path: None,
            id_is_body: false,
        }
    }
}

impl Default for Extractor {
    fn default() -> Self {
        Extractor {
            context_attr: "contextId".into(),
            seq_attr: "sequence".into(),
            context_path: None,
            seq_path: None,
            context_from_group_id: false,
            final_attr: "final".into(),
            final_path: None,
            max_body_bytes: SQS_MAX_BODY_BYTES,
            typed: None,
        }
    }
}

impl Extractor {
    /// `reseq run`'s defaults: everything comes from the JSON line.
    pub fn for_json_lines(context_path: &str, seq_path: &str) -> Extractor {
        Extractor {
            context_path: Some(context_path.to_string()),
            seq_path: Some(seq_path.to_string()),
            ..Extractor::default()
        }
    }

    /// The envelope of `raw` (attributes first, then JSON Pointers, then the FIFO group
    /// id), or the rejection that names what is missing or malformed.
    ///
    /// ```
    /// use reseq_core::{AttributeValue, Extractor, RawMessage, Reason};
    ///
    /// let extractor = Extractor::default(); // attributes contextId and sequence
    /// let raw = RawMessage {
    ///     body: "{}".into(),
    ///     attributes: [
    ///         ("contextId".to_string(), AttributeValue::string("order-7")),
    ///         ("sequence".to_string(), AttributeValue::number(3)),
    ///     ]
    ///     .into(),
    ///     ..RawMessage::default()
    /// };
    /// let envelope = extractor.extract(raw).unwrap();
    /// assert_eq!((envelope.context_id.as_str(), envelope.seq), ("order-7", 3));
    ///
    /// let rejection = extractor.extract(RawMessage::default()).unwrap_err();
    /// assert_eq!(rejection.reason, Reason::MissingContextId);
    /// ```
    pub fn extract(&self, raw: RawMessage) -> Result<Envelope, Rejection> {
        if raw.body.len() > self.max_body_bytes {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!("body is {} bytes; the limit is {}", raw.body.len(), self.max_body_bytes),
            ));
        }
        if let Some(typed) = &self.typed {
            let body = raw.body.clone();
            return self.extract_typed(typed, raw, &LazyJson::new(&body));
        }
        let json = LazyJson::new(&raw.body);
        let context_id = self.context_id(&raw, &json)?;
        let seq = self.seq(&raw, &json)?;
        let is_final = self.is_final(&raw, &json);
        Ok(Envelope {
            context_id,
            seq,
            message_id: raw.message_id,
            body: raw.body,
            attributes: raw.attributes,
            received_at: raw.received_at,
            is_final,
            receive_count: raw.receive_count,
            message_type: None,
        })
    }

    /// A typed message: its type key, its instance (`<sequence>/<context id>`), and its
    /// position, the hash of its idempotence id. A type in no sequence, or a message with
    /// no context id, gets an empty context: the engine hands it over at once.
    fn extract_typed(&self, typed: &TypedExtraction, raw: RawMessage, json: &LazyJson) -> Result<Envelope, Rejection> {
        let message_type = match raw.attributes.get(&typed.type_attr) {
            Some(attr) => attr_text(attr).map(str::to_string),
            None => match &typed.type_path {
                Some(path) => match json.pointer(path)? {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    _ => None,
                },
                None => None,
            },
        };
        let Some(message_type) = message_type.filter(|t| !t.is_empty()) else {
            let mut places = vec![format!("attribute {}", typed.type_attr)];
            if let Some(p) = &typed.type_path {
                places.push(format!("body field {p}"));
            }
            return Err(Rejection::new(
                Reason::MissingType,
                format!("no message type in {}", places.join(", ")),
            ));
        };
        let context_id = match typed.sequences.find(&message_type) {
            // A type in no sequence is handed over at once, under its context id if it has one.
            None => match self.context_id(&raw, json) {
                Ok(c) => c,
                Err(r) if r.reason == Reason::MissingContextId => String::new(),
                Err(r) => return Err(r),
            },
            Some((sequence, kind)) => {
                let own = match (&kind.context_attr, &kind.context_path) {
                    (Some(attr), _) if raw.attributes.contains_key(attr) => {
                        let text = raw.attributes.get(attr).and_then(attr_text).unwrap_or_default();
                        Some(checked_context_id(text.to_string(), attr)?)
                    }
                    (_, Some(path)) => match json.pointer(path)? {
                        Some(serde_json::Value::String(s)) => Some(checked_context_id(s.clone(), path)?),
                        Some(serde_json::Value::Number(n)) => Some(checked_context_id(n.to_string(), path)?),
                        _ => None,
                    },
                    _ => None,
                };
                let context = match own {
                    Some(c) => Some(c),
                    None => match self.context_id(&raw, json) {
                        Ok(c) => Some(c),
                        Err(r) if r.reason == Reason::MissingContextId => None,
                        Err(r) => return Err(r),
                    },
                };
                context.map_or_else(String::new, |c| format!("{}/{c}", sequence.name))
            }
        };
        let id: Vec<u8> = if let Some(attr) = typed.id_attr.as_ref().and_then(|a| raw.attributes.get(a)) {
            attr_text(attr).unwrap_or_default().as_bytes().to_vec()
        } else if let Some(path) = &typed.id_path {
            match json.pointer(path)? {
                Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
                Some(other) if !other.is_null() => other.to_string().into_bytes(),
                _ => {
                    return Err(Rejection::new(
                        Reason::InvalidJson,
                        format!("no idempotence id at {path}"),
                    ));
                }
            }
        } else if typed.id_is_body {
            raw.body.to_vec()
        } else {
            raw.message_id.as_bytes().to_vec()
        };
        Ok(Envelope {
            context_id,
            seq: crate::envelope::body_hash(&id),
            message_id: raw.message_id,
            body: raw.body,
            attributes: raw.attributes,
            received_at: raw.received_at,
            is_final: false,
            receive_count: raw.receive_count,
            message_type: Some(message_type),
        })
    }

    fn context_id(&self, raw: &RawMessage, json: &LazyJson) -> Result<String, Rejection> {
        if let Some(attr) = raw.attributes.get(&self.context_attr) {
            let text = attr_text(attr).ok_or_else(|| {
                Rejection::new(
                    Reason::InvalidContextId,
                    format!(
                        "attribute {} is binary; send the context id as a String",
                        self.context_attr
                    ),
                )
            })?;
            return checked_context_id(text.to_string(), &self.context_attr);
        }
        if let Some(path) = &self.context_path {
            match json.pointer(path)? {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => return checked_context_id(s.clone(), path),
                Some(serde_json::Value::Number(n)) => return checked_context_id(n.to_string(), path),
                Some(other) => {
                    return Err(Rejection::new(
                        Reason::InvalidContextId,
                        format!("{path} is {}; expected a string", json_kind(other)),
                    ));
                }
            }
        }
        if let Some(group) = raw.group_id.as_ref().filter(|_| self.context_from_group_id) {
            return checked_context_id(group.clone(), "MessageGroupId");
        }
        Err(Rejection::new(
            Reason::MissingContextId,
            self.looked_for("context id", &self.context_attr, &self.context_path),
        ))
    }

    fn seq(&self, raw: &RawMessage, json: &LazyJson) -> Result<u64, Rejection> {
        if let Some(attr) = raw.attributes.get(&self.seq_attr) {
            let text = attr_text(attr).ok_or_else(|| {
                Rejection::new(
                    Reason::InvalidSequence,
                    format!("attribute {} is binary", self.seq_attr),
                )
            })?;
            return parse_seq(text, &self.seq_attr);
        }
        if let Some(path) = &self.seq_path {
            match json.pointer(path)? {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::Number(n)) => {
                    return n.as_u64().ok_or_else(|| {
                        Rejection::new(
                            Reason::InvalidSequence,
                            format!("{path} is {n}; expected a whole number from 0 to 2^64-1"),
                        )
                    });
                }
                Some(serde_json::Value::String(s)) => return parse_seq(s, path),
                Some(other) => {
                    return Err(Rejection::new(
                        Reason::InvalidSequence,
                        format!(
                            "{path} is {}; expected a number or a string of digits",
                            json_kind(other)
                        ),
                    ));
                }
            }
        }
        Err(Rejection::new(
            Reason::MissingSequence,
            self.looked_for("sequence", &self.seq_attr, &self.seq_path),
        ))
    }

    fn is_final(&self, raw: &RawMessage, json: &LazyJson) -> bool {
        if let Some(attr) = raw.attributes.get(&self.final_attr) {
            return attr_text(attr).is_some_and(|t| t.eq_ignore_ascii_case("true"));
        }
        let Some(path) = &self.final_path else { return false };
        match json.pointer(path) {
            Ok(Some(serde_json::Value::Bool(b))) => *b,
            Ok(Some(serde_json::Value::String(s))) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }

    fn looked_for(&self, what: &str, attr: &str, path: &Option<String>) -> String {
        let mut places = vec![format!("attribute {attr}")];
        if let Some(p) = path {
            places.push(format!("body field {p}"));
        }
        if what == "context id" && self.context_from_group_id {
            places.push("MessageGroupId".into());
        }
        format!("no {what} in {}", places.join(", "))
    }
}

fn attr_text(attr: &AttributeValue) -> Option<&str> {
    attr.string.as_deref()
}

fn checked_context_id(id: String, source: &str) -> Result<String, Rejection> {
    if id.is_empty() {
        return Err(Rejection::new(Reason::MissingContextId, format!("{source} is empty")));
    }
    if id.len() > MAX_CONTEXT_ID_BYTES {
        return Err(Rejection::new(
            Reason::InvalidContextId,
            format!("{source} is {} bytes; the limit is {MAX_CONTEXT_ID_BYTES}", id.len()),
        ));
    }
    Ok(id)
}

fn parse_seq(text: &str, source: &str) -> Result<u64, Rejection> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let parsed = if digits_only { text.parse::<u64>().ok() } else { None };
    parsed.ok_or_else(|| {
        let shown: String = text.chars().take(40).collect();
        Rejection::new(
            Reason::InvalidSequence,
            format!("{source} is {shown:?}; expected a whole number from 0 to 2^64-1"),
        )
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The body parsed as JSON at most once, and only if a path asks for it.
struct LazyJson<'a> {
    body: &'a [u8],
    parsed: std::cell::OnceCell<Result<serde_json::Value, String>>,
}

impl<'a> LazyJson<'a> {
    fn new(body: &'a [u8]) -> Self {
        LazyJson {
            body,
            parsed: std::cell::OnceCell::new(),
        }
    }

    fn pointer(&self, path: &str) -> Result<Option<&serde_json::Value>, Rejection> {
        let parsed = self
            .parsed
            .get_or_init(|| serde_json::from_slice(self.body).map_err(|e| e.to_string()));
        match parsed {
            Ok(value) => Ok(value.pointer(path)),
            Err(e) => Err(Rejection::new(Reason::InvalidJson, format!("body is not JSON: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn line(body: &str) -> RawMessage {
        RawMessage {
            body: Bytes::copy_from_slice(body.as_bytes()),
            ..RawMessage::default()
        }
    }

    fn json_lines() -> Extractor {
        Extractor::for_json_lines("/contextId", "/sequence")
    }

    fn reason(ex: &Extractor, raw: RawMessage) -> Reason {
        ex.extract(raw).unwrap_err().reason
    }

    #[test]
    fn reads_context_and_sequence_from_json() {
        let env = json_lines().extract(line(r#"{"contextId":"a","sequence":7}"#)).unwrap();
        assert_eq!((env.context_id.as_str(), env.seq), ("a", 7));
        let env = json_lines()
            .extract(line(r#"{"contextId":42,"sequence":"8"}"#))
            .unwrap();
        assert_eq!((env.context_id.as_str(), env.seq), ("42", 8));
    }

    #[test]
    fn names_each_kind_of_bad_line() {
        let ex = json_lines();
        assert_eq!(reason(&ex, line("not json")), Reason::InvalidJson);
        assert_eq!(reason(&ex, line(r#"{"sequence":1}"#)), Reason::MissingContextId);
        assert_eq!(
            reason(&ex, line(r#"{"contextId":"","sequence":1}"#)),
            Reason::MissingContextId
        );
        assert_eq!(
            reason(&ex, line(r#"{"contextId":{},"sequence":1}"#)),
            Reason::InvalidContextId
        );
        assert_eq!(reason(&ex, line(r#"{"contextId":"a"}"#)), Reason::MissingSequence);
        for bad in [
            r#""abc""#,
            "-1",
            "1.5",
            r#""""#,
            r#"" 1""#,
            r#""+1""#,
            "18446744073709551616",
            "true",
        ] {
            let body = format!(r#"{{"contextId":"a","sequence":{bad}}}"#);
            assert_eq!(reason(&ex, line(&body)), Reason::InvalidSequence, "{bad}");
        }
        let long = format!(r#"{{"contextId":"{}","sequence":1}}"#, "x".repeat(1025));
        assert_eq!(reason(&ex, line(&long)), Reason::InvalidContextId);
    }

    #[test]
    fn attributes_win_over_the_body_and_group_id_comes_last() {
        let ex = Extractor {
            context_from_group_id: true,
            ..json_lines()
        };
        let mut raw = line(r#"{"contextId":"body","sequence":1}"#);
        raw.attributes
            .insert("contextId".into(), AttributeValue::string("attr"));
        raw.attributes.insert("sequence".into(), AttributeValue::number(9));
        raw.group_id = Some("group".into());
        let env = ex.extract(raw).unwrap();
        assert_eq!((env.context_id.as_str(), env.seq), ("attr", 9));

        let mut raw = line(r#"{"sequence":3}"#);
        raw.group_id = Some("group".into());
        assert_eq!(ex.extract(raw).unwrap().context_id, "group");
    }

    #[test]
    fn attributes_alone_need_no_json_body() {
        let mut raw = line("\u{0}binary, not json");
        raw.attributes.insert("contextId".into(), AttributeValue::string("a"));
        raw.attributes.insert("sequence".into(), AttributeValue::string("12"));
        raw.attributes.insert("final".into(), AttributeValue::string("true"));
        let env = Extractor::default().extract(raw).unwrap();
        assert_eq!((env.seq, env.is_final), (12, true));
    }

    #[test]
    fn too_large_bodies_are_rejected_before_parsing() {
        let ex = Extractor {
            max_body_bytes: 10,
            ..json_lines()
        };
        assert_eq!(reason(&ex, line(r#"{"contextId":"a","sequence":1}"#)), Reason::TooLarge);
    }

    #[test]
    fn final_path_marks_the_end() {
        let ex = Extractor {
            final_path: Some("/final".into()),
            ..json_lines()
        };
        assert!(
            ex.extract(line(r#"{"contextId":"a","sequence":1,"final":true}"#))
                .unwrap()
                .is_final
        );
        assert!(
            !ex.extract(line(r#"{"contextId":"a","sequence":1,"final":"no"}"#))
                .unwrap()
                .is_final
        );
    }
}
