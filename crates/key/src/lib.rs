//! holdfast-key: the secret every node of a cluster shares, and the MACs
//! made with it. The formats they authenticate (heartbeat and witness
//! datagrams in `holdfast-membership`, replication frames in
//! `holdfast-replication`) stay with their crates; only the MAC is here.
//!
//! - [`ClusterKey`]: 32 bytes stored as hex; HMAC-SHA256 tags over the
//!   datagrams and the replication handshake, and the key of each
//!   replication session derived from it.
//! - [`SessionKey`]: one replication session's key; keyed BLAKE3 over each
//!   frame.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of every tag made here (HMAC-SHA256 and BLAKE3 alike).
pub const TAG_LEN: usize = 32;

/// A cluster key that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not hexadecimal: {0}")]
    NotHex(String),
    #[error("expected 32 bytes (64 hex digits), found {0}")]
    Length(usize),
    #[error("{}: {reason}", path.display())]
    File {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// The secret shared by all nodes of a cluster (32 bytes, stored as hex).
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<secret>)")
    }
}

impl ClusterKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut key);
        Self(key)
    }

    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|e| KeyError::NotHex(e.to_string()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| KeyError::Length(b.len()))?;
        Ok(Self(key))
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let file = |reason: String| KeyError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        Self::from_hex(&text).map_err(|e| file(e.to_string()))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn hmac<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> HmacSha256 {
        // An HMAC key may have any length, so this cannot fail.
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        for part in parts {
            mac.update(part);
        }
        mac
    }

    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn tag<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; TAG_LEN] {
        self.hmac(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is [`tag`](Self::tag) of `parts`, compared in constant
    /// time.
    pub fn verify<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>, tag: &[u8]) -> bool {
        self.hmac(parts).verify_slice(tag).is_ok()
    }

    /// A session's key: the [`tag`](Self::tag) of `parts` (a label and
    /// both sides' fresh nonces), so that every session's key is new.
    pub fn session<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> SessionKey {
        SessionKey(self.tag(parts))
    }
}

/// The key of one authenticated replication session.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<secret>)")
    }
}

impl SessionKey {
    /// BLAKE3 keyed with the session key over the concatenation of
    /// `parts`: a MAC several times faster than HMAC-SHA256 on large
    /// writes (the handshake keeps HMAC-SHA256).
    pub fn tag<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; TAG_LEN] {
        self.hash(parts).into()
    }

    /// Whether `tag` is [`tag`](Self::tag) of `parts`, compared in constant
    /// time (`blake3::Hash`'s equality).
    pub fn verify<'a>(
        &self,
        parts: impl IntoIterator<Item = &'a [u8]>,
        tag: &[u8; TAG_LEN],
    ) -> bool {
        self.hash(parts) == blake3::Hash::from_bytes(*tag)
    }

    fn hash<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> blake3::Hash {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        for part in parts {
            mac.update(part);
        }
        mac.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parsing_errors_are_clear() {
        assert!(ClusterKey::from_hex("zz")
            .unwrap_err()
            .to_string()
            .contains("not hexadecimal"));
        assert!(ClusterKey::from_hex("abcd")
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
        let key = ClusterKey::generate();
        assert_eq!(ClusterKey::from_hex(&key.to_hex()).unwrap().0, key.0);
    }

    #[test]
    fn tags_verify_only_with_the_same_key_and_parts() {
        let key = ClusterKey::generate();
        let tag = key.tag([&b"label"[..], b"nonces"]);
        assert!(key.verify([&b"labelnon"[..], b"ces"], &tag));
        assert!(!key.verify([&b"label"[..], b"nonceS"], &tag));
        assert!(!ClusterKey::generate().verify([&b"label"[..], b"nonces"], &tag));

        let session = key.session([&b"session"[..]]);
        let frame = session.tag([&b"S"[..], b"payload"]);
        assert!(session.verify([&b"Spay"[..], b"load"], &frame));
        assert!(!session.verify([&b"P"[..], b"payload"], &frame));
        assert!(!key
            .session([&b"other"[..]])
            .verify([&b"S"[..], b"payload"], &frame));
    }
}
