//! Which of a module's replicated directories wait for the witness to
//! fence the peer's copy, by epoch: one [`PeerFences`] per mirror module
//! on a primary, shared by its directories' connectors (each asks with
//! [`ConnectorAction::PeerOutdated`](super::ConnectorAction::PeerOutdated))
//! and the module's state machine (told [`PeerFences::peer_data`], it
//! answers [`Action::PeerFenced`](crate::module::Action::PeerFenced)).

use crate::mirror::PeerData;

/// The fence state of every replicated directory of one module.
#[derive(Debug, Clone)]
pub struct PeerFences {
    /// Without a witness there is nobody to tell: nothing waits.
    witness: bool,
    /// Per replicated directory.
    dirs: Vec<PeerData>,
    next_epoch: u64,
    /// The newest epoch the witness recorded.
    fenced: u64,
}

impl PeerFences {
    pub fn new(dirs: usize, witness: bool) -> Self {
        PeerFences {
            witness,
            dirs: vec![PeerData::Unknown; dirs],
            next_epoch: 1,
            fenced: 0,
        }
    }

    /// Sets `dir`'s news; whether [`Self::peer_data`] may have changed.
    fn set(&mut self, dir: usize, data: PeerData) -> bool {
        let changed = self.dirs[dir] != data;
        self.dirs[dir] = data;
        changed
    }

    /// Directory `dir` is about to acknowledge changes the peer lacks: its
    /// epoch (the one it already waits for, if any), and whether
    /// [`Self::peer_data`] changed; `None` without a witness.
    pub fn outdated(&mut self, dir: usize) -> Option<(u64, bool)> {
        if !self.witness {
            return None;
        }
        if let PeerData::Outdated { epoch } = self.dirs[dir] {
            return Some((epoch, false));
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        Some((epoch, self.set(dir, PeerData::Outdated { epoch })))
    }

    /// Directory `dir` mirrors: the peer has every change of it.
    pub fn current(&mut self, dir: usize) -> bool {
        self.set(dir, PeerData::Current)
    }

    /// Directory `dir` is not replicated from here any more.
    pub fn unknown(&mut self, dir: usize) -> bool {
        self.set(dir, PeerData::Unknown)
    }

    /// The witness recorded `dir`'s peer copy as outdated, as it asked.
    pub fn is_fenced(&self, dir: usize) -> bool {
        matches!(self.dirs[dir], PeerData::Outdated { epoch } if self.fenced >= epoch)
    }

    /// The witness recorded the peer's copy outdated as of `epoch`.
    pub fn fenced(&mut self, epoch: u64) {
        self.fenced = self.fenced.max(epoch);
    }

    /// What lease requests say: outdated if any directory is (newest
    /// epoch), current if all mirror.
    pub fn peer_data(&self) -> PeerData {
        let newest = self
            .dirs
            .iter()
            .filter_map(|d| match d {
                PeerData::Outdated { epoch } => Some(*epoch),
                _ => None,
            })
            .max();
        match newest {
            Some(epoch) => PeerData::Outdated { epoch },
            None if self.dirs.iter().all(|d| *d == PeerData::Current) => PeerData::Current,
            None => PeerData::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_outdated_epoch_is_reported_and_each_waits_for_its_own() {
        let mut fences = PeerFences::new(2, true);
        assert_eq!(fences.peer_data(), PeerData::Unknown);
        fences.current(0);
        fences.current(1);
        assert_eq!(fences.peer_data(), PeerData::Current);
        let (first, changed) = fences.outdated(0).unwrap();
        assert!(changed);
        assert_eq!(
            fences.outdated(0),
            Some((first, false)),
            "asked again: same epoch"
        );
        let (second, _) = fences.outdated(1).unwrap();
        assert_eq!(fences.peer_data(), PeerData::Outdated { epoch: second });
        assert!(!fences.is_fenced(0));
        fences.fenced(first);
        assert!(fences.is_fenced(0) && !fences.is_fenced(1));
        fences.fenced(second);
        assert!(fences.is_fenced(0) && fences.is_fenced(1));
        fences.current(0);
        fences.unknown(1);
        assert!(
            !fences.is_fenced(0),
            "mirroring again: a new epoch next time"
        );
        assert_eq!(fences.peer_data(), PeerData::Unknown);
    }

    #[test]
    fn without_a_witness_nothing_waits() {
        let mut fences = PeerFences::new(1, false);
        assert_eq!(fences.outdated(0), None);
        assert_eq!(fences.peer_data(), PeerData::Unknown);
    }
}
