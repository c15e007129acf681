//! Ingestion benchmark (not a timed test): generates a large NVD feed from
//! the real records, then imports it with the ingestion service into a
//! SQLite file and into a throwaway PostgreSQL database, printing CVEs/s,
//! where the time goes, and peak memory (VmHWM).
//!
//! ```text
//! cargo bench -p openthreat --bench ingest -- [COUNT]     # default 100000
//! ```
//!
//! PostgreSQL comes from `OPENTHREAT_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); it is skipped with a
//! message when unreachable. Peak memory is reset between phases (Linux
//! `clear_refs`), so each phase reports its own peak.

#[path = "support/feed_gen.rs"]
mod feed_gen;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use openthreat::config::Config;
use openthreat::ingest::{IngestSettings, Ingestor};
use openthreat_feeds::nvd::parse::{spawn_file_batches, FileOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let feed = dir.path().join("nvdcve-2.0-bench.json.gz");
    let t = Instant::now();
    let json_bytes = feed_gen::write_feed(&feed, count)?;
    let gz_bytes = std::fs::metadata(&feed)?.len();
    // On disk before anything is timed, like a feed downloaded earlier:
    // otherwise the kernel writes the fresh file back during the imports.
    std::fs::File::open(&feed)?.sync_all()?;
    println!(
        "generated {count} records: {:.0} MB JSON, {:.0} MB gzip, avg {:.0} bytes/record, in {:.1} s",
        mb(json_bytes),
        mb(gz_bytes),
        json_bytes as f64 / count as f64,
        t.elapsed().as_secs_f64()
    );
    println!(
        "machine: {} cores (shared)",
        std::thread::available_parallelism()?
    );

    let rt = tokio::runtime::Runtime::new()?;

    // Where the time goes, without a database.
    reset_peak();
    let t = Instant::now();
    let parsed = rt.block_on(async {
        let mut rx = spawn_file_batches(
            feed.clone(),
            FileOptions {
                verify_meta: false,
                batch_size: 1000,
                ..Default::default()
            },
            2,
        );
        let mut n = 0usize;
        while let Some(b) = rx.recv().await {
            let b = b?;
            n += b.cves.len() + b.failed.len();
            if b.is_last {
                break;
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(n)
    })?;
    let parse = t.elapsed().as_secs_f64();
    println!(
        "parse + map (no store):                 {:>6.1} s  {:>8.0} records/s  peak RSS {:.0} MB",
        parse,
        parsed as f64 / parse,
        peak_mb()
    );

    let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    run_store(&rt, "SQLite", &sqlite_url, &feed, count)?;

    // A throwaway database, dropped at the end; skipped when PostgreSQL is down.
    if let Some(db) = support::PgDatabase::create() {
        run_store(&rt, "PostgreSQL", &db.url, &feed, count)?;
    }
    Ok(())
}

fn run_store(
    rt: &tokio::runtime::Runtime,
    name: &str,
    url: &str,
    feed: &Path,
    count: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    rt.block_on(async {
        let store = openthreat_store::connect(url).await?;
        store.migrate().await?;
        let settings = IngestSettings::from_config(&Config::from_map(HashMap::new())?)?;
        let ingestor = Ingestor::new(store, settings);
        reset_peak();
        let t = Instant::now();
        let report = ingestor.import_path(feed).await?;
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(report.counts.inserted, count as u64, "{report:?}");
        println!(
            "{name:<10} import (parse + store):         {secs:>6.1} s  {:>8.0} CVEs/s  peak RSS {:.0} MB",
            count as f64 / secs,
            peak_mb()
        );
        // A re-import writes nothing: mostly the cost of reading and comparing.
        let t = Instant::now();
        let again = ingestor.import_path(feed).await?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{name:<10} re-import (all unchanged):    {secs:>6.1} s  {:>8.0} CVEs/s  (unchanged {})",
            count as f64 / secs,
            again.counts.unchanged
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Peak resident memory of this process (VmHWM), in MB.
fn peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Resets VmHWM to the current RSS (Linux: `5` to `clear_refs`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
