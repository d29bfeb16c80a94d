//! Errors: every problem in a configuration file is reported with the file,
//! the 1-based line and column of the offending text, and the field it
//! concerns, so that an operator can go straight to it.

use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration file that cannot be used, and where exactly it is wrong.
///
/// Displays as `<file>:<line>:<column>: <field>: <message>`, for example
/// `/etc/holdfast/web.toml:12:9: heartbeat.pulse: expected a duration with a
/// unit, like "700ms", found 700`.
///
/// - `field` is the dotted path of the setting in the native format
///   (`node[1].address.default`), or the element and attribute in an imported
///   SafeKit file (`<heart pulse>`). It is empty for plain syntax errors, and
///   then left out of the display.
/// - `line` and `column` are 1-based and point at the offending value, or at
///   the enclosing table or element when a required setting is missing. They
///   are 0 only when the file could not be read at all; the display then
///   leaves them out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Rendered(self))]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// The `Display` of [`ConfigError`], kept apart so the derive stays simple.
struct Rendered<'a>(&'a ConfigError);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        write!(f, "{}:", e.file.display())?;
        if e.line > 0 {
            write!(f, "{}:{}:", e.line, e.column)?;
        }
        if !e.field.is_empty() {
            write!(f, " {}:", e.field)?;
        }
        write!(f, " {}", e.message)
    }
}

impl ConfigError {
    /// An error at byte `offset` of `text`, the content of `file`.
    pub(crate) fn at_offset(
        file: &Path,
        text: &str,
        offset: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = line_column(text, offset);
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A rule of [`ModuleConfig::validate`](crate::ModuleConfig::validate) that a
/// configuration breaks, with the dotted path of the field concerned (as in the
/// native format, e.g. `node[1].address.default`).
///
/// The parsers turn it into a [`ConfigError`] pointing into the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

/// A checker configuration value that makes no sense, found by
/// [`CheckerConfig::validate`](crate::checker::CheckerConfig::validate).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checker {checker}: {field}: {message}")]
pub struct InvalidChecker {
    /// The checker's resource (`tcp.web`).
    pub checker: String,
    pub field: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let text = "a = 1\nné = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // "é" is two bytes but one column.
        assert_eq!(line_column(text, text.rfind('=').unwrap_or(0)), (2, 4));
        assert_eq!(line_column(text, 10_000), (3, 1));
    }

    #[test]
    fn display_has_file_line_column_field_message() {
        let e = ConfigError {
            file: PathBuf::from("/etc/holdfast/web.toml"),
            line: 12,
            column: 9,
            field: "heartbeat.pulse".into(),
            message: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/holdfast/web.toml:12:9: heartbeat.pulse: bad"
        );
        let unreadable = ConfigError {
            line: 0,
            column: 0,
            field: String::new(),
            ..e
        };
        assert_eq!(unreadable.to_string(), "/etc/holdfast/web.toml: bad");
    }
}
