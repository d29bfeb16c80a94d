//! `<rfs>`: replicated directories and what is not replicated in them.

use roxmltree::Node;

use super::xml::{element_name, XmlFile};
use super::Importer;
use crate::error::ConfigError;
use crate::model::{AckPolicy, ModuleConfig};

/// The attributes of the guide's `<rfs>` (§13.7.2-13.7.3) that Holdfast
/// does not map, with the reason each one cannot be.
const RFS_NOT_MAPPED: &[(&str, &str)] = &[
    ("mountover", "Holdfast mounts its replication file system over the directory itself: no directory is renamed or linked"),
    ("mountoversuffix", "Holdfast mounts its replication file system over the directory itself: no directory is renamed or linked"),
    ("acl", "extended attributes, POSIX ACLs among them, are always replicated"),
    ("nbrei", "a resynchronisation runs one pass per replicated directory; its parallelism is not configurable"),
    ("iotimeout", "a Windows setting"),
    ("roflags", "a Windows setting; the secondary's copy is always read-only to local processes"),
    ("allocthreshold", "a Windows setting"),
    ("nfsbox_options", "a Windows setting"),
    ("packetsize", "Holdfast's replication frames are not NFS packets; their size is not configurable"),
    ("reipacketsize", "the resynchronisation's packet size is not configurable"),
    ("ruzone_blocksize", "changes are tracked by 4 KiB block, durably; the block size is not configurable"),
    ("namespacepolicy", "changes are tracked by 4 KiB block, durably, and a resynchronisation sends only what changed (compared by checksums where unknown)"),
    ("locktimeout", "a change the secondary has not acknowledged within [replication] ack_timeout is a failure of the secondary; set ack_timeout instead"),
    ("sendtimeout", "a change the secondary has not acknowledged within [replication] ack_timeout is a failure of the secondary; set ack_timeout instead"),
    ("reitimeout", "a resynchronisation is bounded by the heartbeat timeout and [replication] ack_timeout, not by a timeout of its own"),
    ("reicommit", "a resynchronisation commits each file when it is complete; intermediate commits are not configurable"),
    ("reidetail", "each resynchronisation's figures (what it covered, bytes sent, duration) are always written to the module log"),
    ("nbremconn", "each replicated directory has one TCP connection; the number is not configurable"),
    ("checktime", "there is no periodic null request to the local replicated file system"),
    ("checkintv", "there is no periodic null request to the local replicated file system"),
    ("scripts", "the _rfs_* script callbacks are not supported"),
    ("reiallowedbw", "a bandwidth cap for resynchronisation is not supported yet: it is not limited"),
    ("syncdelta", "a copy that is not up to date never becomes primary by itself (only `holdfast prim` forces it)"),
    ("syncat", "scheduled synchronisation is not supported: replication is always real-time"),
];

impl Importer {
    /// `<rfs>`: each `<replicated dir>` becomes a `[[replicated]]`
    /// directory; every other attribute and element is reported.
    pub(super) fn rfs(
        &mut self,
        f: &XmlFile<'_>,
        rfs: Node<'_, '_>,
        config: &mut ModuleConfig,
    ) -> Result<(), ConfigError> {
        self.warn(
            f,
            rfs.range().start,
            "<rfs>",
            "replication.durability = \"sync_calls\" chosen, as SafeKit's capture on Linux (an NFS mount: close-to-open): fsync, O_SYNC/O_DSYNC writes and the close of a file written through it wait for the secondary, other calls return once applied and queued (at most replication.max_unacked_bytes and max_unacked_age unacknowledged); set durability = \"every_call\" to make every call wait",
        );
        let mut known: Vec<&str> = RFS_NOT_MAPPED.iter().map(|(name, _)| *name).collect();
        known.push("async");
        self.check_attributes(f, rfs, &known);
        for (name, reason) in RFS_NOT_MAPPED {
            if let Some(attr) = self.attr(f, rfs, name) {
                self.warn(f, attr.offset, &attr.field, format!("{reason}; ignored"));
            }
        }
        if let Some(mode) = self.attr(f, rfs, "async") {
            let (ack, chosen) = match mode.value {
                "second" => (AckPolicy::Receipt, "receipt"),
                "none" => (AckPolicy::Durable, "durable"),
                other => {
                    return Err(f.attr_error(
                        &mode,
                        format!("unknown mode {other:?}; expected \"second\" or \"none\""),
                    ))
                }
            };
            config.replication.ack = ack;
            self.note_attr("replication.ack", f, &mode);
            let message = format!(
                "replication.ack = \"{chosen}\": the secondary acknowledges {}",
                if ack == AckPolicy::Durable {
                    "once the change is on its disk"
                } else {
                    "on receipt, before its disk has the change"
                }
            );
            self.warn(f, mode.offset, &mode.field, message);
        }
        for el in rfs.children().filter(Node::is_element) {
            match el.tag_name().name() {
                "replicated" => {}
                "flow" => {
                    self.warn(
                        f,
                        el.range().start,
                        &element_name(el),
                        "the legacy <flow>: the replication connects over the <heartbeat ident=\"flow\"> network, else the first; ignored",
                    );
                    continue;
                }
                _ => {
                    self.unsupported_element(f, el);
                    continue;
                }
            }
            self.check_attributes(f, el, &["dir", "mode"]);
            if let Some(mode) = self.attr(f, el, "mode") {
                if mode.value != "read_only" {
                    return Err(f.attr_error(
                        &mode,
                        format!("unknown mode {:?}; expected \"read_only\"", mode.value),
                    ));
                }
                // The secondary's copy is always read-only to local processes.
            }
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
                match child.tag_name().name() {
                    "notreplicated" => self.notreplicated(f, child, index, &mut replicated),
                    "tocheck" => self.warn(
                        f,
                        child.range().start,
                        &element_name(child),
                        "checking that a path exists before starting is not supported; add a custom checker; ignored",
                    ),
                    _ => self.unsupported_element(f, child),
                }
            }
            config.replicated.push(replicated);
        }
        Ok(())
    }

    /// `<notreplicated path>` or `<notreplicated regexpath>` of the
    /// `index`th `<replicated>`: an exclusion (SafeKit §13.7.3). A
    /// `regexpath="!..."` (replicate only what matches) is reported.
    pub(super) fn notreplicated(
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
}
