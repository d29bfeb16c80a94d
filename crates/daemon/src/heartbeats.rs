//! A module's heartbeat socket, shared by the mirror and farm shells: sends
//! this node's status to every other node on every heartbeat network, and
//! accepts only authenticated, fresh datagrams from a node of the module,
//! from that node's address on the network the datagram was signed for.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use holdfast_config::ModuleConfig;
use holdfast_membership::{Heartbeat, HeartbeatStatus, LogLevel, ReplayGuard};
use tokio::net::UdpSocket;

use crate::modlog::ModuleLog;
use crate::node::NodeContext;
use crate::DaemonError;

/// Rejected datagrams are logged, but at most once per interval, so a flood
/// of forgeries cannot fill the disk.
const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Logs rejected datagrams, rate-limited (see `REJECTION_LOG_INTERVAL`).
#[derive(Debug, Default)]
pub struct Rejections {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl Rejections {
    /// Logs that a `what` from `from` was rejected for `reason`, unless one
    /// was logged within the interval (then it is counted for the next).
    pub fn report(&mut self, log: &ModuleLog, what: &str, from: SocketAddr, reason: String) {
        let now = Instant::now();
        let due = self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= REJECTION_LOG_INTERVAL);
        if !due {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        let more = if suppressed > 0 {
            format!(" ({suppressed} more rejected since the last report)")
        } else {
            String::new()
        };
        log.write(
            LogLevel::Error,
            &format!("rejected {what} from {from}: {reason}{more}"),
        );
        self.last_logged = Some(now);
    }
}

#[derive(Debug)]
pub struct Heartbeats {
    module: String,
    node: String,
    incarnation: u64,
    key: holdfast_key::ClusterKey,
    port: u16,
    socket: UdpSocket,
    /// Every other node with its address on each heartbeat network, in
    /// network order.
    peers: Vec<(String, Vec<IpAddr>)>,
    fingerprint: [u8; 8],
    seq: u64,
    replay: ReplayGuard,
    log: ModuleLog,
    rejected: Rejections,
    fingerprint_warned: bool,
}

impl Heartbeats {
    pub async fn bind(
        ctx: &NodeContext,
        config: &ModuleConfig,
        log: ModuleLog,
    ) -> Result<Self, DaemonError> {
        let port = config.heartbeat.port;
        let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
            .await
            .map_err(|e| DaemonError::HeartbeatPort {
                module: config.name.clone(),
                port,
                source: e,
            })?;
        let peers = config
            .others(&ctx.node)
            .map(|peer| {
                let addresses = config
                    .heartbeat
                    .networks
                    .iter()
                    .filter_map(|net| peer.addresses.get(net).copied())
                    .collect();
                (peer.name.clone(), addresses)
            })
            .collect();
        Ok(Self {
            module: config.name.clone(),
            node: ctx.node.clone(),
            incarnation: ctx.incarnation,
            key: ctx.key.clone(),
            port,
            socket,
            peers,
            fingerprint: config.fingerprint()[..8]
                .try_into()
                .expect("8 bytes of a 32-byte hash"),
            seq: counter_start(),
            replay: ReplayGuard::default(),
            log,
            rejected: Rejections::default(),
            fingerprint_warned: false,
        })
    }

    /// The next datagram (cancel-safe: one `recv_from`).
    pub async fn receive(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }

    /// Authenticates a datagram and places it on a heartbeat network;
    /// a rejection is logged (rate-limited) and gives `None`.
    pub fn accept(&mut self, datagram: &[u8], from: SocketAddr) -> Option<(usize, Heartbeat)> {
        match self.check(datagram, from) {
            Ok((network, heartbeat)) => {
                if heartbeat.config_fingerprint != self.fingerprint && !self.fingerprint_warned {
                    self.fingerprint_warned = true;
                    self.log.write(
                        LogLevel::Error,
                        &format!("the configuration of module {} differs on {}: install the same configuration on every node", self.module, heartbeat.sender),
                    );
                }
                Some((network, heartbeat))
            }
            Err(reason) => {
                self.rejected.report(&self.log, "heartbeat", from, reason);
                None
            }
        }
    }

    fn check(&mut self, datagram: &[u8], from: SocketAddr) -> Result<(usize, Heartbeat), String> {
        let heartbeat = Heartbeat::decode(datagram, &self.key).map_err(|e| e.to_string())?;
        let peer = self
            .peers
            .iter()
            .find(|(name, _)| *name == heartbeat.sender)
            .filter(|_| heartbeat.module == self.module);
        let Some((name, addresses)) = peer else {
            let names: Vec<&str> = self.peers.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "heartbeat of module {} from node {}, expected module {} from {}",
                heartbeat.module,
                heartbeat.sender,
                self.module,
                names.join(" or ")
            ));
        };
        let network = addresses
            .iter()
            .position(|a| *a == from.ip())
            .ok_or_else(|| format!("{} is not an address of {name}", from.ip()))?;
        if usize::from(heartbeat.network) != network {
            return Err(format!(
                "heartbeat signed for network {} arrived on network {network}",
                heartbeat.network
            ));
        }
        self.replay.check(&heartbeat).map_err(|e| e.to_string())?;
        Ok((network, heartbeat))
    }

    /// Sends `status` to every other node on every network.
    pub async fn send(&mut self, status: HeartbeatStatus) {
        self.seq += 1;
        let mut heartbeat = Heartbeat {
            module: self.module.clone(),
            sender: self.node.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
            network: 0,
            config_fingerprint: self.fingerprint,
            status,
        };
        for (_, addresses) in &self.peers {
            for (network, address) in addresses.iter().enumerate() {
                heartbeat.network = network as u8;
                let bytes = heartbeat.encode(&self.key);
                // A network that is down fails here; the others carry on.
                if let Err(e) = self
                    .socket
                    .send_to(&bytes, SocketAddr::new(*address, self.port))
                    .await
                {
                    tracing::debug!("module {}: heartbeat to {address}: {e}", self.module);
                }
            }
        }
    }
}

/// Where a module's numbering of its datagrams (heartbeats, lease
/// requests) starts: the monotonic clock's microseconds (since boot).
/// Receivers take from each module and node only datagrams newer than the
/// last, by `(incarnation, number)`; a module installed again in the same
/// daemon incarnation (a rolling change of configuration) must go on from
/// above its last number, not from 1 — it never sends more than one a
/// microsecond.
pub(crate) fn counter_start() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there on Linux");
    now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000
}
