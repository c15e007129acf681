//! Crontab schedules with Celery's semantics.
//!
//! The five fields and their syntax follow Celery's `crontab` / `crontab_parser`
//! (`celery/schedules.py`), so an operator can move an entry between a Python
//! beat and ours without re-reading the manual:
//!
//! * Each field is a comma-separated list of `*`, `*/n`, `a`, `a-b` and `a-b/n`.
//!   A step takes every n-th value of the expanded list, so `1-10/3` is
//!   `1,4,7,10` and `*/15` in minutes is `0,15,30,45`. `5/15` (a step without
//!   `*` or a range) is rejected, as Celery does.
//! * A range whose end is below its start wraps around: `fri-mon` is
//!   Friday, Saturday, Sunday, Monday and `22-2` in hours is 22, 23, 0, 1, 2.
//! * Day of week is 0-6 with **Sunday = 0**, or the English names `sun`..`sat`
//!   (three letters or in full, any case). `7` is rejected, as Celery does:
//!   writing Sunday as 7 is a Vixie-cron habit that Celery never accepted.
//! * Month of year accepts `jan`..`dec` or full names.
//! * A day must match day of month **and** day of week **and** month (Celery's
//!   rule). Vixie cron fires when *either* day field matches if both are
//!   restricted; Celery does not, so `0 0 1-7 * mon` is "the first Monday of the
//!   month" here, not "the first seven days and every Monday".
//!
//! Times are evaluated on the wall clock of a configurable time zone (UTC by
//! default): a slot is every instant at which that wall clock shows a matching
//! minute. Two consequences in zones with daylight saving time, both of which we
//! accept because they are what "on the wall clock" means: a local time skipped
//! by a spring-forward never fires, and a local time repeated by a fall-back
//! fires on both occurrences.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, LocalResult, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// How many days [`Crontab::next_after`] looks ahead before giving up. Every
/// schedule accepted by the parser fires within 28 years (February 29 cycles
/// through all weekdays in that time), so 29 years is always enough.
const MAX_SCAN_DAYS: u64 = 366 * 29;

/// One of the five crontab fields, named as in Celery's `crontab(...)` keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CronField {
    /// Minute of the hour, 0-59.
    Minute,
    /// Hour of the day, 0-23.
    Hour,
    /// Day of the month, 1-31.
    DayOfMonth,
    /// Month of the year, 1-12 or `jan`..`dec`.
    MonthOfYear,
    /// Day of the week, 0-6 with Sunday = 0, or `sun`..`sat`.
    DayOfWeek,
}

impl CronField {
    /// The inclusive range of values the field accepts.
    fn bounds(self) -> (u32, u32) {
        match self {
            CronField::Minute => (0, 59),
            CronField::Hour => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::MonthOfYear => (1, 12),
            CronField::DayOfWeek => (0, 6),
        }
    }

    /// Resolves a day or month name in the fields that have names.
    fn name_value(self, word: &str) -> Option<u32> {
        let word = word.to_ascii_lowercase();
        let names: &[&str] = match self {
            CronField::DayOfWeek => &[
                "sunday",
                "monday",
                "tuesday",
                "wednesday",
                "thursday",
                "friday",
                "saturday",
            ],
            CronField::MonthOfYear => &[
                "january",
                "february",
                "march",
                "april",
                "may",
                "june",
                "july",
                "august",
                "september",
                "october",
                "november",
                "december",
            ],
            _ => return None,
        };
        let first = if self == CronField::MonthOfYear { 1 } else { 0 };
        names
            .iter()
            .position(|full| word == *full || (word.len() == 3 && full.starts_with(&word)))
            .map(|i| i as u32 + first)
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day_of_month",
            CronField::MonthOfYear => "month_of_year",
            CronField::DayOfWeek => "day_of_week",
        })
    }
}

/// Why a crontab expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    /// The string form did not have exactly five fields.
    #[error(
        "crontab `{expr}` has {found} fields; expected 5 \
         (minute hour day-of-month month day-of-week)"
    )]
    FieldCount {
        /// The expression as given.
        expr: String,
        /// How many whitespace-separated fields it had.
        found: usize,
    },
    /// One field could not be parsed or holds a value out of range.
    #[error("invalid crontab {field} `{value}`: {reason}")]
    Field {
        /// Which field.
        field: CronField,
        /// The field's text as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Every field is valid but no calendar date matches them all (e.g.
    /// February 30), so the entry would silently never run.
    #[error("crontab `{expr}` can never fire: {reason}")]
    Never {
        /// The expression.
        expr: String,
        /// Why no date matches.
        reason: String,
    },
}

/// A set of small integers (at most 0..=63), kept as a bit mask because every
/// crontab field fits in 64 bits and membership tests are then one AND.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Bits(u64);

impl Bits {
    fn contains(self, v: u32) -> bool {
        v < 64 && self.0 & (1 << v) != 0
    }

    fn values(self) -> impl DoubleEndedIterator<Item = u32> + Clone {
        (0..64u32).filter(move |v| self.0 & (1 << v) != 0)
    }
}

/// A parsed crontab: which minutes, hours, days and months fire, in which time
/// zone. Build it with [`Crontab::parse`] (the five-field string) or
/// [`Crontab::new`] (Celery's keyword order).
#[derive(Clone, PartialEq, Eq)]
pub struct Crontab {
    minute: Bits,
    hour: Bits,
    day_of_month: Bits,
    month_of_year: Bits,
    day_of_week: Bits,
    /// The fields as written, in cron order, so the schedule can be shown back
    /// to the operator in the form they wrote it.
    spec: [String; 5],
    tz: Tz,
}

impl fmt::Debug for Crontab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Crontab({:?}, {})", self.spec.join(" "), self.tz)
    }
}

impl fmt::Display for Crontab {
    /// The five-field expression, e.g. `*/10 * * * *`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec.join(" "))
    }
}

impl FromStr for Crontab {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Crontab::parse(s)
    }
}

impl Crontab {
    /// Parses the five-field form in standard cron order:
    /// `minute hour day-of-month month day-of-week`, e.g. `"0 3 * * *"`.
    /// The time zone is UTC; see [`Crontab::with_timezone`].
    pub fn parse(expr: &str) -> Result<Self, CronError> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(CronError::FieldCount {
                expr: expr.to_string(),
                found: fields.len(),
            });
        };
        Crontab::new(minute, hour, dow, dom, month)
    }

    /// Builds a crontab from its fields in the order of Celery's
    /// `crontab(minute, hour, day_of_week, day_of_month, month_of_year)`.
    pub fn new(
        minute: &str,
        hour: &str,
        day_of_week: &str,
        day_of_month: &str,
        month_of_year: &str,
    ) -> Result<Self, CronError> {
        let cron = Crontab {
            minute: parse_field(CronField::Minute, minute)?,
            hour: parse_field(CronField::Hour, hour)?,
            day_of_month: parse_field(CronField::DayOfMonth, day_of_month)?,
            month_of_year: parse_field(CronField::MonthOfYear, month_of_year)?,
            day_of_week: parse_field(CronField::DayOfWeek, day_of_week)?,
            spec: [minute, hour, day_of_month, month_of_year, day_of_week].map(str::to_string),
            tz: Tz::UTC,
        };
        cron.check_reachable()?;
        Ok(cron)
    }

    /// The same schedule evaluated on the wall clock of `tz`.
    pub fn with_timezone(mut self, tz: Tz) -> Self {
        self.tz = tz;
        self
    }

    /// The time zone whose wall clock the fields refer to.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Rejects day/month combinations that no calendar has (`30 2`, `31 4,6`),
    /// because such an entry would be accepted and then never run.
    fn check_reachable(&self) -> Result<(), CronError> {
        // A leap year, so February 29 counts as reachable.
        let reachable = self.month_of_year.values().any(|m| {
            let days = days_in_month(2000, m);
            self.day_of_month.values().any(|d| d <= days)
        });
        if reachable {
            Ok(())
        } else {
            Err(CronError::Never {
                expr: self.to_string(),
                reason: format!(
                    "day_of_month `{}` does not exist in month_of_year `{}`",
                    self.spec[2], self.spec[3]
                ),
            })
        }
    }

    /// Whether a local calendar date is a firing day: month, day of month and
    /// day of week must all match (Celery's rule, see the module docs).
    fn date_matches(&self, date: NaiveDate) -> bool {
        self.month_of_year.contains(date.month())
            && self.day_of_month.contains(date.day())
            && self
                .day_of_week
                .contains(date.weekday().num_days_from_sunday())
    }

    /// All firing instants on one local date, in no particular order (a
    /// fall-back repeats local times, so naive order is not instant order).
    fn instants_on(&self, date: NaiveDate) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let minutes = self.minute;
        self.hour
            .values()
            .flat_map(move |h| minutes.values().map(move |m| (h, m)))
            .filter_map(move |(h, m)| date.and_hms_opt(h, m, 0))
            .flat_map(move |naive| {
                let (a, b) = match self.tz.from_local_datetime(&naive) {
                    LocalResult::Single(a) => (Some(a), None),
                    LocalResult::Ambiguous(a, b) => (Some(a), Some(b)),
                    LocalResult::None => (None, None),
                };
                a.into_iter().chain(b).map(|dt| dt.with_timezone(&Utc))
            })
    }

    /// The first firing instant strictly after `t`, or `None` if there is none
    /// before the end of chrono's calendar.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = t.with_timezone(&self.tz).date_naive();
        (0..MAX_SCAN_DAYS)
            .map_while(|d| start.checked_add_days(Days::new(d)))
            .filter(|date| self.date_matches(*date))
            .find_map(|date| self.instants_on(date).filter(|i| *i > t).min())
    }

    /// The last firing instant at or before `t`. The beat uses it to collapse
    /// a run of missed slots into the most recent one.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = t.with_timezone(&self.tz).date_naive();
        (0..MAX_SCAN_DAYS)
            .map_while(|d| start.checked_sub_days(Days::new(d)))
            .filter(|date| self.date_matches(*date))
            .find_map(|date| self.instants_on(date).filter(|i| *i <= t).max())
    }

    /// The schedule in words, e.g. "every 10 minutes" or "at 03:00 every day".
    pub fn describe(&self) -> String {
        let [minute, hour, dom, month, dow] = &self.spec;
        let all_days = is_star(dom) && is_star(month) && is_star(dow);
        let single_minute = single(minute);
        let single_hour = single(hour);

        let (mut text, is_clock_time) = if is_star(minute) && is_star(hour) {
            ("every minute".to_string(), false)
        } else if let (Some(n), true) = (star_step(minute), is_star(hour)) {
            (plural_every(n, "minute"), false)
        } else if let (Some(m), true) = (single_minute, is_star(hour)) {
            (format!("every hour at minute {m}"), false)
        } else if let (Some(m), Some(h)) = (single_minute, single_hour) {
            (format!("at {h:02}:{m:02}"), true)
        } else if let (Some(m), Some(n)) = (single_minute, star_step(hour)) {
            if m == 0 {
                (plural_every(n, "hour"), false)
            } else {
                (format!("{} at minute {m}", plural_every(n, "hour")), false)
            }
        } else if let Some(m) = single_minute {
            (format!("at minute {m} past hour {hour}"), false)
        } else {
            (format!("at minute {minute} past hour {hour}"), false)
        };

        if all_days {
            if is_clock_time {
                text.push_str(" every day");
            }
        } else {
            if !is_star(dom) {
                text.push_str(&format!(" on day {dom} of the month"));
            }
            if !is_star(dow) {
                let days: Vec<&str> = self
                    .day_of_week
                    .values()
                    .map(|d| WEEKDAY_NAMES[d as usize])
                    .collect();
                let joined = join_words(&days);
                if is_star(dom) {
                    text.push_str(&format!(" on {joined}"));
                } else {
                    // Celery requires both day fields to match; say so.
                    text.push_str(&format!(" if it is a {joined}"));
                }
            }
            if !is_star(month) {
                let months: Vec<&str> = self
                    .month_of_year
                    .values()
                    .map(|m| MONTH_NAMES[m as usize - 1])
                    .collect();
                text.push_str(&format!(" in {}", join_words(&months)));
            }
        }
        if self.tz != Tz::UTC {
            text.push_str(&format!(" ({} time)", self.tz));
        }
        text
    }
}

const WEEKDAY_NAMES: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn is_star(field: &str) -> bool {
    field == "*" || field == "*/1"
}

fn single(field: &str) -> Option<u32> {
    field.parse().ok()
}

fn star_step(field: &str) -> Option<u32> {
    field.strip_prefix("*/")?.parse().ok()
}

fn plural_every(n: u32, unit: &str) -> String {
    if n == 1 {
        format!("every {unit}")
    } else {
        format!("every {n} {unit}s")
    }
}

/// "a", "a and b", "a, b and c".
fn join_words(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

pub(crate) fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map_or(31, |d| d.day())
}

/// Parses one field into its set of values, following Celery's grammar:
/// `groups := expr (',' expr)*`, `expr := ('*' | number | number '-' number) ('/' step)?`.
fn parse_field(field: CronField, text: &str) -> Result<Bits, CronError> {
    let err = |reason: String| CronError::Field {
        field,
        value: text.to_string(),
        reason,
    };
    let (min, max) = field.bounds();
    if text.is_empty() {
        return Err(err("the field is empty".into()));
    }
    let mut bits = 0u64;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(err("empty item in the list".into()));
        }
        let (base, step) = match part.split_once('/') {
            Some((base, step)) => {
                let step: u32 =
                    step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        err(format!("step `{step}` must be a positive whole number"))
                    })?;
                (base, Some(step))
            }
            None => (part, None),
        };
        let values: Vec<u32> = if base == "*" {
            (min..=max).collect()
        } else if let Some((from, to)) = base.split_once('-') {
            if from.is_empty() {
                return Err(err("negative numbers are not allowed".into()));
            }
            let from = parse_value(field, from).map_err(&err)?;
            let to = parse_value(field, to).map_err(&err)?;
            if to < from {
                // Celery wraps a reversed range around the end of the field.
                (from..=max).chain(min..=to).collect()
            } else {
                (from..=to).collect()
            }
        } else {
            if let Some(s) = step {
                // Celery rejects `5/15` too; say what to write instead.
                return Err(err(format!(
                    "a step needs `*` or a range before it (e.g. `*/{s}` or `{base}-{max}/{s}`)"
                )));
            }
            vec![parse_value(field, base).map_err(&err)?]
        };
        for v in values.into_iter().step_by(step.unwrap_or(1) as usize) {
            bits |= 1 << v;
        }
    }
    // Never empty: every item adds at least its first value.
    Ok(Bits(bits))
}

fn parse_value(field: CronField, word: &str) -> Result<u32, String> {
    let (min, max) = field.bounds();
    if word.starts_with('-') {
        return Err("negative numbers are not allowed".into());
    }
    let value = if word.chars().all(|c| c.is_ascii_digit()) && !word.is_empty() {
        word.parse::<u32>()
            .map_err(|_| format!("`{word}` is out of range {min}-{max}"))?
    } else if let Some(v) = field.name_value(word) {
        v
    } else {
        return Err(match field {
            CronField::DayOfWeek => {
                format!("`{word}` is not a number 0-6 or a day name (sun, mon, ... sat)")
            }
            CronField::MonthOfYear => {
                format!("`{word}` is not a number 1-12 or a month name (jan, feb, ... dec)")
            }
            _ => format!("`{word}` is not a number"),
        });
    };
    if value < min || value > max {
        let hint = if field == CronField::DayOfWeek && value == 7 {
            " (Sunday is 0; Celery does not accept 7)"
        } else {
            ""
        };
        return Err(format!("{value} is out of range {min}-{max}{hint}"));
    }
    Ok(value)
}

impl Crontab {
    /// Whether `t` is a slot: a whole minute whose wall-clock time in this
    /// crontab's zone matches every field.
    pub fn matches(&self, t: DateTime<Utc>) -> bool {
        let local = t.with_timezone(&self.tz);
        self.date_matches(local.date_naive())
            && self.hour.contains(local.hour())
            && self.minute.contains(local.minute())
            && local.second() == 0
            && local.nanosecond() == 0
    }
}
