-- What an NdE subscriber's criteria select: event declarations, for each of which
-- the write path writes a notification request based on the subscription (its
-- `criteria` column then holds those requests). Few rows have any: the write path
-- reads them whenever a declaration is written.
ALTER TABLE subscription ADD COLUMN selects text[] NOT NULL DEFAULT '{}';
CREATE INDEX subscription_selecting ON subscription (sub_id)
    WHERE active AND cardinality(selects) > 0;
