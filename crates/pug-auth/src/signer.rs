//! Signed values (HMAC-SHA256): pug's cookies and CSRF tokens.
//!
//! Owns: signing a value for a purpose and checking a signed value, in constant time.
//!
//! Must not: do IO, or accept a value signed for another purpose or key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signs and checks cookie values with HMAC-SHA256 under the store's gateway key.
#[derive(Clone)]
pub struct Signer {
    /// The MAC already keyed (its inner and outer key blocks hashed): every cookie of every
    /// request is checked, and cloning this state is cheaper than keying anew each time.
    keyed: Hmac<Sha256>,
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Self {
            keyed: Hmac::<Sha256>::new_from_slice(key).expect("any key length"),
        }
    }

    fn mac(&self, purpose: &str, value: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        mac
    }

    /// `value.signature`, for `purpose` (a session id signed as a session cannot pass as a
    /// CSRF token and the other way round).
    pub fn sign(&self, purpose: &str, value: &str) -> String {
        let sig = self.mac(purpose, value).finalize().into_bytes();
        format!("{value}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// The value of a signed string, if its signature is good.
    pub fn verify<'a>(&self, purpose: &str, signed: &'a str) -> Option<&'a str> {
        let (value, sig) = signed.rsplit_once('.')?;
        // A SHA-256 MAC is 32 bytes (43 characters): anything longer is refused unread.
        let mut buf = [0u8; 32];
        if sig.len() != 43 {
            return None;
        }
        let n = URL_SAFE_NO_PAD.decode_slice(sig, &mut buf).ok()?;
        self.mac(purpose, value).verify_slice(&buf[..n]).ok()?;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_bound_to_purpose_and_key() {
        let s = Signer::new(b"key");
        let v = s.sign("session", "abc");
        assert_eq!(s.verify("session", &v), Some("abc"));
        assert_eq!(s.verify("csrf", &v), None);
        assert_eq!(Signer::new(b"other").verify("session", &v), None);
        assert_eq!(s.verify("session", "abc.AAAA"), None);
        assert_eq!(s.verify("session", "abc"), None);
        // One character of the signature changed, or one added: refused.
        let (value, sig) = v.rsplit_once('.').unwrap();
        let first = if sig.starts_with('A') { 'B' } else { 'A' };
        let tampered = format!("{value}.{first}{}", &sig[1..]);
        assert_eq!(s.verify("session", &tampered), None);
        assert_eq!(s.verify("session", &format!("{v}A")), None);
        assert_eq!(s.verify("session", &format!("abd.{sig}")), None);
    }
}
