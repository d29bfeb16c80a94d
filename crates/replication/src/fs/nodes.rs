//! The inode table: what the kernel knows by inode number, and where each
//! one is.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use fuser::INodeNo;
use rustix::io::Errno;

use crate::op::join_rest;

/// What the kernel knows by inode number, and where each one is.
#[derive(Debug)]
pub(super) struct Nodes {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
}

#[derive(Debug)]
struct Node {
    /// Known names (several for hard links); empty once all are unlinked
    /// while the file is still open.
    paths: Vec<PathBuf>,
    lookups: u64,
}

impl Nodes {
    pub(super) fn new() -> Self {
        let mut nodes = Nodes {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
        };
        nodes.by_ino.insert(
            INodeNo::ROOT.0,
            Node {
                paths: vec![PathBuf::new()],
                lookups: 1,
            },
        );
        nodes.by_path.insert(PathBuf::new(), INodeNo::ROOT.0);
        nodes
    }

    pub(super) fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.by_ino
            .get(&ino.0)
            .and_then(|n| n.paths.last())
            .cloned()
            .ok_or(Errno::NOENT)
    }

    pub(super) fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
            return Err(Errno::INVAL);
        }
        Ok(self.path(parent)?.join(name))
    }

    /// The kernel got one more reference to `ino`, found at `path`.
    pub(super) fn remember(&mut self, ino: u64, path: &Path) {
        if let Some(old) = self.by_path.insert(path.to_path_buf(), ino) {
            if old != ino {
                if let Some(n) = self.by_ino.get_mut(&old) {
                    n.paths.retain(|p| p != path);
                }
            }
        }
        let node = self.by_ino.entry(ino).or_insert(Node {
            paths: Vec::new(),
            lookups: 0,
        });
        node.lookups += 1;
        if !node.paths.iter().any(|p| p == path) {
            node.paths.push(path.to_path_buf());
        }
    }

    pub(super) fn forget(&mut self, ino: u64, count: u64) {
        if ino == INodeNo::ROOT.0 {
            return;
        }
        let Some(node) = self.by_ino.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups == 0 {
            let node = self.by_ino.remove(&ino).expect("just found");
            for p in node.paths {
                if self.by_path.get(&p) == Some(&ino) {
                    self.by_path.remove(&p);
                }
            }
        }
    }

    /// A name found without the kernel asking (no new reference).
    pub(super) fn add_path(&mut self, ino: u64, path: &Path) {
        if let Some(node) = self.by_ino.get_mut(&ino) {
            node.paths.push(path.to_path_buf());
            self.by_path.insert(path.to_path_buf(), ino);
        }
    }

    pub(super) fn unlinked(&mut self, path: &Path) {
        if let Some(ino) = self.by_path.remove(path) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.paths.retain(|p| p != path);
            }
        }
    }

    /// Moves every known name at or under `from` to `to` (and the other way
    /// for an exchange); a replaced target loses its name.
    pub(super) fn renamed(&mut self, from: &Path, to: &Path, exchange: bool) {
        if !exchange {
            self.unlinked(to);
        }
        let moved: Vec<(PathBuf, PathBuf, u64)> = self
            .by_path
            .iter()
            .filter_map(|(p, &ino)| {
                let new = if let Ok(rest) = p.strip_prefix(from) {
                    join_rest(to, rest)
                } else if exchange {
                    join_rest(from, p.strip_prefix(to).ok()?)
                } else {
                    return None;
                };
                Some((p.clone(), new, ino))
            })
            .collect();
        for (old, _, _) in &moved {
            self.by_path.remove(old);
        }
        for (old, new, ino) in moved {
            self.by_path.insert(new.clone(), ino);
            if let Some(n) = self.by_ino.get_mut(&ino) {
                for p in n.paths.iter_mut().filter(|p| **p == old) {
                    *p = new.clone();
                }
            }
        }
    }
}
