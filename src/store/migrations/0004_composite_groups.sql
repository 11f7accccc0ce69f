-- Composite parameters (Observation code-value-quantity …) index each component
-- under `code$i` with the ordinal of the element it comes from, so that a search
-- can require its components to match within one element. 0: not a component.
ALTER TABLE search_string ADD COLUMN grp integer NOT NULL DEFAULT 0;
ALTER TABLE search_token ADD COLUMN grp integer NOT NULL DEFAULT 0;
ALTER TABLE search_reference ADD COLUMN grp integer NOT NULL DEFAULT 0;
ALTER TABLE search_date ADD COLUMN grp integer NOT NULL DEFAULT 0;
ALTER TABLE search_number ADD COLUMN grp integer NOT NULL DEFAULT 0;
ALTER TABLE search_quantity ADD COLUMN grp integer NOT NULL DEFAULT 0;
ALTER TABLE search_uri ADD COLUMN grp integer NOT NULL DEFAULT 0;
