-- Full-text search over the CVE id, titles, descriptions (NVD's and the
-- LLM's), vendors and products. Matching change: migrations/sqlite/20261125000002_search.sql.
-- A stored generated column: PostgreSQL keeps it current on every write.
-- Hyphens become spaces first, as in SQLite's tokenizer; otherwise the
-- parser reads "CVE-2019-0708" as 'cve', '-2019', '-0708' (signed numbers).
ALTER TABLE vulnerabilities ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english',
        translate(cve_id || ' ' || title || ' ' || coalesce(simple_title, ''), '-', ' ')), 'A')
    || setweight(to_tsvector('english',
        translate(description || ' ' || coalesce(simple_description, ''), '-', ' ')), 'B')
    || setweight(to_tsvector('simple', translate(vendors::text || ' ' || products::text, '-', ' ')), 'C')
) STORED;

-- A large pending list (32 MiB) lets batch imports append new entries
-- cheaply; (auto)vacuum merges them into the index later.
CREATE INDEX vulnerabilities_search ON vulnerabilities USING GIN (search_vector)
    WITH (fastupdate = on, gin_pending_list_limit = 32768);
