-- A reserving call is in flight until this moment (then settled, or its outcome is unknown and its
-- reservation stays): a replay of its idempotency key meanwhile is refused, not waved through.
ALTER TABLE calls ADD COLUMN in_flight_until_ms INTEGER;

-- Objects a key created through the proxy (their amount was reserved then): calls that make an
-- existing object charge (confirm, capture, refund) are allowed only on these.
CREATE TABLE owned_objects (
    key_id    TEXT NOT NULL REFERENCES keys (id),
    object_id TEXT NOT NULL,
    kind      TEXT NOT NULL, -- the vendor's object type (`payment_intent`)
    currency  TEXT,
    PRIMARY KEY (key_id, object_id)
);
