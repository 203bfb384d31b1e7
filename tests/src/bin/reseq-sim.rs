//! Runs the deterministic simulation from the command line: one seed to replay a failure,
//! a range of seeds, or fresh seeds until a time is up (what `scripts/soak.sh` runs).
//!
//! ```text
//! reseq-sim --seed 42 [--mutation NoLostWakeupCheck]
//! reseq-sim --from 0 --count 2000
//! reseq-sim --for 600s [--from 1000000]
//! ```
//! Exit code 1 if any seed failed; every failure is printed with its replay command.

use std::process::ExitCode;
use std::time::Instant;

use reseq_core::engine::Mutation;
use reseq_system_tests::sim::{SimConfig, run, summary};

fn main() -> ExitCode {
    if std::env::var_os("RESEQ_SIM_LOG").is_some() {
        // The engine's decision logs, for reading a failing seed's story.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number =
        |flag: &str| value(flag).map(|v| v.parse::<u64>().unwrap_or_else(|e| usage(&format!("{flag} {v}: {e}"))));
    let mutation = match value("--mutation").as_deref() {
        None | Some("None") => Mutation::None,
        Some("NoStrandingRepair") => Mutation::NoStrandingRepair,
        Some("NoLostWakeupCheck") => Mutation::NoLostWakeupCheck,
        Some("CommitBeforeHandler") => Mutation::CommitBeforeHandler,
        Some(other) => usage(&format!(
            "--mutation {other}: use NoStrandingRepair, NoLostWakeupCheck or CommitBeforeHandler"
        )),
    };
    let duration = value("--for").map(|v| {
        v.parse::<reseq_core::Duration>()
            .unwrap_or_else(|e| usage(&format!("--for {v}: {e}")))
            .as_std()
    });
    let (from, count) = match (number("--seed"), number("--from"), number("--count")) {
        (Some(seed), _, _) => (seed, 1),
        (None, from, count) => (
            from.unwrap_or(0),
            count.unwrap_or(if duration.is_some() { u64::MAX } else { 1000 }),
        ),
    };
    let started = Instant::now();
    let mut reports = Vec::new();
    let mut failed = 0u64;
    for seed in from..from.saturating_add(count) {
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        match run(SimConfig::from_seed(seed, mutation)) {
            Ok(report) => reports.push(report),
            Err(failure) => {
                failed += 1;
                eprintln!("{failure}\n");
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} ({failed} failed) in {seconds:.1} s: {:.0} seeds/s",
        summary(&reports),
        (reports.len() as u64 + failed) as f64 / seconds.max(1e-9)
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn usage(problem: &str) -> ! {
    eprintln!("reseq-sim: {problem}");
    eprintln!("usage: reseq-sim --seed N | [--from N] [--count N] [--for DURATION] [--mutation NAME]");
    std::process::exit(2)
}
