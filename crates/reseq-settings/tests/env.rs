//! The builder's and the worker's settings from `RESEQ_*` variables, as `bootstrap` and
//! the examples read them. The environment is process-wide: this file is one test, in
//! order, in a test binary of its own.

use reseq_core::{Duration, Handler, HandlerError, Release};
use reseq_settings::{ReceiveArgs, Resequencer};

struct Noop;

impl Handler for Noop {
    async fn handle(&self, _: &Release<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[test]
fn settings_come_from_reseq_variables_and_a_bad_one_is_named() {
    // SAFETY: this test binary has no other test and no other thread reading them.
    unsafe {
        std::env::remove_var("RESEQ_QUEUE_URL");
        std::env::set_var("RESEQ_TABLE", "orders-reseq");
        std::env::set_var("RESEQ_LEASE_DURATION", "2m");
        std::env::set_var("RESEQ_GAP_TIMEOUT", "30s");
    }
    let err = ReceiveArgs::from_env().unwrap_err();
    assert!(err.contains("RESEQ_QUEUE_URL") && !err.contains('\n'), "{err}");

    unsafe {
        std::env::set_var("RESEQ_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/1/orders.fifo");
        std::env::set_var("RESEQ_EXIT_WHEN_IDLE", "10s");
    }
    let receive = ReceiveArgs::from_env().expect("valid");
    assert_eq!(receive.exit_when_idle, Some(Duration::from_secs(10)));
    assert_eq!(receive.receivers, 4);

    let builder = Resequencer::from_env(Noop).expect("valid");
    let settings = builder.config();
    assert_eq!(settings.sqs.table, "orders-reseq");
    assert_eq!(settings.sqs.handler_timeout(), Duration::from_secs(30));
    assert_eq!(settings.ordering.gap_timeout, Some(Duration::from_secs(30)));

    unsafe { std::env::set_var("RESEQ_RECEIVERS", "0") };
    let err = ReceiveArgs::from_env().unwrap_err();
    assert!(err.contains("RESEQ_RECEIVERS"), "{err}");
    unsafe {
        std::env::remove_var("RESEQ_RECEIVERS");
        std::env::set_var("RESEQ_WAIT_TIME", "30s");
    }
    let err = ReceiveArgs::from_env().unwrap_err();
    assert!(err.contains("RESEQ_WAIT_TIME") && err.contains("20s"), "{err}");

    unsafe { std::env::set_var("RESEQ_MAX_STAGED", "lots") };
    let err = Resequencer::from_env(Noop).err().expect("a bad value");
    assert!(err.contains("RESEQ_MAX_STAGED") && err.contains("lots"), "{err}");
}
