-- Host mode signs people in on pug's own origin only (security review F8): the password form is
-- never served on a tenant's origin, where script in that tenant's Grafana could read it. A
-- sign-in there hands the tenant host a one-time code, which the tenant host exchanges for a
-- session of its own (host-only cookie).
--
-- Every session minted from one sign-in shares the sign-in's login_id (the id_hash of the
-- session on pug's origin), so signing out on any host ends them all. Sessions from before this
-- migration have none and end alone.
ALTER TABLE sessions ADD COLUMN login_id TEXT;
CREATE INDEX sessions_by_login ON sessions (login_id);

-- One-time codes, by SHA-256 of the code: good once, for one tenant, for a minute.
CREATE TABLE login_codes (
    code_hash     TEXT PRIMARY KEY,
    login_id      TEXT NOT NULL,
    tenant_id     TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX login_codes_by_expiry ON login_codes (expires_at_ms);
