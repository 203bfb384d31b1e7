//! `reseq run`: JSON lines in, each released line out byte for byte, in order per context
//! (SPEC §6). The input is the queue: a line is "acknowledged" once its outcome is settled
//! and the state (if any) is flushed; rejected lines go to the `--dlq` file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};
use base64::prelude::{BASE64_STANDARD, Engine as _};
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
    /// Append rejected lines (invalid, conflict, late, and at the end of input what could not
    /// be kept) here, one JSON object each. Default: stderr.
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
    /// Typed sequences (SPEC §5): a YAML sequence file; lines are then ordered by their type's release condition.
    #[arg(long, env = "RESEQ_SEQUENCES", value_name = "FILE")]
    pub sequences: Option<PathBuf>,
    /// With --sequences: JSON Pointer to each line's message type.
    #[arg(
        long,
        env = "RESEQ_TYPE_PATH",
        default_value = "/messageType",
        value_name = "POINTER"
    )]
    pub type_path: String,
    /// With --sequences: JSON Pointer to each line's idempotence id. Default: the line's content.
    #[arg(long, env = "RESEQ_ID_PATH", value_name = "POINTER")]
    pub id_path: Option<String>,
    /// The loaded --sequences file (checked at start).
    #[arg(skip)]
    pub loaded_sequences: Option<std::sync::Arc<reseq_core::sequences::SequenceFile>>,
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

pub fn main(mut args: RunArgs) -> Result<ExitCode> {
    if let Some(path) = &args.sequences {
        match load_sequences(path) {
            Ok(file) => args.loaded_sequences = Some(file),
            Err(line) => {
                eprintln!("reseq: {line}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let typed_pointers = [
        ("--type-path", Some(&args.type_path)),
        ("--id-path", args.id_path.as_ref()),
    ];
    for (flag, pointer) in typed_pointers.into_iter().filter_map(|(f, p)| p.map(|p| (f, p))) {
        if !pointer.starts_with('/') {
            eprintln!("reseq: invalid value '{pointer}' for '{flag}': a JSON Pointer starts with '/', e.g. /type");
            return Ok(ExitCode::from(2));
        }
    }
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
    eprintln!("{}{}", report.summary(args.state.is_some()), dlq.reasons_summary());
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
    /// Lines still waiting when the input ended without `--state`, written to the DLQ file
    /// as `unreleased`.
    pub unreleased: u64,
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
        if !durable && self.unreleased > 0 {
            line.push_str(&format!(
                "; {} lines still waited when the input ended: written to the DLQ as unreleased (use --state FILE \
                 to keep them for a later run)",
                self.unreleased
            ));
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
        typed: args
            .loaded_sequences
            .clone()
            .map(|sequences| reseq_core::extract::TypedExtraction {
                type_path: Some(args.type_path.clone()),
                id_path: args.id_path.clone(),
                // A line's content is its idempotence id unless --id-path says otherwise.
                id_is_body: true,
                ..reseq_core::extract::TypedExtraction::new(sequences)
            }),
        ..Extractor::for_json_lines(&args.context_path, &args.seq_path)
    };
    // Without a state file the store lives in memory: what still waits at the end is lost
    // unless it is written to the DLQ file, so remember which contexts were seen.
    let in_memory = (&store as &dyn std::any::Any).is::<MemoryStore>();
    let config = reseq_core::EngineConfig {
        sequences: args.loaded_sequences.clone(),
        ..args.ordering.engine_config()
    };
    let engine = Engine::new(store, SystemClock, config);
    let handler = LineWriter {
        out: Mutex::new(BufWriter::with_capacity(1 << 20, output)),
        error: Mutex::new(None),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;

    let (lines_tx, lines_rx) = mpsc::sync_channel::<Vec<Line>>(16);
    let reader = std::thread::spawn(move || read_lines(input, lines_tx));

    let mut run = Pipeline {
        engine: &engine,
        extractor: &extractor,
        handler: &handler,
        dlq,
        max_staged: args.ordering.max_staged,
        first_seq: args.ordering.first_seq,
        held: HeldLines::default(),
        busy: Vec::new(),
        seen: in_memory.then(HashSet::new),
        report: RunReport::default(),
    };
    let mut last_sweep = Instant::now();
    let mut last_save = (Instant::now(), 0u64);
    let mut ended = false;
    while !ended {
        // Lines a concurrent writer made busy are offered again first.
        let mut sources: Vec<Source> = std::mem::take(&mut run.busy);
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
                        run.report.input_error = Some(err);
                        ended = true;
                    }
                    Line::Text { number, bytes } => {
                        run.report.lines += 1;
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
        runtime.block_on(async {
            run.offer(sources).await?;
            if ended || last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                sweep_all(&engine, &handler, dlq).await?;
                // A sweep may have moved any cursor (a gap timeout).
                let all: Vec<String> = run.held.contexts().cloned().collect();
                run.reoffer(all).await?;
            }
            handler.flush()?;
            dlq.flush()?;
            if ended || last_save.0.elapsed() >= SAVE_EVERY || run.report.lines - last_save.1 >= SAVE_AFTER_LINES {
                last_save = (Instant::now(), run.report.lines);
                save(&engine, &handler, dlq).await?;
            }
            Ok::<_, anyhow::Error>(())
        })?;
    }
    runtime.block_on(async {
        // Busy lines (only with a concurrent writer) get a last few chances.
        for _ in 0..10 {
            if run.busy.is_empty() {
                break;
            }
            let busy = std::mem::take(&mut run.busy);
            run.offer(busy).await?;
        }
        // The input ended: every line still held back could be neither released nor staged.
        let detail = format!(
            "its position is more than --max-staged {} ahead of its context's next position, and the input \
             ended before the context caught up",
            args.ordering.max_staged
        );
        for line in run.held.drain().chain(run.busy.drain(..)) {
            run.report.rejected += 1;
            dlq.buffer(line.number, Reason::MaxStaged, &detail, &line.body);
        }
        if let Some(seen) = run.seen.take() {
            run.report.unreleased = dead_letter_waiting(&engine, &seen, dlq).await?;
            run.report.rejected += run.report.unreleased;
        }
        save(&engine, &handler, dlq).await
    })?;
    drop(lines_rx);
    let _ = reader.join();
    let mut report = run.report;
    report.stats = engine.stats();
    report.rejected += report.stats.dead_lettered;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Reads and checks a `--sequences` file: one line naming the file, the line and the fix
/// when it is not right (SPEC §5).
fn load_sequences(path: &std::path::Path) -> Result<std::sync::Arc<reseq_core::sequences::SequenceFile>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "invalid value '{}' for '--sequences': cannot read it: {e}",
            path.display()
        )
    })?;
    reseq_core::sequences::load(&path.display().to_string(), &text)
        .map(std::sync::Arc::new)
        .map_err(|e| format!("--sequences: {e}"))
}

/// Writes every message still staged (waiting) in an in-memory store to the DLQ file as
/// `unreleased`: the store is about to vanish with the process. Returns how many.
async fn dead_letter_waiting<S: StagingStore>(
    engine: &Engine<S, SystemClock>,
    contexts: &HashSet<String>,
    dlq: &DlqFile,
) -> Result<u64> {
    const PAGE: usize = 1000;
    let store = engine.store();
    let first_seq = engine.config().first_seq;
    let mut count = 0;
    for context in contexts {
        let state = store.load(context).await.context("cannot read the state")?;
        let typed = state.as_ref().is_some_and(|s| s.typed.is_some());
        let next = state.map_or(first_seq, |state| state.next);
        let mut from = next;
        loop {
            let page = store
                .staged(context, from, u64::MAX, PAGE)
                .await
                .context("cannot read the state")?;
            for msg in &page {
                count += 1;
                let detail = if typed {
                    format!(
                        "instance {context} was still waiting for this message's release condition when the input \
                         ended; without --state nothing is kept (use --state FILE to keep waiting lines for a later \
                         run)"
                    )
                } else {
                    format!(
                        "position {} was still waiting for position {next} of its context when the input ended; \
                         without --state nothing is kept (use --state FILE to keep waiting lines for a later run)",
                        msg.seq
                    )
                };
                dlq.buffer(line_number(&msg.message_id), Reason::Unreleased, &detail, &msg.body);
            }
            match page.last() {
                Some(last) if page.len() == PAGE && last.seq < u64::MAX => from = last.seq + 1,
                _ => break,
            }
        }
    }
    Ok(count)
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

/// An input line as read: kept until its outcome is settled, to offer it again if held.
struct Source {
    number: u64,
    body: Bytes,
}

/// Lines held back by `--max-staged` (`Hold::Capacity`), per context, ordered by position
/// and then by line number (so that of two copies of a position the first still wins).
/// They are offered again only when their context's cursor brings them into the window,
/// so a long backlog costs one look-up per batch of its context, not one offer per line.
#[derive(Default)]
struct HeldLines {
    by_context: HashMap<String, BTreeMap<(u64, u64), Bytes>>,
}

impl HeldLines {
    fn insert(&mut self, context: &str, seq: u64, source: Source) {
        match self.by_context.get_mut(context) {
            Some(lines) => lines,
            None => self.by_context.entry(context.to_owned()).or_default(),
        }
        .insert((seq, source.number), source.body);
    }

    /// Whether a copy of this position is already held: a later copy waits behind it.
    fn holds(&self, context: &str, seq: u64) -> bool {
        self.by_context
            .get(context)
            .is_some_and(|lines| lines.range((seq, 0)..=(seq, u64::MAX)).next().is_some())
    }

    fn has(&self, context: &str) -> bool {
        !self.by_context.is_empty() && self.by_context.contains_key(context)
    }

    fn contexts(&self) -> impl Iterator<Item = &String> {
        self.by_context.keys()
    }

    /// Takes the context's held lines at positions up to `last`, in position order.
    fn take_up_to(&mut self, context: &str, last: u64) -> Vec<Source> {
        let Some(lines) = self.by_context.get_mut(context) else {
            return Vec::new();
        };
        let rest = match last.checked_add(1) {
            Some(after) => lines.split_off(&(after, 0)),
            None => BTreeMap::new(),
        };
        let taken = std::mem::replace(lines, rest);
        if lines.is_empty() {
            self.by_context.remove(context);
        }
        taken
            .into_iter()
            .map(|((_, number), body)| Source { number, body })
            .collect()
    }

    /// Everything still held, in input order.
    fn drain(&mut self) -> impl Iterator<Item = Source> + use<> {
        let mut all: Vec<Source> = self
            .by_context
            .drain()
            .flat_map(|(_, lines)| lines.into_iter().map(|((_, number), body)| Source { number, body }))
            .collect();
        all.sort_by_key(|s| s.number);
        all.into_iter()
    }
}

/// The state of one `reseq run` between batches.
struct Pipeline<'a, S, W: Write> {
    engine: &'a Engine<S, SystemClock>,
    extractor: &'a Extractor,
    handler: &'a LineWriter<W>,
    dlq: &'a DlqFile,
    max_staged: u64,
    first_seq: u64,
    held: HeldLines,
    /// Lines a concurrent writer made busy (`Hold::Busy`): offered again with the next batch.
    busy: Vec<Source>,
    /// Every context seen, when the store is in memory (see [`dead_letter_waiting`]).
    seen: Option<HashSet<String>>,
    report: RunReport,
}

impl<S: StagingStore, W: Write + Send> Pipeline<'_, S, W> {
    /// Hands `sources` to the engine, then the held lines their contexts' cursors brought
    /// into the window, until no cursor moves. A failure of the store or the dead-letter
    /// file stops the run (nothing is acknowledged past it).
    async fn offer(&mut self, sources: Vec<Source>) -> Result<()> {
        let mut sources = sources;
        while !sources.is_empty() {
            let mut batch = Vec::with_capacity(sources.len());
            let mut kept = Vec::with_capacity(sources.len());
            // Contexts of this batch with held lines: their cursors are looked up after it.
            let mut touched: Vec<String> = Vec::new();
            for source in sources {
                let Some(env) = self.extract(&source) else { continue };
                if let Some(seen) = &mut self.seen
                    && !seen.contains(&env.context_id)
                {
                    seen.insert(env.context_id.clone());
                }
                if self.held.has(&env.context_id) {
                    if self.held.holds(&env.context_id, env.seq) {
                        // A later copy of a held position waits behind the first.
                        self.held.insert(&env.context_id, env.seq, source);
                        continue;
                    }
                    touched.push(env.context_id.clone());
                }
                kept.push(source);
                batch.push(env);
            }
            let outcomes = self.engine.process(batch, self.handler, self.dlq).await;
            for (source, outcome) in kept.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Held(Hold::Capacity) => {
                        // Rare enough to parse the line again rather than keep every
                        // line's context id for it.
                        if let Some(env) = self.extract(&source) {
                            self.held.insert(&env.context_id, env.seq, source);
                            touched.push(env.context_id);
                        }
                    }
                    Outcome::Held(Hold::Busy) => self.busy.push(source),
                    Outcome::Held(Hold::Failed(err)) => {
                        anyhow::bail!("line {} could not be processed: {err}", source.number)
                    }
                    _ => {}
                }
            }
            touched.sort_unstable();
            touched.dedup();
            sources = self.due(touched).await?;
        }
        Ok(())
    }

    /// The line's envelope, or `None` after writing it to the DLQ as invalid.
    fn extract(&mut self, source: &Source) -> Option<Envelope> {
        let raw = RawMessage {
            message_id: source.number.to_string(),
            body: source.body.clone(),
            received_at: SystemClock.now(),
            ..RawMessage::default()
        };
        match self.extractor.extract(raw) {
            Ok(env) => Some(env),
            Err(rejection) => {
                self.report.rejected += 1;
                self.dlq
                    .buffer(source.number, rejection.reason, &rejection.detail, &source.body);
                None
            }
        }
    }

    /// Offers again the held lines of `contexts` that their cursors now let in.
    async fn reoffer(&mut self, contexts: Vec<String>) -> Result<()> {
        let sources = self.due(contexts).await?;
        self.offer(sources).await
    }

    /// Takes, from the held lines of `contexts`, those within `--max-staged` of their
    /// context's cursor (all of them once the context is closed: they are late).
    async fn due(&mut self, contexts: Vec<String>) -> Result<Vec<Source>> {
        let mut due = Vec::new();
        for context in contexts {
            let state = self
                .engine
                .store()
                .load(&context)
                .await
                .with_context(|| format!("cannot read the state of context {context:?}"))?;
            let last = match &state {
                Some(state) if state.final_seq.is_some() => u64::MAX,
                Some(state) => state.next.saturating_add(self.max_staged),
                None => self.first_seq.saturating_add(self.max_staged),
            };
            due.extend(self.held.take_up_to(&context, last));
        }
        Ok(due)
    }
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
    /// Lines written per reason, for the summary.
    counts: Mutex<std::collections::BTreeMap<&'static str, u64>>,
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
            counts: Mutex::default(),
        })
    }

    pub fn sink() -> DlqFile {
        DlqFile {
            out: Mutex::new(Box::new(io::sink())),
            pending: Mutex::new(Vec::new()),
            counts: Mutex::default(),
        }
    }

    /// `"; dead-lettered: invalid-json 2, late 1"` for the summary line, or nothing.
    pub fn reasons_summary(&self) -> String {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = counts.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
        format!("; dead-lettered: {}", parts.join(", "))
    }

    fn buffer(&self, line: u64, reason: Reason, detail: &str, input: &[u8]) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.as_str())
            .or_default() += 1;
        let mut record = json!({
            "reason": reason.as_str(),
            "detail": detail,
            "line": line,
            "input": String::from_utf8_lossy(input),
        });
        // JSON holds only text: a line that is not UTF-8 also goes in as base64, so that
        // its bytes can be recovered exactly.
        if std::str::from_utf8(input).is_err() {
            record["input_base64"] = BASE64_STANDARD.encode(input).into();
        }
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
