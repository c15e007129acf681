-- Work a bulk load (Store::begin_bulk_load) has put off: the definitions of
-- the secondary indexes it dropped, and the rebuild of vulnerability_terms.
-- end_bulk_load runs and clears them; so does migrate(), so that a load
-- killed half-way leaves nothing missing once the service starts again.
-- SQLite only: PostgreSQL keeps its indexes during a load.
CREATE TABLE bulk_load_pending (
    name  TEXT PRIMARY KEY,
    sql   TEXT NOT NULL
);
