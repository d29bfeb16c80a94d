//! The FUSE file system mounted over the replicated directory itself.
//!
//! The real directory is opened before mounting; every operation reaches the
//! real files through that descriptor (see [`crate::apply`]). Mutations are
//! applied locally, turned into a [`Change`] and submitted to the
//! [`Replicator`] under one ordering lock, so the secondary applies them in
//! the order they happened here; the reply to the application waits for the
//! secondary's acknowledgement, outside the lock.
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

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, Config, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, Notifier, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::apply::{atime_of, mtime_of, proc_path, set_file_owner_mode, write_all_at, Root};
use crate::exclusions::Exclusions;
use crate::op::{Ack, Change, Intent, Op, Replicator, Stamp, Time};

/// How long the kernel keeps names and attributes. Only a program writing
/// through a descriptor opened before the mount bypasses the kernel (and
/// replication); what it changes shows through the mount after this long.
const TTL: Duration = Duration::from_secs(1);
/// Threads finishing blocked requests at once (more wait in line, in order).
const WAITERS: usize = 8;
/// How open files are served: with no flush request at each close (every
/// write was applied and acknowledged before it returned: nothing to
/// flush), one round trip fewer per open file; and keeping the kernel's
/// cached data across opens: every write passes through the mount and
/// through that cache (write-through), so it never holds stale data.
const OPENED: FopenFlags = FopenFlags::FOPEN_NOFLUSH.union(FopenFlags::FOPEN_KEEP_CACHE);

/// How an open file is served: write-only opens skip the kernel's page
/// cache (`FOPEN_DIRECT_IO`): nothing reads through them, and the kernel
/// then hands the writer's pages to the request instead of copying them
/// into the cache first (one copy fewer per write).
fn opened(access: OFlags) -> FopenFlags {
    if access == OFlags::WRONLY {
        OPENED.union(FopenFlags::FOPEN_DIRECT_IO)
    } else {
        OPENED
    }
}
/// Largest write the kernel sends in one request (and so one change).
const MAX_WRITE: u32 = 1 << 20;
/// A large write is applied and replicated in chunks of this size, so the
/// secondary receives and checks one while the next is written here.
const CHUNK: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot mount the mirror file system on {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot unmount {path}: {source}")]
    Unmount {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Entry point: mounts the mirror file system over a directory.
#[derive(Debug)]
pub struct Mirror;

impl Mirror {
    /// Opens `dir`, then mounts the mirror file system on the same path:
    /// from then on every operation on `dir` passes through `replicator`.
    pub fn mount(dir: &Path, replicator: Arc<dyn Replicator>) -> Result<MountGuard, MountError> {
        Self::mount_excluding(dir, replicator, Exclusions::default())
    }

    /// [`Mirror::mount`], with what `exclusions` excludes applied here only.
    pub fn mount_excluding(
        dir: &Path,
        replicator: Arc<dyn Replicator>,
        exclusions: Exclusions,
    ) -> Result<MountGuard, MountError> {
        let open_err = |source| MountError::Open {
            path: dir.to_path_buf(),
            source,
        };
        let root = Root::new(dir).map_err(open_err)?;
        let st = rfs::fstat(root.fd()).map_err(|e| open_err(e.into()))?;
        let notifier = Arc::new(OnceLock::new());
        let tree = Tree(Arc::new(TreeInner {
            root,
            order: Mutex::new(()),
            exclusions,
        }));
        let fs = MirrorFs {
            tree: tree.clone(),
            root_ino: st.st_ino as u64,
            replicator,
            nodes: Mutex::new(Nodes::new()),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            notifier: notifier.clone(),
            drops_privileges: AtomicBool::new(false),
            waiters: Waiters::new(WAITERS).map_err(open_err)?,
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("holdfast".into()),
            MountOption::Subtype("holdfast".into()),
            // The daemon runs as root: let the kernel check permissions
            // against the attributes we return, as the real file system would.
            MountOption::DefaultPermissions,
        ];
        config.acl = SessionACL::All;
        config.n_threads = Some(1);
        let mount_err = |source| MountError::Mount {
            path: dir.to_path_buf(),
            source,
        };
        let session = fuser::Session::new(Served(Arc::new(fs)), dir, &config).map_err(mount_err)?;
        let _ = notifier.set(session.notifier());
        let session = session.spawn().map_err(mount_err)?;
        Ok(MountGuard {
            dir: dir.to_path_buf(),
            session: Some(session),
            tree,
        })
    }
}

/// The mounted mirror; dropping it unmounts (lazily if busy).
#[derive(Debug)]
pub struct MountGuard {
    dir: PathBuf,
    session: Option<BackgroundSession>,
    tree: Tree,
}

impl MountGuard {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The real directory under the mount and the lock ordering its
    /// changes: what a resynchronisation reads from while the mount serves.
    pub fn tree(&self) -> Tree {
        self.tree.clone()
    }

    /// Unmounts now, reporting failure; a busy mount is detached (lazy
    /// unmount) and ends when its last open file is closed.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.teardown().map_err(|source| MountError::Unmount {
            path: self.dir.clone(),
            source,
        })
    }

    fn teardown(&mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // A file closed by another thread a moment ago may keep it busy briefly.
        for _ in 0..20 {
            match rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => {
                    let _ = session.join();
                    return Ok(());
                }
                Err(Errno::BUSY) => std::thread::sleep(Duration::from_millis(25)),
                Err(e) => {
                    tracing::warn!("unmount {}: {e}", self.dir.display());
                    break;
                }
            }
        }
        tracing::warn!("{} busy: detaching (lazy unmount)", self.dir.display());
        rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH)?;
        // Served until its last open file is closed; joined off this thread.
        std::thread::spawn(move || {
            let _ = session.join();
        });
        Ok(())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!("cannot unmount {}: {e}", self.dir.display());
        }
    }
}

/// The primary's real directory (the descriptor opened before mounting) and
/// the lock ordering its changes.
///
/// Whoever holds [`Tree::lock`] sees the directory between two operations
/// of the file system, and what it submits to the replicator meanwhile is
/// placed between those operations in the stream: a resynchronisation
/// reads current data and queues it in one such section, so every later
/// change of the application reaches the secondary after it.
#[derive(Debug, Clone)]
pub struct Tree(Arc<TreeInner>);

#[derive(Debug)]
struct TreeInner {
    root: Root,
    order: Mutex<()>,
    /// What of the directory is not replicated.
    exclusions: Exclusions,
}

/// Proof of holding the ordering lock of a [`Tree`].
#[derive(Debug)]
pub struct Ordered<'a> {
    _guard: MutexGuard<'a, ()>,
}

impl Tree {
    /// Waits for the operation in progress (if any) and keeps the next one
    /// out until the returned guard is dropped.
    pub fn lock(&self) -> Ordered<'_> {
        Ordered {
            _guard: self.0.order.lock(),
        }
    }

    /// The directory; reading it is consistent with the stream only while
    /// the ordering lock is held.
    pub(crate) fn root(&self) -> &Root {
        &self.0.root
    }

    /// What of the directory is not replicated.
    pub(crate) fn exclusions(&self) -> &Exclusions {
        &self.0.exclusions
    }
}

/// What the kernel knows by inode number, and where each one is.
#[derive(Debug)]
struct Nodes {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
}

#[derive(Debug)]
struct Node {
    /// Known names (several for hard links); empty once all are unlinked
    /// while the file is still open.
    paths: Vec<PathBuf>,
    lookups: u64,
}

impl Nodes {
    fn new() -> Self {
        let mut nodes = Nodes {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
        };
        nodes.by_ino.insert(
            INodeNo::ROOT.0,
            Node {
                paths: vec![PathBuf::new()],
                lookups: 1,
            },
        );
        nodes.by_path.insert(PathBuf::new(), INodeNo::ROOT.0);
        nodes
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.by_ino
            .get(&ino.0)
            .and_then(|n| n.paths.last())
            .cloned()
            .ok_or(Errno::NOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
            return Err(Errno::INVAL);
        }
        Ok(self.path(parent)?.join(name))
    }

    /// The kernel got one more reference to `ino`, found at `path`.
    fn remember(&mut self, ino: u64, path: &Path) {
        if let Some(old) = self.by_path.insert(path.to_path_buf(), ino) {
            if old != ino {
                if let Some(n) = self.by_ino.get_mut(&old) {
                    n.paths.retain(|p| p != path);
                }
            }
        }
        let node = self.by_ino.entry(ino).or_insert(Node {
            paths: Vec::new(),
            lookups: 0,
        });
        node.lookups += 1;
        if !node.paths.iter().any(|p| p == path) {
            node.paths.push(path.to_path_buf());
        }
    }

    fn forget(&mut self, ino: u64, count: u64) {
        if ino == INodeNo::ROOT.0 {
            return;
        }
        let Some(node) = self.by_ino.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups == 0 {
            let node = self.by_ino.remove(&ino).expect("just found");
            for p in node.paths {
                if self.by_path.get(&p) == Some(&ino) {
                    self.by_path.remove(&p);
                }
            }
        }
    }

    /// A name found without the kernel asking (no new reference).
    fn add_path(&mut self, ino: u64, path: &Path) {
        if let Some(node) = self.by_ino.get_mut(&ino) {
            node.paths.push(path.to_path_buf());
            self.by_path.insert(path.to_path_buf(), ino);
        }
    }

    fn unlinked(&mut self, path: &Path) {
        if let Some(ino) = self.by_path.remove(path) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.paths.retain(|p| p != path);
            }
        }
    }

    /// Moves every known name at or under `from` to `to` (and the other way
    /// for an exchange); a replaced target loses its name.
    fn renamed(&mut self, from: &Path, to: &Path, exchange: bool) {
        if !exchange {
            self.unlinked(to);
        }
        let moved: Vec<(PathBuf, PathBuf, u64)> = self
            .by_path
            .iter()
            .filter_map(|(p, &ino)| {
                let new = if let Ok(rest) = p.strip_prefix(from) {
                    join_rest(to, rest)
                } else if exchange {
                    join_rest(from, p.strip_prefix(to).ok()?)
                } else {
                    return None;
                };
                Some((p.clone(), new, ino))
            })
            .collect();
        for (old, _, _) in &moved {
            self.by_path.remove(old);
        }
        for (old, new, ino) in moved {
            self.by_path.insert(new.clone(), ino);
            if let Some(n) = self.by_ino.get_mut(&ino) {
                for p in n.paths.iter_mut().filter(|p| **p == old) {
                    *p = new.clone();
                }
            }
        }
    }
}

fn join_rest(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

#[derive(Debug)]
enum Handle {
    File(OwnedFd),
    /// A snapshot of the entries, taken when reading from offset 0.
    Dir(Mutex<Vec<DirItem>>),
}

#[derive(Debug)]
struct DirItem {
    ino: u64,
    kind: FileType,
    name: OsString,
}

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
    /// Where what may block is finished (see [`Served`]).
    waiters: Waiters,
}

/// What the kernel talks to: one thread reads and serves every request;
/// a request waiting for the secondary is answered by the thread that
/// receives its acknowledgement, and only what may block (a failure's
/// hook) goes to [`Waiters`]. Several threads reading the same FUSE queue contend for
/// it and are woken in turn, each on a cold cache: one reader served
/// create + unlink three times as fast here.
struct Served(Arc<MirrorFs>);

impl std::ops::Deref for Served {
    type Target = MirrorFs;
    fn deref(&self) -> &MirrorFs {
        &self.0
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads finishing requests that may block (a change held for the
/// secondary, a failure to record): each job wakes one idle thread (a channel
/// behind a shared lock would wake a second one to take the next turn).
/// They end once the file system is gone.
#[derive(Clone)]
struct Waiters(Arc<Jobs>);

#[derive(Default)]
struct Jobs {
    queue: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
}

impl Waiters {
    fn new(count: usize) -> std::io::Result<Self> {
        let jobs = Arc::new(Jobs::default());
        for _ in 0..count {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name("mirror-wait".into())
                .spawn(move || loop {
                    let mut queue = jobs.queue.lock();
                    let job = loop {
                        match queue.0.pop_front() {
                            Some(job) => break job,
                            // Closed, and nothing left to finish.
                            None if queue.1 => return,
                            None => jobs.ready.wait(&mut queue),
                        }
                    };
                    drop(queue);
                    job();
                })?;
        }
        Ok(Waiters(jobs))
    }

    fn run(&self, job: impl FnOnce() + Send + 'static) {
        self.0.queue.lock().0.push_back(Box::new(job));
        self.0.ready.notify_one();
    }
}

impl Drop for MirrorFs {
    fn drop(&mut self) {
        self.waiters.0.queue.lock().1 = true;
        self.waiters.0.ready.notify_all();
    }
}

/// A change submitted to the replicator, its acknowledgement not yet awaited.
struct Pending(Option<(Result<Ack, crate::op::ReplicationError>, Change)>);

impl Pending {
    /// Waits for the secondary; a failed replication is EIO.
    fn acknowledged(self) -> Result<(), fuser::Errno> {
        match self.0 {
            Some((ack, change)) => outcome(&change, ack.and_then(Ack::wait)),
            None => Ok(()),
        }
    }

    /// Calls `done` with what [`Self::acknowledged`] returns, once known:
    /// here if it is, else on the thread that receives the secondary's
    /// answer (no hand-over to another thread), or on a waiter if a hook
    /// may block there (a failure to record, a change held).
    fn then(self, waiters: &Waiters, done: impl FnOnce(Result<(), fuser::Errno>) + Send + 'static) {
        let (ack, change) = match self.0 {
            Some((Ok(ack), change)) => (ack, change),
            unknown => return done(Pending(unknown).acknowledged()),
        };
        let waiters = waiters.clone();
        ack.then(move |ack| {
            let known = ack.is_done();
            let finish = move || done(outcome(&change, ack.wait()));
            if known {
                finish()
            } else {
                waiters.run(finish)
            }
        });
    }
}

/// A failed replication is EIO for the application.
fn outcome(
    change: &Change,
    acknowledged: Result<(), crate::op::ReplicationError>,
) -> Result<(), fuser::Errno> {
    acknowledged.map_err(|e| {
        tracing::error!("replication of {:?} failed: {e}", change.op.paths());
        fuser::Errno::EIO
    })
}

/// Several outcomes awaited together: `done` gets the first error, or
/// success, once the last part reported (from whichever thread).
struct Join(Arc<Mutex<Parts>>);

struct Parts {
    left: usize,
    result: Result<(), fuser::Errno>,
    done: Option<Done>,
}

/// What a request does once its outcome is known.
type Done = Box<dyn FnOnce(Result<(), fuser::Errno>) + Send>;

impl Join {
    fn new(parts: usize, done: impl FnOnce(Result<(), fuser::Errno>) + Send + 'static) -> Self {
        Join(Arc::new(Mutex::new(Parts {
            left: parts,
            result: Ok(()),
            done: Some(Box::new(done)),
        })))
    }

    /// One part's reporter.
    fn part(&self) -> impl FnOnce(Result<(), fuser::Errno>) + Send + 'static {
        let parts = self.0.clone();
        move |result| {
            let mut p = parts.lock();
            if p.result.is_ok() {
                p.result = result;
            }
            p.left -= 1;
            if p.left == 0 {
                let (done, result) = (p.done.take(), p.result);
                drop(p);
                if let Some(done) = done {
                    done(result);
                }
            }
        }
    }
}

/// A write applied in chunks, each submitted as soon as it is applied.
struct Written {
    /// Bytes applied locally (fewer than asked: a short write).
    bytes: usize,
    chunks: Vec<Pending>,
}

impl Written {
    /// `bytes` applied, nothing to replicate.
    fn all(bytes: usize) -> Self {
        Written {
            bytes,
            chunks: Vec::new(),
        }
    }

    /// Calls `done` once every chunk is acknowledged (each one's failure
    /// is recorded when waited for, see [`Ack::map_failure`]): bytes
    /// written, or EIO if any chunk failed.
    fn then(
        self,
        waiters: &Waiters,
        done: impl FnOnce(Result<u32, fuser::Errno>) + Send + 'static,
    ) {
        let bytes = self.bytes as u32;
        let done = move |r: Result<(), fuser::Errno>| done(r.map(|()| bytes));
        let mut chunks = self.chunks;
        if chunks.len() == 1 {
            return chunks.pop().expect("one").then(waiters, done);
        }
        let join = Join::new(chunks.len(), done);
        for chunk in chunks {
            chunk.then(waiters, join.part());
        }
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

/// Permission bits a new node gets, and its group: like the kernel, honour
/// the creator's umask and a set-group-ID parent directory.
struct NewNode {
    perm: u32,
    uid: u32,
    gid: u32,
}

impl MirrorFs {
    /// Drops an open file or directory handle (release, releasedir).
    fn drop_handle(&self, fh: FileHandle) {
        self.handles.write().remove(&fh.0);
    }

    fn root(&self) -> &Root {
        &self.tree.0.root
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

    /// Current modification times of `paths` (each once), for the secondary.
    fn stamps(&self, paths: &[&Path]) -> Vec<Stamp> {
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
    /// change it describes, and calls `done` once the secondary
    /// acknowledged (see [`Pending::then`]), this thread serving other
    /// requests meanwhile. A failed replication is EIO for the application.
    fn mutate_then<T: Send + 'static>(
        &self,
        apply: impl FnOnce() -> Result<(T, Option<Change>), Errno>,
        done: impl FnOnce(Result<T, fuser::Errno>) + Send + 'static,
    ) {
        match self.ordered(apply) {
            Err(e) => done(Err(e)),
            Ok((value, pending)) => {
                pending.then(&self.waiters, move |r| done(r.map(|()| value)));
            }
        }
    }

    /// The first half of [`Self::mutate_then`]: applied and submitted in
    /// order, not yet acknowledged.
    fn ordered<T>(
        &self,
        apply: impl FnOnce() -> Result<(T, Option<Change>), Errno>,
    ) -> Result<(T, Pending), fuser::Errno> {
        let _order = self.tree.0.order.lock();
        let (value, change) = apply().map_err(fuse_err)?;
        Ok((value, self.submit(change)))
    }

    /// Submits `change` unless it touches only what is not replicated.
    fn submit(&self, change: Option<Change>) -> Pending {
        let excluded = |c: &Change| {
            let x = self.tree.exclusions();
            !x.is_empty() && c.op.paths().iter().all(|p| x.excludes(p))
        };
        Pending(
            change
                .filter(|c| !excluded(c))
                .map(|c| (self.replicator.submit(&c), c)),
        )
    }

    /// Under the ordering lock: applies `data` in chunks of [`CHUNK`] and
    /// submits each but the last as soon as it is applied (the last is
    /// returned for [`Self::ordered`] to submit), so the secondary receives
    /// and checks one chunk while the next is written here. A local failure
    /// after some bytes were applied is a short write of those bytes, all
    /// replicated: never an error leaving applied bytes unreported.
    fn write_chunks(
        &self,
        path: &Path,
        fd: &OwnedFd,
        data: &[u8],
        offset: u64,
    ) -> Result<(Written, Option<Change>), Errno> {
        let mut written = Written::all(0);
        let mut last: Option<Change> = None;
        for chunk in data.chunks(CHUNK) {
            if let Some(change) = last.take() {
                written.chunks.push(self.submit(Some(change)));
            }
            let at = offset + written.bytes as u64;
            let (applied, failed) = self.write_chunk(path, fd, chunk, at);
            if applied > 0 {
                written.bytes += applied;
                let op = Op::Write {
                    path: path.to_path_buf(),
                    offset: at,
                    data: Bytes::copy_from_slice(&chunk[..applied]),
                };
                last = Some(Change { op, stamps: vec![] });
            }
            if let Some(e) = failed {
                if written.bytes == 0 {
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
    /// one (see [`Replicator::stamps`]: reading it has a cost).
    fn sent_stamp(&self, path: &Path, fd: &OwnedFd) -> Result<Option<Stamp>, Errno> {
        self.replicator
            .stamps()
            .then(|| stamp(path, fd))
            .transpose()
    }

    /// Announces and applies one chunk: how many bytes were written, and
    /// the error that stopped it before the end, if any.
    fn write_chunk(
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
    /// commits one flush at a time anyway). `done` gets the outcome, from
    /// whichever of this thread and the acknowledgement's finishes last.
    fn flush_both(
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
            Ok((path, pending)) => {
                let join = Join::new(2, done);
                pending.then(&self.waiters, join.part());
                join.part()(local(path.as_deref()).map_err(fuse_err));
            }
        }
    }

    /// A rename or link between what is replicated and what is not is
    /// refused as between two file systems (see [`Exclusions`]).
    fn same_side(&self, from: &Path, to: &Path) -> Result<(), Errno> {
        if self.tree.exclusions().same_side(from, to) {
            Ok(())
        } else {
            Err(Errno::XDEV)
        }
    }

    /// Announces a change before it is applied (see [`Replicator::prepare`]),
    /// unless it touches only what is not replicated.
    fn prepare(&self, intent: Intent<'_>) -> Result<(), Errno> {
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
    fn inspect<T>(&self, f: impl FnOnce() -> Result<T, Errno>) -> Result<T, fuser::Errno> {
        let _order = self.tree.0.order.lock();
        f().map_err(fuse_err)
    }

    fn new_node(&self, req: &Request, parent: &Stat, mode: u32, umask: u32, dir: bool) -> NewNode {
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
    fn made_reply(&self, path: &Path, st: &Stat, reply: ReplyEntry) {
        let attr = self.attr(st);
        self.nodes.lock().remember(attr.ino.0, path);
        reply.entry(&TTL, &attr, Generation(0));
    }

    /// Creates a node of any kind but regular file opened (mkdir, mknod,
    /// symlink): `make` creates it, then owner and mode are set exactly.
    fn make_node(
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

    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
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

    fn read_dir(&self, path: &Path) -> Result<Vec<DirItem>, Errno> {
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
    fn open_file_path(&self, ino: INodeNo, fd: &OwnedFd) -> Result<Option<PathBuf>, Errno> {
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
    fn drop_privileges(
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
        // Rare (an unprivileged write to a set-user-ID file): waited for
        // here, before the write it must precede.
        let (dropped, pending) = self.ordered(|| {
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
        pending.acknowledged()?;
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

    fn find(&self, ino: INodeNo, dir: &Path) -> Result<Option<PathBuf>, Errno> {
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
fn made_stamps(path: &Path, entry: &crate::apply::Entry) -> Result<(Stat, Vec<Stamp>), Errno> {
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

fn file_fd(h: &Handle) -> &OwnedFd {
    match h {
        Handle::File(fd) => fd,
        Handle::Dir(_) => unreachable!("checked by MirrorFs::file"),
    }
}

impl Filesystem for Served {
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
            _ => self.root().stat(&self.path(ino)?),
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
        self.mutate_then(
            || {
                // The kernel passes the handle of an open directory too (fchmod).
                let handle = fh
                    .and_then(|fh| self.handle(fh).ok())
                    .filter(|h| matches!(**h, Handle::File(_)));
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
            Ok((self.root().open(&path, access)?, opened(access)))
        });
        match result {
            Ok((fd, how)) => reply.opened(self.add_handle(Handle::File(fd)), how),
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
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.drop_privileges(req, ino, Some(fh)) {
                return reply.error(e);
            }
        }
        let written = self.ordered(|| {
            let h = self.file(fh)?;
            let fd = file_fd(&h);
            let Some(path) = self.open_file_path(ino, fd)? else {
                write_all_at(fd, data, offset)?;
                return Ok((Written::all(data.len()), None));
            };
            self.write_chunks(&path, fd, data, offset)
        });
        match written {
            Err(e) => reply.error(e),
            Ok((mut written, last)) => {
                written.chunks.push(last);
                written.then(&self.waiters, move |r| match r {
                    Ok(n) => reply.written(n),
                    Err(e) => reply.error(e),
                });
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Only from kernels that ignore FOPEN_NOFLUSH (see `OPENED`).
        reply.ok();
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
                let path = self.path(ino)?;
                let obj = self.root().open(&path, OFlags::PATH)?;
                self.prepare(Intent::Entry { path: &path })?;
                rfs::setxattr(
                    proc_path(&obj),
                    name,
                    value,
                    rfs::XattrFlags::from_bits_retain(flags as u32),
                )?;
                let op = Op::SetXattr {
                    path,
                    name: name.as_bytes().to_vec(),
                    value: value.to_vec(),
                    flags,
                };
                Ok(((), Some(Change { op, stamps: vec![] })))
            },
            move |result| match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let result = self.inspect(|| {
            let obj = self.root().open(&self.path(ino)?, OFlags::PATH)?;
            if size == 0 {
                return rfs::getxattr_query(proc_path(&obj), name).map(XattrAnswer::Size);
            }
            let mut buf = vec![0u8; size as usize];
            let n = rfs::getxattr(proc_path(&obj), name, &mut buf[..])?;
            buf.truncate(n);
            Ok(XattrAnswer::Data(buf))
        });
        answer_xattr(result, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let result = self.inspect(|| {
            let obj = self.root().open(&self.path(ino)?, OFlags::PATH)?;
            if size == 0 {
                return rfs::listxattr_query(proc_path(&obj)).map(XattrAnswer::Size);
            }
            let mut buf = vec![0u8; size as usize];
            let n = rfs::listxattr(proc_path(&obj), &mut buf[..])?;
            buf.truncate(n);
            Ok(XattrAnswer::Data(buf))
        });
        answer_xattr(result, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.mutate_then(
            || {
                let path = self.path(ino)?;
                let obj = self.root().open(&path, OFlags::PATH)?;
                self.prepare(Intent::Entry { path: &path })?;
                rfs::removexattr(proc_path(&obj), name)?;
                let op = Op::RemoveXattr {
                    path,
                    name: name.as_bytes().to_vec(),
                };
                Ok(((), Some(Change { op, stamps: vec![] })))
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
                Ok(((fd, st, path, opened(access)), Some(Change { op, stamps })))
            },
            move |result| match result {
                Ok((fd, st, path, how)) => {
                    let attr = fs.attr(&st);
                    fs.nodes.lock().remember(attr.ino.0, &path);
                    let fh = fs.add_handle(Handle::File(fd));
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
        self.mutate_then(
            || {
                let h = self.file(fh)?;
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
