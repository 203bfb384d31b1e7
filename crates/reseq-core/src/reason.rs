//! Why a message was rejected: the names users see in `reseqReason` and in `reseq run`'s
//! DLQ file (SPEC §7). They are the contract; never rename one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a message went to the dead-letter sink; [`Reason::as_str`] is its SPEC name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// `invalid-json`: a JSON Pointer was configured and the body is not JSON.
    InvalidJson,
    /// `missing-context-id`: no attribute, path or group id gave a context id.
    MissingContextId,
    /// The context id is present but not usable: empty, over 1024 bytes, or not a string.
    InvalidContextId,
    /// `missing-sequence`: no attribute or path gave a position.
    MissingSequence,
    /// `invalid-sequence`: the position is no whole number, or below the first position.
    InvalidSequence,
    /// `missing-type`: a typed sequence's message without a type.
    MissingType,
    /// `unknown-type`: a type no sequence declares.
    UnknownType,
    /// `too-large`: a body over the limit (the source's, or the store's item limit).
    TooLarge,
    /// `conflict`: another body for a position already staged or released.
    Conflict,
    /// `late`: a position that had been skipped (`--late dlq`).
    Late,
    /// `expired`: it waited longer than the retention.
    Expired,
    /// `handler-failed`: poison under `--on-poison skip`, or rejected by the target.
    HandlerFailed,
    /// `reseq run` only: the context still held `--max-staged` messages when the input ended,
    /// so this line could be neither released nor staged.
    MaxStaged,
    /// `reseq run` without `--state` only: the line was still waiting (for a missing
    /// position) when the input ended, and an in-memory store keeps nothing.
    Unreleased,
}

impl Reason {
    /// Every reason, in declaration order (the index of each is `reason as usize`).
    pub const ALL: [Reason; 14] = [
        Reason::InvalidJson,
        Reason::MissingContextId,
        Reason::InvalidContextId,
        Reason::MissingSequence,
        Reason::InvalidSequence,
        Reason::MissingType,
        Reason::UnknownType,
        Reason::TooLarge,
        Reason::Conflict,
        Reason::Late,
        Reason::Expired,
        Reason::HandlerFailed,
        Reason::MaxStaged,
        Reason::Unreleased,
    ];

    /// The name users see (`reseqReason`, the DLQ file's `reason`).
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

impl std::str::FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
            format!("{s:?} is not a reason: use one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_at_its_index_and_parses_back() {
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i);
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
        }
        assert!("nope".parse::<Reason>().unwrap_err().contains("late"));
    }

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
