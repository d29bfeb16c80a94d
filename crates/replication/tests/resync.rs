//! Tracking while ALONE and reintegration of a returning secondary, on real
//! FUSE mounts and loopback TCP (root, /dev/fuse).

// Shared by several test crates, each using a part of it.
#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use holdfast_key::ClusterKey;
use holdfast_replication::mark::EXTENT;
use holdfast_replication::tracking::BLOCK;
use holdfast_replication::{
    resync, AckMode, ChangeLog, Exclusions, GenerationStore, Generations, Link, LinkMode, Mark,
    Mirror, MountGuard, MountOptions, Peer, Progress, Receiver, ReceiverError, Recovery, Scope,
    TcpReplicator, TrackingConfig,
};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

/// Two copies that were in sync, a tracker, and the mount (once ALONE).
struct Pair {
    tmp: tempfile::TempDir,
    primary: PathBuf,
    secondary: PathBuf,
    /// The primary's real directory, opened before mounting.
    backing: File,
    key: ClusterKey,
    primary_gen: Generations,
    mount: Option<MountGuard>,
    link: Option<Link>,
}

impl Pair {
    /// `populate` fills the primary; the secondary gets an exact copy.
    fn new(populate: impl FnOnce(&Path)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let primary = tmp.path().join("primary");
        let secondary = tmp.path().join("secondary");
        fs::create_dir(&primary).unwrap();
        populate(&primary);
        copy_tree(&primary, &secondary);
        let backing = File::open(&primary).unwrap();
        let synced = Generations::fresh(true);
        GenerationStore::new(&tmp.path().join("secondary.gen"))
            .save(&synced)
            .unwrap();
        Pair {
            tmp,
            primary,
            secondary,
            backing,
            key: ClusterKey::generate(),
            primary_gen: synced,
            mount: None,
            link: None,
        }
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn backing(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.backing.as_raw_fd()))
    }

    /// The primary goes ALONE: new generation, tracking, mounted.
    fn go_alone(&mut self, config: TrackingConfig) -> Recovery {
        self.go_alone_excluding(config, Exclusions::default())
    }

    /// [`Pair::go_alone`], with what `exclusions` excludes not replicated.
    fn go_alone_excluding(&mut self, config: TrackingConfig, exclusions: Exclusions) -> Recovery {
        self.primary_gen.start_tracking();
        let (log, recovery) = ChangeLog::open(&self.state(), config).unwrap();
        let link = Link::tracking(Arc::new(log));
        let options = MountOptions {
            exclusions,
            ..MountOptions::default()
        };
        let mount = Mirror::mount_with(&self.primary, Arc::new(link.clone()), options);
        self.mount = Some(mount.unwrap());
        self.link = Some(link);
        recovery
    }

    /// A receiver on 127.0.0.1 serving one connection into the secondary.
    fn secondary(&self) -> (TcpReplicator, JoinHandle<Result<(), ReceiverError>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver::new(&self.secondary, self.key.clone(), AckMode::Receipt)
            .unwrap()
            .with_generations(self.secondary_store());
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            receiver.serve_connection(stream)
        });
        (TcpReplicator::connect(addr, &self.key).unwrap(), handle)
    }

    fn secondary_store(&self) -> GenerationStore {
        GenerationStore::new(&self.tmp.path().join("secondary.gen"))
    }

    fn resync(&self, peer: Arc<TcpReplicator>, progress: &Progress) -> holdfast_replication::Stats {
        self.resync_with(peer, progress, &Scope::Tracked)
    }

    fn resync_with(
        &self,
        peer: Arc<TcpReplicator>,
        progress: &Progress,
        scope: &Scope,
    ) -> holdfast_replication::Stats {
        let mount = self.mount.as_ref().unwrap();
        let link = self.link.as_ref().unwrap();
        resync(
            &mount.tree(),
            link,
            peer,
            self.primary_gen.current,
            scope,
            progress,
        )
        .unwrap()
    }

    /// Unmounts (ending the replication session) and compares the trees.
    fn finish(&mut self, receiver: JoinHandle<Result<(), ReceiverError>>) {
        self.stop(receiver);
        assert_same_trees(&self.backing(), &self.secondary);
    }

    /// Unmounts, ending the replication session.
    fn stop(&mut self, receiver: JoinHandle<Result<(), ReceiverError>>) {
        self.link = None;
        self.mount.take().unwrap().unmount().unwrap();
        receiver.join().unwrap().unwrap();
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Also on panic: the guard unmounts (lazily if busy).
        drop(self.mount.take());
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_same_trees(a: &Path, b: &Path) {
    let (x, y) = (common::snapshot(a), common::snapshot(b));
    if x != y {
        for (path, entry) in &x {
            if y.get(path) != Some(entry) {
                let short = |e: Option<&common::EntryInfo>| {
                    let s = format!("{e:?}");
                    s.chars().take(400).collect::<String>()
                };
                eprintln!(
                    "{path:?}\n  primary:   {}\n  secondary: {}",
                    short(Some(entry)),
                    short(y.get(path))
                );
            }
        }
        for path in y.keys().filter(|k| !x.contains_key(*k)) {
            eprintln!("{path:?} only on the secondary");
        }
        panic!("trees differ");
    }
    // Equal link counts could still be other groupings: the names of
    // each multiply-linked file must be the same on both sides.
    assert_eq!(link_groups(a), link_groups(b), "hard links differ");
}

/// The names of each regular file with several, under `root`.
fn link_groups(root: &Path) -> BTreeSet<BTreeSet<PathBuf>> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<u64, BTreeSet<PathBuf>>) {
        for entry in fs::read_dir(root.join(rel)).unwrap() {
            let rel = rel.join(entry.unwrap().file_name());
            let md = fs::symlink_metadata(root.join(&rel)).unwrap();
            if md.is_dir() {
                walk(root, &rel, out);
            } else if md.is_file() && md.nlink() > 1 {
                out.entry(md.ino()).or_default().insert(rel);
            }
        }
    }
    let mut by_inode = BTreeMap::new();
    walk(root, Path::new(""), &mut by_inode);
    by_inode.into_values().collect()
}

fn random_file(path: &Path, len: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = File::create(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..len / MIB {
        rng.fill(&mut buf[..]);
        f.write_all(&buf).unwrap();
    }
}

fn small_files(dir: &Path) {
    fs::create_dir(dir.join("etc")).unwrap();
    for i in 0..20 {
        fs::write(dir.join(format!("etc/conf-{i}")), format!("setting {i}\n")).unwrap();
    }
    fs::create_dir(dir.join("old")).unwrap();
    fs::write(dir.join("old/a"), b"a").unwrap();
    fs::write(dir.join("old/b"), b"b").unwrap();
}

#[test]
fn resync_sends_only_changed_blocks_and_namespace_changes() {
    let mut pair = Pair::new(|d| {
        random_file(&d.join("big"), 64 * MIB, 1);
        small_files(d);
    });
    pair.go_alone(TrackingConfig::default());
    let p = pair.primary.clone();

    // 1% of the big file at random (unaligned) offsets.
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let big = OpenOptions::new().write(true).open(p.join("big")).unwrap();
    let chunk = 4000u64;
    let writes = 64 * MIB / 100 / chunk;
    let mut touched = std::collections::BTreeSet::new();
    for _ in 0..writes {
        let offset = rng.gen_range(0..64 * MIB - chunk);
        let data: Vec<u8> = (0..chunk).map(|_| rng.gen()).collect();
        big.write_at(&data, offset).unwrap();
        touched.extend(offset / BLOCK..=(offset + chunk - 1) / BLOCK);
    }
    drop(big);
    let changed = writes * chunk;
    // Namespace and metadata while alone.
    fs::write(p.join("etc/conf-3"), b"changed\n").unwrap();
    fs::write(p.join("new-file"), vec![7u8; 100_000]).unwrap();
    fs::remove_file(p.join("etc/conf-4")).unwrap();
    fs::rename(p.join("etc/conf-5"), p.join("etc/conf-5.renamed")).unwrap();
    fs::rename(p.join("old"), p.join("renamed-dir")).unwrap();
    fs::create_dir_all(p.join("made/deep")).unwrap();
    fs::write(p.join("made/deep/x"), b"deep").unwrap();
    std::os::unix::fs::symlink("etc/conf-1", p.join("link")).unwrap();
    fs::hard_link(p.join("etc/conf-6"), p.join("hard")).unwrap();
    fs::set_permissions(
        p.join("etc/conf-7"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    rustix::fs::setxattr(
        p.join("etc/conf-8"),
        "user.tag",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let small_bytes = 8 + 100_000 + 4;

    let (peer, receiver) = pair.secondary();
    let peer = Arc::new(peer);
    let progress = Progress::default();
    let started = Instant::now();
    let stats = pair.resync(peer, &progress);
    let report = progress.report();
    eprintln!(
        "64 MiB file, {} writes of {chunk} B ({changed} B changed, {} blocks of {BLOCK} B): \
         resync sent {} B of data in {:?}; {} entries; progress {report:?}",
        writes,
        touched.len(),
        stats.bytes_sent,
        started.elapsed(),
        stats.entries,
    );
    let expected = touched.len() as u64 * BLOCK + small_bytes;
    assert!(
        stats.bytes_sent <= expected + 8 * BLOCK,
        "sent {} B, tracked blocks hold {expected} B",
        stats.bytes_sent
    );
    assert!(stats.bytes_sent < 2 * MIB, "far below the file size");
    assert_eq!(report.bytes_left, 0);
    assert_eq!(pair.link.as_ref().unwrap().mode(), LinkMode::Mirror);
    let record = pair.secondary_store().load().unwrap().unwrap();
    assert!(!record.incomplete);
    assert_eq!(record.current, pair.primary_gen.current);
    assert!(pair.link.as_ref().unwrap().log().dirty().is_empty());

    // Mirroring again, with no gap.
    fs::write(p.join("after"), b"mirrored").unwrap();
    pair.finish(receiver);
}

/// Hard links made while ALONE come back as names of one file — first
/// names made alone too or existing before, in one directory or across
/// two — whether the lone primary stopped cleanly or crashed (its memory
/// lost, only the durable log left).
fn links_made_alone_run(crash: bool) {
    let mut pair = Pair::new(small_files);
    // Never a checkpoint: after the crash only the activity log speaks.
    pair.go_alone(TrackingConfig {
        interval: Duration::from_secs(3600),
        max_marks: 1 << 20,
    });
    let p = pair.primary.clone();
    fs::write(p.join("a"), vec![5u8; 10_000]).unwrap();
    fs::hard_link(p.join("a"), p.join("b")).unwrap();
    fs::create_dir(p.join("new")).unwrap();
    fs::write(p.join("new/c"), b"c").unwrap();
    fs::hard_link(p.join("new/c"), p.join("etc/c-link")).unwrap();
    fs::hard_link(p.join("etc/conf-1"), p.join("etc/conf-1-link")).unwrap();
    // Written through the second name.
    let b = OpenOptions::new().write(true).open(p.join("b")).unwrap();
    b.write_at(b"through b", 4096).unwrap();
    drop(b);
    if crash {
        pair.link = None;
        pair.mount.take().unwrap().unmount().unwrap();
        let recovery = pair.go_alone(TrackingConfig::default());
        assert!(
            matches!(recovery, Recovery::Recovered { marks } if marks > 0),
            "{recovery:?}"
        );
    }
    let (peer, receiver) = pair.secondary();
    let stats = pair.resync(Arc::new(peer), &Progress::default());
    eprintln!("links made alone (crash: {crash}): {stats:?}");
    pair.finish(receiver);
    let s = &pair.secondary;
    for (first, other) in [("a", "b"), ("new/c", "etc/c-link")] {
        let (x, y) = (
            fs::metadata(s.join(first)).unwrap(),
            fs::metadata(s.join(other)).unwrap(),
        );
        assert_eq!((x.ino(), x.nlink()), (y.ino(), 2), "{first} and {other}");
    }
    // One file: a write through one name shows through the other.
    fs::write(s.join("b"), b"after failover").unwrap();
    assert_eq!(fs::read(s.join("a")).unwrap(), b"after failover");
}

#[test]
fn links_made_alone_come_back_as_links() {
    links_made_alone_run(false);
}

#[test]
fn links_made_alone_come_back_as_links_after_a_crash() {
    links_made_alone_run(true);
}

#[test]
fn writer_keeps_appending_during_resync() {
    let mut pair = Pair::new(|d| {
        random_file(&d.join("base"), 4 * MIB, 3);
        fs::write(d.join("log"), b"start\n").unwrap();
    });
    pair.go_alone(TrackingConfig::default());
    let p = pair.primary.clone();
    // Enough tracked data that the resync takes a while.
    random_file(&p.join("grown"), 24 * MIB, 4);
    let base = OpenOptions::new().write(true).open(p.join("base")).unwrap();
    for i in 0..64u64 {
        base.write_at(&[i as u8; 3000], i * 61_000).unwrap();
    }
    drop(base);

    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = Writer {
        stop: stop.clone(),
        thread: None,
    };
    writer.thread = {
        let (p, stop) = (p.clone(), stop.clone());
        Some(std::thread::spawn(move || {
            let mut log = OpenOptions::new().append(true).open(p.join("log")).unwrap();
            let grown = OpenOptions::new()
                .write(true)
                .open(p.join("grown"))
                .unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let mut n = 0u64;
            // Bounded: stops when told, or after 100 000 writes.
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                writeln!(log, "line {n}").unwrap();
                // Also rewrite blocks the resync is about to send.
                let offset = rng.gen_range(0..24 * MIB - 512);
                grown.write_at(&[n as u8; 512], offset).unwrap();
                if n % 50 == 0 {
                    fs::write(p.join(format!("churn-{}", n % 7)), n.to_string()).unwrap();
                }
                n += 1;
            }
            n
        }))
    };
    // Lines in the application's log so far (read through the mount).
    let logged = || fs::read(p.join("log")).map_or(0, |d| d.split(|&b| b == b'\n').count());
    let wait_for = |more: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while logged() < more {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(10, "the application started writing before the resync");
    let (peer, receiver) = pair.secondary();
    let progress = Progress::default();
    let stats = pair.resync(Arc::new(peer), &progress);
    // Keep writing a little while mirrored, then stop.
    wait_for(
        logged() + 10,
        "the application goes on writing once mirrored",
    );
    let lines = writer.stop();
    eprintln!(
        "writer wrote {lines} lines; resync sent {} B",
        stats.bytes_sent
    );
    assert!(lines > 10, "the writer ran during the resync");
    pair.finish(receiver);
}

/// The application thread of a test, stopped and joined before the mount
/// goes (also when the test fails): a thread left writing to a file system
/// its own process served would hang forever, and the process with it.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Set by the crash test in the environment of the child it runs (itself
/// again): the directory of the pair.
const CRASH_CHILD: &str = "HOLDFAST_CRASH_CHILD";

/// Child side of the crash test: only the file system (the daemon's part),
/// until killed (bounded: 120 s). The application writing through it is
/// the parent: a process writing to a FUSE mount it serves itself would
/// hang forever when killed.
fn serve_until_killed(dir: &Path) {
    let config = TrackingConfig {
        // Never a checkpoint: after the kill only the activity log speaks.
        interval: Duration::from_secs(3600),
        max_marks: 1 << 20,
    };
    let (log, _) = ChangeLog::open(&dir.join("state"), config).unwrap();
    let link = Link::tracking(Arc::new(log));
    let _mount = Mirror::mount(&dir.join("primary"), Arc::new(link)).unwrap();
    fs::write(dir.join("ready"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

/// What the application saw succeed.
#[derive(Debug)]
enum Acked {
    Write { offset: u64, len: u64 },
    Create(String),
}

#[test]
fn crash_of_the_lone_primary_loses_no_acknowledged_write() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD) {
        return serve_until_killed(Path::new(&dir));
    }
    let mut pair = Pair::new(|d| random_file(&d.join("big"), 32 * MIB, 7));
    let dir = pair.tmp.path().to_path_buf();
    pair.primary_gen.start_tracking();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_of_the_lone_primary_loses_no_acknowledged_write",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD, &dir)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("ready").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dir.join("ready").exists(), "the child mounted");

    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let (primary, acked) = (pair.primary.clone(), acked.clone());
        std::thread::spawn(move || {
            let big = OpenOptions::new()
                .write(true)
                .open(primary.join("big"))
                .unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(6);
            // Until the file system dies under it (bounded anyway).
            for n in 0..1_000_000u64 {
                let done = if n % 10 == 9 {
                    let name = format!("new-{n}");
                    fs::write(primary.join(&name), n.to_string()).map(|()| Acked::Create(name))
                } else {
                    let offset = rng.gen_range(0..32 * MIB - 5000);
                    let len = rng.gen_range(1..5000u64);
                    big.write_at(&vec![n as u8; len as usize], offset)
                        .map(|_| Acked::Write { offset, len })
                };
                match done {
                    Ok(a) => acked.lock().unwrap().push(a),
                    Err(_) => return,
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 3000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // kill -9 (`Child::kill` is SIGKILL) while writes are in flight: no
    // clean shutdown, no checkpoint.
    child.kill().unwrap();
    child.wait().unwrap();
    writer.join().unwrap();
    // The dead daemon's mount is left behind: detach it.
    rustix::mount::unmount(&pair.primary, rustix::mount::UnmountFlags::DETACH).unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= 3000, "the application wrote for a while");

    let (log, recovery) = ChangeLog::open(&pair.state(), TrackingConfig::default()).unwrap();
    let Recovery::Recovered { marks } = recovery else {
        panic!("{recovery:?}");
    };
    let dirty = log.dirty();
    // Every acknowledged change is covered.
    let blocks = &dirty.files[Path::new("big")].blocks;
    // Marked extents cover the writes made before the first create; from
    // then on the directory's mark does (each file in it is compared).
    let dir_examined = dirty.dirs.contains(Path::new(""));
    for a in &acked {
        match a {
            Acked::Write { offset, len } => {
                for b in offset / BLOCK..=(offset + len - 1) / BLOCK {
                    assert!(
                        dir_examined || blocks.iter().any(|(s, e)| s <= b && b < e),
                        "acknowledged {a:?} not covered"
                    );
                }
            }
            // Its directory is compared entry by entry.
            Acked::Create(name) => {
                assert!(pair.backing().join(name).exists(), "{a:?}");
                assert!(dirty.dirs.contains(Path::new("")), "{a:?}");
            }
        }
    }
    eprintln!(
        "{} acknowledged changes covered by {marks} activity-log marks ({EXTENT} B extents)",
        acked.len()
    );
    drop(log);

    // Then resynchronise from what the crash left on disk.
    pair.go_alone(TrackingConfig::default());
    let (peer, receiver) = pair.secondary();
    let progress = Progress::default();
    let stats = pair.resync(Arc::new(peer), &progress);
    eprintln!("after the crash, resync: {stats:?}");
    assert!(stats.bytes_sent <= 32 * MIB + MIB);
    pair.finish(receiver);
}

#[test]
fn lost_tracking_compares_checksums_and_sends_only_differences() {
    let mut pair = Pair::new(|d| {
        random_file(&d.join("big"), 16 * MIB, 8);
        small_files(d);
    });
    // Changes no log knows about (made under the daemon's nose), on both
    // sides: 3 blocks here, 2 there (one of them the same block).
    let p = pair.primary.clone();
    let big = OpenOptions::new().write(true).open(p.join("big")).unwrap();
    for o in [0, 5 * MIB + 17, 9 * MIB] {
        big.write_at(b"primary", o).unwrap();
    }
    let s = OpenOptions::new()
        .write(true)
        .open(pair.secondary.join("big"))
        .unwrap();
    for o in [9 * MIB + 100, 12 * MIB] {
        s.write_at(b"secondary", o).unwrap();
    }
    fs::write(pair.secondary.join("etc/conf-2"), b"diverged").unwrap();
    fs::write(pair.secondary.join("stray"), b"only there").unwrap();
    // The tracker's state is damaged: tracking is lost.
    {
        let (log, _) = ChangeLog::open(&pair.state(), TrackingConfig::default()).unwrap();
        log.checkpoint().unwrap();
    }
    fs::write(pair.state().join("dirty.snapshot"), b"garbage").unwrap();
    let recovery = pair.go_alone(TrackingConfig::default());
    assert!(matches!(recovery, Recovery::Lost { .. }), "{recovery:?}");
    // Same mtimes for the files both sides changed, so metadata alone
    // cannot tell: only the checksums can.
    let (peer, receiver) = pair.secondary();
    let progress = Progress::default();
    let stats = pair.resync(Arc::new(peer), &progress);
    eprintln!("lost tracking: {stats:?}");
    // 4 differing 64 KiB blocks of the big file, plus the small file.
    assert!(stats.bytes_sent >= 4 * 65536, "{stats:?}");
    assert!(stats.bytes_sent <= 4 * 65536 + 4096, "{stats:?}");
    pair.finish(receiver);
}

/// The secondary was a primary killed while mirroring: changes it made
/// that were never acknowledged lie in the regions of its activity log.
/// Only those regions are compared (4 KiB checksums), only differing
/// blocks sent, listed directories' entries made identical.
#[test]
fn a_returning_primarys_activity_log_regions_are_compared_not_the_whole_tree() {
    let mut pair = Pair::new(|d| {
        random_file(&d.join("big"), 16 * MIB, 9);
        small_files(d);
    });
    // Its changes in flight at the crash: in extent 2 of the big file, a
    // small file rewritten, a file created.
    let s = OpenOptions::new()
        .write(true)
        .open(pair.secondary.join("big"))
        .unwrap();
    s.write_at(b"in flight", 2 * EXTENT + 100).unwrap();
    fs::write(pair.secondary.join("etc/conf-2"), b"in flight").unwrap();
    fs::write(pair.secondary.join("stray"), b"created in flight").unwrap();
    let regions = vec![
        Mark::Extent {
            path: "big".into(),
            index: 2,
        },
        Mark::Extent {
            path: "etc/conf-2".into(),
            index: 0,
        },
        Mark::Listing { path: "".into() },
    ];
    // What the new primary changed alone: tracked.
    pair.go_alone(TrackingConfig::default());
    let big = OpenOptions::new()
        .write(true)
        .open(pair.primary.join("big"))
        .unwrap();
    big.write_at(b"alone", 5 * MIB).unwrap();
    big.sync_all().unwrap();
    drop(big);
    let (peer, receiver) = pair.secondary();
    let stats = pair.resync_with(
        Arc::new(peer),
        &Progress::default(),
        &Scope::Regions(regions),
    );
    eprintln!("activity log: {stats:?}");
    // The extent and the small file's one block compared, nothing else.
    assert_eq!(stats.blocks_compared, EXTENT / BLOCK + 1, "{stats:?}");
    // The tracked block, the differing block of the extent, the small file.
    assert!(stats.bytes_sent >= 2 * BLOCK, "{stats:?}");
    assert!(stats.bytes_sent <= 2 * BLOCK + 64, "{stats:?}");
    pair.finish(receiver);
}

/// What is not replicated (SafeKit's `<notreplicated>`) is left alone on
/// both sides, even by a resynchronisation comparing the whole tree:
/// nothing excluded of the primary's is sent, nothing excluded of the
/// secondary's is removed or overwritten.
#[test]
fn resync_leaves_what_is_excluded_alone_on_both_sides() {
    let mut pair = Pair::new(|d| {
        small_files(d);
        fs::create_dir(d.join("logs")).unwrap();
        fs::write(d.join("logs/shared.log"), b"both\n").unwrap();
    });
    let s = pair.secondary.clone();
    fs::write(s.join("logs/shared.log"), b"the secondary's own\n").unwrap();
    fs::write(s.join("own.tmp"), b"the secondary's\n").unwrap();
    fs::write(s.join("stray"), b"replicated, only there: removed\n").unwrap();
    // Tracking lost: the whole tree is compared.
    {
        let (log, _) = ChangeLog::open(&pair.state(), TrackingConfig::default()).unwrap();
        log.checkpoint().unwrap();
    }
    fs::write(pair.state().join("dirty.snapshot"), b"garbage").unwrap();
    let exclusions = Exclusions::new(&[PathBuf::from("logs")], &[r"\.tmp$".into()]).unwrap();
    let recovery = pair.go_alone_excluding(TrackingConfig::default(), exclusions.clone());
    assert!(matches!(recovery, Recovery::Lost { .. }), "{recovery:?}");
    let p = pair.primary.clone();
    fs::write(p.join("logs/new.log"), b"the primary's\n").unwrap();
    fs::write(p.join("scratch.tmp"), b"the primary's\n").unwrap();
    fs::write(p.join("etc/conf-3"), b"changed\n").unwrap();
    let (peer, receiver) = pair.secondary();
    pair.resync(Arc::new(peer), &Progress::default());
    pair.stop(receiver);
    let read = |path: &str| fs::read_to_string(s.join(path)).ok();
    assert_eq!(
        read("logs/shared.log").as_deref(),
        Some("the secondary's own\n")
    );
    assert_eq!(read("own.tmp").as_deref(), Some("the secondary's\n"));
    assert_eq!(read("logs/new.log"), None);
    assert_eq!(read("scratch.tmp"), None);
    assert_eq!(read("stray"), None);
    assert_eq!(read("etc/conf-3").as_deref(), Some("changed\n"));
    assert_eq!(
        common::replicated_part(&pair.backing(), &exclusions),
        common::replicated_part(&s, &exclusions)
    );
}

#[test]
fn interrupted_resync_leaves_the_secondary_marked_incomplete() {
    let pair = Pair::new(|d| fs::write(d.join("f"), b"x").unwrap());
    let (peer, receiver) = pair.secondary();
    peer.ask(&holdfast_replication::resync::Request::Begin { source: 42 })
        .unwrap();
    drop(peer);
    receiver.join().unwrap().unwrap();
    let record = pair.secondary_store().load().unwrap().unwrap();
    assert!(record.incomplete);
    let err = record.may_promote("app").unwrap_err();
    assert!(err.to_string().contains("incomplete"), "{err}");
}

/// Forwards the first `apply` changes to a real secondary, then none, and
/// never reports any applied: every change stays "in flight", of which the
/// secondary applied a prefix — as when it died between acknowledging
/// changes on receipt and applying them.
struct Prefix {
    real: Arc<TcpReplicator>,
    apply: usize,
    count: std::sync::atomic::AtomicUsize,
}

impl holdfast_replication::Replicator for Prefix {
    fn submit(
        &self,
        change: &holdfast_replication::Change,
    ) -> Result<holdfast_replication::Ack, holdfast_replication::ReplicationError> {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        if n < self.apply {
            self.real.replicate(change)?;
        }
        Ok(holdfast_replication::Ack::done(Ok(())).numbered(n as u64))
    }

    fn applied(&self) -> Option<u64> {
        Some(0)
    }
}

/// The changes of `in_flight_operations`, through the mount at `p`.
fn in_flight_operations(p: &Path) {
    let data = OpenOptions::new().write(true).open(p.join("data")).unwrap();
    data.write_at(&[1u8; 8192], 4096).unwrap();
    // Replayed where the secondary applied both, the rename would put the
    // new file in the place of the old one.
    fs::rename(p.join("conf"), p.join("conf.bak")).unwrap();
    fs::write(p.join("conf"), b"new conf\n").unwrap();
    fs::write(p.join("new"), vec![2u8; 10_000]).unwrap();
    // Replaces a file whose data the secondary has under that name.
    fs::rename(p.join("new"), p.join("conf")).unwrap();
    fs::rename(p.join("dir"), p.join("dir2")).unwrap();
    // Over one of two hard links: the other keeps the old data.
    fs::rename(p.join("victim"), p.join("linked-a")).unwrap();
    fs::hard_link(p.join("data"), p.join("data-link")).unwrap();
    // A link whose first name is in flight too.
    fs::write(p.join("fresh"), vec![4u8; 5000]).unwrap();
    fs::hard_link(p.join("fresh"), p.join("fresh-link")).unwrap();
    fs::remove_file(p.join("dir2/x")).unwrap();
    data.set_len(100_000).unwrap();
    fs::set_permissions(
        p.join("dir2/y"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    fs::create_dir(p.join("made")).unwrap();
    fs::write(p.join("made/f"), b"made").unwrap();
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        p.join("conf"),
        rustix::fs::CWD,
        p.join("made/f"),
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .unwrap();
    std::os::unix::fs::symlink("conf", p.join("sym")).unwrap();
    rustix::fs::setxattr(
        p.join("data"),
        "user.tag",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    data.write_at(&[3u8; 100], 99_950).unwrap();
}

/// One run: the secondary applied the first `apply` changes in flight.
/// Returns how many changes the operations made.
fn in_flight_run(apply: usize) -> usize {
    let mut pair = Pair::new(|d| {
        random_file(&d.join("data"), MIB, 7);
        fs::write(d.join("conf"), b"old conf\n").unwrap();
        fs::write(d.join("victim"), b"victim\n").unwrap();
        fs::write(d.join("linked-a"), b"shared\n").unwrap();
        fs::hard_link(d.join("linked-a"), d.join("linked-b")).unwrap();
        fs::create_dir(d.join("dir")).unwrap();
        fs::write(d.join("dir/x"), b"x").unwrap();
        fs::write(d.join("dir/y"), b"y").unwrap();
    });
    let (real, first) = pair.secondary();
    let real = Arc::new(real);
    let prefix = Arc::new(Prefix {
        real: real.clone(),
        apply,
        count: Default::default(),
    });
    pair.primary_gen.start_tracking();
    let (log, _) = ChangeLog::open(&pair.state(), TrackingConfig::default()).unwrap();
    let link = Link::mirroring(Arc::new(log), prefix.clone());
    pair.mount = Some(Mirror::mount(&pair.primary, Arc::new(link.clone())).unwrap());
    pair.link = Some(link.clone());
    let p = pair.primary.clone();
    in_flight_operations(&p);
    {
        // The secondary is gone: what it may lack is recorded, then tracked.
        let tree = pair.mount.as_ref().unwrap().tree();
        let _order = tree.lock();
        link.track();
    }
    drop(link);
    let made = prefix.count.load(Ordering::SeqCst);
    drop(prefix);
    drop(real);
    first.join().unwrap().unwrap();
    // More while alone, on top.
    fs::write(p.join("conf"), b"alone\n").unwrap();
    fs::rename(p.join("made"), p.join("made2")).unwrap();

    let (peer, receiver) = pair.secondary();
    let stats = pair.resync(Arc::new(peer), &Progress::default());
    eprintln!(
        "{apply} of {made} applied: resync sent {} B",
        stats.bytes_sent
    );
    assert!(
        stats.bytes_sent < 256 << 10,
        "{} B sent: not the whole data file",
        stats.bytes_sent
    );
    pair.finish(receiver);
    made
}

#[test]
fn changes_in_flight_are_resent_harmlessly_whatever_the_secondary_applied() {
    let made = in_flight_run(usize::MAX);
    assert!(made > 15, "{made} changes");
    for apply in 0..made {
        in_flight_run(apply);
    }
}

/// A resynchronising peer before which, right after the pass ensured the
/// directory itself, the application hard-links `a` (made alone, so not
/// on the secondary yet) to `z` — as the mount does it: under the ordering
/// lock (the pass holds it), announced, applied, then forwarded.
struct LinkDuringResync {
    real: Arc<TcpReplicator>,
    /// Taken when used: the link holds this peer once mirroring.
    link: std::sync::Mutex<Option<Link>>,
    backing: PathBuf,
}

impl holdfast_replication::Replicator for LinkDuringResync {
    fn submit(
        &self,
        change: &holdfast_replication::Change,
    ) -> Result<holdfast_replication::Ack, holdfast_replication::ReplicationError> {
        self.real.submit(change)
    }

    fn applied(&self) -> Option<u64> {
        self.real.applied()
    }
}

impl Peer for LinkDuringResync {
    fn ask(
        &self,
        request: &holdfast_replication::resync::Request,
    ) -> Result<holdfast_replication::resync::Answer, holdfast_replication::ReplicationError> {
        use holdfast_replication::{resync::Request, Change, Intent, Op, Replicator};
        let answer = self.real.ask(request)?;
        let root = matches!(request, Request::Ensure { path, .. } if path.as_os_str().is_empty());
        let link = self.link.lock().unwrap().take_if(|_| root);
        if let Some(link) = link {
            let (from, to) = (Path::new("a"), Path::new("z"));
            link.prepare(&Intent::Move { from, to })?;
            fs::hard_link(self.backing.join(from), self.backing.join(to)).unwrap();
            let op = Op::Link {
                from: from.into(),
                to: to.into(),
            };
            link.replicate(&Change { op, stamps: vec![] })?;
        }
        Ok(answer)
    }
}

/// A live hard link whose first name the secondary lacks yet (made alone,
/// not yet brought by the pass) is skipped there: the pass brings its new
/// name too, as a link.
#[test]
fn a_live_link_to_a_name_not_yet_resynchronised_comes_back_as_a_link() {
    let mut pair = Pair::new(small_files);
    pair.go_alone(TrackingConfig::default());
    fs::write(pair.primary.join("a"), vec![6u8; 9000]).unwrap();
    let (real, receiver) = pair.secondary();
    let link = pair.link.clone().unwrap();
    let peer = Arc::new(LinkDuringResync {
        real: Arc::new(real),
        link: std::sync::Mutex::new(Some(link.clone())),
        backing: pair.backing(),
    });
    let mount = pair.mount.as_ref().unwrap();
    resync(
        &mount.tree(),
        &link,
        peer.clone(),
        pair.primary_gen.current,
        &Scope::Tracked,
        &Progress::default(),
    )
    .unwrap();
    assert!(
        peer.link.lock().unwrap().is_none(),
        "linked during the pass"
    );
    drop((peer, link));
    pair.finish(receiver);
    let (a, z) = (
        fs::metadata(pair.secondary.join("a")).unwrap(),
        fs::metadata(pair.secondary.join("z")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (z.ino(), 2));
}
