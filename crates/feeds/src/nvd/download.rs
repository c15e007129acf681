//! Downloading NVD 2.0 feed files (`nvdcve-2.0-YYYY.json.gz`, `-modified`,
//! `-recent`) with their `.meta`, for the first import.
//!
//! The `.meta` is fetched first: when a local copy with the same sha256 is
//! already there, the (large) feed is not downloaded again. A new feed is
//! written to a `.part` file and renamed, and its `.meta` is written last,
//! so an interrupted download never looks complete. The sha256 itself is
//! checked when the file is parsed ([`super::parse::parse_file`]), which
//! reads the uncompressed bytes anyway.

use std::path::{Path, PathBuf};

use url::Url;

use super::meta::FeedMeta;
use crate::error::FeedsError;
use crate::http::{build_client, get_with_retry, RetryPolicy, USER_AGENT};

/// Where NVD publishes the 2.0 feeds.
pub const DEFAULT_FEED_BASE_URL: &str = "https://nvd.nist.gov/feeds/json/cve/2.0/";

/// The feed name of a year, e.g. `nvdcve-2.0-2024`.
pub fn feed_name_for_year(year: u16) -> String {
    format!("nvdcve-2.0-{year}")
}

/// The result of [`download_feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedDownload {
    /// The local `.json.gz` file.
    pub path: PathBuf,
    pub meta: FeedMeta,
    /// `false` when the local copy was already current.
    pub downloaded: bool,
}

/// Downloads feed `name` (e.g. `nvdcve-2.0-2024`) from `base` into
/// `dest_dir`, unless the local copy's `.meta` already has the same sha256.
pub async fn download_feed(
    base: &Url,
    name: &str,
    dest_dir: &Path,
    retry: &RetryPolicy,
) -> Result<FeedDownload, FeedsError> {
    let http = build_client(std::time::Duration::from_secs(600), USER_AGENT)?;
    let url_of = |file: String| {
        base.join(&file)
            .map_err(|e| FeedsError::Config(format!("bad feed URL {base}{file}: {e}")))
    };
    let meta_url = url_of(format!("{name}.meta"))?;
    let gz_url = url_of(format!("{name}.json.gz"))?;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| FeedsError::Io { path, error }
    };

    let meta_body = get_with_retry(&http, &meta_url, &Default::default(), retry, None)
        .await?
        .body;
    let meta_text = String::from_utf8_lossy(&meta_body);
    let remote = FeedMeta::parse(&meta_text, Path::new(meta_url.path()))?;

    let gz_path = dest_dir.join(format!("{name}.json.gz"));
    let meta_path = dest_dir.join(format!("{name}.meta"));
    if gz_path.is_file() && meta_path.is_file() {
        if let Ok(local) = FeedMeta::read(&meta_path) {
            if local.sha256 == remote.sha256 {
                return Ok(FeedDownload {
                    path: gz_path,
                    meta: remote,
                    downloaded: false,
                });
            }
        }
    }

    let body = get_with_retry(&http, &gz_url, &Default::default(), retry, None)
        .await?
        .body;
    if let Some(expected) = remote.gz_size {
        if expected != body.len() as u64 {
            return Err(FeedsError::Format {
                origin: gz_url.to_string(),
                message: format!(
                    "downloaded {} bytes but the .meta says gzSize {expected}",
                    body.len()
                ),
            });
        }
    }
    tokio::fs::create_dir_all(dest_dir)
        .await
        .map_err(io_err(dest_dir))?;
    let part = dest_dir.join(format!("{name}.json.gz.part"));
    tokio::fs::write(&part, &body)
        .await
        .map_err(io_err(&part))?;
    // Remove the old .meta first: a crash between the rename and the new
    // .meta must not pair the new feed with the old checksum as "current".
    let _ = tokio::fs::remove_file(&meta_path).await;
    tokio::fs::rename(&part, &gz_path)
        .await
        .map_err(io_err(&gz_path))?;
    tokio::fs::write(&meta_path, meta_text.as_bytes())
        .await
        .map_err(io_err(&meta_path))?;
    Ok(FeedDownload {
        path: gz_path,
        meta: remote,
        downloaded: true,
    })
}
