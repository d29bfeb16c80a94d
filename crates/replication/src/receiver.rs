//! The secondary's end: applies changes in sequence order to its copy of
//! the directory, reached through a held descriptor like on the primary.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use holdfast_membership::ClusterKey;

use crate::apply::Root;
use crate::op::{Change, Op};
use crate::protocol::{secondary_handshake, Direction, Opener, ProtocolError, Reply, Sealer};

/// When the secondary acknowledges a change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AckMode {
    /// As soon as it is received (and checked), before applying: the write
    /// survives the loss of either node, not of both at once.
    #[default]
    Receipt,
    /// After it is applied and synced to disk on the secondary.
    Durable,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("cannot open the replicated directory {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("change {seq} names a path outside the replicated directory: {path:?}")]
    Escape { seq: u64, path: PathBuf },
    #[error("change {seq} ({op}) failed to apply: {source}")]
    Apply {
        seq: u64,
        op: String,
        source: std::io::Error,
    },
}

/// Applies what one primary sends to one directory.
#[derive(Debug)]
pub struct Receiver {
    root: Root,
    key: ClusterKey,
    mode: AckMode,
}

impl Receiver {
    pub fn new(dir: &Path, key: ClusterKey, mode: AckMode) -> Result<Self, ReceiverError> {
        let root = Root::new(dir).map_err(|source| ReceiverError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Receiver { root, key, mode })
    }

    /// Accepts primaries one after the other, forever; a session that ends
    /// in error is logged and the next connection is served.
    pub fn serve(
        listener: TcpListener,
        dir: &Path,
        key: ClusterKey,
        mode: AckMode,
    ) -> Result<(), ReceiverError> {
        let receiver = Receiver::new(dir, key, mode)?;
        loop {
            let (stream, peer) = listener
                .accept()
                .map_err(|e| ReceiverError::Protocol(e.into()))?;
            match receiver.serve_connection(stream) {
                Ok(()) => tracing::info!("replication from {peer} ended"),
                Err(e) => tracing::warn!("replication from {peer} failed: {e}"),
            }
        }
    }

    /// Serves one primary until it closes the connection (`Ok`) or
    /// something is wrong (forged frame, path escaping, apply failure). A
    /// refused change is reported to the primary before returning.
    pub fn serve_connection(&self, mut stream: TcpStream) -> Result<(), ReceiverError> {
        stream.set_nodelay(true).map_err(ProtocolError::from)?;
        let session = secondary_handshake(&mut stream, &self.key)?;
        let mut writer = stream.try_clone().map_err(ProtocolError::from)?;
        let mut sealer = Sealer::new(session.clone(), Direction::ToPrimary);
        let mut opener = Opener::new(session, Direction::ToSecondary);
        let mut reply = |r: Reply| -> Result<(), ReceiverError> {
            let payload = postcard::to_allocvec(&r).expect("replies always encode");
            writer
                .write_all(&sealer.seal(&payload))
                .map_err(|e| ProtocolError::from(e).into())
        };
        while let Some((seq, payload)) = opener.read(&mut stream)? {
            let change: Change =
                postcard::from_bytes(&payload).map_err(|e| ProtocolError::Decode {
                    seq,
                    reason: e.to_string(),
                })?;
            if let Some(path) = change.escaping_path() {
                let error = ReceiverError::Escape {
                    seq,
                    path: path.to_path_buf(),
                };
                reply(Reply::Refused {
                    seq,
                    reason: error.to_string(),
                })?;
                return Err(error);
            }
            // An explicit fsync is acknowledged once durable, in any mode.
            let ack_first = self.mode == AckMode::Receipt && !matches!(change.op, Op::Fsync { .. });
            if ack_first {
                reply(Reply::Ack { seq })?;
            }
            if let Err(error) = self.apply(seq, &change) {
                tracing::error!("{error}");
                reply(Reply::Refused {
                    seq,
                    reason: error.to_string(),
                })?;
                return Err(error);
            }
            if !ack_first {
                reply(Reply::Ack { seq })?;
            }
        }
        Ok(())
    }

    fn apply(&self, seq: u64, change: &Change) -> Result<(), ReceiverError> {
        let result = self.root.apply(change).and_then(|()| {
            if self.mode == AckMode::Durable {
                for path in change.op.paths() {
                    self.root.fsync(path)?;
                }
            }
            Ok(())
        });
        result.map_err(|errno| {
            let path = change.op.paths()[0].to_path_buf();
            // The path walk refuses symbolic links (ELOOP) and leaving the
            // directory or its mount (EXDEV): the primary never sends such paths.
            if matches!(errno, rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) {
                ReceiverError::Escape { seq, path }
            } else {
                ReceiverError::Apply {
                    seq,
                    op: format!("{} {}", op_name(&change.op), path.display()),
                    source: errno.into(),
                }
            }
        })
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Write { .. } => "write",
        Op::Create { .. } => "create",
        Op::Mknod { .. } => "mknod",
        Op::Mkdir { .. } => "mkdir",
        Op::Unlink { .. } => "unlink",
        Op::Rmdir { .. } => "rmdir",
        Op::Rename { .. } => "rename",
        Op::Link { .. } => "link",
        Op::Symlink { .. } => "symlink",
        Op::SetAttr { .. } => "setattr",
        Op::Fallocate { .. } => "fallocate",
        Op::SetXattr { .. } => "setxattr",
        Op::RemoveXattr { .. } => "removexattr",
        Op::Fsync { .. } => "fsync",
    }
}
