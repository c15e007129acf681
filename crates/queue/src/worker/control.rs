//! The worker's answers to remote control, in the shapes Celery's
//! `celery/worker/control.py` gives and Flower renders.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::rate::TokenBucket;
use super::state::RequestInfoSnapshot;
use super::Shared;
use crate::control::pidbox::{error_reply, ok_reply};
use crate::control::Commands;
use crate::task::parse_rate;

pub(super) struct WorkerCommands<C>(pub Arc<Shared<C>>);

/// Celery's `Request.info()`.
fn request_info<C>(shared: &Shared<C>, r: &RequestInfoSnapshot) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "args": r.args,
        "kwargs": r.kwargs,
        "type": r.name,
        "hostname": shared.hostname,
        "time_start": r.started.map(|t| t.timestamp_micros() as f64 / 1e6),
        "acknowledged": false,
        "delivery_info": {
            "exchange": "",
            "routing_key": r.queue,
            "priority": r.priority,
            "redelivered": false,
        },
        "worker_pid": std::process::id(),
        "retries": r.retries,
    })
}

/// A kombu `Queue.as_dict()` for a plain direct queue.
fn queue_info(name: &str) -> Value {
    json!({
        "name": name,
        "exchange": {
            "name": name, "type": "direct", "arguments": null, "durable": true,
            "passive": false, "auto_delete": false, "delivery_mode": null, "no_declare": false,
        },
        "routing_key": name,
        "queue_arguments": null,
        "binding_arguments": null,
        "consumer_arguments": null,
        "durable": true,
        "exclusive": false,
        "auto_delete": false,
        "no_ack": false,
        "alias": null,
        "bindings": [],
        "no_declare": null,
        "expires": null,
        "message_ttl": null,
        "max_length": null,
        "max_length_bytes": null,
        "max_priority": null,
    })
}

/// `utime`/`stime` (seconds) and `maxrss` (KiB) of this process, from /proc.
fn rusage() -> Value {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let maxrss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({
        "utime": num(11) / ticks,
        "stime": num(12) / ticks,
        "maxrss": maxrss,
        "ixrss": 0, "idrss": 0, "isrss": 0, "minflt": num(7) as u64, "majflt": num(9) as u64,
        "nswap": 0, "inblock": 0, "oublock": 0, "msgsnd": 0, "msgrcv": 0, "nsignals": 0,
        "nvcsw": 0, "nivcsw": 0,
    })
}

fn str_arg<'a>(args: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str)
}

fn num_arg(args: &Map<String, Value>, key: &str) -> Option<f64> {
    args.get(key)
        .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
}

impl<C: Clone + Send + Sync + 'static> WorkerCommands<C> {
    fn ids(args: &Map<String, Value>, key: &str) -> Vec<String> {
        match args.get(key) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn stats(&self) -> Value {
        let s = &self.0;
        let snap = s.state.snapshot();
        let concurrency = s.concurrency.load(Ordering::Relaxed);
        let uptime = (chrono::Utc::now() - snap.started_at).num_seconds().max(0);
        let mut broker = json!({
            "hostname": null, "userid": null, "virtual_host": "/", "port": null,
            "insist": false, "ssl": false, "transport": "unknown", "connect_timeout": 4,
            "transport_options": {}, "login_method": null, "uri_prefix": null,
            "heartbeat": 120.0, "failover_strategy": "round-robin", "alternates": [],
        });
        if let (Some(b), Some(info)) = (broker.as_object_mut(), s.broker_info.as_object()) {
            for (k, v) in info {
                b.insert(k.clone(), v.clone());
            }
        }
        json!({
            "total": snap.processed,
            "pid": std::process::id(),
            "clock": s.events.get().map(|e| e.tick()).unwrap_or(0).to_string(),
            "uptime": uptime,
            "pool": {
                "implementation": "openthreat:tokio",
                "max-concurrency": concurrency,
                "processes": [std::process::id()],
                "max-tasks-per-child": "N/A",
                "put-guarded-by-semaphore": false,
                "timeouts": [0, 0],
                "writes": {"total": 0, "avg": "0.00%", "all": "", "raw": "", "strategy": "", "inqueues": {"total": 0, "active": 0}},
            },
            "broker": broker,
            "prefetch_count": concurrency * s.prefetch_multiplier,
            "rusage": rusage(),
            "sw_ident": "openthreat",
            "sw_ver": env!("CARGO_PKG_VERSION"),
        })
    }

    fn rate_limit(&self, args: &Map<String, Value>) -> Value {
        let Some(task) = str_arg(args, "task_name") else {
            return error_reply("missing argument task_name");
        };
        if self.0.registry.get(task).is_none() {
            return error_reply(format!("unknown task {task:?}"));
        }
        let rate = match args.get("rate_limit") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return error_reply("rate_limit must be a string such as 10/m"),
        };
        let mut buckets = self.0.buckets.write().unwrap_or_else(|p| p.into_inner());
        match rate.as_deref() {
            None | Some("0") | Some("") => {
                buckets.remove(task);
                tracing::info!(task, "rate limit disabled by remote control");
                ok_reply("rate limit disabled successfully")
            }
            Some(r) => match parse_rate(r) {
                Some(interval) => {
                    buckets.insert(task.to_owned(), Arc::new(TokenBucket::new(interval)));
                    tracing::info!(task, rate = r, "rate limit set by remote control");
                    ok_reply("new rate limit set successfully")
                }
                None => error_reply(format!("invalid rate limit string: {r:?}")),
            },
        }
    }

    fn time_limit(&self, args: &Map<String, Value>) -> Value {
        let Some(task) = str_arg(args, "task_name") else {
            return error_reply("missing argument task_name");
        };
        if self.0.registry.get(task).is_none() {
            return error_reply(format!("unknown task {task:?}"));
        }
        let d = |k| {
            num_arg(args, k)
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
        };
        let (soft, hard) = (d("soft"), d("hard"));
        if let (Some(s), Some(h)) = (soft, hard) {
            if s > h {
                return error_reply("soft time limit must not exceed the hard one");
            }
        }
        self.0
            .limits
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task.to_owned(), (soft, hard));
        tracing::info!(task, ?soft, ?hard, "time limits set by remote control");
        ok_reply("time limits set successfully")
    }

    fn pool_grow(&self, args: &Map<String, Value>) -> Value {
        let n = num_arg(args, "n").unwrap_or(1.0).max(0.0) as usize;
        let s = &self.0;
        s.exec.add_permits(n);
        s.fetch_permits.add_permits(n * s.prefetch_multiplier);
        s.concurrency.fetch_add(n, Ordering::Relaxed);
        ok_reply("pool will grow")
    }

    fn pool_shrink(&self, args: &Map<String, Value>) -> Value {
        let s = &self.0;
        let current = s.concurrency.load(Ordering::Relaxed);
        let n =
            (num_arg(args, "n").unwrap_or(1.0).max(0.0) as usize).min(current.saturating_sub(1));
        if n == 0 {
            return error_reply("pool cannot shrink below one slot");
        }
        s.concurrency.fetch_sub(n, Ordering::Relaxed);
        // Slots in use are taken away as they free up.
        let exec = s.exec.clone();
        let fetch = s.fetch_permits.clone();
        let extra = n * s.prefetch_multiplier;
        tokio::spawn(async move {
            if let Ok(p) = exec.acquire_many_owned(n as u32).await {
                p.forget();
            }
            if let Ok(p) = fetch.acquire_many_owned(extra as u32).await {
                p.forget();
            }
        });
        ok_reply("pool will shrink")
    }

    async fn add_consumer(&self, args: &Map<String, Value>) -> Value {
        let Some(queue) = str_arg(args, "queue").filter(|q| !q.is_empty()) else {
            return error_reply("missing argument queue");
        };
        if !self.0.state.add_queue(queue) {
            return ok_reply(format!("already consuming from {queue:?}"));
        }
        if let Err(e) = self.0.broker.declare(&[queue.to_owned()]).await {
            tracing::warn!(error = %e, queue, "declaring the new queue failed");
        }
        tracing::info!(queue, "consuming from a new queue (remote control)");
        ok_reply(format!("add consumer {queue}"))
    }

    fn cancel_consumer(&self, args: &Map<String, Value>) -> Value {
        let Some(queue) = str_arg(args, "queue") else {
            return error_reply("missing argument queue");
        };
        if self.0.state.cancel_queue(queue) {
            tracing::info!(queue, "no longer consuming (remote control)");
        }
        ok_reply(format!("no longer consuming from {queue}"))
    }
}

#[async_trait]
impl<C: Clone + Send + Sync + 'static> Commands for WorkerCommands<C> {
    async fn handle(&self, method: &str, args: &Map<String, Value>) -> Option<Value> {
        let s = &self.0;
        let infos = |v: &[RequestInfoSnapshot]| -> Value {
            Value::Array(v.iter().map(|r| request_info(s, r)).collect())
        };
        let reply = match method {
            "ping" => ok_reply("pong"),
            "stats" => self.stats(),
            "active" => infos(&s.state.snapshot().active),
            "reserved" => infos(&s.state.snapshot().reserved),
            "scheduled" => Value::Array(
                s.state
                    .snapshot()
                    .scheduled
                    .iter()
                    .map(|r| {
                        json!({
                            "eta": r.eta.map(|t| t.to_rfc3339()),
                            "priority": r.priority,
                            "request": request_info(s, r),
                        })
                    })
                    .collect(),
            ),
            "registered" => json!(s.registry.names()),
            "revoked" => json!(s.state.snapshot().revoked),
            "active_queues" => Value::Array(s.queues().iter().map(|q| queue_info(q)).collect()),
            "query_task" => {
                let mut out = Map::new();
                for id in Self::ids(args, "ids") {
                    if let Some((phase, r)) = s.state.query(&id) {
                        out.insert(id, json!([phase, request_info(s, &r)]));
                    }
                }
                Value::Object(out)
            }
            "conf" => json!({
                "worker_concurrency": s.concurrency.load(Ordering::Relaxed),
                "worker_prefetch_multiplier": s.prefetch_multiplier,
                "task_acks_late": true,
                "task_track_started": s.track_started,
                "worker_send_task_events": s.events.get().is_some_and(|e| e.enabled()),
                "task_serializer": "json",
                "result_serializer": "json",
                "accept_content": ["json"],
                "task_default_queue": "celery",
                "include": s.registry.names(),
            }),
            "report" => ok_reply(format!(
                "software -> openthreat:{} (rust worker)\nplatform -> system:{} arch:{}\nhostname -> {}\nqueues -> {}",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH,
                s.hostname,
                s.queues().join(", "),
            )),
            "revoke" | "terminate" => {
                let ids = Self::ids(args, "task_id");
                if ids.is_empty() {
                    return Some(error_reply("missing argument task_id"));
                }
                // `terminate SIGNAL ID…` is `revoke ID… --terminate`, as in Celery.
                let terminate = method == "terminate"
                    || args.get("terminate").and_then(Value::as_bool).unwrap_or(false);
                let mut killed = Vec::new();
                for id in &ids {
                    if terminate {
                        if s.state.terminate(id) {
                            killed.push(id.clone());
                        }
                    } else {
                        s.state.revoke(id);
                    }
                }
                tracing::info!(?ids, terminate, "revoked by remote control");
                if terminate {
                    if killed.is_empty() {
                        ok_reply(format!("tasks {} flagged as revoked (none running here)", ids.join(", ")))
                    } else {
                        ok_reply(format!("terminate: tasks {} flagged as revoked", killed.join(", ")))
                    }
                } else {
                    ok_reply(format!("tasks {} flagged as revoked", ids.join(", ")))
                }
            }
            "rate_limit" => self.rate_limit(args),
            "time_limit" => self.time_limit(args),
            "enable_events" | "disable_events" => match s.events.get() {
                Some(ev) => {
                    let on = method == "enable_events";
                    let was = ev.enabled();
                    ev.set_enabled(on);
                    match (on, was) {
                        (true, true) => ok_reply("task events already enabled"),
                        (true, false) => ok_reply("task events enabled"),
                        (false, false) => ok_reply("task events already disabled"),
                        (false, true) => ok_reply("task events disabled"),
                    }
                }
                None => error_reply("this worker has no event transport"),
            },
            "heartbeat" => {
                if let Some(ev) = s.events.get() {
                    ev.send("worker-heartbeat", super::worker_fields(s));
                }
                Value::Null
            }
            "pool_grow" => self.pool_grow(args),
            "pool_shrink" => self.pool_shrink(args),
            "add_consumer" => self.add_consumer(args).await,
            "cancel_consumer" => self.cancel_consumer(args),
            "shutdown" => {
                tracing::warn!("shutdown requested by remote control");
                s.remote_stop.cancel();
                return None;
            }
            other => {
                tracing::warn!(method = other, "unknown control command");
                error_reply(format!("No such control command: {other}"))
            }
        };
        Some(reply)
    }
}
