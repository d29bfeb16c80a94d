//! The lab's error type: every variant names what was being done, and a failed
//! command carries its full command line and stderr so a test log is enough to
//! diagnose it.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, driving or removing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// An external command (`ip`, `nft`, `unshare`, ...) exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// An external command did not finish in time and was killed.
    #[error("`{command}` did not finish within {after:?}")]
    Timeout { command: String, after: Duration },
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A system call (mount, setns, kill) failed.
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    /// The requested lab shape is not supported.
    #[error("invalid lab spec: {0}")]
    InvalidSpec(String),
    /// Every random run id drawn was already in use.
    #[error("no free lab id after {attempts} attempts (stale labs? see clean_stale)")]
    NoFreeId { attempts: usize },
    /// No host of that name in this lab.
    #[error("lab {lab}: no host named {host:?}")]
    UnknownHost { lab: String, host: String },
    /// Network index out of range.
    #[error("lab {lab}: no network {network} (the lab has {networks})")]
    UnknownNetwork {
        lab: String,
        network: usize,
        networks: usize,
    },
    /// A fault was asked with arguments that make no sense (e.g. partitioning
    /// a host from itself, loss above 100%).
    #[error("invalid fault: {0}")]
    InvalidFault(String),
    /// The Holdfast cluster on the lab did not do what was asked in time
    /// (a daemon not answering, a CLI command failing, states not settling).
    #[error("{0}")]
    Cluster(String),
    /// `holdfast` or `holdfast-lab` is not where it was looked for.
    #[error("{} not found: build both executables (`cargo build --workspace`) or name holdfast's path (`holdfast-lab --holdfast PATH`)", .0.display())]
    MissingExecutable(PathBuf),
    /// No lab with that id is registered.
    #[error("no lab with id {0:?} (see list_labs)")]
    NotFound(String),
    /// A registry file could not be read or written.
    #[error("lab registry {path}: {source}")]
    Registry {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Processes survived SIGKILL past the deadline.
    #[error("lab {lab}: processes {pids:?} still in netns {netns} after {after:?}")]
    StillRunning {
        lab: String,
        netns: String,
        pids: Vec<i32>,
        after: Duration,
    },
    /// A mount meant to stay inside a host's namespace is visible to the machine.
    #[error("lab {lab}: mount leaked into the machine's namespace: {mount}")]
    LeakedMount { lab: String, mount: String },
    /// Clean-up went through every step but some of them failed.
    #[error("clean-up incomplete: {}", .0.join("; "))]
    Cleanup(Vec<String>),
}

/// Result alias used throughout the crate.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Self::Sys {
            context: context.into(),
            source,
        }
    }
}
