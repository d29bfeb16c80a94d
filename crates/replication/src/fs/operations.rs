//! The requests of the kernel, each served by the file system.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::Mutex;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::changes::made_stamps;
use super::tail::Durability;
use super::{file_fd, fuse_err, open_file, Handle, MirrorFs, OpenFile, Target, TTL};
use crate::apply::{proc_path, set_file_owner_mode, write_all_at, Root};
use crate::entry::{atime_of, mtime_of};
use crate::op::{parent_of, Change, Intent, Op, Time};

/// How open files are served: keeping the kernel's cached data across
/// opens (every write passes through the mount and through that cache,
/// write-through, so it never holds stale data); write-only opens skip
/// the page cache (`FOPEN_DIRECT_IO`): nothing reads through them, and the
/// kernel then hands the writer's pages to the request instead of copying
/// them into the cache first (one copy fewer per write). No flush request
/// at close (one round trip fewer) where the close has nothing to wait
/// for: an open that cannot write, or any open when every call waits.
fn opened(access: OFlags, durability: Durability) -> FopenFlags {
    let mut how = FopenFlags::FOPEN_KEEP_CACHE;
    if access == OFlags::WRONLY {
        how |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if access == OFlags::RDONLY || durability == Durability::EveryCall {
        how |= FopenFlags::FOPEN_NOFLUSH;
    }
    how
}

/// Largest write the kernel sends in one request (and so one change).
const MAX_WRITE: u32 = 1 << 20;

/// What the kernel talks to: one thread reads and serves every request;
/// a request waiting for the secondary is answered by the thread that
/// receives its acknowledgement, and only what may block (a failure's
/// hook) goes to [`Waiters`](super::replies::Waiters). Several threads
/// reading the same FUSE queue contend for it and are woken in turn, each
/// on a cold cache: one reader served create + unlink three times as fast
/// here.
pub(super) struct Server(pub(super) Arc<MirrorFs>);

impl std::ops::Deref for Server {
    type Target = MirrorFs;
    fn deref(&self) -> &MirrorFs {
        &self.0
    }
}

fn to_time(t: TimeOrNow) -> Time {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (sec, nsec) = if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            };
            Time { sec, nsec }
        }
    }
}

impl Filesystem for Server {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Keeps frames (one write = one change) at a predictable size.
        let _ = config.set_max_write(MAX_WRITE);
        // Dropping privileges on write is ours (see `drop_privileges`):
        // otherwise the kernel asks for `security.capability` before
        // every write, a round trip each.
        let drops = config
            .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            .is_ok();
        self.drops_privileges.store(drops, Ordering::Relaxed);
        if !drops {
            tracing::warn!("kernel without FUSE_HANDLE_KILLPRIV_V2: a getxattr before each write");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.inspect(|| {
            let path = self.child(parent, name)?;
            let st = self.root().stat(&path)?;
            let attr = self.attr(&st);
            self.nodes.lock().remember(attr.ino.0, &path);
            Ok(attr)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes.lock().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self.inspect(|| match fh.map(|fh| self.handle(fh)) {
            Some(Ok(h)) if matches!(*h, Handle::File(_)) => rfs::fstat(file_fd(&h)),
            _ => match self.name_or_open_file(ino)? {
                Target::Name(path) => self.root().stat(&path),
                Target::Unlinked(h) => rfs::fstat(file_fd(&h)),
            },
        });
        match result {
            Ok(st) => reply.attr(&TTL, &self.attr(&st)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mode = mode.map(|m| m & 0o7777);
        // The kernel asks this of a truncation by a process without
        // CAP_FSETID, with a flag fuser does not pass on: the caller's uid
        // stands for its capability.
        if self.drops_privileges.load(Ordering::Relaxed) && size.is_some() && req.uid() != 0 {
            if let Err(e) = self.drop_privileges(req, ino, fh) {
                return reply.error(e);
            }
        }
        // The kernel passes the handle of an open directory too; none for
        // fchmod, fchown, futimens: a file with no name left is reached
        // through one of its open files.
        let handle = fh
            .and_then(|fh| self.handle(fh).ok())
            .filter(|h| matches!(**h, Handle::File(_)))
            .or_else(|| {
                self.path(ino)
                    .is_err()
                    .then(|| self.open_file_of(ino))
                    .flatten()
            });
        let through = fh.and(handle.clone());
        self.mutate_through(
            through,
            || {
                let fd = handle.as_deref().map(file_fd);
                let path = match fd {
                    Some(fd) => self.open_file_path(ino, fd)?,
                    None => Some(self.path(ino)?),
                };
                let (Some(path), fd) = (path, fd) else {
                    // Unlinked but open: change the open file, nothing to send.
                    let fd = fd.ok_or(Errno::NOENT)?;
                    if let Some(size) = size {
                        rfs::ftruncate(fd, size)?;
                    }
                    if uid.is_some() || gid.is_some() {
                        rfs::fchown(fd, uid.map(rfs::Uid::from_raw), gid.map(rfs::Gid::from_raw))?;
                    }
                    if let Some(mode) = mode {
                        rfs::fchmod(fd, Mode::from_raw_mode(mode))?;
                    }
                    if atime.is_some() || mtime.is_some() {
                        Root::set_file_times(fd, atime.map(to_time), mtime.map(to_time))?;
                    }
                    return Ok((self.attr(&rfs::fstat(fd)?), None));
                };
                self.prepare(Intent::Entry { path: &path })?;
                if let Some(size) = size {
                    let old = match fd {
                        Some(fd) => rfs::fstat(fd)?.st_size as u64,
                        None => self.root().stat(&path)?.st_size as u64,
                    };
                    // Both what is cut off and what grows back as zeros.
                    self.prepare(Intent::Data {
                        path: &path,
                        offset: old.min(size),
                        len: old.abs_diff(size),
                    })?;
                    match fd {
                        Some(fd) => rfs::ftruncate(fd, size)?,
                        None => self.root().truncate(&path, size)?,
                    }
                }
                self.root().set_owner_mode(&path, uid, gid, mode)?;
                if atime.is_some() || mtime.is_some() {
                    self.root()
                        .set_times(&path, atime.map(to_time), mtime.map(to_time))?;
                }
                let st = self.root().stat(&path)?;
                let op = Op::SetAttr {
                    path: path.clone(),
                    mode,
                    uid,
                    gid,
                    size,
                    // What was stored, so "now" is the same instant on both sides.
                    atime: atime.map(|_| atime_of(&st)),
                    mtime: mtime.map(|_| mtime_of(&st)),
                };
                let stamps = self.stamps(&[&path]);
                Ok((self.attr(&st), Some(Change { op, stamps })))
            },
            move |result| match result {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.inspect(|| {
            let entry = self.root().entry(&self.path(ino)?)?;
            rfs::readlinkat(&entry.dir, &entry.name, Vec::new())
        });
        match result {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = rfs::FileType::from_raw_mode(mode);
        self.0.make_node(
            req,
            parent,
            name,
            (mode, umask),
            |e, node, path| {
                rfs::mknodat(
                    &e.dir,
                    &e.name,
                    kind,
                    Mode::from_raw_mode(node.perm & 0o777),
                    rdev.into(),
                )?;
                Ok(Op::Mknod {
                    path,
                    mode: kind.as_raw_mode() | node.perm,
                    rdev: rdev.into(),
                    uid: node.uid,
                    gid: node.gid,
                })
            },
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.0.make_node(
            req,
            parent,
            name,
            (
                (mode & 0o7777) | rfs::FileType::Directory.as_raw_mode(),
                umask,
            ),
            |e, node, path| {
                rfs::mkdirat(&e.dir, &e.name, Mode::from_raw_mode(node.perm & 0o777))?;
                Ok(Op::Mkdir {
                    path,
                    mode: node.perm,
                    uid: node.uid,
                    gid: node.gid,
                })
            },
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.0.make_node(
            req,
            parent,
            link_name,
            (rfs::FileType::Symlink.as_raw_mode() | 0o777, 0),
            |e, node, path| {
                rfs::symlinkat(target, &e.dir, &e.name)?;
                Ok(Op::Symlink {
                    path,
                    target: target.to_path_buf(),
                    uid: node.uid,
                    gid: node.gid,
                })
            },
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.mutate_then(
            || {
                if flags.contains(RenameFlags::RENAME_WHITEOUT) {
                    return Err(Errno::INVAL);
                }
                let from = self.child(parent, name)?;
                let to = self.child(newparent, newname)?;
                self.same_side(&from, &to)?;
                let (a, b) = (self.root().entry(&from)?, self.root().entry(&to)?);
                let rflags = rfs::RenameFlags::from_bits(flags.bits()).ok_or(Errno::INVAL)?;
                self.prepare(Intent::Move {
                    from: &from,
                    to: &to,
                })?;
                rfs::renameat_with(&a.dir, &a.name, &b.dir, &b.name, rflags)?;
                let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
                self.nodes.lock().renamed(&from, &to, exchange);
                let mut touched = vec![parent_of(&from), parent_of(&to), to.as_path()];
                if exchange {
                    touched.push(&from);
                }
                let stamps = self.stamps(&touched);
                let op = Op::Rename {
                    from: from.clone(),
                    to: to.clone(),
                    flags: flags.bits(),
                };
                Ok(((), Some(Change { op, stamps })))
            },
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let fs = self.0.clone();
        self.mutate_then(
            || {
                let from = self.path(ino)?;
                let to = self.child(newparent, newname)?;
                self.same_side(&from, &to)?;
                let (a, b) = (self.root().entry(&from)?, self.root().entry(&to)?);
                self.prepare(Intent::Move {
                    from: &from,
                    to: &to,
                })?;
                rfs::linkat(&a.dir, &a.name, &b.dir, &b.name, AtFlags::empty())?;
                let (st, mut stamps) = made_stamps(&to, &b)?;
                // The file's own time did not change.
                stamps.remove(0);
                let op = Op::Link {
                    from,
                    to: to.clone(),
                };
                Ok(((to, st), Some(Change { op, stamps })))
            },
            move |result| match result {
                Ok((path, st)) => fs.made_reply(&path, &st, reply),
                Err(e) => reply.error(e),
            },
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = self.inspect(|| {
            let path = self.path(ino)?;
            // Only the access mode: appending, truncating and creating are
            // done by the kernel through explicit offsets and setattr.
            let access = OFlags::from_bits_retain((flags.0 & libc_accmode()) as u32);
            Ok((
                self.root().open(&path, access)?,
                opened(access, self.durability),
            ))
        });
        match result {
            Ok((fd, how)) => {
                let file = OpenFile::new(fd, ino.0);
                reply.opened(self.add_handle(Handle::File(file)), how)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.file(fh).and_then(|h| {
            let fd = file_fd(&h);
            let mut buf = vec![0u8; size as usize];
            let mut done = 0;
            while done < buf.len() {
                match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(done);
            Ok(buf)
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(fuse_err(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.drop_privileges(req, ino, Some(fh)) {
                return reply.error(e);
            }
        }
        let h = match self.file(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(fuse_err(e)),
        };
        let written = self.ordered(|| {
            let fd = file_fd(&h);
            let Some(path) = self.open_file_path(ino, fd)? else {
                write_all_at(fd, data, offset)?;
                return Ok((data.len(), None));
            };
            self.write_chunks(&path, fd, data, offset)
        });
        match written {
            Err(e) => reply.error(e),
            Ok((bytes, end)) => {
                open_file(&h).wrote(end);
                // O_DSYNC is set for O_SYNC and RWF_SYNC/RWF_DSYNC too.
                let sync = OFlags::from_bits_retain(flags.0 as u32).contains(OFlags::DSYNC);
                self.answer(end, sync, move |r| match r {
                    Ok(()) => reply.written(bytes as u32),
                    Err(e) => reply.error(e),
                });
            }
        }
    }

    /// A close (of each duplicate of the descriptor): a file written
    /// through it is on the secondary when it returns (close-to-open).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let written = match self.file(fh) {
            Ok(h) => open_file(&h).written.load(Ordering::Relaxed),
            Err(e) => return reply.error(fuse_err(e)),
        };
        if written == 0 {
            return reply.ok();
        }
        self.tail.barrier(written, move |r| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.drop_handle(fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let h = match self.file(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(fuse_err(e)),
        };
        let file = h.clone();
        self.flush_both(
            || self.open_file_path(ino, file_fd(&h)),
            move |_| {
                let fd = file_fd(&file);
                if datasync {
                    rfs::fdatasync(fd)
                } else {
                    rfs::fsync(fd)
                }
            },
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.inspect(|| {
            // Fails now (ENOTDIR, EACCES...) rather than at the first read.
            self.root()
                .open(&self.path(ino)?, OFlags::RDONLY | OFlags::DIRECTORY)
                .map(drop)
        });
        match result {
            Ok(()) => reply.opened(
                self.add_handle(Handle::Dir(Mutex::new(Vec::new()))),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(fuse_err(e)),
        };
        let Handle::Dir(items) = &*handle else {
            return reply.error(fuser::Errno::ENOTDIR);
        };
        let mut items = items.lock();
        if offset == 0 {
            match self.inspect(|| self.read_dir(&self.path(ino)?)) {
                Ok(fresh) => *items = fresh,
                Err(e) => return reply.error(e),
            }
        }
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(item.ino), i as u64 + 1, item.kind, &item.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.drop_handle(fh);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.0.clone();
        self.flush_both(
            || self.path(ino).map(Some),
            move |path| fs.root().fsync(path.unwrap_or(Path::new(""))),
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match rfs::fstatvfs(self.root().fd()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(fuse_err(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.mutate_then(
            || {
                let target = self.name_or_open_file(ino)?;
                let mut opened = None;
                let obj = target.object(self, &mut opened)?;
                if let Some(path) = target.path() {
                    self.prepare(Intent::Entry { path })?;
                }
                rfs::setxattr(
                    proc_path(obj),
                    name,
                    value,
                    rfs::XattrFlags::from_bits_retain(flags as u32),
                )?;
                let change = target.path().map(|path| Change {
                    op: Op::SetXattr {
                        path: path.to_path_buf(),
                        name: name.as_bytes().to_vec(),
                        value: value.to_vec(),
                        flags,
                    },
                    stamps: vec![],
                });
                Ok(((), change))
            },
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let result = self.inspect(|| {
            let target = self.name_or_open_file(ino)?;
            let mut opened = None;
            let obj = target.object(self, &mut opened)?;
            if size == 0 {
                return rfs::getxattr_query(proc_path(obj), name).map(XattrAnswer::Size);
            }
            let mut buf = vec![0u8; size as usize];
            let n = rfs::getxattr(proc_path(obj), name, &mut buf[..])?;
            buf.truncate(n);
            Ok(XattrAnswer::Data(buf))
        });
        answer_xattr(result, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let result = self.inspect(|| {
            let target = self.name_or_open_file(ino)?;
            let mut opened = None;
            let obj = target.object(self, &mut opened)?;
            if size == 0 {
                return rfs::listxattr_query(proc_path(obj)).map(XattrAnswer::Size);
            }
            let mut buf = vec![0u8; size as usize];
            let n = rfs::listxattr(proc_path(obj), &mut buf[..])?;
            buf.truncate(n);
            Ok(XattrAnswer::Data(buf))
        });
        answer_xattr(result, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.mutate_then(
            || {
                let target = self.name_or_open_file(ino)?;
                let mut opened = None;
                let obj = target.object(self, &mut opened)?;
                if let Some(path) = target.path() {
                    self.prepare(Intent::Entry { path })?;
                }
                rfs::removexattr(proc_path(obj), name)?;
                let change = target.path().map(|path| Change {
                    op: Op::RemoveXattr {
                        path: path.to_path_buf(),
                        name: name.as_bytes().to_vec(),
                    },
                    stamps: vec![],
                });
                Ok(((), change))
            },
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Only called without default_permissions; kept exact regardless.
        let result = self.inspect(|| {
            let entry = self.root().entry(&self.path(ino)?)?;
            rfs::accessat(
                &entry.dir,
                &entry.name,
                rfs::Access::from_bits_retain(mask.bits() as u32),
                AtFlags::empty(),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let fs = self.0.clone();
        self.mutate_then(
            || {
                let path = self.child(parent, name)?;
                let entry = self.root().entry(&path)?;
                let node = self.new_node(req, &rfs::fstat(&entry.dir)?, mode, umask, false);
                let access = OFlags::from_bits_retain((flags & libc_accmode()) as u32);
                self.prepare(Intent::Entry { path: &path })?;
                let fd = rfs::openat(
                    &entry.dir,
                    &entry.name,
                    access | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(node.perm & 0o777),
                )?;
                set_file_owner_mode(&fd, node.uid, node.gid, node.perm)?;
                let (st, stamps) = made_stamps(&path, &entry)?;
                let op = Op::Create {
                    path: path.clone(),
                    mode: node.perm,
                    uid: node.uid,
                    gid: node.gid,
                };
                let how = opened(access, self.durability);
                Ok(((fd, st, path, how), Some(Change { op, stamps })))
            },
            move |result| match result {
                Ok((fd, st, path, how)) => {
                    let attr = fs.attr(&st);
                    fs.nodes.lock().remember(attr.ino.0, &path);
                    let fh = fs.add_handle(Handle::File(OpenFile::new(fd, attr.ino.0)));
                    reply.created(&TTL, &attr, Generation(0), fh, how);
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let h = match self.file(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(fuse_err(e)),
        };
        self.mutate_through(
            Some(h.clone()),
            || {
                let fd = file_fd(&h);
                let flags = rfs::FallocateFlags::from_bits_retain(mode as u32);
                let Some(path) = self.open_file_path(ino, fd)? else {
                    rfs::fallocate(fd, flags, offset, length)?;
                    return Ok(((), None));
                };
                // Collapsing or inserting a range shifts everything after it.
                let shifts = flags.intersects(
                    rfs::FallocateFlags::COLLAPSE_RANGE | rfs::FallocateFlags::INSERT_RANGE,
                );
                self.prepare(Intent::Data {
                    path: &path,
                    offset,
                    len: if shifts { u64::MAX - offset } else { length },
                })?;
                rfs::fallocate(fd, flags, offset, length)?;
                let stamps = self.sent_stamp(&path, fd)?.into_iter().collect();
                let op = Op::Fallocate {
                    path,
                    offset,
                    length,
                    mode,
                };
                Ok(((), Some(Change { op, stamps })))
            },
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }
}

fn libc_accmode() -> i32 {
    OFlags::ACCMODE.bits() as i32
}

enum XattrAnswer {
    Size(usize),
    Data(Vec<u8>),
}

fn answer_xattr(result: Result<XattrAnswer, fuser::Errno>, reply: ReplyXattr) {
    match result {
        Ok(XattrAnswer::Size(n)) => reply.size(n as u32),
        Ok(XattrAnswer::Data(d)) => reply.data(&d),
        Err(e) => reply.error(e),
    }
}
