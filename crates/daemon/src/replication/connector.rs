//! The primary's side of one replicated directory: a connector thread
//! that connects to the peer while it is SECOND, exchanges generations,
//! [`decide`]s, resynchronises (Forward, then Mirror), watches the
//! mirroring and goes back to tracking (or holds writes, by the failure
//! policy) when it breaks.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use holdfast_config::OnSecondaryFailure;
use holdfast_key::ClusterKey;
use holdfast_membership::LogLevel;
use holdfast_replication::generation::StoreError;
use holdfast_replication::resync::{Answer, Request};
use holdfast_replication::{
    decide, plan, resync, Decision, Link, LinkMode, Peer, Plan, Progress, Refusal,
    ReplicationError, ResyncError, Scope, TcpReplicator,
};
use parking_lot::Mutex;

use super::directory::Dir;
use super::status::{Activity, LastResync, ReplicationStatus, ResyncProgress, TrackedChanges};
use super::stop::StopSignal;
use crate::modlog::ModuleLog;
use crate::peer_fence::PeerFence;

const POLL: Duration = Duration::from_millis(50);
const BREAK_POLL: Duration = Duration::from_millis(5);
const RETRY: Duration = Duration::from_millis(500);
/// How often a running resynchronisation logs its progress.
const PROGRESS_LOG: Duration = Duration::from_secs(5);

/// Why a session with the secondary did not reach mirroring.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("replication of {path}: cannot connect: {}", last.as_ref().map_or_else(|| "no address".to_string(), |e| e.to_string()))]
    Unreachable {
        path: String,
        last: Option<ReplicationError>,
    },
    #[error("replication of {path}: unexpected answer {answer:?}")]
    Unexpected { path: String, answer: Box<Answer> },
    #[error("replication of {path}: {source}")]
    Peer {
        path: String,
        source: ReplicationError,
    },
    #[error("replication of {path}: the secondary holds newer data than this primary; not replicating (stop this node and let the other one become primary)")]
    PeerNewer { path: String },
    #[error("replication of {path}: {refusal}")]
    Refused { path: String, refusal: Refusal },
    #[error("resynchronisation of {path} failed: {source}{}", holding.map_or_else(String::new, |policy| format!(": writes wait for the secondary ({policy})")))]
    Resync {
        path: String,
        source: ResyncError,
        /// The failure policy holding writes meanwhile, if it does.
        holding: Option<&'static str>,
    },
    #[error(transparent)]
    Record(#[from] StoreError),
}

/// The primary's connection to the secondary, for one directory.
pub(super) struct Connector {
    pub(super) module: String,
    pub(super) key: ClusterKey,
    pub(super) dir: Dir,
    pub(super) link: Link,
    pub(super) tree: holdfast_replication::Tree,
    pub(super) peers: Vec<IpAddr>,
    pub(super) peer_second: Arc<AtomicBool>,
    /// Stops the connector (its waits end at once).
    pub(super) stop: StopSignal,
    pub(super) current: Arc<Mutex<Option<Arc<TcpReplicator>>>>,
    pub(super) log: ModuleLog,
    pub(super) status: ReplicationStatus,
    pub(super) policy: FailurePolicy,
    pub(super) fence: Arc<PeerFence>,
}

/// `[replication]`'s answer to a live secondary that fails.
#[derive(Debug, Clone, Copy)]
pub(super) struct FailurePolicy {
    pub(super) on_failure: OnSecondaryFailure,
    pub(super) ack_timeout: Duration,
}

impl FailurePolicy {
    pub(super) fn name(&self) -> &'static str {
        match self.on_failure {
            OnSecondaryFailure::Degrade => "on_secondary_failure = degrade",
            OnSecondaryFailure::Block => "on_secondary_failure = block",
        }
    }
}

impl Connector {
    fn stopped(&self) -> bool {
        self.stop.stopped()
    }

    /// Waits `d`, or less if stopped; whether it was.
    fn pause(&self, d: Duration) -> bool {
        self.stop.pause(d)
    }

    pub(super) fn run(self) {
        let mut last_error = String::new();
        while !self.stopped() {
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
                self.pause(POLL);
                continue;
            }
            match self.session() {
                Ok(()) => last_error.clear(),
                Err(e) => {
                    if !self.stopped() {
                        let e = e.to_string();
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
                    self.pause(RETRY);
                }
            }
        }
    }

    /// Connects, brings the peer up to date, mirrors until the connection
    /// breaks (`Ok`), or says why not.
    fn session(&self) -> Result<(), SessionError> {
        let path = self.dir.path.display().to_string();
        let mut connected = None;
        let mut last = None;
        for address in &self.peers {
            match TcpReplicator::connect(SocketAddr::new(*address, self.dir.port), &self.key) {
                Ok(r) => {
                    connected = Some(r);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let peer = Arc::new(connected.ok_or(SessionError::Unreachable {
            path: path.clone(),
            last,
        })?);
        if self.policy.on_failure == OnSecondaryFailure::Degrade {
            // A secondary that stops reading must not hold a write forever.
            peer.set_send_timeout(Some(self.policy.ack_timeout));
        }
        *self.current.lock() = Some(peer.clone());
        if self.stopped() {
            self.current.lock().take();
            peer.close();
            return Ok(());
        }
        let result = self.bring_up_to_date(&peer, &path);
        if result.is_err() {
            self.current.lock().take();
            peer.close();
            return result;
        }
        let reason = self.watch(&peer, &path);
        if !self.stopped() {
            self.after_failure(&path, &reason);
        }
        self.current.lock().take();
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
            if self.stopped() {
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
            if self.pause(BREAK_POLL) {
                return "stopping".into();
            }
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

    fn bring_up_to_date(&self, peer: &Arc<TcpReplicator>, path: &str) -> Result<(), SessionError> {
        let path_of = || path.to_string();
        let (theirs, kept, activity) = match peer.ask(&Request::Generations) {
            Ok(Answer::Generations {
                record,
                kept,
                activity,
            }) => (record, kept, activity),
            Ok(other) => {
                return Err(SessionError::Unexpected {
                    path: path_of(),
                    answer: Box::new(other),
                })
            }
            Err(source) => {
                return Err(SessionError::Peer {
                    path: path_of(),
                    source,
                })
            }
        };
        let store = self.dir.store();
        let ours = store.load()?.unwrap_or_default();
        let decided = match decide(&self.module, &ours, &theirs) {
            Ok(Decision::InSync) => None,
            Ok(Decision::Send(basis)) => Some(basis),
            Ok(Decision::Receive(_)) => return Err(SessionError::PeerNewer { path: path_of() }),
            Err(refusal) => {
                return Err(SessionError::Refused {
                    path: path_of(),
                    refusal,
                })
            }
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
        let (finishing, finished) = mpsc::channel();
        let log = &self.log;
        let began = std::time::Instant::now();
        let stats = std::thread::scope(|scope| {
            scope.spawn(|| log_progress(log, path, &progress, finished));
            let result = resync(
                &self.tree,
                &self.link,
                peer.clone(),
                ours.current,
                &covers,
                &progress,
            );
            drop(finishing);
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
            SessionError::Resync {
                path: path_of(),
                source: e,
                holding: holding.then(|| self.policy.name()),
            }
        })?;
        let mut ours = store.load()?.unwrap_or_default();
        ours.peer_synced();
        store.save(&ours)?;
        self.log.write(
            LogLevel::Info,
            &format!(
                "{path} resynchronised ({} bytes sent, {} blocks compared, {} entries, {} bytes compared): mirroring",
                stats.bytes_sent, stats.blocks_compared, stats.entries, stats.bytes_compared
            ),
        );
        let resync = LastResync {
            basis: plan.describe(),
            bytes_sent: stats.bytes_sent,
            blocks_compared: stats.blocks_compared,
            bytes_compared: stats.bytes_compared,
            entries: stats.entries,
            seconds: began.elapsed().as_secs_f64(),
            ended_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        self.status
            .resynchronised(self.dir.index, progress.report().rate, resync);
        // After the log line: who sees `mirroring` finds it.
        self.status.set(self.dir.index, Activity::Mirroring, None);
        self.fence.current(self.dir.index);
        Ok(())
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
            if self.pause(POLL) {
                return false;
            }
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

/// Every [`PROGRESS_LOG`] of a resynchronisation until `finished` is
/// disconnected: how far it is.
fn log_progress(log: &ModuleLog, path: &str, progress: &Progress, finished: mpsc::Receiver<()>) {
    let mut next = std::time::Instant::now() + PROGRESS_LOG;
    while let Err(RecvTimeoutError::Timeout) =
        finished.recv_timeout(next.saturating_duration_since(std::time::Instant::now()))
    {
        next += PROGRESS_LOG;
        let report = ResyncProgress::from(progress.report());
        log.write(
            LogLevel::Info,
            &format!("resynchronising {path}: {}", report.describe()),
        );
    }
}
