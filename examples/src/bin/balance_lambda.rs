//! `balance-lambda`: reseq as an AWS Lambda function with a handler of one's own, the
//! [`Balances`] (one account per context, each message a deposit or a withdrawal, applied
//! once and in order, fenced by `(context_id, seq)`).
//!
//! Settings: `BALANCE_TABLE` (the accounts' table, key `accountId`), and the `RESEQ_*`
//! variables of reseq's own function (`RESEQ_TABLE`, `RESEQ_DLQ_URL`,
//! `RESEQ_LEASE_DURATION`, `RESEQ_GAP_TIMEOUT`, `RESEQ_ON_POISON`, …). Its triggers are
//! those of `bootstrap`: the input queue (with `ReportBatchItemFailures`) and a schedule
//! (`rate(1 minute)`) for the timer sweep. Build it as `bootstrap` is built:
//!
//! ```sh
//! cargo lambda build --profile lambda -p reseq-examples --bin balance-lambda
//! ```

use reseq_examples::balance::Balances;
use reseq_settings::Resequencer;

fn main() -> Result<(), lambda_runtime::Error> {
    // `run` sets up the Runtime API proxy, loads the AWS configuration, calls this closure,
    // connects (RESEQ_TABLE and RESEQ_DLQ_URL checked once, the engine under a lease, each
    // handler call bounded by a quarter of it) and serves SQS and scheduled events.
    reseq_lambda::run(|sdk| async move {
        let table = std::env::var("BALANCE_TABLE")
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or("BALANCE_TABLE is not set: the DynamoDB table of the accounts (key accountId)")?;
        let balances = Balances::new(aws_sdk_dynamodb::Client::new(&sdk), table);
        Ok(Resequencer::from_env(balances)?)
    })
}
