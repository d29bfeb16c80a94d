//! Errors of this crate: a checker that cannot be built. Failures seen while
//! probing are not errors but Down verdicts with their reason.

use std::path::PathBuf;

use holdfast_config::InvalidChecker;

/// Why a checker could not be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    /// A configuration value that makes no sense.
    #[error(transparent)]
    Invalid(#[from] InvalidChecker),
    /// A module checker was configured but the daemon gave no way to read
    /// module states.
    #[error("checker {checker}: no source of module states was given to the runner")]
    NoModuleStates { checker: String },
    /// The custom checker's executable is not there or not executable.
    #[error("checker {checker}: executable {}: {source}", path.display())]
    Executable {
        checker: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The ping checker's raw ICMP socket could not be opened (it needs
    /// CAP_NET_RAW).
    #[error("checker {checker}: opening a raw ICMP socket: {source}")]
    Socket {
        checker: String,
        source: std::io::Error,
    },
    /// Reading the calling thread's network namespace (to scope process
    /// checkers) failed.
    #[error("checker {checker}: reading {path}: {source}")]
    Namespace {
        checker: String,
        path: &'static str,
        source: std::io::Error,
    },
}
