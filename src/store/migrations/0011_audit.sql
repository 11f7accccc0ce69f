-- The audit trail: one row per request to the FHIR API (reads, searches, writes,
-- operations, refusals), written before the answer leaves (group commit), never
-- updated or deleted through the API. Served as R4 AuditEvent resources.
-- Few indexes: each costs every request. The AuditEvent's id is its `seq`; newest
-- first is by `seq`; a search by date alone reads backwards in `seq` order.
CREATE TABLE audit_event (
    seq         bigserial PRIMARY KEY,
    recorded    timestamptz NOT NULL,
    -- AuditEvent.action (C R U D E) and the REST interaction or operation.
    action      text        NOT NULL,
    subtype     text        NOT NULL,
    -- HTTP status of the answer; AuditEvent.outcome is derived from it.
    status      int4        NOT NULL,
    client_id   text,
    subject     text,
    fhir_user   text,
    source      text,
    method      text        NOT NULL,
    path        text        NOT NULL,
    query       text,
    -- The resource the request was about, when one.
    entity_type text,
    entity_id   text,
    -- The patient the request named (a Patient, a compartment, a patient parameter).
    patient_id  text,
    -- Break-the-glass: the reason given.
    break_glass text
);
CREATE INDEX audit_event_patient ON audit_event (patient_id, seq) WHERE patient_id IS NOT NULL;
CREATE INDEX audit_event_entity ON audit_event (entity_type, entity_id, seq) WHERE entity_id IS NOT NULL;
CREATE INDEX audit_event_agent ON audit_event (fhir_user, seq) WHERE fhir_user IS NOT NULL;
