-- The same search documents, computed faster. translate() looks up every
-- character of the text in its list, multibyte-aware: over 50 000
-- descriptions it took 0.68 s more than reading them, six replace() calls
-- 0.02 s (each scans for one ASCII byte; an ASCII byte never occurs inside
-- a UTF-8 multibyte character, so the result is identical), and computing
-- the documents of 50 000 CVEs went from 3.8 to 2.7 s. Documents already
-- stored stay valid as they are.
CREATE OR REPLACE FUNCTION search_separators_to_spaces(t text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT replace(replace(replace(replace(replace(replace(
        t, '-', ' '), '_', ' '), '.', ' '), '/', ' '), ':', ' '), '@', ' ')
$$;

CREATE OR REPLACE FUNCTION search_document(
    cve_id text, title text, description text, simple_title text,
    simple_description text, vendors jsonb, products jsonb
) RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT setweight(to_tsvector('english', search_separators_to_spaces(
               cve_id || ' ' || title || ' ' || coalesce(simple_title, ''))), 'A')
        || setweight(to_tsvector('english', search_separators_to_spaces(
               description || ' ' || coalesce(simple_description, ''))), 'B')
        || setweight(to_tsvector('english', search_separators_to_spaces(
               vendors::text || ' ' || products::text)), 'C')
$$;
