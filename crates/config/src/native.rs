//! The native format: one TOML file per module (see `docs/configuration.md`).
//!
//! The document is walked by hand with `toml_edit` rather than deserialised
//! with serde: every value keeps its byte span, so each error — type, unknown
//! key, missing key, or a rule of [`ModuleConfig::validate`] found later —
//! points at the exact line and column, and the messages say what was expected
//! in the operator's terms.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{
    value, Array, ArrayOfTables, DocumentMut, ImDocument, InlineTable, Item, Table, TableLike,
    Value,
};

use crate::checker::{
    Action as CheckerAction, CheckerConfig, CheckerKind, InterfaceTarget, TcpExchange, When,
};
use crate::error::{ConfigError, ValidationError};
use crate::model::{
    AckPolicy, Balance, Boot, DefaultPrimary, DurabilityPolicy, HealthConfig, HeartbeatConfig, Mac,
    Mode, ModuleConfig, ModuleId, NodeConfig, OnSecondaryFailure, Protocol, ReplicatedDir,
    ReplicationConfig, Rule, ScriptsConfig, SplitBrainConfig, VipConfig, WitnessConfig,
    DEFAULT_LOOP_INTERVAL, DEFAULT_MAXLOOP, DEFAULT_NETWORK, DEFAULT_PORT, DEFAULT_POWER,
    DEFAULT_PULSE, DEFAULT_SCRIPT_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_WITNESS_PORT, MAX_MODULE_ID,
};
use crate::validate::format_duration;

const ROOT_KEYS: &[&str] = &[
    "module",
    "heartbeat",
    "node",
    "scripts",
    "vip",
    "health",
    "checker",
    "replication",
    "replicated",
    "load_balancing",
    "witness",
    "splitbrain",
];
const SPLITBRAIN_KEYS: &[&str] = &["ping"];
const WITNESS_KEYS: &[&str] = &["addresses", "port", "lease"];
const LOAD_BALANCING_KEYS: &[&str] = &["protocol", "port", "by"];
const CHECKER_KEYS: &[&str] = &[
    "name",
    "type",
    "when",
    "action",
    "interval",
    "timeout",
    "down_after",
    "up_after",
    "command",
    "command_regex",
    "args_regex",
    "atleast",
    "atmost",
    "address",
    "port",
    "send",
    "expect",
    "interface",
    "exec",
    "args",
    "module",
    "expected",
];
const VIP_KEYS: &[&str] = &["address", "prefix", "interface", "vmac"];
const HEALTH_KEYS: &[&str] = &["port"];
const REPLICATION_KEYS: &[&str] = &[
    "port",
    "ack",
    "ack_timeout",
    "on_secondary_failure",
    "durability",
    "max_unacked_bytes",
    "max_unacked_age",
];
const REPLICATED_KEYS: &[&str] = &["dir", "exclude", "exclude_names"];
const MODULE_KEYS: &[&str] = &[
    "name",
    "mode",
    "id",
    "failover",
    "default_primary",
    "swap_back",
    "boot",
    "maxloop",
    "loop_interval",
];
const HEARTBEAT_KEYS: &[&str] = &["port", "pulse", "timeout", "networks"];
const NODE_KEYS: &[&str] = &["name", "address", "power"];
const SCRIPTS_KEYS: &[&str] = &[
    "directory",
    "start_timeout",
    "stop_timeout",
    "force_stop_timeout",
    "logging",
    "env",
];

/// Reads and parses the module configuration file at `path`.
///
/// A file that cannot be read gives a [`ConfigError`] with line and column 0.
pub fn load_module(path: &Path) -> Result<ModuleConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        field: String::new(),
        message: format!("cannot read the file: {e}"),
    })?;
    parse_module(&text, path)
}

/// Parses and validates a module configuration in the native TOML format.
///
/// `source` is only used in error messages (and is where the text came from).
pub fn parse_module(text: &str, source: &Path) -> Result<ModuleConfig, ConfigError> {
    let doc = ImDocument::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let message = e.message().trim().replace('\n', "; ");
        ConfigError::at_offset(source, text, offset, "", message)
    })?;
    let mut reader = Reader {
        text,
        file: source,
        spans: HashMap::new(),
    };
    let config = reader.module_config(doc.as_table())?;
    config
        .validate()
        .map_err(|ValidationError { field, message }| reader.error(&field, message))?;
    Ok(config)
}

/// Renders `config` in the native format. Parsing the result gives back an
/// equal config, provided it passes [`ModuleConfig::validate`] and — since the
/// key is only allowed then — `swap_back` is left at its default `true` unless
/// `default_primary` names a node.
pub fn to_toml(config: &ModuleConfig) -> String {
    let mut doc = DocumentMut::new();

    let mut module = Table::new();
    module.insert("name", value(config.name.as_str()));
    module.insert("mode", value(mode_name(config.mode)));
    if let Some(id) = config.id {
        module.insert("id", value(i64::from(id)));
    }
    module.insert("failover", value(config.failover));
    match &config.default_primary {
        DefaultPrimary::Alone => {
            module.insert("default_primary", value("alone"));
        }
        DefaultPrimary::LastPrim => {
            module.insert("default_primary", value("lastprim"));
        }
        DefaultPrimary::Node(node) => {
            module.insert("default_primary", value(node.as_str()));
            module.insert("swap_back", value(config.swap_back));
        }
    }
    module.insert("boot", value(boot_name(config.boot)));
    module.insert("maxloop", value(i64::from(config.maxloop)));
    module.insert(
        "loop_interval",
        value(format_duration(config.loop_interval)),
    );
    doc.insert("module", Item::Table(module));

    let hb = &config.heartbeat;
    let mut heartbeat = Table::new();
    heartbeat.insert("port", value(i64::from(hb.port)));
    heartbeat.insert("pulse", value(format_duration(hb.pulse)));
    heartbeat.insert("timeout", value(format_duration(hb.timeout)));
    heartbeat.insert("networks", value(hb.networks.iter().collect::<Array>()));
    doc.insert("heartbeat", Item::Table(heartbeat));

    let mut nodes = ArrayOfTables::new();
    for node in &config.nodes {
        let mut table = Table::new();
        table.insert("name", value(node.name.as_str()));
        let address: InlineTable = node
            .addresses
            .iter()
            .map(|(network, ip)| (network.as_str(), Value::from(ip.to_string())))
            .collect();
        table.insert("address", value(address));
        if config.mode == Mode::Farm {
            table.insert("power", value(i64::from(node.power)));
        }
        nodes.push(table);
    }
    doc.insert("node", Item::ArrayOfTables(nodes));

    let sc = &config.scripts;
    let mut scripts = Table::new();
    if let Some(directory) = &sc.directory {
        scripts.insert("directory", value(directory.to_string_lossy().as_ref()));
    }
    scripts.insert("start_timeout", value(format_duration(sc.start_timeout)));
    scripts.insert("stop_timeout", value(format_duration(sc.stop_timeout)));
    scripts.insert(
        "force_stop_timeout",
        value(format_duration(sc.force_stop_timeout)),
    );
    scripts.insert("logging", value(sc.logging));
    if !sc.env.is_empty() {
        let mut env = Table::new();
        for (name, val) in &sc.env {
            env.insert(name, value(val.as_str()));
        }
        scripts.insert("env", Item::Table(env));
    }
    doc.insert("scripts", Item::Table(scripts));

    if let Some(vip) = &config.vip {
        let mut table = Table::new();
        table.insert("address", value(vip.address.to_string()));
        table.insert("prefix", value(i64::from(vip.prefix)));
        if let Some(interface) = &vip.interface {
            table.insert("interface", value(interface.as_str()));
        }
        if let Some(vmac) = &vip.vmac {
            table.insert("vmac", value(crate::model::format_mac(vmac)));
        }
        doc.insert("vip", Item::Table(table));
    }
    if !config.load_balancing.is_empty() {
        let mut tables = ArrayOfTables::new();
        for rule in &config.load_balancing {
            let mut t = Table::new();
            t.insert("protocol", value(protocol_name(rule.protocol)));
            if let Some(port) = rule.port {
                t.insert("port", value(i64::from(port)));
            }
            t.insert("by", value(balance_name(rule.balance)));
            tables.push(t);
        }
        doc.insert("load_balancing", Item::ArrayOfTables(tables));
    }
    if !config.checkers.is_empty() {
        let mut tables = ArrayOfTables::new();
        for checker in &config.checkers {
            tables.push(checker_table(checker));
        }
        doc.insert("checker", Item::ArrayOfTables(tables));
    }
    if let Some(health) = &config.health {
        let mut table = Table::new();
        table.insert("port", value(i64::from(health.port)));
        doc.insert("health", Item::Table(table));
    }
    if let Some(witness) = &config.witness {
        let mut table = Table::new();
        let addresses: Array = witness.addresses.iter().map(|a| a.to_string()).collect();
        table.insert("addresses", value(addresses));
        table.insert("port", value(i64::from(witness.port)));
        table.insert("lease", value(format_duration(witness.lease)));
        doc.insert("witness", Item::Table(table));
    }
    if let Some(splitbrain) = &config.splitbrain {
        let mut table = Table::new();
        let ping: Array = splitbrain.ping.iter().map(|a| a.to_string()).collect();
        table.insert("ping", value(ping));
        doc.insert("splitbrain", Item::Table(table));
    }
    if !config.replicated.is_empty() || config.replication != ReplicationConfig::default() {
        let mut table = Table::new();
        if let Some(port) = config.replication.port {
            table.insert("port", value(i64::from(port)));
        }
        let ack = match config.replication.ack {
            AckPolicy::Receipt => "receipt",
            AckPolicy::Durable => "durable",
        };
        table.insert("ack", value(ack));
        table.insert(
            "ack_timeout",
            value(format_duration(config.replication.ack_timeout)),
        );
        let on_failure = match config.replication.on_secondary_failure {
            OnSecondaryFailure::Degrade => "degrade",
            OnSecondaryFailure::Block => "block",
        };
        table.insert("on_secondary_failure", value(on_failure));
        let durability = match config.replication.durability {
            DurabilityPolicy::SyncCalls => "sync_calls",
            DurabilityPolicy::EveryCall => "every_call",
        };
        table.insert("durability", value(durability));
        table.insert(
            "max_unacked_bytes",
            value(config.replication.max_unacked_bytes as i64),
        );
        table.insert(
            "max_unacked_age",
            value(format_duration(config.replication.max_unacked_age)),
        );
        doc.insert("replication", Item::Table(table));
    }
    if !config.replicated.is_empty() {
        let mut tables = ArrayOfTables::new();
        for r in &config.replicated {
            let mut t = Table::new();
            t.insert("dir", value(r.dir.display().to_string()));
            if !r.exclude.is_empty() {
                let paths = r.exclude.iter().map(|p| p.display().to_string());
                t.insert("exclude", value(Array::from_iter(paths)));
            }
            if !r.exclude_names.is_empty() {
                t.insert("exclude_names", value(Array::from_iter(&r.exclude_names)));
            }
            tables.push(t);
        }
        doc.insert("replicated", Item::ArrayOfTables(tables));
    }

    doc.to_string()
}

fn checker_table(checker: &CheckerConfig) -> Table {
    let mut t = Table::new();
    t.insert("name", value(checker.name.as_str()));
    let kind = match &checker.kind {
        CheckerKind::Process(_) => "process",
        CheckerKind::Tcp(_) => "tcp",
        CheckerKind::Ping(_) => "ping",
        CheckerKind::Interface(_) => "interface",
        CheckerKind::Custom(_) => "custom",
        CheckerKind::Module(_) => "module",
    };
    t.insert("type", value(kind));
    let when = match checker.when {
        When::Pre => "pre",
        When::Prim => "prim",
        When::Second => "second",
        When::Both => "both",
    };
    t.insert("when", value(when));
    let action = match checker.action {
        CheckerAction::Wait => "wait",
        CheckerAction::Restart => "restart",
        CheckerAction::StopStart => "stopstart",
        CheckerAction::Stop => "stop",
        CheckerAction::NoAction => "noaction",
    };
    t.insert("action", value(action));
    t.insert("interval", value(format_duration(checker.interval)));
    t.insert("timeout", value(format_duration(checker.timeout)));
    t.insert("down_after", value(i64::from(checker.down_after)));
    t.insert("up_after", value(i64::from(checker.up_after)));
    match &checker.kind {
        CheckerKind::Process(p) => {
            t.insert("command", value(p.command.as_str()));
            if let Some(r) = &p.command_regex {
                t.insert("command_regex", value(r.as_str()));
            }
            if let Some(r) = &p.args_regex {
                t.insert("args_regex", value(r.as_str()));
            }
            if let Some(n) = p.atleast {
                t.insert("atleast", value(i64::from(n)));
            }
            if let Some(n) = p.atmost {
                t.insert("atmost", value(i64::from(n)));
            }
        }
        CheckerKind::Tcp(c) => {
            t.insert("address", value(c.address.to_string()));
            t.insert("port", value(i64::from(c.port)));
            if let Some(x) = &c.exchange {
                t.insert("send", value(String::from_utf8_lossy(&x.send).as_ref()));
                t.insert("expect", value(String::from_utf8_lossy(&x.expect).as_ref()));
            }
        }
        CheckerKind::Ping(p) => {
            t.insert("address", value(p.address.to_string()));
        }
        CheckerKind::Interface(i) => {
            let target = match &i.target {
                InterfaceTarget::Name(name) => name.clone(),
                InterfaceTarget::Address(address) => address.to_string(),
            };
            t.insert("interface", value(target));
        }
        CheckerKind::Custom(c) => {
            t.insert("exec", value(c.exec.to_string_lossy().as_ref()));
            if !c.args.is_empty() {
                t.insert("args", value(c.args.iter().collect::<Array>()));
            }
        }
        CheckerKind::Module(m) => {
            t.insert("module", value(m.module.as_str()));
            t.insert("expected", value(m.expected.iter().collect::<Array>()));
        }
    }
    t
}

pub(crate) fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Mirror => "mirror",
        Mode::Farm => "farm",
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn balance_name(balance: Balance) -> &'static str {
    match balance {
        Balance::ClientIp => "client_ip",
        Balance::ClientIpPort => "client_ip_port",
    }
}

/// `5a:fe:01:02:03:04` (or with `-`), as in SafeKit's `addr`.
pub(crate) fn parse_mac(text: &str) -> Option<Mac> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return None;
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac)
}

pub(crate) fn boot_name(boot: Boot) -> &'static str {
    match boot {
        Boot::On => "on",
        Boot::Off => "off",
        Boot::Auto => "auto",
    }
}

/// A table of the document being read, with its dotted path.
struct Section<'t> {
    items: &'t dyn TableLike,
    path: String,
}

/// Walks the document, remembering the span of every setting it reads so that
/// errors found afterwards (by validation) can still point into the file.
struct Reader<'a> {
    text: &'a str,
    file: &'a Path,
    spans: HashMap<String, Range<usize>>,
}

type Converted<T> = Result<T, ConfigError>;

impl<'a> Reader<'a> {
    fn module_config(&mut self, root: &Table) -> Converted<ModuleConfig> {
        let root = Section {
            items: root,
            path: String::new(),
        };
        self.check_keys(&root, ROOT_KEYS)?;

        let module = self.req(&root, "module", Self::table)?;
        self.check_keys(&module, MODULE_KEYS)?;
        let name = self.req(&module, "name", Self::string)?;
        let mode = self.req(&module, "mode", |r, path, item| {
            match r.string(path, item)?.as_str() {
                "mirror" => Ok(Mode::Mirror),
                "farm" => Ok(Mode::Farm),
                m @ "light" => Err(r.error(
                    path,
                    format!("mode {m:?} is not supported yet; use \"mirror\" or \"farm\""),
                )),
                m => Err(r.error(
                    path,
                    format!("unknown mode {m:?}; expected \"mirror\" or \"farm\""),
                )),
            }
        })?;
        let failover = self
            .opt(&module, "failover", Self::boolean)?
            .unwrap_or(true);
        let default_primary = self
            .opt(&module, "default_primary", |r, path, item| {
                Ok(match r.string(path, item)?.as_str() {
                    "alone" => DefaultPrimary::Alone,
                    "lastprim" => DefaultPrimary::LastPrim,
                    node => DefaultPrimary::Node(node.to_string()),
                })
            })?
            .unwrap_or(DefaultPrimary::Alone);
        let swap_back = match self.opt(&module, "swap_back", Self::boolean)? {
            None => true,
            Some(swap_back) => {
                // Explicitly set next to a mode that ignores it is a mistake
                // worth knowing about, not a setting to drop silently.
                if !matches!(default_primary, DefaultPrimary::Node(_)) {
                    return Err(self.error(
                        "module.swap_back",
                        "swap_back only applies when module.default_primary names a node",
                    ));
                }
                swap_back
            }
        };
        let boot = self
            .opt(&module, "boot", |r, path, item| {
                match r.string(path, item)?.as_str() {
                    "on" => Ok(Boot::On),
                    "off" => Ok(Boot::Off),
                    "auto" => Ok(Boot::Auto),
                    b => Err(r.error(
                        path,
                        format!("unknown boot setting {b:?}; expected \"on\", \"off\" or \"auto\""),
                    )),
                }
            })?
            .unwrap_or(Boot::Auto);
        let maxloop = self
            .opt(&module, "maxloop", |r, path, item| {
                let n = r.integer(path, item)?;
                u32::try_from(n).map_err(|_| {
                    r.error(
                        path,
                        format!("expected a count between 0 and {}, found {n}", u32::MAX),
                    )
                })
            })?
            .unwrap_or(DEFAULT_MAXLOOP);
        let loop_interval = self
            .opt(&module, "loop_interval", Self::duration)?
            .unwrap_or(DEFAULT_LOOP_INTERVAL);
        let id = self.opt(&module, "id", |r, path, item| {
            let n = r.integer(path, item)?;
            match u16::try_from(n) {
                Ok(id @ 1..=MAX_MODULE_ID) => Ok(ModuleId(id)),
                _ => Err(r.error(
                    path,
                    format!("expected a module id between 1 and {MAX_MODULE_ID}, found {n}"),
                )),
            }
        })?;
        let default_port = id.map_or(DEFAULT_PORT, |id| id.heartbeat_port(mode));

        let heartbeat = match self.opt(&root, "heartbeat", Self::table)? {
            Some(section) => self.heartbeat(&section, default_port)?,
            None => HeartbeatConfig {
                port: default_port,
                pulse: DEFAULT_PULSE,
                timeout: DEFAULT_TIMEOUT,
                networks: vec![DEFAULT_NETWORK.to_string()],
            },
        };
        let nodes = self.req(&root, "node", Self::nodes)?;
        let scripts = match self.opt(&root, "scripts", Self::table)? {
            Some(section) => self.scripts(&section)?,
            None => ScriptsConfig::default(),
        };
        let vip = match self.opt(&root, "vip", Self::table)? {
            Some(section) => Some(self.vip(&section)?),
            None => None,
        };
        let health = match self.opt(&root, "health", Self::table)? {
            Some(section) => {
                self.check_keys(&section, HEALTH_KEYS)?;
                Some(HealthConfig {
                    port: self.req(&section, "port", Self::port)?,
                })
            }
            None => None,
        };

        let checkers = self
            .opt(&root, "checker", Self::checkers)?
            .unwrap_or_default();
        let mut replication = match self.opt(&root, "replication", Self::table)? {
            Some(section) => self.replication(&section)?,
            None => ReplicationConfig::default(),
        };
        if let (None, Some(id), Mode::Mirror) = (replication.port, id, mode) {
            replication.port = Some(id.replication_port());
        }
        let replicated = self
            .opt(&root, "replicated", Self::replicated)?
            .unwrap_or_default();
        let load_balancing = self
            .opt(&root, "load_balancing", Self::load_balancing)?
            .unwrap_or_default();
        let witness = match self.opt(&root, "witness", Self::table)? {
            Some(section) => Some(self.witness(&section, heartbeat.timeout)?),
            None => None,
        };
        let splitbrain = match self.opt(&root, "splitbrain", Self::table)? {
            Some(section) => {
                self.check_keys(&section, SPLITBRAIN_KEYS)?;
                let ping = self.req(&section, "ping", |r, path, item| {
                    let texts = r.strings(path, item)?;
                    texts
                        .iter()
                        .enumerate()
                        .map(|(i, text)| {
                            text.parse().map_err(|_| {
                                r.error(
                                    &format!("{path}[{i}]"),
                                    format!("expected an IPv4 address, found {text:?}"),
                                )
                            })
                        })
                        .collect()
                })?;
                Some(SplitBrainConfig { ping })
            }
            None => None,
        };

        Ok(ModuleConfig {
            name,
            mode,
            id: id.map(|id| id.0),
            failover,
            default_primary,
            swap_back,
            boot,
            maxloop,
            loop_interval,
            heartbeat,
            nodes,
            scripts,
            vip,
            health,
            checkers,
            replication,
            replicated,
            load_balancing,
            witness,
            splitbrain,
        })
    }

    /// `[witness]`; the lease defaults to the heartbeat timeout.
    fn witness(&mut self, section: &Section<'_>, timeout: Duration) -> Converted<WitnessConfig> {
        self.check_keys(section, WITNESS_KEYS)?;
        let addresses = self.req(section, "addresses", |r, path, item| {
            let texts = r.strings(path, item)?;
            texts
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    text.parse::<IpAddr>().map_err(|_| {
                        r.error(
                            &format!("{path}[{i}]"),
                            format!("expected an IP address, found {text:?}"),
                        )
                    })
                })
                .collect()
        })?;
        let port = self
            .opt(section, "port", Self::port)?
            .unwrap_or(DEFAULT_WITNESS_PORT);
        let lease = self
            .opt(section, "lease", Self::duration)?
            .unwrap_or(timeout);
        Ok(WitnessConfig {
            addresses,
            port,
            lease,
        })
    }

    /// `[[load_balancing]]` tables.
    fn load_balancing(&mut self, path: &str, item: &Item) -> Converted<Vec<Rule>> {
        let sections = self.array_of_tables(path, item, "load_balancing")?;
        let mut rules = Vec::with_capacity(sections.len());
        for section in sections {
            self.check_keys(&section, LOAD_BALANCING_KEYS)?;
            let protocol = self.req(&section, "protocol", |r, path, item| {
                match r.string(path, item)?.as_str() {
                    "tcp" => Ok(Protocol::Tcp),
                    "udp" => Ok(Protocol::Udp),
                    p => Err(r.error(
                        path,
                        format!("unknown protocol {p:?}; expected \"tcp\" or \"udp\""),
                    )),
                }
            })?;
            let port = self.opt(&section, "port", Self::port)?;
            let balance = self.req(&section, "by", |r, path, item| {
                match r.string(path, item)?.as_str() {
                    "client_ip" => Ok(Balance::ClientIp),
                    "client_ip_port" => Ok(Balance::ClientIpPort),
                    b => Err(r.error(
                        path,
                        format!("unknown value {b:?}; expected \"client_ip\" (affinity) or \"client_ip_port\""),
                    )),
                }
            })?;
            rules.push(Rule {
                protocol,
                port,
                balance,
            });
        }
        Ok(rules)
    }

    fn replication(&mut self, section: &Section<'_>) -> Converted<ReplicationConfig> {
        self.check_keys(section, REPLICATION_KEYS)?;
        let port = self.opt(section, "port", Self::port)?;
        let ack = self
            .opt(section, "ack", |r, path, item| {
                match r.string(path, item)?.as_str() {
                    "receipt" => Ok(AckPolicy::Receipt),
                    "durable" => Ok(AckPolicy::Durable),
                    other => Err(r.error(
                        path,
                        format!("unknown acknowledgement {other:?}; expected \"receipt\" or \"durable\""),
                    )),
                }
            })?
            .unwrap_or_default();
        let defaults = ReplicationConfig::default();
        let ack_timeout = self
            .opt(section, "ack_timeout", |r, path, item| {
                let d = r.duration(path, item)?;
                if d.is_zero() {
                    return Err(r.error(path, "must be more than 0".to_string()));
                }
                Ok(d)
            })?
            .unwrap_or(defaults.ack_timeout);
        let on_secondary_failure = self
            .opt(section, "on_secondary_failure", |r, path, item| {
                match r.string(path, item)?.as_str() {
                    "degrade" => Ok(OnSecondaryFailure::Degrade),
                    "block" => Ok(OnSecondaryFailure::Block),
                    other => Err(r.error(
                        path,
                        format!("unknown policy {other:?}; expected \"degrade\" or \"block\""),
                    )),
                }
            })?
            .unwrap_or_default();
        let durability = self
            .opt(section, "durability", |r, path, item| {
                match r.string(path, item)?.as_str() {
                    "sync_calls" => Ok(DurabilityPolicy::SyncCalls),
                    "every_call" => Ok(DurabilityPolicy::EveryCall),
                    other => Err(r.error(
                        path,
                        format!("unknown durability {other:?}; expected \"sync_calls\" or \"every_call\""),
                    )),
                }
            })?
            .unwrap_or_default();
        let max_unacked_bytes = self
            .opt(section, "max_unacked_bytes", Self::size)?
            .unwrap_or(defaults.max_unacked_bytes);
        let max_unacked_age = self
            .opt(section, "max_unacked_age", |r, path, item| {
                let d = r.duration(path, item)?;
                if d.is_zero() {
                    return Err(r.error(path, "must be more than 0".to_string()));
                }
                Ok(d)
            })?
            .unwrap_or(defaults.max_unacked_age);
        Ok(ReplicationConfig {
            port,
            ack,
            ack_timeout,
            on_secondary_failure,
            durability,
            max_unacked_bytes,
            max_unacked_age,
        })
    }

    /// The tables of a `[[what]]` array, each with its path and span noted.
    fn array_of_tables<'t>(
        &mut self,
        path: &str,
        item: &'t Item,
        what: &str,
    ) -> Converted<Vec<Section<'t>>> {
        let Item::ArrayOfTables(array) = item else {
            return Err(self.error(
                path,
                format!("expected [[{what}]] tables, found {}", self.found(item)),
            ));
        };
        Ok(array
            .iter()
            .enumerate()
            .map(|(i, table)| {
                let section = Section {
                    items: table as &dyn TableLike,
                    path: format!("{path}[{i}]"),
                };
                self.note(&section.path, table.span());
                section
            })
            .collect())
    }

    /// `[[replicated]]` tables.
    fn replicated(&mut self, path: &str, item: &Item) -> Converted<Vec<ReplicatedDir>> {
        let sections = self.array_of_tables(path, item, "replicated")?;
        let mut dirs = Vec::with_capacity(sections.len());
        for section in sections {
            self.check_keys(&section, REPLICATED_KEYS)?;
            let dir = self.req(&section, "dir", Self::string)?;
            let exclude = self.opt(&section, "exclude", Self::strings)?;
            let exclude_names = self.opt(&section, "exclude_names", Self::strings)?;
            dirs.push(ReplicatedDir {
                dir: dir.into(),
                exclude: exclude
                    .unwrap_or_default()
                    .into_iter()
                    .map(PathBuf::from)
                    .collect(),
                exclude_names: exclude_names.unwrap_or_default(),
            });
        }
        Ok(dirs)
    }

    /// `[[checker]]` tables: the kind's SafeKit defaults, then what is set.
    fn checkers(&mut self, path: &str, item: &Item) -> Converted<Vec<CheckerConfig>> {
        let sections = self.array_of_tables(path, item, "checker")?;
        let mut checkers = Vec::with_capacity(sections.len());
        for section in sections {
            self.check_keys(&section, CHECKER_KEYS)?;
            let name = self.req(&section, "name", Self::string)?;
            let kind = self.req(&section, "type", Self::string)?;
            let ip = |r: &mut Self, path: &str, item: &Item| {
                let text = r.string(path, item)?;
                text.parse::<IpAddr>()
                    .map_err(|_| r.error(path, format!("expected an IP address, found {text:?}")))
            };
            let mut checker = match kind.as_str() {
                "process" => CheckerConfig::process(&name, &self.req(&section, "command", Self::string)?),
                "tcp" => CheckerConfig::tcp(
                    &name,
                    self.req(&section, "address", ip)?,
                    self.req(&section, "port", Self::port)?,
                ),
                "ping" => {
                    let address = self.req(&section, "address", |r, path, item| match ip(r, path, item)? {
                        IpAddr::V4(v4) => Ok(v4),
                        IpAddr::V6(_) => Err(r.error(path, "ping checkers take an IPv4 address")),
                    })?;
                    CheckerConfig::ping(&name, address)
                }
                "interface" => {
                    let interface = self.req(&section, "interface", Self::string)?;
                    let target = match interface.parse::<IpAddr>() {
                        Ok(address) => InterfaceTarget::Address(address),
                        Err(_) => InterfaceTarget::Name(interface),
                    };
                    CheckerConfig::interface(&name, target)
                }
                "custom" => CheckerConfig::custom(&name, self.req(&section, "exec", Self::string)?),
                "module" => CheckerConfig::module(&name, &self.req(&section, "module", Self::string)?),
                other => {
                    return Err(self.error(
                        &join(&section.path, "type"),
                        format!("unknown checker type {other:?}; expected process, tcp, ping, interface, custom or module"),
                    ))
                }
            };
            if let Some(when) = self.opt(&section, "when", |r, path, item| {
                match r.string(path, item)?.as_str() {
                    "pre" => Ok(When::Pre),
                    "prim" => Ok(When::Prim),
                    "second" => Ok(When::Second),
                    "both" => Ok(When::Both),
                    w => Err(r.error(
                        path,
                        format!("unknown value {w:?}; expected pre, prim, second or both"),
                    )),
                }
            })? {
                checker.when = when;
            }
            if let Some(action) = self.opt(&section, "action", |r, path, item| {
                match r.string(path, item)?.as_str() {
                    "wait" => Ok(CheckerAction::Wait),
                    "restart" => Ok(CheckerAction::Restart),
                    "stopstart" => Ok(CheckerAction::StopStart),
                    "stop" => Ok(CheckerAction::Stop),
                    "noaction" => Ok(CheckerAction::NoAction),
                    a => Err(r.error(
                        path,
                        format!("unknown action {a:?}; expected wait, restart, stopstart, stop or noaction"),
                    )),
                }
            })? {
                checker.action = action;
            }
            if let Some(interval) = self.opt(&section, "interval", Self::duration)? {
                checker.interval = interval;
            }
            if let Some(timeout) = self.opt(&section, "timeout", Self::duration)? {
                checker.timeout = timeout;
            }
            let count = |r: &mut Self, path: &str, item: &Item| {
                let n = r.integer(path, item)?;
                u32::try_from(n).map_err(|_| r.error(path, format!("expected a count, found {n}")))
            };
            if let Some(n) = self.opt(&section, "down_after", count)? {
                checker.down_after = n;
            }
            if let Some(n) = self.opt(&section, "up_after", count)? {
                checker.up_after = n;
            }
            match &mut checker.kind {
                CheckerKind::Process(p) => {
                    p.command_regex = self.opt(&section, "command_regex", Self::string)?;
                    p.args_regex = self.opt(&section, "args_regex", Self::string)?;
                    if let Some(n) = self.opt(&section, "atleast", count)? {
                        p.atleast = Some(n);
                    }
                    p.atmost = self.opt(&section, "atmost", count)?;
                }
                CheckerKind::Tcp(t) => {
                    let send = self.opt(&section, "send", Self::string)?;
                    let expect = self.opt(&section, "expect", Self::string)?;
                    if send.is_some() || expect.is_some() {
                        t.exchange = Some(TcpExchange {
                            send: send.unwrap_or_default().into_bytes(),
                            expect: expect.unwrap_or_default().into_bytes(),
                        });
                    }
                }
                CheckerKind::Custom(c) => {
                    c.args = self
                        .opt(&section, "args", Self::strings)?
                        .unwrap_or_default();
                }
                CheckerKind::Module(m) => {
                    if let Some(expected) = self.opt(&section, "expected", Self::strings)? {
                        m.expected = expected;
                    }
                }
                CheckerKind::Ping(_) | CheckerKind::Interface(_) => {}
            }
            // A key of another kind of checker is a mistake worth naming.
            let allowed: &[&str] = match &checker.kind {
                CheckerKind::Process(_) => &[
                    "command",
                    "command_regex",
                    "args_regex",
                    "atleast",
                    "atmost",
                ],
                CheckerKind::Tcp(_) => &["address", "port", "send", "expect"],
                CheckerKind::Ping(_) => &["address"],
                CheckerKind::Interface(_) => &["interface"],
                CheckerKind::Custom(_) => &["exec", "args"],
                CheckerKind::Module(_) => &["module", "expected"],
            };
            let shared = [
                "name",
                "type",
                "when",
                "action",
                "interval",
                "timeout",
                "down_after",
                "up_after",
            ];
            let keys: Vec<&str> = shared.iter().chain(allowed).copied().collect();
            self.check_keys(&section, &keys)?;
            checker
                .validate()
                .map_err(|e| self.error(&section.path, e.to_string()))?;
            checkers.push(checker);
        }
        Ok(checkers)
    }

    fn vip(&mut self, vip: &Section<'_>) -> Converted<VipConfig> {
        self.check_keys(vip, VIP_KEYS)?;
        let address = self.req(vip, "address", |r, path, item| {
            let text = r.string(path, item)?;
            text.parse::<std::net::Ipv4Addr>()
                .map_err(|_| r.error(path, format!("expected an IPv4 address, found {text:?}")))
        })?;
        let prefix = self
            .opt(vip, "prefix", |r, path, item| {
                let n = r.integer(path, item)?;
                match u8::try_from(n) {
                    Ok(p) if (1..=32).contains(&p) => Ok(p),
                    _ => Err(r.error(
                        path,
                        format!("expected a prefix length between 1 and 32, found {n}"),
                    )),
                }
            })?
            .unwrap_or(32);
        let interface = self.opt(vip, "interface", Self::string)?;
        let vmac = self.opt(vip, "vmac", |r, path, item| {
            let text = r.string(path, item)?;
            parse_mac(&text).ok_or_else(|| {
                r.error(
                    path,
                    format!("expected a MAC address like \"5a:fe:01:02:03:04\", found {text:?}"),
                )
            })
        })?;
        Ok(VipConfig {
            address,
            prefix,
            interface,
            vmac,
        })
    }

    fn port(&mut self, path: &str, item: &Item) -> Converted<u16> {
        let n = self.integer(path, item)?;
        match u16::try_from(n) {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(self.error(
                path,
                format!("expected a port number between 1 and 65535, found {n}"),
            )),
        }
    }

    /// `[heartbeat]`; `default_port` when it gives none (from the module id).
    fn heartbeat(&mut self, hb: &Section<'_>, default_port: u16) -> Converted<HeartbeatConfig> {
        self.check_keys(hb, HEARTBEAT_KEYS)?;
        let port = self.opt(hb, "port", Self::port)?.unwrap_or(default_port);
        let pulse = self
            .opt(hb, "pulse", Self::duration)?
            .unwrap_or(DEFAULT_PULSE);
        let timeout = self
            .opt(hb, "timeout", Self::duration)?
            .unwrap_or(DEFAULT_TIMEOUT);
        let networks = self
            .opt(hb, "networks", Self::strings)?
            .unwrap_or_else(|| vec![DEFAULT_NETWORK.to_string()]);
        Ok(HeartbeatConfig {
            port,
            pulse,
            timeout,
            networks,
        })
    }

    /// `[[node]]` tables, or an inline array of inline tables.
    fn nodes(&mut self, path: &str, item: &Item) -> Converted<Vec<NodeConfig>> {
        let tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = match item {
            Item::ArrayOfTables(array) => array
                .iter()
                .map(|t| (t as &dyn TableLike, t.span()))
                .collect(),
            Item::Value(Value::Array(array)) => {
                let mut tables = Vec::new();
                for (i, v) in array.iter().enumerate() {
                    match v {
                        Value::InlineTable(t) => tables.push((t as &dyn TableLike, t.span())),
                        other => {
                            let field = format!("{path}[{i}]");
                            self.note(&field, other.span());
                            return Err(self.error(
                                &field,
                                format!("expected a node table, found {}", self.found_value(other)),
                            ));
                        }
                    }
                }
                tables
            }
            other => {
                return Err(self.error(
                    path,
                    format!("expected [[node]] tables, found {}", self.found(other)),
                ))
            }
        };
        let mut nodes = Vec::with_capacity(tables.len());
        for (i, (items, span)) in tables.into_iter().enumerate() {
            let node = Section {
                items,
                path: format!("{path}[{i}]"),
            };
            self.note(&node.path, span);
            self.check_keys(&node, NODE_KEYS)?;
            let name = self.req(&node, "name", Self::string)?;
            let addresses = self.req(&node, "address", Self::addresses)?;
            let power = self
                .opt(&node, "power", |r, path, item| {
                    let n = r.integer(path, item)?;
                    u32::try_from(n).map_err(|_| {
                        r.error(
                            path,
                            format!("expected a power between 0 and {}, found {n}", u32::MAX),
                        )
                    })
                })?
                .unwrap_or(DEFAULT_POWER);
            nodes.push(NodeConfig {
                name,
                addresses,
                power,
            });
        }
        Ok(nodes)
    }

    fn addresses(&mut self, path: &str, item: &Item) -> Converted<BTreeMap<String, IpAddr>> {
        let table = self.table(path, item)?;
        let mut addresses = BTreeMap::new();
        for (network, _) in table.items.iter() {
            let ip = self.req(&table, network, |r, path, item| {
                let text = r.string(path, item)?;
                text.parse::<IpAddr>()
                    .map_err(|_| r.error(path, format!("expected an IP address, found {text:?}")))
            })?;
            addresses.insert(network.to_string(), ip);
        }
        Ok(addresses)
    }

    fn scripts(&mut self, scripts: &Section<'_>) -> Converted<ScriptsConfig> {
        self.check_keys(scripts, SCRIPTS_KEYS)?;
        let directory = self
            .opt(scripts, "directory", Self::string)?
            .map(PathBuf::from);
        let timeout = |r: &mut Self, key| {
            r.opt(scripts, key, Self::duration)
                .map(|d| d.unwrap_or(DEFAULT_SCRIPT_TIMEOUT))
        };
        let start_timeout = timeout(self, "start_timeout")?;
        let stop_timeout = timeout(self, "stop_timeout")?;
        let force_stop_timeout = timeout(self, "force_stop_timeout")?;
        let logging = self.opt(scripts, "logging", Self::boolean)?.unwrap_or(true);
        let env = self
            .opt(scripts, "env", |r, path, item| {
                let table = r.table(path, item)?;
                let mut env = BTreeMap::new();
                for (name, _) in table.items.iter() {
                    let val = r.req(&table, name, Self::string)?;
                    env.insert(name.to_string(), val);
                }
                Ok(env)
            })?
            .unwrap_or_default();
        Ok(ScriptsConfig {
            directory,
            start_timeout,
            stop_timeout,
            force_stop_timeout,
            logging,
            env,
        })
    }

    // ---- generic access -------------------------------------------------

    /// Rejects keys not in `allowed`, pointing at the key itself.
    fn check_keys(&mut self, section: &Section<'_>, allowed: &[&str]) -> Converted<()> {
        for (key, item) in section.items.iter() {
            if !allowed.contains(&key) {
                let field = join(&section.path, key);
                let span = section
                    .items
                    .get_key_value(key)
                    .and_then(|(k, _)| k.span())
                    .or_else(|| item.span());
                self.note(&field, span);
                return Err(self.error(
                    &field,
                    format!(
                        "unknown key {key:?}; expected one of: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads an optional key with `convert`, recording its span.
    fn opt<'t, T>(
        &mut self,
        section: &Section<'t>,
        key: &str,
        convert: impl FnOnce(&mut Self, &str, &'t Item) -> Converted<T>,
    ) -> Converted<Option<T>> {
        let Some((k, item)) = section.items.get_key_value(key) else {
            return Ok(None);
        };
        let field = join(&section.path, key);
        self.note(&field, item.span().or_else(|| k.span()));
        convert(self, &field, item).map(Some)
    }

    /// Reads a required key; a missing one is reported at its table.
    fn req<'t, T>(
        &mut self,
        section: &Section<'t>,
        key: &str,
        convert: impl FnOnce(&mut Self, &str, &'t Item) -> Converted<T>,
    ) -> Converted<T> {
        match self.opt(section, key, convert)? {
            Some(v) => Ok(v),
            None => {
                let field = join(&section.path, key);
                let what = if matches!(key, "module" | "node") {
                    "this table is required"
                } else {
                    "this key is required"
                };
                Err(self.error(&field, what))
            }
        }
    }

    fn table<'t>(&mut self, path: &str, item: &'t Item) -> Converted<Section<'t>> {
        let items = item.as_table_like().ok_or_else(|| {
            self.error(
                path,
                format!("expected a table, found {}", self.found(item)),
            )
        })?;
        Ok(Section {
            items,
            path: path.to_string(),
        })
    }

    fn string(&mut self, path: &str, item: &Item) -> Converted<String> {
        item.as_str().map(str::to_string).ok_or_else(|| {
            self.error(
                path,
                format!("expected a string, found {}", self.found(item)),
            )
        })
    }

    fn boolean(&mut self, path: &str, item: &Item) -> Converted<bool> {
        item.as_bool().ok_or_else(|| {
            self.error(
                path,
                format!("expected true or false, found {}", self.found(item)),
            )
        })
    }

    fn integer(&mut self, path: &str, item: &Item) -> Converted<i64> {
        item.as_integer().ok_or_else(|| {
            self.error(
                path,
                format!("expected an integer, found {}", self.found(item)),
            )
        })
    }

    /// A size in bytes: an integer, or a string with a binary unit
    /// ("64MiB", "512 KiB"); more than 0.
    fn size(&mut self, path: &str, item: &Item) -> Converted<u64> {
        let expected = "expected a size in bytes, like 67108864 or \"64MiB\" (B, KiB, MiB, GiB)";
        let bytes = match (item.as_integer(), item.as_str()) {
            (Some(n), _) => u64::try_from(n).ok(),
            (_, Some(text)) => parse_size(text),
            _ => None,
        };
        match bytes {
            Some(0) => Err(self.error(path, "must be more than 0".to_string())),
            Some(n) => Ok(n),
            None => {
                let found = self.found(item);
                Err(self.error(path, format!("{expected}, found {found}")))
            }
        }
    }

    fn duration(&mut self, path: &str, item: &Item) -> Converted<Duration> {
        let expected = "expected a duration with a unit, like \"700ms\"";
        let Some(text) = item.as_str() else {
            return Err(self.error(path, format!("{expected}, found {}", self.found(item))));
        };
        humantime::parse_duration(text).map_err(|e| {
            let found = self.found(item);
            // humantime's reason helps with a bad unit ("7 parsecs"); for a
            // bare number the expectation above already says it all.
            if text.chars().any(char::is_alphabetic) {
                self.error(path, format!("{expected}, found {found}: {e}"))
            } else {
                self.error(path, format!("{expected}, found {found}"))
            }
        })
    }

    fn strings(&mut self, path: &str, item: &Item) -> Converted<Vec<String>> {
        let Some(array) = item.as_array() else {
            return Err(self.error(
                path,
                format!("expected an array of strings, found {}", self.found(item)),
            ));
        };
        let mut strings = Vec::with_capacity(array.len());
        for (i, v) in array.iter().enumerate() {
            let field = format!("{path}[{i}]");
            self.note(&field, v.span());
            match v.as_str() {
                Some(s) => strings.push(s.to_string()),
                None => {
                    return Err(self.error(
                        &field,
                        format!("expected a string, found {}", self.found_value(v)),
                    ))
                }
            }
        }
        Ok(strings)
    }

    // ---- positions ------------------------------------------------------

    fn note(&mut self, field: &str, span: Option<Range<usize>>) {
        if let Some(span) = span {
            self.spans.insert(field.to_string(), span);
        }
    }

    /// An error about `field`, placed at its recorded span, or else at its
    /// nearest recorded parent (a missing key is reported at its table).
    fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        let mut path = field;
        let offset = loop {
            if let Some(span) = self.spans.get(path) {
                break span.start;
            }
            match path.rfind(['.', '[']) {
                Some(i) => path = &path[..i],
                None => break 0,
            }
        };
        ConfigError::at_offset(self.file, self.text, offset, field, message)
    }

    /// How a wrong value is shown in messages: its text as written.
    fn found(&self, item: &Item) -> String {
        match item {
            Item::None => "nothing".to_string(),
            Item::Table(_) => "a table".to_string(),
            Item::ArrayOfTables(_) => "an array of tables".to_string(),
            Item::Value(v) => self.found_value(v),
        }
    }

    fn found_value(&self, v: &Value) -> String {
        match v {
            Value::InlineTable(_) => "a table".to_string(),
            Value::Array(_) => "an array".to_string(),
            _ => v
                .span()
                .and_then(|s| self.text.get(s))
                .map_or_else(|| v.to_string().trim().to_string(), str::to_string),
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// "64MiB", "512 KiB", "4096" (bytes): the number of bytes, if it is one.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(1 << shift)
}
