//! NVD feed `.meta` files: the checksum published next to each feed, so a
//! truncated or tampered download is caught before its records are kept.
//!
//! Format, one `key:value` per line (values may contain `:`):
//!
//! ```text
//! lastModifiedDate:2025-08-25T03:00:56-04:00
//! size:173675564
//! zipSize:15601830
//! gzSize:15601694
//! sha256:C7C69BD35B2665368BD8E0FBC53830C37635409F3ED7B36BCFACF9EB02072152
//! ```
//!
//! `size` and `sha256` describe the *uncompressed* JSON.

use std::path::{Path, PathBuf};

use crate::error::FeedsError;

/// A parsed `.meta` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedMeta {
    /// As written by NVD, e.g. `2025-08-25T03:00:56-04:00`.
    pub last_modified_date: Option<String>,
    /// Size of the uncompressed JSON in bytes.
    pub size: Option<u64>,
    pub zip_size: Option<u64>,
    pub gz_size: Option<u64>,
    /// Upper-case hex SHA-256 of the uncompressed JSON.
    pub sha256: String,
}

impl FeedMeta {
    /// Parses the text of a `.meta` file; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, FeedsError> {
        let invalid = |message: String| FeedsError::InvalidMeta {
            path: path.to_path_buf(),
            message,
        };
        let mut meta = FeedMeta {
            last_modified_date: None,
            size: None,
            zip_size: None,
            gz_size: None,
            sha256: String::new(),
        };
        let num = |k: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| invalid(format!("{k} is not a number: {v:?}")))
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some((key, value)) = line.split_once(':') else {
                return Err(invalid(format!("line without ':' {line:?}")));
            };
            let value = value.trim();
            match key.trim() {
                "lastModifiedDate" => meta.last_modified_date = Some(value.to_string()),
                "size" => meta.size = Some(num(key, value)?),
                "zipSize" => meta.zip_size = Some(num(key, value)?),
                "gzSize" => meta.gz_size = Some(num(key, value)?),
                "sha256" => meta.sha256 = value.to_ascii_uppercase(),
                _ => {} // Unknown keys are NVD's business, not an error.
            }
        }
        if meta.sha256.len() != 64 || !meta.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "missing or malformed sha256 {:?}",
                meta.sha256
            )));
        }
        Ok(meta)
    }

    /// Reads and parses a `.meta` file.
    pub fn read(path: &Path) -> Result<Self, FeedsError> {
        let text = std::fs::read_to_string(path).map_err(|error| FeedsError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Renders the format NVD publishes (used to make `.meta` files in tests
    /// and for mirrors).
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.last_modified_date {
            s.push_str(&format!("lastModifiedDate:{d}\r\n"));
        }
        for (k, v) in [
            ("size", self.size),
            ("zipSize", self.zip_size),
            ("gzSize", self.gz_size),
        ] {
            if let Some(v) = v {
                s.push_str(&format!("{k}:{v}\r\n"));
            }
        }
        s.push_str(&format!("sha256:{}\r\n", self.sha256));
        s
    }
}

/// The `.meta` path NVD uses for a feed: `nvdcve-2.0-2022.json.gz` and
/// `nvdcve-2.0-2022.json` both go with `nvdcve-2.0-2022.meta`.
pub fn meta_path_for(feed: &Path) -> Option<PathBuf> {
    let name = feed.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".json.gz")
        .or_else(|| name.strip_suffix(".json"))?;
    Some(feed.with_file_name(format!("{stem}.meta")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_meta_and_round_trips() {
        let text = "lastModifiedDate:2025-08-25T03:00:56-04:00\r\nsize:173675564\r\nzipSize:15601830\r\ngzSize:15601694\r\nsha256:c7c69bd35b2665368bd8e0fbc53830c37635409f3ed7b36bcfacf9eb02072152\r\n";
        let m = FeedMeta::parse(text, Path::new("x.meta")).unwrap();
        assert_eq!(m.size, Some(173_675_564));
        assert_eq!(
            m.last_modified_date.as_deref(),
            Some("2025-08-25T03:00:56-04:00")
        );
        assert!(m.sha256.starts_with("C7C69BD3"));
        assert_eq!(FeedMeta::parse(&m.render(), Path::new("y")).unwrap(), m);
    }

    #[test]
    fn rejects_bad_meta() {
        assert!(FeedMeta::parse("size:1\n", Path::new("a.meta")).is_err());
        assert!(FeedMeta::parse("size:x\nsha256:00\n", Path::new("a.meta")).is_err());
        let e = FeedMeta::parse("garbage", Path::new("a.meta")).unwrap_err();
        assert!(e.to_string().contains("a.meta"), "{e}");
    }

    #[test]
    fn meta_path_naming() {
        assert_eq!(
            meta_path_for(Path::new("/d/nvdcve-2.0-2022.json.gz")).unwrap(),
            Path::new("/d/nvdcve-2.0-2022.meta")
        );
        assert_eq!(
            meta_path_for(Path::new("nvdcve-2.0-2022.json")).unwrap(),
            Path::new("nvdcve-2.0-2022.meta")
        );
        assert!(meta_path_for(Path::new("notes.txt")).is_none());
    }
}
