//! The [`Link`] that switches the file system between mirroring, tracking
//! and resynchronising, and what it does when the secondary fails.

use parking_lot::{Condvar, Mutex};
use std::collections::HashSet;
use std::sync::Arc;

use super::change_log::{ChangeLog, TrackingError};
use super::unapplied::{Footprint, Unapplied};
use crate::mark::Mark;
use crate::op::{Ack, Change, Intent, ReplicationError, Replicator};

/// Where changes go now.
#[derive(Clone)]
enum Mode {
    /// Synchronous mirroring: nothing tracked (the peer acknowledges all).
    Mirror(Arc<dyn Replicator>),
    /// ALONE: recorded, acknowledged at once.
    Track,
    /// Resynchronising: recorded *and* forwarded; a failure of the peer is
    /// not the application's (the change is recorded): back to tracking
    /// (to holding with [`OnFailure::Wait`]).
    Forward(Arc<dyn Replicator>),
    /// The secondary failed and [`OnFailure::Wait`]: recorded, and
    /// acknowledged once a resynchronisation brought it to the secondary
    /// (or the link tracks).
    Hold,
    /// The primary role is ending and the secondary may take over without
    /// what it lacks: recorded, and failed ([`Link::close`]).
    Closed,
}

impl std::fmt::Debug for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Mirror(_) => "Mirror",
            Mode::Track => "Track",
            Mode::Forward(_) => "Forward",
            Mode::Hold => "Hold",
            Mode::Closed => "Closed",
        })
    }
}

#[derive(Debug)]
struct LinkInner {
    mode: Mutex<Mode>,
    log: Arc<ChangeLog>,
    on_failure: Mutex<OnFailure>,
    counters: Mutex<Counters>,
    /// Notified when a counter changes.
    changed: Condvar,
    /// Mirrored changes the secondary may not have applied; recorded in
    /// the log (in stream order, under this lock) when mirroring ends.
    unapplied: Mutex<Unapplied>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Mirrored changes whose acknowledgement has not been handled: a
    /// resynchronisation starts only once each failed one is recorded.
    in_flight: u64,
    /// Bumped when the link tracks or mirrors again (after a resync): a
    /// change waiting for the secondary ([`OnFailure::Wait`]) is covered.
    releases: u64,
    /// The release that closed the link ([`Link::close`]).
    closed: Option<u64>,
    /// Changes failed because the link was closed.
    refused: u64,
}

/// What a mirroring [`Link`] does with an operation whose change the
/// secondary failed to acknowledge (connection lost, change refused).
/// In every case the change is first recorded, durably, for the next
/// resynchronisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// The operation fails (`EIO`).
    #[default]
    Fail,
    /// The operation succeeds: the primary goes on without the secondary.
    Track,
    /// The operation waits until the secondary has the change (a
    /// resynchronisation begun after the failure completed) or the link
    /// tracks (the secondary was declared lost).
    Wait,
}

/// The [`Replicator`] the file system is mounted with: mirrors, tracks or
/// both, switched by the daemon (and by a resynchronisation).
#[derive(Debug, Clone)]
pub struct Link(Arc<LinkInner>);

/// What the link is doing, for status displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Mirror,
    Track,
    Forward,
    Hold,
    Closed,
}

impl Link {
    fn new(log: Arc<ChangeLog>, mode: Mode) -> Self {
        Link(Arc::new(LinkInner {
            mode: Mutex::new(mode),
            log,
            on_failure: Mutex::new(OnFailure::default()),
            counters: Mutex::new(Counters::default()),
            changed: Condvar::new(),
            unapplied: Mutex::new(Unapplied::default()),
        }))
    }

    /// Starts tracking (ALONE).
    pub fn tracking(log: Arc<ChangeLog>) -> Self {
        Self::new(log, Mode::Track)
    }

    /// Starts mirroring to an in-sync peer.
    pub fn mirroring(log: Arc<ChangeLog>, peer: Arc<dyn Replicator>) -> Self {
        Self::new(log, Mode::Mirror(peer))
    }

    /// What an operation does when the secondary fails it (from now on).
    pub fn set_on_failure(&self, policy: OnFailure) {
        *self.0.on_failure.lock() = policy;
    }

    /// Waits until every failed mirrored change is recorded: call under
    /// the tree's ordering lock before taking the resync's work list.
    pub(crate) fn settle(&self) {
        self.record_unapplied_now();
        let mut counters = self.0.counters.lock();
        while counters.in_flight > 0 {
            self.0.changed.wait(&mut counters);
        }
    }

    fn release(&self) {
        self.0.counters.lock().releases += 1;
        self.0.changed.notify_all();
    }

    pub fn log(&self) -> &Arc<ChangeLog> {
        &self.0.log
    }

    pub fn mode(&self) -> LinkMode {
        match *self.0.mode.lock() {
            Mode::Mirror(_) => LinkMode::Mirror,
            Mode::Track => LinkMode::Track,
            Mode::Forward(_) => LinkMode::Forward,
            Mode::Hold => LinkMode::Hold,
            Mode::Closed => LinkMode::Closed,
        }
    }

    /// The secondary failed, [`OnFailure::Wait`]: from the next change on,
    /// record and wait for it. Call under the tree's ordering lock.
    pub fn hold(&self) {
        self.record_unapplied_now();
        *self.0.mode.lock() = Mode::Hold;
    }

    /// A resynchronisation failed: back to tracking, or to holding with
    /// [`OnFailure::Wait`]. Call under the tree's ordering lock.
    pub(crate) fn fall_back(&self) {
        if *self.0.on_failure.lock() == OnFailure::Wait {
            self.hold();
        } else {
            self.track();
        }
    }

    /// Blocks until the link releases changes recorded before `seen`;
    /// an error if that release refused them.
    fn wait_release(&self, seen: u64) -> Result<(), ReplicationError> {
        let mut counters = self.0.counters.lock();
        while counters.releases == seen && counters.closed.is_none() {
            self.0.changed.wait(&mut counters);
        }
        // Refused if the first release after `seen` (the one ending the
        // wait) closed the link, or it was closed before.
        if counters.closed.is_some_and(|at| at <= seen + 1) {
            counters.refused += 1;
            return Err(ReplicationError::Withdrawn);
        }
        Ok(())
    }

    /// The primary role ends and the secondary may take over without what
    /// it lacks: held changes, and any change from now on, fail (`EIO`) —
    /// never acknowledged. They stay recorded (and applied here). Call
    /// under the tree's ordering lock.
    pub fn close(&self) {
        self.record_unapplied_now();
        *self.0.mode.lock() = Mode::Closed;
        let mut counters = self.0.counters.lock();
        counters.releases += 1;
        counters.closed = Some(counters.releases);
        self.0.changed.notify_all();
    }

    /// How many changes failed because the link was closed: this copy then
    /// holds changes no one acknowledged.
    pub fn refused(&self) -> u64 {
        self.0.counters.lock().refused
    }

    /// Goes ALONE: from the next change on, record instead of send. Call
    /// under the tree's ordering lock so no change is half-way.
    pub fn track(&self) {
        self.record_unapplied_now();
        *self.0.mode.lock() = Mode::Track;
        self.release();
    }

    pub(crate) fn forward(&self, peer: Arc<dyn Replicator>) {
        *self.0.mode.lock() = Mode::Forward(peer);
    }

    pub(crate) fn mirror(&self, peer: Arc<dyn Replicator>) {
        *self.0.mode.lock() = Mode::Mirror(peer);
        self.release();
    }

    fn tracking_error(e: TrackingError) -> ReplicationError {
        ReplicationError::Tracking(e.to_string())
    }

    /// Records the mirrored changes the secondary may not have applied,
    /// then `own` (a change of a replicator that does not number them);
    /// the order of the stream is kept by holding the window's lock.
    fn record_unapplied(&self, own: Option<Footprint>) -> Result<(), TrackingError> {
        // What the secondary said last, maybe after the last change sent.
        let applied = match &*self.0.mode.lock() {
            Mode::Mirror(peer) => peer.applied(),
            _ => None,
        };
        let mut window = self.0.unapplied.lock();
        if let Some(applied) = applied {
            window.applied(applied);
        }
        let mut changes = window.take();
        changes.extend(own);
        self.0.log.record_unapplied(&changes)
    }

    /// Mirroring ends (or a resynchronisation takes its work list): what
    /// the secondary may lack is recorded first.
    fn record_unapplied_now(&self) {
        if let Err(e) = self.record_unapplied(None) {
            tracing::error!("recording the changes the secondary may lack: {e}");
        }
    }

    /// The activity-log regions of mirrored changes the secondary may not
    /// have applied; `None` when that is unknown (the peer does not number
    /// its changes and some are in flight).
    fn busy(&self, peer: &dyn Replicator) -> Option<HashSet<Mark>> {
        let applied = peer.applied();
        let mut window = self.0.unapplied.lock();
        match applied {
            Some(applied) => window.applied(applied),
            None if self.0.counters.lock().in_flight > 0 => return None,
            None => {}
        }
        Some(
            window
                .0
                .iter()
                .flat_map(|(_, touched)| touched.intents())
                .flat_map(|intent| Mark::mirrored(&intent))
                .collect(),
        )
    }

    /// A mirrored change was sent as number `seq`; the secondary has
    /// applied those below `applied`.
    fn sent(&self, seq: u64, applied: Option<u64>, change: &Change) {
        let mut window = self.0.unapplied.lock();
        if let Some(applied) = applied {
            window.applied(applied);
        }
        window.push(seq, Footprint::of(change));
    }
}

/// A mirrored change whose acknowledgement is awaited, counted until it
/// is handled — or dropped unhandled, so a resync never waits for it.
struct InFlight(Link);

impl InFlight {
    fn new(link: &Link) -> Self {
        link.0.counters.lock().in_flight += 1;
        InFlight(link.clone())
    }

    fn link(&self) -> Link {
        self.0.clone()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0 .0.counters.lock().in_flight -= 1;
        self.0 .0.changed.notify_all();
    }
}

impl Link {
    /// The secondary failed `change` (`in_flight`: its acknowledgement
    /// was awaited): recorded; returns the release count to wait past.
    fn record_failed(
        &self,
        own: Option<Footprint>,
        in_flight: Option<InFlight>,
    ) -> Result<u64, ReplicationError> {
        let recorded = self.record_unapplied(own);
        // Read before counting this change handled: any resync begun
        // after that includes it, and releases after this reading.
        let seen = self.0.counters.lock().releases;
        drop(in_flight);
        recorded.map_err(Self::tracking_error)?;
        Ok(seen)
    }

    /// What the operation of a failed, recorded change returns, by
    /// [`OnFailure`]. Never call under the tree's ordering lock: it may wait.
    fn failure_outcome(&self, error: ReplicationError, seen: u64) -> Result<(), ReplicationError> {
        let policy = *self.0.on_failure.lock();
        match policy {
            OnFailure::Fail => Err(error),
            OnFailure::Track => Ok(()),
            OnFailure::Wait => self.wait_release(seen).map_err(|_| error),
        }
    }
}

impl Replicator for Link {
    fn prepare(&self, intent: &Intent<'_>) -> Result<(), ReplicationError> {
        let mode = self.0.mode.lock().clone();
        match mode {
            Mode::Mirror(peer) => self
                .0
                .log
                .prepare_mirrored(intent, || self.busy(peer.as_ref()))
                .map_err(Self::tracking_error),
            Mode::Hold | Mode::Closed => {
                self.0.log.prepare(intent).map_err(Self::tracking_error)?;
                // Applied here, acknowledged to no one (yet, or ever): if
                // the secondary takes over, they are to undo here. Kept
                // (nothing evicted) meanwhile.
                self.0
                    .log
                    .prepare_mirrored(intent, || None)
                    .map_err(Self::tracking_error)
            }
            Mode::Track | Mode::Forward(_) => {
                self.0.log.prepare(intent).map_err(Self::tracking_error)
            }
        }
    }

    /// Tracked changes need no times: a resynchronisation sends what the
    /// files hold then. (Modes change under the tree's ordering lock, under
    /// which the file system asks.)
    fn stamps(&self) -> bool {
        matches!(*self.0.mode.lock(), Mode::Mirror(_) | Mode::Forward(_))
    }

    fn submit(&self, change: &Change) -> Result<Ack, ReplicationError> {
        let mode = self.0.mode.lock().clone();
        match mode {
            Mode::Track => {
                self.0.log.record(change).map_err(Self::tracking_error)?;
                Ok(Ack::done(Ok(())))
            }
            Mode::Closed => {
                self.0.log.record(change).map_err(Self::tracking_error)?;
                self.0.counters.lock().refused += 1;
                Err(ReplicationError::Withdrawn)
            }
            Mode::Hold => {
                self.0.log.record(change).map_err(Self::tracking_error)?;
                // Under the ordering lock: a resync begun after this
                // includes the change, and releases after this reading.
                let seen = self.0.counters.lock().releases;
                let link = self.clone();
                Ok(Ack::done(Ok(())).map(move |r| link.wait_release(seen).and(r)))
            }
            Mode::Forward(peer) => {
                self.0.log.record(change).map_err(Self::tracking_error)?;
                // Under the ordering lock: if this change fails, the
                // resync running fails too, and the next one includes it.
                let seen = self.0.counters.lock().releases;
                let link = self.clone();
                // Recorded above: the application's change is safe; with
                // `OnFailure::Wait` it waits for the secondary all the same.
                let fallback = move |e: ReplicationError| {
                    tracing::warn!("resynchronisation interrupted ({e}): tracking again");
                    let hold = *link.0.on_failure.lock() == OnFailure::Wait;
                    {
                        let mut mode = link.0.mode.lock();
                        if matches!(*mode, Mode::Forward(_)) {
                            *mode = if hold { Mode::Hold } else { Mode::Track };
                        }
                    }
                    if hold {
                        link.wait_release(seen)?;
                    }
                    Ok(())
                };
                let ack = match peer.submit(change) {
                    Ok(ack) => ack,
                    Err(e) => Ack::done(Err(e)),
                };
                Ok(ack.map_failure(fallback))
            }
            Mode::Mirror(peer) => match peer.submit(change) {
                Ok(ack) => {
                    let in_flight = InFlight::new(self);
                    // Numbered: kept until known applied. Otherwise an
                    // acknowledged change is applied; a failed one is
                    // recorded from here.
                    let own = match ack.seq() {
                        Some(seq) => {
                            self.sent(seq, peer.applied(), change);
                            None
                        }
                        None => Some(Footprint::of(change)),
                    };
                    Ok(ack.map_failure(move |e| {
                        let link = in_flight.link();
                        let seen = link.record_failed(own, Some(in_flight))?;
                        link.failure_outcome(e, seen)
                    }))
                }
                Err(e) => {
                    // Under the ordering lock: recorded now, waited for
                    // (if at all) with the acknowledgement.
                    let seen = self.record_failed(Some(Footprint::of(change)), None)?;
                    let link = self.clone();
                    Ok(Ack::done(Ok(())).map(move |_| link.failure_outcome(e, seen)))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    use crate::activity;
    use crate::mark::EXTENT;
    use crate::tracking::change_log::TrackingConfig;
    use crate::tracking::examples::data;

    #[test]
    fn held_and_refused_changes_are_in_the_activity_log_tracked_ones_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = ChangeLog::open(tmp.path(), TrackingConfig::default()).unwrap();
        let link = Link::tracking(Arc::new(log));
        let regions = || match activity::load(tmp.path()) {
            activity::Activity::Regions(r) => r,
            lost => panic!("{lost:?}"),
        };
        // ALONE: the change log covers it, the activity log has no say.
        link.prepare(&data("alone", 0, 1)).unwrap();
        assert!(regions().is_empty());
        // Held for the secondary, then refused as the primary role ends:
        // applied here, acknowledged to no one.
        link.hold();
        link.prepare(&data("held", 0, 1)).unwrap();
        link.close();
        link.prepare(&data("refused", EXTENT, 1)).unwrap();
        let paths: Vec<PathBuf> = regions().iter().map(|m| m.path().to_path_buf()).collect();
        assert_eq!(paths, vec![PathBuf::from("held"), PathBuf::from("refused")]);
        // Both are tracked for when this node sends, too.
        let d = link.log().dirty();
        assert!(
            d.files.contains_key(Path::new("held")) && d.files.contains_key(Path::new("refused"))
        );
    }
}
