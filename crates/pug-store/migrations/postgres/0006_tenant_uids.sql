-- The numeric user and group id each tenant's instances run as on the process backend (when
-- pug isolates tenants). Stable while the tenant exists, unique, freed when it is removed.
CREATE TABLE tenant_uids (
    tenant_id TEXT PRIMARY KEY,
    uid       BIGINT NOT NULL UNIQUE
);
