//! The nodes of the module: names and addresses from `cluster.xml`, the
//! heartbeat networks and timings of `<heart>`, and farm powers.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use roxmltree::Node;

use super::xml::{count, duration, element_name, file_name, parse_port, Unit, XmlFile};
use super::Importer;
use crate::error::ConfigError;
use crate::model::{HeartbeatConfig, ModuleConfig, NodeConfig, DEFAULT_POWER};
use crate::validate::format_duration;

impl Importer {
    /// `<heart>` and its `<heartbeat>`s; returns the position of `port` if given.
    pub(super) fn heart(
        &mut self,
        f: &XmlFile<'_>,
        heart: Node<'_, '_>,
        hb: &mut HeartbeatConfig,
    ) -> Result<Option<usize>, ConfigError> {
        let start = heart.range().start;
        self.note("heartbeat", f, start, "<heart>");
        self.check_attributes(f, heart, &["port", "pulse", "timeout", "permanent_arp"]);
        let mut port_offset = None;
        if let Some(port) = self.attr(f, heart, "port") {
            self.note_attr("heartbeat.port", f, &port);
            hb.port = parse_port(f, &port)?;
            port_offset = Some(port.offset);
        }
        if let Some(pulse) = self.attr(f, heart, "pulse") {
            self.note_attr("heartbeat.pulse", f, &pulse);
            hb.pulse = duration(f, &pulse, Unit::Milliseconds)?;
        }
        if let Some(timeout) = self.attr(f, heart, "timeout") {
            self.note_attr("heartbeat.timeout", f, &timeout);
            hb.timeout = duration(f, &timeout, Unit::Milliseconds)?;
        }
        if let Some(arp) = self.attr(f, heart, "permanent_arp") {
            self.warn(
                f,
                arp.offset,
                &arp.field,
                "not supported; ignored (Holdfast does not set permanent ARP entries)",
            );
        }

        let mut flow = None;
        for beat in heart.children().filter(Node::is_element) {
            if beat.tag_name().name() != "heartbeat" {
                self.unsupported_element(f, beat);
                continue;
            }
            self.check_attributes(f, beat, &["name", "ident", "pulse", "timeout"]);
            let Some(name) = self.attr(f, beat, "name") else {
                return Err(f.error(
                    beat.range().start,
                    "<heartbeat>",
                    "the name attribute (a network of cluster.xml) is required; the pre-7.2 <server> syntax is not supported",
                ));
            };
            self.note_attr(
                &format!("heartbeat.networks[{}]", hb.networks.len()),
                f,
                &name,
            );
            hb.networks.push(name.value.to_string());
            if let Some(ident) = self.attr(f, beat, "ident") {
                if ident.value == "flow" {
                    // The replication connects over the networks in order:
                    // the flow's network first, as SafeKit puts it there.
                    flow = Some(hb.networks.len() - 1);
                } else if ident.value != name.value {
                    self.warn(
                        f,
                        ident.offset,
                        &ident.field,
                        "heartbeat labels are not supported; the network name is used",
                    );
                }
            }
            // Holdfast has one pulse and one timeout for all networks.
            for (key, global) in [("pulse", hb.pulse), ("timeout", hb.timeout)] {
                let Some(attr) = self.attr(f, beat, key) else {
                    continue;
                };
                let own = duration(f, &attr, Unit::Milliseconds)?;
                if own != global {
                    self.warn(
                        f,
                        attr.offset,
                        &attr.field,
                        format!(
                            "a per-network {key} is not supported; the {key} of <heart>, {}, is used for every network instead of {}",
                            format_duration(global),
                            format_duration(own)
                        ),
                    );
                }
            }
            self.legacy_children(f, beat, "server", "addresses come from cluster.xml");
        }
        if hb.networks.is_empty() {
            return Err(f.error(
                start,
                "<heart>",
                "at least one <heartbeat name=\"...\"> is needed",
            ));
        }
        if let Some(flow) = flow {
            let network = hb.networks.remove(flow);
            hb.networks.insert(0, network);
            self.move_network_places(flow);
        }
        Ok(port_offset)
    }

    /// Keeps the places of `heartbeat.networks[i]` right when network
    /// `from` moves to the front.
    fn move_network_places(&mut self, from: usize) {
        let key = |i: usize| format!("heartbeat.networks[{i}]");
        let moved = self.places.remove(&key(from));
        for i in (0..from).rev() {
            if let Some(place) = self.places.remove(&key(i)) {
                self.places.insert(key(i + 1), place);
            }
        }
        if let Some(place) = moved {
            self.places.insert(key(0), place);
        }
    }

    /// Nodes given on the command line: a name and one address per
    /// heartbeat network, in the order of the `<heartbeat>`s.
    pub(super) fn explicit_nodes(
        &mut self,
        nodes: &[(String, Vec<IpAddr>)],
        config: &mut ModuleConfig,
    ) -> Result<(), ConfigError> {
        let networks = &config.heartbeat.networks;
        for (name, addresses) in nodes {
            if addresses.len() != networks.len() {
                return Err(self.place("heartbeat.networks").error(format!(
                    "node {name:?} is given {} address(es); the module's heartbeats use {} network(s): {}",
                    addresses.len(),
                    networks.len(),
                    networks.join(", ")
                )));
            }
            config.nodes.push(NodeConfig {
                name: name.clone(),
                addresses: networks
                    .iter()
                    .cloned()
                    .zip(addresses.iter().copied())
                    .collect(),
                power: DEFAULT_POWER,
            });
        }
        Ok(())
    }

    /// Nodes and addresses from cluster.xml, for the module's networks.
    pub(super) fn cluster(
        &mut self,
        f: &XmlFile<'_>,
        config: &mut ModuleConfig,
    ) -> Result<(), ConfigError> {
        let root = f.doc.root_element();
        if root.tag_name().name() != "cluster" {
            return Err(f.error(
                root.range().start,
                element_name(root),
                "expected <cluster> as the root element",
            ));
        }
        self.check_attributes(f, root, &[]);
        let mut lans = None;
        for child in root.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "lans" if lans.is_some() => {
                    return Err(f.error(
                        child.range().start,
                        "<lans>",
                        "a second <lans>; only one is allowed",
                    ))
                }
                "lans" => lans = Some(child),
                _ => self.unsupported_element(f, child),
            }
        }
        let Some(lans) = lans else {
            return Err(f.error(root.range().start, "<cluster>", "missing <lans>"));
        };
        self.check_attributes(f, lans, &["port", "pulse", "mlost_count", "slost_count"]);
        if let Some(port) = self.attr(f, lans, "port") {
            self.warn(
                f,
                port.offset,
                &port.field,
                "the cluster's administration port (SafeKit's safeadmin), not a module's: the module's ports derive from its id; ignored",
            );
        }
        for key in ["pulse", "mlost_count", "slost_count"] {
            if let Some(attr) = self.attr(f, lans, key) {
                self.warn(
                    f,
                    attr.offset,
                    &attr.field,
                    "SafeKit's cluster membership settings do not apply to Holdfast; ignored",
                );
            }
        }

        let mut by_name = HashMap::new();
        for lan in lans.children().filter(Node::is_element) {
            if lan.tag_name().name() != "lan" {
                self.unsupported_element(f, lan);
                continue;
            }
            let Some(name) = self.attr(f, lan, "name") else {
                return Err(f.error(lan.range().start, "<lan>", "the name attribute is required"));
            };
            if by_name.insert(name.value, lan).is_some() {
                return Err(f.attr_error(&name, format!("a second <lan name={:?}>", name.value)));
            }
        }

        for (i, network) in config.heartbeat.networks.iter().enumerate() {
            let Some(&lan) = by_name.get(network.as_str()) else {
                return Err(self
                    .place(&format!("heartbeat.networks[{i}]"))
                    .error(format!(
                        "network {network:?} is not defined in {} (no <lan name={network:?}>)",
                        file_name(f.path)
                    )));
            };
            if i == 0 {
                self.note("node", f, lan.range().start, "<lan>");
            }
            // Only the lans this module uses are read; others may serve
            // other modules and are none of its business.
            self.check_attributes(f, lan, &["name"]);
            let mut seen = Vec::new();
            for member in lan.children().filter(Node::is_element) {
                if member.tag_name().name() != "node" {
                    self.unsupported_element(f, member);
                    continue;
                }
                self.check_attributes(f, member, &["name", "addr", "laddr"]);
                let Some(name) = self.attr(f, member, "name") else {
                    return Err(f.error(
                        member.range().start,
                        "<node>",
                        "the name attribute is required",
                    ));
                };
                let Some(addr) = self.attr(f, member, "addr") else {
                    return Err(f.error(
                        member.range().start,
                        "<node>",
                        "the addr attribute is required",
                    ));
                };
                if seen.contains(&name.value) {
                    return Err(f.attr_error(
                        &name,
                        format!(
                            "node {:?} appears twice in <lan name={network:?}>",
                            name.value
                        ),
                    ));
                }
                seen.push(name.value);
                if let Some(laddr) = self.attr(f, member, "laddr") {
                    self.warn(
                        f,
                        laddr.offset,
                        &laddr.field,
                        "NAT addresses are not supported; laddr ignored, addr used",
                    );
                }
                // SafeKit writes IPv6 literals in brackets.
                let literal = addr.value.trim();
                let literal = literal
                    .strip_prefix('[')
                    .and_then(|a| a.strip_suffix(']'))
                    .unwrap_or(literal);
                let ip: IpAddr = literal.parse().map_err(|_| {
                    f.attr_error(
                        &addr,
                        format!("expected an IP address, found {:?} (Holdfast does not resolve host names)", addr.value),
                    )
                })?;
                let index = match config.nodes.iter().position(|n| n.name == name.value) {
                    Some(index) => index,
                    None => {
                        let index = config.nodes.len();
                        self.note(&format!("node[{index}]"), f, member.range().start, "<node>");
                        self.note(
                            &format!("node[{index}].address"),
                            f,
                            member.range().start,
                            "<node>",
                        );
                        self.note_attr(&format!("node[{index}].name"), f, &name);
                        config.nodes.push(NodeConfig {
                            name: name.value.to_string(),
                            addresses: BTreeMap::new(),
                            power: DEFAULT_POWER,
                        });
                        index
                    }
                };
                self.note_attr(&format!("node[{index}].address.{network}"), f, &addr);
                config.nodes[index].addresses.insert(network.clone(), ip);
            }
        }
        Ok(())
    }

    // ---- attributes, warnings, places -----------------------------------

    /// `<cluster><host name power/></cluster>` of a group: the first one
    /// gives the nodes' powers; Holdfast has one power per node.
    pub(super) fn cluster_powers(
        &mut self,
        f: &XmlFile<'_>,
        cluster: Node<'_, '_>,
    ) -> Result<(), ConfigError> {
        self.check_attributes(f, cluster, &[]);
        if self.powers.is_some() {
            self.warn(
                f,
                cluster.range().start,
                "<cluster>",
                "powers per load-balancing group are not supported; the powers of the first <cluster> apply to every rule",
            );
            return Ok(());
        }
        let mut powers = Vec::new();
        for host in cluster.children().filter(Node::is_element) {
            if host.tag_name().name() != "host" {
                self.unsupported_element(f, host);
                continue;
            }
            self.check_attributes(f, host, &["name", "power"]);
            let Some(name) = self.attr(f, host, "name") else {
                return Err(f.error(
                    host.range().start,
                    "<host>",
                    "the name attribute is required",
                ));
            };
            let power = match self.attr(f, host, "power") {
                Some(power) => {
                    let value = count(f, &power)?;
                    (value, f.place(power.offset, power.field.clone()))
                }
                None => (DEFAULT_POWER, f.place(name.offset, name.field.clone())),
            };
            powers.push((
                name.value.to_string(),
                f.place(name.offset, name.field.clone()),
                power,
            ));
        }
        self.powers = Some(powers);
        Ok(())
    }

    /// Gives each node its `<host power>`; nodes a `<cluster>` leaves out
    /// get no traffic (power 0), as in SafeKit.
    pub(super) fn apply_powers(&mut self, config: &mut ModuleConfig) -> Result<(), ConfigError> {
        let Some(powers) = self.powers.take() else {
            return Ok(());
        };
        for node in &mut config.nodes {
            node.power = 0;
        }
        for (name, name_place, (power, power_place)) in powers {
            let Some(index) = config.nodes.iter().position(|n| n.name == name) else {
                let known: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
                return Err(name_place.error(format!(
                    "{name:?} is not a node of the module's networks in cluster.xml (nodes: {})",
                    known.join(", ")
                )));
            };
            self.places
                .insert(format!("node[{index}].power"), power_place);
            config.nodes[index].power = power;
        }
        Ok(())
    }
}
