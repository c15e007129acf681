//! Fixed-interval schedules (`every = "30s"`), drift-free.
//!
//! Celery's `schedule(run_every)` fires at "last run + interval", so every late
//! wake-up pushes all later runs back and two beats started a second apart
//! disagree on when a run is due. Here the slots are the multiples of the
//! interval counted from the Unix epoch (1970-01-01T00:00:00Z): `every = "5m"`
//! fires at :00, :05, :10 ... whatever the start time or the lateness of the
//! previous run, and `every = "1d"` fires at midnight UTC. Because every beat
//! computes the same slots, a slot is a shared name two beats can race to claim
//! (see the exactly-once design in the module docs of `beat`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Why an interval was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid interval `{value}`: {reason}")]
pub struct IntervalError {
    /// The interval as written.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A positive whole number of seconds between slots.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interval {
    secs: u64,
}

impl fmt::Debug for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Interval({self})")
    }
}

/// Units in decreasing size, so `Display` picks the largest exact one.
const UNITS: [(&str, u64, &str); 4] = [
    ("d", 86_400, "day"),
    ("h", 3_600, "hour"),
    ("m", 60, "minute"),
    ("s", 1, "second"),
];

/// The largest slot we accept, one year: far beyond any sensible schedule, and
/// small enough that slot arithmetic in milliseconds can never overflow.
const MAX_SECS: u64 = 366 * 86_400;

impl Interval {
    /// An interval of `secs` seconds; zero and intervals over a year are rejected.
    pub fn from_secs(secs: i64) -> Result<Self, IntervalError> {
        let err = |reason: &str| IntervalError {
            value: format!("{secs}"),
            reason: reason.to_string(),
        };
        match secs {
            s if s < 0 => Err(err("intervals must be positive")),
            0 => Err(err("the interval must be at least 1 second")),
            s if s as u64 > MAX_SECS => Err(err("the interval must be at most 366 days")),
            s => Ok(Interval { secs: s as u64 }),
        }
    }

    /// Parses `"30s"`, `"5m"`, `"2h"` or `"1d"`: a positive whole number and one
    /// unit. Fractions and compound forms (`1h30m`) are rejected rather than
    /// guessed at; write `90m`.
    pub fn parse(text: &str) -> Result<Self, IntervalError> {
        let err = |reason: String| IntervalError {
            value: text.to_string(),
            reason,
        };
        let trimmed = text.trim();
        if let Some(rest) = trimmed.strip_prefix('-') {
            if rest.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(err("intervals must be positive".into()));
            }
        }
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits_end);
        if number.is_empty() {
            return Err(err(
                "expected a whole number followed by s, m, h or d (e.g. `30s`)".into(),
            ));
        }
        let Some((_, factor, _)) = UNITS.iter().find(|(u, _, _)| *u == unit.trim()) else {
            return Err(err(if unit.is_empty() {
                "missing unit: add s, m, h or d (e.g. `30s`)".into()
            } else {
                format!("unknown unit `{unit}`: use s, m, h or d, with a whole number")
            }));
        };
        let n: u64 = number
            .parse()
            .map_err(|_| err("the number is too large".into()))?;
        let secs = n
            .checked_mul(*factor)
            .ok_or_else(|| err("the number is too large".into()))?;
        let secs = i64::try_from(secs).map_err(|_| err("the number is too large".into()))?;
        Interval::from_secs(secs).map_err(|e| err(e.reason))
    }

    /// The interval as a duration.
    pub fn as_duration(&self) -> Duration {
        Duration::from_secs(self.secs)
    }

    fn millis(&self) -> i64 {
        // Bounded by MAX_SECS, so this cannot overflow.
        self.secs as i64 * 1000
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let p = self.millis();
        let slot = t
            .timestamp_millis()
            .div_euclid(p)
            .checked_add(1)?
            .checked_mul(p)?;
        DateTime::from_timestamp_millis(slot)
    }

    /// The last slot at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let p = self.millis();
        DateTime::from_timestamp_millis(t.timestamp_millis().div_euclid(p) * p)
    }

    /// The interval in words: "every 30 seconds", "every minute", "every 2 hours".
    pub fn describe(&self) -> String {
        let (_, factor, word) = UNITS
            .iter()
            .find(|(_, f, _)| self.secs.checked_rem(*f) == Some(0))
            .copied()
            .unwrap_or(("s", 1, "second"));
        let n = self.secs / factor;
        if n == 1 {
            format!("every {word}")
        } else {
            format!("every {n} {word}s")
        }
    }
}

impl fmt::Display for Interval {
    /// The canonical short form, e.g. `30s`, `5m`, `90m`, `1d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, factor, _) = UNITS
            .iter()
            .find(|(_, f, _)| self.secs.checked_rem(*f) == Some(0))
            .copied()
            .unwrap_or(("s", 1, "second"));
        write!(f, "{}{unit}", self.secs / factor)
    }
}

impl FromStr for Interval {
    type Err = IntervalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Interval::parse(s)
    }
}
