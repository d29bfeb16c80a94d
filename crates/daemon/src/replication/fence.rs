//! Fencing the peer's copy of the replicated data. With a witness, a
//! primary acknowledges no change its peer lacks before the witness has
//! recorded the peer's copy as outdated (`holdfast_membership::lease`): a
//! peer that takes over later can then never lack an acknowledged change.
//!
//! The connectors' cores decide when a directory is about to go on without
//! the secondary ([`PeerFence::outdated`]) and wait for its epoch to be
//! fenced; the module task passes [`PeerFence::peer_data`] to the state
//! machine, which tells the witness and reports the grant
//! ([`PeerFence::fenced`]). The bookkeeping is the sans-IO
//! [`PeerFences`]; here it is shared between threads, with their wake-ups.

use std::sync::Arc;

use holdfast_membership::connector::PeerFences;
use holdfast_membership::mirror::PeerData;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::bell::Bell;

/// Shared by a module's connector threads and its task.
#[derive(Debug)]
pub struct PeerFence {
    witness: bool,
    fences: Mutex<PeerFences>,
    /// Wakes the module task: [`Self::peer_data`] may have changed.
    changed: Notify,
    /// Wakes the connectors: a fence was granted.
    bell: Arc<Bell>,
}

impl PeerFence {
    pub(super) fn new(dirs: usize, witness: bool, bell: Arc<Bell>) -> Self {
        PeerFence {
            witness,
            fences: Mutex::new(PeerFences::new(dirs, witness)),
            changed: Notify::new(),
            bell,
        }
    }

    /// A witness fences the peer's copy.
    pub(super) fn witness(&self) -> bool {
        self.witness
    }

    fn told(&self, changed: bool) {
        if changed {
            self.changed.notify_one();
        }
    }

    /// Directory `dir` is about to acknowledge changes the peer lacks.
    pub(super) fn outdated(&self, dir: usize) {
        let changed = self.fences.lock().outdated(dir).is_some_and(|(_, c)| c);
        self.told(changed);
    }

    /// Directory `dir` mirrors: the peer has every change of it.
    pub(super) fn current(&self, dir: usize) {
        let changed = self.fences.lock().current(dir);
        self.told(changed);
    }

    /// Directory `dir` is not replicated from here any more.
    pub(super) fn unknown(&self, dir: usize) {
        let changed = self.fences.lock().unknown(dir);
        self.told(changed);
    }

    /// The witness recorded `dir`'s peer copy as outdated, as it asked.
    pub(super) fn is_fenced(&self, dir: usize) -> bool {
        self.fences.lock().is_fenced(dir)
    }

    /// The witness recorded the peer's copy outdated as of `epoch`.
    pub fn fenced(&self, epoch: u64) {
        self.fences.lock().fenced(epoch);
        self.bell.ring();
    }

    /// What lease requests say: outdated if any directory is (newest
    /// epoch), current if all mirror.
    pub fn peer_data(&self) -> PeerData {
        self.fences.lock().peer_data()
    }

    /// Resolves when [`Self::peer_data`] may have changed.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}
