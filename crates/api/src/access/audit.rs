//! The audit log, `<state>/cluster/audit.log`: one JSON line per command
//! (every call that is not a read), who made it, from where, what, and the
//! answer's status. Each node records the calls it served; a relayed call
//! is recorded by the relaying node and by the node that ran it.

use std::io::Write;
use std::path::PathBuf;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub time_ms: u64,
    pub who: String,
    /// The client's address, or `local` for the Unix socket.
    pub source: String,
    /// Method and path.
    pub action: String,
    /// The HTTP status answered.
    pub status: u16,
}

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    /// Appends in order, one at a time.
    lock: Mutex<()>,
}

impl AuditLog {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    /// Appends `entry` (blocking: called off the runtime). A failure is
    /// logged: the command itself has already run.
    pub fn record(&self, entry: &AuditEntry) {
        let _order = self.lock.lock();
        let line = match serde_json::to_string(entry) {
            Ok(line) => line,
            Err(e) => return tracing::error!("audit entry: {e}"),
        };
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            tracing::error!("audit log {}: {e}; entry: {line}", self.path.display());
        }
    }

    /// The last `count` entries, oldest first (blocking).
    pub fn last(&self, count: usize) -> Result<Vec<AuditEntry>, std::io::Error> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let entries: Vec<AuditEntry> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let skip = entries.len().saturating_sub(count);
        Ok(entries.into_iter().skip(skip).collect())
    }
}
