//! An administrator's settings of an installed module, which override its
//! configuration until set back and outlive stops, restarts and daemon
//! restarts (SafeKit's `boot|failover|errd|checker on|off` and their
//! `usersetting.*` resources). Kept in `<module>/settings.json`; a module
//! installed again keeps them.

use std::path::Path;

use holdfast_config::checker::CheckerKind;
use holdfast_config::{Boot, ModuleConfig};
use holdfast_replication::durable;
use serde::{Deserialize, Serialize};

use crate::DaemonError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSettings {
    /// `boot on|off`: start at daemon start, or not, whatever
    /// `module.boot` says (`None`: as configured).
    #[serde(default)]
    pub boot: Option<bool>,
    /// `failover on|off`, over `module.failover` (`None`: as configured).
    #[serde(default)]
    pub failover: Option<bool>,
    /// `errd off`: the process checkers do not run.
    #[serde(default = "on")]
    pub errd: bool,
    /// `checker off`: the other checkers (TCP, ping, interface, custom,
    /// module) do not run. The split-brain checker always runs.
    #[serde(default = "on")]
    pub checker: bool,
}

fn on() -> bool {
    true
}

impl Default for UserSettings {
    fn default() -> Self {
        Self {
            boot: None,
            failover: None,
            errd: true,
            checker: true,
        }
    }
}

/// Body of `POST /v1/modules/{name}/settings`: what to change.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SettingsChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errd: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checker: Option<bool>,
}

impl UserSettings {
    pub fn changed(mut self, change: &SettingsChange) -> Self {
        if let Some(boot) = change.boot {
            self.boot = Some(boot);
        }
        if let Some(failover) = change.failover {
            self.failover = Some(failover);
        }
        if let Some(errd) = change.errd {
            self.errd = errd;
        }
        if let Some(checker) = change.checker {
            self.checker = checker;
        }
        self
    }

    /// The configuration the module runs with: `config` with the boot
    /// and failover settings over it (the checkers are all kept: the
    /// supervisor runs those [`runs`](Self::runs) allows, and follows a
    /// change).
    pub fn apply(&self, mut config: ModuleConfig) -> ModuleConfig {
        if let Some(boot) = self.boot {
            config.boot = if boot { Boot::On } else { Boot::Off };
        }
        if let Some(failover) = self.failover {
            config.failover = failover;
        }
        config
    }

    /// Whether a checker of this kind runs with these settings.
    pub fn runs(&self, kind: &CheckerKind) -> bool {
        match kind {
            CheckerKind::Process(_) => self.errd,
            _ => self.checker,
        }
    }

    /// Reads them (defaults when there is no file).
    pub fn load(path: &Path) -> Result<Self, DaemonError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| DaemonError::Corrupt(path.display().to_string(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(DaemonError::Io(path.display().to_string(), e)),
        }
    }

    /// Writes them durably.
    pub fn save(&self, path: &Path) -> Result<(), DaemonError> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| DaemonError::Io(path.display().to_string(), std::io::Error::other(e)))?;
        durable::replace(path, &bytes).map_err(|e| DaemonError::Io(path.display().to_string(), e))
    }
}
