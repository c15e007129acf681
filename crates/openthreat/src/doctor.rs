//! Health checks of the services OpenThreat depends on.
//!
//! Used by `openthreat doctor` (one line per check, with the fix) and meant for
//! the start-up lines of `openthreat run` and `/health`. Each check has a short
//! timeout: a doctor that hangs on a dead host is no help.

use std::time::Duration;

use serde::Serialize;

use crate::config::{redact_url, Config};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Degraded but the service still works (e.g. no LLM: enrichment waits).
    Warn,
    /// Something required is down.
    Fail,
}

/// One checked service, described for a human.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short name: `database`, `redis`, `llm`.
    pub name: &'static str,
    pub status: Status,
    /// What was checked, with secrets redacted.
    pub target: String,
    /// What was found.
    pub detail: String,
    /// How to fix it, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

const TIMEOUT: Duration = Duration::from_secs(3);

/// Runs every check that applies to this configuration.
pub async fn run_all(config: &Config) -> Vec<Check> {
    let mut checks = vec![check_database(config).await];
    if let Some(url) = redis_target(config) {
        checks.push(check_redis(&url).await);
    }
    checks.push(check_ollama(&config.ollama_host, &config.ollama_model).await);
    checks
}

/// The Redis URL to check: `REDIS_URL`, else a Redis broker or result backend.
fn redis_target(config: &Config) -> Option<String> {
    config.redis_url.clone().or_else(|| {
        [&config.broker_url, &config.result_backend_url]
            .into_iter()
            .find(|u| u.starts_with("redis"))
            .cloned()
    })
}

/// Connects to the database and asks it a trivial question.
pub async fn check_database(config: &Config) -> Check {
    let target = redact_url(&config.database_url);
    let name = "database";
    if let Some(path) = config.database_url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        if path != ":memory:" && !std::path::Path::new(path).exists() {
            return Check {
                name,
                status: Status::Fail,
                target,
                detail: format!("the SQLite file {path} does not exist yet"),
                fix: Some("Create it: openthreat migrate".into()),
            };
        }
    }
    let result = tokio::time::timeout(TIMEOUT, async {
        let store = openthreat_store::connect(&config.database_url).await?;
        store.ping().await?;
        Ok::<_, openthreat_store::StoreError>(store.backend())
    })
    .await;
    match result {
        Ok(Ok(backend)) => Check {
            name,
            status: Status::Ok,
            target,
            detail: format!("{backend:?} reachable"),
            fix: None,
        },
        Ok(Err(e)) => Check {
            name,
            status: Status::Fail,
            target,
            detail: e.to_string(),
            fix: Some(database_fix(config)),
        },
        Err(_) => Check {
            name,
            status: Status::Fail,
            target,
            detail: format!("no answer within {}s", TIMEOUT.as_secs()),
            fix: Some(database_fix(config)),
        },
    }
}

fn database_fix(config: &Config) -> String {
    if config.database_is_sqlite() {
        "Check the file's permissions, or run: openthreat migrate".into()
    } else {
        "Start PostgreSQL (e.g. pg_ctlcluster 15 main start) and check DATABASE_URL, or unset \
         DATABASE_URL to use the embedded SQLite database"
            .into()
    }
}

/// Sends `PING` to Redis.
pub async fn check_redis(url: &str) -> Check {
    let target = redact_url(url);
    let name = "redis";
    let result = tokio::time::timeout(TIMEOUT, async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    let fix = Some(
        "Start Redis: redis-server --daemonize yes (or unset REDIS_URL and CELERY_* to use the \
         embedded SQLite queue)"
            .to_string(),
    );
    match result {
        Ok(Ok(_)) => Check {
            name,
            status: Status::Ok,
            target,
            detail: "PONG".into(),
            fix: None,
        },
        Ok(Err(e)) => Check {
            name,
            status: Status::Fail,
            target,
            // The redis crate's messages do not include the URL, so no password can leak here.
            detail: e.to_string(),
            fix,
        },
        Err(_) => Check {
            name,
            status: Status::Fail,
            target,
            detail: format!("no answer within {}s", TIMEOUT.as_secs()),
            fix,
        },
    }
}

/// Asks Ollama which models it has (`GET /api/tags`) and whether ours is among them.
///
/// Missing is a warning, not a failure: without an LLM the service keeps
/// ingesting and serving; enrichment waits until the model is there.
pub async fn check_ollama(host: &str, model: &str) -> Check {
    let target = format!("{} (model {model})", redact_url(host));
    let name = "llm";
    let url = format!("{}/api/tags", host.trim_end_matches('/'));
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            return Check {
                name,
                status: Status::Warn,
                target,
                detail: e.to_string(),
                fix: None,
            }
        }
    };
    #[derive(serde::Deserialize)]
    struct Tags {
        #[serde(default)]
        models: Vec<Model>,
    }
    #[derive(serde::Deserialize)]
    struct Model {
        name: String,
    }
    let answer = async {
        let resp = client.get(&url).send().await?.error_for_status()?;
        resp.json::<Tags>().await
    }
    .await;
    match answer {
        Ok(tags) => {
            let wanted = if model.contains(':') {
                model.to_string()
            } else {
                format!("{model}:latest")
            };
            if tags
                .models
                .iter()
                .any(|m| m.name == wanted || m.name == model)
            {
                Check {
                    name,
                    status: Status::Ok,
                    target,
                    detail: "reachable, model present".into(),
                    fix: None,
                }
            } else {
                Check {
                    name,
                    status: Status::Warn,
                    target,
                    detail: "reachable, but the model is not pulled (enrichment is skipped)".into(),
                    fix: Some(format!("ollama pull {model}")),
                }
            }
        }
        Err(e) => Check {
            name,
            status: Status::Warn,
            target,
            detail: format!(
                "unreachable ({}); enrichment is skipped until it is up",
                short_reqwest_error(&e)
            ),
            fix: Some(format!(
                "Start Ollama: ollama serve, then: ollama pull {model} (or set OLLAMA_HOST)"
            )),
        },
    }
}

fn short_reqwest_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused".into()
    } else if let Some(status) = e.status() {
        format!("HTTP {status}")
    } else {
        "bad answer".into()
    }
}
