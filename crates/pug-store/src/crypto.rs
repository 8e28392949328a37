//! Encryption at rest of tenants' secrets, and generation of new secrets.
//!
//! Owns: the master key (loaded from `PUG_MASTER_KEY`, else `<data>/master.key`, created with mode
//! 0600 on first run) and sealing/opening with XChaCha20-Poly1305. The associated data binds a
//! ciphertext to its tenant and secret name, so a sealed value copied to another row fails to open.
//!
//! Must not: write a secret anywhere but the store, or format one into an error.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use pug_types::{ExposeSecret, SecretString};
use rand::RngCore;

use crate::StoreError;

/// The environment variable that gives the master key (32 bytes, base64 or hex).
pub const MASTER_KEY_ENV: &str = "PUG_MASTER_KEY";

/// The key that seals every tenant secret. Never printed.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(key)
    }

    /// `PUG_MASTER_KEY` if set, else `<data_dir>/master.key`, created (mode 0600) if missing.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, StoreError> {
        if let Ok(value) = std::env::var(MASTER_KEY_ENV) {
            return Self::decode(value.trim()).ok_or_else(|| {
                StoreError::MasterKey(format!(
                    "{MASTER_KEY_ENV} is not 32 bytes in base64 or hex; generate one with `openssl rand -base64 32`"
                ))
            });
        }
        let path = data_dir.join("master.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                // A key file left readable by an older pug (or a copy) is made private again.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                    |e| {
                        StoreError::MasterKey(format!(
                            "cannot make {} private: {e}",
                            path.display()
                        ))
                    },
                )?;
                Self::decode(text.trim()).ok_or_else(|| {
                    StoreError::MasterKey(format!(
                        "{} does not hold a 32-byte key in base64; restore it from your backup",
                        path.display()
                    ))
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                write_private(
                    &path,
                    base64::engine::general_purpose::STANDARD.encode(key.0),
                )
                .map_err(|e| {
                    StoreError::MasterKey(format!("cannot create {}: {e}", path.display()))
                })?;
                Ok(key)
            }
            Err(e) => Err(StoreError::MasterKey(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn decode(text: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .filter(|b| b.len() == 32)
            .or_else(|| hex::decode(text).ok().filter(|b| b.len() == 32))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Some(Self(key))
    }

    /// Seals `plaintext`; returns `(nonce, ciphertext)`.
    pub(crate) fn seal(&self, aad: &str, plaintext: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption of a short message cannot fail");
        (nonce.to_vec(), ciphertext)
    }

    /// Opens what [`seal`](Self::seal) made; `None` if the key or the AAD is wrong.
    pub(crate) fn open(&self, aad: &str, nonce: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        if nonce.len() != 24 {
            return None;
        }
        XChaCha20Poly1305::new((&self.0).into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .ok()
    }

    /// A value derived from the key that identifies it without revealing it, stored once so
    /// that starting pug with another key fails clearly instead of failing every secret.
    pub(crate) fn check_value(&self) -> String {
        let (nonce, ct) = self.seal("pug-master-key-check", b"pug");
        format!("{}:{}", hex::encode(nonce), hex::encode(ct))
    }

    /// Whether `check` was made by this key.
    pub(crate) fn matches(&self, check: &str) -> bool {
        let Some((n, c)) = check.split_once(':') else {
            return false;
        };
        match (hex::decode(n), hex::decode(c)) {
            (Ok(n), Ok(c)) => self.open("pug-master-key-check", &n, &c).as_deref() == Some(b"pug"),
            _ => false,
        }
    }
}

/// Writes `contents` to a file only its owner can read (mode 0600, also when it existed with
/// another mode).
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents.as_ref())?;
    f.sync_all()
}

/// A new random secret: 32 bytes from the OS CSPRNG, URL-safe base64 (43 characters).
pub fn generate_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The SHA-256 of a token, hex; tokens are 256 random bits, so a fast hash is enough to make a
/// stolen database useless (no dictionary to search).
pub fn token_hash(token: &SecretString) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.expose_secret().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let key = MasterKey::generate();
        let (n, c) = key.seal("acme/admin_password", b"hunter2");
        assert_eq!(key.open("acme/admin_password", &n, &c).unwrap(), b"hunter2");
        assert!(key.open("other/admin_password", &n, &c).is_none());
        assert!(MasterKey::generate()
            .open("acme/admin_password", &n, &c)
            .is_none());
    }

    #[test]
    fn key_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = MasterKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = MasterKey::load_or_create(dir.path()).unwrap();
        assert!(b.matches(&a.check_value()));
        assert!(!MasterKey::generate().matches(&a.check_value()));
        assert_eq!(format!("{a:?}"), "MasterKey([redacted])");
    }

    #[test]
    fn secrets_are_random_and_hidden() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 43);
        assert!(!format!("{a:?}").contains(a.expose_secret()));
    }
}
