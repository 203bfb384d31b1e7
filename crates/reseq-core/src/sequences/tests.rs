use std::collections::HashSet;

use proptest::prelude::*;

use super::*;

/// SPEC §5's example, verbatim.
const SPEC_EXAMPLE: &str = "\
sequences:
  - name: order-lifecycle
    retention: 14d
    recordingUntil: 2026-12-01T00:00:00Z    # optional, RFC 3339
    messages:
      - type: OrderCreated
      - type: StockReserved
        releaseCondition: { predecessor: OrderCreated }
      - type: OrderPaid
        releaseCondition: { predecessor: OrderCreated }
      - type: OrderShipped
        releaseCondition:
          and: [ { predecessor: OrderPaid }, { predecessor: StockReserved } ]
      - type: OrderCancelled
        contextPath: /order/id               # optional per-type context extractor
        releaseCondition:
          or: [ { predecessor: OrderPaid }, { predecessor: OrderCreated } ]
";

/// 2026-12-01T00:00:00Z.
const DECEMBER_FIRST_2026: Millis = Millis(1_796_083_200_000);

/// YAML written indented inside a test: the first line break and the common indentation go.
fn yaml(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect()
}

fn processed<'a>(keys: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
    move |key| keys.contains(&key)
}

/// Loads `text` as `orders.yaml`, expects the given rule at `line`, and each `fix` in the one line.
macro_rules! assert_refused {
    ($text:expr, $rule:ident, $line:expr $(, $fix:expr)* $(,)?) => {{
        let text: &str = &$text;
        let e = load("orders.yaml", text).expect_err("the file is refused");
        let shown = e.to_string();
        assert!(
            matches!(e, SequenceFileError::$rule { .. }),
            "expected {}, got {e:?}",
            stringify!($rule)
        );
        assert_eq!(e.line(), $line, "{shown}");
        assert_eq!(e.file(), "orders.yaml");
        assert!(shown.starts_with(&format!("orders.yaml:{}: ", $line)), "{shown}");
        assert_eq!(shown, format!("orders.yaml:{}: {}", e.line(), e.message()));
        assert!(!shown.contains('\n'), "one line: {shown}");
        $( assert!(shown.contains($fix), "{shown:?} does not say {:?}", $fix); )*
        e
    }};
}

// ---------------------------------------------------------------------------------------
// The example

#[test]
fn the_spec_example_parses() {
    let file = load("orders.yaml", SPEC_EXAMPLE).unwrap();
    assert_eq!(file.sequences.len(), 1);
    let seq = &file.sequences[0];
    assert_eq!(seq.name, "order-lifecycle");
    assert_eq!(seq.retention, Some(Duration::from_secs(14 * 86_400)));
    assert_eq!(seq.recording_until, Some(DECEMBER_FIRST_2026));
    let keys: Vec<_> = seq.messages.iter().map(|m| m.key().into_owned()).collect();
    assert_eq!(
        keys,
        [
            "OrderCreated",
            "StockReserved",
            "OrderPaid",
            "OrderShipped",
            "OrderCancelled"
        ]
    );
    let pred = |k: &str| Condition::Predecessor(k.into());
    assert_eq!(seq.messages[0].release_condition, None);
    assert_eq!(seq.messages[1].release_condition, Some(pred("OrderCreated")));
    assert_eq!(
        seq.messages[3].release_condition,
        Some(Condition::And(vec![pred("OrderPaid"), pred("StockReserved")]))
    );
    let cancelled = &seq.messages[4];
    assert_eq!(cancelled.context_path.as_deref(), Some("/order/id"));
    assert_eq!(cancelled.context_attr, None);
    assert_eq!(cancelled.sub_type, None);
    assert_eq!(
        cancelled.release_condition,
        Some(Condition::Or(vec![pred("OrderPaid"), pred("OrderCreated")]))
    );
}

#[test]
fn the_spec_example_conditions_hold_as_the_spec_says() {
    let file = load("orders.yaml", SPEC_EXAMPLE).unwrap();
    let (seq, shipped) = file.find("OrderShipped").unwrap();
    assert_eq!(seq.name, "order-lifecycle");
    let (_, cancelled) = file.find("OrderCancelled").unwrap();
    let (_, created) = file.find("OrderCreated").unwrap();

    // OrderCreated has no condition: released at once.
    assert!(created.ready(&processed(&[])));
    assert_eq!(created.waiting_for(&processed(&[])), None);

    // OrderShipped needs both OrderPaid and StockReserved.
    assert!(!shipped.ready(&processed(&[])));
    assert!(!shipped.ready(&processed(&["OrderCreated", "OrderPaid"])));
    assert!(!shipped.ready(&processed(&["OrderCreated", "StockReserved"])));
    assert!(shipped.ready(&processed(&["OrderPaid", "StockReserved"])));
    assert_eq!(
        shipped.waiting_for(&processed(&[])).unwrap().to_string(),
        "OrderPaid and StockReserved"
    );
    assert_eq!(
        shipped.waiting_for(&processed(&["OrderPaid"])),
        Some(Condition::Predecessor("StockReserved".into()))
    );

    // OrderCancelled needs either.
    assert!(!cancelled.ready(&processed(&["StockReserved"])));
    assert!(cancelled.ready(&processed(&["OrderCreated"])));
    assert!(cancelled.ready(&processed(&["OrderPaid"])));
    assert_eq!(
        cancelled
            .waiting_for(&processed(&["StockReserved"]))
            .unwrap()
            .to_string(),
        "OrderPaid or OrderCreated"
    );
    assert_eq!(cancelled.waiting_for(&processed(&["OrderCreated"])), None);

    // The instance closes when every type was processed.
    let all = [
        "OrderCreated",
        "StockReserved",
        "OrderPaid",
        "OrderShipped",
        "OrderCancelled",
    ];
    assert!(seq.is_complete(&processed(&all)));
    assert!(!seq.is_complete(&processed(&all[..4])));

    assert_eq!(file.find("InvoiceSent"), None);
}

#[test]
fn the_example_file_loads_and_holds_the_spec_example() {
    let text = include_str!("../../../../docs/sequences.example.yaml");
    let file = load("docs/sequences.example.yaml", text).unwrap();
    let spec = load("spec", SPEC_EXAMPLE).unwrap();
    assert_eq!(file.sequences[0], spec.sequences[0]);

    let (refunds, requested) = file.find("RefundRequested").unwrap();
    assert_eq!(refunds.name, "refunds");
    assert_eq!(refunds.retention, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(refunds.recording_until, None);
    assert_eq!(requested.context_attr.as_deref(), Some("refundId"));
    let (_, approved) = file.find("RefundDecision/approved").unwrap();
    assert_eq!(approved.type_name, "RefundDecision");
    assert_eq!(approved.sub_type.as_deref(), Some("approved"));
    assert!(
        file.find("RefundDecision").is_none(),
        "with sub-types, the key names the sub-type"
    );
    let (_, closed) = file.find("RefundClosed").unwrap();
    assert_eq!(
        closed.waiting_for(&processed(&[])).unwrap().to_string(),
        "RefundRequested and (RefundDecision/approved or RefundDecision/rejected)"
    );
    assert_eq!(
        closed
            .waiting_for(&processed(&["RefundRequested"]))
            .unwrap()
            .to_string(),
        "RefundDecision/approved or RefundDecision/rejected"
    );
    assert!(closed.ready(&processed(&["RefundRequested", "RefundDecision/rejected"])));
    assert_eq!(
        closed.release_condition.as_ref().unwrap().predecessors(),
        ["RefundRequested", "RefundDecision/approved", "RefundDecision/rejected"]
    );
}

#[test]
fn optional_fields_may_be_left_empty_and_quoted_values_are_text() {
    let file = load(
        "x.yaml",
        &yaml(
            r#"
            sequences:
              - name: "123"
                retention:
                recordingUntil: ~
                messages:
                  - type: 'true'
                    subType:
                    releaseCondition: null
            "#,
        ),
    )
    .unwrap();
    let seq = &file.sequences[0];
    assert_eq!(seq.name, "123");
    assert_eq!((seq.retention, seq.recording_until), (None, None));
    assert_eq!(seq.messages[0].key(), "true");
    assert_eq!(seq.messages[0].release_condition, None);
}

#[test]
fn windows_line_endings_keep_the_line_numbers() {
    let text = yaml(
        "
        sequences:
          - name: a
            messages:
              - type: A
              - type: B
                releaseCondition: { predecessor: C }
        ",
    )
    .replace('\n', "\r\n");
    assert_refused!(text, UnknownPredecessor, 6, "predecessor C of B");
    assert!(load("x.yaml", &text.replace("C }", "A }")).is_ok());
}

#[test]
fn a_key_names_the_type_and_its_sub_type() {
    let m = |sub: Option<&str>| MessageType {
        type_name: "RefundDecision".into(),
        sub_type: sub.map(Into::into),
        context_path: None,
        context_attr: None,
        release_condition: None,
    };
    assert_eq!(m(None).key(), "RefundDecision");
    assert_eq!(m(Some("approved")).key(), "RefundDecision/approved");
    for (entry, key, has) in [
        (m(None), "RefundDecision", true),
        (m(None), "RefundDecision/approved", false),
        (m(Some("approved")), "RefundDecision/approved", true),
        (m(Some("approved")), "RefundDecision", false),
        (m(Some("approved")), "RefundDecision/rejected", false),
        (m(Some("approved")), "RefundDecisionapproved", false),
    ] {
        assert_eq!(entry.has_key(key), has, "{entry:?} has key {key}");
    }
}

#[test]
fn conditions_nest_and_say_what_they_wait_for() {
    let p = |k: &str| Condition::Predecessor(k.into());
    let c = Condition::Or(vec![Condition::And(vec![p("A"), p("B")]), p("C")]);
    assert_eq!(c.to_string(), "(A and B) or C");
    assert!(!c.holds(&processed(&["A"])));
    assert!(c.holds(&processed(&["A", "B"])));
    assert!(c.holds(&processed(&["C"])));
    assert_eq!(c.waiting_for(&processed(&["A"])).unwrap().to_string(), "B or C");
    assert_eq!(c.waiting_for(&processed(&["B", "C"])), None);
    assert_eq!(c.predecessors(), ["A", "B", "C"]);
}

#[test]
fn recording_until_reads_rfc_3339() {
    let at = |s: &str| parse_rfc3339(s);
    assert_eq!(at("1970-01-01T00:00:00Z"), Some(Millis(0)));
    assert_eq!(at("2026-12-01T00:00:00Z"), Some(DECEMBER_FIRST_2026));
    assert_eq!(at("2026-12-01t00:00:00z"), Some(DECEMBER_FIRST_2026));
    assert_eq!(at("2026-12-01 00:00:00Z"), Some(DECEMBER_FIRST_2026));
    assert_eq!(at("2026-12-01T01:30:00+01:30"), Some(DECEMBER_FIRST_2026));
    assert_eq!(at("2026-11-30T22:00:00-02:00"), Some(DECEMBER_FIRST_2026));
    assert_eq!(
        at("2026-12-01T00:00:00.5Z"),
        Some(DECEMBER_FIRST_2026.plus(Duration(500)))
    );
    assert_eq!(
        at("2026-12-01T00:00:00.123456Z"),
        Some(DECEMBER_FIRST_2026.plus(Duration(123)))
    );
    assert_eq!(at("2024-02-29T12:00:00Z"), Some(Millis(1_709_208_000_000)));
    assert_eq!(at("2000-03-01T00:00:00Z"), Some(Millis(951_868_800_000)));
    for bad in [
        "",
        "2026-12-01",
        "2026-12-01T00:00:00",
        "2026-12-01T00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-12-01T24:00:00Z",
        "2026-12-01T00:60:00Z",
        "2026-12-01T00:00:00.Z",
        "2026-12-01T00:00:00+0100",
        "2026-12-01T00:00:00+25:00",
        "2026/12/01T00:00:00Z",
        "2026-12-01T00:00:00Zjunk",
        "+026-12-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "1970-01-01T01:00:00+02:00",
    ] {
        assert_eq!(at(bad), None, "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------
// One test per rule: the line and the fix.

#[test]
fn a_yaml_syntax_error_names_its_line() {
    let text = yaml(
        r#"
        sequences:
          - name: "order-lifecycle
            messages:
              - type: OrderCreated
        "#,
    );
    let e = assert_refused!(
        text,
        Syntax,
        2,
        "YAML syntax error",
        "check the indentation, the quotes"
    );
    assert!(
        !e.message().contains("at byte"),
        "the line is ours, not the parser's: {e}"
    );

    assert_refused!(
        yaml(
            "
            sequences:
              - name: a
               messages: x
            "
        ),
        Syntax,
        3,
        "YAML syntax error"
    );
}

#[test]
fn yaml_features_a_sequence_file_does_not_use_are_refused() {
    let aliased = yaml(
        "
        sequences:
          - name: a
            messages:
              - type: &t A
              - type: *t
        ",
    );
    assert_refused!(aliased, Syntax, 5, "aliases", "write the value out");

    let two_documents = yaml(
        "
        sequences:
          - name: a
            messages: [ { type: A } ]
        ---
        sequences: []
        ",
    );
    assert_refused!(two_documents, Syntax, 4, "second YAML document", "remove this `---`");

    let complex_key = yaml(
        "
        sequences:
          - name: a
            ? [x]
            : y
        ",
    );
    assert_refused!(complex_key, Syntax, 3, "not a plain name");

    let deep = format!(
        "sequences:\n  - name: a\n    messages:\n      - type: A\n        releaseCondition: {}{{ predecessor: A }}{}\n",
        "{ and: [ ".repeat(40),
        " ] }".repeat(40)
    );
    assert_refused!(deep, Syntax, 5, "nested deeper than", "flatten this condition");
}

#[test]
fn an_empty_file_is_refused() {
    assert_refused!("", MissingField, 1, "the file is empty", "sequences:");
    assert_refused!("# only a comment\n", MissingField, 1, "the file is empty");
    assert_refused!(
        "other: 1\n",
        UnknownField,
        1,
        "unknown field `other` in the file",
        "its fields are sequences"
    );
    assert_refused!("sequences: []\n", MissingField, 1, "lists no sequence");
    assert_refused!("{}\n", MissingField, 1, "has no `sequences:`");
}

#[test]
fn an_unknown_field_is_refused_with_the_closest_known_one() {
    let in_sequence = yaml(
        "
        sequences:
          - name: order-lifecycle
            retentionPeriod: 14d
            messages:
              - type: OrderCreated
        ",
    );
    assert_refused!(
        in_sequence,
        UnknownField,
        3,
        "unknown field `retentionPeriod` in a sequence",
        "its fields are name, retention, recordingUntil, messages"
    );

    let in_message = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
              - type: OrderPaid
                releaseCondtion: { predecessor: OrderCreated }
        ",
    );
    assert_refused!(
        in_message,
        UnknownField,
        6,
        "unknown field `releaseCondtion` in a message type",
        "did you mean `releaseCondition`?"
    );

    let in_condition = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
              - type: OrderPaid
                releaseCondition:
                  and:
                    - predecesor: OrderCreated
        ",
    );
    assert_refused!(
        in_condition,
        UnknownField,
        8,
        "unknown field `predecesor` in a condition",
        "did you mean `predecessor`?"
    );

    let case = yaml(
        "
        sequences:
          - name: a
            messages:
              - type: A
                contextpath: /id
        ",
    );
    assert_refused!(case, UnknownField, 5, "did you mean `contextPath`?");
}

#[test]
fn a_key_given_twice_is_refused() {
    let text = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
            name: orders
        ",
    );
    assert_refused!(
        text,
        DuplicateField,
        5,
        "`name` is given twice in this mapping (first at line 2)",
        "keep one"
    );
}

#[test]
fn a_message_type_without_type_is_refused() {
    let missing = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
              - releaseCondition: { predecessor: OrderCreated }
        ",
    );
    assert_refused!(missing, MissingField, 5, "has no `type:`", "e.g. `type: OrderCreated`");

    let empty = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: ''
        ",
    );
    assert_refused!(empty, MissingField, 4, "`type:` is empty");

    let empty_sub_type = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
                subType: ' '
        ",
    );
    assert_refused!(empty_sub_type, MissingField, 5, "subType of OrderCreated is empty");
}

#[test]
fn a_value_of_the_wrong_shape_is_refused() {
    let messages_text = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages: OrderCreated
        ",
    );
    assert_refused!(
        messages_text,
        WrongShape,
        3,
        "`messages:` holds a list",
        "but here it is a text"
    );

    let type_list = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: [ OrderCreated ]
        ",
    );
    assert_refused!(type_list, WrongShape, 4, "`type:` holds a text, but here it is a list");

    let sequence_text = yaml(
        "
        sequences:
          - order-lifecycle
        ",
    );
    assert_refused!(
        sequence_text,
        WrongShape,
        2,
        "a sequence is a mapping",
        "`name:` and `messages:`"
    );

    let condition_text = yaml(
        "
        sequences:
          - name: a
            messages:
              - type: A
              - type: B
                releaseCondition: A
        ",
    );
    assert_refused!(
        condition_text,
        WrongShape,
        6,
        "a condition is a mapping",
        "`{ predecessor: T }`"
    );
}

#[test]
fn a_sequence_without_a_name_is_refused() {
    let missing = yaml(
        "
        sequences:
          - messages:
              - type: OrderCreated
        ",
    );
    assert_refused!(missing, EmptyName, 2, "has no name", "add `name:`");

    let empty = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages: [ { type: A } ]
          - name: ''
            messages: [ { type: B } ]
        ",
    );
    assert_refused!(
        empty,
        EmptyName,
        4,
        "the sequence name is empty",
        "e.g. `name: order-lifecycle`"
    );

    let null = yaml(
        "
        sequences:
          - name:
            messages: [ { type: A } ]
        ",
    );
    assert_refused!(null, EmptyName, 2, "the sequence name is empty");
}

#[test]
fn a_sequence_name_with_a_slash_is_refused() {
    let slash = yaml(
        "
        sequences:
          - name: orders/v2
            messages: [ { type: A } ]
        ",
    );
    assert_refused!(slash, EmptyName, 2, "holds a '/'", "without one");
}

#[test]
fn a_name_used_twice_is_refused() {
    let text = yaml(
        "
        sequences:
          - name: orders
            messages: [ { type: OrderCreated } ]
          - name: refunds
            messages: [ { type: RefundRequested } ]
          - name: orders
            messages: [ { type: OrderPaid } ]
        ",
    );
    assert_refused!(
        text,
        DuplicateName,
        6,
        "sequence name orders is used twice (first at line 2)",
        "give each sequence its own name"
    );
}

#[test]
fn an_empty_sequence_is_refused() {
    let empty_list = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages: []
        ",
    );
    assert_refused!(
        empty_list,
        EmptySequence,
        3,
        "sequence order-lifecycle has no messages",
        "list its message types under `messages:`"
    );

    let null = yaml(
        "
        sequences:
          - name: order-lifecycle
            retention: 14d
            messages:
        ",
    );
    assert_refused!(null, EmptySequence, 4, "has no messages");

    let missing = yaml(
        "
        sequences:
          - name: order-lifecycle
            retention: 14d
        ",
    );
    assert_refused!(missing, EmptySequence, 2, "has no messages");
}

#[test]
fn a_type_listed_twice_in_a_sequence_is_refused() {
    let text = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
              - type: OrderPaid
                releaseCondition: { predecessor: OrderCreated }
              - type: OrderPaid
        ",
    );
    assert_refused!(
        text,
        DuplicateType,
        7,
        "type OrderPaid is listed twice in sequence order-lifecycle (first at line 5)",
        "remove one, or tell them apart with a subType"
    );

    let same_sub_type = yaml(
        "
        sequences:
          - name: refunds
            messages:
              - { type: RefundDecision, subType: approved }
              - { type: RefundDecision, subType: approved }
        ",
    );
    assert_refused!(
        same_sub_type,
        DuplicateType,
        5,
        "type RefundDecision/approved is listed twice"
    );

    let other_sub_types = yaml(
        "
        sequences:
          - name: refunds
            messages:
              - { type: RefundDecision, subType: approved }
              - { type: RefundDecision, subType: rejected }
              - { type: RefundDecision }
        ",
    );
    let file = load("x.yaml", &other_sub_types).unwrap();
    assert_eq!(file.find("RefundDecision").unwrap().1.sub_type, None);
}

#[test]
fn a_type_in_two_sequences_is_refused() {
    let text = yaml(
        "
        sequences:
          - name: orders
            messages:
              - type: OrderCreated
              - type: Notified
          - name: refunds
            messages:
              - type: RefundRequested
              - type: Notified
        ",
    );
    assert_refused!(
        text,
        TypeInTwoSequences,
        9,
        "type Notified is already in sequence orders (line 5)",
        "a type belongs to one sequence only; remove it from one of them"
    );
}

#[test]
fn an_unknown_predecessor_is_refused_naming_the_known_types() {
    let text = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
              - type: StockReserved
                releaseCondition: { predecessor: OrderCreated }
              - type: OrderPaid
                releaseCondition: { predecessor: OrderCreated }
              - type: OrderShipped
                releaseCondition:
                  and:
                    - predecessor: StockReserved
                    - predecessor: OrderPayed
        ",
    );
    let e = assert_refused!(
        text,
        UnknownPredecessor,
        13,
        "predecessor OrderPayed of OrderShipped is not a type of sequence order-lifecycle",
        "(did you mean OrderPaid?)",
        "known types: OrderCreated, StockReserved, OrderPaid, OrderShipped"
    );
    assert_eq!(
        e.to_string(),
        "orders.yaml:13: predecessor OrderPayed of OrderShipped is not a type of sequence order-lifecycle \
         (did you mean OrderPaid?); known types: OrderCreated, StockReserved, OrderPaid, OrderShipped"
    );

    let nothing_close = yaml(
        "
        sequences:
          - name: a
            messages:
              - type: A
              - type: B
                releaseCondition: { or: [ { predecessor: A }, { predecessor: Zebra } ] }
        ",
    );
    let e = assert_refused!(nothing_close, UnknownPredecessor, 6, "known types: A, B");
    assert!(!e.message().contains("did you mean"), "{e}");

    let other_sequence = yaml(
        "
        sequences:
          - name: orders
            messages:
              - type: OrderCreated
          - name: refunds
            messages:
              - type: RefundRequested
                releaseCondition:
                  predecessor: OrderCreated
        ",
    );
    assert_refused!(
        other_sequence,
        UnknownPredecessor,
        9,
        "predecessor OrderCreated of RefundRequested is a type of sequence orders, not of sequence refunds",
        "a condition can only name types of its own sequence"
    );

    let without_sub_type = yaml(
        "
        sequences:
          - name: refunds
            messages:
              - { type: RefundDecision, subType: approved }
              - { type: RefundClosed, releaseCondition: { predecessor: RefundDecision } }
        ",
    );
    assert_refused!(
        without_sub_type,
        UnknownPredecessor,
        5,
        "(did you mean RefundDecision/approved?); known types: RefundDecision/approved, RefundClosed"
    );
}

#[test]
fn a_cycle_is_refused_naming_its_types() {
    let two = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
              - type: OrderPaid
                releaseCondition: { predecessor: OrderShipped }
              - type: OrderShipped
                releaseCondition: { predecessor: OrderPaid }
        ",
    );
    assert_refused!(
        two,
        Cycle,
        8,
        "predecessor OrderPaid of OrderShipped closes a cycle in sequence order-lifecycle: \
         OrderPaid waits for OrderShipped, OrderShipped waits for OrderPaid",
        "remove one of these predecessors"
    );

    let itself = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
                releaseCondition: { predecessor: OrderCreated }
        ",
    );
    assert_refused!(
        itself,
        Cycle,
        5,
        "OrderCreated waits for itself",
        "remove this predecessor"
    );

    let through_or_and_and = yaml(
        "
        sequences:
          - name: s
            messages:
              - type: A
              - type: B
                releaseCondition:
                  and:
                    - predecessor: A
                    - or:
                        - predecessor: A
                        - predecessor: D
              - type: C
                releaseCondition: { predecessor: B }
              - type: D
                releaseCondition: { or: [ { predecessor: A }, { predecessor: C } ] }
        ",
    );
    assert_refused!(
        through_or_and_and,
        Cycle,
        13,
        "predecessor B of C closes a cycle in sequence s: B waits for D, D waits for C, C waits for B"
    );
}

#[test]
fn a_context_path_that_is_not_a_json_pointer_is_refused() {
    let relative = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
                contextPath: order/id
        ",
    );
    assert_refused!(
        relative,
        BadContextExtractor,
        5,
        "contextPath \"order/id\" of OrderCreated is not a JSON Pointer: it must start with /",
        "e.g. /order/id"
    );

    let bad_escape = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
                contextPath: /order~2id
        ",
    );
    assert_refused!(bad_escape, BadContextExtractor, 5, "a ~ must be followed by 0");

    let empty_attr = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
                contextAttr: ''
        ",
    );
    assert_refused!(
        empty_attr,
        BadContextExtractor,
        5,
        "contextAttr of OrderCreated is empty",
        "name the message attribute"
    );

    let escaped = yaml(
        "
        sequences:
          - name: a
            messages:
              - { type: A, contextPath: /a~1b/c~0d }
        ",
    );
    assert!(load("x.yaml", &escaped).is_ok());
}

#[test]
fn a_bad_retention_is_refused() {
    let unit = yaml(
        "
        sequences:
          - name: order-lifecycle
            retention: 2w
            messages: [ { type: OrderCreated } ]
        ",
    );
    assert_refused!(
        unit,
        BadDuration,
        3,
        "retention of sequence order-lifecycle: invalid duration \"2w\"",
        "e.g. 500ms, 12s, 5m, 3h or 14d"
    );

    let zero = yaml(
        "
        sequences:
          - name: order-lifecycle
            retention: 0d
            messages: [ { type: OrderCreated } ]
        ",
    );
    assert_refused!(
        zero,
        BadDuration,
        3,
        "retention 0d of sequence order-lifecycle would expire every instance at once",
        "write a positive duration"
    );
}

#[test]
fn a_bad_recording_until_is_refused() {
    for (value, line) in [
        ("2026-12-01", 3),
        ("2026-13-01T00:00:00Z", 3),
        ("'2026-02-30T00:00:00Z'", 3),
    ] {
        let text = yaml(&format!(
            "
            sequences:
              - name: order-lifecycle
                recordingUntil: {value}
                messages: [ {{ type: OrderCreated }} ]
            "
        ));
        assert_refused!(
            text,
            BadDate,
            line,
            "of sequence order-lifecycle is not an RFC 3339 date-time",
            "e.g. 2026-12-01T00:00:00Z"
        );
    }
}

#[test]
fn an_empty_and_or_or_is_refused() {
    let and = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
              - type: OrderShipped
                releaseCondition: { and: [] }
        ",
    );
    assert_refused!(
        and,
        EmptyCondition,
        6,
        "`and:` lists no condition",
        "list at least one, e.g. `and: [ { predecessor: OrderPaid } ]`"
    );

    let or = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
              - type: OrderShipped
                releaseCondition:
                  and:
                    - predecessor: OrderCreated
                    - or:
        ",
    );
    assert_refused!(or, EmptyCondition, 9, "`or:` lists no condition");
}

#[test]
fn a_condition_that_is_not_exactly_one_kind_is_refused() {
    let two = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
              - type: StockReserved
              - type: OrderShipped
                releaseCondition:
                  predecessor: OrderCreated
                  and: [ { predecessor: StockReserved } ]
        ",
    );
    assert_refused!(
        two,
        BadCondition,
        9,
        "this one has `predecessor` and `and`",
        "combine them with `and: [ … ]`"
    );

    let empty = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
                releaseCondition: {}
        ",
    );
    assert_refused!(
        empty,
        BadCondition,
        5,
        "this condition is empty",
        "leave releaseCondition out"
    );

    let no_type = yaml(
        "
        sequences:
          - name: order-lifecycle
            messages:
              - type: OrderCreated
                releaseCondition: { predecessor: }
        ",
    );
    assert_refused!(no_type, BadCondition, 5, "`predecessor:` names no type");
}

#[test]
fn the_first_error_in_the_file_is_the_one_reported() {
    // A structural error late in the file comes before a cross-entry one early in it.
    let text = yaml(
        "
        sequences:
          - name: a
            messages:
              - type: A
                releaseCondition: { predecessor: Nope }
          - name: b
            messages:
              - type: B
                bogus: 1
        ",
    );
    assert_refused!(text, UnknownField, 9, "`bogus`");
}

// ---------------------------------------------------------------------------------------
// The property: generated acyclic files load as generated; one cycle added is refused.

fn key(sequence: usize, ty: usize) -> String {
    format!("S{sequence}T{ty}")
}

/// A condition over the types before `ty` of `sequence` (so the file stays acyclic).
fn condition(sequence: usize, ty: usize) -> BoxedStrategy<Option<Condition>> {
    if ty == 0 {
        return Just(None).boxed();
    }
    let leaf = (0..ty).prop_map(move |p| Condition::Predecessor(key(sequence, p)));
    let tree = leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(Condition::And),
            prop::collection::vec(inner, 1..4).prop_map(Condition::Or),
        ]
    });
    prop::option::weighted(0.8, tree).boxed()
}

fn sequence(index: usize) -> impl Strategy<Value = Sequence> {
    (1..8usize, prop::option::of(1..30u64))
        .prop_flat_map(move |(types, days)| {
            let conditions: Vec<_> = (0..types).map(|t| condition(index, t)).collect();
            (conditions, Just(days))
        })
        .prop_flat_map(move |(conditions, days)| {
            let messages: Vec<MessageType> = conditions
                .into_iter()
                .enumerate()
                .map(|(t, release_condition)| MessageType {
                    type_name: key(index, t),
                    sub_type: None,
                    context_path: (t % 3 == 1).then(|| format!("/ctx/{t}")),
                    context_attr: (t % 4 == 2).then(|| "orderId".to_string()),
                    release_condition,
                })
                .collect();
            (Just(messages).prop_shuffle(), Just(days))
        })
        .prop_map(move |(messages, days)| Sequence {
            name: format!("seq-{index}"),
            retention: days.map(|d| Duration::from_secs(d * 86_400)),
            recording_until: None,
            messages,
        })
}

fn sequence_file() -> impl Strategy<Value = SequenceFile> {
    (1..4usize)
        .prop_flat_map(|n| (0..n).map(sequence).collect::<Vec<_>>())
        .prop_map(|sequences| SequenceFile { sequences })
}

/// The condition as block YAML lines (no indentation of its own).
fn block_lines(c: &Condition) -> Vec<String> {
    let (word, list) = match c {
        Condition::Predecessor(p) => return vec![format!("predecessor: {p}")],
        Condition::And(list) => ("and", list),
        Condition::Or(list) => ("or", list),
    };
    let mut lines = vec![format!("{word}:")];
    for item in list {
        for (i, line) in block_lines(item).into_iter().enumerate() {
            lines.push(if i == 0 {
                format!("  - {line}")
            } else {
                format!("    {line}")
            });
        }
    }
    lines
}

fn flow(c: &Condition) -> String {
    let (word, list) = match c {
        Condition::Predecessor(p) => return format!("{{ predecessor: {p} }}"),
        Condition::And(list) => ("and", list),
        Condition::Or(list) => ("or", list),
    };
    let items: Vec<String> = list.iter().map(flow).collect();
    format!("{{ {word}: [ {} ] }}", items.join(", "))
}

fn render(file: &SequenceFile, flow_style: bool) -> String {
    let mut out = String::from("sequences:\n");
    for seq in &file.sequences {
        out += &format!("  - name: {}\n", seq.name);
        if let Some(r) = seq.retention {
            out += &format!("    retention: {r}\n");
        }
        out += "    messages:\n";
        for m in &seq.messages {
            out += &format!("      - type: {}\n", m.type_name);
            if let Some(path) = &m.context_path {
                out += &format!("        contextPath: {path}\n");
            }
            if let Some(attr) = &m.context_attr {
                out += &format!("        contextAttr: {attr}\n");
            }
            match &m.release_condition {
                None => {}
                Some(c) if flow_style => out += &format!("        releaseCondition: {}\n", flow(c)),
                Some(c) => {
                    out += "        releaseCondition:\n";
                    for line in block_lines(c) {
                        out += &format!("          {line}\n");
                    }
                }
            }
        }
    }
    out
}

fn with_predecessor(c: Option<Condition>, key: String, via_or: bool) -> Option<Condition> {
    let p = Condition::Predecessor(key);
    Some(match c {
        None => p,
        Some(c) if via_or => Condition::Or(vec![c, p]),
        Some(c) => Condition::And(vec![c, p]),
    })
}

proptest! {
    #[test]
    fn generated_acyclic_files_load_as_generated(file in sequence_file(), flow_style in any::<bool>()) {
        let text = render(&file, flow_style);
        prop_assert_eq!(load("gen.yaml", &text), Ok(file), "{}", text);
    }

    #[test]
    fn a_cycle_added_to_a_generated_file_is_refused_naming_a_type_of_it(
        mut file in sequence_file(),
        pick in any::<(prop::sample::Index, prop::sample::Index, prop::sample::Index)>(),
        via_or in any::<bool>(),
        flow_style in any::<bool>(),
    ) {
        let s = pick.0.index(file.sequences.len());
        let seq = &mut file.sequences[s];
        let (i, j) = (pick.1.index(seq.messages.len()), pick.2.index(seq.messages.len()));
        let (ki, kj) = (seq.messages[i].key().into_owned(), seq.messages[j].key().into_owned());
        // i waits for j and j waits for i: a cycle (of one type when i == j).
        let ci = seq.messages[i].release_condition.take();
        seq.messages[i].release_condition = with_predecessor(ci, kj.clone(), via_or);
        if i != j {
            let cj = seq.messages[j].release_condition.take();
            seq.messages[j].release_condition = with_predecessor(cj, ki.clone(), via_or);
        }
        let text = render(&file, flow_style);
        let e = load("gen.yaml", &text).expect_err("a cycle is refused");
        prop_assert!(matches!(e, SequenceFileError::Cycle { .. }), "{}\n{}", e, text);
        let words: HashSet<&str> = e.message().split(|c: char| !c.is_ascii_alphanumeric()).collect();
        prop_assert!(words.contains(ki.as_str()) || words.contains(kj.as_str()), "{}\n{}", e, text);
        let line = text.lines().nth(e.line() - 1).unwrap_or_default();
        prop_assert!(line.contains("predecessor"), "line {} is {:?}: {}", e.line(), line, e);
    }
}
