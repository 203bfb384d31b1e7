//! The operator commands (SPEC §6): `reseq inspect`, `stuck`, `skip`, `retry`, on the
//! DynamoDB table (`--table`) or an embedded state file (`--state`). Human output by
//! default, `--json` for scripts. `skip` and `retry` only record a request in the
//! context's state (`reseq_core::admin`): the workers' next sweep carries it out.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use reseq_core::admin::{self, AdminError, ContextReport, Operator, Requested};
use reseq_core::{AttentionList, Clock, Duration, Millis, StagingStore, SystemClock};
use reseq_settings::check_table_name;

/// Which store to read: the DynamoDB table, or an embedded state file.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// The DynamoDB staging table (ignored with --state).
    #[arg(long, env = "RESEQ_TABLE", default_value = "reseq", value_name = "NAME")]
    pub table: String,
    /// An embedded SQLite state file (as `reseq run --state` writes) instead of the table.
    #[arg(long, env = "RESEQ_STATE", value_name = "FILE")]
    pub state: Option<std::path::PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone, Debug)]
pub struct InspectArgs {
    /// The context id.
    pub context: String,
    /// List at most this many waiting positions.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: usize,
    /// The sequence file of a typed instance: shows what each waiting type waits for.
    #[arg(long, env = "RESEQ_SEQUENCES", value_name = "FILE")]
    pub sequences: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Clone, Debug)]
pub struct StuckArgs {
    /// List contexts whose oldest message has waited at least this long (blocked ones always).
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub older_than: Duration,
    /// At most this many of each kind.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Clone, Debug)]
pub struct SkipArgs {
    /// The context id.
    pub context: String,
    /// The position the cursor moves to: every position before it is skipped (waiting messages there follow --late).
    #[arg(long, value_name = "SEQ")]
    pub to: u64,
    #[command(flatten)]
    pub operator: OperatorArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Clone, Debug)]
pub struct RetryArgs {
    /// The context id.
    pub context: String,
    #[command(flatten)]
    pub operator: OperatorArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Clone, Debug)]
pub struct OperatorArgs {
    /// Why (recorded in the context's state).
    #[arg(long, default_value = "", value_name = "TEXT")]
    pub reason: String,
    /// Who (recorded in the context's state). Default: $USER.
    #[arg(long, env = "RESEQ_OPERATOR", value_name = "NAME")]
    pub by: Option<String>,
}

impl OperatorArgs {
    fn operator(&self) -> Operator {
        Operator {
            by: self
                .by
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".into()),
            reason: self.reason.clone(),
        }
    }
}

/// Runs `f` on the store `args` names.
fn on_store<T>(args: &StoreArgs, f: impl AsyncStoreFn<T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match &args.state {
            Some(path) => {
                let store =
                    reseq_sqlite::SqliteStore::open(path).with_context(|| format!("--state {}", path.display()))?;
                f.call(&store).await
            }
            None => {
                check_table_name(&args.table).map_err(anyhow::Error::msg)?;
                let store = reseq_dynamodb::connect(&args.table, reseq_dynamodb::DynamoConfig::default())
                    .await
                    .context("--table")?;
                f.call(&store).await
            }
        }
    })
}

/// An async function over any store (closures cannot be generic over the store type).
trait AsyncStoreFn<T> {
    async fn call<S: StagingStore>(&self, store: &S) -> Result<T>;
}

struct Inspect<'a>(&'a InspectArgs);
impl AsyncStoreFn<Option<ContextReport>> for Inspect<'_> {
    async fn call<S: StagingStore>(&self, store: &S) -> Result<Option<ContextReport>> {
        Ok(admin::inspect(store, &self.0.context, self.0.limit).await?)
    }
}

struct Stuck<'a>(&'a StuckArgs);
impl AsyncStoreFn<AttentionList> for Stuck<'_> {
    async fn call<S: StagingStore>(&self, store: &S) -> Result<AttentionList> {
        Ok(admin::stuck(store, SystemClock.now(), self.0.older_than, self.0.limit).await?)
    }
}

enum Request<'a> {
    Skip(&'a SkipArgs),
    Retry(&'a RetryArgs),
}

impl AsyncStoreFn<Result<Requested, AdminError>> for Request<'_> {
    /// A context leased by a worker is tried again for up to a minute (the lease is
    /// given back at the end of the worker's batch).
    async fn call<S: StagingStore>(&self, store: &S) -> Result<Result<Requested, AdminError>> {
        let started = std::time::Instant::now();
        loop {
            let now = SystemClock.now();
            let result = match self {
                Request::Skip(a) => admin::request_skip(store, &a.context, a.to, &a.operator.operator(), now).await,
                Request::Retry(a) => admin::request_retry(store, &a.context, &a.operator.operator(), now).await,
            };
            match result {
                Err(AdminError::Leased { .. } | AdminError::Raced(_)) if started.elapsed().as_secs() < 60 => {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                other => return Ok(other),
            }
        }
    }
}

pub fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let report = on_store(&args.store, Inspect(&args))?;
    let Some(report) = report else {
        eprintln!(
            "reseq: context {:?} is not in the store (never seen, or expired after the retention)",
            args.context
        );
        return Ok(ExitCode::from(1));
    };
    if args.store.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemClock.now();
    let s = &report.state;
    println!("context       {}", report.context_id);
    if let Some(typed) = &s.typed {
        print_typed(typed, args.sequences.as_deref())?;
    }
    let last = s.last_released.map_or("none".to_string(), |l| l.to_string());
    if s.typed.is_none() {
        println!("cursor        next {}, last released {last}", s.next);
    }
    if s.typed.is_none() {
        match report.waiting.oldest_received_at {
            Some(oldest) => println!(
                "waiting       {} message(s), the oldest since {}: positions {}{}",
                report.waiting.count,
                when(oldest, now),
                list(&report.waiting_positions),
                if (report.waiting_positions.len() as u64) < report.waiting.count {
                    ", …"
                } else {
                    ""
                }
            ),
            None => println!("waiting       nothing"),
        }
    }
    if !report.gaps.is_empty() && s.typed.is_none() {
        let gaps: Vec<String> = report.gaps.iter().map(|g| range(g.first, g.last)).collect();
        println!("waits for     {}", gaps.join(", "));
    }
    if let Some(b) = &s.blocked {
        println!(
            "BLOCKED       at {} since {} after {} attempt(s): {}",
            b.seq,
            when(b.since, now),
            b.attempts,
            b.error
        );
        println!(
            "              reseq retry {0:?} | reseq skip {0:?} --to {1}",
            report.context_id,
            b.seq + 1
        );
    }
    if let Some(r) = &s.retry {
        println!(
            "retrying      {} after {} attempt(s), next try {}: {}",
            r.seq,
            r.attempts,
            when(r.not_before, now),
            r.last_error
        );
    }
    if let Some(to) = s.pending_skip {
        println!("skip asked    to {to}: the next sweep of a worker carries it out");
    }
    if let Some(l) = s.lease.as_ref().filter(|l| now < l.until) {
        println!("lease         held by {} until {}", l.owner, when(l.until, now));
    }
    if !s.skipped.is_empty() {
        let skipped: Vec<String> = s.skipped.iter().map(|r| range(r.first, r.last)).collect();
        println!("skipped       {}", skipped.join(", "));
    }
    if let Some(f) = s.final_seq {
        println!("closed        at its final position {f}");
    }
    if let Some(due) = s.due_at {
        println!("next due      {}", when(due, now));
    }
    println!("updated       {}", when(s.updated_at, now));
    for a in &s.operator_log {
        let why = if a.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", a.reason)
        };
        println!(
            "operator      {} {} by {}{why}: {}",
            when(a.at, now),
            a.action,
            a.by,
            a.detail
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stuck(args: StuckArgs) -> Result<ExitCode> {
    let found = on_store(&args.store, Stuck(&args))?;
    if args.store.json {
        let entry = |kind: &str, (context, since): &(String, Millis)| serde_json::json!({"context_id": context, "kind": kind, "since": since.0});
        let all: Vec<serde_json::Value> = found
            .blocked
            .iter()
            .map(|e| entry("blocked", e))
            .chain(found.waiting.iter().map(|e| entry("waiting", e)))
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemClock.now();
    if found.blocked.is_empty() && found.waiting.is_empty() {
        println!("nothing blocked, nothing waiting longer than {}", args.older_than);
    }
    for (context, since) in &found.blocked {
        println!("BLOCKED  {context}  since {}", when(*since, now));
    }
    for (context, since) in &found.waiting {
        println!("WAITING  {context}  the oldest message since {}", when(*since, now));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn skip(args: SkipArgs) -> Result<ExitCode> {
    let result = on_store(&args.store, Request::Skip(&args))?;
    report_request(result, args.store.json)
}

pub fn retry(args: RetryArgs) -> Result<ExitCode> {
    let result = on_store(&args.store, Request::Retry(&args))?;
    report_request(result, args.store.json)
}

/// A typed instance (SPEC §5): processed types, and each waiting type with what it
/// waits for (read from the sequence file, when given).
fn print_typed(typed: &reseq_core::store::TypedState, file: Option<&std::path::Path>) -> Result<()> {
    let sequences = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("--sequences {}", path.display()))?;
            Some(reseq_core::sequences::load(&path.display().to_string(), &text).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let sequence = sequences
        .as_ref()
        .and_then(|f| f.sequences.iter().find(|s| s.name == typed.sequence));
    println!("sequence      {}", typed.sequence);
    let processed: Vec<&str> = typed.processed.keys().map(String::as_str).collect();
    println!(
        "processed     {}",
        if processed.is_empty() {
            "nothing".to_string()
        } else {
            processed.join(", ")
        }
    );
    let done = |key: &str| typed.processed.contains_key(key);
    for waiting in &typed.waiting {
        let why = sequence
            .and_then(|s| s.message(&waiting.type_key))
            .and_then(|m| m.waiting_for(&done))
            .map_or_else(
                || "(give --sequences FILE to see its condition)".to_string(),
                |c| format!("waits for {c}"),
            );
        println!("waiting       {} {why}", waiting.type_key);
    }
    if let Some(s) = sequence.filter(|s| s.is_complete(&done)) {
        println!("closed        every type of {} was processed", s.name);
    }
    Ok(())
}

fn report_request(result: Result<Requested, AdminError>, json: bool) -> Result<ExitCode> {
    match result {
        Ok(done) if json => println!("{}", serde_json::to_string_pretty(&done)?),
        Ok(done) => println!(
            "context {}: {} recorded ({}); the next sweep of a worker carries it out",
            done.context_id, done.action.action, done.action.detail
        ),
        Err(AdminError::Store(err)) => return Err(err.into()),
        Err(err) => {
            eprintln!("reseq: {err}");
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(seqs: &[u64]) -> String {
    seqs.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

fn range(first: u64, last: u64) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}..={last}")
    }
}

/// A time as UTC and relative to now, e.g. `2026-12-06T15:04:05Z (12m ago)`.
fn when(t: Millis, now: Millis) -> String {
    let relative = if t <= now {
        format!("{} ago", now.since(t))
    } else {
        format!("in {}", t.since(now))
    };
    format!("{} ({relative})", utc(t))
}

/// Epoch milliseconds as an RFC 3339 UTC time (days to civil date: Howard Hinnant's
/// algorithm).
fn utc(t: Millis) -> String {
    let secs = t.0 / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_epoch_milliseconds() {
        assert_eq!(utc(Millis(0)), "1970-01-01T00:00:00Z");
        assert_eq!(utc(Millis(1_796_569_445_000)), "2026-12-06T15:04:05Z");
        assert_eq!(utc(Millis(951_782_400_000)), "2000-02-29T00:00:00Z");
    }
}
