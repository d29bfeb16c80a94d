//! Import of a SafeKit mirror or farm module: its `userconfig.xml`, plus the
//! cluster's `cluster.xml` for the node addresses.
//!
//! The import never loses anything quietly: whatever Holdfast does not (yet)
//! support — unknown attributes, per-network timings and so on — is
//! reported as an [`ImportWarning`] with its line. What cannot be converted at
//! all (a light module, a malformed value) is a [`ConfigError`], and the result
//! passes the same [`ModuleConfig::validate`] as the native format, with its
//! errors placed on the XML element or attribute they come from.
//!
//! Here: the walk of `<service>` and the bookkeeping of warnings and
//! places. Each part of the module has its file: `nodes.rs` (cluster.xml,
//! `<heart>`), `farm.rs`, `vip.rs`, `replicated.rs` (`<rfs>`), `checkers.rs`
//! (`<errd>`, `<check>`); `xml.rs` reads SafeKit's files and values.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use roxmltree::Node;

use crate::error::{ConfigError, ValidationError};
use crate::model::{
    Boot, DefaultPrimary, HeartbeatConfig, Mode, ModuleConfig, ModuleId, ScriptsConfig,
    SplitBrainConfig, DEFAULT_LOOP_INTERVAL, DEFAULT_MAXLOOP, DEFAULT_PORT, DEFAULT_PULSE,
    DEFAULT_TIMEOUT,
};

mod checkers;
mod farm;
mod nodes;
mod replicated;
mod vip;
mod xml;

use farm::{FARM_LOST_COUNT, FARM_PULSE};
use xml::{
    duration, element_name, file_name, macro_reference, normalize_quotes, on_off, parse_duration,
    Attr, Place, Unit, XmlFile,
};

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

/// What the import needs besides `userconfig.xml`.
#[derive(Debug, Clone, Copy)]
pub struct ImportOptions<'a> {
    /// The module's name (a package does not carry it: SafeKit names a
    /// module when it installs it).
    pub name: &'a str,
    /// SafeKit's module id, from which the ports derive when `<heart port>`
    /// does not set them ([`ModuleId`]).
    pub id: ModuleId,
    /// Where the nodes come from.
    pub nodes: NodeSource<'a>,
}

/// The node names and addresses of an imported module: `userconfig.xml`
/// names the networks of its heartbeats, the nodes on them are the
/// cluster's.
#[derive(Debug, Clone, Copy)]
pub enum NodeSource<'a> {
    /// SafeKit's `cluster.xml`: its content and path (for messages).
    Cluster(&'a str, &'a Path),
    /// Given explicitly: each node's name and its address on each
    /// heartbeat network, in the order of the `<heartbeat>`s.
    Explicit(&'a [(String, Vec<IpAddr>)]),
}

/// Converts a SafeKit mirror or farm module into a [`ModuleConfig`]. Paths
/// are used in messages only. The scripts directory is `bin`, beside the
/// configuration, as in a SafeKit package.
pub fn import_userconfig(
    userconfig: &str,
    userconfig_path: &Path,
    options: &ImportOptions<'_>,
) -> Result<Imported, ConfigError> {
    let mut importer = Importer::default();
    let (text, fixed_quotes) = normalize_quotes(userconfig);
    let user = XmlFile::parse(&text, userconfig_path, 0)?;
    importer.report_quotes(&user, &fixed_quotes);

    let mut config = ModuleConfig {
        name: options.name.to_string(),
        mode: Mode::Mirror,
        id: Some(options.id.0),
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
        scripts: ScriptsConfig {
            directory: Some(PathBuf::from("bin")),
            ..ScriptsConfig::default()
        },
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
    if heart_port.is_none() {
        config.heartbeat.port = options.id.heartbeat_port(config.mode);
    }
    if config.mode == Mode::Mirror {
        config.replication.port = Some(options.id.replication_port());
    }

    match options.nodes {
        NodeSource::Cluster(cluster_text, cluster_path) => {
            let (text, fixed_quotes) = normalize_quotes(cluster_text);
            let cluster = XmlFile::parse(&text, cluster_path, 1)?;
            importer.report_quotes(&cluster, &fixed_quotes);
            importer.cluster(&cluster, &mut config)?;
        }
        NodeSource::Explicit(nodes) => importer.explicit_nodes(nodes, &mut config)?,
    }
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
