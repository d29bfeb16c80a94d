//! The I/O shell around one mirror module's state machine: a tokio task that
//! owns the [`MirrorModule`], its UDP heartbeat socket and its timers, feeds
//! the machine, and carries out its actions (scripts, log, persistence,
//! heartbeats). Kept thin on purpose: every decision is in
//! `holdfast_membership::mirror`.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_checkers::{CheckerEvent, ProbeContext, ProcessScope};
use holdfast_config::{Boot, Mode, ModuleConfig};
use holdfast_key::ClusterKey;
use holdfast_membership::datagram::MAX_DATAGRAM;
use holdfast_membership::lease::{LeaseReply, LeaseRequest, PeerCopy};
use holdfast_membership::recovery::RecoveryPolicy;
use holdfast_membership::{
    Action, Command, CommandError, HeartbeatStatus, LogLevel, MirrorModule, MirrorSettings,
    ModuleView, Persistent, Script, ScriptOutcome, ScriptRun, State,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::heartbeats::{Heartbeats, Rejections};
use crate::modlog::ModuleLog;
use crate::paths::{ModulePaths, Paths};
use crate::peer_fence::PeerFence;
use crate::resources::{persist, ResourceDone, ResourceJob, ResourceWorker, Resources};
use crate::scripts::{self, ScriptJob};
use crate::supervision::Supervisor;
use crate::DaemonError;

/// What every module of this node shares.
#[derive(Debug)]
pub struct NodeContext {
    pub node: String,
    pub key: ClusterKey,
    pub incarnation: u64,
    pub paths: Paths,
    /// The `holdfast` executable, for scripts (`$SAFE/safekit`, PATH).
    pub exe: PathBuf,
    /// This node's modules' states, for module checkers.
    pub modules: Arc<crate::board::ModuleBoard>,
}

/// Messages to a module's task.
#[derive(Debug)]
pub enum ModuleMsg {
    Command {
        command: Command,
        /// `second --discard-data`: once accepted, this node's replicated
        /// data is marked for replacement before it receives anything.
        discard_data: bool,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    /// A `printi`/`printe` line from a script or an administrator.
    Print(LogLevel, String),
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
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the task of a module; `at_boot` applies the module's `boot` policy.
pub async fn spawn(
    ctx: Arc<NodeContext>,
    config: ModuleConfig,
    at_boot: bool,
) -> Result<ModuleHandle, DaemonError> {
    if config.mode == Mode::Farm {
        return crate::farm::spawn(ctx, config, at_boot).await;
    }
    let mut settings = MirrorSettings::from_config(&config, &ctx.node)
        .ok_or_else(|| DaemonError::not_a_member(&config, &ctx.node))?;
    settings.incarnation = ctx.incarnation;
    let paths = ctx.paths.module(&config.name);
    let persistent = prepare(&paths)?;
    let log = ModuleLog::new(paths.log());
    let heartbeats = Heartbeats::bind(&ctx, &config, log.clone()).await?;
    let witness = match &config.witness {
        Some(witness) => Some(WitnessLink {
            socket: UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
                .await
                .map_err(|e| {
                    DaemonError::Io(format!("module {}: witness socket", config.name), e)
                })?,
            addresses: witness
                .addresses
                .iter()
                .map(|a| SocketAddr::new(*a, witness.port))
                .collect(),
            first_id: crate::heartbeats::counter_start(),
        }),
        None => None,
    };
    let start = starts_at_boot(&config, at_boot, &persistent, &log);
    let mut core = MirrorModule::new(settings, persistent, Instant::now());
    if start {
        // A freshly built machine is stopped, so Start cannot be refused.
        let _ = core.command(Instant::now(), Command::Start);
    }
    let (view_tx, view) = watch::channel(core.view());
    let health = health(&config, &view).await?;
    let (checker_tx, checker_rx) = mpsc::channel(64);
    let probes = ProbeContext {
        bin_dir: paths.bin(),
        script_env: module_env(&ctx, &config, &paths)
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        modules: Some(ctx.modules.clone()),
        // On a real server the daemon shares the applications' network
        // namespace; in the lab, this keeps each host to its own processes.
        process_scope: ProcessScope::CallerNetns,
    };
    let supervisor = Supervisor::new(
        config.checkers.clone(),
        RecoveryPolicy::new(config.maxloop, config.loop_interval),
        probes,
        checker_tx,
        crate::supervision::splitbrain_checkers(
            config.splitbrain.as_ref().map_or(&[][..], |s| &s.ping[..]),
            config.heartbeat.pulse,
        ),
    );
    let replication = crate::replication::Replication::new(
        &config,
        &ctx.node,
        &paths.dir,
        ctx.key.clone(),
        log.clone(),
    );
    let replication_status = replication.as_ref().map(|r| r.status());
    let fence = replication.as_ref().map(|r| r.fence());
    let peer_second = replication.as_ref().map(|r| r.peer_second());
    let replicated = replication.is_some();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let resources = ResourceWorker::start(
        format!("module-{}", config.name),
        Resources::new(&config, replication, log.clone()),
        done_tx.clone(),
    )
    .map_err(|e| DaemonError::Io(format!("module {}: worker thread", config.name), e))?;
    if replicated {
        // What the records say: a copy left incomplete is never promoted.
        resources.ask(ResourceJob::Prepare);
        if let Some(ResourceDone::Prepared(uptodate)) = done.recv().await {
            core.data_state(Instant::now(), uptodate);
        }
    }
    let (io, rx) = ModuleIo::new(ctx, config, paths, log);
    let handle = io.handle(view, replication_status);
    let shell = Shell {
        io,
        core,
        heartbeats,
        view_tx,
        rejected: Rejections::default(),
        shutdown: None,
        _health: health,
        supervisor,
        fence,
        peer_second,
        resources,
        done,
        done_tx,
        pending: VecDeque::new(),
        waiting: false,
        following: false,
        follow_again: false,
        asked: None,
        followed: None,
        witness,
    };
    Ok(handle(tokio::spawn(shell.run(rx, checker_rx))))
}

/// Creates the module's directories and reads its persisted state.
pub(crate) fn prepare(paths: &ModulePaths) -> Result<Persistent, DaemonError> {
    for dir in [paths.bin(), paths.var()] {
        std::fs::create_dir_all(&dir).map_err(|e| DaemonError::Io(dir.display().to_string(), e))?;
    }
    let path = paths.persistent();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| DaemonError::Corrupt(path.display().to_string(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persistent::default()),
        Err(e) => Err(DaemonError::Io(path.display().to_string(), e)),
    }
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
    pub tx: mpsc::Sender<ModuleMsg>,
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
            ctx,
            config: Arc::new(config),
            paths,
            log,
            tx,
        };
        (io, rx)
    }

    /// What the daemon will keep of the task serving this module, once
    /// spawned (the task takes this `ModuleIo`).
    pub(crate) fn handle(
        &self,
        view: watch::Receiver<ModuleView>,
        replication: Option<crate::replication::status::ReplicationStatus>,
    ) -> impl FnOnce(tokio::task::JoinHandle<()>) -> ModuleHandle {
        let (config, tx) = (self.config.clone(), self.tx.clone());
        move |task| ModuleHandle {
            config,
            tx,
            view,
            replication,
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

/// Where the module asks for its lease.
struct WitnessLink {
    socket: UdpSocket,
    /// The witness's address and port on each network.
    addresses: Vec<SocketAddr>,
    /// Added to the module's request ids on the wire, so that they keep
    /// growing when the module is installed again (see
    /// [`crate::heartbeats::counter_start`]): the witness takes only
    /// requests newer than the last of each module and node.
    first_id: u64,
}

struct Shell {
    io: ModuleIo,
    core: MirrorModule,
    heartbeats: Heartbeats,
    view_tx: watch::Sender<ModuleView>,
    /// Rejected witness replies (heartbeats have their own).
    rejected: Rejections,
    /// During daemon shutdown: whether the module should run at next start.
    shutdown: Option<bool>,
    /// The cloud-mode health endpoint, stopped with the module.
    _health: Option<crate::health::HealthServer>,
    /// The module's checkers and recovery policy.
    supervisor: Supervisor,
    /// Tells replication's connectors whether the peer is SECOND.
    peer_second: Option<Arc<AtomicBool>>,
    /// The blocking side: replicated directories and the virtual IP.
    resources: ResourceWorker,
    /// What the worker (and the task persisting the module's state) did.
    done: mpsc::UnboundedReceiver<ResourceDone>,
    done_tx: mpsc::UnboundedSender<ResourceDone>,
    /// Actions of the state machine not carried out yet, in order.
    pending: VecDeque<Action>,
    /// An action is being carried out off the task: the next ones wait.
    waiting: bool,
    /// Replication is following the module's state; asked again after it
    /// if `follow_again`.
    following: bool,
    follow_again: bool,
    /// The state replication was asked to follow, and the one it last
    /// followed (with what that implies: receivers started or stopped).
    asked: Option<State>,
    followed: Option<State>,
    /// The split-brain witness, if configured.
    witness: Option<WitnessLink>,
    /// What replication says of the peer's copy (for the witness).
    fence: Option<Arc<PeerFence>>,
}

impl Shell {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<ModuleMsg>,
        mut checkers: mpsc::Receiver<CheckerEvent>,
    ) {
        let pulse = self.io.config.heartbeat.pulse;
        let mut next_pulse = Instant::now();
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut witness_buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            // Its own reply asks for no new follow, unless one waits.
            let mut followed = false;
            let wake = [self.core.next_deadline(), self.supervisor.next_deadline()]
                .into_iter()
                .flatten()
                .fold(next_pulse, Instant::min);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if now >= next_pulse {
                        self.send_heartbeat().await;
                        next_pulse = now + pulse;
                    }
                    self.core.tick(now);
                }
                received = self.heartbeats.receive(&mut buf) => match received {
                    Ok((len, from)) => self.on_datagram(&buf[..len], from),
                    Err(e) => tracing::warn!("module {}: heartbeat receive: {e}", self.io.config.name),
                },
                () = peer_fence_changed(&self.fence) => {
                    if let Some(fence) = &self.fence {
                        self.core.peer_data(Instant::now(), fence.peer_data());
                    }
                }
                received = recv_witness(&self.witness, &mut witness_buf) => match received {
                    Ok((len, from)) => self.on_lease_reply(&witness_buf[..len], from),
                    Err(e) => tracing::warn!("module {}: witness receive: {e}", self.io.config.name),
                },
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_message(msg),
                    None => return,
                },
                Some(event) = checkers.recv() => {
                    self.supervisor.on_event(&mut self.core, &self.io.log, Instant::now(), event);
                }
                Some(done) = self.done.recv() => {
                    followed = matches!(done, ResourceDone::Followed(_));
                    self.on_done(done);
                }
            }
            self.execute().await;
            // Checkers follow the state; what they decide is carried out now.
            self.supervisor
                .follow(&mut self.core, &self.io.log, Instant::now());
            self.execute().await;
            if !followed || self.follow_again {
                self.follow_replication();
            }
            if self.carried_out() {
                self.io.publish(&self.view_tx, self.core.view());
            }
            if let Some(running) = self.shutdown {
                let idle = self.pending.is_empty() && !self.waiting;
                if self.core.state() == State::Stop && !self.core.transient() && idle {
                    let mut persistent = self.core.persistent().clone();
                    persistent.running = running;
                    persist(self.io.paths.persistent(), persistent, self.io.log.clone()).await;
                    self.resources.ask(ResourceJob::Shutdown);
                    while let Some(done) = self.done.recv().await {
                        if done == ResourceDone::ShutDown {
                            break;
                        }
                    }
                    return;
                }
            }
        }
    }

    /// The worker (or the task persisting the state) did something.
    fn on_done(&mut self, done: ResourceDone) {
        match done {
            ResourceDone::Followed(data_state) => {
                self.following = false;
                self.followed = self.asked;
                if let Some(uptodate) = data_state {
                    self.core.data_state(Instant::now(), uptodate);
                }
            }
            ResourceDone::Acquired | ResourceDone::Released | ResourceDone::Persisted => {
                self.waiting = false
            }
            ResourceDone::Prepared(_) | ResourceDone::DataDiscarded | ResourceDone::ShutDown => {}
        }
    }

    fn on_message(&mut self, msg: ModuleMsg) {
        let now = Instant::now();
        match msg {
            ModuleMsg::Command {
                command,
                discard_data,
                reply,
            } => {
                let result = self.core.command(now, command);
                if result.is_ok() {
                    self.supervisor.admin_command(&mut self.core, now);
                    if discard_data {
                        // Accepted only from STOP: nothing is mounted or
                        // received yet, the receivers start after this
                        // (the worker's jobs run in order).
                        self.resources.ask(ResourceJob::DiscardData);
                    }
                }
                if let Err(e) = &result {
                    self.io.log.write(
                        LogLevel::Error,
                        &format!("action {} refused: {e}", command.as_str()),
                    );
                }
                let _ = reply.send(result);
            }
            ModuleMsg::Print(level, message) => self.io.log.write(level, &message),
            ModuleMsg::ScriptDone(id, outcome) => self.core.script_finished(now, id, outcome),
            ModuleMsg::Shutdown => {
                self.shutdown = Some(self.core.persistent().running);
                let _ = self.core.command(now, Command::Stop);
            }
        }
    }

    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        if let Some((network, heartbeat)) = self.heartbeats.accept(datagram, from) {
            // A farm's status here means the configurations differ, which
            // the fingerprint warning has said.
            if let HeartbeatStatus::Mirror(status) = heartbeat.status {
                let stamp = (heartbeat.incarnation, heartbeat.seq);
                self.core.heartbeat(Instant::now(), network, stamp, status);
            }
        }
    }

    fn on_lease_reply(&mut self, datagram: &[u8], from: SocketAddr) {
        match self.accept_lease_reply(datagram, from) {
            Ok(reply) => self
                .core
                .lease_reply(Instant::now(), reply.id, reply.decision),
            Err(reason) => self
                .rejected
                .report(&self.io.log, "witness reply", from, reason),
        }
    }

    /// The reply, its id the module's own (see [`WitnessLink::first_id`]).
    fn accept_lease_reply(&self, datagram: &[u8], from: SocketAddr) -> Result<LeaseReply, String> {
        let Some(witness) = self
            .witness
            .as_ref()
            .filter(|w| w.addresses.contains(&from))
        else {
            return Err(format!("{from} is not an address of the witness"));
        };
        let mut reply =
            LeaseReply::decode(datagram, &self.io.ctx.key).map_err(|e| e.to_string())?;
        if reply.module != self.io.config.name
            || reply.node != self.io.ctx.node
            || reply.incarnation != self.io.ctx.incarnation
        {
            return Err(format!(
                "reply for module {} node {} incarnation {}, not this one",
                reply.module, reply.node, reply.incarnation
            ));
        }
        reply.id = reply.id.checked_sub(witness.first_id).ok_or_else(|| {
            format!(
                "reply to request {}, of an earlier start of the module",
                reply.id
            )
        })?;
        Ok(reply)
    }

    /// Sends a lease request (`duration` zero: a release) to every address
    /// of the witness.
    async fn ask_witness(&self, id: u64, duration: Duration, peer_copy: PeerCopy) {
        let Some(witness) = &self.witness else { return };
        let bytes = LeaseRequest {
            module: self.io.config.name.clone(),
            node: self.io.ctx.node.clone(),
            incarnation: self.io.ctx.incarnation,
            id: witness.first_id + id,
            duration_ms: duration.as_millis() as u64,
            peer_copy,
        }
        .encode(&self.io.ctx.key);
        for address in &witness.addresses {
            // A network that is down fails here; the others carry on.
            if let Err(e) = witness.socket.send_to(&bytes, address).await {
                tracing::debug!(
                    "module {}: lease request to {address}: {e}",
                    self.io.config.name
                );
            }
        }
    }

    /// Authenticates a datagram and places it on a heartbeat network.
    async fn send_heartbeat(&mut self) {
        self.heartbeats
            .send(HeartbeatStatus::Mirror(self.core.status()))
            .await;
    }

    /// Carries out the state machine's actions in order; one done off the
    /// task (mounts, the VIP, persisting) holds back those after it until
    /// it is done.
    async fn execute(&mut self) {
        self.pending.extend(self.core.take_actions());
        while !self.waiting {
            let Some(action) = self.pending.pop_front() else {
                return;
            };
            match action {
                Action::RunScript(run) => self.io.run_script(run),
                Action::Log { level, message } => self.io.log.write(level, &message),
                Action::Transition { .. } => {}
                Action::SendHeartbeat => self.send_heartbeat().await,
                Action::AcquirePrimaryResources => {
                    self.resources.ask(ResourceJob::Acquire);
                    self.waiting = true;
                }
                Action::ReleasePrimaryResources => {
                    self.resources.ask(ResourceJob::Release);
                    self.waiting = true;
                }
                Action::RequestLease {
                    id,
                    duration,
                    peer_copy,
                } => self.ask_witness(id, duration, peer_copy).await,
                Action::ReleaseLease { id } => {
                    self.ask_witness(id, Duration::ZERO, PeerCopy::Unknown)
                        .await
                }
                Action::PeerFenced { epoch } => {
                    if let Some(fence) = &self.fence {
                        fence.fenced(epoch);
                    }
                }
                Action::Persist(persistent) => {
                    if self.shutdown.is_none() {
                        let (path, log) = (self.io.paths.persistent(), self.io.log.clone());
                        let done = self.done_tx.clone();
                        tokio::spawn(async move {
                            persist(path, persistent, log).await;
                            let _ = done.send(ResourceDone::Persisted);
                        });
                        self.waiting = true;
                    }
                }
            }
        }
    }

    /// Lets replication follow the module's state (on the worker; a
    /// changed data state comes back as [`ResourceDone::Followed`]). One
    /// follow at a time, after the actions before it.
    fn follow_replication(&mut self) {
        let Some(peer_second) = &self.peer_second else {
            return;
        };
        peer_second.store(
            self.core.view().peer_state == Some(State::Second),
            Ordering::SeqCst,
        );
        if self.following || self.waiting {
            self.follow_again = true;
            return;
        }
        let state = self.core.state();
        self.resources.ask(ResourceJob::Follow(state));
        self.asked = Some(state);
        self.following = true;
        self.follow_again = false;
    }

    /// The machine's actions are carried out, replication follows its
    /// state: what `holdfast state` may show (a command's answer, a STOP
    /// whose mounts are gone).
    fn carried_out(&self) -> bool {
        let replicated = self.peer_second.is_none() || self.followed == Some(self.core.state());
        self.pending.is_empty() && !self.waiting && replicated
    }
}

impl ModuleIo {
    /// Shows `view` to `holdfast state` and to other modules' checkers.
    pub(crate) fn publish(&self, view_tx: &watch::Sender<ModuleView>, view: ModuleView) {
        self.ctx.modules.publish(&self.config.name, view.state);
        view_tx.send_replace(view);
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
        let tx = self.tx.clone();
        let log = self.log.clone();
        tokio::spawn(async move {
            let id = job.run.id;
            let announce = job.path.exists();
            if announce {
                log.write(
                    LogLevel::Info,
                    &format!("script {} {}", job.run.script.name(), job.args().join(" ")),
                );
            }
            let outcome = scripts::run(job).await;
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

/// The next datagram from the witness; never, without one.
async fn peer_fence_changed(fence: &Option<Arc<PeerFence>>) {
    match fence {
        Some(f) => f.changed().await,
        None => std::future::pending().await,
    }
}

async fn recv_witness(
    witness: &Option<WitnessLink>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match witness {
        Some(w) => w.socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The environment every script and custom checker of a module gets:
/// SafeKit's variables, Holdfast's own, and the module's `scripts.env`.
fn module_env(
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
