//! SafeKit's XML files as read by the import: positions of elements and
//! attributes (for warnings and errors), and SafeKit's ways of writing
//! values (durations with a default unit, on/off, macro references,
//! typographic quotes).

use std::path::{Path, PathBuf};
use std::time::Duration;

use roxmltree::{Document, Node, ParsingOptions};

use crate::error::{line_column, ConfigError};

/// Default unit of a SafeKit duration written as a bare number.
#[derive(Clone, Copy)]
pub(super) enum Unit {
    Milliseconds,
    Seconds,
    Hours,
}

impl Unit {
    pub(super) fn of(self, n: u64) -> Option<Duration> {
        match self {
            Unit::Milliseconds => Some(Duration::from_millis(n)),
            Unit::Seconds => Some(Duration::from_secs(n)),
            Unit::Hours => n.checked_mul(3600).map(Duration::from_secs),
        }
    }

    pub(super) fn describe(self) -> &'static str {
        match self {
            Unit::Milliseconds => {
                "a number of milliseconds or a duration with a unit, like \"700ms\""
            }
            Unit::Seconds => "a number of seconds or a duration with a unit, like \"300s\"",
            Unit::Hours => "a number of hours or a duration with a unit, like \"24h\"",
        }
    }
}

/// A parsed XML file. `index` orders warnings: 0 for userconfig.xml, 1 for
/// cluster.xml.
pub(super) struct XmlFile<'input> {
    pub(super) path: &'input Path,
    pub(super) index: u8,
    pub(super) doc: Document<'input>,
}

impl<'input> XmlFile<'input> {
    pub(super) fn parse(
        text: &'input str,
        path: &'input Path,
        index: u8,
    ) -> Result<Self, ConfigError> {
        let options = ParsingOptions {
            allow_dtd: true,
            ..ParsingOptions::default()
        };
        let doc = Document::parse_with_options(text, options).map_err(|e| {
            let pos = e.pos();
            // roxmltree puts " at LINE:COLUMN" in its messages; the error
            // carries the position already.
            let message = e.to_string().replace(&format!(" at {pos}"), "");
            ConfigError {
                file: path.to_path_buf(),
                line: pos.row as usize,
                column: pos.col as usize,
                field: String::new(),
                message,
            }
        })?;
        Ok(XmlFile { path, index, doc })
    }

    pub(super) fn place(&self, offset: usize, field: impl Into<String>) -> Place {
        let (line, column) = line_column(self.doc.input_text(), offset);
        Place {
            file: self.path.to_path_buf(),
            line,
            column,
            field: field.into(),
        }
    }

    pub(super) fn error(
        &self,
        offset: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.place(offset, field).error(message)
    }

    pub(super) fn attr_error(&self, attr: &Attr<'_>, message: impl Into<String>) -> ConfigError {
        self.error(attr.offset, attr.field.clone(), message)
    }

    pub(super) fn line(&self, offset: usize) -> usize {
        line_column(self.doc.input_text(), offset).0
    }
}

/// Where a setting of the imported configuration came from.
#[derive(Debug, Clone)]
pub(super) struct Place {
    pub(super) file: PathBuf,
    pub(super) line: usize,
    pub(super) column: usize,
    pub(super) field: String,
}

impl Place {
    pub(super) fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            field: self.field.clone(),
            message: message.into(),
        }
    }
}

/// An attribute read from an element.
pub(super) struct Attr<'a> {
    pub(super) value: &'a str,
    /// Start of the value in the text.
    pub(super) offset: usize,
    /// `<element attribute>`, as shown in messages.
    pub(super) field: String,
}

pub(super) fn element_name(el: Node<'_, '_>) -> String {
    format!("<{}>", el.tag_name().name())
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

pub(super) fn on_off(f: &XmlFile<'_>, attr: &Attr<'_>) -> Result<bool, ConfigError> {
    match attr.value {
        "on" => Ok(true),
        "off" => Ok(false),
        v => Err(f.attr_error(
            attr,
            format!("unknown value {v:?}; expected \"on\" or \"off\""),
        )),
    }
}

pub(super) fn parse_port(f: &XmlFile<'_>, attr: &Attr<'_>) -> Result<u16, ConfigError> {
    match attr.value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(f.attr_error(
            attr,
            format!(
                "expected a port number between 1 and 65535, found {:?}",
                attr.value
            ),
        )),
    }
}

pub(super) fn count(f: &XmlFile<'_>, attr: &Attr<'_>) -> Result<u32, ConfigError> {
    attr.value
        .trim()
        .parse()
        .map_err(|_| f.attr_error(attr, format!("expected a count, found {:?}", attr.value)))
}

pub(super) fn duration(
    f: &XmlFile<'_>,
    attr: &Attr<'_>,
    unit: Unit,
) -> Result<Duration, ConfigError> {
    parse_duration(attr.value, unit).ok_or_else(|| {
        f.attr_error(
            attr,
            format!("expected {}, found {:?}", unit.describe(), attr.value),
        )
    })
}

/// A SafeKit duration: a bare number in the attribute's own unit, or (since
/// SafeKit 8.2.5) a number with a unit such as `700ms`, `30s` or `24h`.
pub(super) fn parse_duration(text: &str, unit: Unit) -> Option<Duration> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return unit.of(text.parse().ok()?);
    }
    humantime::parse_duration(text).ok()
}

/// The first `%NAME%` in `value`, if any.
pub(super) fn macro_reference(value: &str) -> Option<&str> {
    let start = value.find('%')?;
    let len = value[start + 1..].find('%')?;
    let name = &value[start + 1..start + 1 + len];
    let is_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    is_name.then(|| &value[start..start + len + 2])
}

/// Replaces typographic quotes (“ ”) used as attribute delimiters by plain
/// ones, as they appear in configurations pasted from documents. Returns the
/// new text and the byte offsets, in it, of the replaced quotes. Each
/// replacement keeps the character count, so lines and columns are unchanged.
pub(super) fn normalize_quotes(text: &str) -> (String, Vec<usize>) {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Content,
        Tag,
        Quoted(char),
        TypographicQuoted,
    }
    let mut out = String::with_capacity(text.len());
    let mut fixed = Vec::new();
    let mut state = State::Content;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        // Comments may hold any quote; copy them untouched.
        if state == State::Content && rest.starts_with("<!--") {
            let end = rest.find("-->").map_or(rest.len(), |i| i + 3);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        let mut emitted = c;
        state = match (state, c) {
            (State::Content, '<') => State::Tag,
            (State::Tag, '>') => State::Content,
            (State::Tag, '"' | '\'') => State::Quoted(c),
            (State::Tag, '“' | '”') => {
                fixed.push(out.len());
                emitted = '"';
                State::TypographicQuoted
            }
            (State::Quoted(q), c) if c == q => State::Tag,
            (State::TypographicQuoted, '“' | '”') => {
                fixed.push(out.len());
                emitted = '"';
                State::Tag
            }
            (State::TypographicQuoted, '"') => State::Tag,
            (state, _) => state,
        };
        out.push(emitted);
        rest = &rest[c.len_utf8()..];
    }
    (out, fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_replaced_only_as_attribute_delimiters() {
        let text = "<!-- “c” --><a x=”1” y=\"say “hi”\" z=“2\"/>“t”";
        let (fixed, offsets) = normalize_quotes(text);
        assert_eq!(fixed, "<!-- “c” --><a x=\"1\" y=\"say “hi”\" z=\"2\"/>“t”");
        assert_eq!(offsets.len(), 3);
        assert!(offsets.iter().all(|&o| fixed.as_bytes()[o] == b'"'));
        assert_eq!(fixed.chars().count(), text.chars().count());
    }

    #[test]
    fn safekit_durations() {
        assert_eq!(
            parse_duration("700", Unit::Milliseconds),
            Some(Duration::from_millis(700))
        );
        assert_eq!(
            parse_duration("300", Unit::Seconds),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration("24", Unit::Hours),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_duration("30s", Unit::Milliseconds),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration("1d", Unit::Hours),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_duration("50us", Unit::Seconds),
            Some(Duration::from_micros(50))
        );
        assert_eq!(parse_duration("-1", Unit::Seconds), None);
        assert_eq!(parse_duration("", Unit::Seconds), None);
    }

    #[test]
    fn macro_references() {
        assert_eq!(macro_reference("%HOME%/app"), Some("%HOME%"));
        assert_eq!(macro_reference("100%"), None);
        assert_eq!(macro_reference("50% or 60%"), None);
    }
}
