//! Property test: random outputs sampled under a schema's constraint always parse and
//! validate; outputs sampled without it do not (the positive control).

mod common;

use common::{Rng, SCHEMAS, check, weight};
use llm_grammar::{Constraint, Matcher, TokenSet, Vocab, compile_schema, json_object_grammar};
use std::sync::Arc;

/// Steps before a run is given up as unfinished (the sampler is random, not a model).
const MAX_STEPS: usize = 3000;

/// Samples bytes from the matcher's allowed set until complete; `None` if it ran too long.
fn sample_bytes(m: &mut Matcher, rng: &mut Rng) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..MAX_STEPS {
        if m.is_complete() && (!m.can_continue() || rng.below(4) == 0) {
            return Some(out);
        }
        let allowed: Vec<u8> = m.allowed_bytes().collect();
        let total: u64 = allowed.iter().map(|&b| weight(b)).sum();
        let mut pick = rng.next() % total.max(1);
        let b = *allowed.iter().find(|&&b| {
            if pick < weight(b) {
                return true;
            }
            pick -= weight(b);
            false
        })?;
        assert!(m.accept_bytes(&[b]), "an allowed byte was rejected");
        out.push(b);
    }
    None
}

#[test]
fn byte_sampled_outputs_validate() {
    let mut rng = Rng(0x5EED);
    for schema in SCHEMAS {
        let g = Arc::new(compile_schema(schema).unwrap_or_else(|e| panic!("{schema}: {e}")));
        let mut done = 0;
        for _ in 0..60 {
            let mut m = Matcher::new(g.clone());
            if let Some(out) = sample_bytes(&mut m, &mut rng) {
                check(&out, schema).unwrap_or_else(|e| panic!("{schema}: {e}"));
                done += 1;
            }
        }
        assert!(done >= 30, "{schema}: only {done} of 60 runs finished");
    }
}

#[test]
fn unconstrained_outputs_fail_validation() {
    // Any JSON object is valid JSON but, for these schemas, almost never valid for them.
    let mut rng = Rng(0x0C01_7801);
    let g = Arc::new(json_object_grammar());
    for schema in SCHEMAS.iter().filter(|s| s.contains("required")) {
        let mut invalid = 0;
        for _ in 0..20 {
            let mut m = Matcher::new(g.clone());
            if let Some(out) = sample_bytes(&mut m, &mut rng) {
                assert!(serde_json_alloc::from_slice::<serde_json_alloc::Value>(&out).is_ok());
                invalid += usize::from(check(&out, schema).is_err());
            }
        }
        assert!(
            invalid > 0,
            "{schema}: the validator accepted every unconstrained output"
        );
    }
}

/// A small vocabulary with multi-byte tokens, partial UTF-8 and JSON fragments.
fn toy_vocab() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = (0x20u8..0x7F).map(|b| vec![b]).collect();
    for s in [
        "{\"",
        "\":",
        "\",\"",
        "\"}",
        "null",
        "true",
        "false",
        "12",
        "0.5",
        "},{",
        "[{",
        "}]",
        "\"name\":\"",
        "age",
        "kind",
        "circle",
        "rect",
        "head",
        "tail",
        "é",
        "漢字",
        "\n",
        "\n  ",
        "  ",
        "\\n",
        "\\u00",
        "e+",
        "2024-",
        "T12:",
        "00Z",
        "abc\"",
        "\":[",
        "],\"",
    ] {
        v.push(s.as_bytes().to_vec());
    }
    v.push(vec![0xE2, 0x82]); // the first two bytes of "€"
    v.push(vec![0xAC, b'"']); // its last byte, then a quote
    v.push(vec![0xFF]); // never valid UTF-8
    v.push(Vec::new()); // a special token: no bytes
    v
}

/// Every token, tested one by one with a copy of the matcher: what the trie walk must match.
fn brute_force(c: &Constraint, vocab: &[Vec<u8>]) -> TokenSet {
    let mut set = TokenSet::new(vocab.len());
    for (id, t) in vocab.iter().enumerate() {
        let mut m = c.matcher().clone();
        if !t.is_empty() && m.accept_bytes(t) {
            set.insert(id as u32);
        }
    }
    set
}

#[test]
fn token_sampled_outputs_validate_and_masks_match_brute_force() {
    let tokens = toy_vocab();
    let vocab = Vocab::new(tokens.iter().map(Vec::as_slice));
    let eog = [tokens.len() as u32 - 1];
    let mut rng = Rng(0x70CE);
    let mut mask = TokenSet::new(tokens.len());
    for schema in SCHEMAS {
        let mut done = 0;
        for _ in 0..25 {
            let mut c = Constraint::new(compile_schema(schema).unwrap());
            let mut out = Vec::new();
            for _ in 0..MAX_STEPS {
                c.allowed(&vocab, &eog, &mut mask);
                let mut expected = brute_force(&c, &tokens);
                if c.is_complete() {
                    expected.insert(eog[0]);
                }
                assert_eq!(
                    mask,
                    expected,
                    "{schema} after {:?}",
                    String::from_utf8_lossy(&out)
                );
                let ids: Vec<u32> = (0..tokens.len() as u32)
                    .filter(|&i| mask.contains(i))
                    .collect();
                let weights: Vec<u64> = ids
                    .iter()
                    .map(|&i| {
                        if i == eog[0] {
                            30
                        } else {
                            tokens[i as usize]
                                .iter()
                                .map(|&b| weight(b))
                                .max()
                                .unwrap_or(1)
                        }
                    })
                    .collect();
                let mut pick = rng.next() % weights.iter().sum::<u64>();
                let k = weights
                    .iter()
                    .position(|&w| {
                        pick < w || {
                            pick -= w;
                            false
                        }
                    })
                    .unwrap();
                c.accept_token_id(&vocab, &eog, ids[k]).unwrap();
                if ids[k] == eog[0] {
                    check(&out, schema).unwrap_or_else(|e| panic!("{schema}: {e}"));
                    done += 1;
                    break;
                }
                out.extend_from_slice(&tokens[ids[k] as usize]);
            }
        }
        assert!(done >= 10, "{schema}: only {done} of 25 runs finished");
    }
}
