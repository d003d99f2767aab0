//! hast.conf(5): lexer, parser and per-node resolution into a [`Config`].
//!
//! [`parse`] turns the text of a configuration file into the [`Config`] of one node, or
//! into every error found, each with its real line number. The syntax and the rules are
//! documented in `docs/hast.conf.5.md`. Nothing here touches the file system: the caller
//! reads the file and learns the node's identity (`hast::conf` does both).
//!
//! | file | job |
//! |---|---|
//! | `lexer.rs` | characters to tokens (words, numbers, quoted strings, braces) |
//! | `keyword.rs` | keywords, reserved words, where each keyword is allowed |
//! | `parser.rs` | tokens to a tree of blocks with checked values |
//! | `resolve.rs` | the tree to one node's [`Config`]: inheritance and defaults |
//! | `address.rs` | the address syntax (`tcp://`, `[v6]:port`, `unix://`, …) |
//! | `model.rs` | the resolved types |

mod address;
mod keyword;
mod lexer;
mod model;
mod parser;
mod resolve;
#[cfg(test)]
mod tests;

use std::fmt;

pub use address::{
    parse_address, parse_export_address, parse_source_address, AddressError, DEFAULT_NBD_PORT,
    MAX_UNIX_PATH,
};
pub use model::*;
pub use resolve::default_listen;

/// One error in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given to [`parse`].
    pub file: String,
    /// 1-based line number.
    pub line: u32,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Every error found in a configuration file, sorted by line. Displays as one
/// `FILE:LINE: message` per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// Never empty.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// Parses the configuration `text` (read from `file`, which only labels the errors) and
/// resolves it for `node`: globals inherited, the matching `on` blocks applied, defaults
/// filled in, every resource checked.
pub fn parse(text: &str, file: &str, node: &NodeIdentity) -> Result<Config, ConfigErrors> {
    let (tokens, lex_errors) = lexer::tokenize(text);
    let (tree, mut diags) = parser::parse_tokens(&tokens);
    diags.extend(lex_errors.into_iter().map(|e| (e.line, e.message)));
    // Resolve even after syntax errors, so that one run reports every problem. A bad
    // statement is still recorded as written, so it is not also reported as missing.
    let config = resolve::resolve(&tree, node, &mut diags);
    match config {
        Some(config) if diags.is_empty() => Ok(config),
        _ => {
            diags.sort_by_key(|&(line, _)| line);
            Err(ConfigErrors {
                diagnostics: diags
                    .into_iter()
                    .map(|(line, message)| Diagnostic {
                        file: file.to_string(),
                        line,
                        message,
                    })
                    .collect(),
            })
        }
    }
}
