//! The daemon's side of file replication for one mirror module: which
//! role runs what, driven by the module task after every event.
//!
//! - SECOND (and WAIT): one [`Receiver`] thread per replicated directory,
//!   listening on the node's addresses at the directory's replication port,
//!   accepting only the peer's addresses, applying into the real directory.
//! - Primary (`AcquirePrimaryResources`): each directory is mounted with
//!   [`Mirror::mount`] over a [`Link`] that tracks changes (durable change
//!   log) until a secondary is connected; a connector thread per directory
//!   connects to the peer when it is SECOND, exchanges generations,
//!   [`decide`]s, resynchronises (Forward, then Mirror) and goes back to
//!   tracking when the connection breaks. `ReleasePrimaryResources`
//!   unmounts.
//! - Data state: whether this node may be promoted, from the generation
//!   records at start; false on a SECOND until a resynchronisation
//!   completes.
//!
//! Per directory `i`, state lives in `<module>/replication/<i>/`
//! (`generations`, `log/`), never inside a replicated directory. Every
//! blocking step (network, resync) runs on threads of its own; mounting and
//! stopping threads are short and bounded.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use holdfast_config::{AckPolicy, ModuleConfig, OnSecondaryFailure};
use holdfast_membership::{ClusterKey, LogLevel, State};
use holdfast_replication::resync::{Answer, Request};
use holdfast_replication::{
    decide, plan, resync, AckMode, ChangeLog, Decision, Exclusions, GenerationStore, Generations,
    Link, LinkMode, Mirror, MountGuard, OnFailure, Peer, Plan, Progress, Receiver, ReceiverError,
    Recovery, Scope, TcpReplicator, TrackedSummary, TrackingConfig, Tree,
};

use crate::modlog::ModuleLog;
use crate::peer_fence::PeerFence;

/// What a replicated directory is doing on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Neither primary nor secondary.
    Idle,
    /// SECOND: applying what the primary sends.
    Receiving,
    /// Primary without a secondary (ALONE): changes tracked for later.
    Tracking,
    /// Primary bringing the secondary up to date.
    Resynchronising,
    /// Primary with an up-to-date secondary: every change acknowledged by it.
    Mirroring,
    /// Primary whose live secondary failed, `on_secondary_failure = block`:
    /// changes wait until it is resynchronised (or declared lost).
    Holding,
}

/// A reading of a resynchronisation's progress.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResyncProgress {
    pub bytes_total: u64,
    pub bytes_left: u64,
    pub bytes_sent: u64,
    /// Bytes examined per second since the start.
    pub rate: f64,
    pub eta_seconds: Option<f64>,
}

impl ResyncProgress {
    /// Done, as a fraction of the total (0 before anything is known).
    pub fn fraction(&self) -> f64 {
        if self.bytes_total == 0 {
            0.0
        } else {
            (self.bytes_total - self.bytes_left) as f64 / self.bytes_total as f64
        }
    }

    /// "37% (12.0 MiB left of 19.1 MiB, 8.2 MiB/s, about 2 s left)".
    pub fn describe(&self) -> String {
        let eta = match self.eta_seconds {
            Some(s) => format!(", about {} s left", s.ceil() as u64),
            None => String::new(),
        };
        format!(
            "{:.0}% ({} left of {}, {}/s{eta})",
            self.fraction() * 100.0,
            bytes(self.bytes_left as f64),
            bytes(self.bytes_total as f64),
            bytes(self.rate),
        )
    }
}

/// "1 file", "2 files".
fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `n` bytes with a binary unit, for people.
fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl From<holdfast_replication::ProgressReport> for ResyncProgress {
    fn from(r: holdfast_replication::ProgressReport) -> Self {
        ResyncProgress {
            bytes_total: r.bytes_total,
            bytes_left: r.bytes_left,
            bytes_sent: r.bytes_sent,
            rate: r.rate,
            eta_seconds: r.eta.map(|d| d.as_secs_f64()),
        }
    }
}

/// While ALONE (or holding writes): what the next resynchronisation will
/// send, from the change log (SafeKit's `rfsdiff`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrackedChanges {
    #[serde(flatten)]
    pub summary: TrackedSummary,
    /// The last resynchronisation's rate (bytes examined per second), if
    /// one ran since the daemon started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// At that rate, when the figures are the whole of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
}

impl TrackedChanges {
    fn new(summary: TrackedSummary, rate: Option<f64>) -> Self {
        let work = summary.bytes + summary.bytes_compared;
        let eta_seconds = rate
            .filter(|r| *r > 0.0 && work > 0 && summary.known())
            .map(|r| work as f64 / r);
        TrackedChanges {
            summary,
            rate,
            eta_seconds,
        }
    }

    /// "12 files, 3.2 MiB to send since the secondary left"; never a
    /// figure where only a comparison will tell.
    pub fn describe(&self) -> String {
        let s = &self.summary;
        if s.everything {
            return "what changed since the secondary left is unknown until compared (change tracking was lost: every file is compared by checksum)".into();
        }
        let mut parts = vec![format!(
            "{}, {} to send",
            counted(s.files, "file", "files"),
            bytes(s.bytes as f64)
        )];
        if s.bytes_compared > 0 {
            parts.push(format!(
                "{} to compare by checksum",
                bytes(s.bytes_compared as f64)
            ));
        }
        if s.entries > 0 {
            parts.push(counted(s.entries, "entry", "entries"));
        }
        if s.moves > 0 {
            parts.push(counted(s.moves, "rename or link", "renames or links"));
        }
        let mut text = format!("{} since the secondary left", parts.join(", "));
        if s.directories > 0 {
            text.push_str(&format!(
                ", and {} compared entry by entry (what differs there is unknown until compared)",
                counted(s.directories, "directory", "directories")
            ));
        }
        if s.linked {
            text.push_str(", and hard-linked files compared (unknown until compared)");
        }
        if let (Some(eta), Some(rate)) = (self.eta_seconds, self.rate) {
            text.push_str(&format!(
                ": about {} s at the last resynchronisation's {}/s",
                eta.ceil() as u64,
                bytes(rate)
            ));
        }
        text
    }
}

/// One replicated directory in `holdfast state`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DirStatus {
    pub dir: PathBuf,
    pub activity: Activity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ResyncProgress>,
    /// While resynchronising: what it covers ("tracked changes", "...
    /// activity log: N regions", "comparing checksums: why").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<String>,
    /// What keeps it from mirroring (a refusal, the secondary unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// While tracking or holding: what the secondary will be sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracked: Option<TrackedChanges>,
}

#[derive(Debug)]
struct LiveDir {
    dir: PathBuf,
    activity: Activity,
    progress: Option<Arc<Progress>>,
    basis: Option<String>,
    problem: Option<String>,
    /// While primary: its change log and directory, for [`TrackedChanges`].
    primary: Option<(Link, Tree)>,
    /// The last resynchronisation's rate, bytes per second.
    last_rate: Option<f64>,
}

/// The live status of a module's replicated directories, shared with the
/// API (which reads it) and the replication threads (which update it).
#[derive(Debug, Clone)]
pub struct ReplicationStatus(Arc<Mutex<Vec<LiveDir>>>);

impl ReplicationStatus {
    fn new(dirs: &[Dir]) -> Self {
        ReplicationStatus(Arc::new(Mutex::new(
            dirs.iter()
                .map(|d| LiveDir {
                    dir: d.path.clone(),
                    activity: Activity::Idle,
                    progress: None,
                    basis: None,
                    problem: None,
                    primary: None,
                    last_rate: None,
                })
                .collect(),
        )))
    }

    fn set(&self, index: usize, activity: Activity, progress: Option<Arc<Progress>>) {
        if let Some(d) = lock(&self.0).get_mut(index) {
            if activity != d.activity {
                d.problem = None;
            }
            d.activity = activity;
            d.basis = progress.as_ref().and(d.basis.take());
            d.progress = progress;
        }
    }

    /// What the resynchronisation about to start covers.
    fn basis(&self, index: usize, basis: String) {
        if let Some(d) = lock(&self.0).get_mut(index) {
            d.basis = Some(basis);
        }
    }

    fn problem(&self, index: usize, problem: Option<String>) {
        if let Some(d) = lock(&self.0).get_mut(index) {
            d.problem = problem;
        }
    }

    /// The directory is mounted as primary (`None`: no longer).
    fn primary(&self, index: usize, primary: Option<(Link, Tree)>) {
        if let Some(d) = lock(&self.0).get_mut(index) {
            d.primary = primary;
        }
    }

    fn last_rate(&self, index: usize) -> Option<f64> {
        lock(&self.0).get(index).and_then(|d| d.last_rate)
    }

    /// A resynchronisation completed at `rate` bytes per second.
    fn resynchronised(&self, index: usize, rate: f64) {
        if let Some(d) = lock(&self.0).get_mut(index) {
            // One with nothing to examine measured nothing.
            if rate > 0.0 {
                d.last_rate = Some(rate);
            }
        }
    }

    pub fn snapshot(&self) -> Vec<DirStatus> {
        let read: Vec<_> = lock(&self.0)
            .iter()
            .map(|d| {
                let status = DirStatus {
                    dir: d.dir.clone(),
                    activity: d.activity,
                    progress: d.progress.as_ref().map(|p| p.report().into()),
                    basis: d.basis.clone(),
                    problem: d.problem.clone(),
                    tracked: None,
                };
                let tracking = matches!(d.activity, Activity::Tracking | Activity::Holding);
                let primary = d.primary.clone().filter(|_| tracking);
                (status, primary, d.last_rate)
            })
            .collect();
        // Outside the lock: the change log's counts (and a few sizes).
        read.into_iter()
            .map(|(mut status, primary, rate)| {
                status.tracked = primary.map(|(link, tree)| {
                    TrackedChanges::new(holdfast_replication::tracked(&tree, link.log()), rate)
                });
                status
            })
            .collect()
    }
}

const POLL: Duration = Duration::from_millis(50);
const BREAK_POLL: Duration = Duration::from_millis(5);
const RETRY: Duration = Duration::from_millis(500);
/// How long a stopping receiver may take to apply what it received and
/// tell the primary, before its connection is closed.
const LAST_WORD: Duration = Duration::from_secs(5);
/// How often a running resynchronisation logs its progress.
const PROGRESS_LOG: Duration = Duration::from_secs(5);

/// One replicated directory's fixed facts.
#[derive(Debug, Clone)]
struct Dir {
    index: usize,
    path: PathBuf,
    port: u16,
    state: PathBuf,
    /// What of it is not replicated.
    exclusions: Exclusions,
}

impl Dir {
    /// Present while this node keeps the directory read-only ([`ReadOnly`]):
    /// a daemon killed meanwhile leaves the mount, detached at the next start.
    fn read_only_marker(&self) -> PathBuf {
        self.state.join("read-only")
    }

    /// The copy's record, made or updated from the directory when nothing
    /// was ever recorded for it: files found there (put before the module
    /// first ran, or while it was stopped) are data of an unknown lineage,
    /// never overwritten without the administrator.
    fn record_unknown_data(&self) -> Result<Generations, String> {
        let store = self.store();
        let recorded = store.load().map_err(|e| e.to_string())?;
        if let Some(g) = recorded.as_ref().filter(|g| !g.is_blank()) {
            return Ok(g.clone());
        }
        let has_data = std::fs::read_dir(&self.path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        let g = match recorded {
            Some(g) if !has_data => g,
            _ => Generations::fresh(has_data),
        };
        store.save(&g).map_err(|e| e.to_string())?;
        Ok(g)
    }

    /// Its change log, and the activity log kept while mirroring.
    fn log_dir(&self) -> PathBuf {
        self.state.join("log")
    }

    fn store(&self) -> GenerationStore {
        GenerationStore::new(&self.state.join("generations"))
    }
}

/// What one module's replication is doing.
pub struct Replication {
    module: String,
    key: ClusterKey,
    ack: AckMode,
    dirs: Vec<Dir>,
    local_addresses: Vec<IpAddr>,
    peer_addresses: Vec<IpAddr>,
    log: ModuleLog,
    receivers: Vec<ReceiverTask>,
    primary: Vec<PrimaryDir>,
    policy: FailurePolicy,
    /// Per directory, set by its receiver: false from the start of a
    /// resynchronisation into this node (or a change that failed to apply)
    /// until one completes.
    synced: Vec<Arc<AtomicBool>>,
    /// What the state machine was last told of them (SECOND).
    current: bool,
    /// Shared with connectors: the peer is SECOND.
    peer_second: Arc<AtomicBool>,
    last_state: State,
    receiver_error_logged: bool,
    status: ReplicationStatus,
    /// With a witness: the peer's copy is fenced before changes it lacks
    /// are acknowledged.
    fence: Arc<PeerFence>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("module", &self.module)
            .field("dirs", &self.dirs)
            .field("receivers", &self.receivers.len())
            .field("mounted", &self.primary.len())
            .finish()
    }
}

struct ReceiverTask {
    receiver: Arc<Receiver>,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
    /// Removed after the thread ended.
    read_only: Option<ReadOnly>,
}

impl ReceiverTask {
    /// `sync`: a clean stop (not a promotion, which must not wait for the
    /// disk): what was applied goes to disk first, recorded.
    fn stop(mut self, log: &ModuleLog, sync: bool) {
        self.stop.store(true, Ordering::SeqCst);
        let stream = lock(&self.current).take();
        if let Some(stream) = &stream {
            // Reading only: what was received is applied, and the primary
            // told so, before the connection closes.
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
        if let Some(t) = self.thread.take() {
            // Bounded: a primary gone without a word (its host cut off) must
            // not hold the stop in a write to it.
            let deadline = std::time::Instant::now() + LAST_WORD;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(stream) = &stream {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            let _ = t.join();
        }
        // So a restart of this host does not make the next
        // resynchronisation compare checksums.
        if sync {
            if let Err(e) = self.receiver.sync() {
                log.write(LogLevel::Error, &e.to_string());
            }
        }
        if let Some(read_only) = self.read_only.take() {
            read_only.remove(log);
        }
    }
}

/// A read-only bind mount of a replicated directory over itself: local
/// processes cannot change the SECOND's copy, while its receiver writes
/// underneath through the directory descriptor it opened before.
struct ReadOnly {
    path: PathBuf,
    marker: PathBuf,
}

impl ReadOnly {
    /// Call only after the receiver opened the directory.
    fn mount(dir: &Dir) -> Result<Self, String> {
        use nix::mount::{mount, MsFlags};
        let marker = dir.read_only_marker();
        // Before mounting: a crash right after leaves the marker to act on.
        std::fs::write(&marker, b"").map_err(|e| format!("{}: {e}", marker.display()))?;
        let none = None::<&str>;
        let this = ReadOnly {
            path: dir.path.clone(),
            marker,
        };
        mount(Some(&dir.path), &dir.path, none, MsFlags::MS_BIND, none)
            .map_err(|e| format!("read-only mount of {}: {e}", dir.path.display()))?;
        // A bind mount takes its own flags only at a remount.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(none, &dir.path, none, flags, none)
            .map_err(|e| format!("read-only mount of {}: {e}", dir.path.display()))?;
        Ok(this)
    }

    fn remove(mut self, log: &ModuleLog) {
        if let Err(e) = self.unmount() {
            log.write(LogLevel::Error, &e);
        }
    }

    /// Lazily: a process working in the directory keeps a read-only view.
    fn unmount(&mut self) -> Result<(), String> {
        if !self.marker.exists() {
            return Ok(());
        }
        nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            format!(
                "removing the read-only mount of {}: {e}",
                self.path.display()
            )
        })?;
        std::fs::remove_file(&self.marker).map_err(|e| format!("{}: {e}", self.marker.display()))
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

struct PrimaryDir {
    guard: Option<MountGuard>,
    link: Link,
    stop: Arc<AtomicBool>,
    peer: Arc<Mutex<Option<Arc<TcpReplicator>>>>,
    connector: Option<JoinHandle<()>>,
    dir: Dir,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Replication {
    /// `None` for a module without replicated directories.
    pub fn new(
        config: &ModuleConfig,
        node: &str,
        module_dir: &Path,
        key: ClusterKey,
        log: ModuleLog,
    ) -> Option<Self> {
        if config.replicated.is_empty() {
            return None;
        }
        let networks = &config.heartbeat.networks;
        let addresses = |n: Option<&holdfast_config::NodeConfig>| -> Vec<IpAddr> {
            n.map(|n| {
                networks
                    .iter()
                    .filter_map(|net| n.addresses.get(net).copied())
                    .collect()
            })
            .unwrap_or_default()
        };
        let dirs: Vec<Dir> = config
            .replicated
            .iter()
            .enumerate()
            .map(|(index, r)| Dir {
                index,
                path: r.dir.clone(),
                port: config.replication_port(index),
                state: module_dir.join("replication").join(index.to_string()),
                // Checked when the configuration was validated; replicating
                // too much loses nothing.
                exclusions: Exclusions::new(&r.exclude, &r.exclude_names).unwrap_or_else(|e| {
                    log.write(
                        LogLevel::Error,
                        &format!("{}: exclusion ignored: {e}", r.dir.display()),
                    );
                    Exclusions::default()
                }),
            })
            .collect();
        let status = ReplicationStatus::new(&dirs);
        Some(Replication {
            module: config.name.clone(),
            key,
            ack: match config.replication.ack {
                AckPolicy::Receipt => AckMode::Receipt,
                AckPolicy::Durable => AckMode::Durable,
            },
            dirs,
            local_addresses: addresses(config.node(node)),
            peer_addresses: addresses(config.peer_of(node)),
            log,
            receivers: Vec::new(),
            primary: Vec::new(),
            synced: (0..config.replicated.len())
                .map(|_| Arc::new(AtomicBool::new(false)))
                .collect(),
            current: false,
            policy: FailurePolicy {
                on_failure: config.replication.on_secondary_failure,
                ack_timeout: config.replication.ack_timeout,
            },
            peer_second: Arc::new(AtomicBool::new(false)),
            last_state: State::Stop,
            receiver_error_logged: false,
            status,
            fence: Arc::new(PeerFence::new(
                config.replicated.len(),
                config.witness.is_some(),
            )),
        })
    }

    /// Where the module task learns what to tell the witness of the peer's copy.
    pub fn fence(&self) -> Arc<PeerFence> {
        self.fence.clone()
    }

    /// What `holdfast state` shows.
    pub fn status(&self) -> ReplicationStatus {
        self.status.clone()
    }

    /// `second --discard-data`, the module stopped: every directory's copy
    /// counts as no data, so the primary replaces it (comparing blocks:
    /// only those that differ are sent).
    pub fn discard_data(&mut self) {
        for dir in &self.dirs {
            let store = dir.store();
            let result = store.load().and_then(|g| {
                let mut g = g.unwrap_or_default();
                g.discard();
                store.save(&g)
            });
            match result {
                Ok(()) => self.log.write(
                    LogLevel::Info,
                    &format!(
                        "data of {} discarded by the administrator: the primary's copy replaces it",
                        dir.path.display()
                    ),
                ),
                Err(e) => self.log.write(
                    LogLevel::Error,
                    &format!("cannot discard the data of {}: {e}", dir.path.display()),
                ),
            }
        }
    }

    /// At module start: directories and records exist, a FUSE mount left by
    /// a crash is detached; returns whether this node's data may be
    /// promoted (every directory's record allows it).
    pub fn prepare(&mut self) -> bool {
        let mut uptodate = true;
        for dir in &self.dirs {
            if dir.state.starts_with(&dir.path) {
                self.log.write(
                    LogLevel::Error,
                    &format!(
                        "the replication state {} is inside the replicated directory {}",
                        dir.state.display(),
                        dir.path.display()
                    ),
                );
                uptodate = false;
                continue;
            }
            detach_stale_mounts(dir, &self.log);
            if let Err(e) = std::fs::create_dir_all(&dir.path)
                .and_then(|()| std::fs::create_dir_all(&dir.state))
            {
                self.log.write(
                    LogLevel::Error,
                    &format!("replicated directory {}: {e}", dir.path.display()),
                );
                uptodate = false;
                continue;
            }
            let generations = match dir.record_unknown_data() {
                Ok(g) => g,
                Err(e) => {
                    self.log.write(LogLevel::Error, &e);
                    uptodate = false;
                    continue;
                }
            };
            if let Err(refusal) = generations.may_promote(&self.module) {
                self.log.write(LogLevel::Error, &refusal.to_string());
                uptodate = false;
            }
        }
        uptodate
    }

    /// After every event: starts or stops receivers, tells connectors
    /// whether the peer is SECOND; returns a new data state to give the
    /// state machine, if it changed.
    pub fn follow(&mut self, state: State, peer_state: Option<State>) -> Option<bool> {
        self.peer_second
            .store(peer_state == Some(State::Second), Ordering::SeqCst);
        let mut data_state = None;
        if state == State::Second && self.last_state != State::Second {
            // Not current until the primary has resynchronised this node.
            for flag in &self.synced {
                flag.store(false, Ordering::SeqCst);
            }
            self.current = false;
            data_state = Some(false);
        }
        let now = self.synced.iter().all(|f| f.load(Ordering::SeqCst));
        if state == State::Second && now != self.current {
            self.current = now;
            self.log.write(
                LogLevel::Info,
                if now {
                    "replicated directories resynchronised: this node's data is up to date"
                } else {
                    "this node's data is not up to date until the primary resynchronises it"
                },
            );
            data_state = Some(now);
        }
        if matches!(state, State::Prim | State::Alone) && self.last_state != state {
            data_state = Some(true);
        }
        self.last_state = state;
        let want_receivers =
            matches!(state, State::Second | State::Wait) && self.primary.is_empty();
        if want_receivers && self.receivers.is_empty() {
            self.start_receivers();
        } else if !want_receivers && !self.receivers.is_empty() {
            self.stop_receivers(!matches!(state, State::Prim | State::Alone));
        }
        data_state
    }

    fn start_receivers(&mut self) {
        let mut failed = None;
        let mut tasks = Vec::new();
        for dir in &self.dirs {
            // The receiver must open the real directory, not a view of it.
            detach_stale_mounts(dir, &self.log);
            if let Err(e) = dir.record_unknown_data() {
                failed = Some(e);
                break;
            }
            let mut listeners = Vec::new();
            for address in &self.local_addresses {
                match TcpListener::bind(SocketAddr::new(*address, dir.port))
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                {
                    Ok(l) => listeners.push(l),
                    Err(e) => failed = Some(format!("{address}:{}: {e}", dir.port)),
                }
            }
            let receiver = Receiver::new(&dir.path, self.key.clone(), self.ack)
                .map(|r| {
                    r.with_generations(dir.store())
                        .with_activity(&dir.log_dir())
                        .with_synced(self.synced[dir.index].clone())
                        .with_exclusions(dir.exclusions.clone())
                })
                .map_err(|e| e.to_string());
            let receiver = match (receiver, failed.is_none()) {
                (Ok(r), true) => Arc::new(r),
                (Err(e), _) => {
                    failed = Some(e);
                    break;
                }
                (_, false) => break,
            };
            let read_only = match ReadOnly::mount(dir) {
                Ok(r) => r,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let stop = Arc::new(AtomicBool::new(false));
            let current = Arc::new(Mutex::new(None));
            let peers = self.peer_addresses.clone();
            let log = self.log.clone();
            let target = Target {
                receiver: receiver.clone(),
                store: dir.store(),
                synced: self.synced[dir.index].clone(),
                path: dir.path.clone(),
            };
            let (stop2, current2) = (stop.clone(), current.clone());
            let thread = std::thread::Builder::new()
                .name(format!("repl-recv-{}", dir.index))
                .spawn(move || receive(listeners, target, peers, stop2, current2, log))
                .ok();
            tasks.push(ReceiverTask {
                receiver,
                stop,
                current,
                thread,
                read_only: Some(read_only),
            });
        }
        match failed {
            Some(e) => {
                for t in tasks {
                    t.stop(&self.log, false);
                }
                if !self.receiver_error_logged {
                    self.receiver_error_logged = true;
                    self.log.write(
                        LogLevel::Error,
                        &format!("cannot receive replication: {e} (retrying)"),
                    );
                }
            }
            None => {
                self.receiver_error_logged = false;
                self.receivers = tasks;
                for dir in &self.dirs {
                    self.status.set(dir.index, Activity::Receiving, None);
                }
            }
        }
    }

    fn stop_receivers(&mut self, sync: bool) {
        for t in self.receivers.drain(..) {
            t.stop(&self.log, sync);
        }
        for dir in &self.dirs {
            self.status.set(dir.index, Activity::Idle, None);
        }
    }

    /// `AcquirePrimaryResources`: mounts every replicated directory.
    pub fn acquire(&mut self) {
        if !self.primary.is_empty() {
            return;
        }
        // Becoming primary: no wait for the disk.
        self.stop_receivers(false);
        let dirs = self.dirs.clone();
        for dir in dirs {
            match self.mount(&dir) {
                Ok(p) => {
                    self.status.set(dir.index, Activity::Tracking, None);
                    let tree = p.guard.as_ref().map(|g| g.tree());
                    self.status
                        .primary(dir.index, tree.map(|t| (p.link.clone(), t)));
                    self.primary.push(p)
                }
                Err(e) => self.log.write(
                    LogLevel::Error,
                    &format!("cannot replicate {}: {e}", dir.path.display()),
                ),
            }
        }
    }

    fn mount(&self, dir: &Dir) -> Result<PrimaryDir, String> {
        detach_stale_mounts(dir, &self.log);
        let store = dir.store();
        let mut generations = dir.record_unknown_data()?;
        let (changelog, recovery) = ChangeLog::open(&dir.log_dir(), TrackingConfig::default())
            .map_err(|e| e.to_string())?;
        if let Recovery::Lost { reason } = &recovery {
            self.log.write(
                LogLevel::Error,
                &format!(
                    "change log of {} lost ({reason}): the next resynchronisation compares everything",
                    dir.path.display()
                ),
            );
            generations.tracking_lost();
        }
        // Before the first change the peer will not receive.
        generations.start_tracking();
        generations.become_primary();
        store.save(&generations).map_err(|e| e.to_string())?;
        let link = Link::tracking(Arc::new(changelog));
        let fencing = self.fence.outdated(dir.index).is_some();
        // With a witness, nothing the peer lacks is acknowledged before
        // its copy is fenced: changes wait, then the connector decides.
        link.set_on_failure(match self.policy.on_failure {
            OnSecondaryFailure::Degrade if !fencing => OnFailure::Track,
            _ => OnFailure::Wait,
        });
        if fencing {
            link.hold();
        }
        let guard =
            Mirror::mount_excluding(&dir.path, Arc::new(link.clone()), dir.exclusions.clone())
                .map_err(|e| e.to_string())?;
        self.log.write(
            LogLevel::Info,
            &format!(
                "replicated directory {} mounted (tracking changes until the secondary is connected)",
                dir.path.display()
            ),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let peer = Arc::new(Mutex::new(None));
        let connector = Connector {
            module: self.module.clone(),
            key: self.key.clone(),
            dir: dir.clone(),
            link: link.clone(),
            tree: guard.tree(),
            peers: self.peer_addresses.clone(),
            peer_second: self.peer_second.clone(),
            stop: stop.clone(),
            current: peer.clone(),
            log: self.log.clone(),
            status: self.status.clone(),
            policy: self.policy,
            fence: self.fence.clone(),
        };
        let connector = std::thread::Builder::new()
            .name(format!("repl-conn-{}", dir.index))
            .spawn(move || connector.run())
            .ok();
        Ok(PrimaryDir {
            guard: Some(guard),
            link,
            stop,
            peer,
            connector,
            dir: dir.clone(),
        })
    }

    /// `ReleasePrimaryResources`: stops replicating and unmounts.
    pub fn release(&mut self) {
        for mut p in self.primary.drain(..) {
            p.stop.store(true, Ordering::SeqCst);
            if let Some(peer) = lock(&p.peer).as_ref() {
                peer.close();
            }
            if let Some(t) = p.connector.take() {
                // Bounded: a connector stuck connecting is left to notice
                // the stop by itself (it checks it before using the tree).
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while !t.is_finished() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if t.is_finished() {
                    let _ = t.join();
                } else {
                    self.log.write(
                        LogLevel::Error,
                        &format!(
                            "replication connector of {} still busy; left to end by itself",
                            p.dir.path.display()
                        ),
                    );
                }
            }
            if let Some(guard) = p.guard.take() {
                {
                    let tree = guard.tree();
                    let _order = tree.lock();
                    // Held changes the secondary never got, and any change
                    // until unmounted, are not acknowledged: the secondary
                    // may take over — unless the witness fenced it.
                    let unfenced = self.fence.unfenced(p.dir.index);
                    if unfenced || p.link.mode() == LinkMode::Hold {
                        p.link.close();
                    } else {
                        p.link.track();
                    }
                }
                let path = guard.path().display().to_string();
                match guard.unmount() {
                    Ok(()) => self.log.write(LogLevel::Info, &format!("{path} unmounted")),
                    Err(e) => self
                        .log
                        .write(LogLevel::Error, &format!("unmounting {path}: {e}")),
                }
            }
            if let Err(e) = p.link.log().checkpoint() {
                self.log.write(LogLevel::Error, &e.to_string());
            }
            self.status.set(p.dir.index, Activity::Idle, None);
            self.status.primary(p.dir.index, None);
            self.fence.unknown(p.dir.index);
            if p.link.refused() > 0 {
                // They were applied here: this copy stays `unclean`, its
                // activity log (which holds them) kept for the next
                // resynchronisation into it.
                self.log.write(
                    LogLevel::Error,
                    &format!(
                        "{}: {} changes the secondary lacks were refused (not acknowledged)",
                        p.dir.path.display(),
                        p.link.refused()
                    ),
                );
                continue;
            }
            let store = p.dir.store();
            if let Ok(Some(mut g)) = store.load() {
                g.stopped_cleanly();
                if let Err(e) = store.save(&g) {
                    self.log.write(LogLevel::Error, &e.to_string());
                }
            }
            // After the record says clean: whatever was mirrored was
            // acknowledged or is in the change log.
            if let Err(e) = p.link.log().clear_activity() {
                self.log.write(LogLevel::Error, &e.to_string());
            }
        }
    }

    /// Module task ending: everything stopped.
    pub fn shutdown(&mut self) {
        self.release();
        self.stop_receivers(true);
    }
}

impl Drop for Replication {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The copy a receiving loop applies to.
#[derive(Debug, Clone)]
struct Target {
    receiver: Arc<Receiver>,
    store: GenerationStore,
    /// Cleared when a change failed to apply (the copy is behind).
    synced: Arc<AtomicBool>,
    path: PathBuf,
}

/// The receiving loop of one directory. A new connection from the peer
/// replaces the one being served: the primary connects again only once
/// its side of the old one is dead (one whose end never reached us, when
/// packets were dropped, would otherwise hold the receiver forever).
fn receive(
    listeners: Vec<TcpListener>,
    target: Target,
    peers: Vec<IpAddr>,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<TcpStream>>>,
    log: ModuleLog,
) {
    let path = target.path.clone();
    let mut serving: Option<JoinHandle<()>> = None;
    let end_current = |serving: &mut Option<JoinHandle<()>>| {
        if let Some(old) = lock(&current).take() {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = serving.take() {
            let _ = t.join();
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let mut accepted = None;
        for l in &listeners {
            if let Ok((stream, from)) = l.accept() {
                accepted = Some((stream, from));
                break;
            }
        }
        let Some((stream, from)) = accepted else {
            std::thread::sleep(POLL);
            continue;
        };
        if !peers.contains(&from.ip()) {
            log.write(
                LogLevel::Error,
                &format!("replication connection from {from} refused: not an address of the peer"),
            );
            continue;
        }
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        end_current(&mut serving);
        match stream.try_clone() {
            Ok(c) => *lock(&current) = Some(c),
            Err(_) => continue,
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        log.write(
            LogLevel::Info,
            &format!("receiving replication of {} from {from}", path.display()),
        );
        let (stop, log, current) = (stop.clone(), log.clone(), current.clone());
        let Target {
            receiver,
            store,
            synced,
            path,
        } = target.clone();
        serving = std::thread::Builder::new()
            .name("repl-serve".into())
            .spawn(move || {
                let path = path.display();
                let result = receiver.serve_connection(stream);
                // Closed at once: the primary must not wait on a connection
                // nobody reads any more.
                if let Some(s) = lock(&current).take() {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
                match result {
                    Ok(()) => log.write(
                        LogLevel::Info,
                        &format!("replication of {path} from {from} ended"),
                    ),
                    Err(e) if stop.load(Ordering::SeqCst) => {
                        tracing::debug!("replication receiver stopped: {e}")
                    }
                    Err(e) => {
                        // A change this copy did not apply: it is behind,
                        // never to be promoted (also after a restart) until
                        // a resynchronisation completes.
                        if matches!(
                            e,
                            ReceiverError::Apply { .. } | ReceiverError::Escape { .. }
                        ) {
                            let recorded = store.load().and_then(|g| {
                                let mut g = g.unwrap_or_default();
                                g.resync_begin();
                                store.save(&g)
                            });
                            if let Err(e) = recorded {
                                log.write(LogLevel::Error, &e.to_string());
                            }
                            synced.store(false, Ordering::SeqCst);
                        }
                        log.write(
                            LogLevel::Error,
                            &format!("replication of {path} from {from} failed: {e}"),
                        );
                    }
                }
            })
            .ok();
    }
    end_current(&mut serving);
}

/// The primary's connection to the secondary, for one directory.
struct Connector {
    module: String,
    key: ClusterKey,
    dir: Dir,
    link: Link,
    tree: holdfast_replication::Tree,
    peers: Vec<IpAddr>,
    peer_second: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<Arc<TcpReplicator>>>>,
    log: ModuleLog,
    status: ReplicationStatus,
    policy: FailurePolicy,
    fence: Arc<PeerFence>,
}

/// `[replication]`'s answer to a live secondary that fails.
#[derive(Debug, Clone, Copy)]
struct FailurePolicy {
    on_failure: OnSecondaryFailure,
    ack_timeout: Duration,
}

impl FailurePolicy {
    fn name(&self) -> &'static str {
        match self.on_failure {
            OnSecondaryFailure::Degrade => "on_secondary_failure = degrade",
            OnSecondaryFailure::Block => "on_secondary_failure = block",
        }
    }
}

impl Connector {
    fn sleep(&self, d: Duration) {
        let end = std::time::Instant::now() + d;
        while !self.stop.load(Ordering::SeqCst) && std::time::Instant::now() < end {
            std::thread::sleep(POLL);
        }
    }

    fn run(self) {
        let mut last_error = String::new();
        while !self.stop.load(Ordering::SeqCst) {
            if !self.peer_second.load(Ordering::SeqCst) {
                if self.link.mode() == LinkMode::Hold {
                    // Held for a secondary now declared lost: ALONE.
                    self.go_alone();
                    self.log.write(
                        LogLevel::Error,
                        &format!(
                            "the secondary of {} is lost: held writes go on, tracking changes",
                            self.dir.path.display()
                        ),
                    );
                }
                self.sleep(POLL);
                continue;
            }
            match self.session() {
                Ok(()) => last_error.clear(),
                Err(e) => {
                    if !self.stop.load(Ordering::SeqCst) {
                        self.status.problem(self.dir.index, Some(e.clone()));
                        if e != last_error {
                            self.log.write(LogLevel::Error, &e);
                            last_error = e;
                        }
                        // Held only for the fence: `degrade` goes on alone.
                        if self.link.mode() == LinkMode::Hold
                            && self.policy.on_failure == OnSecondaryFailure::Degrade
                        {
                            self.go_alone();
                        }
                    }
                    self.sleep(RETRY);
                }
            }
        }
    }

    /// Connects, brings the peer up to date, mirrors until the connection
    /// breaks (`Ok`), or says why not.
    fn session(&self) -> Result<(), String> {
        let path = self.dir.path.display().to_string();
        let mut connected = None;
        let mut error = String::from("no address");
        for address in &self.peers {
            match TcpReplicator::connect(SocketAddr::new(*address, self.dir.port), &self.key) {
                Ok(r) => {
                    connected = Some(r);
                    break;
                }
                Err(e) => error = e.to_string(),
            }
        }
        let peer = Arc::new(
            connected.ok_or_else(|| format!("replication of {path}: cannot connect: {error}"))?,
        );
        if self.policy.on_failure == OnSecondaryFailure::Degrade {
            // A secondary that stops reading must not hold a write forever.
            peer.set_send_timeout(Some(self.policy.ack_timeout));
        }
        *lock(&self.current) = Some(peer.clone());
        if self.stop.load(Ordering::SeqCst) {
            lock(&self.current).take();
            peer.close();
            return Ok(());
        }
        let result = self.bring_up_to_date(&peer, &path);
        if result.is_err() {
            lock(&self.current).take();
            peer.close();
            return result;
        }
        let reason = self.watch(&peer, &path);
        if !self.stop.load(Ordering::SeqCst) {
            self.after_failure(&path, &reason);
        }
        lock(&self.current).take();
        peer.close();
        Ok(())
    }

    /// Mirroring: watches the connection until it breaks, the secondary
    /// is lost (heartbeat), or — with `degrade` — a change waits for its
    /// acknowledgement longer than `ack_timeout`; says why it ended.
    fn watch(&self, peer: &TcpReplicator, path: &str) -> String {
        let timeout = self.policy.ack_timeout;
        let mut slow = false;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return "stopping".into();
            }
            if let Some(e) = peer.broken() {
                return e.to_string();
            }
            if !self.peer_second.load(Ordering::SeqCst) {
                return "the secondary is lost (no heartbeat, or it left SECOND)".into();
            }
            let late = peer
                .oldest_unacknowledged()
                .is_some_and(|sent| sent.elapsed() > timeout);
            if late && self.policy.on_failure == OnSecondaryFailure::Degrade {
                // Left behind: if it reads again before the connection is
                // gone, it learns (as at the start of a resync) that its
                // copy is incomplete, and is never promoted with it.
                let source = self.dir.store().load().ok().flatten().unwrap_or_default();
                let _ = peer.tell(&Request::Begin {
                    source: source.current,
                });
                return format!(
                    "no acknowledgement within ack_timeout = {}",
                    humantime::format_duration(timeout)
                );
            }
            if late != slow {
                slow = late;
                let problem = late.then(|| {
                    format!(
                        "the secondary has not acknowledged a change of {path} within ack_timeout = {}: writes wait for it ({})",
                        humantime::format_duration(timeout),
                        self.policy.name()
                    )
                });
                match &problem {
                    Some(p) => self.log.write(LogLevel::Error, p),
                    None => self.log.write(
                        LogLevel::Info,
                        &format!("the secondary acknowledges changes of {path} again"),
                    ),
                }
                self.status.problem(self.dir.index, problem);
            }
            std::thread::sleep(BREAK_POLL);
        }
    }

    /// Mirroring ended for `reason`: ALONE with tracking — unless the
    /// secondary is alive and `block` holds changes until it is back.
    fn after_failure(&self, path: &str, reason: &str) {
        let alive = self.peer_second.load(Ordering::SeqCst);
        if alive && self.policy.on_failure == OnSecondaryFailure::Block {
            {
                let _order = self.tree.lock();
                self.link.hold();
            }
            let problem = format!(
                "replication of {path} to the secondary failed ({reason}): writes wait until it is resynchronised ({})",
                self.policy.name()
            );
            self.log.write(LogLevel::Error, &problem);
            self.status.set(self.dir.index, Activity::Holding, None);
            self.status.problem(self.dir.index, Some(problem));
            return;
        }
        self.go_alone();
        let problem = format!(
            "replication of {path} to the secondary lost ({reason}): tracking changes{}",
            if alive {
                format!(" ({})", self.policy.name())
            } else {
                String::new()
            }
        );
        self.log.write(LogLevel::Error, &problem);
        self.status.problem(self.dir.index, Some(problem));
    }

    fn bring_up_to_date(&self, peer: &Arc<TcpReplicator>, path: &str) -> Result<(), String> {
        let (theirs, kept, activity) = match peer.ask(&Request::Generations) {
            Ok(Answer::Generations {
                record,
                kept,
                activity,
            }) => (record, kept, activity),
            Ok(other) => {
                return Err(format!(
                    "replication of {path}: unexpected answer {other:?}"
                ))
            }
            Err(e) => return Err(format!("replication of {path}: {e}")),
        };
        let store = self.dir.store();
        let ours = store.load().map_err(|e| e.to_string())?.unwrap_or_default();
        let decided = match decide(&self.module, &ours, &theirs) {
            Ok(Decision::InSync) => None,
            Ok(Decision::Send(basis)) => Some(basis),
            Ok(Decision::Receive(_)) => {
                return Err(format!(
                    "replication of {path}: the secondary holds newer data than this primary; not replicating (stop this node and let the other one become primary)"
                ))
            }
            Err(refusal) => return Err(format!("replication of {path}: {refusal}")),
        };
        let lost = self.link.log().lost();
        let regions = activity.usable();
        let plan = plan(
            &ours,
            &theirs,
            decided,
            kept,
            lost,
            regions.as_ref().map(|r| r.len()).map_err(|e| e.clone()),
        );
        let covers = match (&plan, regions) {
            (Plan::Tracked, _) => Scope::Tracked,
            (Plan::ActivityLog { .. }, Ok(regions)) => Scope::Regions(regions.to_vec()),
            _ => Scope::Everything,
        };
        if covers != Scope::Everything {
            let tracked = holdfast_replication::tracked(&self.tree, self.link.log());
            let rate = self.status.last_rate(self.dir.index);
            self.log.write(
                LogLevel::Info,
                &format!("{path}: {}", TrackedChanges::new(tracked, rate).describe()),
            );
        }
        self.log.write(
            LogLevel::Info,
            &format!(
                "resynchronising {path} to the secondary ({})",
                plan.describe()
            ),
        );
        let progress = Arc::new(Progress::default());
        self.status.set(
            self.dir.index,
            Activity::Resynchronising,
            Some(progress.clone()),
        );
        self.status.basis(self.dir.index, plan.describe());
        let finished = AtomicBool::new(false);
        let stats = std::thread::scope(|scope| {
            scope.spawn(|| self.log_progress(path, &progress, &finished));
            let result = resync(
                &self.tree,
                &self.link,
                peer.clone(),
                ours.current,
                &covers,
                &progress,
            );
            finished.store(true, Ordering::SeqCst);
            result
        })
        .map_err(|e| {
            let holding = self.link.mode() == LinkMode::Hold;
            let activity = if holding {
                Activity::Holding
            } else {
                Activity::Tracking
            };
            self.status.set(self.dir.index, activity, None);
            let then = if holding {
                format!(": writes wait for the secondary ({})", self.policy.name())
            } else {
                String::new()
            };
            format!("resynchronisation of {path} failed: {e}{then}")
        })?;
        let mut ours = store.load().map_err(|e| e.to_string())?.unwrap_or_default();
        ours.peer_synced();
        store.save(&ours).map_err(|e| e.to_string())?;
        self.log.write(
            LogLevel::Info,
            &format!(
                "{path} resynchronised ({} bytes sent, {} blocks compared, {} entries, {} bytes compared): mirroring",
                stats.bytes_sent, stats.blocks_compared, stats.entries, stats.bytes_compared
            ),
        );
        self.status
            .resynchronised(self.dir.index, progress.report().rate);
        // After the log line: who sees `mirroring` finds it.
        self.status.set(self.dir.index, Activity::Mirroring, None);
        self.fence.current(self.dir.index);
        Ok(())
    }

    /// Every [`PROGRESS_LOG`] of a resynchronisation: how far it is.
    fn log_progress(&self, path: &str, progress: &Progress, finished: &AtomicBool) {
        let mut next = std::time::Instant::now() + PROGRESS_LOG;
        while !finished.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
            if std::time::Instant::now() >= next {
                next += PROGRESS_LOG;
                let report = ResyncProgress::from(progress.report());
                self.log.write(
                    LogLevel::Info,
                    &format!("resynchronising {path}: {}", report.describe()),
                );
            }
        }
    }

    /// With a witness: holds changes until it has recorded the peer's
    /// copy outdated; false if the module stops first (held changes are
    /// then refused, see [`Replication::release`]).
    fn fence_peer(&self) -> bool {
        let Some(epoch) = self.fence.outdated(self.dir.index) else {
            return true;
        };
        if self.fence.is_fenced(epoch) {
            return true;
        }
        {
            let _order = self.tree.lock();
            if self.link.mode() != LinkMode::Hold {
                self.link.hold();
            }
        }
        self.status.set(self.dir.index, Activity::Holding, None);
        self.log.write(
            LogLevel::Info,
            &format!(
                "{}: writes wait until the witness records the secondary's copy as outdated",
                self.dir.path.display()
            ),
        );
        while !self.fence.is_fenced(epoch) {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(POLL);
        }
        self.log.write(
            LogLevel::Info,
            &format!(
                "{}: the witness refuses the secondary the primary role until it is resynchronised",
                self.dir.path.display()
            ),
        );
        true
    }

    /// The secondary is gone: a new generation before changes it misses.
    fn go_alone(&self) {
        if !self.fence_peer() {
            return;
        }
        let _order = self.tree.lock();
        let store = self.dir.store();
        match store.load() {
            Ok(Some(mut g)) => {
                g.start_tracking();
                if let Err(e) = store.save(&g) {
                    self.log.write(LogLevel::Error, &e.to_string());
                }
            }
            Ok(None) => {}
            Err(e) => self.log.write(LogLevel::Error, &e.to_string()),
        }
        self.link.track();
        self.status.set(self.dir.index, Activity::Tracking, None);
    }
}

/// Mounts of ours left on a replicated directory by a killed daemon — the
/// primary's FUSE mount, the secondary's read-only bind mount (known by
/// its marker: the directory may be a mount point of its own) — detached.
fn detach_stale_mounts(dir: &Dir, log: &ModuleLog) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let target = dir.path.display().to_string();
    let marker = dir.read_only_marker().exists();
    let mut read_only_left = marker;
    // In mount order: the last one on the directory is on top.
    for line in mounts.lines().rev() {
        let mut fields = line.split(' ');
        let (Some(_src), Some(point), Some(fstype), Some(options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if point != target {
            continue;
        }
        let fuse = fstype.starts_with("fuse");
        let read_only = options.split(',').any(|o| o == "ro");
        if !(fuse || read_only_left && read_only) {
            break;
        }
        // Only one is ours.
        read_only_left &= fuse;
        match nix::mount::umount2(&dir.path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => log.write(
                LogLevel::Info,
                &format!("stale replication mount ({fstype}, {options}) on {target} detached"),
            ),
            Err(e) => {
                log.write(
                    LogLevel::Error,
                    &format!("cannot detach the stale mount on {target}: {e}"),
                );
                return;
            }
        }
    }
    if marker {
        let _ = std::fs::remove_file(dir.read_only_marker());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimate_of_the_duration_needs_a_measured_rate_and_known_figures() {
        let known = TrackedSummary {
            files: 1,
            bytes: 4 << 20,
            bytes_compared: 4 << 20,
            ..TrackedSummary::default()
        };
        let rate = 2.0 * 1024.0 * 1024.0;
        assert_eq!(
            TrackedChanges::new(known, Some(rate)).eta_seconds,
            Some(4.0)
        );
        assert_eq!(TrackedChanges::new(known, None).eta_seconds, None);
        let unknown = TrackedSummary {
            linked: true,
            ..known
        };
        assert_eq!(TrackedChanges::new(unknown, Some(rate)).eta_seconds, None);
        // The JSON of the API: the summary's fields, flat.
        let json = serde_json::to_value(TrackedChanges::new(known, None)).unwrap();
        assert_eq!(json["bytes"], 4 << 20);
        assert!(json.get("eta_seconds").is_none());
    }

    #[test]
    fn a_second_is_up_to_date_only_while_every_directory_is_synchronised() {
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            "[module]\nname = \"m\"\nmode = \"mirror\"\n\n\
             [[node]]\nname = \"node1\"\naddress = {{ default = \"198.18.0.11\" }}\n\n\
             [[node]]\nname = \"node2\"\naddress = {{ default = \"198.18.0.12\" }}\n\n\
             [[replicated]]\ndir = \"{0}/a\"\n\n[[replicated]]\ndir = \"{0}/b\"\n",
            tmp.path().display()
        );
        let config = holdfast_config::parse_module(&text, Path::new("m.toml")).unwrap();
        let log = ModuleLog::new(tmp.path().join("module.log"));
        let state_dir = tmp.path().join("state");
        let mut r =
            Replication::new(&config, "node2", &state_dir, ClusterKey::generate(), log).unwrap();
        let flags = r.synced.clone();
        let mut follow = || r.follow(State::Second, Some(State::Prim));
        assert_eq!(follow(), Some(false), "not current on entering SECOND");
        flags[0].store(true, Ordering::SeqCst);
        assert_eq!(follow(), None, "one directory of two resynchronised");
        flags[1].store(true, Ordering::SeqCst);
        assert_eq!(follow(), Some(true));
        // A resync begins again (or a change fails to apply): not current
        // until it ends, even though it was before.
        flags[1].store(false, Ordering::SeqCst);
        assert_eq!(follow(), Some(false));
        flags[1].store(true, Ordering::SeqCst);
        assert_eq!(follow(), Some(true));
    }
}
