-- Background jobs (bulk exports, reindexing after a SearchParameter change) live
-- in the database and are leased, so that each runs once, on any instance, and
-- survives the instance that started it: a lease that is not renewed expires and
-- another instance takes the job up (an export from the start, in a new
-- snapshot; a reindex from its last checkpoint).
CREATE TABLE background_job (
    job_id       text        PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind IN ('export', 'reindex')),
    -- What to do (an export's selection, a reindex's types).
    spec         jsonb       NOT NULL,
    -- Where a resumable job stands (a reindex's last resource).
    checkpoint   jsonb,
    status       text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    attempts     integer     NOT NULL DEFAULT 0,
    leased_by    text,
    leased_until timestamptz,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX background_job_pending ON background_job (created_at) WHERE status = 'pending';

-- Exports running when this version was installed ran in a task of an instance
-- now stopped: they are said to have failed, as they were before.
UPDATE export_job SET status = 'failed', updated_at = now(),
       error = 'the export was interrupted by an upgrade of the server; start it again'
 WHERE status = 'in-progress';

-- Who kicked an export off (the token's client and user): only they read its
-- status and files when tokens are required.
ALTER TABLE export_job ADD COLUMN owner jsonb;
