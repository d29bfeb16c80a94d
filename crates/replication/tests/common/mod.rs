//! Test fixture: a primary directory with the mirror mounted over it,
//! replicating over loopback TCP to a receiver writing a secondary directory.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use holdfast_key::ClusterKey;
use holdfast_replication::{
    AckMode, Exclusions, Mirror, MountGuard, MountOptions, Receiver, ReceiverError, TcpReplicator,
};

pub struct Fixture {
    _tmp: tempfile::TempDir,
    /// The mount point: what applications use.
    pub primary: PathBuf,
    pub secondary: PathBuf,
    /// The primary's real directory, opened before mounting.
    backing: File,
    mount: Option<MountGuard>,
    receiver: Option<JoinHandle<Result<(), ReceiverError>>>,
    /// A tmpfs under the primary's directory, unmounted last.
    disk: Option<PathBuf>,
}

impl Fixture {
    pub fn new(mode: AckMode) -> Self {
        Self::build(mode, None, Exclusions::default())
    }

    /// What `exclusions` excludes is not replicated.
    pub fn excluding(exclusions: Exclusions) -> Self {
        Self::build(AckMode::Receipt, None, exclusions)
    }

    /// The primary's directory on a tmpfs of `size` (as `mount -o size=`),
    /// to run out of space there.
    pub fn on_small_disk(mode: AckMode, size: &str) -> Self {
        Self::build(mode, Some(size), Exclusions::default())
    }

    fn build(mode: AckMode, disk_size: Option<&str>, exclusions: Exclusions) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let primary = tmp.path().join("primary");
        let secondary = tmp.path().join("secondary");
        std::fs::create_dir(&primary).unwrap();
        std::fs::create_dir(&secondary).unwrap();
        let disk = disk_size.map(|size| {
            rustix::mount::mount(
                "holdfast-test",
                &primary,
                "tmpfs",
                rustix::mount::MountFlags::empty(),
                std::ffi::CString::new(format!("size={size}"))
                    .unwrap()
                    .as_c_str(),
            )
            .unwrap();
            primary.clone()
        });
        let backing = File::open(&primary).unwrap();
        let key = ClusterKey::generate();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver::new(&secondary, key.clone(), mode)
            .unwrap()
            .with_exclusions(exclusions.clone());
        let receiver = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            receiver.serve_connection(stream)
        });
        let replicator = TcpReplicator::connect(addr, &key).unwrap();
        let options = MountOptions {
            exclusions,
            ..MountOptions::default()
        };
        let mount = Mirror::mount_with(&primary, Arc::new(replicator), options).unwrap();
        Fixture {
            _tmp: tmp,
            primary,
            secondary,
            backing,
            mount: Some(mount),
            receiver: Some(receiver),
            disk,
        }
    }

    /// The primary's real directory, under the mount (through the
    /// descriptor opened before mounting).
    pub fn backing(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.backing.as_raw_fd()))
    }

    /// Waits (bounded) until the secondary acknowledged every change: calls
    /// that promise no durability return before.
    pub fn acknowledged(&self) {
        let tail = self.mount.as_ref().expect("mounted").tail();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tail.unacknowledged().changes > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the secondary never acknowledged: {:?}",
                tail.unacknowledged()
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Asserts the primary's real tree and the secondary's are identical,
    /// once the secondary acknowledged everything (with
    /// [`AckMode::Durable`], an acknowledged change is applied).
    pub fn assert_replicated(&self) {
        if self.mount.is_some() {
            self.acknowledged();
        }
        let (p, s) = (snapshot(&self.backing()), snapshot(&self.secondary));
        if p != s {
            for (path, entry) in &p {
                if s.get(path) != Some(entry) {
                    eprintln!(
                        "{path:?}\n  primary:   {entry:?}\n  secondary: {:?}",
                        s.get(path)
                    );
                }
            }
            for path in s.keys().filter(|k| !p.contains_key(*k)) {
                eprintln!("{path:?} only on the secondary");
            }
            panic!("primary and secondary differ");
        }
    }

    /// Unmounts (which closes the replication connection) and returns how
    /// the receiver's session ended.
    pub fn finish(&mut self) -> Result<(), ReceiverError> {
        self.mount.take().unwrap().unmount().unwrap();
        self.receiver.take().unwrap().join().unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Also on panic: the mount guard unmounts; the receiver thread ends
        // when the connection closes and is not waited for.
        drop(self.mount.take());
        if let Some(disk) = self.disk.take() {
            // Lazily: the descriptor of the backing directory is still open.
            let _ = rustix::mount::unmount(&disk, rustix::mount::UnmountFlags::DETACH);
        }
        let mounted = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        assert!(
            !mounted.contains(self.primary.to_str().unwrap()) || std::thread::panicking(),
            "mount left behind at {}",
            self.primary.display()
        );
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct EntryInfo {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: Option<u64>,
    mtime: (i64, i64),
    rdev: u64,
    target: Option<PathBuf>,
    content: Option<Vec<u8>>,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

/// What replication must reproduce under `root` when `exclusions` apply:
/// the entries not excluded, directory times and link counts aside (an
/// excluded entry changes its directory's time, and an excluded
/// subdirectory its link count, on one side only).
pub fn replicated_part(root: &Path, exclusions: &Exclusions) -> BTreeMap<PathBuf, EntryInfo> {
    let mut all = snapshot(root);
    all.retain(|path, _| !exclusions.excludes(path));
    for info in all.values_mut().filter(|i| i.kind == "dir") {
        info.mtime = (0, 0);
        info.nlink = 0;
    }
    all
}

/// Everything under `root` that replication must reproduce.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, EntryInfo> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, EntryInfo>) {
    for entry in std::fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let rel = rel.join(entry.file_name());
        let path = root.join(&rel);
        let md = std::fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else {
            "file"
        };
        let info = EntryInfo {
            kind,
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            nlink: md.nlink(),
            // A directory's size depends on the file system's history.
            size: (!ft.is_dir()).then(|| md.size()),
            mtime: (md.mtime(), md.mtime_nsec()),
            rdev: md.rdev(),
            target: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
            content: ft.is_file().then(|| std::fs::read(&path).unwrap()),
            xattrs: xattrs(&path),
        };
        out.insert(rel.clone(), info);
        if ft.is_dir() {
            walk(root, &rel, out);
        }
    }
}

fn xattrs(path: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    names[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let name = std::ffi::OsStr::from_bytes(name);
            let mut value = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
            value.truncate(len);
            (name.to_os_string(), value)
        })
        .collect()
}
