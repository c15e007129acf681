//! The large-feed generator shared by `examples/gen_feed.rs` and
//! `benches/ingest.rs`: real records from `shared/data/nvd/cve/`, each
//! reused with a new CVE id, shifted dates and a varied description, so
//! parsers and stores see realistic shapes and sizes (from tiny rejected
//! records to CVE-2024-0158's 388 configurations).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::Value;

/// The template records, sorted by id so every run generates the same file.
pub fn templates() -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/nvd/cve");
    let mut templates: Vec<Value> = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            templates.push(serde_json::from_slice(&fs::read(&path)?)?);
        }
    }
    templates.sort_by_key(|t| t["id"].as_str().unwrap_or_default().to_string());
    if templates.is_empty() {
        return Err(format!("no records in {}", dir.display()).into());
    }
    Ok(templates)
}

/// Writes an NVD 2.0 feed of `count` records to `out` (gzip when the name
/// ends in `.gz`), streaming, and returns the uncompressed size in bytes.
pub fn write_feed(out: &Path, count: usize) -> Result<u64, Box<dyn std::error::Error>> {
    let templates = templates()?;
    let file = BufWriter::new(fs::File::create(out)?);
    let gzip = out.extension().is_some_and(|e| e == "gz");
    let sink: Box<dyn Write> = if gzip {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(file)
    };
    let mut w = Counting {
        inner: BufWriter::new(sink),
        written: 0,
    };
    write!(
        w,
        r#"{{"resultsPerPage":{count},"startIndex":0,"totalResults":{count},"format":"NVD_CVE","version":"2.0","timestamp":"2026-01-01T00:00:00.000","vulnerabilities":["#
    )?;
    for i in 0..count {
        let mut rec = templates[i % templates.len()].clone();
        let year = 2000 + (i % 26);
        rec["id"] = Value::String(format!("CVE-{year}-{:06}", 100_000 + i));
        let day = 1 + (i % 28);
        let month = 1 + (i / 28) % 12;
        rec["published"] = Value::String(format!("{year}-{month:02}-{day:02}T10:15:00.000"));
        rec["lastModified"] = Value::String(format!("2026-{month:02}-{day:02}T11:00:00.000"));
        if let Some(descs) = rec["descriptions"].as_array_mut() {
            for d in descs {
                if let Some(text) = d["value"].as_str() {
                    d["value"] = Value::String(format!("{text} (variant {i})"));
                }
            }
        }
        if i > 0 {
            w.write_all(b",")?;
        }
        w.write_all(b"{\"cve\":")?;
        serde_json::to_writer(&mut w, &rec)?;
        w.write_all(b"}")?;
    }
    w.write_all(b"]}")?;
    w.flush()?;
    let written = w.written;
    // Finishing the gzip stream happens when the writers are dropped.
    drop(w);
    Ok(written)
}

/// Counts the uncompressed bytes written.
struct Counting<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
