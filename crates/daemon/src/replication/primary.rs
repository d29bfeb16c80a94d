//! The primary's resources of one replicated directory: mounted with
//! [`Mirror::mount`] over a [`Link`] that tracks changes (durable change
//! log) until a secondary is connected, a [`Connector`] to the peer, and
//! their release.

use std::net::IpAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use holdfast_config::OnSecondaryFailure;
use holdfast_key::ClusterKey;
use holdfast_membership::connector::{ConnectorCore, ConnectorSettings};
use holdfast_membership::LogLevel;
use holdfast_replication::generation::StoreError;
use holdfast_replication::{
    ChangeLog, Durability, Link, Mirror, MountGuard, MountOptions, Recovery, Tail, TailLimits,
    TrackingConfig, TrackingError,
};
use parking_lot::Mutex;

use super::bell::Bell;
use super::connector::{on_failure, Connector, LinkControl};
use super::directory::{detach_stale_mounts, Dir};
use super::fence::PeerFence;
use super::status::{Activity, ReplicationStatus};
use super::stop::{stop_signal, Stopper};
use super::PeerSecond;
use crate::modlog::ModuleLog;

/// How long a release waits for its connector to end.
const CONNECTOR_END: Duration = Duration::from_secs(2);

/// Why a replicated directory could not be mounted as primary.
#[derive(Debug, thiserror::Error)]
pub(super) enum MountError {
    #[error(transparent)]
    Record(#[from] StoreError),
    #[error(transparent)]
    ChangeLog(#[from] TrackingError),
    #[error(transparent)]
    Mount(#[from] holdfast_replication::MountError),
}

/// What a module's primary directories share with their connectors.
#[derive(Debug, Clone)]
pub(super) struct Primaries {
    pub(super) module: String,
    pub(super) key: ClusterKey,
    pub(super) peers: Vec<IpAddr>,
    /// The peer is SECOND (set by the module task).
    pub(super) peer_second: Arc<PeerSecond>,
    pub(super) log: ModuleLog,
    pub(super) status: ReplicationStatus,
    /// `[replication]`'s answer to a live secondary that fails.
    pub(super) on_failure: OnSecondaryFailure,
    pub(super) ack_timeout: Duration,
    pub(super) fence: Arc<PeerFence>,
    /// Wakes the connectors.
    pub(super) bell: Arc<Bell>,
    pub(super) durability: Durability,
    pub(super) limits: TailLimits,
}

/// A replicated directory mounted as primary, and its connector.
pub(super) struct PrimaryDir {
    guard: Option<MountGuard>,
    control: LinkControl,
    /// Stops the connector (with a ring of the bell, it wakes at once).
    stopper: Stopper,
    connector: Option<JoinHandle<()>>,
}

impl PrimaryDir {
    pub(super) fn mount(dir: &Dir, with: &Primaries) -> Result<Self, MountError> {
        detach_stale_mounts(dir, &with.log);
        let store = dir.store();
        let mut generations = dir.record_unknown_data()?;
        let (changelog, recovery) = ChangeLog::open(&dir.log_dir(), TrackingConfig::default())?;
        if let Recovery::Lost { reason } = &recovery {
            with.log.write(
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
        store.save(&generations)?;
        let link = Link::tracking(Arc::new(changelog));
        let core = ConnectorCore::new(ConnectorSettings {
            directory: dir.path.display().to_string(),
            on_failure: with.on_failure,
            ack_timeout: with.ack_timeout,
            witness: with.fence.witness(),
        });
        // Before the first change: nothing is mounted yet.
        let start = core.start();
        link.set_on_failure(on_failure(start.failed_changes));
        if start.held {
            link.hold();
            with.fence.outdated(dir.index);
        }
        let options = MountOptions {
            exclusions: dir.exclusions.clone(),
            durability: with.durability,
            limits: with.limits,
        };
        let guard = Mirror::mount_with(&dir.path, Arc::new(link.clone()), options)?;
        with.log.write(
            LogLevel::Info,
            &format!(
                "replicated directory {} mounted (tracking changes until the secondary is connected)",
                dir.path.display()
            ),
        );
        let (stopper, signal) = stop_signal();
        let control = LinkControl {
            dir: dir.clone(),
            link,
            tree: guard.tree(),
            core: Arc::new(Mutex::new(core)),
            current: Arc::new(Mutex::new(None)),
            log: with.log.clone(),
            status: with.status.clone(),
            fence: with.fence.clone(),
        };
        let connector = Connector {
            module: with.module.clone(),
            key: with.key.clone(),
            peers: with.peers.clone(),
            peer_second: with.peer_second.clone(),
            stop: signal,
            bell: with.bell.clone(),
            control: control.clone(),
        };
        let connector = std::thread::Builder::new()
            .name(format!("repl-conn-{}", dir.index))
            .spawn(move || connector.run())
            .ok();
        Ok(PrimaryDir {
            guard: Some(guard),
            control,
            stopper,
            connector,
        })
    }

    /// Stops replicating and unmounts.
    pub(super) fn release(mut self, with: &Primaries) {
        self.stopper.stop();
        with.bell.ring();
        if let Some(peer) = self.control.current.lock().as_ref() {
            peer.close();
        }
        if let Some(t) = self.connector.take() {
            // Bounded: a connector stuck connecting is left to notice
            // the stop by itself (it checks it before using the tree).
            if self.stopper.ended_within(CONNECTOR_END) {
                let _ = t.join();
            } else {
                with.log.write(
                    LogLevel::Error,
                    &format!(
                        "replication connector of {} still busy; left to end by itself",
                        self.control.dir.path.display()
                    ),
                );
            }
        }
        // Closed or tracking until unmounted, as the core decides; the
        // peer's copy is not reported any more.
        self.control.feed(|core, _| core.release());
        if let Some(guard) = self.guard.take() {
            let path = guard.path().display().to_string();
            match guard.unmount() {
                Ok(()) => with.log.write(LogLevel::Info, &format!("{path} unmounted")),
                Err(e) => with
                    .log
                    .write(LogLevel::Error, &format!("unmounting {path}: {e}")),
            }
        }
        let LinkControl { dir, link, .. } = &self.control;
        if let Err(e) = link.log().checkpoint() {
            with.log.write(LogLevel::Error, &e.to_string());
        }
        with.status.set(dir.index, Activity::Idle, None);
        with.status.primary(dir.index, None);
        if link.refused() > 0 {
            // They were applied here: this copy stays `unclean`, its
            // activity log (which holds them) kept for the next
            // resynchronisation into it.
            with.log.write(
                LogLevel::Error,
                &format!(
                    "{}: {} changes the secondary lacks were refused (not acknowledged)",
                    dir.path.display(),
                    link.refused()
                ),
            );
            return;
        }
        let store = dir.store();
        if let Ok(Some(mut g)) = store.load() {
            g.stopped_cleanly();
            if let Err(e) = store.save(&g) {
                with.log.write(LogLevel::Error, &e.to_string());
            }
        }
        // After the record says clean: whatever was mirrored was
        // acknowledged or is in the change log.
        if let Err(e) = link.log().clear_activity() {
            with.log.write(LogLevel::Error, &e.to_string());
        }
    }

    /// The directory's change log, tree and unacknowledged tail, for
    /// [`ReplicationStatus`].
    pub(super) fn tracked(&self) -> Option<(Link, holdfast_replication::Tree, Tail)> {
        self.guard
            .as_ref()
            .map(|g| (self.control.link.clone(), g.tree(), g.tail()))
    }
}
