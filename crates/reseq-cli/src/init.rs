//! `reseq init`: creates what reseq needs on AWS or on the local stand-ins — the DynamoDB
//! table (TTL on) and, with `--with-queues`, an input FIFO queue with a FIFO dead-letter
//! queue behind a redrive policy, and an output FIFO queue. Idempotent: what exists is
//! reported, not recreated.

use std::process::ExitCode;

use anyhow::{Context, Result};
use aws_sdk_sqs::types::QueueAttributeName;
use clap::Args;
use reseq_dynamodb::{Created, DynamoConfig, create_table, load_client};

#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    /// The DynamoDB table that stages messages and holds each context's state.
    #[arg(long, env = "RESEQ_TABLE", default_value = "reseq")]
    pub table: String,
    /// Also create queues: <prefix>-input.fifo, <prefix>-dlq.fifo (its redrive target) and <prefix>-output.fifo.
    #[arg(long, env = "RESEQ_WITH_QUEUES")]
    pub with_queues: bool,
    /// Name prefix of the queues --with-queues creates.
    #[arg(long, env = "RESEQ_QUEUE_PREFIX", default_value = "reseq")]
    pub queue_prefix: String,
    /// How many receives before SQS moves a message to the dead-letter queue (SQS+Lambda: at least 5).
    #[arg(
        long,
        env = "RESEQ_MAX_RECEIVE_COUNT",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub max_receive_count: u32,
}

pub fn main(args: InitArgs) -> Result<ExitCode> {
    if let Err(line) = reseq_settings::check_table_name(&args.table) {
        eprintln!("reseq: {line}");
        return Ok(ExitCode::from(2));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(init(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn init(args: InitArgs) -> Result<()> {
    let client = load_client(&DynamoConfig::default()).await;
    let created = create_table(&client, &args.table).await?;
    let verb = match created {
        Created::Created => "created",
        Created::AlreadyExisted => "exists ",
    };
    println!("table  {verb} {}", args.table);
    if !args.with_queues {
        return Ok(());
    }
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let prefix = &args.queue_prefix;
    let dlq_url = create_fifo(&sqs, &format!("{prefix}-dlq.fifo"), None).await?;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .with_context(|| format!("cannot read the ARN of queue {dlq_url}"))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .with_context(|| format!("queue {dlq_url} has no ARN"))?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": args.max_receive_count.to_string(),
    });
    let input_url = create_fifo(&sqs, &format!("{prefix}-input.fifo"), Some(redrive.to_string())).await?;
    let output_url = create_fifo(&sqs, &format!("{prefix}-output.fifo"), None).await?;
    println!("queue  input  {input_url}");
    println!("queue  dlq    {dlq_url}");
    println!("queue  output {output_url}");
    Ok(())
}

/// Creates (or finds, if it exists with the same attributes) a FIFO queue; returns its URL.
async fn create_fifo(sqs: &aws_sdk_sqs::Client, name: &str, redrive: Option<String>) -> Result<String> {
    let mut request = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
    if let Some(policy) = redrive {
        request = request.attributes(QueueAttributeName::RedrivePolicy, policy);
    }
    let created = request.send().await.map_err(|e| {
        let detail = reseq_sqs::describe_sqs_error(&e);
        anyhow::anyhow!(
            "cannot create SQS queue {name}: {detail} (if it exists with other attributes, delete it or choose \
             another --queue-prefix; check AWS_ENDPOINT_URL_SQS and credentials)"
        )
    })?;
    created
        .queue_url
        .with_context(|| format!("SQS returned no URL for queue {name}"))
}
