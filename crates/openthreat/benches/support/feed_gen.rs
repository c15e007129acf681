//! The large-feed generator shared by `examples/gen_feed.rs` and
//! `benches/ingest.rs`: real records from `shared/data/nvd/cve/`, each
//! reused with a new CVE id, shifted dates and a varied description, so
//! parsers and stores see realistic shapes and sizes (from tiny rejected
//! records to CVE-2024-0158's 388 configurations).
//!
//! # Realistic size mix
//!
//! The file is written in NVD's own layout (2-space indented JSON, records
//! nested four spaces deep), and the templates are weighted so the average
//! record matches real NVD feeds: the 2022 feed is 173 675 564 bytes for
//! 26 716 records, about 6 500 bytes/record in that layout (about 3.7 KB
//! as compact JSON). The 22 templates, cycled evenly, would average some
//! 31 800 bytes, because a few of them are enormous (CVE-2024-0158: 340 KB
//! in this layout, 227 KB as stored here). Each template's weight comes from
//! its size in the feed layout:
//!
//! | template size | weight | today's templates | share of records |
//! |---|---|---|---|
//! | < 10 000 bytes ("small") | 40 | 14 | 96.1 % |
//! | < 50 000 bytes ("medium") | 4 | 5 | 3.4 % |
//! | otherwise ("heavy") | 1 | 3 | 0.5 % |
//!
//! which averages about 6 560 bytes/record (the benchmark prints the actual
//! figure). The weighted templates are interleaved with a smooth weighted
//! round robin, one cycle of 583 records, so every batch of 1000 records
//! sees the same mix, heavy records included, and runs are reproducible.

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

/// The weight of a template of `bytes` bytes in the feed layout (see the
/// module documentation).
fn weight(bytes: usize) -> u32 {
    match bytes {
        0..10_000 => 40,
        10_000..50_000 => 4,
        _ => 1,
    }
}

/// One cycle of template indexes, each appearing `weights[j]` times, spread
/// out by smooth weighted round robin (the heavy ones are not bunched).
fn schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let mut best = 0;
        for j in 1..current.len() {
            if current[j] > current[best] {
                best = j;
            }
        }
        current[best] -= total;
        order.push(best);
    }
    order
}

/// `{"cve": rec}` in NVD's feed layout: 2-space indented, the record
/// nested inside the `vulnerabilities` array.
fn write_record(w: &mut impl Write, rec: &Value, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut *buf,
        serde_json::ser::PrettyFormatter::with_indent(b"  "),
    );
    serde::Serialize::serialize(rec, &mut ser)?;
    w.write_all(b"    {\n      \"cve\": ")?;
    for (k, line) in buf.split(|&b| b == b'\n').enumerate() {
        if k > 0 {
            w.write_all(b"\n      ")?;
        }
        w.write_all(line)?;
    }
    w.write_all(b"\n    }")
}

/// Writes an NVD 2.0 feed of `count` records to `out` (gzip when the name
/// ends in `.gz`), streaming, and returns the uncompressed size in bytes.
pub fn write_feed(out: &Path, count: usize) -> Result<u64, Box<dyn std::error::Error>> {
    let templates = templates()?;
    let mut buf = Vec::new();
    let mut weights = Vec::with_capacity(templates.len());
    for t in &templates {
        let mut size = Counting {
            inner: std::io::sink(),
            written: 0,
        };
        write_record(&mut size, t, &mut buf)?;
        weights.push(weight(size.written as usize));
    }
    let order = schedule(&weights);
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
        "{{\n  \"resultsPerPage\": {count},\n  \"startIndex\": 0,\n  \"totalResults\": {count},\n  \"format\": \"NVD_CVE\",\n  \"version\": \"2.0\",\n  \"timestamp\": \"2026-01-01T00:00:00.000\",\n  \"vulnerabilities\": [\n"
    )?;
    for i in 0..count {
        let mut rec = templates[order[i % order.len()]].clone();
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
            w.write_all(b",\n")?;
        }
        write_record(&mut w, &rec, &mut buf)?;
    }
    w.write_all(b"\n  ]\n}\n")?;
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
