//! The installed modules' side: their configurations, the ports they use,
//! and their peers on each heartbeat network.

use std::net::IpAddr;
use std::time::Duration;

use holdfast_checkers::{PingProbe, Probe, Verdict};
use holdfast_config::ModuleConfig;
use holdfast_daemon::Paths;
use holdfast_membership::State;
use holdfast_network::Vip;

use super::holders::{holder, Transport};
use super::{Finding, Host};

/// Echo requests sent to a peer before it is said unreachable.
const PINGS: u32 = 3;
/// How long each may take.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// The modules installed under the state directory, and a failure for each
/// one whose configuration does not load.
pub(super) fn installed(paths: &Paths) -> (Vec<ModuleConfig>, Vec<Finding>) {
    let mut modules = Vec::new();
    let mut findings = Vec::new();
    let Ok(entries) = std::fs::read_dir(paths.modules()) else {
        return (modules, findings);
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path().join("module.toml"))
        .filter(|f| f.exists())
        .collect();
    files.sort();
    for file in files {
        match holdfast_config::load_module(&file) {
            Ok(config) => modules.push(config),
            Err(e) => findings.push(Finding::fail(
                "module",
                e.to_string(),
                "holdfast module install a corrected configuration",
            )),
        }
    }
    (modules, findings)
}

/// What a module listens on: (port, transport, what for, the setting).
fn ports_of(config: &ModuleConfig) -> Vec<(u16, Transport, String, &'static str)> {
    let mut ports = vec![(
        config.heartbeat.port,
        Transport::Udp,
        "heartbeats".to_string(),
        "[heartbeat] port",
    )];
    for (index, dir) in config.replicated.iter().enumerate() {
        ports.push((
            config.replication_port(index),
            Transport::Tcp,
            format!("replication of {}", dir.dir.display()),
            "[replication] port",
        ));
    }
    if let Some(health) = &config.health {
        ports.push((
            health.port,
            Transport::Tcp,
            "health endpoint".to_string(),
            "[health] port",
        ));
    }
    ports
}

/// Each port of each installed module: free, or held by the daemon.
pub(super) fn ports(host: &Host) -> Vec<Finding> {
    let mut findings = Vec::new();
    if host.modules.is_empty() {
        findings.push(Finding::warn(
            "modules",
            "none installed: no port or peer to check",
            "holdfast module install FILE, then run holdfast doctor again",
        ));
    }
    for config in &host.modules {
        for (port, transport, what, setting) in ports_of(config) {
            let check = format!("port {port}/{}", transport.name());
            let purpose = format!("module {}'s {what}", config.name);
            findings.push(match holder(port, transport) {
                Ok(None) => Finding::ok(check, format!("free for {purpose}")),
                Ok(Some(Some(h))) if h.ours => Finding::ok(
                    check,
                    format!("held by the holdfast daemon (pid {}) for {purpose}", h.pid),
                ),
                Ok(Some(Some(h))) => Finding::fail(
                    check,
                    format!("held by {} (pid {}), needed for {purpose}", h.name, h.pid),
                    format!(
                        "stop {} or give module {} another {setting}",
                        h.name, config.name
                    ),
                ),
                Ok(Some(None)) => Finding::fail(
                    check,
                    format!("held by a process not found in /proc, needed for {purpose}"),
                    format!(
                        "free the port (ss -lnp 'sport = :{port}') or give module {} another {setting}",
                        config.name
                    ),
                ),
                Err(e) => Finding::warn(
                    check,
                    format!("cannot read the socket tables: {e}"),
                    "run holdfast doctor as root",
                ),
            });
        }
    }
    findings
}

/// Every other node of each module on each heartbeat network: this node's
/// address there is the host's, and the peer answers — its heartbeats
/// arrive (the daemon says so), or it answers ping.
pub(super) async fn peers(host: &Host) -> Vec<Finding> {
    let mut findings = Vec::new();
    let local = Vip::host_addresses();
    for config in &host.modules {
        let Some(me) = config.node(&host.node) else {
            findings.push(Finding::fail(
                format!("module {}", config.name),
                format!(
                    "this node ({}) is not one of its nodes ({})",
                    host.node,
                    config
                        .nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "set HOLDFAST_NODE=<name> in /etc/default/holdfast (and run holdfast doctor --node <name>)",
            ));
            continue;
        };
        let summary = host
            .summary(&config.name)
            .filter(|s| s.view.state != State::Stop);
        for (index, network) in config.heartbeat.networks.iter().enumerate() {
            let check = format!("module {} network {network}", config.name);
            if let (Some(IpAddr::V4(address)), Ok(local)) = (me.addresses.get(network), &local) {
                if !local.contains(address) {
                    findings.push(Finding::fail(
                        check.clone(),
                        format!("{address}, this node's address on {network}, is not an address of this host"),
                        format!("configure {address} on the interface of {network}, or correct the [[node]] address of {}", host.node),
                    ));
                    continue;
                }
            }
            for peer in config.others(&host.node) {
                let Some(address) = peer.addresses.get(network) else {
                    continue;
                };
                let heard = summary.and_then(|s| s.view.networks_up.get(index).copied());
                if heard == Some(true) {
                    findings.push(Finding::ok(
                        check.clone(),
                        format!("heartbeats arrive from {} ({address})", peer.name),
                    ));
                    continue;
                }
                let answer = match address {
                    IpAddr::V4(v4) => ping(*v4).await,
                    IpAddr::V6(_) => Err("IPv6: not checked".to_string()),
                };
                let port = config.heartbeat.port;
                findings.push(match (answer, heard) {
                    (Ok(()), Some(false)) => Finding::warn(
                        check.clone(),
                        format!("{} ({address}) answers ping, but none of its heartbeats arrive", peer.name),
                        format!("let UDP port {port} through the firewalls between the nodes; check the daemon runs on {} with the same cluster key", peer.name),
                    ),
                    (Ok(()), _) => Finding::ok(
                        check.clone(),
                        format!("{} ({address}) answers ping", peer.name),
                    ),
                    (Err(why), _) => Finding::fail(
                        check.clone(),
                        format!("{} ({address}) unreachable: {why}", peer.name),
                        format!("check the link, addresses and routes of {network}, and that firewalls let ICMP and UDP port {port} through"),
                    ),
                });
            }
        }
    }
    findings
}

/// Up to [`PINGS`] echo requests: `Ok` at the first reply.
async fn ping(address: std::net::Ipv4Addr) -> Result<(), String> {
    let mut probe =
        PingProbe::new(address, PING_TIMEOUT).map_err(|e| format!("cannot ping: {e}"))?;
    let mut last = String::new();
    for _ in 0..PINGS {
        match probe.probe().await {
            Verdict::Up => return Ok(()),
            Verdict::Down(why) => last = why,
        }
    }
    Err(last)
}
