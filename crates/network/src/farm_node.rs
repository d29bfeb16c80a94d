//! The kernel side of one farm module on this node (see DESIGN.md, "Virtual
//! IP through the kernel"): the VIP on `lo` with `arp_ignore` so the kernel
//! never answers ARP for it with the node's own MAC, an ARP responder
//! answering with the virtual MAC instead (so the segment floods the VIP's
//! traffic to every node), and the nftables tables of [`FarmFilter`]
//! keeping this node's buckets, replaced whole at every change.
//!
//! Everything acts in the network namespace of the thread that calls
//! [`FarmNode::start`] (the responder thread is created from it), and is
//! undone by [`FarmNode::stop`] or on drop.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use holdfast_config::Mac;
use socket2::Socket;

use crate::error::{NetworkError, Result};
use crate::farm::FarmFilter;
use crate::garp;
use crate::netlink::Route;
use crate::Vip;

/// Where the VIP lives on every farm node: `lo`, so the kernel accepts its
/// traffic without ever claiming it on the network.
const LOOPBACK: &str = "lo";

/// The kernel settings the farm needs, per network namespace: no ARP answer
/// for an address of another interface (the VIP on `lo`), and ARP requests
/// sourced from the interface's own address, never the VIP (a neighbour
/// would otherwise learn the VIP at this node's real MAC).
const SYSCTLS: [(&str, &str); 2] = [
    ("/proc/sys/net/ipv4/conf/all/arp_ignore", "1"),
    ("/proc/sys/net/ipv4/conf/all/arp_announce", "2"),
];

/// How often the responder looks at its stop flag.
const RESPONDER_POLL: Duration = Duration::from_millis(200);

/// One farm module's VIP, ARP responder and filter on this node.
#[derive(Debug)]
pub struct FarmNode {
    filter: FarmFilter,
    /// Every bucket owned since the start: connections may be open there.
    kept: BTreeSet<u8>,
    responder: Option<ArpResponder>,
    /// `teardown` ran: dropping the node after `stop` does it only once.
    cleared: bool,
}

impl FarmNode {
    /// Sets up the farm's VIP on this node, serving no bucket yet.
    /// On failure, whatever was done is undone.
    pub fn start(filter: FarmFilter) -> Result<FarmNode> {
        let mut node = FarmNode {
            filter,
            kept: BTreeSet::new(),
            responder: None,
            cleared: false,
        };
        for (path, value) in SYSCTLS {
            std::fs::write(path, value).map_err(|source| NetworkError::Sysctl {
                path: path.to_string(),
                source,
            })?;
        }
        node.program(&BTreeSet::new())?;
        let f = &node.filter;
        Vip::add(LOOPBACK, f.vip, 32)?;
        node.responder = Some(ArpResponder::start(&f.interface, f.vip, f.vmac)?);
        Ok(node)
    }

    /// Removes what a previous run may have left (a daemon killed while the
    /// farm ran): the filter's tables and the VIP on `lo`.
    pub fn clear(filter: &FarmFilter) -> Result<()> {
        let tables = nft(&filter.removal());
        let address = Vip::remove(LOOPBACK, filter.vip, 32);
        tables.and(address)
    }

    /// Serves exactly `owned` from now on (one nft transaction), keeping
    /// the connections open in buckets owned before; with an expiring
    /// filter, also renews the ownership.
    pub fn program(&mut self, owned: &BTreeSet<u8>) -> Result<()> {
        self.kept.extend(owned);
        nft(&self.filter.ruleset(owned, &self.kept))
    }

    /// Removes the filter, the VIP and the responder; the first failure is
    /// returned, after every step was tried.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.cleared {
            return Ok(());
        }
        self.cleared = true;
        if let Some(responder) = self.responder.take() {
            responder.stop();
        }
        FarmNode::clear(&self.filter)
    }
}

impl Drop for FarmNode {
    fn drop(&mut self) {
        // Stop the traffic even on an unwinding path; errors were reportable
        // through `stop`.
        let _ = self.teardown();
    }
}

/// Runs `script` through `nft -f -` in the caller's network namespace.
fn nft(script: &str) -> Result<()> {
    let failed = |detail: String| NetworkError::Nft { detail };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| failed(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Answers ARP requests for the VIP with the virtual MAC, from a thread.
/// The Ethernet source of answers is the interface's own MAC, so no switch
/// ever learns the virtual MAC.
#[derive(Debug)]
struct ArpResponder {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl ArpResponder {
    fn start(interface: &str, vip: Ipv4Addr, vmac: Mac) -> Result<ArpResponder> {
        let link = Route::open(&format!("answering ARP for {vip} on {interface}"))?
            .link_by_name(interface)?;
        let own = link.ethernet_mac.ok_or_else(|| NetworkError::NotEthernet {
            interface: interface.to_string(),
            addr: vip,
        })?;
        let packet_error = |operation, source| NetworkError::Packet {
            interface: interface.to_string(),
            addr: vip,
            operation,
            source,
        };
        let socket = garp::arp_socket(link.index, RESPONDER_POLL)
            .map_err(|e| packet_error("opening an ARP socket", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let index = link.index;
        let name = interface.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("arp-{vip}"))
            .spawn(move || answer(&socket, index, own, vip, vmac, &flag, &name))
            .map_err(|e| packet_error("starting the responder thread", e))?;
        Ok(ArpResponder { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn answer(
    socket: &Socket,
    index: u32,
    own: Mac,
    vip: Ipv4Addr,
    vmac: Mac,
    stop: &AtomicBool,
    interface: &str,
) {
    let mut buf = [0u8; 128];
    while !stop.load(Ordering::Relaxed) {
        // `Read` for `&Socket`: recv(2) into the buffer, no unsafe here.
        let mut reader = socket;
        let len = match reader.read(&mut buf) {
            Ok(len) => len,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) {
                    eprintln!("ARP responder for {vip} on {interface}: {e}");
                    std::thread::sleep(RESPONDER_POLL);
                }
                continue;
            }
        };
        if let Some(reply) = garp::reply_to(&buf[..len], own, vip, vmac) {
            if let Err(e) = garp::send_to(socket, index, &reply) {
                eprintln!("ARP responder for {vip} on {interface}: {e}");
            }
        }
    }
}
