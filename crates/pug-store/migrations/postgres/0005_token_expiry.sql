-- API tokens can expire and be revoked (issue 14, hole 17). A token without `expires_at_ms`
-- never expires (the local CLI token, the first-start admin token, tokens made without
-- --expires). `last_used_at_ms` is written at most once a minute per token, not per request.
ALTER TABLE api_tokens ADD COLUMN expires_at_ms BIGINT;
ALTER TABLE api_tokens ADD COLUMN last_used_at_ms BIGINT;
