//! Local servers that speak the protocols of NVD, CISA and FIRST, serving the
//! real records in `shared/data`, for this crate's tests and the
//! application's integration tests (feature `test-server`).
//!
//! They bind `127.0.0.1:0` and shut down when dropped. No mocks of our own
//! code are involved: the client under test talks HTTP to them exactly as
//! it would to NVD.

mod file_server;
mod nvd_server;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
pub use file_server::{FileServer, ServedFile};
pub use nvd_server::{NvdServerConfig, NvdTestServer, RecordedRequest, Throttle};

use crate::nvd::map::parse_nvd_timestamp;
use crate::nvd::parse::list_feed_files;

/// The shared fixture directory (`shared/data`), located relative to this
/// crate as in the repository layout (`<repo>/crates/feeds` next to `shared/`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
}

/// An NVD `cve` object with what the server needs to filter it.
#[derive(Debug, Clone)]
pub struct FixtureRecord {
    pub id: String,
    pub last_modified: DateTime<Utc>,
    /// The `cve` object exactly as found in the file.
    pub cve: serde_json::Value,
}

/// Every distinct NVD record under `dir` (bare records, wrappers, pages and
/// feeds, gzip or not), keeping the newest copy of a duplicated id, sorted
/// by `lastModified` then id. Files that are not NVD JSON are skipped.
pub fn load_nvd_records(dir: &Path) -> std::io::Result<Vec<FixtureRecord>> {
    let files = list_feed_files(dir).map_err(std::io::Error::other)?;
    let mut by_id: std::collections::HashMap<String, FixtureRecord> = Default::default();
    for f in files {
        let bytes = std::fs::read(&f)?;
        let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::MultiGzDecoder::new(&bytes[..]),
                &mut out,
            )?;
            out
        } else {
            bytes
        };
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let cves: Vec<serde_json::Value> =
            if let Some(v) = doc.get("vulnerabilities").and_then(|v| v.as_array()) {
                v.iter().filter_map(|i| i.get("cve").cloned()).collect()
            } else if let Some(c) = doc.get("cve") {
                vec![c.clone()]
            } else {
                vec![doc]
            };
        for cve in cves {
            let Some(id) = cve.get("id").and_then(|v| v.as_str()).map(String::from) else {
                continue;
            };
            let Some(last_modified) = cve
                .get("lastModified")
                .and_then(|v| v.as_str())
                .and_then(parse_nvd_timestamp)
            else {
                continue;
            };
            let rec = FixtureRecord {
                id: id.clone(),
                last_modified,
                cve,
            };
            match by_id.get(&id) {
                Some(old) if old.last_modified >= rec.last_modified => {}
                _ => {
                    by_id.insert(id, rec);
                }
            }
        }
    }
    let mut out: Vec<_> = by_id.into_values().collect();
    out.sort_by(|a, b| (a.last_modified, &a.id).cmp(&(b.last_modified, &b.id)));
    Ok(out)
}

/// All distinct records of `shared/data/nvd`.
pub fn load_all_nvd_fixtures() -> std::io::Result<Vec<FixtureRecord>> {
    load_nvd_records(&fixtures_dir().join("nvd"))
}

/// Path of the KEV catalog on [`FileServer::with_fixtures`] (CISA's path).
pub const KEV_PATH: &str = "/sites/default/files/feeds/known_exploited_vulnerabilities.json";
/// Path of the gzip EPSS file on [`FileServer::with_fixtures`] (the
/// 2023-03-07 excerpt); `/epss_scores-current.csv` serves the plain one.
pub const EPSS_PATH: &str = "/epss_scores-current.csv.gz";
/// Directory of the NVD feeds on [`FileServer::with_fixtures`]: the three
/// gzip feeds of `shared/data/nvd/feeds/vuls-data-update`, each with a
/// generated, matching `.meta`.
pub const FEEDS_PATH: &str = "/feeds/json/cve/2.0/";

impl FileServer {
    /// A server with the real KEV catalog, EPSS files and NVD feed files
    /// at the paths above, answering 503 to the first `fail_first` requests.
    pub async fn with_fixtures(fail_first: u32) -> std::io::Result<Self> {
        use sha2::Digest;
        let data = fixtures_dir();
        let mut files = vec![
            ServedFile::new(
                KEV_PATH,
                std::fs::read(data.join("kev/known_exploited_vulnerabilities.json"))?,
                "application/json",
            ),
            ServedFile::new(
                EPSS_PATH,
                std::fs::read(data.join("epss/vuls-data-update/epss_scores-2023-03-07.csv.gz"))?,
                "application/gzip",
            ),
            ServedFile::new(
                "/epss_scores-current.csv",
                std::fs::read(data.join("epss/vunnel/example-1.csv"))?,
                "text/csv",
            ),
        ];
        for name in ["nvdcve-2.0-2002", "nvdcve-2.0-2021", "nvdcve-2.0-modified"] {
            let gz =
                std::fs::read(data.join(format!("nvd/feeds/vuls-data-update/{name}.json.gz")))?;
            let mut plain = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::MultiGzDecoder::new(&gz[..]),
                &mut plain,
            )?;
            let meta = crate::nvd::meta::FeedMeta {
                last_modified_date: Some("2026-01-01T03:00:00-05:00".into()),
                size: Some(plain.len() as u64),
                zip_size: None,
                gz_size: Some(gz.len() as u64),
                sha256: hex::encode_upper(sha2::Sha256::digest(&plain)),
            };
            files.push(ServedFile::new(
                format!("{FEEDS_PATH}{name}.meta"),
                meta.render().into_bytes(),
                "text/plain",
            ));
            files.push(ServedFile::new(
                format!("{FEEDS_PATH}{name}.json.gz"),
                gz,
                "application/gzip",
            ));
        }
        FileServer::start(files, fail_first).await
    }
}

impl NvdServerConfig {
    /// A well-behaved server over every record in `shared/data/nvd`.
    pub fn with_all_fixtures() -> std::io::Result<Self> {
        Ok(NvdServerConfig {
            records: load_all_nvd_fixtures()?,
            ..Default::default()
        })
    }
}
