//! `holdfast-lab bench-replication`: what synchronous replication costs an
//! application, on real lab hosts. A mirror module runs on two hosts with a
//! replicated directory; on the primary's host the same workloads run in
//! four directories of the same disk: a plain local directory (the
//! baseline), a `bindfs` mount (libfuse's single-threaded passthrough: what
//! a plain FUSE file system costs here), Holdfast's file system mounted
//! with replication off (the FUSE floor) and the replicated directory
//! (mirroring to the secondary over the lab network). Then the resynchronisation of a returning secondary after
//! 1% of a tree changed while ALONE, beside `rsync` of the same change
//! between the same hosts; and the return of a primary killed while
//! mirroring, by its activity log, beside the same return comparing the
//! whole tree.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use holdfast_lab::cluster::{settled, LastResync, MirrorLab, MirrorOptions};
use holdfast_lab::records::Appenders;
use holdfast_lab::{wait_until, Executables};
use rand::{Rng, RngCore, SeedableRng};

/// The replicated directory (on both hosts).
const DATA: &str = "/srv/demo/data";
/// The baseline: a plain directory on the same disk.
const LOCAL: &str = "/srv/local";
/// Holdfast's file system without replication.
const FLOOR: &str = "/srv/floor";
/// A `bindfs` mount of [`BINDFS_REAL`]: a plain passthrough FUSE file system.
const BINDFS: &str = "/srv/bindfs";
const BINDFS_REAL: &str = "/srv/bindfs-real";
const MODULE: &str = "demo";
/// Granularity of the tree's content and of its modifications.
const CHUNK: u64 = 64 << 10;
/// Files in the resynchronisation tree (16 directories of 16).
const TREE_FILES: u64 = 256;
const RSYNC_PORT: u16 = 8730;
/// The first of four PostgreSQL servers' ports.
const PG_PORT: u16 = 5433;

/// What `bench-replication` measures, and how long.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Size of the sequential write (MiB, in 1 MiB writes, then fsync).
    #[arg(long, default_value_t = 512)]
    pub seq_mib: u64,
    /// Length of each timed run (fsync'd writes, create+unlink), seconds.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Length of each pgbench run (seconds); 0 skips pgbench.
    #[arg(long, default_value_t = 15)]
    pub pgbench_seconds: u64,
    /// Runs of each workload per directory (figures are medians); the
    /// order of the directories rotates from round to round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// pgbench scale factor (-s).
    #[arg(long, default_value_t = 10)]
    pub pgbench_scale: u32,
    /// Size of the resynchronised tree (MiB); 0 skips the resync part.
    #[arg(long, default_value_t = 1024)]
    pub tree_mib: u64,
    /// Only the resync part: skips every workload (and pgbench).
    #[arg(long)]
    pub resync_only: bool,
}

/// One of the workloads, run inside a lab host by `bench-io`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Workload {
    /// `mib` 1 MiB writes to a new file, then fsync.
    Seq,
    /// 4 KiB overwrites of a preallocated file, each followed by fsync.
    Fsync,
    /// Create (and close) then unlink an empty file, in a loop.
    Create,
    /// Writes the resynchronisation tree (`mib` MiB over 256 files).
    Tree,
    /// Rewrites 1% of the tree in 64 KiB chunks at random places.
    Modify,
}

/// What one workload run measured (printed as JSON by `bench-io`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct IoResult {
    pub ops: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Latency of each operation (µs), median and 99th percentile.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// `bench-io`: runs one workload in `dir` and prints its result.
pub fn run_io(dir: &Path, workload: Workload, mib: u64, seconds: u64, seed: u64) -> Result<()> {
    let limit = Duration::from_secs(seconds);
    let result = match workload {
        Workload::Seq => sequential(dir, mib),
        Workload::Fsync => fsynced(dir, limit),
        Workload::Create => create_unlink(dir, limit),
        Workload::Tree => write_tree(dir, mib, seed),
        Workload::Modify => modify_tree(dir, mib, seed),
    }
    .with_context(|| format!("{workload:?} in {}", dir.display()))?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn sequential(dir: &Path, mib: u64) -> Result<IoResult> {
    let path = dir.join("seq.bin");
    let buf = vec![0xa5u8; 1 << 20];
    let start = Instant::now();
    let mut f = File::create(&path)?;
    for _ in 0..mib {
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    drop(f);
    let seconds = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(IoResult {
        ops: mib,
        bytes: mib << 20,
        seconds,
        ..IoResult::default()
    })
}

fn fsynced(dir: &Path, limit: Duration) -> Result<IoResult> {
    const SPAN: u64 = 16 << 20;
    let path = dir.join("fsync.bin");
    let f = File::create(&path)?;
    // Allocated beforehand: every target overwrites, as a database does.
    f.write_all_at(&vec![0u8; SPAN as usize], 0)?;
    f.sync_all()?;
    let block = [0x5au8; 4096];
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut offset = 0;
    while start.elapsed() < limit {
        let t = Instant::now();
        f.write_all_at(&block, offset)?;
        f.sync_all()?;
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
        offset = (offset + 4096) % SPAN;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok(IoResult {
        ops: latencies.len() as u64,
        bytes: latencies.len() as u64 * 4096,
        seconds,
        p50_us: Some(at(0.5)),
        p99_us: Some(at(0.99)),
    })
}

fn create_unlink(dir: &Path, limit: Duration) -> Result<IoResult> {
    let sub = dir.join("create");
    std::fs::create_dir_all(&sub)?;
    let start = Instant::now();
    let mut ops = 0;
    while start.elapsed() < limit {
        for i in 0..100 {
            let path = sub.join(format!("f{i}"));
            drop(File::create(&path)?);
            std::fs::remove_file(&path)?;
        }
        ops += 100;
    }
    let seconds = start.elapsed().as_secs_f64();
    std::fs::remove_dir(&sub)?;
    Ok(IoResult {
        ops,
        seconds,
        ..IoResult::default()
    })
}

fn tree_file(dir: &Path, file: u64) -> PathBuf {
    dir.join("tree")
        .join(format!("d{:02}", file / 16))
        .join(format!("f{:02}", file % 16))
}

fn chunks_per_file(mib: u64) -> u64 {
    ((mib << 20) / TREE_FILES / CHUNK).max(1)
}

/// The tree's original content of one chunk: the same for the same seed,
/// so it can be restored elsewhere.
fn original_chunk(seed: u64, file: u64, chunk: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (file << 40) ^ chunk);
    let mut data = vec![0u8; CHUNK as usize];
    rng.fill_bytes(&mut data);
    data
}

/// The chunks the modification rewrites: 1% of the tree, at random.
fn modified_chunks(mib: u64, seed: u64) -> BTreeSet<(u64, u64)> {
    let per_file = chunks_per_file(mib);
    let wanted = (TREE_FILES * per_file / 100).max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(1));
    let mut picked = BTreeSet::new();
    while (picked.len() as u64) < wanted {
        picked.insert((rng.gen_range(0..TREE_FILES), rng.gen_range(0..per_file)));
    }
    picked
}

fn write_tree(dir: &Path, mib: u64, seed: u64) -> Result<IoResult> {
    let per_file = chunks_per_file(mib);
    let start = Instant::now();
    let mut bytes = 0;
    for file in 0..TREE_FILES {
        let path = tree_file(dir, file);
        std::fs::create_dir_all(path.parent().expect("in a directory"))?;
        let mut f = File::create(&path)?;
        // 1 MiB writes, as a copy would do.
        for first in (0..per_file).step_by(16) {
            let mut buf = Vec::with_capacity(16 * CHUNK as usize);
            for chunk in first..(first + 16).min(per_file) {
                buf.extend_from_slice(&original_chunk(seed, file, chunk));
            }
            f.write_all(&buf)?;
            bytes += buf.len() as u64;
        }
    }
    Ok(IoResult {
        ops: TREE_FILES,
        bytes,
        seconds: start.elapsed().as_secs_f64(),
        ..IoResult::default()
    })
}

fn modify_tree(dir: &Path, mib: u64, seed: u64) -> Result<IoResult> {
    let chunks = modified_chunks(mib, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(2));
    let mut data = vec![0u8; CHUNK as usize];
    let start = Instant::now();
    for (file, chunk) in &chunks {
        rng.fill_bytes(&mut data);
        let f = OpenOptions::new().write(true).open(tree_file(dir, *file))?;
        f.write_all_at(&data, chunk * CHUNK)?;
    }
    Ok(IoResult {
        ops: chunks.len() as u64,
        bytes: chunks.len() as u64 * CHUNK,
        seconds: start.elapsed().as_secs_f64(),
        ..IoResult::default()
    })
}

/// Puts back the original content of the modified chunks in `dir` (a copy
/// of the tree after the modification): that copy then differs from the
/// modified tree exactly by the modification.
fn restore_tree(dir: &Path, mib: u64, seed: u64) -> Result<()> {
    for (file, chunk) in modified_chunks(mib, seed) {
        let path = tree_file(dir, file);
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all_at(&original_chunk(seed, file, chunk), chunk * CHUNK)?;
        // Older than the primary's modification, as before it: rsync's
        // quick check (size, mtime in seconds) must see the file changed
        // even when all this happened within one second.
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))?;
    }
    Ok(())
}

/// `bench-mount`: Holdfast's file system over `dir` with replication off
/// — or to a receiver of `replica` in this process, over loopback —, until
/// standard input closes.
pub fn run_floor_mount(dir: &Path, replica: Option<&Path>) -> Result<()> {
    use holdfast_replication::{AckMode, Receiver, Replicator, TcpReplicator, Unreplicated};
    let replicator: std::sync::Arc<dyn Replicator> = match replica {
        None => std::sync::Arc::new(Unreplicated),
        Some(replica) => {
            let key = holdfast_key::ClusterKey::generate();
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let receiver = Receiver::new(replica, key.clone(), AckMode::Receipt)?;
            // Ends with the connection, when the mount goes.
            std::thread::spawn(move || match listener.accept() {
                Ok((stream, _)) => receiver.serve_connection(stream).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            });
            std::sync::Arc::new(TcpReplicator::connect(addr, &key)?)
        }
    };
    let guard = holdfast_replication::Mirror::mount(dir, replicator)?;
    println!("mounted");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    // Returns at end of input: the benchmark is done with the mount.
    let _ = std::io::stdin().read_to_end(&mut sink);
    guard.unmount()?;
    Ok(())
}

/// The floor's mount on the primary's host; dropping it unmounts.
struct FloorMount {
    child: Child,
}

impl FloorMount {
    fn start(cluster: &MirrorLab, host: &str, lab_tool: &Path) -> Result<Self> {
        let mut child = cluster
            .lab
            .command(host, lab_tool)?
            .args(["bench-mount", "--dir", FLOOR])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the floor's mount")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("floor mount output")?;
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "mounted" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the floor's mount on {host}:{FLOOR} failed");
        }
        Ok(FloorMount { child })
    }
}

impl Drop for FloorMount {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let done = wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `bindfs` (libfuse 2, one thread, 128 KiB writes) of [`BINDFS_REAL`] on
/// [`BINDFS`] on a host; dropping it unmounts.
struct BindfsMount<'a> {
    cluster: &'a MirrorLab,
    host: &'a str,
    child: Child,
}

impl<'a> BindfsMount<'a> {
    fn start(cluster: &'a MirrorLab, host: &'a str) -> Result<Self> {
        sh(cluster, host, &format!("mkdir -p {BINDFS} {BINDFS_REAL}"))?;
        let child = cluster
            .lab
            .command(host, "bindfs")?
            .args(["-f", "-o", "big_writes", BINDFS_REAL, BINDFS])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting bindfs (is it installed? ./scripts/bench installs it)")?;
        let this = BindfsMount {
            cluster,
            host,
            child,
        };
        let mounted = wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
            sh(cluster, host, &format!("mountpoint -q {BINDFS}")).is_ok()
        });
        if !mounted {
            bail!("bindfs on {host}:{BINDFS} did not mount");
        }
        Ok(this)
    }
}

impl Drop for BindfsMount<'_> {
    fn drop(&mut self) {
        // bindfs ends once its mount is gone.
        let _ = sh(self.cluster, self.host, &format!("umount {BINDFS}"));
        let done = wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !done {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = sh(self.cluster, self.host, &format!("umount -l {BINDFS}"));
        }
    }
}

/// Runs `script` with `sh -c` on `host`; fails with its output unless it succeeds.
fn sh(cluster: &MirrorLab, host: &str, script: &str) -> Result<String> {
    let out = cluster.sh(host, script)?;
    if !out.status.success() {
        bail!(
            "on {host}: `{script}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn io(
    cluster: &MirrorLab,
    host: &str,
    lab_tool: &Path,
    dir: &str,
    workload: &str,
    (mib, seconds, seed): (u64, u64, u64),
) -> Result<IoResult> {
    let out = cluster
        .lab
        .command(host, lab_tool)?
        .args(["bench-io", "--dir", dir, "--workload", workload])
        .args(["--mib", &mib.to_string(), "--seconds", &seconds.to_string()])
        .args(["--seed", &seed.to_string()])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "bench-io {workload} in {dir} on {host} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The newest PostgreSQL server programs installed (Debian's layout).
fn postgres_bin() -> Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (/usr/lib/postgresql); ./scripts/bench installs it")?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pgbench").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL with pgbench under /usr/lib/postgresql")
}

/// A PostgreSQL server (user postgres) with its data directory in a
/// target directory, initialised for pgbench; dropping it stops the server.
struct Postgres<'a> {
    cluster: &'a MirrorLab,
    host: &'a str,
    bin: PathBuf,
    data: String,
    run: String,
    port: u16,
}

const AS_POSTGRES: &str = "runuser -u postgres --";

impl<'a> Postgres<'a> {
    fn start(
        cluster: &'a MirrorLab,
        host: &'a str,
        (dir, name, port): (&str, &str, u16),
        scale: u32,
    ) -> Result<Self> {
        let this = Postgres {
            cluster,
            host,
            bin: postgres_bin()?,
            data: format!("{dir}/pg"),
            run: format!("/srv/pgrun-{name}"),
            port,
        };
        let (bin, data, run) = (this.bin.display(), &this.data, &this.run);
        sh(
            cluster,
            host,
            &format!(
                "set -e
mkdir -p {data} {run}; chown postgres:postgres {data} {run}; chmod 700 {data}
{AS_POSTGRES} {bin}/initdb -D {data} -A trust -U postgres --no-sync >/dev/null
{AS_POSTGRES} {bin}/pg_ctl -D {data} -l {run}/log -o '-p {port} -k {run} -c listen_addresses=' -w -t 120 start >/dev/null
{AS_POSTGRES} {bin}/pgbench -h {run} -p {port} -i -q -s {scale} postgres >/dev/null 2>&1"
            ),
        )?;
        Ok(this)
    }

    /// `pgbench -c4` for `seconds`: transactions per second.
    fn pgbench(&self, seconds: u64) -> Result<f64> {
        let out = sh(
            self.cluster,
            self.host,
            &format!(
                "{AS_POSTGRES} {}/pgbench -h {} -p {} -c 4 -j 2 -T {seconds} postgres 2>&1",
                self.bin.display(),
                self.run,
                self.port
            ),
        )?;
        out.lines()
            .find_map(|l| {
                l.strip_prefix("tps = ")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .with_context(|| format!("no tps in pgbench's output: {out}"))
    }
}

impl Drop for Postgres<'_> {
    fn drop(&mut self) {
        let _ = sh(
            self.cluster,
            self.host,
            &format!(
                "{AS_POSTGRES} {}/pg_ctl -D {} -m fast -w stop >/dev/null 2>&1",
                self.bin.display(),
                self.data
            ),
        );
    }
}

/// Runs `measure` on each target `rounds` times, the order rotating from
/// round to round (so no target always runs first, after the same one,
/// or on a disk still busy with the previous run): the results per target.
fn rounds<T>(
    rounds: usize,
    targets: usize,
    mut measure: impl FnMut(usize) -> Result<T>,
) -> Result<Vec<Vec<T>>> {
    let mut results: Vec<Vec<T>> = (0..targets).map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..targets {
            let target = (round + k) % targets;
            results[target].push(measure(target)?);
        }
    }
    Ok(results)
}

/// The median of `f` over each target's results.
fn medians<T>(results: &[Vec<T>], f: impl Fn(&T) -> f64) -> [f64; TARGETS] {
    std::array::from_fn(|k| crate::stats::median(&results[k].iter().map(&f).collect::<Vec<_>>()))
}

/// The directories the workloads run in, in the table's order.
const TARGETS: usize = 4;

/// A figure per target: local, bindfs, floor, replicated.
struct Row {
    what: &'static str,
    values: [f64; TARGETS],
    /// Higher is better (throughput) or lower (latency).
    higher_better: bool,
    /// Minimum replicated / local ratio wanted (issue 3), if any.
    target: Option<f64>,
}

/// The resynchronisation's figures, as the primary reports them.
struct Resync {
    /// From `holdfast start` on the returning node to mirroring again.
    return_seconds: f64,
    span: Span,
}

/// A resynchronisation, from the primary's state: how long it took, what
/// it sent and compared, and how it went about it.
struct Span {
    seconds: f64,
    bytes_sent: u64,
    bytes_compared: u64,
    how: String,
}

impl From<LastResync> for Span {
    fn from(r: LastResync) -> Self {
        Span {
            seconds: r.seconds,
            bytes_sent: r.bytes_sent,
            bytes_compared: r.bytes_compared,
            how: r.basis,
        }
    }
}

/// Waits until `host` reports a resynchronisation other than `before`
/// (its last one when the wait began).
fn wait_resynchronised(
    cluster: &MirrorLab,
    host: &str,
    before: Option<LastResync>,
) -> Result<Span> {
    let mut last = None;
    // Not faster: each poll is a `holdfast state` beside the workload.
    let finished = wait_until(Duration::from_secs(1800), Duration::from_millis(50), || {
        last = cluster
            .last_resync(host)
            .filter(|r| Some(r) != before.as_ref());
        last.is_some()
    });
    match last {
        Some(resync) if finished => Ok(resync.into()),
        _ => bail!("{host} did not finish resynchronising its secondary within 30 min"),
    }
}

/// Writers append records on `prim` while it mirrors, its host is killed
/// (`kill -9`), `second` takes over, and `prim`'s daemon starts again: the
/// new primary's resynchronisation of it. With `drop_log`, its activity
/// log is removed first (as before it existed): the whole tree compared.
fn crash_return(
    cluster: &mut MirrorLab,
    (prim, second): (&'static str, &'static str),
    drop_log: bool,
) -> Result<Span> {
    let settle = Duration::from_secs(120);
    cluster.wait_mirroring(prim, settle)?;
    let dir = format!("{DATA}/crash-{prim}");
    sh(cluster, prim, &format!("mkdir -p {dir}"))?;
    let writers = Appenders::start(cluster, prim, &dir, 4, 512)?;
    if !wait_until(Duration::from_secs(30), Duration::from_millis(10), || {
        writers.count() > 200
    }) {
        bail!("the writers on {prim} made no progress");
    }
    let before = cluster.last_resync(second);
    cluster.kill(prim)?;
    drop(writers.acknowledged(None));
    cluster.wait_states(settle, |a, b| {
        settled(if second == "node1" { a } else { b }, "ALONE")
    })?;
    if drop_log {
        let log = cluster.lab.host_dir(prim)?.join(format!(
            "var-lib-holdfast/modules/{MODULE}/replication/0/log/activity-mirror.log"
        ));
        std::fs::remove_file(&log).with_context(|| format!("removing {}", log.display()))?;
    }
    cluster.start_daemon(prim)?;
    wait_resynchronised(cluster, second, before)
}

struct Rsync {
    seconds: f64,
    bytes_sent: u64,
    files: u64,
}

fn resync_part(
    cluster: &mut MirrorLab,
    lab_tool: &Path,
    (prim, second): (&'static str, &'static str),
    mib: u64,
) -> Result<(f64, Resync, Rsync, [Span; 2])> {
    let seed = rand::random::<u32>() as u64;
    let settle = Duration::from_secs(120);
    eprintln!("resync: writing a {mib} MiB tree through the mirror");
    let tree = io(cluster, prim, lab_tool, DATA, "tree", (mib, 0, seed))?;
    let tree_mbps = tree.bytes as f64 / tree.seconds / 1e6;
    cluster.run_cli_checked(second, &["stop", "-m", MODULE])?;
    cluster.wait_states(settle, |a, b| {
        let p = if prim == "node1" { a } else { b };
        settled(p, "ALONE")
    })?;
    eprintln!("resync: {second} stopped, {prim} ALONE; modifying 1% of the tree");
    io(cluster, prim, lab_tool, DATA, "modify", (mib, 0, seed))?;
    let done_before = cluster.last_resync(prim);
    let returned = Instant::now();
    cluster.run_cli_checked(second, &["start", "-m", MODULE])?;
    let span = wait_resynchronised(cluster, prim, done_before)?;
    let resync = Resync {
        return_seconds: returned.elapsed().as_secs_f64(),
        span,
    };
    // A primary killed while mirroring returns with its activity log
    // removed (the whole tree compared), then the other way round by its
    // activity log: that of `second`, primary only since the first return
    // (its hot regions are its own workload's, not the tree written
    // through the mirror just before).
    eprintln!("resync: {prim} killed while mirroring, returning without its activity log");
    let whole = crash_return(cluster, (prim, second), true)?;
    eprintln!("resync: {second} killed while mirroring, returning by its activity log");
    let by_log = crash_return(cluster, (second, prim), false)?;
    cluster.wait_mirroring(prim, settle)?;

    // rsync of the same change between the same hosts: the secondary's copy
    // gets its original chunks back (so it differs by the modification),
    // and rsync brings it up to date from the primary's real tree.
    for host in [prim, second] {
        cluster.run_cli_checked(host, &["stop", "-m", MODULE])?;
    }
    cluster.wait_states(settle, |a, b| settled(a, "STOP") && settled(b, "STOP"))?;
    let copy = cluster.host_path(second, DATA)?;
    restore_tree(&copy, mib, seed)?;
    let conf = cluster.lab.host_dir(second)?.join("srv/rsyncd.conf");
    std::fs::write(
        &conf,
        format!("[bench]\npath = {DATA}\nread only = false\nuse chroot = false\nuid = root\ngid = root\n"),
    )?;
    let address = cluster.lab.address(second, 0)?;
    let mut daemon = RsyncDaemon(
        cluster
            .lab
            .command(second, "rsync")?
            .args(["--daemon", "--no-detach", "--config", "/srv/rsyncd.conf"])
            .args(["--address", &address.to_string(), "--port"])
            .arg(RSYNC_PORT.to_string())
            .stdin(Stdio::null())
            .spawn()
            .context("starting the rsync daemon (is rsync installed?)")?,
    );
    let url = format!("rsync://{address}:{RSYNC_PORT}/bench");
    let listening = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        sh(cluster, prim, &format!("rsync {url}/ >/dev/null")).is_ok()
    });
    if !listening {
        bail!("the rsync daemon on {second} does not answer");
    }
    let start = Instant::now();
    let out = sh(
        cluster,
        prim,
        &format!("rsync -a --stats {DATA}/tree/ {url}/tree/"),
    )?;
    let rsync_seconds = start.elapsed().as_secs_f64();
    daemon.stop();
    let stat = |label: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|v| v.split_whitespace().next())
            .map(|v| v.replace(',', ""))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rsync = Rsync {
        seconds: rsync_seconds,
        bytes_sent: stat("Total bytes sent: "),
        files: stat("Number of regular files transferred: "),
    };
    if rsync.files == 0 {
        bail!("rsync transferred no file: the copy was not restored?\n{out}");
    }
    Ok((tree_mbps, resync, rsync, [by_log, whole]))
}

struct RsyncDaemon(Child);

impl RsyncDaemon {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn bench(exes: &Executables, settings: &Settings) -> Result<()> {
    let options = MirrorOptions {
        // Generous: the workloads keep both cores busy, and a false
        // failover would spoil the figures.
        pulse: Duration::from_millis(500),
        timeout: Duration::from_secs(10),
        tail: format!("\n[replication]\nport = 4900\n\n[[replicated]]\ndir = \"{DATA}\"\n"),
        ..MirrorOptions::default()
    };
    eprintln!("starting a mirror module with {DATA} replicated on two lab hosts...");
    let (mut cluster, prim, second) = MirrorLab::started(exes, options, Duration::from_secs(60))?;
    let s = settings;
    let rows = if s.resync_only {
        Vec::new()
    } else {
        workloads(&cluster, prim, &exes.lab, s)?
    };
    let resync = if s.tree_mib > 0 {
        Some(resync_part(
            &mut cluster,
            &exes.lab,
            (prim, second),
            s.tree_mib,
        )?)
    } else {
        None
    };

    if !rows.is_empty() {
        println!(
            "\nReplication: the same workloads on the primary's lab host in a plain local directory,"
        );
        println!(
            "a bindfs mount (libfuse passthrough), Holdfast's file system with replication off (FUSE"
        );
        println!(
            "floor), and the replicated directory (mirrored to the secondary host, acknowledged on"
        );
        println!("receipt). Each figure is the");
        println!(
            "median of {} runs, the directories taking turns.\n",
            s.rounds
        );
        println!("| workload | local | bindfs | FUSE floor | replicated | bindfs / local | floor / local | replicated / local | target | met |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for row in &rows {
            let [local, bindfs, floor, repl] = row.values;
            let ratio = |v: f64| v / local;
            let (target, met) = match row.target {
                Some(t) => (
                    format!("≥ {:.0}%", t * 100.0),
                    if ratio(repl) >= t { "yes" } else { "no" }.to_string(),
                ),
                None => ("—".into(), "—".into()),
            };
            let note = if row.higher_better {
                ""
            } else {
                " (lower is better)"
            };
            println!(
                "| {}{note} | {} | {} | {} | {} | {:.0}% | {:.0}% | {:.0}% | {target} | {met} |",
                row.what,
                fmt(local),
                fmt(bindfs),
                fmt(floor),
                fmt(repl),
                ratio(bindfs) * 100.0,
                ratio(floor) * 100.0,
                ratio(repl) * 100.0,
            );
        }
    }
    if let Some((tree_mbps, resync, rsync, [by_log, whole])) = resync {
        let mib = s.tree_mib;
        println!(
            "\nResynchronisation after 1% of a {mib} MiB tree ({} files) changed while ALONE",
            TREE_FILES
        );
        println!(
            "(64 KiB rewrites at random places), beside `rsync -a` of the same change between the same hosts.\n"
        );
        println!("| method | time | bytes sent | rsync time / resync time | target | met |");
        println!("|---|---|---|---|---|---|");
        let speedup = rsync.seconds / resync.span.seconds;
        println!(
            "| Holdfast resynchronisation ({}) | {:.2} s | {} | {:.1}× | ≥ 5× | {} |",
            resync.span.how,
            resync.span.seconds,
            resync.span.bytes_sent,
            speedup,
            if speedup >= 5.0 { "yes" } else { "no" }
        );
        println!(
            "| rsync -a ({} files transferred) | {:.2} s | {} | 1.0× | — | — |",
            rsync.files, rsync.seconds, rsync.bytes_sent
        );
        println!(
            "\nFrom `holdfast start` on the returning node to mirroring again: {:.1} s. \
             Writing the tree through the mirror: {tree_mbps:.0} MB/s.",
            resync.return_seconds
        );
        println!(
            "\nThe return of a primary killed (`kill -9` of its host) while mirroring, 4 writers appending"
        );
        println!(
            "512-byte records with fsync: resynchronised by its activity log, beside the same return with"
        );
        println!(
            "that log removed (the whole {mib} MiB tree compared, as before the log existed).\n"
        );
        println!("| method | time | bytes sent | bytes compared | whole-tree time / time |");
        println!("|---|---|---|---|---|");
        for span in [&by_log, &whole] {
            println!(
                "| {} | {:.2} s | {} | {} | {:.1}× |",
                span.how,
                span.seconds,
                span.bytes_sent,
                span.bytes_compared,
                whole.seconds / span.seconds.max(1e-3)
            );
        }
    }
    Ok(())
}

/// The workloads in the four directories: one table row each.
fn workloads(cluster: &MirrorLab, prim: &str, lab_tool: &Path, s: &Settings) -> Result<Vec<Row>> {
    sh(cluster, prim, &format!("mkdir -p {LOCAL} {FLOOR}"))?;
    let floor = FloorMount::start(cluster, prim, lab_tool)?;
    let bindfs = BindfsMount::start(cluster, prim)?;
    let targets: [&str; TARGETS] = [LOCAL, BINDFS, FLOOR, DATA];
    let each = |workload: &str, mib: u64| -> Result<Vec<Vec<IoResult>>> {
        rounds(s.rounds, targets.len(), |k| {
            eprintln!("{workload} in {}", targets[k]);
            io(
                cluster,
                prim,
                lab_tool,
                targets[k],
                workload,
                (mib, s.seconds, 0),
            )
        })
    };
    let per_sec = |r: &IoResult| r.ops as f64 / r.seconds;
    let mut rows = Vec::new();
    let seq = each("seq", s.seq_mib)?;
    rows.push(Row {
        what: "sequential 1 MiB writes + fsync (MB/s)",
        values: medians(&seq, |r| r.bytes as f64 / r.seconds / 1e6),
        higher_better: true,
        target: Some(0.60),
    });
    let fsync = each("fsync", 0)?;
    rows.push(Row {
        what: "4 KiB write + fsync (IOPS)",
        values: medians(&fsync, per_sec),
        higher_better: true,
        target: Some(0.70),
    });
    rows.push(Row {
        what: "4 KiB write + fsync, p50 latency (µs)",
        values: medians(&fsync, |r| r.p50_us.unwrap_or(f64::NAN)),
        higher_better: false,
        target: None,
    });
    rows.push(Row {
        what: "4 KiB write + fsync, p99 latency (µs)",
        values: medians(&fsync, |r| r.p99_us.unwrap_or(f64::NAN)),
        higher_better: false,
        target: None,
    });
    let create = each("create", 0)?;
    rows.push(Row {
        what: "file create + unlink (pairs/s)",
        values: medians(&create, per_sec),
        higher_better: true,
        target: Some(0.25),
    });
    if s.pgbench_seconds > 0 {
        let names = ["local", "bindfs", "floor", "replicated"];
        let mut servers = Vec::new();
        for (k, (dir, name)) in targets.iter().zip(names).enumerate() {
            eprintln!("pgbench: initdb and pgbench -i in {dir}");
            let port = PG_PORT + k as u16;
            servers.push(Postgres::start(
                cluster,
                prim,
                (dir, name, port),
                s.pgbench_scale,
            )?);
        }
        let tps = rounds(s.rounds, targets.len(), |k| {
            eprintln!("pgbench in {}", targets[k]);
            servers[k].pgbench(s.pgbench_seconds)
        })?;
        drop(servers);
        rows.push(Row {
            what: "pgbench -c4 (TPS)",
            values: medians(&tps, |t| *t),
            higher_better: true,
            target: Some(0.55),
        });
    }
    drop(bindfs);
    drop(floor);
    Ok(rows)
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
