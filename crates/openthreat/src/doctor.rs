//! Health checks of the services OpenThreat depends on.
//!
//! Used by `openthreat doctor` (one line per check, with the fix) and meant for
//! the start-up lines of `openthreat run` and `/health`. Each check has a short
//! timeout: a doctor that hangs on a dead host is no help.

use std::time::Duration;

use serde::Serialize;

use openthreat_llm::{Enricher, HealthState, LlmConfig, ProviderKind};

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
    checks.push(check_llm(config).await);
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
        let store =
            openthreat_store::connect_with(&config.database_url, config.db_pool_size).await?;
        store.ping().await?;
        Ok::<_, openthreat_store::StoreError>((store.backend(), store.pool_size()))
    })
    .await;
    match result {
        Ok(Ok((backend, pool))) => Check {
            name,
            status: Status::Ok,
            target,
            detail: format!("{backend:?} reachable; this process opens up to {pool} connections"),
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

/// Asks the configured LLM server (Ollama or OpenAI-compatible, through the
/// llm crate's own health check, so doctor and the tasks agree) whether it
/// answers and has the model.
///
/// Missing is a warning, not a failure: without an LLM the service keeps
/// ingesting and serving; enrichment waits until the model is there. A bad
/// LLM configuration is a failure: the worker refuses to start with it.
pub async fn check_llm(config: &Config) -> Check {
    let name = "llm";
    let llm = match LlmConfig::from_env_map(&config.env) {
        Ok(c) => c,
        Err(e) => {
            return Check {
                name,
                status: Status::Fail,
                target: "LLM configuration".into(),
                detail: e.to_string(),
                fix: Some("fix OPENTHREAT_LLM_PROVIDER / OPENTHREAT_LLM_URL / OLLAMA_HOST".into()),
            }
        }
    };
    let target = llm.describe();
    let enricher = match Enricher::from_config(&llm) {
        Ok(e) => e,
        Err(e) => {
            return Check {
                name,
                status: Status::Fail,
                target,
                detail: e.to_string(),
                fix: None,
            }
        }
    };
    let status = match tokio::time::timeout(TIMEOUT, enricher.health()).await {
        Ok(status) => status,
        Err(_) => {
            return Check {
                name,
                status: Status::Warn,
                target,
                detail: format!(
                    "no answer within {}s; enrichment is skipped until it answers",
                    TIMEOUT.as_secs()
                ),
                fix: Some(start_fix(&llm)),
            }
        }
    };
    // `target` already names provider, model and address; the detail says
    // only what was found.
    let (status_kind, detail, fix) = match &status.state {
        HealthState::Ready => (Status::Ok, "reachable, model present".to_string(), None),
        HealthState::ModelMissing { available, fix } => (
            Status::Warn,
            format!(
                "reachable, but the model is not available (enrichment is skipped){}",
                if available.is_empty() {
                    String::new()
                } else {
                    format!("; available: {}", available.join(", "))
                }
            ),
            Some(fix.clone()),
        ),
        HealthState::Unreachable { reason } => (
            Status::Warn,
            format!("unreachable ({reason}); enrichment is skipped until it is up"),
            Some(start_fix(&llm)),
        ),
        HealthState::Error { reason } => (
            Status::Warn,
            format!("answers, but not as the protocol says ({reason}); enrichment is skipped"),
            Some(start_fix(&llm)),
        ),
    };
    Check {
        name,
        status: status_kind,
        target,
        detail,
        fix,
    }
}

/// How to get the configured server up, naming the model to pull.
fn start_fix(llm: &LlmConfig) -> String {
    match llm.provider {
        ProviderKind::Ollama => format!(
            "Start Ollama: ollama serve, then: ollama pull {} (or set OLLAMA_HOST)",
            llm.model
        ),
        ProviderKind::OpenAi => format!(
            "Start the OpenAI-compatible server at {} serving {} (or set OPENTHREAT_LLM_URL)",
            llm.redacted_url(),
            llm.model
        ),
    }
}
