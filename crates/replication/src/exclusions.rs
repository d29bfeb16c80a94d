//! What of a replicated directory is not replicated (SafeKit's
//! `<notreplicated>`): entries at given relative paths, and entries whose
//! name matches a regular expression — each with everything under it.
//!
//! Whether an entry is replicated depends on its path only (not on its
//! type or content), so the file system decides it for every change before
//! applying it, and a resynchronisation for every name it lists. A rename
//! or hard link from one side to the other is refused with `EXDEV`, as
//! between two file systems (SafeKit refuses them too): `mv` then copies
//! and removes, and each side sees what it should. A directory rename that
//! would carry an excluded path's entries along (an exclusion by path
//! under it) is refused the same way.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use regex_automata::meta::Regex;

/// A configured exclusion that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ExclusionError {
    #[error("{0:?}: expected a relative path below the replicated directory, without . or ..")]
    Path(PathBuf),
    #[error("{pattern:?}: not a regular expression: {source}")]
    Regex {
        pattern: String,
        source: Box<regex_automata::meta::BuildError>,
    },
}

/// The exclusions of one replicated directory; none by default.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    /// Relative paths: the entry and everything under it.
    paths: Vec<PathBuf>,
    /// Names (any component of a path) matching one of the patterns.
    names: Option<Regex>,
}

impl Exclusions {
    /// `paths` relative to the replicated directory, `names` regular
    /// expressions (the `regex` crate's syntax, close to POSIX ERE) searched
    /// in each entry's name.
    pub fn new(paths: &[PathBuf], names: &[String]) -> Result<Self, ExclusionError> {
        for path in paths {
            let relative = !path.as_os_str().is_empty()
                && path.components().all(|c| matches!(c, Component::Normal(_)));
            if !relative {
                return Err(ExclusionError::Path(path.clone()));
            }
        }
        let names = if names.is_empty() {
            None
        } else {
            Some(Regex::new_many(names).map_err(|source| {
                // The first pattern that fails alone names the culprit.
                let pattern = names
                    .iter()
                    .find(|p| Regex::new(p).is_err())
                    .cloned()
                    .unwrap_or_default();
                ExclusionError::Regex {
                    pattern,
                    source: Box::new(source),
                }
            })?)
        };
        Ok(Self {
            paths: paths.to_vec(),
            names,
        })
    }

    /// Whether nothing is excluded (then nothing needs checking).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.names.is_none()
    }

    /// Whether the entry at `path` (relative to the replicated directory)
    /// is excluded from replication.
    pub fn excludes(&self, path: &Path) -> bool {
        if self.is_empty() {
            return false;
        }
        self.paths.iter().any(|p| path.starts_with(p))
            || self.names.as_ref().is_some_and(|re| {
                path.components()
                    .any(|c| re.is_match(OsStr::as_bytes(c.as_os_str())))
            })
    }

    /// Whether moving (or linking) `from` to `to` keeps everything it
    /// carries on the same side: both replicated or both excluded, and, for
    /// replicated ones, no exclusion by path below either.
    pub fn same_side(&self, from: &Path, to: &Path) -> bool {
        let excluded = self.excludes(from);
        if excluded != self.excludes(to) {
            return false;
        }
        excluded
            || !self
                .paths
                .iter()
                .any(|p| p.starts_with(from) || p.starts_with(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exclusions() -> Exclusions {
        Exclusions::new(
            &[PathBuf::from("logs"), PathBuf::from("app/cache")],
            &[r".*\.tmp$".into(), "^core$".into()],
        )
        .unwrap()
    }

    #[test]
    fn paths_and_names_exclude_their_whole_subtree() {
        let x = exclusions();
        for excluded in [
            "logs",
            "logs/today/a.log",
            "app/cache",
            "app/cache/x",
            "a.tmp",
            "dir/b.tmp",
            "build.tmp/inside",
            "core",
            "sub/core/x",
        ] {
            assert!(x.excludes(Path::new(excluded)), "{excluded}");
        }
        for replicated in [
            "",
            "logsbook",
            "app",
            "app/cached",
            "conf/config.tmp.swap",
            "score",
            "x/logs",
        ] {
            assert!(!x.excludes(Path::new(replicated)), "{replicated}");
        }
        assert!(!Exclusions::default().excludes(Path::new("a.tmp")));
    }

    #[test]
    fn moves_across_the_boundary_or_carrying_an_excluded_path_are_refused() {
        let x = exclusions();
        let same = |a: &str, b: &str| x.same_side(Path::new(a), Path::new(b));
        assert!(same("a", "b"));
        assert!(same("a.tmp", "logs/a"));
        assert!(!same("a", "a.tmp"));
        assert!(!same("logs/a", "kept"));
        // `app` holds the excluded `app/cache`: moving it would carry it
        // out of its exclusion; a directory moved in place of `app` would
        // put its own `cache` under it.
        assert!(!same("app", "application"));
        assert!(!same("other", "app"));
        assert!(same("app/data", "app/data2"));
    }

    #[test]
    fn bad_exclusions_are_named() {
        for path in ["/abs", "../up", "a/../b", "./a", ""] {
            let e = Exclusions::new(&[PathBuf::from(path)], &[]).unwrap_err();
            assert!(e.to_string().contains("relative path"), "{path}: {e}");
        }
        let e = Exclusions::new(&[], &["ok".into(), "(unclosed".into()]).unwrap_err();
        assert!(e.to_string().contains("\"(unclosed\""), "{e}");
    }
}
