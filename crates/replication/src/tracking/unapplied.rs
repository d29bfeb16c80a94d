//! Mirrored changes the secondary may not have applied yet, kept by what
//! they touched until it reports them applied.

use std::collections::VecDeque;
use std::path::PathBuf;

use crate::op::{Change, Intent, Op};

/// The footprint of a mirrored change: what it touched, kept until the
/// secondary is known to have applied it: a write's range, not its data
/// (no copy of every write in flight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Footprint {
    Data {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    Change(Change),
}

impl Footprint {
    pub(super) fn of(change: &Change) -> Self {
        match &change.op {
            Op::Write { path, offset, data } => Footprint::Data {
                path: path.clone(),
                offset: *offset,
                len: data.len() as u64,
            },
            _ => Footprint::Change(change.clone()),
        }
    }

    /// What the change touched, as the file system announces it before
    /// applying (where the size it had before is unknown, from the new one
    /// to any end).
    pub(super) fn intents(&self) -> Vec<Intent<'_>> {
        let change = match self {
            Footprint::Data { path, offset, len } => {
                return vec![Intent::Data {
                    path,
                    offset: *offset,
                    len: *len,
                }]
            }
            Footprint::Change(change) => change,
        };
        match &change.op {
            Op::Write { path, offset, data } => vec![Intent::Data {
                path,
                offset: *offset,
                len: data.len() as u64,
            }],
            Op::SetAttr {
                path,
                size: Some(size),
                ..
            } => vec![
                Intent::Entry { path },
                Intent::Data {
                    path,
                    offset: *size,
                    len: u64::MAX - size,
                },
            ],
            Op::Fallocate {
                path,
                offset,
                length,
                mode,
            } => {
                let shifting = rustix::fs::FallocateFlags::COLLAPSE_RANGE
                    | rustix::fs::FallocateFlags::INSERT_RANGE;
                let shifts =
                    rustix::fs::FallocateFlags::from_bits_retain(*mode as u32).intersects(shifting);
                vec![Intent::Data {
                    path,
                    offset: *offset,
                    len: if shifts { u64::MAX - offset } else { *length },
                }]
            }
            Op::Rename { from, to, .. } | Op::Link { from, to } => {
                vec![Intent::Move { from, to }]
            }
            Op::Fsync { .. } => vec![],
            // Existence, attributes, xattrs.
            op => op
                .paths()
                .into_iter()
                .map(|path| Intent::Entry { path })
                .collect(),
        }
    }
}

/// Mirrored changes, in stream order, that the secondary may not have
/// applied: it acknowledges on receipt (before applying), or did not
/// acknowledge yet. It applies in order, so they are those numbered from
/// the last "applied up to" it reported. Pure.
#[derive(Debug, Default)]
pub(super) struct Unapplied(pub(super) VecDeque<(u64, Footprint)>);

impl Unapplied {
    pub(super) fn push(&mut self, seq: u64, touched: Footprint) {
        self.0.push_back((seq, touched));
    }

    /// The secondary applied every change numbered below `upto`.
    pub(super) fn applied(&mut self, upto: u64) {
        while self.0.front().is_some_and(|(seq, _)| *seq < upto) {
            self.0.pop_front();
        }
    }

    pub(super) fn take(&mut self) -> Vec<Footprint> {
        std::mem::take(&mut self.0)
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::examples::write;

    #[test]
    fn the_window_keeps_what_is_not_known_applied_in_stream_order() {
        let mut window = Unapplied::default();
        for (seq, offset) in [(3, 0), (4, 4096), (7, 8192)] {
            window.push(seq, Footprint::of(&write("f", offset, 10)));
        }
        // Applied below 4: change 3 is, 4 (acknowledged on receipt) not.
        window.applied(4);
        window.applied(2);
        let left: Vec<u64> = window.0.iter().map(|(s, _)| *s).collect();
        assert_eq!(left, vec![4, 7]);
        let taken = window.take();
        assert_eq!(taken[0], Footprint::of(&write("f", 4096, 10)));
        assert_eq!(taken.len(), 2);
        assert!(window.take().is_empty(), "taken once");
    }
}
