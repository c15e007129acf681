-- OpenThreat schema, SQLite. Matching change: migrations/postgres/20261125000001_init.sql.
-- Timestamps are RFC 3339 UTC text of fixed width (sortable), dates are
-- YYYY-MM-DD, booleans 0/1, lists JSON text.

CREATE TABLE vulnerabilities (
    id                      INTEGER PRIMARY KEY,
    cve_id                  TEXT NOT NULL UNIQUE,
    title                   TEXT NOT NULL DEFAULT '',
    description             TEXT NOT NULL DEFAULT '',
    cvss_score              REAL,
    cvss_vector             TEXT,
    cvss_version            TEXT,
    severity                TEXT NOT NULL DEFAULT 'UNKNOWN'
        CHECK (severity IN ('CRITICAL', 'HIGH', 'MEDIUM', 'LOW', 'NONE', 'UNKNOWN')),
    published_at            TEXT NOT NULL,
    modified_at             TEXT NOT NULL,
    vuln_status             TEXT NOT NULL DEFAULT 'Received',
    exploited_in_the_wild   BOOLEAN NOT NULL DEFAULT 0,
    cisa_due_date           DATE,
    kev_date_added          DATE,
    kev_required_action     TEXT,
    kev_ransomware_use      BOOLEAN,
    kev_vulnerability_name  TEXT,
    epss_score              REAL,
    epss_percentile         REAL,
    epss_date               DATE,
    cwe_ids                 TEXT NOT NULL DEFAULT '[]',
    affected_products       TEXT NOT NULL DEFAULT '[]',
    vendors                 TEXT NOT NULL DEFAULT '[]',
    products                TEXT NOT NULL DEFAULT '[]',
    "references"            TEXT NOT NULL DEFAULT '[]',
    sources                 TEXT NOT NULL DEFAULT '[]',
    source_tags             TEXT NOT NULL DEFAULT '[]',
    priority_score          REAL NOT NULL DEFAULT 0,
    priority                TEXT NOT NULL DEFAULT 'low'
        CHECK (priority IN ('high', 'medium', 'low')),
    simple_title            TEXT,
    simple_description      TEXT,
    recommended_action      TEXT,
    llm_processed           BOOLEAN NOT NULL DEFAULT 0,
    llm_processed_at        DATETIME,
    llm_model               TEXT,
    llm_error               TEXT,
    llm_attempts            INTEGER NOT NULL DEFAULT 0,
    llm_input_hash          TEXT,
    llm_claimed_until       DATETIME,
    -- SHA-256 of the source record as last imported: detects re-imports.
    record_hash             TEXT NOT NULL DEFAULT '',
    created_at              DATETIME NOT NULL,
    updated_at              DATETIME NOT NULL
);

-- Filters.
CREATE INDEX vulnerabilities_severity ON vulnerabilities (severity);
CREATE INDEX vulnerabilities_exploited ON vulnerabilities (exploited_in_the_wild, priority_score);
CREATE INDEX vulnerabilities_llm_queue ON vulnerabilities (llm_processed, priority, priority_score);
-- NOCASE indexes let the (case-insensitive) prefix LIKE of suggestions use an index.
CREATE INDEX vulnerabilities_cve_id_nocase ON vulnerabilities (cve_id COLLATE NOCASE);
CREATE INDEX vulnerabilities_title_nocase ON vulnerabilities (title COLLATE NOCASE);

-- Sorts, with the id tie-breaker so paging is stable.
CREATE INDEX vulnerabilities_priority_score ON vulnerabilities (priority_score, id);
CREATE INDEX vulnerabilities_published_at ON vulnerabilities (published_at, id);
CREATE INDEX vulnerabilities_modified_at ON vulnerabilities (modified_at, id);
CREATE INDEX vulnerabilities_cvss_score ON vulnerabilities (cvss_score, id);
CREATE INDEX vulnerabilities_epss_score ON vulnerabilities (epss_score, id);

-- Vendor, product and CWE filter terms, one row per (kind, value, CVE):
-- SQLite cannot index inside a JSON array, so the upsert mirrors the lists
-- here. kind is 'vendor', 'product' or 'cwe'.
CREATE TABLE vulnerability_terms (
    kind    TEXT NOT NULL,
    value   TEXT NOT NULL,
    cve_id  TEXT NOT NULL REFERENCES vulnerabilities (cve_id) ON DELETE CASCADE,
    PRIMARY KEY (kind, value, cve_id)
) WITHOUT ROWID;
CREATE INDEX vulnerability_terms_cve ON vulnerability_terms (cve_id);

-- The CISA KEV catalog, kept apart so that a CVE imported after the catalog
-- still gets its facts.
CREATE TABLE kev_entries (
    cve_id              TEXT PRIMARY KEY,
    date_added          DATE,
    due_date            DATE,
    required_action     TEXT,
    ransomware_use      BOOLEAN,
    vulnerability_name  TEXT,
    updated_at          DATETIME NOT NULL
);

CREATE TABLE ingestion_runs (
    id                INTEGER PRIMARY KEY,
    source            TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    records_fetched   INTEGER NOT NULL DEFAULT 0,
    records_inserted  INTEGER NOT NULL DEFAULT 0,
    records_updated   INTEGER NOT NULL DEFAULT 0,
    records_failed    INTEGER NOT NULL DEFAULT 0,
    started_at        DATETIME NOT NULL,
    completed_at      DATETIME,
    duration_seconds  REAL,
    error             TEXT
);
CREATE INDEX ingestion_runs_started ON ingestion_runs (started_at DESC, id DESC);

CREATE TABLE sync_state (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  DATETIME NOT NULL
);

CREATE TABLE stats_cache (
    key          TEXT PRIMARY KEY,
    value        TEXT NOT NULL,
    computed_at  DATETIME NOT NULL
);
CREATE INDEX stats_cache_computed ON stats_cache (computed_at);

CREATE TABLE search_cache (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    created_at  DATETIME NOT NULL
);
CREATE INDEX search_cache_created ON search_cache (created_at);
