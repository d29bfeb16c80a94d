//! The heartbeat: one UDP datagram per pulse and per network, carrying the
//! sender's view of the module ([`HeartbeatStatus`]: a mirror node's
//! [`PeerStatus`] or a farm node's [`FarmStatus`]).
//!
//! Wire format: `b"HFHB"`, a version byte, the postcard-encoded [`Heartbeat`],
//! then an HMAC-SHA256 tag over everything before it, keyed with the
//! cluster key. A datagram whose tag does not verify is *forged*; one whose
//! `(incarnation, seq)` is not newer than what we already accepted from that
//! sender is *replayed*. Both are rejected before anything looks at them.

use std::collections::HashMap;

use holdfast_key::ClusterKey;
use serde::{Deserialize, Serialize};

use crate::datagram::{open, seal, DatagramError};
use crate::farm::FarmStatus;
use crate::mirror::PeerStatus;

const MAGIC: &[u8; 4] = b"HFHB";

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
    pub status: HeartbeatStatus,
}

/// What the sender says of its module: the status of its kind of module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatStatus {
    Mirror(PeerStatus),
    Farm(FarmStatus),
}

impl Heartbeat {
    pub fn encode(&self, key: &ClusterKey) -> Vec<u8> {
        seal(MAGIC, self, key)
    }

    /// Verifies the tag, then decodes. Replay is checked separately
    /// ([`ReplayGuard`]) because it needs the receiver's memory.
    pub fn decode(datagram: &[u8], key: &ClusterKey) -> Result<Self, DatagramError> {
        open(MAGIC, datagram, key)
    }
}

/// Remembers the newest `(incarnation, seq)` accepted per sender and network.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    newest: HashMap<(String, u8), (u64, u64)>,
}

impl ReplayGuard {
    pub fn check(&mut self, hb: &Heartbeat) -> Result<(), DatagramError> {
        self.check_stamp(&hb.sender, hb.network, (hb.incarnation, hb.seq))
    }

    /// `stamp` = `(incarnation, seq)` must be newer than the last accepted
    /// from `sender` on `channel`.
    pub fn check_stamp(
        &mut self,
        sender: &str,
        channel: u8,
        stamp: (u64, u64),
    ) -> Result<(), DatagramError> {
        let key = (sender.to_string(), channel);
        match self.newest.get(&key) {
            Some(&last) if stamp <= last => Err(DatagramError::Replayed {
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
    use crate::datagram::MAX_DATAGRAM;

    fn sample() -> Heartbeat {
        Heartbeat {
            module: "web".into(),
            sender: "node1".into(),
            incarnation: 7,
            seq: 1,
            network: 0,
            config_fingerprint: [1; 8],
            status: HeartbeatStatus::Mirror(PeerStatus::stopped()),
        }
    }

    #[test]
    fn round_trip() {
        let key = ClusterKey::generate();
        let hb = sample();
        assert_eq!(Heartbeat::decode(&hb.encode(&key), &key).unwrap(), hb);
        let farm = Heartbeat {
            status: HeartbeatStatus::Farm(FarmStatus {
                state: crate::module::State::Up,
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
            Err(DatagramError::Forged)
        );
        for i in 4..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                Heartbeat::decode(&bad, &key),
                Err(DatagramError::Forged),
                "byte {i}"
            );
        }
    }

    #[test]
    fn garbage_is_rejected_without_panic() {
        let key = ClusterKey::generate();
        assert_eq!(
            Heartbeat::decode(b"hi", &key),
            Err(DatagramError::TooShort(2))
        );
        assert_eq!(
            Heartbeat::decode(&[0u8; 64], &key),
            Err(DatagramError::BadMagic)
        );
        assert_eq!(
            Heartbeat::decode(&[0u8; MAX_DATAGRAM + 1], &key),
            Err(DatagramError::TooLong(MAX_DATAGRAM + 1))
        );
    }

    #[test]
    fn replay_is_rejected_new_incarnation_accepted() {
        let mut guard = ReplayGuard::default();
        let mut hb = sample();
        guard.check(&hb).unwrap();
        assert!(matches!(
            guard.check(&hb),
            Err(DatagramError::Replayed { .. })
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
            Err(DatagramError::Replayed { .. })
        ));
        // The same pulse on another network is not a replay.
        hb.incarnation = 8;
        hb.seq = 0;
        hb.network = 1;
        guard.check(&hb).unwrap();
    }
}
