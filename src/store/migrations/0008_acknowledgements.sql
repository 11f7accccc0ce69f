-- Notification requests waiting for their acknowledgement. The escalation timer
-- lives here, in the database: it survives restarts and crashes, and every
-- instance shares it (a due row is taken with FOR UPDATE SKIP LOCKED and marked
-- escalated in the transaction that writes the escalation, so it happens once).
CREATE TABLE ack_deadline (
    request_id   text PRIMARY KEY,
    due_at       timestamptz NOT NULL,
    escalated_at timestamptz
);
CREATE INDEX ack_deadline_due ON ack_deadline (due_at) WHERE escalated_at IS NULL;
