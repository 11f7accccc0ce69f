-- Subscriptions in force, kept in the same transaction as the Subscription resource
-- they come from, so that a subscription matches from the commit that activates it,
-- on every instance. The worker's delivery state lives on the same row.
CREATE TABLE subscription (
    sub_id             text        PRIMARY KEY,
    active             boolean     NOT NULL,
    -- Topic canonical URL (R4 Backport) or NULL for R4 criteria.
    topic              text,
    -- Search criteria ("Encounter?status=finished"): R4 criteria, or Backport filters.
    criteria           text[]      NOT NULL,
    -- What the worker delivers with: channel, payload, headers, secret (service::subscription).
    channel            jsonb       NOT NULL,
    ends_at            timestamptz,
    events_since_start bigint      NOT NULL DEFAULT 0,
    -- Consecutive failed attempts of the oldest undelivered notification.
    attempts           integer     NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    leased_by          text,
    leased_until       timestamptz,
    last_error         text,
    handshake_due      boolean     NOT NULL DEFAULT false,
    -- Backport heartbeat period, seconds (NULL: none), and the last notification sent.
    heartbeat_secs     integer,
    last_sent_at       timestamptz
);

-- One row per value a subscription requires ('' when none): a write looks up the
-- candidates for its type and the keys its index rows offer (search::matcher).
-- Workers find work from the few subscriptions with something due, never by
-- scanning them all (see subscriptions::lease).
CREATE INDEX subscription_handshake_due ON subscription (sub_id) WHERE handshake_due;
CREATE INDEX subscription_heartbeat ON subscription (sub_id) WHERE heartbeat_secs IS NOT NULL;
CREATE INDEX subscription_ends ON subscription (ends_at) WHERE active AND ends_at IS NOT NULL;

CREATE TABLE subscription_key (
    res_type  text NOT NULL,
    match_key text NOT NULL,
    sub_id    text NOT NULL REFERENCES subscription ON DELETE CASCADE,
    PRIMARY KEY (res_type, match_key, sub_id)
);
CREATE INDEX subscription_key_sub ON subscription_key (sub_id);
-- Every write looks up its candidates here with a prepared statement: a plan made
-- while the table was nearly empty scans every key of a type once it has
-- thousands. Analyse after small changes so that such plans are replaced soon.
ALTER TABLE subscription_key SET (autovacuum_analyze_threshold = 20, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE subscription SET (autovacuum_analyze_threshold = 20, autovacuum_analyze_scale_factor = 0.02);

-- The outbox: one row per (write, matching subscription), inserted in the write's
-- transaction. event_number is given by the delivering worker, in commit order, so
-- that writers never wait on a subscription's counter.
CREATE TABLE subscription_event (
    seq           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sub_id        text        NOT NULL,
    event_number  bigint,
    focus_type    text        NOT NULL,
    focus_id      text        NOT NULL,
    focus_version bigint      NOT NULL,
    interaction   text        NOT NULL CHECK (interaction IN ('create', 'update', 'delete')),
    recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    status        text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts      integer     NOT NULL DEFAULT 0,
    delivered_at  timestamptz,
    last_error    text,
    UNIQUE (sub_id, event_number)
);
CREATE INDEX subscription_event_pending ON subscription_event (sub_id, seq) WHERE status = 'pending';

-- Tokens of $get-ws-binding-token: a websocket client binds with one.
CREATE TABLE subscription_ws_token (
    token      text        PRIMARY KEY,
    sub_id     text        NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Wakes the delivery workers at commit (the poll is the safety net).
CREATE FUNCTION passerelle_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('passerelle_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER subscription_event_notify AFTER INSERT ON subscription_event
    FOR EACH STATEMENT EXECUTE FUNCTION passerelle_outbox_notify();
CREATE TRIGGER subscription_notify AFTER INSERT OR UPDATE OF active, handshake_due ON subscription
    FOR EACH STATEMENT EXECUTE FUNCTION passerelle_outbox_notify();
