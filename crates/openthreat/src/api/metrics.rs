//! `/metrics` in Prometheus text format.
//!
//! HTTP metrics are recorded by a middleware as requests pass, labelled by
//! the route *template* (`/api/v1/vulnerabilities/{cve_id}`), never the raw
//! path, so a scanner cannot blow up the number of series. The data gauges
//! (CVE totals, queue lengths, last ingestion per source) are refreshed when
//! Prometheus scrapes, from the same store and gateway the API uses; the LLM
//! counts that belong to the data rather than to a process (failed and parked
//! CVEs) come from the store the same way.
//!
//! LLM calls are recorded by the enricher itself: [`Metrics`] is the llm
//! crate's [`LlmObserver`], so a process that runs LLM tasks and serves the
//! API (`openthreat run`) shows the latency of every call by provider, model
//! and outcome, and failed enrichments by kind. A process that only serves
//! the API shows these metrics empty: the calls happen in the workers.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use openthreat_llm::{CallEvent, LlmError, LlmObserver, ProviderKind};

use super::error::ApiError;
use super::AppState;

/// The registry and every metric of this process.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Task and worker metrics from the Celery event stream, under their
    /// celery-exporter names (`celery_tasks_total`, …): no `openthreat_` prefix.
    pub celery: Registry,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    cves: IntGaugeVec,
    queue_length: IntGaugeVec,
    /// `celery_queue_length{queue_name, priority}`, as celery-exporter names it.
    queue_priority_length: IntGaugeVec,
    last_ingestion: GaugeVec,
    up: IntGauge,
    /// LLM call latency by provider, model and outcome (`valid`,
    /// `invalid`, or the error kind).
    llm_call_seconds: HistogramVec,
    /// Failed enrichments by provider, model and kind (`unreachable`,
    /// `model_missing`, `transient`, `bad_output`, `rejected`, `config`).
    llm_failures: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("openthreat".into()), None)?;
        let celery = Registry::new();
        let queue_priority_length = IntGaugeVec::new(
            Opts::new(
                "celery_queue_length",
                "Messages waiting per queue and priority",
            ),
            &["queue_name", "priority"],
        )?;
        celery.register(Box::new(queue_priority_length.clone()))?;
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["method", "route", "status"],
        )?;
        let http_seconds = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP latency by route").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            &["method", "route"],
        )?;
        let cves = IntGaugeVec::new(
            Opts::new(
                "cves",
                "CVEs by kind: all, exploited, llm_processed, llm_pending, llm_failed \
                 (retried), llm_parked (no longer retried), llm_claimed (being enriched)",
            ),
            &["kind"],
        )?;
        let queue_length = IntGaugeVec::new(
            Opts::new("queue_length", "Messages waiting per task queue"),
            &["queue"],
        )?;
        let last_ingestion = GaugeVec::new(
            Opts::new(
                "last_successful_ingestion_timestamp_seconds",
                "End of the last successful ingestion run per source (Unix time)",
            ),
            &["source"],
        )?;
        let up = IntGauge::new("store_up", "1 when the last scrape could read the database")?;
        // From a fast GPU (tenths of a second) to a CPU-only generation
        // that reaches the default 120 s timeout.
        let llm_call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "llm_call_duration_seconds",
                "LLM chat call latency by provider, model and outcome (valid, invalid answer, or error kind)",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
            ]),
            &["provider", "model", "outcome"],
        )?;
        let llm_failures = IntCounterVec::new(
            Opts::new(
                "llm_failures_total",
                "Failed LLM enrichments by kind: unreachable, model_missing, transient, bad_output, rejected, config",
            ),
            &["provider", "model", "kind"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_seconds.clone()))?;
        registry.register(Box::new(cves.clone()))?;
        registry.register(Box::new(queue_length.clone()))?;
        registry.register(Box::new(last_ingestion.clone()))?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(llm_call_seconds.clone()))?;
        registry.register(Box::new(llm_failures.clone()))?;
        Ok(Metrics {
            registry,
            celery,
            queue_priority_length,
            http_requests,
            http_seconds,
            cves,
            queue_length,
            last_ingestion,
            up,
            llm_call_seconds,
            llm_failures,
        })
    }

    /// Refreshes the data gauges; failures leave the old values and set `store_up` to 0.
    async fn refresh(&self, state: &AppState) {
        let stats = state.store.stats(chrono::Utc::now()).await;
        let runs = state.store.ingestion_runs(100).await;
        self.up.set(i64::from(stats.is_ok() && runs.is_ok()));
        if let Ok(stats) = &stats {
            let llm = &stats.llm;
            for (kind, n) in [
                ("all", llm.total),
                ("llm_processed", llm.processed),
                ("llm_pending", llm.pending),
                ("llm_failed", llm.failed),
                ("llm_parked", llm.parked),
                ("llm_claimed", llm.claimed),
                ("exploited", stats.exploited_vulnerabilities),
            ] {
                self.cves.with_label_values(&[kind]).set(n as i64);
            }
        }
        if let Ok(runs) = runs {
            // Newest first: the first successful run per source wins.
            let mut seen = std::collections::HashSet::new();
            for run in runs
                .iter()
                .filter(|r| r.status == openthreat_store::RunStatus::Success)
            {
                if let Some(done) = run.completed_at {
                    if seen.insert(run.source.clone()) {
                        self.last_ingestion
                            .with_label_values(&[run.source.as_str()])
                            .set(done.timestamp() as f64);
                    }
                }
            }
        }
        if let Some(gw) = state.tasks.as_deref() {
            if let Ok(lengths) = gw.queue_lengths().await {
                for (queue, n) in lengths {
                    self.queue_length
                        .with_label_values(&[queue.as_str()])
                        .set(n as i64);
                }
            }
            if let Ok(lengths) = gw.priority_lengths().await {
                // Emptied priorities must read 0, not their last value.
                self.queue_priority_length.reset();
                for (queue, priority, n) in lengths {
                    self.queue_priority_length
                        .with_label_values(&[queue.as_str(), &priority.to_string()])
                        .set(n as i64);
                }
            }
        }
    }
}

impl LlmObserver for Metrics {
    fn call(&self, event: &CallEvent<'_>) {
        self.llm_call_seconds
            .with_label_values(&[event.provider.as_str(), event.model, event.outcome.as_str()])
            .observe(event.elapsed.as_secs_f64());
    }

    fn failure(&self, provider: ProviderKind, model: &str, error: &LlmError) {
        self.llm_failures
            .with_label_values(&[provider.as_str(), model, error.kind()])
            .inc();
    }
}

/// Middleware: counts and times every request by route template.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()])
        .inc();
    m.http_seconds
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The Prometheus scrape endpoint.
pub async fn metrics_handler(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.metrics.refresh(&state).await;
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(
            &[
                state.metrics.registry.gather(),
                state.metrics.celery.gather(),
            ]
            .concat(),
            &mut buf,
        )
        .map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        buf,
    )
        .into_response())
}
