//! FIRST's EPSS scores: the probability that a CVE is exploited in the next
//! 30 days, and its percentile, set on the stored CVEs.
//!
//! The daily file has about 300 000 rows (a few MB compressed). It is
//! parsed completely before anything is written — some 25 MB of
//! `(id, score)` pairs — so a truncated download changes nothing; then the
//! scores are applied in chunks, one store transaction each.

use std::path::Path;

use chrono::Utc;
use openthreat_core::{CveId, Epss};
use openthreat_feeds::epss::{
    date_from_file_name, fetch_epss_bytes, parse_epss_file, parse_epss_reader, EpssSummary,
};

use super::{IngestError, IngestReport, Ingestor, RunResult, RunState, Source};

/// Scores per store transaction.
const CHUNK: usize = 10_000;

impl Ingestor {
    /// Applies EPSS scores from `from` (a local `.csv` or `.csv.gz`), else
    /// from the configured URL.
    pub async fn import_epss(&self, from: Option<&Path>) -> Result<IngestReport, IngestError> {
        self.recorded(Source::Epss, async |state: &mut RunState| {
            self.progress.begin("EPSS scores", None);
            let (summary, rows) = match from {
                Some(path) => {
                    let path = path.to_path_buf();
                    tokio::task::spawn_blocking(move || {
                        let mut rows = Vec::new();
                        let summary = parse_epss_file(&path, &mut |id, e| {
                            rows.push((id, e));
                            Ok(())
                        })?;
                        Ok::<_, IngestError>((summary, rows))
                    })
                    .await
                    .map_err(|e| IngestError::Join(e.to_string()))??
                }
                None => {
                    let url = self.settings.epss_url.clone();
                    let body = fetch_epss_bytes(&url, &self.settings.retry).await?;
                    tokio::task::spawn_blocking(move || {
                        let hint = date_from_file_name(Path::new(url.path()));
                        let mut rows = Vec::new();
                        let summary =
                            parse_epss_reader(&body[..], url.as_str(), hint, &mut |id, e| {
                                rows.push((id, e));
                                Ok(())
                            })?;
                        Ok::<_, IngestError>((summary, rows))
                    })
                    .await
                    .map_err(|e| IngestError::Join(e.to_string()))??
                }
            };
            let summary: EpssSummary = summary;
            let rows: Vec<(CveId, Epss)> = rows;
            state.counts.fetched = summary.rows + summary.skipped;
            state.counts.failed = summary.skipped;
            for ex in &summary.skipped_examples {
                state.note_failure(ex);
            }
            state.detail("model_version", &summary.model_version);
            state.detail("score_date", summary.score_date);
            self.progress.begin("EPSS scores", Some(rows.len() as u64));
            for chunk in rows.chunks(CHUNK) {
                let applied = self.store.apply_epss(chunk, Utc::now()).await?;
                state.counts.updated += applied.updated;
                state.counts.unknown += applied.unknown;
                self.progress.advance(chunk.len() as u64);
            }
            Ok(RunResult::Success)
        })
        .await
    }
}
