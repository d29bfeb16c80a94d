//! The real directory under the mount and the lock ordering its changes.

use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;

use crate::apply::Root;
use crate::exclusions::Exclusions;

/// The primary's real directory (the descriptor opened before mounting) and
/// the lock ordering its changes.
///
/// Whoever holds [`Tree::lock`] sees the directory between two operations
/// of the file system, and what it submits to the replicator meanwhile is
/// placed between those operations in the stream: a resynchronisation
/// reads current data and queues it in one such section, so every later
/// change of the application reaches the secondary after it.
#[derive(Debug, Clone)]
pub struct Tree(Arc<TreeInner>);

#[derive(Debug)]
struct TreeInner {
    root: Root,
    order: Mutex<()>,
    /// What of the directory is not replicated.
    exclusions: Exclusions,
}

/// Proof of holding the ordering lock of a [`Tree`].
#[derive(Debug)]
pub struct Ordered<'a> {
    _guard: MutexGuard<'a, ()>,
}

impl Tree {
    pub(super) fn new(root: Root, exclusions: Exclusions) -> Self {
        Tree(Arc::new(TreeInner {
            root,
            order: Mutex::new(()),
            exclusions,
        }))
    }

    /// Waits for the operation in progress (if any) and keeps the next one
    /// out until the returned guard is dropped.
    pub fn lock(&self) -> Ordered<'_> {
        Ordered {
            _guard: self.0.order.lock(),
        }
    }

    /// The directory; reading it is consistent with the stream only while
    /// the ordering lock is held.
    pub(crate) fn root(&self) -> &Root {
        &self.0.root
    }

    /// What of the directory is not replicated.
    pub(crate) fn exclusions(&self) -> &Exclusions {
        &self.0.exclusions
    }
}
