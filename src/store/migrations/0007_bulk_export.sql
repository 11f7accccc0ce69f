-- Bulk export jobs ($export, asynchronous) and their NDJSON files, kept in the
-- database so that any instance can answer the status and file requests.
CREATE TABLE export_job (
    job_id           text        PRIMARY KEY,
    request          text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('in-progress', 'completed', 'failed')),
    -- The snapshot's horizon: a later export `_since` this instant misses nothing.
    transaction_time timestamptz,
    progress         text,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One file per resource type and at most 1,000 resources (memory stays bounded).
CREATE TABLE export_file (
    job_id   text    NOT NULL REFERENCES export_job ON DELETE CASCADE,
    file_no  integer NOT NULL,
    res_type text    NOT NULL,
    count    integer NOT NULL,
    ndjson   text    NOT NULL,
    PRIMARY KEY (job_id, file_no)
);
