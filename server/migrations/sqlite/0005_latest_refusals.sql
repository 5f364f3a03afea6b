-- The dashboard shows the latest refusals of all keys: read newest first through this index
-- alone, however few of the calls were refused.
CREATE INDEX IF NOT EXISTS calls_latest_refused ON calls (id) WHERE denied IS NOT NULL;
