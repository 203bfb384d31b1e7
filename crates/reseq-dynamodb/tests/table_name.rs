//! A table name DynamoDB refuses (empty, a space, a malformed ARN) is a configuration
//! error that names `--table`: not an SDK debug dump, not "a bug in reseq-dynamodb".
//! Needs DynamoDB Local (`eval "$(scripts/emulators.sh env)"`); skips without it.

use reseq_core::StoreError;
use reseq_dynamodb::{DynamoConfig, connect, create_table, load_client};

mod common;
use common::emulator;

#[tokio::test]
async fn a_table_name_dynamodb_refuses_names_the_flag() {
    if emulator().is_none() {
        return;
    }
    let client = load_client(&DynamoConfig::default()).await;
    for bad in ["", "a b", "arn:aws:dynamodb:us-east-1:000000000000:table/x y"] {
        let errors = [
            connect(bad, DynamoConfig::default()).await.err(),
            create_table(&client, bad).await.err(),
        ];
        for err in errors {
            match err {
                Some(StoreError::Fatal(text)) => {
                    assert!(
                        text.contains("--table") && text.contains("table name"),
                        "{bad:?}: {text}"
                    );
                    assert!(!text.contains("please report"), "{bad:?}: {text}");
                    assert!(!text.contains("ConstructionFailure {"), "no SDK debug struct: {text}");
                    assert!(!text.contains('\n'), "one line: {text}");
                }
                other => panic!("{bad:?}: expected a configuration error, got {other:?}"),
            }
        }
    }
}
