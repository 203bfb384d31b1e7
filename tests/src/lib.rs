//! # reseq-system-tests
//!
//! System-level tests: what no single crate can test alone. The library holds the
//! deterministic simulation (`sim`): one `u64` seed drives a workload, simulated SQS queues
//! and a simulated DynamoDB table with their faults, several workers with skewed clocks
//! and crashes, all polled by a single-threaded executor, and the checks of SPEC §4 after
//! every step. The test targets run it over many seeds, and drive the real binaries
//! against the local stand-ins.

pub mod sim;
