//! What `module install`, `check` and `import` are given — a package (a
//! `.safe` or `.zip`, or a directory laid out as one) or a TOML file with
//! its scripts directory — made into the native package the daemon
//! installs, with everything that is not carried over as warnings.
//!
//! A SafeKit configuration is converted here: the node that installs it
//! knows what the package does not carry — the nodes (SafeKit's
//! `cluster.xml`, kept in the configuration directory, or given) and a
//! free module id.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use holdfast_config::{ImportOptions, ModuleId, NodeSource};
use holdfast_package::{Config, Contents, File, Package};

/// Where an imported module's nodes and id come from.
#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// The module's name (SafeKit packages; default: the file or directory
    /// name without its extension).
    #[arg(long)]
    pub name: Option<String>,
    /// SafeKit's module id, from which the ports derive (default: the
    /// lowest id no module of this node has).
    #[arg(long)]
    pub id: Option<u16>,
    /// SafeKit's cluster.xml (default: cluster.xml in the configuration
    /// directory, when there is one).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// A node, instead of a cluster.xml: NAME=ADDRESS, one address per
    /// heartbeat network separated by commas (repeat for each node).
    #[arg(long = "node", value_name = "NAME=ADDRESS[,ADDRESS]")]
    pub nodes: Vec<String>,
    /// This node's configuration directory (the cluster key, cluster.xml).
    #[arg(long, env = "HOLDFAST_CONF_DIR", default_value = holdfast_daemon::paths::DEFAULT_CONF_DIR)]
    pub conf_dir: PathBuf,
}

/// A native package and what the conversion reported.
#[derive(Debug)]
pub struct Loaded {
    pub package: Package,
    /// Shown as `warning: <source>: <text>`.
    pub warnings: Vec<String>,
}

/// Reads `path` as a package (or a TOML file) and converts it. `ids` are
/// the module ids of this node's modules by name (when known).
pub fn load(path: &Path, args: &ImportArgs, ids: &BTreeMap<String, u16>) -> Result<Loaded> {
    let is_toml = path.extension().is_some_and(|e| e == "toml") && path.is_file();
    let contents = if is_toml {
        toml_contents(path)?
    } else if path.is_dir() {
        holdfast_package::read_dir(path)?
    } else {
        holdfast_package::read_file(path)?
    };
    let mut warnings: Vec<String> = contents
        .unused
        .iter()
        .map(|name| {
            format!(
                "{name}: not used (a package holds {} or {}, and {}/)",
                holdfast_package::CONFIG,
                holdfast_package::SAFEKIT_CONFIG,
                holdfast_package::BIN
            )
        })
        .collect();
    let config = match contents.config {
        Config::Native(text) => {
            let parsed = holdfast_config::parse_module(&text, path)?;
            if let Some(name) = args.name.as_ref().filter(|n| **n != parsed.name) {
                bail!(
                    "{}: the package's configuration names module {:?}, not {name:?}",
                    path.display(),
                    parsed.name
                );
            }
            text
        }
        Config::SafeKit(text) => {
            let name = match &args.name {
                Some(name) => name.clone(),
                None => default_name(path)?,
            };
            let id = args.id.unwrap_or_else(|| free_id(ids, &name));
            let config_path = path.join(holdfast_package::SAFEKIT_CONFIG);
            let (config, import_warnings) = import(&text, &config_path, &name, id, args)?;
            warnings.extend(import_warnings);
            holdfast_config::to_toml(&config)
        }
    };
    let known: Vec<&str> = holdfast_daemon::shell::script_names().collect();
    if !contents
        .bin
        .keys()
        .any(|name| known.contains(&name.as_str()))
    {
        warnings.push(format!(
            "the module has no scripts ({}/ holds none of {}): Holdfast will start and stop no application",
            holdfast_package::BIN,
            known.join(", ")
        ));
    }
    Ok(Loaded {
        package: Package {
            config,
            bin: contents.bin,
        },
        warnings,
    })
}

/// Converts a SafeKit configuration; the warnings are `userconfig.xml
/// line N: ...`.
pub fn import(
    text: &str,
    path: &Path,
    name: &str,
    id: u16,
    args: &ImportArgs,
) -> Result<(holdfast_config::ModuleConfig, Vec<String>)> {
    let nodes = parse_nodes(&args.nodes)?;
    let default_cluster = args.conf_dir.join("cluster.xml");
    let cluster_path = match (&args.cluster, nodes.is_empty()) {
        (Some(_), false) => bail!("give the nodes with --cluster or with --node, not both"),
        (Some(path), true) => Some(path.clone()),
        (None, true) if default_cluster.is_file() => Some(default_cluster),
        (None, true) => bail!(
            "{name}: a module package does not name its nodes; give SafeKit's cluster.xml (--cluster FILE, or put it in {}) or each node (--node NAME=ADDRESS)",
            default_cluster.display()
        ),
        (None, false) => None,
    };
    let cluster_text = match &cluster_path {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    let source = match (&cluster_text, &cluster_path) {
        (Some(text), Some(path)) => NodeSource::Cluster(text, path),
        _ => NodeSource::Explicit(&nodes),
    };
    let options = ImportOptions {
        name,
        id: ModuleId(id),
        nodes: source,
    };
    let imported = holdfast_config::import_userconfig(text, path, &options)?;
    let warnings = imported
        .warnings
        .iter()
        .map(|w| format!("{} {w}", holdfast_package::SAFEKIT_CONFIG))
        .collect();
    Ok((imported.config, warnings))
}

/// SafeKit gives a new module the lowest free id; a module being replaced
/// keeps its own.
pub fn free_id(ids: &BTreeMap<String, u16>, name: &str) -> u16 {
    if let Some(id) = ids.get(name) {
        return *id;
    }
    (1..)
        .find(|id| !ids.values().any(|used| used == id))
        .unwrap_or(1)
}

/// `web.safe`, `web.zip`, `web/` → `web`.
fn default_name(path: &Path) -> Result<String> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    match path.file_stem().and_then(|s| s.to_str()) {
        Some(stem) if !stem.is_empty() => Ok(stem.to_string()),
        _ => bail!("{}: give the module's name with --name", path.display()),
    }
}

/// `--node NAME=ADDR[,ADDR]`.
fn parse_nodes(nodes: &[String]) -> Result<Vec<(String, Vec<IpAddr>)>> {
    nodes
        .iter()
        .map(|node| {
            let Some((name, addresses)) = node.split_once('=') else {
                bail!("--node {node:?}: expected NAME=ADDRESS[,ADDRESS]");
            };
            let addresses = addresses
                .split(',')
                .map(|a| {
                    a.trim()
                        .parse()
                        .with_context(|| format!("--node {node:?}: {a:?} is not an IP address"))
                })
                .collect::<Result<_>>()?;
            Ok((name.to_string(), addresses))
        })
        .collect()
}

/// A TOML file and the files of its `[scripts] directory`, as a package.
fn toml_contents(path: &Path) -> Result<Contents> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = holdfast_config::parse_module(&text, path)?;
    let mut bin = BTreeMap::new();
    if let Some(dir) = &parsed.scripts.directory {
        let dir = path.parent().unwrap_or(Path::new(".")).join(dir);
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("scripts directory {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_file() {
                use std::os::unix::fs::PermissionsExt;
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let mode = std::fs::metadata(&path)?.permissions().mode() & 0o7777;
                bin.insert(name, File { bytes, mode });
            }
        }
    }
    Ok(Contents {
        config: Config::Native(text),
        bin,
        unused: Vec::new(),
    })
}
