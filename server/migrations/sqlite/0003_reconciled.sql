-- A call whose outcome never became known (the vendor never answered, the server died mid-call)
-- is settled to what it reserved once it is old enough, by the reconciliation sweep; this marks
-- the calls it settled, for the audit trail.
ALTER TABLE calls ADD COLUMN reconciled INTEGER NOT NULL DEFAULT 0;
-- The sweep looks at unsettled calls only.
CREATE INDEX calls_unsettled ON calls (at_ms) WHERE settled_micros IS NULL;
