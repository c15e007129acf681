//! FIRST's EPSS daily scores (CSV, usually gzip).
//!
//! The file has changed shape over the years, and all shapes are accepted:
//!
//! ```text
//! #model_version:v2023.03.01,score_date:2025-02-20T00:00:00+0000   (since 2022)
//! cve,epss,percentile                                              (or, in 2021: cve,epss)
//! CVE-1999-0001,0.00383,0.73075                                    (or 1.2e-05)
//! ```
//!
//! The score date comes from the comment line; files without one (early
//! 2021) get it from the caller or from an `epss_scores-YYYY-MM-DD` file
//! name. The real file has about 300 000 rows, so rows are streamed to a
//! callback; a bad row is counted and skipped.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use bytes::Bytes;
use chrono::NaiveDate;
use flate2::read::MultiGzDecoder;
use openthreat_core::{CveId, Epss};
use url::Url;

use crate::error::FeedsError;
use crate::http::{build_client, get_with_retry, RetryPolicy, USER_AGENT};
use crate::nvd::map::parse_date;

/// Where FIRST publishes the current scores.
pub const DEFAULT_EPSS_URL: &str = "https://epss.cyentia.com/epss_scores-current.csv.gz";

/// What a file said about itself, and the row counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpssSummary {
    pub model_version: Option<String>,
    /// The day the scores are for.
    pub score_date: Option<NaiveDate>,
    pub rows: u64,
    pub skipped: u64,
    /// The first few skipped rows (line number and reason), for the log.
    pub skipped_examples: Vec<String>,
}

const MAX_EXAMPLES: usize = 10;

/// Streams the rows of an EPSS CSV (plain or gzip, detected by its magic
/// bytes) to `on_row`. `date_hint` is used when the file has no
/// `score_date`; `origin` names the source in errors.
pub fn parse_epss_reader<R: Read>(
    reader: R,
    origin: &str,
    date_hint: Option<NaiveDate>,
    on_row: &mut dyn FnMut(CveId, Epss) -> Result<(), FeedsError>,
) -> Result<EpssSummary, FeedsError> {
    let io_err = |e: std::io::Error| FeedsError::Format {
        origin: origin.to_string(),
        message: format!("read error: {e}"),
    };
    let mut buffered = BufReader::with_capacity(64 * 1024, reader);
    let head = buffered.fill_buf().map_err(io_err)?;
    let mut reader: Box<dyn BufRead> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(
            64 * 1024,
            MultiGzDecoder::new(buffered),
        ))
    } else {
        Box::new(buffered)
    };

    let mut summary = EpssSummary::default();
    // The optional comment line(s) before the header.
    let mut line_no = 0u64;
    loop {
        let buf = reader.fill_buf().map_err(io_err)?;
        if buf.first() != Some(&b'#') {
            break;
        }
        let mut line = String::new();
        reader.read_line(&mut line).map_err(io_err)?;
        line_no += 1;
        for part in line.trim_start_matches('#').trim().split(',') {
            if let Some((k, v)) = part.split_once(':') {
                match k.trim() {
                    "model_version" => summary.model_version = Some(v.trim().to_string()),
                    "score_date" => summary.score_date = parse_date(v),
                    _ => {}
                }
            }
        }
    }
    if summary.score_date.is_none() {
        summary.score_date = date_hint;
    }

    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let headers = csv.headers().map_err(|e| FeedsError::Format {
        origin: origin.to_string(),
        message: format!("cannot read the CSV header: {e}"),
    })?;
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(cve_col), Some(epss_col)) = (col("cve"), col("epss")) else {
        return Err(FeedsError::Format {
            origin: origin.to_string(),
            message: format!(
                "not an EPSS file: header {:?} lacks cve and epss columns",
                headers.iter().collect::<Vec<_>>()
            ),
        });
    };
    let pct_col = col("percentile");
    let header_lines = line_no + 1;

    let mut record = csv::StringRecord::new();
    loop {
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) if e.is_io_error() => {
                return Err(FeedsError::Format {
                    origin: origin.to_string(),
                    message: format!("read error after {} rows: {e}", summary.rows),
                })
            }
            Err(e) => {
                note_skip(&mut summary, format!("{e}"));
                continue;
            }
        }
        let line = record
            .position()
            .map(|p| p.line() + header_lines - 1)
            .unwrap_or(0);
        match parse_row(&record, cve_col, epss_col, pct_col, summary.score_date) {
            Ok((id, epss)) => {
                summary.rows += 1;
                on_row(id, epss)?;
            }
            Err(reason) => note_skip(&mut summary, format!("line {line}: {reason}")),
        }
    }
    if summary.skipped > 0 {
        tracing::warn!(origin, skipped = summary.skipped, examples = ?summary.skipped_examples, "skipped EPSS rows");
    }
    Ok(summary)
}

fn note_skip(summary: &mut EpssSummary, reason: String) {
    summary.skipped += 1;
    if summary.skipped_examples.len() < MAX_EXAMPLES {
        summary.skipped_examples.push(reason);
    }
}

fn parse_row(
    record: &csv::StringRecord,
    cve_col: usize,
    epss_col: usize,
    pct_col: Option<usize>,
    date: Option<NaiveDate>,
) -> Result<(CveId, Epss), String> {
    let field = |i: usize| record.get(i).unwrap_or("");
    let id = CveId::parse(field(cve_col)).map_err(|e| e.to_string())?;
    let prob = |name: &str, s: &str| -> Result<f64, String> {
        let v: f64 = s
            .parse()
            .map_err(|_| format!("{name} is not a number: {s:?}"))?;
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("{name} {v} is outside 0..1"));
        }
        Ok(v)
    };
    let score = prob("epss", field(epss_col))?;
    let percentile = match pct_col.map(field).filter(|s| !s.is_empty()) {
        Some(s) => Some(prob("percentile", s)?),
        None => None,
    };
    Ok((
        id,
        Epss {
            score,
            percentile,
            date,
        },
    ))
}

/// The date in a file name such as `epss_scores-2021-04-14.csv.gz`.
pub fn date_from_file_name(path: &Path) -> Option<NaiveDate> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("epss_scores-")?;
    rest.get(..10).and_then(parse_date)
}

/// Streams a local EPSS file (plain or gzip).
pub fn parse_epss_file(
    path: &Path,
    on_row: &mut dyn FnMut(CveId, Epss) -> Result<(), FeedsError>,
) -> Result<EpssSummary, FeedsError> {
    let file = std::fs::File::open(path).map_err(|error| FeedsError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse_epss_reader(
        file,
        &path.display().to_string(),
        date_from_file_name(path),
        on_row,
    )
}

/// Downloads the EPSS file (a few MB compressed) without parsing it, so the
/// caller can stream it through [`parse_epss_reader`] on a blocking thread.
pub async fn fetch_epss_bytes(url: &Url, retry: &RetryPolicy) -> Result<Bytes, FeedsError> {
    let http = build_client(std::time::Duration::from_secs(300), USER_AGENT)?;
    Ok(get_with_retry(&http, url, &Default::default(), retry, None)
        .await?
        .body)
}

/// Downloads and parses the EPSS file into memory (about 300 000 entries,
/// some 30 MB), parsing on a blocking thread.
pub async fn fetch_epss(
    url: &Url,
    retry: &RetryPolicy,
) -> Result<(EpssSummary, Vec<(CveId, Epss)>), FeedsError> {
    let body = fetch_epss_bytes(url, retry).await?;
    let origin = url.to_string();
    let hint = date_from_file_name(Path::new(url.path()));
    tokio::task::spawn_blocking(move || {
        let mut rows = Vec::new();
        let summary = parse_epss_reader(&body[..], &origin, hint, &mut |id, e| {
            rows.push((id, e));
            Ok(())
        })?;
        Ok((summary, rows))
    })
    .await
    .map_err(|e| FeedsError::Join(e.to_string()))?
}
