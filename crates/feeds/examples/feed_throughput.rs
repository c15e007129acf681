//! Parse throughput and peak memory of the streaming feed parser on a large
//! generated NVD 2.0 feed file.
//!
//! The file is made by repeating the real fixture records of
//! `shared/data/nvd` with fresh ids, written as a stream (so generating it
//! costs no memory), then parsed with `parse_file_batches` exactly as an
//! import would.
//!
//! ```text
//! cargo run --release -p openthreat-feeds --features test-server \
//!     --example feed_throughput -- [RECORDS] [--gz]
//! ```
//!
//! With `STAGES=1` it first times each stage separately (JSON splitting,
//! typed parsing, mapping) on an in-memory copy; that diagnostic loads the
//! whole file, so use it with small record counts.

use std::io::{BufWriter, Write};
use std::time::Instant;

use openthreat_feeds::nvd::parse::{parse_file_batches, FileOptions};
use openthreat_feeds::testing::load_all_nvd_fixtures;

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(300_000);
    let gz = args.iter().any(|a| a == "--gz");

    let records = load_all_nvd_fixtures()?;
    let texts: Vec<(String, String)> = records
        .iter()
        .map(|r| (r.id.clone(), r.cve.to_string()))
        .collect();

    let dir = tempfile::tempdir()?;
    let path = dir.path().join(if gz {
        "nvdcve-2.0-big.json.gz"
    } else {
        "nvdcve-2.0-big.json"
    });
    let started = Instant::now();
    {
        let file = BufWriter::new(std::fs::File::create(&path)?);
        let mut out: Box<dyn Write> = if gz {
            Box::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::fast(),
            ))
        } else {
            Box::new(file)
        };
        write!(
            out,
            "{{\"resultsPerPage\":{n},\"startIndex\":0,\"totalResults\":{n},\"format\":\"NVD_CVE\",\"version\":\"2.0\",\"timestamp\":\"2026-01-01T00:00:00.000\",\"vulnerabilities\":["
        )?;
        for i in 0..n {
            let (id, text) = &texts[i % texts.len()];
            let new_id = format!("CVE-{}-{:07}", 2000 + i / 1_000_000, i % 1_000_000);
            let text = text.replacen(&format!("\"{id}\""), &format!("\"{new_id}\""), 1);
            if i > 0 {
                out.write_all(b",")?;
            }
            write!(out, "{{\"cve\":{text}}}")?;
        }
        out.write_all(b"]}")?;
        out.flush()?;
    }
    let size = std::fs::metadata(&path)?.len();
    println!(
        "generated {n} records, {:.1} MiB on disk{} in {:.1?}",
        size as f64 / 1048576.0,
        if gz { " (gzip)" } else { "" },
        started.elapsed()
    );

    if std::env::var("STAGES").is_ok() {
        let t = Instant::now();
        let f = std::io::BufReader::with_capacity(64 * 1024, std::fs::File::open(&path)?);
        let v: serde::de::IgnoredAny = serde_json::from_reader(f)?;
        let _ = v;
        println!("from_reader IgnoredAny: {:.2} s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let bytes = std::fs::read(&path)?;
        let v: serde::de::IgnoredAny = serde_json::from_slice(&bytes)?;
        let _ = v;
        println!(
            "read + from_slice IgnoredAny: {:.2} s",
            t.elapsed().as_secs_f64()
        );
        #[derive(serde::Deserialize)]
        struct Env {
            vulnerabilities: Vec<Box<serde_json::value::RawValue>>,
        }
        let t = Instant::now();
        let e: Env = serde_json::from_slice(&bytes)?;
        println!("from_slice raw split: {:.2} s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        for r in &e.vulnerabilities {
            let _: openthreat_feeds::nvd::model::NvdItem = serde_json::from_str(r.get())?;
        }
        println!("typed parse: {:.2} s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        for r in &e.vulnerabilities {
            let i: openthreat_feeds::nvd::model::NvdItem = serde_json::from_str(r.get())?;
            let _ = openthreat_feeds::nvd::map::map_cve(i.cve);
        }
        println!("typed parse + map: {:.2} s", t.elapsed().as_secs_f64());
    }
    let rss_before = peak_rss_mib();
    let started = Instant::now();
    let mut seen = 0usize;
    let summary = parse_file_batches(&path, &FileOptions::default(), &mut |b| {
        seen += b.cves.len();
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "parsed {} records ({} failed) in {secs:.2} s: {:.0} CVEs/s; peak RSS {:.0} MiB (before parsing {:.0} MiB)",
        summary.parsed,
        summary.failed,
        seen as f64 / secs,
        peak_rss_mib().unwrap_or(f64::NAN),
        rss_before.unwrap_or(f64::NAN),
    );
    Ok(())
}
