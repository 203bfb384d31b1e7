//! # reseq-core
//!
//! The domain of reseq, a per-key resequencer: messages of a *context* (an order, an
//! account) arrive out of order, twice, late or never, and must reach a handler strictly
//! in order, once, without ever losing one.
//!
//! This crate holds every ordering decision and nothing else: no AWS, no SQLite, no
//! async runtime, no wall clock. It defines
//! - the message model and its extraction from attributes, JSON bodies or FIFO group ids
//!   ([`envelope`], [`extract`]), with the SPEC's reason names ([`Reason`]);
//! - the [`Engine`], which turns batches of envelopes into ordered handler calls;
//! - the seams the engine runs through: [`StagingStore`] (durable staging, one
//!   conditional write per operation), [`Clock`], [`Handler`] and [`DeadLetterSink`];
//! - [`MemoryStore`], the reference store.
//!
//! Adapters (SQLite, DynamoDB, SQS, Lambda, the CLI) live in their own crates and only
//! translate.
//!
//! To run reseq with a handler of your own, implement [`Handler`] (its documentation has
//! a runnable example of the contract on [`MemoryStore`] and [`ManualClock`]) and
//! assemble it with `reseq_settings::Resequencer`.

#![warn(missing_docs)]

pub mod admin;
pub mod engine;
pub mod envelope;
pub mod extract;
#[doc(hidden)]
pub mod fuzzing;
pub mod handler;
pub mod memory;
pub mod reason;
pub mod sequences;
pub mod store;
pub mod testing;
pub mod time;

pub use engine::{Engine, EngineConfig, Hold, LatePolicy, Outcome, PoisonPolicy, Stats};
pub use envelope::{AttributeValue, Attributes, Envelope, RawMessage, TRACE_HEADER};
pub use extract::{Extractor, Rejection};
pub use handler::{DeadLetter, DeadLetterSink, Handler, HandlerError, Release, SinkError};
pub use memory::MemoryStore;
pub use reason::Reason;
pub use store::{
    Attention, AttentionList, AttentionQuery, Commit, CommitOutcome, ContextState, DueQuery, SeqRange, StageOutcome,
    StagedMessage, StagingStore, StoreError, StoreUsage, Waiting,
};
pub use time::{Clock, Duration, ManualClock, Millis, SystemClock};
