//! A module's heartbeat socket, shared by the mirror and farm shells: sends
//! this node's status to every other node on every heartbeat network, and
//! accepts only authenticated, fresh datagrams from a node of the module,
//! from that node's address on the network the datagram was signed for.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use holdfast_config::ModuleConfig;
use holdfast_membership::{Heartbeat, HeartbeatStatus, LogLevel, ReplayGuard};
use tokio::net::UdpSocket;

use crate::modlog::ModuleLog;
use crate::node::NodeContext;
use crate::refusals::{Refusal, RefusalKind};
use crate::DaemonError;

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
            fingerprint_warned: false,
        })
    }

    /// The next datagram (cancel-safe: one `recv_from`).
    pub async fn receive(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }

    /// Authenticates a datagram and places it on a heartbeat network;
    /// a refusal is logged (summarised when it repeats) and gives `None`.
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
            Err((why, reason)) => {
                self.log.refused(Refusal {
                    kind: RefusalKind {
                        what: "heartbeat",
                        why,
                    },
                    from,
                    reason,
                });
                None
            }
        }
    }

    /// The heartbeat and its network, or why it is refused: (class, reason).
    fn check(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
    ) -> Result<(usize, Heartbeat), (&'static str, String)> {
        let refused = |e: holdfast_membership::DatagramError| (e.class(), e.to_string());
        let heartbeat = Heartbeat::decode(datagram, &self.key).map_err(refused)?;
        let peer = self
            .peers
            .iter()
            .find(|(name, _)| *name == heartbeat.sender)
            .filter(|_| heartbeat.module == self.module);
        let Some((name, addresses)) = peer else {
            let names: Vec<&str> = self.peers.iter().map(|(n, _)| n.as_str()).collect();
            return Err((
                "not from a node of the module",
                format!(
                    "heartbeat of module {} from node {}, expected module {} from {}",
                    heartbeat.module,
                    heartbeat.sender,
                    self.module,
                    names.join(" or ")
                ),
            ));
        };
        let network = addresses
            .iter()
            .position(|a| *a == from.ip())
            .ok_or_else(|| {
                (
                    "not from the node's address",
                    format!("{} is not an address of {name}", from.ip()),
                )
            })?;
        if usize::from(heartbeat.network) != network {
            return Err((
                "on another network",
                format!(
                    "heartbeat signed for network {} arrived on network {network}",
                    heartbeat.network
                ),
            ));
        }
        self.replay.check(&heartbeat).map_err(refused)?;
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
