-- Idempotency keys of registry writes (registerService's `Idempotency-Key`): the request
-- (canonical JSON) and the answer a retry with the same key replays. Kept in the store so
-- that every replica sees them; recorded in the write's own transaction; forgotten after
-- 24 hours.
CREATE TABLE registry_idempotency_keys (
    owner TEXT NOT NULL,
    operation TEXT NOT NULL,
    key TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    CONSTRAINT registry_idempotency_keys_pkey PRIMARY KEY (owner, operation, key)
);
CREATE INDEX registry_idempotency_keys_created ON registry_idempotency_keys (created_at_ms);
