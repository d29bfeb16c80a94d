//! The primary's resources of one replicated directory: mounted with
//! [`Mirror::mount`] over a [`Link`] that tracks changes (durable change
//! log) until a secondary is connected, a [`Connector`] to the peer, and
//! their release.

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use holdfast_config::OnSecondaryFailure;
use holdfast_key::ClusterKey;
use holdfast_membership::LogLevel;
use holdfast_replication::generation::StoreError;
use holdfast_replication::{
    ChangeLog, Link, LinkMode, Mirror, MountGuard, OnFailure, Recovery, TcpReplicator,
    TrackingConfig, TrackingError,
};
use parking_lot::Mutex;

use super::connector::{Connector, FailurePolicy};
use super::directory::{detach_stale_mounts, Dir};
use super::status::{Activity, ReplicationStatus};
use super::stop::{stop_signal, Stopper};
use crate::modlog::ModuleLog;
use crate::peer_fence::PeerFence;

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
    pub(super) peer_second: Arc<AtomicBool>,
    pub(super) log: ModuleLog,
    pub(super) status: ReplicationStatus,
    pub(super) policy: FailurePolicy,
    pub(super) fence: Arc<PeerFence>,
}

/// A replicated directory mounted as primary, and its connector.
pub(super) struct PrimaryDir {
    guard: Option<MountGuard>,
    link: Link,
    /// Stops the connector (it wakes at once).
    stopper: Stopper,
    peer: Arc<Mutex<Option<Arc<TcpReplicator>>>>,
    connector: Option<JoinHandle<()>>,
    dir: Dir,
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
        let fencing = with.fence.outdated(dir.index).is_some();
        // With a witness, nothing the peer lacks is acknowledged before
        // its copy is fenced: changes wait, then the connector decides.
        link.set_on_failure(match with.policy.on_failure {
            OnSecondaryFailure::Degrade if !fencing => OnFailure::Track,
            _ => OnFailure::Wait,
        });
        if fencing {
            link.hold();
        }
        let guard =
            Mirror::mount_excluding(&dir.path, Arc::new(link.clone()), dir.exclusions.clone())?;
        with.log.write(
            LogLevel::Info,
            &format!(
                "replicated directory {} mounted (tracking changes until the secondary is connected)",
                dir.path.display()
            ),
        );
        let (stopper, signal) = stop_signal();
        let peer = Arc::new(Mutex::new(None));
        let connector = Connector {
            module: with.module.clone(),
            key: with.key.clone(),
            dir: dir.clone(),
            link: link.clone(),
            tree: guard.tree(),
            peers: with.peers.clone(),
            peer_second: with.peer_second.clone(),
            stop: signal,
            current: peer.clone(),
            log: with.log.clone(),
            status: with.status.clone(),
            policy: with.policy,
            fence: with.fence.clone(),
        };
        let connector = std::thread::Builder::new()
            .name(format!("repl-conn-{}", dir.index))
            .spawn(move || connector.run())
            .ok();
        Ok(PrimaryDir {
            guard: Some(guard),
            link,
            stopper,
            peer,
            connector,
            dir: dir.clone(),
        })
    }

    /// Stops replicating and unmounts.
    pub(super) fn release(mut self, with: &Primaries) {
        self.stopper.stop();
        if let Some(peer) = self.peer.lock().as_ref() {
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
                        self.dir.path.display()
                    ),
                );
            }
        }
        if let Some(guard) = self.guard.take() {
            {
                let tree = guard.tree();
                let _order = tree.lock();
                // Held changes the secondary never got, and any change
                // until unmounted, are not acknowledged: the secondary
                // may take over — unless the witness fenced it.
                let unfenced = with.fence.unfenced(self.dir.index);
                if unfenced || self.link.mode() == LinkMode::Hold {
                    self.link.close();
                } else {
                    self.link.track();
                }
            }
            let path = guard.path().display().to_string();
            match guard.unmount() {
                Ok(()) => with.log.write(LogLevel::Info, &format!("{path} unmounted")),
                Err(e) => with
                    .log
                    .write(LogLevel::Error, &format!("unmounting {path}: {e}")),
            }
        }
        if let Err(e) = self.link.log().checkpoint() {
            with.log.write(LogLevel::Error, &e.to_string());
        }
        with.status.set(self.dir.index, Activity::Idle, None);
        with.status.primary(self.dir.index, None);
        with.fence.unknown(self.dir.index);
        if self.link.refused() > 0 {
            // They were applied here: this copy stays `unclean`, its
            // activity log (which holds them) kept for the next
            // resynchronisation into it.
            with.log.write(
                LogLevel::Error,
                &format!(
                    "{}: {} changes the secondary lacks were refused (not acknowledged)",
                    self.dir.path.display(),
                    self.link.refused()
                ),
            );
            return;
        }
        let store = self.dir.store();
        if let Ok(Some(mut g)) = store.load() {
            g.stopped_cleanly();
            if let Err(e) = store.save(&g) {
                with.log.write(LogLevel::Error, &e.to_string());
            }
        }
        // After the record says clean: whatever was mirrored was
        // acknowledged or is in the change log.
        if let Err(e) = self.link.log().clear_activity() {
            with.log.write(LogLevel::Error, &e.to_string());
        }
    }

    /// The directory's change log and tree, for [`ReplicationStatus`].
    pub(super) fn tracked(&self) -> Option<(Link, holdfast_replication::Tree)> {
        self.guard.as_ref().map(|g| (self.link.clone(), g.tree()))
    }
}
