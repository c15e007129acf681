//! OpenThreat, the application: configuration, the command line, and (as the
//! issues land) the tasks, the HTTP API and the web pages.
//!
//! The binary in `main.rs` is one line; everything testable lives here.
//!
//! # Layout
//! * [`config`]: configuration from the environment and `.env`, with secrets redacted.
//! * [`cli`]: the clap command tree, one file per subcommand.
//! * [`doctor`]: the health checks behind `openthreat doctor` (and later `/health`).

pub mod cli;
pub mod config;
pub mod doctor;
