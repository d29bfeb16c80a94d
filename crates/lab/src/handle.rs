//! [`LabHandle`]: everything one can do with a running lab short of removing
//! it — run commands on hosts, read addresses and directories, inject faults.
//! [`crate::Lab`] owns one (and the clean-up); [`crate::attach`] gives one to
//! any other process.

use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use nix::sched::{setns, CloneFlags};

use crate::error::{LabError, Result};
use crate::exec::run;
use crate::netns;
use crate::registry::{self, HostInfo, LabInfo};

/// Name of the bridge table the faults live in (in the switch namespace).
const NFT_TABLE: &str = "bridge holdfast_lab";
/// Name of the table of faults inside a host's own namespace.
const HOST_TABLE: &str = "holdfast_lab_host";

/// Name of the switch namespace of lab `id`.
pub(crate) fn switch_netns(id: &str) -> String {
    format!("hf{id}-sw")
}

/// Name of the network namespace of `host` in lab `id`.
pub(crate) fn host_netns(id: &str, host: &str) -> String {
    format!("hf{id}-{host}")
}

/// Switch-side port of a host on network `k` (names are per namespace, so
/// short ones fit the 15-character limit).
pub(crate) fn port(host: &HostInfo, network: usize) -> String {
    format!("{}e{network}", host.port_stem)
}

/// Name of the nft chain holding `host`'s loss rule.
pub(crate) fn loss_chain(host: &HostInfo) -> String {
    format!("loss_{}", host.port_stem)
}

/// Builds the bridge table: a set of blocked (in-port, out-port) pairs for
/// partitions, and one initially empty loss chain per host, jumped to for
/// frames entering or leaving any of its ports.
pub(crate) fn nft_table_script(info: &LabInfo) -> String {
    let mut chains = String::new();
    let mut jumps = String::new();
    for host in &info.hosts {
        let chain = loss_chain(host);
        chains.push_str(&format!("  chain {chain} {{ }}\n"));
        for k in 0..info.networks {
            let p = port(host, k);
            jumps.push_str(&format!(
                "    iifname \"{p}\" jump {chain}\n    oifname \"{p}\" jump {chain}\n"
            ));
        }
    }
    format!(
        "table {NFT_TABLE} {{\n  set blocked {{ type ifname . ifname; }}\n{chains}  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname . oifname @blocked drop\n{jumps}  }}\n}}\n"
    )
}

/// A running lab, by its registry entry. Cheap to clone; does not own the
/// lab's clean-up.
#[derive(Debug, Clone)]
pub struct LabHandle {
    info: LabInfo,
}

impl LabHandle {
    pub(crate) fn new(info: LabInfo) -> Self {
        Self { info }
    }

    /// The registry entry (id, owner, hosts, addresses).
    pub fn info(&self) -> &LabInfo {
        &self.info
    }

    /// Run id (6 hex digits); every name of the lab starts with `hf<id>`.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// `/run/holdfast-lab/<id>`, in the machine's view.
    pub fn run_dir(&self) -> PathBuf {
        registry::run_dir(&self.info.id)
    }

    /// Every host: `node1`..`nodeN`, then `client` if the lab has one.
    pub fn hosts(&self) -> Vec<String> {
        self.info.hosts.iter().map(|h| h.name.clone()).collect()
    }

    /// Only the nodes (`node1`..`nodeN`), without the client.
    pub fn nodes(&self) -> Vec<String> {
        self.hosts()
            .into_iter()
            .filter(|h| h.as_str() != crate::CLIENT)
            .collect()
    }

    /// Number of heartbeat networks.
    pub fn networks(&self) -> usize {
        self.info.networks
    }

    fn host(&self, name: &str) -> Result<&HostInfo> {
        self.info
            .hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| LabError::UnknownHost {
                lab: self.info.id.clone(),
                host: name.to_string(),
            })
    }

    fn check_network(&self, network: usize) -> Result<()> {
        if network < self.info.networks {
            Ok(())
        } else {
            Err(LabError::UnknownNetwork {
                lab: self.info.id.clone(),
                network,
                networks: self.info.networks,
            })
        }
    }

    /// Address of `host` on `network` (`198.18.<network>.<10+i>` for node i,
    /// `.100` for the client).
    pub fn address(&self, host: &str, network: usize) -> Result<Ipv4Addr> {
        self.check_network(network)?;
        let host = self.host(host)?;
        // A registry entry written by hand could list fewer addresses.
        host.addresses
            .get(network)
            .copied()
            .ok_or_else(|| LabError::UnknownNetwork {
                lab: self.info.id.clone(),
                network,
                networks: host.addresses.len(),
            })
    }

    /// The host's private directory in the machine's view; inside the host,
    /// `/var/lib/holdfast`, `/etc/holdfast` and `/srv` are its
    /// `var-lib-holdfast`, `etc-holdfast` and `srv` subdirectories.
    pub fn host_dir(&self, host: &str) -> Result<PathBuf> {
        Ok(self.run_dir().join(&self.host(host)?.name))
    }

    /// Name of the host's network namespace (for `ip -n`).
    pub fn netns(&self, host: &str) -> Result<String> {
        Ok(host_netns(&self.info.id, &self.host(host)?.name))
    }

    /// Name of the switch namespace holding the bridges and the fault rules.
    pub fn switch_netns(&self) -> String {
        switch_netns(&self.info.id)
    }

    /// File holding the host's persistent mount namespace.
    pub fn mount_ns_file(&self, host: &str) -> Result<PathBuf> {
        Ok(self
            .run_dir()
            .join(format!("{}.mnt", self.host(host)?.name)))
    }

    /// A command running `program` on `host`: inside its network and mount
    /// namespaces (via `nsenter`), working directory `/`. Add arguments,
    /// environment and stdio as usual. Everything it starts is killed by
    /// [`kill_host`](Self::kill_host) and by the lab's clean-up.
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Result<Command> {
        let net = netns::netns_path(&self.netns(host)?);
        let mnt = self.mount_ns_file(host)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", net.display()))
            .arg(format!("--mount={}", mnt.display()))
            .arg("--")
            .arg(program);
        Ok(cmd)
    }

    /// Runs `f` on a short-lived thread that has entered `host`'s network
    /// namespace (setns applies to the calling thread only). Sockets created
    /// in `f` stay in that namespace and can be used from any thread
    /// afterwards: this is how a test gets a listener or a client "on" a
    /// host without a helper program. Panics in `f` propagate.
    pub fn run_in_netns<T, F>(&self, host: &str, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let path = netns::netns_path(&self.netns(host)?);
        let file = File::open(&path)
            .map_err(|e| LabError::io(format!("opening {}", path.display()), e))?;
        let joined = std::thread::scope(|s| {
            s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| LabError::sys(format!("setns {}", path.display()), e))?;
                Ok(f())
            })
            .join()
        });
        match joined {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Pids of the processes running on `host` (in its network namespace).
    pub fn host_pids(&self, host: &str) -> Result<Vec<i32>> {
        netns::pids(&self.netns(host)?)
    }

    /// `kill -9` of everything running on `host`, then waits (at most 5 s)
    /// until none of it remains. Idempotent.
    pub fn kill_host(&self, host: &str) -> Result<()> {
        netns::kill_all(&self.info.id, &self.netns(host)?)
    }

    /// Cuts `host`'s link on `network` (its switch port goes down).
    pub fn link_down(&self, host: &str, network: usize) -> Result<()> {
        self.set_link(host, network, "down")
    }

    /// Restores `host`'s link on `network`.
    pub fn link_up(&self, host: &str, network: usize) -> Result<()> {
        self.set_link(host, network, "up")
    }

    fn set_link(&self, host: &str, network: usize, state: &str) -> Result<()> {
        self.check_network(network)?;
        let port = port(self.host(host)?, network);
        let sw = self.switch_netns();
        run("ip", &["-n", &sw, "link", "set", &port, state], None).map(drop)
    }

    /// Drops every frame between `a` and `b`, both directions, on every
    /// network; both still reach the other hosts. Idempotent.
    pub fn partition(&self, a: &str, b: &str) -> Result<()> {
        let elements = self.pair_elements(a, b)?;
        self.nft(&format!(
            "add element {NFT_TABLE} blocked {{ {elements} }}\n"
        ))
    }

    /// Undoes [`partition`](Self::partition). Idempotent.
    pub fn heal(&self, a: &str, b: &str) -> Result<()> {
        let elements = self.pair_elements(a, b)?;
        // nft 1.0.6 has no "destroy element": adding first makes the delete
        // valid whether or not the pair was blocked (one transaction).
        self.nft(&format!(
            "add element {NFT_TABLE} blocked {{ {elements} }}\ndelete element {NFT_TABLE} blocked {{ {elements} }}\n"
        ))
    }

    /// Set elements (in-port . out-port) blocking `a` <-> `b` on every network.
    fn pair_elements(&self, a: &str, b: &str) -> Result<String> {
        let (ha, hb) = (self.host(a)?, self.host(b)?);
        if ha.name == hb.name {
            return Err(LabError::InvalidFault(format!(
                "cannot partition {a} from itself"
            )));
        }
        let mut elements = Vec::new();
        for k in 0..self.info.networks {
            let (pa, pb) = (port(ha, k), port(hb, k));
            elements.push(format!("\"{pa}\" . \"{pb}\""));
            elements.push(format!("\"{pb}\" . \"{pa}\""));
        }
        Ok(elements.join(", "))
    }

    /// Drops `percent`% of the frames entering or leaving `host` (each frame
    /// independently, by `numgen random`), on every network. Replaces any
    /// earlier loss setting of that host; 0 clears it.
    pub fn set_loss(&self, host: &str, percent: u8) -> Result<()> {
        if percent > 100 {
            return Err(LabError::InvalidFault(format!(
                "loss of {percent}% (at most 100)"
            )));
        }
        let chain = loss_chain(self.host(host)?);
        let mut script = format!("flush chain {NFT_TABLE} {chain}\n");
        match percent {
            0 => {}
            // `mod 100` yields 0..=99, and nft refuses the always-true `< 100`.
            100 => script.push_str(&format!("add rule {NFT_TABLE} {chain} drop\n")),
            _ => script.push_str(&format!(
                "add rule {NFT_TABLE} {chain} numgen random mod 100 < {percent} drop\n"
            )),
        }
        self.nft(&script)
    }

    /// Removes `host`'s packet loss. Idempotent.
    pub fn clear_loss(&self, host: &str) -> Result<()> {
        self.set_loss(host, 0)
    }

    /// Drops the TCP segments reaching `host` on `port`, in the host's own
    /// namespace: a service there stops answering (a replication receiver
    /// that does not acknowledge) while the rest of its traffic, heartbeats
    /// included, goes on. Replaces an earlier such rule; undone by
    /// [`allow_tcp`](Self::allow_tcp).
    pub fn drop_tcp(&self, host: &str, port: u16) -> Result<()> {
        self.host_nft(
            host,
            &format!(
                "table inet {HOST_TABLE} {{\n  chain input {{\n    type filter hook input priority 0;\n    tcp dport {port} drop\n  }}\n}}\n"
            ),
        )
    }

    /// Undoes [`drop_tcp`](Self::drop_tcp). Idempotent.
    pub fn allow_tcp(&self, host: &str) -> Result<()> {
        self.host_nft(host, "")
    }

    /// Replaces `host`'s own fault table with `rules` (none when empty).
    fn host_nft(&self, host: &str, rules: &str) -> Result<()> {
        let ns = self.netns(host)?;
        // Declaring the table first makes the delete valid in any case.
        let script = format!("table inet {HOST_TABLE}\ndelete table inet {HOST_TABLE}\n{rules}");
        run(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&script),
        )
        .map(drop)
    }

    /// Current fault rules (`nft list table`), for logs and diagnostics.
    pub fn fault_rules(&self) -> Result<String> {
        let sw = self.switch_netns();
        let args = [
            "netns",
            "exec",
            &sw,
            "nft",
            "list",
            "table",
            "bridge",
            "holdfast_lab",
        ];
        run("ip", &args, None)
    }

    /// Applies an nft script atomically inside the switch namespace.
    pub(crate) fn nft(&self, script: &str) -> Result<()> {
        let sw = self.switch_netns();
        run(
            "ip",
            &["netns", "exec", &sw, "nft", "-f", "-"],
            Some(script),
        )
        .map(drop)
    }
}
