//! The CISA KEV catalog: marks stored CVEs exploited, with the date CISA
//! added them, the federal due date, the required action and ransomware use.
//!
//! The catalog is re-published whole, usually once a day, and each version
//! carries `dateReleased`. The last applied value is kept in the sync state
//! ([`DATE_RELEASED_KEY`]), and a catalog with the same value is skipped
//! (`--force` applies it anyway), so the two-hourly task does no work on
//! the other eleven runs of the day.

use std::path::Path;

use chrono::Utc;
use openthreat_feeds::kev::{fetch_kev, read_kev_file, KevCatalog};

use super::{IngestError, IngestReport, Ingestor, RunResult, RunState, Source};

/// The sync-state key holding the `dateReleased` of the last applied catalog.
pub const DATE_RELEASED_KEY: &str = "kev_date_released";

impl Ingestor {
    /// Applies the KEV catalog from `from` (a local file), else from the
    /// configured URL. Skipped when its `dateReleased` is the one last
    /// applied, unless `force`.
    pub async fn import_kev(
        &self,
        from: Option<&Path>,
        force: bool,
    ) -> Result<IngestReport, IngestError> {
        self.recorded(Source::Kev, async |state: &mut RunState| {
            self.progress.begin("KEV catalog", None);
            let catalog: KevCatalog = match from {
                Some(path) => {
                    let path = path.to_path_buf();
                    tokio::task::spawn_blocking(move || read_kev_file(&path))
                        .await
                        .map_err(|e| IngestError::Join(e.to_string()))??
                }
                None => fetch_kev(&self.settings.kev_url, &self.settings.retry).await?,
            };
            let received = (catalog.entries.len() + catalog.skipped.len()) as u64;
            state.counts.fetched = received;
            state.counts.failed = catalog.skipped.len() as u64;
            for s in &catalog.skipped {
                state.note_failure(format!(
                    "entry #{} {}: {}",
                    s.index,
                    s.cve_id.as_deref().unwrap_or("(no cveID)"),
                    s.reason
                ));
            }
            let released = catalog.date_released.map(|d| d.to_rfc3339());
            state.detail("catalog_version", &catalog.catalog_version);
            state.detail("date_released", &released);
            let last = self.store.get_state(DATE_RELEASED_KEY).await?;
            if !force && released.is_some() && last == released {
                tracing::info!(date_released = ?released, "KEV catalog unchanged; skipping");
                state.detail(
                    "skipped_reason",
                    "dateReleased unchanged since the last import",
                );
                self.progress.advance(received);
                return Ok(RunResult::Skipped);
            }
            let facts: Vec<_> = catalog
                .facts()
                .map(|(id, f)| (id.clone(), f.clone()))
                .collect();
            let applied = self.store.apply_kev(&facts, Utc::now()).await?;
            state.counts.updated = applied.updated;
            state.counts.unknown = applied.unknown;
            self.progress.advance(received);
            // Remembered only once applied, so a failed run is retried in full.
            if let Some(r) = &released {
                self.store
                    .set_state(DATE_RELEASED_KEY, r, Utc::now())
                    .await?;
            }
            Ok(RunResult::Success)
        })
        .await
    }
}
