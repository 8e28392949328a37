-- Several pug processes on one store (issue 18). A queued tenant is reconciled by the pug
-- that holds its row's lease: `owner` (a pug process's id), `lease_until_ms` (the store's
-- clock; renewed by the owner's heartbeat) and `fence` (a fencing token, larger on every
-- acquisition, that every later write of the row's owner is conditional on). A row whose lease
-- ran out is free for any pug to claim.
ALTER TABLE work_queue ADD COLUMN owner TEXT;
ALTER TABLE work_queue ADD COLUMN lease_until_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE work_queue ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;

-- Named leases. `queue`: its row is locked by every claim (claims are serialised, so the
-- global limit on concurrent passes holds) and its `fence` issues the work rows' tokens.
-- `fleet`: held by one elected pug, which alone runs fleet-wide jobs (resync, orphan removal).
CREATE TABLE leases (
    name           TEXT PRIMARY KEY,
    owner          TEXT,
    lease_until_ms BIGINT NOT NULL,
    fence          BIGINT NOT NULL
);
INSERT INTO leases (name, owner, lease_until_ms, fence) VALUES ('queue', NULL, 0, 0);
INSERT INTO leases (name, owner, lease_until_ms, fence) VALUES ('fleet', NULL, 0, 0);

-- The pug processes using this store, each alive while its heartbeat keeps `alive_until_ms`
-- in the future: what a starting pug checks before it runs a backend that cannot be shared.
CREATE TABLE pug_replicas (
    owner          TEXT PRIMARY KEY,
    host           TEXT NOT NULL,
    backend        TEXT NOT NULL,
    roles          TEXT NOT NULL,
    alive_until_ms BIGINT NOT NULL
);
