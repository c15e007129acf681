-- Fewer index writes per upserted row (SQLite only; PostgreSQL unchanged).
-- * CVE-id suggestions use GLOB on the unique (binary) index, since ids are
--   stored upper case, so the NOCASE copy of that index is not needed.
-- * vulnerability_terms is derived data written only by the upsert, which
--   also removes a CVE's old terms; the foreign key cost one parent lookup
--   per term. Rebuilt without it, from the JSON lists.
DROP INDEX vulnerabilities_cve_id_nocase;

DROP TABLE vulnerability_terms;
CREATE TABLE vulnerability_terms (
    kind    TEXT NOT NULL,
    value   TEXT NOT NULL,
    cve_id  TEXT NOT NULL,
    PRIMARY KEY (kind, value, cve_id)
) WITHOUT ROWID;
CREATE INDEX vulnerability_terms_cve ON vulnerability_terms (cve_id);

INSERT OR IGNORE INTO vulnerability_terms (kind, value, cve_id)
    SELECT 'vendor', j.value, v.cve_id FROM vulnerabilities v, json_each(v.vendors) j
    UNION ALL
    SELECT 'product', j.value, v.cve_id FROM vulnerabilities v, json_each(v.products) j
    UNION ALL
    SELECT 'cwe', j.value, v.cve_id FROM vulnerabilities v, json_each(v.cwe_ids) j;
