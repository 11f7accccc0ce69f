-- Every delivery's own update of its subscription (last_sent_at, handshake_due
-- kept as it was) named handshake_due and so woke a delivery worker for nothing.
-- Only a subscription that gains work wakes one now: created, made active, or
-- owing a handshake.
DROP TRIGGER subscription_notify ON subscription;
CREATE TRIGGER subscription_insert_notify AFTER INSERT ON subscription
    FOR EACH STATEMENT EXECUTE FUNCTION passerelle_outbox_notify();
CREATE TRIGGER subscription_notify AFTER UPDATE OF active, handshake_due ON subscription
    FOR EACH ROW
    WHEN ((NEW.active AND NOT OLD.active) OR (NEW.handshake_due AND NOT OLD.handshake_due))
    EXECUTE FUNCTION passerelle_outbox_notify();
