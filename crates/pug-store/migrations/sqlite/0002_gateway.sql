-- The gateway's people: pug users (argon2id PHC hashes only), their tenant memberships,
-- browser sessions and the keys customer webapps sign embed tokens with.

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- One Grafana role (Viewer, Editor, Admin) per user and tenant.
CREATE TABLE memberships (
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    role      TEXT NOT NULL,
    PRIMARY KEY (user_name, tenant_id)
);
CREATE INDEX memberships_by_tenant ON memberships (tenant_id);

-- Sessions, by SHA-256 of the random session id. A password session acts for its user's
-- memberships; an embed session (tenant set) acts only in that tenant with the token's role.
CREATE TABLE sessions (
    id_hash       TEXT PRIMARY KEY,
    user_name     TEXT NOT NULL,
    email         TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    tenant_id     TEXT,
    role          TEXT,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_name);

-- HS256 keys for embed tokens, sealed with the master key (AAD = "embed-key/<id>").
-- tenant_id NULL: the key may sign tokens for any tenant.
CREATE TABLE embed_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    tenant_id     TEXT REFERENCES tenants(id) ON DELETE CASCADE,
    nonce         BLOB NOT NULL,
    ciphertext    BLOB NOT NULL,
    created_at_ms BIGINT NOT NULL
);
