-- The same search documents, computed faster. translate() looks up every
-- character of the text in its list, multibyte-aware, and took a fifth of
-- a first import's indexing (0.75 s per 50 000 descriptions, against
-- 0.02 s for six replace() calls, which scan for one ASCII byte each; an
-- ASCII byte never occurs inside a UTF-8 multibyte character, so the
-- result is identical). Documents already stored stay valid as they are.
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
