//! What the I/O shells of both kinds of module share: the loop of a
//! module's tokio task (timers, heartbeats sent and received, messages,
//! script exits, deadlines, the worker's answers) around its sans-IO state
//! machine, and running scripts, logging, persisting and publishing its
//! view. What differs between a mirror ([`crate::mirror`]) and a farm
//! ([`crate::farm`]) is behind `Kind`. Kept thin on purpose: every
//! decision is in `holdfast_membership`.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use holdfast_config::{Boot, ModuleConfig};
use holdfast_membership::datagram::MAX_DATAGRAM;
use holdfast_membership::{
    Command, CommandError, Heartbeat, HeartbeatStatus, LogLevel, ModuleView, Persistent, Script,
    ScriptOutcome, ScriptRun, State,
};
use holdfast_replication::durable;
use tokio::sync::{mpsc, oneshot, watch};

use crate::events::Timeline;
use crate::heartbeats::Heartbeats;
use crate::modlog::ModuleLog;
use crate::node::NodeContext;
use crate::paths::ModulePaths;
use crate::scripts::{self, ScriptJob};
use crate::settings::UserSettings;
use crate::worker::{Job, Worker};
use crate::DaemonError;

/// Messages to a module's task.
#[derive(Debug)]
pub enum ModuleMsg {
    Command {
        command: Command,
        /// `second --discard-data`: once accepted, this node's replicated
        /// data is marked for replacement before it receives anything.
        discard_data: bool,
        /// `forcestop` (with stop): the running script is killed first.
        force: bool,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    /// A `printi`/`printe` line from a script or an administrator.
    Print(LogLevel, String),
    /// The administrator's settings changed (saved already).
    Settings(UserSettings),
    ScriptDone(u64, ScriptOutcome),
    /// Daemon shutdown: stop the module (keeping whether it should run at
    /// the next start), then end the task.
    Shutdown,
}

/// The daemon's handle on a running module task.
#[derive(Debug)]
pub struct ModuleHandle {
    pub config: Arc<ModuleConfig>,
    pub tx: mpsc::Sender<ModuleMsg>,
    pub view: watch::Receiver<ModuleView>,
    /// The replicated directories' status, for a module that has some.
    pub replication: Option<crate::replication::status::ReplicationStatus>,
    /// The administrator's settings in force.
    pub settings: UserSettings,
    pub task: tokio::task::JoinHandle<()>,
}

/// What a kind of module (mirror, farm) brings to the shared loop.
pub(crate) trait Kind: Send + Sized + 'static {
    /// What its worker does off the task.
    type Job: Job<Done = Self::Done>;
    type Done: Send + 'static;
    /// Its state machine's actions.
    type Action: Send + 'static;
    /// What else it waits for (checkers, the witness, ...).
    type Event: Send;
    /// What its worker follows of the state (compared, to know it caught up).
    type Following: PartialEq + Copy + Send + 'static;

    fn status(&self) -> HeartbeatStatus;
    fn view(&self) -> ModuleView;
    /// When the machine (or the kind) must be woken up.
    fn next_deadline(&self) -> Option<Instant>;
    /// Time passed: the machine's timers, the kind's own (asking the worker).
    fn tick(&mut self, now: Instant, worker: &Worker<Self::Job>);
    /// An authenticated heartbeat on `network`.
    fn heartbeat(&mut self, now: Instant, network: usize, heartbeat: Heartbeat);
    /// The next of the kind's own events (cancel-safe); never, if none.
    fn event(&mut self) -> impl Future<Output = Self::Event> + Send + '_;
    fn on_event(&mut self, now: Instant, event: Self::Event, io: &ModuleIo);
    /// An administrator's command (or a script's): accepted or refused;
    /// what to persist once accepted.
    fn command(
        &mut self,
        now: Instant,
        command: Command,
        discard_data: bool,
        worker: &Worker<Self::Job>,
    ) -> (Result<(), CommandError>, Option<Persistent>);
    fn script_finished(&mut self, now: Instant, id: u64, outcome: ScriptOutcome);
    /// Daemon shutdown: the machine told to stop; whether the module runs
    /// at the next start.
    fn shutdown(&mut self, now: Instant) -> bool;
    /// What to persist once stopped for the daemon's shutdown.
    fn persistent(&self, running: bool) -> Persistent;
    /// The administrator's settings changed: follow them while running.
    fn apply_settings(&mut self, _now: Instant, _settings: UserSettings, _io: &ModuleIo) {}
    /// Right after an input, before anything it caused is carried out or
    /// announced (no await in between): what must follow the state at once.
    fn settle(&mut self) {}
    /// After an event's actions: what else follows the state (checkers).
    fn after_event(&mut self, now: Instant, io: &ModuleIo);
    fn take_actions(&mut self) -> Vec<Self::Action>;
    /// Carries out `action`, or says what the shell does with it.
    fn carry_out<'a>(
        &'a mut self,
        action: Self::Action,
        io: &'a ModuleIo,
    ) -> impl Future<Output = Step<Self::Job>> + Send + 'a;
    /// What the worker should follow now, and the job that tells it
    /// (`None`: nothing to follow).
    fn follow(&mut self) -> Option<(Self::Following, Self::Job)>;
    /// What the worker follows when it caught up (`None`: nothing to follow).
    fn following(&self) -> Option<Self::Following>;
    /// The worker did something.
    fn answered(&mut self, now: Instant, done: Self::Done) -> Answer;
}

/// What the shell does with an action of the machine.
#[derive(Debug)]
pub(crate) enum Step<J> {
    /// Carried out by the kind.
    Done,
    Script(ScriptRun),
    Log(LogLevel, String),
    SendHeartbeat,
    /// Asked of the worker: the next actions wait for its answer.
    Wait(J),
    /// Persisted (synced) before the next actions.
    Persist(Persistent),
    /// The displayed state changed (for the timeline).
    Transition {
        from: State,
        to: State,
        reason: String,
    },
}

/// What a worker's answer was to the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// It follows the state it was last asked to.
    Followed,
    /// It carried out what the actions wait for ([`Step::Wait`]).
    Finished,
    Other,
}

/// The task of one module.
pub(crate) struct Shell<K: Kind> {
    pub(crate) io: ModuleIo,
    pub(crate) kind: K,
    pub(crate) heartbeats: Heartbeats,
    pub(crate) view_tx: watch::Sender<ModuleView>,
    pub(crate) worker: Worker<K::Job>,
    pub(crate) done: mpsc::UnboundedReceiver<K::Done>,
    /// The cloud-mode health endpoint, stopped with the module.
    pub(crate) health: Option<crate::health::HealthServer>,
}

/// The shared loop's own state.
struct Agenda<K: Kind> {
    /// During daemon shutdown: whether the module runs at the next start.
    shutdown: Option<bool>,
    /// Actions of the state machine not carried out yet, in order.
    pending: VecDeque<K::Action>,
    /// Actions carried out off the task and not done yet (a worker's job,
    /// a persisted state): the next ones wait while there is one.
    waiting: usize,
    /// The worker is following the state; asked again after it if
    /// `follow_again`.
    following: bool,
    follow_again: bool,
    /// What the worker was asked to follow, and what it last followed.
    asked: Option<K::Following>,
    followed: Option<K::Following>,
    /// Persisted state written (off the runtime).
    persisted: (mpsc::UnboundedSender<()>, mpsc::UnboundedReceiver<()>),
}

impl<K: Kind> Shell<K> {
    /// Runs the module until its daemon stops it (or the registry drops it).
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<ModuleMsg>) {
        let _health = self.health.take();
        let mut agenda = Agenda::<K> {
            shutdown: None,
            pending: VecDeque::new(),
            waiting: 0,
            following: false,
            follow_again: false,
            asked: None,
            followed: None,
            persisted: mpsc::unbounded_channel(),
        };
        let pulse = self.io.config.heartbeat.pulse;
        let mut next_pulse = Instant::now();
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            // Its own answer asks for no new follow, unless one waits.
            let mut followed = false;
            let wake = self
                .kind
                .next_deadline()
                .map_or(next_pulse, |d| d.min(next_pulse));
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if now >= next_pulse {
                        self.send_heartbeat().await;
                        next_pulse = now + pulse;
                    }
                    self.kind.tick(now, &self.worker);
                }
                received = self.heartbeats.receive(&mut buf) => match received {
                    Ok((len, from)) => self.on_datagram(&buf[..len], from),
                    Err(e) => tracing::warn!("module {}: heartbeat receive: {e}", self.io.config.name),
                },
                event = self.kind.event() => self.kind.on_event(Instant::now(), event, &self.io),
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_message(msg, &mut agenda),
                    None => return,
                },
                done = self.done.recv() => match done.map(|d| self.kind.answered(Instant::now(), d)) {
                    Some(Answer::Followed) => {
                        followed = true;
                        agenda.following = false;
                        agenda.followed = agenda.asked;
                    }
                    Some(Answer::Finished) => {
                        self.io.timeline.work_done(true);
                        agenda.waiting = agenda.waiting.saturating_sub(1);
                    }
                    Some(Answer::Other) => {}
                    None => {
                        // Only a panic ends it before the task: the task
                        // ends too, as it did when this work was its own.
                        self.io.log.write(LogLevel::Error, "the module's worker thread failed: module task ended");
                        return;
                    }
                },
                Some(()) = agenda.persisted.1.recv() => agenda.waiting = agenda.waiting.saturating_sub(1),
            }
            // Woken at least every pulse: a flood's summary is not late.
            self.io.log.flush_refusals();
            self.kind.settle();
            self.execute(&mut agenda).await;
            // Checkers follow the state; what they decide is carried out now.
            self.kind.after_event(Instant::now(), &self.io);
            self.execute(&mut agenda).await;
            // The worker's own answer may have changed the state (its
            // data state): followed again then.
            if !followed || agenda.follow_again || self.kind.following() != agenda.followed {
                self.follow(&mut agenda);
            }
            let caught_up = self
                .kind
                .following()
                .is_none_or(|f| agenda.followed == Some(f));
            if agenda.pending.is_empty() && agenda.waiting == 0 && caught_up {
                let view = self.kind.view();
                if !view.transient && view.running_script.is_none() {
                    self.io.timeline.settled(view.state, &view.reason);
                }
                self.io.publish(&self.view_tx, view);
            }
            if let Some(running) = agenda.shutdown {
                let idle = agenda.pending.is_empty() && agenda.waiting == 0;
                let view = self.kind.view();
                if view.state == State::Stop && !view.transient && idle {
                    let persistent = self.kind.persistent(running);
                    persist(self.io.paths.persistent(), persistent, self.io.log.clone()).await;
                    // After what was asked of it: everything released.
                    self.worker.finish().await;
                    return;
                }
            }
        }
    }

    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        if let Some((network, heartbeat)) = self.heartbeats.accept(datagram, from) {
            self.kind.heartbeat(Instant::now(), network, heartbeat);
        }
    }

    fn on_message(&mut self, msg: ModuleMsg, agenda: &mut Agenda<K>) {
        let now = Instant::now();
        match msg {
            ModuleMsg::Command {
                command,
                discard_data,
                force,
                reply,
            } => {
                if force {
                    self.io.kill_script();
                }
                let (result, persistent) =
                    self.kind.command(now, command, discard_data, &self.worker);
                match &result {
                    Ok(()) => self.io.timeline.command(command.as_str()),
                    Err(e) => self.io.log.write(
                        LogLevel::Error,
                        &format!("action {} refused: {e}", command.as_str()),
                    ),
                }
                if let Some(persistent) = persistent {
                    self.persist(persistent, agenda);
                }
                let _ = reply.send(result);
            }
            ModuleMsg::Print(level, message) => self.io.log.write(level, &message),
            ModuleMsg::Settings(settings) => self.kind.apply_settings(now, settings, &self.io),
            ModuleMsg::ScriptDone(id, outcome) => {
                self.io.timeline.script_done(id, &outcome);
                self.kind.script_finished(now, id, outcome);
            }
            ModuleMsg::Shutdown => agenda.shutdown = Some(self.kind.shutdown(now)),
        }
    }

    /// Authenticates a datagram and places it on every heartbeat network.
    async fn send_heartbeat(&mut self) {
        self.heartbeats.send(self.kind.status()).await;
    }

    /// Carries out the state machine's actions in order; one done off the
    /// task (mounts, the VIP, buckets, persisting) holds back those after
    /// it until it is done.
    async fn execute(&mut self, agenda: &mut Agenda<K>) {
        agenda.pending.extend(self.kind.take_actions());
        while agenda.waiting == 0 {
            let Some(action) = agenda.pending.pop_front() else {
                return;
            };
            match self.kind.carry_out(action, &self.io).await {
                Step::Done => {}
                Step::Script(run) => self.io.run_script(run),
                Step::Log(level, message) => self.io.log.write(level, &message),
                Step::SendHeartbeat => self.send_heartbeat().await,
                Step::Wait(job) => {
                    self.worker.ask(job);
                    agenda.waiting += 1;
                }
                Step::Persist(persistent) => {
                    if agenda.shutdown.is_none() {
                        self.persist(persistent, agenda);
                    }
                }
                Step::Transition { from, to, reason } => {
                    self.io.timeline.transition(from, to, &reason)
                }
            }
        }
    }

    /// Writes `persistent` off the runtime; the next actions wait for it.
    fn persist(&self, persistent: Persistent, agenda: &mut Agenda<K>) {
        let (path, log) = (self.io.paths.persistent(), self.io.log.clone());
        let done = agenda.persisted.0.clone();
        tokio::spawn(async move {
            persist(path, persistent, log).await;
            let _ = done.send(());
        });
        agenda.waiting += 1;
    }

    /// Lets the worker follow the module's state: one follow at a time,
    /// after the actions before it.
    fn follow(&mut self, agenda: &mut Agenda<K>) {
        if agenda.following || agenda.waiting > 0 {
            agenda.follow_again = true;
            return;
        }
        let Some((following, job)) = self.kind.follow() else {
            return;
        };
        self.worker.ask(job);
        agenda.asked = Some(following);
        agenda.following = true;
        agenda.follow_again = false;
    }
}

/// Writes a module's persisted state (synced: it holds the epoch), off
/// the runtime; logs a failure.
pub(crate) async fn persist(path: PathBuf, persistent: Persistent, log: ModuleLog) {
    let bytes = serde_json::to_vec_pretty(&persistent).expect("plain data serialises");
    let written =
        tokio::task::spawn_blocking(move || durable::replace(&path, &bytes).map_err(|e| (path, e)))
            .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err((path, e))) => log.write(
            LogLevel::Error,
            &format!("cannot persist module state to {}: {e}", path.display()),
        ),
        Err(e) => log.write(
            LogLevel::Error,
            &format!("cannot persist module state: {e}"),
        ),
    }
}

/// Creates the module's directories and reads its persisted state (off
/// the runtime).
pub(crate) async fn prepare(paths: &ModulePaths) -> Result<Persistent, DaemonError> {
    let paths = paths.clone();
    tokio::task::spawn_blocking(move || {
        for dir in [paths.bin(), paths.var()] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| DaemonError::Io(dir.display().to_string(), e))?;
        }
        let path = paths.persistent();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| DaemonError::Corrupt(path.display().to_string(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persistent::default()),
            Err(e) => Err(DaemonError::Io(path.display().to_string(), e)),
        }
    })
    .await
    .map_err(|e| DaemonError::Io("module directories".into(), std::io::Error::other(e)))?
}

/// Whether the module starts now, by its `boot` policy (logged if so).
pub(crate) fn starts_at_boot(
    config: &ModuleConfig,
    at_boot: bool,
    persistent: &Persistent,
    log: &ModuleLog,
) -> bool {
    let start = match config.boot {
        Boot::On => at_boot,
        Boot::Auto => at_boot && persistent.running,
        Boot::Off => false,
    };
    if start {
        log.write(LogLevel::Info, "starting at daemon start (boot policy)");
    }
    start
}

/// The module's cloud-mode health endpoint, if it has one.
pub(crate) async fn health(
    config: &ModuleConfig,
    view: &watch::Receiver<ModuleView>,
) -> Result<Option<crate::health::HealthServer>, DaemonError> {
    match config.health {
        Some(health) => Ok(Some(
            crate::health::serve(&config.name, health.port, view.clone()).await?,
        )),
        None => Ok(None),
    }
}

/// What both kinds of module shell do alike: run scripts, log, persist.
pub(crate) struct ModuleIo {
    pub ctx: Arc<NodeContext>,
    pub config: Arc<ModuleConfig>,
    pub paths: ModulePaths,
    pub log: ModuleLog,
    /// The cause chain of the module's state changes, for the events.
    pub timeline: Timeline,
    pub tx: mpsc::Sender<ModuleMsg>,
    /// Kills the script running now, if any (`forcestop`).
    kill_script: parking_lot::Mutex<Option<oneshot::Sender<()>>>,
}

impl ModuleIo {
    /// The I/O of a module's task, and the receiving end of its commands.
    pub(crate) fn new(
        ctx: Arc<NodeContext>,
        config: ModuleConfig,
        paths: ModulePaths,
        log: ModuleLog,
    ) -> (Self, mpsc::Receiver<ModuleMsg>) {
        let (tx, rx) = mpsc::channel(64);
        let io = ModuleIo {
            timeline: Timeline::new(ctx.events.clone(), &config.name),
            ctx,
            config: Arc::new(config),
            paths,
            log,
            tx,
            kill_script: parking_lot::Mutex::new(None),
        };
        (io, rx)
    }

    /// What the daemon will keep of the task serving this module, once
    /// spawned (the task takes this `ModuleIo`).
    pub(crate) fn handle(
        &self,
        view: watch::Receiver<ModuleView>,
        replication: Option<crate::replication::status::ReplicationStatus>,
        settings: UserSettings,
    ) -> impl FnOnce(tokio::task::JoinHandle<()>) -> ModuleHandle {
        let (config, tx) = (self.config.clone(), self.tx.clone());
        move |task| ModuleHandle {
            config,
            tx,
            view,
            replication,
            settings,
            task,
        }
    }
}

impl Drop for ModuleIo {
    /// The module's task ended: module checkers no longer find it (a
    /// replacement task publishes itself again at its first event).
    fn drop(&mut self) {
        self.ctx.modules.remove(&self.config.name);
    }
}

impl ModuleIo {
    /// Shows `view` to `holdfast state` and to other modules' checkers.
    pub(crate) fn publish(&self, view_tx: &watch::Sender<ModuleView>, view: ModuleView) {
        self.ctx.modules.publish(&self.config.name, view.state);
        view_tx.send_replace(view);
    }

    /// Kills the script running now (its whole process group), if any; it
    /// ends as failed, and the module goes on from there.
    pub(crate) fn kill_script(&self) {
        if let Some(kill) = self.kill_script.lock().take() {
            if kill.send(()).is_ok() {
                self.log
                    .write(LogLevel::Error, "forcestop: the running script is killed");
            }
        }
    }

    pub(crate) fn run_script(&self, run: ScriptRun) {
        if matches!(run.script, Script::StartPrim | Script::StartBoth) {
            self.ctx.modules.started(&self.config.name);
        }
        let scripts = &self.config.scripts;
        let timeout = match (run.script.is_stop(), run.force) {
            (false, _) => scripts.start_timeout,
            (true, false) => scripts.stop_timeout,
            (true, true) => scripts.force_stop_timeout,
        };
        let job = ScriptJob {
            path: self.paths.script(run.script.name()),
            env: self.script_env(&run),
            timeout,
            output: scripts.logging.then(|| self.paths.application_log()),
            run,
        };
        self.timeline.script_started(&job.run, &job.args());
        let tx = self.tx.clone();
        let log = self.log.clone();
        let (kill, killed) = oneshot::channel();
        *self.kill_script.lock() = Some(kill);
        tokio::spawn(async move {
            let id = job.run.id;
            let announce = job.path.exists();
            if announce {
                log.write(
                    LogLevel::Info,
                    &format!("script {} {}", job.run.script.name(), job.args().join(" ")),
                );
            }
            let outcome = scripts::run(job, killed).await;
            // The module task may be gone (module removed): nothing to tell.
            let _ = tx.send(ModuleMsg::ScriptDone(id, outcome)).await;
        });
    }

    fn script_env(&self, run: &ScriptRun) -> BTreeMap<String, String> {
        let mut env = module_env(&self.ctx, &self.config, &self.paths);
        env.extend(
            [
                ("HOLDFAST_STATE", run.current.to_string()),
                ("HOLDFAST_NEXT_STATE", run.next.to_string()),
                ("HOLDFAST_ACTION", run.action.as_str().to_string()),
                ("HOLDFAST_REASON", run.reason.clone()),
                (
                    "HOLDFAST_FORCE",
                    if run.force { "1" } else { "0" }.to_string(),
                ),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        env
    }
}

/// The environment every script and custom checker of a module gets:
/// SafeKit's variables, Holdfast's own, and the module's `scripts.env`.
pub(crate) fn module_env(
    ctx: &NodeContext,
    config: &ModuleConfig,
    paths: &ModulePaths,
) -> BTreeMap<String, String> {
    let node_paths = &ctx.paths;
    let safe = node_paths.safe_dir();
    let path_var = match (ctx.exe.parent(), std::env::var("PATH")) {
        (Some(dir), Ok(path)) => format!("{}:{path}", dir.display()),
        (_, Ok(path)) => path,
        _ => "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    };
    let peer = config
        .peer_of(&ctx.node)
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let mut env: BTreeMap<String, String> = [
        ("SAFE", safe.display().to_string()),
        ("SAFEBIN", safe.join("private/bin").display().to_string()),
        ("SAFEMODULE", config.name.clone()),
        ("SAFEUSERBIN", paths.bin().display().to_string()),
        ("SAFEUSERCONF", paths.dir.display().to_string()),
        (
            "SAFEVAR",
            node_paths.state_dir.join("var").display().to_string(),
        ),
        ("SAFEUSERVAR", paths.var().display().to_string()),
        ("HOLDFAST_MODULE", config.name.clone()),
        ("HOLDFAST_NODE", ctx.node.clone()),
        ("HOLDFAST_PEER", peer),
        (
            "HOLDFAST_API",
            node_paths.api_socket().display().to_string(),
        ),
        ("PATH", path_var),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(config.scripts.env.clone());
    env
}

/// Names of the scripts a module may ship.
pub fn script_names() -> impl Iterator<Item = &'static str> {
    [
        Script::Prestart,
        Script::StartPrim,
        Script::StopPrim,
        Script::StartBoth,
        Script::StopBoth,
        Script::Poststop,
        Script::Fence,
    ]
    .into_iter()
    .map(Script::name)
}
