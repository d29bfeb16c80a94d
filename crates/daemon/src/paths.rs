//! Where the daemon keeps things on a node.

use std::path::PathBuf;

/// Default state directory: modules, their scripts, logs and persisted state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/holdfast";
/// Default configuration directory: the cluster key.
pub const DEFAULT_CONF_DIR: &str = "/etc/holdfast";

#[derive(Debug, Clone)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub conf_dir: PathBuf,
}

impl Paths {
    pub fn new(state_dir: impl Into<PathBuf>, conf_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            conf_dir: conf_dir.into(),
        }
    }

    /// The HTTP API's Unix socket (the CLI's way in).
    pub fn api_socket(&self) -> PathBuf {
        self.state_dir.join("api.sock")
    }

    pub fn cluster_key(&self) -> PathBuf {
        self.conf_dir.join("cluster.key")
    }

    /// Grows at every daemon start (heartbeat replay protection).
    pub fn incarnation(&self) -> PathBuf {
        self.state_dir.join("incarnation")
    }

    pub fn modules(&self) -> PathBuf {
        self.state_dir.join("modules")
    }

    pub fn module(&self, name: &str) -> ModulePaths {
        ModulePaths {
            dir: self.modules().join(name),
        }
    }

    /// Packages of uninstalled and replaced modules.
    pub fn backups(&self) -> PathBuf {
        self.state_dir.join("backups")
    }

    /// SafeKit's `$SAFE`: holds a `safekit` command for scripts.
    pub fn safe_dir(&self) -> PathBuf {
        self.state_dir.join("safe")
    }
}

/// One module's directory: `<state>/modules/<name>/`.
#[derive(Debug, Clone)]
pub struct ModulePaths {
    pub dir: PathBuf,
}

impl ModulePaths {
    pub fn config(&self) -> PathBuf {
        self.dir.join("module.toml")
    }
    /// Installed copies of the scripts (SafeKit's `SAFEUSERBIN`).
    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }
    /// The module's own work directory (SafeKit's `SAFEUSERVAR`).
    pub fn var(&self) -> PathBuf {
        self.dir.join("var")
    }
    /// The administrator's settings ([`UserSettings`](crate::settings::UserSettings)).
    pub fn settings(&self) -> PathBuf {
        self.dir.join("settings.json")
    }
    pub fn persistent(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// Transitions, reasons, script results, printi/printe.
    pub fn log(&self) -> PathBuf {
        self.dir.join("module.log")
    }
    /// Scripts' and application's stdout/stderr.
    pub fn application_log(&self) -> PathBuf {
        self.dir.join("application.log")
    }
    pub fn script(&self, name: &str) -> PathBuf {
        self.bin().join(name)
    }
}
