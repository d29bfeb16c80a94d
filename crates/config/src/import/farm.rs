//! Farm modules: `<farm>` (its heartbeat) and `<loadbalancing>` (rules
//! splitting the virtual IP's traffic).

use std::time::Duration;

use roxmltree::Node;

use super::xml::{duration, parse_port, Unit, XmlFile};
use super::Importer;
use crate::error::ConfigError;
use crate::model::{Balance, HeartbeatConfig, Protocol, Rule};

/// SafeKit's farm heartbeat: a pulse of 100 ms, a node lost after 20.
pub(super) const FARM_PULSE: Duration = Duration::from_millis(100);
pub(super) const FARM_LOST_COUNT: u32 = 20;

impl Importer {
    /// `<farm>` and its `<lan>`s (SafeKit §13.5); returns the position of
    /// `port` if given.
    pub(super) fn farm(
        &mut self,
        f: &XmlFile<'_>,
        farm: Node<'_, '_>,
        hb: &mut HeartbeatConfig,
    ) -> Result<Option<usize>, ConfigError> {
        let start = farm.range().start;
        self.note("heartbeat", f, start, "<farm>");
        self.check_attributes(f, farm, &["port", "pulse", "mlost_count"]);
        let mut port_offset = None;
        if let Some(port) = self.attr(f, farm, "port") {
            self.note_attr("heartbeat.port", f, &port);
            hb.port = parse_port(f, &port)?;
            port_offset = Some(port.offset);
        }
        let mut lost = FARM_LOST_COUNT;
        if let Some(count) = self.attr(f, farm, "mlost_count") {
            self.note_attr("heartbeat.timeout", f, &count);
            lost = count.value.trim().parse().map_err(|_| {
                f.attr_error(&count, format!("expected a count, found {:?}", count.value))
            })?;
        }
        if let Some(pulse) = self.attr(f, farm, "pulse") {
            self.note_attr("heartbeat.pulse", f, &pulse);
            hb.pulse = duration(f, &pulse, Unit::Milliseconds)?;
        }
        // A node is lost after mlost_count pulses without a heartbeat.
        hb.timeout = hb.pulse.saturating_mul(lost);
        for lan in farm.children().filter(Node::is_element) {
            if lan.tag_name().name() != "lan" {
                self.unsupported_element(f, lan);
                continue;
            }
            self.check_attributes(f, lan, &["name"]);
            let Some(name) = self.attr(f, lan, "name") else {
                return Err(f.error(
                    lan.range().start,
                    "<lan>",
                    "the name attribute (a network of cluster.xml) is required",
                ));
            };
            self.note_attr(
                &format!("heartbeat.networks[{}]", hb.networks.len()),
                f,
                &name,
            );
            hb.networks.push(name.value.to_string());
            self.legacy_children(f, lan, "node", "nodes and addresses come from cluster.xml");
        }
        if hb.networks.is_empty() {
            return Err(f.error(start, "<farm>", "at least one <lan name=\"...\"> is needed"));
        }
        Ok(port_offset)
    }

    /// `<loadbalancing_list>` of a farm's `<vip>` (SafeKit §13.6.6): the
    /// rules of every `<group>`, and the powers of the first `<cluster>`
    /// (kept for [`apply_powers`](Self::apply_powers), once the nodes are
    /// known from cluster.xml).
    pub(super) fn load_balancing(
        &mut self,
        f: &XmlFile<'_>,
        vip: Node<'_, '_>,
    ) -> Result<Vec<Rule>, ConfigError> {
        let mut rules = Vec::new();
        let lists = vip
            .children()
            .filter(|n| n.has_tag_name("loadbalancing_list"));
        for list in lists {
            self.check_attributes(f, list, &[]);
            for group in list.children().filter(Node::is_element) {
                if group.tag_name().name() != "group" {
                    self.unsupported_element(f, group);
                    continue;
                }
                self.check_attributes(f, group, &["name"]);
                for el in group.children().filter(Node::is_element) {
                    match el.tag_name().name() {
                        "cluster" => self.cluster_powers(f, el)?,
                        "rule" => {
                            if let Some(rule) = self.rule(f, el, rules.len())? {
                                rules.push(rule);
                            }
                        }
                        _ => self.unsupported_element(f, el),
                    }
                }
            }
        }
        Ok(rules)
    }

    /// One `<rule>`; `None` for what has no meaning here (`proto="arp"`).
    pub(super) fn rule(
        &mut self,
        f: &XmlFile<'_>,
        el: Node<'_, '_>,
        index: usize,
    ) -> Result<Option<Rule>, ConfigError> {
        self.check_attributes(f, el, &["virtual_addr", "port", "proto", "filter"]);
        let start = el.range().start;
        let Some(proto) = self.attr(f, el, "proto") else {
            return Err(f.error(start, "<rule>", "the proto attribute is required"));
        };
        let protocol = match proto.value {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "arp" => {
                self.warn(
                    f,
                    proto.offset,
                    &proto.field,
                    "ARP answers are never balanced: every node answers with the virtual MAC; ignored",
                );
                return Ok(None);
            }
            p => {
                return Err(f.attr_error(
                    &proto,
                    format!("unknown protocol {p:?}; expected \"tcp\", \"udp\" or \"arp\""),
                ))
            }
        };
        let path = format!("load_balancing[{index}]");
        self.note(&path, f, start, "<rule>");
        let port = match self.attr(f, el, "port") {
            Some(port) if port.value.trim() != "*" => {
                self.note_attr(&format!("{path}.port"), f, &port);
                Some(parse_port(f, &port)?)
            }
            _ => None,
        };
        if let Some(addr) = self.attr(f, el, "virtual_addr") {
            if addr.value.trim() != "*" {
                self.warn(
                    f,
                    addr.offset,
                    &addr.field,
                    "a farm module has one virtual IP; the rule applies to it",
                );
            }
        }
        let Some(filter) = self.attr(f, el, "filter") else {
            return Err(f.error(start, "<rule>", "the filter attribute is required"));
        };
        self.note_attr(&format!("{path}.by"), f, &filter);
        let balance = match filter.value {
            "on_addr" => Balance::ClientIp,
            "on_port" => Balance::ClientIpPort,
            "on_ipid" => {
                self.warn(
                    f,
                    filter.offset,
                    &filter.field,
                    "balancing on the IP identifier is not supported; imported as on_port (client IP and port)",
                );
                Balance::ClientIpPort
            }
            v => {
                return Err(f.attr_error(
                    &filter,
                    format!(
                        "unknown filter {v:?}; expected \"on_addr\", \"on_port\" or \"on_ipid\""
                    ),
                ))
            }
        };
        Ok(Some(Rule {
            protocol,
            port,
            balance,
        }))
    }
}
