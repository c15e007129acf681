//! `openthreat purge`: deletes waiting messages, like `celery purge`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use crate::config::Config;
use crate::runtime;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Queues to purge, comma-separated.
    #[arg(short = 'Q', long, value_delimiter = ',', default_value = "celery")]
    queues: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
    /// Also delete the dead letters (set-aside bad messages), which are kept otherwise.
    #[arg(long)]
    dead_letters: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let broker = runtime::open_broker(config).await?;
    let lengths = broker.queue_lengths(&args.queues).await?;
    let waiting: u64 = lengths.iter().map(|(_, n)| n).sum();
    if !args.force {
        let what = if args.dead_letters {
            " and all dead letters"
        } else {
            ""
        };
        eprint!(
            "Delete {waiting} waiting message(s) in {}{what}? This cannot be undone. [y/N] ",
            args.queues.join(", ")
        );
        std::io::stderr().flush()?;
        let stdin = std::io::stdin();
        if !stdin.is_terminal() && waiting > 0 {
            eprintln!();
        }
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("Nothing purged.");
            return Ok(ExitCode::FAILURE);
        }
    }
    for queue in &args.queues {
        let n = broker.purge(queue).await?;
        println!("purged {n} message(s) from {queue}");
    }
    if args.dead_letters {
        let n = broker.purge_dead_letters().await?;
        println!("purged {n} dead letter(s)");
    }
    Ok(ExitCode::SUCCESS)
}
