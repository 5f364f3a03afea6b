-- The same tables as SQLite's (see ../sqlite), in PostgreSQL's types; every integer is BIGINT.

-- Keys. `seq` orders pages; `id` is the public id; only the token's SHA-256 is kept.
CREATE TABLE keys (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                TEXT   NOT NULL UNIQUE,
    token_hash        BYTEA  NOT NULL UNIQUE,
    label             TEXT   NOT NULL,
    vendor            TEXT   NOT NULL,
    daily_cap_micros  BIGINT NOT NULL CHECK (daily_cap_micros > 0),
    allowed_endpoints TEXT   NOT NULL, -- JSON array of patterns
    allowed_methods   TEXT,            -- JSON array, NULL when unrestricted
    created_ms        BIGINT NOT NULL,
    expires_ms        BIGINT NOT NULL,
    revoked_ms        BIGINT,
    requests          BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX keys_label ON keys (label);

-- Spend of one key on one UTC day: `spent` is settled, `reserved` held by unsettled calls.
CREATE TABLE spend (
    key_id          TEXT   NOT NULL REFERENCES keys (id),
    day             TEXT   NOT NULL, -- YYYY-MM-DD, UTC
    spent_micros    BIGINT NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
    reserved_micros BIGINT NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
    PRIMARY KEY (key_id, day)
);

-- Every call a key made: forwarded (with its reservation and settlement) or refused.
CREATE TABLE calls (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id             TEXT   NOT NULL REFERENCES keys (id),
    day                TEXT   NOT NULL,
    at_ms              BIGINT NOT NULL,
    method             TEXT   NOT NULL,
    path               TEXT   NOT NULL,
    upstream_status    BIGINT,
    reserved_micros    BIGINT NOT NULL DEFAULT 0,
    settled_micros     BIGINT,          -- NULL while the outcome is unknown
    denied             TEXT,            -- error code when refused
    idempotency_key    TEXT,
    fingerprint        TEXT,
    -- A reserving call is in flight until this moment (then settled, or its outcome is unknown
    -- and its reservation stays): a replay of its idempotency key meanwhile is refused.
    in_flight_until_ms BIGINT,
    -- Settled by the reconciliation sweep: its outcome never became known, so it was settled to
    -- what it reserved.
    reconciled         BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX calls_key ON calls (key_id, id);
CREATE INDEX calls_idempotency ON calls (key_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX calls_unsettled ON calls (at_ms) WHERE settled_micros IS NULL;

-- Objects a key created through the proxy (their amount was reserved then): calls that make an
-- existing object charge (confirm, capture, refund) are allowed only on these.
CREATE TABLE owned_objects (
    key_id    TEXT NOT NULL REFERENCES keys (id),
    object_id TEXT NOT NULL,
    kind      TEXT NOT NULL, -- the vendor's object type (`payment_intent`)
    currency  TEXT,
    PRIMARY KEY (key_id, object_id)
);

-- Every server on this database keeps keys in memory and forgets one when its id arrives on
-- this channel. Any change to what a key allows notifies, whoever makes it (a server revoking, or
-- an operator in psql); the notification leaves when the changing transaction commits. The
-- request counter, bumped on every call, is not such a change.
CREATE FUNCTION vault_key_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vault_key_keys', OLD.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER keys_changed AFTER UPDATE ON keys FOR EACH ROW
    WHEN ((OLD.id, OLD.token_hash, OLD.vendor, OLD.daily_cap_micros, OLD.allowed_endpoints,
           OLD.allowed_methods, OLD.expires_ms, OLD.revoked_ms)
          IS DISTINCT FROM
          (NEW.id, NEW.token_hash, NEW.vendor, NEW.daily_cap_micros, NEW.allowed_endpoints,
           NEW.allowed_methods, NEW.expires_ms, NEW.revoked_ms))
    EXECUTE FUNCTION vault_key_key_changed();
CREATE TRIGGER keys_deleted AFTER DELETE ON keys FOR EACH ROW
    EXECUTE FUNCTION vault_key_key_changed();
