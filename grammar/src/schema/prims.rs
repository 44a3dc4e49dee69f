//! The JSON lexical pieces every schema shares: whitespace, string characters, numbers,
//! formats, and "any value". Every value expression ends with its own whitespace, so that
//! whitespace appears exactly once between two tokens (llama.cpp's convention), which keeps
//! the matcher's stack set small.

use crate::error::GrammarError;
use crate::rules::{Builder, ByteSet, Expr, range, union};
use alloc::vec;

fn set(lo: u8, hi: u8) -> Expr {
    Expr::Set(range(lo, hi))
}

fn byte(b: u8) -> Expr {
    set(b, b)
}

fn digits(min: u32, max: Option<u32>) -> Expr {
    Expr::repeat(set(b'0', b'9'), min, max)
}

fn hex() -> Expr {
    Expr::Set(union(
        union(range(b'0', b'9'), range(b'a', b'f')),
        range(b'A', b'F'),
    ))
}

/// Optional whitespace, bounded like llama.cpp's `space` rule (a space, or one or two
/// newlines and up to 20 spaces or tabs) so a model cannot stall on whitespace forever.
pub(crate) fn ws_expr() -> Expr {
    let indent = Expr::repeat(
        Expr::Set(union(range(b' ', b' '), range(b'\t', b'\t'))),
        0,
        Some(20),
    );
    Expr::opt(Expr::Alt(vec![
        byte(b' '),
        Expr::Seq(vec![byte(b'\n'), Expr::opt(byte(b'\n')), indent]),
    ]))
}

/// One character of a JSON string's contents: printable ASCII but `"` and `\`, an escape, or
/// a well-formed UTF-8 sequence of two to four bytes (no surrogates, no overlongs), so the
/// output is valid UTF-8 whichever tokens split it.
pub(crate) fn char_expr() -> Expr {
    let plain: ByteSet = union(
        union(range(0x20, 0x21), range(0x23, 0x5B)),
        range(0x5D, 0x7F),
    );
    let cont = || set(0x80, 0xBF);
    let escape = Expr::Seq(vec![
        byte(b'\\'),
        Expr::Alt(vec![
            Expr::Set(
                [b'"', b'\\', b'/', b'b', b'f', b'n', b'r', b't']
                    .iter()
                    .fold([0; 4], |s, &b| union(s, range(b, b))),
            ),
            Expr::Seq(vec![byte(b'u'), Expr::repeat(hex(), 4, Some(4))]),
        ]),
    ]);
    Expr::Alt(vec![
        Expr::Set(plain),
        escape,
        Expr::Seq(vec![set(0xC2, 0xDF), cont()]),
        Expr::Seq(vec![byte(0xE0), set(0xA0, 0xBF), cont()]),
        Expr::Seq(vec![set(0xE1, 0xEC), cont(), cont()]),
        Expr::Seq(vec![byte(0xED), set(0x80, 0x9F), cont()]),
        Expr::Seq(vec![set(0xEE, 0xEF), cont(), cont()]),
        Expr::Seq(vec![byte(0xF0), set(0x90, 0xBF), cont(), cont()]),
        Expr::Seq(vec![set(0xF1, 0xF3), cont(), cont(), cont()]),
        Expr::Seq(vec![byte(0xF4), set(0x80, 0x8F), cont(), cont()]),
    ])
}

/// An integer as JSON writes it, at most 16 digits (llama.cpp's bound).
pub(crate) fn integer_expr() -> Expr {
    Expr::Seq(vec![
        Expr::opt(byte(b'-')),
        Expr::Alt(vec![
            byte(b'0'),
            Expr::Seq(vec![set(b'1', b'9'), digits(0, Some(15))]),
        ]),
    ])
}

/// A number: an integer part, an optional fraction and an exponent of at most two digits
/// (so every number fits an `f64`: parsers such as serde_json refuse `1e400`).
pub(crate) fn number_expr() -> Expr {
    Expr::Seq(vec![
        integer_expr(),
        Expr::opt(Expr::Seq(vec![byte(b'.'), digits(1, None)])),
        Expr::opt(Expr::Seq(vec![
            Expr::Set(union(range(b'e', b'e'), range(b'E', b'E'))),
            Expr::opt(Expr::Set(union(range(b'-', b'-'), range(b'+', b'+')))),
            digits(1, Some(2)),
        ])),
    ])
}

fn two(lo: u8, hi: u8) -> Expr {
    Expr::Seq(vec![set(lo, hi), set(b'0', b'9')])
}

fn date() -> Expr {
    Expr::Seq(vec![
        digits(4, Some(4)),
        byte(b'-'),
        Expr::Alt(vec![
            Expr::Seq(vec![byte(b'0'), set(b'1', b'9')]),
            Expr::Seq(vec![byte(b'1'), set(b'0', b'2')]),
        ]),
        byte(b'-'),
        Expr::Alt(vec![
            Expr::Seq(vec![byte(b'0'), set(b'1', b'9')]),
            two(b'1', b'2'),
            Expr::Seq(vec![byte(b'3'), set(b'0', b'1')]),
        ]),
    ])
}

fn hour() -> Expr {
    Expr::Alt(vec![
        two(b'0', b'1'),
        Expr::Seq(vec![byte(b'2'), set(b'0', b'3')]),
    ])
}

fn time() -> Expr {
    Expr::Seq(vec![
        hour(),
        byte(b':'),
        two(b'0', b'5'),
        byte(b':'),
        two(b'0', b'5'),
        Expr::opt(Expr::Seq(vec![byte(b'.'), digits(1, Some(6))])),
        Expr::Alt(vec![
            byte(b'Z'),
            Expr::Seq(vec![
                Expr::Set(union(range(b'+', b'+'), range(b'-', b'-'))),
                hour(),
                byte(b':'),
                two(b'0', b'5'),
            ]),
        ]),
    ])
}

/// The contents (between the quotes) of a string in `format`, if the format is supported.
pub(crate) fn format_expr(format: &str) -> Option<Expr> {
    let h = |n| Expr::repeat(hex(), n, Some(n));
    Some(match format {
        "date" => date(),
        "time" => time(),
        "date-time" => Expr::Seq(vec![date(), byte(b'T'), time()]),
        "uuid" => Expr::Seq(vec![
            h(8),
            byte(b'-'),
            h(4),
            byte(b'-'),
            h(4),
            byte(b'-'),
            h(4),
            byte(b'-'),
            h(12),
        ]),
        _ => return None,
    })
}

/// Rules made once per grammar and shared by every schema position that needs them.
#[derive(Clone, Copy)]
pub(crate) struct Prims {
    pub(crate) ws: u32,
    /// One string character (for counted repetitions: one rule, not one per count).
    pub(crate) ch: u32,
    /// A whole string with no constraints, then whitespace.
    pub(crate) string: u32,
    /// Any JSON value, then whitespace.
    pub(crate) value: u32,
}

impl Prims {
    pub(crate) fn new(b: &mut Builder) -> Result<Self, GrammarError> {
        let ws = b.rule("ws", &ws_expr())?;
        let ch = b.rule("char", &char_expr())?;
        let quote = || Expr::lit("\"");
        let string = b.rule(
            "string",
            &Expr::Seq(vec![
                quote(),
                Expr::repeat(char_expr(), 0, None),
                quote(),
                Expr::Rule(ws),
            ]),
        )?;
        let value = b.declare("value");
        let p = Self {
            ws,
            ch,
            string,
            value,
        };
        let any_object = p.object_of(b, Expr::Rule(value))?;
        let any_array = p.array_of(Expr::Rule(value), 0, None);
        let word = |s: &str| Expr::Seq(vec![Expr::lit(s), Expr::Rule(ws)]);
        b.define(
            value,
            &Expr::Alt(vec![
                any_object,
                any_array,
                Expr::Rule(string),
                Expr::Seq(vec![number_expr(), Expr::Rule(ws)]),
                word("true"),
                word("false"),
                word("null"),
            ]),
        )?;
        Ok(p)
    }

    /// `x` then whitespace.
    pub(crate) fn tok(&self, x: Expr) -> Expr {
        Expr::Seq(vec![x, Expr::Rule(self.ws)])
    }

    /// An object with any keys, each value matching `value`.
    pub(crate) fn object_of(&self, b: &mut Builder, value: Expr) -> Result<Expr, GrammarError> {
        let kv = b.rule(
            "kv",
            &Expr::Seq(vec![
                Expr::Rule(self.string),
                self.tok(Expr::lit(":")),
                value,
            ]),
        )?;
        let more = Expr::repeat(
            Expr::Seq(vec![self.tok(Expr::lit(",")), Expr::Rule(kv)]),
            0,
            None,
        );
        Ok(Expr::Seq(vec![
            self.tok(Expr::lit("{")),
            Expr::opt(Expr::Seq(vec![Expr::Rule(kv), more])),
            self.tok(Expr::lit("}")),
        ]))
    }

    /// An array of `min..=max` items matching `item`.
    pub(crate) fn array_of(&self, item: Expr, min: u32, max: Option<u32>) -> Expr {
        let comma_item = Expr::Seq(vec![self.tok(Expr::lit(",")), item.clone()]);
        let items = match max {
            Some(0) => Expr::Seq(vec![]),
            _ => {
                let rest = Expr::repeat(
                    comma_item,
                    min.saturating_sub(1),
                    max.map(|m| m.saturating_sub(1)),
                );
                let some = Expr::Seq(vec![item, rest]);
                if min == 0 { Expr::opt(some) } else { some }
            }
        };
        Expr::Seq(vec![
            self.tok(Expr::lit("[")),
            items,
            self.tok(Expr::lit("]")),
        ])
    }
}
