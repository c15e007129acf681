//! `GET /health`: is this instance usable, and what is degraded?
//!
//! The broker and LLM checks are the ones `openthreat doctor` runs
//! ([`crate::doctor`]); the database is asked through the already open
//! store rather than a fresh connection, so a health probe every few
//! seconds does not open a pool each time.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::models::Health;
use crate::api::AppState;
use crate::doctor::{self, Status};

pub(crate) const TAG: &str = "Health";

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
    let llm = doctor::check_ollama(&config.ollama_host, &config.ollama_model);
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
