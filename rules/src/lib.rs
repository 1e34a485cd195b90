//! Rialto's rules: what the border node owns and where it sends it.
//!
//! The control plane parses and validates here, and compiles what it read
//! into `rialto-tables`' [`Snapshot`] (re-exported here), which the
//! dataplane only indexes.

mod compile;
pub mod config;
pub mod k8s;

pub use compile::{Budget, CompileError, MAX_MTU, Problem, compile};
pub use rialto_tables::*;

use std::fmt;

/// The largest file a config may import.
pub const MAX_IMPORT_BYTES: u64 = 16 << 20;

/// [`load_for`] one worker, against the config's own memory cap.
pub fn load(file: &str, text: &str) -> Result<Snapshot, Rejected> {
    load_for(file, text, &Budget::OFFLINE)
}

/// Parses and compiles the config `text`, read from `file`, with the
/// Kubernetes files it imports (paths relative to `file`'s directory), for
/// `budget`: the snapshot, or every problem found, each with its place.
pub fn load_for(file: &str, text: &str, budget: &Budget) -> Result<Snapshot, Rejected> {
    let located = |span: Option<std::ops::Range<usize>>, message: String| {
        let (line, column) = span.map_or((0, 0), |s| line_column(text, s.start));
        Located {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    };
    let mut config = match config::Config::parse(text) {
        Ok(config) => config,
        Err(e) => {
            let field = e.span.as_ref().and_then(|s| field_before(text, s.start));
            let message = match field {
                Some(field) => format!("{field}: {}", e.message),
                None => e.message,
            };
            return Err(Rejected {
                problems: vec![located(e.span, message)],
            });
        }
    };
    let dir = std::path::Path::new(file)
        .parent()
        .unwrap_or(std::path::Path::new(""));
    let mut problems = Vec::new();
    if let Some(fleet) = &mut config.fleet {
        fleet.key = Some(read_key(&dir.join(fleet.key_file.get_ref())));
    }
    for import in &config.imports {
        let path = dir.join(import.file.get_ref());
        let imported = read_import(&path).and_then(|yaml| k8s::import(&yaml, import.file.span()));
        match imported {
            Ok(services) => config
                .services
                .extend(services.into_iter().map(|s| config::Service {
                    check: import.check.clone(),
                    ..s
                })),
            // At the config's `file =`, naming the place in the imported file.
            Err(e) => {
                let place = match e.line {
                    0 => path.display().to_string(),
                    line => format!("{}:{line}:{}", path.display(), e.column),
                };
                let message = format!("import: {place}: {}", e.message);
                problems.push(located(Some(import.file.span()), message));
            }
        }
    }
    if problems.is_empty() {
        match compile(&config, budget) {
            Ok(snapshot) => return Ok(snapshot),
            Err(compiled) => problems.extend(
                compiled
                    .into_iter()
                    .map(|p| located(Some(p.span), p.error.to_string())),
            ),
        }
    }
    Err(Rejected { problems })
}

/// An imported file's text: a regular file of at most [`MAX_IMPORT_BYTES`].
fn read_import(path: &std::path::Path) -> Result<String, k8s::ImportError> {
    use std::io::Read as _;
    let cannot = |why: String| k8s::ImportError::at(why);
    let file = std::fs::File::open(path).map_err(|e| cannot(format!("cannot read it: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| cannot(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(cannot("not a regular file".to_owned()));
    }
    let mut text = String::new();
    file.take(MAX_IMPORT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| cannot(format!("cannot read it: {e}")))?;
    if text.len() as u64 > MAX_IMPORT_BYTES {
        return Err(cannot(format!(
            "larger than {} MiB, the most an import may be",
            MAX_IMPORT_BYTES >> 20
        )));
    }
    Ok(text)
}

/// The smallest fleet key, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// A fleet's shared key: a file holding it in hex, at least
/// [`MIN_KEY_BYTES`] bytes.
fn read_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    let hex = text.trim();
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let key: Option<Vec<u8>> = hex
        .len()
        .is_multiple_of(2)
        .then(|| {
            (hex.as_bytes().chunks(2))
                .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
                .collect()
        })
        .flatten();
    match key {
        None => Err(format!(
            "{}: not a key in hex (openssl rand -hex 32 writes one)",
            path.display()
        )),
        Some(key) if key.len() < MIN_KEY_BYTES => Err(format!(
            "{}: a key of {} bytes is too short: expected {MIN_KEY_BYTES} at least",
            path.display(),
            key.len()
        )),
        Some(key) => Ok(key),
    }
}

/// The key whose value starts at byte `offset` (`key = value` on one line,
/// also inside an inline table), if the text there is one.
fn field_before(text: &str, offset: usize) -> Option<&str> {
    let before = text[..offset.min(text.len())].trim_end();
    let key = before.strip_suffix('=')?.trim_end();
    let start = key
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .map_or(0, |i| i + 1);
    Some(&key[start..]).filter(|k| !k.is_empty())
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// A config that was not accepted, and why.
#[derive(Debug, thiserror::Error)]
pub struct Rejected {
    pub problems: Vec<Located>,
}

/// One problem of a rejected config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The config file, or a file it imports.
    pub file: String,
    /// 1-based; 0 when the parser could not tell where.
    pub line: usize,
    pub column: usize,
    /// The field, then the reason.
    pub message: String,
}

impl fmt::Display for Rejected {
    /// One line per problem: `FILE:LINE:COLUMN: field: reason`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", p.file, p.line, p.column, p.message)?;
        }
        Ok(())
    }
}
