//! Celery events: what a worker (or producer) tells monitors about itself.
//!
//! An event is a flat JSON object with `type` (`task-succeeded`, …), the
//! sender's `hostname`, `timestamp` (Unix seconds), `utcoffset` (hours west of
//! UTC, as Python's `time.timezone // 3600`), `pid` and a Lamport `clock`,
//! plus the fields of its type. It is published on the `celeryev` fanout
//! exchange with the routing key `type` with `-` → `.` (`task.succeeded`),
//! which is what `celery events`, `celery.events.state` and Flower read.
//!
//! Sending never waits for the broker: events go through a bounded channel to
//! a background publisher and are dropped (counted) when it falls behind, so
//! monitoring can never slow the work it watches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::envelope::Envelope;
use super::fanout::{Fanout, Subscription};
use crate::error::Result;

/// Celery's event exchange.
pub const EVENT_EXCHANGE: &str = "celeryev";

/// Seconds between heartbeats (Celery's default `freq`).
pub const HEARTBEAT_FREQ: f64 = 2.0;

/// Events waiting for the publisher before new ones are dropped.
const EVENT_BUFFER: usize = 10_000;

/// Most events published in one round trip.
const PUBLISH_BATCH: usize = 256;

/// Hours west of UTC, as Celery's `utcoffset()`.
fn utcoffset() -> i64 {
    let east = chrono::Local::now().offset().local_minus_utc() as i64;
    (-east).div_euclid(3600)
}

fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// Publishes events for one node. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct EventDispatcher {
    hostname: String,
    enabled: AtomicBool,
    clock: AtomicU64,
    dropped: AtomicU64,
    tx: std::sync::Mutex<Option<mpsc::Sender<(String, String)>>>,
    publisher: std::sync::Mutex<Option<JoinHandle<()>>>,
    fanout: Arc<dyn Fanout>,
}

impl EventDispatcher {
    /// A dispatcher for `hostname` over `fanout`; `enabled` is the initial
    /// state (`--without-events` starts it off; `enable_events` turns it on).
    pub fn new(fanout: Arc<dyn Fanout>, hostname: impl Into<String>, enabled: bool) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<(String, String)>(EVENT_BUFFER);
        let publish_to = fanout.clone();
        let publisher = tokio::spawn(async move {
            // Whatever queued up while the last batch was on the wire goes in
            // the next one: one round trip per burst, not per event.
            let mut batch = Vec::with_capacity(PUBLISH_BATCH);
            while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
                if let Err(e) = publish_to.publish_many(EVENT_EXCHANGE, &batch).await {
                    tracing::debug!(error = %e, count = batch.len(), "events not published");
                }
                batch.clear();
            }
        });
        Arc::new(EventDispatcher {
            hostname: hostname.into(),
            enabled: AtomicBool::new(enabled),
            clock: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            tx: std::sync::Mutex::new(Some(tx)),
            publisher: std::sync::Mutex::new(Some(publisher)),
            fanout,
        })
    }

    /// Whether events are being sent.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Switches sending on or off (the `enable_events`/`disable_events` commands).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Events dropped because the publisher fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The node's hostname.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Advances and returns the Lamport clock.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Moves the clock past a value seen from another node.
    pub fn adjust_clock(&self, other: u64) {
        self.clock.fetch_max(other, Ordering::Relaxed);
    }

    /// Builds the full event body: `fields` plus the standard ones.
    pub fn build(&self, kind: &str, fields: Map<String, Value>) -> Value {
        let mut ev = fields;
        ev.insert("type".into(), kind.into());
        ev.insert("hostname".into(), self.hostname.clone().into());
        ev.insert("timestamp".into(), unix_now().into());
        ev.insert("utcoffset".into(), utcoffset().into());
        ev.insert("pid".into(), std::process::id().into());
        ev.insert("clock".into(), self.tick().into());
        Value::Object(ev)
    }

    fn envelope(&self, body: Value) -> (String, String) {
        let kind = body.get("type").and_then(Value::as_str).unwrap_or("");
        let rk = kind.replace('-', ".");
        let raw = Envelope::new(body, EVENT_EXCHANGE, &rk)
            .header("hostname", self.hostname.clone())
            .encode();
        (rk, raw)
    }

    /// Queues an event of `kind` for publishing when events are enabled.
    pub fn send(&self, kind: &str, fields: Map<String, Value>) {
        if !self.enabled() {
            return;
        }
        let msg = self.envelope(self.build(kind, fields));
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            if tx.try_send(msg).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Publishes an event right away, whatever the enabled switch says;
    /// used for `worker-offline`, which must go out before the process ends.
    pub async fn send_now(&self, kind: &str, fields: Map<String, Value>) -> Result<()> {
        let (rk, raw) = self.envelope(self.build(kind, fields));
        self.fanout.publish(EVENT_EXCHANGE, &rk, &raw).await
    }

    /// Stops accepting events and waits (up to `timeout`) until the queued
    /// ones are published.
    pub async fn close(&self, timeout: Duration) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let handle = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = tokio::time::timeout(timeout, h).await;
        }
    }
}

/// The node name producers send events as: `gen<pid>@<host>`, as Celery's.
pub fn producer_node() -> String {
    crate::message::origin()
}

/// Builds an object from `(key, value)` pairs, for event fields.
pub fn fields<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The host's load averages, rounded as Celery reports them.
pub fn loadavg() -> Value {
    let parts: Vec<f64> = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| {
            s.split_whitespace()
                .take(3)
                .filter_map(|p| p.parse::<f64>().ok())
                .map(|f| (f * 100.0).round() / 100.0)
                .collect()
        })
        .unwrap_or_default();
    if parts.len() == 3 {
        json!(parts)
    } else {
        json!([0.0, 0.0, 0.0])
    }
}

/// Receives events published by any node on the same broker.
pub struct EventReceiver {
    sub: Subscription,
    malformed: u64,
}

impl std::fmt::Debug for EventReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReceiver").finish_non_exhaustive()
    }
}

impl EventReceiver {
    /// Subscribes to the event exchange.
    pub async fn connect(fanout: &dyn Fanout) -> Result<Self> {
        Ok(EventReceiver {
            sub: fanout.subscribe(EVENT_EXCHANGE).await?,
            malformed: 0,
        })
    }

    /// The next well-formed event (an object with a string `type`); messages
    /// that are not are skipped and counted. `None` when the transport ended.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let raw = self.sub.recv().await?;
            match Envelope::decode(&raw) {
                Ok(env) if env.body.get("type").and_then(Value::as_str).is_some() => {
                    return Some(env.body)
                }
                Ok(_) => {
                    self.malformed += 1;
                    tracing::debug!("event without a type ignored");
                }
                Err(e) => {
                    self.malformed += 1;
                    tracing::debug!(error = %e, "undecodable event ignored");
                }
            }
        }
    }

    /// Messages on the event exchange that were not events.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// As a stream of events.
    pub fn into_stream(self) -> impl futures::Stream<Item = Value> + Send + Unpin {
        Box::pin(futures::stream::unfold(self, |mut r| async move {
            r.next().await.map(|v| (v, r))
        }))
    }
}
