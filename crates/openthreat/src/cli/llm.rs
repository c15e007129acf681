//! `openthreat llm`: the original `process_llm.py` script's flags over the
//! same enrichment service the tasks use.
//!
//! By default it queues work through the broker and prints task ids, like
//! the original, so a running worker does the generations under its LLM
//! concurrency limit. `--now` does the work in this process instead, for a
//! machine without a worker or to try a model by hand.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use openthreat_llm::{Enricher, LlmConfig};
use openthreat_queue::SendOptions;
use openthreat_store::Store;
use serde_json::{json, Value};

use crate::config::Config;
use crate::enrich::{self, BatchOutcome, EnrichError, Outcome, MAX_ATTEMPTS};
use crate::runtime;
use crate::tasks::process_llm_queue::MAX_BATCH;
use crate::tasks::ProcessCveWithLlm;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print enrichment progress (total, processed, pending, failed, parked) and exit.
    #[arg(long, conflicts_with_all = ["cve", "parked", "now"])]
    stats: bool,
    /// List CVEs parked after 3 rejected answers, with their last error.
    #[arg(long, conflicts_with_all = ["cve", "now"])]
    parked: bool,
    /// Enrich this one CVE (e.g. CVE-2024-1234) instead of a batch.
    #[arg(long, value_name = "CVE_ID")]
    cve: Option<String>,
    /// CVEs per batch, 1..=100.
    #[arg(long, default_value_t = 10)]
    batch_size: u32,
    /// Priority class of the batch: high, medium, low or all.
    #[arg(long, default_value = "high")]
    priority: String,
    /// Do the work in this process (no worker needed) instead of queueing tasks.
    #[arg(long)]
    now: bool,
    /// Print JSON on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    // Validate arguments before touching any service: a typo should be
    // reported as such, not as a connection error.
    let cve_id = args
        .cve
        .as_deref()
        .map(enrich::parse_id)
        .transpose()
        .map_err(anyhow::Error::new)?;
    let priority = enrich::parse_priority(&args.priority).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        (1..=MAX_BATCH).contains(&args.batch_size),
        "--batch-size must be between 1 and {MAX_BATCH}, got {}",
        args.batch_size
    );

    let store = runtime::open_store(config).await?;
    if args.stats {
        let stats = enrich::stats_json(store.as_ref()).await?;
        print_stats(&stats, args.json);
        return Ok(ExitCode::SUCCESS);
    }
    if args.parked {
        let rows = store.parked_llm(MAX_ATTEMPTS, 1000).await?;
        if args.json {
            let list: Vec<Value> = rows
                .iter()
                .map(|r| json!({"cve_id": r.cve_id, "attempts": r.llm_attempts, "error": r.llm_error}))
                .collect();
            println!("{}", json!({ "parked": list }));
        } else if rows.is_empty() {
            println!("No parked CVEs.");
        } else {
            for r in &rows {
                println!(
                    "{}  attempts {}  {}",
                    r.cve_id,
                    r.llm_attempts,
                    r.llm_error.as_deref().unwrap_or("-")
                );
            }
            println!(
                "{} parked CVEs (re-enriched when NVD changes their description).",
                rows.len()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }

    let llm = LlmConfig::from_env_map(&config.env).context("LLM configuration")?;
    let enricher = Arc::new(Enricher::from_config(&llm).context("LLM configuration")?);

    if let Some(id) = cve_id {
        let row = store
            .get_cve(&id)
            .await?
            .ok_or_else(|| EnrichError::NotFound(id.to_string()))?;
        if args.now {
            let outcome = enrich::process_one(store.as_ref(), &enricher, &id, None).await?;
            let code = if matches!(outcome, Outcome::Processed { .. } | Outcome::Skipped { .. }) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
            if args.json {
                println!("{}", outcome.to_json());
            } else {
                print_outcome(&outcome);
            }
            return Ok(code);
        }
        let producer = runtime::open_producer(config).await?;
        let task = ProcessCveWithLlm {
            cve_id: id.to_string(),
            claimed_until: None,
        };
        let options = SendOptions {
            priority: Some(enrich::message_priority(row.priority)),
            ..SendOptions::default()
        };
        let r = producer.enqueue(&task, options).await?;
        if args.json {
            println!(
                "{}",
                json!({"queued": 1, "task_ids": [r.id()], "cve_ids": [id.to_string()]})
            );
        } else {
            println!("{}  {id}", r.id());
        }
        return Ok(ExitCode::SUCCESS);
    }

    let claim = enrich::batch_claim(priority, args.batch_size);
    if !args.now {
        let producer = runtime::open_producer(config).await?;
        let outcome = enrich::queue_batch(&store, &enricher, &producer, &claim, None).await?;
        if args.json {
            println!("{}", serde_json::to_value(&outcome)?);
        } else {
            match &outcome {
                BatchOutcome::Skipped { reason, .. } => println!("Skipped: {reason}"),
                BatchOutcome::Queued {
                    task_ids,
                    cve_ids,
                    priority,
                    ..
                } => {
                    for (t, c) in task_ids.iter().zip(cve_ids) {
                        println!("{t}  {c}");
                    }
                    println!("Queued {} {priority}-priority CVEs.", task_ids.len());
                }
            }
        }
        return Ok(match outcome {
            BatchOutcome::Skipped { .. } => ExitCode::FAILURE,
            BatchOutcome::Queued { .. } => ExitCode::SUCCESS,
        });
    }

    let rows = match enrich::claim_batch(store.as_ref(), &enricher, &claim).await? {
        Ok(rows) => rows,
        Err(reason) => {
            if args.json {
                println!("{}", json!({"skipped": true, "reason": reason}));
            } else {
                eprintln!("Skipped: {reason}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let summary = run_now(&store, &enricher, rows, !args.json).await;
    if args.json {
        println!("{}", summary.to_json());
    } else {
        summary.print();
    }
    Ok(if summary.errors.is_empty() && summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Totals of an in-process batch.
#[derive(Debug, Default)]
struct Summary {
    processed: u64,
    failed: u64,
    skipped: u64,
    parked: u64,
    completion_tokens: u64,
    elapsed: Duration,
    /// LLM or database errors (CVE left unprocessed, claim released).
    errors: Vec<String>,
}

impl Summary {
    fn tokens_per_second(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.completion_tokens as f64 / s
        } else {
            0.0
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "processed": self.processed,
            "failed": self.failed,
            "skipped": self.skipped,
            "parked": self.parked,
            "errors": self.errors,
            "completion_tokens": self.completion_tokens,
            "seconds": self.elapsed.as_secs_f64(),
            "tokens_per_second": self.tokens_per_second(),
        })
    }

    fn print(&self) {
        println!(
            "processed {}, failed {}, skipped {}, parked {}, errors {}; {} tokens in {:.1}s ({:.1} tokens/s)",
            self.processed,
            self.failed,
            self.skipped,
            self.parked,
            self.errors.len(),
            self.completion_tokens,
            self.elapsed.as_secs_f64(),
            self.tokens_per_second()
        );
        for e in self.errors.iter().take(5) {
            println!("  error: {e}");
        }
    }
}

/// Enriches the claimed rows concurrently; the enricher's semaphore bounds
/// the calls in flight, so spawning them all is safe.
async fn run_now(
    store: &Arc<dyn Store>,
    enricher: &Arc<Enricher>,
    rows: Vec<openthreat_store::VulnerabilityRow>,
    show_progress: bool,
) -> Summary {
    let bar = if show_progress {
        ProgressBar::with_draw_target(Some(rows.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("enriching");
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for row in rows {
        let (store, enricher) = (store.clone(), enricher.clone());
        set.spawn(async move {
            let id = enrich::parse_id(&row.cve_id)?;
            enrich::process_one(store.as_ref(), &enricher, &id, row.llm_claimed_until).await
        });
    }
    let mut s = Summary::default();
    while let Some(joined) = set.join_next().await {
        bar.inc(1);
        match joined {
            Ok(Ok(Outcome::Processed { stats, .. })) => {
                s.processed += 1;
                s.completion_tokens += stats.completion_tokens;
            }
            Ok(Ok(Outcome::Skipped { .. })) => s.skipped += 1,
            Ok(Ok(Outcome::Failed { parked, .. })) => {
                s.failed += 1;
                if parked {
                    s.parked += 1;
                }
            }
            Ok(Err(e)) => s.errors.push(e.to_string()),
            Err(e) => s.errors.push(format!("task panicked: {e}")),
        }
    }
    s.elapsed = started.elapsed();
    bar.finish_and_clear();
    s
}

fn print_outcome(o: &Outcome) {
    match o {
        Outcome::Processed {
            cve_id,
            simple_title,
            model,
            stats,
        } => println!(
            "{cve_id}: {simple_title} ({model}, {} tokens, {:.1}s)",
            stats.completion_tokens,
            stats.elapsed.as_secs_f64()
        ),
        Outcome::Skipped { cve_id, reason } => println!("{cve_id}: skipped, {reason}"),
        Outcome::Failed {
            cve_id,
            attempts,
            parked,
            error,
        } => println!(
            "{cve_id}: answer rejected (attempt {attempts}{}): {error}",
            if *parked { ", now parked" } else { "" }
        ),
    }
}

fn print_stats(stats: &Value, as_json: bool) {
    if as_json {
        println!("{stats}");
        return;
    }
    for key in [
        "total",
        "processed",
        "pending",
        "high_priority_pending",
        "completion_percentage",
        "failed",
        "parked",
        "claimed",
    ] {
        println!("{key:<22} {}", stats[key]);
    }
}
