-- The admin API counts each key's refused calls; refusals are found through this index alone,
-- however many calls a key made.
CREATE INDEX IF NOT EXISTS calls_refused ON calls (key_id) WHERE denied IS NOT NULL;
