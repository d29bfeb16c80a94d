//! The mirror module state machine: **where failover is decided**.
//!
//! One [`MirrorModule`] per node and per mirror module. It is pure: the I/O
//! shell (the daemon) or the simulator feeds it inputs with the current time —
//! [`MirrorModule::command`], [`MirrorModule::heartbeat`],
//! [`MirrorModule::script_finished`], [`MirrorModule::tick`], and the data
//! layer's, checkers' and recovery policy's reports — and carries out
//! the [`Action`]s it queues (run a script, log, persist, send a heartbeat now).
//!
//! ## How two nodes agree
//! Each heartbeat carries the sender's [`PeerStatus`]. The rules, applied
//! whenever the node is idle (no script running or queued):
//! - A starting node waits (WAIT) until it hears its peer. A primary peer
//!   makes it SECOND; a stopped peer, or silence for the heartbeat timeout,
//!   makes it primary. Two waiting nodes elect one (preferred primary, then
//!   the last primary, then the smaller name); the loser *yields*, and the
//!   winner starts only once it has seen that yield, so two waiting nodes in
//!   contact never both run `start_prim`.
//! - A SECOND takes over when its peer is silent for the timeout, stopped,
//!   hands over (stop, swap) after its application is down, or came back
//!   without its primary role (a restart). With `failover` off it waits
//!   instead, except for a swap.
//! - Two primaries that hear each other (a healed partition) keep the one with
//!   the higher *epoch* (every takeover raises it), so the node that took over
//!   last keeps the service; the other stops its application and says why.
//! - Only an *eligible* node becomes primary: data up to date
//!   ([`MirrorModule::data_state`]), no missing resource
//!   ([`MirrorModule::resource`]), not held back by the recovery policy
//!   ([`MirrorModule::suspend`]), not waiting for an administrator.
//!   Eligibility travels in heartbeats and wins elections; otherwise the node
//!   waits and says why. Only `prim` forces.
//! - Taking over from a *silent* peer first runs the `fence` script; its
//!   failure blocks the takeover.
//! - A missing resource puts the module in WAIT (a primary first stops its
//!   application, handing over); its return ends the wait.
//! - With a **split-brain checker** ([`MirrorSettings::splitbrain`], the
//!   weaker tie-breaker): when the peer is silent, a node that cannot ping
//!   any of its addresses does not take over, and a primary stops its
//!   application and waits.
//! - With a **witness** ([`MirrorSettings::witness`]), "never two primaries"
//!   holds in time. A node may run its application only while it has a
//!   basis that the other node cannot take over before the application is
//!   down: its witness lease (as it sees it, [`crate::lease`]), or the
//!   *peer promise* — the peer echoes the clock of the newest status it
//!   heard from us, and it takes over only after a heartbeat timeout of
//!   silence, so not before that clock plus the timeout. When both bases end
//!   within the stop budget (the longest script that may be running, then
//!   the graceful and forced `stop_prim`), the node stops its application and
//!   waits (the *keep* rule). Becoming primary needs the lease itself (two
//!   waiting nodes may each read consent in the other's last status): the
//!   witness grants it only once the previous holder's lease has expired
//!   or been released.
//!
//! Every change of the displayed state produces [`Action::Transition`] with a
//! reason.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use holdfast_config::{DefaultPrimary, ModuleConfig};
use serde::{Deserialize, Serialize};

use crate::lease::{Decision, LeaseClient, LeaseSettings, PeerCopy};
use crate::module::{
    Action, Command, CommandError, LogLevel, Persistent, Script, ScriptAction, ScriptOutcome,
    ScriptRun, State,
};
use crate::view::ModuleView;

/// Why a node released the primary role on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handover {
    None,
    /// `swap`: the peer takes over even with failover off.
    Swap,
    /// `stop` of the primary: the peer takes over if failover is on.
    Stop,
}

/// What a node tells its peer in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub state: State,
    /// Scripts are running or queued (SafeKit's "Transient").
    pub transient: bool,
    /// The application may be running here: from the start of `start_prim`
    /// to the end of the forced `stop_prim`.
    pub app_active: bool,
    /// Highest primary epoch this node knows; raised at every takeover.
    pub epoch: u64,
    /// This node was primary last (persisted; for election and `lastprim`).
    pub last_primary: bool,
    /// This node will not become primary while the receiver is alive.
    pub yields: bool,
    pub handover: Handover,
    /// A SECOND asks its primary to swap (the `swap` command was run there).
    pub wants_swap: bool,
    /// This node may become primary: its copy of the replicated data is
    /// complete and current (always, without replicated directories), no
    /// resource is missing, the recovery policy does not hold it back, and it
    /// does not wait for an administrator (failover off, `second`).
    pub eligible: bool,
    /// The receiver's state as this node last heard it: lets a waiting node
    /// know that a stopped peer has already seen it waiting, so the two
    /// cannot both start on each other's stale STOP.
    pub seen: Option<State>,
    /// This node's clock when it built this status: `(incarnation,
    /// milliseconds since the module was created)`.
    pub clock: (u64, u64),
    /// The `clock` of the newest status heard from the receiver, while it
    /// is heard: the receiver's *peer promise* (see the module docs).
    pub echo: Option<(u64, u64)>,
}

impl PeerStatus {
    pub fn stopped() -> Self {
        Self {
            state: State::Stop,
            transient: false,
            app_active: false,
            epoch: 0,
            last_primary: false,
            yields: false,
            handover: Handover::None,
            wants_swap: false,
            eligible: true,
            seen: None,
            clock: (0, 0),
            echo: None,
        }
    }

    /// Equal but for the clocks, which change with every input and must not
    /// make a node send a heartbeat for each one it receives.
    fn same_apart_from_clocks(&self, other: &Self) -> bool {
        Self {
            clock: other.clock,
            echo: other.echo,
            ..self.clone()
        } == *other
    }
}

/// What replication says of the peer's copy of the data, for the witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerData {
    /// Nothing to report (no replication, or being brought up to date).
    #[default]
    Unknown,
    /// Mirroring: the peer has every change.
    Current,
    /// Replication is about to acknowledge changes the peer lacks; it
    /// waits for [`Action::PeerFenced`] with this epoch (or a later one).
    Outdated { epoch: u64 },
}

/// The static part of the state machine, from the module configuration.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    pub local: String,
    pub peer: String,
    pub failover: bool,
    pub default_primary: DefaultPrimary,
    pub swap_back: bool,
    pub timeout: Duration,
    pub networks: usize,
    /// This daemon's incarnation: tells the peer promise of this life from
    /// one heard before a restart.
    pub incarnation: u64,
    /// Split-brain protection by a witness's lease, if configured.
    pub witness: Option<LeaseSettings>,
    /// A split-brain checker (ping of tie-breaker addresses) reports to
    /// [`MirrorModule::splitbrain_witness`].
    pub splitbrain: bool,
}

impl MirrorSettings {
    /// `None` when `local` is not one of the module's two nodes.
    pub fn from_config(config: &ModuleConfig, local: &str) -> Option<Self> {
        config.nodes.iter().find(|n| n.name == local)?;
        let peer = config.nodes.iter().find(|n| n.name != local)?;
        Some(Self {
            local: local.to_string(),
            peer: peer.name.clone(),
            failover: config.failover,
            default_primary: config.default_primary.clone(),
            swap_back: config.swap_back,
            timeout: config.heartbeat.timeout,
            networks: config.heartbeat.networks.len(),
            incarnation: 0,
            witness: config.witness.as_ref().map(|w| LeaseSettings {
                duration: w.lease,
                renew: config.heartbeat.pulse,
                stop_budget: config.scripts.stop_budget(),
            }),
            splitbrain: config.splitbrain.is_some(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitReason {
    /// `prestart` is running.
    Starting,
    /// Listening for the peer's heartbeat.
    PeerUnknown,
    /// The peer was elected; waiting for it to start as primary.
    PeerElected,
    /// Elected here; waiting for the peer to agree (yield).
    PeerToAgree,
    /// The primary was lost and failover is off.
    FailoverOff,
    /// Started with `second`: waits for a primary.
    AwaitPrimary,
    /// This node's data may be stale (a restart after being SECOND, or an
    /// unfinished reintegration): it never makes itself primary.
    NotUpToDate,
    /// A resource checker reports a missing resource (SafeKit's `wait`
    /// action): comes back by itself when it returns.
    ResourceMissing,
    /// The fencing script failed: the old primary may still run.
    FenceFailed,
    /// The recovery limit (maxloop within loop_interval) was reached here:
    /// not primary again until the counter resets or an administrator acts.
    Suspended,
    /// Neither the peer nor the witness confirmed the primary role in time:
    /// the application was stopped; waiting for either.
    LeaseLost,
    /// The peer is silent and the split-brain checker's addresses do not
    /// answer: the other side may be the one to keep the service.
    TieBreakerLost,
}

impl WaitReason {
    fn describe(self, peer: &str) -> String {
        match self {
            WaitReason::Starting => "running prestart".into(),
            WaitReason::PeerUnknown => format!("waiting for the heartbeat of {peer}"),
            WaitReason::PeerElected => {
                format!("{peer} is elected primary; waiting for it to start")
            }
            WaitReason::PeerToAgree => format!("elected primary; waiting for {peer} to agree"),
            WaitReason::FailoverOff => {
                "failover is off: waiting; run `holdfast prim` here to force this node primary"
                    .into()
            }
            WaitReason::AwaitPrimary => {
                format!("started with `second`: waiting for {peer} to be primary")
            }
            WaitReason::NotUpToDate => format!(
                "data may not be up to date here: waiting for {peer}; if you are sure this node has valid data, run `holdfast prim`"
            ),
            WaitReason::ResourceMissing => "a resource is missing".into(),
            WaitReason::Suspended => "recovery limit reached on this node".into(),
            WaitReason::TieBreakerLost => format!(
                "no heartbeat from {peer} and no split-brain witness answers the ping: waiting for either"
            ),
            WaitReason::LeaseLost => format!(
                "split-brain protection: neither {peer} nor the witness could be reached in time, the application was stopped; waiting for either"
            ),
            WaitReason::FenceFailed => format!(
                "the fencing script failed: {peer} may still run the application; run `holdfast prim` once it is known to be down"
            ),
        }
    }

    /// Reasons under which this node never makes itself primary.
    fn passive(self) -> bool {
        matches!(
            self,
            WaitReason::FailoverOff
                | WaitReason::AwaitPrimary
                | WaitReason::NotUpToDate
                | WaitReason::ResourceMissing
                | WaitReason::Suspended
                | WaitReason::FenceFailed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Stopped,
    Waiting(WaitReason),
    Secondary,
    Primary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Run {
        script: Script,
        force: bool,
        next: State,
        action: ScriptAction,
    },
    /// The forced stop of the application finished.
    AppStopped(Handover),
    /// `start_prim` of a local restart begins.
    AppRestarted,
    BothStopped,
    Enter(Role, String),
    /// Forced (`prim`): no condition.
    BecomePrimary(String),
    /// After fencing a silent peer: only if still eligible.
    TakeOver(String),
}

#[derive(Debug, Clone)]
struct PeerSeen {
    status: PeerStatus,
    stamp: (u64, u64),
    last_heard: Instant,
    per_network: Vec<Option<Instant>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Winner {
    Local,
    Peer,
}

/// The state machine of one mirror module on one node.
#[derive(Debug)]
pub struct MirrorModule {
    settings: MirrorSettings,
    persistent: Persistent,
    role: Role,
    app_active: bool,
    /// start_both ran and stop_both did not.
    both_active: bool,
    yields: bool,
    handover: Handover,
    wants_swap: bool,
    /// `swap` was run on this primary.
    swap_requested: bool,
    /// The data layer says this node's copy is complete and current.
    uptodate: bool,
    /// Missing resources (name → why), from resource checkers.
    missing: std::collections::BTreeMap<String, String>,
    /// Why this node may not become primary (recovery limit), if so.
    suspended: Option<String>,
    peer: Option<PeerSeen>,
    waiting_since: Instant,
    steps: VecDeque<Step>,
    running: Option<(u64, Script)>,
    next_script_id: u64,
    now: Instant,
    /// Reason to attach to the next state change.
    why: Option<String>,
    reason: String,
    shown: State,
    split_brain_noted: bool,
    outbox: Vec<Action>,
    /// Where `clock` counts from.
    origin: Instant,
    /// The witness lease, when a witness is configured.
    lease: Option<LeaseClient>,
    /// This node waits for a lease to become primary.
    lease_wanted: bool,
    /// The keep rule queued the stop of the application.
    stepping_down: bool,
    /// The application runs without a lease (on the peer's promise).
    lease_lapsed: bool,
    /// The split-brain checker's last verdict: some address answers.
    tiebreaker: bool,
    /// What lease requests say of the peer's copy.
    peer_data: PeerData,
}

impl MirrorModule {
    pub fn new(settings: MirrorSettings, persistent: Persistent, now: Instant) -> Self {
        let settings_witness = settings.witness.clone();
        Self {
            settings,
            persistent,
            role: Role::Stopped,
            app_active: false,
            both_active: false,
            yields: false,
            handover: Handover::None,
            wants_swap: false,
            swap_requested: false,
            uptodate: true,
            missing: Default::default(),
            suspended: None,
            peer: None,
            waiting_since: now,
            steps: VecDeque::new(),
            running: None,
            next_script_id: 1,
            now,
            why: None,
            reason: "module not started".into(),
            shown: State::Stop,
            split_brain_noted: false,
            outbox: Vec::new(),
            origin: now,
            lease: settings_witness.map(LeaseClient::new),
            lease_wanted: false,
            stepping_down: false,
            lease_lapsed: false,
            tiebreaker: true,
            peer_data: PeerData::Unknown,
        }
    }

    pub fn settings(&self) -> &MirrorSettings {
        &self.settings
    }

    pub fn persistent(&self) -> &Persistent {
        &self.persistent
    }

    /// Actions queued since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.outbox)
    }

    /// The state shown to users and sent to the peer.
    pub fn state(&self) -> State {
        match self.role {
            Role::Stopped => State::Stop,
            Role::Waiting(_) => State::Wait,
            Role::Secondary => State::Second,
            Role::Primary => match self.live_peer() {
                Some(p) if p.state == State::Second => State::Prim,
                _ => State::Alone,
            },
        }
    }

    pub fn transient(&self) -> bool {
        self.running.is_some() || !self.steps.is_empty()
    }

    pub fn app_active(&self) -> bool {
        self.app_active
    }

    pub fn status(&self) -> PeerStatus {
        PeerStatus {
            state: self.state(),
            transient: self.transient(),
            app_active: self.app_active,
            epoch: self.persistent.epoch,
            last_primary: self.persistent.last_primary,
            yields: self.yields,
            handover: self.handover,
            wants_swap: self.wants_swap,
            eligible: self.eligible(),
            seen: self.live_peer().map(|p| p.state),
            clock: (
                self.settings.incarnation,
                self.now.saturating_duration_since(self.origin).as_millis() as u64,
            ),
            echo: self.live_peer().map(|p| p.clock),
        }
    }

    pub fn view(&self) -> ModuleView {
        let timeout = self.settings.timeout;
        let networks_up = (0..self.settings.networks)
            .map(|i| {
                self.peer
                    .as_ref()
                    .and_then(|p| p.per_network.get(i).copied().flatten())
                    .is_some_and(|t| self.now.saturating_duration_since(t) < timeout)
            })
            .collect();
        ModuleView {
            state: self.state(),
            transient: self.transient(),
            app_active: self.app_active,
            reason: match self.role {
                Role::Waiting(WaitReason::ResourceMissing) => format!(
                    "waiting for missing resources: {}",
                    self.missing
                        .iter()
                        .map(|(name, why)| format!("{name} ({why})"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                Role::Waiting(WaitReason::Suspended) => self.suspended.clone().unwrap_or_default(),
                Role::Waiting(r) => r.describe(&self.settings.peer),
                _ => self.reason.clone(),
            },
            peer: self.settings.peer.clone(),
            peer_state: self.live_peer().map(|p| p.state),
            networks_up,
            epoch: self.persistent.epoch,
            running_script: self.running.map(|(_, s)| s.name().to_string()),
            farm: None,
        }
    }

    /// When the state machine must be ticked even if nothing arrives: the
    /// moment the peer's heartbeat (or the wait for it) times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.role == Role::Stopped {
            return None;
        }
        let timeout = self.settings.timeout;
        let peer_lost = self.peer.as_ref().map(|p| p.last_heard + timeout);
        let wait_over = matches!(self.role, Role::Waiting(_)).then(|| self.waiting_since + timeout);
        let (step_down, renew) = match &self.lease {
            Some(lease) => (
                (self.app_active && !self.stepping_down)
                    .then(|| self.keep_until().map(|k| k - lease.settings().stop_budget))
                    .flatten(),
                self.wants_lease().then(|| lease.next_request()).flatten(),
            ),
            None => (None, None),
        };
        [peer_lost, wait_over, step_down, renew]
            .into_iter()
            .flatten()
            .filter(|deadline| *deadline > self.now)
            .min()
    }

    /// An administrator command. Refused commands change nothing.
    pub fn command(&mut self, now: Instant, command: Command) -> Result<(), CommandError> {
        self.input(now, |m| m.apply_command(command))
    }

    /// An authenticated heartbeat from the peer, received on `network`.
    /// `stamp` is the sender's `(incarnation, seq)`: datagrams may arrive out
    /// of order across networks, and an older status must not overwrite a
    /// newer one (it still proves that its network works).
    pub fn heartbeat(
        &mut self,
        now: Instant,
        network: usize,
        stamp: (u64, u64),
        status: PeerStatus,
    ) {
        self.input(now, |m| {
            let networks = m.settings.networks;
            let seen = m.peer.get_or_insert_with(|| PeerSeen {
                status: status.clone(),
                stamp,
                last_heard: now,
                per_network: vec![None; networks],
            });
            if stamp >= seen.stamp {
                seen.status = status;
                seen.stamp = stamp;
            }
            seen.last_heard = now;
            if let Some(slot) = seen.per_network.get_mut(network) {
                *slot = Some(now);
            }
            Ok(())
        })
        .unwrap_or(())
    }

    /// From the data layer: whether this node's copy of the replicated data
    /// is complete and current. A node whose copy is not never makes itself
    /// primary (only `prim` can force it).
    pub fn data_state(&mut self, now: Instant, uptodate: bool) {
        self.input(now, |m| {
            m.uptodate = uptodate;
            Ok(())
        })
        .unwrap_or(())
    }

    /// See [`PeerStatus::eligible`].
    fn eligible(&self) -> bool {
        let passive = matches!(self.role, Role::Waiting(r) if r.passive());
        self.uptodate && self.suspended.is_none() && self.missing.is_empty() && !passive
    }

    /// The module waits for an administrator (`prim`, or starting the other
    /// node): failover off, started with `second`, or data not up to date.
    pub fn waits_for_administrator(&self) -> bool {
        matches!(self.role, Role::Waiting(r) if r.passive() && r != WaitReason::ResourceMissing)
    }

    /// From a resource checker: `missing` is `Some(why)` while the resource
    /// is missing. While any is, the module waits (a primary first stops its
    /// application, and the peer takes over); it comes back by itself.
    pub fn resource(&mut self, now: Instant, name: &str, missing: Option<String>) {
        self.input(now, |m| {
            match missing {
                Some(why) => {
                    if m.missing.insert(name.to_string(), why.clone()).is_none() {
                        m.log(LogLevel::Error, format!("resource {name} missing: {why}"));
                    }
                }
                None => {
                    if m.missing.remove(name).is_some() {
                        m.log(LogLevel::Info, format!("resource {name} is back"));
                    }
                }
            }
            Ok(())
        })
        .unwrap_or(())
    }

    /// From the recovery policy: `Some(why)` forbids this node to become
    /// primary (it failed too often); `None` lifts it.
    pub fn suspend(&mut self, now: Instant, suspended: Option<String>) {
        self.input(now, |m| {
            m.suspended = suspended;
            Ok(())
        })
        .unwrap_or(())
    }

    pub fn script_finished(&mut self, now: Instant, id: u64, outcome: ScriptOutcome) {
        self.input(now, |m| {
            let Some((running, script)) = m.running else {
                return Ok(());
            };
            if running != id {
                return Ok(());
            }
            m.running = None;
            let failure = match outcome {
                ScriptOutcome::Success | ScriptOutcome::Missing => None,
                ScriptOutcome::Failed(why) => Some(format!("{} failed: {why}", script.name())),
                ScriptOutcome::TimedOut(after) => Some(format!(
                    "{} did not finish within {after:?}: killed",
                    script.name()
                )),
            };
            if let Some(failure) = failure {
                m.log(LogLevel::Error, failure.clone());
                if script == Script::Fence {
                    // Not sure the old primary is down: do not take over.
                    m.steps.clear();
                    let why = format!("{failure}: not taking over; run `holdfast prim` once the other node is known to be down");
                    m.log(LogLevel::Error, why.clone());
                    m.enter(Role::Waiting(WaitReason::FenceFailed), why);
                }
            }
            Ok(())
        })
        .unwrap_or(())
    }

    /// From the split-brain checker: whether any of its addresses answers.
    pub fn splitbrain_witness(&mut self, now: Instant, reachable: bool) {
        self.input(now, |m| {
            if m.tiebreaker != reachable {
                m.tiebreaker = reachable;
                let message = if reachable {
                    "split-brain checker: a witness answers again"
                } else {
                    "split-brain checker: no witness answers the ping"
                };
                m.log(LogLevel::Info, message.into());
            }
            Ok(())
        })
        .unwrap_or(())
    }

    /// Without its peer, this node may keep or take the primary role only
    /// if the split-brain checker (when configured) reaches a witness.
    fn tiebreaker_lost(&self) -> bool {
        self.settings.splitbrain && !self.tiebreaker
    }

    /// The witness answered lease request `id`.
    pub fn lease_reply(&mut self, now: Instant, id: u64, decision: Decision) {
        self.input(now, |m| {
            let peer = m.settings.peer.clone();
            let Some(lease) = m.lease.as_mut() else {
                return Ok(());
            };
            let note = match decision {
                Decision::Granted => {
                    if let Some(epoch) = lease.granted(id) {
                        m.outbox.push(Action::PeerFenced { epoch });
                    }
                    None
                }
                Decision::Outdated { by } => {
                    // Stale data wins no election: the returning primary
                    // does not wait for this node to agree.
                    m.uptodate = false;
                    lease.refused(id, &format!("outdated:{by}")).then(|| {
                    (LogLevel::Info, format!(
                        "the witness refuses the lease: this node's copy of the replicated data is outdated ({by} changed it without this node); not taking over until {by} has resynchronised it"
                    ))
                })
                }
                Decision::Refused {
                    holder,
                    remaining_ms,
                } => lease.refused(id, &holder).then(|| {
                    (LogLevel::Info, format!(
                        "the witness refuses the lease: held by {holder} for {remaining_ms} ms more{}",
                        if holder == peer { "; not taking over" } else { "" }
                    ))
                }),
                Decision::TooLong { max_ms } => lease.refused(id, "").then(|| {
                    (LogLevel::Error, format!(
                        "the witness refuses leases longer than {max_ms} ms: raise its --max-lease or lower [witness] lease"
                    ))
                }),
            };
            if let Some((level, message)) = note {
                m.log(level, message);
            }
            Ok(())
        })
        .unwrap_or(())
    }

    /// Replication's news of the peer's copy. Outdated: the witness is
    /// told at once, and [`Action::PeerFenced`] follows its grant (at once
    /// without a witness).
    pub fn peer_data(&mut self, now: Instant, data: PeerData) {
        self.input(now, |m| {
            if m.peer_data == data {
                return Ok(());
            }
            m.peer_data = data;
            match (data, m.lease.as_mut()) {
                (PeerData::Outdated { epoch }, None) => m.outbox.push(Action::PeerFenced { epoch }),
                (PeerData::Unknown, _) => {}
                (_, Some(lease)) => lease.hurry(),
                (_, None) => {}
            }
            Ok(())
        })
        .unwrap_or(())
    }

    /// Time passed: heartbeat timeouts are noticed here.
    pub fn tick(&mut self, now: Instant) {
        self.input(now, |_| Ok(())).unwrap_or(())
    }

    /// Every input goes through here: apply it, let the machine progress, then
    /// publish what changed (transition, heartbeat).
    fn input(
        &mut self,
        now: Instant,
        apply: impl FnOnce(&mut Self) -> Result<(), CommandError>,
    ) -> Result<(), CommandError> {
        self.now = self.now.max(now);
        let before = self.status();
        apply(self)?;
        self.keep();
        self.advance();
        self.renew_lease();
        let after = self.status();
        if after.state != self.shown {
            let reason = self.why.take().unwrap_or_else(|| self.describe_peer());
            self.log(
                LogLevel::Info,
                format!("transition {} -> {}: {reason}", self.shown, after.state),
            );
            self.outbox.push(Action::Transition {
                from: self.shown,
                to: after.state,
                reason: reason.clone(),
            });
            self.reason = reason;
            self.shown = after.state;
        }
        if !after.same_apart_from_clocks(&before) {
            self.outbox.push(Action::SendHeartbeat);
        }
        Ok(())
    }

    /// The end of this node's basis for running the application: its lease
    /// as it sees it, or the peer promise (see the module docs).
    fn keep_until(&self) -> Option<Instant> {
        let lease = self.lease.as_ref().and_then(LeaseClient::valid_until);
        let promise = self
            .peer
            .as_ref()
            .and_then(|p| p.status.echo)
            .filter(|(incarnation, _)| *incarnation == self.settings.incarnation)
            .map(|(_, ms)| self.origin + Duration::from_millis(ms) + self.settings.timeout);
        lease.max(promise)
    }

    /// The application may go on running here for at least the stop
    /// budget: always without a witness.
    fn may_hold(&self) -> bool {
        self.lasts(self.keep_until())
    }

    /// The application may start here: the lease lasts more than the stop budget.
    fn may_start(&self) -> bool {
        self.lasts(self.lease.as_ref().and_then(LeaseClient::valid_until))
    }

    fn lasts(&self, until: Option<Instant>) -> bool {
        let Some(lease) = &self.lease else {
            return true;
        };
        until.is_some_and(|k| self.now + lease.settings().stop_budget < k)
    }

    fn wants_lease(&self) -> bool {
        self.app_active || self.lease_wanted
    }

    /// Stops the application and `start_both`'s work, then waits for `wait`:
    /// how a primary steps down for a reason of its own.
    fn stop_and_wait(&mut self, handover: Handover, wait: WaitReason, why: String) {
        self.why = Some(why.clone());
        self.stop_application(handover, ScriptAction::StopWait, State::Wait);
        self.stop_both(State::Wait, ScriptAction::StopWait);
        self.steps.push_back(Step::Enter(Role::Waiting(wait), why));
    }

    /// The keep rule: stop the application while it is still time.
    fn keep(&mut self) {
        self.note_lease_lapse();
        if !self.app_active || self.stepping_down || self.may_hold() {
            return;
        }
        let why = format!(
            "split-brain protection: neither {} nor the witness confirmed this node's primary role in time; stopping the application before its lease can expire",
            self.settings.peer
        );
        self.log(LogLevel::Error, why.clone());
        self.stepping_down = true;
        self.steps.clear();
        if self.persistent.running {
            self.stop_and_wait(Handover::None, WaitReason::LeaseLost, why);
        } else {
            self.why = Some(why);
            self.stop_application(Handover::None, ScriptAction::StopWait, State::Wait);
            // A stop command was under way: finish it.
            self.stop_both(State::Stop, ScriptAction::Stop);
            self.run(Script::Poststop, false, State::Stop, ScriptAction::Stop);
            self.steps
                .push_back(Step::Enter(Role::Stopped, "stop command".into()));
        }
    }

    /// Says when the application runs on the peer's promise alone (the
    /// witness does not answer), and when the lease is back: a witness
    /// outage is visible before it matters.
    fn note_lease_lapse(&mut self) {
        if self.lease.is_none() {
            return;
        }
        if !self.app_active {
            self.lease_lapsed = false;
            return;
        }
        let lapsed = !self.may_start();
        if lapsed == self.lease_lapsed {
            return;
        }
        self.lease_lapsed = lapsed;
        let (level, message) = if lapsed {
            (
                LogLevel::Error,
                format!(
                    "no lease from the witness: the application goes on only while {} hears this node",
                    self.settings.peer
                ),
            )
        } else {
            (LogLevel::Info, "the witness grants the lease again".into())
        };
        self.log(level, message);
    }

    /// Asks the witness for the lease while the application may run or this
    /// node waits for it to become primary, at the renew pace.
    fn renew_lease(&mut self) {
        if !self.wants_lease() {
            return;
        }
        let now = self.now;
        let (fencing, peer_copy) = match self.peer_data {
            PeerData::Unknown => (None, PeerCopy::Unknown),
            PeerData::Current => (None, PeerCopy::Current),
            PeerData::Outdated { epoch } => (
                Some(epoch),
                PeerCopy::Outdated {
                    peer: self.settings.peer.clone(),
                },
            ),
        };
        if let Some(lease) = self.lease.as_mut() {
            if let Some(id) = lease.request(now, fencing) {
                let duration = lease.settings().duration;
                self.outbox.push(Action::RequestLease {
                    id,
                    duration,
                    peer_copy,
                });
            }
        }
    }

    /// Without a lease to start the application, ask for it: true when this
    /// node must wait for it.
    fn needs_lease(&mut self) -> bool {
        if self.may_start() {
            return false;
        }
        self.lease_wanted = true;
        true
    }

    fn describe_peer(&self) -> String {
        match self.live_peer() {
            Some(p) => format!("{} is {}", self.settings.peer, p.state),
            None => format!(
                "no heartbeat from {} for {:?}",
                self.settings.peer, self.settings.timeout
            ),
        }
    }

    fn live_peer(&self) -> Option<&PeerStatus> {
        self.peer
            .as_ref()
            .filter(|p| self.now.saturating_duration_since(p.last_heard) < self.settings.timeout)
            .map(|p| &p.status)
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.outbox.push(Action::Log { level, message });
    }

    fn persist(&mut self) {
        self.outbox.push(Action::Persist(self.persistent.clone()));
    }

    fn apply_command(&mut self, command: Command) -> Result<(), CommandError> {
        let state = self.state();
        // Only stop may interrupt a transition: any other command would be
        // judged against a role that the queued steps are about to change.
        if !matches!(command, Command::Stop | Command::StopStart) && self.transient() {
            return Err(CommandError::Busy {
                state,
                script: self
                    .running
                    .map_or("nothing yet".into(), |(_, s)| s.name().to_string()),
            });
        }
        match command {
            Command::Start | Command::Second => {
                if self.role != Role::Stopped {
                    return Err(CommandError::AlreadyStarted(state));
                }
                let wait = if command == Command::Second {
                    WaitReason::AwaitPrimary
                } else {
                    WaitReason::PeerUnknown
                };
                self.persistent.running = true;
                self.persist();
                self.outbox.push(Action::ReleasePrimaryResources);
                self.why = Some(format!("{} command", command.as_str()));
                self.role = Role::Waiting(WaitReason::Starting);
                self.yields = command == Command::Second;
                self.run(Script::Prestart, false, State::Wait, ScriptAction::Start);
                self.steps.push_back(Step::Enter(
                    Role::Waiting(wait),
                    format!("{} command", command.as_str()),
                ));
            }
            Command::Prim => {
                if self.role == Role::Primary {
                    return Err(CommandError::AlreadyPrimary(state));
                }
                if let Some(p) = self.live_peer().filter(|p| p.state.is_primary()) {
                    return Err(CommandError::PeerIsPrimary {
                        peer: self.settings.peer.clone(),
                        state: p.state,
                    });
                }
                if !matches!(self.role, Role::Stopped | Role::Waiting(_)) {
                    return Err(CommandError::AlreadyStarted(state));
                }
                self.persistent.running = true;
                self.persist();
                if self.role == Role::Stopped {
                    self.outbox.push(Action::ReleasePrimaryResources);
                    self.role = Role::Waiting(WaitReason::Starting);
                    self.run(Script::Prestart, false, State::Wait, ScriptAction::Start);
                }
                if !self.uptodate {
                    self.log(
                        LogLevel::Error,
                        "prim forced on a node whose data may not be up to date: changes made on the other node since are lost here".into(),
                    );
                }
                self.steps
                    .push_back(Step::BecomePrimary("forced by the prim command".into()));
            }
            Command::Stop => {
                if self.role == Role::Stopped {
                    return Err(CommandError::AlreadyStopped);
                }
                self.persistent.running = false;
                self.persist();
                self.steps.clear();
                self.stop_application(Handover::Stop, ScriptAction::Stop, State::Stop);
                self.stop_both(State::Stop, ScriptAction::Stop);
                self.run(Script::Poststop, false, State::Stop, ScriptAction::Stop);
                self.steps
                    .push_back(Step::Enter(Role::Stopped, "stop command".into()));
            }
            Command::StopStart => {
                if self.role == Role::Stopped {
                    return Err(CommandError::AlreadyStopped);
                }
                self.why = Some("stopstart".into());
                self.stop_and_start_here(Handover::Stop, "stopstart: started again");
            }
            Command::Restart => match self.role {
                Role::Stopped => return Err(CommandError::AlreadyStopped),
                Role::Primary => {
                    self.stop_application(Handover::None, ScriptAction::StopStart, state);
                    self.steps.push_back(Step::AppRestarted);
                    self.run(Script::StartPrim, false, state, ScriptAction::StopStart);
                }
                _ => self.stop_and_start_here(Handover::None, "restart command"),
            },
            Command::Swap => {
                let peer = self.live_peer().map(|p| p.state);
                match (self.role, peer) {
                    (Role::Primary, Some(State::Second)) => self.swap_requested = true,
                    (Role::Secondary, Some(p)) if p.is_primary() => self.wants_swap = true,
                    _ => {
                        return Err(CommandError::CannotSwap {
                            local: state,
                            peer: peer.map_or("unreachable".into(), |p| p.to_string()),
                        })
                    }
                }
                self.log(LogLevel::Info, "swap requested by the administrator".into());
            }
        }
        self.log(
            LogLevel::Info,
            format!("action {} called by the administrator", command.as_str()),
        );
        Ok(())
    }

    /// Queues a stop of the module here (its application, if any, handing
    /// over with `handover`) followed by a fresh start, keeping it running.
    fn stop_and_start_here(&mut self, handover: Handover, reason: &str) {
        self.steps.clear();
        self.stop_application(handover, ScriptAction::StopStart, State::Wait);
        self.stop_both(State::Wait, ScriptAction::StopStart);
        self.run(
            Script::Poststop,
            false,
            State::Wait,
            ScriptAction::StopStart,
        );
        self.run(
            Script::Prestart,
            false,
            State::Wait,
            ScriptAction::StopStart,
        );
        self.steps.push_back(Step::Enter(
            Role::Waiting(WaitReason::PeerUnknown),
            reason.into(),
        ));
    }

    fn run(&mut self, script: Script, force: bool, next: State, action: ScriptAction) {
        self.steps.push_back(Step::Run {
            script,
            force,
            next,
            action,
        });
    }

    /// Queue the graceful then forced stop of the application, if it may run.
    fn stop_application(&mut self, handover: Handover, action: ScriptAction, next: State) {
        if self.app_active || self.role == Role::Primary {
            self.run(Script::StopPrim, false, next, action);
            self.run(Script::StopPrim, true, next, action);
            self.steps.push_back(Step::AppStopped(handover));
        }
    }

    fn stop_both(&mut self, next: State, action: ScriptAction) {
        if self.both_active {
            self.run(Script::StopBoth, false, next, action);
            self.run(Script::StopBoth, true, next, action);
            self.steps.push_back(Step::BothStopped);
        }
    }

    /// Run queued steps; when none is left, decide what to do next.
    fn advance(&mut self) {
        // Each round either starts a script (and returns), or consumes a step,
        // or decides; a decision that queues nothing ends the loop. The bound
        // is a safety net against a rule oscillating within one input.
        for _ in 0..64 {
            if self.running.is_some() {
                return;
            }
            match self.steps.pop_front() {
                Some(Step::Run {
                    script,
                    force,
                    next,
                    action,
                }) => {
                    let id = self.next_script_id;
                    self.next_script_id += 1;
                    self.running = Some((id, script));
                    let reason = self.why.clone().unwrap_or_else(|| self.reason.clone());
                    self.outbox.push(Action::RunScript(ScriptRun {
                        id,
                        script,
                        force,
                        current: self.state(),
                        next,
                        action,
                        reason,
                    }));
                }
                Some(Step::AppStopped(handover)) => {
                    self.app_active = false;
                    self.stepping_down = false;
                    if !self.steps.contains(&Step::AppRestarted) {
                        if let Some(lease) = self.lease.as_mut() {
                            let id = lease.release();
                            self.outbox.push(Action::ReleaseLease { id });
                        }
                    }
                    self.handover = handover;
                    self.outbox.push(Action::ReleasePrimaryResources);
                }
                Some(Step::AppRestarted) => {
                    self.app_active = true;
                    self.outbox.push(Action::AcquirePrimaryResources);
                    // A local restart, but not past the basis to run it.
                    self.keep();
                }
                Some(Step::BothStopped) => self.both_active = false,
                Some(Step::Enter(role, reason)) => self.enter(role, reason),
                Some(Step::BecomePrimary(reason)) => {
                    if self.needs_lease() {
                        // Forced, but not into a split brain: waits for the
                        // lease (or the peer's promise); `stop` cancels.
                        self.steps.push_front(Step::BecomePrimary(reason));
                        return;
                    }
                    self.become_primary(reason)
                }
                Some(Step::TakeOver(reason)) => match self.blocked(&reason) {
                    Some((wait, why)) => {
                        self.wait_blocked(wait, why);
                    }
                    // The lease ran out while fencing: decide again.
                    None if self.needs_lease() => {}
                    None => self.become_primary(reason),
                },
                None => {
                    if !self.decide() {
                        return;
                    }
                }
            }
        }
        self.log(
            LogLevel::Error,
            "state machine did not settle within one input".into(),
        );
    }

    fn enter(&mut self, role: Role, reason: String) {
        if let Role::Waiting(wait) = role {
            self.waiting_since = self.now;
            self.yields = wait == WaitReason::PeerElected || wait.passive();
            if self.role != role {
                self.log(LogLevel::Info, wait.describe(&self.settings.peer));
            }
        }
        if role == Role::Secondary {
            self.yields = false;
            if self.persistent.last_primary {
                self.persistent.last_primary = false;
                self.persist();
            }
            if !self.both_active {
                self.both_active = true;
                self.run(Script::StartBoth, false, State::Second, ScriptAction::Start);
            }
        }
        if role == Role::Stopped {
            self.yields = false;
            self.handover = Handover::None;
            self.wants_swap = false;
            self.swap_requested = false;
        }
        self.role = role;
        self.why = Some(reason);
    }

    fn become_primary(&mut self, reason: String) {
        let peer_epoch = self.peer.as_ref().map_or(0, |p| p.status.epoch);
        self.persistent.epoch = self.persistent.epoch.max(peer_epoch) + 1;
        self.persistent.last_primary = true;
        self.persist();
        self.log(
            LogLevel::Info,
            format!(
                "becoming primary (epoch {}): {reason}",
                self.persistent.epoch
            ),
        );
        self.role = Role::Primary;
        self.app_active = true;
        self.yields = false;
        self.wants_swap = false;
        self.swap_requested = false;
        self.handover = Handover::None;
        self.split_brain_noted = false;
        self.why = Some(reason);
        let next = State::Alone;
        self.outbox.push(Action::AcquirePrimaryResources);
        if !self.both_active {
            self.both_active = true;
            self.run(Script::StartBoth, false, next, ScriptAction::Start);
        }
        self.run(Script::StartPrim, false, next, ScriptAction::Start);
    }

    /// Whom both nodes pick when neither is primary yet.
    fn election(&self, peer: &PeerStatus) -> Winner {
        let local = &self.settings.local;
        let remote = &self.settings.peer;
        // Never elect stale data over current data, nor a node that may not
        // be primary.
        match (self.eligible(), peer.eligible) {
            (true, false) => return Winner::Local,
            (false, true) => return Winner::Peer,
            _ => {}
        }
        if let DefaultPrimary::Node(preferred) = &self.settings.default_primary {
            if preferred == local {
                return Winner::Local;
            }
            if preferred == remote {
                return Winner::Peer;
            }
        }
        match (self.persistent.last_primary, peer.last_primary) {
            (true, false) => Winner::Local,
            (false, true) => Winner::Peer,
            _ if local < remote => Winner::Local,
            _ => Winner::Peer,
        }
    }

    /// Applies the rules for the current role; true when something changed.
    fn decide(&mut self) -> bool {
        self.lease_wanted = false;
        if self.role != Role::Stopped && self.decide_resources() {
            return true;
        }
        let peer = self.live_peer().cloned();
        match self.role {
            Role::Stopped => false,
            Role::Waiting(reason) => self.decide_waiting(reason, peer),
            Role::Secondary => self.decide_secondary(peer),
            Role::Primary => self.decide_primary(peer),
        }
    }

    /// Missing resources put the module in WAIT (a primary stops its
    /// application first, handing over); their return ends it.
    fn decide_resources(&mut self) -> bool {
        let waiting = self.role == Role::Waiting(WaitReason::ResourceMissing);
        if self.missing.is_empty() {
            if waiting {
                self.enter(
                    Role::Waiting(WaitReason::PeerUnknown),
                    "the missing resources are back".into(),
                );
                return true;
            }
            return false;
        }
        if waiting {
            return false;
        }
        let why = format!(
            "resource missing: {}",
            self.missing.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        self.stop_and_wait(Handover::Stop, WaitReason::ResourceMissing, why);
        true
    }

    fn decide_waiting(&mut self, reason: WaitReason, peer: Option<PeerStatus>) -> bool {
        let name = self.settings.peer.clone();
        // Not even SECOND while a resource is missing: `decide_resources`
        // ends this wait when it returns.
        if reason == WaitReason::ResourceMissing {
            return false;
        }
        // The data layer or the recovery policy changed its mind: wait
        // again as an ordinary start.
        let unblocked = match reason {
            WaitReason::NotUpToDate => self.uptodate,
            WaitReason::Suspended => self.suspended.is_none(),
            _ => false,
        };
        if unblocked {
            self.enter(
                Role::Waiting(WaitReason::PeerUnknown),
                "no longer blocked".into(),
            );
            return true;
        }
        let Some(p) = peer else {
            if reason.passive() || self.now < self.waiting_since + self.settings.timeout {
                return false;
            }
            return self.become_primary_if_current(format!(
                "no heartbeat from {name} for {:?}",
                self.settings.timeout
            ));
        };
        // A node that may not take over (failover off, held back, stale)
        // does not join a primary handing over: as SECOND it would only find
        // again that it must not take over, and wait again, in a loop.
        let handing_over = reason.passive() && p.handover != Handover::None;
        if p.state.is_primary() && !handing_over {
            self.enter(
                Role::Secondary,
                format!("{name} is {}: joining as SECOND", p.state),
            );
            return true;
        }
        if reason.passive() {
            return false;
        }
        // Stale data cannot win any election: wait for a primary, or for an
        // administrator when the peer is no surer of its data.
        if !self.uptodate {
            return self.become_primary_if_current(format!("{name} is {}", p.state));
        }
        if p.state == State::Stop {
            // Only once the peer has seen us waiting: had it started at the
            // same moment, it would see WAIT here, never our old STOP.
            if p.seen != Some(State::Wait) {
                return false;
            }
            return self.become_primary_if_current(format!("{name} is stopped"));
        }
        let winner = self.election(&p);
        // A SECOND that handed the primary role over waits for us to take it.
        let peer_yields = p.yields || (p.state == State::Second && p.handover != Handover::None);
        if peer_yields && (!self.yields || winner == Winner::Local) {
            return self
                .become_primary_if_current(format!("{name} agrees that this node is primary"));
        }
        let next = match winner {
            Winner::Local => WaitReason::PeerToAgree,
            Winner::Peer => WaitReason::PeerElected,
        };
        if reason == next {
            return false;
        }
        self.enter(Role::Waiting(next), next.describe(&name));
        true
    }

    /// Becomes primary, unless this node's data is not up to date: then it
    /// waits, and says why.
    fn become_primary_if_current(&mut self, reason: String) -> bool {
        if let Some((wait, why)) = self.blocked(&reason) {
            return self.wait_blocked(wait, why);
        }
        if self.needs_lease() {
            return false;
        }
        if self.live_peer().is_none() && self.tiebreaker_lost() {
            return self.wait_blocked(
                WaitReason::TieBreakerLost,
                format!("{reason}, but no split-brain witness answers the ping: not taking over"),
            );
        }
        if self.live_peer().is_none() {
            // Taking over from a peer that went silent: fence it first.
            self.why = Some(reason.clone());
            self.run(Script::Fence, false, State::Alone, ScriptAction::Start);
            self.steps.push_back(Step::TakeOver(reason));
            return true;
        }
        self.become_primary(reason);
        true
    }

    /// Why this node may not become primary now: the wait that follows.
    fn blocked(&self, reason: &str) -> Option<(WaitReason, String)> {
        if !self.missing.is_empty() {
            return Some((
                WaitReason::ResourceMissing,
                format!("{reason}, but a resource is missing"),
            ));
        }
        if let Some(suspended) = &self.suspended {
            return Some((WaitReason::Suspended, format!("{reason}, but {suspended}")));
        }
        if !self.uptodate {
            return Some((
                WaitReason::NotUpToDate,
                format!("{reason}, but the data here may not be up to date (reintegration incomplete, or SECOND before a restart)"),
            ));
        }
        None
    }

    fn wait_blocked(&mut self, wait: WaitReason, why: String) -> bool {
        if self.role == Role::Waiting(wait) {
            return false;
        }
        self.log(LogLevel::Error, why.clone());
        self.enter(Role::Waiting(wait), why);
        true
    }

    /// Failover if configured, else wait for the administrator.
    fn take_over(&mut self, reason: String) -> bool {
        if self.settings.failover {
            return self.become_primary_if_current(reason);
        }
        self.log(LogLevel::Error, format!("{reason}; failover is off"));
        self.enter(
            Role::Waiting(WaitReason::FailoverOff),
            format!("{reason}; failover is off"),
        );
        true
    }

    fn decide_secondary(&mut self, peer: Option<PeerStatus>) -> bool {
        let name = self.settings.peer.clone();
        if self.handover == Handover::Swap {
            match &peer {
                Some(p) if p.state.is_primary() => self.handover = Handover::None,
                // The swap target waits instead of taking over (failover off,
                // or it restarted): it yields, so take the role back.
                Some(p) if p.state == State::Wait && p.yields => {
                    self.handover = Handover::None;
                    return self.become_primary_if_current(format!(
                        "{name} did not take the primary role over: taking it back"
                    ));
                }
                // Both handed over (a swap back crossed ours): the elected one takes it.
                Some(p) if p.handover == Handover::Swap && self.election(p) == Winner::Local => {
                    self.handover = Handover::None
                }
                Some(_) => return false,
                None => self.handover = Handover::None,
            }
        }
        if self.wants_swap && !peer.as_ref().is_some_and(|p| p.state.is_primary()) {
            self.wants_swap = false;
        }
        let Some(p) = peer else {
            return self.take_over(format!(
                "no heartbeat from {name} for {:?}",
                self.settings.timeout
            ));
        };
        if p.app_active {
            return false;
        }
        match (p.state, p.handover) {
            (State::Stop, _) => self.take_over(format!("{name} is stopped")),
            (_, Handover::Swap) => {
                self.become_primary_if_current(format!("swap: {name} handed the primary role over"))
            }
            (_, Handover::Stop) => self.take_over(format!("{name} is stopping")),
            (State::Wait, _) => {
                self.take_over(format!("{name} restarted without its primary role"))
            }
            (State::Second, _) if self.election(&p) == Winner::Local => {
                self.become_primary_if_current(format!("both nodes SECOND: elected against {name}"))
            }
            _ => false,
        }
    }

    fn decide_primary(&mut self, peer: Option<PeerStatus>) -> bool {
        let name = self.settings.peer.clone();
        let Some(p) = peer else {
            if !self.tiebreaker_lost() {
                return false;
            }
            let why = format!(
                "split-brain checker: no heartbeat from {name} and no witness answers the ping; stopping the application (the other side may keep the service)"
            );
            self.log(LogLevel::Error, why.clone());
            self.stop_and_wait(Handover::None, WaitReason::TieBreakerLost, why);
            return true;
        };
        if p.state.is_primary() {
            let mine = self.persistent.epoch;
            let local_wins = match mine.cmp(&p.epoch) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal => self.election(&p) == Winner::Local,
            };
            if local_wins {
                if !self.split_brain_noted {
                    self.split_brain_noted = true;
                    self.log(LogLevel::Error, format!(
                        "split brain: {name} is also primary (its epoch {}, ours {mine}); this node keeps the primary role",
                        p.epoch
                    ));
                }
                return false;
            }
            let reason = format!(
                "split brain: {name} is also primary with a newer or preferred epoch ({} vs ours {mine}); stopping the application here",
                p.epoch
            );
            self.log(LogLevel::Error, reason.clone());
            self.why = Some(reason.clone());
            self.stop_application(Handover::None, ScriptAction::StopStart, State::Second);
            self.steps.push_back(Step::Enter(Role::Secondary, reason));
            return true;
        }
        // Only to a SECOND whose copy is complete (reintegration finished).
        if p.state != State::Second || p.transient || !p.eligible {
            return false;
        }
        let preferred_peer =
            matches!(&self.settings.default_primary, DefaultPrimary::Node(n) if *n == name);
        let reason = if self.swap_requested || p.wants_swap {
            "swap requested by the administrator".to_string()
        } else if preferred_peer && self.settings.swap_back {
            format!("swap back to the preferred primary {name}")
        } else {
            return false;
        };
        self.log(LogLevel::Info, format!("begin of swap: {reason}"));
        self.swap_requested = false;
        self.why = Some(reason.clone());
        self.stop_application(Handover::Swap, ScriptAction::StopStart, State::Second);
        self.steps.push_back(Step::Enter(Role::Secondary, reason));
        true
    }
}
