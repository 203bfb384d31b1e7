//! Time as the engine sees it: milliseconds since the Unix epoch, read through a [`Clock`]
//! so that tests and simulations decide what "now" is.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl Millis {
    /// `d` later (saturating).
    pub fn plus(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(d.0))
    }
    /// `d` earlier (saturating at the epoch).
    pub fn minus(self, d: Duration) -> Millis {
        Millis(self.0.saturating_sub(d.0))
    }
    /// How long ago `earlier` was, as seen from `self` (zero if it is in the future).
    pub fn since(self, earlier: Millis) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
}

/// A length of time in milliseconds, written `500ms`, `12s`, `5m`, `3h`, `14d` (SPEC §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Duration(pub u64);

impl Duration {
    /// `s` seconds.
    pub const fn from_secs(s: u64) -> Duration {
        Duration(s * 1000)
    }
    /// `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Duration {
        Duration(ms)
    }
    /// As a [`std::time::Duration`].
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

/// A duration that is not a whole number and a unit (`ms`, `s`, `m`, `h`, `d`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: write a whole number and a unit, e.g. 500ms, 12s, 5m, 3h or 14d")]
pub struct ParseDurationError {
    input: String,
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurationError { input: s.to_string() };
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits.parse().map_err(|_| err())?;
        let factor = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        n.checked_mul(factor).map(Duration).ok_or_else(err)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, factor) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms != 0 && ms.is_multiple_of(factor) {
                return write!(f, "{}{unit}", ms / factor);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// Where the engine reads the current time. The engine never looks at the wall clock itself.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Millis;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Millis(since_epoch.as_millis() as u64)
    }
}

/// A clock that only moves when told to: for tests and deterministic simulation.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Millis) -> ManualClock {
        ManualClock {
            now: AtomicU64::new(start.0),
        }
    }
    /// Moves it to `t` (backwards too).
    pub fn set(&self, t: Millis) {
        self.now.store(t.0, Ordering::SeqCst);
    }
    /// Moves it `d` forward.
    pub fn advance(&self, d: Duration) {
        self.now.fetch_add(d.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.now.load(Ordering::SeqCst))
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> Millis {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_units() {
        assert_eq!("500ms".parse(), Ok(Duration(500)));
        assert_eq!("12s".parse(), Ok(Duration(12_000)));
        assert_eq!("5m".parse(), Ok(Duration(300_000)));
        assert_eq!("3h".parse(), Ok(Duration(10_800_000)));
        assert_eq!("14d".parse(), Ok(Duration(14 * 86_400_000)));
        assert_eq!("0s".parse(), Ok(Duration(0)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "",
            "12",
            "s",
            "1.5s",
            "-1s",
            "12 s",
            "5w",
            "99999999999999999999d",
            "1sec",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(Duration(14 * 86_400_000).to_string(), "14d");
        assert_eq!(Duration(90_000).to_string(), "90s");
        assert_eq!(Duration(1_500).to_string(), "1500ms");
        assert_eq!(Duration(0).to_string(), "0ms");
    }
}
