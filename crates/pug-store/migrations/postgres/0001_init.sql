-- Tenants and their spec (JSON). desired_state is duplicated out of the spec for queries.
CREATE TABLE tenants (
    id            TEXT PRIMARY KEY,
    spec          TEXT NOT NULL,
    generation    BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- What the controller last observed (JSON).
CREATE TABLE tenant_status (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    status    TEXT NOT NULL
);

-- Per-tenant secrets, sealed with the master key (XChaCha20-Poly1305, AAD = "tenant/name").
CREATE TABLE secrets (
    tenant_id  TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    nonce      BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- The audit log. Kept after a tenant is deleted.
CREATE TABLE events (
    id        BIGSERIAL PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    at_ms     BIGINT NOT NULL,
    reason    TEXT NOT NULL,
    message   TEXT NOT NULL
);
CREATE INDEX events_by_tenant ON events (tenant_id, id);

-- The durable work queue: one row per tenant that needs a reconcile.
CREATE TABLE work_queue (
    tenant_id TEXT PRIMARY KEY,
    due_at_ms BIGINT NOT NULL,
    attempts  BIGINT NOT NULL,
    seq       BIGINT NOT NULL
);

-- Ports allocated to instances; a port stays taken until its replica is removed.
CREATE TABLE ports (
    port      BIGINT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    replica   BIGINT NOT NULL,
    UNIQUE (tenant_id, replica)
);

-- API tokens, stored as SHA-256 hashes only.
CREATE TABLE api_tokens (
    hash          TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- Key/value facts about this store, e.g. the master key's check value.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
