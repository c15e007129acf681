//! Generates a large NVD 2.0 feed file by varying the real records in
//! `../shared/data/nvd/cve/`, for the ingestion and API benchmarks.
//!
//! Usage: `cargo run --release --example gen_feed -- OUT.json.gz [COUNT]`
//! (COUNT defaults to 300000). The generator itself lives in
//! `benches/support/feed_gen.rs`, shared with `benches/ingest.rs`.

#[path = "../benches/support/feed_gen.rs"]
mod feed_gen;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or("usage: gen_feed OUT.json.gz [COUNT]")?;
    let count: usize = args
        .next()
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(300_000);
    let bytes = feed_gen::write_feed(std::path::Path::new(&out), count)?;
    eprintln!("wrote {count} records ({bytes} bytes of JSON) to {out}");
    Ok(())
}
