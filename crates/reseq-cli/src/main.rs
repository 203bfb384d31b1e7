//! # reseq
//!
//! The `reseq` command: `run` (JSON lines in, ordered lines out, on the embedded store),
//! `worker` (the long-polling SQS worker on DynamoDB), `demo` (generated out-of-order
//! traffic, verified), `bench` (throughput) and `init` (the DynamoDB table and, for local
//! use, the SQS queues).
//! Every flag also reads an environment variable `RESEQ_<FLAG>`; a bad flag or value
//! exits with code 2 and one line naming it.

mod admin;
mod bench;
mod demo;
mod init;
mod redrive;
mod run;
mod traffic;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Consume an SQS queue: stage in DynamoDB, release in order to --output, dead-letter to --dlq-url.
    Worker(Box<worker::WorkerArgs>),
    /// Show one context: cursor, waiting positions and gaps, lease, attempts, last error, skipped ranges, next due time.
    Inspect(admin::InspectArgs),
    /// List blocked contexts and contexts waiting longer than --older-than, oldest first (from an index, no scan).
    Stuck(admin::StuckArgs),
    /// Move a context's cursor to --to: the positions before it are skipped (recorded with who, when, why).
    Skip(admin::SkipArgs),
    /// Try a blocked context's message again now, with fresh attempts.
    Retry(admin::RetryArgs),
    /// Move dead letters from the DLQ back to the input queue (group and dedup ids kept).
    Redrive(redrive::RedriveArgs),
    /// List the CloudWatch metrics reseq emits (names, units, dimensions): what alarms may use.
    Metrics(MetricsArgs),
}

#[derive(clap::Args)]
struct MetricsArgs {
    /// Print the catalogue as JSON (what the templates' checks read).
    #[arg(long)]
    json: bool,
    /// The namespace metrics go to.
    #[arg(long, env = "RESEQ_METRICS_NAMESPACE", default_value = reseq_metrics::DEFAULT_NAMESPACE)]
    namespace: String,
}

fn print_metrics(args: MetricsArgs) -> anyhow::Result<ExitCode> {
    if args.json {
        println!("{}", reseq_metrics::catalogue_json(&args.namespace));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "namespace {}, dimension {} (and {} + {} where marked *)",
        args.namespace,
        reseq_metrics::SERVICE,
        reseq_metrics::SERVICE,
        reseq_metrics::REASON
    );
    for m in reseq_metrics::CATALOGUE {
        let mark = if m.by_reason { "*" } else { " " };
        println!(
            "{:<20}{mark} {:<9} {:<12} {}",
            m.name,
            format!("{:?}", m.kind).to_lowercase(),
            m.unit,
            m.description
        );
    }
    Ok(ExitCode::SUCCESS)
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
        Command::Worker(args) => {
            init_logs(args.log_format);
            worker::main(*args)
        }
        Command::Metrics(args) => print_metrics(args),
        Command::Inspect(args) => admin::inspect(args),
        Command::Stuck(args) => admin::stuck(args),
        Command::Skip(args) => admin::skip(args),
        Command::Retry(args) => admin::retry(args),
        Command::Redrive(args) => redrive::main(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("reseq: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, as text or JSON lines; `RUST_LOG` filters them (default: reseq's
/// own at info, others at warn).
fn init_logs(format: worker::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,reseq=info,reseq_sqs=info,reseq_core=info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        worker::LogFormat::Text => logs.init(),
        worker::LogFormat::Json => logs.json().flatten_event(true).init(),
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
    if err.kind() == ErrorKind::MissingRequiredArgument {
        use clap::error::{ContextKind, ContextValue};
        let missing: Vec<String> = match err.get(ContextKind::InvalidArg) {
            Some(ContextValue::Strings(args)) => args.clone(),
            Some(ContextValue::String(arg)) => vec![arg.clone()],
            _ => Vec::new(),
        };
        if !missing.is_empty() {
            let named: Vec<String> = missing
                .iter()
                .map(|arg| {
                    let flag = arg.split_whitespace().next().unwrap_or(arg);
                    let env = format!(
                        "RESEQ_{}",
                        flag.trim_start_matches('-').replace('-', "_").to_uppercase()
                    );
                    format!("'{arg}' (or {env})")
                })
                .collect();
            eprintln!("reseq: missing required {} (see reseq --help)", named.join(", "));
            return ExitCode::from(2);
        }
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
