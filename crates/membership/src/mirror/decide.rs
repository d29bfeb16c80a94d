//! The rules applied whenever the node is idle (see the module docs): who
//! becomes primary, joins as SECOND, takes over, hands over or waits.

use holdfast_config::DefaultPrimary;

use super::wait::WaitReason;
use super::{Handover, MirrorModule, PeerStatus, Role, Step, Winner};
use crate::module::{Action, LogLevel, Script, ScriptAction, State};

impl MirrorModule {
    pub(super) fn become_primary(&mut self, reason: String) {
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
    pub(super) fn election(&self, peer: &PeerStatus) -> Winner {
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
    pub(super) fn decide(&mut self) -> bool {
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
    pub(super) fn decide_resources(&mut self) -> bool {
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

    pub(super) fn decide_waiting(&mut self, reason: WaitReason, peer: Option<PeerStatus>) -> bool {
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
    pub(super) fn become_primary_if_current(&mut self, reason: String) -> bool {
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
    pub(super) fn blocked(&self, reason: &str) -> Option<(WaitReason, String)> {
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

    pub(super) fn wait_blocked(&mut self, wait: WaitReason, why: String) -> bool {
        if self.role == Role::Waiting(wait) {
            return false;
        }
        self.log(LogLevel::Error, why.clone());
        self.enter(Role::Waiting(wait), why);
        true
    }

    /// Failover if configured, else wait for the administrator.
    pub(super) fn take_over(&mut self, reason: String) -> bool {
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

    pub(super) fn decide_secondary(&mut self, peer: Option<PeerStatus>) -> bool {
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

    pub(super) fn decide_primary(&mut self, peer: Option<PeerStatus>) -> bool {
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
