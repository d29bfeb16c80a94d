//! The I/O shell around one farm module's state machine
//! (`holdfast_membership::farm`): heartbeats to and from every other node,
//! `start_both` / `stop_both`, and the kernel side of the VIP
//! ([`FarmNode`]): set up while the module is not stopped, its buckets
//! programmed whenever the machine asks and renewed well within their expiry
//! (a pulse short of the heartbeat timeout, so a node whose daemon died
//! stops taking clients before its peers take over), removed at stop.

use std::sync::Arc;
use std::time::Instant;

use holdfast_config::ModuleConfig;
use holdfast_membership::heartbeat::MAX_DATAGRAM;
use holdfast_membership::{
    Action, Command, FarmAction, FarmModule, FarmSettings, LogLevel, ModuleStatus, ModuleView,
    Persistent, State,
};
use holdfast_network::farm::FarmFilter;
use holdfast_network::{FarmNode, Vip};
use tokio::sync::{mpsc, watch};

use crate::heartbeats::Heartbeats;
use crate::modlog::ModuleLog;
use crate::shell::{self, ModuleHandle, ModuleIo, ModuleMsg, NodeContext};
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
    let filter = match filter(&config) {
        Ok(filter) => filter,
        Err(e) => {
            log.write(LogLevel::Error, &e);
            None
        }
    };
    if let Some(filter) = &filter {
        // A daemon killed while the farm ran left them behind.
        if let Err(e) = FarmNode::clear(filter) {
            log.write(
                LogLevel::Error,
                &format!("cannot clear the farm's filter: {e}"),
            );
        }
    }
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
        filter,
        node: None,
        kernel_error: None,
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

struct FarmShell {
    io: ModuleIo,
    core: FarmModule,
    heartbeats: Heartbeats,
    view_tx: watch::Sender<ModuleView>,
    /// Whether the module should run at the next daemon start (boot auto).
    running: bool,
    /// During daemon shutdown: `running` to persist once stopped.
    shutdown: Option<bool>,
    /// What the kernel side is built from (none without a VIP: cloud mode).
    filter: Option<FarmFilter>,
    /// The kernel side, while the module is not stopped.
    node: Option<FarmNode>,
    /// The last failure of the kernel side, logged once.
    kernel_error: Option<String>,
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
                        self.program();
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
            }
            self.execute().await;
            self.follow_state();
            self.io.publish(&self.view_tx, self.core.view());
            if let Some(running) = self.shutdown {
                if self.core.state() == State::Stop && !self.core.transient() {
                    self.persist_running(running);
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
        if let ModuleStatus::Farm(status) = heartbeat.status {
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
            .send(ModuleStatus::Farm(self.core.status()))
            .await;
    }

    async fn execute(&mut self) {
        for action in self.core.take_actions() {
            match action {
                FarmAction::ProgramBuckets(_) => self.program(),
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

    /// The kernel side exists while the module is not stopped: traffic is
    /// only ever taken by a node that runs the farm.
    fn follow_state(&mut self) {
        let Some(filter) = &self.filter else { return };
        let wanted = self.core.state() != State::Stop || self.core.transient();
        match (wanted, self.node.take()) {
            // Tried again after every event until it works; said once.
            (true, None) => match FarmNode::start(filter.clone()) {
                Ok(node) => {
                    self.io.log.write(
                        LogLevel::Info,
                        &format!("virtual IP {} set (farm)", filter_vip(&self.io.config)),
                    );
                    self.node = Some(node);
                    self.program();
                }
                Err(e) => self.kernel_error(format!(
                    "cannot set the farm's virtual IP {}: {e}",
                    filter_vip(&self.io.config)
                )),
            },
            (false, Some(node)) => match node.stop() {
                Ok(()) => self.io.log.write(
                    LogLevel::Info,
                    &format!("virtual IP {} removed (farm)", filter_vip(&self.io.config)),
                ),
                Err(e) => self.io.log.write(
                    LogLevel::Error,
                    &format!("removing the farm's virtual IP: {e}"),
                ),
            },
            (_, node) => self.node = node,
        }
    }

    /// Programs (and so renews) the buckets the machine says this node serves.
    fn program(&mut self) {
        let Some(node) = &mut self.node else { return };
        match node.program(&self.core.buckets()) {
            Ok(()) => self.kernel_error = None,
            Err(e) => self.kernel_error(format!("cannot program the farm's buckets: {e}")),
        }
    }

    /// Logs a failure of the kernel side, once until it changes or heals:
    /// what fails is retried at every renewal.
    fn kernel_error(&mut self, message: String) {
        if self.kernel_error.as_ref() != Some(&message) {
            self.io.log.write(LogLevel::Error, &message);
            self.kernel_error = Some(message);
        }
    }

    fn persist_running(&mut self, running: bool) {
        self.running = running;
        self.io.persist(&Persistent {
            running,
            ..Persistent::default()
        });
    }
}

fn filter_vip(config: &ModuleConfig) -> String {
    config
        .vip
        .as_ref()
        .map_or_else(String::new, |v| v.address.to_string())
}
