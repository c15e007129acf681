//! Remote control over kombu's "pidbox": broadcast requests, direct replies.
//!
//! A request is published on the `celery.pidbox` fanout exchange as
//! `{"method", "arguments", "destination", "pattern", "matcher", "ticket",
//! "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": <oid>}}`
//! with headers `clock` and `expires`. Every node for which it is meant
//! answers `{<hostname>: <reply>}` on the reply exchange with the same
//! routing key and a `ticket` header; the sender collects replies from its
//! queue `<oid>.reply.celery.pidbox` until the timeout or the expected count.
//! This is what `celery inspect`/`celery control` and Flower do, so a
//! [`Node`] answers them and a [`Mailbox`] can ask Python workers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::envelope::Envelope;
use super::fanout::Fanout;
use crate::error::{Error, Result};

/// Celery's control exchange.
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";
/// Where replies go.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// A parsed control request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Command name (`ping`, `active`, `revoke`, …).
    pub method: String,
    /// Keyword arguments of the command.
    pub arguments: Map<String, Value>,
    /// Node names it is meant for; `None` means every node.
    pub destination: Option<Vec<String>>,
    /// A glob on node names (`matcher` = `glob`), an alternative to `destination`.
    pub pattern: Option<String>,
    /// Reply ticket; with `reply_to`, the sender waits for answers.
    pub ticket: Option<String>,
    /// `(exchange, routing_key)` to answer to.
    pub reply_to: Option<(String, String)>,
    /// Unix time after which the request is stale (kombu's `expires` header).
    pub expires: Option<f64>,
    /// The sender's Lamport clock.
    pub clock: Option<u64>,
}

impl Request {
    /// Reads a request from a decoded envelope.
    pub fn parse(env: &Envelope) -> Result<Self> {
        let body = env
            .body
            .as_object()
            .ok_or_else(|| Error::Protocol("control request is not an object".into()))?;
        let method = body
            .get("method")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| Error::Protocol("control request without a method".into()))?
            .to_owned();
        let arguments = match body.get("arguments") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(Error::Protocol("arguments is not an object".into())),
        };
        let destination = match body.get("destination") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            ),
            Some(Value::String(s)) => Some(vec![s.clone()]),
            Some(_) => return Err(Error::Protocol("destination is not a list".into())),
        };
        let pattern = match (
            body.get("pattern").and_then(Value::as_str),
            body.get("matcher").and_then(Value::as_str),
        ) {
            (Some(p), Some("glob") | None) => Some(p.to_owned()),
            (Some(_), Some(other)) => {
                return Err(Error::Protocol(format!("unsupported matcher {other:?}")))
            }
            _ => None,
        };
        let reply_to = body.get("reply_to").and_then(|r| {
            Some((
                r.get("exchange")?.as_str()?.to_owned(),
                r.get("routing_key")?.as_str()?.to_owned(),
            ))
        });
        let num =
            |v: Option<&Value>| v.and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()));
        Ok(Request {
            method,
            arguments,
            destination,
            pattern,
            ticket: body
                .get("ticket")
                .and_then(Value::as_str)
                .map(str::to_owned),
            reply_to,
            expires: num(env.headers.get("expires")).filter(|e| *e > 0.0),
            clock: num(env.headers.get("clock")).map(|c| c as u64),
        })
    }

    /// Whether `hostname` should act on this request.
    pub fn is_for(&self, hostname: &str) -> bool {
        if let Some(dest) = &self.destination {
            if !dest.is_empty() {
                return dest.iter().any(|d| d == hostname);
            }
        }
        match &self.pattern {
            Some(p) => glob_match(p, hostname),
            None => true,
        }
    }
}

/// `*` and `?` globbing, as kombu's `glob` matcher (fnmatch) on node names.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// What a node does with a command. `None` means "send no reply" (only
/// `shutdown` does that, as in Celery).
#[async_trait]
pub trait Commands: Send + Sync + 'static {
    /// Runs `method` with `arguments`; unknown methods answer `{"error": …}`.
    async fn handle(&self, method: &str, arguments: &Map<String, Value>) -> Option<Value>;
}

/// The `{"error": …}` reply Celery gives for a command it cannot run.
pub fn error_reply(msg: impl std::fmt::Display) -> Value {
    json!({"error": msg.to_string()})
}

/// The `{"ok": …}` reply.
pub fn ok_reply(msg: impl std::fmt::Display) -> Value {
    json!({"ok": msg.to_string()})
}

/// Serves control requests for one node until `stop` is cancelled.
pub struct Node {
    fanout: Arc<dyn Fanout>,
    hostname: String,
    commands: Arc<dyn Commands>,
    clock: Arc<dyn Fn(Option<u64>) -> u64 + Send + Sync>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node named `hostname`. `clock` merges a sender's clock (if any) and
    /// returns the next local tick, for the replies' `clock` header.
    pub fn new(
        fanout: Arc<dyn Fanout>,
        hostname: impl Into<String>,
        commands: Arc<dyn Commands>,
        clock: Arc<dyn Fn(Option<u64>) -> u64 + Send + Sync>,
    ) -> Self {
        Node {
            fanout,
            hostname: hostname.into(),
            commands,
            clock,
        }
    }

    /// Subscribes (active when this returns) and serves in the background.
    pub async fn spawn(self, stop: CancellationToken) -> Result<tokio::task::JoinHandle<()>> {
        let mut sub = self.fanout.subscribe(PIDBOX_EXCHANGE).await?;
        let node = Arc::new(self);
        Ok(tokio::spawn(async move {
            loop {
                let raw = tokio::select! {
                    r = sub.recv() => match r { Some(r) => r, None => return },
                    _ = stop.cancelled() => return,
                };
                let node = node.clone();
                // Each request on its own task: a slow command never delays a ping.
                tokio::spawn(async move { node.dispatch(&raw).await });
            }
        }))
    }

    /// Handles one raw request: decode, filter, run, reply.
    pub async fn dispatch(&self, raw: &str) {
        let req = match Envelope::decode(raw).and_then(|e| Request::parse(&e)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "malformed control message ignored");
                return;
            }
        };
        if !req.is_for(&self.hostname) {
            return;
        }
        let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        if req.expires.is_some_and(|e| e < now) {
            tracing::debug!(method = %req.method, "expired control message ignored");
            return;
        }
        (self.clock)(req.clock);
        tracing::debug!(method = %req.method, "control command");
        let Some(reply) = self.commands.handle(&req.method, &req.arguments).await else {
            return;
        };
        let (Some((exchange, rk)), Some(ticket)) = (&req.reply_to, &req.ticket) else {
            return;
        };
        let mut body = Map::new();
        body.insert(self.hostname.clone(), reply);
        let raw = Envelope::new(Value::Object(body), exchange, rk)
            .header("ticket", ticket.clone())
            .header("clock", (self.clock)(None))
            .encode();
        match self.fanout.send_direct(exchange, rk, &raw).await {
            Ok(0) => tracing::debug!(method = %req.method, "nobody waits for this reply"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, method = %req.method, "control reply failed"),
        }
    }
}

/// The sending side: broadcasts commands and collects replies.
pub struct Mailbox {
    fanout: Arc<dyn Fanout>,
    oid: String,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").field("oid", &self.oid).finish()
    }
}

/// One broadcast.
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// Command.
    pub method: String,
    /// Its keyword arguments.
    pub arguments: Map<String, Value>,
    /// Only these nodes (all when `None`).
    pub destination: Option<Vec<String>>,
    /// Wait for replies?
    pub reply: bool,
    /// How long to wait for replies.
    pub timeout: Duration,
    /// Stop after this many replies (defaults to the destination count).
    pub limit: Option<usize>,
}

impl Broadcast {
    /// A broadcast of `method` to every node, waiting 1 s for replies.
    pub fn new(method: &str) -> Self {
        Broadcast {
            method: method.to_owned(),
            arguments: Map::new(),
            destination: None,
            reply: true,
            timeout: Duration::from_secs(1),
            limit: None,
        }
    }
}

impl Mailbox {
    /// A mailbox with a fresh reply address.
    pub fn new(fanout: Arc<dyn Fanout>) -> Self {
        Mailbox {
            fanout,
            oid: uuid::Uuid::new_v4().to_string(),
        }
    }

    fn reply_queue(&self) -> String {
        format!("{}.{REPLY_EXCHANGE}", self.oid)
    }

    /// Sends `b` and returns the replies as `(hostname, reply)`, in arrival order.
    pub async fn broadcast(&self, b: &Broadcast) -> Result<Vec<(String, Value)>> {
        let ticket = uuid::Uuid::new_v4().to_string();
        let queue = self.reply_queue();
        if b.reply {
            self.fanout.bind(REPLY_EXCHANGE, &self.oid, &queue).await?;
        }
        let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        let mut body = json!({
            "method": b.method,
            "arguments": b.arguments,
            "destination": b.destination,
            "pattern": null,
            "matcher": null,
        });
        if b.reply {
            body["ticket"] = json!(ticket);
            body["reply_to"] = json!({"exchange": REPLY_EXCHANGE, "routing_key": self.oid});
        }
        let raw = Envelope::new(body, PIDBOX_EXCHANGE, "")
            .header("clock", 1)
            .header("expires", now + b.timeout.as_secs_f64())
            .encode();
        self.fanout.publish(PIDBOX_EXCHANGE, "", &raw).await?;
        if !b.reply {
            return Ok(Vec::new());
        }
        let limit = b
            .limit
            .or_else(|| b.destination.as_ref().map(Vec::len).filter(|n| *n > 0));
        let deadline = tokio::time::Instant::now() + b.timeout;
        let mut out = Vec::new();
        let result = async {
            loop {
                if limit.is_some_and(|l| out.len() >= l) {
                    return Ok(());
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                let Some(raw) = self.fanout.pop(&queue, left).await? else {
                    return Ok(());
                };
                let env = match Envelope::decode(&raw) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed control reply ignored");
                        continue;
                    }
                };
                if env.headers.get("ticket").and_then(Value::as_str) != Some(ticket.as_str()) {
                    continue; // a late answer to an earlier request
                }
                if let Value::Object(m) = env.body {
                    out.extend(m);
                }
            }
        }
        .await;
        let cleanup = self.fanout.unbind(REPLY_EXCHANGE, &self.oid, &queue).await;
        result.and(cleanup)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob_match("celery@*", "celery@host"));
        assert!(glob_match("*@h?st", "w1@host"));
        assert!(!glob_match("w1@*", "w2@host"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn parses_celery_requests() {
        let env = Envelope::new(
            json!({"method": "rate_limit", "arguments": {"task_name": "t", "rate_limit": "1/s"},
                   "destination": ["a@h"], "pattern": null, "matcher": null,
                   "ticket": "tk", "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "oid"}}),
            PIDBOX_EXCHANGE,
            "",
        )
        .header("clock", 7)
        .header("expires", 1e12);
        let r = Request::parse(&env).unwrap();
        assert_eq!(r.method, "rate_limit");
        assert_eq!(
            r.reply_to,
            Some(("reply.celery.pidbox".into(), "oid".into()))
        );
        assert!(r.is_for("a@h"));
        assert!(!r.is_for("b@h"));
        assert_eq!(r.clock, Some(7));
        for bad in [
            json!([1]),
            json!({"arguments": {}}),
            json!({"method": "x", "arguments": 3}),
        ] {
            assert!(Request::parse(&Envelope::new(bad, PIDBOX_EXCHANGE, "")).is_err());
        }
    }
}
