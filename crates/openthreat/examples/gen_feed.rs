//! Generates a large NVD 2.0 feed file by varying the real records in
//! `../shared/data/nvd/cve/`, for the ingestion and API benchmarks.
//!
//! Usage: `cargo run --release --example gen_feed -- OUT.json.gz [COUNT]`
//! (COUNT defaults to 300000). Each generated record is a real record with a
//! new CVE id, shifted dates and a varied description, so parsers and stores
//! see realistic shapes and sizes (from tiny rejected records to CVE-2024-0158's
//! 388 configurations).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::Value;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or("usage: gen_feed OUT.json.gz [COUNT]")?;
    let count: usize = args
        .next()
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(300_000);
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
    let file = fs::File::create(&out)?;
    let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast());
    let mut w = BufWriter::new(gz);
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
    w.into_inner()?.finish()?.flush()?;
    eprintln!("wrote {count} records to {out}");
    Ok(())
}
