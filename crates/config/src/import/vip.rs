//! `<vip>`: the virtual IP, and a farm's virtual MAC.

use roxmltree::Node;

use super::xml::{element_name, XmlFile};
use super::Importer;
use crate::error::ConfigError;
use crate::model::{Mode, VipConfig};
use crate::native::parse_mac;

impl Importer {
    /// `<vip>`: the first `<virtual_addr addr>` of its interface list
    /// (SafeKit §13.6); what a mirror module's VIP does not use is reported.
    pub(super) fn vip(
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
                "interface" => {
                    self.check_attributes(f, el, &["check", "arpreroute"]);
                    if let Some(check) = self.attr(f, el, "check").filter(|c| c.value == "on") {
                        self.warn(
                            f,
                            check.offset,
                            &check.field,
                            "SafeKit's automatic checker of the interface holding the virtual IP is not created (the interface may be named differently on each node); add a [[checker]] with type = \"interface\" and that node's interface or address",
                        );
                    }
                }
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
}
