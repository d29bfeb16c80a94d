//! Mounting the mirror file system over a directory, and unmounting it.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use rustix::fs as rfs;
use rustix::io::Errno;

use super::nodes::Nodes;
use super::operations::Server;
use super::replies::Waiters;
use super::tail::{Durability, Tail, TailLimits};
use super::tree::Tree;
use super::MirrorFs;
use crate::apply::Root;
use crate::exclusions::Exclusions;
use crate::op::Replicator;

/// Threads finishing blocked requests at once (more wait in line, in order).
const WAITERS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot mount the mirror file system on {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot unmount {path}: {source}")]
    Unmount {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Entry point: mounts the mirror file system over a directory.
#[derive(Debug)]
pub struct Mirror;

/// How a mirror is mounted, beyond its directory and replicator.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// What is applied here only, never replicated.
    pub exclusions: Exclusions,
    /// Which calls wait for the secondary.
    pub durability: Durability,
    /// How far the unacknowledged tail may grow.
    pub limits: TailLimits,
}

impl Mirror {
    /// Opens `dir`, then mounts the mirror file system on the same path:
    /// from then on every operation on `dir` passes through `replicator`.
    pub fn mount(dir: &Path, replicator: Arc<dyn Replicator>) -> Result<MountGuard, MountError> {
        Self::mount_with(dir, replicator, MountOptions::default())
    }

    /// [`Mirror::mount`] with `options`.
    pub fn mount_with(
        dir: &Path,
        replicator: Arc<dyn Replicator>,
        options: MountOptions,
    ) -> Result<MountGuard, MountError> {
        let open_err = |source| MountError::Open {
            path: dir.to_path_buf(),
            source,
        };
        let root = Root::new(dir).map_err(open_err)?;
        let st = rfs::fstat(root.fd()).map_err(|e| open_err(e.into()))?;
        let notifier = Arc::new(OnceLock::new());
        let tree = Tree::new(root, options.exclusions);
        let tail = Tail::new(options.limits);
        let fs = MirrorFs {
            tree: tree.clone(),
            root_ino: st.st_ino as u64,
            replicator,
            nodes: Mutex::new(Nodes::new()),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            notifier: notifier.clone(),
            drops_privileges: AtomicBool::new(false),
            waiters: Waiters::new(WAITERS).map_err(open_err)?,
            durability: options.durability,
            tail: tail.clone(),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("holdfast".into()),
            MountOption::Subtype("holdfast".into()),
            // The daemon runs as root: let the kernel check permissions
            // against the attributes we return, as the real file system would.
            MountOption::DefaultPermissions,
        ];
        config.acl = SessionACL::All;
        config.n_threads = Some(1);
        let mount_err = |source| MountError::Mount {
            path: dir.to_path_buf(),
            source,
        };
        let session = fuser::Session::new(Server(Arc::new(fs)), dir, &config).map_err(mount_err)?;
        let _ = notifier.set(session.notifier());
        let session = session.spawn().map_err(mount_err)?;
        Ok(MountGuard {
            dir: dir.to_path_buf(),
            session: Some(session),
            tree,
            tail,
        })
    }
}

/// The mounted mirror; dropping it unmounts (lazily if busy).
#[derive(Debug)]
pub struct MountGuard {
    dir: PathBuf,
    session: Option<BackgroundSession>,
    tree: Tree,
    tail: Tail,
}

impl MountGuard {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The real directory under the mount and the lock ordering its
    /// changes: what a resynchronisation reads from while the mount serves.
    pub fn tree(&self) -> Tree {
        self.tree.clone()
    }

    /// What the secondary has not acknowledged yet.
    pub fn tail(&self) -> Tail {
        self.tail.clone()
    }

    /// Unmounts now, reporting failure; a busy mount is detached (lazy
    /// unmount) and ends when its last open file is closed.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.teardown().map_err(|source| MountError::Unmount {
            path: self.dir.clone(),
            source,
        })
    }

    fn teardown(&mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // A file closed by another thread a moment ago may keep it busy briefly.
        for _ in 0..20 {
            match rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => {
                    let _ = session.join();
                    return Ok(());
                }
                Err(Errno::BUSY) => std::thread::sleep(Duration::from_millis(25)),
                Err(e) => {
                    tracing::warn!("unmount {}: {e}", self.dir.display());
                    break;
                }
            }
        }
        tracing::warn!("{} busy: detaching (lazy unmount)", self.dir.display());
        rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH)?;
        // Served until its last open file is closed; joined off this thread.
        std::thread::spawn(move || {
            let _ = session.join();
        });
        Ok(())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!("cannot unmount {}: {e}", self.dir.display());
        }
    }
}
