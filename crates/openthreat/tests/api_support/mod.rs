//! Test support for the HTTP API tests: the real NVD records of
//! `../shared/data/nvd/cve/` parsed by the feeds crate, stores (SQLite in a
//! temporary file; PostgreSQL in a throwaway database) seeded with them, and
//! an in-memory [`TaskGateway`] that records what it was asked to send.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use openthreat::api::tasks::{
    GatewayError, ScheduledEntry, TaskGateway, TaskRequest, TaskState, TaskStatus, WorkerInfo,
};
use openthreat_core::{Cve, CveId, Enrichment};
use openthreat_feeds::nvd::map::map_cve;
use openthreat_feeds::nvd::model::NvdCve;
use openthreat_store::{RunOutcome, Store};

use crate::support::PgDatabase;

/// The shared fixture folder.
pub const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");

/// Every record of `nvd/cve/`, as the feeds crate maps them, sorted by id.
pub fn fixture_cves() -> Vec<Cve> {
    let dir = format!("{DATA}/nvd/cve");
    let mut cves: Vec<Cve> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let nvd: NvdCve = serde_json::from_slice(&std::fs::read(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            map_cve(nvd).unwrap_or_else(|e| panic!("{}: {e:?}", p.display()))
        })
        .collect();
    cves.sort_by(|a, b| a.cve_id.cmp(&b.cve_id));
    cves
}

/// An enrichment as the LLM task would save it.
pub fn enrichment(title: &str, description: &str, now: DateTime<Utc>) -> Enrichment {
    Enrichment {
        simple_title: title.into(),
        simple_description: description.into(),
        recommended_action: Some("Patch now.".into()),
        model: "llama3.2:3b".into(),
        processed_at: now,
        input_hash: "test".into(),
    }
}

/// Migrates `store` and fills it with `cves`, one LLM enrichment
/// (CVE-2024-3400) and one finished NVD ingestion run.
pub async fn seed(store: &dyn Store, cves: &[Cve]) {
    let now = Utc::now();
    store.migrate().await.unwrap();
    let summary = store.upsert_cves(cves, now).await.unwrap();
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    store
        .save_enrichment(
            &CveId::parse("CVE-2024-3400").unwrap(),
            &enrichment(
                "Palo Alto firewall command injection",
                "Attackers can run commands on some Palo Alto firewalls. Patch now.",
                now,
            ),
        )
        .await
        .unwrap();
    let run = store
        .start_ingestion_run("nvd", now - Duration::hours(2))
        .await
        .unwrap();
    store
        .finish_ingestion_run(
            run,
            &RunOutcome {
                success: true,
                records_fetched: 22,
                records_inserted: 22,
                records_updated: 0,
                records_failed: 0,
                error: None,
            },
            now - Duration::hours(2) + Duration::seconds(90),
        )
        .await
        .unwrap();
}

/// A store under test, with what keeps it alive (temp dir or PG database).
pub struct Backend {
    pub name: &'static str,
    pub store: Arc<dyn Store>,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

/// An empty SQLite store in a temporary file.
pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("api.db").display());
    let store = openthreat_store::connect(&url).await.unwrap();
    Backend {
        name: "sqlite",
        store,
        url,
        _dir: Some(dir),
        _pg: None,
    }
}

/// An empty PostgreSQL store in a throwaway database, or `None` (skipped
/// outside CI, a failure in CI) when PostgreSQL is unreachable.
pub async fn postgres() -> Option<Backend> {
    let db = PgDatabase::create()?;
    let store = openthreat_store::connect(&db.url).await.unwrap();
    Some(Backend {
        name: "postgres",
        store,
        url: db.url.clone(),
        _dir: None,
        _pg: Some(db),
    })
}

/// SQLite, and PostgreSQL when reachable, both seeded with the fixtures.
pub async fn seeded_backends() -> Vec<Backend> {
    let mut all = vec![sqlite().await];
    if let Some(pg) = postgres().await {
        all.push(pg);
    }
    let cves = fixture_cves();
    for b in &all {
        seed(b.store.as_ref(), &cves).await;
    }
    all
}

/// A task gateway that records what it is sent and answers from a table.
/// It stands in for the queue crate's producer and result backend in tests.
#[derive(Debug, Default)]
pub struct RecordingGateway {
    pub sent: Mutex<Vec<(String, TaskRequest)>>,
    pub states: Mutex<HashMap<String, TaskStatus>>,
    pub workers: Vec<WorkerInfo>,
    pub schedule: Vec<ScheduledEntry>,
}

#[async_trait::async_trait]
impl TaskGateway for RecordingGateway {
    async fn send(&self, task: TaskRequest) -> Result<String, GatewayError> {
        let mut sent = self.sent.lock().unwrap();
        let id = format!("00000000-0000-4000-8000-{:012}", sent.len() + 1);
        sent.push((id.clone(), task));
        Ok(id)
    }
    async fn status(&self, task_id: &str) -> Result<TaskStatus, GatewayError> {
        Ok(self
            .states
            .lock()
            .unwrap()
            .get(task_id)
            .cloned()
            .unwrap_or(TaskStatus {
                state: TaskState::Pending,
                result: None,
                error: None,
            }))
    }
    async fn workers(&self) -> Result<Vec<WorkerInfo>, GatewayError> {
        Ok(self.workers.clone())
    }
    async fn scheduled(&self) -> Result<Vec<ScheduledEntry>, GatewayError> {
        Ok(self.schedule.clone())
    }
    async fn queue_lengths(&self) -> Result<Vec<(String, u64)>, GatewayError> {
        Ok(vec![(
            "celery".into(),
            self.sent.lock().unwrap().len() as u64,
        )])
    }
}
