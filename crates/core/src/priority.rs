//! How urgent a CVE is: a score in `[0, 1]` for ranking, and a class
//! (high/medium/low) that decides how soon the LLM explains it.
//!
//! # The score
//!
//! ```text
//! c = CVSS base score / 10            (0.5 when no score is known yet)
//! r = 0.5 ^ (age_days / 30)           (recency: 1 when new, halves every 30 days)
//! x = 1 if exploited (CISA KEV) else 0
//! e = EPSS probability                 (only when known)
//!
//! with EPSS:     score = 0.35 c + 0.20 r + 0.30 x + 0.15 e
//! without EPSS:  score = (0.35 c + 0.20 r + 0.30 x) / 0.85
//! ```
//!
//! Why these choices: exploitation is the strongest signal a small team has,
//! so a KEV entry alone lifts a CVE above any unexploited one of the same age
//! and score. An unscored CVE counts as middling (0.5) rather than zero,
//! because NVD often takes weeks to score a new CVE and those are exactly the
//! ones to watch. Without EPSS the remaining weights are rescaled so that a
//! missing EPSS value neither helps nor hurts. The result is clamped to
//! `[0, 1]` and rounded to four decimals so that it is stable in the database.
//!
//! # The class (DESIGN §3)
//!
//! * **high**: exploited, or CRITICAL, or published less than 7 days ago;
//! * **medium**: HIGH, or published less than 30 days ago;
//! * **low**: everything else.
//!
//! "Less than" is strict: a CVE published exactly 7 days ago is no longer high
//! on account of its age. A publication date in the future (clock skew between
//! NVD and us) counts as age zero.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::{Cve, Severity};

const W_CVSS: f64 = 0.35;
const W_RECENCY: f64 = 0.20;
const W_EXPLOITED: f64 = 0.30;
const W_EPSS: f64 = 0.15;
const RECENCY_HALF_LIFE_DAYS: f64 = 30.0;

/// The priority score of `cve` at time `now`, in `[0, 1]`. See the module docs.
pub fn priority_score(cve: &Cve, now: DateTime<Utc>) -> f64 {
    let c = cve
        .cvss_score()
        .map(|s| (s / 10.0).clamp(0.0, 1.0))
        .unwrap_or(0.5);
    let age_days = age(cve, now).num_seconds() as f64 / 86_400.0;
    let r = 0.5_f64.powf(age_days / RECENCY_HALF_LIFE_DAYS);
    let x = if cve.exploited() { 1.0 } else { 0.0 };
    let raw = match cve.epss.as_ref().map(|e| e.score) {
        Some(e) if e.is_finite() => {
            W_CVSS * c + W_RECENCY * r + W_EXPLOITED * x + W_EPSS * e.clamp(0.0, 1.0)
        }
        _ => (W_CVSS * c + W_RECENCY * r + W_EXPLOITED * x) / (1.0 - W_EPSS),
    };
    (raw.clamp(0.0, 1.0) * 10_000.0).round() / 10_000.0
}

/// The priority class of `cve` at time `now`. See the module docs.
pub fn priority_class(cve: &Cve, now: DateTime<Utc>) -> Priority {
    let age = age(cve, now);
    if cve.exploited() || cve.severity == Severity::Critical || age < Duration::days(7) {
        Priority::High
    } else if cve.severity == Severity::High || age < Duration::days(30) {
        Priority::Medium
    } else {
        Priority::Low
    }
}

fn age(cve: &Cve, now: DateTime<Utc>) -> Duration {
    (now - cve.published_at).max(Duration::zero())
}

/// How soon a CVE deserves attention (and LLM time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    Medium,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown priority name; names the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority {0:?}: expected high, medium or low")]
pub struct PriorityParseError(pub String);

impl FromStr for Priority {
    type Err = PriorityParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" => Ok(Priority::High),
            "medium" => Ok(Priority::Medium),
            "low" => Ok(Priority::Low),
            _ => Err(PriorityParseError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CveId, Cvss, CvssVersion, Epss, KevFacts};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()
    }

    fn cve(age: Duration, score: Option<f64>) -> Cve {
        let mut c = Cve::new(CveId::parse("CVE-2025-1000").unwrap(), "x", now() - age);
        if let Some(s) = score {
            c.cvss = Some(Cvss {
                score: s,
                vector: String::new(),
                version: CvssVersion::V31,
            });
            c.severity = Severity::from_v3_score(s);
        }
        c
    }

    #[test]
    fn class_age_boundaries_are_strict() {
        let just_under_7 = cve(Duration::days(7) - Duration::seconds(1), Some(5.0));
        let exactly_7 = cve(Duration::days(7), Some(5.0));
        let just_under_30 = cve(Duration::days(30) - Duration::seconds(1), Some(5.0));
        let exactly_30 = cve(Duration::days(30), Some(5.0));
        assert_eq!(priority_class(&just_under_7, now()), Priority::High);
        assert_eq!(priority_class(&exactly_7, now()), Priority::Medium);
        assert_eq!(priority_class(&just_under_30, now()), Priority::Medium);
        assert_eq!(priority_class(&exactly_30, now()), Priority::Low);
    }

    #[test]
    fn class_severity_and_exploitation() {
        let old = Duration::days(400);
        assert_eq!(priority_class(&cve(old, Some(9.0)), now()), Priority::High);
        assert_eq!(
            priority_class(&cve(old, Some(8.9)), now()),
            Priority::Medium
        );
        assert_eq!(priority_class(&cve(old, Some(6.9)), now()), Priority::Low);
        assert_eq!(priority_class(&cve(old, None), now()), Priority::Low);
        let mut kev = cve(old, Some(2.0));
        kev.kev = Some(KevFacts::default());
        assert_eq!(priority_class(&kev, now()), Priority::High);
    }

    #[test]
    fn future_publication_counts_as_new() {
        let c = cve(-Duration::days(3), Some(1.0));
        assert_eq!(priority_class(&c, now()), Priority::High);
        assert!(priority_score(&c, now()) <= 1.0);
    }

    #[test]
    fn score_stays_in_unit_interval_at_extremes() {
        let mut top = cve(Duration::zero(), Some(10.0));
        top.kev = Some(KevFacts::default());
        top.epss = Some(Epss {
            score: 1.0,
            percentile: Some(1.0),
            date: None,
        });
        assert_eq!(priority_score(&top, now()), 1.0);
        let bottom = cve(Duration::days(10_000), Some(0.0));
        let s = priority_score(&bottom, now());
        assert!((0.0..0.01).contains(&s), "{s}");
        let mut weird = cve(Duration::days(1), Some(42.0));
        weird.epss = Some(Epss {
            score: f64::NAN,
            percentile: None,
            date: None,
        });
        let s = priority_score(&weird, now());
        assert!((0.0..=1.0).contains(&s), "{s}");
    }

    #[test]
    fn missing_cvss_counts_as_middling() {
        let age = Duration::days(60);
        let none = priority_score(&cve(age, None), now());
        let five = priority_score(&cve(age, Some(5.0)), now());
        assert_eq!(none, five);
    }

    #[test]
    fn exploitation_outranks_score_and_epss_is_used() {
        let age = Duration::days(90);
        let mut exploited_low = cve(age, Some(5.0));
        exploited_low.kev = Some(KevFacts::default());
        let critical = cve(age, Some(10.0));
        assert!(priority_score(&exploited_low, now()) > priority_score(&critical, now()));

        let mut likely = cve(age, Some(7.0));
        likely.epss = Some(Epss {
            score: 0.97,
            percentile: Some(0.99),
            date: None,
        });
        let mut unlikely = cve(age, Some(7.0));
        unlikely.epss = Some(Epss {
            score: 0.001,
            percentile: Some(0.1),
            date: None,
        });
        assert!(priority_score(&likely, now()) > priority_score(&unlikely, now()));
    }

    #[test]
    fn recency_halves_every_30_days() {
        // Without EPSS, CVSS 0 and no KEV, the score is 0.2/0.85 * r.
        let s0 = priority_score(&cve(Duration::zero(), Some(0.0)), now());
        let s30 = priority_score(&cve(Duration::days(30), Some(0.0)), now());
        assert!((s0 - 0.2 / 0.85).abs() < 1e-4, "{s0}");
        assert!((s30 - s0 / 2.0).abs() < 1e-4, "{s30}");
    }

    #[test]
    fn priority_parses() {
        assert_eq!("HIGH".parse::<Priority>().unwrap(), Priority::High);
        assert!("urgent".parse::<Priority>().is_err());
    }
}
