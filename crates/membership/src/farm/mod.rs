//! The farm module state machine: **where load-balancing buckets are
//! decided**. 2..N nodes all run the application (`start_both`) and are UP;
//! the 256 buckets of the virtual IP's traffic are shared among the UP nodes
//! by power ([`BucketMap`], which every node computes alike from the same
//! membership and which moves few buckets on a change).
//!
//! Pure, like the mirror machine: heartbeats from every other node say who
//! is UP; after each input the machine asks the shell to program this node's
//! buckets ([`FarmAction::ProgramBuckets`]) whenever they change. A node stops
//! serving (programs no bucket) before it runs `stop_both`, so leaving never
//! drops traffic that another node could take.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub mod buckets;

use buckets::{BucketMap, Member};

use crate::module::{
    Action, Command, CommandError, LogLevel, Origin, Script, ScriptAction, ScriptOutcome,
    ScriptSlot, State,
};
use crate::view::{FarmView, ModuleView};

/// What the farm machine asks of its shell: what any module asks, and to
/// program this node's buckets in its traffic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FarmAction {
    Module(Action),
    ProgramBuckets(BTreeSet<u8>),
}

/// A step of a start or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Run(Script, bool, ScriptAction),
    Become(Role),
}

/// What a farm node tells the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmStatus {
    /// STOP, WAIT (starting or stopping) or UP.
    pub state: State,
}

#[derive(Debug, Clone)]
pub struct FarmSettings {
    pub local: String,
    /// Every node of the farm with its power (share of buckets).
    pub members: Vec<(String, u32)>,
    pub timeout: Duration,
}

impl FarmSettings {
    /// The settings of node `local`; `None` if it is not a node of the module.
    pub fn from_config(config: &holdfast_config::ModuleConfig, local: &str) -> Option<Self> {
        config.node(local)?;
        Some(Self {
            local: local.to_string(),
            members: config
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.power))
                .collect(),
            timeout: config.heartbeat.timeout,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Stopped,
    /// prestart / start_both running.
    Starting,
    Up,
    /// stop_both / poststop running.
    Stopping,
}

#[derive(Debug)]
struct Seen {
    status: FarmStatus,
    stamp: (u64, u64),
    last_heard: Instant,
}

/// The state machine of one farm module on one node.
#[derive(Debug)]
pub struct FarmModule {
    settings: FarmSettings,
    role: Role,
    peers: BTreeMap<String, Seen>,
    steps: VecDeque<Step>,
    scripts: ScriptSlot,
    /// Why the module is in its state (the last transition).
    reason: String,
    /// The buckets last programmed (None: nothing programmed yet), and the
    /// UP set they were computed from.
    programmed: Option<BTreeSet<u8>>,
    computed_for: Option<Vec<Member>>,
    now: Instant,
    shown: State,
    outbox: Vec<FarmAction>,
}

impl FarmModule {
    pub fn new(settings: FarmSettings, now: Instant) -> Self {
        Self {
            settings,
            role: Role::Stopped,
            peers: BTreeMap::new(),
            steps: VecDeque::new(),
            scripts: ScriptSlot::default(),
            reason: "not started".to_string(),
            programmed: None,
            computed_for: None,
            now,
            shown: State::Stop,
            outbox: Vec::new(),
        }
    }

    pub fn take_actions(&mut self) -> Vec<FarmAction> {
        std::mem::take(&mut self.outbox)
    }

    pub fn state(&self) -> State {
        match self.role {
            Role::Stopped => State::Stop,
            Role::Starting | Role::Stopping => State::Wait,
            Role::Up => State::Up,
        }
    }

    pub fn status(&self) -> FarmStatus {
        FarmStatus {
            state: self.state(),
        }
    }

    pub fn transient(&self) -> bool {
        self.scripts.script().is_some() || !self.steps.is_empty()
    }

    /// What `holdfast state` shows.
    pub fn view(&self) -> ModuleView {
        let peers: Vec<(String, Option<State>)> = self
            .settings
            .members
            .iter()
            .filter(|(name, _)| *name != self.settings.local)
            .map(|(name, _)| (name.clone(), self.live_state(name)))
            .collect();
        ModuleView {
            state: self.state(),
            transient: self.transient(),
            app_active: self.role == Role::Up,
            reason: self.reason.clone(),
            peer: peers
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            peer_state: None,
            networks_up: Vec::new(),
            epoch: 0,
            running_script: self.scripts.script().map(|s| s.name().to_string()),
            farm: Some(FarmView {
                peers,
                buckets: self.buckets().len(),
            }),
        }
    }

    /// A peer's state, if its heartbeat is fresh.
    fn live_state(&self, name: &str) -> Option<State> {
        self.peers
            .get(name)
            .filter(|p| self.now.saturating_duration_since(p.last_heard) < self.settings.timeout)
            .map(|p| p.status.state)
    }

    /// The buckets this node serves now.
    pub fn buckets(&self) -> BTreeSet<u8> {
        self.programmed.clone().unwrap_or_default()
    }

    /// When a peer's heartbeat times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.settings.timeout;
        self.peers
            .values()
            .map(|p| p.last_heard + timeout)
            .filter(|d| *d > self.now)
            .min()
    }

    /// An administrator's command.
    pub fn command(&mut self, now: Instant, command: Command) -> Result<(), CommandError> {
        self.command_from(now, command, &Origin::Administrator)
    }

    /// A command from `origin`, which the module log names.
    pub fn command_from(
        &mut self,
        now: Instant,
        command: Command,
        origin: &Origin,
    ) -> Result<(), CommandError> {
        self.now = self.now.max(now);
        let state = self.state();
        match command {
            Command::Start => {
                if self.role != Role::Stopped {
                    return Err(CommandError::AlreadyStarted(state));
                }
                self.role = Role::Starting;
                self.start_steps(ScriptAction::Start);
            }
            Command::Stop => {
                match self.role {
                    Role::Stopped => return Err(CommandError::AlreadyStopped),
                    // A stop under way goes on (see the mirror's).
                    Role::Stopping => {
                        self.log(
                            LogLevel::Info,
                            "stop: the module is already stopping".into(),
                        );
                        return Ok(());
                    }
                    _ => self.stop(ScriptAction::Stop),
                }
            }
            Command::Restart | Command::StopStart => {
                if self.role != Role::Up || self.transient() {
                    return Err(CommandError::Busy {
                        state,
                        script: "a start or stop".into(),
                    });
                }
                self.stop(ScriptAction::StopStart);
                self.steps.push_back(Step::Become(Role::Starting));
                self.start_steps(ScriptAction::StopStart);
            }
            // A farm has no primary to move or force.
            Command::Swap | Command::Prim | Command::Second => {
                return Err(CommandError::NotInFarm(command.as_str()))
            }
        }
        self.log(
            LogLevel::Info,
            format!("action {} called by {origin}", command.as_str()),
        );
        self.advance();
        Ok(())
    }

    pub fn heartbeat(&mut self, now: Instant, from: &str, stamp: (u64, u64), status: FarmStatus) {
        self.now = self.now.max(now);
        if from == self.settings.local || !self.settings.members.iter().any(|(n, _)| n == from) {
            return;
        }
        let seen = self.peers.entry(from.to_string()).or_insert(Seen {
            status,
            stamp,
            last_heard: now,
        });
        if stamp >= seen.stamp {
            seen.status = status;
            seen.stamp = stamp;
        }
        seen.last_heard = now;
        self.advance();
    }

    pub fn script_finished(&mut self, now: Instant, id: u64, outcome: ScriptOutcome) {
        self.now = self.now.max(now);
        if self.scripts.finish(id).is_none() {
            return;
        }
        if let ScriptOutcome::Failed(why) = outcome {
            self.log(LogLevel::Error, format!("script failed: {why}"));
        }
        self.advance();
    }

    pub fn tick(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.advance();
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.outbox
            .push(FarmAction::Module(Action::Log { level, message }));
    }

    fn start_steps(&mut self, action: ScriptAction) {
        self.steps
            .push_back(Step::Run(Script::Prestart, false, action));
        self.steps
            .push_back(Step::Run(Script::StartBoth, false, action));
        self.steps.push_back(Step::Become(Role::Up));
    }

    /// Stop serving first (the role leaves UP now), then the application.
    fn stop(&mut self, action: ScriptAction) {
        self.steps.clear();
        self.role = Role::Stopping;
        self.steps
            .push_back(Step::Run(Script::StopBoth, false, action));
        self.steps
            .push_back(Step::Run(Script::StopBoth, true, action));
        self.steps
            .push_back(Step::Run(Script::Poststop, false, action));
        self.steps.push_back(Step::Become(Role::Stopped));
    }

    /// The UP nodes as this node sees them (itself included when UP).
    fn up_members(&self) -> Vec<Member> {
        self.settings
            .members
            .iter()
            .filter(|(name, _)| {
                if *name == self.settings.local {
                    self.role == Role::Up
                } else {
                    self.live_state(name) == Some(State::Up)
                }
            })
            .map(|(name, power)| Member {
                name: name.clone(),
                power: *power,
            })
            .collect()
    }

    fn advance(&mut self) {
        // Serving stops before anything else happens on the way down.
        self.program();
        while self.scripts.script().is_none() {
            match self.steps.pop_front() {
                Some(Step::Become(role)) => self.role = role,
                Some(Step::Run(script, force, action)) => {
                    let next = if self.role == Role::Starting {
                        State::Up
                    } else {
                        State::Stop
                    };
                    let current = self.state();
                    let reason = format!("{} of the farm module", action.as_str());
                    let run = self
                        .scripts
                        .start(script, force, current, next, action, reason);
                    self.outbox.push(FarmAction::Module(Action::RunScript(run)));
                }
                None => break,
            }
        }
        self.program();
        let now = self.state();
        if now != self.shown {
            let reason = match now {
                State::Up => "start_both done: serving".to_string(),
                State::Stop => "stopped".to_string(),
                _ => "scripts running".to_string(),
            };
            self.log(
                LogLevel::Info,
                format!("transition {} -> {now}: {reason}", self.shown),
            );
            self.reason = reason.clone();
            self.outbox.push(FarmAction::Module(Action::Transition {
                from: self.shown,
                to: now,
                reason,
            }));
            self.outbox.push(FarmAction::Module(Action::SendHeartbeat));
            self.shown = now;
        }
    }

    /// Asks the shell to program this node's buckets when they change.
    fn program(&mut self) {
        let members = self.up_members();
        let serving = self.role == Role::Up;
        // The assignment depends only on the UP set: recompute on change.
        if serving && self.computed_for.as_ref() == Some(&members) {
            return;
        }
        self.computed_for = serving.then(|| members.clone());
        let wanted = if self.role != Role::Up || members.is_empty() {
            BTreeSet::new()
        } else {
            match BucketMap::assign(&members) {
                Ok(map) => map.buckets_of(&self.settings.local),
                Err(e) => {
                    self.log(LogLevel::Error, format!("no bucket assignment: {e}"));
                    BTreeSet::new()
                }
            }
        };
        if self.programmed.as_ref() != Some(&wanted) {
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            self.log(
                LogLevel::Info,
                format!(
                    "serving {} of 256 buckets (UP: {})",
                    wanted.len(),
                    names.join(", ")
                ),
            );
            self.outbox.push(FarmAction::ProgramBuckets(wanted.clone()));
            self.programmed = Some(wanted);
        }
    }
}
