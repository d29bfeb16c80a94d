//! The replication connector's policy: **what a primary does when its
//! secondary fails** — degrade or block, hold then ALONE, fencing the
//! peer's copy through the witness — for one replicated directory.
//!
//! Pure, like [`crate::mirror`]: the daemon's connector thread
//! (`daemon/src/replication/connector.rs`) feeds a [`ConnectorCore`] what
//! it observes, with the current time — the peer's state, a session's
//! outcome, a broken connection, the oldest unacknowledged change, the
//! witness's fence — and carries out its [`ConnectorAction`]s on the
//! directory's link and connection; the simulation (`tests/simulation.rs`)
//! drives the same core in virtual time and checks that no acknowledged
//! write is lost.
//!
//! The rules:
//! - A mirrored change the secondary fails (connection lost, refused) is
//!   recorded first, then acknowledged with `degrade` and no witness; with
//!   `block`, or a witness, it waits ([`FailedChange`]).
//! - While the peer is SECOND, the connector connects and resynchronises
//!   it, then mirrors; a failed attempt is retried after [`RETRY`].
//! - Mirroring ends when the connection breaks, the peer leaves SECOND, or
//!   — with `degrade` — a change waits longer than `ack_timeout` (the
//!   secondary is told first that its copy is incomplete). With `block`
//!   and the secondary alive, changes are then held until a
//!   resynchronisation brings them to it; otherwise the primary goes ALONE.
//! - Held changes go ALONE when the secondary is declared lost (the peer
//!   is not SECOND), or, with `degrade`, when an attempt fails.
//! - Going ALONE with a witness: changes are held until the witness has
//!   recorded the peer's copy as outdated, then tracked. A peer that takes
//!   over later can then never lack an acknowledged change.
//! - The primary role ending (release): held changes, and with a witness
//!   any change the fence does not cover, are refused — the secondary may
//!   take over without them; otherwise the link tracks.

use std::time::{Duration, Instant};

use holdfast_config::OnSecondaryFailure;

use crate::module::LogLevel;

mod fence;
#[cfg(test)]
mod tests;

pub use fence::PeerFences;

/// How long after a failed attempt the connector tries again.
pub const RETRY: Duration = Duration::from_millis(500);

/// While mirroring, the shell looks at the oldest unacknowledged change
/// this many times per `ack_timeout`, and at its deadline: one sent just
/// after a look is seen at the next, well before it is late; a late
/// secondary under `block` is seen acknowledging again within a quarter of
/// the timeout.
const LOOKS_PER_TIMEOUT: u32 = 4;

/// What the policy is made of: `[replication]` and `[witness]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorSettings {
    /// The replicated directory, as messages name it.
    pub directory: String,
    pub on_failure: OnSecondaryFailure,
    pub ack_timeout: Duration,
    /// A witness fences the peer's copy before changes it lacks are
    /// acknowledged.
    pub witness: bool,
}

impl ConnectorSettings {
    /// The setting, as messages name it.
    pub fn policy(&self) -> &'static str {
        match self.on_failure {
            OnSecondaryFailure::Degrade => "on_secondary_failure = degrade",
            OnSecondaryFailure::Block => "on_secondary_failure = block",
        }
    }

    fn degrades(&self) -> bool {
        self.on_failure == OnSecondaryFailure::Degrade
    }

    /// What a change the secondary failed returns.
    pub fn failed_change(&self) -> FailedChange {
        if self.degrades() && !self.witness {
            FailedChange::Succeed
        } else {
            FailedChange::Wait
        }
    }
}

/// What an operation returns when the secondary fails its change, once
/// the change is recorded for the next resynchronisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedChange {
    /// It succeeds: the primary goes on without the secondary.
    Succeed,
    /// It waits until a resynchronisation brought the change to the
    /// secondary, or the link tracks (ALONE).
    Wait,
}

/// What the directory's link does with changes while primary, as the core
/// set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// ALONE: recorded and acknowledged.
    Tracking,
    /// Recorded, acknowledged once the secondary has them (or ALONE).
    Holding,
    /// Sent to the secondary, acknowledged by it (after a
    /// resynchronisation).
    Mirroring,
}

/// How a directory's link starts, before it is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStart {
    /// What a change the secondary fails returns.
    pub failed_changes: FailedChange,
    /// Changes are held and the peer's copy reported outdated
    /// ([`PeerFences::outdated`]): with a witness, the peer lacks every
    /// change from the first, so none is acknowledged before its copy is
    /// fenced (or it is resynchronised).
    pub held: bool,
}

/// What the shell does for the core, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorAction {
    /// Connect to the secondary, bring its copy up to date and mirror;
    /// answer [`ConnectorCore::resynchronised`] or
    /// [`ConnectorCore::session_failed`]. `send_timeout` bounds each write
    /// to it (a secondary that stops reading must not hold a write forever).
    Connect {
        send_timeout: Option<Duration>,
    },
    /// End the session; `left_behind`: first tell the secondary that its
    /// copy is incomplete, so it is never promoted with it.
    Disconnect {
        left_behind: bool,
    },
    /// From the next change on, record and hold it (see [`LinkState::Holding`]).
    Hold,
    /// ALONE: a new generation, then, from the next change on, record and
    /// acknowledge (held changes go on).
    Track,
    /// The primary role ends: held changes, and any change until the
    /// directory is unmounted, are refused (`EIO`) — the secondary may take
    /// over without them.
    Close,
    /// The primary role ends: changes until the directory is unmounted are
    /// recorded and acknowledged (no new generation: nothing was lost).
    TrackUntilUnmounted,
    /// Ask the witness to record the peer's copy as outdated (the shell's
    /// [`PeerFences::outdated`]); answer [`ConnectorCore::fenced`].
    PeerOutdated,
    /// The peer has every change ([`PeerFences::current`]).
    PeerCurrent,
    /// Nothing to say of the peer's copy any more ([`PeerFences::unknown`]).
    PeerUnknown,
    /// What `holdfast state` shows the directory doing.
    Show(LinkState),
    /// What keeps it from mirroring, shown by `holdfast state`.
    Problem(Option<String>),
    Log(LogLevel, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    None,
    /// The shell connects and resynchronises.
    Connecting,
    Mirroring {
        /// When the oldest unacknowledged change was sent, as last seen.
        oldest: Option<Instant>,
        /// When the shell last looked.
        looked: Instant,
        /// Reported as late (`block`).
        slow: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    NotAsked,
    Asked,
    Granted,
}

/// The failure policy of one replicated directory on a primary, from its
/// mount to its release.
#[derive(Debug)]
pub struct ConnectorCore {
    settings: ConnectorSettings,
    link: LinkState,
    session: Session,
    peer_second: bool,
    fence: Fence,
    /// Going ALONE once the witness fenced the peer's copy, then these.
    alone: Option<Vec<ConnectorAction>>,
    /// No attempt to connect before.
    retry_at: Option<Instant>,
    /// The last failed attempt's reason, logged once.
    last_failure: Option<String>,
    released: bool,
    actions: Vec<ConnectorAction>,
}

impl ConnectorCore {
    /// The directory is about to be mounted as primary with a link that
    /// starts as [`Self::start`] says.
    pub fn new(settings: ConnectorSettings) -> Self {
        let (link, fence) = if settings.witness {
            (LinkState::Holding, Fence::Asked)
        } else {
            (LinkState::Tracking, Fence::NotAsked)
        };
        ConnectorCore {
            settings,
            link,
            session: Session::None,
            peer_second: false,
            fence,
            alone: None,
            retry_at: None,
            last_failure: None,
            released: false,
            actions: Vec::new(),
        }
    }

    /// How the link starts: tracking changes; with a witness, holding them
    /// (the peer lacks them) while its copy is fenced — or a
    /// resynchronisation brings them to it.
    pub fn start(&self) -> LinkStart {
        LinkStart {
            failed_changes: self.settings.failed_change(),
            held: self.settings.witness,
        }
    }

    pub fn settings(&self) -> &ConnectorSettings {
        &self.settings
    }

    pub fn take_actions(&mut self) -> Vec<ConnectorAction> {
        std::mem::take(&mut self.actions)
    }

    /// A session ([`ConnectorAction::Connect`]) is in progress.
    pub fn connecting(&self) -> bool {
        self.session == Session::Connecting
    }

    /// When to call [`Self::tick`] (or look again at the oldest
    /// unacknowledged change, while mirroring).
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.released {
            return None;
        }
        match self.session {
            Session::Connecting => None,
            Session::Mirroring {
                oldest,
                looked,
                slow,
            } => {
                let look = looked + self.settings.ack_timeout / LOOKS_PER_TIMEOUT;
                match oldest {
                    Some(sent) if !slow => Some((sent + self.settings.ack_timeout).min(look)),
                    _ => Some(look),
                }
            }
            Session::None if self.peer_second && self.alone.is_none() => self.retry_at,
            Session::None => None,
        }
    }

    /// The module's state machine says whether the peer is SECOND.
    pub fn peer_second(&mut self, now: Instant, second: bool) {
        self.peer_second = second;
        self.step(now);
    }

    /// The session resynchronised the secondary: it mirrors.
    pub fn resynchronised(&mut self, now: Instant) {
        if self.released || self.session != Session::Connecting {
            return;
        }
        self.session = Session::Mirroring {
            oldest: None,
            looked: now,
            slow: false,
        };
        self.link = LinkState::Mirroring;
        // A later loss asks for a new fence.
        self.fence = Fence::NotAsked;
        self.last_failure = None;
        self.actions.extend([
            ConnectorAction::PeerCurrent,
            ConnectorAction::Show(LinkState::Mirroring),
        ]);
        self.step(now);
    }

    /// The session ended before mirroring, for `reason`; `resynchronising`:
    /// after its resynchronisation began (the link then fell back by
    /// itself: holding if failed changes wait, else tracking).
    pub fn session_failed(&mut self, now: Instant, reason: String, resynchronising: bool) {
        if self.released || self.session != Session::Connecting {
            return;
        }
        self.session = Session::None;
        self.retry_at = Some(now + RETRY);
        let mut reason = reason;
        if resynchronising {
            self.link = match self.settings.failed_change() {
                FailedChange::Wait => LinkState::Holding,
                FailedChange::Succeed => LinkState::Tracking,
            };
            self.actions.push(ConnectorAction::Show(self.link));
            if self.link == LinkState::Holding {
                reason = format!(
                    "{reason}: writes wait for the secondary ({})",
                    self.settings.policy()
                );
            }
        }
        self.actions
            .push(ConnectorAction::Problem(Some(reason.clone())));
        if self.last_failure.as_ref() != Some(&reason) {
            self.actions
                .push(ConnectorAction::Log(LogLevel::Error, reason.clone()));
            self.last_failure = Some(reason);
        }
        // Held only for the fence: `degrade` goes on alone.
        if self.link == LinkState::Holding && self.settings.degrades() {
            self.go_alone(Vec::new());
        }
        self.step(now);
    }

    /// The mirroring connection broke, for `reason`.
    pub fn connection_lost(&mut self, now: Instant, reason: String) {
        if self.released || !matches!(self.session, Session::Mirroring { .. }) {
            return;
        }
        self.end_mirroring(reason, false);
        self.step(now);
    }

    /// While mirroring: when the oldest change not yet acknowledged was
    /// sent, if one is waiting.
    pub fn unacknowledged(&mut self, now: Instant, oldest: Option<Instant>) {
        if let Session::Mirroring { slow, .. } = self.session {
            self.session = Session::Mirroring {
                oldest,
                looked: now,
                slow,
            };
        }
        self.step(now);
    }

    /// The witness recorded the peer's copy as outdated, as asked.
    pub fn fenced(&mut self, now: Instant) {
        if self.fence == Fence::Asked {
            self.fence = Fence::Granted;
        }
        self.step(now);
    }

    /// Time passed.
    pub fn tick(&mut self, now: Instant) {
        self.step(now);
    }

    /// The primary role ends (the shell stopped its session first): the
    /// link is closed or tracks, and the peer's copy is no longer reported.
    pub fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        // A session stopped while resynchronising falls back as it fails.
        let holds = self.link == LinkState::Holding
            || (self.session == Session::Connecting
                && self.settings.failed_change() == FailedChange::Wait);
        let unfenced = self.settings.witness && self.fence != Fence::Granted;
        self.actions.extend([
            if holds || unfenced {
                ConnectorAction::Close
            } else {
                ConnectorAction::TrackUntilUnmounted
            },
            ConnectorAction::PeerUnknown,
        ]);
    }

    /// What follows from the inputs so far.
    fn step(&mut self, now: Instant) {
        if self.released {
            return;
        }
        match self.session {
            Session::Connecting => {}
            Session::Mirroring { oldest, slow, .. } => {
                if !self.peer_second {
                    self.end_mirroring(
                        "the secondary is lost (no heartbeat, or it left SECOND)".into(),
                        false,
                    );
                    return self.step(now);
                }
                let timeout = self.settings.ack_timeout;
                let late = oldest.is_some_and(|sent| now >= sent + timeout);
                if late && self.settings.degrades() {
                    self.end_mirroring(
                        format!(
                            "no acknowledgement within ack_timeout = {}",
                            humantime::format_duration(timeout)
                        ),
                        true,
                    );
                    return self.step(now);
                }
                if late != slow {
                    self.report_slow(late);
                }
            }
            Session::None => {
                if self.alone.is_some() {
                    // Only a witness's fence keeps a connector from going
                    // alone at once: it was waited for.
                    if self.fence == Fence::Granted {
                        self.actions.push(ConnectorAction::Log(
                            LogLevel::Info,
                            format!(
                                "{}: the witness refuses the secondary the primary role until it is resynchronised",
                                self.settings.directory
                            ),
                        ));
                        self.become_alone();
                    } else {
                        // Nothing else until the fence: held changes wait.
                        return;
                    }
                }
                if !self.peer_second {
                    if self.link == LinkState::Holding {
                        let lost = format!(
                            "the secondary of {} is lost: held writes go on, tracking changes",
                            self.settings.directory
                        );
                        self.go_alone(vec![ConnectorAction::Log(LogLevel::Error, lost)]);
                    }
                } else if self.alone.is_none() && self.retry_at.is_none_or(|at| now >= at) {
                    self.session = Session::Connecting;
                    self.retry_at = None;
                    self.actions.push(ConnectorAction::Connect {
                        send_timeout: self
                            .settings
                            .degrades()
                            .then_some(self.settings.ack_timeout),
                    });
                }
            }
        }
    }

    fn report_slow(&mut self, late: bool) {
        if let Session::Mirroring { slow, .. } = &mut self.session {
            *slow = late;
        }
        let directory = &self.settings.directory;
        let problem = late.then(|| {
            format!(
                "the secondary has not acknowledged a change of {directory} within ack_timeout = {}: writes wait for it ({})",
                humantime::format_duration(self.settings.ack_timeout),
                self.settings.policy()
            )
        });
        self.actions.push(match &problem {
            Some(p) => ConnectorAction::Log(LogLevel::Error, p.clone()),
            None => ConnectorAction::Log(
                LogLevel::Info,
                format!("the secondary acknowledges changes of {directory} again"),
            ),
        });
        self.actions.push(ConnectorAction::Problem(problem));
    }

    /// Mirroring ended for `reason`: held while a live secondary is
    /// resynchronised (`block`), else ALONE. Reconnects at once.
    fn end_mirroring(&mut self, reason: String, left_behind: bool) {
        self.session = Session::None;
        self.retry_at = None;
        self.actions
            .push(ConnectorAction::Disconnect { left_behind });
        let directory = &self.settings.directory;
        let policy = self.settings.policy();
        if self.peer_second && !self.settings.degrades() {
            let problem = format!(
                "replication of {directory} to the secondary failed ({reason}): writes wait until it is resynchronised ({policy})"
            );
            self.link = LinkState::Holding;
            self.actions.extend([
                ConnectorAction::Hold,
                ConnectorAction::Show(LinkState::Holding),
                ConnectorAction::Log(LogLevel::Error, problem.clone()),
                ConnectorAction::Problem(Some(problem)),
            ]);
            return;
        }
        let problem = format!(
            "replication of {directory} to the secondary lost ({reason}): tracking changes{}",
            if self.peer_second {
                format!(" ({policy})")
            } else {
                String::new()
            }
        );
        self.go_alone(vec![
            ConnectorAction::Log(LogLevel::Error, problem.clone()),
            ConnectorAction::Problem(Some(problem)),
        ]);
    }

    /// The secondary is gone: ALONE, once the witness fenced its copy
    /// (changes held meanwhile); then `then`.
    fn go_alone(&mut self, then: Vec<ConnectorAction>) {
        self.alone = Some(then);
        if !self.settings.witness || self.fence == Fence::Granted {
            return self.become_alone();
        }
        if self.fence == Fence::NotAsked {
            self.fence = Fence::Asked;
            self.actions.push(ConnectorAction::PeerOutdated);
        }
        if self.link != LinkState::Holding {
            self.link = LinkState::Holding;
            self.actions.push(ConnectorAction::Hold);
        }
        self.actions.extend([
            ConnectorAction::Show(LinkState::Holding),
            ConnectorAction::Log(
                LogLevel::Info,
                format!(
                    "{}: writes wait until the witness records the secondary's copy as outdated",
                    self.settings.directory
                ),
            ),
        ]);
    }

    fn become_alone(&mut self) {
        let then = self.alone.take().unwrap_or_default();
        self.link = LinkState::Tracking;
        self.actions.extend([
            ConnectorAction::Track,
            ConnectorAction::Show(LinkState::Tracking),
        ]);
        self.actions.extend(then);
    }
}
