-- Embed keys sign with HS256 (a shared secret, sealed) or EdDSA (Ed25519: pug keeps only the
-- webapp's public key, sealed like the rest). A token must use its key's algorithm.
ALTER TABLE embed_keys ADD COLUMN algorithm TEXT NOT NULL DEFAULT 'HS256';
