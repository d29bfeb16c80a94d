//! Change tracking while no secondary receives the stream (ALONE), durable
//! across a crash of the lone primary, and the [`Link`] that switches the
//! file system between mirroring, tracking and resynchronising.
//!
//! # Granularity
//!
//! - In memory, per file path, the 4 KiB blocks changed ([`BLOCK`]: the
//!   page size, the unit applications and the kernel write in — a 4 KiB
//!   random write costs 4 KiB at resync, not 64), kept as merged ranges so
//!   a sequential write of a large file is one entry; plus the entries
//!   (paths) whose existence or attributes changed, and the renames and
//!   hard links in order, replayed first so a renamed file is not re-sent.
//! - On disk, DRBD-style: an *activity log* of coarse marks — 4 MiB extents
//!   of a file ([`EXTENT`]) and directories whose listing changed — each
//!   appended and synced **before** the first change it covers is applied
//!   (so before the data can reach the disk), at most once per checkpoint.
//!   The fine state is written to a snapshot at checkpoints (every
//!   [`TrackingConfig::interval`] or [`TrackingConfig::max_marks`] marks)
//!   and at clean shutdown, after which the log starts empty.
//!
//! After a crash the dirty set is the last snapshot plus every mark logged
//! since: whole extents, and directories whose every entry is compared with
//! the peer (regular files there by block checksum, since a rename may have
//! replaced one by another). So every change the application saw succeed is
//! covered; the cost of a crash is bounded by the marks of one checkpoint
//! period. A sequential 64 MiB write costs 16 synced marks; a rewrite of a
//! block already marked costs nothing.
//!
//! A state that cannot be read (damaged, foreign) is reported as lost: the
//! caller then compares the whole tree by checksums ([`Dirty::everything`]).
//!
//! [`Link`]: link::Link
//! [`EXTENT`]: crate::mark::EXTENT
//! [`TrackingConfig::interval`]: change_log::TrackingConfig::interval
//! [`TrackingConfig::max_marks`]: change_log::TrackingConfig::max_marks
//! [`Dirty::everything`]: dirty::Dirty::everything

pub mod change_log;
pub mod dirty;
pub mod link;
mod unapplied;

/// Unit of change tracking in memory, and of data sent for tracked changes.
pub const BLOCK: u64 = 4096;

/// What the tests of the tracker's parts are made of.
#[cfg(test)]
mod examples {
    use std::path::Path;

    use super::dirty::Ranges;
    use crate::op::{Change, Intent, Op};
    pub(super) fn ranges(r: &Ranges) -> Vec<(u64, u64)> {
        r.iter().collect()
    }

    pub(super) fn data(path: &str, offset: u64, len: u64) -> Intent<'_> {
        Intent::Data {
            path: Path::new(path),
            offset,
            len,
        }
    }

    pub(super) fn change(op: Op) -> Change {
        Change { op, stamps: vec![] }
    }

    pub(super) fn write(path: &str, offset: u64, len: usize) -> Change {
        change(Op::Write {
            path: path.into(),
            offset,
            data: vec![0; len].into(),
        })
    }
}
