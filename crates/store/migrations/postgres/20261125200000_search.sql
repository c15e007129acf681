-- Full-text search. Matching change: migrations/sqlite/20261125200000_search.sql.
--
-- The search document of a CVE, in one place: the id and titles weigh most
-- (A), descriptions next (B), vendors and products least (C). -_./:@ become
-- spaces first, as in SQLite's unicode61 tokenizer; otherwise the parser
-- reads "CVE-2019-0708" as 'cve', '-2019', '-0708' (signed numbers) and
-- "1.0.1" as one version token, and phrases would match differently on the
-- two backends. 'english' everywhere, as the query is stemmed with it.
CREATE FUNCTION search_document(
    cve_id text, title text, description text, simple_title text,
    simple_description text, vendors jsonb, products jsonb
) RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT setweight(to_tsvector('english', translate(
               cve_id || ' ' || title || ' ' || coalesce(simple_title, ''),
               '-_./:@', '      ')), 'A')
        || setweight(to_tsvector('english', translate(
               description || ' ' || coalesce(simple_description, ''),
               '-_./:@', '      ')), 'B')
        || setweight(to_tsvector('english', translate(
               vendors::text || ' ' || products::text,
               '-_./:@', '      ')), 'C')
$$;

-- The documents live in a narrow side table, not in a vulnerabilities
-- column: filling a column after the import would rewrite every (wide) row
-- and all its indexes, and computing it in the upsert (commit 4862271, a
-- generated column) put to_tsvector and GIN maintenance in every batch.
-- index_search() fills it from search_pending, which the upsert and
-- save_enrichment append to in the same statement as their write (an id
-- watermark is not safe here: sequence values are not committed in order).
CREATE TABLE vulnerability_search (
    id        BIGINT PRIMARY KEY,
    document  tsvector NOT NULL
);
CREATE INDEX vulnerability_search_document ON vulnerability_search USING GIN (document)
    WITH (fastupdate = on);

CREATE TABLE search_pending (id BIGINT PRIMARY KEY);
-- Rows already stored are indexed by the first index_search().
INSERT INTO search_pending (id) SELECT id FROM vulnerabilities;
