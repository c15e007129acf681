//! `GET /health`: is this instance usable, and what is degraded?
//!
//! The broker and LLM checks are the ones `openthreat doctor` runs
//! ([`crate::doctor`]); the database is asked through the already open
//! store rather than a fresh connection, so a health probe every few
//! seconds does not open a pool each time.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::models::Health;
use crate::api::AppState;
use crate::doctor::{self, Check, Status};

pub(crate) const TAG: &str = "Health";

/// How long an LLM check is reused. Load balancers poll `/health` every few
/// seconds; asking Ollama each time would add its timeout to every poll when
/// it hangs, and load it for nothing when it is fine.
const LLM_CHECK_TTL: Duration = Duration::from_secs(30);

/// The LLM check, at most one every [`LLM_CHECK_TTL`]. The async mutex makes
/// concurrent polls wait for one check instead of each starting their own.
async fn llm_check(state: &AppState) -> Check {
    let mut last = state.llm_health.lock().await;
    if let Some((at, check)) = last.as_ref() {
        if at.elapsed() < LLM_CHECK_TTL {
            return check.clone();
        }
    }
    let check = doctor::check_llm(&state.config).await;
    *last = Some((Instant::now(), check.clone()));
    check
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// Health of the service and the services it depends on.
#[utoipa::path(
    get,
    path = "/health",
    tag = TAG,
    responses(
        (status = 200, description = "Healthy or degraded (see `status`)", body = Health),
        (status = 503, description = "The database is unreachable", body = Health),
    )
)]
pub(crate) async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let config = &state.config;
    let redis_url = [
        config.redis_url.as_ref(),
        Some(&config.broker_url),
        Some(&config.result_backend_url),
    ]
    .into_iter()
    .flatten()
    .find(|u| u.starts_with("redis"))
    .cloned();
    let database = async {
        match state.store.ping().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "health: database ping failed");
                false
            }
        }
    };
    let broker = async {
        match &redis_url {
            Some(url) => Some(doctor::check_redis(url).await),
            None => None,
        }
    };
    let llm = llm_check(&state);
    let workers = async {
        match state.tasks.as_deref() {
            Some(gw) => gw.workers().await.ok().map(|w| w.len()),
            None => None,
        }
    };
    let (database_ok, broker, llm, workers) = tokio::join!(database, broker, llm, workers);
    let broker_ok = broker.as_ref().is_none_or(|c| c.status == Status::Ok);
    let healthy = database_ok && broker_ok && llm.status == Status::Ok;
    let body = Health {
        status: if healthy { "healthy" } else { "degraded" }.into(),
        database: if database_ok {
            "connected"
        } else {
            "disconnected"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        timestamp: Utc::now(),
        broker: match broker {
            None => "embedded".into(),
            Some(c) if c.status == Status::Ok => "connected".into(),
            Some(_) => "disconnected".into(),
        },
        llm: llm.detail,
        workers,
    };
    // Without its database the instance cannot answer anything useful, so a
    // load balancer should take it out: 503. Anything else is degraded but up.
    let status = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
