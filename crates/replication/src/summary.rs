//! What the next resynchronisation will send, read from the change log
//! while ALONE (SafeKit's `safekit rfsdiff`, without its scan of the tree):
//! counted from the tracked blocks and names; only files whose blocks say
//! nothing of their size are looked at.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fs::tree::Tree;
use crate::mark::EXTENT;
use crate::tracking::change_log::ChangeLog;
use crate::tracking::dirty::{Dirty, FileDirty};
use crate::tracking::BLOCK;

/// The changes a returning secondary lacks, as far as the change log knows
/// (if it returns with the copy it left with: else the resynchronisation
/// compares checksums, and says why).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedSummary {
    /// Files with tracked data, or compared whole.
    pub files: u64,
    /// Bytes of their tracked 4 KiB blocks, sent as they are: a partly
    /// written block counts whole; within the file's size where a range
    /// reaches past what was written (a truncation, whole extents after a
    /// crash, a long write).
    pub bytes: u64,
    /// Bytes of tracked files whose content on the secondary is uncertain
    /// (or in a compared directory): compared by checksum, only differing
    /// blocks sent.
    pub bytes_compared: u64,
    /// Names made identical (existence, type, attributes).
    pub entries: u64,
    /// Renames and hard links, replayed first.
    pub moves: u64,
    /// Directories whose every entry is compared (after a crash of this
    /// primary, or a rename the secondary may not have applied): what
    /// differs there is unknown until compared.
    pub directories: u64,
    /// Tracked data lost its name while another hard link may hold it:
    /// every multiply-linked file is compared.
    pub linked: bool,
    /// Tracking was lost: the whole tree is compared by checksum.
    pub everything: bool,
}

impl TrackedSummary {
    /// The figures are the whole of it: no comparison of unknown outcome.
    pub fn known(&self) -> bool {
        !self.everything && self.directories == 0 && !self.linked
    }

    /// From `log`'s state; `size` gives a file's current size, asked (not
    /// under the log's lock) only for those compared whole or with a range
    /// of an extent or more.
    pub fn read(log: &ChangeLog, mut size: impl FnMut(&Path) -> Option<u64>) -> Self {
        let (mut summary, sized) = log.inspect(Self::counted);
        for (path, file) in sized {
            summary.add_sized(&file, size(&path).unwrap_or(0));
        }
        summary
    }

    /// Everything but the files that need their size, returned.
    fn counted(dirty: &Dirty) -> (Self, Vec<(PathBuf, FileDirty)>) {
        if dirty.everything {
            return (
                TrackedSummary {
                    everything: true,
                    ..TrackedSummary::default()
                },
                Vec::new(),
            );
        }
        let mut summary = TrackedSummary {
            entries: dirty.entries.len() as u64,
            moves: dirty.moves.len() as u64,
            directories: dirty.dirs.len() as u64,
            linked: dirty.linked_lost,
            ..TrackedSummary::default()
        };
        let mut sized = Vec::new();
        let with_data = dirty
            .files
            .iter()
            .filter(|(_, f)| f.compare || !f.blocks.is_empty());
        for (path, f) in with_data {
            summary.files += 1;
            // A compared directory's files are compared, not sent (the
            // secondary's may hold the same data).
            let parent = crate::op::parent_of(path);
            let compare = f.compare || dirty.dirs.contains(parent);
            if compare || f.blocks.iter().any(|(s, e)| e - s >= EXTENT / BLOCK) {
                let mut f = f.clone();
                f.compare = compare;
                sized.push((path.clone(), f));
            } else {
                summary.bytes += f.blocks.blocks_below(u64::MAX) * BLOCK;
            }
        }
        (summary, sized)
    }

    fn add_sized(&mut self, file: &FileDirty, size: u64) {
        if file.compare {
            self.bytes_compared += size;
        } else {
            self.bytes += file.blocks.blocks_below(size.div_ceil(BLOCK)) * BLOCK;
        }
    }
}

/// [`TrackedSummary::read`] of `log`, sizes from the real directory of
/// `tree` (not through the mount).
pub fn tracked(tree: &Tree, log: &ChangeLog) -> TrackedSummary {
    TrackedSummary::read(log, |path| {
        tree.root().stat(path).ok().map(|st| st.st_size as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Change, Intent, Op};
    use crate::tracking::change_log::{Recovery, TrackingConfig};

    fn data(path: &str, offset: u64, len: u64) -> Intent<'_> {
        Intent::Data {
            path: Path::new(path),
            offset,
            len,
        }
    }

    fn done(log: &ChangeLog, op: Op) {
        log.record(&Change { op, stamps: vec![] }).unwrap();
    }

    #[test]
    fn counts_tracked_blocks_names_and_moves_asking_sizes_only_where_needed() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
        let mut asked = Vec::new();
        let nothing = TrackedSummary::read(&log, |_| unreachable!());
        assert_eq!(nothing, TrackedSummary::default());
        assert!(nothing.known());
        // 5000 bytes: two blocks; 10 bytes across a block boundary: two.
        log.prepare(&data("a", 0, 5000)).unwrap();
        log.prepare(&data("b", (1 << 20) - 5, 10)).unwrap();
        // A new file in a new directory, then a rename.
        log.prepare(&Intent::Entry {
            path: Path::new("d/new"),
        })
        .unwrap();
        done(
            &log,
            Op::Create {
                path: "d/new".into(),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        );
        log.prepare(&Intent::Move {
            from: Path::new("a"),
            to: Path::new("e"),
        })
        .unwrap();
        done(
            &log,
            Op::Rename {
                from: "a".into(),
                to: "e".into(),
                flags: 0,
            },
        );
        // Truncated to 100 bytes: from block 0 to any end, so its size
        // is asked.
        log.prepare(&data("t", 100, u64::MAX - 100)).unwrap();
        let summary = TrackedSummary::read(&log, |p| {
            asked.push(p.to_path_buf());
            Some(100)
        });
        assert_eq!(asked, vec![PathBuf::from("t")]);
        assert_eq!(
            summary,
            TrackedSummary {
                files: 3,
                bytes: (2 + 2 + 1) * BLOCK,
                entries: 5, // d, d/new, "", a, e
                moves: 1,
                ..TrackedSummary::default()
            }
        );
        assert!(summary.known());
    }

    #[test]
    fn after_a_crash_extents_are_cut_to_sizes_and_listed_directories_are_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        let config = TrackingConfig {
            interval: std::time::Duration::from_secs(3600),
            max_marks: 1000,
        };
        {
            let (log, _) = ChangeLog::open(tmp.path(), config).unwrap();
            log.prepare(&data("d/y", 0, 10)).unwrap();
            log.checkpoint().unwrap();
            log.prepare(&data("f", 10, 10)).unwrap();
            log.prepare(&Intent::Entry {
                path: Path::new("d/x"),
            })
            .unwrap();
            // Dropped without a checkpoint: a crash.
        }
        let (log, recovery) = ChangeLog::open(tmp.path(), config).unwrap();
        assert_eq!(recovery, Recovery::Recovered { marks: 2 });
        // The whole first extent of f is tracked: as much as f holds; d/y,
        // in the directory compared, is compared.
        let summary = TrackedSummary::read(&log, |p| {
            Some(if p == Path::new("f") {
                3 * BLOCK - 1
            } else {
                10
            })
        });
        assert_eq!(
            (summary.files, summary.bytes, summary.bytes_compared),
            (2, 3 * BLOCK, 10)
        );
        assert_eq!(summary.directories, 1);
        assert!(!summary.known(), "d's entries are compared");
    }

    #[test]
    fn lost_tracking_is_everything_and_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("activity.log"), b"not a log").unwrap();
        let (log, recovery) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
        assert!(matches!(recovery, Recovery::Lost { .. }), "{recovery:?}");
        let summary = TrackedSummary::read(&log, |_| unreachable!());
        assert!(summary.everything && !summary.known());
        assert_eq!(summary.bytes, 0, "no made-up figure");
    }
}
