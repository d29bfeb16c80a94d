//! An entry as the primary has it: what a resynchronisation makes
//! identical on the secondary (`Request::Ensure`), and the times read
//! from a file's attributes that both the file system and the
//! resynchronisation send.

use std::path::PathBuf;

use rustix::fs::Stat;
use serde::{Deserialize, Serialize};

use crate::op::Time;

/// An entry as the primary has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryState {
    Absent,
    Present(Attributes),
}

/// A present entry as the primary has it: what `stat` says, its link
/// target and extended attributes, and how the peer is to make it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Its number of names (hard links).
    pub nlink: u64,
    pub rdev: u64,
    pub mtime: Time,
    #[serde(with = "serde_bytes")]
    pub target: Vec<u8>,
    pub xattrs: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
    /// A file created while alone: whatever the peer has under this name
    /// is another file, to be replaced.
    pub fresh: bool,
    /// Another name of this (regular) file, made what the primary has
    /// earlier in this resynchronisation: this name becomes a hard link
    /// to it, not a file of its own.
    pub link: Option<PathBuf>,
}

pub(crate) fn mtime_of(st: &Stat) -> Time {
    Time {
        sec: st.st_mtime,
        nsec: st.st_mtime_nsec as u32,
    }
}

pub(crate) fn atime_of(st: &Stat) -> Time {
    Time {
        sec: st.st_atime,
        nsec: st.st_atime_nsec as u32,
    }
}
