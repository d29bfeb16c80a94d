//! What a mirror module brings to the shared loop ([`crate::shell`]): its
//! state machine (`holdfast_membership::mirror`), its checkers and recovery
//! policy, its witness, and its primary resources (replicated directories
//! and virtual IP, on its worker: `resources`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_checkers::{CheckerEvent, ProbeContext, ProcessScope};
use holdfast_config::ModuleConfig;
use holdfast_membership::datagram::MAX_DATAGRAM;
use holdfast_membership::lease::{LeaseReply, LeaseRequest, PeerCopy};
use holdfast_membership::recovery::RecoveryPolicy;
use holdfast_membership::{
    Action, Command, CommandError, Heartbeat, HeartbeatStatus, MirrorModule, MirrorSettings,
    ModuleView, Origin, Persistent, ScriptOutcome, State,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::heartbeats::Heartbeats;
use crate::modlog::ModuleLog;
use crate::node::NodeContext;
use crate::refusals::{Refusal, RefusalKind};
use crate::replication::{PeerFence, PeerSecond};
use crate::resources::{ResourceDone, ResourceJob, Resources};
use crate::settings::UserSettings;
use crate::shell::{self, Answer, Kind, ModuleHandle, ModuleIo, Shell, Step};
use crate::supervision::Supervisor;
use crate::worker::Worker;
use crate::DaemonError;

/// Starts the task of a mirror module; `at_boot` applies its `boot` policy.
pub async fn spawn(
    ctx: Arc<NodeContext>,
    config: ModuleConfig,
    at_boot: bool,
    user: UserSettings,
) -> Result<ModuleHandle, DaemonError> {
    let mut settings = MirrorSettings::from_config(&config, &ctx.node)
        .ok_or_else(|| DaemonError::not_a_member(&config, &ctx.node))?;
    settings.incarnation = ctx.incarnation;
    let paths = ctx.paths.module(&config.name);
    let persistent = shell::prepare(&paths).await?;
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
            buf: vec![0u8; MAX_DATAGRAM + 1],
        }),
        None => None,
    };
    let start = shell::starts_at_boot(&config, at_boot, &persistent, &log);
    let mut core = MirrorModule::new(settings, persistent, Instant::now());
    if start {
        // A freshly built machine is stopped, so Start cannot be refused.
        let _ = core.command_from(Instant::now(), Command::Start, &Origin::Boot);
    }
    let (view_tx, view) = watch::channel(core.view());
    let health = shell::health(&config, &view).await?;
    let (checker_tx, checkers) = mpsc::channel(64);
    let probes = ProbeContext {
        bin_dir: paths.bin(),
        script_env: shell::module_env(&ctx, &config, &paths)
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
        user,
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
    let synced = replication.as_ref().map_or_else(Vec::new, |r| r.synced());
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let worker = Worker::start(
        format!("module-{}", config.name),
        Resources::new(&config, replication, log.clone()),
        done_tx,
    )
    .map_err(|e| DaemonError::Io(format!("module {}: worker thread", config.name), e))?;
    if peer_second.is_some() {
        // What the records say: a copy left incomplete is never promoted.
        worker.ask(ResourceJob::Prepare);
        if let Some(ResourceDone::Prepared(uptodate)) = done.recv().await {
            core.data_state(Instant::now(), uptodate);
        }
    }
    let (io, rx) = ModuleIo::new(ctx, config, paths, log);
    let handle = io.handle(view, replication_status, user);
    let shell = Shell {
        io,
        kind: Mirror {
            core,
            supervisor,
            checkers,
            fence,
            peer_second,
            synced,
            settled: State::Stop,
            witness,
        },
        heartbeats,
        view_tx,
        worker,
        done,
        health,
    };
    Ok(handle(tokio::spawn(shell.run(rx))))
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
    /// The last datagram received.
    buf: Vec<u8>,
}

/// A mirror module in the shared loop.
struct Mirror {
    core: MirrorModule,
    /// The module's checkers and recovery policy.
    supervisor: Supervisor,
    /// What its checkers find.
    checkers: mpsc::Receiver<CheckerEvent>,
    /// What replication says of the peer's copy (for the witness).
    fence: Option<Arc<PeerFence>>,
    /// Tells replication's connectors whether the peer is SECOND (`None`:
    /// nothing replicated).
    peer_second: Option<Arc<PeerSecond>>,
    /// Set by each directory's receiver when a resynchronisation of this
    /// copy completes; reset here as the node becomes SECOND.
    synced: Vec<Arc<AtomicBool>>,
    /// The state at the last `settle`.
    settled: State,
    /// The split-brain witness, if configured.
    witness: Option<WitnessLink>,
}

/// What else a mirror module waits for.
enum MirrorEvent {
    /// Replication says something new of the peer's copy.
    PeerData,
    /// A datagram from the witness: its length and sender.
    Witness(std::io::Result<(usize, SocketAddr)>),
    Checker(CheckerEvent),
}

impl Kind for Mirror {
    type Job = ResourceJob;
    type Done = ResourceDone;
    type Action = Action;
    type Event = MirrorEvent;
    type Following = State;

    fn status(&self) -> HeartbeatStatus {
        HeartbeatStatus::Mirror(self.core.status())
    }

    fn view(&self) -> ModuleView {
        self.core.view()
    }

    fn next_deadline(&self) -> Option<Instant> {
        [self.core.next_deadline(), self.supervisor.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    fn tick(&mut self, now: Instant, _: &Worker<ResourceJob>) {
        self.core.tick(now);
    }

    fn heartbeat(&mut self, now: Instant, network: usize, heartbeat: Heartbeat) {
        // A farm's status here means the configurations differ, which the
        // fingerprint warning has said.
        if let HeartbeatStatus::Mirror(status) = heartbeat.status {
            let stamp = (heartbeat.incarnation, heartbeat.seq);
            self.core.heartbeat(now, network, stamp, status);
        }
    }

    async fn event(&mut self) -> MirrorEvent {
        let Mirror {
            fence,
            witness,
            checkers,
            ..
        } = self;
        tokio::select! {
            () = peer_fence_changed(fence) => MirrorEvent::PeerData,
            received = recv_witness(witness) => MirrorEvent::Witness(received),
            Some(event) = checkers.recv() => MirrorEvent::Checker(event),
        }
    }

    fn on_event(&mut self, now: Instant, event: MirrorEvent, io: &ModuleIo) {
        match event {
            MirrorEvent::PeerData => {
                if let Some(fence) = &self.fence {
                    self.core.peer_data(now, fence.peer_data());
                }
            }
            MirrorEvent::Witness(Ok((len, from))) => self.on_lease_reply(now, len, from, io),
            MirrorEvent::Witness(Err(e)) => {
                tracing::warn!("module {}: witness receive: {e}", io.config.name)
            }
            MirrorEvent::Checker(event) => {
                let verdict = match &event.verdict {
                    holdfast_checkers::Verdict::Up => "up".to_string(),
                    holdfast_checkers::Verdict::Down(why) => format!("down: {why}"),
                };
                io.timeline.verdict(&event.checker, &verdict);
                self.supervisor
                    .on_event(&mut self.core, &io.log, now, event)
            }
        }
    }

    fn command(
        &mut self,
        now: Instant,
        command: Command,
        discard_data: bool,
        worker: &Worker<ResourceJob>,
    ) -> (Result<(), CommandError>, Option<Persistent>) {
        let result = self.core.command(now, command);
        if result.is_ok() {
            self.supervisor.admin_command(&mut self.core, now);
            if discard_data {
                // Accepted only from STOP: nothing is mounted or received
                // yet, the receivers start after this (the worker's jobs
                // run in order).
                worker.ask(ResourceJob::DiscardData);
            }
        }
        // The machine asks to persist what it must.
        (result, None)
    }

    fn script_finished(&mut self, now: Instant, id: u64, outcome: ScriptOutcome) {
        self.core.script_finished(now, id, outcome);
    }

    fn apply_settings(&mut self, now: Instant, settings: UserSettings, io: &ModuleIo) {
        if let Some(failover) = settings.failover {
            self.core.set_failover(now, failover);
        }
        self.supervisor
            .set_settings(settings, &mut self.core, &io.log, now);
    }

    fn shutdown(&mut self, now: Instant) -> bool {
        let running = self.core.persistent().running;
        let _ = self
            .core
            .command_from(now, Command::Stop, &Origin::Shutdown);
        running
    }

    fn persistent(&self, running: bool) -> Persistent {
        Persistent {
            running,
            ..self.core.persistent().clone()
        }
    }

    fn settle(&mut self) {
        let state = self.core.state();
        if state == State::Second && self.settled != State::Second {
            // Not current until a primary resynchronises this copy. Reset
            // before any heartbeat says SECOND: a primary that hears it
            // may connect and complete a resynchronisation before the
            // worker follows the new state, and must not be undone.
            for flag in &self.synced {
                flag.store(false, Ordering::SeqCst);
            }
        }
        self.settled = state;
        if let Some(peer_second) = &self.peer_second {
            // At once: a connector must learn that its secondary is lost
            // while what replication does next may still wait for a disk.
            peer_second.set(self.core.peer_state() == Some(State::Second));
        }
    }

    fn after_event(&mut self, now: Instant, io: &ModuleIo) {
        self.supervisor.follow(&mut self.core, &io.log, now);
    }

    fn take_actions(&mut self) -> Vec<Action> {
        self.core.take_actions()
    }

    async fn carry_out<'a>(&'a mut self, action: Action, io: &'a ModuleIo) -> Step<ResourceJob> {
        match action {
            Action::RunScript(run) => Step::Script(run),
            Action::Log { level, message } => Step::Log(level, message),
            Action::Transition { from, to, reason } => Step::Transition { from, to, reason },
            Action::SendHeartbeat => Step::SendHeartbeat,
            Action::AcquirePrimaryResources => {
                io.timeline
                    .work_started(resources_named("acquire", &io.config));
                Step::Wait(ResourceJob::Acquire)
            }
            Action::ReleasePrimaryResources => {
                io.timeline
                    .work_started(resources_named("release", &io.config));
                Step::Wait(ResourceJob::Release)
            }
            Action::RequestLease {
                id,
                duration,
                peer_copy,
            } => {
                self.ask_witness(io, id, duration, peer_copy).await;
                Step::Done
            }
            Action::ReleaseLease { id } => {
                self.ask_witness(io, id, Duration::ZERO, PeerCopy::Unknown)
                    .await;
                Step::Done
            }
            Action::PeerFenced { epoch } => {
                if let Some(fence) = &self.fence {
                    fence.fenced(epoch);
                }
                Step::Done
            }
            Action::Persist(persistent) => Step::Persist(persistent),
        }
    }

    fn follow(&mut self) -> Option<(State, ResourceJob)> {
        self.peer_second.as_ref()?;
        let state = self.core.state();
        Some((state, ResourceJob::Follow(state)))
    }

    fn following(&self) -> Option<State> {
        self.peer_second.as_ref().map(|_| self.core.state())
    }

    fn answered(&mut self, now: Instant, done: ResourceDone) -> Answer {
        match done {
            ResourceDone::Followed(data_state) => {
                if let Some(uptodate) = data_state {
                    self.core.data_state(now, uptodate);
                }
                Answer::Followed
            }
            ResourceDone::Acquired | ResourceDone::Released => Answer::Finished,
            ResourceDone::Prepared(_) | ResourceDone::DataDiscarded => Answer::Other,
        }
    }
}

impl Mirror {
    fn on_lease_reply(&mut self, now: Instant, len: usize, from: SocketAddr, io: &ModuleIo) {
        let Some(witness) = &mut self.witness else {
            return;
        };
        match accept_lease_reply(witness, &witness.buf[..len], from, io) {
            Ok(reply) => self.core.lease_reply(now, reply.id, reply.decision),
            Err((why, reason)) => io.log.refused(Refusal {
                kind: RefusalKind {
                    what: "witness reply",
                    why,
                },
                from,
                reason,
            }),
        }
    }

    /// Sends a lease request (`duration` zero: a release) to every address
    /// of the witness.
    async fn ask_witness(&self, io: &ModuleIo, id: u64, duration: Duration, peer_copy: PeerCopy) {
        let Some(witness) = &self.witness else { return };
        let bytes = LeaseRequest {
            module: io.config.name.clone(),
            node: io.ctx.node.clone(),
            incarnation: io.ctx.incarnation,
            id: witness.first_id + id,
            duration_ms: duration.as_millis() as u64,
            peer_copy,
        }
        .encode(&io.ctx.key);
        for address in &witness.addresses {
            // A network that is down fails here; the others carry on.
            if let Err(e) = witness.socket.send_to(&bytes, address).await {
                tracing::debug!("module {}: lease request to {address}: {e}", io.config.name);
            }
        }
    }
}

/// The reply, its id the module's own (see [`WitnessLink::first_id`]), or
/// why it is refused: (class, reason).
fn accept_lease_reply(
    witness: &WitnessLink,
    datagram: &[u8],
    from: SocketAddr,
    io: &ModuleIo,
) -> Result<LeaseReply, (&'static str, String)> {
    if !witness.addresses.contains(&from) {
        return Err((
            "not from the witness's address",
            format!("{from} is not an address of the witness"),
        ));
    }
    let mut reply =
        LeaseReply::decode(datagram, &io.ctx.key).map_err(|e| (e.class(), e.to_string()))?;
    let stale = "not for this start of the module";
    if reply.module != io.config.name
        || reply.node != io.ctx.node
        || reply.incarnation != io.ctx.incarnation
    {
        return Err((
            stale,
            format!(
                "reply for module {} node {} incarnation {}, not this one",
                reply.module, reply.node, reply.incarnation
            ),
        ));
    }
    reply.id = reply.id.checked_sub(witness.first_id).ok_or_else(|| {
        (
            stale,
            format!(
                "reply to request {}, of an earlier start of the module",
                reply.id
            ),
        )
    })?;
    Ok(reply)
}

/// Resolves when replication may say something new of the peer's copy;
/// never, without replication.
async fn peer_fence_changed(fence: &Option<Arc<PeerFence>>) {
    match fence {
        Some(f) => f.changed().await,
        None => std::future::pending().await,
    }
}

/// The next datagram from the witness (kept in its buffer); never, without
/// one.
async fn recv_witness(witness: &mut Option<WitnessLink>) -> std::io::Result<(usize, SocketAddr)> {
    match witness {
        Some(w) => w.socket.recv_from(&mut w.buf).await,
        None => std::future::pending().await,
    }
}

/// The primary resources `verb`ed, in a sentence for the timeline.
fn resources_named(verb: &str, config: &ModuleConfig) -> String {
    let mut what = Vec::new();
    if !config.replicated.is_empty() {
        what.push(format!(
            "{} replicated directories",
            config.replicated.len()
        ));
    }
    if let Some(vip) = &config.vip {
        what.push(format!("virtual IP {}", vip.address));
    }
    match what.is_empty() {
        true => format!("{verb} primary resources (none configured)"),
        false => format!("{verb} primary resources: {}", what.join(", ")),
    }
}
