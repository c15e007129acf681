//! kombu's message envelope for anything that is not a task: events, remote
//! control requests and their replies.
//!
//! The shape is the one task messages use (see [`crate::message`]), but the
//! body is any JSON value and the headers are free-form. Only JSON is
//! accepted, for the same reason as for tasks: a pickled control message must
//! never be evaluated.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The JSON body.
    pub body: Value,
    /// Message headers (`hostname` on events; `ticket` and `clock` on replies).
    pub headers: Map<String, Value>,
    /// `exchange` / `routing_key` it was published with.
    pub exchange: String,
    /// See `exchange`.
    pub routing_key: String,
}

impl Envelope {
    /// A new envelope for `body`.
    pub fn new(body: Value, exchange: &str, routing_key: &str) -> Self {
        Envelope {
            body,
            headers: Map::new(),
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.headers.insert(key.to_owned(), value.into());
        self
    }

    /// The JSON kombu's Redis transport writes (body base64-encoded,
    /// `delivery_mode` 1: events and control messages are transient).
    pub fn encode(&self) -> String {
        json!({
            "body": BASE64.encode(self.body.to_string()),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": self.headers,
            "properties": {
                "delivery_mode": 1,
                "delivery_info": {"exchange": self.exchange, "routing_key": self.routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": uuid::Uuid::new_v4().to_string(),
            },
        })
        .to_string()
    }

    /// Decodes what a kombu producer (ours or Python's) published.
    pub fn decode(raw: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(raw).map_err(|e| Error::Protocol(format!("bad envelope: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Protocol("envelope is not an object".into()))?;
        match obj.get("content-type").and_then(Value::as_str) {
            Some("application/json") | None => {}
            Some(other) => {
                return Err(Error::Protocol(format!(
                    "unsupported content-type {other:?} (JSON only)"
                )))
            }
        }
        let props = obj.get("properties").and_then(Value::as_object);
        let encoding = props
            .and_then(|p| p.get("body_encoding"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let body_raw = obj.get("body").cloned().unwrap_or(Value::Null);
        let body = match (encoding, body_raw) {
            ("base64", Value::String(s)) => {
                let bytes = BASE64
                    .decode(s.trim())
                    .map_err(|e| Error::Protocol(format!("bad base64 body: {e}")))?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Protocol(format!("bad JSON body: {e}")))?
            }
            (_, Value::String(s)) => serde_json::from_str(&s)
                .map_err(|e| Error::Protocol(format!("bad JSON body: {e}")))?,
            (_, other) => other,
        };
        let info = props
            .and_then(|p| p.get("delivery_info"))
            .and_then(Value::as_object);
        let field = |k: &str| {
            info.and_then(|i| i.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        Ok(Envelope {
            body,
            headers: obj
                .get("headers")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            exchange: field("exchange"),
            routing_key: field("routing_key"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let e = Envelope::new(json!({"method": "ping"}), "celery.pidbox", "").header("clock", 3);
        let d = Envelope::decode(&e.encode()).unwrap();
        assert_eq!(d, e);
    }

    #[test]
    fn rejects_pickle_and_garbage() {
        let raw = r#"{"body":"gAN9","content-type":"application/x-python-serialize","properties":{"body_encoding":"base64"}}"#;
        assert!(Envelope::decode(raw)
            .unwrap_err()
            .to_string()
            .contains("JSON only"));
        assert!(Envelope::decode("not json").is_err());
        assert!(Envelope::decode("[1]").is_err());
        let bad64 = r#"{"body":"%%%","properties":{"body_encoding":"base64"}}"#;
        assert!(Envelope::decode(bad64).is_err());
    }
}
