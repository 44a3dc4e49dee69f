//! The grammar the matcher runs: rules of alternatives, each a flat sequence of byte sets
//! and rule references, in one array.
//!
//! Expressions ([`Expr`]) are what the schema compiler writes; [`Builder`] lowers them into
//! rules. Two choices keep the matcher fast: a `*` repetition over alternatives is spread
//! into the loop rule itself (`S ::= a S | b S | ""`), so a string's characters loop without
//! pushing a stack frame; and a rule reference in last position is a tail call (see
//! `matcher.rs`). Left recursion would make the matcher expand forever, so [`Builder::finish`]
//! refuses it (a schema can only write it through `$ref`).

use crate::error::GrammarError;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// 256 bits: which bytes an element accepts.
pub(crate) type ByteSet = [u64; 4];

pub(crate) fn set_has(s: &ByteSet, b: u8) -> bool {
    s[usize::from(b >> 6)] >> (b & 63) & 1 == 1
}

/// The bytes `lo..=hi`.
pub(crate) const fn range(lo: u8, hi: u8) -> ByteSet {
    let mut s = [0u64; 4];
    let mut b = lo as usize;
    while b <= hi as usize {
        s[b >> 6] |= 1 << (b & 63);
        b += 1;
    }
    s
}

pub(crate) fn union(a: ByteSet, b: ByteSet) -> ByteSet {
    [a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]]
}

/// One element of a rule's alternative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    /// One byte from `sets[i]`.
    Bytes(u32),
    /// The rule with this id.
    Rule(u32),
    /// The end of an alternative.
    End,
}

/// Rules ready for matching. Built by the schema compiler; see [`crate::compile_schema`].
#[derive(Debug, Clone)]
pub struct Grammar {
    pub(crate) elems: Vec<Elem>,
    pub(crate) sets: Vec<ByteSet>,
    /// Each rule's alternatives, as positions in `elems`.
    pub(crate) alts: Vec<Vec<u32>>,
    /// Position of `root End`: the matcher starts by calling the root rule from there.
    pub(crate) call_root: u32,
}

impl Grammar {
    /// Number of rules (for tests and diagnostics).
    pub fn rule_count(&self) -> usize {
        self.alts.len()
    }

    /// The bytes the element at `pos` accepts (none unless it is a byte set).
    pub(crate) fn head_set(&self, pos: u32) -> ByteSet {
        match self.elems.get(pos as usize) {
            Some(Elem::Bytes(s)) => self.sets.get(*s as usize).copied().unwrap_or([0; 4]),
            _ => [0; 4],
        }
    }
}

/// What the compiler writes: a regular-expression-like tree over bytes and rules.
#[derive(Clone, Debug)]
pub(crate) enum Expr {
    Set(ByteSet),
    Lit(Vec<u8>),
    Rule(u32),
    Seq(Vec<Expr>),
    Alt(Vec<Expr>),
    Opt(Box<Expr>),
    /// `min` to `max` (unbounded: `None`) copies.
    Repeat(Box<Expr>, u32, Option<u32>),
}

use alloc::boxed::Box;

impl Expr {
    pub(crate) fn lit(s: &str) -> Expr {
        Expr::Lit(s.as_bytes().to_vec())
    }
    pub(crate) fn opt(e: Expr) -> Expr {
        Expr::Opt(Box::new(e))
    }
    pub(crate) fn repeat(e: Expr, min: u32, max: Option<u32>) -> Expr {
        Expr::Repeat(Box::new(e), min, max)
    }
}

/// Grammars past this many elements are refused (a schema with huge counts or fan-out).
const MAX_ELEMS: usize = 2_000_000;

/// Lowers expressions into rules.
pub(crate) struct Builder {
    g: Grammar,
    set_ids: BTreeMap<ByteSet, u32>,
    /// Rule names for errors (a JSON pointer or a helper's name).
    names: Vec<String>,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            g: Grammar {
                elems: Vec::new(),
                sets: Vec::new(),
                alts: Vec::new(),
                call_root: 0,
            },
            set_ids: BTreeMap::new(),
            names: Vec::new(),
        }
    }

    /// A new rule with no alternatives yet; [`define`](Self::define) gives them.
    pub(crate) fn declare(&mut self, name: &str) -> u32 {
        self.g.alts.push(Vec::new());
        self.names.push(name.into());
        (self.g.alts.len() - 1) as u32
    }

    /// Gives rule `r` the alternatives of `e` (a top-level `Alt` is split into them).
    pub(crate) fn define(&mut self, r: u32, e: &Expr) -> Result<(), GrammarError> {
        let alts: Vec<&Expr> = match e {
            Expr::Alt(v) => v.iter().collect(),
            e => vec![e],
        };
        let mut seqs = Vec::with_capacity(alts.len());
        for a in alts {
            let mut seq = Vec::new();
            self.lower(a, &mut seq)?;
            seqs.push(seq);
        }
        self.add_alts(r, seqs)
    }

    /// A new rule defined as `e`.
    pub(crate) fn rule(&mut self, name: &str, e: &Expr) -> Result<u32, GrammarError> {
        let r = self.declare(name);
        self.define(r, e)?;
        Ok(r)
    }

    fn add_alts(&mut self, r: u32, seqs: Vec<Vec<Elem>>) -> Result<(), GrammarError> {
        for seq in seqs {
            let start = self.g.elems.len() as u32;
            self.g.elems.extend(seq);
            self.g.elems.push(Elem::End);
            self.g.alts[r as usize].push(start);
        }
        if self.g.elems.len() > MAX_ELEMS {
            return Err(GrammarError::TooLarge);
        }
        Ok(())
    }

    fn set(&mut self, s: ByteSet) -> Elem {
        let next = self.g.sets.len() as u32;
        let id = *self.set_ids.entry(s).or_insert(next);
        if id == next {
            self.g.sets.push(s);
        }
        Elem::Bytes(id)
    }

    /// Appends `e` as a sequence of elements to `out`, making helper rules as needed.
    fn lower(&mut self, e: &Expr, out: &mut Vec<Elem>) -> Result<(), GrammarError> {
        if out.len() > MAX_ELEMS {
            return Err(GrammarError::TooLarge);
        }
        match e {
            Expr::Set(s) => out.push(self.set(*s)),
            Expr::Lit(bytes) => {
                for &b in bytes {
                    out.push(self.set(range(b, b)));
                }
            }
            Expr::Rule(r) => out.push(Elem::Rule(*r)),
            Expr::Seq(v) => {
                for x in v {
                    self.lower(x, out)?;
                }
            }
            Expr::Alt(v) if v.len() == 1 => self.lower(&v[0], out)?,
            Expr::Alt(_) => out.push(Elem::Rule(self.rule("alt", e)?)),
            Expr::Opt(x) => {
                let r = self.rule("opt", &Expr::Alt(vec![(**x).clone(), Expr::Seq(vec![])]))?;
                out.push(Elem::Rule(r));
            }
            Expr::Repeat(x, min, max) => self.lower_repeat(x, *min, *max, out)?,
        }
        Ok(())
    }

    fn lower_repeat(
        &mut self,
        x: &Expr,
        min: u32,
        max: Option<u32>,
        out: &mut Vec<Elem>,
    ) -> Result<(), GrammarError> {
        for _ in 0..min {
            self.lower(x, out)?;
        }
        match max {
            None => {
                // S ::= x1 S | x2 S | ... | "" : one loop rule, no frame per repetition.
                let s = self.declare("star");
                let alts: Vec<Expr> = match x {
                    Expr::Alt(v) => v.clone(),
                    x => vec![x.clone()],
                };
                let mut seqs = Vec::new();
                for a in alts {
                    let mut seq = Vec::new();
                    self.lower(&a, &mut seq)?;
                    seq.push(Elem::Rule(s));
                    seqs.push(seq);
                }
                seqs.push(Vec::new());
                self.add_alts(s, seqs)?;
                out.push(Elem::Rule(s));
            }
            Some(max) if max > min => {
                // (x (x (x)?)?)? from the inside out; each level a tail call.
                let mut inner: Option<u32> = None;
                for _ in min..max {
                    let mut seq = Vec::new();
                    self.lower(x, &mut seq)?;
                    if let Some(r) = inner {
                        seq.push(Elem::Rule(r));
                    }
                    let r = self.declare("upto");
                    self.add_alts(r, vec![seq, Vec::new()])?;
                    inner = Some(r);
                }
                if let Some(r) = inner {
                    out.push(Elem::Rule(r));
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The grammar with `root` as its start, once checked for left recursion.
    pub(crate) fn finish(mut self, root: u32) -> Result<Grammar, GrammarError> {
        self.g.call_root = self.g.elems.len() as u32;
        self.g.elems.extend([Elem::Rule(root), Elem::End]);
        let nullable = self.nullable();
        // Edges r → s where s can be expanded before r consumes a byte.
        let mut left: Vec<Vec<u32>> = vec![Vec::new(); self.g.alts.len()];
        for (r, starts) in self.g.alts.iter().enumerate() {
            for &s in starts {
                for e in &self.g.elems[s as usize..] {
                    match *e {
                        Elem::Rule(t) => {
                            left[r].push(t);
                            if !nullable[t as usize] {
                                break;
                            }
                        }
                        Elem::Bytes(_) | Elem::End => break,
                    }
                }
            }
        }
        if let Some(r) = find_cycle(&left) {
            return Err(GrammarError::LeftRecursion(self.names[r as usize].clone()));
        }
        Ok(self.g)
    }

    fn nullable(&self) -> Vec<bool> {
        let mut nullable = vec![false; self.g.alts.len()];
        let mut changed = true;
        while changed {
            changed = false;
            for (r, starts) in self.g.alts.iter().enumerate() {
                if nullable[r] {
                    continue;
                }
                let any = starts.iter().any(|&s| {
                    self.g.elems[s as usize..]
                        .iter()
                        .take_while(|e| **e != Elem::End)
                        .all(|e| matches!(e, Elem::Rule(t) if nullable[*t as usize]))
                });
                if any {
                    nullable[r] = true;
                    changed = true;
                }
            }
        }
        nullable
    }
}

/// A rule on a cycle of `edges`, if any (iterative three-colour DFS: no recursion depth).
fn find_cycle(edges: &[Vec<u32>]) -> Option<u32> {
    // 0 unvisited, 1 on the stack, 2 done.
    let mut colour = vec![0u8; edges.len()];
    for start in 0..edges.len() {
        if colour[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        colour[start] = 1;
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            if let Some(&t) = edges[node].get(next) {
                top.1 += 1;
                match colour[t as usize] {
                    1 => return Some(t),
                    0 => {
                        colour[t as usize] = 1;
                        stack.push((t as usize, 0));
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
    }
    None
}
