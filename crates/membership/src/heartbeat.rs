//! The heartbeat: one UDP datagram per pulse and per network, carrying the
//! sender's view of the module ([`ModuleStatus`]: a mirror node's
//! [`PeerStatus`] or a farm node's [`FarmStatus`]).
//!
//! Wire format: `b"HFHB"`, a version byte, the postcard-encoded [`Heartbeat`],
//! then an HMAC-SHA256 tag over everything before it, keyed with the
//! cluster key. A datagram whose tag does not verify is *forged*; one whose
//! `(incarnation, seq)` is not newer than what we already accepted from that
//! sender is *replayed*. Both are rejected before anything looks at them.

use std::collections::HashMap;

use holdfast_key::{ClusterKey, TAG_LEN};
use serde::{Deserialize, Serialize};

use crate::farm::FarmStatus;
use crate::mirror::PeerStatus;

const MAGIC: &[u8; 4] = b"HFHB";
/// 3: the status says which kind of module sent it (2: statuses carry
/// clocks for the peer promise).
const VERSION: u8 = 3;
/// Largest datagram we produce or accept; a heartbeat is far smaller.
pub const MAX_DATAGRAM: usize = 1400;

/// Why a datagram was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeartbeatError {
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

/// One heartbeat as sent by a node for one module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub module: String,
    pub sender: String,
    /// Grows at every daemon start, so a restarted sender's seq may restart at 0.
    pub incarnation: u64,
    /// Grows at every pulse of this incarnation (the same on every network).
    pub seq: u64,
    /// Index of the heartbeat network this datagram was sent on; signed, so
    /// a datagram captured on one network cannot be replayed on another.
    pub network: u8,
    /// Fingerprint of the sender's module configuration, to warn on mismatch.
    pub config_fingerprint: [u8; 8],
    pub status: ModuleStatus,
}

/// What the sender says of its module: the status of its kind of module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModuleStatus {
    Mirror(PeerStatus),
    Farm(FarmStatus),
}

impl Heartbeat {
    pub fn encode(&self, key: &ClusterKey) -> Vec<u8> {
        seal(MAGIC, self, key)
    }

    /// Verifies the tag, then decodes. Replay is checked separately
    /// ([`ReplayGuard`]) because it needs the receiver's memory.
    pub fn decode(datagram: &[u8], key: &ClusterKey) -> Result<Self, HeartbeatError> {
        open(MAGIC, datagram, key)
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
) -> Result<T, HeartbeatError> {
    if datagram.len() < magic.len() + 1 + TAG_LEN {
        return Err(HeartbeatError::TooShort(datagram.len()));
    }
    if datagram.len() > MAX_DATAGRAM {
        return Err(HeartbeatError::TooLong(datagram.len()));
    }
    if &datagram[..4] != magic {
        return Err(HeartbeatError::BadMagic);
    }
    let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    if !key.verify([signed], tag) {
        return Err(HeartbeatError::Forged);
    }
    if signed[4] != VERSION {
        return Err(HeartbeatError::UnsupportedVersion(signed[4]));
    }
    postcard::from_bytes(&signed[5..]).map_err(|e| HeartbeatError::Malformed(e.to_string()))
}

/// Remembers the newest `(incarnation, seq)` accepted per sender and network.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    newest: HashMap<(String, u8), (u64, u64)>,
}

impl ReplayGuard {
    pub fn check(&mut self, hb: &Heartbeat) -> Result<(), HeartbeatError> {
        self.check_stamp(&hb.sender, hb.network, (hb.incarnation, hb.seq))
    }

    /// `stamp` = `(incarnation, seq)` must be newer than the last accepted
    /// from `sender` on `channel`.
    pub fn check_stamp(
        &mut self,
        sender: &str,
        channel: u8,
        stamp: (u64, u64),
    ) -> Result<(), HeartbeatError> {
        let key = (sender.to_string(), channel);
        match self.newest.get(&key) {
            Some(&last) if stamp <= last => Err(HeartbeatError::Replayed {
                sender: sender.to_string(),
                incarnation: stamp.0,
                seq: stamp.1,
                last_incarnation: last.0,
                last_seq: last.1,
            }),
            _ => {
                self.newest.insert(key, stamp);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Heartbeat {
        Heartbeat {
            module: "web".into(),
            sender: "node1".into(),
            incarnation: 7,
            seq: 1,
            network: 0,
            config_fingerprint: [1; 8],
            status: ModuleStatus::Mirror(PeerStatus::stopped()),
        }
    }

    #[test]
    fn round_trip() {
        let key = ClusterKey::generate();
        let hb = sample();
        assert_eq!(Heartbeat::decode(&hb.encode(&key), &key).unwrap(), hb);
        let farm = Heartbeat {
            status: ModuleStatus::Farm(FarmStatus {
                state: crate::State::Up,
            }),
            ..sample()
        };
        assert_eq!(Heartbeat::decode(&farm.encode(&key), &key).unwrap(), farm);
    }

    #[test]
    fn other_key_or_flipped_bit_is_forged() {
        let key = ClusterKey::generate();
        let bytes = sample().encode(&key);
        assert_eq!(
            Heartbeat::decode(&bytes, &ClusterKey::generate()),
            Err(HeartbeatError::Forged)
        );
        for i in 4..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                Heartbeat::decode(&bad, &key),
                Err(HeartbeatError::Forged),
                "byte {i}"
            );
        }
    }

    #[test]
    fn garbage_is_rejected_without_panic() {
        let key = ClusterKey::generate();
        assert_eq!(
            Heartbeat::decode(b"hi", &key),
            Err(HeartbeatError::TooShort(2))
        );
        assert_eq!(
            Heartbeat::decode(&[0u8; 64], &key),
            Err(HeartbeatError::BadMagic)
        );
        assert_eq!(
            Heartbeat::decode(&[0u8; MAX_DATAGRAM + 1], &key),
            Err(HeartbeatError::TooLong(MAX_DATAGRAM + 1))
        );
    }

    #[test]
    fn replay_is_rejected_new_incarnation_accepted() {
        let mut guard = ReplayGuard::default();
        let mut hb = sample();
        guard.check(&hb).unwrap();
        assert!(matches!(
            guard.check(&hb),
            Err(HeartbeatError::Replayed { .. })
        ));
        hb.seq = 2;
        guard.check(&hb).unwrap();
        hb.seq = 0;
        hb.incarnation = 8;
        guard.check(&hb).unwrap();
        hb.incarnation = 7;
        hb.seq = 100;
        assert!(matches!(
            guard.check(&hb),
            Err(HeartbeatError::Replayed { .. })
        ));
        // The same pulse on another network is not a replay.
        hb.incarnation = 8;
        hb.seq = 0;
        hb.network = 1;
        guard.check(&hb).unwrap();
    }
}
