//! `<conf>/api.toml`: where the HTTPS API listens, the address other nodes
//! reach it at, the base path behind a reverse proxy, how long an idle
//! session lasts. Every field is optional (docs/configuration.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use holdfast_daemon::Paths;
use serde::Deserialize;

use crate::ServeError;

pub const DEFAULT_PORT: u16 = 9453;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTPS API's address and port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The address other nodes (and joining nodes) reach this node's API
    /// at; by default `listen`, unless that is a wildcard.
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// The path prefix a reverse proxy serves the API under, e.g.
    /// `/holdfast` (the proxy passes it on unchanged).
    #[serde(default)]
    pub base_path: String,
    /// A session not used for this long ends.
    #[serde(default = "default_idle", with = "humantime_serde_compat")]
    pub session_idle: Duration,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
}

fn default_idle() -> Duration {
    Duration::from_secs(15 * 60)
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            address: None,
            base_path: String::new(),
            session_idle: default_idle(),
        }
    }
}

pub fn path(paths: &Paths) -> PathBuf {
    paths.conf_dir.join("api.toml")
}

impl Settings {
    /// The file's settings, or the defaults when there is none.
    pub fn load(path: &Path) -> Result<Self, ServeError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(ServeError::Settings(format!("{}: {e}", path.display()))),
        };
        Self::parse(&text).map_err(|e| ServeError::Settings(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let settings: Settings = toml_edit::de::from_str(text).map_err(|e| e.to_string())?;
        let base = &settings.base_path;
        if !base.is_empty() && (!base.starts_with('/') || base.ends_with('/')) {
            return Err(format!(
                "base_path {base:?}: starts with / and does not end with one, e.g. \"/holdfast\""
            ));
        }
        Ok(settings)
    }

    /// The address this node is reached at, if known.
    pub fn reached_at(&self) -> Option<SocketAddr> {
        self.address
            .or((!self.listen.ip().is_unspecified()).then_some(self.listen))
    }
}

/// Durations written as humans do ("15m", "1h").
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_and_name_the_field_at_fault() {
        let s = Settings::parse("").unwrap();
        assert_eq!(s.listen.port(), DEFAULT_PORT);
        assert_eq!(s.reached_at(), None);
        let s = Settings::parse(
            "listen = \"198.18.0.1:9000\"\nbase_path = \"/hf\"\nsession_idle = \"5m\"",
        )
        .unwrap();
        assert_eq!(s.reached_at(), Some("198.18.0.1:9000".parse().unwrap()));
        assert_eq!(s.session_idle, Duration::from_secs(300));
        let err = Settings::parse("listen = \"nowhere\"").unwrap_err();
        assert!(err.contains("listen"), "{err}");
        let err = Settings::parse("base_path = \"hf/\"").unwrap_err();
        assert!(err.contains("base_path"), "{err}");
        let err = Settings::parse("lsten = \"1.2.3.4:5\"").unwrap_err();
        assert!(err.contains("lsten"), "{err}");
    }
}
