//! The SQLite implementation: the embedded default, one file, no service.
//!
//! Writes run in `BEGIN IMMEDIATE` transactions: they read the batch's
//! current state and then write, and taking the write lock up front avoids
//! the "database is locked" upgrade failure of a deferred transaction when
//! another connection writes in between (`busy_timeout` then just waits).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use openthreat_core::{CveId, Enrichment, Epss, KevFacts, Priority, Severity};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, QueryBuilder, Row, Sqlite};

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
use crate::query::{escape_like, ListQuery};
use crate::{SeverityDistribution, Store, LLM_MAX_ATTEMPTS};

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row INSERT: 31 parameters each stays far below SQLite's
/// limit of 32766 bound parameters, while amortising the per-statement cost.
const ROWS_PER_INSERT: usize = 100;
const TERMS_PER_INSERT: usize = 500;

/// How long a write waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Puts back the pool's settings on a connection that changed some (`sql`)
/// and always the busy timeout, before it returns to the pool; one on which
/// that fails is closed instead, so the pool never hands out a connection
/// that gives up at once on a lock or sorts in files.
async fn restore_settings(mut conn: sqlx::pool::PoolConnection<Sqlite>, sql: &str) {
    let busy = format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis());
    let restore = if sql.is_empty() {
        busy
    } else {
        format!("{sql}; {busy}")
    };
    if sqlx::query(&restore).execute(&mut *conn).await.is_err() {
        drop(conn.detach());
    }
}

/// Whether `e` is SQLITE_BUSY or one of its extended codes (low byte 5):
/// another connection holds the lock.
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(e) => {
            e.code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff)
                == Some(5)
        }
        _ => false,
    }
}

/// A [`Store`] on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Listing totals, shared by the clones of this store.
    totals: std::sync::Arc<crate::totals::TotalsCache>,
    /// Set between [`Store::begin_bulk_load`] and [`Store::end_bulk_load`]:
    /// upserts then leave `vulnerability_terms` to the final rebuild.
    bulk: crate::bulk::Running,
}

/// Page cache per connection (KiB when negative), so at most 8 × 16 MiB
/// for the pool. 64 MiB used to keep index pages of batch upserts from
/// spilling, which bulk loads (no secondary indexes) no longer need; at
/// 100 000 CVEs 16 MiB imports as fast and `serve` held 700 MB with 64.
const CACHE_SIZE: &str = "-16384";

/// Page size of the databases this store creates; see [`SqliteStore::connect`].
const PAGE_SIZE: u32 = 16384;

/// Recomputes every filter term from the stored JSON lists (which hold the
/// normalised terms the upsert writes, see `plan.rs`), in key order so the
/// WITHOUT ROWID table is appended to rather than split at random. Its
/// `cve_id` index is built afterwards from the finished table: kept in place
/// it took each term in random order (300 000 CVEs, 1.2 million terms:
/// 3.4 s with it, 1.8 s + 0.5 s without it and built after).
const REBUILD_TERMS: &str = "DROP INDEX IF EXISTS vulnerability_terms_cve; \
    DELETE FROM vulnerability_terms; \
    INSERT OR IGNORE INTO vulnerability_terms (kind, value, cve_id) \
    SELECT 'vendor', j.value, v.cve_id FROM vulnerabilities v, json_each(v.vendors) j \
    UNION ALL SELECT 'product', j.value, v.cve_id FROM vulnerabilities v, json_each(v.products) j \
    UNION ALL SELECT 'cwe', j.value, v.cve_id FROM vulnerabilities v, json_each(v.cwe_ids) j \
    ORDER BY 1, 2, 3; \
    CREATE INDEX vulnerability_terms_cve ON vulnerability_terms (cve_id);";

/// Puts the rebuild of `vulnerability_terms` on `bulk_load_pending` (after
/// the indexes: names sort `~` last).
async fn note_terms_rebuild<'e, E>(db: E) -> Result<()>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    sqlx::query("INSERT OR REPLACE INTO bulk_load_pending (name, sql) VALUES (?, ?)")
        .bind("~vulnerability_terms")
        .bind(REBUILD_TERMS)
        .execute(db)
        .await?;
    Ok(())
}

/// SQLite keeps timestamps as text; a fixed width (microseconds, `Z`) makes
/// text order equal time order, so comparisons and indexes just work.
fn ts(dt: DateTime<Utc>) -> String {
    dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn vuln_row(row: &SqliteRow) -> Result<VulnerabilityRow, sqlx::Error> {
    Ok(row_from!(row))
}

fn facts_row(row: &SqliteRow) -> Result<FactsRow, sqlx::Error> {
    Ok(facts_from!(row))
}

fn run_row(row: &SqliteRow) -> Result<IngestionRun, sqlx::Error> {
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

/// The indexed columns, in the order of `vulnerabilities_fts` (and of the
/// bm25 weights in `list_cves`).
const FTS_COLUMNS: &str =
    "cve_id, title, description, simple_title, simple_description, vendors, products";

/// `phrases` as an FTS5 query: each phrase in double quotes, all required.
/// The words hold only letters and digits ([`crate::query::search_terms`]),
/// so quoting cannot be escaped and FTS5 never sees user syntax.
fn fts5_query(phrases: &[Vec<String>]) -> String {
    phrases
        .iter()
        .map(|p| format!("\"{}\"", p.join(" ")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Notes rows of these CVEs whose indexed text may now be stale, for the
/// next [`Store::index_search`]. Rows above the watermark are not indexed
/// yet and need no note.
async fn mark_search_pending(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    cve_ids: &[&str],
) -> Result<()> {
    if cve_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT OR IGNORE INTO search_pending (id) SELECT id FROM vulnerabilities \
         WHERE cve_id IN (SELECT value FROM json_each(?)) \
         AND id <= (SELECT indexed_upto FROM search_index_state)",
    )
    .bind(serde_json::to_string(cve_ids)?)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl SqliteStore {
    /// Runs what a bulk load put off (`bulk_load_pending`), in one
    /// transaction, waiting at most `lock_wait` for the write lock. Index
    /// definitions are made idempotent, so running this twice does no harm.
    async fn finish_bulk_load(&self, lock_wait: Duration) -> Result<()> {
        // Every start calls this: a plain read first, so that a start with
        // nothing to finish never waits for SQLite's write lock.
        let pending: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bulk_load_pending)")
            .fetch_one(&self.pool)
            .await?;
        if !pending {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        // Building indexes sorts whole columns. SQLite's sorter keeps a
        // page cache's worth in memory and, with temp_store = MEMORY, its
        // spilled runs too, so memory would grow with the table. For this
        // work the runs go to temporary files, and are 4 MiB (the page
        // cache's size, and the sorter's floor of 250 pages): at 300 000
        // CVEs the builds took 3.6-3.9 s instead of 4.3-4.5 s with 16 MiB
        // runs, and the import's peak RSS 116-155 MB instead of 161-188.
        // The sorts may also use a helper thread per spare core (SQLite's
        // `threads`, off by default).
        let helpers = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
        let set = sqlx::query(&format!(
            "PRAGMA threads = {helpers}; PRAGMA temp_store = FILE; PRAGMA cache_size = -4096; \
             PRAGMA busy_timeout = {}",
            lock_wait.as_millis()
        ))
        .execute(&mut *conn)
        .await;
        let result = match set {
            Ok(_) => Self::run_bulk_pending(&mut conn).await,
            Err(e) => Err(e.into()),
        };
        restore_settings(
            conn,
            &format!(
                "PRAGMA temp_store = MEMORY; PRAGMA threads = 0; PRAGMA cache_size = {CACHE_SIZE}"
            ),
        )
        .await;
        result
    }

    async fn run_bulk_pending(conn: &mut sqlx::SqliteConnection) -> Result<()> {
        use sqlx::Connection;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let pending: Vec<(String, String)> =
            sqlx::query_as("SELECT name, sql FROM bulk_load_pending ORDER BY name")
                .fetch_all(&mut *tx)
                .await?;
        for (name, sql) in &pending {
            let sql = crate::bulk::idempotent(sql);
            // Our own statements, none with a `;` inside a literal.
            for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query("DELETE FROM bulk_load_pending WHERE name = ?")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Runs [`Store::index_search`] when rows were stored or changed since
    /// it last ran. The check is a read of three tiny things (the largest
    /// rowid, the watermark, whether `search_pending` is empty), so every
    /// search can afford it; the catching up happens once, not per search.
    async fn index_search_if_pending(&self) -> Result<()> {
        let pending: bool = sqlx::query_scalar(
            "SELECT (SELECT coalesce(max(id), 0) FROM vulnerabilities) > indexed_upto \
             OR EXISTS (SELECT 1 FROM search_pending) FROM search_index_state",
        )
        .fetch_one(&self.pool)
        .await?;
        if pending {
            self.index_search().await?;
        }
        Ok(())
    }

    /// Connections of the pool unless configured: reads run side by side,
    /// writes take turns at SQLite's one write lock anyway.
    pub const DEFAULT_POOL_SIZE: u32 = 8;

    /// Opens (creating when missing) the SQLite database at `url`
    /// (`sqlite:path`, `sqlite://path` or `sqlite::memory:`).
    /// The pool holds at most `pool_size` connections.
    pub async fn connect(url: &str, pool_size: u32) -> Result<Self> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        let opts = SqliteConnectOptions::from_str(url).map_err(|e| invalid(e.to_string()))?;
        let opts = opts
            .create_if_missing(true)
            // New databases only (an existing one keeps its page size).
            // 16 KiB pages instead of 4 KiB: a first import writes a quarter
            // as many pages (each is two syscalls in the WAL and one more
            // at the checkpoint), and the ~3 % of rows over 4 KiB (records
            // with hundreds of CPEs) need no overflow pages. A first import
            // of 300 000 CVEs took 14.5 s instead of 16.8-18.3 s.
            .page_size(PAGE_SIZE)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable in WAL mode except on power loss, and much faster.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // In-memory statement journals avoid temp-file writes per
            // statement.
            .pragma("cache_size", CACHE_SIZE)
            .pragma("temp_store", "memory")
            // Checkpoint every 2 500 pages (40 MiB of 16 KiB pages; 10 MiB
            // in older databases of 4 KiB pages) instead of 1 000: hot index
            // pages are then copied back once per many batches, not per
            // batch. A first import took as long with 10 000 pages.
            .pragma("wal_autocheckpoint", "2500")
            .log_slow_statements(crate::SLOW_STATEMENT_LEVEL, crate::SLOW_STATEMENT);
        let connect_err = |reason: String| StoreError::Connect {
            backend: "SQLite",
            url: redact_url(url),
            reason,
        };
        let filename = opts.get_filename().to_path_buf();
        let in_memory = filename
            .to_string_lossy()
            .starts_with("file:sqlx-in-memory")
            || url.contains("mode=memory");
        if !in_memory {
            if let Some(parent) = filename.parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        connect_err(format!("cannot create directory {}: {e}", parent.display()))
                    })?;
                }
            }
        }
        let mut pool = SqlitePoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(30));
        if in_memory {
            // An in-memory database lives as long as one connection to it.
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool
            .connect_with(opts)
            .await
            .map_err(|e| connect_err(redact_url(&e.to_string())))?;
        Ok(SqliteStore {
            pool,
            totals: Default::default(),
            bulk: Default::default(),
        })
    }

    /// The underlying pool, for callers that need SQLite directly (tests, tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn write_facts(
        &self,
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        updates: &[FactsUpdate],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let now = ts(now);
        for u in updates {
            sqlx::query(
                "UPDATE vulnerabilities SET exploited_in_the_wild = ?, cisa_due_date = ?, \
                 kev_date_added = ?, kev_required_action = ?, kev_ransomware_use = ?, \
                 kev_vulnerability_name = ?, epss_score = ?, epss_percentile = ?, epss_date = ?, \
                 sources = ?, priority_score = ?, priority = ?, updated_at = ? WHERE cve_id = ?",
            )
            .bind(u.exploited)
            .bind(u.kev.due_date)
            .bind(u.kev.date_added)
            .bind(&u.kev.required_action)
            .bind(u.kev.ransomware_use)
            .bind(&u.kev.vulnerability_name)
            .bind(u.epss_score)
            .bind(u.epss_percentile)
            .bind(u.epss_date)
            .bind(&u.sources)
            .bind(u.priority_score)
            .bind(&u.priority)
            .bind(&now)
            .bind(&u.cve_id)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn fetch_facts(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        ids: &[String],
    ) -> Result<Vec<FactsRow>> {
        let sql = format!(
            "SELECT {FACTS_COLUMNS} FROM vulnerabilities \
             WHERE cve_id IN (SELECT value FROM json_each(?))"
        );
        let rows = sqlx::query(&sql)
            .bind(serde_json::to_string(ids)?)
            .fetch_all(&mut **tx)
            .await?;
        Ok(rows.iter().map(facts_row).collect::<Result<_, _>>()?)
    }

    async fn cache_put(
        &self,
        table: &str,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let col = if table == "stats_cache" {
            "computed_at"
        } else {
            "created_at"
        };
        let sql = format!(
            "INSERT INTO {table} (key, value, {col}) VALUES (?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, {col} = excluded.{col}"
        );
        sqlx::query(&sql)
            .bind(key)
            .bind(serde_json::to_string(value)?)
            .bind(ts(now))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn cache_get(&self, table: &str, key: &str) -> Result<Option<CacheEntry>> {
        let col = if table == "stats_cache" {
            "computed_at"
        } else {
            "created_at"
        };
        let sql = format!("SELECT value, {col} AS stored_at FROM {table} WHERE key = ?");
        let Some(row) = sqlx::query(&sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let value: String = row.try_get("value")?;
        Ok(Some(CacheEntry {
            value: serde_json::from_str(&value)?,
            stored_at: row.try_get("stored_at")?,
        }))
    }
}

/// Appends the WHERE clause of a listing. Every value is bound. `text`:
/// whether to add the full-text condition (a ranked listing joins the
/// FTS5 match instead).
fn push_filters(qb: &mut QueryBuilder<'_, Sqlite>, q: &ListQuery, text: bool) {
    qb.push(" WHERE 1 = 1");
    if !q.include_rejected {
        qb.push(" AND vuln_status <> 'Rejected'");
    }
    if let Some(s) = q.severity {
        qb.push(" AND severity = ").push_bind(s.as_str());
    }
    if let Some(e) = q.exploited {
        qb.push(" AND exploited_in_the_wild = ").push_bind(e);
    }
    for (kind, value) in [
        ("vendor", q.vendor_norm()),
        ("product", q.product_norm()),
        ("cwe", q.cwe_norm()),
    ] {
        if let Some(value) = value {
            qb.push(" AND cve_id IN (SELECT cve_id FROM vulnerability_terms WHERE kind = ")
                .push_bind(kind)
                .push(" AND value = ")
                .push_bind(value)
                .push(")");
        }
    }
    if let Some(v) = q.min_cvss {
        qb.push(" AND cvss_score >= ").push_bind(v);
    }
    if let Some(v) = q.max_cvss {
        qb.push(" AND cvss_score <= ").push_bind(v);
    }
    if let Some(t) = q.published_after_inclusive() {
        qb.push(" AND published_at >= ").push_bind(ts(t));
    }
    if let Some(t) = q.published_before_exclusive() {
        qb.push(" AND published_at < ").push_bind(ts(t));
    }
    if let Some(t) = q.published_since {
        qb.push(" AND published_at >= ").push_bind(ts(t));
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
            qb.push(" AND 0");
        }
        Some(phrases) if text => {
            qb.push(
                " AND id IN (SELECT rowid FROM vulnerabilities_fts \
                 WHERE vulnerabilities_fts MATCH ",
            )
            .push_bind(fts5_query(&phrases))
            .push(")");
        }
        _ => {}
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
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
                self.finish_bulk_load(crate::bulk::START_LOCK_WAIT).await,
                |e| matches!(e, StoreError::Database(e) if is_busy(e)),
            )?;
        }
        Ok(())
    }

    /// Drops the non-unique indexes of `vulnerabilities` (the unique
    /// `cve_id` index stays: the upsert looks records up by it) and puts
    /// off the filter terms. Each batch then writes its rows and little
    /// else: with the indexes in place every 1 000-row commit rewrote
    /// hundreds of scattered pages of each index to the WAL (measured at
    /// 100 000 CVEs: 1.5 GB of WAL for a 255 MB database), growing with the
    /// table. Building an index once from the finished table is a sort.
    async fn begin_bulk_load(&self) -> Result<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM vulnerabilities")
            .fetch_one(&mut *tx)
            .await?;
        if rows > crate::bulk::MAX_ROWS {
            return Ok(false);
        }
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT m.name, m.sql FROM sqlite_master m \
             JOIN pragma_index_list('vulnerabilities') l ON l.name = m.name \
             WHERE m.type = 'index' AND l.\"unique\" = 0 AND m.sql IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (name, sql) in &indexes {
            sqlx::query("INSERT OR REPLACE INTO bulk_load_pending (name, sql) VALUES (?, ?)")
                .bind(name)
                .bind(sql)
                .execute(&mut *tx)
                .await?;
            // A name read from sqlite_master, quoted as an identifier.
            sqlx::query(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))
                .execute(&mut *tx)
                .await?;
        }
        note_terms_rebuild(&mut *tx).await?;
        tx.commit().await?;
        self.bulk.start();
        Ok(true)
    }

    async fn end_bulk_load(&self) -> Result<()> {
        if !self.bulk.stop() {
            return Ok(());
        }
        // Also when another process already ran the pending work: rows
        // this one stored since then still need their terms.
        note_terms_rebuild(&self.pool).await?;
        let _written = self.totals.invalidate_when_done();
        self.finish_bulk_load(BUSY_TIMEOUT).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn begin_upserts(&self) -> Result<Box<dyn crate::UpsertBatches + '_>> {
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Box::new(SqliteUpserts {
            tx,
            bulk: self.bulk.is_on(),
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now_s = ts(now);
        for id in &ids {
            let k = &map[id];
            sqlx::query(
                "INSERT INTO kev_entries (cve_id, date_added, due_date, required_action, \
                 ransomware_use, vulnerability_name, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (cve_id) DO UPDATE SET date_added = excluded.date_added, \
                 due_date = excluded.due_date, required_action = excluded.required_action, \
                 ransomware_use = excluded.ransomware_use, \
                 vulnerability_name = excluded.vulnerability_name, updated_at = excluded.updated_at",
            )
            .bind(id)
            .bind(k.date_added)
            .bind(k.due_date)
            .bind(&k.required_action)
            .bind(k.ransomware_use)
            .bind(&k.vulnerability_name)
            .bind(&now_s)
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
        self.write_facts(&mut tx, &updates, now).await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        self.write_facts(&mut tx, &updates, now).await?;
        tx.commit().await?;
        Ok(ApplySummary {
            received: scores.len() as u64,
            updated: updates.len() as u64,
            unknown: ids.len() as u64 - found,
        })
    }

    async fn recompute_priorities(&self, now: DateTime<Utc>) -> Result<u64> {
        let _written = self.totals.invalidate_when_done();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(
            "SELECT cve_id, cvss_score, severity, published_at, exploited_in_the_wild, \
             epss_score, priority_score, priority FROM vulnerabilities",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = 0;
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
                sqlx::query(
                    "UPDATE vulnerabilities SET priority_score = ?, priority = ? WHERE cve_id = ?",
                )
                .bind(score)
                .bind(class.as_str())
                .bind(row.try_get::<String, _>("cve_id")?)
                .execute(&mut *tx)
                .await?;
                changed += 1;
            }
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn get_cve(&self, cve_id: &CveId) -> Result<Option<VulnerabilityRow>> {
        let sql = format!("SELECT {VULN_COLUMNS} FROM vulnerabilities WHERE cve_id = ?");
        let row = sqlx::query(&sql)
            .bind(cve_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(vuln_row).transpose()?)
    }

    async fn list_cves(&self, query: &ListQuery) -> Result<Page<VulnerabilityRow>> {
        query.validate()?;
        let text = query.q_phrases().is_some_and(|p| !p.is_empty());
        if text {
            self.index_search_if_pending().await?;
        }
        let total = self
            .totals
            .get_or_count(crate::totals::TotalsCache::key(query), || async {
                let mut count = QueryBuilder::<Sqlite>::new(if text {
                    // Every match is looked up: in the narrow index, not the table.
                    "SELECT COUNT(*) FROM vulnerabilities INDEXED BY vulnerabilities_search_cover"
                } else {
                    "SELECT COUNT(*) FROM vulnerabilities"
                });
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
        let mut list = QueryBuilder::<Sqlite>::new(format!("SELECT {columns} FROM "));
        let dir = query.order.sql();
        let push_page = |list: &mut QueryBuilder<'_, Sqlite>| {
            list.push(" LIMIT ")
                .push_bind(i64::from(query.page_size))
                .push(" OFFSET ")
                .push_bind(query.offset());
        };
        match query.q_phrases().filter(|_| query.ranked()) {
            Some(phrases) => {
                // bm25 is lower for better matches: "desc" (best first) is
                // ascending. Weights follow the column order of the table:
                // an id or title hit outranks a passing mention.
                //
                // The page's ids are chosen first (the sorter then holds
                // narrow (id, rank) records, not every match's whole row),
                // and the wide rows are read for those ids only. CROSS JOIN
                // fixes the inner order: the matches first, each row then
                // looked up by id; the other way round SQLite ran the MATCH
                // once per row of the table. The lookups read the narrow
                // covering index of the filter columns, not the wide rows.
                let rank_dir = query.order.reversed().sql();
                let cve_id = query.q_cve_id();
                let order = |list: &mut QueryBuilder<'_, Sqlite>, rank: &str| {
                    list.push(" ORDER BY ");
                    if let Some(cve_id) = &cve_id {
                        list.push("(cve_id = ")
                            .push_bind(cve_id.clone())
                            .push(format_args!(") {dir}, "));
                    }
                    list.push(format_args!(
                        "{rank} {rank_dir}, priority_score {dir}, id {dir}"
                    ));
                };
                list.push(
                    "(SELECT id AS p_id, fts_rank AS p_rank FROM \
                     (SELECT rowid AS fts_id, \
                     bm25(vulnerabilities_fts, 10.0, 5.0, 1.0, 5.0, 1.0, 2.0, 2.0) AS fts_rank \
                     FROM vulnerabilities_fts WHERE vulnerabilities_fts MATCH ",
                )
                .push_bind(fts5_query(&phrases))
                .push(
                    ") CROSS JOIN vulnerabilities INDEXED BY vulnerabilities_search_cover \
                     ON id = fts_id",
                );
                push_filters(&mut list, query, false);
                order(&mut list, "fts_rank");
                push_page(&mut list);
                list.push(") CROSS JOIN vulnerabilities ON id = p_id");
                order(&mut list, "p_rank");
            }
            None => {
                list.push("vulnerabilities");
                push_filters(&mut list, query, true);
                list.push(format_args!(
                    " ORDER BY {} {dir} NULLS LAST, id {dir}",
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let upto: i64 = sqlx::query_scalar("SELECT indexed_upto FROM search_index_state")
            .fetch_one(&mut *tx)
            .await?;
        let newest: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM vulnerabilities")
            .fetch_one(&mut *tx)
            .await?;
        // Changed rows: drop their old entries (contentless_delete needs
        // only the rowid), then index their current text.
        sqlx::query(
            "DELETE FROM vulnerabilities_fts \
             WHERE rowid IN (SELECT id FROM search_pending WHERE id <= ?)",
        )
        .bind(upto)
        .execute(&mut *tx)
        .await?;
        let changed = sqlx::query(&format!(
            "INSERT INTO vulnerabilities_fts (rowid, {FTS_COLUMNS}) \
             SELECT id, {FTS_COLUMNS} FROM vulnerabilities \
             WHERE id IN (SELECT id FROM search_pending) AND id <= ?"
        ))
        .bind(upto)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM search_pending")
            .execute(&mut *tx)
            .await?;
        // New rows, in rowid order: one pass, no lookups.
        let added = sqlx::query(&format!(
            "INSERT INTO vulnerabilities_fts (rowid, {FTS_COLUMNS}) \
             SELECT id, {FTS_COLUMNS} FROM vulnerabilities WHERE id > ? AND id <= ? ORDER BY id"
        ))
        .bind(upto)
        .bind(newest)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if newest > upto {
            sqlx::query("UPDATE search_index_state SET indexed_upto = ?")
                .bind(newest)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(changed + added)
    }

    async fn suggest(&self, prefix: &str, limit: u32) -> Result<Vec<Suggestion>> {
        let prefix = prefix.trim();
        if prefix.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        // CVE ids are stored upper case: a case-sensitive GLOB on the
        // unique index. Only id characters go into the pattern, so GLOB's
        // wildcards cannot come from the user.
        let id_prefix: String = prefix
            .to_ascii_uppercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let id_glob = if id_prefix.is_empty() {
            String::new()
        } else {
            format!("{id_prefix}*")
        };
        // Titles: LIKE is case-insensitive and uses the NOCASE title index.
        let title_like = format!("{}%", escape_like(prefix));
        let rows = sqlx::query(
            "SELECT cve_id, title FROM ( \
               SELECT cve_id, title, 0 AS rank FROM vulnerabilities \
                 WHERE cve_id GLOB ?1 AND vuln_status <> 'Rejected' \
               UNION \
               SELECT cve_id, title, 1 AS rank FROM vulnerabilities \
                 WHERE title LIKE ?2 ESCAPE '\\' AND vuln_status <> 'Rejected' \
             ) GROUP BY cve_id ORDER BY MIN(rank), cve_id DESC LIMIT ?3",
        )
        .bind(&id_glob)
        .bind(&title_like)
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
               COUNT(*) FILTER (WHERE modified_at >= ? AND modified_at <= ?) AS recent, \
               MAX(updated_at) AS last_update \
             FROM vulnerabilities WHERE vuln_status <> 'Rejected'",
        )
        .bind(ts(now - chrono::Duration::hours(24)))
        .bind(ts(now))
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
            "SELECT t.value AS name, COUNT(*) AS n FROM vulnerability_terms t \
             JOIN vulnerabilities v ON v.cve_id = t.cve_id \
             WHERE t.kind = 'vendor' AND v.vuln_status <> 'Rejected' \
             GROUP BY t.value ORDER BY n DESC, t.value LIMIT ?",
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
            "SELECT substr(published_at, 1, 10) AS day, COUNT(*) AS n FROM vulnerabilities \
             WHERE published_at >= ? AND published_at < ? AND vuln_status <> 'Rejected' \
             GROUP BY day",
        )
        .bind(ts(start))
        .bind(ts(crate::models::day_after(now)))
        .fetch_all(&self.pool)
        .await?;
        let mut counts = HashMap::new();
        for r in &rows {
            let day: String = r.try_get("day")?;
            if let Ok(d) = NaiveDate::parse_from_str(&day, "%Y-%m-%d") {
                counts.insert(d, r.try_get::<i64, _>("n")?.max(0) as u64);
            }
        }
        Ok(crate::models::fill_days(first, days, &counts))
    }

    fn data_generation(&self) -> u64 {
        self.totals.generation()
    }

    async fn start_ingestion_run(&self, source: &str, now: DateTime<Utc>) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO ingestion_runs (source, status, started_at) VALUES (?, 'running', ?) \
             RETURNING id",
        )
        .bind(source)
        .bind(ts(now))
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
            sqlx::query_scalar("SELECT started_at FROM ingestion_runs WHERE id = ?")
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
            "UPDATE ingestion_runs SET status = ?, records_fetched = ?, records_inserted = ?, \
             records_updated = ?, records_failed = ?, completed_at = ?, duration_seconds = ?, \
             error = ? WHERE id = ?",
        )
        .bind(status.as_str())
        .bind(clamp_i64(outcome.records_fetched))
        .bind(clamp_i64(outcome.records_inserted))
        .bind(clamp_i64(outcome.records_updated))
        .bind(clamp_i64(outcome.records_failed))
        .bind(ts(now))
        .bind(crate::models::seconds_between(started, now))
        .bind(&outcome.error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn heartbeat_ingestion_run(&self, id: i64, now: DateTime<Utc>) -> Result<()> {
        // A file import holds the write lock for the whole file (and the
        // index rebuild after it): waiting for it would stall the beat for
        // that long, or fail after the busy timeout. Skip this beat instead.
        let mut conn = self.pool.acquire().await?;
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut *conn)
            .await?;
        let beat = sqlx::query(
            "UPDATE ingestion_runs SET heartbeat_at = ? WHERE id = ? AND status = 'running'",
        )
        .bind(ts(now))
        .bind(id)
        .execute(&mut *conn)
        .await;
        restore_settings(conn, "").await;
        match beat {
            Err(e) if is_busy(&e) => Ok(()),
            other => {
                other?;
                Ok(())
            }
        }
    }

    async fn close_silent_runs(
        &self,
        silent_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let closed = sqlx::query(
            "UPDATE ingestion_runs SET status = 'failed', completed_at = ?, \
             error = 'abandoned: no sign of life since ' || \
             substr(coalesce(heartbeat_at, started_at), 1, 19) || 'Z (its process was killed or crashed)' \
             WHERE status = 'running' AND coalesce(heartbeat_at, started_at) < ?",
        )
        .bind(ts(now))
        .bind(ts(silent_since))
        .execute(&self.pool)
        .await?;
        Ok(closed.rows_affected())
    }

    async fn ingestion_runs(&self, limit: u32) -> Result<Vec<IngestionRun>> {
        let rows = sqlx::query(
            "SELECT id, source, status, started_at, completed_at, duration_seconds, \
             records_fetched, records_inserted, records_updated, records_failed, error \
             FROM ingestion_runs ORDER BY started_at DESC, id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(run_row).collect::<Result<_, _>>()?)
    }

    async fn get_state(&self, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM sync_state WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn set_state(&self, key: &str, value: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "INSERT INTO sync_state (key, value, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(value)
        .bind(ts(now))
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
        let t = ts(older_than);
        let a = sqlx::query("DELETE FROM stats_cache WHERE computed_at < ?")
            .bind(&t)
            .execute(&self.pool)
            .await?;
        let b = sqlx::query("DELETE FROM search_cache WHERE created_at < ?")
            .bind(&t)
            .execute(&self.pool)
            .await?;
        Ok(a.rows_affected() + b.rows_affected())
    }

    async fn save_enrichment(&self, cve_id: &CveId, e: &Enrichment) -> Result<()> {
        let _written = self.totals.invalidate_when_done();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(
            "UPDATE vulnerabilities SET simple_title = ?, simple_description = ?, \
             recommended_action = ?, llm_model = ?, llm_processed_at = ?, llm_input_hash = ?, \
             llm_processed = 1, llm_error = NULL, llm_claimed_until = NULL, llm_attempts = 0, \
             llm_failed_at = NULL WHERE cve_id = ?",
        )
        .bind(&e.simple_title)
        .bind(&e.simple_description)
        .bind(&e.recommended_action)
        .bind(&e.model)
        .bind(ts(e.processed_at))
        .bind(&e.input_hash)
        .bind(cve_id.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(cve_id.to_string()));
        }
        // The LLM's words are searchable from the next index_search().
        mark_search_pending(&mut tx, &[cve_id.as_str()]).await?;
        tx.commit().await?;
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
            "UPDATE vulnerabilities SET llm_error = ?, llm_attempts = llm_attempts + 1, \
             llm_claimed_until = NULL, llm_failed_at = ? WHERE cve_id = ? RETURNING llm_attempts",
        )
        .bind(error)
        .bind(ts(now))
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
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {VULN_COLUMNS} FROM vulnerabilities \
             WHERE llm_processed = 0 AND vuln_status <> 'Rejected'"
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
        // One UPDATE selecting and claiming together; BEGIN IMMEDIATE takes
        // the write lock before the SELECT runs, so a concurrent claim waits
        // and then sees these rows as claimed.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE vulnerabilities SET llm_claimed_until = ");
        qb.push_bind(ts(micros(now + claim.claim_for)));
        // `llm_processed = 0` literally: it selects the partial index.
        qb.push(
            " WHERE id IN (SELECT id FROM vulnerabilities \
             WHERE llm_processed = 0 AND vuln_status <> 'Rejected' AND llm_attempts < ",
        )
        .push_bind(claim.max_attempts)
        .push(" AND (llm_claimed_until IS NULL OR llm_claimed_until <= ")
        .push_bind(ts(now))
        .push(")");
        if let Some(p) = claim.priority {
            qb.push(" AND priority = ").push_bind(p.as_str());
        }
        if let Some(after) = claim.created_after {
            qb.push(" AND created_at >= ").push_bind(ts(after));
        }
        qb.push(" ORDER BY priority_score DESC, id LIMIT ")
            .push_bind(i64::from(claim.limit))
            .push(format!(") RETURNING {VULN_COLUMNS}"));
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
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
        // Read and decide under the write lock, so nobody claims in between.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "SELECT llm_processed, llm_attempts, llm_error, llm_claimed_until \
             FROM vulnerabilities WHERE cve_id = ?",
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
            "UPDATE vulnerabilities SET llm_claimed_until = ? WHERE cve_id = ? \
             RETURNING {VULN_COLUMNS}"
        ))
        .bind(ts(micros(now + claim_for)))
        .bind(cve_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ClaimOne::Claimed(Box::new(vuln_row(&row)?)))
    }

    async fn release_llm_claim(&self, cve_id: &CveId) -> Result<()> {
        let done =
            sqlx::query("UPDATE vulnerabilities SET llm_claimed_until = NULL WHERE cve_id = ?")
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
                                AND llm_attempts < ?1) AS failed, \
               COUNT(*) FILTER (WHERE NOT llm_processed AND llm_attempts >= ?1) AS parked, \
               COUNT(*) FILTER (WHERE NOT llm_processed AND llm_claimed_until > ?2) AS claimed \
             FROM vulnerabilities WHERE vuln_status <> 'Rejected'",
        )
        .bind(LLM_MAX_ATTEMPTS)
        .bind(ts(now))
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
             WHERE llm_processed = 0 AND vuln_status <> 'Rejected' AND llm_attempts >= ? \
             ORDER BY llm_failed_at DESC NULLS LAST, id DESC LIMIT ?"
        ))
        .bind(max_attempts)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(vuln_row).collect::<Result<_, _>>()?)
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn kev_from_row(row: &SqliteRow) -> Result<KevFacts, sqlx::Error> {
    Ok(KevFacts {
        date_added: row.try_get("date_added")?,
        due_date: row.try_get("due_date")?,
        required_action: row.try_get("required_action")?,
        ransomware_use: row.try_get("ransomware_use")?,
        vulnerability_name: row.try_get("vulnerability_name")?,
    })
}

async fn severity_counts(pool: &SqlitePool) -> Result<BTreeMap<String, u64>> {
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

/// [`Store::begin_upserts`] on SQLite: one `BEGIN IMMEDIATE` transaction.
struct SqliteUpserts<'s> {
    tx: sqlx::Transaction<'static, Sqlite>,
    /// A bulk load was on when the transaction began: terms are left to
    /// its final rebuild.
    bulk: bool,
    /// Dropped after the commit (or the rollback).
    _written: crate::totals::InvalidateOnDrop<'s>,
}

#[async_trait]
impl crate::UpsertBatches for SqliteUpserts<'_> {
    async fn upsert_cves(
        &mut self,
        cves: &[openthreat_core::Cve],
        now: DateTime<Utc>,
    ) -> Result<UpsertSummary> {
        if cves.is_empty() {
            return Ok(UpsertSummary::default());
        }
        let tx = &mut self.tx;
        let mut ids: Vec<&str> = cves.iter().map(|c| c.cve_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let ids_json = serde_json::to_string(&ids)?;

        let sql = format!(
            "SELECT {FACTS_COLUMNS}, modified_at, record_hash FROM vulnerabilities \
             WHERE cve_id IN (SELECT value FROM json_each(?))"
        );
        let rows = sqlx::query(&sql)
            .bind(&ids_json)
            .fetch_all(&mut **tx)
            .await?;
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
             vulnerability_name FROM kev_entries WHERE cve_id IN (SELECT value FROM json_each(?))",
        )
        .bind(&ids_json)
        .fetch_all(&mut **tx)
        .await?;
        let kev = kev_rows
            .iter()
            .map(|row| Ok((row.try_get("cve_id")?, kev_from_row(row)?)))
            .collect::<Result<HashMap<String, _>, sqlx::Error>>()?;

        // Rows that existed before are the only ones the search index may
        // hold stale text for; new rows are above its watermark anyway.
        let stored_before: std::collections::HashSet<String> = existing.keys().cloned().collect();
        let plan = plan_upsert(cves, existing, &kev, now);
        if !plan.rows.is_empty() {
            write_rows(tx, &plan.rows, now).await?;
            if !self.bulk {
                write_terms(tx, &plan.rows).await?;
            }
            let rewritten: Vec<&str> = plan
                .rows
                .iter()
                .map(|r| r.cve_id.as_str())
                .filter(|id| stored_before.contains(*id))
                .collect();
            mark_search_pending(tx, &rewritten).await?;
        }
        Ok(plan.summary)
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Multi-row upserts of the planned rows.
async fn write_rows(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    rows: &[RowValues],
    now: DateTime<Utc>,
) -> Result<()> {
    let now = ts(now);
    let prefix = format!(
        "INSERT INTO vulnerabilities ({}, created_at, updated_at) ",
        UPSERT_COLUMNS.join(", ")
    );
    let tail = plan::on_conflict_clause();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut qb = QueryBuilder::<Sqlite>::new(&prefix);
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.cve_id.as_str())
                .push_bind(r.title.as_str())
                .push_bind(r.description.as_str())
                .push_bind(r.cvss_score)
                .push_bind(r.cvss_vector.as_deref())
                .push_bind(r.cvss_version.as_deref())
                .push_bind(r.severity.as_str())
                .push_bind(ts(r.published_at))
                .push_bind(ts(r.modified_at))
                .push_bind(r.vuln_status.as_str())
                .push_bind(r.exploited)
                .push_bind(r.cisa_due_date)
                .push_bind(r.kev_date_added)
                .push_bind(r.kev_required_action.as_deref())
                .push_bind(r.kev_ransomware_use)
                .push_bind(r.kev_vulnerability_name.as_deref())
                .push_bind(r.epss_score)
                .push_bind(r.epss_percentile)
                .push_bind(r.epss_date)
                .push_bind(r.cwe_ids.as_str())
                .push_bind(r.affected_products.as_str())
                .push_bind(r.vendors.as_str())
                .push_bind(r.products.as_str())
                .push_bind(r.references.as_str())
                .push_bind(r.sources.as_str())
                .push_bind(r.source_tags.as_str())
                .push_bind(r.priority_score)
                .push_bind(r.priority.as_str())
                .push_bind(r.record_hash.as_str())
                .push_bind(now.clone())
                .push_bind(now.clone());
        });
        qb.push(&tail);
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Replaces the vendor/product/CWE filter terms of the written rows.
async fn write_terms(tx: &mut sqlx::Transaction<'_, Sqlite>, rows: &[RowValues]) -> Result<()> {
    let ids: Vec<&str> = rows.iter().map(|r| r.cve_id.as_str()).collect();
    sqlx::query("DELETE FROM vulnerability_terms WHERE cve_id IN (SELECT value FROM json_each(?))")
        .bind(serde_json::to_string(&ids)?)
        .execute(&mut **tx)
        .await?;
    let terms: Vec<(&str, &str, &str)> = rows
        .iter()
        .flat_map(|r| {
            let id = r.cve_id.as_str();
            r.vendor_terms
                .iter()
                .map(move |v| ("vendor", v.as_str(), id))
                .chain(
                    r.product_terms
                        .iter()
                        .map(move |v| ("product", v.as_str(), id)),
                )
                .chain(r.cwe_terms.iter().map(move |v| ("cwe", v.as_str(), id)))
        })
        .collect();
    for chunk in terms.chunks(TERMS_PER_INSERT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT OR IGNORE INTO vulnerability_terms (kind, value, cve_id) ",
        );
        qb.push_values(chunk, |mut b, (kind, value, id)| {
            b.push_bind(*kind).push_bind(*value).push_bind(*id);
        });
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}
