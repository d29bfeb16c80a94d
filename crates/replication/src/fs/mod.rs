//! The FUSE file system mounted over the replicated directory itself.
//!
//! The real directory is opened before mounting; every operation reaches the
//! real files through that descriptor (see [`crate::apply`]). Mutations are
//! applied locally, turned into a [`Change`](crate::op::Change) and submitted to the
//! [`Replicator`] under one ordering lock, so the secondary applies them in
//! the order they happened here. Every change joins the unacknowledged
//! [`Tail`] until the secondary acknowledged it; only calls that promise
//! durability wait for it (see [`Durability`]), outside the lock.
//!
//! Inode numbers are the real files' own (the directory itself is FUSE's
//! root, 1), so hard links share one inode and `st_ino` stays meaningful to
//! applications.
//!
//! The kernel caches names and attributes for [`TTL`]: every change to the
//! tree passes through this mount (the real directory is only reachable
//! through descriptors opened before mounting), and the kernel refreshes
//! what each change it forwards makes stale — the inode written or
//! truncated (size, mtime, ctime), both names' inode on link and unlink
//! (nlink, ctime), the parent directories of entries created, removed or
//! renamed. Hard links share one inode number, hence one cached inode. So
//! metadata seen through the mount is never stale (tests/posix.rs checks it
//! against the real files); without the cache, every path component of
//! every call cost a round trip to the daemon.

mod changes;
pub mod mount;
mod nodes;
mod operations;
mod replies;
pub mod tail;
pub mod tree;

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileHandle, FileType, INodeNo, Notifier};
use rustix::fs::{self as rfs, Stat};
use rustix::io::Errno;

use crate::apply::Root;
use crate::op::{Replicator, Time};
use nodes::Nodes;
use replies::Waiters;
use tail::{Durability, Tail};
use tree::Tree;

/// How long the kernel keeps names and attributes. Only a program writing
/// through a descriptor opened before the mount bypasses the kernel (and
/// replication); what it changes shows through the mount after this long.
const TTL: Duration = Duration::from_secs(1);

struct MirrorFs {
    /// Its ordering lock is held while applying a change locally and
    /// submitting it, so changes reach the secondary in the order they were
    /// applied here, and while turning an inode into a path, so no rename
    /// slips in between.
    tree: Tree,
    root_ino: u64,
    replicator: Arc<dyn Replicator>,
    nodes: Mutex<Nodes>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Tells the kernel about changes it did not ask for; set once mounted.
    notifier: Arc<OnceLock<Notifier>>,
    /// The kernel leaves dropping privileges on write and truncation to us
    /// (`FUSE_HANDLE_KILLPRIV_V2`, see [`MirrorFs::drop_privileges`]).
    drops_privileges: AtomicBool,
    /// Where what may block is finished (see [`Server`](operations::Server)).
    waiters: Waiters,
    durability: Durability,
    /// What the secondary has not acknowledged yet.
    tail: Tail,
}

#[derive(Debug)]
enum Handle {
    File(OpenFile),
    /// A snapshot of the entries, taken when reading from offset 0.
    Dir(Mutex<Vec<DirItem>>),
}

/// A file opened through the mount.
#[derive(Debug)]
struct OpenFile {
    fd: OwnedFd,
    /// Its inode (FUSE's number): a file whose last name was unlinked is
    /// reached through it, by calls the kernel sends without the handle.
    ino: u64,
    /// The end of the changes made through this descriptor in the
    /// [`Tail`] (0: none): its close waits for them (close-to-open).
    written: AtomicU64,
}

impl OpenFile {
    fn new(fd: OwnedFd, ino: u64) -> Self {
        OpenFile {
            fd,
            ino,
            written: AtomicU64::new(0),
        }
    }

    /// A change made through this descriptor ended at `end`.
    fn wrote(&self, end: Option<u64>) {
        if let Some(end) = end {
            self.written.fetch_max(end, Ordering::Relaxed);
        }
    }
}

/// What a call names: a path in the tree, or an open file whose names
/// are all unlinked (nothing of it is replicated: nobody can reach it).
enum Target {
    Name(PathBuf),
    Unlinked(Arc<Handle>),
}

impl Target {
    /// A descriptor for calls through /proc (xattrs): `opened` keeps the
    /// one opened for a name.
    fn object<'a>(
        &'a self,
        fs: &MirrorFs,
        opened: &'a mut Option<OwnedFd>,
    ) -> Result<&'a OwnedFd, Errno> {
        match self {
            Target::Name(path) => {
                Ok(opened.insert(fs.root().open(path, rustix::fs::OFlags::PATH)?))
            }
            Target::Unlinked(h) => Ok(file_fd(h)),
        }
    }

    fn path(&self) -> Option<&Path> {
        match self {
            Target::Name(path) => Some(path),
            Target::Unlinked(_) => None,
        }
    }
}

#[derive(Debug)]
struct DirItem {
    ino: u64,
    kind: FileType,
    name: OsString,
}

impl MirrorFs {
    /// Drops an open file or directory handle (release, releasedir).
    fn drop_handle(&self, fh: FileHandle) {
        self.handles.write().remove(&fh.0);
    }

    fn root(&self) -> &Root {
        self.tree.root()
    }

    /// The root directory is FUSE's inode 1; a real inode 1 elsewhere (if
    /// any) takes the root's real number, so the mapping stays one-to-one.
    fn ino(&self, real: u64) -> u64 {
        if real == self.root_ino {
            INodeNo::ROOT.0
        } else if real == INodeNo::ROOT.0 {
            self.root_ino
        } else {
            real
        }
    }

    fn attr(&self, st: &Stat) -> FileAttr {
        let time = |sec: i64, nsec: u64| {
            system_time(Time {
                sec,
                nsec: nsec as u32,
            })
        };
        FileAttr {
            ino: INodeNo(self.ino(st.st_ino)),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind: kind_of(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.nodes.lock().path(ino)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        self.nodes.lock().child(parent, name)
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        let handles = self.handles.read();
        handles.get(&fh.0).cloned().ok_or(Errno::BADF)
    }

    /// An open file of inode `ino`, for a call on a file that may have no
    /// name left (fstat, fchmod, fgetxattr... come without a handle).
    fn open_file_of(&self, ino: INodeNo) -> Option<Arc<Handle>> {
        let handles = self.handles.read();
        let mut files = handles.values();
        files
            .find(|h| matches!(&***h, Handle::File(f) if f.ino == ino.0))
            .cloned()
    }

    /// What a call without a handle on inode `ino` acts on: its name, or
    /// an open file of it if it has none left (its error otherwise).
    fn name_or_open_file(&self, ino: INodeNo) -> Result<Target, Errno> {
        match self.path(ino) {
            Ok(path) => Ok(Target::Name(path)),
            Err(e) => self.open_file_of(ino).map(Target::Unlinked).ok_or(e),
        }
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        let h = self.handle(fh)?;
        match *h {
            Handle::File(_) => Ok(h),
            Handle::Dir(_) => Err(Errno::ISDIR),
        }
    }

    fn add_handle(&self, handle: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut handles = self.handles.write();
        handles.insert(fh, Arc::new(handle));
        FileHandle(fh)
    }
}

fn file_fd(h: &Handle) -> &OwnedFd {
    &open_file(h).fd
}

fn open_file(h: &Handle) -> &OpenFile {
    match h {
        Handle::File(file) => file,
        Handle::Dir(_) => unreachable!("checked by MirrorFs::file"),
    }
}

fn fuse_err(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.raw_os_error())
}

fn kind_of(mode: u32) -> FileType {
    match rfs::FileType::from_raw_mode(mode) {
        rfs::FileType::Directory => FileType::Directory,
        rfs::FileType::Symlink => FileType::Symlink,
        rfs::FileType::Fifo => FileType::NamedPipe,
        rfs::FileType::Socket => FileType::Socket,
        rfs::FileType::CharacterDevice => FileType::CharDevice,
        rfs::FileType::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn system_time(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec.into())
    }
}
