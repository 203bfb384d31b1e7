//! Support for the fuzz tests (docs/RELIABILITY.md, "Fuzzing"): the checked-in seed
//! corpus under `fuzz/corpus/<target>/` and byte-level mutations of its inputs. No
//! dependency on a fuzzing framework: the tests draw the mutations with proptest under
//! plain `cargo test`.

use std::path::PathBuf;

/// The folder of a target's seed inputs: `fuzz/corpus/<target>` at the workspace root.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Every seed input of a target, by file name, sorted. Panics if the folder is missing or
/// empty: a fuzz test without its corpus would test much less than it says.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("corpus file"))
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "fuzz corpus {} is empty", dir.display());
    seeds
}

/// One byte-level edit of an input, as a fuzzer's mutator makes them.
#[derive(Clone, Copy, Debug)]
pub enum Mutation {
    /// Flip one bit of the byte at `at` (modulo the length).
    FlipBit { at: usize, bit: u8 },
    /// Overwrite the byte at `at` with `byte`.
    Set { at: usize, byte: u8 },
    /// Insert `byte` at `at`.
    Insert { at: usize, byte: u8 },
    /// Remove `len` bytes from `at`.
    Remove { at: usize, len: usize },
    /// Copy `len` bytes from `from` to `at` (repeats a piece of structure).
    Duplicate { from: usize, len: usize, at: usize },
    /// Cut the input at `at`.
    Truncate { at: usize },
    /// Insert a token that parsers care about.
    Token { at: usize, token: usize },
}

/// Tokens worth inserting into JSON-ish inputs and durations.
pub const TOKENS: &[&str] = &[
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "true",
    "-",
    "1e999",
    "18446744073709551616",
    "18446744073709551615",
    "-0",
    "\u{0}",
    "\u{feff}",
    "é",
    "ms",
    "d",
    "\"contextId\":",
    "\"sequence\":",
    "\"messageId\":",
    "\"Records\":",
    "\"messageAttributes\":",
    "\"binaryValue\":",
];

/// `seed` with the mutations applied in order.
pub fn mutate(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for m in mutations {
        let len = out.len();
        let pos = |at: usize| if len == 0 { 0 } else { at % (len + 1) };
        match *m {
            Mutation::FlipBit { at, bit } if len > 0 => out[at % len] ^= 1 << (bit % 8),
            Mutation::Set { at, byte } if len > 0 => out[at % len] = byte,
            Mutation::Insert { at, byte } => out.insert(pos(at), byte),
            Mutation::Remove { at, len: n } if len > 0 => {
                let start = at % len;
                let end = start.saturating_add(n % 16 + 1).min(len);
                out.drain(start..end);
            }
            Mutation::Duplicate { from, len: n, at } if len > 0 => {
                let start = from % len;
                let end = start.saturating_add(n % 64 + 1).min(len);
                let piece: Vec<u8> = out[start..end].to_vec();
                let at = pos(at);
                out.splice(at..at, piece);
            }
            Mutation::Truncate { at } => out.truncate(pos(at)),
            Mutation::Token { at, token } => {
                let at = pos(at);
                out.splice(at..at, TOKENS[token % TOKENS.len()].bytes());
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds() {
        let all = [
            Mutation::FlipBit { at: 99, bit: 9 },
            Mutation::Set { at: 7, byte: 0 },
            Mutation::Insert {
                at: usize::MAX,
                byte: 1,
            },
            Mutation::Remove {
                at: usize::MAX,
                len: usize::MAX,
            },
            Mutation::Duplicate {
                from: usize::MAX,
                len: usize::MAX,
                at: usize::MAX,
            },
            Mutation::Token {
                at: 3,
                token: usize::MAX,
            },
            Mutation::Truncate { at: 2 },
        ];
        for seed in [&b""[..], b"a", b"{\"contextId\":\"a\"}"] {
            mutate(seed, &all);
            for m in all {
                mutate(seed, &[m]);
            }
        }
        assert_eq!(mutate(b"abc", &[Mutation::Truncate { at: 1 }]), b"a");
    }
}
