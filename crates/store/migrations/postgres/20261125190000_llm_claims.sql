-- LLM work claims and parking. Matching change: migrations/sqlite/20261125190000_llm_claims.sql.
-- * llm_failed_at: when the last failed attempt was recorded, so parked CVEs
--   can be listed most recent first (not exposed in rows; ordering only).
-- * vulnerabilities_llm_pending: the batch claim selects unprocessed CVEs of
--   every class by priority_score DESC, id. The older llm_queue index leads
--   with the priority class, so it cannot give that order across classes;
--   this partial index holds only the pending rows and gives it directly.
ALTER TABLE vulnerabilities ADD COLUMN llm_failed_at TIMESTAMPTZ;

CREATE INDEX vulnerabilities_llm_pending ON vulnerabilities (priority_score DESC, id)
    WHERE NOT llm_processed;
