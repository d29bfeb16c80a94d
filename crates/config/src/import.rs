//! Import of a SafeKit mirror or farm module: its `userconfig.xml`, plus the
//! cluster's `cluster.xml` for the node addresses.
//!
//! The import never loses anything quietly: whatever Holdfast does not (yet)
//! support — unknown attributes, per-network timings and so on — is
//! reported as an [`ImportWarning`] with its line. What cannot be converted at
//! all (a light module, a malformed value) is a [`ConfigError`], and the result
//! passes the same [`ModuleConfig::validate`] as the native format, with its
//! errors placed on the XML element or attribute they come from.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use roxmltree::{Document, Node, ParsingOptions};

use crate::checker::{Action as CheckerAction, CheckerConfig, CheckerKind, InterfaceTarget, When};
use crate::error::{line_column, ConfigError, ValidationError};
use crate::model::{
    Balance, Boot, DefaultPrimary, HeartbeatConfig, Mode, ModuleConfig, NodeConfig, Protocol, Rule,
    ScriptsConfig, SplitBrainConfig, VipConfig, DEFAULT_LOOP_INTERVAL, DEFAULT_MAXLOOP,
    DEFAULT_PORT, DEFAULT_POWER, DEFAULT_PULSE, DEFAULT_TIMEOUT,
};
use crate::native::parse_mac;
use crate::validate::format_duration;

/// The result of [`import_userconfig`]: the configuration, and what of the
/// SafeKit files it does not carry over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub config: ModuleConfig,
    /// In file order: `userconfig.xml` first, then `cluster.xml` (whose
    /// messages start with the file name).
    pub warnings: Vec<ImportWarning>,
}

/// Something in the SafeKit files that the imported configuration does not
/// reproduce. Displays as `line N: <element>: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportWarning {
    /// 1-based line in the file.
    pub line: usize,
    /// The element, as `<rfs>`, or element and attribute, as `<service boot_delay>`.
    pub element: String,
    pub message: String,
}

impl fmt::Display for ImportWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.element, self.message)
    }
}

/// Converts a SafeKit mirror module into a [`ModuleConfig`] named `module_name`.
///
/// `cluster` is the content and path of SafeKit's `cluster.xml`, which holds
/// the node names and addresses; without it the import fails. Paths are used
/// in messages only.
pub fn import_userconfig(
    userconfig: &str,
    userconfig_path: &Path,
    cluster: Option<(&str, &Path)>,
    module_name: &str,
) -> Result<Imported, ConfigError> {
    let mut importer = Importer::default();
    let (text, fixed_quotes) = normalize_quotes(userconfig);
    let user = XmlFile::parse(&text, userconfig_path, 0)?;
    importer.report_quotes(&user, &fixed_quotes);

    let mut config = ModuleConfig {
        name: module_name.to_string(),
        mode: Mode::Mirror,
        failover: true,
        default_primary: DefaultPrimary::Alone,
        swap_back: true,
        boot: Boot::Off,
        maxloop: DEFAULT_MAXLOOP,
        loop_interval: DEFAULT_LOOP_INTERVAL,
        heartbeat: HeartbeatConfig {
            port: DEFAULT_PORT,
            pulse: DEFAULT_PULSE,
            timeout: DEFAULT_TIMEOUT,
            networks: Vec::new(),
        },
        nodes: Vec::new(),
        scripts: ScriptsConfig::default(),
        vip: None,
        health: None,
        checkers: Vec::new(),
        replication: Default::default(),
        replicated: Vec::new(),
        load_balancing: Vec::new(),
        witness: None,
        splitbrain: None,
    };

    let safe = user.doc.root_element();
    if safe.tag_name().name() != "safe" {
        return Err(user.error(
            safe.range().start,
            element_name(safe),
            "expected <safe> as the root element",
        ));
    }
    importer.note("", &user, safe.range().start, element_name(safe));
    importer.check_attributes(&user, safe, &[]);
    let mut service = None;
    for child in safe.children().filter(Node::is_element) {
        match child.tag_name().name() {
            "service" if service.is_some() => {
                return Err(user.error(
                    child.range().start,
                    "<service>",
                    "a second <service>; only one is allowed",
                ));
            }
            "service" => service = Some(child),
            _ => importer.unsupported_element(&user, child),
        }
    }
    let Some(service) = service else {
        return Err(user.error(safe.range().start, "<safe>", "missing <service>"));
    };
    let heart_port = importer.service(&user, service, &mut config)?;

    let Some((cluster_text, cluster_path)) = cluster else {
        let place = importer.place("heartbeat.networks[0]");
        return Err(place.error(
            "node names and addresses come from SafeKit's cluster.xml; it is needed to import this module",
        ));
    };
    let (text, fixed_quotes) = normalize_quotes(cluster_text);
    let cluster = XmlFile::parse(&text, cluster_path, 1)?;
    importer.report_quotes(&cluster, &fixed_quotes);
    importer.cluster(&cluster, &mut config, heart_port)?;
    importer.apply_powers(&mut config)?;

    config
        .validate()
        .map_err(|ValidationError { field, message }| importer.place(&field).error(message))?;

    // Warnings were gathered section by section; give them in file order.
    importer.warnings.sort_by_key(|(file, w)| (*file, w.line));
    Ok(Imported {
        config,
        warnings: importer.warnings.into_iter().map(|(_, w)| w).collect(),
    })
}

/// Default unit of a SafeKit duration written as a bare number.
#[derive(Clone, Copy)]
enum Unit {
    Milliseconds,
    Seconds,
    Hours,
}

impl Unit {
    fn of(self, n: u64) -> Option<Duration> {
        match self {
            Unit::Milliseconds => Some(Duration::from_millis(n)),
            Unit::Seconds => Some(Duration::from_secs(n)),
            Unit::Hours => n.checked_mul(3600).map(Duration::from_secs),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Unit::Milliseconds => {
                "a number of milliseconds or a duration with a unit, like \"700ms\""
            }
            Unit::Seconds => "a number of seconds or a duration with a unit, like \"300s\"",
            Unit::Hours => "a number of hours or a duration with a unit, like \"24h\"",
        }
    }
}

/// A parsed XML file. `index` orders warnings: 0 for userconfig.xml, 1 for
/// cluster.xml.
struct XmlFile<'input> {
    path: &'input Path,
    index: u8,
    doc: Document<'input>,
}

impl<'input> XmlFile<'input> {
    fn parse(text: &'input str, path: &'input Path, index: u8) -> Result<Self, ConfigError> {
        let options = ParsingOptions {
            allow_dtd: true,
            ..ParsingOptions::default()
        };
        let doc = Document::parse_with_options(text, options).map_err(|e| {
            let pos = e.pos();
            // roxmltree puts " at LINE:COLUMN" in its messages; the error
            // carries the position already.
            let message = e.to_string().replace(&format!(" at {pos}"), "");
            ConfigError {
                file: path.to_path_buf(),
                line: pos.row as usize,
                column: pos.col as usize,
                field: String::new(),
                message,
            }
        })?;
        Ok(XmlFile { path, index, doc })
    }

    fn place(&self, offset: usize, field: impl Into<String>) -> Place {
        let (line, column) = line_column(self.doc.input_text(), offset);
        Place {
            file: self.path.to_path_buf(),
            line,
            column,
            field: field.into(),
        }
    }

    fn error(
        &self,
        offset: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.place(offset, field).error(message)
    }

    fn attr_error(&self, attr: &Attr<'_>, message: impl Into<String>) -> ConfigError {
        self.error(attr.offset, attr.field.clone(), message)
    }

    fn line(&self, offset: usize) -> usize {
        line_column(self.doc.input_text(), offset).0
    }
}

/// Where a setting of the imported configuration came from.
#[derive(Debug, Clone)]
struct Place {
    file: PathBuf,
    line: usize,
    column: usize,
    field: String,
}

impl Place {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            field: self.field.clone(),
            message: message.into(),
        }
    }
}

/// An attribute read from an element.
struct Attr<'a> {
    value: &'a str,
    /// Start of the value in the text.
    offset: usize,
    /// `<element attribute>`, as shown in messages.
    field: String,
}

/// SafeKit's farm heartbeat: a pulse of 100 ms, a node lost after 20.
const FARM_PULSE: Duration = Duration::from_millis(100);
const FARM_LOST_COUNT: u32 = 20;

/// A `<host>` of a load-balancing `<cluster>`: name, where the name is,
/// power and where the power is.
type HostPower = (String, Place, (u32, Place));

#[derive(Default)]
struct Importer {
    /// With the index of their file, to sort them at the end.
    warnings: Vec<(u8, ImportWarning)>,
    /// The first `<cluster>`'s powers, applied once nodes are known.
    powers: Option<Vec<HostPower>>,
    /// Native field path (`heartbeat.pulse`) → its origin, so that validation
    /// errors point into the SafeKit files.
    places: HashMap<String, Place>,
    /// `<check><splitbrain>`, read along with the checkers.
    splitbrain: Option<SplitBrainConfig>,
}

impl Importer {
    /// `<service>`; returns the position of `<heart port>` if it was given.
    fn service(
        &mut self,
        f: &XmlFile<'_>,
        service: Node<'_, '_>,
        config: &mut ModuleConfig,
    ) -> Result<Option<usize>, ConfigError> {
        let start = service.range().start;
        self.note("module", f, start, "<service>");
        self.check_attributes(
            f,
            service,
            &[
                "mode",
                "boot",
                "boot_delay",
                "failover",
                "defaultprim",
                "maxloop",
                "loop_interval",
                "automatic_reboot",
            ],
        );

        let Some(mode) = self.attr(f, service, "mode") else {
            return Err(f.error(
                start,
                "<service>",
                "the mode attribute is required (mode=\"mirror\")",
            ));
        };
        match mode.value {
            "mirror" => config.mode = Mode::Mirror,
            "farm" => {
                config.mode = Mode::Farm;
                // SafeKit's farm membership defaults: 100 ms, 20 lost pulses.
                config.heartbeat.pulse = FARM_PULSE;
                config.heartbeat.timeout = FARM_PULSE * FARM_LOST_COUNT;
            }
            m @ "light" => {
                return Err(f.attr_error(
                    &mode,
                    format!(
                        "mode {m:?} is not supported yet; \"mirror\" and \"farm\" modules can be imported"
                    ),
                ))
            }
            m => {
                return Err(f.attr_error(
                    &mode,
                    format!("unknown mode {m:?}; expected \"mirror\" or \"farm\""),
                ))
            }
        }

        match self.attr(f, service, "boot") {
            None => self.warn(
                f,
                start,
                "<service>",
                "no boot attribute: SafeKit's default \"ignore\" leaves starting at boot to `safekit boot`; imported as boot = \"off\"",
            ),
            Some(boot) => {
                self.note_attr("module.boot", f, &boot);
                config.boot = match boot.value {
                    "on" => Boot::On,
                    "off" => Boot::Off,
                    "auto" => Boot::Auto,
                    "ignore" => {
                        self.warn(
                            f,
                            boot.offset,
                            &boot.field,
                            "boot=\"ignore\" leaves starting at boot to `safekit boot`, which Holdfast does not have; imported as boot = \"off\"",
                        );
                        Boot::Off
                    }
                    b => {
                        return Err(f.attr_error(
                            &boot,
                            format!("unknown value {b:?}; expected \"on\", \"off\", \"auto\" or \"ignore\""),
                        ))
                    }
                };
            }
        }
        if let Some(delay) = self.attr(f, service, "boot_delay") {
            let delay_value = parse_duration(delay.value, Unit::Seconds);
            if delay_value != Some(Duration::ZERO) {
                self.warn(
                    f,
                    delay.offset,
                    &delay.field,
                    "a boot delay is not supported yet; ignored (the module starts without delay)",
                );
            }
        }
        if let Some(failover) = self.attr(f, service, "failover") {
            self.note_attr("module.failover", f, &failover);
            config.failover = on_off(f, &failover)?;
        }
        if let Some(prim) = self.attr(f, service, "defaultprim") {
            self.note_attr("module.default_primary", f, &prim);
            self.note_attr("module.swap_back", f, &prim);
            config.default_primary = match prim.value {
                "alone" => DefaultPrimary::Alone,
                "lastprim" => DefaultPrimary::LastPrim,
                // SafeKit returns the primary role to the named server as soon
                // as both run, which is Holdfast's swap_back.
                node => {
                    config.swap_back = true;
                    DefaultPrimary::Node(node.to_string())
                }
            };
        }
        if let Some(maxloop) = self.attr(f, service, "maxloop") {
            self.note_attr("module.maxloop", f, &maxloop);
            config.maxloop = maxloop.value.trim().parse().map_err(|_| {
                f.attr_error(
                    &maxloop,
                    format!("expected a count, found {:?}", maxloop.value),
                )
            })?;
        }
        if let Some(interval) = self.attr(f, service, "loop_interval") {
            self.note_attr("module.loop_interval", f, &interval);
            config.loop_interval = duration(f, &interval, Unit::Hours)?;
        }
        if let Some(reboot) = self.attr(f, service, "automatic_reboot") {
            match reboot.value {
                "off" => {}
                "on" => self.warn(
                    f,
                    reboot.offset,
                    &reboot.field,
                    "rebooting instead of stopstart is not supported; ignored",
                ),
                v => {
                    return Err(f.attr_error(
                        &reboot,
                        format!("unknown value {v:?}; expected \"on\" or \"off\""),
                    ))
                }
            }
        }

        let mut heart = None;
        let mut farm = None;
        let mut user = None;
        let mut vip = None;
        let mut rfs = None;
        for child in service.children().filter(Node::is_element) {
            let slot = match child.tag_name().name() {
                "rfs" => &mut rfs,
                "heart" if config.mode == Mode::Mirror => &mut heart,
                "farm" if config.mode == Mode::Farm => &mut farm,
                "user" => &mut user,
                "vip" => &mut vip,
                "errd" => {
                    let checkers = self.errd(f, child)?;
                    config.checkers.extend(checkers);
                    continue;
                }
                "check" => {
                    let checkers = self.check(f, child)?;
                    config.checkers.extend(checkers);
                    if let Some(splitbrain) = self.splitbrain.take() {
                        config.splitbrain = Some(splitbrain);
                    }
                    continue;
                }
                _ => {
                    self.unsupported_element(f, child);
                    continue;
                }
            };
            if slot.is_some() {
                return Err(f.error(
                    child.range().start,
                    element_name(child),
                    "a second one of this element; only one is allowed",
                ));
            }
            *slot = Some(child);
        }
        let heart_port = match (config.mode, heart, farm) {
            (Mode::Mirror, Some(heart), _) => self.heart(f, heart, &mut config.heartbeat)?,
            (Mode::Farm, _, Some(farm)) => self.farm(f, farm, &mut config.heartbeat)?,
            (Mode::Mirror, None, _) => {
                return Err(f.error(
                    start,
                    "<service>",
                    "a mirror module needs a <heart> element with at least one <heartbeat>",
                ))
            }
            (Mode::Farm, _, None) => {
                return Err(f.error(
                    start,
                    "<service>",
                    "a farm module needs a <farm> element with at least one <lan>",
                ))
            }
        };
        if let Some(vip) = vip {
            config.vip = self.vip(f, vip, config.mode)?;
            if config.mode == Mode::Farm {
                config.load_balancing = self.load_balancing(f, vip)?;
            }
        }
        if let Some(rfs) = rfs {
            self.rfs(f, rfs, config)?;
        }
        match user {
            Some(user) => self.user(f, user, &mut config.scripts)?,
            None => {
                self.note("scripts", f, start, "<service>");
                self.warn(
                    f,
                    start,
                    "<service>",
                    "no <user>: SafeKit would not run the module scripts; Holdfast always runs them, with default settings",
                );
            }
        }
        Ok(heart_port)
    }

    /// `<heart>` and its `<heartbeat>`s; returns the position of `port` if given.
    fn heart(
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
                    self.warn(
                        f,
                        ident.offset,
                        &ident.field,
                        "ident=\"flow\" puts the replication flow on this network; file replication is not supported yet, so it is ignored",
                    );
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
        Ok(port_offset)
    }

    /// `<farm>` and its `<lan>`s (SafeKit §13.5); returns the position of
    /// `port` if given.
    fn farm(
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
    fn load_balancing(
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
    fn rule(
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

    /// `<cluster><host name power/></cluster>` of a group: the first one
    /// gives the nodes' powers; Holdfast has one power per node.
    fn cluster_powers(
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
    fn apply_powers(&mut self, config: &mut ModuleConfig) -> Result<(), ConfigError> {
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

    /// Reports the children of a heartbeat network element: the pre-7.2
    /// `legacy` element, whose content comes from cluster.xml now, or others.
    fn legacy_children(&mut self, f: &XmlFile<'_>, parent: Node<'_, '_>, legacy: &str, why: &str) {
        for child in parent.children().filter(Node::is_element) {
            if child.tag_name().name() == legacy {
                self.warn(
                    f,
                    child.range().start,
                    &element_name(child),
                    format!("the pre-7.2 <{legacy}> syntax is not supported; ignored ({why})"),
                );
            } else {
                self.unsupported_element(f, child);
            }
        }
    }

    /// `<user>` and its `<var>`s.
    fn user(
        &mut self,
        f: &XmlFile<'_>,
        user: Node<'_, '_>,
        scripts: &mut ScriptsConfig,
    ) -> Result<(), ConfigError> {
        self.note("scripts", f, user.range().start, "<user>");
        self.check_attributes(
            f,
            user,
            &[
                "nicestoptimeout",
                "forcestoptimeout",
                "logging",
                "userlogsize",
            ],
        );
        if let Some(nice) = self.attr(f, user, "nicestoptimeout") {
            self.note_attr("scripts.stop_timeout", f, &nice);
            scripts.stop_timeout = duration(f, &nice, Unit::Seconds)?;
        }
        if let Some(force) = self.attr(f, user, "forcestoptimeout") {
            self.note_attr("scripts.force_stop_timeout", f, &force);
            scripts.force_stop_timeout = duration(f, &force, Unit::Seconds)?;
        }
        if let Some(logging) = self.attr(f, user, "logging") {
            self.note_attr("scripts.logging", f, &logging);
            scripts.logging = match logging.value {
                "userlog" => true,
                "none" => false,
                v => {
                    return Err(f.attr_error(
                        &logging,
                        format!("unknown value {v:?}; expected \"userlog\" or \"none\""),
                    ))
                }
            };
        }
        if let Some(size) = self.attr(f, user, "userlogsize") {
            self.warn(
                f,
                size.offset,
                &size.field,
                "a size limit for the script log is not supported; ignored",
            );
        }
        for var in user.children().filter(Node::is_element) {
            if var.tag_name().name() != "var" {
                self.unsupported_element(f, var);
                continue;
            }
            self.check_attributes(f, var, &["name", "value"]);
            let Some(name) = self.attr(f, var, "name") else {
                return Err(f.error(var.range().start, "<var>", "the name attribute is required"));
            };
            let Some(value) = self.attr(f, var, "value") else {
                return Err(f.error(
                    var.range().start,
                    "<var>",
                    "the value attribute is required",
                ));
            };
            let path = format!("scripts.env.{}", name.value);
            if self.places.contains_key(&path) {
                return Err(
                    f.attr_error(&name, format!("variable {:?} is defined twice", name.value))
                );
            }
            self.note_attr(&path, f, &name);
            scripts
                .env
                .insert(name.value.to_string(), value.value.to_string());
        }
        Ok(())
    }

    /// Nodes and addresses from cluster.xml, for the module's networks.
    fn cluster(
        &mut self,
        f: &XmlFile<'_>,
        config: &mut ModuleConfig,
        heart_port: Option<usize>,
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
            // <heart port> is the module's own port and wins.
            if heart_port.is_none() {
                self.note_attr("heartbeat.port", f, &port);
                config.heartbeat.port = parse_port(f, &port)?;
            }
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

    /// Reads attribute `name` of `el`, warning about SafeKit macro references
    /// (`%NAME%`), which are not expanded.
    fn attr<'a>(&mut self, f: &XmlFile<'_>, el: Node<'a, '_>, name: &str) -> Option<Attr<'a>> {
        let attribute = el.attributes().find(|a| a.name() == name)?;
        let attr = Attr {
            value: attribute.value(),
            offset: attribute.range_value().start,
            field: format!("<{} {name}>", el.tag_name().name()),
        };
        if let Some(reference) = macro_reference(attr.value) {
            self.warn(
                f,
                attr.offset,
                &attr.field,
                format!("{reference} is a SafeKit macro or environment reference; Holdfast does not expand it"),
            );
        }
        Some(attr)
    }

    /// `<vip>`: the first `<virtual_addr addr>` of its interface list
    /// (SafeKit §13.6); what a mirror module's VIP does not use is reported.
    fn vip(
        &mut self,
        f: &XmlFile<'_>,
        vip: Node<'_, '_>,
        mode: Mode,
    ) -> Result<Option<VipConfig>, ConfigError> {
        self.note("vip", f, vip.range().start, "<vip>");
        self.check_attributes(f, vip, &[]);
        let mut found: Option<VipConfig> = None;
        let mut vmac = None;
        for el in vip.descendants().filter(Node::is_element).skip(1) {
            let farm = mode == Mode::Farm;
            let balancing = el.ancestors().any(|a| a.has_tag_name("loadbalancing_list"));
            if farm && balancing {
                // Read by load_balancing().
                continue;
            }
            match el.tag_name().name() {
                "interface_list" | "real_interface" => self.check_attributes(f, el, &[]),
                "virtual_interface" if farm => {
                    self.check_attributes(f, el, &["type", "addr"]);
                    if let Some(kind) = self.attr(f, el, "type") {
                        if kind.value != "vmac_invisible" {
                            self.warn(
                                f,
                                kind.offset,
                                &kind.field,
                                format!("type={:?} is imported as vmac_invisible: every node answers ARP with the virtual MAC", kind.value),
                            );
                        }
                    }
                    if let Some(addr) = self.attr(f, el, "addr") {
                        self.note_attr("vip.vmac", f, &addr);
                        vmac = Some(parse_mac(addr.value).ok_or_else(|| {
                            f.attr_error(
                                &addr,
                                format!(
                                    "expected a MAC address like \"5A:FE:01:02:03:04\", found {:?}",
                                    addr.value
                                ),
                            )
                        })?);
                    }
                }
                "interface" => self.check_attributes(f, el, &["check", "arpreroute"]),
                "virtual_addr" => {
                    self.check_attributes(f, el, &["addr", "where"]);
                    let Some(addr) = self.attr(f, el, "addr") else {
                        return Err(f.error(
                            el.range().start,
                            "<virtual_addr>",
                            "the addr attribute is required",
                        ));
                    };
                    if found.is_some() {
                        self.warn(
                            f,
                            el.range().start,
                            &element_name(el),
                            "only one virtual IP per module is supported; ignored",
                        );
                        continue;
                    }
                    if let Some(place) = self.attr(f, el, "where") {
                        if mode == Mode::Mirror
                            && !matches!(place.value, "one_side_alias" | "alias")
                        {
                            self.warn(
                                f,
                                place.offset,
                                &place.field,
                                format!("where={:?} is imported as an address on the primary only (one_side_alias)", place.value),
                            );
                        }
                    }
                    self.note_attr("vip.address", f, &addr);
                    let address = addr.value.parse().map_err(|_| {
                        f.attr_error(&addr, format!("expected an IPv4 address, found {:?} (host names are not supported)", addr.value))
                    })?;
                    found = Some(VipConfig {
                        address,
                        prefix: 32,
                        interface: None,
                        vmac: None,
                    });
                }
                _ => self.unsupported_element(f, el),
            }
        }
        if found.is_none() {
            self.warn(
                f,
                vip.range().start,
                "<vip>",
                "no <virtual_addr addr> found; no virtual IP imported",
            );
        }
        if let Some(vip) = &mut found {
            vip.vmac = vmac;
        }
        Ok(found)
    }

    /// `<rfs>`: each `<replicated dir>` becomes a `[[replicated]]`
    /// directory; every other attribute and element is reported.
    fn rfs(
        &mut self,
        f: &XmlFile<'_>,
        rfs: Node<'_, '_>,
        config: &mut ModuleConfig,
    ) -> Result<(), ConfigError> {
        self.check_attributes(f, rfs, &[]);
        for el in rfs.children().filter(Node::is_element) {
            if el.tag_name().name() != "replicated" {
                self.unsupported_element(f, el);
                continue;
            }
            self.check_attributes(f, el, &["dir"]);
            let Some(dir) = self.attr(f, el, "dir") else {
                return Err(f.error(
                    el.range().start,
                    "<replicated>",
                    "the dir attribute is required",
                ));
            };
            let index = config.replicated.len();
            self.note_attr(&format!("replicated[{index}].dir"), f, &dir);
            self.note_attr(&format!("replicated[{index}]"), f, &dir);
            let mut replicated = crate::model::ReplicatedDir {
                dir: dir.value.into(),
                ..Default::default()
            };
            for child in el.children().filter(Node::is_element) {
                if child.tag_name().name() == "notreplicated" {
                    self.notreplicated(f, child, index, &mut replicated);
                } else {
                    self.unsupported_element(f, child);
                }
            }
            config.replicated.push(replicated);
        }
        Ok(())
    }

    /// `<notreplicated path>` or `<notreplicated regexpath>` of the
    /// `index`th `<replicated>`: an exclusion (SafeKit §13.7.3). A
    /// `regexpath="!..."` (replicate only what matches) is reported.
    fn notreplicated(
        &mut self,
        f: &XmlFile<'_>,
        el: Node<'_, '_>,
        index: usize,
        replicated: &mut crate::model::ReplicatedDir,
    ) {
        self.check_attributes(f, el, &["path", "regexpath"]);
        if let Some(path) = self.attr(f, el, "path") {
            let field = format!("replicated[{index}].exclude[{}]", replicated.exclude.len());
            self.note_attr(&field, f, &path);
            replicated.exclude.push(path.value.into());
        }
        if let Some(regex) = self.attr(f, el, "regexpath") {
            if regex.value.starts_with('!') {
                self.warn(
                    f,
                    regex.offset,
                    &regex.field,
                    "replicating only the entries that match is not supported; ignored (they are all replicated)",
                );
            } else {
                let field = format!(
                    "replicated[{index}].exclude_names[{}]",
                    replicated.exclude_names.len()
                );
                self.note_attr(&field, f, &regex);
                replicated.exclude_names.push(regex.value.to_string());
            }
        }
    }

    /// `<errd>`: one process checker per `<proc>` (SafeKit §13.10).
    fn errd(
        &mut self,
        f: &XmlFile<'_>,
        errd: Node<'_, '_>,
    ) -> Result<Vec<CheckerConfig>, ConfigError> {
        self.check_attributes(f, errd, &["polltimer"]);
        let interval = match self.attr(f, errd, "polltimer") {
            Some(poll) => Some(duration(f, &poll, Unit::Seconds)?),
            None => None,
        };
        let mut checkers = Vec::new();
        for proc in errd.children().filter(Node::is_element) {
            if proc.tag_name().name() != "proc" {
                self.unsupported_element(f, proc);
                continue;
            }
            self.check_attributes(
                f,
                proc,
                &[
                    "name",
                    "nameregex",
                    "argregex",
                    "atleast",
                    "atmax",
                    "action",
                    "class",
                    "service",
                    "start_after",
                    "restart_services",
                ],
            );
            let Some(name) = self.attr(f, proc, "name") else {
                return Err(f.error(
                    proc.range().start,
                    "<proc>",
                    "the name attribute is required",
                ));
            };
            let mut checker = CheckerConfig::process(name.value, name.value);
            if let Some(interval) = interval {
                checker.interval = interval;
            }
            let CheckerKind::Process(p) = &mut checker.kind else {
                unreachable!("a process checker")
            };
            p.command_regex = self.attr(f, proc, "nameregex").map(|a| a.value.to_string());
            p.args_regex = self.attr(f, proc, "argregex").map(|a| a.value.to_string());
            if let Some(atleast) = self.attr(f, proc, "atleast") {
                p.atleast = Some(count(f, &atleast)?);
            }
            if let Some(atmax) = self.attr(f, proc, "atmax") {
                p.atmost = if atmax.value.trim() == "-1" {
                    None
                } else {
                    Some(count(f, &atmax)?)
                };
            }
            if let Some(action) = self.attr(f, proc, "action") {
                match checker_action(action.value) {
                    Some(a) => checker.action = a,
                    None => self.warn(f, action.offset, &action.field, format!("action {:?} (a program to run) is not supported; the default, stopstart, applies", action.value)),
                }
            }
            if let Some(class) = self.attr(f, proc, "class") {
                checker.when = self.checker_when(f, &class);
            }
            for unsupported in ["service", "start_after", "restart_services"] {
                if let Some(a) = self.attr(f, proc, unsupported) {
                    self.warn(f, a.offset, &a.field, "not supported yet; ignored");
                }
            }
            checker
                .validate()
                .map_err(|e| f.error(proc.range().start, "<proc>", e.to_string()))?;
            checkers.push(checker);
        }
        Ok(checkers)
    }

    /// `<check>`: TCP, ping and interface checkers (SafeKit §13.11-13.14).
    fn check(
        &mut self,
        f: &XmlFile<'_>,
        check: Node<'_, '_>,
    ) -> Result<Vec<CheckerConfig>, ConfigError> {
        self.check_attributes(f, check, &[]);
        let mut checkers = Vec::new();
        for el in check.children().filter(Node::is_element) {
            let kind = el.tag_name().name();
            if kind == "splitbrain" {
                self.splitbrain = Some(self.splitbrain_checker(f, el)?);
                continue;
            }
            if kind == "module" {
                checkers.extend(self.module_checker(f, el)?);
                continue;
            }
            if !matches!(kind, "tcp" | "ping" | "intf") {
                self.unsupported_element(f, el);
                continue;
            }
            self.check_attributes(f, el, &["ident", "when", "action"]);
            let Some(ident) = self.attr(f, el, "ident") else {
                return Err(f.error(
                    el.range().start,
                    element_name(el),
                    "the ident attribute is required",
                ));
            };
            let Some(to) = el
                .children()
                .find(|c| c.is_element() && c.tag_name().name() == "to")
            else {
                return Err(f.error(
                    el.range().start,
                    element_name(el),
                    "a <to> element is required",
                ));
            };
            self.check_attributes(
                f,
                to,
                &["addr", "port", "interval", "timeout", "local_addr"],
            );
            let address = |this: &mut Self, name: &str| -> Result<IpAddr, ConfigError> {
                let Some(a) = this.attr(f, to, name) else {
                    return Err(f.error(
                        to.range().start,
                        "<to>",
                        format!("the {name} attribute is required"),
                    ));
                };
                a.value.parse().map_err(|_| {
                    f.attr_error(
                        &a,
                        format!(
                            "expected an IP address, found {:?} (host names are not supported)",
                            a.value
                        ),
                    )
                })
            };
            let mut checker = match kind {
                "tcp" => {
                    let addr = address(self, "addr")?;
                    let Some(port) = self.attr(f, to, "port") else {
                        return Err(f.error(
                            to.range().start,
                            "<to>",
                            "the port attribute is required",
                        ));
                    };
                    let port = port
                        .value
                        .parse()
                        .map_err(|_| f.attr_error(&port, "expected a port number"))?;
                    CheckerConfig::tcp(ident.value, addr, port)
                }
                "ping" => match address(self, "addr")? {
                    IpAddr::V4(v4) => CheckerConfig::ping(ident.value, v4),
                    IpAddr::V6(_) => {
                        return Err(f.error(
                            to.range().start,
                            "<to addr>",
                            "ping checkers take an IPv4 address",
                        ))
                    }
                },
                _ => CheckerConfig::interface(
                    ident.value,
                    InterfaceTarget::Address(address(self, "local_addr")?),
                ),
            };
            if let Some(interval) = self.attr(f, to, "interval") {
                checker.interval = duration(f, &interval, Unit::Seconds)?;
            }
            if let Some(timeout) = self.attr(f, to, "timeout") {
                checker.timeout = duration(f, &timeout, Unit::Seconds)?;
            }
            if let Some(when) = self.attr(f, el, "when") {
                checker.when = self.checker_when(f, &when);
            }
            if let Some(action) = self.attr(f, el, "action") {
                match checker_action(action.value) {
                    Some(a) => checker.action = a,
                    None => {
                        return Err(
                            f.attr_error(&action, format!("unknown action {:?}", action.value))
                        )
                    }
                }
            }
            checker
                .validate()
                .map_err(|e| f.error(el.range().start, element_name(el), e.to_string()))?;
            checkers.push(checker);
        }
        Ok(checkers)
    }

    /// `<module [ident] name>`: another module of this node (SafeKit
    /// §13.17). With `<to addr port>` it would watch a module on another
    /// server through its web service, which Holdfast does not do: reported.
    fn module_checker(
        &mut self,
        f: &XmlFile<'_>,
        el: Node<'_, '_>,
    ) -> Result<Option<CheckerConfig>, ConfigError> {
        self.check_attributes(f, el, &["ident", "name"]);
        let Some(name) = self.attr(f, el, "name") else {
            return Err(f.error(
                el.range().start,
                "<module>",
                "the name attribute (the module to check) is required",
            ));
        };
        if let Some(to) = el
            .children()
            .find(|c| c.is_element() && c.tag_name().name() == "to")
        {
            self.warn(
                f,
                to.range().start,
                "<module><to>",
                "checking a module on another server (through its web service) is not supported; checker ignored",
            );
            return Ok(None);
        }
        let ident = self.attr(f, el, "ident").map_or(name.value, |i| i.value);
        let checker = CheckerConfig::module(ident, name.value);
        checker
            .validate()
            .map_err(|e| f.error(el.range().start, "<module>", e.to_string()))?;
        Ok(Some(checker))
    }

    /// `<splitbrain ident exec="ping" arg="addr addr"/>` (SafeKit §13.18).
    fn splitbrain_checker(
        &mut self,
        f: &XmlFile<'_>,
        el: Node<'_, '_>,
    ) -> Result<SplitBrainConfig, ConfigError> {
        self.check_attributes(f, el, &["ident", "exec", "arg", "when"]);
        if let Some(exec) = self.attr(f, el, "exec") {
            if exec.value != "ping" {
                return Err(f.attr_error(
                    &exec,
                    format!(
                        "exec={:?}: the split-brain checker only pings (exec=\"ping\")",
                        exec.value
                    ),
                ));
            }
        }
        let Some(arg) = self.attr(f, el, "arg") else {
            return Err(f.error(
                el.range().start,
                "<splitbrain>",
                "the arg attribute (the witnesses' addresses) is required",
            ));
        };
        let ping = arg
            .value
            .split_whitespace()
            .map(|a| {
                a.parse().map_err(|_| {
                    f.attr_error(
                        &arg,
                        format!(
                            "expected IPv4 addresses, found {a:?} (host names are not supported)"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.note_attr("splitbrain.ping", f, &arg);
        Ok(SplitBrainConfig { ping })
    }

    fn checker_when(&mut self, f: &XmlFile<'_>, attr: &Attr<'_>) -> When {
        match attr.value {
            "pre" => When::Pre,
            "prim" => When::Prim,
            "second" => When::Second,
            "sec" => {
                self.warn(
                    f,
                    attr.offset,
                    &attr.field,
                    "\"sec\" (SECOND or ALONE) is imported as \"second\"",
                );
                When::Second
            }
            "both" => When::Both,
            other => {
                self.warn(
                    f,
                    attr.offset,
                    &attr.field,
                    format!("class {other:?} is not supported; \"prim\" applies"),
                );
                When::Prim
            }
        }
    }

    /// Warns about every attribute of `el` not in `known`.
    fn check_attributes(&mut self, f: &XmlFile<'_>, el: Node<'_, '_>, known: &[&str]) {
        for a in el.attributes() {
            if !known.contains(&a.name()) {
                self.warn(
                    f,
                    a.range().start,
                    &format!("<{} {}>", el.tag_name().name(), a.name()),
                    "unknown or unsupported attribute; ignored",
                );
            }
        }
    }

    /// Warns about an element (and so its whole subtree) that is not imported.
    fn unsupported_element(&mut self, f: &XmlFile<'_>, el: Node<'_, '_>) {
        let message = match el.tag_name().name() {
"notreplicated" => "<notreplicated> belongs in a <replicated>; ignored",
            "loadbalancing_list" | "virtual_interface" => {
                "load balancing is for farm modules; ignored in a mirror module"
            }
            "failover" => "failover rules are not supported yet; ignored",
            "vhost" => "virtual hostnames are not supported yet; ignored",
            "farm" => "farm topology is for farm modules; ignored in a mirror module",
            "heart" => "a farm module's heartbeat networks are its <farm><lan>s; ignored",
            "macro" => "macros are not supported; ignored, and %NAME% references are not expanded",
            "custom" => "SafeKit custom checkers run in a loop and set their resource with `safekit set`; Holdfast runs a custom checker once per interval and reads its exit code (0: up): adapt the program, then add a [[checker]] with type = \"custom\"; ignored",
            _ => "unknown or unsupported element; ignored",
        };
        self.warn(f, el.range().start, &element_name(el), message);
    }

    /// One warning per line where typographic quotes were replaced.
    fn report_quotes(&mut self, f: &XmlFile<'_>, offsets: &[usize]) {
        let mut last_line = 0;
        for &offset in offsets {
            let line = f.line(offset);
            if line == last_line {
                continue;
            }
            last_line = line;
            // The innermost element whose text holds the quote.
            let element = f
                .doc
                .descendants()
                .rfind(|n| n.is_element() && n.range().contains(&offset))
                .map_or_else(|| "<?>".to_string(), element_name);
            self.warn(
                f,
                offset,
                &element,
                "typographic quotes (“ ”) around an attribute value were read as plain quotes (\")",
            );
        }
    }

    fn warn(&mut self, f: &XmlFile<'_>, offset: usize, element: &str, message: impl Into<String>) {
        let mut message = message.into();
        if f.index > 0 {
            message = format!("{}: {message}", file_name(f.path));
        }
        self.warnings.push((
            f.index,
            ImportWarning {
                line: f.line(offset),
                element: element.to_string(),
                message,
            },
        ));
    }

    fn note(&mut self, path: &str, f: &XmlFile<'_>, offset: usize, field: impl Into<String>) {
        self.places.insert(path.to_string(), f.place(offset, field));
    }

    fn note_attr(&mut self, path: &str, f: &XmlFile<'_>, attr: &Attr<'_>) {
        self.note(path, f, attr.offset, attr.field.clone());
    }

    /// Where the setting at native `path` came from, or else its nearest
    /// recorded parent (ultimately `<safe>`).
    fn place(&self, path: &str) -> Place {
        let mut path = path;
        loop {
            if let Some(place) = self.places.get(path) {
                return place.clone();
            }
            match path.rfind(['.', '[']) {
                Some(i) => path = &path[..i],
                None => {
                    return self.places.get("").cloned().unwrap_or(Place {
                        file: PathBuf::new(),
                        line: 1,
                        column: 1,
                        field: String::new(),
                    })
                }
            }
        }
    }
}

fn element_name(el: Node<'_, '_>) -> String {
    format!("<{}>", el.tag_name().name())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn on_off(f: &XmlFile<'_>, attr: &Attr<'_>) -> Result<bool, ConfigError> {
    match attr.value {
        "on" => Ok(true),
        "off" => Ok(false),
        v => Err(f.attr_error(
            attr,
            format!("unknown value {v:?}; expected \"on\" or \"off\""),
        )),
    }
}

fn parse_port(f: &XmlFile<'_>, attr: &Attr<'_>) -> Result<u16, ConfigError> {
    match attr.value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(f.attr_error(
            attr,
            format!(
                "expected a port number between 1 and 65535, found {:?}",
                attr.value
            ),
        )),
    }
}

/// SafeKit's checker actions.
fn checker_action(value: &str) -> Option<CheckerAction> {
    Some(match value {
        "wait" => CheckerAction::Wait,
        "restart" => CheckerAction::Restart,
        "stopstart" => CheckerAction::StopStart,
        "stop" => CheckerAction::Stop,
        "noaction" => CheckerAction::NoAction,
        _ => return None,
    })
}

fn count(f: &XmlFile<'_>, attr: &Attr<'_>) -> Result<u32, ConfigError> {
    attr.value
        .trim()
        .parse()
        .map_err(|_| f.attr_error(attr, format!("expected a count, found {:?}", attr.value)))
}

fn duration(f: &XmlFile<'_>, attr: &Attr<'_>, unit: Unit) -> Result<Duration, ConfigError> {
    parse_duration(attr.value, unit).ok_or_else(|| {
        f.attr_error(
            attr,
            format!("expected {}, found {:?}", unit.describe(), attr.value),
        )
    })
}

/// A SafeKit duration: a bare number in the attribute's own unit, or (since
/// SafeKit 8.2.5) a number with a unit such as `700ms`, `30s` or `24h`.
fn parse_duration(text: &str, unit: Unit) -> Option<Duration> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return unit.of(text.parse().ok()?);
    }
    humantime::parse_duration(text).ok()
}

/// The first `%NAME%` in `value`, if any.
fn macro_reference(value: &str) -> Option<&str> {
    let start = value.find('%')?;
    let len = value[start + 1..].find('%')?;
    let name = &value[start + 1..start + 1 + len];
    let is_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    is_name.then(|| &value[start..start + len + 2])
}

/// Replaces typographic quotes (“ ”) used as attribute delimiters by plain
/// ones, as they appear in configurations pasted from documents. Returns the
/// new text and the byte offsets, in it, of the replaced quotes. Each
/// replacement keeps the character count, so lines and columns are unchanged.
fn normalize_quotes(text: &str) -> (String, Vec<usize>) {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Content,
        Tag,
        Quoted(char),
        TypographicQuoted,
    }
    let mut out = String::with_capacity(text.len());
    let mut fixed = Vec::new();
    let mut state = State::Content;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        // Comments may hold any quote; copy them untouched.
        if state == State::Content && rest.starts_with("<!--") {
            let end = rest.find("-->").map_or(rest.len(), |i| i + 3);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        let mut emitted = c;
        state = match (state, c) {
            (State::Content, '<') => State::Tag,
            (State::Tag, '>') => State::Content,
            (State::Tag, '"' | '\'') => State::Quoted(c),
            (State::Tag, '“' | '”') => {
                fixed.push(out.len());
                emitted = '"';
                State::TypographicQuoted
            }
            (State::Quoted(q), c) if c == q => State::Tag,
            (State::TypographicQuoted, '“' | '”') => {
                fixed.push(out.len());
                emitted = '"';
                State::Tag
            }
            (State::TypographicQuoted, '"') => State::Tag,
            (state, _) => state,
        };
        out.push(emitted);
        rest = &rest[c.len_utf8()..];
    }
    (out, fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_replaced_only_as_attribute_delimiters() {
        let text = "<!-- “c” --><a x=”1” y=\"say “hi”\" z=“2\"/>“t”";
        let (fixed, offsets) = normalize_quotes(text);
        assert_eq!(fixed, "<!-- “c” --><a x=\"1\" y=\"say “hi”\" z=\"2\"/>“t”");
        assert_eq!(offsets.len(), 3);
        assert!(offsets.iter().all(|&o| fixed.as_bytes()[o] == b'"'));
        assert_eq!(fixed.chars().count(), text.chars().count());
    }

    #[test]
    fn safekit_durations() {
        assert_eq!(
            parse_duration("700", Unit::Milliseconds),
            Some(Duration::from_millis(700))
        );
        assert_eq!(
            parse_duration("300", Unit::Seconds),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration("24", Unit::Hours),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_duration("30s", Unit::Milliseconds),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration("1d", Unit::Hours),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_duration("50us", Unit::Seconds),
            Some(Duration::from_micros(50))
        );
        assert_eq!(parse_duration("-1", Unit::Seconds), None);
        assert_eq!(parse_duration("", Unit::Seconds), None);
    }

    #[test]
    fn macro_references() {
        assert_eq!(macro_reference("%HOME%/app"), Some("%HOME%"));
        assert_eq!(macro_reference("100%"), None);
        assert_eq!(macro_reference("50% or 60%"), None);
    }
}
