//! `openthreat ingest nvd|kev|epss`: runs the ingestion service once, with a
//! progress bar on stderr (only on a terminal) and a summary, or `--json`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Config;
use crate::ingest::sync::SyncRequest;
use crate::ingest::{parse_since, FeedName, IngestReport, IngestSettings, Ingestor, Progress};
use crate::runtime;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    source: Source,
}

#[derive(Debug, clap::Subcommand)]
enum Source {
    /// Import CVEs from NVD: the API incremental sync (default), the yearly
    /// feed files (--feeds), or local files (--from).
    ///
    /// Without options, fetches every CVE modified since the last sync
    /// through the NVD CVE API 2.0 (NVD_API_KEY raises the rate limit). The
    /// first sync starts at the newest modification date in the database,
    /// or 120 days ago on an empty database: fill an empty database with
    /// `--feeds 2002..2026` first.
    #[command(after_help = "Examples:\n  \
        openthreat ingest nvd --feeds 2002..2026   # first import, all years\n  \
        openthreat ingest nvd                      # then: changes since the last run\n  \
        openthreat ingest nvd --since 2025-01-01   # re-sync from a date\n  \
        openthreat ingest nvd --from nvdcve-2.0-2024.json.gz\n  \
        openthreat ingest nvd --from ./mirror/ --json")]
    Nvd(NvdArgs),
    /// Mark CVEs exploited from the CISA Known Exploited Vulnerabilities
    /// catalog (skipped when the catalog's dateReleased is unchanged).
    Kev(KevArgs),
    /// Store FIRST EPSS exploit-probability scores and percentiles.
    Epss(EpssArgs),
}

#[derive(Debug, clap::Args)]
struct NvdArgs {
    /// Start (or restart) the API sync at this date (YYYY-MM-DD, UTC) or
    /// timestamp, instead of where the last sync stopped.
    #[arg(long, value_name = "DATE", conflicts_with_all = ["feeds", "from"])]
    since: Option<String>,
    /// Download and import NVD 2.0 feed files: years and ranges, `modified`,
    /// `recent`, comma-separated (e.g. 2002..2026,modified). The base URL is
    /// OPENTHREAT_NVD_FEEDS_URL (default https://nvd.nist.gov/feeds/json/cve/2.0).
    #[arg(long, value_name = "LIST", conflicts_with = "from")]
    feeds: Option<String>,
    /// Import local NVD JSON: an API response page, a feed file (.json or
    /// .json.gz, checked against its .meta sha256 when present), a single
    /// CVE record (bare or as {"cve": ...}), or a directory of these.
    #[arg(long, value_name = "PATH")]
    from: Option<PathBuf>,
    /// Do not verify .meta sha256 files (only for feed files you edited).
    #[arg(long)]
    no_verify_meta: bool,
    /// Records per database transaction when importing files.
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_size: u32,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, clap::Args)]
struct KevArgs {
    /// Read the catalog JSON from this file instead of OPENTHREAT_KEV_URL.
    #[arg(long, value_name = "PATH")]
    from: Option<PathBuf>,
    /// Apply the catalog even if its dateReleased was already imported.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, clap::Args)]
struct EpssArgs {
    /// Read scores from this .csv or .csv.gz instead of OPENTHREAT_EPSS_URL.
    #[arg(long, value_name = "PATH")]
    from: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, Clone, Copy, clap::Args)]
struct Output {
    /// Print the run's report as JSON on stdout (no progress bar).
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let mut settings = IngestSettings::from_config(config)?;
    // Validate arguments before touching the database.
    let output = match &args.source {
        Source::Nvd(a) => {
            settings.verify_meta = !a.no_verify_meta;
            settings.batch_size = a.batch_size as usize;
            if let Some(s) = &a.since {
                parse_since(s)?;
            }
            if let Some(f) = &a.feeds {
                FeedName::parse_list(f)?;
            }
            a.output
        }
        Source::Kev(a) => a.output,
        Source::Epss(a) => a.output,
    };
    let store = runtime::open_store(config).await?;
    let bar = Bar::new(!output.json && std::io::stderr().is_terminal());
    let ingestor = Ingestor::new(store, settings).with_progress(bar.clone());
    let report = match args.source {
        Source::Nvd(a) => {
            if let Some(from) = &a.from {
                ingestor.import_path(from).await?
            } else if let Some(f) = &a.feeds {
                ingestor.import_feeds(&FeedName::parse_list(f)?).await?
            } else {
                let since = a.since.as_deref().map(parse_since).transpose()?;
                ingestor
                    .sync_nvd(&SyncRequest {
                        since,
                        ..Default::default()
                    })
                    .await?
            }
        }
        Source::Kev(a) => ingestor.import_kev(a.from.as_deref(), a.force).await?,
        Source::Epss(a) => ingestor.import_epss(a.from.as_deref()).await?,
    };
    bar.finish();
    print_report(&report, output.json)?;
    Ok(if report.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &IngestReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!("{}", report.summary_line());
    for f in &report.failures {
        println!("  skipped {f}");
    }
    let listed = report.failures.len() as u64;
    if report.counts.failed > listed && listed > 0 {
        println!(
            "  ... and {} more (see the log)",
            report.counts.failed - listed
        );
    }
    if let Some(e) = &report.error {
        eprintln!("error: {e}");
    }
    Ok(())
}

/// The progress bar: a spinner with a count and a rate, or a bar when the
/// total is known. Hidden (drawing nothing) when stderr is not a terminal.
struct Bar(ProgressBar);

impl Bar {
    fn new(visible: bool) -> Arc<Bar> {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let pb = ProgressBar::with_draw_target(None, target);
        pb.enable_steady_tick(Duration::from_millis(200));
        Arc::new(Bar(pb))
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn begin(&self, label: &str, total: Option<u64>) {
        let pb = &self.0;
        let style = match total {
            Some(t) => {
                pb.set_length(t);
                pb.set_position(0);
                ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta})",
                )
            }
            None => {
                pb.unset_length();
                ProgressStyle::with_template("{spinner} {msg}: {pos} records ({per_sec})")
            }
        };
        if let Ok(style) = style {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(label.to_string());
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}
