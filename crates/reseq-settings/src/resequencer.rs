//! The one way to assemble an SQS processor, for the built-in outputs and for a handler
//! of one's own: [`Resequencer::builder`], then [`ResequencerBuilder::connect`] (a
//! processor to drive yourself), [`ResequencerBuilder::run_worker`] (the long-polling
//! worker of `reseq worker`) or `reseq_lambda::run` (the Lambda function of `bootstrap`).
//!
//! Whatever is set, the engine runs under a per-context lease of
//! [`SqsArgs::lease_duration`] (several receive loops, tasks, invocations and the timer
//! sweep may see one context at once), and each handler call is cut at a quarter of it
//! ([`Bounded`], [`SqsArgs::handler_timeout`]): there is no way through the builder to an
//! SQS processor without them.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use clap::{Args, Parser};
use reseq_core::{Duration, Engine, EngineConfig, Handler, SystemClock};
use reseq_dynamodb::{DynamoConfig, DynamoStore};
use reseq_sqs::batch::{InvalidPolicy, Processor};
use reseq_sqs::bounded::Bounded;
use reseq_sqs::dlq::SqsDeadLetters;
use reseq_sqs::output::Output;
use reseq_sqs::worker::{Worker, WorkerConfig, WorkerReport, inspect_queue, stage_held_after};

use crate::{
    ExtractArgs, OrderingArgs, SdkConfig, Settings, SetupError, SqsArgs, TelemetryArgs, aws_config, lease_owner,
    parse_env, positive_duration, sqs_client_from,
};

/// The processor the builder assembles: the DynamoDB table, the system clock, the
/// handler with every call bounded by a quarter of the lease, the SQS dead-letter queue.
pub type ResequencerProcessor<H> = Processor<DynamoStore, SystemClock, Bounded<H>, SqsDeadLetters>;

type HandlerFuture<H> = Pin<Box<dyn Future<Output = Result<H, SetupError>> + Send>>;
/// Makes the handler once the table is connected: the user's, ready; or the built-in
/// output, connected (and checked) then.
type MakeHandler<H> = Box<dyn FnOnce(aws_sdk_sqs::Client, &SqsArgs) -> HandlerFuture<H> + Send>;

/// A processor assembled and connected: the table and the DLQ were checked, the engine
/// runs under a per-context lease. Made by [`ResequencerBuilder::connect`].
pub struct Resequencer<H> {
    processor: ResequencerProcessor<H>,
    sqs: aws_sdk_sqs::Client,
    settings: Settings,
}

/// Settings for a [`Resequencer`]: the handler, the [`Settings`] (the flags' defaults
/// unless set), and optionally the lease owner's name and the AWS configuration. Made by
/// [`Resequencer::builder`], [`Resequencer::from_env`] or [`Resequencer::with_output`].
///
/// ```
/// use reseq_core::{Duration, Handler, HandlerError, Release};
/// use reseq_settings::{OrderingArgs, Resequencer};
///
/// struct Noop;
/// impl Handler for Noop {
///     async fn handle(&self, _: &Release<'_>) -> Result<(), HandlerError> {
///         Ok(())
///     }
/// }
///
/// let builder = Resequencer::builder(Noop)
///     .table("orders-reseq")
///     .dlq_url("https://sqs.eu-west-1.amazonaws.com/123456789012/orders-dlq.fifo")
///     .lease_duration(Duration::from_secs(120))
///     .ordering(OrderingArgs { gap_timeout: Some(Duration::from_secs(30)), ..OrderingArgs::default() });
/// let settings = builder.config();
/// assert_eq!(settings.sqs.table, "orders-reseq");
/// // Each call of `Noop` will be cut after a quarter of the lease.
/// assert_eq!(settings.sqs.handler_timeout(), Duration::from_secs(30));
/// assert_eq!(settings.ordering.max_staged, 10_000); // the flag's default
/// ```
pub struct ResequencerBuilder<H> {
    make_handler: MakeHandler<H>,
    /// Whether the handler is the built-in output (`--output`, `--http-timeout` apply).
    builtin_output: bool,
    settings: Settings,
    lease_owner: Option<String>,
    sdk: Option<SdkConfig>,
}

impl<H: Handler + 'static> Resequencer<H> {
    /// A builder for `handler`, with the flags' defaults ([`Settings::default`]).
    pub fn builder(handler: H) -> ResequencerBuilder<H> {
        ResequencerBuilder {
            make_handler: Box::new(move |_, _| Box::pin(async move { Ok(handler) })),
            builtin_output: false,
            settings: Settings::default(),
            lease_owner: None,
            sdk: None,
        }
    }

    /// A builder for `handler` with the settings of the `RESEQ_*` environment variables,
    /// as `bootstrap` reads them ([`Settings::from_env`]): one line naming the variable
    /// when one is wrong. `RESEQ_OUTPUT` and `RESEQ_HTTP_TIMEOUT` are for the built-in
    /// outputs: leave them unset.
    pub fn from_env(handler: H) -> Result<ResequencerBuilder<H>, String> {
        Ok(Resequencer::builder(handler).settings(Settings::from_env()?))
    }

    /// The processor, to drive batches and sweeps yourself
    /// ([`Processor::process`], [`Processor::sweep`]).
    pub fn processor(&self) -> &ResequencerProcessor<H> {
        &self.processor
    }

    /// The processor, consumed.
    pub fn into_processor(self) -> ResequencerProcessor<H> {
        self.processor
    }

    /// Your handler.
    pub fn handler(&self) -> &H {
        &self.processor.handler().inner
    }

    /// The SQS client the DLQ (and the worker) use.
    pub fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.sqs
    }

    /// The settings it was assembled with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How long into a batch releases may start ([`SqsArgs::release_budget`]): a caller
    /// that drives batches itself passes `now + release_budget` as their deadline.
    pub fn release_budget(&self) -> Duration {
        self.settings.sqs.release_budget()
    }
}

impl Resequencer<Output> {
    /// The builder behind `reseq worker` and `bootstrap`: the built-in output of
    /// `settings.sqs.output` (`--output`), connected and checked once the table is.
    pub fn with_output(settings: Settings) -> ResequencerBuilder<Output> {
        ResequencerBuilder {
            make_handler: Box::new(|sqs, args: &SqsArgs| {
                let target = args.output.clone();
                let timeout = args.http_timeout.as_std();
                Box::pin(async move {
                    Output::connect(target, sqs, timeout)
                        .await
                        .map_err(|e| SetupError::Output(e.to_string()))
                })
            }),
            builtin_output: true,
            settings,
            lease_owner: None,
            sdk: None,
        }
    }
}

impl<H: Handler + 'static> ResequencerBuilder<H> {
    /// Replaces every setting.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// The ordering rules (`--first-seq`, `--gap-timeout`, `--late`, `--max-staged`,
    /// `--retention`, `--max-attempts`, `--on-poison`).
    pub fn ordering(mut self, ordering: OrderingArgs) -> Self {
        self.settings.ordering = ordering;
        self
    }

    /// Where context and position come from (`--context-attr`, `--seq-path`, …).
    pub fn extract(mut self, extract: ExtractArgs) -> Self {
        self.settings.extract = extract;
        self
    }

    /// Table, DLQ, invalid policy, lease and `--stage-held-after` at once.
    pub fn sqs(mut self, sqs: SqsArgs) -> Self {
        self.settings.sqs = sqs;
        self
    }

    /// Where the metrics go (`--metrics`, `--metrics-namespace`, `--service`).
    pub fn telemetry(mut self, telemetry: TelemetryArgs) -> Self {
        self.settings.telemetry = telemetry;
        self
    }

    /// The DynamoDB staging table (`--table`, default `reseq`; `reseq init` creates it).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.settings.sqs.table = table.into();
        self
    }

    /// The dead-letter queue for conflicts, late, expired and poison messages
    /// (`--dlq-url`; checked once at connect).
    pub fn dlq_url(mut self, url: impl Into<String>) -> Self {
        self.settings.sqs.dlq_url = Some(url.into());
        self
    }

    /// What happens to invalid messages (`--invalid`): left to the queue's redrive
    /// policy, or sent to the DLQ (which must then be set).
    pub fn invalid(mut self, invalid: InvalidPolicy) -> Self {
        self.settings.sqs.invalid = invalid;
        self
    }

    /// The per-context lease (`--lease-duration`, default 60 s; more than 0). Releases
    /// start at most ¾ into it, and each handler call must end within the last quarter:
    /// give at least four times your handler's slowest call.
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.settings.sqs.lease_duration = lease;
        self
    }

    /// The name this process takes leases under (default: a name of the host, process
    /// and start, [`lease_owner`]). It must differ between processes.
    pub fn lease_owner(mut self, owner: impl Into<String>) -> Self {
        self.lease_owner = Some(owner.into());
        self
    }

    /// The AWS configuration to use (default: the standard chain, [`aws_config()`]), e.g.
    /// the one your handler's own clients were made from.
    pub fn sdk_config(mut self, sdk: SdkConfig) -> Self {
        self.sdk = Some(sdk);
        self
    }

    /// The settings as they stand.
    pub fn config(&self) -> &Settings {
        &self.settings
    }

    /// Checks the settings, connects to the table and the DLQ (each checked once, so a
    /// wrong name fails here) and assembles the processor, with an SQS client of
    /// [`sqs_client_from`] (timeouts within the lease).
    pub async fn connect(mut self) -> Result<Resequencer<H>, SetupError> {
        let sdk = match self.sdk.take() {
            Some(sdk) => sdk,
            None => aws_config().await,
        };
        let sqs = sqs_client_from(&sdk, self.settings.sqs.lease_duration);
        self.connect_on(&sdk, sqs).await
    }

    /// [`ResequencerBuilder::connect`] on an SQS client the caller already has.
    pub async fn connect_on(self, sdk: &SdkConfig, sqs: aws_sdk_sqs::Client) -> Result<Resequencer<H>, SetupError> {
        let ResequencerBuilder {
            make_handler,
            builtin_output,
            settings,
            lease_owner: owner,
            sdk: _,
        } = self;
        let sqs_args = &settings.sqs;
        let ordering = &settings.ordering;
        sqs_args.validate_for(builtin_output).map_err(SetupError::Invalid)?;
        ordering.validate().map_err(SetupError::Invalid)?;
        let extractor = settings.extract.extractor().map_err(SetupError::Invalid)?;
        // Staged items outlive the retention: DynamoDB TTL never takes a waiting message.
        let sequences = extractor.typed.as_ref().map(|t| t.sequences.clone());
        // Staged items outlive the longest retention, a typed sequence's own included.
        let longest = sequences
            .iter()
            .flat_map(|f| f.sequences.iter().filter_map(|s| s.retention))
            .fold(ordering.retention, |a, b| a.max(b));
        let dynamo = DynamoConfig::for_retention(longest.as_std());
        let store =
            reseq_dynamodb::connect_on(reseq_dynamodb::client_from(sdk, &dynamo), &sqs_args.table, dynamo).await?;
        let handler = make_handler(sqs.clone(), sqs_args).await?;
        let dlq = SqsDeadLetters::new(sqs.clone(), sqs_args.dlq_url.clone());
        if sqs_args.dlq_url.is_some() {
            dlq.check().await.map_err(|e| SetupError::Dlq(e.to_string()))?;
        } else if sqs_args.invalid == InvalidPolicy::Dlq {
            return Err(SetupError::Invalid(
                "--invalid dlq needs --dlq-url (or RESEQ_DLQ_URL): the queue invalid messages are sent to".into(),
            ));
        }
        // Always under a lease: several workers may see one context at once.
        let config = EngineConfig {
            lease: Some(sqs_args.lease(owner.unwrap_or_else(|| lease_owner("reseq")))),
            stage_held_after: Some(sqs_args.stage_held_after.max(1)),
            sequences,
            ..ordering.engine_config()
        };
        let engine = Engine::new(store, SystemClock, config);
        let handler = Bounded::new(handler, sqs_args.handler_timeout().as_std());
        let processor = Processor::new(engine, extractor, handler, dlq, sqs_args.invalid);
        Ok(Resequencer {
            processor,
            sqs,
            settings,
        })
    }

    /// Runs the long-polling worker of `reseq worker` on `receive.queue_url` until `stop`
    /// resolves (then the batches in flight finish), the worker has been idle for
    /// `receive.exit_when_idle`, or the queue becomes unusable ([`SetupError::Worker`]).
    ///
    /// At start it reads the queue's attributes once (the queue must exist and be
    /// readable, its visibility timeout must not be 0 unless
    /// `receive.visibility_timeout` is set), lowers `--stage-held-after` below the
    /// queue's `maxReceiveCount`, connects ([`ResequencerBuilder::connect`]), and installs
    /// the metrics (default sink: stderr). Errors at start are one line
    /// ([`SetupError::is_configuration`] tells whether a retry can help).
    ///
    /// ```no_run
    /// # use reseq_core::{Handler, HandlerError, Release};
    /// # struct MyHandler;
    /// # impl Handler for MyHandler {
    /// #     async fn handle(&self, _: &Release<'_>) -> Result<(), HandlerError> { Ok(()) }
    /// # }
    /// use reseq_settings::{ReceiveArgs, Resequencer};
    ///
    /// # async fn example() -> Result<(), reseq_settings::SetupError> {
    /// let receive = ReceiveArgs::new("http://127.0.0.1:4566/000000000000/orders.fifo");
    /// let stop = async {
    ///     let _ = tokio::signal::ctrl_c().await;
    /// };
    /// let run = Resequencer::builder(MyHandler).table("orders").run_worker(&receive, stop).await?;
    /// let stats = run.worker.processor().engine().stats();
    /// println!("{} received, {} released", run.report.received, stats.released);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run_worker(
        mut self,
        receive: &ReceiveArgs,
        stop: impl Future<Output = ()>,
    ) -> Result<WorkerRun<H>, SetupError> {
        receive.validate().map_err(SetupError::Invalid)?;
        if self.lease_owner.is_none() {
            self.lease_owner = Some(lease_owner("worker"));
        }
        let sdk = match self.sdk.take() {
            Some(sdk) => sdk,
            None => aws_config().await,
        };
        let sqs = sqs_client_from(&sdk, self.settings.sqs.lease_duration);
        // One GetQueueAttributes: the queue exists and can be read, its visibility timeout
        // and its redrive policy.
        let queue = inspect_queue(&sqs, &receive.queue_url)
            .await
            .map_err(|err| SetupError::Queue(err.to_string()))?;
        if receive.visibility_timeout.is_none() && queue.visibility_timeout.0 == 0 {
            return Err(SetupError::Queue(format!(
                "the queue {} given by --queue-url has a VisibilityTimeout of 0s, which leaves every message \
                 visible to other receivers while it is handled: give --visibility-timeout (e.g. 30s) or set the \
                 queue's",
                receive.queue_url
            )));
        }
        let setting = self.settings.sqs.stage_held_after;
        let lowered = stage_held_after(setting, queue.max_receive_count);
        self.settings.sqs.stage_held_after = lowered;
        let telemetry = self.settings.telemetry.clone();
        let no_dlq = self.settings.sqs.dlq_url.is_none();
        let release_budget = self.settings.sqs.release_budget();
        let resequencer = self.connect_on(&sdk, sqs.clone()).await?;
        let telemetry = telemetry
            .install(reseq_metrics::Sink::Stderr, Some(&receive.queue_url))
            .map_err(SetupError::Invalid)?;
        let processor = resequencer.into_processor().with_telemetry(telemetry);
        if lowered != setting {
            tracing::info!(
                max_receive_count = queue.max_receive_count,
                "the queue's redrive policy moves a message after {} receives: messages held back by --max-staged \
                 are staged after {lowered} receives instead of --stage-held-after {setting}",
                queue.max_receive_count.unwrap_or(0),
            );
        }
        match receive.visibility_timeout {
            Some(visibility) => tracing::info!("receiving with --visibility-timeout {visibility}"),
            None => tracing::info!(
                "receiving with the queue's own visibility timeout, {}",
                queue.visibility_timeout
            ),
        }
        if no_dlq {
            tracing::warn!(
                "no --dlq-url: conflicts, late and poison messages stay on the queue until its redrive policy moves \
                 them"
            );
        }
        let config = WorkerConfig {
            queue_url: receive.queue_url.clone(),
            receivers: receive.receivers,
            wait_time: receive.wait_time,
            visibility_timeout: receive.visibility_timeout,
            exit_when_idle: receive.exit_when_idle,
            sweep_every: receive.sweep_every,
            release_budget,
        };
        let worker = Worker::new(sqs, processor, config, queue);
        let started = Instant::now();
        let report = worker.run(stop).await?;
        Ok(WorkerRun {
            report,
            worker,
            elapsed: started.elapsed(),
        })
    }
}

/// What [`ResequencerBuilder::run_worker`] did: the worker's report, and the worker
/// itself, for the engine's [`Stats`](reseq_core::Stats) and the store's cost.
pub struct WorkerRun<H> {
    /// Received, deleted, left on the queue, swept; why it stopped.
    pub report: WorkerReport,
    /// The stopped worker (`worker.processor().engine().stats()`).
    pub worker: Worker<DynamoStore, SystemClock, Bounded<H>, SqsDeadLetters>,
    /// How long it ran.
    pub elapsed: std::time::Duration,
}

/// How the worker receives: the flags `reseq worker` adds to [`Settings`].
#[derive(Args, Clone, Debug)]
pub struct ReceiveArgs {
    /// The SQS queue to consume (FIFO or standard).
    #[arg(long, env = "RESEQ_QUEUE_URL", value_name = "URL")]
    pub queue_url: String,
    /// Receive loops, each with at most one batch of 10 in flight.
    #[arg(long, env = "RESEQ_RECEIVERS", default_value_t = 4, value_name = "N", value_parser = at_least_one)]
    pub receivers: usize,
    /// Long-polling wait of one receive (at most 20s).
    #[arg(long, env = "RESEQ_WAIT_TIME", default_value = "20s", value_name = "DURATION")]
    pub wait_time: Duration,
    /// Visibility timeout of received messages, extended while their batch runs. Default: the queue's own.
    #[arg(long, env = "RESEQ_VISIBILITY_TIMEOUT", value_name = "DURATION")]
    pub visibility_timeout: Option<Duration>,
    /// How often timers (gap timeouts, retries, retention, dead workers' leases) are swept.
    #[arg(
        long,
        env = "RESEQ_SWEEP_EVERY",
        default_value = "5s",
        value_name = "DURATION",
        value_parser = positive_duration
    )]
    pub sweep_every: Duration,
    /// Exit once nothing was received, released or swept for this long (for scripts and tests).
    #[arg(long, env = "RESEQ_EXIT_WHEN_IDLE", value_name = "DURATION")]
    pub exit_when_idle: Option<Duration>,
}

/// [`ReceiveArgs`] read from the environment.
#[derive(Parser)]
struct ReceiveEnv {
    #[command(flatten)]
    receive: ReceiveArgs,
}

impl ReceiveArgs {
    /// Receiving from `queue_url` with the flags' defaults: 4 receive loops, 20 s long
    /// polls, the queue's visibility timeout, a sweep every 5 s, never idle.
    ///
    /// ```
    /// use reseq_core::Duration;
    /// use reseq_settings::ReceiveArgs;
    ///
    /// let receive = ReceiveArgs {
    ///     exit_when_idle: Some(Duration::from_secs(10)),
    ///     ..ReceiveArgs::new("https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo")
    /// };
    /// assert_eq!(receive.receivers, 4);
    /// assert!(receive.validate().is_ok());
    /// ```
    pub fn new(queue_url: impl Into<String>) -> ReceiveArgs {
        ReceiveArgs {
            queue_url: queue_url.into(),
            receivers: 4,
            wait_time: Duration::from_secs(20),
            visibility_timeout: None,
            sweep_every: Duration::from_secs(5),
            exit_when_idle: None,
        }
    }

    /// `RESEQ_QUEUE_URL` (required), `RESEQ_RECEIVERS`, `RESEQ_WAIT_TIME`,
    /// `RESEQ_VISIBILITY_TIMEOUT`, `RESEQ_SWEEP_EVERY`, `RESEQ_EXIT_WHEN_IDLE`; one line
    /// naming the variable when one is missing or wrong.
    pub fn from_env() -> Result<ReceiveArgs, String> {
        if std::env::var_os("RESEQ_QUEUE_URL").is_none_or(|url| url.is_empty()) {
            return Err("invalid settings: RESEQ_QUEUE_URL is not set: the URL of the queue to consume".into());
        }
        let receive = parse_env::<ReceiveEnv>()?.receive;
        receive.validate().map_err(|line| {
            // The check names the flag; name the variable too.
            let env = ["--wait-time", "--visibility-timeout", "--receivers", "--sweep-every"]
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
        Ok(receive)
    }

    /// The limits SQS sets: a long poll waits at most 20 s, a visibility timeout is 1 s
    /// to 12 h. One line naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.wait_time.0 > 20_000 {
            return Err(format!(
                "invalid value '{}' for '--wait-time': SQS long polling waits at most 20s",
                self.wait_time
            ));
        }
        if let Some(visibility) = self.visibility_timeout.filter(|v| v.0 < 1000 || v.0 > 43_200_000) {
            return Err(format!(
                "invalid value '{visibility}' for '--visibility-timeout': SQS takes 1s to 12h"
            ));
        }
        if self.receivers == 0 {
            return Err("invalid value '0' for '--receivers': must be at least 1".into());
        }
        if self.sweep_every.0 == 0 {
            return Err("invalid value '0s' for '--sweep-every': must be more than 0 (e.g. 500ms, 5s, 1m)".into());
        }
        Ok(())
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiving_with_new_is_receiving_with_the_flags_defaults() {
        let parsed = ReceiveEnv::try_parse_from(["t", "--queue-url", "q"]).expect("parse");
        assert_eq!(format!("{:?}", parsed.receive), format!("{:?}", ReceiveArgs::new("q")));
    }

    #[test]
    fn receive_limits_are_named() {
        let long_poll = ReceiveArgs {
            wait_time: Duration::from_secs(21),
            ..ReceiveArgs::new("q")
        };
        assert!(long_poll.validate().unwrap_err().contains("--wait-time"));
        let visibility = ReceiveArgs {
            visibility_timeout: Some(Duration::from_millis(500)),
            ..ReceiveArgs::new("q")
        };
        assert!(visibility.validate().unwrap_err().contains("--visibility-timeout"));
    }
}
