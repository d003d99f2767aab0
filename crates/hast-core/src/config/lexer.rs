//! Tokens of hast.conf (FreeBSD's token.l, with real line numbers and quoted strings).

/// What a token is. Keywords are plain words here; the parser knows which words are
/// reserved, because whether a reserved word is acceptable depends on where it appears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// A run of ASCII letters, digits and `. - _ / : [ ]` that is not all digits.
    Word(String),
    /// A run of digits only. Kept as text so that an overlong number is reported by
    /// the statement that reads it, with a message about that statement.
    Number(String),
    /// `"…"`: any characters except `"` and newline. Never a keyword.
    Quoted(String),
    /// `{`
    Open,
    /// `}`
    Close,
}

/// One token and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    pub line: u32,
}

impl Token {
    /// The token as the user wrote it, for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            TokenKind::Word(w) | TokenKind::Number(w) => format!("'{w}'"),
            TokenKind::Quoted(s) => format!("\"{s}\""),
            TokenKind::Open => "'{'".to_string(),
            TokenKind::Close => "'}'".to_string(),
        }
    }
}

/// A character the lexer could not use, at its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LexError {
    pub line: u32,
    pub message: String,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':' | '[' | ']')
}

fn is_separator(c: char) -> bool {
    c.is_ascii_whitespace() || matches!(c, '{' | '}' | '#' | '"')
}

/// Splits `text` into tokens. Bad characters are reported and skipped so that the
/// parser can still report everything else that is wrong with the file.
pub(crate) fn tokenize(text: &str) -> (Vec<Token>, Vec<LexError>) {
    let mut tokens = Vec::new();
    let mut errors = Vec::new();
    let mut line: u32 = 1;
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            '\n' => line = line.saturating_add(1),
            c if c.is_ascii_whitespace() => {}
            '#' => while chars.next_if(|&(_, c)| c != '\n').is_some() {},
            '{' => tokens.push(Token {
                kind: TokenKind::Open,
                line,
            }),
            '}' => tokens.push(Token {
                kind: TokenKind::Close,
                line,
            }),
            '"' => {
                let mut value = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next_if(|&(_, c)| c != '\n') {
                    if c == '"' {
                        closed = true;
                        break;
                    }
                    value.push(c);
                }
                if closed {
                    tokens.push(Token {
                        kind: TokenKind::Quoted(value),
                        line,
                    });
                } else {
                    errors.push(LexError {
                        line,
                        message:
                            "unterminated quoted string: add the closing '\"' on the same line"
                                .to_string(),
                    });
                }
            }
            c => {
                // A run up to the next separator is one token even with bad characters in
                // it, so that `exec /bin/x@y` is one error, not also "unknown keyword 'y'".
                let mut end = start + c.len_utf8();
                while let Some((i, c)) = chars.next_if(|&(_, c)| !is_separator(c)) {
                    end = i + c.len_utf8();
                }
                let word = &text[start..end];
                if let Some(bad) = word.chars().find(|&c| !is_word_char(c)) {
                    errors.push(LexError {
                        line,
                        message: format!(
                            "unexpected character '{}': words may only contain letters, digits \
                             and . - _ / : [ ]; put other text in double quotes",
                            bad.escape_default()
                        ),
                    });
                }
                let kind = if word.bytes().all(|b| b.is_ascii_digit()) {
                    TokenKind::Number(word.to_string())
                } else {
                    TokenKind::Word(word.to_string())
                };
                tokens.push(Token { kind, line });
            }
        }
    }
    (tokens, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(TokenKind, u32)> {
        let (tokens, errors) = tokenize(text);
        assert!(errors.is_empty(), "{errors:?}");
        tokens.into_iter().map(|t| (t.kind, t.line)).collect()
    }

    fn word(w: &str) -> TokenKind {
        TokenKind::Word(w.to_string())
    }

    #[test]
    fn words_numbers_braces_and_lines() {
        assert_eq!(
            kinds("resource r0 {\n  timeout 20\n}\n"),
            vec![
                (word("resource"), 1),
                (word("r0"), 1),
                (TokenKind::Open, 1),
                (word("timeout"), 2),
                (TokenKind::Number("20".into()), 2),
                (TokenKind::Close, 3),
            ]
        );
    }

    #[test]
    fn braces_need_no_spaces() {
        assert_eq!(
            kinds("on a{remote b}"),
            vec![
                (word("on"), 1),
                (word("a"), 1),
                (TokenKind::Open, 1),
                (word("remote"), 1),
                (word("b"), 1),
                (TokenKind::Close, 1),
            ]
        );
    }

    #[test]
    fn comments_run_to_end_of_line() {
        assert_eq!(
            kinds("# a comment { }\nlisten x # more { \"\n#\n"),
            vec![(word("listen"), 2), (word("x"), 2)]
        );
    }

    #[test]
    fn word_characters_and_mixed_digits() {
        assert_eq!(
            kinds("tcp://[::1]:8457 /dev/a_b-c.d 12ab 007"),
            vec![
                (word("tcp://[::1]:8457"), 1),
                (word("/dev/a_b-c.d"), 1),
                (word("12ab"), 1),
                (TokenKind::Number("007".into()), 1),
            ]
        );
    }

    #[test]
    fn quoted_strings_keep_spaces_and_are_not_keywords() {
        assert_eq!(
            kinds("local \"/srv/my disk.img\"\n\"\""),
            vec![
                (word("local"), 1),
                (TokenKind::Quoted("/srv/my disk.img".into()), 1),
                (TokenKind::Quoted(String::new()), 2),
            ]
        );
    }

    #[test]
    fn crlf_and_tabs_are_whitespace() {
        assert_eq!(kinds("a\r\n\tb\r\n"), vec![(word("a"), 1), (word("b"), 2)]);
    }

    #[test]
    fn bad_characters_are_reported_at_their_line_and_kept_in_their_word() {
        let (tokens, errors) = tokenize("a\nb@c\n x=y é\n");
        let lines: Vec<u32> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 3]);
        assert!(errors[0].message.starts_with("unexpected character '@'"));
        assert!(errors[1].message.starts_with("unexpected character '='"));
        assert!(errors[2]
            .message
            .starts_with("unexpected character '\\u{e9}'"));
        assert_eq!(tokens[1].kind, word("b@c"));
        assert_eq!(tokens.len(), 4);
    }

    #[test]
    fn unterminated_quote_is_an_error_on_its_line() {
        let (tokens, errors) = tokenize("a\nlocal \"/x\nb");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
        assert!(errors[0].message.contains("unterminated quoted string"));
        assert_eq!(tokens.last().map(|t| t.line), Some(3));
    }
}
