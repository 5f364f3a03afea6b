-- Grants: credentials from which a backend mints keys in-process (see wire/src/grant.rs). The
-- secret is kept as it is, not hashed: it is the HMAC key every minted key is checked with. A
-- run budget minted under a grant is recorded here too, at its first key's first use, with the
-- grant as its parent and no secret of its own.
CREATE TABLE grants (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    id                 TEXT    NOT NULL UNIQUE,
    secret             TEXT,             -- NULL for a run: its keys are checked with its grant's
    parent_id          TEXT    REFERENCES grants (id), -- a run's grant
    label_prefix       TEXT    NOT NULL,
    vendor             TEXT    NOT NULL,
    max_key_cap_micros INTEGER NOT NULL CHECK (max_key_cap_micros > 0),
    daily_cap_micros   INTEGER NOT NULL CHECK (daily_cap_micros > 0),
    allowed_endpoints  TEXT    NOT NULL, -- JSON array of patterns
    allowed_methods    TEXT,             -- JSON array, NULL when unrestricted
    max_key_ttl_ms     INTEGER NOT NULL CHECK (max_key_ttl_ms > 0),
    created_ms         INTEGER NOT NULL,
    expires_ms         INTEGER NOT NULL,
    revoked_ms         INTEGER
);

-- A minted key is recorded the first time the proxy sees it, with the grant it came from.
ALTER TABLE keys ADD COLUMN grant_id TEXT REFERENCES grants (id);
CREATE INDEX keys_grant ON keys (grant_id) WHERE grant_id IS NOT NULL;

-- Spend of all of a grant's keys together on one UTC day, reserved and settled together with
-- each key's own.
CREATE TABLE grant_spend (
    grant_id        TEXT    NOT NULL REFERENCES grants (id),
    day             TEXT    NOT NULL,
    spent_micros    INTEGER NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
    reserved_micros INTEGER NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
    PRIMARY KEY (grant_id, day)
);

-- Minted keys revoked by their grant's holder, seen or not: refused until they would have
-- expired anyway.
CREATE TABLE tombstones (
    key_id   TEXT    NOT NULL,
    grant_id TEXT    NOT NULL REFERENCES grants (id),
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (key_id, grant_id)
);
CREATE INDEX tombstones_until ON tombstones (until_ms);

-- Labels an operator revoked (a label prefix, or one label exactly): a minted key with such a
-- label, minted before the revocation but first presented after it, is refused as the keys
-- recorded by then were revoked. Kept until every key minted before it has expired.
CREATE TABLE label_revocations (
    label    TEXT    NOT NULL,
    exact    INTEGER NOT NULL,
    at_ms    INTEGER NOT NULL,
    until_ms INTEGER NOT NULL
);
CREATE INDEX label_revocations_until ON label_revocations (until_ms);
