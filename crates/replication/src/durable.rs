//! Replacing a file durably: after a crash or a power loss it holds the old
//! content or the new, never a mix — and once a replace returned, never the
//! old again. Every state file of this crate and of the daemon (generations,
//! activity logs, the witness's outdated marks, a module's epoch) is
//! written so.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes`: written to a temporary file beside it,
/// synced, renamed over `path`; then the directory is synced, so the
/// rename itself is on disk.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A bare file name's parent is "": the current directory.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_lab::syscalls::{child_argument, replaces_durably};

    #[test]
    fn a_replace_syncs_the_directory_after_the_rename() {
        if let Some(path) = child_argument() {
            return replace(Path::new(&path), b"new").unwrap();
        }
        if let Err(e) =
            replaces_durably("durable::tests::a_replace_syncs_the_directory_after_the_rename")
        {
            panic!("{e}");
        }
    }
}
