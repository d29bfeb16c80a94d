//! The module log: one line per event that matters to an administrator
//! (transitions with their reason, script failures, refused heartbeats,
//! messages from scripts), like SafeKit's module log. Refusals of nodes
//! are written through [`Refusals`], summarised when they repeat.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use holdfast_membership::LogLevel;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::refusals::{Refusal, Refusals};

/// A log line as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    pub time: String,
    /// `I` (information) or `E` (error), as in SafeKit.
    pub level: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ModuleLog {
    path: PathBuf,
    /// Shared by every clone: the module's heartbeats, witness link and
    /// replication receivers count their refusals together.
    refusals: Arc<Mutex<Refusals>>,
}

impl ModuleLog {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            refusals: Arc::default(),
        }
    }

    /// Logs a refusal of a node: at once if it is the first of its kind
    /// from its source, else counted for a summary line (see
    /// [`crate::refusals`]).
    pub fn refused(&self, refusal: Refusal) {
        let lines = self.refusals.lock().refuse(Instant::now(), refusal);
        for line in lines {
            self.write(LogLevel::Error, &line.to_string());
        }
    }

    /// Writes the summaries of refusals whose window ended; called by the
    /// module's loops as they wake.
    pub fn flush_refusals(&self) {
        let lines = self.refusals.lock().due(Instant::now());
        for line in lines {
            self.write(LogLevel::Error, &line.to_string());
        }
    }

    pub fn write(&self, level: LogLevel, message: &str) {
        let letter = match level {
            LogLevel::Info => "I",
            LogLevel::Error => "E",
        };
        let time = humantime::format_rfc3339_millis(SystemTime::now());
        // One line per entry: newlines inside a message would forge entries.
        let message = message.replace('\n', " ");
        let line = format!("{time} | {letter} | {message}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            tracing::error!("cannot write module log {}: {e}", self.path.display());
        }
        match level {
            LogLevel::Info => tracing::info!("{}: {message}", self.path.display()),
            LogLevel::Error => tracing::error!("{}: {message}", self.path.display()),
        }
    }

    /// The last `count` entries.
    pub fn tail(&self, count: usize) -> std::io::Result<Vec<LogEntry>> {
        read_tail(&self.path, count)
    }
}

fn read_tail(path: &Path, count: usize) -> std::io::Result<Vec<LogEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(count);
    Ok(lines[start..]
        .iter()
        .map(|line| {
            let mut parts = line.splitn(3, " | ");
            LogEntry {
                time: parts.next().unwrap_or_default().to_string(),
                level: parts.next().unwrap_or_default().to_string(),
                message: parts.next().unwrap_or_default().to_string(),
            }
        })
        .collect())
}
