//! SQS messages as the engine's [`RawMessage`]s, from either source: a `ReceiveMessage`
//! response (the worker) or a Lambda SQS event record.

use aws_lambda_events::event::sqs::SqsMessage;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use bytes::Bytes;
use reseq_core::{AttributeValue, Attributes, Millis, RawMessage, TRACE_HEADER};

/// A message received by the worker, with what it needs to delete or extend it later.
#[derive(Clone, Debug)]
pub struct Received {
    /// The message for the engine.
    pub raw: RawMessage,
    /// What deletes it, or changes its visibility.
    pub receipt_handle: String,
}

/// Converts a `ReceiveMessage` message. `None` when SQS sent no receipt handle: such a
/// message can be neither deleted nor extended, so it is left to its visibility timeout.
pub fn from_sdk(message: Message, received_at: Millis) -> Option<Received> {
    let receipt_handle = message.receipt_handle?;
    let mut system = message.attributes.unwrap_or_default();
    let group_id = system.remove(&MessageSystemAttributeName::MessageGroupId);
    let receive_count = receive_count(system.get(&MessageSystemAttributeName::ApproximateReceiveCount));
    let trace = system.remove(&MessageSystemAttributeName::AwsTraceHeader);
    let mut attributes: Attributes = message
        .message_attributes
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            let attribute = AttributeValue {
                data_type: value.data_type,
                string: value.string_value,
                binary: value.binary_value.map(|b| Bytes::from(b.into_inner())),
            };
            (name, attribute)
        })
        .collect();
    keep_trace(&mut attributes, trace);
    let raw = RawMessage {
        message_id: message.message_id.unwrap_or_default(),
        body: Bytes::from(message.body.unwrap_or_default()),
        attributes,
        group_id,
        received_at,
        receive_count,
    };
    Some(Received { raw, receipt_handle })
}

/// The system attribute `ApproximateReceiveCount` (1 on the first receive); 0 when absent
/// or not a number.
fn receive_count(value: Option<&String>) -> u32 {
    value.and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Carries the X-Ray trace header with the message's attributes (see [`TRACE_HEADER`]).
fn keep_trace(attributes: &mut Attributes, trace: Option<String>) {
    if let Some(trace) = trace.filter(|t| !t.is_empty()) {
        attributes.insert(TRACE_HEADER.to_string(), AttributeValue::string(trace));
    }
}

/// Converts one record of a Lambda SQS event.
pub fn from_lambda(record: &SqsMessage, received_at: Millis) -> RawMessage {
    let mut attributes: Attributes = record
        .message_attributes
        .iter()
        .map(|(name, value)| {
            let attribute = AttributeValue {
                data_type: value.data_type.clone().unwrap_or_else(|| "String".into()),
                string: value.string_value.clone(),
                binary: value.binary_value.as_ref().map(|b| Bytes::from(b.0.clone())),
            };
            (name.clone(), attribute)
        })
        .collect();
    keep_trace(&mut attributes, record.attributes.get(TRACE_HEADER).cloned());
    RawMessage {
        message_id: record.message_id.clone().unwrap_or_default(),
        body: Bytes::from(record.body.clone().unwrap_or_default()),
        attributes,
        group_id: record.attributes.get("MessageGroupId").cloned(),
        received_at,
        receive_count: receive_count(record.attributes.get("ApproximateReceiveCount")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_header_travels_with_the_attributes_from_either_source() {
        let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let record: SqsMessage = serde_json::from_value(serde_json::json!({
            "messageId": "m-1",
            "body": "x",
            "attributes": {"AWSTraceHeader": trace},
            "messageAttributes": {}
        }))
        .unwrap();
        let raw = from_lambda(&record, Millis(5));
        assert_eq!(raw.attributes[TRACE_HEADER].string.as_deref(), Some(trace));
        let message = Message::builder()
            .message_id("m-2")
            .receipt_handle("r")
            .body("x")
            .attributes(MessageSystemAttributeName::AwsTraceHeader, trace)
            .build();
        let received = from_sdk(message, Millis(5)).unwrap();
        assert_eq!(received.raw.attributes[TRACE_HEADER].string.as_deref(), Some(trace));
        let none = from_sdk(Message::builder().receipt_handle("r").build(), Millis(5)).unwrap();
        assert!(!none.raw.attributes.contains_key(TRACE_HEADER));
    }

    #[test]
    fn a_lambda_record_keeps_id_body_attributes_and_group() {
        let record: SqsMessage = serde_json::from_value(serde_json::json!({
            "messageId": "m-1",
            "receiptHandle": "r",
            "body": "{\"x\":1}",
            "attributes": {"MessageGroupId": "g-7", "ApproximateReceiveCount": "1"},
            "messageAttributes": {
                "contextId": {"stringValue": "order-1", "dataType": "String", "stringListValues": [], "binaryListValues": []},
                "sequence": {"stringValue": "3", "dataType": "Number", "stringListValues": [], "binaryListValues": []}
            },
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:eu-west-1:1:q.fifo",
            "awsRegion": "eu-west-1"
        }))
        .unwrap();
        let raw = from_lambda(&record, Millis(5));
        assert_eq!(raw.message_id, "m-1");
        assert_eq!(&raw.body[..], b"{\"x\":1}");
        assert_eq!(raw.group_id.as_deref(), Some("g-7"));
        assert_eq!(raw.attributes["contextId"].string.as_deref(), Some("order-1"));
        assert_eq!(raw.attributes["sequence"].data_type, "Number");
        assert_eq!(raw.received_at, Millis(5));
        assert_eq!(raw.receive_count, 1);
    }

    #[test]
    fn an_sdk_message_keeps_id_body_attributes_and_group() {
        let message = Message::builder()
            .message_id("m-2")
            .receipt_handle("rh")
            .body("hello")
            .attributes(MessageSystemAttributeName::MessageGroupId, "g")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "4")
            .message_attributes(
                "sequence",
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value("9")
                    .build()
                    .unwrap(),
            )
            .build();
        let received = from_sdk(message, Millis(1)).unwrap();
        assert_eq!(received.receipt_handle, "rh");
        assert_eq!(received.raw.group_id.as_deref(), Some("g"));
        assert_eq!(received.raw.attributes["sequence"].string.as_deref(), Some("9"));
        assert_eq!(received.raw.receive_count, 4);
        let first = Message::builder().receipt_handle("rh").body("x").build();
        assert_eq!(from_sdk(first, Millis(1)).unwrap().raw.receive_count, 0, "absent: 0");
        assert!(from_sdk(Message::builder().body("x").build(), Millis(1)).is_none());
    }
}
