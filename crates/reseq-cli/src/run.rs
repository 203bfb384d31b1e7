//! `reseq run`: JSON lines in, each released line out byte for byte, in order per context
//! (SPEC §6). The input is the queue: a line is "acknowledged" once its outcome is settled
//! and the state (if any) is flushed; rejected lines go to the `--dlq` file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use reseq_core::{
    Clock, DeadLetter, DeadLetterSink, Engine, Envelope, Extractor, Handler, HandlerError, Hold, MemoryStore, Outcome,
    RawMessage, Reason, Release, SinkError, StagingStore, Stats, SystemClock,
};
use reseq_sqlite::SqliteStore;
use serde_json::json;

use crate::OrderingArgs;

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Read JSON lines from this file instead of stdin.
    #[arg(long, env = "RESEQ_INPUT", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Keep staged messages and cursors in this SQLite file, so that a later run resumes. Default: in memory.
    #[arg(long, env = "RESEQ_STATE", value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Append rejected lines (invalid, conflict, late) here, one JSON object each. Default: stderr.
    #[arg(long, env = "RESEQ_DLQ", value_name = "FILE")]
    pub dlq: Option<PathBuf>,
    /// JSON Pointer to the context id in each line.
    #[arg(long, env = "RESEQ_CONTEXT_PATH", default_value = "/contextId", value_name = "POINTER")]
    pub context_path: String,
    /// JSON Pointer to the position in each line (a number or a string of digits).
    #[arg(long, env = "RESEQ_SEQ_PATH", default_value = "/sequence", value_name = "POINTER")]
    pub seq_path: String,
    /// JSON Pointer to a boolean that marks the last message of a context. Default: none.
    #[arg(long, env = "RESEQ_FINAL_PATH", value_name = "POINTER")]
    pub final_path: Option<String>,
    #[command(flatten)]
    pub ordering: OrderingArgs,
}

/// Most lines handed to the engine at once. Larger batches share more state writes;
/// smaller ones show output sooner. The reader never waits to fill a batch.
const BATCH_LINES: usize = 4096;
/// How often timers (gap timeouts, retries, retention) are swept while input flows.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

pub fn main(args: RunArgs) -> Result<ExitCode> {
    for (flag, pointer) in [("--context-path", &args.context_path), ("--seq-path", &args.seq_path)] {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            eprintln!("reseq: invalid value '{pointer}' for '{flag}': a JSON Pointer starts with '/', e.g. /orderId");
            return Ok(ExitCode::from(2));
        }
    }
    let input: Box<dyn BufRead + Send> = match &args.input {
        Some(path) => Box::new(BufReader::with_capacity(
            1 << 20,
            File::open(path).with_context(|| format!("cannot read --input {}", path.display()))?,
        )),
        None => Box::new(BufReader::with_capacity(1 << 20, io::stdin())),
    };
    let dlq = DlqFile::open(args.dlq.as_deref())?;
    let stdout = io::stdout();
    let report = match &args.state {
        Some(path) => {
            let store = SqliteStore::open(path)
                .with_context(|| format!("cannot open --state {}", path.display()))?;
            execute(&args, store, input, stdout, &dlq)?
        }
        None => execute(&args, MemoryStore::new(), input, stdout, &dlq)?,
    };
    eprintln!("{}", report.summary(args.state.is_some()));
    if let Some(err) = report.input_error {
        eprintln!("reseq: stopped reading input: {err}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What one run did, for the summary line.
#[derive(Debug, Default)]
pub struct RunReport {
    pub lines: u64,
    pub rejected: u64,
    pub stats: Stats,
    pub waiting_in_memory: Option<u64>,
    pub input_error: Option<String>,
    pub seconds: f64,
}

impl RunReport {
    fn summary(&self, durable: bool) -> String {
        let s = &self.stats;
        let mut line = format!(
            "reseq run: {} lines in {:.2}s: {} released, {} staged, {} duplicates, {} rejected \
             ({} conflicts, {} late), {} gaps skipped ({} positions)",
            self.lines,
            self.seconds,
            s.released,
            s.staged,
            s.duplicates,
            self.rejected,
            s.conflicts,
            s.late,
            s.gaps_skipped,
            s.positions_skipped
        );
        match (durable, self.waiting_in_memory) {
            (false, Some(n)) if n > 0 => {
                line.push_str(&format!("; {n} messages still wait and are not kept (use --state FILE to keep them)"))
            }
            _ => {}
        }
        line
    }
}

/// One input line, read by the reader thread.
enum Line {
    Text { number: u64, bytes: Vec<u8> },
    Error(String),
}

/// Runs the pipeline: reads `input`, writes released lines to `output`, rejected ones to
/// `dlq`. Shared by `reseq run` and `reseq bench`.
pub fn execute<S: StagingStore + 'static>(
    args: &RunArgs,
    store: S,
    input: Box<dyn BufRead + Send>,
    output: impl Write + Send,
    dlq: &DlqFile,
) -> Result<RunReport> {
    let started = Instant::now();
    let extractor = Extractor {
        final_path: args.final_path.clone(),
        ..Extractor::for_json_lines(&args.context_path, &args.seq_path)
    };
    let engine = Engine::new(store, SystemClock, args.ordering.engine_config());
    let handler = LineWriter { out: Mutex::new(BufWriter::with_capacity(1 << 20, output)), error: Mutex::new(None) };
    let runtime = tokio::runtime::Builder::new_current_thread().build().context("cannot start the async runtime")?;

    let (lines_tx, lines_rx) = mpsc::sync_channel::<Line>(BATCH_LINES * 4);
    let reader = std::thread::spawn(move || read_lines(input, lines_tx));

    let mut report = RunReport::default();
    // Lines held back by a full context, offered again with each batch.
    let mut held: Vec<Envelope> = Vec::new();
    let mut last_sweep = Instant::now();
    loop {
        let mut batch: Vec<Envelope> = std::mem::take(&mut held);
        let mut ended = false;
        // Wait for one line (at most a second, so that timers still fire on a quiet
        // input), then take whatever else is already there.
        let mut next = match lines_rx.recv_timeout(SWEEP_EVERY) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                ended = true;
                None
            }
        };
        while let Some(line) = next.take() {
            match line {
                Line::Error(err) => {
                    report.input_error = Some(err);
                    ended = true;
                }
                Line::Text { number, bytes } => {
                    report.lines += 1;
                    let body = Bytes::from(bytes);
                    let raw = RawMessage {
                        message_id: number.to_string(),
                        body: body.clone(),
                        received_at: SystemClock.now(),
                        ..RawMessage::default()
                    };
                    match extractor.extract(raw) {
                        Ok(env) => batch.push(env),
                        Err(rejection) => {
                            report.rejected += 1;
                            dlq.buffer(number, rejection.reason, &rejection.detail, &body);
                        }
                    }
                }
            }
            if ended || batch.len() >= BATCH_LINES {
                break;
            }
            next = match lines_rx.try_recv() {
                Ok(line) => Some(line),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => {
                    ended = true;
                    None
                }
            };
        }
        runtime.block_on(async {
            let outcomes = engine.process(batch.clone(), &handler, dlq).await;
            settle(batch, outcomes, &mut held)?;
            if ended || last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                sweep_all(&engine, &handler, dlq).await?;
            }
            commit_batch(&engine, &handler, dlq).await
        })?;
        if ended {
            break;
        }
    }
    // The input ended: offer held lines until the contexts they wait on stop moving.
    runtime.block_on(async {
        while !held.is_empty() {
            let before = held.len();
            let batch = std::mem::take(&mut held);
            let outcomes = engine.process(batch.clone(), &handler, dlq).await;
            settle(batch, outcomes, &mut held)?;
            if held.len() == before {
                break;
            }
        }
        for env in held.drain(..) {
            report.rejected += 1;
            let detail = format!(
                "context {} already holds --max-staged {} waiting messages",
                env.context_id, args.ordering.max_staged
            );
            dlq.buffer(line_number(&env.message_id), Reason::MaxStaged, &detail, &env.body);
        }
        commit_batch(&engine, &handler, dlq).await
    })?;
    drop(lines_rx);
    let _ = reader.join();
    report.stats = engine.stats();
    report.rejected += report.stats.dead_lettered;
    report.waiting_in_memory = waiting_in_memory(engine.store());
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Makes a batch's effects durable in the order that keeps the guarantees: released
/// lines reach stdout before the state records them as released, and rejected lines reach
/// the DLQ file before the state forgets them.
async fn commit_batch<S: StagingStore, W: Write + Send>(
    engine: &Engine<S, SystemClock>,
    handler: &LineWriter<W>,
    dlq: &DlqFile,
) -> Result<()> {
    handler.flush()?;
    dlq.flush()?;
    engine.store().flush().await.context("cannot save the state")
}

fn waiting_in_memory<S: 'static>(store: &S) -> Option<u64> {
    (store as &dyn std::any::Any).downcast_ref::<MemoryStore>().map(MemoryStore::waiting_total)
}

/// Sorts outcomes into "done" and "offer again later"; a failure of the store or the
/// dead-letter file stops the run (nothing is acknowledged past it).
fn settle(batch: Vec<Envelope>, outcomes: Vec<Outcome>, held: &mut Vec<Envelope>) -> Result<()> {
    for (env, outcome) in batch.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Held(Hold::Capacity) => held.push(env),
            Outcome::Held(Hold::Busy) => held.push(env),
            Outcome::Held(Hold::Failed(err)) => {
                anyhow::bail!("line {} (context {}) could not be processed: {err}", env.message_id, env.context_id)
            }
            _ => {}
        }
    }
    Ok(())
}

async fn sweep_all<S: StagingStore, H: Handler, D: DeadLetterSink>(engine: &Engine<S, SystemClock>, handler: &H, dlq: &D) -> Result<()> {
    const LIMIT: usize = 1000;
    loop {
        let swept = engine.sweep(handler, dlq, LIMIT).await.context("cannot sweep the state for timers")?;
        if swept < LIMIT {
            return Ok(());
        }
    }
}

fn read_lines(mut input: Box<dyn BufRead + Send>, tx: mpsc::SyncSender<Line>) {
    let mut number = 0u64;
    loop {
        let mut bytes = Vec::new();
        match input.read_until(b'\n', &mut bytes) {
            Ok(0) => return,
            Ok(_) => {
                number += 1;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                }
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if tx.send(Line::Text { number, bytes }).is_err() {
                    return;
                }
            }
            Err(err) => {
                let _ = tx.send(Line::Error(format!("after line {number}: {err}")));
                return;
            }
        }
    }
}

fn line_number(message_id: &str) -> u64 {
    message_id.parse().unwrap_or(0)
}

/// The handler of `reseq run`: each released line, as it came in, plus a newline.
struct LineWriter<W: Write> {
    out: Mutex<BufWriter<W>>,
    error: Mutex<Option<io::Error>>,
}

impl<W: Write + Send> LineWriter<W> {
    fn flush(&self) -> Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(err) = self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(err).context("cannot write to stdout");
        }
        out.flush().context("cannot write to stdout")
    }
}

impl<W: Write + Send> Handler for LineWriter<W> {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let written = out.write_all(msg.body).and_then(|()| out.write_all(b"\n"));
        written.map_err(|err| {
            let text = err.to_string();
            *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
            HandlerError::Retryable(format!("cannot write to stdout: {text}"))
        })
    }
}

/// `--dlq FILE` (or stderr): one JSON object per rejected line, in input order per batch.
pub struct DlqFile {
    out: Mutex<Box<dyn Write + Send>>,
    pending: Mutex<Vec<(u64, String)>>,
}

impl DlqFile {
    pub fn open(path: Option<&std::path::Path>) -> Result<DlqFile> {
        let out: Box<dyn Write + Send> = match path {
            Some(path) => Box::new(BufWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open --dlq {} for appending", path.display()))?,
            )),
            None => Box::new(io::stderr()),
        };
        Ok(DlqFile { out: Mutex::new(out), pending: Mutex::new(Vec::new()) })
    }

    pub fn sink() -> DlqFile {
        DlqFile { out: Mutex::new(Box::new(io::sink())), pending: Mutex::new(Vec::new()) }
    }

    fn buffer(&self, line: u64, reason: Reason, detail: &str, input: &[u8]) {
        let record = json!({
            "reason": reason.as_str(),
            "detail": detail,
            "line": line,
            "input": String::from_utf8_lossy(input),
        });
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).push((line, record.to_string()));
    }

    /// Writes what was buffered, in input order, and makes it durable.
    fn flush(&self) -> Result<()> {
        let mut pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        pending.sort_by_key(|(line, _)| *line);
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        for (_, record) in pending {
            writeln!(out, "{record}").context("cannot write the --dlq file")?;
        }
        out.flush().context("cannot write the --dlq file")
    }
}

impl DeadLetterSink for DlqFile {
    async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<(), SinkError> {
        self.buffer(line_number(letter.message_id), letter.reason, letter.detail, letter.body);
        Ok(())
    }
}
