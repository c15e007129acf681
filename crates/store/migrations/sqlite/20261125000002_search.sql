-- Full-text search over the CVE id, titles, descriptions (NVD's and the
-- LLM's), vendors and products. Matching change: migrations/postgres/20261125000002_search.sql.
-- An external-content FTS5 index (the text lives only in vulnerabilities),
-- kept current by triggers. The porter stemmer approximates PostgreSQL's
-- 'english' configuration, so both backends find the same words.
CREATE VIRTUAL TABLE vulnerabilities_fts USING fts5(
    cve_id, title, description, simple_title, simple_description, vendors, products,
    content = 'vulnerabilities', content_rowid = 'id', tokenize = 'porter unicode61'
);

INSERT INTO vulnerabilities_fts (rowid, cve_id, title, description, simple_title, simple_description, vendors, products)
    SELECT id, cve_id, title, description, simple_title, simple_description, vendors, products FROM vulnerabilities;

CREATE TRIGGER vulnerabilities_fts_insert AFTER INSERT ON vulnerabilities BEGIN
    INSERT INTO vulnerabilities_fts (rowid, cve_id, title, description, simple_title, simple_description, vendors, products)
    VALUES (new.id, new.cve_id, new.title, new.description, new.simple_title, new.simple_description, new.vendors, new.products);
END;

CREATE TRIGGER vulnerabilities_fts_delete AFTER DELETE ON vulnerabilities BEGIN
    INSERT INTO vulnerabilities_fts (vulnerabilities_fts, rowid, cve_id, title, description, simple_title, simple_description, vendors, products)
    VALUES ('delete', old.id, old.cve_id, old.title, old.description, old.simple_title, old.simple_description, old.vendors, old.products);
END;

CREATE TRIGGER vulnerabilities_fts_update
AFTER UPDATE OF cve_id, title, description, simple_title, simple_description, vendors, products ON vulnerabilities
BEGIN
    INSERT INTO vulnerabilities_fts (vulnerabilities_fts, rowid, cve_id, title, description, simple_title, simple_description, vendors, products)
    VALUES ('delete', old.id, old.cve_id, old.title, old.description, old.simple_title, old.simple_description, old.vendors, old.products);
    INSERT INTO vulnerabilities_fts (rowid, cve_id, title, description, simple_title, simple_description, vendors, products)
    VALUES (new.id, new.cve_id, new.title, new.description, new.simple_title, new.simple_description, new.vendors, new.products);
END;
