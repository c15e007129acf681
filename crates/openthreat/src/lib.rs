//! OpenThreat, the application: configuration, the command line, and (as the
//! issues land) the tasks, the HTTP API and the web pages.
//!
//! The binary in `main.rs` is one line; everything testable lives here.
//!
//! # Layout
//! * [`api`]: the HTTP API (axum router, OpenAPI, Swagger UI, `/health`, `/metrics`).
//! * [`config`]: configuration from the environment and `.env`, with secrets redacted.
//! * [`cli`]: the clap command tree, one file per subcommand.
//! * [`doctor`]: the health checks behind `openthreat doctor` (and later `/health`).
//! * [`ingest`]: the ingestion service (NVD API sync, NVD feed files, KEV, EPSS),
//!   shared by `openthreat ingest` and `update_vulnerabilities_task`.
//! * [`monitor`]: cluster state, `celery_*` metrics and failure alerts from
//!   Celery events, and the `openthreat events` view.
//! * [`runtime`]: opening the store, broker and result backend; shutdown signals.
//! * [`schedule`]: the beat's entries, store and publisher.
//! * [`tasks`]: the Celery tasks, one per file, and their shared [`tasks::AppContext`].
//! * [`stats`]: statistics through the stats cache (shared by the task, API and CLI).

/// mimalloc instead of the C library's allocator, for every program that
/// links this crate (the binary, its tests and benchmarks, so what is
/// measured is what ships). Parsing allocates millions of small strings on
/// one thread that are freed on another; see README, Performance.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod enrich;
pub mod ingest;
pub mod monitor;
pub mod runtime;
pub mod schedule;
pub mod stats;
pub mod tasks;
