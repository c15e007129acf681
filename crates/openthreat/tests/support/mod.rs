//! Shared helpers of the application's integration tests: real services,
//! each test with its own throwaway database.

#![allow(dead_code)]

use std::process::{Command, Output};

/// Whether the tests run in CI, where a missing service is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Reports an unreachable service: panics in CI, otherwise prints why the test is skipped.
/// Returns `false` so callers can `if !service_ok(..) { return; }`.
pub fn unavailable(service: &str, why: &str) -> bool {
    if in_ci() {
        panic!("{service} is required in CI but unreachable: {why}");
    }
    eprintln!("skipping: {service} unreachable ({why})");
    false
}

/// The maintenance URL used to create throwaway PostgreSQL databases.
pub fn pg_admin_url() -> String {
    std::env::var("OPENTHREAT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A PostgreSQL database that exists for one test and is dropped afterwards.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    /// Creates a fresh, empty database; `None` (after [`unavailable`]) when PostgreSQL is down.
    pub fn create() -> Option<Self> {
        let name = format!("ot_app_test_{}_{}", std::process::id(), rand_suffix());
        match psql(&format!("CREATE DATABASE {name}")) {
            Ok(_) => {
                let admin = pg_admin_url();
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                Some(Self {
                    url: format!("{base}/{name}"),
                    name,
                })
            }
            Err(e) => {
                unavailable("PostgreSQL", &e);
                None
            }
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn psql(sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args([&pg_admin_url(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos:x}")
}

/// Runs the `openthreat` binary in `dir` with exactly the given environment
/// (plus PATH), so the developer's own variables cannot leak into a test.
pub fn openthreat(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openthreat"));
    cmd.current_dir(dir).env_clear().args(args);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run openthreat")
}

/// Both output streams as one string, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether Redis answers on the default test address.
pub fn redis_up() -> bool {
    std::net::TcpStream::connect("127.0.0.1:6379").is_ok()
}
