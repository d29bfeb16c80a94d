//! Checkers of one module, driven by its state: resource checkers (`pre`)
//! run while the module is started, application checkers (`prim`,
//! `second`, `both`) while the node holds that role and is not in
//! transition. Verdicts go to the state machine: a missing resource puts
//! the module in WAIT; an application failure goes through the recovery
//! policy (restart here, or fail over and hold this node back). The
//! split-brain checker's pings run while the module is started; whether any
//! address answers goes to the state machine.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use holdfast_checkers::{CheckerEvent, ProbeContext, Runner, Verdict};
use holdfast_config::checker::{Action, CheckerConfig, When};
use holdfast_membership::recovery::{Decision, RecoveryPolicy, Requested};
use holdfast_membership::{Command, CommandError, LogLevel, MirrorModule, Origin, State};
use tokio::sync::mpsc;

use crate::modlog::ModuleLog;
use crate::settings::UserSettings;

/// The role whose checkers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoleClass {
    Prim,
    Second,
}

/// An application failure a checker reported, and what its action asks.
#[derive(Debug)]
struct Failure {
    requested: Requested,
    checker: String,
    why: String,
}

#[derive(Debug)]
pub struct Supervisor {
    checkers: Vec<CheckerConfig>,
    context: ProbeContext,
    events: mpsc::Sender<CheckerEvent>,
    pre: Option<Runner>,
    role: Option<(RoleClass, Runner)>,
    recovery: RecoveryPolicy,
    /// A recovery the state machine refused while in transition: retried
    /// once it is stable (checkers only report changes).
    pending: Option<Failure>,
    /// The split-brain checker: one ping per address, and whether each
    /// answers (until told otherwise, it does).
    splitbrain: Vec<CheckerConfig>,
    splitbrain_up: BTreeMap<String, bool>,
    splitbrain_runner: Option<Runner>,
    /// Which checkers the administrator lets run (`errd`, `checker`).
    settings: UserSettings,
}

/// The split-brain checker's pings of `addresses`, one per pulse: whether a
/// witness answers must be known by the time heartbeats are declared lost.
pub fn splitbrain_checkers(
    addresses: &[std::net::Ipv4Addr],
    pulse: Duration,
) -> Vec<CheckerConfig> {
    addresses
        .iter()
        .map(|a| {
            let mut checker = CheckerConfig::ping(&format!("splitbrain-{a}"), *a);
            checker.interval = pulse;
            checker.timeout = pulse;
            checker
        })
        .collect()
}

impl Supervisor {
    pub fn new(
        checkers: Vec<CheckerConfig>,
        recovery: RecoveryPolicy,
        context: ProbeContext,
        events: mpsc::Sender<CheckerEvent>,
        splitbrain: Vec<CheckerConfig>,
        settings: UserSettings,
    ) -> Self {
        Self {
            checkers,
            context,
            events,
            pre: None,
            role: None,
            recovery,
            pending: None,
            splitbrain_up: splitbrain.iter().map(|c| (c.resource(), true)).collect(),
            splitbrain,
            splitbrain_runner: None,
            settings,
        }
    }

    /// `errd|checker on|off`: the checkers run again as the new settings
    /// allow; a resource a checker now off said was missing is no longer
    /// waited for, and a failure it reported is forgotten.
    pub fn set_settings(
        &mut self,
        settings: UserSettings,
        core: &mut MirrorModule,
        log: &ModuleLog,
        now: Instant,
    ) {
        if settings.errd == self.settings.errd && settings.checker == self.settings.checker {
            return;
        }
        self.settings = settings;
        let word = |on: bool| if on { "on" } else { "off" };
        log.write(
            LogLevel::Info,
            &format!(
                "process checkers (errd) {}, other checkers {}, set by the administrator",
                word(settings.errd),
                word(settings.checker)
            ),
        );
        self.pre = None;
        self.role = None;
        self.pending = None;
        for checker in self.checkers.iter().filter(|c| !settings.runs(&c.kind)) {
            core.resource(now, &checker.resource(), None);
        }
        self.follow(core, log, now);
    }

    /// Starts and stops checkers to match the module's state.
    pub fn follow(&mut self, core: &mut MirrorModule, log: &ModuleLog, now: Instant) {
        let state = core.state();
        let want_pre = state != State::Stop;
        if want_pre != self.splitbrain_runner.is_some() {
            self.splitbrain_runner = if want_pre {
                self.run(&self.splitbrain, log, "split-brain checker")
            } else {
                None
            };
        }
        if want_pre != self.pre.is_some() {
            self.pre = if want_pre {
                self.start(log, |w| w == When::Pre)
            } else {
                None
            };
            if !want_pre {
                // A stopped module has no resources to wait for.
                for checker in self.checkers.iter().filter(|c| c.when == When::Pre) {
                    core.resource(now, &checker.resource(), None);
                }
            }
        }
        let want_role = match state {
            _ if core.transient() => None,
            State::Alone | State::Prim if core.app_active() => Some(RoleClass::Prim),
            State::Second => Some(RoleClass::Second),
            _ => None,
        };
        if want_role != self.role.as_ref().map(|(class, _)| *class) {
            self.role = want_role.and_then(|class| {
                let matches = move |w: When| match class {
                    RoleClass::Prim => matches!(w, When::Prim | When::Both),
                    RoleClass::Second => matches!(w, When::Second | When::Both),
                };
                self.start(log, matches).map(|runner| (class, runner))
            });
        }
        if let Some(failure) = self.pending.take() {
            if !core.transient() {
                self.recover(core, log, now, failure);
            } else {
                self.pending = Some(failure);
            }
        }
        if self.recovery.released(now) {
            log.write(
                LogLevel::Info,
                "recovery counter reset (loop_interval passed): this node may be primary again",
            );
            core.suspend(now, None);
        }
    }

    fn start(&self, log: &ModuleLog, class: impl Fn(When) -> bool) -> Option<Runner> {
        let selected: Vec<CheckerConfig> = self
            .checkers
            .iter()
            .filter(|c| class(c.when) && self.settings.runs(&c.kind))
            .cloned()
            .collect();
        self.run(&selected, log, "checkers")
    }

    /// A runner of `checkers` (none if there are none); a failure to start
    /// them is logged, naming `what`.
    fn run(&self, checkers: &[CheckerConfig], log: &ModuleLog, what: &str) -> Option<Runner> {
        if checkers.is_empty() {
            return None;
        }
        match Runner::start(checkers, &self.context, self.events.clone()) {
            Ok(runner) => Some(runner),
            Err(e) => {
                log.write(LogLevel::Error, &format!("{what} not started: {e}"));
                None
            }
        }
    }

    pub fn on_event(
        &mut self,
        core: &mut MirrorModule,
        log: &ModuleLog,
        now: Instant,
        event: CheckerEvent,
    ) {
        if let Some(up) = self.splitbrain_up.get_mut(&event.checker) {
            *up = event.verdict == Verdict::Up;
            if let Verdict::Down(why) = &event.verdict {
                log.write(
                    LogLevel::Info,
                    &format!("split-brain checker {}: {why}", event.checker),
                );
            }
            let reachable = self.splitbrain_up.values().any(|up| *up);
            core.splitbrain_witness(now, reachable);
            return;
        }
        let Some(checker) = self.checkers.iter().find(|c| c.resource() == event.checker) else {
            return;
        };
        let (action, name) = (checker.action, event.checker.clone());
        match (&event.verdict, action) {
            (verdict, Action::Wait) => {
                let missing = match verdict {
                    Verdict::Up => None,
                    Verdict::Down(why) => Some(why.clone()),
                };
                core.resource(now, &name, missing);
            }
            (Verdict::Up, _) => log.write(LogLevel::Info, &format!("checker {name}: up")),
            (Verdict::Down(why), Action::NoAction) => log.write(
                LogLevel::Error,
                &format!("checker {name}: {why} (no action configured)"),
            ),
            (Verdict::Down(why), action) => {
                let requested = match action {
                    Action::Restart => Requested::Restart,
                    Action::StopStart => Requested::StopStart,
                    _ => Requested::Stop,
                };
                let why = format!("checker {name}: {why}");
                let failure = Failure {
                    requested,
                    checker: name,
                    why,
                };
                self.recover(core, log, now, failure);
            }
        }
    }

    fn recover(
        &mut self,
        core: &mut MirrorModule,
        log: &ModuleLog,
        now: Instant,
        failure: Failure,
    ) {
        if core.transient() {
            self.pending = Some(failure);
            return;
        }
        let decision = self.recovery.failure(now, failure.requested);
        let command = match &decision {
            Decision::Restart => Command::Restart,
            Decision::StopStart { .. } => Command::StopStart,
            Decision::Stop => Command::Stop,
        };
        log.write(
            LogLevel::Error,
            &format!(
                "{}: action {} (failure {} in this loop interval)",
                failure.why,
                command.as_str(),
                self.recovery.count()
            ),
        );
        if let Decision::StopStart { hold: Some(hold) } = decision {
            log.write(LogLevel::Error, &hold);
            core.suspend(now, Some(hold));
        }
        let origin = Origin::Checker(failure.checker.clone());
        match core.command_from(now, command, &origin) {
            Ok(()) => {}
            Err(CommandError::Busy { .. }) => self.pending = Some(failure),
            Err(e) => log.write(
                LogLevel::Error,
                &format!("action {} refused: {e}", command.as_str()),
            ),
        }
    }

    /// An administrator acted: the counter resets and any hold ends.
    pub fn admin_command(&mut self, core: &mut MirrorModule, now: Instant) {
        self.recovery.reset();
        self.pending = None;
        core.suspend(now, None);
    }

    /// When the shell must wake up for the recovery policy.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.recovery.next_release()
    }
}
