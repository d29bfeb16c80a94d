//! The rules every module configuration must follow, whatever file it came
//! from. Both parsers run them after building a [`ModuleConfig`], so a config
//! imported from SafeKit is held to exactly the same standard as a native one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::error::ValidationError;
use crate::model::{DefaultPrimary, Mode, ModuleConfig, DEFAULT_POWER, MAX_FARM_NODES};

impl ModuleConfig {
    /// Checks the rules that types alone do not enforce. Problems are found
    /// in file order (module, heartbeat, nodes, scripts); the first is returned.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_module()?;
        self.validate_heartbeat()?;
        self.validate_nodes()?;
        self.validate_scripts()?;
        self.validate_network()?;
        self.validate_replication()?;
        self.validate_farm()?;
        self.validate_witness()
    }

    /// A witness guards a mirror module, and its lease must leave the
    /// primary time to stop its application before it ends.
    fn validate_witness(&self) -> Result<(), ValidationError> {
        if let Some(splitbrain) = &self.splitbrain {
            if self.mode != Mode::Mirror {
                return invalid(
                    "splitbrain",
                    "the split-brain checker guards the primary role of a mirror module",
                );
            }
            if self.witness.is_some() {
                return invalid(
                    "splitbrain",
                    "use either [witness] (leases, the stronger guard) or [splitbrain] (ping), not both",
                );
            }
            if splitbrain.ping.is_empty() {
                return invalid("splitbrain.ping", "at least one address to ping is needed");
            }
        }
        let Some(witness) = &self.witness else {
            return Ok(());
        };
        if self.mode != Mode::Mirror {
            return invalid(
                "witness",
                "a witness guards the primary role of a mirror module; farm modules have none",
            );
        }
        if witness.addresses.is_empty() {
            return invalid(
                "witness.addresses",
                "at least one address of the witness is needed",
            );
        }
        for (i, address) in witness.addresses.iter().enumerate() {
            if address.is_unspecified() || address.is_multicast() {
                return invalid(
                    format!("witness.addresses[{i}]"),
                    format!("{address} cannot be the address of a witness"),
                );
            }
        }
        if witness.port == 0 {
            return invalid("witness.port", "the port must be between 1 and 65535");
        }
        let timeout = self.heartbeat.timeout;
        // A node reads consent in its peer's statuses; those are at most a
        // timeout old, and older than any lease the peer still holds.
        if witness.lease < timeout {
            return invalid(
                "witness.lease",
                format!(
                    "the lease ({}) must last at least the heartbeat timeout ({})",
                    format_duration(witness.lease),
                    format_duration(timeout)
                ),
            );
        }
        let budget = self.scripts.stop_budget();
        let needed = budget + self.heartbeat.pulse * 3;
        if witness.lease <= needed {
            return invalid(
                "witness.lease",
                format!(
                    "the lease ({}) must exceed the time to stop the application ({}: the longest script timeout, then stop_prim's stop_timeout and force_stop_timeout) plus three pulses ({}): lower the [scripts] timeouts or lengthen the lease",
                    format_duration(witness.lease),
                    format_duration(budget),
                    format_duration(needed)
                ),
            );
        }
        Ok(())
    }

    /// What belongs to one mode only, and the farm's load-balancing rules.
    fn validate_farm(&self) -> Result<(), ValidationError> {
        if self.mode == Mode::Mirror {
            if self.vip.as_ref().is_some_and(|v| v.vmac.is_some()) {
                return invalid(
                    "vip.vmac",
                    "a virtual MAC is for farm modules; a mirror module's virtual IP uses the primary's own MAC",
                );
            }
            if !self.load_balancing.is_empty() {
                return invalid(
                    "load_balancing[0]",
                    "load-balancing rules are for farm modules (mode = \"farm\")",
                );
            }
            return Ok(());
        }
        if let Some(mac) = self.vip.as_ref().and_then(|v| v.vmac) {
            if mac[0] & 1 == 1 || mac == [0; 6] {
                return invalid(
                    "vip.vmac",
                    format!(
                        "{} is not a unicast MAC address (the first byte must be even, and not all zero)",
                        crate::model::format_mac(&mac)
                    ),
                );
            }
        }
        if !self.load_balancing.is_empty() && self.vip.is_none() {
            return invalid(
                "load_balancing[0]",
                "load-balancing rules split the traffic of the virtual IP: add a [vip]",
            );
        }
        for (i, rule) in self.load_balancing.iter().enumerate() {
            // An earlier rule for the same protocol and port (or every port)
            // takes all this rule's traffic.
            let shadow = self.load_balancing[..i].iter().position(|r| {
                r.protocol == rule.protocol && (r.port.is_none() || r.port == rule.port)
            });
            if let Some(j) = shadow {
                return invalid(
                    format!("load_balancing[{i}]"),
                    format!("load_balancing[{j}] already covers this protocol and port; each packet follows the first rule that matches"),
                );
            }
        }
        if !self.replicated.is_empty() {
            return invalid(
                "replicated[0]",
                "replicated directories are for mirror modules; farm nodes each keep their own data",
            );
        }
        if let DefaultPrimary::Node(_) = self.default_primary {
            return invalid(
                "module.default_primary",
                "a farm module has no primary: every node is UP",
            );
        }
        if !self.checkers.is_empty() {
            return invalid(
                "checker[0]",
                "checkers are not supported in farm modules yet",
            );
        }
        Ok(())
    }

    fn validate_replication(&self) -> Result<(), ValidationError> {
        if self.replicated.is_empty() {
            return Ok(());
        }
        let base = self
            .replication
            .port
            .unwrap_or_else(|| self.heartbeat.port.wrapping_add(1));
        let field = if self.replication.port.is_some() {
            "replication.port"
        } else {
            "heartbeat.port"
        };
        if base == 0 || usize::from(base) + self.replicated.len() - 1 > usize::from(u16::MAX) {
            return invalid(
                field,
                format!(
                    "replication needs ports {base} to {} (one per replicated directory): out of range",
                    usize::from(base) + self.replicated.len() - 1
                ),
            );
        }
        let ports = base..=base + (self.replicated.len() as u16 - 1);
        if ports.contains(&self.heartbeat.port) {
            return invalid(
                field,
                format!(
                    "replication ports {}..={} include the heartbeat port {}",
                    ports.start(),
                    ports.end(),
                    self.heartbeat.port
                ),
            );
        }
        if let Some(health) = &self.health {
            if ports.contains(&health.port) {
                return invalid(
                    field,
                    format!(
                        "replication ports {}..={} include the health port {}",
                        ports.start(),
                        ports.end(),
                        health.port
                    ),
                );
            }
        }
        for (i, r) in self.replicated.iter().enumerate() {
            let field = format!("replicated[{i}].dir");
            let normal = r.dir.is_absolute()
                && r.dir.parent().is_some()
                && r.dir.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            if !normal {
                return invalid(
                    &field,
                    format!(
                        "{} must be an absolute path, not /, without . or .. components",
                        r.dir.display()
                    ),
                );
            }
            for (k, path) in r.exclude.iter().enumerate() {
                let relative = !path.as_os_str().is_empty()
                    && path
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)));
                if !relative {
                    return invalid(
                        format!("replicated[{i}].exclude[{k}]"),
                        format!(
                            "{:?}: expected a path relative to {}, without . or ..",
                            path,
                            r.dir.display()
                        ),
                    );
                }
            }
            for (k, pattern) in r.exclude_names.iter().enumerate() {
                if let Err(e) = regex_automata::meta::Regex::new(pattern) {
                    return invalid(
                        format!("replicated[{i}].exclude_names[{k}]"),
                        format!("{pattern:?} is not a regular expression: {e}"),
                    );
                }
            }
            for (j, other) in self.replicated[..i].iter().enumerate() {
                if other.dir == r.dir {
                    return invalid(
                        &field,
                        format!("{} is already replicated[{j}]", r.dir.display()),
                    );
                }
                if other.dir.starts_with(&r.dir) || r.dir.starts_with(&other.dir) {
                    return invalid(
                        &field,
                        format!(
                            "{} and replicated[{j}] ({}) are nested; replicated directories must be disjoint",
                            r.dir.display(),
                            other.dir.display()
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_network(&self) -> Result<(), ValidationError> {
        if let Some(vip) = &self.vip {
            let taken = self.nodes.iter().find(|n| {
                n.addresses
                    .values()
                    .any(|a| *a == std::net::IpAddr::V4(vip.address))
            });
            if let Some(node) = taken {
                return invalid(
                    "vip.address",
                    format!(
                        "{} is an address of node {}; the virtual IP must be a free address",
                        vip.address, node.name
                    ),
                );
            }
            if vip.address.is_unspecified()
                || vip.address.is_multicast()
                || vip.address.is_broadcast()
            {
                return invalid(
                    "vip.address",
                    format!("{} cannot be a virtual IP", vip.address),
                );
            }
            if !(1..=32).contains(&vip.prefix) {
                return invalid("vip.prefix", "the prefix length must be between 1 and 32");
            }
            if let Some(interface) = &vip.interface {
                let valid = !interface.is_empty()
                    && interface.len() < 16
                    && !interface.contains(['/', ' ', '\0'])
                    && interface != "."
                    && interface != "..";
                if !valid {
                    return invalid(
                        "vip.interface",
                        format!("{interface:?} is not a valid interface name"),
                    );
                }
            }
        }
        if let Some(health) = &self.health {
            if health.port == 0 {
                return invalid("health.port", "the port must be between 1 and 65535");
            }
            if health.port == self.heartbeat.port {
                return invalid(
                    "health.port",
                    format!(
                        "port {} is the heartbeat port; the health endpoint needs another one",
                        health.port
                    ),
                );
            }
        }
        Ok(())
    }

    fn validate_module(&self) -> Result<(), ValidationError> {
        if !is_module_name(&self.name) {
            return invalid(
                "module.name",
                format!(
                    "invalid module name {:?}: use 1 to 32 characters among A-Z a-z 0-9 _ -",
                    self.name
                ),
            );
        }
        if let DefaultPrimary::Node(primary) = &self.default_primary {
            // In the file, these words mean the other two policies.
            if matches!(primary.as_str(), "alone" | "lastprim") {
                return invalid(
                    "module.default_primary",
                    format!("a node called {primary:?} cannot be the default primary: the name means a policy"),
                );
            }
            if self.node(primary).is_none() {
                return invalid(
                    "module.default_primary",
                    format!(
                        "{primary:?} is not a node of this module (nodes: {}); use \"alone\", \"lastprim\" or a node name",
                        self.node_names()
                    ),
                );
            }
        }
        Ok(())
    }

    fn validate_heartbeat(&self) -> Result<(), ValidationError> {
        let hb = &self.heartbeat;
        if hb.port == 0 {
            return invalid("heartbeat.port", "the port must be between 1 and 65535");
        }
        if hb.pulse.is_zero() {
            return invalid("heartbeat.pulse", "the pulse must be greater than zero");
        }
        // Below two pulses a single delayed packet would be taken for a dead peer.
        if hb.timeout < hb.pulse * 2 {
            return invalid(
                "heartbeat.timeout",
                format!(
                    "the timeout ({}) must be at least twice the pulse ({})",
                    format_duration(hb.timeout),
                    format_duration(hb.pulse)
                ),
            );
        }
        if hb.networks.is_empty() {
            return invalid(
                "heartbeat.networks",
                "at least one heartbeat network is needed",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, network) in hb.networks.iter().enumerate() {
            let field = format!("heartbeat.networks[{i}]");
            if network.trim().is_empty() {
                return invalid(field, "a network name cannot be empty");
            }
            if !seen.insert(network) {
                return invalid(field, format!("network {network:?} is listed twice"));
            }
        }
        Ok(())
    }

    fn validate_nodes(&self) -> Result<(), ValidationError> {
        let (least, most, needs) = match self.mode {
            Mode::Mirror => (2, 2, "a mirror module needs exactly 2 nodes".to_string()),
            Mode::Farm => (
                2,
                MAX_FARM_NODES,
                format!("a farm module needs 2 to {MAX_FARM_NODES} nodes"),
            ),
        };
        if !(least..=most).contains(&self.nodes.len()) {
            // Point at the first extra node, or at the node list when short.
            let field = if self.nodes.len() > most {
                format!("node[{most}]")
            } else {
                "node".to_string()
            };
            return invalid(field, format!("{needs}, found {}", self.nodes.len()));
        }
        if self.mode == Mode::Farm && self.nodes.iter().all(|n| n.power == 0) {
            return invalid(
                "node[0].power",
                "every node has power 0: at least one must take traffic",
            );
        }
        let mut names = BTreeSet::new();
        let mut owners: BTreeMap<IpAddr, String> = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if !is_node_name(&node.name) {
                return invalid(
                    format!("node[{i}].name"),
                    format!(
                        "invalid node name {:?}: use 1 to 64 characters among A-Z a-z 0-9 _ . -",
                        node.name
                    ),
                );
            }
            if self.mode == Mode::Mirror && node.power != DEFAULT_POWER {
                return invalid(
                    format!("node[{i}].power"),
                    "power is the share of a farm module's traffic; a mirror module has none",
                );
            }
            if !names.insert(&node.name) {
                return invalid(
                    format!("node[{i}].name"),
                    format!("node name {:?} is used twice", node.name),
                );
            }
            for network in node.addresses.keys() {
                if !self.heartbeat.networks.contains(network) {
                    return invalid(
                        format!("node[{i}].address.{network}"),
                        format!(
                            "{network:?} is not a heartbeat network (heartbeat networks: {})",
                            self.heartbeat.networks.join(", ")
                        ),
                    );
                }
            }
            for network in &self.heartbeat.networks {
                let Some(address) = node.addresses.get(network) else {
                    return invalid(
                        format!("node[{i}].address"),
                        format!(
                            "missing the address of node {:?} on heartbeat network {network:?}",
                            node.name
                        ),
                    );
                };
                let field = format!("node[{i}].address.{network}");
                if address.is_unspecified() || address.is_multicast() {
                    return invalid(field, format!("{address} cannot be a node address"));
                }
                if let Some(owner) = owners.insert(*address, field.clone()) {
                    return invalid(
                        field,
                        format!("address {address} is already used by {owner}"),
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_scripts(&self) -> Result<(), ValidationError> {
        let scripts = &self.scripts;
        if scripts
            .directory
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return invalid("scripts.directory", "the directory cannot be empty");
        }
        for (key, timeout) in [
            ("start_timeout", scripts.start_timeout),
            ("stop_timeout", scripts.stop_timeout),
            ("force_stop_timeout", scripts.force_stop_timeout),
        ] {
            if timeout.is_zero() {
                return invalid(
                    format!("scripts.{key}"),
                    "the timeout must be greater than zero",
                );
            }
        }
        for name in scripts.env.keys() {
            if !is_shell_identifier(name) {
                return invalid(
                    format!("scripts.env.{name}"),
                    format!(
                        "{name:?} is not a valid environment variable name: use A-Z a-z 0-9 _, not starting with a digit"
                    ),
                );
            }
        }
        Ok(())
    }

    fn node_names(&self) -> String {
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Result<(), ValidationError> {
    Err(ValidationError {
        field: field.into(),
        message: message.into(),
    })
}

fn is_module_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_shell_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Renders a duration in the largest unit that represents it exactly
/// (`24h`, `90s`, `700ms`), which `humantime` parses back to the same value.
pub(crate) fn format_duration(d: std::time::Duration) -> String {
    const UNITS: [(&str, u128); 6] = [
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    let (unit, size) = UNITS
        .iter()
        .find(|(_, size)| nanos % size == 0)
        .copied()
        .unwrap_or(("ns", 1));
    format!("{}{unit}", nanos / size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_render_in_the_largest_exact_unit() {
        for (d, text) in [
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_millis(700), "700ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(50), "50us"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(humantime::parse_duration(text).ok(), Some(d));
        }
    }

    #[test]
    fn names() {
        assert!(is_module_name("web-1_a"));
        assert!(!is_module_name(""));
        assert!(!is_module_name(&"a".repeat(33)));
        assert!(!is_module_name("web.1"));
        assert!(is_node_name("node1.example.com"));
        assert!(!is_node_name("node 1"));
        assert!(is_shell_identifier("_APP_PORT2"));
        assert!(!is_shell_identifier("2APP"));
        assert!(!is_shell_identifier("APP-PORT"));
        assert!(!is_shell_identifier(""));
    }
}
