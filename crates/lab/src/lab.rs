//! [`Lab`]: building a lab and owning its clean-up.

use std::net::Ipv4Addr;
use std::ops::Deref;
use std::path::Path;

use rand::Rng;

use crate::cleanup::teardown;
use crate::error::{LabError, Result};
use crate::exec::run;
use crate::handle::{host_netns, nft_table_script, port, switch_netns, LabHandle};
use crate::registry::{self, HostInfo, LabInfo, LAB_ROOT};
use crate::{mounts, netns, CLIENT};

/// Most nodes a lab can have: node addresses `.11`..`.99` stay below the
/// client's `.100`.
pub const MAX_HOSTS: usize = 89;
/// Most heartbeat networks a lab can have.
pub const MAX_NETWORKS: usize = 2;
/// Attempts at drawing an unused run id.
const ID_ATTEMPTS: usize = 16;

/// Shape of a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabSpec {
    /// Number of nodes, named `node1`..`nodeN` (1..=[`MAX_HOSTS`]).
    pub hosts: usize,
    /// Number of heartbeat networks (1..=[`MAX_NETWORKS`]).
    pub networks: usize,
    /// Whether to add a host named `client`.
    pub client: bool,
}

/// Address of the host with last octet `host_octet` on `network`.
fn address(network: usize, host_octet: u8) -> Ipv4Addr {
    // network < MAX_NETWORKS, so the third octet fits; 198.18.0.0/15 only.
    Ipv4Addr::new(198, 18, network as u8, host_octet)
}

impl LabSpec {
    fn validate(&self) -> Result<()> {
        if !(1..=MAX_HOSTS).contains(&self.hosts) {
            return Err(LabError::InvalidSpec(format!(
                "{} hosts (1..={MAX_HOSTS})",
                self.hosts
            )));
        }
        if !(1..=MAX_NETWORKS).contains(&self.networks) {
            return Err(LabError::InvalidSpec(format!(
                "{} networks (1..={MAX_NETWORKS})",
                self.networks
            )));
        }
        Ok(())
    }

    fn host_infos(&self) -> Vec<HostInfo> {
        let host = |name: String, port_stem: String, octet: u8| HostInfo {
            name,
            port_stem,
            addresses: (0..self.networks).map(|k| address(k, octet)).collect(),
        };
        let mut hosts: Vec<HostInfo> = (1..=self.hosts)
            .map(|i| host(format!("node{i}"), format!("n{i}"), 10 + i as u8))
            .collect();
        if self.client {
            hosts.push(host(CLIENT.to_string(), "c".to_string(), 100));
        }
        hosts
    }
}

/// A lab of test hosts on this machine. A guard: dropping it (also while
/// unwinding from a panic) kills every process of the lab and removes every
/// namespace, mount and directory it made. Derefs to [`LabHandle`] for
/// commands, addresses and faults.
#[derive(Debug)]
pub struct Lab {
    handle: LabHandle,
    /// False once clean-up ran (through [`Lab::destroy`]).
    armed: bool,
}

impl Lab {
    /// Builds a lab. On failure, whatever was made is removed before the
    /// error is returned.
    pub fn create(spec: LabSpec) -> Result<Lab> {
        spec.validate()?;
        let id = reserve_id()?;
        // From here on the guard exists, so any early return cleans up.
        let lab = Lab {
            handle: LabHandle::new(LabInfo {
                id,
                owner_pid: std::process::id(),
                owner_start: registry::process_start(std::process::id()),
                networks: spec.networks,
                hosts: spec.host_infos(),
                created_unix: registry::now_unix(),
            }),
            armed: true,
        };
        lab.build()?;
        Ok(lab)
    }

    /// The handle (also reachable through deref); clone it to give other
    /// threads access without the clean-up.
    pub fn handle(&self) -> &LabHandle {
        &self.handle
    }

    /// Removes the lab now, reporting failures (Drop only logs them).
    pub fn destroy(mut self) -> Result<()> {
        self.armed = false;
        let failures = teardown(self.handle.id());
        if failures.is_empty() {
            Ok(())
        } else {
            Err(LabError::Cleanup(failures))
        }
    }

    fn build(&self) -> Result<()> {
        let info = self.handle.info();
        let id = info.id.as_str();
        let run_dir = self.handle.run_dir();
        // Registered first, so a crash mid-way leaves something clean_stale finds.
        registry::write(info)?;
        mounts::bind_private(&run_dir)?;

        let sw = switch_netns(id);
        netns::add(&sw)?;
        for host in &info.hosts {
            netns::add(&host_netns(id, &host.name))?;
        }

        // The switch: one bridge per network, one port per host and network;
        // each veth's host end is created directly in the host's namespace.
        let mut script = String::from("link set lo up\n");
        for k in 0..info.networks {
            script.push_str(&format!("link add br{k} type bridge\nlink set br{k} up\n"));
        }
        for host in &info.hosts {
            let ns = host_netns(id, &host.name);
            for k in 0..info.networks {
                let p = port(host, k);
                script.push_str(&format!(
                    "link add {p} type veth peer name eth{k} netns {ns}\nlink set {p} master br{k} up\n"
                ));
            }
        }
        run("ip", &["-n", &sw, "-batch", "-"], Some(&script))?;

        for host in &info.hosts {
            let mut script = String::from("link set lo up\n");
            for (k, addr) in host.addresses.iter().enumerate() {
                script.push_str(&format!(
                    "addr add {addr}/24 dev eth{k}\nlink set eth{k} up\n"
                ));
            }
            let ns = host_netns(id, &host.name);
            run("ip", &["-n", &ns, "-batch", "-"], Some(&script))?;
        }

        self.handle.nft(&nft_table_script(info))?;

        for host in &info.hosts {
            let host_dir = run_dir.join(&host.name);
            let ns_file = run_dir.join(format!("{}.mnt", host.name));
            let netns = netns::netns_path(&host_netns(id, &host.name));
            mounts::create_host_namespace(&ns_file, &host_dir, &netns)?;
        }
        // The hosts' binds must live only in their own namespaces.
        match mounts::leaked_host_mounts(id)?.into_iter().next() {
            Some(mount) => Err(LabError::LeakedMount {
                lab: id.to_string(),
                mount,
            }),
            None => Ok(()),
        }
    }
}

/// Draws a fresh id and creates its run directory (the atomic claim).
fn reserve_id() -> Result<String> {
    std::fs::create_dir_all(LAB_ROOT)
        .map_err(|e| LabError::io(format!("creating {LAB_ROOT}"), e))?;
    let taken = netns::list()?;
    let mut rng = rand::thread_rng();
    for _ in 0..ID_ATTEMPTS {
        let id = format!("{:06x}", rng.gen_range(0..0x100_0000u32));
        let prefix = format!("hf{id}-");
        if taken.iter().any(|ns| ns.starts_with(&prefix)) {
            continue;
        }
        match std::fs::create_dir(Path::new(LAB_ROOT).join(&id)) {
            Ok(()) => return Ok(id),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(LabError::io(format!("creating {LAB_ROOT}/{id}"), e)),
        }
    }
    Err(LabError::NoFreeId {
        attempts: ID_ATTEMPTS,
    })
}

impl Deref for Lab {
    type Target = LabHandle;

    fn deref(&self) -> &LabHandle {
        &self.handle
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for failure in teardown(self.handle.id()) {
            eprintln!("holdfast-lab {}: clean-up: {failure}", self.handle.id());
        }
    }
}
