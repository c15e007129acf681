//! `openthreat inspect` and `openthreat control`: Celery's remote control,
//! answered by our workers and by Python Celery workers alike.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use openthreat_queue::control::{Broadcast, Fanout, Mailbox};
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::runtime;

/// What to ask the workers.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Method {
    /// Tasks running now.
    Active,
    /// Tasks received and waiting for a slot.
    Reserved,
    /// Tasks waiting for their ETA.
    Scheduled,
    /// Task names the worker can run.
    Registered,
    /// Counters, pool, broker and resource usage.
    Stats,
    /// Is anybody there?
    Ping,
    /// Ids revoked on the worker.
    Revoked,
    /// Queues the worker consumes.
    ActiveQueues,
    /// The worker's settings.
    Conf,
    /// Software and platform report.
    Report,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Active => "active",
            Method::Reserved => "reserved",
            Method::Scheduled => "scheduled",
            Method::Registered => "registered",
            Method::Stats => "stats",
            Method::Ping => "ping",
            Method::Revoked => "revoked",
            Method::ActiveQueues => "active_queues",
            Method::Conf => "conf",
            Method::Report => "report",
        }
    }
}

/// Options every remote-control command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Only these workers (comma-separated node names, e.g. celery@host1).
    // Global: accepted before or after a control subcommand.
    #[arg(short = 'd', long, value_delimiter = ',', global = true)]
    destination: Vec<String>,
    /// Seconds to wait for replies.
    #[arg(short = 't', long, default_value_t = 1.0, global = true)]
    timeout: f64,
    /// Print the replies as one JSON object keyed by worker.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// What to ask.
    #[arg(value_enum)]
    method: Method,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    #[command(subcommand)]
    command: ControlCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, clap::Subcommand)]
#[command(rename_all = "snake_case")]
enum ControlCommand {
    /// Revoke tasks: they will not run; with --terminate, running ones are aborted.
    Revoke {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Also abort the task if it is running.
        #[arg(long)]
        terminate: bool,
    },
    /// Set a task's rate limit (e.g. 10/m, 2/s, 100/h; 0 removes it).
    RateLimit { task: String, rate: String },
    /// Set a task's soft and hard time limits in seconds.
    TimeLimit { task: String, soft: f64, hard: f64 },
    /// Add N execution slots.
    PoolGrow {
        #[arg(default_value_t = 1)]
        n: u32,
    },
    /// Remove N execution slots (as running tasks finish).
    PoolShrink {
        #[arg(default_value_t = 1)]
        n: u32,
    },
    /// Start consuming a queue.
    AddConsumer { queue: String },
    /// Stop consuming a queue.
    CancelConsumer { queue: String },
    /// Turn task events on.
    EnableEvents,
    /// Turn task events off.
    DisableEvents,
    /// Warm shutdown of the worker(s).
    Shutdown,
}

impl ControlCommand {
    fn request(&self) -> (&'static str, Map<String, Value>, bool) {
        let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
        match self {
            ControlCommand::Revoke { ids, terminate } => (
                "revoke",
                obj(json!({"task_id": ids, "terminate": terminate, "signal": "SIGTERM"})),
                true,
            ),
            ControlCommand::RateLimit { task, rate } => (
                "rate_limit",
                obj(json!({"task_name": task, "rate_limit": rate})),
                true,
            ),
            ControlCommand::TimeLimit { task, soft, hard } => (
                "time_limit",
                obj(json!({"task_name": task, "soft": soft, "hard": hard})),
                true,
            ),
            ControlCommand::PoolGrow { n } => ("pool_grow", obj(json!({ "n": n })), true),
            ControlCommand::PoolShrink { n } => ("pool_shrink", obj(json!({ "n": n })), true),
            ControlCommand::AddConsumer { queue } => {
                ("add_consumer", obj(json!({ "queue": queue })), true)
            }
            ControlCommand::CancelConsumer { queue } => {
                ("cancel_consumer", obj(json!({ "queue": queue })), true)
            }
            ControlCommand::EnableEvents => ("enable_events", Map::new(), true),
            ControlCommand::DisableEvents => ("disable_events", Map::new(), true),
            // Celery's workers do not answer a shutdown.
            ControlCommand::Shutdown => ("shutdown", Map::new(), false),
        }
    }
}

async fn ask(
    fanout: Arc<dyn Fanout>,
    method: &str,
    arguments: Map<String, Value>,
    reply: bool,
    target: &Target,
) -> anyhow::Result<Vec<(String, Value)>> {
    anyhow::ensure!(
        target.timeout.is_finite() && target.timeout > 0.0 && target.timeout <= 600.0,
        "--timeout must be between 0 and 600 seconds"
    );
    let mut b = Broadcast::new(method);
    b.arguments = arguments;
    b.reply = reply;
    b.timeout = Duration::from_secs_f64(target.timeout);
    b.destination = (!target.destination.is_empty()).then(|| target.destination.clone());
    Ok(Mailbox::new(fanout).broadcast(&b).await?)
}

/// Prints replies like `celery inspect` does, or as JSON.
fn print(replies: &[(String, Value)], json_out: bool) -> ExitCode {
    if json_out {
        let obj: Map<String, Value> = replies.iter().cloned().collect();
        println!("{}", Value::Object(obj));
        return if replies.is_empty() {
            ExitCode::from(69)
        } else {
            ExitCode::SUCCESS
        };
    }
    if replies.is_empty() {
        eprintln!("Error: No nodes replied within time constraint.");
        // EX_UNAVAILABLE, as `celery inspect` exits.
        return ExitCode::from(69);
    }
    for (node, reply) in replies {
        let status = if reply.get("error").is_some() {
            "ERROR"
        } else {
            "OK"
        };
        println!("->  {node}: {status}");
        for line in pretty(reply) {
            println!("    {line}");
        }
    }
    println!();
    let n = replies.len();
    println!("{n} node{} online.", if n == 1 { "" } else { "s" });
    ExitCode::SUCCESS
}

fn pretty(reply: &Value) -> Vec<String> {
    match reply {
        Value::Object(m) if m.len() == 1 && (m.contains_key("ok") || m.contains_key("error")) => {
            let v = m.values().next().cloned().unwrap_or(Value::Null);
            vec![v
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())]
        }
        Value::Array(a) if a.is_empty() => vec!["- empty -".into()],
        Value::Array(a) => a
            .iter()
            .map(|item| match item {
                Value::String(s) => format!("* {s}"),
                Value::Object(o) if o.contains_key("id") && o.contains_key("name") => format!(
                    "* {} {} args={} kwargs={}",
                    o["id"].as_str().unwrap_or(""),
                    o["name"].as_str().unwrap_or(""),
                    o.get("args").cloned().unwrap_or(Value::Null),
                    o.get("kwargs").cloned().unwrap_or(Value::Null),
                ),
                Value::Object(o) if o.contains_key("request") => format!(
                    "* eta={} {}",
                    o.get("eta").and_then(Value::as_str).unwrap_or("?"),
                    o["request"]["name"].as_str().unwrap_or(""),
                ),
                Value::Object(o) if o.contains_key("name") => {
                    format!("* {}", o["name"].as_str().unwrap_or(""))
                }
                other => format!("* {other}"),
            })
            .collect(),
        other => serde_json::to_string_pretty(other)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect(),
    }
}

/// `openthreat inspect …`.
pub async fn inspect(config: &Config, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let fanout = runtime::open_fanout(config).await?;
    let replies = ask(fanout, args.method.name(), Map::new(), true, &args.target).await?;
    Ok(print(&replies, args.target.json))
}

/// `openthreat control …`.
pub async fn control(config: &Config, args: ControlArgs) -> anyhow::Result<ExitCode> {
    let fanout = runtime::open_fanout(config).await?;
    let (method, arguments, reply) = args.command.request();
    let replies = ask(fanout, method, arguments, reply, &args.target).await?;
    if !reply {
        println!("{method} sent");
        return Ok(ExitCode::SUCCESS);
    }
    let code = print(&replies, args.target.json);
    let failed = replies.iter().any(|(_, r)| r.get("error").is_some());
    Ok(if failed { ExitCode::FAILURE } else { code })
}
