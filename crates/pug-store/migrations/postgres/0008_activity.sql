-- When each tenant was last used through the gateway (a proxied request, an open WebSocket),
-- written in batches by the gateway (never once per request), and the wake the controller has
-- yet to finish: when it was asked for and by what. A tenant with an idle timeout sleeps when
-- its last activity is older than the timeout; a wake sets the last activity to now.
CREATE TABLE tenant_activity (
    tenant_id         TEXT PRIMARY KEY,
    last_activity_ms  BIGINT NOT NULL,
    wake_requested_ms BIGINT,
    woken_by          TEXT
);
