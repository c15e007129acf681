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
