//! Diagnostics that point into a TOML file: `FILE:LINE:COL: field.path: message`.
//!
//! Validation works on typed values and records the *field path* of each problem
//! (`sites[2].lan.prefixes[0]`); the [`Locator`] turns a path into a line and column by walking
//! the spanned document that `toml` parsed, so semantic errors point at the same place a syntax
//! error would.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the user named it.
    pub file: String,
    /// 1-based line and column; 0 when the problem has no place in the file.
    pub line: usize,
    pub col: usize,
    /// Dotted field path, e.g. `sites[1].lan.prefixes[0]`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        f.write_str(": ")?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Maps field paths to places in the source text.
#[derive(Debug, Default)]
pub struct Locator {
    /// (path, span of the key or array element, span of the value)
    entries: Vec<(String, Range<usize>, Range<usize>)>,
    line_starts: Vec<usize>,
    text: String,
}

impl Locator {
    /// Index `text`. A document that does not parse yields a locator that only knows offsets.
    pub fn new(text: &str) -> Locator {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let mut loc = Locator {
            entries: Vec::new(),
            line_starts,
            text: text.to_owned(),
        };
        if let Ok(doc) = DeTable::parse(text) {
            loc.walk_table("", doc.get_ref());
        }
        loc
    }

    fn walk_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            self.walk_value(path, key.span(), value);
        }
    }

    fn walk_value(
        &mut self,
        path: String,
        key_span: Range<usize>,
        value: &toml::Spanned<DeValue<'_>>,
    ) {
        self.entries.push((path.clone(), key_span, value.span()));
        match value.get_ref() {
            DeValue::Table(t) => self.walk_table(&path, t),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.walk_value(format!("{path}[{i}]"), item.span(), item);
                }
            }
            _ => {}
        }
    }

    /// Line and column (1-based) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset.min(self.text.len()))
            .map_or(1, |s| s.chars().count() + 1);
        (line, col)
    }

    /// Where the value at `path` starts; falls back to the nearest enclosing path that exists
    /// (a missing field points at its table), then to the top of the file.
    pub fn locate(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some((_, key, value)) = self.entries.iter().find(|(q, _, _)| q == p) {
                // Point at the value for leaves, at the key (or `[[header]]`) for tables.
                let off = if key.start < value.start {
                    value.start
                } else {
                    key.start
                };
                return self.line_col(off);
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return (1, 1),
            }
        }
    }

    /// The deepest known path whose key or value span holds `span`.
    pub fn path_at(&self, span: &Range<usize>) -> String {
        self.entries
            .iter()
            .filter(|(_, k, v)| contains(k, span) || contains(v, span))
            .max_by_key(|(p, _, _)| p.len())
            .map(|(p, _, _)| p.clone())
            .unwrap_or_default()
    }

    /// A diagnostic at `path`.
    pub fn diag(&self, file: &str, severity: Severity, path: &str, message: String) -> Diagnostic {
        let (line, col) = self.locate(path);
        Diagnostic {
            severity,
            file: file.to_owned(),
            line,
            col,
            path: path.to_owned(),
            message,
        }
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name = \"n\"\n\n[[sites]]\nname = \"a\"\n[sites.lan]\nprefixes = [\"10.0.0.0/24\", \"10.9.0.0/24\"]\n";

    #[test]
    fn locates_nested_paths() {
        let loc = Locator::new(DOC);
        assert_eq!(loc.locate("name"), (1, 8));
        assert_eq!(loc.locate("sites[0].name"), (4, 8));
        assert_eq!(loc.locate("sites[0].lan.prefixes[1]"), (6, 28));
        // Missing leaf: its table.
        assert_eq!(loc.locate("sites[0].lan.address").0, 5);
        assert_eq!(loc.locate("nowhere"), (1, 1));
    }

    #[test]
    fn finds_the_path_of_a_span() {
        let loc = Locator::new(DOC);
        let at = DOC.find("10.9").unwrap();
        assert_eq!(loc.path_at(&(at..at + 4)), "sites[0].lan.prefixes[1]");
    }

    #[test]
    fn display_has_the_documented_shape() {
        let loc = Locator::new(DOC);
        let d = loc.diag("net.toml", Severity::Error, "sites[0].name", "bad".into());
        assert_eq!(d.to_string(), "net.toml:4:8: sites[0].name: bad");
    }
}
