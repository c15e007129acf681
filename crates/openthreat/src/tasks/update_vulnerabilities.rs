//! `backend.tasks.update_vulnerabilities_task()`: the two-hourly refresh —
//! NVD incremental sync, then CISA KEV, then EPSS — through the ingestion
//! service.
//!
//! The three sources are independent: one failing (NVD throttling us, CISA
//! down) must not keep the others from running, so each is run and
//! reported on its own. The task fails (and is retried) only when all
//! three failed, which points at our side (database, network) rather than
//! at one service; a single failed source is caught up by the next run,
//! since the NVD cursor only advances past committed pages.

use openthreat_queue::{Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::AppContext;
use crate::ingest::sync::SyncRequest;
use crate::ingest::{IngestReport, IngestSettings, Ingestor};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct UpdateVulnerabilities {}

impl Task for UpdateVulnerabilities {
    const NAME: &'static str = "backend.tasks.update_vulnerabilities_task";
    type Context = AppContext;
    type Output = Value;

    async fn run(self, ctx: TaskContext<AppContext>) -> Result<Value, TaskError> {
        let app = ctx.app();
        let settings = IngestSettings::from_config(&app.config)
            .map_err(|e| TaskError::fail("ConfigurationError", e.to_string()))?;
        let summary = update_vulnerabilities(&Ingestor::new(app.store.clone(), settings)).await;
        if summary["status"] == "failed" {
            return Err(TaskError::retry(format!("every source failed: {summary}")));
        }
        Ok(summary)
    }
}

/// Runs the three sources in turn and summarises them as JSON:
/// `{"status": "success"|"partial"|"failed", "nvd": {...}, "kev": {...},
/// "epss": {...}}`, each entry an [`IngestReport`] or `{"status":
/// "failed", "error": ...}` when the run could not even be recorded.
pub async fn update_vulnerabilities(ingestor: &Ingestor) -> Value {
    let nvd = ingestor.sync_nvd(&SyncRequest::default()).await;
    let kev = ingestor.import_kev(None, false).await;
    let epss = ingestor.import_epss(None).await;
    let mut ok = 0;
    let mut entry = |r: Result<IngestReport, crate::ingest::IngestError>| match r {
        Ok(report) => {
            if report.is_success() {
                ok += 1;
            }
            serde_json::to_value(&report)
                .unwrap_or_else(|e| json!({"status": "failed", "error": e.to_string()}))
        }
        Err(e) => json!({"status": "failed", "error": e.to_string()}),
    };
    let (nvd, kev, epss) = (entry(nvd), entry(kev), entry(epss));
    let status = match ok {
        3 => "success",
        0 => "failed",
        _ => "partial",
    };
    json!({ "status": status, "nvd": nvd, "kev": kev, "epss": epss })
}
