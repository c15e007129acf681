//! `openthreat queues`: how many messages wait in each queue, and the dead
//! letters (messages a worker set aside as undecodable, unknown or malformed)
//! with their reasons, so nothing refused is lost from sight.

use std::process::ExitCode;

use serde_json::json;

use crate::config::{redact_url, Config};
use crate::runtime;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Queues to report, comma-separated.
    #[arg(short = 'Q', long, value_delimiter = ',', default_value = "celery")]
    queues: Vec<String>,
    /// How many of the newest dead letters to show.
    #[arg(long, default_value_t = 10)]
    dead_letters: usize,
    /// Print the full envelope of each dead letter, not just its reason.
    #[arg(long)]
    payload: bool,
    /// Print JSON (for scripts and monitoring).
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let broker = runtime::open_broker(config).await?;
    let lengths = broker.queue_lengths(&args.queues).await?;
    let dead = broker.dead_letters(args.dead_letters).await?;
    if args.json {
        let out = json!({
            "broker": redact_url(&config.broker_url),
            "queues": lengths.iter().map(|(q, n)| json!({"queue": q, "waiting": n})).collect::<Vec<_>>(),
            "dead_letters": dead,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("broker {}", redact_url(&config.broker_url));
    for (queue, waiting) in &lengths {
        println!("  {queue:<20} {waiting} waiting");
    }
    if dead.is_empty() {
        println!("no dead letters");
    } else {
        println!("newest {} dead letter(s):", dead.len());
        for d in &dead {
            println!(
                "  {} [{}] {}",
                d.at.format("%Y-%m-%d %H:%M:%S UTC"),
                d.queue,
                d.reason
            );
            if args.payload {
                println!("    {}", d.payload);
            }
        }
        println!("(`openthreat purge --dead-letters` deletes them)");
    }
    Ok(ExitCode::SUCCESS)
}
