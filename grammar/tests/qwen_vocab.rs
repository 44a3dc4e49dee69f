//! The constraint on a real vocabulary: Qwen2.5's 151k byte-level BPE tokens.

mod common;
#[path = "common/qwen.rs"]
mod qwen;

use common::{Rng, SCHEMAS, check};
use inference_guest::constrain::{eog_ids, grammar_vocab};
use llm_grammar::{Constraint, TokenSet, compile_schema};

#[test]
fn masks_match_brute_force_and_samples_validate_on_qwen() {
    let Some(tok) = qwen::tokenizer(None) else {
        return;
    };
    let vocab = grammar_vocab(&tok);
    let eog = eog_ids(&tok);
    assert!(!eog.is_empty());
    let schema = SCHEMAS[0];
    // Along a real tokenization of a valid answer, the walk's mask is every token that
    // continues the grammar, tested alone.
    let doc = r#"{"name":"Ada \u00e9","age":36,"tags":["a","c"]}"#;
    let mut c = Constraint::new(compile_schema(schema).unwrap());
    let mut mask = TokenSet::new(vocab.len());
    for (step, &id) in tok.encode(doc, false, false).iter().enumerate() {
        c.allowed(&vocab, &eog, &mut mask);
        if step % 3 == 0 {
            for t in 0..vocab.len() as u32 {
                let bytes = vocab.bytes(t);
                let ok = !bytes.is_empty() && c.matcher().clone().accept_bytes(bytes);
                assert_eq!(
                    mask.contains(t),
                    ok || (c.is_complete() && eog.contains(&t)),
                    "step {step} token {t}"
                );
            }
        }
        assert!(
            mask.contains(id),
            "step {step}: the document's own token {id} is masked"
        );
        c.accept_token_id(&vocab, &eog, id).unwrap();
    }
    assert!(c.is_complete());
    // Special tokens are never output inside the JSON.
    let im_start = tok.token_id("<|im_start|>").unwrap();
    assert!(!mask.contains(im_start));

    // Random tokens among the allowed ones: every finished output validates.
    let mut rng = Rng(0x9E37);
    let mut done = 0;
    for _ in 0..6 {
        let mut c = Constraint::new(compile_schema(schema).unwrap());
        let mut out = Vec::new();
        for _ in 0..400 {
            c.allowed(&vocab, &eog, &mut mask);
            let ids: Vec<u32> = (0..vocab.len() as u32)
                .filter(|&i| mask.contains(i))
                .collect();
            // Prefer ending, and short tokens, so a run finishes within the step budget.
            let id = match ids.iter().find(|i| eog.contains(i)) {
                Some(&e) if rng.below(2) == 0 => e,
                _ => ids[rng.below(ids.len())],
            };
            c.accept_token_id(&vocab, &eog, id).unwrap();
            if eog.contains(&id) {
                check(&out, schema).unwrap_or_else(|e| panic!("{e}"));
                done += 1;
                break;
            }
            out.extend_from_slice(vocab.bytes(id));
        }
    }
    assert!(done >= 3, "only {done} of 6 random runs finished");
}
