//! Split-brain protection on the node's side: the *keep* rule (stop the
//! application while its basis, the witness lease or the peer promise,
//! still outlasts the stop budget) and the lease requests it rests on.

use std::time::{Duration, Instant};

use super::wait::WaitReason;
use super::{Handover, MirrorModule, PeerData, Role, Step};
use crate::lease::{LeaseClient, PeerCopy};
use crate::module::{Action, LogLevel, Script, ScriptAction, State};

impl MirrorModule {
    /// The end of this node's basis for running the application: its lease
    /// as it sees it, or the peer promise (see the module docs).
    pub(super) fn keep_until(&self) -> Option<Instant> {
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
    pub(super) fn may_hold(&self) -> bool {
        self.lasts(self.keep_until())
    }

    /// The application may start here: the lease lasts more than the stop budget.
    pub(super) fn may_start(&self) -> bool {
        self.lasts(self.lease.as_ref().and_then(LeaseClient::valid_until))
    }

    pub(super) fn lasts(&self, until: Option<Instant>) -> bool {
        let Some(lease) = &self.lease else {
            return true;
        };
        until.is_some_and(|k| self.now + lease.settings().stop_budget < k)
    }

    pub(super) fn wants_lease(&self) -> bool {
        self.app_active || self.lease_wanted
    }

    /// The keep rule: stop the application while it is still time.
    pub(super) fn keep(&mut self) {
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
    pub(super) fn note_lease_lapse(&mut self) {
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
    pub(super) fn renew_lease(&mut self) {
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
    pub(super) fn needs_lease(&mut self) -> bool {
        if self.may_start() {
            return false;
        }
        self.lease_wanted = true;
        true
    }
}
