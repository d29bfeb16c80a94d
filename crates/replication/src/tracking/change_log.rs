//! The durable change tracker of one replicated directory: the fine state
//! in memory and in snapshots, the activity log of marks on disk.

use parking_lot::Mutex;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::dirty::Dirty;
use super::unapplied::Footprint;

use crate::activity::{self, ActivityError, ActivityLog};
use crate::durable;
use crate::mark::Mark;
use crate::op::{parent_of, Change, Intent, Op};

const LOG: &str = "activity.log";

const SNAPSHOT: &str = "dirty.snapshot";

const LOG_MAGIC: &[u8; 8] = b"HFAL\0\0\0\x01";

#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("change log in {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Activity(#[from] ActivityError),
}

/// When the fine state is written to disk and the activity log emptied.
#[derive(Debug, Clone, Copy)]
pub struct TrackingConfig {
    pub interval: Duration,
    pub max_marks: usize,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        // Bounds the work after a crash to the marks of about one second,
        // while a snapshot is written at most once a second.
        TrackingConfig {
            interval: Duration::from_secs(1),
            max_marks: 512,
        }
    }
}

/// What [`ChangeLog::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No state: nothing was tracked here before.
    Fresh,
    /// The state was read; `marks` activity-log marks were merged (0 after
    /// a clean shutdown).
    Recovered { marks: usize },
    /// The state could not be read: everything must be compared.
    Lost { reason: String },
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    log: File,
    dirty: Dirty,
    /// Marks logged since the last checkpoint (each logged once).
    marked: HashSet<Mark>,
    last_checkpoint: Instant,
    /// The resynchronisation's remaining work, when one runs: renames and
    /// removals re-key it like the state; additions do not (they are
    /// forwarded to the peer).
    pending: Option<Dirty>,
    /// The path a resynchronisation is working on, followed the same way.
    current: Option<PathBuf>,
}

impl Inner {
    /// A marked directory is examined entry by entry after a crash (every
    /// regular file in it compared by checksum, or sent whole if the peer
    /// lacks it): data marks of its files add nothing. So creating many
    /// files costs one synced mark per directory, not one per file.
    fn covered_by_dir(&self, mark: &Mark) -> bool {
        match mark {
            Mark::Extent { path, .. } | Mark::Tail { path, .. } => {
                self.marked.contains(&Mark::Dir {
                    path: parent_of(path).to_path_buf(),
                })
            }
            Mark::Dir { .. } | Mark::Listing { .. } | Mark::Moved { .. } => false,
        }
    }
}

/// The durable change tracker of one replicated directory.
#[derive(Debug)]
pub struct ChangeLog {
    inner: Mutex<Inner>,
    config: TrackingConfig,
    /// The regions changed while mirroring (see `activity.rs`).
    activity: Mutex<ActivityLog>,
}

fn sealed(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 12);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(&Sha256::digest(bytes)[..8]);
    out
}

/// The records of `data` up to the first incomplete or damaged one (the
/// record being appended when the process died, never acted upon).
fn unseal_all(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u32::from_le_bytes(data[..4].try_into().expect("4 bytes")) as usize;
        let Some(record) = data.get(4..4 + len) else {
            break;
        };
        let Some(check) = data.get(4 + len..12 + len) else {
            break;
        };
        if Sha256::digest(record)[..8] != *check {
            break;
        }
        out.push(record);
        data = &data[12 + len..];
    }
    out
}

impl ChangeLog {
    /// Opens (creating if needed) the state in `dir` — outside the
    /// replicated tree — and recovers what it says is dirty.
    pub fn open(dir: &Path, config: TrackingConfig) -> Result<(Self, Recovery), TrackingError> {
        let io = |source| TrackingError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (mut dirty, mut recovery) = Self::recover(dir).map_err(io)?;
        // Regions changed while mirroring before a crash: the peer may
        // lack them too (this node is the source if it is opening this).
        let (mut activity, recorded) = ActivityLog::open(dir, activity::CAPACITY)?;
        match (recorded, &mut recovery) {
            (_, Recovery::Lost { .. }) => {}
            (activity::Activity::Lost(reason), _) => {
                recovery = Recovery::Lost {
                    reason: format!("activity log: {reason}"),
                }
            }
            (activity::Activity::Regions(regions), _) if !regions.is_empty() => {
                for region in &regions {
                    dirty.add_mark(region);
                }
                recovery = match recovery {
                    Recovery::Recovered { marks } => Recovery::Recovered {
                        marks: marks + regions.len(),
                    },
                    _ => Recovery::Recovered {
                        marks: regions.len(),
                    },
                };
            }
            _ => {}
        }
        if let Recovery::Lost { reason } = &recovery {
            tracing::warn!(
                "change log in {} lost ({reason}): comparing everything",
                dir.display()
            );
            dirty = Dirty::everything();
        }
        let log = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(dir.join(LOG))
            .map_err(io)?;
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            log,
            dirty: std::mem::take(&mut dirty),
            marked: HashSet::new(),
            last_checkpoint: Instant::now(),
            pending: None,
            current: None,
        };
        // The recovered state becomes the snapshot; the log starts empty.
        Self::write_checkpoint(&mut inner).map_err(io)?;
        // Only now (what it held is in the snapshot) is the activity log
        // rewritten.
        activity.start()?;
        Ok((
            ChangeLog {
                inner: Mutex::new(inner),
                config,
                activity: Mutex::new(activity),
            },
            recovery,
        ))
    }

    fn recover(dir: &Path) -> std::io::Result<(Dirty, Recovery)> {
        let read = |name| match std::fs::read(dir.join(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        let (snapshot, log) = (read(SNAPSHOT)?, read(LOG)?);
        if snapshot.is_none() && log.as_ref().is_none_or(|l| l.is_empty()) {
            return Ok((Dirty::default(), Recovery::Fresh));
        }
        let lost = |reason: &str| {
            Ok((
                Dirty::everything(),
                Recovery::Lost {
                    reason: reason.into(),
                },
            ))
        };
        let mut dirty = match snapshot {
            // A crash before the first checkpoint: the marks tell all.
            None => Dirty::default(),
            Some(bytes) => match unseal_all(&bytes).as_slice() {
                [one] => match postcard::from_bytes(one) {
                    Ok(d) => d,
                    Err(e) => return lost(&format!("snapshot undecodable: {e}")),
                },
                _ => return lost("snapshot damaged"),
            },
        };
        let log = log.unwrap_or_default();
        if log.is_empty() {
            return Ok((dirty, Recovery::Recovered { marks: 0 }));
        }
        if !log.starts_with(LOG_MAGIC) {
            return lost("activity log of an unknown format");
        }
        let records = unseal_all(&log[LOG_MAGIC.len()..]);
        for record in &records {
            match postcard::from_bytes::<Mark>(record) {
                Ok(mark) => dirty.add_mark(&mark),
                Err(e) => return lost(&format!("activity log undecodable: {e}")),
            }
        }
        Ok((
            dirty,
            Recovery::Recovered {
                marks: records.len(),
            },
        ))
    }

    fn write_checkpoint(inner: &mut Inner) -> std::io::Result<()> {
        let bytes = postcard::to_allocvec(&inner.dirty).expect("plain data serialises");
        durable::replace(&inner.dir.join(SNAPSHOT), &sealed(&bytes))?;
        // Only now may the marks go: the snapshot covers what they did.
        inner.log.set_len(0)?;
        inner.log.write_all(LOG_MAGIC)?;
        inner.log.sync_data()?;
        inner.marked.clear();
        inner.last_checkpoint = Instant::now();
        Ok(())
    }

    fn io_err(inner: &Inner, source: std::io::Error) -> TrackingError {
        TrackingError::Io {
            dir: inner.dir.clone(),
            source,
        }
    }

    /// Before a change is applied: logs (and syncs) the marks covering it
    /// that are not logged yet, then records it in memory.
    pub fn prepare(&self, intent: &Intent<'_>) -> Result<(), TrackingError> {
        let mut inner = self.inner.lock();
        let new: Vec<Mark> = Mark::covering(intent)
            .into_iter()
            .filter(|m| !inner.marked.contains(m) && !inner.covered_by_dir(m))
            .collect();
        if !new.is_empty() {
            let mut bytes = Vec::new();
            for mark in &new {
                bytes.extend(sealed(&postcard::to_allocvec(mark).expect("plain data")));
            }
            let result = inner
                .log
                .write_all(&bytes)
                .and_then(|()| inner.log.sync_data());
            result.map_err(|e| Self::io_err(&inner, e))?;
            inner.marked.extend(new);
        }
        inner.dirty.add_intent(intent);
        Ok(())
    }

    /// After a change succeeded locally (still under the ordering lock):
    /// follows renames and removals; checkpoints when due.
    pub fn record(&self, change: &Change) -> Result<(), TrackingError> {
        let mut inner = self.inner.lock();
        inner.dirty.follow(&change.op);
        Self::follow_pending(&mut inner, &change.op);
        let due = inner.marked.len() >= self.config.max_marks
            || (!inner.marked.is_empty()
                && inner.last_checkpoint.elapsed() >= self.config.interval);
        if due {
            Self::write_checkpoint(&mut inner).map_err(|e| Self::io_err(&inner, e))?;
        }
        Ok(())
    }

    /// A change forwarded to a resynchronising peer: the resync's work list
    /// follows it (the change itself reaches the peer in the stream).
    fn follow_pending(inner: &mut Inner, op: &Op) {
        if let Some(pending) = &mut inner.pending {
            // Removals of tracked data do not count as lost links here:
            // the state (`dirty`) keeps that judgement.
            let lost = pending.linked_lost;
            match op {
                Op::Unlink { path } | Op::Rmdir { path } => pending.drop_path(path),
                Op::Create { path, .. } => pending.drop_path(path),
                Op::Rename { from, to, flags } => {
                    let exchange = flags & rustix::fs::RenameFlags::EXCHANGE.bits() != 0;
                    pending.rename(from, to, exchange);
                }
                // Skipped by the peer if it lacks the first name yet: the
                // pass brings the new one too (as a link), after its
                // directories, which the peer may lack as well.
                Op::Link { to, .. } => pending
                    .entries
                    .extend(to.ancestors().map(Path::to_path_buf)),
                _ => {}
            }
            pending.linked_lost = lost;
        }
        if let Some(current) = inner.current.take() {
            inner.current = Dirty::follow_path(op, &current);
        }
    }

    /// Mirrored changes the peer may lack — some of them, a prefix, it
    /// may have applied —, in stream order: covered durably (the activity
    /// log) before returning, tracked so that re-sending them is harmless
    /// ([`Dirty::follow_unapplied`]). If they cannot be recorded, the next
    /// resynchronisation compares everything.
    pub(super) fn record_unapplied(&self, changes: &[Footprint]) -> Result<(), TrackingError> {
        for touched in changes {
            let recorded = touched
                .intents()
                .iter()
                .try_for_each(|intent| self.prepare(intent));
            if let Err(e) = recorded {
                self.inner.lock().dirty = Dirty::everything();
                return Err(e);
            }
            if let Footprint::Change(change) = touched {
                let mut inner = self.inner.lock();
                inner.dirty.follow_unapplied(&change.op);
                Self::follow_pending(&mut inner, &change.op);
            }
        }
        Ok(())
    }

    /// Whether the state is lost: everything must be compared.
    pub fn lost(&self) -> bool {
        self.inner.lock().dirty.everything
    }

    /// Runs `f` on the current state (briefly: changes wait meanwhile).
    pub(crate) fn inspect<T>(&self, f: impl FnOnce(&Dirty) -> T) -> T {
        f(&self.inner.lock().dirty)
    }

    /// A copy of the current state.
    pub fn dirty(&self) -> Dirty {
        self.inner.lock().dirty.clone()
    }

    /// Writes the fine state and empties the activity log (clean shutdown).
    pub fn checkpoint(&self) -> Result<(), TrackingError> {
        let mut inner = self.inner.lock();
        Self::write_checkpoint(&mut inner).map_err(|e| Self::io_err(&inner, e))
    }

    /// Starts a resynchronisation's work list: a copy of the state.
    pub(crate) fn begin_pending(&self) -> Dirty {
        let mut inner = self.inner.lock();
        let snapshot = inner.dirty.clone();
        inner.pending = Some(snapshot.clone());
        inner.current = None;
        snapshot
    }

    /// Runs `f` on the work list (call under the tree's ordering lock).
    pub(crate) fn with_pending<T>(
        &self,
        f: impl FnOnce(&mut Dirty, &mut Option<PathBuf>) -> T,
    ) -> Option<T> {
        let mut inner = self.inner.lock();
        let Inner {
            pending, current, ..
        } = &mut *inner;
        pending.as_mut().map(|p| f(p, current))
    }

    /// The peer holds everything: forget the state (under the ordering
    /// lock, once every change submitted before was acknowledged).
    pub(crate) fn clear(&self) -> Result<(), TrackingError> {
        let mut inner = self.inner.lock();
        inner.dirty = Dirty::default();
        inner.pending = None;
        inner.current = None;
        Self::write_checkpoint(&mut inner).map_err(|e| Self::io_err(&inner, e))
    }

    /// The resynchronisation stopped unfinished: the state still covers it.
    pub(crate) fn abandon_pending(&self) {
        let mut inner = self.inner.lock();
        inner.pending = None;
        inner.current = None;
    }

    /// While mirroring, before a change is applied: its regions are in
    /// the activity log, durably. `busy`: see [`ActivityLog::prepare`].
    pub(super) fn prepare_mirrored(
        &self,
        intent: &Intent<'_>,
        busy: impl FnOnce() -> Option<HashSet<Mark>>,
    ) -> Result<(), TrackingError> {
        let marks = Mark::mirrored(intent);
        Ok(self.activity.lock().prepare(marks, busy)?)
    }

    /// A clean stop: everything mirrored was acknowledged or is in the
    /// change log; the activity log is emptied.
    pub fn clear_activity(&self) -> Result<(), TrackingError> {
        Ok(self.activity.lock().clear()?)
    }

    /// Size of the activity log kept while mirroring, in bytes.
    pub fn activity_len(&self) -> u64 {
        self.activity.lock().len()
    }

    /// Size of the activity log in bytes (for tests and diagnostics).
    pub fn log_len(&self) -> u64 {
        let inner = self.inner.lock();
        inner.log.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mark::EXTENT;
    use crate::tracking::examples::{change, data, ranges, write};
    use crate::tracking::BLOCK;

    #[test]
    fn unapplied_changes_are_tracked_without_replaying_renames() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
        let changes = [
            write("a", 10, 10),
            change(Op::Rename {
                from: "a".into(),
                to: "b".into(),
                flags: 0,
            }),
            change(Op::Link {
                from: "b".into(),
                to: "c".into(),
            }),
            change(Op::SetAttr {
                path: "d".into(),
                mode: None,
                uid: None,
                gid: None,
                size: Some(8192),
                atime: None,
                mtime: None,
            }),
            change(Op::Fsync { path: "b".into() }),
        ];
        let touched: Vec<Footprint> = changes.iter().map(Footprint::of).collect();
        log.record_unapplied(&touched).unwrap();
        let d = log.dirty();
        // The write's block followed the rename; both names of the linked
        // file are compared (the secondary may hold other files there).
        assert_eq!(ranges(&d.files[Path::new("b")].blocks), vec![(0, 1)]);
        assert!(d.files[Path::new("b")].compare && d.files[Path::new("c")].compare);
        assert!(
            d.dirs.contains(Path::new("b")),
            "a renamed directory is listed"
        );
        assert!(!d.files.contains_key(Path::new("a")));
        assert!(
            d.entries.contains(Path::new("a")),
            "its old name is made absent"
        );
        // Only the hard link is replayed (skipped where it exists).
        assert_eq!(d.moves.len(), 1);
        assert_eq!(d.moves[0].rename_flags, None);
        // A truncation: from the new size on, whatever the old one was.
        assert_eq!(
            d.files[Path::new("d")].blocks.iter().next().unwrap().0,
            2,
            "{d:?}"
        );
        // Covered durably: the activity log has the marks.
        drop(log);
        let (log, recovery) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
        assert!(matches!(recovery, Recovery::Recovered { .. }));
        assert!(!log.dirty().is_empty());
    }

    #[test]
    fn marks_are_logged_once_per_checkpoint_and_survive_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let config = TrackingConfig {
            interval: Duration::from_secs(3600),
            max_marks: 1000,
        };
        {
            let (log, recovery) = ChangeLog::open(tmp.path(), config).unwrap();
            assert_eq!(recovery, Recovery::Fresh);
            log.prepare(&data("f", 10, 10)).unwrap();
            let after_one = log.log_len();
            log.prepare(&data("f", 4096, 10)).unwrap();
            assert_eq!(log.log_len(), after_one, "same extent: nothing logged");
            log.prepare(&data("f", EXTENT + 1, 1)).unwrap();
            log.prepare(&Intent::Entry {
                path: Path::new("d/new"),
            })
            .unwrap();
            let before = log.log_len();
            log.prepare(&data("d/new", 0, 1)).unwrap();
            assert_eq!(log.log_len(), before, "its directory's mark covers it");
            // Dropped without checkpoint: a crash.
        }
        let (log, recovery) = ChangeLog::open(tmp.path(), config).unwrap();
        assert_eq!(recovery, Recovery::Recovered { marks: 3 });
        let d = log.dirty();
        let per = EXTENT / BLOCK;
        assert_eq!(ranges(&d.files[Path::new("f")].blocks), vec![(0, 2 * per)]);
        assert!(d.dirs.contains(Path::new("d")));
        // Reopening checkpointed: a second recovery reads the snapshot.
        drop(log);
        let (log, recovery) = ChangeLog::open(tmp.path(), config).unwrap();
        assert_eq!(recovery, Recovery::Recovered { marks: 0 });
        assert_eq!(log.dirty(), d);
    }

    #[test]
    fn checkpoint_keeps_fine_state_and_empties_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let config = TrackingConfig {
            interval: Duration::ZERO,
            max_marks: 1000,
        };
        {
            let (log, _) = ChangeLog::open(tmp.path(), config).unwrap();
            log.prepare(&data("f", 8192, 1)).unwrap();
            // Due at once (interval zero): the snapshot holds block 2 only.
            log.record(&change(Op::Fsync { path: "f".into() })).unwrap();
        }
        let (log, recovery) = ChangeLog::open(tmp.path(), config).unwrap();
        assert_eq!(recovery, Recovery::Recovered { marks: 0 });
        assert_eq!(
            ranges(&log.dirty().files[Path::new("f")].blocks),
            vec![(2, 3)]
        );
    }

    #[test]
    fn damaged_state_is_reported_lost() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (log, _) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
            log.prepare(&data("f", 0, 1)).unwrap();
            log.checkpoint().unwrap();
        }
        let snap = tmp.path().join(SNAPSHOT);
        let mut bytes = std::fs::read(&snap).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&snap, bytes).unwrap();
        let (log, recovery) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
        assert!(matches!(recovery, Recovery::Lost { .. }), "{recovery:?}");
        assert!(log.dirty().everything);
    }

    #[test]
    fn regions_changed_while_mirroring_are_covered_when_a_crashed_primary_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (log, _) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
            log.prepare_mirrored(&data("f", EXTENT + 5, 10), || None)
                .unwrap();
            log.prepare_mirrored(
                &Intent::Entry {
                    path: Path::new("d/x"),
                },
                || None,
            )
            .unwrap();
            assert!(log.dirty().is_empty(), "mirrored: nothing tracked");
            assert!(log.activity_len() > 8);
            // Dropped: a crash.
        }
        let (log, recovery) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
        assert_eq!(recovery, Recovery::Recovered { marks: 2 });
        let d = log.dirty();
        let per = EXTENT / BLOCK;
        assert_eq!(
            ranges(&d.files[Path::new("f")].blocks),
            vec![(per, 2 * per)]
        );
        assert!(d.dirs.contains(Path::new("d")));
        // A clean stop empties the activity log (the change log keeps its
        // own state).
        log.clear_activity().unwrap();
        assert_eq!(
            activity::load(tmp.path()),
            activity::Activity::Regions(vec![])
        );
        drop(log);
        // A damaged activity log: everything is compared.
        std::fs::write(tmp.path().join(activity::FILE), b"HFAM\x09\0\0\0").unwrap();
        let (log, recovery) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
        assert!(
            matches!(&recovery, Recovery::Lost { reason } if reason.contains("version 9")),
            "{recovery:?}"
        );
        assert!(log.dirty().everything);
    }

    #[test]
    fn torn_last_record_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let config = TrackingConfig {
                interval: Duration::from_secs(3600),
                max_marks: 1000,
            };
            let (log, _) = ChangeLog::open(tmp.path(), config).unwrap();
            log.prepare(&data("f", 0, 1)).unwrap();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(tmp.path().join(LOG))
            .unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let (_, recovery) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
        assert_eq!(recovery, Recovery::Recovered { marks: 1 });
    }
}
