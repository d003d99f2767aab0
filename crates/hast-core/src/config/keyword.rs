//! The statement keywords of hast.conf, the reserved words, and where each keyword may
//! appear (hast-reference.md §1.2, plus the Linux `export`).

use std::fmt;

/// A statement keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    Control,
    Pidfile,
    Listen,
    Replication,
    Checksum,
    Compression,
    Timeout,
    Exec,
    Fence,
    FenceTimeout,
    Metaflush,
    Syncrate,
    Authkey,
    Resource,
    Name,
    Local,
    Remote,
    Source,
    On,
    Export,
}

const KEYWORDS: &[(&str, Keyword)] = &[
    ("control", Keyword::Control),
    ("pidfile", Keyword::Pidfile),
    ("listen", Keyword::Listen),
    ("replication", Keyword::Replication),
    ("checksum", Keyword::Checksum),
    ("compression", Keyword::Compression),
    ("timeout", Keyword::Timeout),
    ("exec", Keyword::Exec),
    ("fence", Keyword::Fence),
    ("fence_timeout", Keyword::FenceTimeout),
    ("metaflush", Keyword::Metaflush),
    ("syncrate", Keyword::Syncrate),
    ("authkey", Keyword::Authkey),
    ("resource", Keyword::Resource),
    ("name", Keyword::Name),
    ("local", Keyword::Local),
    ("remote", Keyword::Remote),
    ("source", Keyword::Source),
    ("on", Keyword::On),
    ("export", Keyword::Export),
];

/// Value words that FreeBSD reserves (and our two additions), with the keyword they
/// belong to, so that a value written without its keyword gets a useful hint.
const VALUE_WORDS: &[(&str, &str)] = &[
    ("off", "metaflush"),
    ("fullsync", "replication"),
    ("memsync", "replication"),
    ("async", "replication"),
    ("none", "remote"),
    ("crc32", "checksum"),
    ("crc32c", "checksum"),
    ("sha256", "checksum"),
    ("hole", "compression"),
    ("lzf", "compression"),
    ("lz4", "compression"),
];

/// Where in the file a statement is: decides which keywords are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Top level.
    Global,
    /// A top-level `on <node> { … }`.
    Node,
    /// Directly inside `resource <name> { … }`.
    Resource,
    /// An `on <node> { … }` inside a resource.
    ResourceNode,
}

impl Scope {
    /// Where a statement is, phrased to follow "not".
    pub fn describe(self) -> &'static str {
        match self {
            Scope::Global => "at top level",
            Scope::Node => "inside a top-level 'on' block",
            Scope::Resource => "directly inside a 'resource' block",
            Scope::ResourceNode => "inside a resource's 'on' block",
        }
    }
}

impl Keyword {
    pub fn from_word(word: &str) -> Option<Keyword> {
        KEYWORDS.iter().find(|(w, _)| *w == word).map(|&(_, k)| k)
    }

    pub fn as_str(self) -> &'static str {
        KEYWORDS
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("?", |&(w, _)| w)
    }

    pub fn allowed_in(self, scope: Scope) -> bool {
        use Scope::*;
        match self {
            Keyword::Control | Keyword::Pidfile | Keyword::Listen => {
                matches!(scope, Global | Node)
            }
            Keyword::Replication
            | Keyword::Checksum
            | Keyword::Compression
            | Keyword::Timeout
            | Keyword::Exec
            | Keyword::Fence
            | Keyword::FenceTimeout
            | Keyword::Syncrate
            | Keyword::Authkey
            | Keyword::On => matches!(scope, Global | Resource),
            Keyword::Metaflush => matches!(scope, Global | Resource | ResourceNode),
            Keyword::Name | Keyword::Local | Keyword::Export => {
                matches!(scope, Resource | ResourceNode)
            }
            Keyword::Remote | Keyword::Source => scope == ResourceNode,
            Keyword::Resource => scope == Global,
        }
    }

    /// Where the keyword may appear, phrased to follow "is only allowed".
    pub fn placement(self) -> &'static str {
        match self {
            Keyword::Control | Keyword::Pidfile | Keyword::Listen => {
                "at top level or inside a top-level 'on <node>' block"
            }
            Keyword::Replication
            | Keyword::Checksum
            | Keyword::Compression
            | Keyword::Timeout
            | Keyword::Exec
            | Keyword::Fence
            | Keyword::FenceTimeout
            | Keyword::Syncrate
            | Keyword::Authkey => "at top level or directly inside a 'resource' block",
            Keyword::On => "at top level or directly inside a 'resource' block (not nested)",
            Keyword::Metaflush => {
                "at top level, inside a 'resource' block or inside a resource's 'on <node>' block"
            }
            Keyword::Name | Keyword::Local | Keyword::Export => {
                "inside a 'resource' block or a resource's 'on <node>' block"
            }
            Keyword::Remote | Keyword::Source => "inside an 'on <node>' block of a resource",
            Keyword::Resource => "at top level",
        }
    }

    /// What the argument is, for "needs …" messages.
    pub fn argument(self) -> &'static str {
        match self {
            Keyword::Control => "a UNIX socket path",
            Keyword::Pidfile | Keyword::Exec | Keyword::Fence | Keyword::Local => {
                "an absolute path"
            }
            Keyword::Authkey => "the absolute path of a key file",
            Keyword::Listen | Keyword::Source => "an address (host, host:port or tcp://host:port)",
            Keyword::Replication => "a mode (fullsync, memsync or async)",
            Keyword::Checksum => "an algorithm (none, crc32, crc32c or sha256)",
            Keyword::Compression => "an algorithm (none, hole, lzf or lz4)",
            Keyword::Timeout | Keyword::FenceTimeout => "a number of seconds",
            Keyword::Metaflush => "'on' or 'off'",
            Keyword::Syncrate => "a rate in bytes per second (e.g. 50M), or 0 for no limit",
            Keyword::Resource => "a resource name",
            Keyword::Name => "a provider name",
            Keyword::Remote => "an address or 'none'",
            Keyword::On => "a node name",
            Keyword::Export => "an address (unix:///path or tcp://host:port)",
        }
    }
}

impl fmt::Display for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// True for words FreeBSD's lexer reserves (plus `export`, `crc32c`, `lz4`): they cannot
/// be names or paths unless quoted.
pub(crate) fn is_reserved(word: &str) -> bool {
    Keyword::from_word(word).is_some() || VALUE_WORDS.iter().any(|(w, _)| *w == word)
}

/// A hint for a word that is not a keyword: the keyword a value belongs to, a keyword in
/// the wrong case, or a keyword one or two typos away.
pub(crate) fn suggest(word: &str) -> Option<String> {
    if let Some((_, kw)) = VALUE_WORDS.iter().find(|(w, _)| *w == word) {
        return Some(format!("did you mean '{kw} {word}'?"));
    }
    let lower = word.to_ascii_lowercase();
    if let Some(kw) = Keyword::from_word(&lower) {
        return Some(format!("keywords are lowercase: did you mean '{kw}'?"));
    }
    KEYWORDS
        .iter()
        .map(|&(w, _)| (edit_distance(&lower, w), w))
        .filter(|&(d, w)| d <= 2 && d < w.len() / 2 + 1)
        .min()
        .map(|(_, w)| format!("did you mean '{w}'?"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_keyword_round_trips() {
        for &(word, kw) in KEYWORDS {
            assert_eq!(Keyword::from_word(word), Some(kw));
            assert_eq!(kw.as_str(), word);
            assert!(is_reserved(word));
        }
        assert!(!is_reserved("locally"));
        assert!(is_reserved("lz4"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("Timeout").as_deref(),
            Some("keywords are lowercase: did you mean 'timeout'?")
        );
        assert_eq!(suggest("remtoe").as_deref(), Some("did you mean 'remote'?"));
        assert_eq!(
            suggest("fullsync").as_deref(),
            Some("did you mean 'replication fullsync'?")
        );
        assert_eq!(suggest("xyzzy"), None);
        assert_eq!(suggest("ab"), None);
    }
}
