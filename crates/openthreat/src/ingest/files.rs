//! NVD import from files: local paths (`--from`) and the NVD 2.0 feed
//! files downloaded from NVD (`--feeds 2002..2026,modified`).
//!
//! A path may be an API response page, a feed file (`.json` or
//! `.json.gz`), a single `cve` object with or without its `{"cve": ...}`
//! wrapper, or a directory of any of these; `openthreat-feeds` recognises
//! the shape from the keys.
//!
//! # All or nothing per file, memory flat
//!
//! A file is read once, as a stream, and written batch by batch
//! (`batch_size` records) into one store transaction
//! ([`openthreat_store::Store::begin_upserts`]) that commits only after
//! the parser has reached the end of the document, checked it and the
//! sha256 of its `.meta` (when there is one). So a truncated or corrupt
//! file is reported with its path and position and *nothing* of it reaches
//! the store, while a 170 MB yearly feed never sits in memory as a whole:
//! the database holds the uncommitted rows. (Until 2026-11 the file was
//! checked in a first pass and then read again, which cost a quarter of
//! the import time.) On SQLite the file's transaction holds the write
//! lock, so other writers wait for the file to be done.
//!
//! Parsing runs on its own thread and hands batches over a bounded channel,
//! so the next batch is mapped while the store writes the current one.
//!
//! A malformed *record* inside a good file is skipped, counted as failed
//! and logged with its id; the rest of the file is kept.

use std::io;
use std::path::{Path, PathBuf};

use chrono::Utc;
use openthreat_feeds::http::{build_client, get_with_retry, USER_AGENT};
use openthreat_feeds::nvd::meta::meta_path_for;
use openthreat_feeds::nvd::parse::{list_feed_files, spawn_file_batches, FileOptions};

use super::{IngestError, IngestReport, Ingestor, RunResult, RunState, Source};

/// One NVD 2.0 feed: a year, `modified` (changes of the last 8 days) or
/// `recent` (CVEs added in the last 8 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FeedName {
    Year(u16),
    Modified,
    Recent,
}

/// NVD's first yearly feed (it holds every CVE up to 2002).
pub const FIRST_FEED_YEAR: u16 = 2002;

impl FeedName {
    /// Parses a `--feeds` value: comma-separated years, year ranges
    /// (`2002..2026`, both ends included), `modified` and `recent`.
    pub fn parse_list(spec: &str) -> Result<Vec<FeedName>, IngestError> {
        let bad = |part: &str, why: &str| {
            IngestError::Config(format!(
                "--feeds {part:?}: {why} (expected e.g. 2002..2026,modified)"
            ))
        };
        let year = |s: &str| -> Result<u16, IngestError> {
            let y: u16 = s.trim().parse().map_err(|_| bad(s, "not a year"))?;
            if !(FIRST_FEED_YEAR..=2100).contains(&y) {
                return Err(bad(s, "NVD's yearly feeds start at 2002"));
            }
            Ok(y)
        };
        let mut out = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.to_ascii_lowercase().as_str() {
                "modified" => out.push(FeedName::Modified),
                "recent" => out.push(FeedName::Recent),
                _ => match part.split_once("..") {
                    Some((a, b)) => {
                        let (a, b) = (year(a)?, year(b.trim_start_matches('='))?);
                        if a > b {
                            return Err(bad(part, "range start after its end"));
                        }
                        out.extend((a..=b).map(FeedName::Year));
                    }
                    None => out.push(FeedName::Year(year(part)?)),
                },
            }
        }
        if out.is_empty() {
            return Err(bad(spec, "no feed named"));
        }
        out.dedup();
        Ok(out)
    }

    /// The name in NVD's file names: `2024`, `modified`, `recent`.
    pub fn as_file_part(&self) -> String {
        match self {
            FeedName::Year(y) => y.to_string(),
            FeedName::Modified => "modified".into(),
            FeedName::Recent => "recent".into(),
        }
    }
}

impl Ingestor {
    /// Imports every NVD JSON file at `path` (a file or a directory,
    /// recursively, in path order). A file that fails is reported and the
    /// others are still imported; the run then ends `failed`.
    pub async fn import_path(&self, path: &Path) -> Result<IngestReport, IngestError> {
        let path = path.to_path_buf();
        self.recorded(Source::NvdFeed, async |state: &mut RunState| {
            let files = list_feed_files(&path)?;
            if files.is_empty() {
                return Err(IngestError::Io {
                    path: path.clone(),
                    error: io::Error::new(
                        io::ErrorKind::NotFound,
                        "no .json or .json.gz files in this directory",
                    ),
                });
            }
            self.import_files(&files, state).await?;
            Ok(RunResult::Success)
        })
        .await
    }

    /// Downloads the named NVD 2.0 feeds (`.json.gz` with its `.meta`) from
    /// the configured feed URL and imports them, one after the other; each
    /// download is deleted once imported.
    pub async fn import_feeds(&self, feeds: &[FeedName]) -> Result<IngestReport, IngestError> {
        self.recorded(Source::NvdFeed, async |state: &mut RunState| {
            let dir = &self.settings.download_dir;
            std::fs::create_dir_all(dir).map_err(|error| IngestError::Io {
                path: dir.clone(),
                error,
            })?;
            let mut errors = Vec::new();
            for feed in feeds {
                let result = async {
                    let gz = self.download_feed(*feed).await?;
                    let outcome = self.import_files(std::slice::from_ref(&gz), state).await;
                    remove_download(&gz);
                    outcome
                }
                .await;
                if let Err(e) = result {
                    tracing::error!(feed = %feed.as_file_part(), error = %e, "feed import failed");
                    errors.push(format!("feed {}: {e}", feed.as_file_part()));
                }
            }
            state.detail(
                "feeds",
                feeds.iter().map(|f| f.as_file_part()).collect::<Vec<_>>(),
            );
            if errors.is_empty() {
                Ok(RunResult::Success)
            } else {
                Err(IngestError::Files {
                    failed: errors.len(),
                    total: feeds.len(),
                    errors,
                })
            }
        })
        .await
    }

    /// Fetches one feed and its `.meta` into the download directory.
    async fn download_feed(&self, feed: FeedName) -> Result<PathBuf, IngestError> {
        let base = self.settings.feeds_url.as_str().trim_end_matches('/');
        let stem = format!("nvdcve-2.0-{}", feed.as_file_part());
        let http = build_client(std::time::Duration::from_secs(600), USER_AGENT)?;
        let dir = &self.settings.download_dir;
        let mut saved = None;
        // The .meta first: without it a truncated download would go unnoticed.
        for (suffix, required) in [(".meta", self.settings.verify_meta), (".json.gz", true)] {
            let url = url::Url::parse(&format!("{base}/{stem}{suffix}"))
                .map_err(|e| IngestError::Config(format!("feed URL {base}/{stem}{suffix}: {e}")))?;
            self.progress
                .begin(&format!("downloading {stem}{suffix}"), None);
            let fetched = match get_with_retry(
                &http,
                &url,
                &Default::default(),
                &self.settings.retry,
                None,
            )
            .await
            {
                Ok(f) => f,
                Err(e) if !required => {
                    tracing::warn!(%url, error = %e, "no .meta file; importing without checksum");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let path = dir.join(format!("{stem}{suffix}"));
            std::fs::write(&path, &fetched.body).map_err(|error| IngestError::Io {
                path: path.clone(),
                error,
            })?;
            saved = Some(path);
        }
        saved.ok_or_else(|| IngestError::Config("feed download produced no file".into()))
    }

    /// Imports files one by one; a failing file does not stop the others.
    async fn import_files(
        &self,
        files: &[PathBuf],
        state: &mut RunState,
    ) -> Result<(), IngestError> {
        let mut errors = Vec::new();
        let mut failed_single = None;
        for file in files {
            if let Err(e) = self.import_file(file, state).await {
                tracing::error!(file = %file.display(), error = %e, "file not imported");
                errors.push(e.to_string());
                failed_single = Some(e);
            }
        }
        state.detail("files", files.len());
        match (errors.len(), files.len()) {
            (0, _) => Ok(()),
            // One file: its own error, which already names it.
            (1, 1) => Err(failed_single.unwrap_or(IngestError::Join("lost error".into()))),
            (failed, total) => Err(IngestError::Files {
                failed,
                total,
                errors,
            }),
        }
    }

    /// Streams a file into the store in batches, all in one store
    /// transaction that commits only once the whole file has been read and
    /// checked (see the module docs). The counts and failures of a file
    /// reach the run only when it is committed.
    async fn import_file(&self, file: &Path, state: &mut RunState) -> Result<(), IngestError> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.progress.begin(&format!("importing {name}"), None);
        let opts = FileOptions {
            verify_meta: self.settings.verify_meta,
            batch_size: self.settings.batch_size.max(1),
            // The feeds crate's default: parse on every core while we write.
            workers: None,
        };
        let mut rx = spawn_file_batches(file.to_path_buf(), opts, 2);
        let mut upserts = self.store.begin_upserts().await?;
        let mut this_file = RunState::default();
        while let Some(next) = rx.recv().await {
            // An error here drops `upserts`: the file's batches roll back.
            let batch = next?;
            let received = (batch.cves.len() + batch.failed.len()) as u64;
            for f in &batch.failed {
                this_file.note_failure(format!("{}: {f}", file.display()));
            }
            let summary = upserts.upsert_cves(&batch.cves, Utc::now()).await?;
            for (id, reason) in &summary.failed {
                this_file.note_failure(format!("{id}: {reason}"));
            }
            this_file
                .counts
                .add_upsert(&summary, received, batch.failed.len() as u64);
            self.progress.advance(received);
            if batch.is_last {
                upserts.commit().await?;
                state.absorb(this_file);
                return Ok(());
            }
        }
        // The parser thread ends with `is_last` or an error; anything else
        // means it died.
        Err(IngestError::Join(format!(
            "{}: parser stopped before the end of the file",
            file.display()
        )))
    }
}

fn remove_download(gz: &Path) {
    let _ = std::fs::remove_file(gz);
    if let Some(meta) = meta_path_for(gz) {
        let _ = std::fs::remove_file(meta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_lists() {
        assert_eq!(
            FeedName::parse_list("2002..2004, modified,recent").unwrap(),
            vec![
                FeedName::Year(2002),
                FeedName::Year(2003),
                FeedName::Year(2004),
                FeedName::Modified,
                FeedName::Recent
            ]
        );
        assert_eq!(
            FeedName::parse_list("2024").unwrap(),
            vec![FeedName::Year(2024)]
        );
        for bad in ["", "1999", "2026..2002", "latest", "20x4"] {
            let e = FeedName::parse_list(bad).unwrap_err().to_string();
            assert!(e.contains("--feeds"), "{bad}: {e}");
        }
    }
}
