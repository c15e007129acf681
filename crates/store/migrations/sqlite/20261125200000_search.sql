-- Full-text search. Matching change: migrations/postgres/20261125200000_search.sql.
--
-- A contentless FTS5 index over the CVE id, titles and descriptions (NVD's
-- and the LLM's), vendors and products: the text stays only in
-- vulnerabilities, and contentless_delete lets a row be re-indexed by rowid
-- without its old text. The porter stemmer approximates PostgreSQL's
-- 'english' configuration, so both backends find the same words.
--
-- It is not kept by triggers (commit 4862271 did that, and indexing every
-- row inside the upsert slowed imports down badly, see README). Instead
-- index_search() indexes in one statement what changed since it last ran:
-- * new CVEs are the rows with id > indexed_upto (ids only grow: rows are
--   never deleted and every write holds SQLite's single write lock);
-- * changed CVEs already indexed (a newer NVD record, LLM text) are listed
--   in search_pending by the write that changed them.
-- The ingestion service runs it at the end of every run and the enrichment
-- service after each save; a search runs it first when anything is pending.
CREATE VIRTUAL TABLE vulnerabilities_fts USING fts5(
    cve_id, title, description, simple_title, simple_description, vendors, products,
    content = '', contentless_delete = 1, tokenize = 'porter unicode61 remove_diacritics 2'
);

CREATE TABLE search_index_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_upto  INTEGER NOT NULL
);
-- 0: rows already stored are indexed by the first index_search().
INSERT INTO search_index_state (id, indexed_upto) VALUES (1, 0);

CREATE TABLE search_pending (id INTEGER PRIMARY KEY);
