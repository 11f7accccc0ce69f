-- Index rows of every search parameter of the current version of each resource,
-- one table per parameter type, rewritten in the same transaction as the resource.
-- Each lookup is one b-tree probe on (res_type, param, value…).

ALTER TABLE search_token ADD COLUMN text text;
CREATE INDEX search_token_text ON search_token (res_type, param, text text_pattern_ops)
    WHERE text IS NOT NULL;

CREATE TABLE search_string (
    res_type   text NOT NULL,
    res_id     text NOT NULL,
    param      text NOT NULL,
    normalized text NOT NULL,
    exact      text NOT NULL
);
CREATE INDEX search_string_value ON search_string (res_type, param, normalized text_pattern_ops);
CREATE INDEX search_string_owner ON search_string (res_type, res_id);

CREATE TABLE search_reference (
    res_type          text NOT NULL,
    res_id            text NOT NULL,
    param             text NOT NULL,
    target_type       text,
    target_id         text,
    url               text,
    identifier_system text,
    identifier_value  text
);
CREATE INDEX search_reference_target ON search_reference (res_type, param, target_id, target_type);
-- Reverse direction: who points at this resource (_revinclude, _has).
CREATE INDEX search_reference_reverse ON search_reference (target_type, target_id);
CREATE INDEX search_reference_url ON search_reference (res_type, param, url) WHERE url IS NOT NULL;
CREATE INDEX search_reference_identifier ON search_reference (res_type, param, identifier_value)
    WHERE identifier_value IS NOT NULL;
CREATE INDEX search_reference_owner ON search_reference (res_type, res_id);

-- Dates and periods as [low, high) ranges; open ends are years 1 and 10000.
CREATE TABLE search_date (
    res_type text        NOT NULL,
    res_id   text        NOT NULL,
    param    text        NOT NULL,
    low      timestamptz NOT NULL,
    high     timestamptz NOT NULL
);
CREATE INDEX search_date_low ON search_date (res_type, param, low);
CREATE INDEX search_date_high ON search_date (res_type, param, high);
CREATE INDEX search_date_owner ON search_date (res_type, res_id);

CREATE TABLE search_number (
    res_type text    NOT NULL,
    res_id   text    NOT NULL,
    param    text    NOT NULL,
    value    numeric NOT NULL
);
CREATE INDEX search_number_value ON search_number (res_type, param, value);
CREATE INDEX search_number_owner ON search_number (res_type, res_id);

CREATE TABLE search_quantity (
    res_type text    NOT NULL,
    res_id   text    NOT NULL,
    param    text    NOT NULL,
    value    numeric NOT NULL,
    system   text,
    code     text,
    unit     text
);
CREATE INDEX search_quantity_value ON search_quantity (res_type, param, code, value);
CREATE INDEX search_quantity_owner ON search_quantity (res_type, res_id);

CREATE TABLE search_uri (
    res_type text NOT NULL,
    res_id   text NOT NULL,
    param    text NOT NULL,
    uri      text NOT NULL
);
CREATE INDEX search_uri_value ON search_uri (res_type, param, uri text_pattern_ops);
CREATE INDEX search_uri_owner ON search_uri (res_type, res_id);
