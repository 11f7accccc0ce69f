-- Every version of every resource, the body as JSONB (NULL for a delete tombstone).
-- seq orders all changes for history paging; txid lets a reader tell which writes
-- were still in flight (synchronisation, see docs/architecture.md).
CREATE TABLE resource_version (
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
    res_type     text        NOT NULL,
    res_id       text        NOT NULL,
    version_id   bigint      NOT NULL,
    last_updated timestamptz NOT NULL,
    method       text        NOT NULL CHECK (method IN ('POST', 'PUT', 'PATCH', 'DELETE')),
    deleted      boolean     NOT NULL,
    txid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    resource     jsonb,
    PRIMARY KEY (res_type, res_id, version_id),
    CHECK (deleted = (resource IS NULL))
);
CREATE UNIQUE INDEX resource_version_seq ON resource_version (seq);
CREATE INDEX resource_version_updated ON resource_version (last_updated, seq);
CREATE INDEX resource_version_type_updated ON resource_version (res_type, last_updated, seq);

-- One row per resource: its current version. Writers lock this row (FOR UPDATE), so
-- two racing updates of one resource serialise and If-Match has exactly one winner.
-- version_id 0 marks a row claimed by a create that has not written its first version.
CREATE TABLE resource (
    res_type     text        NOT NULL,
    res_id       text        NOT NULL,
    version_id   bigint      NOT NULL,
    last_updated timestamptz NOT NULL,
    deleted      boolean     NOT NULL,
    PRIMARY KEY (res_type, res_id)
);
CREATE INDEX resource_type_updated ON resource (res_type, last_updated);

-- Token index rows of the current version (identifier now; every token parameter
-- with the search engine). Rewritten in the same transaction as the resource.
CREATE TABLE search_token (
    res_type text NOT NULL,
    res_id   text NOT NULL,
    param    text NOT NULL,
    system   text,
    code     text
);
CREATE INDEX search_token_code ON search_token (res_type, param, code, system);
CREATE INDEX search_token_owner ON search_token (res_type, res_id);
