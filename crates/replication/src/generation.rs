//! Data generations: which node holds the newest data, decided from
//! records, never guessed (invariant 4).
//!
//! Like DRBD's UUIDs. Each node records, per replicated directory set:
//! - `current`: the generation of its data. `0` means "no data" (a fresh,
//!   empty node, or one whose data the administrator discarded).
//! - `bitmap`: while this node tracks changes its peer lacks, the
//!   generation the peer was at when tracking started.
//! - `history`: older generations, newest first.
//!
//! The discipline (the daemon's part): a node starts a new generation
//! ([`Generations::start_tracking`]) before changing data its peer does not
//! receive — a primary going ALONE, a secondary promoted by failover. A
//! secondary applying the stream never changes its generation; at the end
//! of a resynchronisation it takes the source's ([`Generations::resync_done`]).
//! So two nodes with the same `current` hold the same data, and a node whose
//! `current` is in the other's `bitmap`/`history` is behind it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;

/// How many older generations are remembered.
const HISTORY: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Generations {
    pub current: u64,
    pub bitmap: Option<u64>,
    pub history: Vec<u64>,
    /// A resynchronisation into this node began and has not ended: its copy
    /// is a mix of old and new data and must never be promoted.
    pub incomplete: bool,
    /// This node was primary and did not stop cleanly: it may hold changes
    /// its peer never acknowledged (in flight at the crash).
    pub unclean: bool,
    /// The administrator discarded this copy: whatever its directory
    /// holds is to be replaced (until a resynchronisation completes).
    #[serde(default)]
    pub discarded: bool,
    /// This copy applied changes that may not be on its disk yet (received
    /// with acknowledgement on receipt), under the kernel with this boot
    /// id ([`boot_id`]): they are there only as long as that kernel runs
    /// or once synced (`None`: synced since).
    #[serde(default)]
    pub unsynced: Option<String>,
}

/// What to do when two nodes meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Same data: mirror from now on.
    InSync,
    /// This node's data is newer: it resynchronises the peer.
    Send(Basis),
    /// The peer's data is newer: this node is resynchronised.
    Receive(Basis),
}

/// What the resynchronisation may rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The source's change log covers every difference.
    Tracked,
    /// The source's change log covers every difference but the changes
    /// the receiver made as a primary that stopped uncleanly (in flight,
    /// never acknowledged): those are in the receiver's activity log,
    /// whose regions are resynchronised too — or, if that log is lost,
    /// everything is compared ([`plan`]).
    ActivityLog,
    /// No log covers the differences: compare block checksums (only the
    /// differing blocks travel — never a blind full copy).
    Compare,
}

/// Why two nodes must not resynchronise without the administrator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "module {module}: the two nodes hold data with no shared history \
         (generations {local:016x} here, {peer:016x} on the peer); Holdfast will not guess \
         which copy wins. On the node whose data must be replaced run \
         `holdfast stop -m {module}` then `holdfast second -m {module} --discard-data`, and \
         `holdfast prim -m {module}` on the node whose data wins (unless it is primary \
         already): the discarded copy is compared block by block and overwritten where it \
         differs"
    )]
    Unrelated {
        module: String,
        local: u64,
        peer: u64,
    },
    #[error(
        "module {module}: split brain — both nodes changed their data since generation \
         {common:016x} (now {local:016x} here, {peer:016x} on the peer); Holdfast never \
         merges. Keep one copy: run `holdfast stop -m {module}` then `holdfast second -m \
         {module} --discard-data` on the node whose changes are to be dropped, and \
         `holdfast prim -m {module}` on the other (unless it is primary already)"
    )]
    SplitBrain {
        module: String,
        common: u64,
        local: u64,
        peer: u64,
    },
    #[error(
        "module {module}: {which} holds an incomplete copy (a resynchronisation was \
         interrupted) and cannot be the source{hint}"
    )]
    Incomplete {
        module: String,
        which: &'static str,
        hint: &'static str,
    },
}

fn new_generation() -> u64 {
    // Never 0 (reserved for "no data").
    loop {
        let g = rand::random::<u64>();
        if g != 0 {
            return g;
        }
    }
}

impl Generations {
    /// A node seen for the first time: empty directories have no data,
    /// anything else is data of an unknown lineage.
    pub fn fresh(has_data: bool) -> Self {
        Generations {
            current: if has_data { new_generation() } else { 0 },
            ..Generations::default()
        }
    }

    fn push_history(&mut self, generation: u64) {
        if generation != 0 && !self.history.contains(&generation) {
            self.history.insert(0, generation);
            self.history.truncate(HISTORY);
        }
    }

    /// Before changing data the peer will not receive: a new generation,
    /// the old one kept as the base of the change log. Already tracking
    /// (e.g. restarting after a crash while ALONE): the log's base stays.
    pub fn start_tracking(&mut self) {
        if self.bitmap.is_none() {
            self.bitmap = Some(self.current);
            self.current = new_generation();
        }
    }

    /// The change log is gone (state lost, corrupt): its base can no
    /// longer be used; a later resynchronisation compares checksums.
    pub fn tracking_lost(&mut self) {
        if let Some(base) = self.bitmap.take() {
            self.push_history(base);
        }
    }

    /// Becoming primary: until a clean stop, this node may hold changes in
    /// flight that the secondary never acknowledged.
    pub fn become_primary(&mut self) {
        self.unclean = true;
    }

    pub fn stopped_cleanly(&mut self) {
        self.unclean = false;
    }

    /// A resynchronisation into this node begins: persisted before the
    /// first change is applied.
    pub fn resync_begin(&mut self) {
        self.incomplete = true;
    }

    /// The resynchronisation into this node ended: it holds `source`'s data.
    pub fn resync_done(&mut self, source: u64) {
        if source != self.current {
            let old = self.current;
            self.push_history(old);
            self.current = source;
        }
        self.bitmap = None;
        self.incomplete = false;
        self.unclean = false;
        self.discarded = false;
        // Its copy is the source's, synced (whatever was lost before).
        self.unsynced = None;
    }

    /// About to apply changes that stay in the page cache for a while,
    /// under the kernel `boot`. A record of another boot stays: what was
    /// applied then may be lost, which the next resynchronisation must know.
    pub fn receiving(&mut self, boot: &str) {
        if self.unsynced.is_none() {
            self.unsynced = Some(boot.to_string());
        }
    }

    /// Everything applied under the kernel `boot` is on disk (synced).
    /// What was applied under an earlier one stays possibly lost.
    pub fn synced(&mut self, boot: &str) {
        if self.unsynced.as_deref() == Some(boot) {
            self.unsynced = None;
        }
    }

    /// Whether everything this copy applied is still there: synced, or its
    /// kernel (boot id `boot`) has not restarted since.
    pub fn kept_applied(&self, boot: Option<&str>) -> bool {
        match &self.unsynced {
            None => true,
            Some(recorded) => boot == Some(recorded.as_str()),
        }
    }

    /// The source side of a completed resynchronisation: the peer now
    /// holds `current`; the change log is emptied with it.
    pub fn peer_synced(&mut self) {
        if let Some(base) = self.bitmap.take() {
            self.push_history(base);
        }
    }

    /// The administrator chose the peer's data over this node's.
    pub fn discard(&mut self) {
        let old = self.current;
        self.push_history(old);
        if let Some(base) = self.bitmap.take() {
            self.push_history(base);
        }
        self.current = 0;
        self.discarded = true;
    }

    /// Nothing ever recorded for this copy: no data, no past, no pending
    /// resynchronisation or discard. Files found in such a directory were
    /// put there outside replication: data of an unknown lineage.
    pub fn is_blank(&self) -> bool {
        self.current == 0
            && self.bitmap.is_none()
            && self.history.is_empty()
            && !self.incomplete
            && !self.discarded
    }

    /// Whether this node may become primary with its own data.
    pub fn may_promote(&self, module: &str) -> Result<(), Refusal> {
        if self.incomplete {
            return Err(Refusal::Incomplete {
                module: module.into(),
                which: "this node",
                hint: ": wait for the peer, whose data is complete, and let it resynchronise this node",
            });
        }
        Ok(())
    }

    fn knows(&self, generation: u64) -> bool {
        generation != 0 && (self.bitmap == Some(generation) || self.history.contains(&generation))
    }
}

/// Decides, from both records, who resynchronises whom. Pure.
pub fn decide(module: &str, local: &Generations, peer: &Generations) -> Result<Decision, Refusal> {
    let incomplete = |which| Refusal::Incomplete {
        module: module.into(),
        which,
        hint: "",
    };
    match (local.incomplete, peer.incomplete) {
        (true, true) => return Err(incomplete("each node")),
        (true, false) => {
            // Only the interrupted source may finish what it started: the
            // incomplete node's generation is its log's base, or an ancestor.
            return if peer.bitmap == Some(local.current) {
                Ok(Decision::Receive(if local.unclean {
                    Basis::ActivityLog
                } else {
                    Basis::Tracked
                }))
            } else if peer.current == local.current
                || peer.knows(local.current)
                || local.current == 0
            {
                Ok(Decision::Receive(Basis::Compare))
            } else {
                Err(incomplete("this node"))
            };
        }
        (false, true) => {
            return match decide(module, peer, local) {
                Ok(Decision::Receive(basis)) => Ok(Decision::Send(basis)),
                _ => Err(incomplete("the peer")),
            };
        }
        (false, false) => {}
    }
    if local.current == peer.current {
        return Ok(Decision::InSync);
    }
    // A node without data receives everything the other has, by comparison.
    if local.current == 0 {
        return Ok(Decision::Receive(Basis::Compare));
    }
    if peer.current == 0 {
        return Ok(Decision::Send(Basis::Compare));
    }
    let basis = |receiver_unclean: bool| {
        if receiver_unclean {
            // Its in-flight changes are in no log of the source: in its own.
            Basis::ActivityLog
        } else {
            Basis::Tracked
        }
    };
    if local.bitmap == Some(peer.current) {
        return Ok(Decision::Send(basis(peer.unclean)));
    }
    if peer.bitmap == Some(local.current) {
        return Ok(Decision::Receive(basis(local.unclean)));
    }
    let split = |common| Refusal::SplitBrain {
        module: module.into(),
        common,
        local: local.current,
        peer: peer.current,
    };
    if let (Some(a), Some(b)) = (local.bitmap, peer.bitmap) {
        if a == b {
            return Err(split(a));
        }
    }
    if local.history.contains(&peer.current) {
        return Ok(Decision::Send(Basis::Compare));
    }
    if peer.history.contains(&local.current) {
        return Ok(Decision::Receive(Basis::Compare));
    }
    let ours = local.bitmap.iter().chain(&local.history);
    if let Some(&common) = ours.into_iter().find(|g| peer.knows(**g)) {
        return Err(split(common));
    }
    Err(Refusal::Unrelated {
        module: module.into(),
        local: local.current,
        peer: peer.current,
    })
}

/// Why a resynchronisation from `source` into `target` must compare
/// checksums, or `None` when the change logs (the source's, and with
/// [`Basis::ActivityLog`] the target's activity log) cover every
/// difference. `decided`: the basis [`decide`] gave (`None`: in sync);
/// `kept`: the target kept everything it applied ([`Generations::kept_applied`]
/// on its side); `log_lost`: the source's change log is lost.
pub fn compare_reason(
    source: &Generations,
    target: &Generations,
    decided: Option<Basis>,
    kept: bool,
    log_lost: bool,
) -> Option<&'static str> {
    if decided == Some(Basis::Compare) {
        return Some(if target.discarded {
            "the secondary's data was discarded by the administrator"
        } else if target.current == 0 {
            "the secondary has no data yet"
        } else if target.unclean {
            "the secondary was a primary that stopped uncleanly and its copy is older than this primary's change log"
        } else if target.incomplete && source.bitmap != Some(target.current) {
            "the secondary's copy is incomplete and older than this primary's change log"
        } else {
            "this primary's change log does not cover the secondary's data (tracking lost, or an older copy)"
        });
    }
    if !kept {
        return Some(
            "the secondary's host restarted since it applied changes it had not synced to disk",
        );
    }
    log_lost.then_some("this primary's change log was lost")
}

/// How a resynchronisation goes about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The source's change log only.
    Tracked,
    /// The source's change log and the target's activity log's `regions`.
    ActivityLog { regions: usize },
    /// Compare the whole tree by checksums, for this reason.
    Compare(String),
}

impl Plan {
    /// For the log and `holdfast state`.
    pub fn describe(&self) -> String {
        match self {
            Plan::Tracked => "tracked changes".into(),
            Plan::ActivityLog { regions } => {
                format!("tracked changes and the secondary's activity log: {regions} regions")
            }
            Plan::Compare(why) => format!("comparing checksums: {why}"),
        }
    }
}

/// The whole choice of [`compare_reason`], with the target's activity log:
/// `target_log` is its regions' count, or why it cannot be used (lost,
/// damaged, refused). A [`Basis::ActivityLog`] decision without a usable
/// log compares the whole tree, never copies blindly.
pub fn plan(
    source: &Generations,
    target: &Generations,
    decided: Option<Basis>,
    kept: bool,
    log_lost: bool,
    target_log: Result<usize, String>,
) -> Plan {
    if let Some(why) = compare_reason(source, target, decided, kept, log_lost) {
        return Plan::Compare(why.into());
    }
    match (decided, target_log) {
        (Some(Basis::ActivityLog), Ok(regions)) => Plan::ActivityLog { regions },
        (Some(Basis::ActivityLog), Err(why)) => Plan::Compare(format!(
            "the secondary was a primary that stopped uncleanly and its {why}"
        )),
        _ => Plan::Tracked,
    }
}

/// The running kernel's boot id: a new one at every boot, so a copy can
/// tell whether its host restarted (losing its page cache) since it
/// applied changes. `None` if it cannot be read.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a node's [`Generations`] live: one JSON file replaced atomically
/// (written aside, synced, renamed, directory synced), so a crash leaves
/// either the old record or the new one.
#[derive(Debug, Clone)]
pub struct GenerationStore {
    path: PathBuf,
}

impl GenerationStore {
    pub fn new(path: &Path) -> Self {
        GenerationStore {
            path: path.to_path_buf(),
        }
    }

    /// `None` when no record exists yet (the caller decides what a fresh
    /// node holds: [`Generations::fresh`]).
    pub fn load(&self) -> Result<Option<Generations>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Damaged {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    pub fn save(&self, generations: &Generations) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(generations).expect("plain data serialises");
        durable::replace(&self.path, &bytes).map_err(|source| StoreError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "app";

    fn g(current: u64, bitmap: Option<u64>, history: &[u64]) -> Generations {
        Generations {
            current,
            bitmap,
            history: history.to_vec(),
            ..Generations::default()
        }
    }

    /// Every case is checked from both sides: the peer must reach the
    /// mirror decision (or the same refusal).
    fn both(local: &Generations, peer: &Generations) -> Result<Decision, Refusal> {
        let here = decide(M, local, peer);
        let there = decide(M, peer, local);
        let mirrored = match &here {
            Ok(Decision::InSync) => Ok(Decision::InSync),
            Ok(Decision::Send(b)) => Ok(Decision::Receive(*b)),
            Ok(Decision::Receive(b)) => Ok(Decision::Send(*b)),
            Err(e) => Err(std::mem::discriminant(e)),
        };
        let there = there.map_err(|e| std::mem::discriminant(&e));
        assert_eq!(mirrored, there, "asymmetric for {local:?} / {peer:?}");
        here
    }

    #[test]
    fn same_generation_is_in_sync() {
        assert_eq!(
            both(&g(5, None, &[]), &g(5, None, &[])),
            Ok(Decision::InSync)
        );
        assert_eq!(
            both(&g(0, None, &[]), &g(0, None, &[])),
            Ok(Decision::InSync)
        );
    }

    #[test]
    fn alone_primary_sends_what_it_tracked() {
        let mut primary = g(5, None, &[]);
        let secondary = primary.clone();
        primary.start_tracking();
        assert_eq!(primary.bitmap, Some(5));
        assert_ne!(primary.current, 5);
        assert_eq!(
            both(&primary, &secondary),
            Ok(Decision::Send(Basis::Tracked))
        );
        // Restarting while still alone keeps the log's base.
        let before = primary.clone();
        primary.start_tracking();
        assert_eq!(primary, before);
    }

    #[test]
    fn lost_tracking_falls_back_to_checksums_not_to_a_full_copy() {
        let mut primary = g(5, None, &[]);
        let secondary = primary.clone();
        primary.start_tracking();
        primary.tracking_lost();
        assert_eq!(
            both(&primary, &secondary),
            Ok(Decision::Send(Basis::Compare))
        );
    }

    #[test]
    fn promoted_secondary_resyncs_the_returning_primary() {
        let mut old_primary = g(5, None, &[]);
        old_primary.become_primary();
        let mut new_primary = g(5, None, &[]);
        new_primary.start_tracking();
        // The old primary crashed: its in-flight changes are in its
        // activity log.
        assert_eq!(
            both(&new_primary, &old_primary),
            Ok(Decision::Send(Basis::ActivityLog))
        );
        old_primary.stopped_cleanly();
        assert_eq!(
            both(&new_primary, &old_primary),
            Ok(Decision::Send(Basis::Tracked))
        );
    }

    #[test]
    fn completed_resync_leaves_both_in_sync() {
        let mut source = g(5, None, &[]);
        let mut target = source.clone();
        source.start_tracking();
        target.resync_begin();
        target.resync_done(source.current);
        source.peer_synced();
        assert_eq!(both(&source, &target), Ok(Decision::InSync));
        assert_eq!(target.history, vec![5]);
    }

    #[test]
    fn interrupted_resync_is_never_promoted_and_restarts_from_the_source() {
        let mut source = g(5, None, &[]);
        let mut target = source.clone();
        source.start_tracking();
        target.resync_begin();
        assert!(target.may_promote(M).is_err());
        assert!(source.may_promote(M).is_ok());
        assert_eq!(both(&source, &target), Ok(Decision::Send(Basis::Tracked)));
        // Even if the source lost its log meanwhile: compare, do not refuse.
        source.tracking_lost();
        assert_eq!(both(&source, &target), Ok(Decision::Send(Basis::Compare)));
        // An incomplete copy against an unrelated node: refuse.
        let stranger = g(77, None, &[]);
        let err = both(&stranger, &target).unwrap_err();
        assert!(err.to_string().contains("incomplete"), "{err}");
        let mut other = target.clone();
        other.current = 9;
        assert!(matches!(
            both(&target, &other),
            Err(Refusal::Incomplete { .. })
        ));
    }

    #[test]
    fn both_changed_since_the_common_generation_is_split_brain() {
        let common = g(5, None, &[]);
        let (mut a, mut b) = (common.clone(), common);
        a.start_tracking();
        b.start_tracking();
        let err = both(&a, &b).unwrap_err();
        assert!(
            matches!(err, Refusal::SplitBrain { common: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("never merges"));
        // Also when one of them lost its log since.
        a.tracking_lost();
        assert!(matches!(
            both(&a, &b),
            Err(Refusal::SplitBrain { common: 5, .. })
        ));
    }

    #[test]
    fn older_generations_in_history_resync_by_comparison() {
        let a = g(9, None, &[7, 5]);
        let b = g(5, None, &[]);
        assert_eq!(both(&a, &b), Ok(Decision::Send(Basis::Compare)));
    }

    #[test]
    fn fresh_pair_with_data_on_both_sides_refuses_and_names_the_command() {
        let (a, b) = (Generations::fresh(true), Generations::fresh(true));
        let err = both(&a, &b).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Refusal::Unrelated { .. }));
        assert!(text.contains("no shared history"), "{text}");
        assert!(
            text.contains("holdfast second -m app --discard-data"),
            "{text}"
        );
        assert!(text.contains("holdfast prim -m app"), "{text}");
    }

    #[test]
    fn empty_or_discarded_node_receives_by_comparison() {
        let data = Generations::fresh(true);
        let empty = Generations::fresh(false);
        assert_eq!(both(&data, &empty), Ok(Decision::Send(Basis::Compare)));
        let mut loser = Generations::fresh(true);
        assert!(both(&data, &loser).is_err());
        loser.discard();
        assert_eq!(both(&data, &loser), Ok(Decision::Send(Basis::Compare)));
    }

    #[test]
    fn applied_changes_are_kept_only_by_the_same_boot_or_a_sync() {
        let mut copy = g(5, None, &[]);
        assert!(copy.kept_applied(Some("boot-1")), "nothing unsynced");
        copy.receiving("boot-1");
        assert!(copy.kept_applied(Some("boot-1")));
        assert!(!copy.kept_applied(Some("boot-2")), "the host restarted");
        assert!(!copy.kept_applied(None), "unknown boot: assume lost");
        // Receiving again after the restart keeps the older boot on record,
        // and so does a sync now: what the old boot applied may be gone.
        copy.receiving("boot-2");
        copy.synced("boot-2");
        assert!(!copy.kept_applied(Some("boot-2")));
        // Only a resynchronisation brings it back.
        copy.resync_done(5);
        assert!(copy.kept_applied(Some("boot-2")));
        copy.receiving("boot-2");
        assert!(copy.kept_applied(Some("boot-2")));
        copy.synced("boot-2");
        assert_eq!(copy.unsynced, None);
        // An older record without the field reads as synced.
        let old: Generations = serde_json::from_str(
            r#"{"current":5,"bitmap":null,"history":[],"incomplete":false,"unclean":false}"#,
        )
        .unwrap();
        assert_eq!(old.unsynced, None);
        assert!(boot_id().is_some_and(|b| b.len() == 36), "{:?}", boot_id());
    }

    #[test]
    fn checksums_are_compared_only_when_something_is_unknown() {
        let mut primary = g(5, None, &[]);
        let secondary = primary.clone();
        primary.start_tracking();
        let decided = |a: &Generations, b: &Generations| match decide(M, a, b) {
            Ok(Decision::Send(basis)) => Some(basis),
            Ok(Decision::InSync) => None,
            other => panic!("{other:?}"),
        };
        let basis = decided(&primary, &secondary);
        // Module stopped and started, daemon killed, link cut: tracked.
        assert_eq!(
            compare_reason(&primary, &secondary, basis, true, false),
            None
        );
        let why = compare_reason(&primary, &secondary, basis, false, false).unwrap();
        assert!(why.contains("host restarted"), "{why}");
        let why = compare_reason(&primary, &secondary, basis, true, true).unwrap();
        assert!(why.contains("change log was lost"), "{why}");
        // In sync, but the secondary lost what it applied.
        assert!(compare_reason(&secondary, &secondary, None, false, false).is_some());
        assert_eq!(
            compare_reason(&secondary, &secondary, None, true, false),
            None
        );
        // What decide says comes first, with its reason.
        let mut lost = primary.clone();
        lost.tracking_lost();
        let why = compare_reason(&lost, &secondary, decided(&lost, &secondary), true, false);
        assert!(why.unwrap().contains("does not cover"), "{why:?}");
        let empty = Generations::fresh(false);
        let why = compare_reason(&primary, &empty, decided(&primary, &empty), true, false);
        assert!(why.unwrap().contains("no data yet"), "{why:?}");
        let mut crashed = secondary.clone();
        crashed.become_primary();
        let basis = decided(&primary, &crashed);
        assert_eq!(basis, Some(Basis::ActivityLog));
        assert_eq!(compare_reason(&primary, &crashed, basis, true, false), None);
        // Older than this primary's log as well: compare.
        let mut older = crashed.clone();
        older.current = 3;
        older.history = vec![];
        let mut newer = primary.clone();
        newer.history = vec![3];
        let why = compare_reason(&newer, &older, decided(&newer, &older), true, false);
        assert!(why.unwrap().contains("stopped uncleanly"), "{why:?}");
    }

    #[test]
    fn a_primary_crashed_while_mirroring_is_resynchronised_by_its_activity_log() {
        let mut old_primary = g(5, None, &[]);
        old_primary.become_primary();
        let mut new_primary = g(5, None, &[]);
        new_primary.start_tracking();
        let basis = match decide(M, &new_primary, &old_primary) {
            Ok(Decision::Send(b)) => Some(b),
            other => panic!("{other:?}"),
        };
        let plan = |kept, lost, log| plan(&new_primary, &old_primary, basis, kept, lost, log);
        assert_eq!(plan(true, false, Ok(3)), Plan::ActivityLog { regions: 3 });
        assert!(plan(true, false, Ok(3))
            .describe()
            .contains("activity log: 3 regions"));
        // A lost, damaged or refused log: the whole tree, and why.
        let lost = plan(
            true,
            false,
            Err("activity log lost: damaged record at byte 40".into()),
        );
        match &lost {
            Plan::Compare(why) => {
                assert!(why.contains("stopped uncleanly"), "{why}");
                assert!(why.contains("damaged record"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(lost.describe().starts_with("comparing checksums: "));
        // The reasons of compare_reason come first.
        assert!(matches!(plan(false, false, Ok(3)), Plan::Compare(w) if w.contains("restarted")));
        assert!(
            matches!(plan(true, true, Ok(3)), Plan::Compare(w) if w.contains("change log was lost"))
        );
        // A clean secondary: the log is not needed, whatever it says.
        old_primary.stopped_cleanly();
        let basis = Some(Basis::Tracked);
        assert_eq!(
            super::plan(
                &new_primary,
                &old_primary,
                basis,
                true,
                false,
                Err("x".into())
            ),
            Plan::Tracked
        );
        // An interrupted resync into the crashed node restarts the same way.
        let mut interrupted = g(5, None, &[]);
        interrupted.become_primary();
        interrupted.resync_begin();
        assert_eq!(
            both(&new_primary, &interrupted),
            Ok(Decision::Send(Basis::ActivityLog))
        );
        interrupted.resync_done(new_primary.current);
        assert!(!interrupted.unclean);
    }

    #[test]
    fn history_is_bounded() {
        let mut a = g(1, None, &[]);
        for _ in 0..3 * HISTORY {
            a.start_tracking();
            a.peer_synced();
        }
        assert_eq!(a.history.len(), HISTORY);
    }

    #[test]
    fn store_round_trips_and_reports_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let store = GenerationStore::new(&tmp.path().join("generations.json"));
        assert!(store.load().unwrap().is_none());
        let mut record = Generations::fresh(true);
        record.start_tracking();
        store.save(&record).unwrap();
        assert_eq!(store.load().unwrap(), Some(record));
        std::fs::write(tmp.path().join("generations.json"), b"{oops").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Damaged { .. })));
    }
}
