-- Work a bulk load (Store::begin_bulk_load) has put off: the definitions of
-- the secondary indexes of vulnerabilities it dropped. end_bulk_load builds
-- them again (several at once, one connection each) and clears them; so
-- does migrate(), so that a load killed half-way leaves nothing missing
-- once the service starts again. The same table as SQLite's
-- (migrations/sqlite/20261126000001_bulk_load.sql, written when PostgreSQL
-- still kept its indexes during a load, as its last line says).
CREATE TABLE bulk_load_pending (
    name  TEXT PRIMARY KEY,
    sql   TEXT NOT NULL
);
