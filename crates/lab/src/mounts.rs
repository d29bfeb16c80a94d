//! Mount primitives: the private run-directory bind, the persistent per-host
//! mount namespaces, and reading/undoing mounts from `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{LabError, Result};
use crate::exec::run;

/// Paths each host sees bound to its own directories, paired with the name of
/// the per-host subdirectory that backs them.
pub(crate) const HOST_MOUNTS: [(&str, &str); 3] = [
    ("/var/lib/holdfast", "var-lib-holdfast"),
    ("/etc/holdfast", "etc-holdfast"),
    ("/srv", "srv"),
];

/// Most rounds of unmounting attempted on one tree (mounts can be stacked).
const UNMOUNT_ROUNDS: usize = 8;

/// One line of `/proc/self/mountinfo`, reduced to what the lab needs.
#[derive(Debug)]
pub(crate) struct MountEntry {
    /// Path inside the mounted filesystem that is mounted (the bind source).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
}

/// The mounts of the calling process's mount namespace.
pub(crate) fn mount_table() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| LabError::io("reading /proc/self/mountinfo", e))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            Some(MountEntry {
                root: unescape(root),
                mount_point: PathBuf::from(unescape(mount_point)),
            })
        })
        .collect())
}

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`, deepest (and most recently mounted) first,
/// i.e. in the order they can be unmounted.
pub(crate) fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut points: Vec<PathBuf> = mount_table()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.reverse();
    // Stable sort keeps later-mounted first among equals (stacked mounts).
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(points)
}

/// Makes `dir` a private bind mount of itself, so that nsfs files can be
/// bind-mounted inside it (the kernel refuses them on shared mounts) and so
/// nothing mounted there propagates anywhere.
pub(crate) fn bind_private(dir: &Path) -> Result<()> {
    let what = dir.display();
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| LabError::sys(format!("mount --bind {what} {what}"), e))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| LabError::sys(format!("mount --make-private {what}"), e))
}

/// Unmounts everything at or below `dir`, in bounded rounds; returns the
/// failures (empty when nothing is left).
pub(crate) fn unmount_all_under(dir: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    for _ in 0..UNMOUNT_ROUNDS {
        let points = match mounts_under(dir) {
            Ok(points) => points,
            Err(e) => return vec![e.to_string()],
        };
        if points.is_empty() {
            return Vec::new();
        }
        failures.clear();
        for point in points {
            // Detach: a lingering user in another namespace must not make
            // clean-up fail; the mount disappears from every view at once.
            if let Err(e) = umount2(&point, MntFlags::MNT_DETACH) {
                failures.push(format!("umount -l {}: {e}", point.display()));
            }
        }
    }
    match mounts_under(dir) {
        Ok(points) if points.is_empty() => Vec::new(),
        Ok(points) => {
            failures.push(format!("still mounted: {points:?}"));
            failures
        }
        Err(e) => vec![e.to_string()],
    }
}

/// Shell script run by `unshare` inside a new host mount namespace (itself
/// run inside the host's network namespace). `$1`..`$3` are the host's
/// directories for [`HOST_MOUNTS`].
///
/// A fresh sysfs on `/sys` shows the host's own interfaces (sysfs takes the
/// network namespace of whoever mounts it), as `ip netns exec` does.
/// The new namespace starts as a copy of the machine's, which includes the
/// netns files and run directories of every other lab: detaching those copies
/// keeps this namespace from holding other labs' namespaces alive after
/// their own clean-up.
const HOST_NS_SCRIPT: &str = r#"set -e
mount --bind "$1" /var/lib/holdfast
mount --bind "$2" /etc/holdfast
mount --bind "$3" /srv
umount -l /sys 2>/dev/null || true
mount -t sysfs sysfs /sys
umount -l /run/netns 2>/dev/null || true
for d in /run/holdfast-lab/*/; do umount -l "$d" 2>/dev/null || true; done
"#;

/// Creates the persistent mount namespace of one host, bound on `ns_file`,
/// with the host's directories (under `host_dir`) bound on [`HOST_MOUNTS`];
/// `netns` is the path of the host's network namespace.
pub(crate) fn create_host_namespace(ns_file: &Path, host_dir: &Path, netns: &Path) -> Result<()> {
    let mut sources = Vec::new();
    for (target, sub) in HOST_MOUNTS {
        // The mount points must exist in the machine's tree; they stay empty.
        std::fs::create_dir_all(target)
            .map_err(|e| LabError::io(format!("creating mount point {target}"), e))?;
        let source = host_dir.join(sub);
        std::fs::create_dir_all(&source)
            .map_err(|e| LabError::io(format!("creating {}", source.display()), e))?;
        sources.push(source.to_string_lossy().into_owned());
    }
    std::fs::File::create(ns_file)
        .map_err(|e| LabError::io(format!("creating {}", ns_file.display()), e))?;
    let net_arg = format!("--net={}", netns.display());
    let ns_arg = format!("--mount={}", ns_file.display());
    let mut args = vec![
        net_arg.as_str(),
        "--",
        "unshare",
        ns_arg.as_str(),
        "--propagation",
        "private",
        "sh",
        "-c",
        HOST_NS_SCRIPT,
        "sh",
    ];
    args.extend(sources.iter().map(String::as_str));
    run("nsenter", &args, None).map(drop)
}

/// Mounts of the machine's namespace that should exist only inside the
/// hosts of lab `id` (a bind of a host directory on one of [`HOST_MOUNTS`]).
pub(crate) fn leaked_host_mounts(id: &str) -> Result<Vec<String>> {
    let marker = format!("/{id}/");
    Ok(mount_table()?
        .into_iter()
        .filter(|m| {
            HOST_MOUNTS
                .iter()
                .any(|(target, _)| m.mount_point == Path::new(target))
                && m.root.contains(&marker)
        })
        .map(|m| format!("{} on {}", m.root, m.mount_point.display()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\"), r"/trailing\");
    }
}
