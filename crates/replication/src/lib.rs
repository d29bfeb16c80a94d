//! Real-time replication of a mirror module's directories.
//!
//! This crate owns the FUSE file system mounted over each replicated
//! directory on the primary, the replication wire, and the secondary's
//! receiver. The daemon decides when to mount and where to connect; this
//! crate does not know about modules or roles.
//!
//! # Data flow
//!
//! ```text
//!  application ── write(2) ──▶ kernel VFS ──▶ FUSE (/dev/fuse)
//!       ▲                                          │
//!       │ reply (fsync, close: after the ack)      ▼
//!       │                         fs/: MirrorFs ── ordering lock ────────────┐
//!       │                          1. apply locally, through the directory   │
//!       │                             fd opened before mounting (apply.rs)   │
//!       │                          2. describe it as a Change (op.rs)        │
//!       │                          3. submit to the Replicator ──────────────┘
//!       │                          4. reply (no lock): at once, or once
//!       │                             the tail (fs/tail.rs) is acknowledged
//!       │                             up to it, for a durability call
//!       │                                          │
//!       │            sender.rs: TcpReplicator — seq numbers, a sender
//!       │            thread writing queued frames together (pipelined);
//!       │            one reader thread matches acks to changes
//!       │            and replies to the kernel for them
//!       │                                          │ protocol.rs: frames with
//!       │                                          ▼ seq + MAC(session key)
//!       │            receiver.rs: Receiver — a reader verifies and acks
//!       │            on receipt (default: all frames at hand in one reply);
//!       │            an applier (or the reader, for light changes when the
//!       │            applier is idle) applies in seq order to its copy (via
//!       └──────────  a held directory fd), acking after fsync (Durable)
//! ```
//!
//! The secondary's directory is read-only to its local processes: the
//! daemon binds it read-only over itself after the [`Receiver`] opened it.
//!
//! The promise (invariant 1): every change is submitted at once, in
//! order, after its local apply, so the secondary holds a prefix; a call
//! that promises durability (fsync, fdatasync, an `O_SYNC`/`O_DSYNC`
//! write, a directory fsync, the close of a file written through that
//! descriptor) returns only once the secondary acknowledged it and
//! everything before it — every call with [`Durability::EveryCall`]. The
//! rest, the unacknowledged [`Tail`], is bounded ([`TailLimits`]). If the
//! secondary refuses or the connection fails, a bare replicator's waiting
//! calls return `EIO`; a [`Link`]'s [`OnFailure`] records the change
//! durably and then fails it, lets it succeed (the primary goes on alone)
//! or holds it until a resynchronisation brought it to the secondary.
//!
//! # What is replicated
//!
//! Writes (only the bytes written), create, mknod (fifos, sockets, devices),
//! mkdir, unlink, rmdir, rename (with `RENAME_NOREPLACE` and
//! `RENAME_EXCHANGE`), hard links, symbolic links, chmod, chown, truncate,
//! timestamps, fallocate (including hole punching), extended attributes, and
//! fsync (performed on the secondary too, acknowledged per the mode). Each change
//! carries the modification times it produced, so the secondary's tree is
//! identical: content, mode, owner, mtime, link targets, link counts, xattrs.
//! Data written to a file after all its names were unlinked is not sent:
//! nobody can reach it.
//!
//! What is excluded (SafeKit's `<notreplicated>`, [`Exclusions`]) is
//! applied locally and never sent; renames and links across the boundary
//! are refused with `EXDEV`.
//!
//! # ALONE, reintegration, generations (invariants 3 and 4)
//!
//! The file system is mounted with a [`Link`] (a [`Replicator`]): it
//! mirrors to the secondary, or tracks changes in a durable [`ChangeLog`]
//! while ALONE (`tracking/`: 4 KiB blocks in memory, DRBD-style activity
//! log of 4 MiB extents and directories on disk, synced before the first
//! change it covers — announced by the file system through
//! [`Replicator::prepare`] before applying anything), or both while a
//! [`resync()`] brings a returning secondary up to date from the real
//! directory ([`Tree`], under the file system's ordering lock) while the
//! application keeps writing (`resync.rs` explains why nothing is lost or
//! reordered). Progress: [`Progress::report`]; what the next one will
//! send, read from the change log while ALONE: [`tracked`]. Who resynchronises whom is
//! decided by [`decide`] from recorded [`Generations`] (`generation.rs`);
//! the secondary records its copy incomplete for the whole resync.
//! Mirrored changes the secondary may not have applied when it left
//! (acknowledged on receipt: each acknowledgement says how far it applied)
//! are recorded in the log then; the secondary records the boot id it
//! applies unsynced changes under, so only a restart of its host makes the
//! next resync compare checksums ([`compare_reason`]). While mirroring,
//! the primary keeps an activity log too (`activity.rs`: the regions that
//! may hold changes the secondary never acknowledged), so a primary killed
//! while mirroring returns by comparing only those regions ([`plan`]).
//!
//! # Not yet
//!
//! - a primary that crashed while mirroring and restarts as primary sends
//!   the extents of its activity log whole (a returning one compares them);
//! - kernel passthrough (`FOPEN_PASSTHROUGH`) for read-only opens: the
//!   kernel refuses mixing passthrough and cached opens of one inode, so it
//!   needs care; every read goes through the daemon for now;
//! - nested mount points inside a replicated directory (refused: `EXDEV`).

pub mod activity;
mod apply;
pub mod durable;
pub mod entry;
pub mod exclusions;
pub mod fs;
pub mod generation;
pub mod mark;
pub mod op;
pub mod protocol;
pub mod receiver;
pub mod resync;
pub mod sender;
pub mod summary;
pub mod tracking;

pub use exclusions::{ExclusionError, Exclusions};
pub use fs::mount::{Mirror, MountError, MountGuard, MountOptions};
pub use fs::tail::{Durability, Tail, TailLimits, Unacknowledged};
pub use fs::tree::{Ordered, Tree};
pub use generation::{
    boot_id, compare_reason, decide, plan, Basis, Decision, GenerationStore, Generations, Plan,
    Refusal,
};
pub use mark::Mark;
pub use op::{
    Ack, AckSender, Change, Intent, Op, ReplicationError, Replicator, Stamp, Time, Unreplicated,
};
pub use receiver::{AckMode, Receiver, ReceiverError};
pub use resync::{resync, Peer, Progress, ProgressReport, ResyncError, Scope, Stats};
pub use sender::TcpReplicator;
pub use summary::{tracked, TrackedSummary};
pub use tracking::change_log::{ChangeLog, Recovery, TrackingConfig, TrackingError};
pub use tracking::dirty::Dirty;
pub use tracking::link::{Link, LinkMode, OnFailure};
