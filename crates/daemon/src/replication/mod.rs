//! The daemon's side of file replication for one mirror module: which
//! role runs what, driven after every event of the module by its worker
//! thread (`crate::resources`), never on the async runtime.
//!
//! - SECOND (and WAIT, `receivers`): one receiving thread per replicated
//!   directory, listening on the node's addresses at the directory's
//!   replication port, accepting only the peer's addresses, applying into
//!   the real directory.
//! - Primary (`AcquirePrimaryResources`, `primary`): each directory is
//!   mounted over a link that tracks changes (durable change log) until a
//!   secondary is connected; a `connector` thread per directory carries out
//!   what its sans-IO core (`holdfast_membership::connector`) decides: it
//!   connects to the peer when it is SECOND, exchanges generations,
//!   decides, resynchronises (Forward, then Mirror), and when mirroring
//!   breaks holds or tracks changes, fencing the peer's copy through the
//!   witness first (`fence`). It sleeps until its core's next deadline or
//!   a ring of the module's `bell`. `ReleasePrimaryResources` unmounts.
//! - Data state: whether this node may be promoted, from the generation
//!   records at start; false on a SECOND until a resynchronisation
//!   completes.
//!
//! Per directory `i`, state lives in `<module>/replication/<i>/`
//! (`generations`, `log/`), never inside a replicated directory. The
//! network and resynchronisations run on threads of their own, stopped
//! through channels (`stop`); mounting, unmounting and stopping them (a
//! receiver's stop waits up to its last word) take the module's worker.
//! `directory` holds a directory's facts and records on disk, [`status`]
//! what `holdfast state` shows of it.

mod bell;
mod connector;
mod directory;
mod fence;
mod primary;
mod receivers;
pub mod status;
mod stop;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use holdfast_config::{AckPolicy, DurabilityPolicy, ModuleConfig};
use holdfast_key::ClusterKey;
use holdfast_membership::{LogLevel, State};
use holdfast_replication::{AckMode, Durability, Exclusions, TailLimits};

use self::bell::Bell;
use self::directory::{detach_stale_mounts, Dir};
pub use self::fence::PeerFence;
use self::primary::{Primaries, PrimaryDir};
use self::receivers::{ReceiverTask, Receiving};
use self::status::{Activity, ReplicationStatus};
use crate::modlog::ModuleLog;

/// Whether the peer is SECOND, as the module task last said: read by the
/// connectors, whom it wakes when it changes.
#[derive(Debug)]
pub struct PeerSecond {
    second: AtomicBool,
    bell: Arc<Bell>,
}

impl PeerSecond {
    pub fn set(&self, second: bool) {
        if self.second.swap(second, Ordering::SeqCst) != second {
            self.bell.ring();
        }
    }

    fn get(&self) -> bool {
        self.second.load(Ordering::SeqCst)
    }
}

/// What one module's replication is doing.
pub struct Replication {
    module: String,
    dirs: Vec<Dir>,
    log: ModuleLog,
    receivers: Vec<ReceiverTask>,
    primary: Vec<PrimaryDir>,
    /// What receivers share.
    receiving: Receiving,
    /// What primary directories share.
    primaries: Primaries,
    /// Per directory, set by its receiver: false from the start of a
    /// resynchronisation into this node (or a change that failed to apply)
    /// until one completes.
    synced: Vec<Arc<AtomicBool>>,
    /// What the state machine was last told of them (SECOND).
    current: bool,
    /// Set by the module task after every event, read by connectors: the
    /// peer is SECOND.
    peer_second: Arc<PeerSecond>,
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
        let bell = Arc::new(Bell::default());
        let peer_second = Arc::new(PeerSecond {
            second: AtomicBool::new(false),
            bell: bell.clone(),
        });
        let fence = Arc::new(PeerFence::new(
            config.replicated.len(),
            config.witness.is_some(),
            bell.clone(),
        ));
        let peer_addresses = addresses(config.peer_of(node));
        Some(Replication {
            module: config.name.clone(),
            dirs,
            receivers: Vec::new(),
            primary: Vec::new(),
            receiving: Receiving {
                key: key.clone(),
                ack: match config.replication.ack {
                    AckPolicy::Receipt => AckMode::Receipt,
                    AckPolicy::Durable => AckMode::Durable,
                },
                local_addresses: addresses(config.node(node)),
                peer_addresses: peer_addresses.clone(),
                log: log.clone(),
            },
            primaries: Primaries {
                module: config.name.clone(),
                key,
                peers: peer_addresses,
                peer_second: peer_second.clone(),
                log: log.clone(),
                status: status.clone(),
                on_failure: config.replication.on_secondary_failure,
                ack_timeout: config.replication.ack_timeout,
                fence: fence.clone(),
                bell,
                durability: match config.replication.durability {
                    DurabilityPolicy::SyncCalls => Durability::SyncCalls,
                    DurabilityPolicy::EveryCall => Durability::EveryCall,
                },
                limits: TailLimits {
                    bytes: config.replication.max_unacked_bytes,
                    age: config.replication.max_unacked_age,
                },
            },
            log,
            synced: (0..config.replicated.len())
                .map(|_| Arc::new(AtomicBool::new(false)))
                .collect(),
            current: false,
            peer_second,
            last_state: State::Stop,
            receiver_error_logged: false,
            status,
            fence,
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

    /// Where the module task says whether the peer is SECOND (at once:
    /// a connector must learn that its secondary is lost while what
    /// replication does next may still wait for a disk).
    pub fn peer_second(&self) -> Arc<PeerSecond> {
        self.peer_second.clone()
    }

    /// Where each directory's receiver says a resynchronisation of this
    /// copy completed; the module task resets them as it becomes SECOND
    /// (see `Mirror::settle` in `crate::mirror`).
    pub fn synced(&self) -> Vec<Arc<AtomicBool>> {
        self.synced.clone()
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
                    self.log.write(LogLevel::Error, &e.to_string());
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

    /// After every event: starts or stops receivers; returns a new data
    /// state to give the state machine, if it changed.
    pub fn follow(&mut self, state: State) -> Option<bool> {
        let mut data_state = None;
        if state == State::Second && self.last_state != State::Second {
            // Not current until the primary has resynchronised this node:
            // the flags were reset by the module task before it announced
            // SECOND, so a resynchronisation that announcement brought
            // about, done before this late follow, still counts.
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
        let mut started = Vec::new();
        let mut failed = None;
        for dir in &self.dirs {
            match ReceiverTask::start(dir, &self.receiving, &self.synced[dir.index]) {
                Ok(task) => started.push(task),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            Some(e) => {
                for t in started {
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
                self.receivers = started;
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
            match PrimaryDir::mount(&dir, &self.primaries) {
                Ok(p) => {
                    self.status.set(dir.index, Activity::Tracking, None);
                    self.status.primary(dir.index, p.tracked());
                    self.primary.push(p)
                }
                Err(e) => self.log.write(
                    LogLevel::Error,
                    &format!("cannot replicate {}: {e}", dir.path.display()),
                ),
            }
        }
    }

    /// `ReleasePrimaryResources`: stops replicating and unmounts.
    pub fn release(&mut self) {
        for p in self.primary.drain(..) {
            p.release(&self.primaries);
        }
    }

    /// Module task ending: everything stopped.
    fn shutdown(&mut self) {
        self.release();
        self.stop_receivers(true);
    }
}

impl Drop for Replication {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// node2's replication of a module with two directories under `dir`.
    fn second(dir: &Path) -> Replication {
        let text = format!(
            "[module]\nname = \"m\"\nmode = \"mirror\"\n\n\
             [[node]]\nname = \"node1\"\naddress = {{ default = \"198.18.0.11\" }}\n\n\
             [[node]]\nname = \"node2\"\naddress = {{ default = \"198.18.0.12\" }}\n\n\
             [[replicated]]\ndir = \"{0}/a\"\n\n[[replicated]]\ndir = \"{0}/b\"\n",
            dir.display()
        );
        let config = holdfast_config::parse_module(&text, Path::new("m.toml")).unwrap();
        let log = ModuleLog::new(dir.join("module.log"));
        Replication::new(
            &config,
            "node2",
            &dir.join("state"),
            ClusterKey::generate(),
            log,
        )
        .unwrap()
    }

    #[test]
    fn a_second_is_up_to_date_only_while_every_directory_is_synchronised() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = second(tmp.path());
        let flags = r.synced.clone();
        let mut follow = || r.follow(State::Second);
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

    /// The module task resets the flags as it becomes SECOND; the primary
    /// that hears it may resynchronise every directory before the worker
    /// follows the new state, which must then find the copy current.
    #[test]
    fn a_resynchronisation_done_before_the_worker_follows_second_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = second(tmp.path());
        for flag in &r.synced {
            flag.store(true, Ordering::SeqCst);
        }
        assert_eq!(r.follow(State::Second), Some(true));
    }

    /// The configuration's defaults are the library's (one place to
    /// change them once measured).
    #[test]
    fn the_default_limits_of_the_unacknowledged_tail_are_the_librarys() {
        let tmp = tempfile::tempdir().unwrap();
        let r = second(tmp.path());
        assert_eq!(r.primaries.limits, TailLimits::default());
        assert_eq!(r.primaries.durability, Durability::SyncCalls);
    }
}
