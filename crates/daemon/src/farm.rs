//! What a farm module brings to the shared loop ([`crate::shell`]): its
//! state machine (`holdfast_membership::farm`), heartbeats to and from
//! every other node, `start_both` / `stop_both`, and the kernel side of the
//! VIP
//! ([`FarmNode`]): set up while the module is not stopped, its buckets
//! programmed whenever the machine asks and renewed well within their expiry
//! (a pulse short of the heartbeat timeout, so a node whose daemon died
//! stops taking clients before its peers take over), removed at stop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_config::ModuleConfig;
use holdfast_membership::{
    Action, Command, CommandError, FarmAction, FarmModule, FarmSettings, Heartbeat,
    HeartbeatStatus, LogLevel, ModuleView, Origin, Persistent, ScriptOutcome, State,
};
use holdfast_network::farm::FarmFilter;
use holdfast_network::{FarmNode, Vip};
use tokio::sync::{mpsc, watch};

use crate::heartbeats::Heartbeats;
use crate::modlog::ModuleLog;
use crate::node::NodeContext;
use crate::settings::UserSettings;
use crate::shell::{self, Answer, Kind, ModuleHandle, ModuleIo, Shell, Step};
use crate::worker::{Job, Worker};
use crate::DaemonError;

/// Buckets are renewed this many times within their expiry.
const RENEWALS_PER_EXPIRY: u32 = 4;

/// Starts the task of a farm module; `at_boot` applies its `boot` policy.
pub async fn spawn(
    ctx: Arc<NodeContext>,
    config: ModuleConfig,
    at_boot: bool,
    user: UserSettings,
) -> Result<ModuleHandle, DaemonError> {
    let settings = FarmSettings::from_config(&config, &ctx.node)
        .ok_or_else(|| DaemonError::not_a_member(&config, &ctx.node))?;
    let paths = ctx.paths.module(&config.name);
    let persistent = shell::prepare(&paths).await?;
    let log = ModuleLog::new(paths.log());
    let heartbeats = Heartbeats::bind(&ctx, &config, log.clone()).await?;
    let (done_tx, done) = mpsc::unbounded_channel();
    let kernel = Kernel {
        config: config.clone(),
        filter: None,
        node: None,
        error: None,
        log: log.clone(),
    };
    let worker = Worker::start(format!("module-{}", config.name), kernel, done_tx)
        .map_err(|e| DaemonError::Io(format!("module {}: worker thread", config.name), e))?;
    worker.ask(KernelJob::Setup);
    let mut core = FarmModule::new(settings, Instant::now());
    if shell::starts_at_boot(&config, at_boot, &persistent, &log) {
        // A freshly built machine is stopped, so Start cannot be refused.
        let _ = core.command_from(Instant::now(), Command::Start, &Origin::Boot);
    }
    let (view_tx, view) = watch::channel(core.view());
    let health = shell::health(&config, &view).await?;
    let renewal = expiry(&config) / RENEWALS_PER_EXPIRY;
    let (io, rx) = ModuleIo::new(ctx, config, paths, log);
    let handle = io.handle(view, None, user);
    let shell = Shell {
        io,
        kind: Farm {
            core,
            running: persistent.running,
            renewal,
            next_renewal: Instant::now() + renewal,
        },
        heartbeats,
        view_tx,
        worker,
        done,
        health,
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

/// The kernel side of a farm module (the VIP, its filter and buckets), on
/// the module's worker thread: `nft` and netlink calls wait for other
/// processes and the kernel.
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
}

/// What the worker did, job by job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelDone {
    Ready,
    Followed,
    Programmed,
    Renewed,
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
}

/// A farm module in the shared loop.
struct Farm {
    core: FarmModule,
    /// Whether the module should run at the next daemon start (boot auto).
    running: bool,
    /// How often the buckets served are renewed, and when next.
    renewal: Duration,
    next_renewal: Instant,
}

impl Kind for Farm {
    type Job = KernelJob;
    type Done = KernelDone;
    type Action = FarmAction;
    /// None of its own.
    type Event = std::convert::Infallible;
    /// Whether the kernel side exists.
    type Following = bool;

    fn status(&self) -> HeartbeatStatus {
        HeartbeatStatus::Farm(self.core.status())
    }

    fn view(&self) -> ModuleView {
        self.core.view()
    }

    fn next_deadline(&self) -> Option<Instant> {
        [self.core.next_deadline(), Some(self.next_renewal)]
            .into_iter()
            .flatten()
            .min()
    }

    fn tick(&mut self, now: Instant, worker: &Worker<KernelJob>) {
        if now >= self.next_renewal {
            worker.ask(KernelJob::Renew(self.core.buckets()));
            self.next_renewal = now + self.renewal;
        }
        self.core.tick(now);
    }

    fn heartbeat(&mut self, now: Instant, _network: usize, heartbeat: Heartbeat) {
        // A mirror's status here means the configurations differ, which the
        // fingerprint warning has said.
        if let HeartbeatStatus::Farm(status) = heartbeat.status {
            let stamp = (heartbeat.incarnation, heartbeat.seq);
            self.core.heartbeat(now, &heartbeat.sender, stamp, status);
        }
    }

    async fn event(&mut self) -> std::convert::Infallible {
        std::future::pending().await
    }

    fn on_event(&mut self, _: Instant, event: std::convert::Infallible, _: &ModuleIo) {
        match event {}
    }

    /// `second --discard-data` is refused with `second` itself.
    fn command(
        &mut self,
        now: Instant,
        command: Command,
        _discard_data: bool,
        _: &Worker<KernelJob>,
    ) -> (Result<(), CommandError>, Option<Persistent>) {
        let result = self.core.command(now, command);
        let persist = result.is_ok().then(|| {
            self.running = command != Command::Stop;
            self.persistent(self.running)
        });
        (result, persist)
    }

    fn script_finished(&mut self, now: Instant, id: u64, outcome: ScriptOutcome) {
        self.core.script_finished(now, id, outcome);
    }

    fn shutdown(&mut self, now: Instant) -> bool {
        let _ = self
            .core
            .command_from(now, Command::Stop, &Origin::Shutdown);
        self.running
    }

    fn persistent(&self, running: bool) -> Persistent {
        Persistent {
            running,
            ..Persistent::default()
        }
    }

    fn after_event(&mut self, _: Instant, _: &ModuleIo) {}

    fn take_actions(&mut self) -> Vec<FarmAction> {
        self.core.take_actions()
    }

    async fn carry_out<'a>(&'a mut self, action: FarmAction, io: &'a ModuleIo) -> Step<KernelJob> {
        match action {
            FarmAction::ProgramBuckets(_) => {
                let buckets = self.core.buckets();
                io.timeline
                    .work_started(format!("serve {} of 256 buckets", buckets.len()));
                Step::Wait(KernelJob::Program(buckets))
            }
            FarmAction::Module(Action::Transition { from, to, reason }) => {
                Step::Transition { from, to, reason }
            }
            FarmAction::Module(Action::RunScript(run)) => Step::Script(run),
            FarmAction::Module(Action::Log { level, message }) => Step::Log(level, message),
            FarmAction::Module(Action::SendHeartbeat) => Step::SendHeartbeat,
            // Mirror-only actions; a farm machine asks for none.
            FarmAction::Module(
                Action::Persist(_)
                | Action::AcquirePrimaryResources
                | Action::ReleasePrimaryResources
                | Action::RequestLease { .. }
                | Action::ReleaseLease { .. }
                | Action::PeerFenced { .. },
            ) => Step::Done,
        }
    }

    fn follow(&mut self) -> Option<(bool, KernelJob)> {
        let wanted = self.wanted();
        let job = KernelJob::Follow {
            wanted,
            buckets: self.core.buckets(),
        };
        Some((wanted, job))
    }

    fn following(&self) -> Option<bool> {
        Some(self.wanted())
    }

    fn answered(&mut self, _: Instant, done: KernelDone) -> Answer {
        match done {
            KernelDone::Followed => Answer::Followed,
            KernelDone::Programmed => Answer::Finished,
            KernelDone::Ready | KernelDone::Renewed => Answer::Other,
        }
    }
}

impl Farm {
    /// The kernel side exists while the module is not stopped: traffic is
    /// only ever taken by a node that runs the farm.
    fn wanted(&self) -> bool {
        self.core.state() != State::Stop || self.core.transient()
    }
}

fn filter_vip(config: &ModuleConfig) -> String {
    config
        .vip
        .as_ref()
        .map_or_else(String::new, |v| v.address.to_string())
}
