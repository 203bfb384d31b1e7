//! Every handler call bounded in time (SPEC §3: no release outlives its context's lease).
//!
//! A batch's releases start at most ¾ of the lease into it (`SqsArgs::release_budget`),
//! so a call that ends within the last quarter of the lease ends while the lease is still
//! held. [`Bounded`] wraps any handler with that bound: a call still running when it
//! expires is dropped and becomes [`HandlerError::Retryable`] naming the time (the message
//! stays staged and is retried with backoff). A target that took the message anyway sees
//! the retry as a repeat, which it fences with `(context_id, seq)`.

use std::time::Duration;

use reseq_core::{Handler, HandlerError, Release};

/// A handler whose every call ends within `timeout`.
pub struct Bounded<H> {
    /// The handler whose calls are bounded.
    pub inner: H,
    timeout: Duration,
}

impl<H> Bounded<H> {
    /// `inner`, each call cut after `timeout`.
    pub fn new(inner: H, timeout: Duration) -> Bounded<H> {
        Bounded { inner, timeout }
    }

    /// How long one call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<H: Handler> Handler for Bounded<H> {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        match tokio::time::timeout(self.timeout, self.inner.handle(msg)).await {
            Ok(result) => result,
            Err(_) => {
                let text = format!(
                    "context {:?} position {} (message {}): the handler did not finish within {:?}, the part of the \
                     lease left after the release budget; retried later (a target this slow needs a --lease-duration \
                     of at least 4 times its time)",
                    msg.context_id, msg.seq, msg.message_id, self.timeout
                );
                tracing::warn!("{text}");
                Err(HandlerError::Retryable(text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reseq_core::Attributes;

    struct Never;
    impl Handler for Never {
        async fn handle(&self, _: &Release<'_>) -> Result<(), HandlerError> {
            std::future::pending().await
        }
    }

    struct Fails;
    impl Handler for Fails {
        async fn handle(&self, _: &Release<'_>) -> Result<(), HandlerError> {
            Err(HandlerError::Permanent("no".into()))
        }
    }

    fn release<'a>(body: &'a Bytes, attributes: &'a Attributes) -> Release<'a> {
        Release {
            context_id: "c",
            seq: 3,
            prev_seq: Some(2),
            message_id: "m-3",
            body,
            attributes,
            late: false,
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn a_call_that_never_ends_is_cut_at_the_bound_and_retryable() {
        let (body, attributes) = (Bytes::from_static(b"b"), Attributes::new());
        let bounded = Bounded::new(Never, Duration::from_millis(20));
        match bounded.handle(&release(&body, &attributes)).await {
            Err(HandlerError::Retryable(text)) => {
                assert!(text.contains("20ms") && text.contains("m-3"), "{text}");
            }
            other => panic!("expected a retryable timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_call_within_the_bound_keeps_its_own_result() {
        let (body, attributes) = (Bytes::from_static(b"b"), Attributes::new());
        let bounded = Bounded::new(Fails, Duration::from_secs(60));
        assert_eq!(
            bounded.handle(&release(&body, &attributes)).await,
            Err(HandlerError::Permanent("no".into()))
        );
    }
}
