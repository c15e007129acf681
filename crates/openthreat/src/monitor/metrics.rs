//! Prometheus metrics from Celery events, named like celery-exporter's so
//! existing dashboards need little change.
//!
//! * `celery_tasks_total{name,state}`: task events by task name and event
//!   (`sent`, `received`, `started`, and the outcomes `succeeded`, `failed`,
//!   `retried`, `rejected`, `revoked`).
//! * `celery_task_runtime_seconds{name}`: the `runtime` of `task-succeeded`.
//! * `celery_workers_online`: workers whose heartbeat is current.
//! * `celery_worker_tasks_active{hostname}`: `active` of each online
//!   worker's last heartbeat; the series is removed when the worker leaves.
//! * `celery_events_ignored_total{reason}`: malformed or unknown events.
//!
//! Task names come from events, that is from any producer on the broker, so
//! the number of distinct `name` labels is capped ([`MAX_TASK_NAMES`]); later
//! names are counted under `other` rather than growing the series without end.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::state::{Applied, ClusterState, TaskEvent, WorkerChange};

/// Distinct task names labelled before the rest go under `other`.
pub const MAX_TASK_NAMES: usize = 200;
/// Label for task names beyond [`MAX_TASK_NAMES`].
pub const OTHER_TASKS: &str = "other";

/// The monitor's metrics, registered into a caller's registry.
#[derive(Debug)]
pub struct MonitorMetrics {
    tasks: IntCounterVec,
    runtime: HistogramVec,
    workers_online: IntGauge,
    worker_active: IntGaugeVec,
    ignored: IntCounterVec,
    names: Mutex<HashSet<String>>,
}

impl MonitorMetrics {
    /// Creates the metrics and registers them into `registry` (the API's,
    /// so one `/metrics` scrape shows them; note its `openthreat_` prefix).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let tasks = IntCounterVec::new(
            Opts::new(
                "celery_tasks_total",
                "Celery task events by task name and state",
            ),
            &["name", "state"],
        )?;
        let runtime = HistogramVec::new(
            HistogramOpts::new(
                "celery_task_runtime_seconds",
                "Execution time of succeeded tasks, from task-succeeded",
            )
            // LLM tasks take tens of seconds, cache cleaning milliseconds.
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ]),
            &["name"],
        )?;
        let workers_online = IntGauge::new(
            "celery_workers_online",
            "Workers whose last heartbeat is within freq x 2 plus slack",
        )?;
        let worker_active = IntGaugeVec::new(
            Opts::new(
                "celery_worker_tasks_active",
                "Tasks executing on each online worker, from its heartbeats",
            ),
            &["hostname"],
        )?;
        let ignored = IntCounterVec::new(
            Opts::new(
                "celery_events_ignored_total",
                "Events the monitor could not use, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(runtime.clone()))?;
        registry.register(Box::new(workers_online.clone()))?;
        registry.register(Box::new(worker_active.clone()))?;
        registry.register(Box::new(ignored.clone()))?;
        Ok(MonitorMetrics {
            tasks,
            runtime,
            workers_online,
            worker_active,
            ignored,
            names: Mutex::new(HashSet::new()),
        })
    }

    /// The label for `name`, capped in number.
    fn label<'a>(&self, name: &'a str) -> &'a str {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.contains(name) {
            return name;
        }
        if names.len() < MAX_TASK_NAMES {
            names.insert(name.to_string());
            return name;
        }
        OTHER_TASKS
    }

    /// Records what one event did. `state` is the state after the event,
    /// for the workers-online gauge.
    pub fn observe(&self, applied: &Applied, state: &ClusterState, now: f64) {
        match applied {
            Applied::Task(update) => {
                let name = self.label(update.name_or_unknown());
                self.tasks
                    .with_label_values(&[name, update.event.as_str()])
                    .inc();
                if update.event == TaskEvent::Succeeded {
                    if let Some(runtime) = update.runtime {
                        self.runtime.with_label_values(&[name]).observe(runtime);
                    }
                }
            }
            Applied::Worker {
                hostname, change, ..
            } => {
                match change {
                    WorkerChange::Offline => self.forget_worker(hostname),
                    _ => {
                        if let Some(active) = state.worker(hostname, now).and_then(|w| w.active) {
                            self.worker_active
                                .with_label_values(&[hostname.as_str()])
                                .set(i64::try_from(active).unwrap_or(i64::MAX));
                        }
                    }
                }
                self.workers_online
                    .set(i64::try_from(state.workers_online(now)).unwrap_or(i64::MAX));
            }
            Applied::Ignored(reason) => self.ignored.with_label_values(&[reason]).inc(),
        }
    }

    /// Drops the active-tasks series of a worker that left or was lost.
    pub fn forget_worker(&self, hostname: &str) {
        let _ = self.worker_active.remove_label_values(&[hostname]);
    }

    /// Refreshes the workers-online gauge (on each tick, when workers expire).
    pub fn refresh_workers(&self, state: &ClusterState, now: f64) {
        self.workers_online
            .set(i64::try_from(state.workers_online(now)).unwrap_or(i64::MAX));
    }
}
