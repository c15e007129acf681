//! `openthreat events`: Celery's `celery events`, over any stream of event dicts.
//!
//! [`run`] subscribes to the `celeryev` fanout of the configured broker (Redis
//! or the embedded SQLite file, so a worker in another terminal is seen);
//! [`run_view`] only consumes a stream, so it runs the same in tests with a
//! vector of events.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::monitor::state::{unix_now, ClusterState, StateConfig};
use crate::monitor::view::{render, Dumper};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one line per event, like `celery events --dump`, instead of the live view.
    #[arg(long)]
    dump: bool,
}

/// `openthreat events`: until Ctrl-C.
pub async fn run(config: &crate::config::Config, args: Args) -> anyhow::Result<ExitCode> {
    let fanout = crate::runtime::open_fanout(config).await?;
    let receiver = openthreat_queue::control::EventReceiver::connect(fanout.as_ref()).await?;
    let view = run_view(receiver.into_stream(), args.dump, std::io::stdout());
    tokio::select! {
        r = view => r?,
        _ = crate::runtime::shutdown_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// How often the live view is redrawn.
const REDRAW: Duration = Duration::from_secs(1);
/// Terminal size when `COLUMNS`/`LINES` are not set.
const DEFAULT_SIZE: (usize, usize) = (120, 40);

/// The terminal's size from `COLUMNS` and `LINES` (shells export them), else 120×40.
fn terminal_size() -> (usize, usize) {
    let get = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    (get("COLUMNS", DEFAULT_SIZE.0), get("LINES", DEFAULT_SIZE.1))
}

/// Shows events until the stream ends: with `dump`, one line per event as
/// `celery events --dump` prints them; else the live view, redrawn every
/// second and once more at the end. Write errors (a closed pipe) end it.
pub async fn run_view<S, W>(mut events: S, dump: bool, mut out: W) -> std::io::Result<()>
where
    S: Stream<Item = Value> + Unpin,
    W: Write,
{
    if dump {
        let mut dumper = Dumper::new();
        writeln!(out, "-> evdump: starting capture...")?;
        while let Some(event) = events.next().await {
            writeln!(out, "{}", dumper.line(&event))?;
            out.flush()?;
        }
        return Ok(());
    }
    let mut state = ClusterState::new(StateConfig::default());
    let mut redraw = tokio::time::interval(REDRAW);
    redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let draw = |state: &ClusterState, out: &mut W| -> std::io::Result<()> {
        let (width, height) = terminal_size();
        let snapshot = state.snapshot(unix_now(), height);
        // Home and clear, then the frame: no terminal library needed.
        write!(out, "\x1b[H\x1b[2J{}", render(&snapshot, width, height))?;
        out.flush()
    };
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => {
                    state.apply(&event);
                }
                None => break,
            },
            _ = redraw.tick() => draw(&state, &mut out)?,
        }
    }
    draw(&state, &mut out)
}
