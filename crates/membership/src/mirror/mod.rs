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
//!
//! Here: the machine, its inputs and how queued steps run. The rules above
//! are in `decide.rs`, the keep rule and lease requests in `keep.rs`,
//! administrator commands in `commands.rs`, why a node waits in `wait.rs`;
//! what the nodes tell each other is in `status.rs`.

use std::collections::VecDeque;
use std::time::Instant;

use crate::lease::{LeaseClient, LeaseDecision};
use crate::module::{
    Action, Command, CommandError, LogLevel, Origin, Persistent, Script, ScriptAction,
    ScriptOutcome, ScriptSlot, State,
};
use crate::view::ModuleView;

mod commands;
mod decide;
mod keep;
mod settings;
mod status;
mod wait;

pub use settings::MirrorSettings;
pub use status::{Handover, PeerData, PeerStatus};
use wait::WaitReason;

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
    scripts: ScriptSlot,
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
            scripts: ScriptSlot::default(),
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
        self.scripts.script().is_some() || !self.steps.is_empty()
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
                // A SECOND follows its primary: what the primary is now, not
                // what it was when this node joined it (ALONE, then PRIM).
                Role::Secondary if !self.transient() => match self.live_peer() {
                    Some(p) => format!("secondary of {} ({})", self.settings.peer, p.state),
                    None => self.reason.clone(),
                },
                _ => self.reason.clone(),
            },
            peer: self.settings.peer.clone(),
            peer_state: self.peer_state(),
            networks_up,
            epoch: self.persistent.epoch,
            running_script: self.scripts.script().map(|s| s.name().to_string()),
            farm: None,
        }
    }

    /// The peer's state, while it is heard.
    pub fn peer_state(&self) -> Option<State> {
        self.live_peer().map(|p| p.state)
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
    /// An administrator's command.
    pub fn command(&mut self, now: Instant, command: Command) -> Result<(), CommandError> {
        self.command_from(now, command, &Origin::Administrator)
    }

    /// The administrator turns automatic failover on or off (SafeKit's
    /// `failover on|off`). A node already waiting because failover was off
    /// goes on waiting for `prim`.
    pub fn set_failover(&mut self, now: Instant, on: bool) {
        let _ = self.input(now, |m| {
            if m.settings.failover != on {
                m.settings.failover = on;
                let word = if on { "on" } else { "off" };
                m.log(
                    LogLevel::Info,
                    format!("failover {word}, set by the administrator"),
                );
            }
            Ok(())
        });
    }

    /// A command from `origin`, which the module log names.
    pub fn command_from(
        &mut self,
        now: Instant,
        command: Command,
        origin: &Origin,
    ) -> Result<(), CommandError> {
        self.input(now, |m| m.apply_command(command, origin))
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
            let Some(script) = m.scripts.finish(id) else {
                return Ok(());
            };
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
    pub fn lease_reply(&mut self, now: Instant, id: u64, decision: LeaseDecision) {
        self.input(now, |m| {
            let peer = m.settings.peer.clone();
            let Some(lease) = m.lease.as_mut() else {
                return Ok(());
            };
            let note = match decision {
                LeaseDecision::Granted => {
                    if let Some(epoch) = lease.granted(id) {
                        m.outbox.push(Action::PeerFenced { epoch });
                    }
                    None
                }
                LeaseDecision::Outdated { by } => {
                    // Stale data wins no election: the returning primary
                    // does not wait for this node to agree.
                    m.uptodate = false;
                    lease.refused(id, &format!("outdated:{by}")).then(|| {
                    (LogLevel::Info, format!(
                        "the witness refuses the lease: this node's copy of the replicated data is outdated ({by} changed it without this node); not taking over until {by} has resynchronised it"
                    ))
                })
                }
                LeaseDecision::Refused {
                    holder,
                    remaining_ms,
                } => lease.refused(id, &holder).then(|| {
                    (LogLevel::Info, format!(
                        "the witness refuses the lease: held by {holder} for {remaining_ms} ms more{}",
                        if holder == peer { "; not taking over" } else { "" }
                    ))
                }),
                LeaseDecision::TooLong { max_ms } => lease.refused(id, "").then(|| {
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

    /// Stops the application and `start_both`'s work, then waits for `wait`:
    /// how a primary steps down for a reason of its own.
    fn stop_and_wait(&mut self, handover: Handover, wait: WaitReason, why: String) {
        self.why = Some(why.clone());
        self.stop_application(handover, ScriptAction::StopWait, State::Wait);
        self.stop_both(State::Wait, ScriptAction::StopWait);
        self.steps.push_back(Step::Enter(Role::Waiting(wait), why));
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
            if self.scripts.script().is_some() {
                return;
            }
            match self.steps.pop_front() {
                Some(Step::Run {
                    script,
                    force,
                    next,
                    action,
                }) => {
                    let reason = self.why.clone().unwrap_or_else(|| self.reason.clone());
                    let current = self.state();
                    let run = self
                        .scripts
                        .start(script, force, current, next, action, reason);
                    self.outbox.push(Action::RunScript(run));
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
}
