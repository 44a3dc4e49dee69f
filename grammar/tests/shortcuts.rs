//! The mask shortcuts (cached masks, string content by byte class) give the same masks as a
//! walk of the whole vocabulary, on Qwen2.5's 151k tokens, in random states of grammars
//! where they apply (bounded strings, `json_object`) and where they stop halfway (an enum
//! of non-ASCII words splits the UTF-8 classes).

mod common;
#[path = "common/qwen.rs"]
mod qwen;

use common::Rng;
use inference_guest::constrain::{eog_ids, grammar_vocab};
use llm_grammar::{Constraint, Grammar, TokenSet, Vocab, compile_schema, json_object_grammar};

/// `make bench-structured`'s schema: strings with `maxLength`, an integer, an enum.
const BOUNDED: &str = r#"{"type":"object","properties":{"name":{"type":"string","maxLength":40},"country":{"type":"string","minLength":2,"maxLength":6},"population":{"type":"integer"},"climate":{"enum":["hot","mild","cold"]},"description":{"type":"string","maxLength":600}},"required":["name","country","population","climate","description"],"additionalProperties":false}"#;

const UNICODE_ENUM: &str = r#"{"type":"object","properties":{"city":{"enum":["Zürich","Genève","東京","Đà Nẵng"]},"note":{"type":"string","maxLength":8}},"required":["city","note"]}"#;

/// Steps per run; each compares the shortcut mask with a whole walk (~10-25 ms).
const STEPS: usize = 24;

fn walk_only(c: &Constraint, vocab: &Vocab, eog: &[u32]) -> TokenSet {
    let mut slow = c.clone();
    slow.set_shortcuts(false);
    let mut set = TokenSet::new(vocab.len());
    slow.allowed(vocab, eog, &mut set);
    set
}

/// Drives `grammar` with random allowed tokens (tokens that leave a string half the time,
/// so runs move through keys, values and string ends); checks every step's mask.
fn check_random_states(grammar: &Grammar, vocab: &Vocab, eog: &[u32], rng: &mut Rng) -> usize {
    let mut c = Constraint::new(grammar.clone());
    let mut mask = TokenSet::new(vocab.len());
    let mut checked = 0;
    for step in 0..STEPS {
        c.allowed(vocab, eog, &mut mask);
        assert_eq!(mask, walk_only(&c, vocab, eog), "step {step}");
        checked += 1;
        let ids: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&i| mask.contains(i) && !eog.contains(&i))
            .collect();
        if ids.is_empty() {
            break;
        }
        let closing: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&i| vocab.bytes(i).contains(&b'"'))
            .collect();
        let id = match closing.is_empty() || rng.below(2) == 0 {
            true => ids[rng.below(ids.len())],
            false => closing[rng.below(closing.len())],
        };
        c.accept_token_id(vocab, eog, id).unwrap();
    }
    checked
}

#[test]
fn shortcut_masks_equal_whole_walks_on_qwen() {
    let Some(tok) = qwen::tokenizer(None) else {
        return;
    };
    let vocab = grammar_vocab(&tok);
    let eog = eog_ids(&tok);
    let st = vocab.stats();
    assert!(
        st.plain_tokens > 50_000 && st.mixed_tokens > 20_000,
        "{st:?}"
    );
    let mut rng = Rng(0x5407);
    let grammars = [
        ("bounded strings", compile_schema(BOUNDED).unwrap()),
        ("json_object", json_object_grammar()),
        ("unicode enum", compile_schema(UNICODE_ENUM).unwrap()),
    ];
    for (name, g) in &grammars {
        let mut checked = 0;
        for _ in 0..2 {
            checked += check_random_states(g, &vocab, &eog, &mut rng);
        }
        assert!(checked >= STEPS, "{name}: only {checked} states checked");
    }
}

#[test]
fn a_bounded_string_allows_plain_tokens_up_to_its_remaining_length() {
    // Six ASCII tokens of lengths 1-6, a two-byte character, its first byte alone, a quote.
    let tokens: Vec<&[u8]> = vec![
        b"a",
        b"ab",
        b"abc",
        b"abcd",
        b"abcde",
        b"abcdef",
        "é".as_bytes(),
        &[0xC3],
        b"\"",
    ];
    let vocab = Vocab::new(tokens.iter().copied());
    let g = compile_schema(r#"{"type":"string","maxLength":4}"#).unwrap();
    let mut c = Constraint::new(g);
    let mut mask = TokenSet::new(tokens.len());
    c.accept_token(b"\"ab").unwrap();
    c.allowed(&vocab, &[], &mut mask);
    let allowed: Vec<u32> = (0..tokens.len() as u32)
        .filter(|&i| mask.contains(i))
        .collect();
    // Two characters left: "a", "ab", "é", its lead byte, and the closing quote.
    assert_eq!(allowed, [0, 1, 6, 7, 8]);
    assert_eq!(mask, walk_only(&c, &vocab, &[]));
}
