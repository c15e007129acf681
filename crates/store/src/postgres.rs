//! The PostgreSQL implementation, for deployments with many workers.
//!
//! Batches are written with one `INSERT ... SELECT FROM UNNEST(arrays)`
//! statement: a fixed SQL text (so it is prepared once per connection)
//! whatever the batch size, one round trip per batch.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use openthreat_core::{CveId, Enrichment, Epss, KevFacts, Priority, Severity};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{ConnectOptions, Postgres, QueryBuilder, Row};

use crate::error::{redact_url, Result, StoreError};
use crate::models::{
    claim_refusal, micros, row_from, sort_claimed, ApplySummary, Backend, CacheEntry, ClaimOne,
    ClaimState, DayCount, IngestionRun, LlmClaim, LlmCounts, LlmStats, Page, RunOutcome, RunStatus,
    Stats, Suggestion, UpsertSummary, VendorCount, VulnerabilityRow, VULN_COLUMNS,
};
use crate::plan::{
    self, check_epss, compute_priority, dedup_by_id, existing_from, facts_from, plan_facts,
    plan_upsert, FactsRow, FactsUpdate, PriorityInputs, RowValues, FACTS_COLUMNS, UPSERT_COLUMNS,
};
use crate::query::{escape_like, ListQuery, SortField};
use crate::{SeverityDistribution, Store, LLM_MAX_ATTEMPTS};

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows per UNNEST statement; bounds the size of one message to the server.
const ROWS_PER_STATEMENT: usize = 5000;

/// A [`Store`] on a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Listing totals, shared by the clones of this store.
    totals: std::sync::Arc<crate::totals::TotalsCache>,
    /// Set between [`Store::begin_bulk_load`] and [`Store::end_bulk_load`]:
    /// `migrate` then leaves the dropped indexes to this process.
    bulk: crate::bulk::Running,
}

fn vuln_row(row: &PgRow) -> Result<VulnerabilityRow, sqlx::Error> {
    Ok(row_from!(row))
}

fn facts_row(row: &PgRow) -> Result<FactsRow, sqlx::Error> {
    Ok(facts_from!(row))
}

fn run_row(row: &PgRow) -> Result<IngestionRun, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let count =
        |name: &str| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(name)?.max(0) as u64) };
    Ok(IngestionRun {
        id: row.try_get("id")?,
        source: row.try_get("source")?,
        status: RunStatus::parse(&status),
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        duration_seconds: row.try_get("duration_seconds")?,
        records_fetched: count("records_fetched")?,
        records_inserted: count("records_inserted")?,
        records_updated: count("records_updated")?,
        records_failed: count("records_failed")?,
        error: row.try_get("error")?,
    })
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Indexes the pending CVEs with ids in `first..=last`: taking them from
/// `search_pending` and writing their current documents is one statement.
/// A row changed by a transaction still open is not visible here; its
/// pending note commits with it and is taken by the next run.
async fn index_pending(pool: &PgPool, first: i64, last: i64) -> Result<u64> {
    let done = sqlx::query(
        "WITH p AS (DELETE FROM search_pending WHERE id BETWEEN $1 AND $2 RETURNING id) \
         INSERT INTO vulnerability_search (id, document) \
         SELECT v.id, search_document(v.cve_id, v.title, v.description, v.simple_title, \
           v.simple_description, v.vendors, v.products) \
         FROM vulnerabilities v JOIN p ON p.id = v.id \
         ON CONFLICT (id) DO UPDATE SET document = excluded.document",
    )
    .bind(first)
    .bind(last)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The search index as the migration defines it; nothing when it exists.
async fn create_search_index(pool: &PgPool) -> Result<()> {
    // Every start calls this: look first, since even `CREATE INDEX IF NOT
    // EXISTS` locks the table against writes before it finds the index.
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('vulnerability_search_document') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if exists {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL maintenance_work_mem = '256MB'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&crate::bulk::idempotent(SEARCH_INDEX))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// How many connections the CPU-bound bulk statements (index builds,
/// search documents) are spread over: one per core, at most 4 of the pool.
fn connections_per_core() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4))
}

/// Records an index build for the end of the bulk load (or the next
/// start), in the transaction that drops the index.
async fn note_bulk_pending(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    name: &str,
    sql: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO bulk_load_pending (name, sql) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET sql = excluded.sql",
    )
    .bind(name)
    .bind(sql)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The GIN index of the search documents, as the migration defines it.
const SEARCH_INDEX: &str = "CREATE INDEX vulnerability_search_document ON vulnerability_search \
     USING GIN (document) WITH (fastupdate = on)";

/// The search index's entry in `bulk_load_pending` when a bulk load defers
/// it. `!` sorts before the other names: the longest build (4.7 s at
/// 300 000 CVEs, on one core, as PostgreSQL 15 builds GIN indexes) starts
/// first and the B-tree builds share the other connections meanwhile.
const SEARCH_INDEX_PENDING: &str = "!vulnerability_search_document";

/// Pending documents from which [`Store::index_search`] rebuilds the GIN
/// index instead of inserting into it (and only when they outnumber the
/// documents already indexed).
const BULK_INDEX_MIN: i64 = 5_000;

/// `pg_advisory_xact_lock` key serialising [`Store::index_search`] runs
/// ("otsearch" in ASCII).
const SEARCH_INDEX_LOCK: i64 = 0x6f74_7365_6172_6368;

/// `pg_advisory_xact_lock` key serialising the start and the end of bulk
/// loads ("otbulkld").
const BULK_LOAD_LOCK: i64 = 0x6f74_6275_6c6b_6c64;

/// SQLSTATE of a `lock_timeout` that ran out.
const LOCK_NOT_AVAILABLE: &str = "55P03";

impl PgStore {
    /// Connections of the pool unless configured.
    pub const DEFAULT_POOL_SIZE: u32 = 16;

    /// Connects to the PostgreSQL database at `url` (`postgres://...`).
    /// The pool holds at most `pool_size` connections.
    pub async fn connect(url: &str, pool_size: u32) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl {
                url: redact_url(url),
                reason: redact_url(&e.to_string()),
            })?
            .log_slow_statements(crate::SLOW_STATEMENT_LEVEL, crate::SLOW_STATEMENT);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Connect {
                backend: "PostgreSQL",
                url: redact_url(url),
                reason: redact_url(&e.to_string()),
            })?;
        Ok(PgStore {
            pool,
            totals: Default::default(),
            bulk: Default::default(),
        })
    }

    /// The underlying pool, for callers that need PostgreSQL directly.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Builds the indexes a bulk load dropped (`bulk_load_pending`), one
    /// connection per core at once: each `CREATE INDEX` is a scan and a
    /// sort on one core (300 000 CVEs: 15 indexes in 2.2-2.4 s on two cores).
    /// Definitions are made idempotent and each is cleared once built, so
    /// an interrupted run is finished by the next one.
    ///
    /// With `lock_wait` (a start), gives up with [`LOCK_NOT_AVAILABLE`]
    /// when the table stays locked that long (a load still running in
    /// another process, which builds the indexes itself when it ends), or
    /// returns at once when another process is already building them.
    async fn finish_bulk_load(&self, lock_wait: Option<Duration>) -> Result<()> {
        // Every start calls this: a plain read first.
        let pending: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bulk_load_pending)")
            .fetch_one(&self.pool)
            .await?;
        if !pending {
            return Ok(());
        }
        // One finisher at a time: the end of a load waits for another
        // finisher (and then finds nothing left), a start leaves it be. A
        // transaction lock, released by the rollback if this future is
        // dropped.
        let mut lock = self.pool.begin().await?;
        if lock_wait.is_some() {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(BULK_LOAD_LOCK)
                .fetch_one(&mut *lock)
                .await?;
            if !got {
                return Ok(());
            }
        } else {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(BULK_LOAD_LOCK)
                .execute(&mut *lock)
                .await?;
        }
        let pending: Vec<(String, String)> =
            sqlx::query_as("SELECT name, sql FROM bulk_load_pending ORDER BY name")
                .fetch_all(&mut *lock)
                .await?;
        let builders = connections_per_core();
        futures::stream::iter(pending.into_iter().map(Ok))
            .try_for_each_concurrent(builders, |(name, sql)| async move {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SET LOCAL maintenance_work_mem = '128MB'")
                    .execute(&mut *tx)
                    .await?;
                if let Some(wait) = lock_wait {
                    sqlx::query(&format!("SET LOCAL lock_timeout = {}", wait.as_millis()))
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(&crate::bulk::idempotent(&sql))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM bulk_load_pending WHERE name = $1")
                    .bind(&name)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok::<_, StoreError>(())
            })
            .await?;
        lock.commit().await?;
        Ok(())
    }

    async fn fetch_facts(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        ids: &[String],
    ) -> Result<Vec<FactsRow>> {
        let sql = format!("SELECT {FACTS_COLUMNS} FROM vulnerabilities WHERE cve_id = ANY($1)");
        let rows = sqlx::query(&sql).bind(ids).fetch_all(&mut **tx).await?;
        Ok(rows.iter().map(facts_row).collect::<Result<_, _>>()?)
    }

    async fn write_facts(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        updates: &[FactsUpdate],
        now: DateTime<Utc>,
    ) -> Result<()> {
        for chunk in updates.chunks(ROWS_PER_STATEMENT) {
            let col = |f: fn(&FactsUpdate) -> String| chunk.iter().map(f).collect::<Vec<_>>();
            sqlx::query(
                "UPDATE vulnerabilities v SET exploited_in_the_wild = u.exploited, \
                 cisa_due_date = u.due, kev_date_added = u.added, kev_required_action = u.action, \
                 kev_ransomware_use = u.ransomware, kev_vulnerability_name = u.vname, \
                 epss_score = u.es, epss_percentile = u.ep, epss_date = u.ed, \
                 sources = u.sources::jsonb, priority_score = u.ps, priority = u.p, updated_at = $14 \
                 FROM UNNEST($1::text[], $2::bool[], $3::date[], $4::date[], $5::text[], \
                   $6::bool[], $7::text[], $8::float8[], $9::float8[], $10::date[], $11::text[], \
                   $12::float8[], $13::text[]) \
                   AS u(cve_id, exploited, due, added, action, ransomware, vname, es, ep, ed, \
                   sources, ps, p) \
                 WHERE v.cve_id = u.cve_id",
            )
            .bind(col(|u| u.cve_id.clone()))
            .bind(chunk.iter().map(|u| u.exploited).collect::<Vec<_>>())
            .bind(chunk.iter().map(|u| u.kev.due_date).collect::<Vec<_>>())
            .bind(chunk.iter().map(|u| u.kev.date_added).collect::<Vec<_>>())
            .bind(chunk.iter().map(|u| u.kev.required_action.clone()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|u| u.kev.ransomware_use).collect::<Vec<_>>())
            .bind(chunk.iter().map(|u| u.kev.vulnerability_name.clone()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|u| u.epss_score).collect::<Vec<_>>())
            .bind(chunk.iter().map(|u| u.epss_percentile).collect::<Vec<_>>())
            .bind(chunk.iter().map(|u| u.epss_date).collect::<Vec<_>>())
            .bind(col(|u| u.sources.clone()))
            .bind(chunk.iter().map(|u| u.priority_score).collect::<Vec<_>>())
            .bind(col(|u| u.priority.clone()))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn cache_put(
        &self,
        table: &str,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let col = cache_time_column(table);
        let sql = format!(
            "INSERT INTO {table} (key, value, {col}) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, {col} = excluded.{col}"
        );
        sqlx::query(&sql)
            .bind(key)
            .bind(Json(value))
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn cache_get(&self, table: &str, key: &str) -> Result<Option<CacheEntry>> {
        let col = cache_time_column(table);
        let sql = format!("SELECT value, {col} AS stored_at FROM {table} WHERE key = $1");
        let Some(row) = sqlx::query(&sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let Json(value): Json<serde_json::Value> = row.try_get("value")?;
        Ok(Some(CacheEntry {
            value,
            stored_at: row.try_get("stored_at")?,
        }))
    }
}

/// The two cache tables name their time column differently (as the
/// original's did); table names here are crate constants, never input.
fn cache_time_column(table: &str) -> &'static str {
    if table == "stats_cache" {
        "computed_at"
    } else {
        "created_at"
    }
}

/// `phrases` as a tsquery: one `phraseto_tsquery` per phrase (its words
/// stemmed and in order), all required. Each phrase is a bound value, and
/// `phraseto_tsquery` reads it as plain text, never as tsquery syntax.
fn push_tsquery(qb: &mut QueryBuilder<'_, Postgres>, phrases: &[Vec<String>]) {
    qb.push("(");
    for (i, p) in phrases.iter().enumerate() {
        if i > 0 {
            qb.push(" && ");
        }
        qb.push("phraseto_tsquery('english', ")
            .push_bind(p.join(" "))
            .push(")");
    }
    qb.push(")");
}

/// Appends the WHERE clause of a listing. Every value is bound. `text`:
/// whether to add the full-text condition (a ranked listing joins the
/// matches instead).
fn push_filters(qb: &mut QueryBuilder<'_, Postgres>, q: &ListQuery, text: bool) {
    qb.push(" WHERE TRUE");
    if !q.include_rejected {
        qb.push(" AND vuln_status <> 'Rejected'");
    }
    if let Some(s) = q.severity {
        qb.push(" AND severity = ").push_bind(s.as_str());
    }
    if let Some(e) = q.exploited {
        qb.push(" AND exploited_in_the_wild = ").push_bind(e);
    }
    // `@>` on a one-element array uses the GIN (jsonb_path_ops) indexes.
    for (col, value) in [
        ("vendors", q.vendor_norm()),
        ("products", q.product_norm()),
        ("cwe_ids", q.cwe_norm()),
    ] {
        if let Some(value) = value {
            qb.push(format_args!(" AND {col} @> "))
                .push_bind(Json(vec![value]));
        }
    }
    if let Some(v) = q.min_cvss {
        qb.push(" AND cvss_score >= ").push_bind(v);
    }
    if let Some(v) = q.max_cvss {
        qb.push(" AND cvss_score <= ").push_bind(v);
    }
    if let Some(t) = q.published_after_inclusive() {
        qb.push(" AND published_at >= ").push_bind(t);
    }
    if let Some(t) = q.published_before_exclusive() {
        qb.push(" AND published_at < ").push_bind(t);
    }
    if let Some(t) = q.published_since {
        qb.push(" AND published_at >= ").push_bind(t);
    }
    if let Some(p) = q.llm_processed {
        qb.push(" AND llm_processed = ").push_bind(p);
    }
    if let Some(p) = q.priority {
        qb.push(" AND priority = ").push_bind(p.as_str());
    }
    match q.q_phrases() {
        Some(phrases) if phrases.is_empty() => {
            // Only punctuation: no word to look for, so nothing matches.
            qb.push(" AND FALSE");
        }
        Some(phrases) if text => {
            qb.push(" AND id IN (SELECT id FROM vulnerability_search WHERE document @@ ");
            push_tsquery(qb, &phrases);
            qb.push(")");
        }
        _ => {}
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn pool_size(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        // A bulk load killed half-way: finish it now. Unless one is still
        // running in another process: that one finishes it when it ends.
        if !self.bulk.is_on() {
            crate::bulk::leave_to_running_load(
                self.finish_bulk_load(Some(crate::bulk::START_LOCK_WAIT))
                    .await,
                |e| {
                    matches!(e, StoreError::Database(sqlx::Error::Database(e))
                        if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE))
                },
            )?;
        }
        // A bulk index_search killed between dropping and rebuilding the
        // index, outside a bulk load (inside one, the index is among the
        // load's pending work, done above or left to the running load).
        let deferred: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bulk_load_pending WHERE name = $1)")
                .bind(SEARCH_INDEX_PENDING)
                .fetch_one(&self.pool)
                .await?;
        if !deferred {
            create_search_index(&self.pool).await?;
        }
        Ok(())
    }

    /// Drops the secondary indexes of `vulnerabilities` (the unique ones
    /// stay: the upsert looks records up by `cve_id`). With its 15 indexes
    /// kept, the rows of a 300 000-CVE first import took 16-19 s to store,
    /// 10 s without; building them afterwards takes 2.2-2.4 s.
    async fn begin_bulk_load(&self) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(BULK_LOAD_LOCK)
            .execute(&mut *tx)
            .await?;
        let rows: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM vulnerabilities LIMIT $1) AS s",
        )
        .bind(crate::bulk::MAX_ROWS + 1)
        .fetch_one(&mut *tx)
        .await?;
        if rows > crate::bulk::MAX_ROWS {
            return Ok(false);
        }
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = 'vulnerabilities'::regclass AND NOT i.indisunique",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (name, sql) in &indexes {
            note_bulk_pending(&mut tx, name, sql).await?;
            // A name read from the catalog, quoted as an identifier.
            sqlx::query(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.bulk.start();
        Ok(true)
    }

    async fn end_bulk_load(&self) -> Result<()> {
        if !self.bulk.stop() {
            return Ok(());
        }
        let _written = self.totals.invalidate_when_done();
        self.finish_bulk_load(None).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn begin_upserts(&self) -> Result<Box<dyn crate::UpsertBatches + '_>> {
        let tx = self.pool.begin().await?;
        Ok(Box::new(PgUpserts {
            tx,
            _written: self.totals.invalidate_when_done(),
        }))
    }

    async fn apply_kev(
        &self,
        entries: &[(CveId, KevFacts)],
        now: DateTime<Utc>,
    ) -> Result<ApplySummary> {
        let _written = self.totals.invalidate_when_done();
        let (map, ids) = dedup_by_id(entries);
        let mut tx = self.pool.begin().await?;
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let facts: Vec<&KevFacts> = chunk.iter().map(|id| &map[id]).collect();
            sqlx::query(
                "INSERT INTO kev_entries (cve_id, date_added, due_date, required_action, \
                 ransomware_use, vulnerability_name, updated_at) \
                 SELECT u.*, $7 FROM UNNEST($1::text[], $2::date[], $3::date[], $4::text[], \
                   $5::bool[], $6::text[]) AS u \
                 ON CONFLICT (cve_id) DO UPDATE SET date_added = excluded.date_added, \
                 due_date = excluded.due_date, required_action = excluded.required_action, \
                 ransomware_use = excluded.ransomware_use, \
                 vulnerability_name = excluded.vulnerability_name, updated_at = excluded.updated_at",
            )
            .bind(chunk)
            .bind(facts.iter().map(|k| k.date_added).collect::<Vec<_>>())
            .bind(facts.iter().map(|k| k.due_date).collect::<Vec<_>>())
            .bind(facts.iter().map(|k| k.required_action.clone()).collect::<Vec<_>>())
            .bind(facts.iter().map(|k| k.ransomware_use).collect::<Vec<_>>())
            .bind(facts.iter().map(|k| k.vulnerability_name.clone()).collect::<Vec<_>>())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let rows = Self::fetch_facts(&mut tx, &ids).await?;
        let found = rows.len() as u64;
        let updates = plan_facts(rows, now, |row| {
            let new = map.get(&row.cve_id);
            if new.is_none() || row.kev.as_ref() == new {
                return false;
            }
            row.kev = new.cloned();
            true
        });
        Self::write_facts(&mut tx, &updates, now).await?;
        tx.commit().await?;
        Ok(ApplySummary {
            received: entries.len() as u64,
            updated: updates.len() as u64,
            unknown: ids.len() as u64 - found,
        })
    }

    async fn apply_epss(
        &self,
        scores: &[(CveId, Epss)],
        now: DateTime<Utc>,
    ) -> Result<ApplySummary> {
        let _written = self.totals.invalidate_when_done();
        for (id, e) in scores {
            check_epss(id.as_str(), e)?;
        }
        let (map, ids) = dedup_by_id(scores);
        let mut tx = self.pool.begin().await?;
        let rows = Self::fetch_facts(&mut tx, &ids).await?;
        let found = rows.len() as u64;
        let updates = plan_facts(rows, now, |row| {
            let new = map.get(&row.cve_id);
            if new.is_none() || row.epss.as_ref() == new {
                return false;
            }
            row.epss = new.cloned();
            true
        });
        Self::write_facts(&mut tx, &updates, now).await?;
        tx.commit().await?;
        Ok(ApplySummary {
            received: scores.len() as u64,
            updated: updates.len() as u64,
            unknown: ids.len() as u64 - found,
        })
    }

    async fn recompute_priorities(&self, now: DateTime<Utc>) -> Result<u64> {
        let _written = self.totals.invalidate_when_done();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT cve_id, cvss_score, severity, published_at, exploited_in_the_wild, \
             epss_score, priority_score, priority FROM vulnerabilities",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut ids = Vec::new();
        let mut scores = Vec::new();
        let mut classes = Vec::new();
        for row in &rows {
            let severity: String = row.try_get("severity")?;
            let inputs = PriorityInputs {
                cvss_score: row.try_get("cvss_score")?,
                severity: severity.parse().unwrap_or(Severity::Unknown),
                published_at: row.try_get("published_at")?,
                exploited: row.try_get("exploited_in_the_wild")?,
                epss_score: row.try_get("epss_score")?,
            };
            let (score, class) = compute_priority(&inputs, now);
            let old_score: f64 = row.try_get("priority_score")?;
            let old_class: String = row.try_get("priority")?;
            if old_score != score || old_class != class.as_str() {
                ids.push(row.try_get::<String, _>("cve_id")?);
                scores.push(score);
                classes.push(class.as_str());
            }
        }
        for start in (0..ids.len()).step_by(ROWS_PER_STATEMENT) {
            let end = (start + ROWS_PER_STATEMENT).min(ids.len());
            sqlx::query(
                "UPDATE vulnerabilities v SET priority_score = u.ps, priority = u.p \
                 FROM UNNEST($1::text[], $2::float8[], $3::text[]) AS u(cve_id, ps, p) \
                 WHERE v.cve_id = u.cve_id",
            )
            .bind(&ids[start..end])
            .bind(&scores[start..end])
            .bind(&classes[start..end])
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn get_cve(&self, cve_id: &CveId) -> Result<Option<VulnerabilityRow>> {
        let sql = format!("SELECT {VULN_COLUMNS} FROM vulnerabilities WHERE cve_id = $1");
        let row = sqlx::query(&sql)
            .bind(cve_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(vuln_row).transpose()?)
    }

    async fn list_cves(&self, query: &ListQuery) -> Result<Page<VulnerabilityRow>> {
        query.validate()?;
        if query.q_phrases().is_some_and(|p| !p.is_empty()) {
            let pending: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM search_pending)")
                .fetch_one(&self.pool)
                .await?;
            if pending {
                self.index_search().await?;
            }
        }
        let total = self
            .totals
            .get_or_count(crate::totals::TotalsCache::key(query), || async {
                let mut count =
                    QueryBuilder::<Postgres>::new("SELECT COUNT(*) FROM vulnerabilities");
                push_filters(&mut count, query, true);
                Ok(count
                    .build_query_scalar::<i64>()
                    .fetch_one(&self.pool)
                    .await?)
            })
            .await?;

        let columns = if query.summary {
            crate::models::SUMMARY_COLUMNS
        } else {
            VULN_COLUMNS
        };
        let mut list =
            QueryBuilder::<Postgres>::new(format!("SELECT {columns} FROM vulnerabilities"));
        let dir = query.order.sql();
        let push_page = |list: &mut QueryBuilder<'_, Postgres>| {
            list.push(" LIMIT ")
                .push_bind(i64::from(query.page_size))
                .push(" OFFSET ")
                .push_bind(query.offset());
        };
        match query.q_phrases().filter(|_| query.ranked()) {
            Some(phrases) => {
                // The page's ids are chosen first, sorting only narrow
                // (id, rank) tuples; the wide rows (references, CPEs, often
                // TOASTed) are read for those 20 ids only. Sorting whole
                // rows of every match cost seconds for a common word.
                let cve_id = query.q_cve_id();
                let order = |list: &mut QueryBuilder<'_, Postgres>, rank: &str| {
                    list.push(" ORDER BY ");
                    if let Some(cve_id) = &cve_id {
                        list.push("(cve_id = ")
                            .push_bind(cve_id.clone())
                            .push(format_args!(") {dir}, "));
                    }
                    list.push(format_args!(
                        "{rank} {dir}, priority_score {dir}, vulnerabilities.id {dir}"
                    ));
                };
                list.push(
                    " JOIN (SELECT vulnerabilities.id AS p_id, r.s_rank AS p_rank \
                     FROM vulnerabilities JOIN (SELECT s.id AS s_id, \
                     ts_rank(s.document, q.query) AS s_rank \
                     FROM vulnerability_search s, (SELECT ",
                );
                push_tsquery(&mut list, &phrases);
                list.push(
                    " AS query) q WHERE s.document @@ q.query) r \
                     ON r.s_id = vulnerabilities.id",
                );
                push_filters(&mut list, query, false);
                order(&mut list, "r.s_rank");
                push_page(&mut list);
                list.push(") page ON page.p_id = vulnerabilities.id");
                order(&mut list, "p_rank");
            }
            None => {
                push_filters(&mut list, query, true);
                // NULLS LAST only where NULLs exist: on a NOT NULL column
                // PostgreSQL does not know the clause is moot, and `DESC
                // NULLS LAST` does not match a backward scan of the
                // (column, id) index, so every default listing sorted the
                // whole table (seen at 100 000 CVEs: seconds per page).
                let nulls = match query.sort {
                    SortField::CvssScore | SortField::EpssScore => " NULLS LAST",
                    _ => "",
                };
                list.push(format_args!(
                    " ORDER BY {} {dir}{nulls}, id {dir}",
                    query.sort.column()
                ));
                push_page(&mut list);
            }
        }
        let rows = list.build().fetch_all(&self.pool).await?;
        let items = rows.iter().map(vuln_row).collect::<Result<Vec<_>, _>>()?;
        Ok(query.page_of(total, items))
    }

    async fn index_search(&self) -> Result<u64> {
        let _written = self.totals.invalidate_when_done();
        // One indexer at a time (the bulk path drops the GIN index, and a
        // second indexer would only find an empty pending list). The lock
        // is held by this transaction, so a cancelled call releases it.
        let mut lock = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SEARCH_INDEX_LOCK)
            .execute(&mut *lock)
            .await?;
        let (pending, first, last): (i64, Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT COUNT(*), MIN(id), MAX(id) FROM search_pending")
                .fetch_one(&mut *lock)
                .await?;
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(0);
        };
        let bulk = pending >= BULK_INDEX_MIN && {
            // Not in `lock`: its share lock on the table would block our
            // own DROP INDEX below for ever.
            let indexed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM vulnerability_search")
                .fetch_one(&self.pool)
                .await?;
            pending >= indexed
        };
        if !bulk {
            let done = index_pending(&self.pool, first, last).await?;
            lock.commit().await?;
            return Ok(done);
        }
        // A first import: computing the documents (to_tsvector, single
        // threaded per statement, and PostgreSQL 15 runs no INSERT in
        // parallel) is split over one connection per core, without the
        // GIN index, which is then built in one sorted pass. Inserting into
        // it entry by entry, and on one connection, took half the time of a
        // 300 000-CVE import. Searches meanwhile scan without the index;
        // `migrate` recreates it if this process dies in between.
        //
        // During a bulk load the index joins the load's pending index
        // builds instead, which `end_bulk_load` runs side by side: alone, a
        // GIN build keeps one core busy and leaves the others idle.
        let deferred = self.bulk.is_on();
        let mut tx = self.pool.begin().await?;
        if deferred {
            note_bulk_pending(&mut tx, SEARCH_INDEX_PENDING, SEARCH_INDEX).await?;
        }
        sqlx::query("DROP INDEX IF EXISTS vulnerability_search_document")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let parts = connections_per_core() as i64;
        let step = (last - first) / parts + 1;
        let chunks = (0..parts).map(|i| {
            let lo = first + i * step;
            index_pending(&self.pool, lo, (lo + step - 1).min(last))
        });
        let indexed = futures::future::try_join_all(chunks).await;
        let built = if deferred {
            Ok(())
        } else {
            create_search_index(&self.pool).await
        };
        let done: u64 = indexed?.into_iter().sum();
        built?;
        lock.commit().await?;
        Ok(done)
    }

    async fn suggest(&self, prefix: &str, limit: u32) -> Result<Vec<Suggestion>> {
        let prefix = prefix.trim();
        if prefix.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let escaped = escape_like(prefix);
        let rows = sqlx::query(
            "SELECT cve_id, title FROM ( \
               SELECT cve_id, title, 0 AS rank FROM vulnerabilities \
                 WHERE cve_id LIKE $1 ESCAPE '\\' AND vuln_status <> 'Rejected' \
               UNION ALL \
               SELECT cve_id, title, 1 AS rank FROM vulnerabilities \
                 WHERE lower(title) LIKE $2 ESCAPE '\\' AND vuln_status <> 'Rejected' \
             ) s GROUP BY cve_id, title ORDER BY MIN(rank), cve_id DESC LIMIT $3",
        )
        .bind(format!("{}%", escaped.to_uppercase()))
        .bind(format!("{}%", escaped.to_lowercase()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Suggestion {
                    cve_id: r.try_get("cve_id")?,
                    title: r.try_get("title")?,
                })
            })
            .collect()
    }

    async fn stats(&self, now: DateTime<Utc>) -> Result<Stats> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, \
               COUNT(*) FILTER (WHERE exploited_in_the_wild) AS exploited, \
               COUNT(*) FILTER (WHERE modified_at >= $1 AND modified_at <= $2) AS recent, \
               MAX(updated_at) AS last_update \
             FROM vulnerabilities WHERE vuln_status <> 'Rejected'",
        )
        .bind(now - chrono::Duration::hours(24))
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let get = |name: &str| -> Result<u64, sqlx::Error> {
            Ok(row.try_get::<i64, _>(name)?.max(0) as u64)
        };
        let by_severity = severity_counts(&self.pool).await?;
        let total = get("total")?;
        Ok(Stats {
            total_vulnerabilities: total,
            exploited_vulnerabilities: get("exploited")?,
            critical_vulnerabilities: by_severity.get("CRITICAL").copied().unwrap_or(0),
            high_vulnerabilities: by_severity.get("HIGH").copied().unwrap_or(0),
            by_severity,
            recent_updates: get("recent")?,
            last_update: row.try_get("last_update")?,
            llm: self.llm_stats(now).await?,
        })
    }

    async fn top_vendors(&self, limit: u32) -> Result<Vec<VendorCount>> {
        let rows = sqlx::query(
            "SELECT e.name, COUNT(*) AS n FROM vulnerabilities v \
             CROSS JOIN LATERAL jsonb_array_elements_text(v.vendors) AS e(name) \
             WHERE v.vuln_status <> 'Rejected' \
             GROUP BY e.name ORDER BY n DESC, e.name COLLATE \"C\" LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(VendorCount {
                    name: r.try_get("name")?,
                    count: r.try_get::<i64, _>("n")?.max(0) as u64,
                })
            })
            .collect()
    }

    async fn severity_distribution(&self) -> Result<SeverityDistribution> {
        Ok(crate::models::distribution(
            severity_counts(&self.pool).await?,
        ))
    }

    async fn timeline(&self, days: u32, now: DateTime<Utc>) -> Result<Vec<DayCount>> {
        let (first, start) = crate::models::timeline_start(days, now);
        let rows = sqlx::query(
            "SELECT (published_at AT TIME ZONE 'UTC')::date AS day, COUNT(*) AS n \
             FROM vulnerabilities \
             WHERE published_at >= $1 AND published_at < $2 AND vuln_status <> 'Rejected' \
             GROUP BY day",
        )
        .bind(start)
        .bind(crate::models::day_after(now))
        .fetch_all(&self.pool)
        .await?;
        let mut counts = HashMap::new();
        for r in &rows {
            let day: NaiveDate = r.try_get("day")?;
            counts.insert(day, r.try_get::<i64, _>("n")?.max(0) as u64);
        }
        Ok(crate::models::fill_days(first, days, &counts))
    }

    fn data_generation(&self) -> u64 {
        self.totals.generation()
    }

    async fn start_ingestion_run(&self, source: &str, now: DateTime<Utc>) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO ingestion_runs (source, status, started_at) \
             VALUES ($1, 'running', $2) RETURNING id",
        )
        .bind(source)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn finish_ingestion_run(
        &self,
        id: i64,
        outcome: &RunOutcome,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let started: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT started_at FROM ingestion_runs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let started = started.ok_or_else(|| StoreError::NotFound(format!("ingestion run {id}")))?;
        let status = if outcome.success {
            RunStatus::Success
        } else {
            RunStatus::Failed
        };
        sqlx::query(
            "UPDATE ingestion_runs SET status = $1, records_fetched = $2, records_inserted = $3, \
             records_updated = $4, records_failed = $5, completed_at = $6, \
             duration_seconds = $7, error = $8 WHERE id = $9",
        )
        .bind(status.as_str())
        .bind(clamp_i64(outcome.records_fetched))
        .bind(clamp_i64(outcome.records_inserted))
        .bind(clamp_i64(outcome.records_updated))
        .bind(clamp_i64(outcome.records_failed))
        .bind(now)
        .bind(crate::models::seconds_between(started, now))
        .bind(&outcome.error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn heartbeat_ingestion_run(&self, id: i64, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE ingestion_runs SET heartbeat_at = $1 WHERE id = $2 AND status = 'running'",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn close_silent_runs(
        &self,
        silent_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let closed = sqlx::query(
            "UPDATE ingestion_runs SET status = 'failed', completed_at = $1, \
             error = 'abandoned: no sign of life since ' || \
             to_char(coalesce(heartbeat_at, started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') || \
             ' (its process was killed or crashed)' \
             WHERE status = 'running' AND coalesce(heartbeat_at, started_at) < $2",
        )
        .bind(now)
        .bind(silent_since)
        .execute(&self.pool)
        .await?;
        Ok(closed.rows_affected())
    }

    async fn ingestion_runs(&self, limit: u32) -> Result<Vec<IngestionRun>> {
        let rows = sqlx::query(
            "SELECT id, source, status, started_at, completed_at, duration_seconds, \
             records_fetched, records_inserted, records_updated, records_failed, error \
             FROM ingestion_runs ORDER BY started_at DESC, id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(run_row).collect::<Result<_, _>>()?)
    }

    async fn get_state(&self, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM sync_state WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn set_state(&self, key: &str, value: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "INSERT INTO sync_state (key, value, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
             updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(value)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn put_stats_cache(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.cache_put("stats_cache", key, value, now).await
    }

    async fn get_stats_cache(&self, key: &str) -> Result<Option<CacheEntry>> {
        self.cache_get("stats_cache", key).await
    }

    async fn put_search_cache(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.cache_put("search_cache", key, value, now).await
    }

    async fn get_search_cache(&self, key: &str) -> Result<Option<CacheEntry>> {
        self.cache_get("search_cache", key).await
    }

    async fn clean_cache(&self, older_than: DateTime<Utc>) -> Result<u64> {
        let a = sqlx::query("DELETE FROM stats_cache WHERE computed_at < $1")
            .bind(older_than)
            .execute(&self.pool)
            .await?;
        let b = sqlx::query("DELETE FROM search_cache WHERE created_at < $1")
            .bind(older_than)
            .execute(&self.pool)
            .await?;
        Ok(a.rows_affected() + b.rows_affected())
    }

    async fn save_enrichment(&self, cve_id: &CveId, e: &Enrichment) -> Result<()> {
        let _written = self.totals.invalidate_when_done();
        // The same statement notes the row for the search index, so the
        // LLM's words are searchable from the next index_search().
        let updated: i64 = sqlx::query_scalar(
            "WITH u AS (UPDATE vulnerabilities SET simple_title = $1, simple_description = $2, \
             recommended_action = $3, llm_model = $4, llm_processed_at = $5, \
             llm_input_hash = $6, llm_processed = TRUE, llm_error = NULL, \
             llm_claimed_until = NULL, llm_attempts = 0, llm_failed_at = NULL WHERE cve_id = $7 \
             RETURNING id), \
             p AS (INSERT INTO search_pending (id) SELECT id FROM u ON CONFLICT DO NOTHING) \
             SELECT count(*) FROM u",
        )
        .bind(&e.simple_title)
        .bind(&e.simple_description)
        .bind(&e.recommended_action)
        .bind(&e.model)
        .bind(e.processed_at)
        .bind(&e.input_hash)
        .bind(cve_id.as_str())
        .fetch_one(&self.pool)
        .await?;
        if updated == 0 {
            return Err(StoreError::NotFound(cve_id.to_string()));
        }
        Ok(())
    }

    async fn record_llm_failure(
        &self,
        cve_id: &CveId,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<i32> {
        let _written = self.totals.invalidate_when_done();
        let attempts: Option<i32> = sqlx::query_scalar(
            "UPDATE vulnerabilities SET llm_error = $1, llm_attempts = llm_attempts + 1, \
             llm_claimed_until = NULL, llm_failed_at = $2 WHERE cve_id = $3 RETURNING llm_attempts",
        )
        .bind(error)
        .bind(now)
        .bind(cve_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        attempts.ok_or_else(|| StoreError::NotFound(cve_id.to_string()))
    }

    async fn llm_candidates(
        &self,
        priority: Option<Priority>,
        limit: u32,
    ) -> Result<Vec<VulnerabilityRow>> {
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "SELECT {VULN_COLUMNS} FROM vulnerabilities \
             WHERE NOT llm_processed AND vuln_status <> 'Rejected'"
        ));
        if let Some(p) = priority {
            qb.push(" AND priority = ").push_bind(p.as_str());
        }
        qb.push(" ORDER BY priority_score DESC, id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = qb.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(vuln_row).collect::<Result<_, _>>()?)
    }

    async fn claim_llm_batch(
        &self,
        claim: &LlmClaim,
        now: DateTime<Utc>,
    ) -> Result<Vec<VulnerabilityRow>> {
        if claim.limit == 0 {
            return Ok(Vec::new());
        }
        // FOR UPDATE SKIP LOCKED: a concurrent claim skips the rows this one
        // has locked instead of waiting for them, and a row it re-reads after
        // this commit fails the claim condition, so no CVE is returned twice.
        let mut qb =
            QueryBuilder::<Postgres>::new("UPDATE vulnerabilities SET llm_claimed_until = ");
        qb.push_bind(micros(now + claim.claim_for));
        qb.push(
            " WHERE id IN (SELECT id FROM vulnerabilities \
             WHERE NOT llm_processed AND vuln_status <> 'Rejected' AND llm_attempts < ",
        )
        .push_bind(claim.max_attempts)
        .push(" AND (llm_claimed_until IS NULL OR llm_claimed_until <= ")
        .push_bind(now)
        .push(")");
        if let Some(p) = claim.priority {
            qb.push(" AND priority = ").push_bind(p.as_str());
        }
        if let Some(after) = claim.created_after {
            qb.push(" AND created_at >= ").push_bind(after);
        }
        qb.push(" ORDER BY priority_score DESC, id LIMIT ")
            .push_bind(i64::from(claim.limit))
            .push(format!(" FOR UPDATE SKIP LOCKED) RETURNING {VULN_COLUMNS}"));
        let rows = qb.build().fetch_all(&self.pool).await?;
        let mut rows: Vec<VulnerabilityRow> =
            rows.iter().map(vuln_row).collect::<Result<_, _>>()?;
        sort_claimed(&mut rows);
        Ok(rows)
    }

    async fn claim_llm_one(
        &self,
        cve_id: &CveId,
        expected_claim: Option<DateTime<Utc>>,
        claim_for: chrono::Duration,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> Result<ClaimOne> {
        // Read and decide under the row lock, so nobody claims in between.
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT llm_processed, llm_attempts, llm_error, llm_claimed_until \
             FROM vulnerabilities WHERE cve_id = $1 FOR UPDATE",
        )
        .bind(cve_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(ClaimOne::NotFound);
        };
        let state = ClaimState {
            processed: row.try_get("llm_processed")?,
            attempts: row.try_get("llm_attempts")?,
            error: row.try_get("llm_error")?,
            claimed_until: row.try_get("llm_claimed_until")?,
        };
        if let Some(refusal) = claim_refusal(&state, expected_claim, max_attempts, now) {
            return Ok(refusal);
        }
        let row = sqlx::query(&format!(
            "UPDATE vulnerabilities SET llm_claimed_until = $1 WHERE cve_id = $2 \
             RETURNING {VULN_COLUMNS}"
        ))
        .bind(micros(now + claim_for))
        .bind(cve_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ClaimOne::Claimed(Box::new(vuln_row(&row)?)))
    }

    async fn release_llm_claim(&self, cve_id: &CveId) -> Result<()> {
        let done =
            sqlx::query("UPDATE vulnerabilities SET llm_claimed_until = NULL WHERE cve_id = $1")
                .bind(cve_id.as_str())
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(cve_id.to_string()));
        }
        Ok(())
    }

    async fn llm_stats(&self, now: DateTime<Utc>) -> Result<LlmStats> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, \
               COUNT(*) FILTER (WHERE llm_processed) AS processed, \
               COUNT(*) FILTER (WHERE NOT llm_processed AND priority = 'high') AS hp_pending, \
               COUNT(*) FILTER (WHERE NOT llm_processed AND llm_attempts > 0 \
                                AND llm_attempts < $1) AS failed, \
               COUNT(*) FILTER (WHERE NOT llm_processed AND llm_attempts >= $1) AS parked, \
               COUNT(*) FILTER (WHERE NOT llm_processed AND llm_claimed_until > $2) AS claimed \
             FROM vulnerabilities WHERE vuln_status <> 'Rejected'",
        )
        .bind(LLM_MAX_ATTEMPTS)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let get = |name: &str| -> Result<u64, sqlx::Error> {
            Ok(row.try_get::<i64, _>(name)?.max(0) as u64)
        };
        Ok(LlmStats::new(LlmCounts {
            total: get("total")?,
            processed: get("processed")?,
            high_priority_pending: get("hp_pending")?,
            failed: get("failed")?,
            parked: get("parked")?,
            claimed: get("claimed")?,
        }))
    }

    async fn parked_llm(&self, max_attempts: i32, limit: u32) -> Result<Vec<VulnerabilityRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {VULN_COLUMNS} FROM vulnerabilities \
             WHERE NOT llm_processed AND vuln_status <> 'Rejected' AND llm_attempts >= $1 \
             ORDER BY llm_failed_at DESC NULLS LAST, id DESC LIMIT $2"
        ))
        .bind(max_attempts)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(vuln_row).collect::<Result<_, _>>()?)
    }
}

fn kev_from_row(row: &PgRow) -> Result<KevFacts, sqlx::Error> {
    Ok(KevFacts {
        date_added: row.try_get("date_added")?,
        due_date: row.try_get("due_date")?,
        required_action: row.try_get("required_action")?,
        ransomware_use: row.try_get("ransomware_use")?,
        vulnerability_name: row.try_get("vulnerability_name")?,
    })
}

async fn severity_counts(pool: &PgPool) -> Result<BTreeMap<String, u64>> {
    let rows = sqlx::query(
        "SELECT severity, COUNT(*) AS n FROM vulnerabilities \
         WHERE vuln_status <> 'Rejected' GROUP BY severity",
    )
    .fetch_all(pool)
    .await?;
    let mut map: BTreeMap<String, u64> = Severity::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for r in &rows {
        map.insert(
            r.try_get("severity")?,
            r.try_get::<i64, _>("n")?.max(0) as u64,
        );
    }
    Ok(map)
}

/// [`Store::begin_upserts`] on PostgreSQL: one transaction.
struct PgUpserts<'s> {
    tx: sqlx::Transaction<'static, Postgres>,
    /// Dropped after the commit (or the rollback).
    _written: crate::totals::InvalidateOnDrop<'s>,
}

#[async_trait]
impl crate::UpsertBatches for PgUpserts<'_> {
    async fn upsert_cves(
        &mut self,
        cves: &[openthreat_core::Cve],
        now: DateTime<Utc>,
    ) -> Result<UpsertSummary> {
        if cves.is_empty() {
            return Ok(UpsertSummary::default());
        }
        let tx = &mut self.tx;
        let mut ids: Vec<String> = cves.iter().map(|c| c.cve_id.to_string()).collect();
        ids.sort_unstable();
        ids.dedup();

        // Row locks on the existing records keep a concurrent upsert of the
        // same CVEs from interleaving between our read and our write.
        let sql = format!(
            "SELECT {FACTS_COLUMNS}, modified_at, record_hash FROM vulnerabilities \
             WHERE cve_id = ANY($1) FOR UPDATE"
        );
        let rows = sqlx::query(&sql).bind(&ids).fetch_all(&mut **tx).await?;
        let existing = rows
            .iter()
            .map(|row| {
                let (modified_at, hash) =
                    (row.try_get("modified_at")?, row.try_get("record_hash")?);
                Ok(existing_from(facts_row(row)?, modified_at, hash))
            })
            .collect::<Result<HashMap<_, _>, sqlx::Error>>()?;
        let kev_rows = sqlx::query(
            "SELECT cve_id, date_added, due_date, required_action, ransomware_use, \
             vulnerability_name FROM kev_entries WHERE cve_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
        let kev = kev_rows
            .iter()
            .map(|row| Ok((row.try_get("cve_id")?, kev_from_row(row)?)))
            .collect::<Result<HashMap<String, _>, sqlx::Error>>()?;

        let plan = plan_upsert(cves, existing, &kev, now);
        for chunk in plan.rows.chunks(ROWS_PER_STATEMENT) {
            write_rows(tx, chunk, now).await?;
        }
        Ok(plan.summary)
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// One UNNEST upsert of planned rows (each column travels as one array);
/// the same statement notes every written row in `search_pending`, for the next [`Store::index_search`]
/// (a narrow insert, far cheaper than indexing the text here).
async fn write_rows(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    rows: &[RowValues],
    now: DateTime<Utc>,
) -> Result<()> {
    let cols = UPSERT_COLUMNS.join(", ");
    let sql = format!(
        "WITH written AS (INSERT INTO vulnerabilities ({cols}, created_at, updated_at) \
         SELECT c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, \
           c18, c19, c20::jsonb, c21::jsonb, c22::jsonb, c23::jsonb, c24::jsonb, c25::jsonb, \
           c26::jsonb, c27, c28, c29, $30, $30 \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::float8[], $5::text[], $6::text[], \
           $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::bool[], \
           $12::date[], $13::date[], $14::text[], $15::bool[], $16::text[], $17::float8[], \
           $18::float8[], $19::date[], $20::text[], $21::text[], $22::text[], $23::text[], \
           $24::text[], $25::text[], $26::text[], $27::float8[], $28::text[], $29::text[]) \
           AS u(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, \
           c18, c19, c20, c21, c22, c23, c24, c25, c26, c27, c28, c29){} \
         RETURNING id) \
         INSERT INTO search_pending (id) SELECT id FROM written ON CONFLICT DO NOTHING",
        plan::on_conflict_clause()
    );
    fn strs(rows: &[RowValues], f: impl Fn(&RowValues) -> &str) -> Vec<&str> {
        rows.iter().map(f).collect()
    }
    fn opt_strs(rows: &[RowValues], f: impl Fn(&RowValues) -> Option<&str>) -> Vec<Option<&str>> {
        rows.iter().map(f).collect()
    }
    sqlx::query(&sql)
        .bind(strs(rows, |r| &r.cve_id))
        .bind(strs(rows, |r| &r.title))
        .bind(strs(rows, |r| &r.description))
        .bind(rows.iter().map(|r| r.cvss_score).collect::<Vec<_>>())
        .bind(opt_strs(rows, |r| r.cvss_vector.as_deref()))
        .bind(opt_strs(rows, |r| r.cvss_version.as_deref()))
        .bind(strs(rows, |r| &r.severity))
        .bind(rows.iter().map(|r| r.published_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.modified_at).collect::<Vec<_>>())
        .bind(strs(rows, |r| &r.vuln_status))
        .bind(rows.iter().map(|r| r.exploited).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.cisa_due_date).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.kev_date_added).collect::<Vec<_>>())
        .bind(opt_strs(rows, |r| r.kev_required_action.as_deref()))
        .bind(
            rows.iter()
                .map(|r| r.kev_ransomware_use)
                .collect::<Vec<_>>(),
        )
        .bind(opt_strs(rows, |r| r.kev_vulnerability_name.as_deref()))
        .bind(rows.iter().map(|r| r.epss_score).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.epss_percentile).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.epss_date).collect::<Vec<_>>())
        .bind(strs(rows, |r| &r.cwe_ids))
        .bind(strs(rows, |r| &r.affected_products))
        .bind(strs(rows, |r| &r.vendors))
        .bind(strs(rows, |r| &r.products))
        .bind(strs(rows, |r| &r.references))
        .bind(strs(rows, |r| &r.sources))
        .bind(strs(rows, |r| &r.source_tags))
        .bind(rows.iter().map(|r| r.priority_score).collect::<Vec<_>>())
        .bind(strs(rows, |r| &r.priority))
        .bind(strs(rows, |r| &r.record_hash))
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
