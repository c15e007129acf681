-- A search looks up every matching row by id to apply the filters and the
-- tie-break. Read from the table, each lookup walks a wide row (the text,
-- references and products, often on overflow pages); read from this narrow
-- index holding what those steps need, a search for a common word ("remote",
-- 24 000 of 100 000 CVEs) took 52 ms instead of 122 ms, its count 16 ms
-- instead of 69 ms. UNIQUE because `id` is: a bulk load keeps unique indexes,
-- and new rows (rising ids) are appended to it.
CREATE UNIQUE INDEX vulnerabilities_search_cover ON vulnerabilities (
    id, vuln_status, priority_score, severity, exploited_in_the_wild, cvss_score,
    published_at, llm_processed, priority, cve_id
);
