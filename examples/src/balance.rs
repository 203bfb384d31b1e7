//! Account balances: each context is an account, each message a deposit or a withdrawal
//! (`{"amount": 250}`, `{"amount": -30}`), applied by the Lambda function
//! (`balance-lambda`) to one DynamoDB item per account (key `accountId`: `balance`,
//! `lastSeq`).
//!
//! Adding to a balance is not idempotent: applied twice, a deposit counts twice. Order
//! matters too: a withdrawal may only be checked against the deposits before it. reseq
//! gives the order; the fence in the write makes a repeated release harmless (see the
//! crate's documentation): the increment, the overdraft check and the new `lastSeq` are
//! one conditional `UpdateItem`.
//!
//! The three kinds of failure, as reseq wants them:
//! - a body that is no `{"amount": <integer>}` can never be applied:
//!   [`HandlerError::Rejected`], dead-lettered `handler-failed`, the account goes on;
//! - a withdrawal the balance cannot cover is a business decision:
//!   [`HandlerError::Permanent`], poison; under `--on-poison block` (the default) the
//!   account stops there until an operator runs `reseq retry` (after a deposit was made
//!   by other means) or `reseq skip`;
//! - DynamoDB unavailable: [`HandlerError::Retryable`] (see [`crate::handler_error`]).

use aws_sdk_dynamodb::types::AttributeValue;
use reseq_core::{Handler, HandlerError, Release};

/// The balances handler.
pub struct Balances {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl Balances {
    /// The balances in `table` (key `accountId`, string; see [`crate::create_table`]).
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Balances {
        Balances {
            client,
            table: table.into(),
        }
    }

    /// The amount a message moves, or why it has none.
    pub fn amount(body: &[u8]) -> Result<i64, String> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e})"))?;
        value
            .get("amount")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| "the body has no integer \"amount\"".to_string())
    }

    /// The account's balance and last applied position, read consistently (`None`: no
    /// such account yet).
    pub async fn account(&self, account: &str) -> Result<Option<(i64, u64)>, HandlerError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("accountId", AttributeValue::S(account.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| crate::handler_error(&format!("reading account {account:?}"), &err))?
            .item;
        let number = |item: &std::collections::HashMap<String, AttributeValue>, name: &str| {
            item.get(name)
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or(0)
        };
        Ok(item.map(|item| (number(&item, "balance"), number(&item, "lastSeq") as u64)))
    }
}

impl Handler for Balances {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        let account = msg.context_id;
        let amount = Balances::amount(msg.body)
            .map_err(|why| HandlerError::Rejected(format!("account {account:?} position {}: {why}", msg.seq)))?;
        // The fence: apply position `seq` only if the account has not applied it (or a
        // later one) yet. With it, in the same condition, the overdraft rule.
        let fence = "(attribute_not_exists(lastSeq) OR lastSeq < :seq)";
        let condition = if amount < 0 {
            format!("{fence} AND balance >= :needed")
        } else {
            fence.to_string()
        };
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("accountId", AttributeValue::S(account.to_string()))
            .update_expression("SET balance = if_not_exists(balance, :zero) + :amount, lastSeq = :seq")
            .condition_expression(condition)
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":amount", AttributeValue::N(amount.to_string()))
            .expression_attribute_values(":seq", AttributeValue::N(msg.seq.to_string()));
        if amount < 0 {
            update = update.expression_attribute_values(":needed", AttributeValue::N((-amount).to_string()));
        }
        match update.send().await {
            Ok(_) => Ok(()),
            Err(err) if crate::is_condition_failure(&err) => {
                // Which part of the condition failed? Read the account (consistently): a
                // position it has applied already is a repeat, dropped; otherwise the
                // balance could not cover the withdrawal.
                match self.account(account).await? {
                    Some((_, last)) if last >= msg.seq => {
                        tracing::info!(account, seq = msg.seq, "already applied: a repeat, dropped");
                        Ok(())
                    }
                    balance => Err(HandlerError::Permanent(format!(
                        "account {account:?} position {}: a withdrawal of {} with a balance of {}",
                        msg.seq,
                        -amount,
                        balance.map_or(0, |(b, _)| b)
                    ))),
                }
            }
            Err(err) => Err(crate::handler_error(
                &format!("account {account:?} position {}", msg.seq),
                &err,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_amount_is_an_integer_in_a_json_body() {
        assert_eq!(Balances::amount(br#"{"amount": 250}"#), Ok(250));
        assert_eq!(Balances::amount(br#"{"amount": -30, "memo": "rent"}"#), Ok(-30));
        assert!(Balances::amount(b"250").unwrap_err().contains("amount"));
        assert!(Balances::amount(br#"{"amount": 1.5}"#).is_err());
        assert!(Balances::amount(b"{").unwrap_err().contains("not JSON"));
    }
}
