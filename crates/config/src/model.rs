//! The module configuration model: what every parser (native TOML, SafeKit
//! `userconfig.xml` import) produces and what the daemon consumes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::checker::CheckerConfig;

/// One module: the unit of high availability for one application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleConfig {
    /// Module name (`[a-zA-Z0-9_-]{1,32}`), unique per node.
    pub name: String,
    pub mode: Mode,
    /// SafeKit's module id (`[module] id`): the default heartbeat and
    /// replication ports derive from it as SafeKit's do ([`ModuleId`]).
    pub id: Option<u16>,
    /// When the primary fails or stops, does the secondary take over by itself?
    pub failover: bool,
    /// Which node is primary when both start (SafeKit `defaultprim`).
    pub default_primary: DefaultPrimary,
    /// With `DefaultPrimary::Node`, swap back to it automatically once it is
    /// SECOND again after a failover.
    pub swap_back: bool,
    /// Start at daemon start (boot): on, off, or auto (if it was running before).
    pub boot: Boot,
    /// Local recovery limit (used by checkers): actions within `loop_interval`.
    pub maxloop: u32,
    pub loop_interval: Duration,
    pub heartbeat: HeartbeatConfig,
    /// The nodes of the module, in configuration order (2 for a mirror).
    pub nodes: Vec<NodeConfig>,
    pub scripts: ScriptsConfig,
    /// Virtual IP held by the primary (none in cloud deployments).
    pub vip: Option<VipConfig>,
    /// Cloud mode: an HTTP health endpoint for a cloud load balancer's probe.
    pub health: Option<HealthConfig>,
    /// Failure detectors (process, TCP, ping, interface, custom, module).
    pub checkers: Vec<CheckerConfig>,
    /// How replicated directories are replicated (`[replication]`).
    pub replication: ReplicationConfig,
    /// Directories kept synchronously mirrored between primary and
    /// secondary (`[[replicated]]`), absolute paths, identical on both nodes.
    pub replicated: Vec<ReplicatedDir>,
    /// Farm modules: how traffic to the virtual IP is split among the UP
    /// nodes, per protocol and port (`[[load_balancing]]`). Traffic that no
    /// rule matches is split by client IP.
    pub load_balancing: Vec<Rule>,
    /// Split-brain protection of a mirror module by a witness (`[witness]`).
    pub witness: Option<WitnessConfig>,
    /// The simpler tie-breaker: addresses to ping when heartbeats are lost
    /// (`[splitbrain]`, SafeKit's split-brain checker).
    pub splitbrain: Option<SplitBrainConfig>,
}

/// Transport protocol of a load-balancing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// What the bucket of a packet is computed from (SafeKit's `filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// The client's IP address: a client always reaches the same node
    /// (SafeKit `on_addr`).
    ClientIp,
    /// The client's IP address and source port: each connection on its own
    /// (SafeKit `on_port`).
    ClientIpPort,
}

/// A load-balancing rule: traffic to the VIP with this protocol (and
/// destination port, or any) is split by `balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination port on the VIP; `None` for every port.
    pub port: Option<u16>,
    /// Hash input.
    pub balance: Balance,
}

/// An Ethernet (MAC) address.
pub type Mac = [u8; 6];

/// `aa:bb:cc:dd:ee:ff`, as nft writes MAC addresses.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `[replication]`: the secondary's listening port, when it acknowledges,
/// and what the primary does when a live secondary does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// TCP port of the replication stream; `None`: the heartbeat port + 1.
    /// With several replicated directories, directory `i` uses port + `i`.
    pub port: Option<u16>,
    pub ack: AckPolicy,
    /// A change the secondary has not acknowledged after this long (or
    /// refused: disk full) is a failure of the secondary.
    pub ack_timeout: Duration,
    pub on_secondary_failure: OnSecondaryFailure,
    pub durability: DurabilityPolicy,
    /// Bytes of data written and not yet acknowledged by the secondary
    /// beyond which calls that change something wait.
    pub max_unacked_bytes: u64,
    /// Age of the oldest change not yet acknowledged beyond which calls
    /// that change something wait.
    pub max_unacked_age: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            port: None,
            ack: AckPolicy::default(),
            ack_timeout: Duration::from_secs(5),
            on_secondary_failure: OnSecondaryFailure::default(),
            durability: DurabilityPolicy::default(),
            // Provisional, as holdfast_replication::TailLimits::default().
            max_unacked_bytes: 64 << 20,
            max_unacked_age: Duration::from_secs(1),
        }
    }
}

/// Which calls on a replicated directory wait for the secondary's
/// acknowledgement (invariant 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DurabilityPolicy {
    /// Those that promise durability: fsync, fdatasync, writes on
    /// O_SYNC/O_DSYNC descriptors, directory fsync, and the close of a
    /// file written through that descriptor (NFS's close-to-open).
    #[default]
    SyncCalls,
    /// Every call that changes something (strict, synchronous).
    EveryCall,
}

/// What the primary does when its secondary, still alive (heartbeats),
/// fails to acknowledge: too slow, disk full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnSecondaryFailure {
    /// Go on without it, tracking changes (as ALONE), and resynchronise it
    /// when it can: the application is never held up by the secondary.
    #[default]
    Degrade,
    /// Keep synchronous semantics: changes wait until the secondary has
    /// them (acknowledged, or resynchronised) or is declared lost by the
    /// heartbeat.
    Block,
}

/// When the secondary acknowledges a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckPolicy {
    /// On receipt, before applying (default).
    #[default]
    Receipt,
    /// After applying and syncing to disk (SafeKit `sync`).
    Durable,
}

/// One `[[replicated]]` directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicatedDir {
    pub dir: PathBuf,
    /// Paths relative to `dir` not replicated, each with everything under
    /// it (SafeKit `<notreplicated path>`).
    pub exclude: Vec<PathBuf>,
    /// Regular expressions: entries whose name matches one are not
    /// replicated, nor anything under them (SafeKit `<notreplicated
    /// regexpath>`).
    pub exclude_names: Vec<String>,
}

/// The virtual IP of a module. Mirror: added on the primary only, and
/// announced with gratuitous ARP when it moves. Farm: held by every node
/// (on `lo`), ARP for it answered with the virtual MAC on `interface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    pub address: Ipv4Addr,
    /// Prefix length given to the address (default 32: no subnet route
    /// added). A farm's VIP is always a /32 on `lo`.
    pub prefix: u8,
    /// Interface to hold it (mirror) or to receive its traffic on (farm); by
    /// default the one with an address in the same subnet.
    pub interface: Option<String>,
    /// Farm only: the virtual MAC given in ARP answers for the VIP (SafeKit
    /// `vmac_invisible`); by default `5a:fe:` and the VIP's four bytes.
    pub vmac: Option<Mac>,
}

impl VipConfig {
    /// The farm's virtual MAC: the configured one, or `5a:fe:` followed by
    /// the address (unicast, locally administered, the same on every node,
    /// different per VIP).
    pub fn farm_mac(&self) -> Mac {
        self.vmac.unwrap_or_else(|| {
            let [a, b, c, d] = self.address.octets();
            [0x5a, 0xfe, a, b, c, d]
        })
    }
}

/// `[witness]`: the `holdfast witness` process on a third machine that
/// grants the primary role's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessConfig {
    /// The witness's addresses (one process, reachable on one or more networks).
    pub addresses: Vec<IpAddr>,
    /// Its UDP port.
    pub port: u16,
    /// How long a grant lasts (default: the heartbeat timeout).
    pub lease: Duration,
}

/// `[splitbrain]`: when the peer is silent, only a node that can ping one
/// of these addresses becomes or stays primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitBrainConfig {
    pub ping: Vec<std::net::Ipv4Addr>,
}

/// Default of `witness.port`.
pub const DEFAULT_WITNESS_PORT: u16 = 4810;

/// Cloud mode: `GET /` on this TCP port answers 200 only on the node that
/// should receive traffic (the primary), 503 elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Two nodes, primary and secondary.
    Mirror,
    /// 2..N nodes, all UP, traffic to the VIP split among them.
    Farm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultPrimary {
    /// No preference: the node already primary stays primary.
    Alone,
    /// This node is preferred as primary.
    Node(String),
    /// The node that was primary before its last stop becomes primary.
    LastPrim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    On,
    Off,
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// UDP port of this module's heartbeats, the same on every node.
    pub port: u16,
    /// Interval between two heartbeats (default 700 ms).
    pub pulse: Duration,
    /// The peer is lost when no heartbeat arrived on any network for this long (default 30 s).
    pub timeout: Duration,
    /// Names of the heartbeat networks; every node has one address on each.
    pub networks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    /// Address of this node on each heartbeat network, keyed by network name.
    pub addresses: BTreeMap<String, IpAddr>,
    /// Farm modules: this node's share of the traffic, relative to the
    /// others' (SafeKit `power`; 0: no traffic). Default 1.
    pub power: u32,
}

/// Default of `node.power`.
pub const DEFAULT_POWER: u32 = 1;
/// Most nodes of a farm module.
pub const MAX_FARM_NODES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptsConfig {
    /// Where the module's scripts (prestart, start_prim, ...) are read from at
    /// install time; relative paths are relative to the configuration file.
    pub directory: Option<PathBuf>,
    /// Limit for start scripts (prestart, start_prim, start_both).
    pub start_timeout: Duration,
    /// Graceful phase of stop scripts (SafeKit `nicestoptimeout`).
    pub stop_timeout: Duration,
    /// Forced phase of stop scripts (SafeKit `forcestoptimeout`).
    pub force_stop_timeout: Duration,
    /// Send scripts' stdout/stderr to the module's application log.
    pub logging: bool,
    /// Extra environment variables for scripts (SafeKit `<user><var>`).
    pub env: BTreeMap<String, String>,
}

impl ScriptsConfig {
    /// The longest time from deciding to stop the application to the end of
    /// its forced stop: a script that may be running (each bounded by its
    /// timeout), then `stop_prim`'s graceful and forced phases.
    pub fn stop_budget(&self) -> Duration {
        let longest = self
            .start_timeout
            .max(self.stop_timeout)
            .max(self.force_stop_timeout);
        longest + self.stop_timeout + self.force_stop_timeout
    }
}

impl Default for ScriptsConfig {
    /// SafeKit's defaults: 300 s for every phase, output logged.
    fn default() -> Self {
        Self {
            directory: None,
            start_timeout: DEFAULT_SCRIPT_TIMEOUT,
            stop_timeout: DEFAULT_SCRIPT_TIMEOUT,
            force_stop_timeout: DEFAULT_SCRIPT_TIMEOUT,
            logging: true,
            env: BTreeMap::new(),
        }
    }
}

pub const DEFAULT_PULSE: Duration = Duration::from_millis(700);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_PORT: u16 = 4800;
/// The largest module id: its ports stay below 65536 in every mode.
pub const MAX_MODULE_ID: u16 = 9999;

/// SafeKit's module id, from which its default ports are computed (user
/// guide §10.2.2): a mirror's heartbeat on UDP 8888 + (id-1) and its
/// replication on TCP 5600 + (id-1)×4 (four ports per module, one per
/// replicated directory here), a farm's membership on UDP 4803 + (id-1)×3.
/// Modules with distinct ids on one node never share a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleId(pub u16);

impl ModuleId {
    pub fn heartbeat_port(self, mode: Mode) -> u16 {
        let step = self.0.saturating_sub(1);
        match mode {
            Mode::Mirror => 8888 + step,
            Mode::Farm => 4803 + step * 3,
        }
    }

    /// The first replication port of a mirror module.
    pub fn replication_port(self) -> u16 {
        5600 + self.0.saturating_sub(1) * 4
    }
}

pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default of `module.maxloop`.
pub const DEFAULT_MAXLOOP: u32 = 3;
/// Default of `module.loop_interval`.
pub const DEFAULT_LOOP_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Default of `heartbeat.networks`: this single network name.
pub const DEFAULT_NETWORK: &str = "default";

impl ModuleConfig {
    /// The node called `name`, if it belongs to this module.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The other node of a mirror module, seen from node `name`; `None` if
    /// `name` is not a node of this module.
    pub fn peer_of(&self, name: &str) -> Option<&NodeConfig> {
        self.node(name)?;
        self.nodes.iter().find(|n| n.name != name)
    }

    /// Every node but `name` (a farm's peers), in configuration order.
    pub fn others(&self, name: &str) -> impl Iterator<Item = &NodeConfig> {
        let name = name.to_string();
        self.nodes.iter().filter(move |n| n.name != name)
    }

    /// SHA-256 of the canonical rendering ([`to_toml`](crate::to_toml)) of
    /// everything both nodes must agree on. `scripts.directory` is left out:
    /// it only says where the scripts were installed from, and may differ
    /// between nodes without changing behaviour.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut canonical = self.clone();
        canonical.scripts.directory = None;
        Sha256::digest(crate::to_toml(&canonical).as_bytes()).into()
    }

    /// The TCP port of replicated directory number `index`.
    pub fn replication_port(&self, index: usize) -> u16 {
        let base = self
            .replication
            .port
            .unwrap_or_else(|| self.heartbeat.port.wrapping_add(1));
        base.wrapping_add(index as u16)
    }

    /// Every port this module listens on, with what it is for: two modules
    /// installed on one node must not share any.
    pub fn ports(&self) -> Vec<(u16, String)> {
        let mut ports = vec![(self.heartbeat.port, "heartbeat".to_string())];
        for (i, r) in self.replicated.iter().enumerate() {
            ports.push((
                self.replication_port(i),
                format!("replication of {}", r.dir.display()),
            ));
        }
        if let Some(health) = &self.health {
            ports.push((health.port, "health endpoint".to_string()));
        }
        ports
    }

    /// [`fingerprint`](Self::fingerprint) in lowercase hex, for logs and status output.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint())
    }
}
