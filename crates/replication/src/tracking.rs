//! Change tracking while no secondary receives the stream (ALONE), durable
//! across a crash of the lone primary, and the [`Link`] that switches the
//! file system between mirroring, tracking and resynchronising.
//!
//! # Granularity
//!
//! - In memory, per file path, the 4 KiB blocks changed ([`BLOCK`]: the
//!   page size, the unit applications and the kernel write in — a 4 KiB
//!   random write costs 4 KiB at resync, not 64), kept as merged ranges so
//!   a sequential write of a large file is one entry; plus the entries
//!   (paths) whose existence or attributes changed, and the renames and
//!   hard links in order, replayed first so a renamed file is not re-sent.
//! - On disk, DRBD-style: an *activity log* of coarse marks — 4 MiB extents
//!   of a file ([`EXTENT`]) and directories whose listing changed — each
//!   appended and synced **before** the first change it covers is applied
//!   (so before the data can reach the disk), at most once per checkpoint.
//!   The fine state is written to a snapshot at checkpoints (every
//!   [`TrackingConfig::interval`] or [`TrackingConfig::max_marks`] marks)
//!   and at clean shutdown, after which the log starts empty.
//!
//! After a crash the dirty set is the last snapshot plus every mark logged
//! since: whole extents, and directories whose every entry is compared with
//! the peer (regular files there by block checksum, since a rename may have
//! replaced one by another). So every change the application saw succeed is
//! covered; the cost of a crash is bounded by the marks of one checkpoint
//! period. A sequential 64 MiB write costs 16 synced marks; a rewrite of a
//! block already marked costs nothing.
//!
//! A state that cannot be read (damaged, foreign) is reported as lost: the
//! caller then compares the whole tree by checksums ([`Dirty::everything`]).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::activity::{self, ActivityError, ActivityLog};
use crate::generation::write_atomically;
use crate::mark::{Mark, EXTENT};
use crate::op::{join_rest, parent_of, Ack, Change, Intent, Op, ReplicationError, Replicator};

/// Unit of change tracking in memory, and of data sent for tracked changes.
pub const BLOCK: u64 = 4096;

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
    fn add_intent(&mut self, intent: &Intent<'_>) {
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
    fn follow(&mut self, op: &Op) {
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
    fn drop_path(&mut self, path: &Path) {
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
    fn rename(&mut self, from: &Path, to: &Path, exchange: bool) {
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
    fn follow_path(op: &Op, path: &Path) -> Option<PathBuf> {
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
    fn follow_unapplied(&mut self, op: &Op) {
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

/// What a mirrored change touched, kept until the secondary is known to
/// have applied it: a write's range, not its data (no copy of every write
/// in flight).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Touched {
    Data {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    Change(Change),
}

impl Touched {
    fn of(change: &Change) -> Self {
        match &change.op {
            Op::Write { path, offset, data } => Touched::Data {
                path: path.clone(),
                offset: *offset,
                len: data.len() as u64,
            },
            _ => Touched::Change(change.clone()),
        }
    }

    /// What the change touched, as the file system announces it before
    /// applying (where the size it had before is unknown, from the new one
    /// to any end).
    fn intents(&self) -> Vec<Intent<'_>> {
        let change = match self {
            Touched::Data { path, offset, len } => {
                return vec![Intent::Data {
                    path,
                    offset: *offset,
                    len: *len,
                }]
            }
            Touched::Change(change) => change,
        };
        match &change.op {
            Op::Write { path, offset, data } => vec![Intent::Data {
                path,
                offset: *offset,
                len: data.len() as u64,
            }],
            Op::SetAttr {
                path,
                size: Some(size),
                ..
            } => vec![
                Intent::Entry { path },
                Intent::Data {
                    path,
                    offset: *size,
                    len: u64::MAX - size,
                },
            ],
            Op::Fallocate {
                path,
                offset,
                length,
                mode,
            } => {
                let shifting = rustix::fs::FallocateFlags::COLLAPSE_RANGE
                    | rustix::fs::FallocateFlags::INSERT_RANGE;
                let shifts =
                    rustix::fs::FallocateFlags::from_bits_retain(*mode as u32).intersects(shifting);
                vec![Intent::Data {
                    path,
                    offset: *offset,
                    len: if shifts { u64::MAX - offset } else { *length },
                }]
            }
            Op::Rename { from, to, .. } | Op::Link { from, to } => {
                vec![Intent::Move { from, to }]
            }
            Op::Fsync { .. } => vec![],
            // Existence, attributes, xattrs.
            op => op
                .paths()
                .into_iter()
                .map(|path| Intent::Entry { path })
                .collect(),
        }
    }
}

/// Mirrored changes, in stream order, that the secondary may not have
/// applied: it acknowledges on receipt (before applying), or did not
/// acknowledge yet. It applies in order, so they are those numbered from
/// the last "applied up to" it reported. Pure.
#[derive(Debug, Default)]
struct Unapplied(VecDeque<(u64, Touched)>);

impl Unapplied {
    fn push(&mut self, seq: u64, touched: Touched) {
        self.0.push_back((seq, touched));
    }

    /// The secondary applied every change numbered below `upto`.
    fn applied(&mut self, upto: u64) {
        while self.0.front().is_some_and(|(seq, _)| *seq < upto) {
            self.0.pop_front();
        }
    }

    fn take(&mut self) -> Vec<Touched> {
        std::mem::take(&mut self.0)
            .into_iter()
            .map(|(_, t)| t)
            .collect()
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
            (activity::Recorded::Lost(reason), _) => {
                recovery = Recovery::Lost {
                    reason: format!("activity log: {reason}"),
                }
            }
            (activity::Recorded::Regions(regions), _) if !regions.is_empty() => {
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
        write_atomically(&inner.dir.join(SNAPSHOT), &sealed(&bytes))?;
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
    fn record_unapplied(&self, changes: &[Touched]) -> Result<(), TrackingError> {
        for touched in changes {
            let recorded = touched
                .intents()
                .iter()
                .try_for_each(|intent| self.prepare(intent));
            if let Err(e) = recorded {
                self.inner.lock().dirty = Dirty::everything();
                return Err(e);
            }
            if let Touched::Change(change) = touched {
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
    fn prepare_mirrored(
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

/// Where changes go now.
#[derive(Clone)]
enum Mode {
    /// Synchronous mirroring: nothing tracked (the peer acknowledges all).
    Mirror(Arc<dyn Replicator>),
    /// ALONE: recorded, acknowledged at once.
    Track,
    /// Resynchronising: recorded *and* forwarded; a failure of the peer is
    /// not the application's (the change is recorded): back to tracking
    /// (to holding with [`OnFailure::Wait`]).
    Forward(Arc<dyn Replicator>),
    /// The secondary failed and [`OnFailure::Wait`]: recorded, and
    /// acknowledged once a resynchronisation brought it to the secondary
    /// (or the link tracks).
    Hold,
    /// The primary role is ending and the secondary may take over without
    /// what it lacks: recorded, and failed ([`Link::close`]).
    Closed,
}

impl std::fmt::Debug for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Mirror(_) => "Mirror",
            Mode::Track => "Track",
            Mode::Forward(_) => "Forward",
            Mode::Hold => "Hold",
            Mode::Closed => "Closed",
        })
    }
}

#[derive(Debug)]
struct LinkInner {
    mode: Mutex<Mode>,
    log: Arc<ChangeLog>,
    on_failure: Mutex<OnFailure>,
    counters: Mutex<Counters>,
    /// Notified when a counter changes.
    changed: Condvar,
    /// Mirrored changes the secondary may not have applied; recorded in
    /// the log (in stream order, under this lock) when mirroring ends.
    unapplied: Mutex<Unapplied>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Mirrored changes whose acknowledgement has not been handled: a
    /// resynchronisation starts only once each failed one is recorded.
    in_flight: u64,
    /// Bumped when the link tracks or mirrors again (after a resync): a
    /// change waiting for the secondary ([`OnFailure::Wait`]) is covered.
    releases: u64,
    /// The release that closed the link ([`Link::close`]).
    closed: Option<u64>,
    /// Changes failed because the link was closed.
    refused: u64,
}

/// What a mirroring [`Link`] does with an operation whose change the
/// secondary failed to acknowledge (connection lost, change refused).
/// In every case the change is first recorded, durably, for the next
/// resynchronisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// The operation fails (`EIO`).
    #[default]
    Fail,
    /// The operation succeeds: the primary goes on without the secondary.
    Track,
    /// The operation waits until the secondary has the change (a
    /// resynchronisation begun after the failure completed) or the link
    /// tracks (the secondary was declared lost).
    Wait,
}

/// The [`Replicator`] the file system is mounted with: mirrors, tracks or
/// both, switched by the daemon (and by a resynchronisation).
#[derive(Debug, Clone)]
pub struct Link(Arc<LinkInner>);

/// What the link is doing, for status displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Mirror,
    Track,
    Forward,
    Hold,
    Closed,
}

impl Link {
    fn new(log: Arc<ChangeLog>, mode: Mode) -> Self {
        Link(Arc::new(LinkInner {
            mode: Mutex::new(mode),
            log,
            on_failure: Mutex::new(OnFailure::default()),
            counters: Mutex::new(Counters::default()),
            changed: Condvar::new(),
            unapplied: Mutex::new(Unapplied::default()),
        }))
    }

    /// Starts tracking (ALONE).
    pub fn tracking(log: Arc<ChangeLog>) -> Self {
        Self::new(log, Mode::Track)
    }

    /// Starts mirroring to an in-sync peer.
    pub fn mirroring(log: Arc<ChangeLog>, peer: Arc<dyn Replicator>) -> Self {
        Self::new(log, Mode::Mirror(peer))
    }

    /// What an operation does when the secondary fails it (from now on).
    pub fn set_on_failure(&self, policy: OnFailure) {
        *self.0.on_failure.lock() = policy;
    }

    /// Waits until every failed mirrored change is recorded: call under
    /// the tree's ordering lock before taking the resync's work list.
    pub(crate) fn settle(&self) {
        self.record_unapplied_now();
        let mut counters = self.0.counters.lock();
        while counters.in_flight > 0 {
            self.0.changed.wait(&mut counters);
        }
    }

    fn release(&self) {
        self.0.counters.lock().releases += 1;
        self.0.changed.notify_all();
    }

    pub fn log(&self) -> &Arc<ChangeLog> {
        &self.0.log
    }

    pub fn mode(&self) -> LinkMode {
        match *self.0.mode.lock() {
            Mode::Mirror(_) => LinkMode::Mirror,
            Mode::Track => LinkMode::Track,
            Mode::Forward(_) => LinkMode::Forward,
            Mode::Hold => LinkMode::Hold,
            Mode::Closed => LinkMode::Closed,
        }
    }

    /// The secondary failed, [`OnFailure::Wait`]: from the next change on,
    /// record and wait for it. Call under the tree's ordering lock.
    pub fn hold(&self) {
        self.record_unapplied_now();
        *self.0.mode.lock() = Mode::Hold;
    }

    /// A resynchronisation failed: back to tracking, or to holding with
    /// [`OnFailure::Wait`]. Call under the tree's ordering lock.
    pub(crate) fn fall_back(&self) {
        if *self.0.on_failure.lock() == OnFailure::Wait {
            self.hold();
        } else {
            self.track();
        }
    }

    /// Blocks until the link releases changes recorded before `seen`;
    /// an error if that release refused them.
    fn wait_release(&self, seen: u64) -> Result<(), ReplicationError> {
        let mut counters = self.0.counters.lock();
        while counters.releases == seen && counters.closed.is_none() {
            self.0.changed.wait(&mut counters);
        }
        // Refused if the first release after `seen` (the one ending the
        // wait) closed the link, or it was closed before.
        if counters.closed.is_some_and(|at| at <= seen + 1) {
            counters.refused += 1;
            return Err(ReplicationError::Withdrawn);
        }
        Ok(())
    }

    /// The primary role ends and the secondary may take over without what
    /// it lacks: held changes, and any change from now on, fail (`EIO`) —
    /// never acknowledged. They stay recorded (and applied here). Call
    /// under the tree's ordering lock.
    pub fn close(&self) {
        self.record_unapplied_now();
        *self.0.mode.lock() = Mode::Closed;
        let mut counters = self.0.counters.lock();
        counters.releases += 1;
        counters.closed = Some(counters.releases);
        self.0.changed.notify_all();
    }

    /// How many changes failed because the link was closed: this copy then
    /// holds changes no one acknowledged.
    pub fn refused(&self) -> u64 {
        self.0.counters.lock().refused
    }

    /// Goes ALONE: from the next change on, record instead of send. Call
    /// under the tree's ordering lock so no change is half-way.
    pub fn track(&self) {
        self.record_unapplied_now();
        *self.0.mode.lock() = Mode::Track;
        self.release();
    }

    pub(crate) fn forward(&self, peer: Arc<dyn Replicator>) {
        *self.0.mode.lock() = Mode::Forward(peer);
    }

    pub(crate) fn mirror(&self, peer: Arc<dyn Replicator>) {
        *self.0.mode.lock() = Mode::Mirror(peer);
        self.release();
    }

    fn tracking_error(e: TrackingError) -> ReplicationError {
        ReplicationError::Tracking(e.to_string())
    }

    /// Records the mirrored changes the secondary may not have applied,
    /// then `own` (a change of a replicator that does not number them);
    /// the order of the stream is kept by holding the window's lock.
    fn record_unapplied(&self, own: Option<Touched>) -> Result<(), TrackingError> {
        // What the secondary said last, maybe after the last change sent.
        let applied = match &*self.0.mode.lock() {
            Mode::Mirror(peer) => peer.applied(),
            _ => None,
        };
        let mut window = self.0.unapplied.lock();
        if let Some(applied) = applied {
            window.applied(applied);
        }
        let mut changes = window.take();
        changes.extend(own);
        self.0.log.record_unapplied(&changes)
    }

    /// Mirroring ends (or a resynchronisation takes its work list): what
    /// the secondary may lack is recorded first.
    fn record_unapplied_now(&self) {
        if let Err(e) = self.record_unapplied(None) {
            tracing::error!("recording the changes the secondary may lack: {e}");
        }
    }

    /// The activity-log regions of mirrored changes the secondary may not
    /// have applied; `None` when that is unknown (the peer does not number
    /// its changes and some are in flight).
    fn busy(&self, peer: &dyn Replicator) -> Option<HashSet<Mark>> {
        let applied = peer.applied();
        let mut window = self.0.unapplied.lock();
        match applied {
            Some(applied) => window.applied(applied),
            None if self.0.counters.lock().in_flight > 0 => return None,
            None => {}
        }
        Some(
            window
                .0
                .iter()
                .flat_map(|(_, touched)| touched.intents())
                .flat_map(|intent| Mark::mirrored(&intent))
                .collect(),
        )
    }

    /// A mirrored change was sent as number `seq`; the secondary has
    /// applied those below `applied`.
    fn sent(&self, seq: u64, applied: Option<u64>, change: &Change) {
        let mut window = self.0.unapplied.lock();
        if let Some(applied) = applied {
            window.applied(applied);
        }
        window.push(seq, Touched::of(change));
    }
}

/// A mirrored change whose acknowledgement is awaited, counted until it
/// is handled — or dropped unhandled, so a resync never waits for it.
struct InFlight(Link);

impl InFlight {
    fn new(link: &Link) -> Self {
        link.0.counters.lock().in_flight += 1;
        InFlight(link.clone())
    }

    fn link(&self) -> Link {
        self.0.clone()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0 .0.counters.lock().in_flight -= 1;
        self.0 .0.changed.notify_all();
    }
}

impl Link {
    /// The secondary failed `change` (`in_flight`: its acknowledgement
    /// was awaited): recorded; returns the release count to wait past.
    fn record_failed(
        &self,
        own: Option<Touched>,
        in_flight: Option<InFlight>,
    ) -> Result<u64, ReplicationError> {
        let recorded = self.record_unapplied(own);
        // Read before counting this change handled: any resync begun
        // after that includes it, and releases after this reading.
        let seen = self.0.counters.lock().releases;
        drop(in_flight);
        recorded.map_err(Self::tracking_error)?;
        Ok(seen)
    }

    /// What the operation of a failed, recorded change returns, by
    /// [`OnFailure`]. Never call under the tree's ordering lock: it may wait.
    fn failure_outcome(&self, error: ReplicationError, seen: u64) -> Result<(), ReplicationError> {
        let policy = *self.0.on_failure.lock();
        match policy {
            OnFailure::Fail => Err(error),
            OnFailure::Track => Ok(()),
            OnFailure::Wait => self.wait_release(seen).map_err(|_| error),
        }
    }
}

impl Replicator for Link {
    fn prepare(&self, intent: &Intent<'_>) -> Result<(), ReplicationError> {
        let mode = self.0.mode.lock().clone();
        match mode {
            Mode::Mirror(peer) => self
                .0
                .log
                .prepare_mirrored(intent, || self.busy(peer.as_ref()))
                .map_err(Self::tracking_error),
            Mode::Hold | Mode::Closed => {
                self.0.log.prepare(intent).map_err(Self::tracking_error)?;
                // Applied here, acknowledged to no one (yet, or ever): if
                // the secondary takes over, they are to undo here. Kept
                // (nothing evicted) meanwhile.
                self.0
                    .log
                    .prepare_mirrored(intent, || None)
                    .map_err(Self::tracking_error)
            }
            Mode::Track | Mode::Forward(_) => {
                self.0.log.prepare(intent).map_err(Self::tracking_error)
            }
        }
    }

    /// Tracked changes need no times: a resynchronisation sends what the
    /// files hold then. (Modes change under the tree's ordering lock, under
    /// which the file system asks.)
    fn stamps(&self) -> bool {
        matches!(*self.0.mode.lock(), Mode::Mirror(_) | Mode::Forward(_))
    }

    fn submit(&self, change: &Change) -> Result<Ack, ReplicationError> {
        let mode = self.0.mode.lock().clone();
        match mode {
            Mode::Track => {
                self.0.log.record(change).map_err(Self::tracking_error)?;
                Ok(Ack::done(Ok(())))
            }
            Mode::Closed => {
                self.0.log.record(change).map_err(Self::tracking_error)?;
                self.0.counters.lock().refused += 1;
                Err(ReplicationError::Withdrawn)
            }
            Mode::Hold => {
                self.0.log.record(change).map_err(Self::tracking_error)?;
                // Under the ordering lock: a resync begun after this
                // includes the change, and releases after this reading.
                let seen = self.0.counters.lock().releases;
                let link = self.clone();
                Ok(Ack::done(Ok(())).map(move |r| link.wait_release(seen).and(r)))
            }
            Mode::Forward(peer) => {
                self.0.log.record(change).map_err(Self::tracking_error)?;
                // Under the ordering lock: if this change fails, the
                // resync running fails too, and the next one includes it.
                let seen = self.0.counters.lock().releases;
                let link = self.clone();
                // Recorded above: the application's change is safe; with
                // `OnFailure::Wait` it waits for the secondary all the same.
                let fallback = move |e: ReplicationError| {
                    tracing::warn!("resynchronisation interrupted ({e}): tracking again");
                    let hold = *link.0.on_failure.lock() == OnFailure::Wait;
                    {
                        let mut mode = link.0.mode.lock();
                        if matches!(*mode, Mode::Forward(_)) {
                            *mode = if hold { Mode::Hold } else { Mode::Track };
                        }
                    }
                    if hold {
                        link.wait_release(seen)?;
                    }
                    Ok(())
                };
                let ack = match peer.submit(change) {
                    Ok(ack) => ack,
                    Err(e) => Ack::done(Err(e)),
                };
                Ok(ack.map_failure(fallback))
            }
            Mode::Mirror(peer) => match peer.submit(change) {
                Ok(ack) => {
                    let in_flight = InFlight::new(self);
                    // Numbered: kept until known applied. Otherwise an
                    // acknowledged change is applied; a failed one is
                    // recorded from here.
                    let own = match ack.seq() {
                        Some(seq) => {
                            self.sent(seq, peer.applied(), change);
                            None
                        }
                        None => Some(Touched::of(change)),
                    };
                    Ok(ack.map_failure(move |e| {
                        let link = in_flight.link();
                        let seen = link.record_failed(own, Some(in_flight))?;
                        link.failure_outcome(e, seen)
                    }))
                }
                Err(e) => {
                    // Under the ordering lock: recorded now, waited for
                    // (if at all) with the acknowledgement.
                    let seen = self.record_failed(Some(Touched::of(change)), None)?;
                    let link = self.clone();
                    Ok(Ack::done(Ok(())).map(move |_| link.failure_outcome(e, seen)))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(r: &Ranges) -> Vec<(u64, u64)> {
        r.iter().collect()
    }

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

    fn data(path: &str, offset: u64, len: u64) -> Intent<'_> {
        Intent::Data {
            path: Path::new(path),
            offset,
            len,
        }
    }

    fn change(op: Op) -> Change {
        Change { op, stamps: vec![] }
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

    fn write(path: &str, offset: u64, len: usize) -> Change {
        change(Op::Write {
            path: path.into(),
            offset,
            data: vec![0; len].into(),
        })
    }

    #[test]
    fn the_window_keeps_what_is_not_known_applied_in_stream_order() {
        let mut window = Unapplied::default();
        for (seq, offset) in [(3, 0), (4, 4096), (7, 8192)] {
            window.push(seq, Touched::of(&write("f", offset, 10)));
        }
        // Applied below 4: change 3 is, 4 (acknowledged on receipt) not.
        window.applied(4);
        window.applied(2);
        let left: Vec<u64> = window.0.iter().map(|(s, _)| *s).collect();
        assert_eq!(left, vec![4, 7]);
        let taken = window.take();
        assert_eq!(taken[0], Touched::of(&write("f", 4096, 10)));
        assert_eq!(taken.len(), 2);
        assert!(window.take().is_empty(), "taken once");
    }

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
        let touched: Vec<Touched> = changes.iter().map(Touched::of).collect();
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
            activity::Recorded::Regions(vec![])
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
    fn held_and_refused_changes_are_in_the_activity_log_tracked_ones_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
        let link = Link::tracking(Arc::new(log));
        let regions = || match activity::load(tmp.path()) {
            activity::Recorded::Regions(r) => r,
            lost => panic!("{lost:?}"),
        };
        // ALONE: the change log covers it, the activity log has no say.
        link.prepare(&data("alone", 0, 1)).unwrap();
        assert!(regions().is_empty());
        // Held for the secondary, then refused as the primary role ends:
        // applied here, acknowledged to no one.
        link.hold();
        link.prepare(&data("held", 0, 1)).unwrap();
        link.close();
        link.prepare(&data("refused", EXTENT, 1)).unwrap();
        let paths: Vec<PathBuf> = regions().iter().map(|m| m.path().to_path_buf()).collect();
        assert_eq!(paths, vec![PathBuf::from("held"), PathBuf::from("refused")]);
        // Both are tracked for when this node sends, too.
        let d = link.log().dirty();
        assert!(
            d.files.contains_key(Path::new("held")) && d.files.contains_key(Path::new("refused"))
        );
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
