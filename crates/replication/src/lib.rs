//! Synchronous real-time replication of a mirror module's directories.
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
//!       │ reply (only after the ack)               ▼
//!       │                         fs.rs: MirrorFs ── ordering lock ──────────┐
//!       │                          1. apply locally, through the directory   │
//!       │                             fd opened before mounting (apply.rs)   │
//!       │                          2. describe it as a Change (op.rs)        │
//!       │                          3. submit to the Replicator ──────────────┘
//!       │                          4. wait for the acknowledgement (no lock)
//!       │                                          │
//!       │            sender.rs: TcpReplicator — seq numbers, one writer,
//!       │            pipelined; one reader thread matches acks to waiters
//!       │                                          │ protocol.rs: frames with
//!       │                                          ▼ seq + HMAC(session key)
//!       │            receiver.rs: Receiver — verifies, applies in seq order
//!       │            to its copy (again via a held directory fd), acks on
//!       └──────────  receipt (default) or after apply + fsync (Durable)
//! ```
//!
//! The promise: an operation the application saw succeed was acknowledged
//! by the secondary. If the secondary refuses or the connection fails, the
//! operation returns `EIO` (what to do then — go ALONE, keep writing — is
//! policy for the daemon, later).
//!
//! # What is replicated
//!
//! Writes (only the bytes written), create, mknod (fifos, sockets, devices),
//! mkdir, unlink, rmdir, rename (with `RENAME_NOREPLACE` and
//! `RENAME_EXCHANGE`), hard links, symbolic links, chmod, chown, truncate,
//! timestamps, fallocate (including hole punching), extended attributes, and
//! fsync (acknowledged only once durable on the secondary). Each change
//! carries the modification times it produced, so the secondary's tree is
//! identical: content, mode, owner, mtime, link targets, link counts, xattrs.
//! Data written to a file after all its names were unlinked is not sent:
//! nobody can reach it.
//!
//! # Not yet
//!
//! - tracking changes while ALONE and resynchronising a returning node
//!   (invariant 3) — there is no journal yet;
//! - keeping the secondary's directory read-only to local processes;
//! - policies on replication failure (today: `EIO`), acknowledgement
//!   timeouts (a stalled secondary stalls the application);
//! - kernel passthrough (`FOPEN_PASSTHROUGH`) for read-only opens: the
//!   kernel refuses mixing passthrough and cached opens of one inode, so it
//!   needs care; every read goes through the daemon for now;
//! - nested mount points inside a replicated directory (refused: `EXDEV`).

mod apply;
pub mod fs;
pub mod op;
pub mod protocol;
pub mod receiver;
pub mod sender;

pub use fs::{Mirror, MountError, MountGuard};
pub use op::{Ack, Change, Op, ReplicationError, Replicator, Stamp, Time};
pub use receiver::{AckMode, Receiver, ReceiverError};
pub use sender::TcpReplicator;
