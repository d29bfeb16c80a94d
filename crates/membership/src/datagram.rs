//! The datagrams between Holdfast nodes and the witness (heartbeats, lease
//! requests and replies): a magic of the datagram's kind, the version byte,
//! the postcard body, then an HMAC-SHA256 tag with the cluster key over all
//! of it. A datagram whose tag does not verify is *forged*, and rejected
//! before anything looks at it.

use holdfast_key::{ClusterKey, TAG_LEN};
use serde::{Deserialize, Serialize};

/// 3: the status says which kind of module sent it (2: statuses carry
/// clocks for the peer promise).
pub const VERSION: u8 = 3;
/// Largest datagram we produce or accept; a heartbeat is far smaller.
pub const MAX_DATAGRAM: usize = 1400;

/// Why a datagram was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatagramError {
    #[error("datagram of {0} bytes is too short to be a Holdfast datagram")]
    TooShort(usize),
    #[error("datagram of {0} bytes is larger than any Holdfast datagram")]
    TooLong(usize),
    #[error("not a datagram of this kind (bad magic)")]
    BadMagic,
    #[error("protocol version {0} is not supported (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("authentication failed: forged datagram or a different cluster key")]
    Forged,
    #[error("authenticated datagram could not be decoded: {0}")]
    Malformed(String),
    #[error("replayed datagram from {sender}: incarnation {incarnation} seq {seq} is not newer than incarnation {last_incarnation} seq {last_seq}")]
    Replayed {
        sender: String,
        incarnation: u64,
        seq: u64,
        last_incarnation: u64,
        last_seq: u64,
    },
}

impl DatagramError {
    /// The class of the rejection, for counting repeated ones together.
    pub fn class(&self) -> &'static str {
        match self {
            DatagramError::TooShort(_)
            | DatagramError::TooLong(_)
            | DatagramError::BadMagic
            | DatagramError::Malformed(_) => "malformed",
            DatagramError::UnsupportedVersion(_) => "another protocol version",
            DatagramError::Forged => "forged",
            DatagramError::Replayed { .. } => "replayed",
        }
    }
}

/// `magic`, the version byte, the postcard body, then the HMAC-SHA256 tag
/// over all of it: the format of every datagram between Holdfast nodes and
/// the witness.
pub(crate) fn seal<T: Serialize>(magic: &[u8; 4], body: &T, key: &ClusterKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(magic);
    out.push(VERSION);
    // Serialising plain data into a Vec cannot fail.
    out.extend_from_slice(&postcard::to_allocvec(body).expect("datagram body serialises"));
    let tag = key.tag([&out[..]]);
    out.extend_from_slice(&tag);
    out
}

/// Checks the size, magic and tag of a [`seal`]ed datagram, then decodes it.
pub(crate) fn open<T: for<'de> Deserialize<'de>>(
    magic: &[u8; 4],
    datagram: &[u8],
    key: &ClusterKey,
) -> Result<T, DatagramError> {
    if datagram.len() < magic.len() + 1 + TAG_LEN {
        return Err(DatagramError::TooShort(datagram.len()));
    }
    if datagram.len() > MAX_DATAGRAM {
        return Err(DatagramError::TooLong(datagram.len()));
    }
    if &datagram[..4] != magic {
        return Err(DatagramError::BadMagic);
    }
    let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    if !key.verify([signed], tag) {
        return Err(DatagramError::Forged);
    }
    if signed[4] != VERSION {
        return Err(DatagramError::UnsupportedVersion(signed[4]));
    }
    postcard::from_bytes(&signed[5..]).map_err(|e| DatagramError::Malformed(e.to_string()))
}
