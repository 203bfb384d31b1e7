//! The sequence file (SPEC §5): named sequences of message *types*, the Sequential Inbox
//! model, parsed and validated. Pure: the caller reads the file and hands [`load`] its
//! text and a label (the path) to name in errors.
//!
//! ```yaml
//! sequences:
//!   - name: order-lifecycle
//!     retention: 14d                        # optional: how long an instance is kept
//!     recordingUntil: 2026-12-01T00:00:00Z  # optional, RFC 3339: handle at once and record until then
//!     messages:
//!       - type: OrderCreated                # no releaseCondition: released at once
//!       - type: OrderShipped
//!         subType: express                  # optional
//!         contextPath: /order/id            # optional JSON Pointer into the body, or
//!         contextAttr: orderId              # optional message attribute holding the context id
//!         releaseCondition:                 # predecessor / and / or, nestable
//!           and: [ { predecessor: OrderCreated }, { or: [ ... ] } ]
//! ```
//!
//! `docs/sequences.example.yaml` is a complete example. A type entry is named by its
//! *key*: its `type`, or `type/subType` when it has a sub-type ([`MessageType::key`]);
//! `predecessor` names a key of the same sequence, and [`SequenceFile::find`] looks one up.
//!
//! # Rules, checked by [`load`]
//!
//! Unknown fields are refused (with the closest known one suggested), and so are a YAML
//! syntax error, a duplicate key, a missing or empty `name`, a name used by two sequences,
//! a sequence without messages, a type listed twice in a sequence or in two sequences, a
//! predecessor that is not a type of its sequence, a cycle through predecessors (`and` and
//! `or` included: a cycle through an `or` could still resolve, but it is a mistake far more
//! often than a design), a `contextPath` that is not a JSON Pointer from the root (`/…`),
//! an empty `contextAttr`, a bad or zero `retention`, a `recordingUntil` that is not an
//! RFC 3339 date-time, an empty `and`/`or`, and a condition that is not exactly one of
//! `predecessor`, `and`, `or`. Each failure is one [`SequenceFileError`] whose `Display` is
//! one line: `file:line: what is wrong; how to fix it`, the line (1-based) being that of
//! the offending entry (the `type:`, the `predecessor:`, the unknown key…).
//!
//! # The parser
//!
//! Line numbers need a YAML parser that reports positions. `saphyr-parser` (the event
//! parser under `saphyr`, the maintained successor of `yaml-rust`) gives every event a
//! span and adds a single crate to the build, `arraydeque` (it shares `thiserror`): about
//! 2 s of compile time on this machine, no `unsafe` C port, no `serde` glue. The serde
//! route (`serde_yaml`, deprecated, or its forks) would add `unsafe-libyaml`, `indexmap`
//! and a second parse to find positions. The events are folded into a small tree that
//! keeps each node's line, and the typed model is read from that tree by hand,
//! which is also what lets every error name its line and fix.
//!
//! # Where the engine uses it
//!
//! The engine's typed kind (issue 11, next step) keeps per (sequence, context) the set of
//! processed keys: a message of a type in the file is released when
//! [`MessageType::ready`] holds over that set, waits otherwise ([`Condition::waiting_for`]
//! is what `reseq inspect` shows), and the instance closes when
//! [`Sequence::is_complete`]. Types in no sequence are handled at once.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};

use crate::time::{Duration, Millis};

/// A parsed and validated sequence file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceFile {
    /// Its sequences, in file order.
    pub sequences: Vec<Sequence>,
}

/// One named sequence of message types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// Its name (`name:`), unique in the file.
    pub name: String,
    /// How long an instance's records are kept (`retention: 14d`); none: the worker's
    /// `--retention`.
    pub retention: Option<Duration>,
    /// `recordingUntil` (RFC 3339): until then every message is handled at once and
    /// recorded as processed.
    pub recording_until: Option<Millis>,
    /// Never empty.
    pub messages: Vec<MessageType>,
}

/// One message type of a sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageType {
    /// YAML `type`.
    pub type_name: String,
    /// YAML `subType`.
    pub sub_type: Option<String>,
    /// YAML `contextPath`: a JSON Pointer into the body where this type keeps its context id.
    pub context_path: Option<String>,
    /// YAML `contextAttr`: the message attribute holding this type's context id.
    pub context_attr: Option<String>,
    /// YAML `releaseCondition`; none: released at once.
    pub release_condition: Option<Condition>,
}

/// When a message type may be released, over the keys already processed in its context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// `{ predecessor: OrderCreated }`: that type was processed.
    Predecessor(String),
    /// `{ and: [ … ] }`: every one holds (never empty).
    And(Vec<Condition>),
    /// `{ or: [ … ] }`: at least one holds (never empty).
    Or(Vec<Condition>),
}

impl Condition {
    /// Whether the condition holds when `processed(key)` tells which types were processed.
    pub fn holds(&self, processed: &impl Fn(&str) -> bool) -> bool {
        match self {
            Condition::Predecessor(key) => processed(key),
            Condition::And(all) => all.iter().all(|c| c.holds(processed)),
            Condition::Or(any) => any.iter().any(|c| c.holds(processed)),
        }
    }

    /// What the condition still waits for: the part of it that does not hold yet
    /// (processed predecessors left out), or `None` when it holds. Its `Display` reads
    /// `OrderPaid and (StockReserved or StockSkipped)`.
    pub fn waiting_for(&self, processed: &impl Fn(&str) -> bool) -> Option<Condition> {
        match self {
            Condition::Predecessor(key) => (!processed(key)).then(|| self.clone()),
            Condition::And(all) => {
                let mut rest: Vec<Condition> = all.iter().filter_map(|c| c.waiting_for(processed)).collect();
                match rest.len() {
                    0 => None,
                    1 => rest.pop(),
                    _ => Some(Condition::And(rest)),
                }
            }
            Condition::Or(any) => {
                let mut rest = Vec::with_capacity(any.len());
                for c in any {
                    rest.push(c.waiting_for(processed)?);
                }
                if rest.len() == 1 {
                    rest.pop()
                } else {
                    Some(Condition::Or(rest))
                }
            }
        }
    }

    /// Every predecessor the condition names, in order of appearance (repeats included).
    pub fn predecessors(&self) -> Vec<&str> {
        fn walk<'c>(c: &'c Condition, out: &mut Vec<&'c str>) {
            match c {
                Condition::Predecessor(key) => out.push(key),
                Condition::And(cs) | Condition::Or(cs) => cs.iter().for_each(|c| walk(c, out)),
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (list, word) = match self {
            Condition::Predecessor(key) => return f.write_str(key),
            Condition::And(list) => (list, " and "),
            Condition::Or(list) => (list, " or "),
        };
        for (i, c) in list.iter().enumerate() {
            if i > 0 {
                f.write_str(word)?;
            }
            match c {
                Condition::Predecessor(_) => write!(f, "{c}")?,
                _ => write!(f, "({c})")?,
            }
        }
        Ok(())
    }
}

impl MessageType {
    /// The name a `predecessor` and [`SequenceFile::find`] use: `type`, or `type/subType`.
    pub fn key(&self) -> Cow<'_, str> {
        match &self.sub_type {
            None => Cow::Borrowed(&self.type_name),
            Some(sub) => Cow::Owned(format!("{}/{sub}", self.type_name)),
        }
    }

    /// Whether `key` is this type's [`key`](MessageType::key) (without building it).
    pub fn has_key(&self, key: &str) -> bool {
        match &self.sub_type {
            None => key == self.type_name,
            Some(sub) => key
                .strip_prefix(self.type_name.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|rest| rest == sub),
        }
    }

    /// Whether a message of this type may be released, given the processed keys.
    pub fn ready(&self, processed: &impl Fn(&str) -> bool) -> bool {
        self.release_condition.as_ref().is_none_or(|c| c.holds(processed))
    }

    /// What a waiting message of this type still waits for; `None` when it is ready.
    pub fn waiting_for(&self, processed: &impl Fn(&str) -> bool) -> Option<Condition> {
        self.release_condition.as_ref()?.waiting_for(processed)
    }
}

impl Sequence {
    /// The message type of this sequence with that key.
    pub fn message(&self, key: &str) -> Option<&MessageType> {
        self.messages.iter().find(|m| m.has_key(key))
    }

    /// Whether every type of the sequence was processed: its instance closes.
    pub fn is_complete(&self, processed: &impl Fn(&str) -> bool) -> bool {
        self.messages.iter().all(|m| processed(&m.key()))
    }
}

impl SequenceFile {
    /// The sequence holding the type with that key (see [`MessageType::key`]), and the type.
    pub fn find(&self, key: &str) -> Option<(&Sequence, &MessageType)> {
        self.sequences.iter().find_map(|s| s.message(key).map(|m| (s, m)))
    }
}

macro_rules! sequence_file_errors {
    ($( $(#[$doc:meta])* $variant:ident, )*) => {
        /// Why a sequence file was refused: one per rule, each with the file's label, the
        /// line (1-based) of the offending entry, and a message that says how to fix it.
        /// `Display` is the one line `file:line: message`.
        #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
        pub enum SequenceFileError {
            $(
                $(#[$doc])*
                #[error("{file}:{line}: {message}")]
                $variant {
                    /// The file's label (its path, or `RESEQ_SEQUENCES`).
                    file: String,
                    /// The line (1-based) of the offending entry.
                    line: usize,
                    /// What is wrong and how to fix it.
                    message: String,
                },
            )*
        }

        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Rule {
            $( $variant, )*
        }

        impl SequenceFileError {
            fn new(rule: Rule, file: &str, line: usize, message: String) -> SequenceFileError {
                let file = file.to_string();
                match rule {
                    $( Rule::$variant => SequenceFileError::$variant { file, line, message }, )*
                }
            }

            fn parts(&self) -> (&str, usize, &str) {
                match self {
                    $( SequenceFileError::$variant { file, line, message } => (file, *line, message), )*
                }
            }
        }
    };
}

sequence_file_errors! {
    /// Not YAML, or YAML this file does not use (aliases, several documents, complex keys).
    Syntax,
    /// A field the format does not have (a typo, most often).
    UnknownField,
    /// The same key twice in one mapping.
    DuplicateField,
    /// A required field (`sequences`, `type`) is missing or has no value.
    MissingField,
    /// A value of the wrong kind: a text where a list belongs, and so on.
    WrongShape,
    /// A sequence without a name, or with an empty one.
    EmptyName,
    /// Two sequences with one name.
    DuplicateName,
    /// A sequence with no message types.
    EmptySequence,
    /// A type listed twice in one sequence.
    DuplicateType,
    /// A type listed in two sequences.
    TypeInTwoSequences,
    /// A predecessor that is not a type of its sequence.
    UnknownPredecessor,
    /// Types that wait for each other through their predecessors.
    Cycle,
    /// A `contextPath` that is not a JSON Pointer, or an empty `contextAttr`.
    BadContextExtractor,
    /// A `retention` that is not a duration, or is zero.
    BadDuration,
    /// A `recordingUntil` that is not an RFC 3339 date-time.
    BadDate,
    /// An `and` or `or` with no conditions.
    EmptyCondition,
    /// A condition that is not exactly one of `predecessor`, `and`, `or`.
    BadCondition,
}

impl SequenceFileError {
    /// The label of the file, as given to [`load`].
    pub fn file(&self) -> &str {
        self.parts().0
    }
    /// The line (1-based) of the offending entry.
    pub fn line(&self) -> usize {
        self.parts().1
    }
    /// What is wrong and how to fix it, without the `file:line: ` prefix.
    pub fn message(&self) -> &str {
        self.parts().2
    }
}

/// Parses and validates a sequence file. `label` names the file in errors (its path).
pub fn load(label: &str, text: &str) -> Result<SequenceFile, SequenceFileError> {
    let parse = || -> Result<SequenceFile, Problem> {
        let root = read_tree(text)?;
        let file = read_file(root.as_ref())?;
        validate(&file)?;
        Ok(SequenceFile {
            sequences: file.sequences.into_iter().map(|s| s.sequence).collect(),
        })
    };
    parse().map_err(|p| SequenceFileError::new(p.rule, label, p.line, p.message))
}

/// One failed rule, before the file's label is known.
#[derive(Debug)]
struct Problem {
    rule: Rule,
    line: usize,
    message: String,
}

fn problem<T>(rule: Rule, line: usize, message: impl Into<String>) -> Result<T, Problem> {
    Err(Problem {
        rule,
        line,
        message: message.into(),
    })
}

// ---------------------------------------------------------------------------------------
// The YAML tree: events folded into nodes that remember their line.

/// A YAML node and the line it starts on.
#[derive(Debug)]
struct Node {
    line: usize,
    value: Value,
}

#[derive(Debug)]
enum Value {
    /// `~`, `null`, or nothing at all.
    Null,
    Scalar(String),
    List(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug)]
struct Entry {
    key: String,
    line: usize,
    value: Node,
}

/// Deeper than this is not a sequence file (and would only risk the stack).
const MAX_DEPTH: usize = 64;

fn read_tree(text: &str) -> Result<Option<Node>, Problem> {
    let mut events = Events {
        parser: Parser::new_from_str(text),
    };
    let (event, _) = events.next()?;
    debug_assert!(
        matches!(event, Event::StreamStart),
        "a YAML stream starts with StreamStart"
    );
    let root = match events.next()? {
        (Event::StreamEnd, _) => return Ok(None),
        (Event::DocumentStart(_), _) => {
            let first = events.next()?;
            events.node(first, 0)?
        }
        (other, span) => return problem(Rule::Syntax, span.start.line(), format!("unexpected YAML {other:?}")),
    };
    match events.next()? {
        (Event::DocumentEnd, _) => {}
        (other, span) => return problem(Rule::Syntax, span.start.line(), format!("unexpected YAML {other:?}")),
    }
    match events.next()? {
        (Event::StreamEnd, _) => Ok(Some(root)),
        (_, span) => problem(
            Rule::Syntax,
            span.start.line(),
            "a second YAML document starts here: a sequence file is one document; \
             list every sequence under the one `sequences:` and remove this `---`",
        ),
    }
}

struct Events<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
}

impl<'a> Events<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), Problem> {
        match self.parser.next() {
            Some(Ok(event)) => Ok(event),
            Some(Err(e)) => Err(syntax(&e)),
            None => problem(Rule::Syntax, 1, "the YAML ended early: check the file is complete"),
        }
    }

    fn node(&mut self, (event, span): (Event<'a>, Span), depth: usize) -> Result<Node, Problem> {
        let line = span.start.line();
        if depth > MAX_DEPTH {
            return problem(
                Rule::Syntax,
                line,
                format!(
                    "nested deeper than {MAX_DEPTH} levels: a sequence file needs far fewer; flatten this condition"
                ),
            );
        }
        let value = match event {
            Event::Scalar(text, style, _, _) => {
                if style == ScalarStyle::Plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar(text.into_owned())
                }
            }
            Event::SequenceStart(_, _) => {
                let mut items = Vec::new();
                loop {
                    let next = self.next()?;
                    if matches!(next.0, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(next, depth + 1)?);
                }
                Value::List(items)
            }
            Event::MappingStart(_, _) => {
                let mut entries: Vec<Entry> = Vec::new();
                loop {
                    let (key, key_span) = self.next()?;
                    let key_line = key_span.start.line();
                    let key = match key {
                        Event::MappingEnd => break,
                        Event::Scalar(key, _, _, _) => key.into_owned(),
                        _ => {
                            return problem(
                                Rule::Syntax,
                                key_line,
                                "a key here is not a plain name: write `name: value` entries only",
                            );
                        }
                    };
                    if let Some(first) = entries.iter().find(|e| e.key == key) {
                        return problem(
                            Rule::DuplicateField,
                            key_line,
                            format!(
                                "`{key}` is given twice in this mapping (first at line {}): keep one",
                                first.line
                            ),
                        );
                    }
                    let value_event = self.next()?;
                    let value = self.node(value_event, depth + 1)?;
                    entries.push(Entry {
                        key,
                        line: key_line,
                        value,
                    });
                }
                Value::Map(entries)
            }
            Event::Alias(_) => {
                return problem(
                    Rule::Syntax,
                    line,
                    "YAML aliases (`*name`) are not supported in a sequence file: write the value out",
                );
            }
            other => return problem(Rule::Syntax, line, format!("unexpected YAML {other:?}")),
        };
        Ok(Node { line, value })
    }
}

fn syntax(e: &ScanError) -> Problem {
    Problem {
        rule: Rule::Syntax,
        line: e.marker().line().max(1),
        message: format!(
            "YAML syntax error: {}; check the indentation, the quotes and the brackets on this line or the one before",
            e.info()
        ),
    }
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Scalar(_) => "a text",
            Value::List(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading the model from the tree.

/// A sequence as read, with the lines validation needs.
struct ReadSequence {
    sequence: Sequence,
    name_line: usize,
    /// Per message type, the line of its `type:` and its predecessors with their lines.
    messages: Vec<ReadMessage>,
}

struct ReadMessage {
    line: usize,
    key: String,
    predecessors: Vec<(String, usize)>,
}

struct ReadFile {
    sequences: Vec<ReadSequence>,
}

const FILE_FIELDS: &[&str] = &["sequences"];
const SEQUENCE_FIELDS: &[&str] = &["name", "retention", "recordingUntil", "messages"];
const MESSAGE_FIELDS: &[&str] = &["type", "subType", "contextPath", "contextAttr", "releaseCondition"];
const CONDITION_FIELDS: &[&str] = &["predecessor", "and", "or"];

fn read_file(root: Option<&Node>) -> Result<ReadFile, Problem> {
    let Some(root) = root else {
        return problem(
            Rule::MissingField,
            1,
            "the file is empty: declare `sequences:` with at least one sequence (see docs/sequences.example.yaml)",
        );
    };
    let entries = mapping(root, "the file", "`sequences:` with a list of sequences")?;
    known_fields(entries, FILE_FIELDS, "the file")?;
    let Some(list) = field(entries, "sequences") else {
        return problem(
            Rule::MissingField,
            root.line,
            "the file has no `sequences:`: declare the sequences under it (see docs/sequences.example.yaml)",
        );
    };
    let items = match &list.value.value {
        Value::Null => &[][..],
        _ => list_of(&list.value, "sequences")?,
    };
    if items.is_empty() {
        return problem(
            Rule::MissingField,
            list.line,
            "`sequences:` lists no sequence: declare at least one, with a name and its messages",
        );
    }
    let sequences = items.iter().map(read_sequence).collect::<Result<_, _>>()?;
    Ok(ReadFile { sequences })
}

fn read_sequence(node: &Node) -> Result<ReadSequence, Problem> {
    let entries = mapping(node, "a sequence", "`name:` and `messages:`")?;
    known_fields(entries, SEQUENCE_FIELDS, "a sequence")?;
    let (name, name_line) = match field(entries, "name") {
        None => {
            return problem(
                Rule::EmptyName,
                node.line,
                "this sequence has no name: add `name:` with a name of its own, e.g. `name: order-lifecycle`",
            );
        }
        Some(entry) => match text(entry, "name")? {
            Some(name) if name.contains('/') => {
                // Instances are stored as `<sequence>/<context id>`: a `/` in the name could
                // make two instances share a key.
                return problem(
                    Rule::EmptyName,
                    entry.line,
                    format!("the sequence name {name:?} holds a '/': use a name without one, e.g. order-lifecycle"),
                );
            }
            Some(name) if !name.trim().is_empty() => (name, entry.line),
            _ => {
                return problem(
                    Rule::EmptyName,
                    entry.line,
                    "the sequence name is empty: give the sequence a name, e.g. `name: order-lifecycle`",
                );
            }
        },
    };
    let retention = match field(entries, "retention") {
        None => None,
        Some(entry) => match text(entry, "retention")? {
            None => None,
            Some(value) => Some(duration(&value, &name, entry.line)?),
        },
    };
    let recording_until = match field(entries, "recordingUntil") {
        None => None,
        Some(entry) => match text(entry, "recordingUntil")? {
            None => None,
            Some(value) => match parse_rfc3339(&value) {
                Some(at) => Some(at),
                None => {
                    return problem(
                        Rule::BadDate,
                        entry.line,
                        format!(
                            "recordingUntil {value:?} of sequence {name} is not an RFC 3339 date-time after 1970: \
                             write it with a time and a zone, e.g. 2026-12-01T00:00:00Z"
                        ),
                    );
                }
            },
        },
    };
    let empty = |line: usize| {
        problem(
            Rule::EmptySequence,
            line,
            format!(
                "sequence {name} has no messages: list its message types under `messages:`, e.g. `- type: OrderCreated`"
            ),
        )
    };
    let Some(messages_entry) = field(entries, "messages") else {
        return empty(node.line);
    };
    if matches!(messages_entry.value.value, Value::Null) {
        return empty(messages_entry.line);
    }
    let items = list_of(&messages_entry.value, "messages")?;
    if items.is_empty() {
        return empty(messages_entry.line);
    }
    let mut messages = Vec::with_capacity(items.len());
    let mut read = Vec::with_capacity(items.len());
    for item in items {
        let (message, r) = read_message(item)?;
        messages.push(message);
        read.push(r);
    }
    Ok(ReadSequence {
        sequence: Sequence {
            name,
            retention,
            recording_until,
            messages,
        },
        name_line,
        messages: read,
    })
}

fn duration(value: &str, sequence: &str, line: usize) -> Result<Duration, Problem> {
    match value.parse::<Duration>() {
        Ok(Duration(0)) => problem(
            Rule::BadDuration,
            line,
            format!(
                "retention {value} of sequence {sequence} would expire every instance at once: \
                 write a positive duration, e.g. 14d, or leave it out for the worker's --retention"
            ),
        ),
        Ok(d) => Ok(d),
        Err(e) => problem(
            Rule::BadDuration,
            line,
            format!("retention of sequence {sequence}: {e}"),
        ),
    }
}

fn read_message(node: &Node) -> Result<(MessageType, ReadMessage), Problem> {
    let entries = mapping(node, "a message type", "`type:` and optionally `releaseCondition:`")?;
    known_fields(entries, MESSAGE_FIELDS, "a message type")?;
    let (type_name, line) = match field(entries, "type") {
        None => {
            return problem(
                Rule::MissingField,
                node.line,
                "this message type has no `type:`: add `type:` with the type's name, e.g. `type: OrderCreated`",
            );
        }
        Some(entry) => match text(entry, "type")? {
            Some(name) if !name.trim().is_empty() => (name, entry.line),
            _ => {
                return problem(
                    Rule::MissingField,
                    entry.line,
                    "`type:` is empty: give the message type's name, e.g. `type: OrderCreated`",
                );
            }
        },
    };
    let sub_type = match field(entries, "subType") {
        None => None,
        Some(entry) => match text(entry, "subType")? {
            None => None,
            Some(sub) if sub.trim().is_empty() => {
                return problem(
                    Rule::MissingField,
                    entry.line,
                    format!("the subType of {type_name} is empty: give it a value or leave the line out"),
                );
            }
            Some(sub) => Some(sub),
        },
    };
    let context_path = match field(entries, "contextPath") {
        None => None,
        Some(entry) => match text(entry, "contextPath")? {
            None => None,
            Some(path) => {
                if let Err(why) = check_pointer(&path) {
                    return problem(
                        Rule::BadContextExtractor,
                        entry.line,
                        format!(
                            "contextPath {path:?} of {type_name} is not a JSON Pointer: {why}; \
                             write it from the root of the body, e.g. /order/id"
                        ),
                    );
                }
                Some(path)
            }
        },
    };
    let context_attr = match field(entries, "contextAttr") {
        None => None,
        Some(entry) => match text(entry, "contextAttr")? {
            None => None,
            Some(attr) if attr.trim().is_empty() => {
                return problem(
                    Rule::BadContextExtractor,
                    entry.line,
                    format!(
                        "contextAttr of {type_name} is empty: name the message attribute that holds \
                         the context id, e.g. orderId, or leave the line out"
                    ),
                );
            }
            Some(attr) => Some(attr),
        },
    };
    let mut predecessors = Vec::new();
    let release_condition = match field(entries, "releaseCondition") {
        None => None,
        Some(entry) if matches!(entry.value.value, Value::Null) => None,
        Some(entry) => Some(read_condition(&entry.value, &mut predecessors)?),
    };
    let message = MessageType {
        type_name,
        sub_type,
        context_path,
        context_attr,
        release_condition,
    };
    let key = message.key().into_owned();
    Ok((
        message,
        ReadMessage {
            line,
            key,
            predecessors,
        },
    ))
}

fn read_condition(node: &Node, predecessors: &mut Vec<(String, usize)>) -> Result<Condition, Problem> {
    const SHAPE: &str = "`{ predecessor: T }`, `{ and: [ … ] }` or `{ or: [ … ] }`";
    let entries = mapping(node, "a condition", SHAPE)?;
    known_fields(entries, CONDITION_FIELDS, "a condition")?;
    let entry = match entries {
        [entry] => entry,
        [] => {
            return problem(
                Rule::BadCondition,
                node.line,
                format!("this condition is empty: write {SHAPE}, or leave releaseCondition out to release at once"),
            );
        }
        [_, second, ..] => {
            return problem(
                Rule::BadCondition,
                second.line,
                format!(
                    "a condition is one of predecessor, and, or, but this one has {}: \
                     combine them with `and: [ … ]` or `or: [ … ]`, one condition per item",
                    entries
                        .iter()
                        .map(|e| format!("`{}`", e.key))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            );
        }
    };
    match entry.key.as_str() {
        "predecessor" => match text(entry, "predecessor")? {
            Some(name) if !name.trim().is_empty() => {
                predecessors.push((name.clone(), entry.line));
                Ok(Condition::Predecessor(name))
            }
            _ => problem(
                Rule::BadCondition,
                entry.line,
                "`predecessor:` names no type: write the type this one waits for, e.g. `predecessor: OrderCreated`",
            ),
        },
        word => {
            let items = match &entry.value.value {
                Value::Null => &[][..],
                _ => list_of(&entry.value, word)?,
            };
            if items.is_empty() {
                return problem(
                    Rule::EmptyCondition,
                    entry.line,
                    format!(
                        "`{word}:` lists no condition: list at least one, e.g. `{word}: [ {{ predecessor: OrderPaid }} ]`, \
                         or leave releaseCondition out to release at once"
                    ),
                );
            }
            let list = items
                .iter()
                .map(|item| read_condition(item, predecessors))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if word == "and" {
                Condition::And(list)
            } else {
                Condition::Or(list)
            })
        }
    }
}

fn mapping<'n>(node: &'n Node, what: &str, expected: &str) -> Result<&'n [Entry], Problem> {
    match &node.value {
        Value::Map(entries) => Ok(entries),
        other => problem(
            Rule::WrongShape,
            node.line,
            format!("{what} is a mapping ({expected}), but here it is {}", other.kind()),
        ),
    }
}

fn list_of<'n>(node: &'n Node, key: &str) -> Result<&'n [Node], Problem> {
    match &node.value {
        Value::List(items) => Ok(items),
        other => problem(
            Rule::WrongShape,
            node.line,
            format!(
                "`{key}:` holds a list (items starting with `- `, or `[ … ]`), but here it is {}",
                other.kind()
            ),
        ),
    }
}

/// A text value; `None` for an explicit null.
fn text(entry: &Entry, key: &str) -> Result<Option<String>, Problem> {
    match &entry.value.value {
        Value::Null => Ok(None),
        Value::Scalar(s) => Ok(Some(s.clone())),
        other => problem(
            Rule::WrongShape,
            entry.line,
            format!(
                "`{key}:` holds a text, but here it is {}: write it on the same line, e.g. `{key}: value`",
                other.kind()
            ),
        ),
    }
}

fn field<'n>(entries: &'n [Entry], key: &str) -> Option<&'n Entry> {
    entries.iter().find(|e| e.key == key)
}

fn known_fields(entries: &[Entry], known: &[&str], what: &str) -> Result<(), Problem> {
    for entry in entries {
        if !known.contains(&entry.key.as_str()) {
            let hint = match closest(&entry.key, known.iter().copied()) {
                Some(near) => format!("did you mean `{near}`? "),
                None => String::new(),
            };
            return problem(
                Rule::UnknownField,
                entry.line,
                format!(
                    "unknown field `{}` in {what}: {hint}its fields are {}",
                    entry.key,
                    known.join(", ")
                ),
            );
        }
    }
    Ok(())
}

/// A JSON Pointer (RFC 6901) that selects something inside the body: `/a/b`, `~0`, `~1`.
fn check_pointer(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("it must start with /");
    }
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err("a ~ must be followed by 0 (for ~) or 1 (for /)");
        }
    }
    Ok(())
}

/// The known name closest to `word`, if one is close enough to be a typo of it.
fn closest<'k>(word: &str, known: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    let lower = word.to_lowercase();
    known
        .map(|k| {
            let d = if k.to_lowercase() == lower {
                0
            } else {
                edit_distance(word, k)
            };
            (d, k)
        })
        .filter(|&(d, k)| d <= 2.max(k.chars().count() / 4))
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (RFC 3339 §5.6; `t`, `z` and a space for `T`
/// accepted), as milliseconds since the epoch; `None` when malformed or before 1970.
fn parse_rfc3339(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = b.get(range)?;
        digits
            .iter()
            .try_fold(0u64, |n, &d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > month_days || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        millis = frac[..digits]
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(3)
            .fold(0, |n, d| n * 10 + u64::from(d - b'0'));
        rest = &frac[digits..];
    }
    let offset: i64 = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let (y, m) = (year as i64 - i64::from(month <= 2), month as i64);
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour as i64 * 3_600 + minute as i64 * 60 + second as i64 - offset * 60;
    let total = seconds.checked_mul(1000)?.checked_add(millis as i64)?;
    u64::try_from(total).ok().map(Millis)
}

// ---------------------------------------------------------------------------------------
// Validation across entries: names, types, predecessors, cycles.

fn validate(file: &ReadFile) -> Result<(), Problem> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    // key -> (sequence name, line of its `type:`)
    let mut owners: HashMap<&str, (&str, usize)> = HashMap::new();
    for seq in &file.sequences {
        let name = seq.sequence.name.as_str();
        if let Some(first) = names.insert(name, seq.name_line) {
            return problem(
                Rule::DuplicateName,
                seq.name_line,
                format!("sequence name {name} is used twice (first at line {first}): give each sequence its own name"),
            );
        }
        let mut own: HashMap<&str, usize> = HashMap::new();
        for m in &seq.messages {
            if let Some(first) = own.insert(&m.key, m.line) {
                return problem(
                    Rule::DuplicateType,
                    m.line,
                    format!(
                        "type {} is listed twice in sequence {name} (first at line {first}): remove one, \
                         or tell them apart with a subType",
                        m.key
                    ),
                );
            }
            if let Some((other, first)) = owners.get(m.key.as_str()) {
                return problem(
                    Rule::TypeInTwoSequences,
                    m.line,
                    format!(
                        "type {} is already in sequence {other} (line {first}): a type belongs to one \
                         sequence only; remove it from one of them",
                        m.key
                    ),
                );
            }
        }
        for m in &seq.messages {
            owners.insert(&m.key, (name, m.line));
        }
    }
    for seq in &file.sequences {
        check_predecessors(seq, &owners)?;
    }
    for seq in &file.sequences {
        check_cycles(seq)?;
    }
    Ok(())
}

fn check_predecessors(seq: &ReadSequence, owners: &HashMap<&str, (&str, usize)>) -> Result<(), Problem> {
    let name = &seq.sequence.name;
    let known = || seq.messages.iter().map(|m| m.key.as_str());
    for m in &seq.messages {
        for (pred, line) in &m.predecessors {
            if known().any(|k| k == pred) {
                continue;
            }
            let message = match owners.get(pred.as_str()) {
                Some((other, _)) => format!(
                    "predecessor {pred} of {} is a type of sequence {other}, not of sequence {name}: \
                     a condition can only name types of its own sequence",
                    m.key
                ),
                None => {
                    let sub_type = format!("{pred}/");
                    let near = known()
                        .find(|k| k.starts_with(&sub_type))
                        .or_else(|| closest(pred, known()));
                    let hint = match near {
                        Some(near) => format!(" (did you mean {near}?)"),
                        None => String::new(),
                    };
                    const SHOWN: usize = 20;
                    let mut list = known().take(SHOWN).collect::<Vec<_>>().join(", ");
                    if seq.messages.len() > SHOWN {
                        list.push_str(", …");
                    }
                    format!(
                        "predecessor {pred} of {} is not a type of sequence {name}{hint}; known types: {list}",
                        m.key
                    )
                }
            };
            return problem(Rule::UnknownPredecessor, *line, message);
        }
    }
    Ok(())
}

/// Finds a cycle through predecessor edges by depth-first search, in the order the file
/// lists types and predecessors, so the error is the same on every run.
fn check_cycles(seq: &ReadSequence) -> Result<(), Problem> {
    let index: HashMap<&str, usize> = seq
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.key.as_str(), i))
        .collect();
    // type -> (predecessor type, line of the `predecessor:` entry)
    let edges: Vec<Vec<(usize, usize)>> = seq
        .messages
        .iter()
        .map(|m| {
            m.predecessors
                .iter()
                .map(|(p, line)| (index[p.as_str()], *line))
                .collect()
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; edges.len()];
    for start in 0..edges.len() {
        if mark[start] != Mark::New {
            continue;
        }
        mark[start] = Mark::OnPath;
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some((node, next)) = path.last_mut() {
            let node = *node;
            let Some(&(pred, line)) = edges[node].get(*next) else {
                mark[node] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            match mark[pred] {
                Mark::New => {
                    mark[pred] = Mark::OnPath;
                    path.push((pred, 0));
                }
                Mark::Done => {}
                Mark::OnPath => {
                    let from = path
                        .iter()
                        .position(|&(n, _)| n == pred)
                        .expect("a node on the path is in it");
                    let cycle: Vec<&str> = path[from..]
                        .iter()
                        .map(|&(n, _)| seq.messages[n].key.as_str())
                        .collect();
                    return problem(Rule::Cycle, line, cycle_message(&seq.sequence.name, &cycle));
                }
            }
        }
    }
    Ok(())
}

/// `cycle[i]` waits for `cycle[i + 1]`, and the last waits for the first.
fn cycle_message(sequence: &str, cycle: &[&str]) -> String {
    let last = cycle[cycle.len() - 1];
    if let [only] = cycle {
        return format!(
            "predecessor {only} of {only}: {only} waits for itself in sequence {sequence}, so it can never \
             be released; remove this predecessor"
        );
    }
    let waits: Vec<String> = cycle
        .iter()
        .zip(cycle.iter().cycle().skip(1))
        .map(|(a, b)| format!("{a} waits for {b}"))
        .collect();
    format!(
        "predecessor {} of {last} closes a cycle in sequence {sequence}: {}, so none of them can ever be \
         released; remove one of these predecessors",
        cycle[0],
        waits.join(", ")
    )
}

#[cfg(test)]
mod tests;
