//! hast.conf(5): lexer, parser and per-node resolution into a [`Config`].

mod model;

pub use model::*;
