//! What the peer may lack: tracked blocks of files, entries, directories
//! and moves, followed through renames and removals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BLOCK;
use crate::mark::{Mark, EXTENT};
use crate::op::{join_rest, Intent, Op};

/// Block ranges `[start, end)` of one file, merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Absorb every range touching [start, end).
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(s, e)| (*s, *e))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes and returns the first range, at most `max` long.
    pub fn pop_front(&mut self, max: u64) -> Option<(u64, u64)> {
        let (s, e) = self.0.pop_first()?;
        let cut = s.saturating_add(max).min(e);
        if cut < e {
            self.0.insert(cut, e);
        }
        Some((s, cut))
    }

    /// Blocks covered, up to `limit` blocks (a range may be unbounded).
    pub fn blocks_below(&self, limit: u64) -> u64 {
        self.iter()
            .map(|(s, e)| e.min(limit).saturating_sub(s))
            .sum()
    }
}

/// What a file needs at resynchronisation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDirty {
    /// Changed [`BLOCK`]s, by index.
    pub blocks: Ranges,
    /// Its lineage is uncertain: compare every block by checksum.
    pub compare: bool,
    /// Created while tracking and never hard-linked: no other name can
    /// hold its data.
    pub fresh: bool,
    /// Blocks to compare by checksum, those differing then sent (regions
    /// of a returning primary's activity log). Only in a resync's work list.
    #[serde(skip)]
    pub check: Ranges,
}

/// A rename or hard link made while tracking, replayed on the peer first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub from: PathBuf,
    pub to: PathBuf,
    /// `None` for a hard link, else the `renameat2` flags.
    pub rename_flags: Option<u32>,
}

/// Everything the peer may lack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirty {
    pub files: BTreeMap<PathBuf, FileDirty>,
    /// Entries to make identical (existence, type, attributes, xattrs).
    pub entries: BTreeSet<PathBuf>,
    /// Directories whose every entry (both sides' listings) is compared.
    pub dirs: BTreeSet<PathBuf>,
    /// Of `dirs`, those whose entries are made identical without comparing
    /// their data (regions of a returning primary's activity log: its data
    /// changes have regions of their own). Only in a resync's work list.
    #[serde(skip)]
    pub listed: BTreeSet<PathBuf>,
    pub moves: Vec<Move>,
    /// Tracked data lost its name (unlinked, replaced) while another hard
    /// link may still hold it: compare every multiply-linked file.
    pub linked_lost: bool,
    /// Nothing is known: compare the whole tree.
    pub everything: bool,
}

impl Dirty {
    /// The state when tracking was lost: compare everything, by checksum.
    pub fn everything() -> Self {
        Dirty {
            everything: true,
            ..Dirty::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Dirty::default()
    }

    fn file(&mut self, path: &Path) -> &mut FileDirty {
        self.files.entry(path.to_path_buf()).or_default()
    }

    fn add_entry(&mut self, path: &Path) {
        self.entries.insert(path.to_path_buf());
        if let Some(parent) = path.parent() {
            self.entries.insert(parent.to_path_buf());
        }
    }

    /// The additions an intent implies (safe even if the operation then
    /// fails: only more is compared).
    pub(super) fn add_intent(&mut self, intent: &Intent<'_>) {
        match *intent {
            Intent::Data { path, offset, len } => {
                let end = offset.saturating_add(len);
                self.file(path)
                    .blocks
                    .insert(offset / BLOCK, end.div_ceil(BLOCK));
            }
            Intent::Entry { path } => self.add_entry(path),
            Intent::Move { from, to } => {
                self.add_entry(from);
                self.add_entry(to);
            }
        }
    }

    /// Follows an operation that succeeded: names move or disappear.
    pub(super) fn follow(&mut self, op: &Op) {
        match op {
            Op::Create { path, .. } => {
                // Anything tracked under that name belonged to a file gone.
                self.drop_path(path);
                self.file(path).fresh = true;
            }
            Op::Unlink { path } | Op::Rmdir { path } => self.drop_path(path),
            Op::Rename { from, to, flags } => {
                let exchange = flags & rustix::fs::RenameFlags::EXCHANGE.bits() != 0;
                self.rename(from, to, exchange);
                self.moves.push(Move {
                    from: from.clone(),
                    to: to.clone(),
                    rename_flags: Some(*flags),
                });
                // Re-keying moved them: both names still need a look.
                self.add_entry(from);
                self.add_entry(to);
            }
            Op::Link { from, to } => {
                // Two names for one file now: neither is fresh, and data
                // tracked under one name is reachable by both.
                let mut shared = self.files.get(from).cloned().unwrap_or_default();
                shared.fresh = false;
                self.files.insert(from.clone(), shared.clone());
                self.files.insert(to.clone(), shared);
                self.moves.push(Move {
                    from: from.clone(),
                    to: to.clone(),
                    rename_flags: None,
                });
            }
            _ => {}
        }
    }

    /// Tracked data under `path` (and below) no longer has that name.
    pub(super) fn drop_path(&mut self, path: &Path) {
        let gone: Vec<PathBuf> = self
            .files
            .range(path.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            let f = self.files.remove(&p).expect("just listed");
            if !f.fresh && (!f.blocks.is_empty() || f.compare) {
                self.linked_lost = true;
            }
        }
    }

    /// Moves everything tracked at or under `from` to `to` (both ways for
    /// an exchange); what `to` held before is replaced.
    pub(super) fn rename(&mut self, from: &Path, to: &Path, exchange: bool) {
        if !exchange {
            self.drop_path(to);
        }
        let map = |p: &Path| -> Option<PathBuf> {
            if let Ok(rest) = p.strip_prefix(from) {
                Some(join_rest(to, rest))
            } else if exchange {
                p.strip_prefix(to).ok().map(|rest| join_rest(from, rest))
            } else {
                None
            }
        };
        let files = std::mem::take(&mut self.files);
        self.files = files
            .into_iter()
            .map(|(p, f)| (map(&p).unwrap_or(p), f))
            .collect();
        let rekey = |set: &mut BTreeSet<PathBuf>| {
            *set = std::mem::take(set)
                .into_iter()
                .map(|p| map(&p).unwrap_or(p))
                .collect();
        };
        rekey(&mut self.entries);
        rekey(&mut self.dirs);
        rekey(&mut self.listed);
    }

    /// Where `path` is after `op` (for a resynchronisation's item in
    /// progress); `None` once it has no name.
    pub(super) fn follow_path(op: &Op, path: &Path) -> Option<PathBuf> {
        match op {
            Op::Unlink { path: gone } | Op::Rmdir { path: gone } if path.starts_with(gone) => None,
            Op::Create { path: p, .. } if p == path => None,
            Op::Rename { from, to, flags } => {
                let exchange = flags & rustix::fs::RenameFlags::EXCHANGE.bits() != 0;
                if let Ok(rest) = path.strip_prefix(from) {
                    Some(join_rest(to, rest))
                } else if let Ok(rest) = path.strip_prefix(to) {
                    exchange.then(|| join_rest(from, rest))
                } else {
                    Some(path.to_path_buf())
                }
            }
            _ => Some(path.to_path_buf()),
        }
    }

    /// Follows a change the peer may or may not have applied (it applied
    /// a prefix of the changes in flight, unknown): like [`Self::follow`],
    /// so re-sending what it has is harmless — entries are made identical,
    /// blocks rewritten with what they hold now — except that a rename is
    /// not replayed: whether the names bear the same files on both sides is
    /// unknown, so what they name now is compared (a file by checksums, a
    /// directory entry by entry). A hard link is replayed (skipped where its
    /// name exists), both names compared.
    pub(super) fn follow_unapplied(&mut self, op: &Op) {
        let names: Vec<&PathBuf> = match op {
            Op::Rename { from, to, flags } => {
                let exchange = flags & rustix::fs::RenameFlags::EXCHANGE.bits() != 0;
                self.rename(from, to, exchange);
                self.add_entry(from);
                self.add_entry(to);
                if exchange {
                    vec![from, to]
                } else {
                    vec![to]
                }
            }
            Op::Link { from, to } => {
                self.follow(op);
                vec![from, to]
            }
            _ => return self.follow(op),
        };
        let renamed = matches!(op, Op::Rename { .. });
        for name in names {
            self.file(name).compare = true;
            if renamed {
                // Listing a file finds nothing on either side: harmless.
                self.dirs.insert(name.clone());
            }
        }
    }

    /// Merges a region of a returning primary's activity log into a
    /// resync's work list: its data is compared by checksum, not sent.
    pub(crate) fn add_region(&mut self, mark: &Mark) {
        let per = EXTENT / BLOCK;
        match mark {
            Mark::Extent { path, index } => {
                self.file(path).check.insert(index * per, (index + 1) * per)
            }
            Mark::Tail { path, from } => self.file(path).check.insert(from / BLOCK, u64::MAX),
            other => self.add_mark(other),
        }
    }

    /// Merges what an activity log says (after a crash) into the state.
    pub(crate) fn add_mark(&mut self, mark: &Mark) {
        match mark {
            Mark::Extent { path, index } => {
                let per = EXTENT / BLOCK;
                self.file(path)
                    .blocks
                    .insert(index * per, (index + 1) * per);
            }
            Mark::Tail { path, from } => self.file(path).blocks.insert(from / BLOCK, u64::MAX),
            Mark::Dir { path } => {
                self.listed.remove(path);
                self.dirs.insert(path.clone());
                self.entries.insert(path.clone());
            }
            Mark::Listing { path } => {
                if !self.dirs.contains(path) {
                    self.listed.insert(path.clone());
                }
                self.dirs.insert(path.clone());
                self.entries.insert(path.clone());
            }
            Mark::Moved { path } => {
                // Whether the name bears the same file on both sides is
                // unknown: compared (a directory entry by entry).
                self.add_entry(path);
                self.file(path).compare = true;
                self.listed.remove(path);
                self.dirs.insert(path.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::examples::{data, ranges};

    #[test]
    fn ranges_merge_and_pop() {
        let mut r = Ranges::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 30);
        assert_eq!(ranges(&r), vec![(10, 40)]);
        r.insert(5, 6);
        r.insert(100, 101);
        r.insert(6, 12);
        assert_eq!(ranges(&r), vec![(5, 40), (100, 101)]);
        assert_eq!(r.blocks_below(101), 36);
        assert_eq!(r.pop_front(8), Some((5, 13)));
        assert_eq!(ranges(&r), vec![(13, 40), (100, 101)]);
    }

    #[test]
    fn renames_carry_tracked_blocks_and_unlinks_drop_them() {
        let mut d = Dirty::default();
        d.add_intent(&data("a/f", 0, 5000));
        d.follow(&Op::Rename {
            from: "a".into(),
            to: "b".into(),
            flags: 0,
        });
        assert_eq!(ranges(&d.files[Path::new("b/f")].blocks), vec![(0, 2)]);
        assert!(!d.files.contains_key(Path::new("a/f")));
        assert!(d.entries.contains(Path::new("a")) && d.entries.contains(Path::new("b")));
        // Unlinking data that existed before tracking: another hard link
        // may hold it.
        d.follow(&Op::Unlink { path: "b/f".into() });
        assert!(d.linked_lost);
        // A file created while tracking has no other name.
        let mut d = Dirty::default();
        d.follow(&Op::Create {
            path: "t".into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
        d.add_intent(&data("t", 0, 1));
        d.follow(&Op::Unlink { path: "t".into() });
        assert!(!d.linked_lost);
    }
}
