//! One replicated directory's fixed facts and its state on this node's
//! disk: the generation record, the change log's directory, the marker of
//! a read-only mount, and mounts left behind by a killed daemon.

use std::path::PathBuf;

use holdfast_membership::LogLevel;
use holdfast_replication::generation::StoreError;
use holdfast_replication::{Exclusions, GenerationStore, Generations};

use crate::modlog::ModuleLog;

/// One replicated directory's fixed facts.
#[derive(Debug, Clone)]
pub(super) struct Dir {
    pub(super) index: usize,
    pub(super) path: PathBuf,
    pub(super) port: u16,
    pub(super) state: PathBuf,
    /// What of it is not replicated.
    pub(super) exclusions: Exclusions,
}

impl Dir {
    /// Present while this node keeps the directory read-only (a SECOND):
    /// a daemon killed meanwhile leaves the mount, detached at the next start.
    pub(super) fn read_only_marker(&self) -> PathBuf {
        self.state.join("read-only")
    }

    /// The copy's record, made or updated from the directory when nothing
    /// was ever recorded for it: files found there (put before the module
    /// first ran, or while it was stopped) are data of an unknown lineage,
    /// never overwritten without the administrator.
    pub(super) fn record_unknown_data(&self) -> Result<Generations, StoreError> {
        let store = self.store();
        let recorded = store.load()?;
        if let Some(g) = recorded.as_ref().filter(|g| !g.is_blank()) {
            return Ok(g.clone());
        }
        let has_data = std::fs::read_dir(&self.path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        let g = match recorded {
            Some(g) if !has_data => g,
            _ => Generations::fresh(has_data),
        };
        store.save(&g)?;
        Ok(g)
    }

    /// Its change log, and the activity log kept while mirroring.
    pub(super) fn log_dir(&self) -> PathBuf {
        self.state.join("log")
    }

    pub(super) fn store(&self) -> GenerationStore {
        GenerationStore::new(&self.state.join("generations"))
    }
}

/// Mounts of ours left on a replicated directory by a killed daemon — the
/// primary's FUSE mount, the secondary's read-only bind mount (known by
/// its marker: the directory may be a mount point of its own) — detached.
pub(super) fn detach_stale_mounts(dir: &Dir, log: &ModuleLog) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let target = dir.path.display().to_string();
    let marker = dir.read_only_marker().exists();
    let mut read_only_left = marker;
    // In mount order: the last one on the directory is on top.
    for line in mounts.lines().rev() {
        let mut fields = line.split(' ');
        let (Some(_src), Some(point), Some(fstype), Some(options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if point != target {
            continue;
        }
        let fuse = fstype.starts_with("fuse");
        let read_only = options.split(',').any(|o| o == "ro");
        if !(fuse || read_only_left && read_only) {
            break;
        }
        // Only one is ours.
        read_only_left &= fuse;
        match nix::mount::umount2(&dir.path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => log.write(
                LogLevel::Info,
                &format!("stale replication mount ({fstype}, {options}) on {target} detached"),
            ),
            Err(e) => {
                log.write(
                    LogLevel::Error,
                    &format!("cannot detach the stale mount on {target}: {e}"),
                );
                return;
            }
        }
    }
    if marker {
        let _ = std::fs::remove_file(dir.read_only_marker());
    }
}
