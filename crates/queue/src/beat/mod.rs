//! Beat: the periodic scheduler. It publishes task messages on a timetable
//! and never runs tasks itself — workers do.
//!
//! # Layout
//!
//! * [`crontab`] — Celery-compatible crontab fields, parsing, next-slot
//!   computation in a time zone, and the schedule in words.
//! * [`interval`] — `every = "30s"` schedules, slotted on fixed multiples of
//!   the interval so they do not drift.
//! * [`entry`] — [`Entry`] (task, arguments, options, schedule), [`Schedule`],
//!   and [`default_schedule`], the timetable of DESIGN.md §3.
//! * [`config`] — the TOML schedule file, checked with line numbers.
//! * [`store`] — [`BeatStore`], the shared record of fired slots: Redis,
//!   SQLite, and in-memory.
//! * [`clock`] — [`Clock`], injectable time ([`SystemClock`], [`ManualClock`]).
//! * `scheduler` — [`Beat`] (the loop) and [`Publisher`] (the producer side).
//!
//! # Slots, and firing each one exactly once
//!
//! A schedule defines *slots*: the instants at which it fires (`*/5 * * * *`
//! has one at every fifth minute, `every = "30s"` one at every multiple of 30 s
//! since the Unix epoch). Slots are computed the same way by every beat, so a
//! slot is a name that several beats can agree on without talking to each
//! other.
//!
//! When an entry is due, the beat takes the *latest* slot at or before now and
//! asks the store to claim it. The claim is one atomic operation — a Lua script
//! in Redis, one `INSERT ... ON CONFLICT DO UPDATE ... WHERE` in SQLite — that
//! succeeds only if the slot is later than the last slot recorded for that
//! entry. Only the winner publishes. From this:
//!
//! * **Two beats at once** (two machines, or a restart overlapping the old
//!   process): both try the same slot, one wins, the slot fires once.
//! * **Restart after downtime**: the store still has the last slot; the first
//!   due slot after it is in the past, so the entry is due at once, and the
//!   beat claims the latest slot only — one run for the whole gap, not one per
//!   missed slot. A fresh store (no record) fires nothing in the past.
//! * **Never twice for one slot**: the stored slot only moves forward, so a
//!   slot, once claimed, is refused to everyone, including a late beat.
//! * **Store outage** (Redis down): the claim fails, the beat logs and retries
//!   with exponential back-off, recomputing the latest slot each time. If a
//!   claim reached Redis but its reply was lost, the retry comes from the same
//!   owner and is accepted as that owner's claim, so the slot still fires once.
//!
//! The guarantee is *at most once per slot, and once whenever a beat and its
//! store are up*. A beat that wins a slot and then dies before publishing
//! loses that run; the alternative (re-firing on doubt) would allow doubles,
//! and periodic tasks here are cheap to skip once but costly to run twice
//! concurrently.
//!
//! # Semantics worth knowing
//!
//! Crontab fields follow Celery: day of week 0-6 with Sunday = 0, and a day
//! must match day of month *and* day of week (see [`crontab`]). Time zone is
//! UTC unless configured.

// Every public item here is API for the binary and the HTTP layer: document it.
#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod crontab;
pub mod entry;
pub mod interval;
mod scheduler;
pub mod store;

pub use self::clock::{Clock, ManualClock, SystemClock};
pub use self::config::{load_schedule_file, parse_schedule, ConfigError};
pub use self::crontab::{CronError, CronField, Crontab};
pub use self::entry::{
    check_tasks, default_schedule, Entry, EntryOptions, Schedule, ScheduledEntry, UnknownTask,
};
pub use self::interval::{Interval, IntervalError};
pub use self::scheduler::{Beat, Publisher};
pub use self::store::{BeatStore, Claim, MemoryBeatStore, RedisBeatStore, SqliteBeatStore};

/// Everything that can go wrong in the beat.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BeatError {
    /// A crontab expression is invalid.
    #[error(transparent)]
    Cron(#[from] CronError),
    /// An interval is invalid.
    #[error(transparent)]
    Interval(#[from] IntervalError),
    /// A schedule file is invalid; every problem found is listed.
    #[error("invalid {source_name}: {}", join_errors(.errors))]
    Config {
        /// The file path, or "schedule" for text.
        source_name: String,
        /// The problems, in line order.
        errors: Vec<ConfigError>,
    },
    /// Entries name tasks the binary does not define.
    #[error("unknown tasks in the schedule: {}", join_errors(.0))]
    UnknownTasks(Vec<UnknownTask>),
    /// Two entries share a name, so they would share (and fight over) one
    /// record in the store.
    #[error("two schedule entries are named `{0}`; entry names must be unique")]
    DuplicateEntry(String),
    /// A schedule file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Redis failed (connection lost, timeout, script error).
    #[error("beat store (redis): {0}")]
    Redis(#[from] redis::RedisError),
    /// SQLite failed.
    #[error("beat store (sqlite): {0}")]
    Sqlite(#[from] sqlx::Error),
    /// Another store failure.
    #[error("beat store: {0}")]
    Store(Box<dyn std::error::Error + Send + Sync>),
    /// The publisher could not send the message.
    #[error("publishing failed: {0}")]
    Publish(Box<dyn std::error::Error + Send + Sync>),
}

fn join_errors<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
