//! The application's tasks, one per file, registered under the original
//! OpenThreat's Celery names so its Python producers work unchanged.
//!
//! Tasks are thin: each calls a service (the store, the ingestion service)
//! and returns a JSON-friendly summary. They share one [`AppContext`].

use std::sync::Arc;

use openthreat_queue::worker::WorkerBuilder;
use openthreat_store::Store;

use crate::config::Config;

pub mod clean_cache;
pub mod test_task;
pub mod update_stats_cache;
pub mod update_vulnerabilities;

pub use clean_cache::CleanCache;
pub use test_task::TestTask;
pub use update_stats_cache::UpdateStatsCache;
pub use update_vulnerabilities::UpdateVulnerabilities;

/// What every task gets: the store and the configuration.
#[derive(Debug, Clone)]
pub struct AppContext {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
}

/// Registers every task this binary defines on a worker.
pub fn register_all(builder: WorkerBuilder<AppContext>) -> WorkerBuilder<AppContext> {
    builder
        .register::<TestTask>()
        .register::<UpdateStatsCache>()
        .register::<CleanCache>()
        .register::<UpdateVulnerabilities>()
}

/// The names of every task this binary defines (for beat validation and `call`).
pub fn task_names() -> Vec<&'static str> {
    use openthreat_queue::Task;
    vec![
        TestTask::NAME,
        UpdateStatsCache::NAME,
        CleanCache::NAME,
        UpdateVulnerabilities::NAME,
    ]
}
