//! Changes: applied here under the ordering lock, described and submitted
//! to the replicator in that order; and the reads that must see no rename
//! midway.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use fuser::{FileHandle, FileType, Generation, INodeNo, ReplyEmpty, ReplyEntry, Request};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::replies::Join;
use super::tail::Durability;
use super::{file_fd, fuse_err, kind_of, open_file, DirItem, Handle, MirrorFs, TTL};
use crate::apply::proc_path;
use crate::entry::mtime_of;
use crate::op::{parent_of, Change, Intent, Op, ReplicationError, Stamp};

/// A large write is applied and replicated in chunks of this size, so the
/// secondary receives and checks one while the next is written here.
const CHUNK: usize = 256 << 10;

/// Permission bits a new node gets, and its group: like the kernel, honour
/// the creator's umask and a set-group-ID parent directory.
pub(super) struct NewNode {
    pub(super) perm: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

impl MirrorFs {
    /// Current modification times of `paths` (each once), for the secondary.
    pub(super) fn stamps(&self, paths: &[&Path]) -> Vec<Stamp> {
        let mut out: Vec<Stamp> = Vec::new();
        for path in paths {
            if out.iter().any(|s| s.path == *path) {
                continue;
            }
            if let Ok(st) = self.root().stat(path) {
                out.push(Stamp {
                    path: path.to_path_buf(),
                    mtime: mtime_of(&st),
                });
            }
        }
        out
    }

    /// Runs `apply` (the local change) under the ordering lock, submits the
    /// change it describes, and calls `done` when the call may return (see
    /// [`Self::answer`]), this thread serving other requests meanwhile.
    pub(super) fn mutate_then<T: Send + 'static>(
        &self,
        apply: impl FnOnce() -> Result<(T, Option<Change>), Errno>,
        done: impl FnOnce(Result<T, fuser::Errno>) + Send + 'static,
    ) {
        match self.ordered(apply) {
            Err(e) => done(Err(e)),
            Ok((value, end)) => self.answer(end, false, move |r| done(r.map(|()| value))),
        }
    }

    /// [`Self::mutate_then`] for a call made through an open file
    /// (`handle`), whose close then waits for the change.
    pub(super) fn mutate_through<T: Send + 'static>(
        &self,
        handle: Option<Arc<Handle>>,
        apply: impl FnOnce() -> Result<(T, Option<Change>), Errno>,
        done: impl FnOnce(Result<T, fuser::Errno>) + Send + 'static,
    ) {
        match self.ordered(apply) {
            Err(e) => done(Err(e)),
            Ok((value, end)) => {
                if let Some(h) = &handle {
                    open_file(h).wrote(end);
                }
                self.answer(end, false, move |r| done(r.map(|()| value)))
            }
        }
    }

    /// Applied and submitted in order: the value, and the end of what the
    /// call submitted in the [`Tail`](super::tail::Tail) (`None`: nothing,
    /// the change was excluded or its file has no name left).
    pub(super) fn ordered<T>(
        &self,
        apply: impl FnOnce() -> Result<(T, Option<Change>), Errno>,
    ) -> Result<(T, Option<u64>), fuser::Errno> {
        let _order = self.tree.lock();
        let before = self.tail.end();
        let (value, change) = apply().map_err(fuse_err)?;
        self.submit(change);
        let end = self.tail.end();
        Ok((value, (end > before).then_some(end)))
    }

    /// When a call that submitted the changes ending at `end` returns:
    /// once the secondary acknowledged them and everything before if it
    /// promises durability (`durable`) or [`Durability::EveryCall`] makes
    /// every call wait; otherwise now, or once the tail is back within its
    /// limits. A failed replication is EIO for a call that waits.
    pub(super) fn answer(
        &self,
        end: Option<u64>,
        durable: bool,
        done: impl FnOnce(Result<(), fuser::Errno>) + Send + 'static,
    ) {
        let every_call = self.durability == Durability::EveryCall;
        match end {
            _ if durable => self
                .tail
                .barrier(end.unwrap_or_else(|| self.tail.end()), done),
            Some(end) if every_call => self.tail.barrier(end, done),
            Some(_) => self.tail.relief(done),
            None => done(Ok(())),
        }
    }

    /// Submits `change` unless it touches only what is not replicated: it
    /// joins the tail, which its acknowledgement leaves — handled on the
    /// thread that receives it, or on a waiter if a hook may block there
    /// (a failure to record, a change held). Under the ordering lock.
    pub(super) fn submit(&self, change: Option<Change>) {
        let excluded = |c: &Change| {
            let x = self.tree.exclusions();
            !x.is_empty() && c.op.paths().iter().all(|p| x.excludes(p))
        };
        let Some(change) = change.filter(|c| !excluded(c)) else {
            return;
        };
        let bytes = match &change.op {
            Op::Write { data, .. } => data.len() as u64,
            _ => 0,
        };
        let ack = self.replicator.submit(&change);
        let n = self.tail.enter(bytes);
        let tail = self.tail.clone();
        match ack {
            Err(e) => tail.settle(n, outcome(&change, Err(e))),
            Ok(ack) => {
                let waiters = self.waiters.clone();
                ack.then(move |ack| {
                    let known = ack.is_done();
                    let finish = move || tail.settle(n, outcome(&change, ack.wait()));
                    if known {
                        finish()
                    } else {
                        waiters.run(finish)
                    }
                });
            }
        }
    }

    /// Under the ordering lock: applies `data` in chunks of [`CHUNK`] and
    /// submits each but the last as soon as it is applied (the last is
    /// returned for [`Self::ordered`] to submit), so the secondary receives
    /// and checks one chunk while the next is written here. A local failure
    /// after some bytes were applied is a short write of those bytes, all
    /// replicated: never an error leaving applied bytes unreported.
    pub(super) fn write_chunks(
        &self,
        path: &Path,
        fd: &OwnedFd,
        data: &[u8],
        offset: u64,
    ) -> Result<(usize, Option<Change>), Errno> {
        let mut written = 0;
        let mut last: Option<Change> = None;
        for chunk in data.chunks(CHUNK) {
            if let Some(change) = last.take() {
                self.submit(Some(change));
            }
            let at = offset + written as u64;
            let (applied, failed) = self.write_chunk(path, fd, chunk, at);
            if applied > 0 {
                written += applied;
                let op = Op::Write {
                    path: path.to_path_buf(),
                    offset: at,
                    data: Bytes::copy_from_slice(&chunk[..applied]),
                };
                last = Some(Change { op, stamps: vec![] });
            }
            if let Some(e) = failed {
                if written == 0 {
                    return Err(e);
                }
                tracing::debug!("short write of {}: {e}", path.display());
                break;
            }
        }
        // Only the last chunk carries the file's time: the chunks before it
        // are followed at once by it in the stream. Without the time (fstat
        // failed), the secondary's mtime differs; the bytes must still go.
        if let Some(change) = last.as_mut() {
            change.stamps = self
                .sent_stamp(path, fd)
                .ok()
                .flatten()
                .into_iter()
                .collect();
        }
        Ok((written, last))
    }

    /// The file's modification time for the secondary, if changes go to
    /// one (see [`Replicator::stamps`](crate::op::Replicator::stamps): reading it has a cost).
    pub(super) fn sent_stamp(&self, path: &Path, fd: &OwnedFd) -> Result<Option<Stamp>, Errno> {
        self.replicator
            .stamps()
            .then(|| stamp(path, fd))
            .transpose()
    }

    /// Announces and applies one chunk: how many bytes were written, and
    /// the error that stopped it before the end, if any.
    pub(super) fn write_chunk(
        &self,
        path: &Path,
        fd: &OwnedFd,
        mut chunk: &[u8],
        mut at: u64,
    ) -> (usize, Option<Errno>) {
        let intent = Intent::Data {
            path,
            offset: at,
            len: chunk.len() as u64,
        };
        if let Err(e) = self.prepare(intent) {
            return (0, Some(e));
        }
        let mut applied = 0;
        while !chunk.is_empty() {
            match rustix::io::pwrite(fd, chunk, at) {
                Ok(0) => return (applied, Some(Errno::IO)),
                Ok(n) => {
                    applied += n;
                    chunk = &chunk[n..];
                    at += n as u64;
                }
                Err(Errno::INTR) => {}
                Err(e) => return (applied, Some(e)),
            }
        }
        (applied, None)
    }

    /// fsync and fdatasync of a file or directory: the secondary is asked
    /// first, in stream order after the changes it covers, then the local
    /// flush runs here while the secondary's does — outside the ordering
    /// lock, since a flush changes nothing. Here, not on a waiter: the
    /// hand-over cost more than other requests lose waiting (a database
    /// commits one flush at a time anyway). `done` gets the outcome once
    /// both the local flush and the secondary's acknowledgement of every
    /// change up to it are in, from whichever thread comes last.
    pub(super) fn flush_both(
        &self,
        path: impl FnOnce() -> Result<Option<PathBuf>, Errno>,
        local: impl FnOnce(Option<&Path>) -> Result<(), Errno> + Send + 'static,
        done: impl FnOnce(Result<(), fuser::Errno>) + Send + 'static,
    ) {
        let ordered = self.ordered(|| {
            let path = path()?;
            let change = path.clone().map(|path| Change {
                op: Op::Fsync { path },
                stamps: vec![],
            });
            Ok((path, change))
        });
        match ordered {
            Err(e) => done(Err(e)),
            Ok((path, end)) => {
                let join = Join::new(2, done);
                self.answer(end, true, join.part());
                join.part()(local(path.as_deref()).map_err(fuse_err));
            }
        }
    }

    /// A rename or link between what is replicated and what is not is
    /// refused as between two file systems (see [`Exclusions`](crate::exclusions::Exclusions)).
    pub(super) fn same_side(&self, from: &Path, to: &Path) -> Result<(), Errno> {
        if self.tree.exclusions().same_side(from, to) {
            Ok(())
        } else {
            Err(Errno::XDEV)
        }
    }

    /// Announces a change before it is applied (see
    /// [`Replicator::prepare`](crate::op::Replicator::prepare)), unless it
    /// touches only what is not replicated.
    pub(super) fn prepare(&self, intent: Intent<'_>) -> Result<(), Errno> {
        let x = self.tree.exclusions();
        let excluded = match intent {
            Intent::Data { path, .. } | Intent::Entry { path } => x.excludes(path),
            Intent::Move { from, to } => x.excludes(from) && x.excludes(to),
        };
        if excluded {
            return Ok(());
        }
        self.replicator.prepare(&intent).map_err(|e| {
            tracing::error!("cannot record {intent:?}: {e}");
            Errno::IO
        })
    }

    /// Reads under the ordering lock, so the inode's path cannot change midway.
    pub(super) fn inspect<T>(
        &self,
        f: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, fuser::Errno> {
        let _order = self.tree.lock();
        f().map_err(fuse_err)
    }

    pub(super) fn new_node(
        &self,
        req: &Request,
        parent: &Stat,
        mode: u32,
        umask: u32,
        dir: bool,
    ) -> NewNode {
        let pst = parent;
        let setgid = pst.st_mode & 0o2000 != 0;
        let mut perm = mode & !umask & 0o7777;
        if dir && setgid {
            perm |= 0o2000;
        }
        NewNode {
            perm,
            uid: req.uid(),
            gid: if setgid { pst.st_gid } else { req.gid() },
        }
    }

    /// Replies with the node `st` found or made at `path`.
    pub(super) fn made_reply(&self, path: &Path, st: &Stat, reply: ReplyEntry) {
        let attr = self.attr(st);
        self.nodes.lock().remember(attr.ino.0, path);
        reply.entry(&TTL, &attr, Generation(0));
    }

    /// Creates a node of any kind but regular file opened (mkdir, mknod,
    /// symlink): `make` creates it, then owner and mode are set exactly.
    pub(super) fn make_node(
        self: &Arc<Self>,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        (mode, umask): (u32, u32),
        make: impl FnOnce(&crate::apply::Entry, &NewNode, PathBuf) -> Result<Op, Errno>,
        reply: ReplyEntry,
    ) {
        let is_dir = rfs::FileType::from_raw_mode(mode) == rfs::FileType::Directory;
        let is_link = rfs::FileType::from_raw_mode(mode) == rfs::FileType::Symlink;
        let fs = self.clone();
        self.mutate_then(
            || {
                let path = self.child(parent, name)?;
                let entry = self.root().entry(&path)?;
                let node = self.new_node(req, &rfs::fstat(&entry.dir)?, mode, umask, is_dir);
                self.prepare(Intent::Entry { path: &path })?;
                let op = make(&entry, &node, path.clone())?;
                let perm = (!is_link).then_some(node.perm);
                entry.set_owner_mode(node.uid, node.gid, perm)?;
                let (st, stamps) = made_stamps(&path, &entry)?;
                Ok(((path, st), Some(Change { op, stamps })))
            },
            move |result| match result {
                Ok((path, st)) => fs.made_reply(&path, &st, reply),
                Err(e) => reply.error(e),
            },
        );
    }

    pub(super) fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        self.mutate_then(
            || {
                let path = self.child(parent, name)?;
                let entry = self.root().entry(&path)?;
                let flags = if dir {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                self.prepare(Intent::Entry { path: &path })?;
                rfs::unlinkat(&entry.dir, &entry.name, flags)?;
                self.nodes.lock().unlinked(&path);
                let stamps = vec![Stamp {
                    path: parent_of(&path).to_path_buf(),
                    mtime: mtime_of(&rfs::fstat(&entry.dir)?),
                }];
                let op = if dir {
                    Op::Rmdir { path }
                } else {
                    Op::Unlink { path }
                };
                Ok(((), Some(Change { op, stamps })))
            },
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    pub(super) fn read_dir(&self, path: &Path) -> Result<Vec<DirItem>, Errno> {
        let fd = self.root().open(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut items = Vec::new();
        for entry in rfs::Dir::new(fd)? {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
            let kind = match entry.file_type() {
                rfs::FileType::Unknown if name != "." && name != ".." => {
                    kind_of(self.root().stat(&path.join(&name))?.st_mode)
                }
                rfs::FileType::Unknown => FileType::Directory,
                t => kind_of(t.as_raw_mode()),
            };
            items.push(DirItem {
                ino: self.ino(entry.ino()),
                kind,
                name,
            });
        }
        Ok(items)
    }

    /// An open file's name for the secondary; `None` for a file whose names
    /// are all unlinked: its data is unreachable, nothing to replicate.
    pub(super) fn open_file_path(
        &self,
        ino: INodeNo,
        fd: &OwnedFd,
    ) -> Result<Option<PathBuf>, Errno> {
        if let Ok(path) = self.path(ino) {
            return Ok(Some(path));
        }
        if rfs::fstat(fd)?.st_nlink == 0 {
            return Ok(None);
        }
        // Still linked under a name the kernel never looked up (a hard link
        // made before mounting): find it, or fail rather than diverge.
        let path = self.find(ino, Path::new(""))?.ok_or(Errno::IO)?;
        self.nodes.lock().add_path(ino.0, &path);
        Ok(Some(path))
    }

    /// Does for a regular file written or truncated by a process without
    /// CAP_FSETID what the kernel does for a local one, and replicates it
    /// (the secondary applies as root, which keeps them): clears the
    /// set-user-ID bit, and the set-group-ID bit if the file is
    /// group-executable or the caller is not in its group. With
    /// `FUSE_HANDLE_KILLPRIV_V2` this is the file system's job; the kernel
    /// still removes file capabilities itself (it asks for them only while
    /// a file may have some).
    pub(super) fn drop_privileges(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: Option<FileHandle>,
    ) -> Result<(), fuser::Errno> {
        // The kernel passes the handle of an open directory too (fchmod).
        let handle = fh
            .and_then(|fh| self.handle(fh).ok())
            .filter(|h| matches!(**h, Handle::File(_)));
        let fd = handle.as_deref().map(file_fd);
        // Almost every file has nothing to drop: checked without the lock.
        if let Some(fd) = fd {
            if dropped_mode(req, &rfs::fstat(fd).map_err(fuse_err)?).is_none() {
                return Ok(());
            }
        }
        // Rare (an unprivileged write to a set-user-ID file). Not waited
        // for: the write it precedes follows it in the stream.
        let (dropped, _) = self.ordered(|| {
            let path = match fd {
                Some(fd) => self.open_file_path(ino, fd)?,
                None => Some(self.path(ino)?),
            };
            let opened;
            let obj = match (fd, &path) {
                (Some(fd), _) => fd,
                (None, Some(path)) => {
                    opened = self.root().open(path, OFlags::PATH)?;
                    &opened
                }
                (None, None) => return Err(Errno::NOENT),
            };
            let Some(mode) = dropped_mode(req, &rfs::fstat(obj)?) else {
                return Ok((false, None));
            };
            if let Some(path) = &path {
                self.prepare(Intent::Entry { path })?;
            }
            // An O_PATH descriptor accepts no fchmod; its /proc link does.
            rfs::chmod(proc_path(obj), Mode::from_raw_mode(mode))?;
            // A file with no name left: nothing to replicate.
            let change = path.map(|path| Change {
                op: Op::SetAttr {
                    path,
                    mode: Some(mode),
                    uid: None,
                    gid: None,
                    size: None,
                    atime: None,
                    mtime: None,
                },
                stamps: vec![],
            });
            Ok((true, change))
        })?;
        // The kernel did not ask for this change: its cached mode is stale.
        if dropped {
            if let Some(notifier) = self.notifier.get() {
                if let Err(e) = notifier.inval_inode(ino, -1, 0) {
                    tracing::warn!("cannot refresh the kernel's attributes of {ino:?}: {e}");
                }
            }
        }
        Ok(())
    }

    pub(super) fn find(&self, ino: INodeNo, dir: &Path) -> Result<Option<PathBuf>, Errno> {
        for item in self.read_dir(dir)? {
            if item.name == "." || item.name == ".." {
                continue;
            }
            let path = dir.join(&item.name);
            if item.ino == ino.0 {
                return Ok(Some(path));
            }
            if item.kind == FileType::Directory {
                if let Some(found) = self.find(ino, &path)? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }
}

/// The mode a regular file with attributes `st` gets when written or
/// truncated by `req`'s caller (without CAP_FSETID), if it changes.
fn dropped_mode(req: &Request, st: &Stat) -> Option<u32> {
    if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
        return None;
    }
    let mut kill = 0o4000;
    if st.st_mode & 0o2000 != 0 && (st.st_mode & 0o010 != 0 || !in_group(req, st.st_gid)) {
        kill |= 0o2000;
    }
    (st.st_mode & kill != 0).then_some(st.st_mode & 0o7777 & !kill)
}

/// Whether the caller of `req` has `gid` as its group or one of its
/// supplementary groups (read from /proc: FUSE passes only the first).
fn in_group(req: &Request, gid: u32) -> bool {
    if req.gid() == gid {
        return true;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", req.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| groups.split_whitespace().any(|g| g == gid.to_string()))
}

/// The node just made at `path` (through `entry`, its directory and name),
/// and the modification times of both for the secondary.
pub(super) fn made_stamps(
    path: &Path,
    entry: &crate::apply::Entry,
) -> Result<(Stat, Vec<Stamp>), Errno> {
    let st = rfs::statat(&entry.dir, &entry.name, AtFlags::SYMLINK_NOFOLLOW)?;
    let dir = rfs::fstat(&entry.dir)?;
    let stamps = vec![
        Stamp {
            path: path.to_path_buf(),
            mtime: mtime_of(&st),
        },
        Stamp {
            path: parent_of(path).to_path_buf(),
            mtime: mtime_of(&dir),
        },
    ];
    Ok((st, stamps))
}

/// The modification time of the open file `fd`, named `path` for the secondary.
fn stamp(path: &Path, fd: &OwnedFd) -> Result<Stamp, Errno> {
    Ok(Stamp {
        path: path.to_path_buf(),
        mtime: mtime_of(&rfs::fstat(fd)?),
    })
}

/// A failed replication is EIO for a call that waits for it.
fn outcome(
    change: &Change,
    acknowledged: Result<(), ReplicationError>,
) -> Result<(), fuser::Errno> {
    acknowledged.map_err(|e| {
        tracing::error!("replication of {:?} failed: {e}", change.op.paths());
        fuser::Errno::EIO
    })
}
