//! The deterministic simulation over many seeds (see `reseq_system_tests::sim`): the
//! regression seeds first, then 2,000 seeds in two halves (nextest runs them side by
//! side), a sample run twice to prove that a seed replays exactly, and the broken
//! variants of the engine, each of which must be caught within a few hundred seeds.
//!
//! `RESEQ_SIM_SEEDS=n` changes the number of seeds per half; a failure prints its seed,
//! its configuration, the tail of its trace and the command that replays it.

use reseq_core::engine::Mutation;
use reseq_system_tests::sim::{SimConfig, SimReport, run, run_typed, summary};

/// Seeds that found bugs, each fixed and pinned by a focused test in
/// `reseq-core/tests/engine.rs`: kept so that the bug never comes back.
/// - 69, 77, 100: under `--on-poison skip`, a DLQ that refused the poison message once
///   blocked its context for good (now: retried with backoff).
/// - 1796174106111 (soak): a failed lost-wakeup check whose given-back message never came
///   back (SQS had delivered it twice; the other copy was deleted) stranded the context
///   (now: the next sweep of that process checks again).
/// - 1796174002721, 1796174003718, 1796174013096 (soak): a duplicate of a release whose
///   commit lost its version race was acknowledged (now: held with the release).
/// - 1796180026977 (soak): a worker died between a successful lost-wakeup check and its
///   drain while SQS's other delivery of its message had been deleted: nothing came back
///   (now: a context with messages waiting is swept at least every 15 minutes).
/// - 1796190009688 (soak): a slow lease write let a release start after the release
///   budget, so two workers released one context at once (now: the deadline is checked
///   again once the lease is taken).
const REGRESSION_SEEDS: [u64; 9] = [
    69,
    77,
    100,
    1_796_174_106_111,
    1_796_174_002_721,
    1_796_174_003_718,
    1_796_174_013_096,
    1_796_180_026_977,
    1_796_190_009_688,
];

fn seeds_per_half() -> u64 {
    std::env::var("RESEQ_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn run_seeds(seeds: impl IntoIterator<Item = u64>) -> Vec<SimReport> {
    let mut reports = Vec::new();
    for seed in seeds {
        match run(SimConfig::from_seed(seed, Mutation::None)) {
            Ok(report) => reports.push(report),
            Err(failure) => panic!("{failure}"),
        }
    }
    reports
}

#[test]
fn regression_seeds_pass() {
    run_seeds(REGRESSION_SEEDS);
}

#[test]
fn seeds_first_half_pass() {
    let reports = run_seeds(0..seeds_per_half());
    eprintln!("{}", summary(&reports));
}

#[test]
fn seeds_second_half_pass() {
    let n = seeds_per_half();
    let reports = run_seeds(n..2 * n);
    eprintln!("{}", summary(&reports));
}

#[test]
fn a_seed_replays_exactly() {
    for seed in (0..2000).step_by(97) {
        let first = run(SimConfig::from_seed(seed, Mutation::None)).unwrap_or_else(|f| panic!("{f}"));
        let again = run(SimConfig::from_seed(seed, Mutation::None)).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(first, again, "seed {seed} ran differently the second time");
    }
}

/// The first seed below `within` that catches `mutation`, if any: a failed run, or a
/// run that only the engine's 15-minute net drained (a lost wakeup: with the check
/// removed the net hides the strandings, so the harness looks for its use).
fn caught(mutation: Mutation, within: u64) -> Option<u64> {
    (0..within).find(|seed| !run(SimConfig::from_seed(*seed, mutation)).is_ok_and(|r| !r.needed_the_net()))
}

#[test]
fn the_harness_catches_the_stranding_fixes_reverted() {
    assert!(caught(Mutation::NoStrandingRepair, 300).is_some());
}

#[test]
fn the_harness_catches_the_lost_wakeup_check_removed() {
    assert!(caught(Mutation::NoLostWakeupCheck, 300).is_some());
}

#[test]
fn the_harness_catches_the_cursor_committed_before_the_handler_returns() {
    assert!(caught(Mutation::CommitBeforeHandler, 300).is_some());
}

/// Typed seeds that found bugs: 11, a lease taken over a fresh version kept a stale
/// typed instance, and its commit erased another worker's releases (now: a changed
/// instance counts as a moved cursor).
const TYPED_REGRESSION_SEEDS: [u64; 1] = [11];

/// Typed sequences under the same faults: workers, crashes, skews, a flaky target, store
/// faults, FIFO or standard queues; no type released before its condition, nothing lost.
#[test]
fn typed_seeds_pass() {
    for seed in TYPED_REGRESSION_SEEDS {
        run_typed(SimConfig::from_seed(seed, Mutation::None)).unwrap_or_else(|f| panic!("{f}"));
    }
    let n = seeds_per_half() / 2;
    let first = std::env::var("RESEQ_SIM_FIRST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let reports: Vec<SimReport> = (first..first + n)
        .map(|seed| run_typed(SimConfig::from_seed(seed, Mutation::None)).unwrap_or_else(|f| panic!("{f}")))
        .collect();
    eprintln!("typed: {}", summary(&reports));
}
