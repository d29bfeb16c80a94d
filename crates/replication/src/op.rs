//! What is replicated: one [`Change`] per mutating operation, and the
//! [`Replicator`] that carries it to the secondary.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

/// A point in time as the file system stores it (seconds since the epoch and
/// nanoseconds), so both sides set bit-identical timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// One mutating operation, applied on the primary, then on the secondary.
/// Paths are relative to the replicated directory (`""` is the directory
/// itself) and never contain `..`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Write {
        #[serde(with = "path_bytes")]
        path: PathBuf,
        offset: u64,
        /// Only the bytes written, not the whole file; shared, so queueing
        /// and sending it copies nothing.
        data: Bytes,
    },
    /// A regular file; `mode` is the permission bits after creation.
    Create {
        #[serde(with = "path_bytes")]
        path: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A node of any type; `mode` includes the file type bits.
    Mknod {
        #[serde(with = "path_bytes")]
        path: PathBuf,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    },
    Mkdir {
        #[serde(with = "path_bytes")]
        path: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Unlink {
        #[serde(with = "path_bytes")]
        path: PathBuf,
    },
    Rmdir {
        #[serde(with = "path_bytes")]
        path: PathBuf,
    },
    /// `flags` are `renameat2` flags (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    Rename {
        #[serde(with = "path_bytes")]
        from: PathBuf,
        #[serde(with = "path_bytes")]
        to: PathBuf,
        flags: u32,
    },
    /// A hard link `to` naming the same file as `from`.
    Link {
        #[serde(with = "path_bytes")]
        from: PathBuf,
        #[serde(with = "path_bytes")]
        to: PathBuf,
    },
    Symlink {
        #[serde(with = "path_bytes")]
        path: PathBuf,
        /// Stored as is: a symbolic link's content is data, never followed here.
        #[serde(with = "path_bytes")]
        target: PathBuf,
        uid: u32,
        gid: u32,
    },
    /// Applied in this order: size, owner, mode, times (chown clears the
    /// set-user-ID bit, so the order must be the same on both sides).
    SetAttr {
        #[serde(with = "path_bytes")]
        path: PathBuf,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Time>,
        mtime: Option<Time>,
    },
    Fallocate {
        #[serde(with = "path_bytes")]
        path: PathBuf,
        offset: u64,
        length: u64,
        mode: i32,
    },
    SetXattr {
        #[serde(with = "path_bytes")]
        path: PathBuf,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: i32,
    },
    RemoveXattr {
        #[serde(with = "path_bytes")]
        path: PathBuf,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// The application asked for durability: the secondary performs its own
    /// fsync in stream order, and acknowledges it as any change (on receipt,
    /// or after the sync with [`crate::AckMode::Durable`]).
    Fsync {
        #[serde(with = "path_bytes")]
        path: PathBuf,
    },
}

impl Op {
    /// Every path the operation names.
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            Op::Write { path, .. }
            | Op::Create { path, .. }
            | Op::Mknod { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Unlink { path }
            | Op::Rmdir { path }
            | Op::Symlink { path, .. }
            | Op::SetAttr { path, .. }
            | Op::Fallocate { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::Fsync { path } => vec![path],
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
        }
    }

    /// Operations that create or remove a name need one: the directory
    /// itself cannot be created, removed, renamed or linked.
    fn needs_name(&self) -> bool {
        !matches!(
            self,
            Op::SetAttr { .. } | Op::SetXattr { .. } | Op::RemoveXattr { .. } | Op::Fsync { .. }
        )
    }
}

/// What a mutation is about to touch, announced through
/// [`Replicator::prepare`] before it is applied locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent<'a> {
    /// Bytes `offset..offset + len` of the regular file `path` (write,
    /// truncate — both the lost and the gained range —, fallocate).
    Data {
        path: &'a Path,
        offset: u64,
        len: u64,
    },
    /// The entry `path` is about to appear, disappear, or change attributes
    /// (mode, owner, times, xattrs); so is its parent's listing.
    Entry { path: &'a Path },
    /// `from` is about to be renamed or hard-linked to `to`.
    Move { from: &'a Path, to: &'a Path },
}

/// The modification time a path has on the primary after the operation:
/// applying an operation changes timestamps (of the file, of its parent
/// directories), and the secondary sets the same ones so the trees are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    #[serde(with = "path_bytes")]
    pub path: PathBuf,
    pub mtime: Time,
}

/// What travels to the secondary for one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub op: Op,
    pub stamps: Vec<Stamp>,
}

impl Change {
    /// The first path that would leave the replicated directory (absolute,
    /// `..`, `.`), if any. Symbolic links on the way are refused when
    /// applying (the path walk never follows them).
    pub fn escaping_path(&self) -> Option<&Path> {
        let named = self.op.needs_name();
        self.op
            .paths()
            .into_iter()
            .map(|p| (p, named))
            .chain(self.stamps.iter().map(|s| (s.path.as_path(), false)))
            .find(|(p, needs_name)| {
                !is_relative_inside(p) || (*needs_name && p.as_os_str().is_empty())
            })
            .map(|(p, _)| p)
    }
}

/// True for `""` and for paths made only of normal components.
pub(crate) fn is_relative_inside(path: &Path) -> bool {
    !path.as_os_str().as_bytes().contains(&0)
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && !path.as_os_str().as_bytes().ends_with(b"/")
}

/// The directory holding `path` (`""` for a name at the top).
pub(crate) fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// `base` joined with `rest`, `base` itself for an empty `rest` (where a
/// name moved by a rename lands).
pub(crate) fn join_rest(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

/// Why the secondary did not acknowledge an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    #[error("replication connection lost: {0}")]
    Disconnected(String),
    #[error("secondary refused operation {seq}: {reason}")]
    Refused { seq: u64, reason: String },
    #[error("cannot connect to the secondary: {0}")]
    Connect(String),
    #[error("change tracking failed: {0}")]
    Tracking(String),
    #[error("the secondary answered {0} unexpectedly")]
    UnexpectedAnswer(String),
    #[error(
        "the primary role ended before the change could be acknowledged without the secondary"
    )]
    Withdrawn,
}

/// The secondary's acknowledgement of one submitted change, to wait for
/// ([`Ack::wait`]) or to be called back with ([`Ack::then`]).
#[derive(Debug)]
pub struct Ack {
    state: AckState,
    /// The change's position in the replication stream, for a replicator
    /// that numbers them (see [`Replicator::applied`]).
    seq: Option<u64>,
}

type Outcome = Result<(), ReplicationError>;
type AckHook = Box<dyn FnOnce(Outcome) -> Outcome + Send>;
type Callback = Box<dyn FnOnce(Outcome) + Send>;

enum AckState {
    Done(Outcome),
    Waiting(Arc<Slot>),
    /// An acknowledgement whose outcome passes through a hook first.
    Mapped(Box<Ack>, Hook),
}

enum Hook {
    /// May block, whatever the outcome.
    Any(AckHook),
    /// Only sees a failure: a success passes through untouched, at once.
    Failure(AckHook),
}

impl std::fmt::Debug for AckState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckState::Done(r) => f.debug_tuple("Done").field(r).finish(),
            AckState::Waiting(_) => f.write_str("Waiting"),
            AckState::Mapped(inner, _) => f.debug_tuple("Mapped").field(inner).finish(),
        }
    }
}

/// Where one acknowledgement meets whoever awaits it.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    arrived: Condvar,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Empty,
    Arrived(Outcome),
    /// Called by the thread delivering the outcome.
    Callback(Callback),
    Taken,
}

/// The delivering end of an [`Ack`] made by [`Ack::channel`]. Dropped
/// without delivering, it reports the connection lost.
pub struct AckSender(Option<Arc<Slot>>);

impl std::fmt::Debug for AckSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckSender")
    }
}

impl AckSender {
    /// Delivers the outcome: wakes the thread waiting for it, or runs the
    /// callback registered with [`Ack::then`] on this thread.
    pub fn send(mut self, outcome: Outcome) {
        if let Some(slot) = self.0.take() {
            deliver(&slot, outcome);
        }
    }
}

fn deliver(slot: &Slot, outcome: Outcome) {
    let mut state = slot.state.lock();
    match std::mem::take(&mut *state) {
        SlotState::Callback(callback) => {
            *state = SlotState::Taken;
            drop(state);
            callback(outcome);
        }
        _ => {
            *state = SlotState::Arrived(outcome);
            drop(state);
            slot.arrived.notify_one();
        }
    }
}

impl Drop for AckSender {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            deliver(
                &slot,
                Err(ReplicationError::Disconnected(
                    "acknowledgement abandoned".into(),
                )),
            );
        }
    }
}

impl Ack {
    /// An acknowledgement already known (a replicator that works synchronously).
    pub fn done(result: Outcome) -> Self {
        Ack {
            state: AckState::Done(result),
            seq: None,
        }
    }

    /// An acknowledgement that arrives later through the returned sender.
    pub fn channel() -> (AckSender, Self) {
        let slot = Arc::new(Slot::default());
        let ack = Ack {
            state: AckState::Waiting(slot.clone()),
            seq: None,
        };
        (AckSender(Some(slot)), ack)
    }

    /// The same acknowledgement, for the change numbered `seq` in the stream.
    pub fn numbered(mut self, seq: u64) -> Self {
        self.seq = Some(seq);
        self
    }

    /// The change's position in the stream, if the replicator numbers them.
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// The same acknowledgement, its outcome passed through `hook` when
    /// waited for (e.g. a change held until a resynchronisation). The hook
    /// may block: it never runs on the thread delivering the outcome.
    pub fn map(self, hook: impl FnOnce(Outcome) -> Outcome + Send + 'static) -> Self {
        self.mapped(Hook::Any(Box::new(hook)))
    }

    /// The same acknowledgement, a failure passed through `hook` when
    /// waited for (e.g. to record a change the secondary may have missed);
    /// a success is known as soon as it arrives.
    pub fn map_failure(
        self,
        hook: impl FnOnce(ReplicationError) -> Outcome + Send + 'static,
    ) -> Self {
        self.mapped(Hook::Failure(Box::new(move |r| r.or_else(hook))))
    }

    fn mapped(self, hook: Hook) -> Self {
        let seq = self.seq;
        Ack {
            state: AckState::Mapped(Box::new(self), hook),
            seq,
        }
    }

    /// Whether the outcome is already known and waiting returns at once (a
    /// hook may block: a held change waits for the resynchronisation).
    pub fn is_done(&self) -> bool {
        match &self.state {
            AckState::Done(_) => true,
            AckState::Waiting(_) => false,
            AckState::Mapped(inner, Hook::Failure(_)) => {
                matches!(inner.state, AckState::Done(Ok(())))
            }
            AckState::Mapped(_, Hook::Any(_)) => false,
        }
    }

    /// Blocks until the secondary acknowledged (or the replication failed).
    pub fn wait(self) -> Outcome {
        match self.state {
            AckState::Done(result) => result,
            AckState::Mapped(inner, Hook::Any(hook) | Hook::Failure(hook)) => hook(inner.wait()),
            AckState::Waiting(slot) => {
                let mut state = slot.state.lock();
                loop {
                    match std::mem::take(&mut *state) {
                        SlotState::Arrived(outcome) => return outcome,
                        other => *state = other,
                    }
                    slot.arrived.wait(&mut state);
                }
            }
        }
    }

    /// Calls `then` once the secondary's answer arrived, with this
    /// acknowledgement in its final state: at once if it is known, else on
    /// the thread delivering it — which must not be held up: `then` should
    /// [`Ack::wait`] there only if [`Ack::is_done`] (a success, or a
    /// failure without a hook), and hand the rest to a thread that may block.
    /// Saves the hand-over to a waiting thread for every change.
    pub fn then(self, then: impl FnOnce(Ack) + Send + 'static) {
        self.then_boxed(Box::new(then))
    }

    fn then_boxed(self, then: Box<dyn FnOnce(Ack) + Send>) {
        let seq = self.seq;
        match self.state {
            AckState::Done(_) => then(self),
            AckState::Mapped(inner, hook) => inner.then_boxed(Box::new(move |inner| {
                then(Ack {
                    state: AckState::Mapped(Box::new(inner), hook),
                    seq,
                })
            })),
            AckState::Waiting(slot) => {
                let arrived = move |outcome| {
                    then(Ack {
                        state: AckState::Done(outcome),
                        seq,
                    })
                };
                let mut state = slot.state.lock();
                match std::mem::take(&mut *state) {
                    SlotState::Arrived(outcome) => {
                        *state = SlotState::Taken;
                        drop(state);
                        arrived(outcome);
                    }
                    _ => *state = SlotState::Callback(Box::new(arrived)),
                }
            }
        }
    }
}

/// Carries changes to the secondary, in submission order.
///
/// Submitting and waiting are separate so the file system can submit under
/// its ordering lock (the secondary applies changes in the order they were
/// applied locally) and wait for the acknowledgement outside it (many
/// operations in flight at once).
pub trait Replicator: Send + Sync {
    /// Called under the ordering lock *before* a change is applied locally,
    /// so a tracker can make a record durable before the data can reach the
    /// disk (a crash between the two must leave the change covered). An
    /// error refuses the operation (`EIO`) before anything changed.
    fn prepare(&self, intent: &Intent<'_>) -> Result<(), ReplicationError> {
        let _ = intent;
        Ok(())
    }

    /// Queues `change` after every change submitted before it.
    fn submit(&self, change: &Change) -> Result<Ack, ReplicationError>;

    /// Every change numbered (by [`Ack::seq`]) below the returned one is
    /// applied on the secondary — which may acknowledge a change on receipt,
    /// before applying it. `None`: an acknowledged change is applied.
    fn applied(&self) -> Option<u64> {
        None
    }

    /// Whether changes go to a peer now, so a write must carry the
    /// modification time it left ([`Change::stamps`]). Reading a file's
    /// time has a cost: the kernel then gives the next write a
    /// fine-grained time (multigrain timestamps), which dirties the inode
    /// at every write instead of once per clock tick, and the next fsync
    /// writes the inode too (on ext4, a second disk write per fsync).
    fn stamps(&self) -> bool {
        true
    }

    /// Submits and returns only once the secondary acknowledged.
    fn replicate(&self, change: &Change) -> Result<(), ReplicationError> {
        self.submit(change)?.wait()
    }
}

/// No replication: every change is acknowledged at once. The file system
/// alone, for measuring what FUSE itself costs (the benchmarks' floor).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unreplicated;

impl Replicator for Unreplicated {
    fn submit(&self, _change: &Change) -> Result<Ack, ReplicationError> {
        Ok(Ack::done(Ok(())))
    }

    fn stamps(&self) -> bool {
        false
    }
}

/// Paths (and raw byte strings) on the wire: bytes, since file names need
/// not be UTF-8.
mod path_bytes {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(path.as_os_str().as_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        Ok(PathBuf::from(OsString::from_vec(bytes.into_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: Op) -> Change {
        Change { op, stamps: vec![] }
    }

    #[test]
    fn escaping_paths_are_found() {
        for bad in ["../escape", "/etc/passwd", "a/../../b", "./a", "a/", ""] {
            let c = change(Op::Unlink { path: bad.into() });
            assert!(c.escaping_path().is_some(), "{bad:?} accepted");
        }
        let ok = change(Op::Rename {
            from: "a/b".into(),
            to: "c".into(),
            flags: 0,
        });
        assert_eq!(ok.escaping_path(), None);
        // The directory itself may change attributes, not be removed.
        let root_attr = change(Op::Fsync { path: "".into() });
        assert_eq!(root_attr.escaping_path(), None);
        let stamp = Change {
            op: Op::Fsync { path: "a".into() },
            stamps: vec![Stamp {
                path: "../x".into(),
                mtime: Time { sec: 0, nsec: 0 },
            }],
        };
        assert!(stamp.escaping_path().is_some());
    }

    #[test]
    fn non_utf8_paths_round_trip() {
        let name = OsString::from_vec(vec![b'f', 0xff, b'g']);
        let c = change(Op::Write {
            path: PathBuf::from(name),
            offset: 7,
            data: vec![1, 2, 3].into(),
        });
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<Change>(&bytes).unwrap(), c);
    }
}
