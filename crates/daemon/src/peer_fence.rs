//! Fencing the peer's copy of the replicated data. With a witness, a
//! primary acknowledges no change its peer lacks before the witness has
//! recorded the peer's copy as outdated (`holdfast_membership::lease`): a
//! peer that takes over later can then never lack an acknowledged change.
//!
//! The replication threads say when a directory is about to go on without
//! the secondary ([`PeerFence::outdated`]) and wait for its epoch to be
//! fenced; the module task passes [`PeerFence::peer_data`] to the state
//! machine, which tells the witness and reports the grant
//! ([`PeerFence::fenced`]).

use holdfast_membership::mirror::PeerData;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

/// Shared by a module's replication threads and its task.
#[derive(Debug)]
pub struct PeerFence {
    /// Without a witness there is nobody to tell: nothing waits.
    witness: bool,
    state: Mutex<FenceState>,
    changed: Notify,
}

#[derive(Debug)]
struct FenceState {
    /// Per replicated directory.
    dirs: Vec<PeerData>,
    next_epoch: u64,
    /// The newest epoch the witness recorded.
    fenced: u64,
}

impl PeerFence {
    pub fn new(dirs: usize, witness: bool) -> Self {
        PeerFence {
            witness,
            state: Mutex::new(FenceState {
                dirs: vec![PeerData::Unknown; dirs],
                next_epoch: 1,
                fenced: 0,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, FenceState> {
        self.state.lock()
    }

    fn set(&self, dir: usize, data: PeerData) {
        let mut state = self.state();
        if state.dirs[dir] != data {
            state.dirs[dir] = data;
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Directory `dir` is about to acknowledge changes the peer lacks: the
    /// epoch to wait for ([`Self::is_fenced`]); `None` without a witness.
    pub fn outdated(&self, dir: usize) -> Option<u64> {
        if !self.witness {
            return None;
        }
        let epoch = {
            let mut state = self.state();
            if let PeerData::Outdated { epoch } = state.dirs[dir] {
                return Some(epoch);
            }
            let epoch = state.next_epoch;
            state.next_epoch += 1;
            epoch
        };
        self.set(dir, PeerData::Outdated { epoch });
        Some(epoch)
    }

    /// Directory `dir` mirrors: the peer has every change of it.
    pub fn current(&self, dir: usize) {
        self.set(dir, PeerData::Current);
    }

    /// Directory `dir` is not replicated from here any more.
    pub fn unknown(&self, dir: usize) {
        self.set(dir, PeerData::Unknown);
    }

    /// With a witness, whether a change of `dir` the peer lacks would now
    /// be acknowledged without the fence (nothing fenced yet, or mirroring).
    pub fn unfenced(&self, dir: usize) -> bool {
        if !self.witness {
            return false;
        }
        let state = self.state();
        !matches!(state.dirs[dir], PeerData::Outdated { epoch } if state.fenced >= epoch)
    }

    pub fn is_fenced(&self, epoch: u64) -> bool {
        self.state().fenced >= epoch
    }

    /// The witness recorded the peer's copy outdated as of `epoch`.
    pub fn fenced(&self, epoch: u64) {
        let mut state = self.state();
        state.fenced = state.fenced.max(epoch);
    }

    /// What lease requests say: outdated if any directory is (newest
    /// epoch), current if all mirror.
    pub fn peer_data(&self) -> PeerData {
        let state = self.state();
        let newest = state
            .dirs
            .iter()
            .filter_map(|d| match d {
                PeerData::Outdated { epoch } => Some(*epoch),
                _ => None,
            })
            .max();
        match newest {
            Some(epoch) => PeerData::Outdated { epoch },
            None if state.dirs.iter().all(|d| *d == PeerData::Current) => PeerData::Current,
            None => PeerData::Unknown,
        }
    }

    /// Resolves when [`Self::peer_data`] may have changed.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_outdated_epoch_is_reported_and_each_waits_for_its_own() {
        let fence = PeerFence::new(2, true);
        assert_eq!(fence.peer_data(), PeerData::Unknown);
        fence.current(0);
        fence.current(1);
        assert_eq!(fence.peer_data(), PeerData::Current);
        let first = fence.outdated(0).unwrap();
        assert_eq!(fence.outdated(0), Some(first), "asked again: same epoch");
        let second = fence.outdated(1).unwrap();
        assert_eq!(fence.peer_data(), PeerData::Outdated { epoch: second });
        assert!(fence.unfenced(0));
        fence.fenced(first);
        assert!(fence.is_fenced(first) && !fence.is_fenced(second));
        assert!(!fence.unfenced(0) && fence.unfenced(1));
        fence.fenced(second);
        assert!(fence.is_fenced(first) && fence.is_fenced(second));
        fence.current(0);
        fence.unknown(1);
        assert_eq!(fence.peer_data(), PeerData::Unknown);
    }

    #[test]
    fn without_a_witness_nothing_waits() {
        let fence = PeerFence::new(1, false);
        assert_eq!(fence.outdated(0), None);
        assert!(!fence.unfenced(0));
        assert_eq!(fence.peer_data(), PeerData::Unknown);
    }
}
