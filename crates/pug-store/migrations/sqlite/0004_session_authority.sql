-- Embed sessions end with the authority that minted them (security review F10, F13).
--
-- An embed session records the embed key that signed its token and the incarnation of its
-- tenant (the tenant's created_at_ms when the session was minted). A session is honoured only
-- while that key exists and the tenant with that id is the same incarnation: deleting the key
-- or the tenant ends it, and a tenant created again under the same id does not inherit it.
ALTER TABLE sessions ADD COLUMN key_id TEXT;
ALTER TABLE sessions ADD COLUMN tenant_created_at_ms BIGINT;

-- Embed sessions minted before this migration are bound to neither: they end now (they lived
-- at most embed_session_ttl_secs; the customer's webapp mints new ones on the next visit).
DELETE FROM sessions WHERE tenant_id IS NOT NULL;

-- The sweep deletes expired sessions by expiry; key and tenant deletion find theirs.
CREATE INDEX sessions_by_expiry ON sessions (expires_at_ms);
CREATE INDEX sessions_by_key ON sessions (key_id);
CREATE INDEX sessions_by_tenant ON sessions (tenant_id);

-- Token ids (`jti`) of embed tokens that minted a session, per key, kept until the token
-- could no longer be accepted: a second use of the same token is refused.
CREATE TABLE embed_token_ids (
    key_id        TEXT NOT NULL,
    jti           TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (key_id, jti)
);
CREATE INDEX embed_token_ids_by_expiry ON embed_token_ids (expires_at_ms);
