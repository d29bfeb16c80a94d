//! The [`Probe`] trait, one module per kind of probe, and building the
//! probe of a configured checker.

use std::ffi::OsString;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use holdfast_config::checker::{CheckerConfig, CheckerKind};
use holdfast_config::InvalidChecker;

use crate::error::CheckerError;
use crate::verdict::Verdict;

pub(crate) mod custom;
pub(crate) mod interface;
pub(crate) mod module;
pub(crate) mod ping;
pub(crate) mod process;
pub(crate) mod tcp;

use custom::CustomProbe;
use interface::InterfaceProbe;
use module::{ModuleProbe, ModuleStates};
use ping::PingProbe;
use process::{own_netns, ProcessMatcher, ProcessProbe, ProcessScope, OWN_NETNS};
use tcp::TcpProbe;

/// One test of a resource. Each probe bounds itself by its checker's
/// timeout and turns every failure into a Down verdict with its reason.
pub trait Probe: Send {
    fn probe(&mut self) -> impl Future<Output = Verdict> + Send;
}

/// What the daemon provides to build probes.
#[derive(Clone, Default)]
pub struct ProbeContext {
    /// The module's `bin` directory (SafeKit's SAFEUSERBIN): where relative
    /// custom checker paths point.
    pub bin_dir: PathBuf,
    /// Variables added to custom checkers' environment (`SAFEMODULE`...).
    pub script_env: Vec<(OsString, OsString)>,
    /// Module states, for module checkers.
    pub modules: Option<Arc<dyn ModuleStates>>,
    /// Which processes process checkers count.
    pub process_scope: ProcessScope,
}

impl std::fmt::Debug for ProbeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeContext")
            .field("bin_dir", &self.bin_dir)
            .field("script_env", &self.script_env)
            .field("modules", &self.modules.as_ref().map(|_| "..."))
            .field("process_scope", &self.process_scope)
            .finish()
    }
}

/// The probe of any kind of checker.
#[derive(Debug)]
pub enum AnyProbe {
    Process(ProcessProbe),
    Tcp(TcpProbe),
    Ping(PingProbe),
    Interface(InterfaceProbe),
    Custom(CustomProbe),
    Module(ModuleProbe),
}

impl Probe for AnyProbe {
    async fn probe(&mut self) -> Verdict {
        match self {
            AnyProbe::Process(p) => p.probe().await,
            AnyProbe::Tcp(p) => p.probe().await,
            AnyProbe::Ping(p) => p.probe().await,
            AnyProbe::Interface(p) => p.probe().await,
            AnyProbe::Custom(p) => p.probe().await,
            AnyProbe::Module(p) => p.probe().await,
        }
    }
}

impl AnyProbe {
    /// Builds the probe of a validated checker. Must run inside a tokio
    /// runtime (the ping socket registers with it). Sockets and the process
    /// scope belong to the network namespace of the calling thread.
    pub fn build(config: &CheckerConfig, context: &ProbeContext) -> Result<Self, CheckerError> {
        config.validate()?;
        let checker = config.resource();
        Ok(match &config.kind {
            CheckerKind::Process(p) => {
                let matcher = ProcessMatcher::new(p).map_err(|e| InvalidChecker {
                    checker: checker.clone(),
                    field: "command_regex".into(),
                    message: e.to_string(),
                })?;
                let netns = match context.process_scope {
                    ProcessScope::All => None,
                    ProcessScope::CallerNetns => {
                        Some(own_netns().map_err(|source| CheckerError::Namespace {
                            checker,
                            path: OWN_NETNS,
                            source,
                        })?)
                    }
                };
                AnyProbe::Process(ProcessProbe::new(p, matcher, netns, config.timeout))
            }
            CheckerKind::Tcp(t) => AnyProbe::Tcp(TcpProbe::new(t, config.timeout)),
            CheckerKind::Ping(p) => AnyProbe::Ping(
                PingProbe::new(p.address, config.timeout)
                    .map_err(|source| CheckerError::Socket { checker, source })?,
            ),
            CheckerKind::Interface(i) => AnyProbe::Interface(InterfaceProbe::new(i.target.clone())),
            CheckerKind::Custom(c) => {
                let exec = context.bin_dir.join(&c.exec);
                let executable = std::fs::metadata(&exec).and_then(|m| {
                    if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            "not an executable file",
                        ))
                    }
                });
                executable.map_err(|source| CheckerError::Executable {
                    checker,
                    path: exec.clone(),
                    source,
                })?;
                AnyProbe::Custom(CustomProbe::new(
                    &config.name,
                    exec,
                    c.args.clone(),
                    context.script_env.clone(),
                    config.timeout,
                ))
            }
            CheckerKind::Module(m) => {
                let states = context
                    .modules
                    .clone()
                    .ok_or(CheckerError::NoModuleStates { checker })?;
                AnyProbe::Module(ModuleProbe::new(m, states))
            }
        })
    }
}
