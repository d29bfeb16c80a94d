//! Removing labs, and finding them from another process.
//!
//! Clean-up works from what exists on the machine (namespaces named
//! `hf<id>-*`, mounts under the run directory), not from what the lab thinks
//! it made, so the same code handles a complete lab, a half-built one and the
//! leftovers of a crashed process.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::handle::LabHandle;
use crate::registry::{self, LabInfo, ID_LEN, LAB_ROOT};
use crate::{mounts, netns};

/// A run directory without registry entry younger than this may belong to a
/// lab being created right now (the entry is written just after the
/// directory), so `clean_stale(false)` leaves it alone.
const UNREGISTERED_GRACE: Duration = Duration::from_secs(60);

/// Removes everything of lab `id`: kills its processes, unmounts its mount
/// namespaces and run directory, deletes its network namespaces, removes its
/// run directory. Goes through every step whatever fails; returns the
/// failures (empty on success).
pub(crate) fn teardown(id: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let prefix = format!("hf{id}-");
    let namespaces: Vec<String> = match netns::list() {
        Ok(all) => all.into_iter().filter(|n| n.starts_with(&prefix)).collect(),
        Err(e) => {
            failures.push(e.to_string());
            Vec::new()
        }
    };
    for ns in &namespaces {
        if let Err(e) = netns::kill_all(id, ns) {
            failures.push(e.to_string());
        }
    }
    // The host mount namespaces die with their last bind (no process is left).
    let run_dir = registry::run_dir(id);
    failures.extend(mounts::unmount_all_under(&run_dir));
    for ns in &namespaces {
        if let Err(e) = netns::delete(ns) {
            failures.push(e.to_string());
        }
    }
    match std::fs::remove_dir_all(&run_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => failures.push(format!("removing {}: {e}", run_dir.display())),
    }
    failures
}

/// The registered labs (those with a readable `lab.json`), dead owners
/// included; see [`LabInfo::owner_alive`].
pub fn list_labs() -> Vec<LabInfo> {
    registry::run_dir_ids()
        .unwrap_or_default()
        .iter()
        .filter_map(|id| registry::read(id).ok())
        .collect()
}

/// A handle on a running lab created by any process; the lab's clean-up
/// stays with its owner.
pub fn attach(id: &str) -> Result<LabHandle> {
    registry::read(id).map(LabHandle::new)
}

/// Removes stale labs — those whose owner process is gone, or every lab with
/// `all` — including leftovers known only by a namespace name `hf<id>-*` or
/// a mount under `/run/holdfast-lab/<id>`. Returns the ids removed; an error
/// lists what could not be removed.
pub fn clean_stale(all: bool) -> Result<Vec<String>> {
    let mut ids = BTreeSet::new();
    ids.extend(registry::run_dir_ids()?);
    ids.extend(netns::list()?.iter().filter_map(|ns| netns_lab_id(ns)));
    ids.extend(
        mounts::mount_table()?
            .iter()
            .filter_map(|m| mount_lab_id(&m.mount_point)),
    );
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    for id in ids {
        if !all && is_live(&id) {
            continue;
        }
        let failed = teardown(&id);
        if failed.is_empty() {
            removed.push(id);
        } else {
            failures.extend(failed.into_iter().map(|f| format!("lab {id}: {f}")));
        }
    }
    if failures.is_empty() {
        Ok(removed)
    } else {
        Err(LabError::Cleanup(failures))
    }
}

/// Whether lab `id` is in use: registered with a living owner, or so freshly
/// created that it is not registered yet.
fn is_live(id: &str) -> bool {
    match registry::read(id) {
        Ok(info) => info.owner_alive(),
        Err(_) => registry::run_dir_age(id).is_some_and(|age| age < UNREGISTERED_GRACE),
    }
}

/// The lab id in a namespace name of the form `hf<6 hex>-...`.
fn netns_lab_id(name: &str) -> Option<String> {
    let rest = name.strip_prefix("hf")?;
    let id = rest.get(..ID_LEN)?;
    (registry::valid_id(id) && rest[ID_LEN..].starts_with('-')).then(|| id.to_string())
}

/// The lab id of a mount point under `/run/holdfast-lab/<id>`.
fn mount_lab_id(point: &Path) -> Option<String> {
    let first = point.strip_prefix(LAB_ROOT).ok()?.components().next()?;
    let id = first.as_os_str().to_str()?;
    registry::valid_id(id).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_lab_namespaces() {
        assert_eq!(netns_lab_id("hf0a1b2c-node1").as_deref(), Some("0a1b2c"));
        assert_eq!(netns_lab_id("hf0a1b2c-sw").as_deref(), Some("0a1b2c"));
        assert_eq!(netns_lab_id("hf0a1b2c"), None);
        assert_eq!(netns_lab_id("hf0a1b2x-sw"), None);
        assert_eq!(netns_lab_id("hfa-sw"), None);
        assert_eq!(netns_lab_id("other"), None);
    }

    #[test]
    fn recognises_lab_mounts() {
        let id = |p: &str| mount_lab_id(Path::new(p));
        assert_eq!(
            id("/run/holdfast-lab/0a1b2c/node1.mnt").as_deref(),
            Some("0a1b2c")
        );
        assert_eq!(id("/run/holdfast-lab/0a1b2c").as_deref(), Some("0a1b2c"));
        assert_eq!(id("/run/holdfast-lab"), None);
        assert_eq!(id("/run/netns/hf0a1b2c-sw"), None);
    }
}
