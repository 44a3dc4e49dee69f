//! The SentencePiece (`llama`) tokenizer on llama.cpp's own `ggml-vocab-llama-spm.gguf` and its
//! test pairs, plus ids from llama-cpp-python 0.3.36 for the shared fixture strings.

use inference_guest::gguf::Gguf;
use inference_guest::tokenizer::Tokenizer;
use serde::Deserialize;

const VOCAB: &[u8] = include_bytes!("fixtures/tokenizer/ggml-vocab-llama-spm.gguf");

#[derive(Deserialize)]
struct Case {
    text: String,
    special: bool,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&Gguf::parse(VOCAB).expect("parse vocab")).expect("load tokenizer")
}

#[test]
fn llama_cpp_test_pairs() {
    let tok = tokenizer();
    let inp = include_str!("fixtures/tokenizer/ggml-vocab-llama-spm.gguf.inp");
    let out = include_str!("fixtures/tokenizer/ggml-vocab-llama-spm.gguf.out");
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 46);
    for (text, line) in texts.iter().zip(&lines) {
        let want: Vec<u32> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        // llama.cpp's test-tokenizer-0: add_special = false, parse_special = false.
        assert_eq!(tok.encode(text, false, false), want, "{text:?}");
    }
}

#[test]
fn matches_llama_cpp_ids_and_round_trips() {
    let tok = tokenizer();
    let fixture: Fixture =
        serde_json::from_str(include_str!("fixtures/tokenizer/llama-spm.json")).unwrap();
    for case in &fixture.cases {
        let ids = tok.encode(&case.text, false, case.special);
        assert_eq!(ids, case.ids, "{:?} (special={})", case.text, case.special);
        if !case.special && !case.text.is_empty() {
            // The space prefix SentencePiece adds comes back as a leading space.
            let mut want = b" ".to_vec();
            want.extend_from_slice(case.text.as_bytes());
            assert_eq!(tok.decode(&ids), want, "{:?}", case.text);
        }
    }
}

#[test]
fn bos_byte_fallback_and_eog() {
    let tok = tokenizer();
    assert_eq!(
        (tok.bos(), tok.eos(), tok.n_vocab()),
        (Some(1), Some(2), 32000)
    );
    // add_bos_token is true for llama: BOS first when asked.
    assert_eq!(tok.encode("Hello world", true, false), [1, 15043, 3186]);
    assert_eq!(tok.encode("", true, false), [1]);
    // U+1F999 is not in the vocabulary: four <0xXX> byte tokens that decode to its bytes.
    let ids = tok.encode("🦙", false, false);
    assert_eq!(tok.decode(&ids), " 🦙".as_bytes());
    assert!(tok.is_end_of_generation(2));
    assert!(!tok.is_end_of_generation(1));
}

#[test]
fn cheap_end_of_generation_ids_equal_the_full_tokenizers() {
    let g = Gguf::parse(VOCAB).unwrap();
    let full = tokenizer();
    let n = g
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap()
        .unwrap()
        .len() as u32;
    let want: Vec<u32> = (0..n).filter(|&i| full.is_end_of_generation(i)).collect();
    assert_eq!(Tokenizer::end_of_generation_ids(&g).unwrap(), want);
}
