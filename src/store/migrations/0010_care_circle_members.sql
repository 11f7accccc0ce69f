-- Who is in each patient's care circle, and until when: one row per member a
-- resource puts there (the GP of a Patient, a participant of an active CareTeam,
-- a participant of a stay in progress, the requester and performer of an open
-- referral, the owner and requester of its open Task). Like the search index,
-- rows belong to their source resource (res_type, res_id) and are rewritten with
-- it in its transaction; `passerelle reindex` rebuilds them. `until` NULL: while
-- the source says so.
CREATE TABLE circle_member (
    res_type    text NOT NULL,
    res_id      text NOT NULL,
    patient_id  text NOT NULL,
    member_type text NOT NULL,
    member_id   text NOT NULL,
    until       timestamptz,
    grp         int4
);
CREATE INDEX circle_member_by_member ON circle_member (member_type, member_id, patient_id);
CREATE INDEX circle_member_by_patient ON circle_member (patient_id, member_type, member_id);
CREATE INDEX circle_member_owner ON circle_member (res_type, res_id);
