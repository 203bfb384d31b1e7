//! # reseq
//!
//! The `reseq` command. Today: `run` (JSON lines in, ordered lines out, on the embedded
//! store), `demo` (generated out-of-order traffic, verified), `bench` (throughput) and
//! `init` (the DynamoDB table and, for local use, the SQS queues).
//! Every flag also reads an environment variable `RESEQ_<FLAG>`; a bad flag or value
//! exits with code 2 and one line naming it.

mod bench;
mod demo;
mod init;
mod run;
mod traffic;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use reseq_core::{Duration, EngineConfig, LatePolicy};

#[derive(Parser)]
#[command(
    name = "reseq",
    version,
    about = "Per-key resequencing: out-of-order messages in, ordered messages out."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Order JSON lines from stdin (or --input) per context and print each released line.
    Run(run::RunArgs),
    /// Generate shuffled, duplicated, gappy traffic, run it through the engine and verify the order.
    Demo(demo::DemoArgs),
    /// Measure engine and `reseq run` throughput on generated traffic.
    Bench(bench::BenchArgs),
    /// Create the DynamoDB table (and with --with-queues the SQS queues); idempotent.
    Init(init::InitArgs),
}

/// The ordering flags shared by every command that runs the engine.
#[derive(Args, Clone, Debug)]
pub struct OrderingArgs {
    /// The first position of every context.
    #[arg(long, env = "RESEQ_FIRST_SEQ", default_value_t = 1, value_name = "N")]
    pub first_seq: u64,
    /// Skip missing positions once the oldest waiting message has waited this long (e.g. 30s). Default: wait forever.
    #[arg(long, env = "RESEQ_GAP_TIMEOUT", value_name = "DURATION")]
    pub gap_timeout: Option<Duration>,
    /// What to do with a message whose position was skipped: dlq, drop or deliver.
    #[arg(long, env = "RESEQ_LATE", default_value = "dlq", value_name = "POLICY")]
    pub late: LatePolicy,
    /// Most messages one context may hold waiting; beyond that, out-of-order messages are held back.
    #[arg(long, env = "RESEQ_MAX_STAGED", default_value_t = 10_000, value_name = "N")]
    pub max_staged: u64,
    /// How long records are kept: waiting messages older than this go to the DLQ (expired).
    #[arg(long, env = "RESEQ_RETENTION", default_value = "14d", value_name = "DURATION")]
    pub retention: Duration,
}

impl OrderingArgs {
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            first_seq: self.first_seq,
            gap_timeout: self.gap_timeout,
            late: self.late,
            max_staged: self.max_staged,
            retention: self.retention,
            ..EngineConfig::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    let result = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Demo(args) => demo::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Init(args) => init::main(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("reseq: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout with code 0; anything else is one line and code 2.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = err.print();
        return ExitCode::from(2);
    }
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let line = first.trim_start_matches("error: ");
    eprintln!("reseq: {line} (see reseq --help)");
    ExitCode::from(2)
}
