-- no-transaction
-- The admin API counts each key's refused calls; refusals are found through this index alone,
-- however many calls a key made. Built concurrently: a server migrating on start must not block
-- the other servers' writes to `calls` while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS calls_refused ON calls (key_id) WHERE denied IS NOT NULL;
