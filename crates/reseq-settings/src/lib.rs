//! # reseq-settings
//!
//! The settings users write, once: every flag with its `RESEQ_<FLAG>` environment
//! variable (SPEC §6). The `reseq` binary flattens these into its subcommands; the Lambda
//! `bootstrap` reads the same structs from the environment alone, so a setting has one
//! name, one default and one parser wherever reseq runs. [`connect_processor`] turns them
//! into a running [`Processor`](reseq_sqs::batch::Processor) the same way for both.
//!
//! It is also the entry point for a Rust team that brings its own
//! [`Handler`](reseq_core::Handler): [`Resequencer::builder`] (or [`Resequencer::from_env`])
//! takes the handler and these settings, connects to the DynamoDB table and the DLQ, and
//! always runs the engine under a per-context lease, as every SQS processor must. The
//! built-in outputs go through the same builder ([`connect_processor_on`]), so there is
//! one way to assemble a processor. Run it as the long-polling worker
//! ([`ResequencerBuilder::run_worker`]) or as a Lambda function (`reseq_lambda::run`).
//!
//! ```no_run
//! use reseq_core::{Handler, HandlerError, Release};
//! use reseq_settings::{ReceiveArgs, Resequencer};
//!
//! struct Print;
//!
//! impl Handler for Print {
//!     async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
//!         println!("{} #{}: {}", msg.context_id, msg.seq, String::from_utf8_lossy(msg.body));
//!         Ok(())
//!     }
//! }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // RESEQ_TABLE, RESEQ_DLQ_URL, RESEQ_LEASE_DURATION, RESEQ_GAP_TIMEOUT, … as for `reseq worker`.
//! let builder = Resequencer::from_env(Print)?;
//! let receive = ReceiveArgs::new("https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo");
//! let run = builder.run_worker(&receive, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! println!("{} messages received", run.report.received);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod resequencer;

use clap::{Args, CommandFactory, Parser, ValueEnum};
use reseq_core::engine::LeaseConfig;
use reseq_core::{Duration, EngineConfig, Extractor, LatePolicy, PoisonPolicy};
use reseq_sqs::batch::InvalidPolicy;
use reseq_sqs::output::{Output, OutputTarget};

pub use aws_config::SdkConfig;
pub use resequencer::{ReceiveArgs, Resequencer, ResequencerBuilder, ResequencerProcessor, WorkerRun};

/// The ordering flags shared by every command that runs the engine.
#[derive(Args, Clone, Debug)]
pub struct OrderingArgs {
    /// The first position of every context.
    #[arg(long, env = "RESEQ_FIRST_SEQ", default_value_t = 1, value_name = "N")]
    pub first_seq: u64,
    /// Skip missing positions once the oldest waiting message has waited this long (e.g. 30s). Default: wait forever.
    // 0 is allowed: it skips a gap at once (no waiting, only dedupe and order within what arrived).
    #[arg(long, env = "RESEQ_GAP_TIMEOUT", value_name = "DURATION")]
    pub gap_timeout: Option<Duration>,
    /// What to do with a message whose position was skipped: dlq, drop or deliver.
    #[arg(long, env = "RESEQ_LATE", default_value = "dlq", value_name = "POLICY")]
    pub late: LatePolicy,
    /// Most messages one context may hold waiting; beyond that, out-of-order messages are held back.
    #[arg(long, env = "RESEQ_MAX_STAGED", default_value_t = 10_000, value_name = "N", value_parser = at_least_one_u64)]
    pub max_staged: u64,
    /// How long records are kept: waiting messages older than this go to the DLQ (expired).
    #[arg(long, env = "RESEQ_RETENTION", default_value = "14d", value_name = "DURATION", value_parser = positive_duration)]
    pub retention: Duration,
    /// Handler attempts (retryable failures, 1 s backoff doubling to 60 s) before a message is poison.
    #[arg(long, env = "RESEQ_MAX_ATTEMPTS", default_value_t = 5, value_name = "N", value_parser = at_least_one_u32)]
    pub max_attempts: u32,
    /// What a poison message does: block (the context stops there) or skip (to the DLQ as handler-failed).
    #[arg(long, env = "RESEQ_ON_POISON", default_value = "block", value_name = "POLICY")]
    pub on_poison: PoisonPolicy,
}

impl OrderingArgs {
    /// Refuses settings that cannot keep their promise: a gap timeout that is not shorter
    /// than the retention never fires (the waiting messages expire first).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(gap) = self.gap_timeout.filter(|gap| *gap >= self.retention) {
            return Err(format!(
                "invalid value '{gap}' for '--gap-timeout': it must be shorter than --retention ({}), or waiting \
                 messages expire before a gap is ever skipped",
                self.retention
            ));
        }
        Ok(())
    }

    /// The engine's ordering rules from these settings, with no lease: an SQS processor
    /// gets its lease from [`SqsArgs::lease`] (the [`Resequencer`] builder always sets
    /// it); `reseq run` and `reseq bench` run without one.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            first_seq: self.first_seq,
            gap_timeout: self.gap_timeout,
            late: self.late,
            max_staged: self.max_staged,
            retention: self.retention,
            max_attempts: self.max_attempts.max(1),
            on_poison: self.on_poison,
            lease: None,
            stage_held_after: None,
            sequences: None,
        }
    }
}

impl Default for OrderingArgs {
    /// The flags' defaults: first position 1, no gap timeout, `--late dlq`, 10,000 staged,
    /// 14 days' retention, 5 attempts, `--on-poison block`.
    fn default() -> Self {
        OrderingArgs {
            first_seq: 1,
            gap_timeout: None,
            late: LatePolicy::DeadLetter,
            max_staged: 10_000,
            retention: Duration::from_secs(14 * 86_400),
            max_attempts: 5,
            on_poison: PoisonPolicy::Block,
        }
    }
}

/// Where the context id and the position of an SQS message come from (SPEC §1): message
/// attributes first, then JSON Pointers into the body, then the FIFO group id.
#[derive(Args, Clone, Debug)]
pub struct ExtractArgs {
    /// Message attribute holding the context id.
    #[arg(long, env = "RESEQ_CONTEXT_ATTR", default_value = "contextId", value_name = "NAME")]
    pub context_attr: String,
    /// Message attribute holding the position (Number, or a String of digits).
    #[arg(long, env = "RESEQ_SEQ_ATTR", default_value = "sequence", value_name = "NAME")]
    pub seq_attr: String,
    /// JSON Pointer to the context id in the body, when the attribute is absent (e.g. /orderId).
    #[arg(long, env = "RESEQ_CONTEXT_PATH", value_name = "POINTER")]
    pub context_path: Option<String>,
    /// JSON Pointer to the position in the body, when the attribute is absent (e.g. /seq).
    #[arg(long, env = "RESEQ_SEQ_PATH", value_name = "POINTER")]
    pub seq_path: Option<String>,
    /// Take the context id from the FIFO MessageGroupId when neither attribute nor path gives one.
    #[arg(long, env = "RESEQ_CONTEXT_FROM", value_name = "SOURCE")]
    pub context_from: Option<ContextFrom>,
    /// Message attribute that marks the last message of a context (`true`).
    #[arg(long, env = "RESEQ_FINAL_ATTR", default_value = "final", value_name = "NAME")]
    pub final_attr: String,
    /// JSON Pointer to a boolean in the body that marks the last message of a context.
    #[arg(long, env = "RESEQ_FINAL_PATH", value_name = "POINTER")]
    pub final_path: Option<String>,
    /// Typed sequences (SPEC §5): a YAML sequence file, or (for Lambda) the YAML itself. Messages are then ordered by their type's release condition.
    #[arg(long, env = "RESEQ_SEQUENCES", value_name = "FILE|YAML")]
    pub sequences: Option<String>,
    /// With --sequences: the message attribute holding the message type.
    #[arg(long, env = "RESEQ_TYPE_ATTR", default_value = "messageType", value_name = "NAME")]
    pub type_attr: String,
    /// With --sequences: JSON Pointer to the message type in the body, when the attribute is absent.
    #[arg(long, env = "RESEQ_TYPE_PATH", value_name = "POINTER")]
    pub type_path: Option<String>,
    /// With --sequences: the message attribute holding the idempotence id. Default: the SQS MessageId.
    #[arg(long, env = "RESEQ_ID_ATTR", value_name = "NAME")]
    pub id_attr: Option<String>,
    /// With --sequences: JSON Pointer to the idempotence id in the body. Default: the SQS MessageId.
    #[arg(long, env = "RESEQ_ID_PATH", value_name = "POINTER")]
    pub id_path: Option<String>,
}

/// Reads a `--sequences` value: a file's path, or the YAML itself (a value with a line
/// break, as a Lambda environment variable may hold it). One line naming the file (or
/// `RESEQ_SEQUENCES`), the line and the fix when it is not right.
pub fn load_sequences(value: &str) -> Result<std::sync::Arc<reseq_core::sequences::SequenceFile>, String> {
    let (label, text) = if value.contains('\n') {
        ("RESEQ_SEQUENCES".to_string(), value.to_string())
    } else {
        let text = std::fs::read_to_string(value)
            .map_err(|e| format!("invalid value '{value}' for '--sequences': cannot read it: {e}"))?;
        (value.to_string(), text)
    };
    reseq_core::sequences::load(&label, &text)
        .map(std::sync::Arc::new)
        .map_err(|e| format!("--sequences: {e}"))
}

/// Another source of the context id (`--context-from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ContextFrom {
    /// The FIFO `MessageGroupId` (`group-id`).
    GroupId,
}

impl Default for ExtractArgs {
    /// The flags' defaults: attributes `contextId`, `sequence` and `final`, no paths.
    fn default() -> Self {
        ExtractArgs {
            context_attr: "contextId".into(),
            seq_attr: "sequence".into(),
            context_path: None,
            seq_path: None,
            context_from: None,
            final_attr: "final".into(),
            final_path: None,
            sequences: None,
            type_attr: "messageType".into(),
            type_path: None,
            id_attr: None,
            id_path: None,
        }
    }
}

impl ExtractArgs {
    /// The extractor, or the flag that is wrong (a JSON Pointer must start with `/`).
    pub fn extractor(&self) -> Result<Extractor, String> {
        for (flag, pointer) in [
            ("--context-path", &self.context_path),
            ("--seq-path", &self.seq_path),
            ("--final-path", &self.final_path),
            ("--type-path", &self.type_path),
            ("--id-path", &self.id_path),
        ] {
            if let Some(p) = pointer.as_deref().filter(|p| !p.is_empty() && !p.starts_with('/')) {
                return Err(format!(
                    "invalid value '{p}' for '{flag}': a JSON Pointer starts with '/', e.g. /orderId"
                ));
            }
        }
        Ok(Extractor {
            context_attr: self.context_attr.clone(),
            seq_attr: self.seq_attr.clone(),
            context_path: self.context_path.clone(),
            seq_path: self.seq_path.clone(),
            context_from_group_id: self.context_from == Some(ContextFrom::GroupId),
            final_attr: self.final_attr.clone(),
            final_path: self.final_path.clone(),
            typed: match &self.sequences {
                None => None,
                Some(value) => Some(reseq_core::extract::TypedExtraction {
                    type_attr: self.type_attr.clone(),
                    type_path: self.type_path.clone(),
                    id_attr: self.id_attr.clone(),
                    id_path: self.id_path.clone(),
                    id_is_body: false,
                    ..reseq_core::extract::TypedExtraction::new(load_sequences(value)?)
                }),
            },
            ..Extractor::default()
        })
    }
}

/// What the SQS worker and the Lambda function share: the table, the output, the DLQ, the
/// lease. With a handler of your own ([`Resequencer::builder`]) `output` and
/// `http_timeout` are not used.
#[derive(Args, Clone, Debug)]
pub struct SqsArgs {
    /// The DynamoDB table that stages messages and holds each context's state (see `reseq init`).
    #[arg(long, env = "RESEQ_TABLE", default_value = "reseq", value_name = "NAME")]
    pub table: String,
    // The text is `--help`'s too, where `<queue-url>` reads as it should.
    #[allow(rustdoc::invalid_html_tags)]
    /// Where released messages go: stdout, sqs:<queue-url> or http(s)://…
    #[arg(long, env = "RESEQ_OUTPUT", default_value = "stdout", value_name = "TARGET")]
    pub output: OutputTarget,
    /// Dead-letter queue for conflicts, late and poison messages (attributes reseqReason, reseqDetail).
    #[arg(long, env = "RESEQ_DLQ_URL", value_name = "URL")]
    pub dlq_url: Option<String>,
    /// Invalid messages: redrive (left undeleted for the queue's redrive policy) or dlq (sent to --dlq-url, then deleted).
    #[arg(long, env = "RESEQ_INVALID", default_value = "redrive", value_name = "POLICY")]
    pub invalid: InvalidPolicy,
    /// How long a worker's per-context lease lasts; no release starts later than 3/4 of it into a batch.
    #[arg(
        long,
        env = "RESEQ_LEASE_DURATION",
        default_value = "60s",
        value_name = "DURATION",
        value_parser = positive_duration
    )]
    pub lease_duration: Duration,
    /// Timeout of one HTTP output request (a timeout is a retryable failure); with an http(s) output at most a quarter of the lease duration.
    #[arg(
        long,
        env = "RESEQ_HTTP_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = positive_duration
    )]
    pub http_timeout: Duration,
    /// Receives after which a message held back by --max-staged is staged anyway (at least 1; the worker lowers it below the queue's maxReceiveCount).
    #[arg(
        long,
        env = "RESEQ_STAGE_HELD_AFTER",
        default_value_t = 3,
        value_name = "N",
        value_parser = at_least_one_u32
    )]
    pub stage_held_after: u32,
}

impl Default for SqsArgs {
    /// The flags' defaults: table `reseq`, output `stdout`, no DLQ, `--invalid redrive`,
    /// a 60 s lease, a 10 s HTTP timeout, staged anyway after 3 receives.
    fn default() -> Self {
        SqsArgs {
            table: "reseq".into(),
            output: OutputTarget::Stdout,
            dlq_url: None,
            invalid: InvalidPolicy::Redrive,
            lease_duration: Duration::from_secs(60),
            http_timeout: Duration::from_secs(10),
            stage_held_after: 3,
        }
    }
}

/// Where metrics go and under which names (CloudWatch Embedded Metric Format).
#[derive(Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// Where one metrics record per batch and sweep goes, in CloudWatch Embedded Metric Format: stdout, stderr or off. Default: stdout on Lambda, stderr for the worker.
    #[arg(long, env = "RESEQ_METRICS", value_name = "SINK")]
    pub metrics: Option<reseq_metrics::Sink>,
    /// The CloudWatch namespace of the metrics.
    #[arg(long, env = "RESEQ_METRICS_NAMESPACE", default_value = reseq_metrics::DEFAULT_NAMESPACE, value_name = "NAME")]
    pub metrics_namespace: String,
    /// The value of the metrics' Service dimension (one per deployment). Default: the Lambda function's name, else reseq.
    #[arg(long, env = "RESEQ_SERVICE", value_name = "NAME")]
    pub service: Option<String>,
}

impl TelemetryArgs {
    /// Installs the process's metrics writer; `default_sink` applies when `--metrics` is
    /// not given. `queue_url` names the input queue in every record (a property, not a
    /// dimension).
    pub fn install(
        &self,
        default_sink: reseq_metrics::Sink,
        queue_url: Option<&str>,
    ) -> Result<reseq_metrics::Telemetry, String> {
        let service = self
            .service
            .clone()
            .or_else(|| std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok())
            .unwrap_or_else(|| "reseq".to_string());
        let telemetry =
            reseq_metrics::Telemetry::install(self.metrics.unwrap_or(default_sink), &self.metrics_namespace, &service)
                .map_err(|e| e.to_string())?;
        if let Some(queue) = queue_url.and_then(|url| url.rsplit('/').next()) {
            telemetry.set_property("Queue", queue);
        }
        Ok(telemetry)
    }
}

impl Default for TelemetryArgs {
    /// The flags' defaults: the sink of the place it runs, namespace `Reseq`, the service
    /// named after the Lambda function, else `reseq`.
    fn default() -> Self {
        TelemetryArgs {
            metrics: None,
            metrics_namespace: reseq_metrics::DEFAULT_NAMESPACE.into(),
            service: None,
        }
    }
}

/// Every setting a processor reads, wherever it runs: the ordering rules, where context
/// and position come from, the table, output, DLQ and lease, and the metrics. The Lambda
/// function reads exactly these (`reseq_lambda::LambdaSettings` is this struct); the
/// worker adds [`ReceiveArgs`]. [`Default`] gives the flags' defaults.
#[derive(Parser, Clone, Debug, Default)]
#[command(name = "bootstrap", about = "reseq configured by RESEQ_* environment variables")]
pub struct Settings {
    /// `--first-seq`, `--gap-timeout`, `--late`, … (`RESEQ_FIRST_SEQ`, …).
    #[command(flatten)]
    pub ordering: OrderingArgs,
    /// `--context-attr`, `--seq-path`, … (`RESEQ_CONTEXT_ATTR`, …).
    #[command(flatten)]
    pub extract: ExtractArgs,
    /// `--table`, `--dlq-url`, `--lease-duration`, … (`RESEQ_TABLE`, …).
    #[command(flatten)]
    pub sqs: SqsArgs,
    /// `--metrics`, `--metrics-namespace`, `--service` (`RESEQ_METRICS`, …).
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Settings {
    /// The settings from the process environment alone (no command-line arguments are
    /// read): the `RESEQ_*` variables `reseq worker` reads, with the same names, defaults
    /// and parsers. A bad value gives one line naming the variable, the value and what is
    /// wrong. The checks that involve several values ([`SqsArgs::validate`]) are made here
    /// too, with the variable's name.
    pub fn from_env() -> Result<Settings, String> {
        let settings = parse_env::<Settings>()?;
        settings.sqs.validate().map_err(|line| {
            let env = ["--http-timeout", "--lease-duration", "--table"]
                .into_iter()
                .find(|flag| line.contains(&format!("'{flag}'")))
                .map(|flag| {
                    format!(
                        "RESEQ_{}: ",
                        flag.trim_start_matches('-').replace('-', "_").to_uppercase()
                    )
                })
                .unwrap_or_default();
            format!("invalid settings: {env}{line}")
        })?;
        Ok(settings)
    }
}

/// `T` from the environment alone, or one line naming the variable that is wrong.
fn parse_env<T: Parser>() -> Result<T, String> {
    T::try_parse_from(["reseq"]).map_err(|e| describe_error::<T>(&e))
}

/// One line for a clap error on environment variables: clap names the flag
/// (`--max-staged <N>`); a function's user set `RESEQ_MAX_STAGED`, so name that too.
fn describe_error<T: CommandFactory>(err: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let rendered = err.to_string();
    let first = rendered
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid settings");
    let line = first.strip_prefix("error: ").unwrap_or(first).to_string();
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return format!("invalid settings: {line}");
    };
    let long = arg.split_whitespace().next().unwrap_or("").trim_start_matches("--");
    let command = T::command();
    let env = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned());
    match env {
        Some(env) => format!("invalid settings: {env}: {line}"),
        None => format!("invalid settings: {line}"),
    }
}

/// A duration that is more than zero (a zero lease, sweep interval or timeout cannot work).
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.0 == 0 {
        return Err("must be more than 0 (e.g. 500ms, 5s, 1m)".into());
    }
    Ok(d)
}

fn at_least_one_u64(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number ({e})")),
    }
}

/// A count of at least 1 (`--max-attempts`, `--stage-held-after`, …).
pub fn at_least_one_u32(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number up to {} ({e})", u32::MAX)),
    }
}

/// `--table`'s value, or one line saying why DynamoDB would refuse it.
pub fn check_table_name(name: &str) -> Result<(), String> {
    if valid_table_name(name) {
        return Ok(());
    }
    Err(format!(
        "invalid value '{name}' for '--table': a DynamoDB table name is 3 to 255 letters, digits, '_', '-' or '.' (or \
         a table ARN), e.g. reseq"
    ))
}

/// Whether `name` can be a DynamoDB table name (3 to 255 of `a-z A-Z 0-9 _ - .`) or a
/// table ARN.
fn valid_table_name(name: &str) -> bool {
    if name.starts_with("arn:") {
        return name.contains(":table/");
    }
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl SqsArgs {
    /// Several workers (receive loops, tasks, Lambda invocations, the timer sweep) may
    /// touch one context at once, so SQS always runs the engine with a per-context lease.
    pub fn lease(&self, owner: String) -> LeaseConfig {
        LeaseConfig {
            owner,
            duration: self.lease_duration,
        }
    }

    /// The time within which a batch's releases must start: the lease outlives them.
    pub fn release_budget(&self) -> Duration {
        Duration::from_millis(self.lease_duration.0 - self.lease_duration.0 / 4)
    }

    /// How long one handler call may take: what is left of the lease after the release
    /// budget (a quarter of it), so that a call started at the end of the budget still
    /// ends within the lease.
    pub fn handler_timeout(&self) -> Duration {
        Duration::from_millis((self.lease_duration.0 - self.release_budget().0).max(1))
    }

    /// The checks that involve more than one value, or that the parsers cannot make: one
    /// line naming the flag, the value and what would work.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_for(true)
    }

    /// [`SqsArgs::validate`]; `builtin_output`: whether `--output` and `--http-timeout`
    /// are used (not with a handler of the user's own).
    fn validate_for(&self, builtin_output: bool) -> Result<(), String> {
        if self.lease_duration.0 == 0 {
            return Err("invalid value '0s' for '--lease-duration': a lease must last more than 0, e.g. 60s".into());
        }
        let bound = self.handler_timeout();
        let http = matches!(self.output, OutputTarget::Http { .. });
        if builtin_output && (self.http_timeout.0 == 0 || (http && self.http_timeout > bound)) {
            return Err(format!(
                "invalid value '{}' for '--http-timeout': a request must end within a quarter of --lease-duration \
                 ({}), so give at most {bound}, or a longer --lease-duration (at least 4 × {})",
                self.http_timeout, self.lease_duration, self.http_timeout
            ));
        }
        check_table_name(&self.table)
    }
}

/// A processor assembled from the settings: the DynamoDB table, the output (each call
/// bounded by [`SqsArgs::handler_timeout`]), the DLQ.
pub type SqsProcessor = ResequencerProcessor<Output>;

/// Why the settings could not be turned into a running processor; each names the
/// resource and what to check.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting that cannot work, or settings that contradict each other: one line
    /// naming the flag.
    #[error("invalid settings: {0}")]
    Invalid(String),
    /// The table is missing, has another layout, or could not be reached.
    #[error("--table: {0}")]
    Table(#[from] reseq_core::StoreError),
    /// The built-in output (`--output`) cannot be used.
    #[error("--output: {0}")]
    Output(String),
    /// The DLQ (`--dlq-url`) cannot be used.
    #[error("--dlq-url: {0}")]
    Dlq(String),
    /// The worker's input queue (`--queue-url`) cannot be used, or its settings cannot
    /// work (one line naming it).
    #[error("{0}")]
    Queue(String),
    /// The worker stopped because its queue became unusable while it ran.
    #[error(transparent)]
    Worker(#[from] reseq_sqs::worker::WorkerError),
}

impl SetupError {
    /// Whether no retry fixes it: bad settings, a missing or forbidden table, output or
    /// DLQ (exit code 2). A table that could not be reached may answer later.
    pub fn is_configuration(&self) -> bool {
        !matches!(
            self,
            SetupError::Table(reseq_core::StoreError::Unavailable(_)) | SetupError::Worker(_)
        )
    }
}

/// The AWS configuration of the standard chain (`AWS_REGION`, `AWS_ENDPOINT_URL_SQS`,
/// profiles, …), loaded once per process and shared by every client.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Time to open a connection to SQS.
pub const SQS_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Time for one attempt of an SQS request (a receive's long poll is allowed for apart:
/// see `reseq_sqs::worker::receive_timeouts`).
pub const SQS_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Time for an SQS request, retries included, at most: a hung request never outlives a
/// lease (the operation timeout is also held to half of `--lease-duration`).
pub const SQS_OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The SQS client on `sdk`, with connect, attempt and operation timeouts so that a hung
/// request fails (and is retried, or the message comes back) instead of hanging a batch
/// past its context's lease.
pub fn sqs_client_from(sdk: &aws_config::SdkConfig, lease: Duration) -> aws_sdk_sqs::Client {
    let operation = SQS_OPERATION_TIMEOUT.min(std::time::Duration::from_millis((lease.0 / 2).max(1000)));
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(SQS_CONNECT_TIMEOUT)
        .operation_attempt_timeout(SQS_ATTEMPT_TIMEOUT.min(operation))
        .operation_timeout(operation)
        .build();
    let config = aws_sdk_sqs::config::Builder::from(sdk).timeout_config(timeouts).build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// The SQS client of the standard AWS chain, with the default lease's timeouts.
pub async fn sqs_client() -> aws_sdk_sqs::Client {
    sqs_client_from(&aws_config().await, Duration::from_secs(60))
}

/// Connects to the table, the output and the DLQ (each checked once, so that a wrong name
/// fails at start) and assembles the processor. `lease_owner` names this process in the
/// per-context leases it takes.
pub async fn connect_processor(
    ordering: &OrderingArgs,
    extract: &ExtractArgs,
    sqs_args: &SqsArgs,
    lease_owner: String,
) -> Result<(SqsProcessor, aws_sdk_sqs::Client), SetupError> {
    let sdk = aws_config().await;
    let sqs = sqs_client_from(&sdk, sqs_args.lease_duration);
    let processor = connect_processor_on(&sdk, sqs.clone(), ordering, extract, sqs_args, lease_owner).await?;
    Ok((processor, sqs))
}

/// [`connect_processor`] on an SQS client the caller already has: the built-in output of
/// `--output` through [`Resequencer::with_output`], the same builder as a handler of
/// one's own.
pub async fn connect_processor_on(
    sdk: &aws_config::SdkConfig,
    sqs: aws_sdk_sqs::Client,
    ordering: &OrderingArgs,
    extract: &ExtractArgs,
    sqs_args: &SqsArgs,
    lease_owner: String,
) -> Result<SqsProcessor, SetupError> {
    let settings = Settings {
        ordering: ordering.clone(),
        extract: extract.clone(),
        sqs: sqs_args.clone(),
        telemetry: TelemetryArgs::default(),
    };
    let resequencer = Resequencer::with_output(settings)
        .lease_owner(lease_owner)
        .connect_on(sdk, sqs)
        .await?;
    Ok(resequencer.into_processor())
}

/// A lease owner name that differs between processes and hosts.
pub fn lease_owner(prefix: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{host}-{}-{nanos:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        ordering: OrderingArgs,
        #[command(flatten)]
        sqs: SqsArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map_err(|e| e.to_string())
    }

    #[test]
    fn zero_counts_and_durations_are_refused_naming_the_flag() {
        for (args, flag) in [
            (&["--lease-duration", "0s"][..], "--lease-duration"),
            (&["--http-timeout", "0ms"], "--http-timeout"),
            (&["--max-attempts", "0"], "--max-attempts"),
            (&["--max-staged", "0"], "--max-staged"),
            (&["--stage-held-after", "0"], "--stage-held-after"),
        ] {
            let err = parse(args).expect_err(flag);
            let first = err.lines().next().unwrap_or("");
            assert!(first.contains(flag) && first.contains('0'), "{args:?}: {err}");
        }
        let cli = parse(&[]).expect("the defaults are valid");
        assert_eq!(cli.sqs.stage_held_after, 3);
        cli.sqs.validate().expect("the defaults are valid");
    }

    #[test]
    fn the_defaults_in_code_are_the_flags_defaults() {
        let parsed = Settings::try_parse_from(["t"]).expect("the defaults parse");
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Settings::default()));
    }

    #[test]
    fn the_handler_bound_is_the_lease_after_the_release_budget() {
        let cli = parse(&["--lease-duration", "60s"]).unwrap();
        assert_eq!(cli.sqs.release_budget(), Duration::from_secs(45));
        assert_eq!(cli.sqs.handler_timeout(), Duration::from_secs(15));
        let cli = parse(&["--lease-duration", "1ms"]).unwrap();
        assert_eq!(cli.sqs.handler_timeout(), Duration::from_millis(1));
    }

    #[test]
    fn an_http_timeout_longer_than_the_lease_allows_is_refused() {
        let cli = parse(&["--lease-duration", "20s", "--http-timeout", "10s"]).unwrap();
        cli.sqs
            .validate()
            .expect("no HTTP output: the HTTP timeout is not used");
        let cli = parse(&[
            "--lease-duration",
            "20s",
            "--http-timeout",
            "10s",
            "--output",
            "http://h.example/in",
        ])
        .unwrap();
        let err = cli.sqs.validate().unwrap_err();
        assert!(
            err.contains("--http-timeout") && err.contains("10s") && err.contains("5s"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        let cli = parse(&[
            "--lease-duration",
            "40s",
            "--http-timeout",
            "10s",
            "--output",
            "http://h.example/in",
        ])
        .unwrap();
        cli.sqs.validate().expect("10s is a quarter of 40s");
    }

    #[test]
    fn table_names_dynamodb_refuses_are_refused_naming_the_flag() {
        for bad in ["", "ab", "has space", "x/y", &"t".repeat(256)] {
            let cli = parse(&["--table", bad]).unwrap();
            let err = cli.sqs.validate().unwrap_err();
            assert!(err.contains("--table"), "{bad:?}: {err}");
        }
        for good in [
            "reseq",
            "my_table-1.v2",
            "arn:aws:dynamodb:eu-west-1:123456789012:table/reseq",
        ] {
            parse(&["--table", good]).unwrap().sqs.validate().expect(good);
        }
    }
}
