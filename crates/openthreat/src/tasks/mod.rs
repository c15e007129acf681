//! The application's tasks, one per file, registered under the original
//! OpenThreat's Celery names so its Python producers work unchanged.
//!
//! Tasks are thin: each calls a service (the store, the ingestion service)
//! and returns a JSON-friendly summary. They share one [`AppContext`].

use std::sync::Arc;

use openthreat_llm::{Enricher, LlmConfig, LlmError, LlmObserver};
use openthreat_queue::worker::WorkerBuilder;
use openthreat_queue::{Broker, Producer, ResultBackend, Worker};
use openthreat_store::Store;

use crate::config::Config;

pub mod clean_cache;
pub mod get_llm_stats;
pub mod process_cve_with_llm;
pub mod process_llm_queue;
pub mod process_new_cves;
pub mod test_task;
pub mod update_stats_cache;
pub mod update_vulnerabilities;

pub use clean_cache::CleanCache;
pub use get_llm_stats::GetLlmStats;
pub use process_cve_with_llm::ProcessCveWithLlm;
pub use process_llm_queue::ProcessLlmQueue;
pub use process_new_cves::ProcessNewCves;
pub use test_task::TestTask;
pub use update_stats_cache::UpdateStatsCache;
pub use update_vulnerabilities::UpdateVulnerabilities;

/// What every task gets: the store, the configuration, the LLM and a producer.
#[derive(Debug, Clone)]
pub struct AppContext {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// One per process and shared, because its semaphore is what bounds LLM
    /// calls (`OPENTHREAT_LLM_CONCURRENCY`) independently of worker slots.
    pub enricher: Arc<Enricher>,
    /// Batch tasks queue one task per CVE through it.
    pub producer: Producer,
}

impl AppContext {
    /// Builds the context; a bad LLM configuration (unknown provider,
    /// malformed URL) is an error here, at start-up, rather than a failure
    /// of every LLM task later.
    pub fn new(
        store: Arc<dyn Store>,
        config: &Config,
        producer: Producer,
    ) -> Result<Self, LlmError> {
        Self::build(store, config, producer, None)
    }

    /// [`AppContext::new`], with the enricher reporting every LLM call and
    /// failure to `observer` (the process's metrics in `openthreat run`).
    pub fn with_llm_observer(
        store: Arc<dyn Store>,
        config: &Config,
        producer: Producer,
        observer: Arc<dyn LlmObserver>,
    ) -> Result<Self, LlmError> {
        Self::build(store, config, producer, Some(observer))
    }

    fn build(
        store: Arc<dyn Store>,
        config: &Config,
        producer: Producer,
        observer: Option<Arc<dyn LlmObserver>>,
    ) -> Result<Self, LlmError> {
        let llm = LlmConfig::from_env_map(&config.env)?;
        let mut enricher = Enricher::from_config(&llm)?;
        if let Some(o) = observer {
            enricher = enricher.with_observer(o);
        }
        Ok(AppContext {
            store,
            config: Arc::new(config.clone()),
            enricher: Arc::new(enricher),
            producer,
        })
    }
}

/// The worker `openthreat worker` and `openthreat run` build: every task
/// registered, over `broker` and `backend`, with
/// [`default_worker_concurrency`]. Benchmarks and tests use it too, so they
/// measure the defaults an operator gets; `-c` overrides the concurrency.
pub fn worker_builder(
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    ctx: AppContext,
) -> WorkerBuilder<AppContext> {
    let llm_slots = ctx.enricher.concurrency();
    register_all(Worker::builder(broker, backend, ctx))
        .concurrency(default_worker_concurrency(llm_slots))
}

/// Task slots of a worker: one per CPU, plus one per LLM call allowed in
/// flight (`OPENTHREAT_LLM_CONCURRENCY`).
///
/// An LLM task holds its worker slot for the whole generation while using
/// no CPU. With one slot per CPU only, a 2-core machine could never have
/// more than 2 calls in flight, however many parallel slots the LLM server
/// has; and a worker whose slots are all generating runs nothing else.
/// Adding the LLM's slots lets the LLM be kept full while the CPU slots
/// remain for stores, results and the other tasks. Slots are tokio tasks,
/// so the extra ones cost nothing while idle.
pub fn default_worker_concurrency(llm_concurrency: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
    cpus + llm_concurrency
}

/// Registers every task this binary defines on a worker.
pub fn register_all(builder: WorkerBuilder<AppContext>) -> WorkerBuilder<AppContext> {
    builder
        .register::<TestTask>()
        .register::<UpdateStatsCache>()
        .register::<CleanCache>()
        .register::<UpdateVulnerabilities>()
        // Registering the LLM tasks is what switches their default beat entries on.
        .register::<ProcessCveWithLlm>()
        .register::<ProcessLlmQueue>()
        .register::<ProcessNewCves>()
        .register::<GetLlmStats>()
}

/// The names of every task this binary defines (for beat validation and `call`).
pub fn task_names() -> Vec<&'static str> {
    use openthreat_queue::Task;
    vec![
        TestTask::NAME,
        UpdateStatsCache::NAME,
        CleanCache::NAME,
        UpdateVulnerabilities::NAME,
        ProcessCveWithLlm::NAME,
        ProcessLlmQueue::NAME,
        ProcessNewCves::NAME,
        GetLlmStats::NAME,
    ]
}
