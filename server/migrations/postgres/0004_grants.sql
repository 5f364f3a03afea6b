-- Grants, as in ../sqlite/0006_grants.sql, in PostgreSQL's types.
CREATE TABLE grants (
    seq                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                 TEXT   NOT NULL UNIQUE,
    secret             TEXT,
    parent_id          TEXT   REFERENCES grants (id),
    label_prefix       TEXT   NOT NULL,
    vendor             TEXT   NOT NULL,
    max_key_cap_micros BIGINT NOT NULL CHECK (max_key_cap_micros > 0),
    daily_cap_micros   BIGINT NOT NULL CHECK (daily_cap_micros > 0),
    allowed_endpoints  TEXT   NOT NULL,
    allowed_methods    TEXT,
    max_key_ttl_ms     BIGINT NOT NULL CHECK (max_key_ttl_ms > 0),
    created_ms         BIGINT NOT NULL,
    expires_ms         BIGINT NOT NULL,
    revoked_ms         BIGINT
);

ALTER TABLE keys ADD COLUMN grant_id TEXT REFERENCES grants (id);
CREATE INDEX keys_grant ON keys (grant_id) WHERE grant_id IS NOT NULL;

CREATE TABLE grant_spend (
    grant_id        TEXT   NOT NULL REFERENCES grants (id),
    day             TEXT   NOT NULL,
    spent_micros    BIGINT NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
    reserved_micros BIGINT NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
    PRIMARY KEY (grant_id, day)
);

CREATE TABLE tombstones (
    key_id   TEXT   NOT NULL,
    grant_id TEXT   NOT NULL REFERENCES grants (id),
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (key_id, grant_id)
);
CREATE INDEX tombstones_until ON tombstones (until_ms);

-- Labels an operator revoked (a label prefix, or one label exactly): a minted key with such a
-- label, minted before the revocation but first presented after it, is refused as the keys
-- recorded by then were revoked. Kept until every key minted before it has expired.
CREATE TABLE label_revocations (
    label    TEXT    NOT NULL,
    exact    BOOLEAN NOT NULL,
    at_ms    BIGINT NOT NULL,
    until_ms BIGINT NOT NULL
);
CREATE INDEX label_revocations_until ON label_revocations (until_ms);
