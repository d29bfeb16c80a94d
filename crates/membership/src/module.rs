//! What every module's state machine speaks with its I/O shell, mirror or
//! farm alike: the states users see, the user scripts and how a run of one
//! is asked for and reported, administrator commands, and the actions the
//! machine queues for the shell to carry out.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lease::PeerCopy;

/// The states users see (SafeKit's names and colours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Stop,
    Wait,
    Alone,
    Prim,
    Second,
    /// A farm module running on this node.
    Up,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stop => "STOP",
            State::Wait => "WAIT",
            State::Alone => "ALONE",
            State::Prim => "PRIM",
            State::Second => "SECOND",
            State::Up => "UP",
        }
    }

    /// Exit code of `state -lq`, as in SafeKit: STOP 0, WAIT 1, ALONE 2, UP 2, PRIM 3, SECOND 4.
    pub fn exit_code(self) -> i32 {
        match self {
            State::Stop => 0,
            State::Wait => 1,
            State::Alone => 2,
            State::Prim => 3,
            State::Second => 4,
            State::Up => 2,
        }
    }

    /// ALONE or PRIM: this node holds the primary role.
    pub fn is_primary(self) -> bool {
        matches!(self, State::Alone | State::Prim)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The user scripts, run by the shell from the module's script directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Script {
    Prestart,
    StartPrim,
    StopPrim,
    StartBoth,
    StopBoth,
    Poststop,
    /// Run before taking over from a peer that went silent (e.g. power it
    /// off out of band); its failure blocks the takeover.
    Fence,
}

impl Script {
    pub fn name(self) -> &'static str {
        match self {
            Script::Prestart => "prestart",
            Script::StartPrim => "start_prim",
            Script::StopPrim => "stop_prim",
            Script::StartBoth => "start_both",
            Script::StopBoth => "stop_both",
            Script::Poststop => "poststop",
            Script::Fence => "fence",
        }
    }

    /// Start scripts run under the start timeout, stop scripts under the stop ones.
    pub fn is_stop(self) -> bool {
        matches!(self, Script::StopPrim | Script::StopBoth | Script::Poststop)
    }
}

/// SafeKit's third script argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScriptAction {
    Start,
    Stop,
    StopStart,
    /// A resource checker put the module in WAIT.
    StopWait,
}

impl ScriptAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptAction::Start => "start",
            ScriptAction::Stop => "stop",
            ScriptAction::StopStart => "stopstart",
            ScriptAction::StopWait => "stopwait",
        }
    }
}

/// A script the shell must run, then report with
/// [`MirrorModule::script_finished`](crate::mirror::MirrorModule::script_finished)
/// (or the farm's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRun {
    pub id: u64,
    pub script: Script,
    /// Second, forced call of a stop script (`force` as first argument).
    pub force: bool,
    pub current: State,
    pub next: State,
    pub action: ScriptAction,
    pub reason: String,
}

/// The one script a module's machine runs at a time, numbered so that the
/// report of an earlier run is told apart from the current one's.
#[derive(Debug)]
pub(crate) struct ScriptSlot {
    running: Option<(u64, Script)>,
    next_id: u64,
}

impl Default for ScriptSlot {
    fn default() -> Self {
        Self {
            running: None,
            next_id: 1,
        }
    }
}

impl ScriptSlot {
    /// The script running, if any.
    pub(crate) fn script(&self) -> Option<Script> {
        self.running.map(|(_, script)| script)
    }

    /// Takes the slot for `script`: the numbered run for the shell.
    pub(crate) fn start(
        &mut self,
        script: Script,
        force: bool,
        current: State,
        next: State,
        action: ScriptAction,
        reason: String,
    ) -> ScriptRun {
        let id = self.next_id;
        self.next_id += 1;
        self.running = Some((id, script));
        ScriptRun {
            id,
            script,
            force,
            current,
            next,
            action,
            reason,
        }
    }

    /// Frees the slot if run `id` is the one running, and says which
    /// script it was; `None` for any other (late) report.
    pub(crate) fn finish(&mut self, id: u64) -> Option<Script> {
        let (running, script) = self.running?;
        if running != id {
            return None;
        }
        self.running = None;
        Some(script)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptOutcome {
    Success,
    /// The module has no such script: nothing to run.
    Missing,
    Failed(String),
    TimedOut(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Info,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    RunScript(ScriptRun),
    Log {
        level: LogLevel,
        message: String,
    },
    Transition {
        from: State,
        to: State,
        reason: String,
    },
    /// The status changed: send a heartbeat now rather than at the next pulse.
    SendHeartbeat,
    /// Write this to disk before acting further (survives a crash).
    Persist(Persistent),
    /// Bring up the resources the primary holds (the virtual IP) before its
    /// application starts.
    AcquirePrimaryResources,
    /// Release them: the application is down, or the module starts here and
    /// a previous life (a crash) may have left them.
    ReleasePrimaryResources,
    /// Ask the witness for the module's lease (request `id`, for
    /// `duration`); its answer goes to
    /// [`MirrorModule::lease_reply`](crate::mirror::MirrorModule::lease_reply).
    RequestLease {
        id: u64,
        duration: Duration,
        peer_copy: PeerCopy,
    },
    /// The peer's copy is fenced as of `epoch` (see
    /// [`PeerData`](crate::mirror::PeerData)): the
    /// witness granted a request saying it is outdated — or there is no
    /// witness to tell. Changes the peer lacks may now be acknowledged.
    PeerFenced {
        epoch: u64,
    },
    /// Tell the witness the application is down here: a request `id` for
    /// zero time, which releases the lease.
    ReleaseLease {
        id: u64,
    },
}

/// What a node remembers across daemon restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persistent {
    /// The module was started and not stopped (for `boot = "auto"`).
    pub running: bool,
    pub epoch: u64,
    pub last_primary: bool,
}

/// Administrator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Start,
    Stop,
    Restart,
    Swap,
    Prim,
    Second,
    /// Stop here (the peer takes over) and start again, as SECOND: what a
    /// checker asks for when local restarts are not enough.
    StopStart,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Stop => "stop",
            Command::Restart => "restart",
            Command::Swap => "swap",
            Command::Prim => "prim",
            Command::Second => "second",
            Command::StopStart => "stopstart",
        }
    }
}

/// Who asked for a command: the module log says it with the action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `holdfast <command>` (the API).
    Administrator,
    /// A checker's action; its name.
    Checker(String),
    /// The module's boot policy at daemon start.
    Boot,
    /// The daemon shutting down.
    Shutdown,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Administrator => f.write_str("the administrator"),
            Origin::Checker(name) => write!(f, "checker {name}"),
            Origin::Boot => f.write_str("the boot policy"),
            Origin::Shutdown => f.write_str("the daemon's shutdown"),
        }
    }
}

/// A refused command; the module is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the module is already started here (state {0}); stop it first")]
    AlreadyStarted(State),
    #[error("the module is already stopped here")]
    AlreadyStopped,
    #[error(
        "swap needs a PRIM and a SECOND in contact; here the module is {local}, the peer {peer}"
    )]
    CannotSwap { local: State, peer: String },
    #[error("{peer} is already primary ({state}); use swap to move the primary here")]
    PeerIsPrimary { peer: String, state: State },
    #[error("this node is already primary ({0})")]
    AlreadyPrimary(State),
    #[error("{0} does not apply to a farm module (every node runs the application)")]
    NotInFarm(&'static str),
    #[error("the module is in transition ({state}, running {script}); retry once it is stable, or stop it")]
    Busy { state: State, script: String },
}
