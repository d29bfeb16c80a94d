//! The modules installed on this node: installed under
//! `<state>/modules/<name>/` (configuration, scripts, persisted state, logs),
//! loaded again at every daemon start.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use holdfast_config::ModuleConfig;
use holdfast_package::Package;

use holdfast_membership::{Command, CommandError, LogLevel, ModuleView, State};
use holdfast_replication::durable;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Mutex};

use crate::modlog::{LogEntry, ModuleLog};
use crate::node::NodeContext;
use crate::paths::ModulePaths;
use crate::replication::status::DirStatus;
use crate::settings::{SettingsChange, UserSettings};
use crate::shell::{ModuleHandle, ModuleMsg};
use crate::DaemonError;

/// A module as `holdfast state` and `module list` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleSummary {
    pub module: String,
    pub node: String,
    /// SafeKit's module id, when the module has one (its ports derive from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
    #[serde(flatten)]
    pub view: ModuleView,
    /// The administrator's settings (`boot`, `failover`, `errd`, `checker`).
    #[serde(default)]
    pub settings: UserSettings,
    /// Each replicated directory: what it is doing, resync progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<DirStatus>,
}

/// The answer to `DELETE /v1/modules/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Uninstalled {
    /// The package the module was, kept in the backups directory.
    pub backup: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no module named {name} on this node (installed: {known})")]
    UnknownModule { name: String, known: String },
    #[error("{0}")]
    Invalid(String),
    #[error("module {name} is {state} here; stop it before replacing or removing it")]
    Running { name: String, state: State },
    #[error("port {port} ({what}) of module {name} is already used by module {other} ({used_for}); give the module another id or port")]
    PortInUse {
        name: String,
        port: u16,
        what: String,
        other: String,
        used_for: String,
    },
    #[error("module id {id} of module {name} is already module {other}'s; give it another id")]
    IdInUse {
        name: String,
        id: u16,
        other: String,
    },
    #[error("bad package: {0}")]
    Package(#[from] holdfast_package::PackageError),
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

    /// Checks a package as [`install`](Self::install) would, changing nothing.
    pub async fn check(&self, package: Package, source: &str) -> Result<(), RegistryError> {
        let config = self.parse(&package, source)?;
        let modules = self.modules.lock().await;
        admit(&modules, &config)
    }

    /// Installs (or replaces, keeping a backup of the old one) a module
    /// from its package.
    pub async fn install(
        &self,
        package: Package,
        source: &str,
    ) -> Result<ModuleSummary, RegistryError> {
        let config = self.parse(&package, source)?;
        let mut modules = self.modules.lock().await;
        admit(&modules, &config)?;
        // Validated: now change things. The old task goes first (it holds the port).
        if let Some(old) = modules.remove(&config.name) {
            old.task.abort();
            let _ = old.task.await;
        }
        let paths = self.ctx.paths.module(&config.name);
        let backups = self.ctx.paths.backups();
        let (files, name) = (paths.clone(), config.name.clone());
        let backup = off_runtime(move || {
            let backup = if files.config().exists() {
                Some(back_up(&files, &backups, &name)?)
            } else {
                None
            };
            install_files(&files, &package)?;
            Ok(backup)
        })
        .await?;
        let log = ModuleLog::new(paths.log());
        log.write(
            LogLevel::Info,
            &format!("module {} installed from {source}", config.name),
        );
        if let Some(backup) = backup {
            log.write(
                LogLevel::Info,
                &format!("the previous version is kept in {}", backup.display()),
            );
        }
        let handle = spawn(self.ctx.clone(), config, false).await?;
        let summary = self.summary(&handle);
        modules.insert(summary.module.clone(), handle);
        Ok(summary)
    }

    /// The installed module as a package: its configuration and `bin/`.
    pub async fn export(&self, name: &str) -> Result<Vec<u8>, RegistryError> {
        let modules = self.modules.lock().await;
        lookup(&modules, name)?;
        let paths = self.ctx.paths.module(name);
        off_runtime(move || Ok(installed_package(&paths)?.to_zip()?)).await
    }

    fn parse(&self, package: &Package, source: &str) -> Result<ModuleConfig, RegistryError> {
        let config = holdfast_config::parse_module(&package.config, Path::new(source))
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        if config.node(&self.ctx.node).is_none() {
            return Err(DaemonError::not_a_member(&config, &self.ctx.node).into());
        }
        Ok(config)
    }

    /// Removes a stopped module from this node, keeping its package in the
    /// backups directory.
    pub async fn uninstall(&self, name: &str) -> Result<Uninstalled, RegistryError> {
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
        let paths = self.ctx.paths.module(name);
        let backups = self.ctx.paths.backups();
        let name = name.to_string();
        off_runtime(move || {
            let backup = back_up(&paths, &backups, &name)?;
            std::fs::remove_dir_all(&paths.dir)
                .map_err(|e| DaemonError::Io(paths.dir.display().to_string(), e))?;
            Ok(Uninstalled {
                backup: backup.display().to_string(),
            })
        })
        .await
    }

    pub async fn command(
        &self,
        name: &str,
        command: Command,
        discard_data: bool,
        force: bool,
    ) -> Result<ModuleSummary, RegistryError> {
        let (reply, answer) = oneshot::channel();
        let mut view = {
            let modules = self.modules.lock().await;
            let handle = lookup(&modules, name)?;
            if force && command != Command::Stop {
                return Err(RegistryError::Invalid(format!(
                    "force goes with stop (forcestop), not {}",
                    command.as_str()
                )));
            }
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
                    force,
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

    /// Changes the administrator's settings of a module (saved, then
    /// followed by the running module).
    pub async fn settings(
        &self,
        name: &str,
        change: SettingsChange,
    ) -> Result<ModuleSummary, RegistryError> {
        let mut modules = self.modules.lock().await;
        if !modules.contains_key(name) {
            return Err(unknown_among(&modules, name));
        }
        let handle = modules.get_mut(name).expect("checked above");
        if change.failover.is_some() && handle.config.mode == holdfast_config::Mode::Farm {
            return Err(RegistryError::Invalid(format!(
                "module {name} is a farm module: every node runs the application, there is no failover to turn on or off"
            )));
        }
        let settings = handle.settings.changed(&change);
        let path = self.ctx.paths.module(name).settings();
        off_runtime(move || Ok(settings.save(&path)?)).await?;
        handle.settings = settings;
        let message = format!(
            "settings changed by the administrator: {}",
            serde_json::to_string(&change).unwrap_or_default()
        );
        ModuleLog::new(self.ctx.paths.module(name).log()).write(LogLevel::Info, &message);
        handle
            .tx
            .send(ModuleMsg::Settings(settings))
            .await
            .map_err(|_| RegistryError::Gone(name.into()))?;
        Ok(self.summary(handle))
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
            id: handle.config.id,
            settings: handle.settings,
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
        .ok_or_else(|| unknown_among(modules, name))
}

fn unknown_among(modules: &BTreeMap<String, ModuleHandle>, name: &str) -> RegistryError {
    RegistryError::UnknownModule {
        name: name.into(),
        known: if modules.is_empty() {
            "none".into()
        } else {
            modules.keys().cloned().collect::<Vec<_>>().join(", ")
        },
    }
}

/// Starts the task of a module of either kind; `at_boot` applies the
/// module's `boot` policy.
/// The module runs with its administrator's settings over its configuration.
async fn spawn(
    ctx: Arc<NodeContext>,
    config: holdfast_config::ModuleConfig,
    at_boot: bool,
) -> Result<ModuleHandle, DaemonError> {
    let path = ctx.paths.module(&config.name).settings();
    let settings = tokio::task::spawn_blocking(move || UserSettings::load(&path))
        .await
        .map_err(|e| DaemonError::Io("module settings".into(), std::io::Error::other(e)))??;
    let config = settings.apply(config);
    match config.mode {
        holdfast_config::Mode::Farm => crate::farm::spawn(ctx, config, at_boot, settings).await,
        holdfast_config::Mode::Mirror => crate::mirror::spawn(ctx, config, at_boot, settings).await,
    }
}

/// Refuses a module that would share an id or a port with another module
/// of this node, or replace one that runs.
fn admit(
    modules: &BTreeMap<String, ModuleHandle>,
    config: &ModuleConfig,
) -> Result<(), RegistryError> {
    let ports = config.ports();
    for other in modules.values().filter(|m| m.config.name != config.name) {
        if let (Some(id), Some(theirs)) = (config.id, other.config.id) {
            if id == theirs {
                return Err(RegistryError::IdInUse {
                    name: config.name.clone(),
                    id,
                    other: other.config.name.clone(),
                });
            }
        }
        for (theirs, used_for) in other.config.ports() {
            if let Some((port, what)) = ports.iter().find(|(p, _)| *p == theirs) {
                return Err(RegistryError::PortInUse {
                    name: config.name.clone(),
                    port: *port,
                    what: what.clone(),
                    other: other.config.name.clone(),
                    used_for,
                });
            }
        }
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
    Ok(())
}

/// An installed module's configuration and `bin/` as a package.
fn installed_package(paths: &ModulePaths) -> Result<Package, RegistryError> {
    let contents = holdfast_package::read_dir(&paths.dir)?;
    match contents.config {
        holdfast_package::Config::Native(config) => Ok(Package {
            config,
            bin: contents.bin,
        }),
        holdfast_package::Config::SafeKit(_) => {
            Err(holdfast_package::PackageError::NotNative.into())
        }
    }
}

/// Writes the installed module's package to `<backups>/<name>-<time>.zip`.
fn back_up(paths: &ModulePaths, backups: &Path, name: &str) -> Result<PathBuf, RegistryError> {
    let io = |path: &Path, e| RegistryError::Daemon(DaemonError::Io(path.display().to_string(), e));
    let zip = installed_package(paths)?.to_zip()?;
    std::fs::create_dir_all(backups).map_err(|e| io(backups, e))?;
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let path = backups.join(format!("{name}-{time}.zip"));
    durable::replace(&path, &zip).map_err(|e| io(&path, e))?;
    Ok(path)
}

/// Writes an installed module's configuration and `bin/` (synced): the new
/// `bin/` is written beside the old one, then takes its place, so files the
/// new version no longer has are gone.
fn install_files(paths: &ModulePaths, package: &Package) -> Result<(), RegistryError> {
    let io = |path: &Path, e| RegistryError::Daemon(DaemonError::Io(path.display().to_string(), e));
    let bin = paths.bin();
    let staged = paths.dir.join("bin.new");
    match std::fs::remove_dir_all(&staged) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&staged, e)),
        _ => {}
    }
    std::fs::create_dir_all(&staged).map_err(|e| io(&staged, e))?;
    for (name, file) in &package.bin {
        // The package crate refused any name leaving bin/.
        let path = staged.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        durable::replace(&path, &file.bytes).map_err(|e| io(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))
            .map_err(|e| io(&path, e))?;
    }
    durable::replace(&paths.config(), package.config.as_bytes())
        .map_err(|e| io(&paths.config(), e))?;
    match std::fs::remove_dir_all(&bin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&bin, e)),
        _ => {}
    }
    std::fs::rename(&staged, &bin).map_err(|e| io(&bin, e))
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

/// The API document's view of a module: its names and state; the rest
/// (the state machine's view, replication) is described in
/// docs/operations.md and may grow.
impl utoipa::PartialSchema for ModuleSummary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let text = || ObjectBuilder::new().schema_type(Type::String);
        ObjectBuilder::new()
            .property("module", text())
            .property("node", text())
            .property(
                "state",
                text().description(Some("STOP, WAIT, ALONE, PRIM, SECOND or UP")),
            )
            .property("reason", text())
            .required("module")
            .required("node")
            .required("state")
            .additional_properties(Some(
                utoipa::openapi::schema::AdditionalProperties::FreeForm(true),
            ))
            .into()
    }
}

impl utoipa::ToSchema for ModuleSummary {}
