//! Module packages: what a module is made of besides its state — its
//! configuration, its scripts and their helper files — in one zip, so a
//! module written once installs on any node with one command.
//!
//! A Holdfast package holds `module.toml` and `bin/`; a SafeKit `.safe`
//! holds `conf/userconfig.xml` and `bin/`, and is read the same way (the CLI
//! converts its configuration). Either may sit under one top directory (as
//! zipping a folder makes it). The same layout unpacked in a directory is a
//! package too. Everything else in a package is listed as not used, never
//! dropped silently.
//!
//! A package is untrusted input: every entry's path stays inside the
//! package (no `..`, no absolute path, no link), its size is bounded before
//! anything is read, and a refusal names the entry and the reason. Reading
//! changes nothing; installing is the daemon's.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The native configuration, at the top of a package.
pub const CONFIG: &str = "module.toml";
/// SafeKit's configuration in a `.safe`.
pub const SAFEKIT_CONFIG: &str = "conf/userconfig.xml";
/// The scripts and helper files (SafeKit's `SAFEUSERBIN`).
pub const BIN: &str = "bin";
/// The largest package accepted, as a zip.
pub const MAX_PACKAGE_BYTES: u64 = 64 << 20;
/// The largest total of the files a package holds once unpacked.
pub const MAX_CONTENT_BYTES: u64 = 256 << 20;
/// The most entries a package may hold.
pub const MAX_ENTRIES: usize = 4096;
/// The mode given to a file of `bin/` whose package records none (a zip
/// made on Windows): scripts and helper programs must run.
const DEFAULT_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("not a module package: not a zip archive ({0})")]
    NotZip(String),
    #[error("the package is too large: {what} is {size} bytes, the limit is {limit}")]
    TooLarge { what: String, size: u64, limit: u64 },
    #[error("the package holds more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("entry {name:?}: {reason}; nothing was installed")]
    BadEntry { name: String, reason: String },
    #[error("no module configuration in the package: expected {CONFIG} (Holdfast) or {SAFEKIT_CONFIG} (SafeKit) at its top{found}")]
    MissingConfig { found: String },
    #[error("the package holds both {CONFIG} and {SAFEKIT_CONFIG}: which one is the module's configuration?")]
    TwoConfigs,
    #[error("{0} is not UTF-8 text")]
    NotText(String),
    #[error("a SafeKit package: `holdfast module install` converts its {SAFEKIT_CONFIG}")]
    NotNative,
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the package: {0}")]
    Write(String),
}

/// One file of `bin/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub bytes: Vec<u8>,
    /// Permission bits (`0o755`).
    pub mode: u32,
}

/// The configuration a package carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Config {
    /// `module.toml`.
    Native(String),
    /// `conf/userconfig.xml`.
    SafeKit(String),
}

/// What a package holds, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub config: Config,
    /// `bin/`'s files by their path under `bin/` (`start_prim`, `lib/x.sh`).
    pub bin: BTreeMap<String, File>,
    /// Entries that are neither the configuration nor in `bin/`: not used.
    pub unused: Vec<String>,
}

/// A native package: what the daemon installs and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// `module.toml`'s text.
    pub config: String,
    pub bin: BTreeMap<String, File>,
}

impl Package {
    /// Reads a native package (a SafeKit one is refused: its configuration
    /// is converted first, by the CLI).
    pub fn from_zip(bytes: &[u8]) -> Result<Self, PackageError> {
        let contents = read_zip(bytes)?;
        match contents.config {
            Config::Native(config) => Ok(Package {
                config,
                bin: contents.bin,
            }),
            Config::SafeKit(_) => Err(PackageError::NotNative),
        }
    }

    /// The package as a zip: `module.toml` and `bin/`, modes kept.
    pub fn to_zip(&self) -> Result<Vec<u8>, PackageError> {
        let write = |e: &dyn std::fmt::Display| PackageError::Write(e.to_string());
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = |mode: u32| {
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(mode)
        };
        zip.start_file(CONFIG, options(0o644))
            .map_err(|e| write(&e))?;
        zip.write_all(self.config.as_bytes())
            .map_err(|e| write(&e))?;
        for (name, file) in &self.bin {
            zip.start_file(format!("{BIN}/{name}"), options(file.mode))
                .map_err(|e| write(&e))?;
            zip.write_all(&file.bytes).map_err(|e| write(&e))?;
        }
        Ok(zip.finish().map_err(|e| write(&e))?.into_inner())
    }
}

/// Reads a package from a zip's bytes.
pub fn read_zip(bytes: &[u8]) -> Result<Contents, PackageError> {
    check_size("the package", bytes.len() as u64, MAX_PACKAGE_BYTES)?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| PackageError::NotZip(e.to_string()))?;
    if archive.len() > MAX_ENTRIES {
        return Err(PackageError::TooManyEntries);
    }
    let mut entries = Vec::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| PackageError::NotZip(e.to_string()))?;
        let name = entry.name().to_string();
        let bad = |reason: &str| PackageError::BadEntry {
            name: name.clone(),
            reason: reason.to_string(),
        };
        let path = entry_path(&name).map_err(&bad)?;
        if entry.is_dir() {
            continue;
        }
        if entry.is_symlink() {
            return Err(bad("a symbolic link; a package holds regular files only"));
        }
        total = total.saturating_add(entry.size());
        check_size("its content", total, MAX_CONTENT_BYTES)?;
        let mode = entry.unix_mode().map_or(DEFAULT_MODE, |m| m & 0o7777);
        // The declared size bounds the read: a lying header cannot make
        // the read grow past the limit.
        let declared = entry.size();
        let mut bytes = Vec::new();
        (&mut entry)
            .take(declared + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(&format!("unreadable ({e})")))?;
        if bytes.len() as u64 != declared {
            return Err(bad("its size differs from the one its header declares"));
        }
        entries.push((path, File { bytes, mode }));
    }
    contents(entries)
}

/// Reads a package unpacked in a directory: its configuration and `bin/`
/// (followed recursively); other top-level entries are listed as unused
/// without being read.
pub fn read_dir(dir: &Path) -> Result<Contents, PackageError> {
    let io = |path: &Path, source| PackageError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut entries = Vec::new();
    let mut total = 0u64;
    let mut walk = vec![PathBuf::new()];
    while let Some(relative) = walk.pop() {
        let here = dir.join(&relative);
        for entry in std::fs::read_dir(&here).map_err(|e| io(&here, e))? {
            let entry = entry.map_err(|e| io(&here, e))?;
            let name = relative.join(entry.file_name());
            let shown = name.display().to_string();
            let kind = entry.file_type().map_err(|e| io(&entry.path(), e))?;
            let wanted = name.starts_with(BIN)
                || name == Path::new(CONFIG)
                || name == Path::new("conf")
                || name == Path::new(SAFEKIT_CONFIG);
            if !wanted {
                entries.push((shown, None));
                continue;
            }
            if kind.is_symlink() {
                return Err(PackageError::BadEntry {
                    name: shown,
                    reason: "a symbolic link; a package holds regular files only".into(),
                });
            }
            if kind.is_dir() {
                walk.push(name);
                continue;
            }
            let meta = entry.metadata().map_err(|e| io(&entry.path(), e))?;
            total = total.saturating_add(meta.len());
            check_size("its content", total, MAX_CONTENT_BYTES)?;
            let bytes = std::fs::read(entry.path()).map_err(|e| io(&entry.path(), e))?;
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            entries.push((shown, Some(File { bytes, mode })));
        }
        if entries.len() > MAX_ENTRIES {
            return Err(PackageError::TooManyEntries);
        }
    }
    let (files, unused): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(_, f)| f.is_some());
    let mut contents = contents(
        files
            .into_iter()
            .filter_map(|(name, file)| Some((name, file?)))
            .collect(),
    )?;
    contents
        .unused
        .extend(unused.into_iter().map(|(name, _)| name));
    contents.unused.sort();
    Ok(contents)
}

/// Sorts a package's files into configuration, `bin/` and unused, after
/// removing a top directory that holds everything.
fn contents(mut entries: Vec<(String, File)>) -> Result<Contents, PackageError> {
    let at_top = |entries: &[(String, File)]| {
        entries
            .iter()
            .any(|(name, _)| name == CONFIG || name == SAFEKIT_CONFIG)
    };
    if !at_top(&entries) {
        let first = entries
            .first()
            .and_then(|(name, _)| name.split_once('/'))
            .map(|(top, _)| format!("{top}/"));
        if let Some(top) = first {
            if entries.iter().all(|(name, _)| name.starts_with(&top)) {
                for (name, _) in &mut entries {
                    name.replace_range(..top.len(), "");
                }
            }
        }
    }
    let mut native = None;
    let mut safekit = None;
    let mut bin = BTreeMap::new();
    let mut unused = Vec::new();
    for (name, file) in entries {
        if name == CONFIG {
            native = Some(text(&name, file.bytes)?);
        } else if name == SAFEKIT_CONFIG {
            safekit = Some(text(&name, file.bytes)?);
        } else if let Some(under) = name.strip_prefix(&format!("{BIN}/")) {
            bin.insert(under.to_string(), file);
        } else {
            unused.push(name);
        }
    }
    let config = match (native, safekit) {
        (Some(native), None) => Config::Native(native),
        (None, Some(safekit)) => Config::SafeKit(safekit),
        (Some(_), Some(_)) => return Err(PackageError::TwoConfigs),
        (None, None) => {
            let found = if unused.is_empty() {
                String::new()
            } else {
                format!(" (found: {})", unused.join(", "))
            };
            return Err(PackageError::MissingConfig { found });
        }
    };
    unused.sort();
    Ok(Contents {
        config,
        bin,
        unused,
    })
}

/// An entry's name as a relative path inside the package, or why not.
fn entry_path(name: &str) -> Result<String, &'static str> {
    if name.starts_with('/') {
        return Err("an absolute path; a package's paths are relative to its top");
    }
    if name.contains('\\') || name.contains('\0') {
        return Err("a path with a backslash or NUL character");
    }
    let parts: Vec<&str> = name.trim_end_matches('/').split('/').collect();
    if parts
        .iter()
        .any(|p| *p == ".." || *p == "." || p.is_empty())
    {
        return Err("a path leaving the package (`..`) or with an empty or `.` component");
    }
    Ok(parts.join("/"))
}

fn check_size(what: &str, size: u64, limit: u64) -> Result<(), PackageError> {
    if size > limit {
        return Err(PackageError::TooLarge {
            what: what.to_string(),
            size,
            limit,
        });
    }
    Ok(())
}

fn text(name: &str, bytes: Vec<u8>) -> Result<String, PackageError> {
    String::from_utf8(bytes).map_err(|_| PackageError::NotText(name.to_string()))
}

/// Reads a package from a file: a zip whatever its extension (`.safe`,
/// `.zip`).
pub fn read_file(path: &Path) -> Result<Contents, PackageError> {
    let io = |source| PackageError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
    check_size("the package", size, MAX_PACKAGE_BYTES)?;
    file.rewind().map_err(io)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    read_zip(&bytes)
}
