//! The primary's side of one replicated directory: the I/O shell of its
//! [`ConnectorCore`], where the failure policy is decided
//! (`holdfast_membership::connector`: degrade or block, hold then ALONE,
//! fencing through the witness).
//!
//! A connector thread feeds the core what it observes — the peer's state,
//! the witness's fence, the connection broken, the oldest unacknowledged
//! change — whenever the module's [`Bell`] rings or the core's deadline
//! comes, and carries out its actions ([`LinkControl`]): for `Connect`,
//! it connects, exchanges generations, [`decide`]s and resynchronises
//! (Forward, then Mirror), then tells the core how it went; it holds,
//! tracks or closes the link, and tells the fence and `holdfast state`.

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_key::ClusterKey;
use holdfast_membership::connector::{ConnectorAction, ConnectorCore, FailedChange, LinkState};
use holdfast_membership::LogLevel;
use holdfast_replication::generation::StoreError;
use holdfast_replication::resync::{Answer, Request};
use holdfast_replication::{
    decide, plan, resync, Decision, Link, OnFailure, Peer, Plan, Progress, Refusal,
    ReplicationError, ResyncError, Scope, TcpReplicator, Tree,
};
use parking_lot::Mutex;

use super::bell::Bell;
use super::directory::Dir;
use super::fence::PeerFence;
use super::status::{Activity, LastResync, ReplicationStatus, ResyncProgress, TrackedChanges};
use super::stop::StopSignal;
use super::PeerSecond;
use crate::modlog::ModuleLog;

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
    #[error("resynchronisation of {path} failed: {source}")]
    Resync { path: String, source: ResyncError },
    #[error(transparent)]
    Record(#[from] StoreError),
}

/// What a change the secondary fails returns, as the core decided.
pub(super) fn on_failure(failed: FailedChange) -> OnFailure {
    match failed {
        FailedChange::Succeed => OnFailure::Track,
        FailedChange::Wait => OnFailure::Wait,
    }
}

/// One directory's link and what shows it: where its core's decisions
/// are carried out, by the connector thread and by the release.
#[derive(Debug, Clone)]
pub(super) struct LinkControl {
    pub(super) dir: Dir,
    pub(super) link: Link,
    pub(super) tree: Tree,
    pub(super) core: Arc<Mutex<ConnectorCore>>,
    /// The connection while a session is up.
    pub(super) current: Arc<Mutex<Option<Arc<TcpReplicator>>>>,
    pub(super) log: ModuleLog,
    pub(super) status: ReplicationStatus,
    pub(super) fence: Arc<PeerFence>,
}

impl LinkControl {
    /// Feeds the core `input` and carries out its decisions; the session
    /// it asks for (`Connect`, with its send timeout), if it does.
    pub(super) fn feed(
        &self,
        input: impl FnOnce(&mut ConnectorCore, Instant),
    ) -> Option<Option<Duration>> {
        let actions = {
            let mut core = self.core.lock();
            input(&mut core, Instant::now());
            core.take_actions()
        };
        let mut connect = None;
        for action in actions {
            connect = self.carry_out(action).or(connect);
        }
        connect
    }

    /// Carries out `action`, but for a session, which it returns: the
    /// connector thread runs it.
    fn carry_out(&self, action: ConnectorAction) -> Option<Option<Duration>> {
        let index = self.dir.index;
        match action {
            ConnectorAction::Connect { send_timeout } => return Some(send_timeout),
            ConnectorAction::Disconnect { left_behind } => {
                if let Some(peer) = self.current.lock().take() {
                    if left_behind {
                        // If it reads again before the connection is gone,
                        // it learns (as at the start of a resync) that its
                        // copy is incomplete, and is never promoted with it.
                        let source = self.dir.store().load().ok().flatten().unwrap_or_default();
                        let _ = peer.tell(&Request::Begin {
                            source: source.current,
                        });
                    }
                    peer.close();
                }
            }
            ConnectorAction::Hold => {
                let _order = self.tree.lock();
                self.link.hold();
            }
            ConnectorAction::Track => self.go_alone(),
            ConnectorAction::Close => {
                let _order = self.tree.lock();
                self.link.close();
            }
            ConnectorAction::TrackUntilUnmounted => {
                let _order = self.tree.lock();
                self.link.track();
            }
            ConnectorAction::PeerOutdated => self.fence.outdated(index),
            ConnectorAction::PeerCurrent => self.fence.current(index),
            ConnectorAction::PeerUnknown => self.fence.unknown(index),
            ConnectorAction::Show(state) => {
                let activity = match state {
                    LinkState::Tracking => Activity::Tracking,
                    LinkState::Holding => Activity::Holding,
                    LinkState::Mirroring => Activity::Mirroring,
                };
                self.status.set(index, activity, None);
            }
            ConnectorAction::Problem(problem) => self.status.problem(index, problem),
            ConnectorAction::Log(level, message) => self.log.write(level, &message),
        }
        None
    }

    /// The secondary is gone: a new generation before changes it misses.
    fn go_alone(&self) {
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
    }
}

/// The primary's connection to the secondary, for one directory.
pub(super) struct Connector {
    pub(super) module: String,
    pub(super) key: ClusterKey,
    pub(super) peers: Vec<IpAddr>,
    pub(super) peer_second: Arc<PeerSecond>,
    /// Stops the connector (with a ring of the bell).
    pub(super) stop: StopSignal,
    pub(super) bell: Arc<Bell>,
    pub(super) control: LinkControl,
}

impl Connector {
    pub(super) fn run(self) {
        loop {
            let seen = self.bell.rung();
            if self.stop.stopped() {
                return;
            }
            let mut connect = self.control.feed(|core, now| self.observe(core, now));
            while let Some(send_timeout) = connect {
                connect = self.session(send_timeout);
            }
            let deadline = self.control.core.lock().next_deadline();
            self.bell.wait(seen, deadline);
        }
    }

    /// Tells the core what it may not know yet.
    fn observe(&self, core: &mut ConnectorCore, now: Instant) {
        if let Some(peer) = self.control.current.lock().as_ref() {
            match peer.broken() {
                Some(e) => core.connection_lost(now, e.to_string()),
                None => core.unacknowledged(now, peer.oldest_unacknowledged()),
            }
        }
        core.peer_second(now, self.peer_second.get());
        if self.control.fence.is_fenced(self.control.dir.index) {
            core.fenced(now);
        }
    }

    /// Connects, brings the peer up to date and tells the core how it
    /// went (nothing once stopped: the release decides from what the core
    /// knew); the session the core asks for next, if any.
    fn session(&self, send_timeout: Option<Duration>) -> Option<Option<Duration>> {
        let path = self.control.dir.path.display().to_string();
        let mut resynchronising = false;
        let result = self.bring_up(send_timeout, &path, &mut resynchronising);
        if self.stop.stopped() {
            return None;
        }
        match result {
            Ok(()) => self.control.feed(|core, now| core.resynchronised(now)),
            Err(e) => {
                if let Some(peer) = self.control.current.lock().take() {
                    peer.close();
                }
                self.control
                    .feed(|core, now| core.session_failed(now, e.to_string(), resynchronising))
            }
        }
    }

    /// Connects and brings the peer up to date (`resynchronising` once
    /// the link is handed to the resynchronisation).
    fn bring_up(
        &self,
        send_timeout: Option<Duration>,
        path: &str,
        resynchronising: &mut bool,
    ) -> Result<(), SessionError> {
        let mut connected = None;
        let mut last = None;
        let port = self.control.dir.port;
        for address in &self.peers {
            match TcpReplicator::connect(SocketAddr::new(*address, port), &self.key) {
                Ok(r) => {
                    connected = Some(r);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let peer = Arc::new(connected.ok_or(SessionError::Unreachable {
            path: path.to_string(),
            last,
        })?);
        peer.set_send_timeout(send_timeout);
        let bell = self.bell.clone();
        peer.on_break(move || bell.ring());
        *self.control.current.lock() = Some(peer.clone());
        if self.stop.stopped() {
            return Ok(());
        }
        self.bring_up_to_date(&peer, path, resynchronising)
    }

    fn bring_up_to_date(
        &self,
        peer: &Arc<TcpReplicator>,
        path: &str,
        resynchronising: &mut bool,
    ) -> Result<(), SessionError> {
        let LinkControl {
            dir,
            link,
            tree,
            log,
            status,
            ..
        } = &self.control;
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
        let store = dir.store();
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
        let lost = link.log().lost();
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
            let tracked = holdfast_replication::tracked(tree, link.log());
            let rate = status.last_rate(dir.index);
            log.write(
                LogLevel::Info,
                &format!("{path}: {}", TrackedChanges::new(tracked, rate).describe()),
            );
        }
        log.write(
            LogLevel::Info,
            &format!(
                "resynchronising {path} to the secondary ({})",
                plan.describe()
            ),
        );
        let progress = Arc::new(Progress::default());
        status.set(dir.index, Activity::Resynchronising, Some(progress.clone()));
        status.basis(dir.index, plan.describe());
        let (finishing, finished) = mpsc::channel();
        let began = Instant::now();
        *resynchronising = true;
        let stats = std::thread::scope(|scope| {
            scope.spawn(|| log_progress(log, path, &progress, finished));
            let result = resync(tree, link, peer.clone(), ours.current, &covers, &progress);
            drop(finishing);
            result
        })
        .map_err(|source| SessionError::Resync {
            path: path_of(),
            source,
        })?;
        let mut ours = store.load()?.unwrap_or_default();
        ours.peer_synced();
        store.save(&ours)?;
        log.write(
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
        status.resynchronised(dir.index, progress.report().rate, resync);
        Ok(())
    }
}

/// Every [`PROGRESS_LOG`] of a resynchronisation until `finished` is
/// disconnected: how far it is.
fn log_progress(log: &ModuleLog, path: &str, progress: &Progress, finished: mpsc::Receiver<()>) {
    let mut next = Instant::now() + PROGRESS_LOG;
    while let Err(RecvTimeoutError::Timeout) =
        finished.recv_timeout(next.saturating_duration_since(Instant::now()))
    {
        next += PROGRESS_LOG;
        let report = ResyncProgress::from(progress.report());
        log.write(
            LogLevel::Info,
            &format!("resynchronising {path}: {}", report.describe()),
        );
    }
}
