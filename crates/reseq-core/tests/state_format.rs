//! The stored state format: `ContextState` as JSON is what SQLite and DynamoDB hold, so a
//! renamed or retyped field would read every existing row as empty (or fail it). These
//! tests pin the format: a full state serializes to exactly this text, and rows written by
//! earlier versions (fewer fields) still read as what they meant.

use reseq_core::store::{Blocked, ExpiryRetry, Lease, OperatorAction, RetryState, TypedState, TypedWaiting};
use reseq_core::{ContextState, Millis, SeqRange};

fn full() -> ContextState {
    ContextState {
        next: 12,
        last_released: Some(11),
        version: 7,
        skipped: vec![SeqRange { first: 3, last: 4 }],
        retry: Some(RetryState {
            seq: 12,
            attempts: 2,
            not_before: Millis(5_000),
            last_error: "503".into(),
            outage_retries: 1,
        }),
        blocked: Some(Blocked {
            seq: 12,
            attempts: 5,
            error: "400".into(),
            since: Millis(4_000),
        }),
        final_seq: Some(20),
        lease: Some(Lease {
            owner: "worker-a/3".into(),
            until: Millis(9_000),
        }),
        updated_at: Millis(4_500),
        waiting_since: Some(Millis(1_000)),
        due_at: Some(Millis(6_000)),
        expiry_retry: Some(ExpiryRetry {
            attempts: 1,
            not_before: Millis(7_000),
            last_error: "dlq down".into(),
        }),
        pending_skip: Some(15),
        operator_log: vec![OperatorAction {
            action: "skip".into(),
            by: "ops".into(),
            at: Millis(4_600),
            reason: "never sent".into(),
            detail: "positions 12..=14 to be skipped".into(),
        }],
        typed: None,
    }
}

const FULL: &str = r#"{"next":12,"last_released":11,"version":7,"skipped":[{"first":3,"last":4}],"retry":{"seq":12,"attempts":2,"not_before":5000,"last_error":"503","outage_retries":1},"blocked":{"seq":12,"attempts":5,"error":"400","since":4000},"final_seq":20,"lease":{"owner":"worker-a/3","until":9000},"updated_at":4500,"waiting_since":1000,"due_at":6000,"expiry_retry":{"attempts":1,"not_before":7000,"last_error":"dlq down"},"pending_skip":15,"operator_log":[{"action":"skip","by":"ops","at":4600,"reason":"never sent","detail":"positions 12..=14 to be skipped"}]}"#;

#[test]
fn a_full_state_is_stored_as_exactly_this_json() {
    assert_eq!(serde_json::to_string(&full()).unwrap(), FULL);
    assert_eq!(serde_json::from_str::<ContextState>(FULL).unwrap(), full());
}

#[test]
fn a_fresh_state_stores_only_what_it_has() {
    let fresh = ContextState::new(1);
    assert_eq!(
        serde_json::to_string(&fresh).unwrap(),
        r#"{"next":1,"last_released":null,"version":0,"updated_at":0}"#
    );
}

#[test]
fn a_typed_instance_is_stored_as_exactly_this_json() {
    let typed = ContextState {
        next: 0,
        typed: Some(Box::new(TypedState {
            sequence: "order-lifecycle".into(),
            processed: [("OrderCreated".to_string(), 42u64)].into(),
            waiting: vec![TypedWaiting {
                type_key: "OrderShipped".into(),
                seq: 7,
                received_at: Millis(3),
            }],
        })),
        ..ContextState::new(0)
    };
    let json = r#"{"next":0,"last_released":null,"version":0,"updated_at":0,"typed":{"sequence":"order-lifecycle","processed":{"OrderCreated":42},"waiting":[{"type_key":"OrderShipped","seq":7,"received_at":3}]}}"#;
    assert_eq!(serde_json::to_string(&typed).unwrap(), json);
    assert_eq!(serde_json::from_str::<ContextState>(json).unwrap(), typed);
}

/// A row as reseq wrote it before the operator commands (no `pending_skip`, no
/// `operator_log`) and before the outage breaker (no `outage_retries`) reads as it meant.
#[test]
fn rows_of_earlier_versions_still_read() {
    let old = r#"{"next":5,"last_released":4,"version":3,"retry":{"seq":5,"attempts":1,"not_before":10,"last_error":"x"},"updated_at":9,"waiting_since":2,"due_at":10}"#;
    let state: ContextState = serde_json::from_str(old).unwrap();
    assert_eq!((state.next, state.last_released, state.version), (5, Some(4), 3));
    assert_eq!(
        state.retry.as_ref().map(|r| (r.seq, r.attempts, r.outage_retries)),
        Some((5, 1, 0))
    );
    assert_eq!((state.waiting_since, state.due_at), (Some(Millis(2)), Some(Millis(10))));
    assert!(state.pending_skip.is_none() && state.operator_log.is_empty() && state.blocked.is_none());
}
