//! hast.conf grammar: tokens to a tree of blocks with typed, checked values.
//!
//! The parser checks everything that does not depend on which node reads the file
//! (syntax, placement, values, duplicates), so that both nodes see the same errors;
//! `resolve.rs` then picks this node's view. It never stops at the first error: a bad
//! statement is skipped and parsing goes on, so one run reports every mistake.

use std::path::PathBuf;

use super::address::{parse_address, parse_export_address, parse_source_address};
use super::keyword::{is_reserved, suggest, Keyword, Scope};
use super::lexer::{Token, TokenKind};
use super::model::{Address, Checksum, Compression, ReplicationMode};

/// A value and the line it was written on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item<T> {
    pub value: T,
    pub line: u32,
}

/// An address together with the text it was written as (`hastctl status` shows the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Written<A> {
    pub address: A,
    pub text: String,
}

/// The settings of one block. Which fields can be set depends on the block's [`Scope`],
/// which the parser enforced.
#[derive(Debug, Default)]
pub(crate) struct Section {
    pub control: Option<Item<Address>>,
    pub pidfile: Option<Item<PathBuf>>,
    pub listen: Vec<Item<Address>>,
    pub replication: Option<Item<ReplicationMode>>,
    pub checksum: Option<Item<Checksum>>,
    pub compression: Option<Item<Compression>>,
    pub timeout: Option<Item<u32>>,
    pub exec: Option<Item<PathBuf>>,
    pub fence: Option<Item<PathBuf>>,
    pub fence_timeout: Option<Item<u32>>,
    pub metaflush: Option<Item<bool>>,
    pub syncrate: Option<Item<u64>>,
    pub authkey: Option<Item<PathBuf>>,
    pub name: Option<Item<String>>,
    pub local: Option<Item<PathBuf>>,
    pub remote: Option<Item<Written<Option<Address>>>>,
    pub source: Option<Item<Written<Address>>>,
    pub export: Option<Item<Address>>,
    /// Every keyword written here with its first line, valid value or not: finds
    /// duplicates, and keeps a bad `remote` from also being reported as a missing one.
    seen: Vec<(Keyword, u32)>,
}

impl Section {
    pub fn has(&self, keyword: Keyword) -> bool {
        self.seen.iter().any(|&(k, _)| k == keyword)
    }
}

/// The top level, a resource, or an `on` block. Only the top level has resources; only
/// the top level and resources have `on` blocks.
#[derive(Debug, Default)]
pub(crate) struct Block {
    pub name: String,
    pub line: u32,
    pub section: Section,
    pub nodes: Vec<Block>,
    pub resources: Vec<Block>,
}

/// Errors as (line, message), in the order found.
pub(crate) type Diags = Vec<(u32, String)>;

/// Parses a whole file. The tree is returned even when there are errors.
pub(crate) fn parse_tokens(tokens: &[Token]) -> (Block, Diags) {
    let mut parser = Parser {
        tokens,
        pos: 0,
        diags: Vec::new(),
    };
    let mut top = Block::default();
    parser.block_body(Scope::Global, &mut top, None);
    (top, parser.diags)
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    diags: Diags,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += usize::from(token.is_some());
        token
    }

    fn error(&mut self, line: u32, message: impl Into<String>) {
        self.diags.push((line, message.into()));
    }

    /// Statements up to the `}` that closes the block opened on line `open`
    /// (`None`: the top level, which ends at end of file).
    fn block_body(&mut self, scope: Scope, block: &mut Block, open: Option<u32>) {
        loop {
            let Some(token) = self.next() else {
                if let Some(line) = open {
                    self.error(
                        line,
                        format!(
                            "unexpected end of file: the '{{' opened on this line is never \
                             closed; add a matching '}}'{}",
                            block_label(block)
                        ),
                    );
                }
                return;
            };
            let line = token.line;
            match token.kind {
                TokenKind::Close if open.is_some() => return,
                TokenKind::Close => {
                    self.error(line, "unexpected '}' without a matching '{'; remove it");
                }
                TokenKind::Open => {
                    self.error(
                        line,
                        "unexpected '{': a block starts with 'resource <name> {' or 'on <node> {'",
                    );
                    self.skip_block(line);
                }
                TokenKind::Number(_) | TokenKind::Quoted(_) => {
                    self.error(
                        line,
                        format!("expected a keyword, found {}", token.describe()),
                    );
                }
                TokenKind::Word(word) => match Keyword::from_word(&word) {
                    None => self.unknown_keyword(&word, line),
                    Some(Keyword::Resource) => self.resource(scope, block, line),
                    Some(Keyword::On) => self.on_block(scope, block, line),
                    Some(keyword) => self.statement(keyword, scope, &mut block.section, line),
                },
            }
        }
    }

    fn unknown_keyword(&mut self, word: &str, line: u32) {
        let mut message = format!("unknown keyword '{word}'");
        if let Some(hint) = suggest(word) {
            message = format!("{message}: {hint}");
        }
        self.error(line, message);
        // Its arguments on the same line, and a block after them, belong to the mistake:
        // skipping them keeps one typo from producing a cascade of errors.
        while let Some(t) = self.peek() {
            if t.line != line || !is_value(t, None) {
                break;
            }
            self.pos += 1;
        }
        if let Some(t) = self.peek().filter(|t| t.kind == TokenKind::Open) {
            let open = t.line;
            self.pos += 1;
            self.skip_block(open);
        }
    }

    /// Skips to the `}` matching a `{` already consumed on line `open`.
    fn skip_block(&mut self, open: u32) {
        let mut depth = 1usize;
        while let Some(token) = self.next() {
            match token.kind {
                TokenKind::Open => depth += 1,
                TokenKind::Close => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                return;
            }
        }
        self.error(
            open,
            "unexpected end of file: the '{' opened on this line is never closed; add a \
             matching '}'",
        );
    }

    /// The argument of `keyword`, if the next token can be one.
    fn argument(&mut self, keyword: Keyword, line: u32) -> Option<Token> {
        match self.peek() {
            Some(t) if is_value(t, Some(keyword)) => self.next(),
            Some(t) => {
                let found = t.describe();
                self.error(
                    line,
                    format!("'{keyword}' needs {}, found {found}", keyword.argument()),
                );
                None
            }
            None => {
                self.error(
                    line,
                    format!(
                        "unexpected end of file: '{keyword}' needs {}",
                        keyword.argument()
                    ),
                );
                None
            }
        }
    }

    /// `resource <name> {` or `on <node> {`: the name, and whether the `{` follows.
    fn block_head(&mut self, keyword: Keyword, line: u32) -> Option<(String, u32)> {
        let token = match self.peek().map(|t| &t.kind) {
            Some(TokenKind::Open) => {
                self.error(
                    line,
                    format!("'{keyword}' needs {} before '{{'", keyword.argument()),
                );
                None
            }
            // Any word is taken as the name, even a keyword: "'local' is a reserved word"
            // says more than "'resource' needs a name, found 'local'".
            Some(TokenKind::Word(_)) => self.next(),
            _ => Some(self.argument(keyword, line)?),
        };
        let name = match token.map(|t| (text_argument(&t, keyword.argument()), t.line)) {
            Some((Ok(name), _)) => name,
            Some((Err(message), at)) => {
                self.error(at, message);
                String::new()
            }
            None => String::new(),
        };
        match self.peek() {
            Some(t) if t.kind == TokenKind::Open => {
                let open = t.line;
                self.pos += 1;
                Some((name, open))
            }
            Some(t) => {
                let found = t.describe();
                self.error(
                    line,
                    format!("expected '{{' after '{keyword} {name}', found {found}"),
                );
                None
            }
            None => {
                self.error(
                    line,
                    format!("unexpected end of file: expected '{{' after '{keyword} {name}'"),
                );
                None
            }
        }
    }

    fn resource(&mut self, scope: Scope, parent: &mut Block, line: u32) {
        let Some((name, open)) = self.block_head(Keyword::Resource, line) else {
            return;
        };
        let mut block = Block {
            name,
            line,
            ..Block::default()
        };
        let mut keep = !block.name.is_empty();
        if scope != Scope::Global {
            self.error(
                line,
                format!(
                    "'resource' blocks are only allowed at top level, not {} (is a '}}' \
                     missing before this line?)",
                    scope.describe()
                ),
            );
            keep = false;
        } else if block.name.is_empty() {
            // Already reported by block_head.
        } else if let Err(message) = check_name(&block.name) {
            self.error(line, format!("resource name {message}"));
            keep = false;
        } else if let Some(first) = parent.resources.iter().find(|r| r.name == block.name) {
            let message = format!(
                "resource '{}' is already defined on line {}; resource names must be unique",
                block.name, first.line
            );
            self.error(line, message);
            keep = false;
        }
        self.block_body(Scope::Resource, &mut block, Some(open));
        if keep {
            parent.resources.push(block);
        }
    }

    fn on_block(&mut self, scope: Scope, parent: &mut Block, line: u32) {
        let Some((name, open)) = self.block_head(Keyword::On, line) else {
            return;
        };
        let mut block = Block {
            name,
            line,
            ..Block::default()
        };
        let inner = match scope {
            Scope::Global => Scope::Node,
            _ => Scope::ResourceNode,
        };
        let mut keep = !block.name.is_empty();
        if !Keyword::On.allowed_in(scope) {
            self.error(
                line,
                "'on' blocks cannot be nested inside another 'on' block (is a '}' missing \
                 before this line?)",
            );
            keep = false;
        } else if let Some(first) = parent.nodes.iter().find(|n| n.name == block.name) {
            let message = format!(
                "there is already an 'on {}' block on line {} {}; merge the two blocks",
                block.name,
                first.line,
                match scope {
                    Scope::Global => "at top level".to_string(),
                    _ => format!("in resource '{}'", parent.name),
                }
            );
            self.error(line, message);
            keep = false;
        }
        self.block_body(inner, &mut block, Some(open));
        if keep {
            parent.nodes.push(block);
        }
    }

    fn statement(&mut self, keyword: Keyword, scope: Scope, section: &mut Section, line: u32) {
        let Some(token) = self.argument(keyword, line) else {
            return;
        };
        if !keyword.allowed_in(scope) {
            self.error(
                line,
                format!(
                    "'{keyword}' is only allowed {}, not {}",
                    keyword.placement(),
                    scope.describe()
                ),
            );
            return;
        }
        if keyword != Keyword::Listen {
            if let Some(&(_, first)) = section.seen.iter().find(|&&(k, _)| k == keyword) {
                self.error(
                    line,
                    format!(
                        "'{keyword}' is already set on line {first} in this block; remove \
                         one of them (FreeBSD would silently use the last one)"
                    ),
                );
                return;
            }
        }
        section.seen.push((keyword, line));
        if let Err(message) = store(keyword, &token, section) {
            self.error(token.line, message);
        }
    }
}

/// True if the token can be the argument of `keyword`. A statement keyword cannot (it
/// starts the next statement; taking it would hide a missing value), except `on` after
/// `metaflush`.
fn is_value(token: &Token, keyword: Option<Keyword>) -> bool {
    match &token.kind {
        TokenKind::Word(w) => match Keyword::from_word(w) {
            None => true,
            Some(k) => k == Keyword::On && keyword == Some(Keyword::Metaflush),
        },
        TokenKind::Number(_) | TokenKind::Quoted(_) => true,
        TokenKind::Open | TokenKind::Close => false,
    }
}

fn block_label(block: &Block) -> String {
    if block.name.is_empty() {
        String::new()
    } else {
        format!(" to close '{}'", block.name)
    }
}

/// The text of an argument that names something. Reserved words are refused as FreeBSD
/// does, but quoting lifts that: `on "local" { … }` matches a host called `local`.
fn text_argument(token: &Token, what: &str) -> Result<String, String> {
    match &token.kind {
        TokenKind::Word(w) if is_reserved(w) => Err(format!(
            "'{w}' is a reserved word and cannot be used as {what}; write \"{w}\" in double \
             quotes if you mean it"
        )),
        TokenKind::Word(w) | TokenKind::Number(w) | TokenKind::Quoted(w) if !w.is_empty() => {
            Ok(w.clone())
        }
        _ => Err(format!("expected {what}, found {}", token.describe())),
    }
}

/// The raw text of a value word (`memsync`, `on`, `20`), quoted or not.
fn raw_text(token: &Token) -> &str {
    match &token.kind {
        TokenKind::Word(w) | TokenKind::Number(w) | TokenKind::Quoted(w) => w,
        TokenKind::Open | TokenKind::Close => "",
    }
}

/// Converts and stores the argument of `keyword`; the message says what is wrong.
fn store(keyword: Keyword, token: &Token, section: &mut Section) -> Result<(), String> {
    let line = token.line;
    let raw = raw_text(token);
    match keyword {
        Keyword::Control => {
            let text = text_argument(token, keyword.argument())?;
            match parse_address(&text) {
                Ok(address @ Address::Unix(_)) => section.control = Some(item(address, line)),
                Ok(Address::Tcp { .. }) => {
                    return Err(format!(
                        "'control' must be a UNIX socket (unix:///path or /path), got '{text}': \
                         a TCP control socket would let anyone on the network change roles"
                    ))
                }
                Err(e) => return Err(format!("bad control address: {e}")),
            }
        }
        Keyword::Pidfile => section.pidfile = Some(item(absolute_path(keyword, token)?, line)),
        Keyword::Exec => section.exec = Some(item(absolute_path(keyword, token)?, line)),
        Keyword::Fence => section.fence = Some(item(absolute_path(keyword, token)?, line)),
        Keyword::Authkey => section.authkey = Some(item(absolute_path(keyword, token)?, line)),
        Keyword::Local => section.local = Some(item(absolute_path(keyword, token)?, line)),
        Keyword::Listen => {
            let (address, _) = tcp_address(keyword, token, parse_address)?;
            section.listen.push(item(address, line));
        }
        Keyword::Source => {
            let (address, text) = tcp_address(keyword, token, parse_source_address)?;
            section.source = Some(item(Written { address, text }, line));
        }
        Keyword::Remote => {
            let written = if token.kind == TokenKind::Word("none".into()) {
                Written {
                    address: None,
                    text: "none".to_string(),
                }
            } else {
                let (address, text) = tcp_address(keyword, token, parse_address)?;
                Written {
                    address: Some(address),
                    text,
                }
            };
            section.remote = Some(item(written, line));
        }
        Keyword::Export => {
            let text = text_argument(token, keyword.argument())?;
            let address =
                parse_export_address(&text).map_err(|e| format!("bad export address: {e}"))?;
            section.export = Some(item(address, line));
        }
        Keyword::Replication => {
            let mode = choice(
                raw,
                ReplicationMode::from_keyword,
                "replication mode",
                "fullsync, memsync or async",
            )?;
            section.replication = Some(item(mode, line));
        }
        Keyword::Checksum => {
            section.checksum = Some(item(
                choice(
                    raw,
                    Checksum::from_keyword,
                    "checksum",
                    "none, crc32, crc32c or sha256",
                )?,
                line,
            ));
        }
        Keyword::Compression => {
            let comp = choice(
                raw,
                Compression::from_keyword,
                "compression",
                "none, hole, lzf or lz4",
            )?;
            section.compression = Some(item(comp, line));
        }
        Keyword::Metaflush => {
            let flag = match raw {
                "on" => true,
                "off" => false,
                _ => return Err(format!("metaflush must be 'on' or 'off', got '{raw}'")),
            };
            section.metaflush = Some(item(flag, line));
        }
        Keyword::Timeout => {
            let secs = seconds(keyword, token, crate::config::model::DEFAULT_TIMEOUT_SECS)?;
            section.timeout = Some(item(secs, line));
        }
        Keyword::FenceTimeout => {
            let secs = seconds(
                keyword,
                token,
                crate::config::model::DEFAULT_FENCE_TIMEOUT_SECS,
            )?;
            section.fence_timeout = Some(item(secs, line));
        }
        Keyword::Syncrate => {
            let text = match &token.kind {
                TokenKind::Number(digits) => digits.clone(),
                _ => text_argument(token, keyword.argument())?,
            };
            let rate = crate::units::parse_size(&text)
                .map_err(|_| format!("syncrate must be {}, got '{text}'", keyword.argument()))?;
            section.syncrate = Some(item(rate, line));
        }
        Keyword::Name => {
            let name = text_argument(token, keyword.argument())?;
            check_name(&name).map_err(|m| format!("provider name {m}"))?;
            section.name = Some(item(name, line));
        }
        Keyword::Resource | Keyword::On => {}
    }
    Ok(())
}

/// One of the words of an enumeration; the message lists them all.
fn choice<T>(
    raw: &str,
    parse: fn(&str) -> Option<T>,
    what: &str,
    words: &str,
) -> Result<T, String> {
    parse(raw).ok_or_else(|| format!("unknown {what} '{raw}' (expected {words})"))
}

fn item<T>(value: T, line: u32) -> Item<T> {
    Item { value, line }
}

fn seconds(keyword: Keyword, token: &Token, default: u32) -> Result<u32, String> {
    let TokenKind::Number(digits) = &token.kind else {
        return Err(format!(
            "{keyword} must be a whole number of seconds greater than zero, got {}",
            token.describe()
        ));
    };
    match digits.parse::<u32>() {
        Ok(0) => Err(format!(
            "{keyword} must be greater than zero (it is in seconds; the default is {default})"
        )),
        Ok(secs) => Ok(secs),
        Err(_) => Err(format!(
            "{keyword} {digits} is too large (at most {} seconds)",
            u32::MAX
        )),
    }
}

fn absolute_path(keyword: Keyword, token: &Token) -> Result<PathBuf, String> {
    let text = text_argument(token, "a path")?;
    if !text.starts_with('/') {
        return Err(format!(
            "'{keyword}' must be an absolute path, got '{text}' (hastd runs in '/', so a \
             relative path would point somewhere else)"
        ));
    }
    if text.contains('\0') {
        return Err(format!("'{keyword}' path contains a NUL character"));
    }
    Ok(PathBuf::from(text))
}

/// A peer-link address: TCP only, since the replication protocol runs over TCP.
fn tcp_address(
    keyword: Keyword,
    token: &Token,
    parse: fn(&str) -> Result<Address, super::AddressError>,
) -> Result<(Address, String), String> {
    let text = text_argument(token, keyword.argument())?;
    match parse(&text) {
        Ok(address @ Address::Tcp { .. }) => Ok((address, text)),
        Ok(Address::Unix(_)) => Err(format!(
            "'{keyword}' needs a TCP address (host, host:port or tcp://host:port), got the \
             UNIX socket '{text}'"
        )),
        Err(e) => Err(format!("bad {keyword} address: {e}")),
    }
}

/// Resource and provider names end up in file names (`/run/hast/<name>.sock`) and in
/// the NBD export name.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_string());
    }
    if name == "." || name == ".." || name.contains('/') {
        return Err(format!("'{name}' must not contain '/' or be '.' or '..'"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "'{}' must not contain spaces or control characters",
            name.escape_default()
        ));
    }
    Ok(())
}
