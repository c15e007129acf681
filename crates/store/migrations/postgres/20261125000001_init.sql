-- OpenThreat schema, PostgreSQL. Matching change: migrations/sqlite/20261125000001_init.sql.

CREATE TABLE vulnerabilities (
    id                      BIGSERIAL PRIMARY KEY,
    -- "C" collation: byte order, so sorting is the same as on SQLite and
    -- prefix LIKE can use the unique index.
    cve_id                  TEXT COLLATE "C" NOT NULL UNIQUE,
    title                   TEXT NOT NULL DEFAULT '',
    description             TEXT NOT NULL DEFAULT '',
    cvss_score              DOUBLE PRECISION,
    cvss_vector             TEXT,
    cvss_version            TEXT,
    severity                TEXT NOT NULL DEFAULT 'UNKNOWN'
        CHECK (severity IN ('CRITICAL', 'HIGH', 'MEDIUM', 'LOW', 'NONE', 'UNKNOWN')),
    published_at            TIMESTAMPTZ NOT NULL,
    modified_at             TIMESTAMPTZ NOT NULL,
    vuln_status             TEXT NOT NULL DEFAULT 'Received',
    exploited_in_the_wild   BOOLEAN NOT NULL DEFAULT FALSE,
    cisa_due_date           DATE,
    kev_date_added          DATE,
    kev_required_action     TEXT,
    kev_ransomware_use      BOOLEAN,
    kev_vulnerability_name  TEXT,
    epss_score              DOUBLE PRECISION,
    epss_percentile         DOUBLE PRECISION,
    epss_date               DATE,
    cwe_ids                 JSONB NOT NULL DEFAULT '[]',
    affected_products       JSONB NOT NULL DEFAULT '[]',
    vendors                 JSONB NOT NULL DEFAULT '[]',
    products                JSONB NOT NULL DEFAULT '[]',
    "references"            JSONB NOT NULL DEFAULT '[]',
    sources                 JSONB NOT NULL DEFAULT '[]',
    source_tags             JSONB NOT NULL DEFAULT '[]',
    priority_score          DOUBLE PRECISION NOT NULL DEFAULT 0,
    priority                TEXT NOT NULL DEFAULT 'low'
        CHECK (priority IN ('high', 'medium', 'low')),
    simple_title            TEXT,
    simple_description      TEXT,
    recommended_action      TEXT,
    llm_processed           BOOLEAN NOT NULL DEFAULT FALSE,
    llm_processed_at        TIMESTAMPTZ,
    llm_model               TEXT,
    llm_error               TEXT,
    llm_attempts            INTEGER NOT NULL DEFAULT 0,
    llm_input_hash          TEXT,
    llm_claimed_until       TIMESTAMPTZ,
    -- SHA-256 of the source record as last imported: detects re-imports.
    record_hash             TEXT NOT NULL DEFAULT '',
    created_at              TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL
);

-- Filters.
CREATE INDEX vulnerabilities_severity ON vulnerabilities (severity);
CREATE INDEX vulnerabilities_exploited ON vulnerabilities (priority_score DESC, id DESC)
    WHERE exploited_in_the_wild;
CREATE INDEX vulnerabilities_vendors ON vulnerabilities USING GIN (vendors jsonb_path_ops);
CREATE INDEX vulnerabilities_products ON vulnerabilities USING GIN (products jsonb_path_ops);
CREATE INDEX vulnerabilities_cwe_ids ON vulnerabilities USING GIN (cwe_ids jsonb_path_ops);
CREATE INDEX vulnerabilities_llm_queue ON vulnerabilities (llm_processed, priority, priority_score DESC);
CREATE INDEX vulnerabilities_title_prefix ON vulnerabilities (lower(title) text_pattern_ops);

-- Sorts (with the id tie-breaker, so paging is stable). NOT NULL columns can
-- be scanned both ways; nullable ones need one index per direction to keep
-- NULLs last.
CREATE INDEX vulnerabilities_priority_score ON vulnerabilities (priority_score, id);
CREATE INDEX vulnerabilities_published_at ON vulnerabilities (published_at, id);
CREATE INDEX vulnerabilities_modified_at ON vulnerabilities (modified_at, id);
CREATE INDEX vulnerabilities_cvss_asc ON vulnerabilities (cvss_score ASC NULLS LAST, id ASC);
CREATE INDEX vulnerabilities_cvss_desc ON vulnerabilities (cvss_score DESC NULLS LAST, id DESC);
CREATE INDEX vulnerabilities_epss_asc ON vulnerabilities (epss_score ASC NULLS LAST, id ASC);
CREATE INDEX vulnerabilities_epss_desc ON vulnerabilities (epss_score DESC NULLS LAST, id DESC);

-- The CISA KEV catalog, kept apart so that a CVE imported after the catalog
-- still gets its facts.
CREATE TABLE kev_entries (
    cve_id              TEXT COLLATE "C" PRIMARY KEY,
    date_added          DATE,
    due_date            DATE,
    required_action     TEXT,
    ransomware_use      BOOLEAN,
    vulnerability_name  TEXT,
    updated_at          TIMESTAMPTZ NOT NULL
);

CREATE TABLE ingestion_runs (
    id                BIGSERIAL PRIMARY KEY,
    source            TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    records_fetched   BIGINT NOT NULL DEFAULT 0,
    records_inserted  BIGINT NOT NULL DEFAULT 0,
    records_updated   BIGINT NOT NULL DEFAULT 0,
    records_failed    BIGINT NOT NULL DEFAULT 0,
    started_at        TIMESTAMPTZ NOT NULL,
    completed_at      TIMESTAMPTZ,
    duration_seconds  DOUBLE PRECISION,
    error             TEXT
);
CREATE INDEX ingestion_runs_started ON ingestion_runs (started_at DESC, id DESC);

CREATE TABLE sync_state (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE stats_cache (
    key          TEXT PRIMARY KEY,
    value        JSONB NOT NULL,
    computed_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX stats_cache_computed ON stats_cache (computed_at);

CREATE TABLE search_cache (
    key         TEXT PRIMARY KEY,
    value       JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX search_cache_created ON search_cache (created_at);
