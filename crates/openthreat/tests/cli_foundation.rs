//! `openthreat migrate` and `openthreat doctor`, run as a user runs them.

mod support;

use support::{openthreat, text, PgDatabase};

/// An Ollama address where nothing listens, so tests never depend on a local Ollama.
const NO_OLLAMA: (&str, &str) = ("OLLAMA_HOST", "http://127.0.0.1:9");

#[test]
fn migrate_creates_the_sqlite_file_on_the_embedded_default_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let before = openthreat(dir.path(), &[NO_OLLAMA], &["doctor"]);
    assert_eq!(before.status.code(), Some(1), "{}", text(&before));
    assert!(
        text(&before).contains("openthreat migrate"),
        "{}",
        text(&before)
    );

    for _ in 0..2 {
        let out = openthreat(dir.path(), &[NO_OLLAMA], &["migrate"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("up to date"), "{}", text(&out));
    }
    assert!(dir.path().join("data/openthreat.db").exists());

    let after = openthreat(dir.path(), &[NO_OLLAMA], &["doctor"]);
    let t = text(&after);
    assert!(after.status.success(), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("ok") && l.contains("database")),
        "{t}"
    );
    // No LLM is a warning, not a failure, and says how to fix it.
    assert!(
        t.lines()
            .any(|l| l.starts_with("warn") && l.contains("ollama pull llama3.2:3b")),
        "{t}"
    );
}

#[test]
fn migrate_works_on_a_fresh_postgres_database() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = openthreat(
            dir.path(),
            &[("DATABASE_URL", &db.url), NO_OLLAMA],
            &["migrate"],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let doctor = |pool: Option<&str>| {
        let mut env = vec![("DATABASE_URL", db.url.as_str()), NO_OLLAMA];
        env.extend(pool.map(|p| ("OPENTHREAT_DB_POOL_SIZE", p)));
        let out = openthreat(dir.path(), &env, &["doctor", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(checks[0]["name"], "database");
        assert_eq!(checks[0]["status"], "ok");
        checks[0]["detail"].as_str().unwrap().to_string()
    };
    // The pool's size reaches the store: PostgreSQL's default, or the setting.
    let default = doctor(None);
    assert!(default.contains("up to 16 connections"), "{default}");
    let configured = doctor(Some("3"));
    assert!(configured.contains("up to 3 connections"), "{configured}");
    let bad = openthreat(
        dir.path(),
        &[("OPENTHREAT_DB_POOL_SIZE", "1"), NO_OLLAMA],
        &["migrate"],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        text(&bad).contains("OPENTHREAT_DB_POOL_SIZE"),
        "{}",
        text(&bad)
    );
}

#[test]
fn doctor_tells_the_truth_about_redis_up_and_down() {
    let dir = tempfile::tempdir().unwrap();
    assert!(openthreat(dir.path(), &[], &["migrate"]).status.success());

    if support::redis_up() {
        let up = openthreat(
            dir.path(),
            &[("REDIS_URL", "redis://127.0.0.1:6379/0"), NO_OLLAMA],
            &["doctor"],
        );
        let t = text(&up);
        assert!(up.status.success(), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("ok") && l.contains("redis")),
            "{t}"
        );
    } else {
        support::unavailable("Redis", "127.0.0.1:6379 refused the connection");
    }

    // A port where nothing listens: Redis is down, which is a failure when configured.
    let down = openthreat(
        dir.path(),
        &[("REDIS_URL", "redis://:hunter2@127.0.0.1:9/0"), NO_OLLAMA],
        &["doctor"],
    );
    let t = text(&down);
    assert_eq!(down.status.code(), Some(1), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("redis") && l.contains("Start Redis")),
        "{t}"
    );
    assert!(!t.contains("hunter2"), "the password leaked: {t}");
}

#[test]
fn bad_database_url_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = openthreat(
        dir.path(),
        &[("DATABASE_URL", "mysql://app:hunter2@db/x")],
        &["migrate"],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert_eq!(t.trim().lines().count(), 1, "{t}");
    assert!(t.contains("DATABASE_URL") && !t.contains("hunter2"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn unreachable_postgres_is_a_clear_error_not_a_hang_or_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = openthreat(
        dir.path(),
        &[("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:9/x")],
        &["migrate"],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.starts_with("error: DATABASE_URL postgres://app:***@127.0.0.1:9/x"),
        "{t}"
    );
    assert!(!t.contains("hunter2") && !t.contains("panicked"), "{t}");
}
