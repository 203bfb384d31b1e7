//! # reseq-settings
//!
//! The settings users write, once: every flag with its `RESEQ_<FLAG>` environment
//! variable (SPEC §6). The `reseq` binary flattens these into its subcommands; the Lambda
//! `bootstrap` reads the same structs from the environment alone, so a setting has one
//! name, one default and one parser wherever reseq runs. [`connect_processor`] turns them
//! into a running [`Processor`] the same way for both.

use clap::{Args, ValueEnum};
use reseq_core::engine::LeaseConfig;
use reseq_core::{Duration, Engine, EngineConfig, Extractor, LatePolicy, PoisonPolicy, SystemClock};
use reseq_dynamodb::{DynamoConfig, DynamoStore};
use reseq_sqs::batch::{InvalidPolicy, Processor};
use reseq_sqs::dlq::SqsDeadLetters;
use reseq_sqs::output::{Output, OutputTarget};

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
    /// Handler attempts (retryable failures, 1 s backoff doubling to 60 s) before a message is poison.
    #[arg(long, env = "RESEQ_MAX_ATTEMPTS", default_value_t = 5, value_name = "N")]
    pub max_attempts: u32,
    /// What a poison message does: block (the context stops there) or skip (to the DLQ as handler-failed).
    #[arg(long, env = "RESEQ_ON_POISON", default_value = "block", value_name = "POLICY")]
    pub on_poison: PoisonPolicy,
}

impl OrderingArgs {
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ContextFrom {
    GroupId,
}

impl ExtractArgs {
    /// The extractor, or the flag that is wrong (a JSON Pointer must start with `/`).
    pub fn extractor(&self) -> Result<Extractor, String> {
        for (flag, pointer) in [
            ("--context-path", &self.context_path),
            ("--seq-path", &self.seq_path),
            ("--final-path", &self.final_path),
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
            ..Extractor::default()
        })
    }
}

/// What the SQS worker and the Lambda function share: the table, the output, the DLQ.
#[derive(Args, Clone, Debug)]
pub struct SqsArgs {
    /// The DynamoDB table that stages messages and holds each context's state (see `reseq init`).
    #[arg(long, env = "RESEQ_TABLE", default_value = "reseq", value_name = "NAME")]
    pub table: String,
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
    #[arg(long, env = "RESEQ_LEASE_DURATION", default_value = "60s", value_name = "DURATION")]
    pub lease_duration: Duration,
    /// Timeout of one HTTP output request (a timeout is a retryable failure).
    #[arg(long, env = "RESEQ_HTTP_TIMEOUT", default_value = "10s", value_name = "DURATION")]
    pub http_timeout: Duration,
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
}

/// A processor assembled from the settings: the DynamoDB table, the output, the DLQ.
pub type SqsProcessor = Processor<DynamoStore, SystemClock, Output, SqsDeadLetters>;

/// Why the settings could not be turned into a running processor; each names the
/// resource and what to check.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid settings: {0}")]
    Invalid(String),
    #[error(transparent)]
    Table(#[from] reseq_core::StoreError),
    #[error("--output: {0}")]
    Output(String),
    #[error("--dlq-url: {0}")]
    Dlq(String),
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
    let extractor = extract.extractor().map_err(SetupError::Invalid)?;
    let store = reseq_dynamodb::connect(&sqs_args.table, DynamoConfig::default()).await?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let output = Output::connect(sqs_args.output.clone(), sqs.clone(), sqs_args.http_timeout.as_std())
        .await
        .map_err(|e| SetupError::Output(e.to_string()))?;
    let dlq = SqsDeadLetters::new(sqs.clone(), sqs_args.dlq_url.clone());
    if sqs_args.dlq_url.is_some() {
        dlq.check().await.map_err(|e| SetupError::Dlq(e.to_string()))?;
    } else if sqs_args.invalid == InvalidPolicy::Dlq {
        return Err(SetupError::Invalid(
            "--invalid dlq needs --dlq-url (or RESEQ_DLQ_URL): the queue invalid messages are sent to".into(),
        ));
    }
    let config = EngineConfig {
        lease: Some(sqs_args.lease(lease_owner)),
        ..ordering.engine_config()
    };
    let engine = Engine::new(store, SystemClock, config);
    let processor = Processor::new(engine, extractor, output, dlq, sqs_args.invalid);
    Ok((processor, sqs))
}

/// A lease owner name that differs between processes and hosts.
pub fn lease_owner(prefix: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{host}-{}-{nanos:x}", std::process::id())
}
