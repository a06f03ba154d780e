//! Diagnostics for the routing file: turning byte spans into `file:line:column` and
//! collecting every problem found, so one run of `kmirror check` reports all of them.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The text of a routing file, kept so spans can be turned into line and column.
#[derive(Debug, Clone)]
pub struct SourceText {
    pub path: PathBuf,
    pub text: String,
}

impl SourceText {
    pub fn new(path: &Path, text: String) -> Self {
        SourceText {
            path: path.to_path_buf(),
            text,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    pub fn location(&self, span: &Range<usize>) -> Location {
        let (line, column) = self.line_col(span.start);
        Location {
            file: self.path.display().to_string(),
            line,
            column,
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Where in a file something is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One problem in the routing file: where, which key, and what rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    /// Dotted path of the key, e.g. `routes[1].max_messages_per_sec`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: {}: {}", self.location, self.key, self.message)
        }
    }
}

/// Collects diagnostics while checking; the check fails if any were pushed.
pub struct Diagnostics<'a> {
    pub source: &'a SourceText,
    pub items: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(source: &'a SourceText) -> Self {
        Diagnostics {
            source,
            items: Vec::new(),
        }
    }

    pub fn push(
        &mut self,
        span: &Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.items.push(Diagnostic {
            location: self.source.location(span),
            key: key.into(),
            message: message.into(),
        });
    }
}
