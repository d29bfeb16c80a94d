//! Reintegration: bringing a returning secondary up to date from the
//! primary's real directory while the application keeps writing through
//! the mount, then mirroring with no gap.
//!
//! # Why no write is lost or reordered
//!
//! Everything the secondary receives — live changes and resynchronisation
//! messages alike — travels in **one ordered stream** and is applied in
//! that order. The resynchronisation is *state-based*: each step takes the
//! tree's ordering lock ([`Tree::lock`], the lock every file-system
//! mutation holds while it applies locally and submits), reads the
//! **current** primary state of one item (entry attributes, a run of
//! blocks), and queues it before releasing the lock. So:
//! - a live change applied before that step is already in what the step
//!   read, and was queued before it;
//! - a live change applied after that step is queued after it and applied
//!   on top of it, exactly as on the primary.
//!
//! Live changes are forwarded from the moment the work list is taken (in
//! the same locked section), so nothing falls between "tracked" and
//! "mirrored". The work list itself follows live renames and removals
//! (it is re-keyed under the same lock), so an item is always read under
//! its current name. Writes and truncations compose idempotently per
//! byte, which is why comparing a block with the peer's checksum (taken at
//! an earlier point of the stream) and skipping it when equal is correct.
//! A live change naming an entry the peer does not have yet (made while
//! alone, not yet ensured by the pass) finds nothing to apply to: the
//! secondary skips it while resynchronising (`ENOENT` between `Begin` and
//! `End`), since the pass later brings that entry — a file it lacked with
//! all its blocks, a directory with its children — as the primary has it
//! then, this change included. A live hard link skipped so (its first
//! name not there yet) leaves its new name to the pass too: the work
//! list takes it, with its directories.
//!
//! # Steps
//!
//! 1. `Begin`: the secondary records, durably, that its copy is incomplete.
//! 2. Under the lock: take the work list, switch the [`Link`] to
//!    forwarding, replay the renames and hard links made while alone.
//! 3. Directories to examine (after a crash, or lost tracking): both
//!    listings become entries to check.
//! 4. Entries, parents first: `Ensure` makes the peer's entry what the
//!    primary has (type, mode, owner, xattrs, size, mtime); a directory
//!    the peer lacked brings its children, a file the peer lacked all its
//!    blocks. A file with several names is made once: the names ensured
//!    after the first become hard links of it ([`Attributes::link`]; compared
//!    by checksums, not sent again), whatever the replay managed — a link
//!    whose first name was made alone finds nothing to link to there, and
//!    after a crash there are no moves at all, only directories to examine.
//! 5. Files: tracked blocks (4 KiB) are read and sent; files of uncertain
//!    lineage are compared by 64 KiB block checksums and only differing
//!    blocks are sent.
//! 6. Directory mtimes, deepest first; then `End` (the secondary syncs and
//!    takes the primary's generation); under the lock the log is cleared
//!    and the link switched to mirroring.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apply::Root;
use crate::entry::{mtime_of, Attributes, EntryState};
use crate::fs::tree::Tree;
use crate::mark::Mark;
use crate::op::{Ack, Change, Op, ReplicationError, Replicator, Time};
use crate::tracking::dirty::{Dirty, Move};
use crate::tracking::link::Link;
use crate::tracking::BLOCK;

/// Block size of checksum comparison: 32 bytes of hash per 64 KiB keeps
/// the exchange at 0.05% of the data compared.
pub const COMPARE_BLOCK: u64 = 64 << 10;
/// Blocks read and queued in one locked step: bounds how long a live
/// operation waits behind the resynchronisation.
const STEP: u64 = 256 << 10;
/// Messages in flight before the oldest acknowledgement is waited for.
const WINDOW: usize = 64;

/// A resynchronisation request (primary → secondary), answered in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Before anything else: the copy becomes incomplete (persisted).
    Begin { source: u64 },
    /// Renames and hard links made while alone, in order; those that no
    /// longer apply are skipped (entries are made identical afterwards).
    Replay { moves: Vec<Move> },
    /// Make the entry at `path` what the primary has.
    Ensure { path: PathBuf, state: EntryState },
    /// Names in a directory (none if it does not exist).
    List { path: PathBuf },
    /// SHA-256 of each `block`-sized block of a regular file, from
    /// `offset` up to `len` bytes or its end.
    Hashes {
        path: PathBuf,
        block: u64,
        offset: u64,
        len: u64,
    },
    /// All sent: sync, and take generation `source`.
    End { source: u64 },
    /// This copy's recorded generations (asked at connection, before
    /// deciding who resynchronises whom).
    Generations,
}

/// The secondary's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Done,
    /// `skipped` moves did not apply.
    Replayed {
        skipped: u32,
    },
    /// `created`: the entry was missing or of another kind (or had to be
    /// recreated): it holds nothing of the primary's yet — or, linked to
    /// [`Attributes::link`], only what that name holds.
    Ensured {
        created: bool,
    },
    Listed(Vec<serde_bytes::ByteBuf>),
    Hashes(Vec<[u8; 32]>),
    Generations {
        record: crate::generation::Generations,
        /// Everything this copy applied is still there: its host did not
        /// restart since it applied changes it had not synced.
        kept: bool,
        /// Its activity log, when it was a primary that stopped uncleanly
        /// (empty otherwise).
        activity: crate::activity::Activity,
    },
}

/// A [`Replicator`] that also answers resynchronisation requests.
pub trait Peer: Replicator {
    /// Sends `request` after everything queued before, waits for its answer.
    fn ask(&self, request: &Request) -> Result<Answer, ReplicationError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("resynchronisation: reading {path} on the primary: {source}")]
    Local { path: PathBuf, source: Errno },
    #[error("resynchronisation: {0}")]
    Tracking(#[from] crate::tracking::change_log::TrackingError),
}

/// Progress of one resynchronisation, shared with whoever displays it.
#[derive(Debug)]
pub struct Progress {
    /// Bytes to examine (tracked blocks, files to compare); grows when the
    /// pass discovers more (a directory the peer lacked).
    total: AtomicU64,
    done: AtomicU64,
    /// Data bytes actually sent.
    sent: AtomicU64,
    started: Mutex<Option<Instant>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            started: Mutex::new(None),
        }
    }
}

/// A reading of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressReport {
    pub bytes_total: u64,
    pub bytes_left: u64,
    pub bytes_sent: u64,
    /// Bytes examined per second since the start.
    pub rate: f64,
    pub eta: Option<Duration>,
}

impl Progress {
    pub fn report(&self) -> ProgressReport {
        let total = self.total.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed).min(total);
        let elapsed = self
            .started
            .lock()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let rate = if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        };
        let left = total - done;
        ProgressReport {
            bytes_total: total,
            bytes_left: left,
            bytes_sent: self.sent.load(Ordering::Relaxed),
            rate,
            eta: (rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate)),
        }
    }

    fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a resynchronisation covers besides the source's change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The change log covers every difference.
    Tracked,
    /// And these regions of the target's activity log (it was a primary
    /// that stopped uncleanly while mirroring): extents are compared by
    /// 4 KiB checksums (differing blocks sent), listed directories'
    /// entries made identical, moved names compared whole.
    Regions(Vec<Mark>),
    /// Nothing is trusted: every file is compared by checksum.
    Everything,
}

/// What a completed resynchronisation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes_sent: u64,
    pub blocks_compared: u64,
    /// Bytes those blocks hold (64 KiB for a whole file, 4 KiB for the
    /// regions of an activity log).
    pub bytes_compared: u64,
    pub entries: u64,
    pub moves_skipped: u32,
}

/// Brings `peer` up to date from `tree`, then leaves `link` mirroring to it.
///
/// `source` is the primary's current generation, taken by the peer at the
/// end; `scope` what is covered besides the change log. On error the link
/// is back to tracking (holding, with [`crate::OnFailure::Wait`]) and the
/// log still covers everything: run again later.
pub fn resync<P: Peer + 'static>(
    tree: &Tree,
    link: &Link,
    peer: Arc<P>,
    source: u64,
    scope: &Scope,
    progress: &Progress,
) -> Result<Stats, ResyncError> {
    *progress.started.lock() = Some(Instant::now());
    let mut pass = Pass {
        tree,
        link,
        peer: peer.clone(),
        progress,
        inflight: VecDeque::new(),
        stats: Stats::default(),
        uncertain: BTreeSet::new(),
        stamp_dirs: BTreeSet::new(),
        recursive: false,
        names: HashMap::new(),
    };
    let result = pass.run(peer, source, scope);
    if result.is_err() {
        let _order = tree.lock();
        link.fall_back();
        link.log().abandon_pending();
    }
    result.map(|()| pass.stats)
}

struct Pass<'a, P: Peer> {
    tree: &'a Tree,
    link: &'a Link,
    peer: Arc<P>,
    progress: &'a Progress,
    inflight: VecDeque<Ack>,
    stats: Stats,
    /// Entries whose lineage on the peer is unknown (from listings).
    uncertain: BTreeSet<PathBuf>,
    /// Directories whose mtime is set last (children change it).
    stamp_dirs: BTreeSet<PathBuf>,
    /// Examine directories recursively (nothing tracked at all).
    recursive: bool,
    /// The first name ensured of each file with several, by the primary's
    /// (device, inode): its other names are made links to it.
    names: HashMap<(u64, u64), PathBuf>,
}

/// The next piece of work, chosen under the lock.
enum Work {
    /// A directory; `listed`: its entries are made identical, their data
    /// not compared.
    Dir {
        path: PathBuf,
        listed: bool,
    },
    Entry(PathBuf),
    File(PathBuf),
    Linked,
}

impl<'a, P: Peer + 'static> Pass<'a, P> {
    fn run(&mut self, peer: Arc<P>, source: u64, scope: &Scope) -> Result<(), ResyncError> {
        let compare_all = *scope == Scope::Everything;
        self.peer.ask(&Request::Begin { source })?;
        {
            let tree = self.tree;
            let _order = tree.lock();
            let log = self.link.log();
            // Changes the secondary failed before this resync are in it.
            self.link.settle();
            let mut dirty = log.begin_pending();
            if compare_all || dirty.everything {
                log.with_pending(|p, _| *p = Dirty::everything());
            } else if let Scope::Regions(regions) = scope {
                // What is not replicated here is left alone.
                let excluded = tree.exclusions();
                for region in regions.iter().filter(|r| !excluded.excludes(r.path())) {
                    dirty.add_region(region);
                }
                log.with_pending(|p, _| *p = dirty.clone());
            }
            self.recursive = compare_all || dirty.everything;
            log.with_pending(|p, _| {
                if p.everything {
                    p.dirs.insert(PathBuf::new());
                    p.entries.insert(PathBuf::new());
                }
            });
            self.estimate(&dirty);
            self.link.forward(peer.clone());
            let moves = if self.recursive {
                Vec::new()
            } else {
                dirty.moves
            };
            if !moves.is_empty() {
                if let Answer::Replayed { skipped } = self.peer.ask(&Request::Replay { moves })? {
                    self.stats.moves_skipped = skipped;
                }
            }
        }
        loop {
            let tree = self.tree;
            let order = tree.lock();
            let work = self.link.log().with_pending(|p, current| {
                let work = if let Some(d) = p.dirs.pop_first() {
                    let listed = p.listed.remove(&d);
                    Work::Dir { path: d, listed }
                } else if let Some(e) = p.entries.pop_first() {
                    Work::Entry(e)
                } else if let Some(f) = current.clone().or_else(|| p.files.keys().next().cloned()) {
                    *current = Some(f.clone());
                    Work::File(f)
                } else if p.linked_lost {
                    p.linked_lost = false;
                    Work::Linked
                } else {
                    return None;
                };
                Some(work)
            });
            let Some(Some(work)) = work else {
                drop(order);
                break;
            };
            match work {
                Work::Dir { path, listed } => self.dir(&path, listed)?,
                Work::Entry(e) => self.entry(&e)?,
                Work::File(f) => self.file_step(&f)?,
                Work::Linked => self.linked()?,
            }
            drop(order);
            self.drain(WINDOW)?;
        }
        // Directory mtimes last, deepest first.
        let dirs = std::mem::take(&mut self.stamp_dirs);
        for dir in dirs.iter().rev() {
            let tree = self.tree;
            let order = tree.lock();
            if let Ok(st) = self.root().stat(dir) {
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Directory
                {
                    self.send_change(mtime_change(dir, mtime_of(&st)))?;
                }
            }
            drop(order);
            self.drain(WINDOW)?;
        }
        self.drain(0)?;
        let tree = self.tree;
        let order = tree.lock();
        self.peer.ask(&Request::End { source })?;
        // Every change queued before `End` was handled by the peer: the
        // log has nothing the peer lacks; mirroring takes over, no gap.
        self.link.log().clear()?;
        self.link.mirror(peer);
        drop(order);
        Ok(())
    }

    fn root(&self) -> &'a Root {
        // Called with the ordering lock held by `run` (but `estimate`,
        // whose figures need not be exact).
        self.tree.root()
    }

    fn estimate(&self, dirty: &Dirty) {
        let mut total = 0;
        for (path, f) in &dirty.files {
            let size = self
                .root()
                .stat(path)
                .map(|st| st.st_size as u64)
                .unwrap_or(0);
            let end = size.div_ceil(BLOCK);
            total += if f.compare {
                size
            } else {
                (f.blocks.blocks_below(end) + f.check.blocks_below(end)) * BLOCK
            };
        }
        self.progress.add_total(total);
    }

    fn send_change(&mut self, change: Change) -> Result<(), ResyncError> {
        self.inflight.push_back(self.peer.submit(&change)?);
        Ok(())
    }

    fn drain(&mut self, keep: usize) -> Result<(), ResyncError> {
        while self.inflight.len() > keep {
            self.inflight.pop_front().expect("non-empty").wait()?;
        }
        Ok(())
    }

    fn local(&self, path: &Path) -> Result<EntryState, ResyncError> {
        entry_state(self.root(), path).map_err(|source| ResyncError::Local {
            path: path.to_path_buf(),
            source,
        })
    }

    fn dir(&mut self, dir: &Path, listed: bool) -> Result<(), ResyncError> {
        let mut names: BTreeSet<OsString> = self
            .root()
            .list(dir)
            .unwrap_or_default()
            .into_iter()
            .collect();
        if let Answer::Listed(theirs) = self.peer.ask(&Request::List {
            path: dir.to_path_buf(),
        })? {
            names.extend(theirs.into_iter().map(|n| OsString::from_vec(n.into_vec())));
        }
        // What is not replicated is left alone on both sides.
        let excluded = self.tree.exclusions();
        let children: Vec<PathBuf> = names
            .iter()
            .map(|n| dir.join(n))
            .filter(|c| !excluded.excludes(c))
            .collect();
        if !listed {
            self.uncertain.extend(children.iter().cloned());
        }
        self.link
            .log()
            .with_pending(|p, _| p.entries.extend(children));
        Ok(())
    }

    fn entry(&mut self, path: &Path) -> Result<(), ResyncError> {
        self.stats.entries += 1;
        let mut state = self.local(path)?;
        let fresh = self
            .link
            .log()
            .with_pending(|p, _| p.files.get(path).is_some_and(|f| f.fresh))
            .unwrap_or(false);
        if let EntryState::Present(e) = &mut state {
            e.fresh = fresh;
            e.link = self.other_name(path, e);
        }
        let answer = self.peer.ask(&Request::Ensure {
            path: path.to_path_buf(),
            state: state.clone(),
        })?;
        let created = matches!(answer, Answer::Ensured { created: true });
        let uncertain = self.uncertain.remove(path);
        let EntryState::Present(e) = state else {
            return Ok(());
        };
        // A name the peer lacked holds nothing yet: all its blocks. One
        // just linked holds the other name's data, which live changes made
        // through this name before did not reach: compared.
        let whole = created && e.link.is_none();
        match rustix::fs::FileType::from_raw_mode(e.mode) {
            rustix::fs::FileType::Directory => {
                self.stamp_dirs.insert(path.to_path_buf());
                if created || (uncertain && self.recursive) {
                    // The peer lacked it: all its children; or nothing is
                    // known: examine it like its parent.
                    self.link.log().with_pending(|p, _| {
                        p.dirs.insert(path.to_path_buf());
                    });
                }
            }
            rustix::fs::FileType::RegularFile if created || uncertain => {
                let size = e.size;
                let end = size.div_ceil(BLOCK);
                let added = self.link.log().with_pending(|p, _| {
                    let f = p.files.entry(path.to_path_buf()).or_default();
                    let before = if f.compare {
                        size
                    } else {
                        f.blocks.blocks_below(end) * BLOCK
                    };
                    if whole {
                        f.blocks.insert(0, end);
                    } else {
                        f.compare = true;
                    }
                    // Only what the estimate did not count yet.
                    (if f.compare {
                        size
                    } else {
                        f.blocks.blocks_below(end) * BLOCK
                    })
                    .saturating_sub(before)
                });
                self.progress.add_total(added.unwrap_or(0));
            }
            _ => {}
        }
        Ok(())
    }

    /// Another name of `path`'s file, ensured earlier in this pass and
    /// still naming it; `None` (and `path` becomes the name others link
    /// to) for the first, or a file with one name.
    fn other_name(&mut self, path: &Path, e: &Attributes) -> Option<PathBuf> {
        if e.nlink < 2
            || rustix::fs::FileType::from_raw_mode(e.mode) != rustix::fs::FileType::RegularFile
        {
            return None;
        }
        let root = self.root();
        let id = |p: &Path| root.stat(p).ok().map(|st| (st.st_dev, st.st_ino));
        let mine = id(path)?;
        match self.names.get(&mine) {
            Some(first) if first != path && id(first) == Some(mine) => Some(first.clone()),
            _ => {
                self.names.insert(mine, path.to_path_buf());
                None
            }
        }
    }

    /// One step of one file: a run of tracked blocks, or its comparison.
    fn file_step(&mut self, path: &Path) -> Result<(), ResyncError> {
        let st = match self.root().stat(path) {
            Ok(st)
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::RegularFile =>
            {
                st
            }
            // Gone or replaced by something else since: its entry covers it.
            _ => {
                self.finish_file(path);
                return Ok(());
            }
        };
        let size = st.st_size as u64;
        let Some(Some((compare, check))) = self
            .link
            .log()
            .with_pending(|p, _| p.files.get(path).map(|f| (f.compare, !f.check.is_empty())))
        else {
            self.finish_file(path);
            return Ok(());
        };
        // The peer's size first: what follows writes within it.
        self.send_change(size_change(path, size))?;
        if compare {
            self.compare_file(path, size)?;
        } else if check {
            self.check_regions(path, size)?;
        } else {
            self.tracked_blocks(path, size)?;
        }
        let more = self
            .link
            .log()
            .with_pending(|p, _| {
                p.files
                    .get(path)
                    .is_some_and(|f| !f.blocks.is_empty() || !f.check.is_empty())
            })
            .unwrap_or(false);
        if !more {
            let mtime = mtime_of(
                &self
                    .root()
                    .stat(path)
                    .map_err(|source| ResyncError::Local {
                        path: path.to_path_buf(),
                        source,
                    })?,
            );
            self.send_change(mtime_change(path, mtime))?;
            self.finish_file(path);
        }
        Ok(())
    }

    fn finish_file(&self, path: &Path) {
        self.link.log().with_pending(|p, current| {
            p.files.remove(path);
            *current = None;
        });
    }

    fn read(&self, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, ResyncError> {
        let local = |source| ResyncError::Local {
            path: path.to_path_buf(),
            source,
        };
        let fd = self
            .root()
            .open(path, rustix::fs::OFlags::RDONLY)
            .map_err(local)?;
        let mut buf = vec![0u8; len as usize];
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(&fd, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(local(e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn send_block(&mut self, path: &Path, offset: u64, data: Vec<u8>) -> Result<(), ResyncError> {
        if data.is_empty() {
            return Ok(());
        }
        let n = data.len() as u64;
        self.send_change(Change {
            op: Op::Write {
                path: path.to_path_buf(),
                offset,
                data: data.into(),
            },
            stamps: vec![],
        })?;
        self.stats.bytes_sent += n;
        self.progress.sent.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    fn tracked_blocks(&mut self, path: &Path, size: u64) -> Result<(), ResyncError> {
        let end_block = size.div_ceil(BLOCK);
        let mut budget = STEP / BLOCK;
        while budget > 0 {
            let run = self.link.log().with_pending(|p, _| {
                let f = p.files.get_mut(path)?;
                let run = f.blocks.pop_front(budget)?;
                if run.0 >= end_block {
                    // Sorted: everything left is past the end of the file.
                    f.blocks = Default::default();
                    return None;
                }
                Some(run)
            });
            let Some(Some((start, end))) = run else {
                break;
            };
            let end = end.min(end_block);
            budget -= end - start;
            let offset = start * BLOCK;
            let data = self.read(path, offset, (end - start) * BLOCK)?;
            self.progress.add_done((end - start) * BLOCK);
            self.send_block(path, offset, data)?;
        }
        Ok(())
    }

    /// Compares the whole file with the peer's block checksums (one step).
    fn compare_file(&mut self, path: &Path, size: u64) -> Result<(), ResyncError> {
        let theirs = self.hashes(path, COMPARE_BLOCK, 0, u64::MAX)?;
        // The differing blocks become tracked ones, read and sent step by
        // step at their then current state. (The comparison itself holds
        // the lock for the whole file: a live write waits for it.)
        let mut differing = Vec::new();
        let mut offset = 0;
        let mut index = 0;
        while offset < size {
            let data = self.read(path, offset, COMPARE_BLOCK)?;
            let same = theirs
                .get(index)
                .is_some_and(|h| *h == <[u8; 32]>::from(Sha256::digest(&data)));
            if !same {
                differing.push(offset);
            }
            self.stats.blocks_compared += 1;
            self.stats.bytes_compared += data.len() as u64;
            self.progress.add_done(data.len() as u64);
            offset += COMPARE_BLOCK;
            index += 1;
        }
        let per = COMPARE_BLOCK / BLOCK;
        self.link.log().with_pending(|p, _| {
            if let Some(f) = p.files.get_mut(path) {
                // The comparison covered the whole file: tracked blocks
                // that turned out equal need not travel.
                f.compare = false;
                f.blocks = Default::default();
                f.check = Default::default();
                for o in differing {
                    f.blocks.insert(o / BLOCK, o / BLOCK + per);
                }
            }
        });
        Ok(())
    }

    /// The peer's checksums of `len` bytes of `path` from `offset`.
    fn hashes(
        &self,
        path: &Path,
        block: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<[u8; 32]>, ResyncError> {
        match self.peer.ask(&Request::Hashes {
            path: path.to_path_buf(),
            block,
            offset,
            len,
        })? {
            Answer::Hashes(h) => Ok(h),
            other => Err(ReplicationError::UnexpectedAnswer(format!("{other:?}")).into()),
        }
    }

    /// One step of the regions of `path` to check (a returning primary's
    /// activity log): compared by 4 KiB checksums, the differing blocks
    /// become tracked ones, read and sent at their then current state.
    fn check_regions(&mut self, path: &Path, size: u64) -> Result<(), ResyncError> {
        let end_block = size.div_ceil(BLOCK);
        let run = self.link.log().with_pending(|p, _| {
            let f = p.files.get_mut(path)?;
            let run = f.check.pop_front(STEP / BLOCK)?;
            if run.0 >= end_block {
                // Past the end of the file here: its size was sent.
                f.check = Default::default();
                return None;
            }
            Some(run)
        });
        let Some(Some((start, end))) = run else {
            return Ok(());
        };
        let end = end.min(end_block);
        let (offset, len) = (start * BLOCK, (end - start) * BLOCK);
        let theirs = self.hashes(path, BLOCK, offset, len)?;
        let data = self.read(path, offset, len)?;
        let differing: Vec<u64> = data
            .chunks(BLOCK as usize)
            .enumerate()
            .filter(|(i, chunk)| theirs.get(*i) != Some(&<[u8; 32]>::from(Sha256::digest(chunk))))
            .map(|(i, _)| start + i as u64)
            .collect();
        self.stats.blocks_compared += end - start;
        self.stats.bytes_compared += data.len() as u64;
        self.progress.add_done(len);
        self.link.log().with_pending(|p, _| {
            if let Some(f) = p.files.get_mut(path) {
                for b in differing {
                    f.blocks.insert(b, b + 1);
                }
            }
        });
        Ok(())
    }

    /// Tracked data lost its name while other hard links may hold it:
    /// compare every multiply-linked file.
    fn linked(&mut self) -> Result<(), ResyncError> {
        let mut found = Vec::new();
        walk_linked(self.tree, Path::new(""), &mut found);
        self.link.log().with_pending(|p, _| {
            for path in found {
                p.files.entry(path).or_default().compare = true;
            }
        });
        Ok(())
    }
}

fn walk_linked(tree: &Tree, dir: &Path, out: &mut Vec<PathBuf>) {
    for name in tree.root().list(dir).unwrap_or_default() {
        let path = dir.join(&name);
        if tree.exclusions().excludes(&path) {
            continue;
        }
        let Ok(st) = tree.root().stat(&path) else {
            continue;
        };
        match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::Directory => walk_linked(tree, &path, out),
            rustix::fs::FileType::RegularFile if st.st_nlink > 1 => out.push(path),
            _ => {}
        }
    }
}

fn size_change(path: &Path, size: u64) -> Change {
    Change {
        op: Op::SetAttr {
            path: path.to_path_buf(),
            mode: None,
            uid: None,
            gid: None,
            size: Some(size),
            atime: None,
            mtime: None,
        },
        stamps: vec![],
    }
}

fn mtime_change(path: &Path, mtime: Time) -> Change {
    Change {
        op: Op::SetAttr {
            path: path.to_path_buf(),
            mode: None,
            uid: None,
            gid: None,
            size: None,
            atime: None,
            mtime: Some(mtime),
        },
        stamps: vec![],
    }
}

/// The state of `path` in `root`, as [`Request::Ensure`] carries it.
fn entry_state(root: &Root, path: &Path) -> Result<EntryState, Errno> {
    let st = match root.stat(path) {
        Ok(st) => st,
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(EntryState::Absent),
        Err(e) => return Err(e),
    };
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    let target = if kind == rustix::fs::FileType::Symlink {
        let e = root.entry(path)?;
        rustix::fs::readlinkat(&e.dir, &e.name, Vec::new())?.into_bytes()
    } else {
        Vec::new()
    };
    Ok(EntryState::Present(Attributes {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        size: if kind == rustix::fs::FileType::RegularFile {
            st.st_size as u64
        } else {
            0
        },
        nlink: st.st_nlink,
        rdev: st.st_rdev,
        mtime: mtime_of(&st),
        target,
        xattrs: root.xattrs(path)?,
        fresh: false,
        link: None,
    }))
}
