//! Celery message protocol v2, JSON serializer only.
//!
//! A message on the wire is a JSON envelope (kombu's "payload"):
//!
//! ```text
//! {"body": base64(JSON [args, kwargs, embed]),
//!  "content-encoding": "utf-8", "content-type": "application/json",
//!  "headers": {"lang", "task", "id", "eta", "expires", "retries", "timelimit", ...},
//!  "properties": {"correlation_id", "reply_to", "delivery_mode": 2,
//!                 "delivery_info": {"exchange", "routing_key"}, "priority",
//!                 "body_encoding": "base64", "delivery_tag"}}
//! ```
//!
//! Decoding is lenient where Celery is lenient (unknown header keys are kept
//! but ignored, ETA/expires may carry an offset or not, numbers may be ints or
//! floats) and strict where running the wrong thing would be dangerous: only
//! `application/json` is accepted, so a pickled message can never be executed.
//! The tests in `tests/wire.rs` pin this module against messages captured from
//! Python Celery 5.x (`tests/fixtures/`).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::Error;

/// The task-level headers of a protocol v2 message.
///
/// Field names are Celery's; `extra` keeps keys we do not interpret (such as
/// `stamps` or `replaced_task_nesting`) so a retried message carries them on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headers {
    /// Language of the producer; Celery only ever writes `"py"`.
    #[serde(default = "default_lang")]
    pub lang: String,
    /// Registered task name, e.g. `tasks.process_new_cves`.
    pub task: String,
    /// Task id (a UUID string), also the result key.
    pub id: String,
    #[serde(default)]
    pub shadow: Option<String>,
    /// Do not run before this instant. Celery writes it with an offset, older
    /// producers without one (then it is UTC).
    #[serde(default, with = "celery_time")]
    pub eta: Option<DateTime<Utc>>,
    /// Revoke instead of running once this instant has passed.
    #[serde(default, with = "celery_time")]
    pub expires: Option<DateTime<Utc>>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub group_index: Option<u64>,
    /// How many times this task id has been retried already.
    #[serde(default, deserialize_with = "lenient_u32")]
    pub retries: u32,
    /// `[hard, soft]` time limits in seconds; either may be null.
    #[serde(default, serialize_with = "timelimit_ser")]
    pub timelimit: (Option<f64>, Option<f64>),
    #[serde(default)]
    pub root_id: Option<String>,
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub argsrepr: Option<String>,
    #[serde(default)]
    pub kwargsrepr: Option<String>,
    /// `<process>@<host>` of the producer.
    #[serde(default)]
    pub origin: Option<String>,
    /// Null means "the task's own default".
    #[serde(default)]
    pub ignore_result: Option<bool>,
    /// Every other header, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_lang() -> String {
    "py".to_owned()
}

/// Whole seconds are written as integers, as Python writes `time_limit=20`.
fn timelimit_ser<S: Serializer>(t: &(Option<f64>, Option<f64>), s: S) -> Result<S::Ok, S::Error> {
    let num = |v: Option<f64>| match v {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => Value::from(f as i64),
        Some(f) => Value::from(f),
        None => Value::Null,
    };
    (num(t.0), num(t.1)).serialize(s)
}

fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(v.and_then(|v| v.as_f64())
        .map(|f| f.max(0.0) as u32)
        .unwrap_or(0))
}

/// Where a message was published to: kombu's `delivery_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    #[serde(default)]
    pub exchange: String,
    #[serde(default)]
    pub routing_key: String,
}

/// AMQP-style message properties as kombu's virtual transports write them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Properties {
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default = "persistent")]
    pub delivery_mode: u8,
    pub delivery_info: DeliveryInfo,
    /// 0..=9; on Redis 0 is consumed first (kombu's order).
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default = "base64_name")]
    pub body_encoding: String,
    /// Unique per publish; the key of the Redis `unacked` hash.
    #[serde(default)]
    pub delivery_tag: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn persistent() -> u8 {
    2
}
fn base64_name() -> String {
    "base64".to_owned()
}

/// The wire envelope, body still encoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    body: String,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    headers: Headers,
    properties: Properties,
}

/// A decoded task message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub headers: Headers,
    pub properties: Properties,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// The third body element: `callbacks`, `errbacks`, `chain`, `chord`.
    pub embed: Map<String, Value>,
}

impl Message {
    /// Builds a fresh message for `task` with the defaults Python's
    /// `app.send_task` uses (default exchange, routing key = queue).
    pub fn new(
        task: &str,
        id: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        queue: &str,
    ) -> Self {
        let mut embed = Map::new();
        for k in ["callbacks", "errbacks", "chain", "chord"] {
            embed.insert(k.to_owned(), Value::Null);
        }
        // Keys Celery 5 always writes; kept so our messages have its shape.
        let mut extra = Map::new();
        extra.insert("replaced_task_nesting".into(), 0.into());
        extra.insert("stamped_headers".into(), Value::Null);
        extra.insert("stamps".into(), Value::Object(Map::new()));
        let argsrepr = serde_json::to_string(&args).ok();
        let kwargsrepr = serde_json::to_string(&kwargs).ok();
        Message {
            headers: Headers {
                lang: default_lang(),
                task: task.to_owned(),
                id: id.to_owned(),
                shadow: None,
                eta: None,
                expires: None,
                group: None,
                group_index: None,
                retries: 0,
                timelimit: (None, None),
                root_id: Some(id.to_owned()),
                parent_id: None,
                argsrepr,
                kwargsrepr,
                origin: Some(origin()),
                ignore_result: None,
                extra,
            },
            properties: Properties {
                correlation_id: Some(id.to_owned()),
                reply_to: Some(reply_to().to_owned()),
                delivery_mode: 2,
                delivery_info: DeliveryInfo {
                    exchange: String::new(),
                    routing_key: queue.to_owned(),
                },
                priority: Some(0),
                body_encoding: base64_name(),
                delivery_tag: Some(uuid::Uuid::new_v4().to_string()),
                extra: Map::new(),
            },
            args,
            kwargs,
            embed,
        }
    }

    /// Decodes a raw envelope. Fails on anything that is not a protocol v2
    /// JSON message; the worker dead-letters such messages with the reason.
    pub fn decode(raw: &[u8]) -> Result<Self, Error> {
        let env: Envelope = serde_json::from_slice(raw)
            .map_err(|e| Error::Protocol(format!("bad envelope: {e}")))?;
        match env.content_type.as_deref() {
            Some("application/json") | None => {}
            Some(other) => {
                return Err(Error::Protocol(format!(
                    "unsupported content-type {other:?} (JSON only)"
                )))
            }
        }
        let body = match env.properties.body_encoding.as_str() {
            "base64" => BASE64
                .decode(env.body.trim())
                .map_err(|e| Error::Protocol(format!("bad base64 body: {e}")))?,
            "utf-8" | "" => env.body.into_bytes(),
            other => {
                return Err(Error::Protocol(format!(
                    "unsupported body_encoding {other:?}"
                )))
            }
        };
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("bad JSON body: {e}")))?;
        let Value::Array(mut parts) = body else {
            return Err(Error::Protocol(
                "body is not [args, kwargs, embed] (protocol v1?)".into(),
            ));
        };
        if parts.len() != 3 {
            return Err(Error::Protocol(format!(
                "body has {} elements, expected 3",
                parts.len()
            )));
        }
        let embed = match parts.pop() {
            Some(Value::Object(m)) => m,
            Some(Value::Null) => Map::new(),
            _ => return Err(Error::Protocol("embed is not an object".into())),
        };
        let kwargs = match parts.pop() {
            Some(Value::Object(m)) => m,
            Some(Value::Null) => Map::new(),
            _ => return Err(Error::Protocol("kwargs is not an object".into())),
        };
        let args = match parts.pop() {
            Some(Value::Array(a)) => a,
            Some(Value::Null) => Vec::new(),
            _ => return Err(Error::Protocol("args is not an array".into())),
        };
        Ok(Message {
            headers: env.headers,
            properties: env.properties,
            args,
            kwargs,
            embed,
        })
    }

    /// Encodes to the JSON envelope kombu stores in a Redis list.
    pub fn encode(&self) -> String {
        let body = Value::Array(vec![
            Value::Array(self.args.clone()),
            Value::Object(self.kwargs.clone()),
            Value::Object(self.embed.clone()),
        ]);
        let env = Envelope {
            body: BASE64.encode(body.to_string()),
            content_encoding: Some("utf-8".into()),
            content_type: Some("application/json".into()),
            headers: self.headers.clone(),
            properties: self.properties.clone(),
        };
        serde_json::to_string(&env).expect("a message always serializes")
    }

    /// The queue this message was routed to.
    pub fn queue(&self) -> &str {
        &self.properties.delivery_info.routing_key
    }

    /// Priority clamped to 0..=9 (0 when absent, as kombu does).
    pub fn priority(&self) -> u8 {
        self.properties.priority.unwrap_or(0).min(9)
    }
}

/// The producer's reply address: one UUID per process, as Celery's `app.thread_oid`.
fn reply_to() -> &'static str {
    static OID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// `gen<pid>@<host>`, the `origin` Celery producers write.
pub(crate) fn origin() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("gen{}@{}", std::process::id(), host)
}

/// Reads the few fields the broker needs (tag, queue, priority) from a raw
/// envelope without decoding the body, so even a message whose body is broken
/// can be acked and dead-lettered.
pub(crate) fn peek(raw: &str) -> Option<(Option<String>, DeliveryInfo, u8)> {
    let v: Value = serde_json::from_str(raw).ok()?;
    let props = v.get("properties")?;
    let tag = props
        .get("delivery_tag")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let info: DeliveryInfo = serde_json::from_value(props.get("delivery_info")?.clone()).ok()?;
    let pri = props
        .get("priority")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(9) as u8;
    Some((tag, info, pri))
}

/// Serde helpers for Celery timestamps: ISO 8601 with or without offset on
/// input (naive means UTC), always `+00:00` with microseconds on output, which
/// is what Python's `datetime.isoformat()` produces for an aware UTC value.
pub(crate) mod celery_time {
    use super::*;

    pub fn parse(s: &str) -> Option<DateTime<Utc>> {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Some(t.with_timezone(&Utc));
        }
        if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%:z") {
            return Some(t.with_timezone(&Utc));
        }
        for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
                return Some(t.and_utc());
            }
        }
        None
    }

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Micros, false)
    }

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => parse(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("bad timestamp {s:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_and_without_offset() {
        let a = celery_time::parse("2030-01-02T03:04:05.678000").unwrap();
        let b = celery_time::parse("2030-01-02T03:04:05.678000+00:00").unwrap();
        let c = celery_time::parse("2030-01-02T05:04:05.678+02:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(celery_time::format(&a), "2030-01-02T03:04:05.678000+00:00");
    }

    #[test]
    fn roundtrip() {
        let mut kw = Map::new();
        kw.insert("x".into(), 1.into());
        let m = Message::new("t.x", "id-1", vec![1.into()], kw, "celery");
        let back = Message::decode(m.encode().as_bytes()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn rejects_pickle() {
        let m = Message::new("t.x", "id-1", vec![], Map::new(), "celery").encode();
        let bad = m.replace("application/json", "application/x-python-serialize");
        assert!(Message::decode(bad.as_bytes()).is_err());
    }
}
