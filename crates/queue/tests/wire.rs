//! The wire format, pinned against messages captured from Python Celery 5.x
//! (`tests/python/capture.py` wrote `tests/fixtures/*.json` from real Redis
//! list entries). We must decode theirs, and ours must have their shape.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use chrono::{TimeZone, Utc};
use openthreat_queue::message::Message;
use serde_json::{json, Map, Value};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn decodes_plain_send_task() {
    let m = Message::decode(fixture("plain").as_bytes()).unwrap();
    assert_eq!(m.headers.task, "tests.add");
    assert_eq!(m.headers.lang, "py");
    assert_eq!(m.args, vec![json!(2), json!(3)]);
    assert!(m.kwargs.is_empty());
    assert_eq!(m.headers.retries, 0);
    assert_eq!(m.headers.timelimit, (None, None));
    assert_eq!(m.headers.eta, None);
    assert_eq!(m.headers.root_id.as_deref(), Some(m.headers.id.as_str()));
    assert_eq!(
        m.properties.correlation_id.as_deref(),
        Some(m.headers.id.as_str())
    );
    assert_eq!(m.queue(), "celery");
    assert_eq!(m.properties.delivery_info.exchange, "");
    assert_eq!(m.priority(), 0);
    assert_eq!(m.properties.delivery_mode, 2);
    assert!(m.properties.delivery_tag.is_some());
    assert_eq!(
        keys(&Value::Object(m.embed.clone())),
        ["callbacks", "chain", "chord", "errbacks"]
            .map(String::from)
            .into()
    );
    // Keys we do not model survive in `extra`.
    assert!(m.headers.extra.contains_key("stamps"));
}

#[test]
fn decodes_kwargs_and_floats() {
    let m = Message::decode(fixture("kwargs").as_bytes()).unwrap();
    assert_eq!(m.headers.task, "tests.echo");
    assert_eq!(m.args, vec![json!("hi")]);
    assert_eq!(Value::Object(m.kwargs), json!({"upper": true, "n": 1.5}));
}

#[test]
fn decodes_options() {
    let m = Message::decode(fixture("options").as_bytes()).unwrap();
    assert_eq!(m.headers.id, "9d2b3a2c-1111-4c1a-9a43-000000000001");
    assert_eq!(m.headers.timelimit, (Some(20.0), Some(10.0)));
    assert_eq!(m.priority(), 6);
    let (eta, expires) = (m.headers.eta.unwrap(), m.headers.expires.unwrap());
    // countdown=30, expires=600 → expires is 570 s after the ETA.
    let gap = (expires - eta).num_milliseconds();
    assert!((569_000..=571_000).contains(&gap), "{gap}");
    assert_eq!(m.properties.extra.get("expiration"), Some(&json!("600000")));
}

#[test]
fn eta_with_and_without_offset() {
    let naive = Message::decode(fixture("eta_naive").as_bytes()).unwrap();
    let aware = Message::decode(fixture("eta_utc").as_bytes()).unwrap();
    let want =
        Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::milliseconds(678);
    assert_eq!(naive.headers.eta, Some(want));
    assert_eq!(aware.headers.eta, Some(want));
    assert_eq!(aware.headers.expires, Some(want));
}

#[test]
fn decodes_queue_priority_ignore_result_retries() {
    let m = Message::decode(fixture("queue_priority").as_bytes()).unwrap();
    assert_eq!((m.queue(), m.priority(), m.args.len()), ("other", 9, 0));
    let m = Message::decode(fixture("ignore_result").as_bytes()).unwrap();
    assert_eq!(m.headers.ignore_result, Some(true));
    assert_eq!(m.headers.retries, 2);
}

/// Our encoder writes exactly the keys Python writes, at every level, and the
/// same body layout.
#[test]
fn our_messages_have_celerys_shape() {
    for (case, build) in [
        (
            "plain",
            Box::new(|| {
                Message::new(
                    "tests.add",
                    "x",
                    vec![json!(2), json!(3)],
                    Map::new(),
                    "celery",
                )
            }) as Box<dyn Fn() -> Message>,
        ),
        (
            "options",
            Box::new(|| {
                let mut m = Message::new(
                    "tests.add",
                    "x",
                    vec![json!(1), json!(2)],
                    Map::new(),
                    "celery",
                );
                m.headers.eta = Some(Utc::now());
                m.headers.expires = Some(Utc::now() + chrono::Duration::seconds(600));
                m.headers.timelimit = (Some(20.0), Some(10.0));
                m.properties.priority = Some(6);
                m.properties
                    .extra
                    .insert("expiration".into(), json!("600000"));
                m
            }),
        ),
    ] {
        let theirs: Value = serde_json::from_str(&fixture(case)).unwrap();
        let ours: Value = serde_json::from_str(&build().encode()).unwrap();
        assert_eq!(keys(&ours), keys(&theirs), "{case}: envelope");
        assert_eq!(
            keys(&ours["headers"]),
            keys(&theirs["headers"]),
            "{case}: headers"
        );
        assert_eq!(
            keys(&ours["properties"]),
            keys(&theirs["properties"]),
            "{case}: properties"
        );
        assert_eq!(
            keys(&ours["properties"]["delivery_info"]),
            keys(&theirs["properties"]["delivery_info"]),
            "{case}: delivery_info"
        );
        for k in ["content-type", "content-encoding"] {
            assert_eq!(ours[k], theirs[k], "{case}: {k}");
        }
        assert_eq!(
            ours["properties"]["body_encoding"],
            theirs["properties"]["body_encoding"]
        );
        assert_eq!(
            ours["properties"]["delivery_mode"],
            theirs["properties"]["delivery_mode"]
        );
        assert_eq!(
            ours["properties"]["priority"],
            theirs["properties"]["priority"]
        );
        assert_eq!(ours["headers"]["timelimit"], theirs["headers"]["timelimit"]);
        let body = |v: &Value| -> Value {
            let b = base64::engine::general_purpose::STANDARD
                .decode(v["body"].as_str().unwrap())
                .unwrap();
            serde_json::from_slice(&b).unwrap()
        };
        assert_eq!(body(&ours), body(&theirs), "{case}: body");
        // Timestamps in Python's isoformat: microseconds and +00:00.
        for k in ["eta", "expires"] {
            if let (Some(o), Some(t)) = (ours["headers"][k].as_str(), theirs["headers"][k].as_str())
            {
                assert_eq!(o.len(), t.len(), "{case}: {k} {o} vs {t}");
                assert!(o.ends_with("+00:00"));
            }
        }
    }
}

#[test]
fn our_encoding_round_trips_through_decode() {
    let mut m = Message::new("a.b", "id", vec![json!({"x": [1, 2]})], Map::new(), "q");
    m.headers.eta = Some(Utc::now() + chrono::Duration::from_std(Duration::from_secs(5)).unwrap());
    let back = Message::decode(m.encode().as_bytes()).unwrap();
    assert_eq!(
        back.headers.eta.map(|t| t.timestamp_micros()),
        m.headers.eta.map(|t| t.timestamp_micros())
    );
    assert_eq!(back.args, m.args);
}
