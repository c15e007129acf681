//! Failure alerts: a log line each, and a webhook POST when one is configured.
//!
//! Three things raise an alert: a task that fails for good (`task-failed`; a
//! `task-retried` is the retry policy working, not an alert), a worker that
//! goes silent without `worker-offline` ("lost"), and a beat slot that was
//! due and never claimed ([`missed_beat`]).
//!
//! An outage produces alerts in storms: one broken dependency fails every
//! task. Operators want one message that says so, not a thousand. Hence:
//!
//! * **Batching**: the first alert after a quiet period waits
//!   [`AlertConfig::batch_delay`] so a burst is sent as one POST.
//! * **Rate limit**: POSTs are at least [`AlertConfig::min_interval`] apart
//!   (one POST per alert kind per flush, so at most three per interval).
//! * **Deduplication**: alerts are counted per kind and key (the task name,
//!   the worker's hostname, the beat entry). A key already sent within
//!   [`AlertConfig::dedup_window`] is counted, not re-sent; its count goes out
//!   once the window has passed, if it kept happening.
//!
//! So 1 000 failures in a burst become one POST: "1000 tasks failed:
//! tasks.process_cve_with_llm ×990, …" with `count` 1000. Memory is bounded
//! by the number of keys (capped at [`MAX_KEYS`] per kind), not of alerts.
//!
//! Logging follows the same rule: a `warn!` line for the first alert of a key
//! in a dedup window, `debug!` for its repeats, and a `warn!` summary per
//! POST. The webhook URL often carries a token (Slack, Teams, ntfy), so it is
//! kept as a [`Secret`] and only ever shown as `scheme://host/***`; reqwest
//! errors are logged without their URL.
//!
//! Sending happens on its own task: [`Alerter::push`] takes a lock for a few
//! microseconds and returns, so a slow or failing webhook never holds up the
//! event loop. A failed POST (connection error, timeout, 5xx, 429) is retried
//! with doubling back-off, [`AlertConfig::retries`] times.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use openthreat_queue::beat::{BeatError, BeatStore, Entry};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, Secret};

/// Distinct keys tracked per kind; later keys are counted under `other`.
pub const MAX_KEYS: usize = 1_000;
/// Keys listed in one POST's details; the rest are summed up.
const MAX_KEYS_IN_POST: usize = 20;
/// Keys named in one summary line.
const MAX_KEYS_IN_SUMMARY: usize = 5;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A task failed for good.
    TaskFailed,
    /// A worker stopped heartbeating without saying goodbye.
    WorkerLost,
    /// A beat entry did not fire when due.
    BeatMissed,
}

impl AlertKind {
    /// The `alert` field of the webhook payload.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::TaskFailed => "task_failed",
            AlertKind::WorkerLost => "worker_lost",
            AlertKind::BeatMissed => "beat_missed",
        }
    }

    /// "N ..." in a summary of many.
    fn plural(self) -> &'static str {
        match self {
            AlertKind::TaskFailed => "tasks failed",
            AlertKind::WorkerLost => "workers lost",
            AlertKind::BeatMissed => "beat slots missed",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One occurrence.
#[derive(Debug, Clone)]
pub struct Alert {
    pub kind: AlertKind,
    /// What repeats are grouped by: task name, hostname, beat entry name.
    pub key: String,
    /// One line for humans.
    pub summary: String,
    /// Structured facts (uuid, exception, last heartbeat, ...).
    pub details: Value,
    pub at: DateTime<Utc>,
}

/// A problem setting up alerting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AlertError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("alert webhook client: {0}")]
    Client(#[source] reqwest::Error),
}

/// How alerts are sent.
#[derive(Clone)]
pub struct AlertConfig {
    /// `OPENTHREAT_ALERT_WEBHOOK`; `None`: log lines only.
    pub webhook: Option<Secret>,
    /// Shortest time between two flushes (`OPENTHREAT_ALERT_INTERVAL`).
    pub min_interval: Duration,
    /// Wait after the first alert of a quiet period, to catch the rest of a burst.
    pub batch_delay: Duration,
    /// A key sent within this window is counted, not re-sent.
    pub dedup_window: Duration,
    /// Retries of a failed POST.
    pub retries: u32,
    /// First retry delay; doubled each time.
    pub retry_backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhook: None,
            min_interval: Duration::from_secs(10),
            batch_delay: Duration::from_secs(2),
            dedup_window: Duration::from_secs(600),
            retries: 3,
            retry_backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

impl AlertConfig {
    /// Webhook and interval from the application's configuration.
    pub fn from_config(config: &Config) -> Self {
        AlertConfig {
            webhook: config.alert_webhook.clone(),
            min_interval: config.alert_interval,
            ..Default::default()
        }
    }
}

impl fmt::Debug for AlertConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertConfig")
            .field(
                "webhook",
                &self.webhook.as_ref().map(|w| redact_webhook(w.expose())),
            )
            .field("min_interval", &self.min_interval)
            .field("batch_delay", &self.batch_delay)
            .field("dedup_window", &self.dedup_window)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// A webhook URL for logs: scheme, host and port only. Tokens live in the
/// path (Slack, Teams), the query (`?token=`) or the user info, so all of
/// those are hidden.
pub fn redact_webhook(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}/***", u.scheme())
        }
        Err(_) => "***".into(),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Occurrences of one kind+key.
#[derive(Debug)]
struct Aggregate {
    /// Occurrences not yet sent.
    pending: u64,
    /// First and last unsent occurrence.
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
    /// When the first unsent occurrence arrived (our monotonic clock).
    pending_since: Instant,
    latest_summary: String,
    latest_details: Value,
    /// Last POST that included this key.
    last_sent: Option<Instant>,
    /// Last `warn!` line for this key.
    last_logged: Option<Instant>,
    /// Last occurrence, to forget quiet keys.
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Aggregates {
    by_key: BTreeMap<(AlertKind, String), Aggregate>,
    keys_per_kind: HashMap<AlertKind, usize>,
}

impl Aggregates {
    /// When the next flush is due, ignoring the rate limit.
    fn next_due(&self, cfg: &AlertConfig) -> Option<Instant> {
        self.by_key
            .values()
            .filter(|a| a.pending > 0)
            .map(|a| {
                let batched = a.pending_since + cfg.batch_delay;
                match a.last_sent {
                    Some(sent) => batched.max(sent + cfg.dedup_window),
                    None => batched,
                }
            })
            .min()
    }

    /// Takes the occurrences due by `now` (all pending when `all`), grouped by kind.
    fn take_due(&mut self, now: Instant, cfg: &AlertConfig, all: bool) -> Vec<Batch> {
        let mut batches: BTreeMap<AlertKind, Batch> = BTreeMap::new();
        for ((kind, key), agg) in self.by_key.iter_mut() {
            if agg.pending == 0 {
                continue;
            }
            let due = all
                || (agg.pending_since + cfg.batch_delay <= now
                    && agg
                        .last_sent
                        .is_none_or(|sent| sent + cfg.dedup_window <= now));
            if !due {
                continue;
            }
            batches
                .entry(*kind)
                .or_insert_with(|| Batch::new(*kind))
                .keys
                .push(KeyCount {
                    key: key.clone(),
                    count: agg.pending,
                    first_at: agg.first_at,
                    last_at: agg.last_at,
                    summary: agg.latest_summary.clone(),
                    details: agg.latest_details.clone(),
                });
            agg.pending = 0;
            agg.last_sent = Some(now);
        }
        // Forget keys quiet for a whole window, so memory follows what is happening now.
        let keep = cfg.dedup_window.max(cfg.min_interval) * 2;
        let before = self.by_key.len();
        self.by_key
            .retain(|_, a| a.pending > 0 || now.saturating_duration_since(a.last_seen) < keep);
        if self.by_key.len() != before {
            self.keys_per_kind.clear();
            for (kind, _) in self.by_key.keys() {
                *self.keys_per_kind.entry(*kind).or_default() += 1;
            }
        }
        batches.into_values().collect()
    }
}

#[derive(Debug, Clone)]
struct KeyCount {
    key: String,
    count: u64,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
    summary: String,
    details: Value,
}

/// Everything of one kind going out in one POST.
#[derive(Debug)]
struct Batch {
    kind: AlertKind,
    keys: Vec<KeyCount>,
}

impl Batch {
    fn new(kind: AlertKind) -> Self {
        Batch {
            kind,
            keys: Vec::new(),
        }
    }

    fn count(&self) -> u64 {
        self.keys.iter().map(|k| k.count).sum()
    }

    fn summary(&self) -> String {
        let count = self.count();
        if count == 1 {
            return self.keys[0].summary.clone();
        }
        let mut keys: Vec<&KeyCount> = self.keys.iter().collect();
        keys.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        let mut named: Vec<String> = keys
            .iter()
            .take(MAX_KEYS_IN_SUMMARY)
            .map(|k| format!("{} ×{}", k.key, k.count))
            .collect();
        if keys.len() > MAX_KEYS_IN_SUMMARY {
            named.push("…".into());
        }
        format!("{count} {}: {}", self.kind.plural(), named.join(", "))
    }

    /// The webhook body.
    fn payload(&self) -> Value {
        let mut keys: Vec<&KeyCount> = self.keys.iter().collect();
        keys.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        let listed: Vec<Value> = keys
            .iter()
            .take(MAX_KEYS_IN_POST)
            .map(|k| {
                json!({
                    "key": k.key,
                    "count": k.count,
                    "first_at": rfc3339(k.first_at),
                    "last_at": rfc3339(k.last_at),
                    "latest": k.details,
                })
            })
            .collect();
        let first_at = self.keys.iter().map(|k| k.first_at).min();
        let last_at = self.keys.iter().map(|k| k.last_at).max();
        json!({
            "alert": self.kind.as_str(),
            "summary": self.summary(),
            "details": {
                "by_key": listed,
                "keys_not_listed": keys.len().saturating_sub(MAX_KEYS_IN_POST),
            },
            "count": self.count(),
            "first_at": first_at.map(rfc3339),
            "last_at": last_at.map(rfc3339),
            "source": "openthreat",
        })
    }
}

#[derive(Debug)]
struct Inner {
    config: AlertConfig,
    aggregates: Mutex<Aggregates>,
    wake: Notify,
    closing: AtomicBool,
    sender: Mutex<Option<JoinHandle<()>>>,
}

/// Receives alerts; logs them and, with a webhook, sends them in batches.
/// Cheap to clone; all clones feed the same sender.
#[derive(Clone)]
pub struct Alerter {
    inner: Arc<Inner>,
}

impl fmt::Debug for Alerter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alerter")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Alerter {
    /// An alerter; with a webhook it starts its sender task, so call it
    /// inside a Tokio runtime.
    pub fn new(config: AlertConfig) -> Result<Self, AlertError> {
        let client = match &config.webhook {
            Some(_) => Some(
                reqwest::Client::builder()
                    .timeout(config.timeout)
                    .build()
                    .map_err(|e| AlertError::Client(e.without_url()))?,
            ),
            None => None,
        };
        let inner = Arc::new(Inner {
            config,
            aggregates: Mutex::new(Aggregates::default()),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            sender: Mutex::new(None),
        });
        if let Some(client) = client {
            let task = tokio::spawn(send_loop(inner.clone(), client));
            *inner.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        Ok(Alerter { inner })
    }

    /// The configuration in force.
    pub fn config(&self) -> &AlertConfig {
        &self.inner.config
    }

    /// Records an alert: logs it (once per key and window) and queues it for
    /// the webhook. Never blocks on the network.
    pub fn push(&self, alert: Alert) {
        let now = Instant::now();
        let cfg = &self.inner.config;
        let mut aggs = self
            .inner
            .aggregates
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut key = alert.key;
        if !aggs.by_key.contains_key(&(alert.kind, key.clone())) {
            let n = aggs.keys_per_kind.entry(alert.kind).or_default();
            if *n >= MAX_KEYS {
                key = "other".into();
            } else {
                *n += 1;
            }
        }
        let agg = aggs
            .by_key
            .entry((alert.kind, key.clone()))
            .or_insert_with(|| Aggregate {
                pending: 0,
                first_at: alert.at,
                last_at: alert.at,
                pending_since: now,
                latest_summary: String::new(),
                latest_details: Value::Null,
                last_sent: None,
                last_logged: None,
                last_seen: now,
            });
        if agg.pending == 0 {
            agg.first_at = alert.at;
            agg.pending_since = now;
        }
        agg.pending += 1;
        agg.last_at = agg.last_at.max(alert.at);
        agg.last_seen = now;
        agg.latest_summary = alert.summary.clone();
        agg.latest_details = alert.details;
        let log = agg
            .last_logged
            .is_none_or(|l| now.saturating_duration_since(l) >= cfg.dedup_window);
        if log {
            agg.last_logged = Some(now);
        }
        drop(aggs);
        if log {
            tracing::warn!(alert = %alert.kind, key = %key, "{}", alert.summary);
        } else {
            tracing::debug!(alert = %alert.kind, key = %key, "{} (repeat)", alert.summary);
        }
        if cfg.webhook.is_some() {
            self.inner.wake.notify_one();
        }
    }

    /// Sends what is pending now (ignoring batching and the rate limit) and
    /// stops the sender, waiting at most `timeout`. For a clean shutdown;
    /// alerts pushed afterwards are only logged.
    pub async fn close(&self, timeout: Duration) {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
        let task = self
            .inner
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut task) = task {
            if tokio::time::timeout(timeout, &mut task).await.is_err() {
                tracing::warn!("alert webhook: pending alerts not sent before shutdown");
                task.abort();
            }
        }
    }
}

/// The sender task: waits until a batch is due and the rate limit allows,
/// then POSTs one message per kind.
async fn send_loop(inner: Arc<Inner>, client: reqwest::Client) {
    let cfg = &inner.config;
    let Some(webhook) = cfg.webhook.clone() else {
        return;
    };
    let shown = redact_webhook(webhook.expose());
    let mut last_post: Option<Instant> = None;
    loop {
        let closing = inner.closing.load(Ordering::SeqCst);
        let now = Instant::now();
        let batches = {
            let mut aggs = inner.aggregates.lock().unwrap_or_else(|e| e.into_inner());
            let allowed = last_post.is_none_or(|l| l + cfg.min_interval <= now);
            if closing || allowed {
                aggs.take_due(now, cfg, closing)
            } else {
                Vec::new()
            }
        };
        if !batches.is_empty() {
            last_post = Some(now);
            for batch in &batches {
                post(&client, webhook.expose(), &shown, batch, cfg).await;
            }
            continue;
        }
        if closing {
            return;
        }
        let next = {
            let aggs = inner.aggregates.lock().unwrap_or_else(|e| e.into_inner());
            aggs.next_due(cfg)
        };
        let next = match (next, last_post) {
            (Some(due), Some(l)) => Some(due.max(l + cfg.min_interval)),
            (due, _) => due,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = inner.wake.notified() => {}
                }
            }
            None => inner.wake.notified().await,
        }
    }
}

/// One POST with retries. Failures are logged, never returned: alerting must
/// not take the monitor down.
async fn post(
    client: &reqwest::Client,
    url: &str,
    shown: &str,
    batch: &Batch,
    cfg: &AlertConfig,
) -> bool {
    let body = batch.payload();
    let summary = body["summary"].as_str().unwrap_or_default().to_string();
    let mut delay = cfg.retry_backoff;
    for attempt in 1..=cfg.retries + 1 {
        let outcome = client.post(url).json(&body).send().await;
        let (retry, problem) = match outcome {
            Ok(resp) if resp.status().is_success() => {
                tracing::warn!(
                    alert = %batch.kind, count = batch.count(), webhook = %shown,
                    "alert sent: {summary}"
                );
                return true;
            }
            Ok(resp) => {
                let status = resp.status();
                (
                    status.is_server_error() || status.as_u16() == 429,
                    format!("HTTP {status}"),
                )
            }
            // Without the URL: reqwest puts it in its messages, token and all.
            Err(e) => (true, e.without_url().to_string()),
        };
        if !retry || attempt > cfg.retries {
            tracing::error!(
                alert = %batch.kind, count = batch.count(), webhook = %shown, attempt,
                problem = %problem, "alert webhook failed; giving up: {summary}"
            );
            return false;
        }
        tracing::warn!(
            alert = %batch.kind, webhook = %shown, attempt, problem = %problem,
            retry_in = ?delay, "alert webhook failed; retrying"
        );
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    false
}

/// A beat slot that came due and was not claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissedBeat {
    /// Entry name (the beat store's key).
    pub entry: String,
    /// Task it publishes.
    pub task: String,
    /// The slot that should have fired.
    pub due_at: DateTime<Utc>,
    /// The last slot any beat claimed for this entry.
    pub last_run_at: Option<DateTime<Utc>>,
}

impl MissedBeat {
    /// The alert for it.
    pub fn to_alert(&self, now: DateTime<Utc>) -> Alert {
        let last = self
            .last_run_at
            .map(rfc3339)
            .unwrap_or_else(|| "never".into());
        Alert {
            kind: AlertKind::BeatMissed,
            key: self.entry.clone(),
            summary: format!(
                "beat entry {} ({}) did not fire at {}; last run {last}",
                self.entry,
                self.task,
                rfc3339(self.due_at)
            ),
            details: json!({
                "entry": self.entry,
                "task": self.task,
                "due_at": rfc3339(self.due_at),
                "last_run_at": self.last_run_at.map(rfc3339),
            }),
            at: now,
        }
    }
}

/// Whether `entry` missed a slot, from what the beat store records (the last
/// slot claimed, by any beat).
///
/// A beat claims the latest slot at or before now as soon as it is due, so
/// a slot due more than `grace` ago and still later than the last claim was
/// missed. Only slots that came due after `watching_since` count: after an
/// outage a starting beat fires just the latest slot (by design), and the
/// monitor should not report the whole outage as misses at start. A store
/// with no record (`last_run` `None`) is judged the same way, so a beat that
/// never runs is caught at its first slot.
///
/// Not detectable here: a slot claimed but never published (the beat gave up
/// after publish errors); the beat logs that itself.
pub fn missed_beat(
    entry: &Entry,
    last_run: Option<DateTime<Utc>>,
    watching_since: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
) -> Option<MissedBeat> {
    if !entry.enabled {
        return None;
    }
    let cutoff = now - chrono::Duration::from_std(grace).ok()?;
    let due = entry.schedule.latest_at_or_before(cutoff)?;
    if due <= watching_since || last_run.is_some_and(|l| l >= due) {
        return None;
    }
    Some(MissedBeat {
        entry: entry.name.clone(),
        task: entry.task.clone(),
        due_at: due,
        last_run_at: last_run,
    })
}

/// [`missed_beat`] for every entry, reading last runs from the beat store.
pub async fn check_beat(
    entries: &[Entry],
    store: &dyn BeatStore,
    watching_since: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<Vec<MissedBeat>, BeatError> {
    let mut missed = Vec::new();
    for entry in entries.iter().filter(|e| e.enabled) {
        let last = store.last_run(&entry.name).await?;
        missed.extend(missed_beat(entry, last, watching_since, now, grace));
    }
    Ok(missed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_redaction_hides_path_query_and_user() {
        assert_eq!(
            redact_webhook("https://hooks.slack.com/services/T0/B0/s3cret"),
            "https://hooks.slack.com/***"
        );
        assert_eq!(
            redact_webhook("http://u:pw@127.0.0.1:9000/x?token=s3cret"),
            "http://127.0.0.1:9000/***"
        );
        assert_eq!(redact_webhook("not a url s3cret"), "***");
    }

    #[test]
    fn summary_names_the_biggest_keys_first() {
        let at = Utc::now();
        let kc = |key: &str, count| KeyCount {
            key: key.into(),
            count,
            first_at: at,
            last_at: at,
            summary: String::new(),
            details: Value::Null,
        };
        let batch = Batch {
            kind: AlertKind::TaskFailed,
            keys: vec![kc("b", 10), kc("a", 990)],
        };
        assert_eq!(batch.summary(), "1000 tasks failed: a ×990, b ×10");
        assert_eq!(batch.payload()["count"], 1000);
    }
}
