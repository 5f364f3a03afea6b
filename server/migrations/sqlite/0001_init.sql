-- Keys. `seq` orders pages; `id` is the public id; only the token's SHA-256 is kept.
CREATE TABLE keys (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT    NOT NULL UNIQUE,
    token_hash        BLOB    NOT NULL UNIQUE,
    label             TEXT    NOT NULL,
    vendor            TEXT    NOT NULL,
    daily_cap_micros  INTEGER NOT NULL CHECK (daily_cap_micros > 0),
    allowed_endpoints TEXT    NOT NULL, -- JSON array of patterns
    allowed_methods   TEXT,             -- JSON array, NULL when unrestricted
    created_ms        INTEGER NOT NULL,
    expires_ms        INTEGER NOT NULL,
    revoked_ms        INTEGER,
    requests          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX keys_label ON keys (label);

-- Spend of one key on one UTC day: `spent` is settled, `reserved` held by unsettled calls.
CREATE TABLE spend (
    key_id          TEXT    NOT NULL REFERENCES keys (id),
    day             TEXT    NOT NULL, -- YYYY-MM-DD, UTC
    spent_micros    INTEGER NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
    reserved_micros INTEGER NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
    PRIMARY KEY (key_id, day)
);

-- Every call a key made: forwarded (with its reservation and settlement) or refused.
CREATE TABLE calls (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id          TEXT    NOT NULL REFERENCES keys (id),
    day             TEXT    NOT NULL,
    at_ms           INTEGER NOT NULL,
    method          TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    upstream_status INTEGER,
    reserved_micros INTEGER NOT NULL DEFAULT 0,
    settled_micros  INTEGER,          -- NULL while the outcome is unknown
    denied          TEXT,             -- error code when refused
    idempotency_key TEXT,
    fingerprint     TEXT
);
CREATE INDEX calls_key ON calls (key_id, id);
CREATE INDEX calls_idempotency ON calls (key_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
