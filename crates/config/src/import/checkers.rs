//! `<errd>` and `<check>`: process, TCP, ping, interface, custom and module
//! checkers, and the split-brain checker.

use std::net::IpAddr;

use roxmltree::Node;

use super::xml::{count, duration, element_name, Attr, Unit, XmlFile};
use super::Importer;
use crate::checker::{Action as CheckerAction, CheckerConfig, CheckerKind, InterfaceTarget, When};
use crate::error::ConfigError;
use crate::model::SplitBrainConfig;

impl Importer {
    /// `<errd>`: one process checker per `<proc>` (SafeKit §13.10).
    pub(super) fn errd(
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
    pub(super) fn check(
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
    pub(super) fn module_checker(
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
    pub(super) fn splitbrain_checker(
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

    pub(super) fn checker_when(&mut self, f: &XmlFile<'_>, attr: &Attr<'_>) -> When {
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
