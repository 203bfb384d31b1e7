//! Why a message was rejected: the names users see in `reseqReason` and in `reseq run`'s
//! DLQ file (SPEC §7). They are the contract; never rename one.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    InvalidJson,
    MissingContextId,
    /// The context id is present but not usable: empty, over 1024 bytes, or not a string.
    InvalidContextId,
    MissingSequence,
    InvalidSequence,
    MissingType,
    UnknownType,
    TooLarge,
    Conflict,
    Late,
    Expired,
    HandlerFailed,
    /// `reseq run` only: the context still held `--max-staged` messages when the input ended,
    /// so this line could be neither released nor staged.
    MaxStaged,
    /// `reseq run` without `--state` only: the line was still waiting (for a missing
    /// position) when the input ended, and an in-memory store keeps nothing.
    Unreleased,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid-json",
            Reason::MissingContextId => "missing-context-id",
            Reason::InvalidContextId => "invalid-context-id",
            Reason::MissingSequence => "missing-sequence",
            Reason::InvalidSequence => "invalid-sequence",
            Reason::MissingType => "missing-type",
            Reason::UnknownType => "unknown-type",
            Reason::TooLarge => "too-large",
            Reason::Conflict => "conflict",
            Reason::Late => "late",
            Reason::Expired => "expired",
            Reason::HandlerFailed => "handler-failed",
            Reason::MaxStaged => "max-staged",
            Reason::Unreleased => "unreleased",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_spec_names() {
        for r in [
            Reason::InvalidJson,
            Reason::MissingContextId,
            Reason::HandlerFailed,
            Reason::TooLarge,
            Reason::MaxStaged,
            Reason::Unreleased,
        ] {
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{}\"", r.as_str()));
        }
    }
}
