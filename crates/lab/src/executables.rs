//! The two executables a cluster on lab hosts runs: the product's
//! `holdfast` (daemons, CLI, witness) and the lab tool `holdfast-lab` (the
//! sample application and the record writers the tests and benchmarks
//! start on the hosts). They are built into the same target directory, or
//! installed into the same directory, and each is looked for beside the
//! other.

use std::path::{Path, PathBuf};

use crate::{LabError, Result};

/// The product's executable.
pub const HOLDFAST: &str = "holdfast";
/// The lab tool's executable.
pub const LAB_TOOL: &str = "holdfast-lab";

/// Where the product and the lab tool are.
#[derive(Debug, Clone)]
pub struct Executables {
    /// `holdfast`: the daemons, the CLI and the witness on the hosts.
    pub holdfast: PathBuf,
    /// `holdfast-lab`: the sample application and the record writers.
    pub lab: PathBuf,
}

impl Executables {
    /// `holdfast` and the lab tool beside it (the end-to-end tests, which
    /// cargo gives the product's path only).
    pub fn beside_holdfast(holdfast: &Path) -> Result<Self> {
        let lab = sibling(holdfast, LAB_TOOL);
        Self::checked(holdfast.to_path_buf(), lab)
    }

    /// The running lab tool `lab`, and `holdfast` as given, or beside it.
    pub fn for_lab_tool(lab: PathBuf, holdfast: Option<PathBuf>) -> Result<Self> {
        let holdfast = holdfast.unwrap_or_else(|| sibling(&lab, HOLDFAST));
        Self::checked(holdfast, lab)
    }

    fn checked(holdfast: PathBuf, lab: PathBuf) -> Result<Self> {
        for path in [&holdfast, &lab] {
            if !path.is_file() {
                return Err(LabError::MissingExecutable(path.clone()));
            }
        }
        Ok(Self { holdfast, lab })
    }

    /// The directories the hosts' scripts find both in, first in `PATH`
    /// (the sample scripts run `holdfast-lab sample-app`).
    pub fn search_path(&self) -> String {
        let mut dirs: Vec<String> = Vec::new();
        for exe in [&self.holdfast, &self.lab] {
            if let Some(dir) = exe.parent() {
                let dir = dir.display().to_string();
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        if let Ok(path) = std::env::var("PATH") {
            dirs.push(path);
        }
        dirs.join(":")
    }
}

fn sibling(exe: &Path, name: &str) -> PathBuf {
    exe.parent().unwrap_or(Path::new(".")).join(name)
}
