//! The I/O shell around one farm module's state machine
//! (`holdfast_membership::farm`): heartbeats to and from every other node,
//! `start_both` / `stop_both`, and the kernel side of the VIP
//! ([`FarmNode`]): set up while the module is not stopped, its buckets
//! programmed whenever the machine asks and renewed well within their expiry
//! (a pulse short of the heartbeat timeout, so a node whose daemon died
//! stops taking clients before its peers take over), removed at stop.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use holdfast_config::ModuleConfig;
use holdfast_membership::datagram::MAX_DATAGRAM;
use holdfast_membership::{
    Action, Command, FarmAction, FarmModule, FarmSettings, HeartbeatStatus, LogLevel, ModuleView,
    Persistent, State,
};
use holdfast_network::farm::FarmFilter;
use holdfast_network::{FarmNode, Vip};
use holdfast_replication::durable;
use tokio::sync::{mpsc, watch};

use crate::heartbeats::Heartbeats;
use crate::modlog::ModuleLog;
use crate::shell::{self, ModuleHandle, ModuleIo, ModuleMsg, NodeContext};
use crate::worker::{Job, Worker};
use crate::DaemonError;

/// Buckets are renewed this many times within their expiry.
const RENEWALS_PER_EXPIRY: u32 = 4;

/// Starts the task of a farm module; `at_boot` applies its `boot` policy.
pub async fn spawn(
    ctx: Arc<NodeContext>,
    config: ModuleConfig,
    at_boot: bool,
) -> Result<ModuleHandle, DaemonError> {
    let settings = FarmSettings::from_config(&config, &ctx.node)
        .ok_or_else(|| DaemonError::not_a_member(&config, &ctx.node))?;
    let paths = ctx.paths.module(&config.name);
    let persistent = shell::prepare(&paths)?;
    let log = ModuleLog::new(paths.log());
    let heartbeats = Heartbeats::bind(&ctx, &config, log.clone()).await?;
    let (done_tx, done) = mpsc::unbounded_channel();
    let kernel = Kernel {
        config: config.clone(),
        filter: None,
        node: None,
        error: None,
        log: log.clone(),
        persistent: paths.persistent(),
    };
    let worker = Worker::start(format!("module-{}", config.name), kernel, done_tx)
        .map_err(|e| DaemonError::Io(format!("module {}: worker thread", config.name), e))?;
    worker.ask(KernelJob::Setup);
    let mut core = FarmModule::new(settings, Instant::now());
    if shell::starts_at_boot(&config, at_boot, &persistent, &log) {
        // A freshly built machine is stopped, so Start cannot be refused.
        let _ = core.command(Instant::now(), Command::Start);
    }
    let (view_tx, view) = watch::channel(core.view());
    let health = shell::health(&config, &view).await?;
    let (io, rx) = ModuleIo::new(ctx, config, paths, log);
    let handle = io.handle(view, None);
    let shell = FarmShell {
        io,
        core,
        heartbeats,
        view_tx,
        running: persistent.running,
        shutdown: None,
        worker,
        done,
        pending: VecDeque::new(),
        waiting: false,
        following: false,
        follow_again: false,
        asked: None,
        followed: None,
        _health: health,
    };
    Ok(handle(tokio::spawn(shell.run(rx))))
}

/// The module's filter, if it has a VIP: the interface configured or found
/// from the subnet, a table named after the module.
fn filter(config: &ModuleConfig) -> Result<Option<FarmFilter>, String> {
    let Some(vip) = &config.vip else {
        return Ok(None);
    };
    let interface = match &vip.interface {
        Some(name) => name.clone(),
        None => Vip::interface_for(vip.address)
            .map_err(|e| format!("no interface for the farm's virtual IP: {e}"))?,
    };
    let table = format!("holdfast_{}", config.name.replace('-', "_"));
    let filter = FarmFilter::new(
        &table,
        &interface,
        vip.address,
        vip.farm_mac(),
        config.load_balancing.clone(),
    )
    .map_err(|e| e.to_string())?;
    Ok(Some(filter.expiring(expiry(config))))
}

/// How long programmed buckets last without renewal: a pulse less than the
/// heartbeat timeout, so a node whose daemon died has stopped taking new
/// clients by the time its peers take its buckets.
fn expiry(config: &ModuleConfig) -> std::time::Duration {
    let hb = &config.heartbeat;
    hb.timeout.saturating_sub(hb.pulse)
}

/// The kernel side of a farm module (the VIP, its filter and buckets) and
/// its persisted state, on the module's worker thread: `nft` and netlink
/// calls wait for other processes and the kernel.
#[derive(Debug)]
struct Kernel {
    config: ModuleConfig,
    /// What the kernel side is built from (none without a VIP: cloud mode).
    filter: Option<FarmFilter>,
    /// The kernel side, while the module is not stopped.
    node: Option<FarmNode>,
    /// The last failure of the kernel side, logged once.
    error: Option<String>,
    log: ModuleLog,
    persistent: std::path::PathBuf,
}

/// What a farm module's task asks of its worker.
#[derive(Debug)]
enum KernelJob {
    /// At module start: the filter, and what a killed daemon left cleared.
    Setup,
    /// After an event: the kernel side exists while the module is not
    /// stopped, serving `buckets`.
    Follow { wanted: bool, buckets: BTreeSet<u8> },
    /// `ProgramBuckets`: serves exactly these.
    Program(BTreeSet<u8>),
    /// The renewal of the buckets served, well within their expiry.
    Renew(BTreeSet<u8>),
    /// Whether the module should run at the next daemon start.
    Persist(bool),
}

/// What the worker did, job by job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelDone {
    Ready,
    Followed,
    Programmed,
    Renewed,
    Persisted,
}

impl Job for KernelJob {
    type State = Kernel;
    type Done = KernelDone;

    fn run(self, kernel: &mut Kernel) -> KernelDone {
        match self {
            KernelJob::Setup => {
                kernel.setup();
                KernelDone::Ready
            }
            KernelJob::Follow { wanted, buckets } => {
                kernel.follow(wanted, &buckets);
                KernelDone::Followed
            }
            KernelJob::Program(buckets) => {
                kernel.program(&buckets);
                KernelDone::Programmed
            }
            KernelJob::Renew(buckets) => {
                kernel.program(&buckets);
                KernelDone::Renewed
            }
            KernelJob::Persist(running) => {
                kernel.persist(running);
                KernelDone::Persisted
            }
        }
    }
}

impl Kernel {
    fn setup(&mut self) {
        self.filter = match filter(&self.config) {
            Ok(filter) => filter,
            Err(e) => {
                self.log.write(LogLevel::Error, &e);
                None
            }
        };
        if let Some(filter) = &self.filter {
            // A daemon killed while the farm ran left them behind.
            if let Err(e) = FarmNode::clear(filter) {
                self.log.write(
                    LogLevel::Error,
                    &format!("cannot clear the farm's filter: {e}"),
                );
            }
        }
    }

    /// The kernel side exists while the module is not stopped: traffic is
    /// only ever taken by a node that runs the farm.
    fn follow(&mut self, wanted: bool, buckets: &BTreeSet<u8>) {
        let Some(filter) = &self.filter else { return };
        match (wanted, self.node.take()) {
            // Tried again after every event until it works; said once.
            (true, None) => match FarmNode::start(filter.clone()) {
                Ok(node) => {
                    self.log.write(
                        LogLevel::Info,
                        &format!("virtual IP {} set (farm)", filter_vip(&self.config)),
                    );
                    self.node = Some(node);
                    self.program(buckets);
                }
                Err(e) => self.error(format!(
                    "cannot set the farm's virtual IP {}: {e}",
                    filter_vip(&self.config)
                )),
            },
            (false, Some(node)) => match node.stop() {
                Ok(()) => self.log.write(
                    LogLevel::Info,
                    &format!("virtual IP {} removed (farm)", filter_vip(&self.config)),
                ),
                Err(e) => self.log.write(
                    LogLevel::Error,
                    &format!("removing the farm's virtual IP: {e}"),
                ),
            },
            (_, node) => self.node = node,
        }
    }

    /// Programs (and so renews) the buckets the machine says this node serves.
    fn program(&mut self, buckets: &BTreeSet<u8>) {
        let Some(node) = &mut self.node else { return };
        match node.program(buckets) {
            Ok(()) => self.error = None,
            Err(e) => self.error(format!("cannot program the farm's buckets: {e}")),
        }
    }

    /// Logs a failure of the kernel side, once until it changes or heals:
    /// what fails is retried at every renewal.
    fn error(&mut self, message: String) {
        if self.error.as_ref() != Some(&message) {
            self.log.write(LogLevel::Error, &message);
            self.error = Some(message);
        }
    }

    fn persist(&self, running: bool) {
        let persistent = Persistent {
            running,
            ..Persistent::default()
        };
        let bytes = serde_json::to_vec_pretty(&persistent).expect("plain data serialises");
        if let Err(e) = durable::replace(&self.persistent, &bytes) {
            self.log.write(
                LogLevel::Error,
                &format!(
                    "cannot persist module state to {}: {e}",
                    self.persistent.display()
                ),
            );
        }
    }
}

struct FarmShell {
    io: ModuleIo,
    core: FarmModule,
    heartbeats: Heartbeats,
    view_tx: watch::Sender<ModuleView>,
    /// Whether the module should run at the next daemon start (boot auto).
    running: bool,
    /// During daemon shutdown: `running` to persist once stopped.
    shutdown: Option<bool>,
    /// The kernel side and the persisted state.
    worker: Worker<KernelJob>,
    done: mpsc::UnboundedReceiver<KernelDone>,
    /// Actions of the state machine not carried out yet, in order.
    pending: VecDeque<FarmAction>,
    /// Buckets are being programmed: the next actions wait.
    waiting: bool,
    /// The kernel side is following the module's state; asked again after
    /// it if `follow_again`.
    following: bool,
    follow_again: bool,
    /// Whether the kernel side was asked to exist, and what it last
    /// followed.
    asked: Option<bool>,
    followed: Option<bool>,
    _health: Option<crate::health::HealthServer>,
}

impl FarmShell {
    async fn run(mut self, mut rx: mpsc::Receiver<ModuleMsg>) {
        let pulse = self.io.config.heartbeat.pulse;
        let renewal = expiry(&self.io.config) / RENEWALS_PER_EXPIRY;
        let mut next_pulse = Instant::now();
        let mut next_renewal = Instant::now() + renewal;
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            // Its own reply asks for no new follow, unless one waits.
            let mut followed = false;
            let wake = [self.core.next_deadline(), Some(next_renewal)]
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
                    if now >= next_renewal {
                        self.worker.ask(KernelJob::Renew(self.core.buckets()));
                        next_renewal = now + renewal;
                    }
                    self.core.tick(now);
                }
                received = self.heartbeats.receive(&mut buf) => match received {
                    Ok((len, from)) => self.on_datagram(len, &buf, from),
                    Err(e) => tracing::warn!("module {}: heartbeat receive: {e}", self.io.config.name),
                },
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_message(msg),
                    None => return,
                },
                Some(done) = self.done.recv() => {
                    followed = done == KernelDone::Followed;
                    match done {
                        KernelDone::Followed => {
                            self.following = false;
                            self.followed = self.asked;
                        }
                        KernelDone::Programmed => self.waiting = false,
                        KernelDone::Ready | KernelDone::Renewed | KernelDone::Persisted => {}
                    }
                }
            }
            self.execute().await;
            if !followed || self.follow_again {
                self.follow_state();
            }
            if self.carried_out() {
                self.io.publish(&self.view_tx, self.core.view());
            }
            if let Some(running) = self.shutdown {
                let idle = self.pending.is_empty() && !self.waiting && !self.following;
                if self.core.state() == State::Stop && !self.core.transient() && idle {
                    self.persist_running(running);
                    // The worker's jobs run in order: once persisted, the
                    // kernel side is gone too.
                    while let Some(done) = self.done.recv().await {
                        if done == KernelDone::Persisted {
                            break;
                        }
                    }
                    return;
                }
            }
        }
    }

    fn on_datagram(&mut self, len: usize, buf: &[u8], from: std::net::SocketAddr) {
        let Some((_, heartbeat)) = self.heartbeats.accept(&buf[..len], from) else {
            return;
        };
        // A mirror's status here means the configurations differ, which the
        // fingerprint warning has said.
        if let HeartbeatStatus::Farm(status) = heartbeat.status {
            let stamp = (heartbeat.incarnation, heartbeat.seq);
            self.core
                .heartbeat(Instant::now(), &heartbeat.sender, stamp, status);
        }
    }

    fn on_message(&mut self, msg: ModuleMsg) {
        let now = Instant::now();
        match msg {
            // `second --discard-data` is refused with `second` itself.
            ModuleMsg::Command { command, reply, .. } => {
                let result = self.core.command(now, command);
                match &result {
                    Ok(()) => self.persist_running(command != Command::Stop),
                    Err(e) => self.io.log.write(
                        LogLevel::Error,
                        &format!("action {} refused: {e}", command.as_str()),
                    ),
                }
                let _ = reply.send(result);
            }
            ModuleMsg::Print(level, message) => self.io.log.write(level, &message),
            ModuleMsg::ScriptDone(id, outcome) => self.core.script_finished(now, id, outcome),
            ModuleMsg::Shutdown => {
                self.shutdown = Some(self.running);
                let _ = self.core.command(now, Command::Stop);
            }
        }
    }

    async fn send_heartbeat(&mut self) {
        self.heartbeats
            .send(HeartbeatStatus::Farm(self.core.status()))
            .await;
    }

    /// Carries out the state machine's actions in order; programming the
    /// buckets (on the worker) holds back those after it until done.
    async fn execute(&mut self) {
        self.pending.extend(self.core.take_actions());
        while !self.waiting {
            let Some(action) = self.pending.pop_front() else {
                return;
            };
            match action {
                FarmAction::ProgramBuckets(_) => {
                    self.worker.ask(KernelJob::Program(self.core.buckets()));
                    self.waiting = true;
                }
                FarmAction::Module(Action::RunScript(run)) => self.io.run_script(run),
                FarmAction::Module(Action::Log { level, message }) => {
                    self.io.log.write(level, &message)
                }
                FarmAction::Module(Action::SendHeartbeat) => self.send_heartbeat().await,
                // Mirror-only actions; a farm machine asks for none.
                FarmAction::Module(
                    Action::Transition { .. }
                    | Action::Persist(_)
                    | Action::AcquirePrimaryResources
                    | Action::ReleasePrimaryResources
                    | Action::RequestLease { .. }
                    | Action::ReleaseLease { .. }
                    | Action::PeerFenced { .. },
                ) => {}
            }
        }
    }

    /// Lets the kernel side follow the module's state (on the worker), one
    /// follow at a time, after the actions before it.
    fn follow_state(&mut self) {
        if self.following || self.waiting {
            self.follow_again = true;
            return;
        }
        let wanted = self.wanted();
        self.worker.ask(KernelJob::Follow {
            wanted,
            buckets: self.core.buckets(),
        });
        self.asked = Some(wanted);
        self.following = true;
        self.follow_again = false;
    }

    /// The kernel side exists while the module is not stopped.
    fn wanted(&self) -> bool {
        self.core.state() != State::Stop || self.core.transient()
    }

    /// The machine's actions are carried out, the kernel side follows its
    /// state: what `holdfast state` may show.
    fn carried_out(&self) -> bool {
        self.pending.is_empty() && !self.waiting && self.followed == Some(self.wanted())
    }

    fn persist_running(&mut self, running: bool) {
        self.running = running;
        self.worker.ask(KernelJob::Persist(running));
    }
}

fn filter_vip(config: &ModuleConfig) -> String {
    config
        .vip
        .as_ref()
        .map_or_else(String::new, |v| v.address.to_string())
}
