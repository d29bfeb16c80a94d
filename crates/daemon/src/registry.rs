//! The modules installed on this node: installed under
//! `<state>/modules/<name>/` (configuration, scripts, persisted state, logs),
//! loaded again at every daemon start.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use holdfast_membership::{Command, CommandError, LogLevel, ModuleView, State};
use holdfast_replication::durable;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Mutex};

use crate::modlog::{LogEntry, ModuleLog};
use crate::node::NodeContext;
use crate::paths::ModulePaths;
use crate::replication::status::DirStatus;
use crate::shell::{self, ModuleHandle, ModuleMsg};
use crate::DaemonError;

/// A module as `holdfast state` and `module list` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleSummary {
    pub module: String,
    pub node: String,
    #[serde(flatten)]
    pub view: ModuleView,
    /// Each replicated directory: what it is doing, resync progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<DirStatus>,
}

/// Body of `POST /v1/modules`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallRequest {
    /// The native TOML configuration.
    pub config: String,
    /// Where it came from, for error messages (file name).
    pub source: String,
    /// Script name (`start_prim`, ...) to content.
    #[serde(default)]
    pub scripts: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no module named {name} on this node (installed: {known})")]
    UnknownModule { name: String, known: String },
    #[error("{0}")]
    Invalid(String),
    #[error("module {name} is {state} here; stop it before replacing or removing it")]
    Running { name: String, state: State },
    #[error("heartbeat port {port} of module {name} is already used by module {other}")]
    PortInUse {
        name: String,
        port: u16,
        other: String,
    },
    #[error("unknown script name {0:?}; a module's scripts are: {1}")]
    UnknownScript(String, String),
    #[error("module {0}: {1}")]
    Refused(String, CommandError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("module {0} is shutting down")]
    Gone(String),
}

#[derive(Debug)]
pub struct Registry {
    ctx: Arc<NodeContext>,
    modules: Mutex<BTreeMap<String, ModuleHandle>>,
}

impl Registry {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self {
            ctx,
            modules: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn node(&self) -> &str {
        &self.ctx.node
    }

    /// Loads every installed module and applies its boot policy. A module
    /// that cannot load is reported in the daemon log and skipped.
    pub async fn load_installed(&self) {
        let dir = self.ctx.paths.modules();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut modules = self.modules.lock().await;
        for entry in entries.flatten() {
            let config_path = entry.path().join("module.toml");
            let loaded = holdfast_config::load_module(&config_path).map_err(|e| e.to_string());
            let spawned = match loaded {
                Ok(config) => spawn(self.ctx.clone(), config, true)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match spawned {
                Ok(handle) => {
                    modules.insert(handle.config.name.clone(), handle);
                }
                Err(e) => tracing::error!("module in {} not loaded: {e}", entry.path().display()),
            }
        }
    }

    pub async fn install(&self, request: InstallRequest) -> Result<ModuleSummary, RegistryError> {
        let config = holdfast_config::parse_module(&request.config, Path::new(&request.source))
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let known: Vec<&str> = shell::script_names().collect();
        if let Some(bad) = request
            .scripts
            .keys()
            .find(|name| !known.contains(&name.as_str()))
        {
            return Err(RegistryError::UnknownScript(bad.clone(), known.join(", ")));
        }
        if config.node(&self.ctx.node).is_none() {
            return Err(DaemonError::not_a_member(&config, &self.ctx.node).into());
        }
        let mut modules = self.modules.lock().await;
        if let Some(other) = modules.values().find(|m| {
            m.config.name != config.name && m.config.heartbeat.port == config.heartbeat.port
        }) {
            return Err(RegistryError::PortInUse {
                name: config.name.clone(),
                port: config.heartbeat.port,
                other: other.config.name.clone(),
            });
        }
        if let Some(existing) = modules.get(&config.name) {
            let state = existing.view.borrow().state;
            if state != State::Stop {
                return Err(RegistryError::Running {
                    name: config.name.clone(),
                    state,
                });
            }
        }
        // Validated: now change things. The old task goes first (it holds the port).
        if let Some(old) = modules.remove(&config.name) {
            old.task.abort();
            let _ = old.task.await;
        }
        let paths = self.ctx.paths.module(&config.name);
        let (files, text, scripts) = (paths.clone(), request.config, request.scripts);
        off_runtime(move || install_files(&files, &text, &scripts, &known)).await?;
        ModuleLog::new(paths.log()).write(
            LogLevel::Info,
            &format!("module {} installed from {}", config.name, request.source),
        );
        let handle = spawn(self.ctx.clone(), config, false).await?;
        let summary = self.summary(&handle);
        modules.insert(summary.module.clone(), handle);
        Ok(summary)
    }

    pub async fn remove(&self, name: &str) -> Result<(), RegistryError> {
        let mut modules = self.modules.lock().await;
        let handle = lookup(&modules, name)?;
        let state = handle.view.borrow().state;
        if state != State::Stop {
            return Err(RegistryError::Running {
                name: name.into(),
                state,
            });
        }
        let handle = modules.remove(name).expect("looked up above");
        handle.task.abort();
        let _ = handle.task.await;
        let dir = self.ctx.paths.module(name).dir;
        off_runtime(move || {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| DaemonError::Io(dir.display().to_string(), e).into())
        })
        .await
    }

    pub async fn command(
        &self,
        name: &str,
        command: Command,
        discard_data: bool,
    ) -> Result<ModuleSummary, RegistryError> {
        let (reply, answer) = oneshot::channel();
        let mut view = {
            let modules = self.modules.lock().await;
            let handle = lookup(&modules, name)?;
            if discard_data && command != Command::Second {
                return Err(RegistryError::Invalid(format!(
                    "--discard-data goes with second, not {}",
                    command.as_str()
                )));
            }
            if discard_data && handle.replication.is_none() {
                return Err(RegistryError::Invalid(format!(
                    "module {name} has no replicated directory: there is no data to discard"
                )));
            }
            // Subscribed before sending, so the publication that follows the
            // command is the one awaited below.
            let mut view = handle.view.clone();
            view.mark_unchanged();
            handle
                .tx
                .send(ModuleMsg::Command {
                    command,
                    discard_data,
                    reply,
                })
                .await
                .map_err(|_| RegistryError::Gone(name.into()))?;
            view
        };
        answer
            .await
            .map_err(|_| RegistryError::Gone(name.into()))?
            .map_err(|e| RegistryError::Refused(name.into(), e))?;
        // The answer is sent before the view is published: wait for it.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), view.changed()).await;
        let modules = self.modules.lock().await;
        let handle = lookup(&modules, name)?;
        let mut summary = self.summary(handle);
        summary.view = view.borrow().clone();
        Ok(summary)
    }

    pub async fn print(
        &self,
        name: &str,
        level: LogLevel,
        message: String,
    ) -> Result<(), RegistryError> {
        let modules = self.modules.lock().await;
        let handle = lookup(&modules, name)?;
        handle
            .tx
            .send(ModuleMsg::Print(level, message))
            .await
            .map_err(|_| RegistryError::Gone(name.into()))
    }

    pub async fn list(&self) -> Vec<ModuleSummary> {
        self.modules
            .lock()
            .await
            .values()
            .map(|h| self.summary(h))
            .collect()
    }

    pub async fn get(&self, name: &str) -> Result<ModuleSummary, RegistryError> {
        let modules = self.modules.lock().await;
        Ok(self.summary(lookup(&modules, name)?))
    }

    pub async fn log(&self, name: &str, count: usize) -> Result<Vec<LogEntry>, RegistryError> {
        let modules = self.modules.lock().await;
        lookup(&modules, name)?;
        let path = self.ctx.paths.module(name).log();
        off_runtime(move || {
            ModuleLog::new(path.clone())
                .tail(count)
                .map_err(|e| DaemonError::Io(path.display().to_string(), e).into())
        })
        .await
    }

    /// Stops every module (bounded by their scripts' timeouts) and ends their tasks.
    pub async fn shutdown(&self) {
        let mut modules = self.modules.lock().await;
        for handle in modules.values() {
            let _ = handle.tx.send(ModuleMsg::Shutdown).await;
        }
        for (_, handle) in std::mem::take(&mut *modules) {
            let _ = handle.task.await;
        }
    }

    fn summary(&self, handle: &ModuleHandle) -> ModuleSummary {
        ModuleSummary {
            module: handle.config.name.clone(),
            node: self.ctx.node.clone(),
            view: handle.view.borrow().clone(),
            replication: handle
                .replication
                .as_ref()
                .map(|r| r.snapshot())
                .unwrap_or_default(),
        }
    }
}

fn lookup<'a>(
    modules: &'a BTreeMap<String, ModuleHandle>,
    name: &str,
) -> Result<&'a ModuleHandle, RegistryError> {
    modules
        .get(name)
        .ok_or_else(|| RegistryError::UnknownModule {
            name: name.into(),
            known: if modules.is_empty() {
                "none".into()
            } else {
                modules.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
}

/// Starts the task of a module of either kind; `at_boot` applies the
/// module's `boot` policy.
async fn spawn(
    ctx: Arc<NodeContext>,
    config: holdfast_config::ModuleConfig,
    at_boot: bool,
) -> Result<ModuleHandle, DaemonError> {
    match config.mode {
        holdfast_config::Mode::Farm => crate::farm::spawn(ctx, config, at_boot).await,
        holdfast_config::Mode::Mirror => crate::mirror::spawn(ctx, config, at_boot).await,
    }
}

/// Writes an installed module's configuration and scripts (synced), and
/// removes the scripts it no longer has.
fn install_files(
    paths: &ModulePaths,
    config: &str,
    scripts: &BTreeMap<String, String>,
    known: &[&str],
) -> Result<(), RegistryError> {
    let io = |path: &Path, e| RegistryError::Daemon(DaemonError::Io(path.display().to_string(), e));
    std::fs::create_dir_all(paths.bin()).map_err(|e| io(&paths.bin(), e))?;
    durable::replace(&paths.config(), config.as_bytes()).map_err(|e| io(&paths.config(), e))?;
    for name in known {
        let path = paths.script(name);
        match scripts.get(*name) {
            Some(content) => {
                durable::replace(&path, content.as_bytes()).map_err(|e| io(&path, e))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| io(&path, e))?;
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

/// Runs file system work (syncs, whole files read) off the runtime.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => {
                Err(DaemonError::Io("file system work".into(), std::io::Error::other(e)).into())
            }
        },
    }
}
