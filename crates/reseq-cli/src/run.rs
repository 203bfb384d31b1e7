//! `reseq run`: JSON lines in, each released line out byte for byte, in order per context
//! (SPEC §6). The input is the queue: a line is "acknowledged" once its outcome is settled
//! and the state (if any) is flushed; rejected lines go to the `--dlq` file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
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

use reseq_settings::OrderingArgs;

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
    #[arg(
        long,
        env = "RESEQ_CONTEXT_PATH",
        default_value = "/contextId",
        value_name = "POINTER"
    )]
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
/// The state file is saved at least this often, and after this many lines: each save
/// writes every page the lines touched, so saving per batch would rewrite the same pages
/// many times. A crash repeats at most the lines since the last save (at least once).
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const SAVE_AFTER_LINES: u64 = 100_000;

pub fn main(args: RunArgs) -> Result<ExitCode> {
    for (flag, pointer) in [("--context-path", &args.context_path), ("--seq-path", &args.seq_path)] {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            eprintln!("reseq: invalid value '{pointer}' for '{flag}': a JSON Pointer starts with '/', e.g. /orderId");
            return Ok(ExitCode::from(2));
        }
    }
    let input: Box<dyn Read + Send> = match &args.input {
        Some(path) => Box::new(File::open(path).with_context(|| format!("cannot read --input {}", path.display()))?),
        None => Box::new(io::stdin()),
    };
    let dlq = DlqFile::open(args.dlq.as_deref())?;
    let stdout = io::stdout();
    let report = match &args.state {
        Some(path) => {
            let store = SqliteStore::open(path).with_context(|| format!("cannot open --state {}", path.display()))?;
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
            (false, Some(n)) if n > 0 => line.push_str(&format!(
                "; {n} messages still wait and are not kept (use --state FILE to keep them)"
            )),
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
    input: Box<dyn Read + Send>,
    output: impl Write + Send,
    dlq: &DlqFile,
) -> Result<RunReport> {
    let started = Instant::now();
    let extractor = Extractor {
        final_path: args.final_path.clone(),
        ..Extractor::for_json_lines(&args.context_path, &args.seq_path)
    };
    let engine = Engine::new(store, SystemClock, args.ordering.engine_config());
    let handler = LineWriter {
        out: Mutex::new(BufWriter::with_capacity(1 << 20, output)),
        error: Mutex::new(None),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;

    let (lines_tx, lines_rx) = mpsc::sync_channel::<Vec<Line>>(16);
    let reader = std::thread::spawn(move || read_lines(input, lines_tx));

    let mut report = RunReport::default();
    // Lines held back because their position is too far ahead (--max-staged), offered
    // again with each batch.
    let mut held: Vec<Source> = Vec::new();
    let mut last_sweep = Instant::now();
    let mut last_save = (Instant::now(), 0u64);
    let mut ended = false;
    while !ended {
        let mut sources: Vec<Source> = std::mem::take(&mut held);
        // Wait for lines (at most a second, so that timers still fire on a quiet input),
        // then take whatever else is already there.
        let mut next = match lines_rx.recv_timeout(SWEEP_EVERY) {
            Ok(lines) => Some(lines),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                ended = true;
                None
            }
        };
        while let Some(lines) = next.take() {
            for line in lines {
                match line {
                    Line::Error(err) => {
                        report.input_error = Some(err);
                        ended = true;
                    }
                    Line::Text { number, bytes } => {
                        report.lines += 1;
                        sources.push(Source {
                            number,
                            body: Bytes::from(bytes),
                        });
                    }
                }
            }
            if ended || sources.len() >= BATCH_LINES {
                break;
            }
            next = lines_rx.try_recv().ok();
        }
        let batch = envelopes(&extractor, &sources, dlq, &mut report);
        runtime.block_on(async {
            let (batch, sources) = batch;
            let outcomes = engine.process(batch, &handler, dlq).await;
            settle(&sources, outcomes, &mut held)?;
            if ended || last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                sweep_all(&engine, &handler, dlq).await?;
            }
            handler.flush()?;
            dlq.flush()?;
            if ended || last_save.0.elapsed() >= SAVE_EVERY || report.lines - last_save.1 >= SAVE_AFTER_LINES {
                last_save = (Instant::now(), report.lines);
                save(&engine, &handler, dlq).await?;
            }
            Ok::<_, anyhow::Error>(())
        })?;
    }
    // The input ended: offer held lines until the contexts they wait on stop moving.
    runtime.block_on(async {
        while !held.is_empty() {
            let before = held.len();
            let sources = std::mem::take(&mut held);
            let (batch, sources) = envelopes(&extractor, &sources, dlq, &mut report);
            let outcomes = engine.process(batch, &handler, dlq).await;
            settle(&sources, outcomes, &mut held)?;
            if held.len() == before {
                break;
            }
        }
        for line in held.drain(..) {
            report.rejected += 1;
            let detail = format!(
                "its position is more than --max-staged {} ahead of its context's next position, and the input \
                 ended before the context caught up",
                args.ordering.max_staged
            );
            dlq.buffer(line.number, Reason::MaxStaged, &detail, &line.body);
        }
        save(&engine, &handler, dlq).await
    })?;
    drop(lines_rx);
    let _ = reader.join();
    report.stats = engine.stats();
    report.rejected += report.stats.dead_lettered;
    report.waiting_in_memory = waiting_in_memory(engine.store());
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Makes what was done so far durable in the order that keeps the guarantees: released
/// lines reach stdout before the state records them as released, and rejected lines reach
/// the DLQ file before the state forgets them.
async fn save<S: StagingStore, W: Write + Send>(
    engine: &Engine<S, SystemClock>,
    handler: &LineWriter<W>,
    dlq: &DlqFile,
) -> Result<()> {
    handler.flush()?;
    dlq.flush()?;
    engine.store().flush().await.context("cannot save the state")
}

fn waiting_in_memory<S: 'static>(store: &S) -> Option<u64> {
    (store as &dyn std::any::Any)
        .downcast_ref::<MemoryStore>()
        .map(MemoryStore::waiting_total)
}

/// An input line as read: kept until its outcome is settled, to offer it again if held.
struct Source {
    number: u64,
    body: Bytes,
}

/// Extracts each line; rejected lines go to the DLQ. Returns the envelopes and, in the same
/// order, the lines they came from.
fn envelopes(
    extractor: &Extractor,
    sources: &[Source],
    dlq: &DlqFile,
    report: &mut RunReport,
) -> (Vec<Envelope>, Vec<Source>) {
    let mut batch = Vec::with_capacity(sources.len());
    let mut kept = Vec::with_capacity(sources.len());
    let now = SystemClock.now();
    for source in sources {
        let raw = RawMessage {
            message_id: source.number.to_string(),
            body: source.body.clone(),
            received_at: now,
            ..RawMessage::default()
        };
        match extractor.extract(raw) {
            Ok(env) => {
                batch.push(env);
                kept.push(Source {
                    number: source.number,
                    body: source.body.clone(),
                });
            }
            Err(rejection) => {
                report.rejected += 1;
                dlq.buffer(source.number, rejection.reason, &rejection.detail, &source.body);
            }
        }
    }
    (batch, kept)
}

/// Sorts outcomes into "done" and "offer again later"; a failure of the store or the
/// dead-letter file stops the run (nothing is acknowledged past it).
fn settle(sources: &[Source], outcomes: Vec<Outcome>, held: &mut Vec<Source>) -> Result<()> {
    for (source, outcome) in sources.iter().zip(outcomes) {
        match outcome {
            Outcome::Held(Hold::Capacity | Hold::Busy) => held.push(Source {
                number: source.number,
                body: source.body.clone(),
            }),
            Outcome::Held(Hold::Failed(err)) => anyhow::bail!("line {} could not be processed: {err}", source.number),
            _ => {}
        }
    }
    Ok(())
}

async fn sweep_all<S: StagingStore, H: Handler, D: DeadLetterSink>(
    engine: &Engine<S, SystemClock>,
    handler: &H,
    dlq: &D,
) -> Result<()> {
    const LIMIT: usize = 1000;
    // A context can stay due (a retry not yet due while its oldest message is past the gap
    // cutoff): bound the rounds, the next sweep comes a second later anyway.
    for _ in 0..100 {
        let swept = engine
            .sweep(handler, dlq, LIMIT)
            .await
            .context("cannot sweep the state for timers")?;
        if swept < LIMIT {
            break;
        }
    }
    Ok(())
}

/// Reads lines on its own thread and hands them over in chunks: as many as are already
/// buffered (up to a batch), so a fast input costs one hand-over per chunk and a slow one
/// still sees each line at once.
fn read_lines(input: Box<dyn Read + Send>, tx: mpsc::SyncSender<Vec<Line>>) {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut number = 0u64;
    let mut chunk = Vec::new();
    loop {
        let mut bytes = Vec::new();
        match input.read_until(b'\n', &mut bytes) {
            Ok(0) => break,
            Ok(_) => {
                number += 1;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                }
                if !bytes.iter().all(u8::is_ascii_whitespace) {
                    chunk.push(Line::Text { number, bytes });
                }
            }
            Err(err) => {
                chunk.push(Line::Error(format!("after line {number}: {err}")));
                break;
            }
        }
        let full_or_idle = chunk.len() >= BATCH_LINES || (input.buffer().is_empty() && !chunk.is_empty());
        if full_or_idle && tx.send(std::mem::take(&mut chunk)).is_err() {
            return;
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(chunk);
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
        Ok(DlqFile {
            out: Mutex::new(out),
            pending: Mutex::new(Vec::new()),
        })
    }

    pub fn sink() -> DlqFile {
        DlqFile {
            out: Mutex::new(Box::new(io::sink())),
            pending: Mutex::new(Vec::new()),
        }
    }

    fn buffer(&self, line: u64, reason: Reason, detail: &str, input: &[u8]) {
        let record = json!({
            "reason": reason.as_str(),
            "detail": detail,
            "line": line,
            "input": String::from_utf8_lossy(input),
        });
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((line, record.to_string()));
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
        self.buffer(
            line_number(letter.message_id),
            letter.reason,
            letter.detail,
            letter.body,
        );
        Ok(())
    }
}
