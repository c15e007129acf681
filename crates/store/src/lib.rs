//! OpenThreat's storage: one [`Store`] trait, two implementations.
//!
//! Everything the service remembers — CVEs with their KEV, EPSS and LLM
//! fields, ingestion runs, sync cursors, caches — goes through [`Store`], used
//! as `Arc<dyn Store>`. PostgreSQL serves production deployments; SQLite is
//! the embedded default that needs no service. The URL scheme picks one
//! ([`connect`]). Both must behave identically, which the contract suite in
//! `tests/contract.rs` checks by running every test against both.
//!
//! Queries are checked at run time (`sqlx::query`), so building needs no
//! database. Values are always bound as parameters; the only SQL text chosen
//! at run time is a sort column, and that comes from a whitelist
//! ([`SortField`]).
//!
//! # Layout
//! * `lib.rs`: the [`Store`] trait and [`connect`].
//! * [`models`]: rows and results ([`VulnerabilityRow`], [`Page`],
//!   [`UpsertSummary`], [`Stats`], ...), shaped like the API's JSON.
//! * [`query`]: [`ListQuery`], the filters and the sort whitelist.
//! * `plan`: backend-independent upsert planning (newer-wins, unchanged
//!   detection, KEV/EPSS merge, priority via `openthreat-core`).
//! * `postgres` / `sqlite`: the two implementations. Each has its own
//!   migrations under `migrations/<backend>/`, embedded in the binary.
//! * [`error`]: [`StoreError`] and URL redaction.
//! * `totals`: a few seconds' cache of listing totals (counting is the
//!   expensive part of a page).
//!
//! # Storage decisions
//! * List columns (CWE ids, vendors, products, references, ...) are JSON:
//!   `JSONB` with GIN indexes on PostgreSQL; JSON text on SQLite, where the
//!   vendor/product/CWE filters use an indexed side table
//!   (`vulnerability_terms`) kept in step by the upsert.
//! * Vendor and product names are stored lower case and CWE ids upper case,
//!   so their filters are case-insensitive and still use the indexes.
//! * SQLite keeps timestamps as fixed-width RFC 3339 text in UTC
//!   (`2024-04-12T08:15:06.123456Z`), which sorts and compares correctly.
//! * `updated_at` changes only when the source facts of a CVE change (an
//!   import, KEV or EPSS), not on LLM enrichment or priority decay.
//! * Full-text search (`ListQuery::q`, [`Store::index_search`]): a
//!   contentless FTS5 table on SQLite, a `tsvector` side table with a GIN
//!   index on PostgreSQL. Neither is maintained inside the upsert, which
//!   only notes what changed (nothing at all for new rows on SQLite, whose
//!   ids only grow); the index catches up in one statement per ingestion
//!   run, so imports stay fast and a search still sees every write.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use openthreat_core::{Cve, CveId, Enrichment, Epss, KevFacts, Priority};

/// sqlx logs statements slower than this, at [`SLOW_STATEMENT_LEVEL`].
pub(crate) const SLOW_STATEMENT: std::time::Duration = std::time::Duration::from_secs(1);

/// Info, not sqlx's default warn: a first import's bulk statements (index
/// builds, search indexing) take seconds by design, and `openthreat ingest`
/// printed each of them, SQL and all, as a warning. `RUST_LOG=sqlx=info`
/// shows them.
pub(crate) const SLOW_STATEMENT_LEVEL: log::LevelFilter = log::LevelFilter::Info;

mod bulk;
pub mod error;
pub mod fresh;
pub mod models;
mod plan;
mod postgres;
pub mod query;
mod sqlite;
mod totals;

pub use error::{redact_url, Result, StoreError};
pub use models::{
    ApplySummary, Backend, CacheEntry, ClaimOne, DayCount, IngestionRun, LlmClaim, LlmStats, Page,
    RunOutcome, RunStatus, SeverityCount, SeverityDistribution, Stats, Suggestion, UpsertSummary,
    VendorCount, VulnerabilityRow,
};
pub use postgres::PgStore;
pub use query::{
    ListQuery, SortField, SortFieldParseError, SortOrder, SortOrderParseError, MAX_PAGE_SIZE,
};
pub use sqlite::SqliteStore;

/// Failed LLM attempts after which a CVE is parked: a CVE the model cannot
/// explain (e.g. its output keeps failing validation) would otherwise be
/// retried by every scheduled batch for ever, spending model time.
pub const LLM_MAX_ATTEMPTS: i32 = 3;

/// Opens the database named by `url` and returns it as a [`Store`].
///
/// `sqlite:path`, `sqlite://path` and `sqlite::memory:` open SQLite (the file
/// and its parent directory are created when missing); `postgres://` and
/// `postgresql://` open PostgreSQL. A bad URL or an unreachable database is
/// an error naming the problem, with any password redacted. Migrations are
/// not applied here: call [`Store::migrate`].
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    connect_with(url, None).await
}

/// The fewest connections a store's pool may have: some work holds one
/// connection (a lock) while it waits for another.
pub const MIN_POOL_SIZE: u32 = 2;

/// [`connect`] with at most `pool_size` connections to the database
/// (`None`: the backend's `DEFAULT_POOL_SIZE`, 8 for SQLite and 16 for
/// PostgreSQL; values below [`MIN_POOL_SIZE`] count as that). Many workers
/// sharing one PostgreSQL server need a smaller pool each, or they exhaust
/// its `max_connections` (100 by default).
pub async fn connect_with(url: &str, pool_size: Option<u32>) -> Result<Arc<dyn Store>> {
    let trimmed = url.trim();
    let scheme = trimmed.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    let pool_size = pool_size.map(|n| n.max(MIN_POOL_SIZE));
    match scheme.as_deref() {
        Some("sqlite") => Ok(Arc::new(
            SqliteStore::connect(trimmed, pool_size.unwrap_or(SqliteStore::DEFAULT_POOL_SIZE))
                .await?,
        )),
        Some("postgres" | "postgresql") => Ok(Arc::new(
            PgStore::connect(trimmed, pool_size.unwrap_or(PgStore::DEFAULT_POOL_SIZE)).await?,
        )),
        Some(other) => Err(StoreError::InvalidUrl {
            url: redact_url(trimmed),
            reason: format!(
                "unsupported scheme {other:?}: expected sqlite:, postgres:// or postgresql://"
            ),
        }),
        None => Err(StoreError::InvalidUrl {
            url: redact_url(trimmed),
            reason: "no scheme: expected sqlite:PATH, postgres://... or postgresql://...".into(),
        }),
    }
}

/// Batches of upserts in one transaction; see [`Store::begin_upserts`].
#[async_trait]
pub trait UpsertBatches: Send {
    /// [`Store::upsert_cves`] inside this transaction; a later batch sees
    /// what an earlier one wrote.
    async fn upsert_cves(&mut self, cves: &[Cve], now: DateTime<Utc>) -> Result<UpsertSummary>;

    /// Makes every batch visible at once.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// Everything OpenThreat stores, independent of the database.
///
/// Methods take `now` instead of reading the clock, so that priorities and
/// time windows are testable; callers pass `Utc::now()`.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// The most connections this store opens (`OPENTHREAT_DB_POOL_SIZE`),
    /// for `doctor` to show what an operator configured.
    fn pool_size(&self) -> u32;

    /// Applies the embedded migrations. Idempotent.
    async fn migrate(&self) -> Result<()>;

    /// A round trip to the database, for health checks.
    async fn ping(&self) -> Result<()>;

    /// Inserts or updates CVEs by `cve_id`, in one transaction.
    ///
    /// Re-importing identical records writes nothing (counted `unchanged`,
    /// `updated_at` untouched). A record older (by `modified_at`) than the
    /// stored one is ignored. LLM fields are always kept; when the
    /// description changes they are marked stale (`llm_processed = false`,
    /// old text kept until re-enriched). KEV facts already in the catalog
    /// (see [`Store::apply_kev`]) are applied, EPSS facts already stored are
    /// kept, and the priority is recomputed for every written row. Records
    /// the database cannot hold (e.g. a CVSS score of 42) are listed in
    /// `failed`; the rest of the batch is stored.
    async fn upsert_cves(&self, cves: &[Cve], now: DateTime<Utc>) -> Result<UpsertSummary> {
        if cves.is_empty() {
            return Ok(UpsertSummary::default());
        }
        let mut batches = self.begin_upserts().await?;
        let summary = batches.upsert_cves(cves, now).await?;
        batches.commit().await?;
        Ok(summary)
    }

    /// Opens one transaction for many [`Store::upsert_cves`] batches that
    /// must land together or not at all, such as every record of one
    /// imported file: a file found truncated half-way then leaves nothing
    /// behind without having been read twice. Readers see none of it before
    /// [`UpsertBatches::commit`]; dropping the value rolls it all back. On
    /// SQLite it holds the write lock until then, so other writers wait.
    async fn begin_upserts(&self) -> Result<Box<dyn UpsertBatches + '_>>;

    /// Like [`Store::upsert_cves`] for records still in their JSON form
    /// (a [`Cve`] serialised with serde): each record that does not parse —
    /// e.g. an invalid CVE id — is listed in `failed` with its id and the
    /// reason, and the rest of the batch is stored.
    async fn upsert_raw(
        &self,
        records: &[serde_json::Value],
        now: DateTime<Utc>,
    ) -> Result<UpsertSummary> {
        let mut parsed = Vec::with_capacity(records.len());
        let mut failed = Vec::new();
        for record in records {
            // `&Value` is itself a deserializer: no copy of the record.
            match <Cve as serde::Deserialize>::deserialize(record) {
                Ok(cve) => parsed.push(cve),
                Err(e) => {
                    let id = record
                        .get("cve_id")
                        .and_then(|v| v.as_str())
                        .unwrap_or("<missing cve_id>")
                        .to_string();
                    failed.push((id, e.to_string()));
                }
            }
        }
        let mut summary = self.upsert_cves(&parsed, now).await?;
        failed.append(&mut summary.failed);
        summary.failed = failed;
        Ok(summary)
    }

    /// Records CISA KEV facts in the catalog table (so CVEs imported later
    /// get them) and marks the stored CVEs exploited, recomputing their
    /// priority. Rows whose KEV facts are already these are left alone.
    async fn apply_kev(
        &self,
        entries: &[(CveId, KevFacts)],
        now: DateTime<Utc>,
    ) -> Result<ApplySummary>;

    /// Sets EPSS facts on stored CVEs and recomputes their priority. Scores
    /// for CVEs the store does not hold are counted `unknown` and dropped.
    async fn apply_epss(
        &self,
        scores: &[(CveId, Epss)],
        now: DateTime<Utc>,
    ) -> Result<ApplySummary>;

    /// Recomputes every priority score and class at `now` (recency decays
    /// with time). Returns the number of rows whose priority changed.
    async fn recompute_priorities(&self, now: DateTime<Utc>) -> Result<u64>;

    /// One CVE with every column, or `None`.
    async fn get_cve(&self, cve_id: &CveId) -> Result<Option<VulnerabilityRow>>;

    /// A filtered, sorted page of CVEs with the total count.
    ///
    /// Totals are cached for a few seconds (the rows never are): writes
    /// through this store show at once, writes by another process within
    /// 10 s (see `totals.rs`).
    ///
    /// With a `q`, the search index is brought up to date first when
    /// anything is pending (see [`Store::index_search`]), so a search always
    /// sees every committed write; that check is one cheap query.
    async fn list_cves(&self, query: &ListQuery) -> Result<Page<VulnerabilityRow>>;

    /// Brings the full-text search index up to date, in one transaction:
    /// indexes the CVEs stored since it last ran and re-indexes those whose
    /// text changed (a newer NVD record, an LLM result). Returns how many
    /// CVEs were (re)indexed.
    ///
    /// Writes do not index: that would put tokenising and index maintenance
    /// into every import batch. The ingestion service calls this at the end
    /// of each run and the enrichment service after each save; searches
    /// call it when something is pending. Idempotent and safe to run
    /// concurrently with writes and with itself.
    async fn index_search(&self) -> Result<u64>;

    /// Up to `limit` CVEs whose id or title starts with `prefix`
    /// (case-insensitive), ids first.
    async fn suggest(&self, prefix: &str, limit: u32) -> Result<Vec<Suggestion>>;

    /// The `/stats` numbers at `now`.
    async fn stats(&self, now: DateTime<Utc>) -> Result<Stats>;

    /// The vendors named by the most CVEs.
    async fn top_vendors(&self, limit: u32) -> Result<Vec<VendorCount>>;

    /// Count per severity, all six severities, most severe first.
    async fn severity_distribution(&self) -> Result<SeverityDistribution>;

    /// CVEs published per UTC day over the `days` days ending today
    /// (`now`'s date), oldest first, days without CVEs included as 0.
    async fn timeline(&self, days: u32, now: DateTime<Utc>) -> Result<Vec<DayCount>>;

    /// Prepares for loading many records into an (almost) empty store, such
    /// as a first import of NVD's yearly feeds: the store may put off index
    /// maintenance until [`Store::end_bulk_load`] (both stores drop their
    /// secondary indexes and build them once at the end, which is a sort
    /// instead of an insert per row into each). Returns whether it did.
    /// Meanwhile reads are slower, and on SQLite the vendor, product and
    /// CWE filters do not see the records loaded since the start; a load
    /// killed half-way is completed by the next [`Store::migrate`].
    async fn begin_bulk_load(&self) -> Result<bool> {
        Ok(false)
    }

    /// Ends what [`Store::begin_bulk_load`] began: rebuilds what it put off.
    async fn end_bulk_load(&self) -> Result<()> {
        Ok(())
    }

    /// A number that changes with every write of CVE data through this
    /// store (records, KEV, EPSS, priorities, LLM results and failures,
    /// search index), once the write is done, so that callers caching what
    /// they read (the API's response cache) know when their copy is stale.
    /// Bookkeeping (ingestion runs, sync state, caches) and writes by other
    /// processes do not change it.
    fn data_generation(&self) -> u64;

    /// Opens an ingestion run in state `running` and returns its id.
    async fn start_ingestion_run(&self, source: &str, now: DateTime<Utc>) -> Result<i64>;

    /// Closes a run with its counts; the duration is `now - started_at`.
    async fn finish_ingestion_run(
        &self,
        id: i64,
        outcome: &RunOutcome,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Notes that run `id` is still alive (see [`Store::close_silent_runs`]).
    /// A beat that would have to wait for another writer is skipped, not
    /// waited for (SQLite: an import holds the write lock for a whole file).
    async fn heartbeat_ingestion_run(&self, id: i64, now: DateTime<Utc>) -> Result<()>;

    /// Closes as failed every run still `running` whose last sign of life
    /// (heartbeat, or start when it never beat) is before `silent_since`:
    /// its process was killed or crashed and can no longer close it.
    /// Returns how many were closed.
    async fn close_silent_runs(
        &self,
        silent_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64>;

    /// The latest runs, newest first.
    async fn ingestion_runs(&self, limit: u32) -> Result<Vec<IngestionRun>>;

    /// A value of the key/value sync state (ingestion cursors and the like).
    async fn get_state(&self, key: &str) -> Result<Option<String>>;

    /// Sets a sync-state value, replacing any previous one.
    async fn set_state(&self, key: &str, value: &str, now: DateTime<Utc>) -> Result<()>;

    /// Stores a computed statistic under `key`.
    async fn put_stats_cache(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// A cached statistic, with the time it was computed.
    async fn get_stats_cache(&self, key: &str) -> Result<Option<CacheEntry>>;

    /// Stores a search result under `key`.
    async fn put_search_cache(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// A cached search result, with the time it was stored.
    async fn get_search_cache(&self, key: &str) -> Result<Option<CacheEntry>>;

    /// Deletes stats and search cache entries stored before `older_than`;
    /// returns how many were deleted.
    async fn clean_cache(&self, older_than: DateTime<Utc>) -> Result<u64>;

    /// Stores the LLM's text for a CVE and marks it processed. Also clears
    /// the claim, the last error and the attempt count: a success ends the
    /// CVE's failure history (if its description changes later, it starts
    /// again from zero attempts). [`StoreError::NotFound`] when the CVE is
    /// unknown.
    async fn save_enrichment(&self, cve_id: &CveId, enrichment: &Enrichment) -> Result<()>;

    /// Records a failed attempt (the model's output was bad): `llm_attempts`
    /// + 1, `llm_error` = `error`, claim cleared so the CVE can be retried
    /// later. Returns the new attempt count, so the caller knows whether the
    /// CVE is now parked (count >= [`LLM_MAX_ATTEMPTS`]). The CVE stays
    /// unprocessed. [`StoreError::NotFound`] when the CVE is unknown.
    ///
    /// Not for an unreachable LLM: that is no fault of the CVE, use
    /// [`Store::release_llm_claim`].
    async fn record_llm_failure(
        &self,
        cve_id: &CveId,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<i32>;

    /// Unprocessed, non-rejected CVEs for the LLM, highest score first,
    /// optionally of one priority class. A read only: nothing is claimed
    /// (use [`Store::claim_llm_batch`] to hand work out).
    async fn llm_candidates(
        &self,
        priority: Option<Priority>,
        limit: u32,
    ) -> Result<Vec<VulnerabilityRow>>;

    /// Atomically claims up to `claim.limit` eligible CVEs and returns them,
    /// highest `priority_score` first (then id), each with
    /// `llm_claimed_until = now + claim_for` (microseconds).
    ///
    /// Eligible: not processed, not Rejected, `llm_attempts <
    /// max_attempts`, not claimed or claim expired (`<= now`), of the
    /// priority class if one is given, `created_at >= created_after` if set.
    /// Two concurrent calls never return the same CVE, so overlapping batch
    /// tasks or workers never enqueue the same CVE twice; a claim expires so
    /// that a dead worker's CVEs are picked again.
    async fn claim_llm_batch(
        &self,
        claim: &LlmClaim,
        now: DateTime<Utc>,
    ) -> Result<Vec<VulnerabilityRow>>;

    /// Claims one CVE by id until `now + claim_for`.
    ///
    /// Succeeds when the CVE is unprocessed, has fewer than `max_attempts`
    /// failed attempts, and is unclaimed, its claim expired, or its claim
    /// ends exactly at `expected_claim`: the task that a batch queued passes
    /// the batch's `llm_claimed_until` there, so it takes over (renews) its
    /// own claim while a second task for the same CVE is refused. Rejected
    /// CVEs may be claimed by id (an explicit request). Otherwise the
    /// variant says why not; an unknown id is [`ClaimOne::NotFound`], not an
    /// error.
    async fn claim_llm_one(
        &self,
        cve_id: &CveId,
        expected_claim: Option<DateTime<Utc>>,
        claim_for: chrono::Duration,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> Result<ClaimOne>;

    /// Clears the claim without recording anything: the LLM was unreachable,
    /// which is no fault of the CVE, so it stays pending with its attempt
    /// count unchanged and the next batch picks it at once.
    /// [`StoreError::NotFound`] when the CVE is unknown.
    async fn release_llm_claim(&self, cve_id: &CveId) -> Result<()>;

    /// LLM progress at `now` (for `tasks.get_llm_stats` and `/llm/stats`),
    /// with parked meaning [`LLM_MAX_ATTEMPTS`] attempts or more.
    async fn llm_stats(&self, now: DateTime<Utc>) -> Result<LlmStats>;

    /// Parked CVEs (unprocessed, not Rejected, `llm_attempts >=
    /// max_attempts`) with their last error, most recently failed first, for
    /// the CLI: these need a person (a better model, a prompt fix), not
    /// another retry.
    async fn parked_llm(&self, max_attempts: i32, limit: u32) -> Result<Vec<VulnerabilityRow>>;
}

#[cfg(test)]
mod migration_tests {
    use sqlx::migrate::Migrator;

    /// sqlx stores each applied migration's checksum and refuses to start
    /// when the embedded file no longer matches, so a released migration
    /// must never change, not even a comment in it. `released.txt` holds
    /// their checksums; a new migration adds its line there.
    #[test]
    fn released_migrations_are_unchanged_and_each_is_recorded() {
        let released: Vec<(String, i64, String)> = include_str!("../migrations/released.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let mut f = l.split_whitespace();
                let mut next = || f.next().expect("backend version sha384").to_string();
                (next(), next().parse().expect("version"), next())
            })
            .collect();
        let embedded = |backend: &str, migrator: &Migrator| {
            migrator
                .iter()
                .map(|m| (backend.to_string(), m.version, hex::encode(&m.checksum)))
                .collect::<Vec<_>>()
        };
        let mut all = embedded("postgres", &crate::postgres::MIGRATOR);
        all.extend(embedded("sqlite", &crate::sqlite::MIGRATOR));
        for (backend, version, sum) in &released {
            let now = all.iter().find(|m| &m.0 == backend && m.1 == *version);
            match now {
                None => panic!("released {backend} migration {version} is gone"),
                Some(m) => assert_eq!(
                    &m.2, sum,
                    "released {backend} migration {version} changed: revert it and put \
                     the change in a new migration"
                ),
            }
        }
        for m in &all {
            assert!(
                released.iter().any(|r| r.0 == m.0 && r.1 == m.1),
                "{} migration {} is not in migrations/released.txt; add: {} {} {}",
                m.0,
                m.1,
                m.0,
                m.1,
                m.2
            );
        }
    }
}
