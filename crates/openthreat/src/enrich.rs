//! The LLM enrichment service shared by the `tasks.*llm*` tasks and
//! `openthreat llm`: claim CVEs, enrich one, queue a batch.
//!
//! Why claims: a batch is queued minutes before its tasks run, and batches
//! overlap (the beat fires every 5–10 minutes, operators run `llm` by hand).
//! Without a claim two batches would queue the same CVE and two workers would
//! pay for the same generation. A claim has an expiry so that a worker that
//! dies mid-CVE never keeps that CVE from being picked again.
//!
//! Why the outcome is an enum and not an error: a rejected answer is an
//! expected, counted event (the CVE is parked after [`MAX_ATTEMPTS`]), not a
//! failure of the task; only a service that is down or a database error is
//! an [`EnrichError`] the caller retries.

use std::sync::Arc;

use chrono::{DateTime, DurationRound, Utc};
use openthreat_core::{CveId, Priority};
use openthreat_llm::{EnrichStats, Enricher, LlmError};
use openthreat_queue::{Producer, SendOptions};
use openthreat_store::{ClaimOne, LlmClaim, Store, StoreError, VulnerabilityRow};
use serde::Serialize;
use serde_json::{json, Value};

use crate::tasks::{ProcessCveWithLlm, ProcessLlmQueue};

/// Failed attempts (answers rejected after their repair) before a CVE is
/// parked instead of being retried by every batch for ever. The store's
/// constant, so that its `parked` count and our claims agree.
pub const MAX_ATTEMPTS: i32 = openthreat_store::LLM_MAX_ATTEMPTS;

/// How long a claim holds. Long enough for a queued task to wait behind a
/// backlog and run its generation (the LLM timeout is 120 s per call), short
/// enough that a CVE claimed by a dead worker is picked again within the hour.
pub fn claim_for() -> chrono::Duration {
    chrono::Duration::minutes(30)
}

/// Why a CVE could not be enriched now (the CVE stays unprocessed).
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("{0:?} is not a CVE id (expected CVE-YYYY-NNNN)")]
    InvalidId(String),
    #[error("{0} is not in the database")]
    NotFound(String),
    /// The LLM failed in a way that is not the CVE's fault (down, timeout,
    /// model missing, request rejected); the claim was released.
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// Publishing a per-CVE task failed after `queued` of `total` were sent;
    /// the claims of the rest were released.
    #[error("queued {queued} of {total} LLM tasks, then publishing failed: {source}")]
    Queue {
        queued: usize,
        total: usize,
        source: Box<openthreat_queue::Error>,
    },
}

impl EnrichError {
    /// Whether the same call may succeed later, so a task should retry
    /// rather than fail: the LLM is down or slow, or the database blinked.
    pub fn is_retryable(&self) -> bool {
        match self {
            EnrichError::Llm(e) => e.is_retryable() || e.is_service_down(),
            EnrichError::Store(_) | EnrichError::Queue { .. } => true,
            EnrichError::InvalidId(_) | EnrichError::NotFound(_) => false,
        }
    }
}

/// What happened to one CVE.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A validated enrichment was stored.
    Processed {
        cve_id: String,
        simple_title: String,
        model: String,
        stats: EnrichStats,
    },
    /// Nothing to do now: already processed, parked, or claimed by another task.
    Skipped { cve_id: String, reason: String },
    /// The answer was rejected (after its repair attempt); the attempt is
    /// recorded and the CVE stays unprocessed, parked once `parked`.
    Failed {
        cve_id: String,
        attempts: i32,
        parked: bool,
        error: String,
    },
}

impl Outcome {
    /// The task result, in the shape the original's Python callers read.
    pub fn to_json(&self) -> Value {
        match self {
            Outcome::Processed {
                cve_id,
                simple_title,
                model,
                stats,
            } => json!({
                "status": "success",
                "cve_id": cve_id,
                "simple_title": simple_title,
                "model": model,
                "calls": stats.calls,
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.completion_tokens,
                "elapsed_ms": stats.elapsed.as_millis() as u64,
                "tokens_per_second": stats.tokens_per_second(),
            }),
            Outcome::Skipped { cve_id, reason } => json!({
                "skipped": true,
                "cve_id": cve_id,
                "reason": reason,
            }),
            Outcome::Failed {
                cve_id,
                attempts,
                parked,
                error,
            } => json!({
                "status": if *parked { "parked" } else { "failed" },
                "cve_id": cve_id,
                "attempts": attempts,
                "parked": parked,
                "error": error,
            }),
        }
    }
}

/// Parses a CVE id from a task argument or the command line.
pub fn parse_id(raw: &str) -> Result<CveId, EnrichError> {
    CveId::parse(raw.trim()).map_err(|_| EnrichError::InvalidId(raw.to_string()))
}

/// Truncates to microseconds: PostgreSQL keeps no more, and the claim time
/// handed from a batch to its per-CVE task is compared for equality.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(chrono::Duration::microseconds(1))
        .unwrap_or(t)
}

/// Claims, enriches and stores one CVE.
///
/// `expected_claim` is the claim time a batch set on this CVE; with it the
/// batch's own task may take the CVE it claimed, while any other caller
/// waits until that claim expires.
pub async fn process_one(
    store: &dyn Store,
    enricher: &Enricher,
    cve_id: &CveId,
    expected_claim: Option<DateTime<Utc>>,
) -> Result<Outcome, EnrichError> {
    let now = micros(Utc::now());
    let id = cve_id.to_string();
    let row = match store
        .claim_llm_one(cve_id, expected_claim, claim_for(), MAX_ATTEMPTS, now)
        .await?
    {
        ClaimOne::Claimed(row) => row,
        ClaimOne::AlreadyProcessed => {
            return Ok(Outcome::Skipped {
                cve_id: id,
                reason: "already processed".into(),
            })
        }
        ClaimOne::ClaimedByOther { until } => {
            return Ok(Outcome::Skipped {
                cve_id: id,
                reason: format!("claimed by another task until {}", until.to_rfc3339()),
            })
        }
        ClaimOne::Parked { attempts, error } => {
            return Ok(Outcome::Skipped {
                cve_id: id,
                reason: format!(
                    "parked after {attempts} failed attempts: {}",
                    error.as_deref().unwrap_or("no error recorded")
                ),
            })
        }
        ClaimOne::NotFound => return Err(EnrichError::NotFound(id)),
    };
    let cve = match row.to_cve() {
        Ok(cve) => cve,
        Err(e) => {
            release(store, cve_id).await;
            return Err(e.into());
        }
    };
    match enricher.enrich(&cve).await {
        Ok(out) => {
            let title = out.enrichment.simple_title.clone();
            if let Err(e) = store.save_enrichment(cve_id, &out.enrichment).await {
                release(store, cve_id).await;
                return Err(e.into());
            }
            // Make the LLM's words searchable now rather than at the next
            // search. The result is saved either way: a failure here only
            // leaves the work to that search, so it is logged, not returned.
            if let Err(e) = store.index_search().await {
                tracing::warn!(cve = %id, error = %e, "search index not updated");
            }
            Ok(Outcome::Processed {
                cve_id: id,
                simple_title: title,
                model: out.enrichment.model.clone(),
                stats: out.stats,
            })
        }
        Err(LlmError::BadOutput { reason }) => {
            let attempts = store
                .record_llm_failure(cve_id, &reason, Utc::now())
                .await?;
            let parked = attempts >= MAX_ATTEMPTS;
            tracing::warn!(cve = %id, attempts, parked, "LLM answer rejected: {reason}");
            Ok(Outcome::Failed {
                cve_id: id,
                attempts,
                parked,
                error: reason,
            })
        }
        Err(e) => {
            // Not the CVE's fault: give the claim back so the next batch (or
            // this task's retry) can take it; the attempt is not counted.
            release(store, cve_id).await;
            Err(e.into())
        }
    }
}

async fn release(store: &dyn Store, cve_id: &CveId) {
    if let Err(e) = store.release_llm_claim(cve_id).await {
        // The claim then simply expires; worth a line, not a failure.
        tracing::warn!(cve = %cve_id, "cannot release LLM claim: {e}");
    }
}

/// The message priority a CVE's task is sent with. 0 is consumed first on
/// both brokers (Redis' priority lists, SQLite's `ORDER BY priority`), and
/// these are kombu's default steps, so a newly exploited CVE jumps ahead of
/// a low-priority backlog already waiting.
pub fn message_priority(p: Priority) -> u8 {
    match p {
        Priority::High => 0,
        Priority::Medium => 3,
        Priority::Low => 6,
    }
}

/// Parses a batch's priority: `high`, `medium`, `low`, or `all` (`None`).
pub fn parse_priority(raw: &str) -> Result<Option<Priority>, String> {
    if raw.trim().eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    raw.parse::<Priority>()
        .map(Some)
        .map_err(|_| format!("priority must be high, medium, low or all, got {raw:?}"))
}

/// What a batch did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BatchOutcome {
    /// The LLM is not ready: nothing was claimed or queued.
    Skipped { skipped: bool, reason: String },
    Queued {
        queued: usize,
        task_ids: Vec<String>,
        cve_ids: Vec<String>,
        priority: String,
        /// The id of the follow-up batch task queued among this batch's
        /// tasks (see [`queue_batch`]), if one was.
        #[serde(skip_serializing_if = "Option::is_none")]
        follow_up: Option<String>,
    },
}

/// Checks the LLM is ready, claims up to `claim.limit` CVEs and returns them;
/// `Err(reason)` when the LLM is not ready (nothing claimed).
///
/// Checking first is what keeps a dead LLM from turning every beat tick into
/// a batch of tasks that each fail three times.
pub async fn claim_batch(
    store: &dyn Store,
    enricher: &Enricher,
    claim: &LlmClaim,
) -> Result<Result<Vec<VulnerabilityRow>, String>, EnrichError> {
    let status = enricher.health().await;
    if !status.is_ready() {
        return Ok(Err(format!("LLM not ready: {status}")));
    }
    Ok(Ok(store.claim_llm_batch(claim, micros(Utc::now())).await?))
}

/// Claims a batch and queues one `tasks.process_cve_with_llm` per CVE.
///
/// With `follow_up`, and only when the claim came back full (so more work is
/// probably waiting), that batch task is queued too, in the middle of the
/// batch: it runs once the first half has been taken by workers, while the
/// second half still keeps the LLM busy, and claims the next batch in time.
/// The follow-up is paced by how fast CVEs are actually enriched, so the
/// queue never holds much more than a batch and claims do not age; see
/// `tasks::process_llm_queue` for why batches continue at all.
///
/// When publishing fails half-way, the claims of the CVEs not queued are
/// released, so they are not held for the claim's whole duration.
pub async fn queue_batch(
    store: &Arc<dyn Store>,
    enricher: &Enricher,
    producer: &Producer,
    claim: &LlmClaim,
    follow_up: Option<&ProcessLlmQueue>,
) -> Result<BatchOutcome, EnrichError> {
    let label = claim
        .priority
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "all".into());
    let rows = match claim_batch(store.as_ref(), enricher, claim).await? {
        Ok(rows) => rows,
        Err(reason) => {
            return Ok(BatchOutcome::Skipped {
                skipped: true,
                reason,
            })
        }
    };
    let mut task_ids = Vec::with_capacity(rows.len());
    let mut cve_ids = Vec::with_capacity(rows.len());
    let follow_up = follow_up.filter(|_| rows.len() >= claim.limit as usize && !rows.is_empty());
    let follow_at = rows.len() / 2;
    let mut follow_up_id = None;
    for (i, row) in rows.iter().enumerate() {
        if let Some(next) = follow_up.filter(|_| i == follow_at) {
            // Same message priority as the CVE before it, so the broker's
            // order (priority, then arrival) puts it right there.
            let before = &rows[i.saturating_sub(1)];
            let options = SendOptions {
                priority: Some(message_priority(before.priority)),
                ..SendOptions::default()
            };
            match producer.enqueue(next, options).await {
                Ok(r) => follow_up_id = Some(r.id().to_string()),
                // The batch itself is still worth queueing; the chain ends
                // here and the next beat tick starts a new one.
                Err(e) => tracing::warn!("cannot queue the follow-up LLM batch: {e}"),
            }
        }
        let task = ProcessCveWithLlm {
            cve_id: row.cve_id.clone(),
            claimed_until: row.llm_claimed_until,
        };
        let options = SendOptions {
            priority: Some(message_priority(row.priority)),
            ..SendOptions::default()
        };
        match producer.enqueue(&task, options).await {
            Ok(r) => {
                task_ids.push(r.id().to_string());
                cve_ids.push(row.cve_id.clone());
            }
            Err(e) => {
                for rest in &rows[i..] {
                    if let Ok(id) = CveId::parse(&rest.cve_id) {
                        release(store.as_ref(), &id).await;
                    }
                }
                return Err(EnrichError::Queue {
                    queued: i,
                    total: rows.len(),
                    source: Box::new(e),
                });
            }
        }
    }
    Ok(BatchOutcome::Queued {
        queued: task_ids.len(),
        task_ids,
        cve_ids,
        priority: label,
        follow_up: follow_up_id,
    })
}

/// The claim a `priority`/`batch_size` batch makes.
pub fn batch_claim(priority: Option<Priority>, limit: u32) -> LlmClaim {
    LlmClaim {
        priority,
        limit,
        claim_for: claim_for(),
        created_after: None,
        max_attempts: MAX_ATTEMPTS,
    }
}

/// The claim `tasks.process_new_cves` makes: the top 20 unprocessed CVEs
/// added in the last hour, whatever their class.
pub fn new_cves_claim() -> LlmClaim {
    LlmClaim {
        priority: None,
        limit: 20,
        claim_for: claim_for(),
        created_after: Some(Utc::now() - chrono::Duration::hours(1)),
        max_attempts: MAX_ATTEMPTS,
    }
}

/// `tasks.get_llm_stats`' result.
pub async fn stats_json(store: &dyn Store) -> Result<Value, StoreError> {
    let s = store.llm_stats(Utc::now()).await?;
    Ok(json!({
        "total": s.total,
        "processed": s.processed,
        "pending": s.pending,
        "high_priority_pending": s.high_priority_pending,
        "completion_percentage": s.completion_percentage,
        "failed": s.failed,
        "parked": s.parked,
        "claimed": s.claimed,
    }))
}
