//! Marks: the coarse regions that may differ between two copies, the
//! records of both durable logs — the change log's activity log while
//! alone (`tracking`) and the activity log kept while mirroring
//! (`activity`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::op::{parent_of, Intent};

/// Unit of the durable activity log.
pub const EXTENT: u64 = 4 << 20;

/// One record of an activity log: a coarse region that may differ.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mark {
    Extent {
        path: PathBuf,
        index: u64,
    },
    /// From `from` to the end of the file, however long (shifting
    /// fallocate modes).
    Tail {
        path: PathBuf,
        from: u64,
    },
    /// A directory whose every entry is compared, regular files by
    /// checksum (change tracking: a rename may have replaced one).
    Dir {
        path: PathBuf,
    },
    /// A directory whose entries are made identical, data not compared
    /// (the activity log while mirroring: data has regions of its own).
    Listing {
        path: PathBuf,
    },
    /// A name renamed or hard-linked (the activity log while mirroring):
    /// compared by checksum, a directory entry by entry.
    Moved {
        path: PathBuf,
    },
}

impl Mark {
    pub fn path(&self) -> &Path {
        match self {
            Mark::Extent { path, .. }
            | Mark::Tail { path, .. }
            | Mark::Dir { path }
            | Mark::Listing { path }
            | Mark::Moved { path } => path,
        }
    }

    /// The marks of the activity log kept while mirroring for an intent:
    /// data by extent, an entry by its directory's listing, a move by
    /// both names.
    pub(crate) fn mirrored(intent: &Intent<'_>) -> Vec<Mark> {
        match *intent {
            Intent::Data { .. } => Mark::covering(intent),
            Intent::Entry { path } => vec![Mark::Listing {
                path: parent_of(path).to_path_buf(),
            }],
            Intent::Move { from, to } => vec![
                Mark::Listing {
                    path: parent_of(from).to_path_buf(),
                },
                Mark::Listing {
                    path: parent_of(to).to_path_buf(),
                },
                Mark::Moved {
                    path: from.to_path_buf(),
                },
                Mark::Moved {
                    path: to.to_path_buf(),
                },
            ],
        }
    }

    /// The marks covering an intent.
    pub(crate) fn covering(intent: &Intent<'_>) -> Vec<Mark> {
        match *intent {
            Intent::Data { path, offset, len } => {
                let end = offset.saturating_add(len);
                let (first, last) = (offset / EXTENT, end.div_ceil(EXTENT));
                if last - first > 64 {
                    return vec![Mark::Tail {
                        path: path.to_path_buf(),
                        from: first * EXTENT,
                    }];
                }
                (first..last)
                    .map(|index| Mark::Extent {
                        path: path.to_path_buf(),
                        index,
                    })
                    .collect()
            }
            Intent::Entry { path } => vec![Mark::Dir {
                path: parent_of(path).to_path_buf(),
            }],
            Intent::Move { from, to } => vec![
                Mark::Dir {
                    path: parent_of(from).to_path_buf(),
                },
                Mark::Dir {
                    path: parent_of(to).to_path_buf(),
                },
            ],
        }
    }
}
