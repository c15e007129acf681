//! Monitoring from Celery events: cluster state, Prometheus metrics, alerts
//! and the `openthreat events` view.
//!
//! The input is what Celery's `EventReceiver` yields: one JSON object per
//! event (`worker-heartbeat`, `task-failed`, ...). Where the events come
//! from (the `celeryev` fanout on Redis, a test's vector) is the caller's
//! business, which keeps this module testable without a broker and lets the
//! same code watch our workers and Python Celery workers alike.
//!
//! * [`state`]: [`ClusterState`], Celery's rules for workers and tasks.
//! * [`metrics`]: `celery_*` Prometheus metrics.
//! * [`alerts`]: failed tasks, lost workers and missed beat slots, logged and
//!   sent to a webhook in deduplicated, rate-limited batches.
//! * [`view`]: the terminal view and `--dump` lines, as pure functions.
//!
//! [`Monitor::run`] ties them together: each event goes through the state
//! once, and metrics and alerts act on the decoded [`Applied`] outcome; a
//! tick finds workers that went silent. [`MonitorHandle`] gives readers
//! (API, CLI) snapshots and takes the beat checks.

pub mod alerts;
pub mod metrics;
pub mod state;
pub mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use self::alerts::{
    check_beat, missed_beat, Alert, AlertConfig, AlertError, AlertKind, Alerter, MissedBeat,
};
pub use self::metrics::MonitorMetrics;
pub use self::state::{
    unix_now, Applied, ClusterState, ClusterStateSnapshot, StateConfig, TaskEvent, TaskState,
    WorkerInfo, WorkerStatus,
};
use crate::config::Config;

/// A problem setting up the monitor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    #[error("monitor metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Alerts(#[from] AlertError),
}

/// Everything a [`Monitor`] needs.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub state: StateConfig,
    pub alerts: AlertConfig,
    /// How often silent workers are looked for.
    pub tick: Duration,
    /// Tasks in a snapshot's "latest tasks".
    pub latest_tasks: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            state: StateConfig::default(),
            alerts: AlertConfig::default(),
            tick: Duration::from_secs(1),
            latest_tasks: 20,
        }
    }
}

impl MonitorConfig {
    /// Defaults, with the alert settings from the application's configuration.
    pub fn from_config(config: &Config) -> Self {
        MonitorConfig {
            alerts: AlertConfig::from_config(config),
            ..Default::default()
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<ClusterState>,
    /// Last missed slot alerted per beat entry, so a check repeated every
    /// minute reports each missed slot once.
    beat_reported: Mutex<HashMap<String, DateTime<Utc>>>,
    latest_tasks: usize,
}

/// Consumes events into state, metrics and alerts.
#[derive(Debug)]
pub struct Monitor {
    shared: Arc<Shared>,
    metrics: Option<MonitorMetrics>,
    alerter: Alerter,
    tick: Duration,
}

/// Read access for the API and CLI, and the entry point of beat checks.
#[derive(Debug, Clone)]
pub struct MonitorHandle {
    shared: Arc<Shared>,
    alerter: Alerter,
}

impl Monitor {
    /// A monitor; metrics are registered into `registry` when given. With a
    /// webhook configured this starts the alert sender, so call it inside a
    /// Tokio runtime.
    pub fn new(
        config: MonitorConfig,
        registry: Option<&prometheus::Registry>,
    ) -> Result<Self, MonitorError> {
        let metrics = registry.map(MonitorMetrics::register).transpose()?;
        let alerter = Alerter::new(config.alerts)?;
        Ok(Monitor {
            shared: Arc::new(Shared {
                state: Mutex::new(ClusterState::new(config.state)),
                beat_reported: Mutex::new(HashMap::new()),
                latest_tasks: config.latest_tasks,
            }),
            metrics,
            alerter,
            tick: config.tick,
        })
    }

    /// A handle that outlives [`Monitor::run`].
    pub fn handle(&self) -> MonitorHandle {
        MonitorHandle {
            shared: self.shared.clone(),
            alerter: self.alerter.clone(),
        }
    }

    /// Applies one event received at `now` (Unix seconds): state, then
    /// metrics and alerts. Public so a caller with its own loop can use it.
    pub fn handle_event(&self, event: &Value, now: f64) -> Applied {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let applied = state.apply_at(event, now);
        if let Some(m) = &self.metrics {
            m.observe(&applied, &state, now);
        }
        drop(state);
        match &applied {
            Applied::Task(update) if update.event == TaskEvent::Failed => {
                self.alerter.push(task_failed_alert(update));
            }
            Applied::Worker {
                hostname,
                recovered: true,
                ..
            } => {
                tracing::info!(%hostname, "worker heard from again after being lost");
            }
            _ => {}
        }
        applied
    }

    /// Looks for workers that went silent; each newly lost one is alerted once.
    pub fn tick(&self, now: f64) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let lost = state.check_lost(now);
        if let Some(m) = &self.metrics {
            for w in &lost {
                m.forget_worker(&w.hostname);
            }
            m.refresh_workers(&state, now);
        }
        let slack = state.config().heartbeat_slack;
        drop(state);
        for worker in lost {
            self.alerter.push(worker_lost_alert(&worker, now, slack));
        }
    }

    /// Runs until the stream ends or `shutdown` is cancelled, then sends the
    /// alerts still pending (for at most a few seconds).
    ///
    /// The receive time of an event is its `local_received` when the
    /// receiver set one (Celery's does), else the current time.
    pub async fn run<S>(self, mut events: S, shutdown: CancellationToken)
    where
        S: Stream<Item = Value> + Send + Unpin,
    {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(event) => {
                        let now = event
                            .get("local_received")
                            .and_then(Value::as_f64)
                            .unwrap_or_else(unix_now);
                        self.handle_event(&event, now);
                    }
                    None => {
                        tracing::info!("monitor: event stream ended");
                        break;
                    }
                },
                _ = tick.tick() => self.tick(unix_now()),
                _ = shutdown.cancelled() => break,
            }
        }
        self.alerter.close(Duration::from_secs(5)).await;
    }
}

impl MonitorHandle {
    /// A copy of the cluster state as of now.
    pub fn snapshot(&self) -> ClusterStateSnapshot {
        self.snapshot_at(unix_now())
    }

    /// A copy of the cluster state, worker statuses judged at `now`.
    pub fn snapshot_at(&self, now: f64) -> ClusterStateSnapshot {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.snapshot(now, self.shared.latest_tasks)
    }

    /// Alerts the missed beat slots not alerted before (see
    /// [`check_beat`]); returns how many were new.
    pub fn report_missed_beats(&self, missed: &[MissedBeat], now: DateTime<Utc>) -> usize {
        let mut new = Vec::new();
        {
            let mut reported = self
                .shared
                .beat_reported
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for m in missed {
                if reported.get(&m.entry).is_some_and(|&slot| slot >= m.due_at) {
                    continue;
                }
                reported.insert(m.entry.clone(), m.due_at);
                new.push(m.to_alert(now));
            }
        }
        let n = new.len();
        for alert in new {
            self.alerter.push(alert);
        }
        n
    }

    /// The alerter, for alerts from elsewhere in the process.
    pub fn alerter(&self) -> &Alerter {
        &self.alerter
    }
}

fn unix_to_utc(t: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis((t * 1000.0) as i64).unwrap_or_else(Utc::now)
}

fn task_failed_alert(update: &state::TaskUpdate) -> Alert {
    let name = update.name_or_unknown();
    let exception = update.exception.as_deref().unwrap_or("unknown exception");
    Alert {
        kind: AlertKind::TaskFailed,
        key: name.to_string(),
        summary: format!("task {name} failed on {}: {exception}", update.hostname),
        details: json!({
            "task": name,
            "uuid": update.uuid,
            "hostname": update.hostname,
            "exception": update.exception,
            "traceback": update.traceback,
            "timestamp": unix_to_utc(update.timestamp).to_rfc3339(),
        }),
        at: unix_to_utc(update.timestamp),
    }
}

fn worker_lost_alert(worker: &WorkerInfo, now: f64, slack: Duration) -> Alert {
    let silent = (now - worker.last_seen).max(0.0);
    Alert {
        kind: AlertKind::WorkerLost,
        key: worker.hostname.clone(),
        summary: format!(
            "worker {} lost: no heartbeat for {silent:.0}s (heartbeat every {}s, no worker-offline)",
            worker.hostname, worker.freq
        ),
        details: json!({
            "hostname": worker.hostname,
            "last_heartbeat": unix_to_utc(worker.last_seen).to_rfc3339(),
            "silent_seconds": silent,
            "freq": worker.freq,
            "expired_after_seconds": worker.freq * 2.0 + slack.as_secs_f64(),
            "active": worker.active,
            "processed": worker.processed,
            "pid": worker.pid,
        }),
        at: unix_to_utc(now),
    }
}
