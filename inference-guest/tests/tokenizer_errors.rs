//! Load-time validation of untrusted vocabularies, a small in-memory BPE vocabulary, and
//! arbitrary input through the real SPM vocabulary (no panics).

use inference_guest::gguf::Gguf;
use inference_guest::tokenizer::{
    SpecialTokenIds, Tokenizer, TokenizerError, TokenizerKind, VocabSpec,
};

fn bpe_spec(pre: &str) -> VocabSpec {
    let tokens = ["a", "b", "ab", "Ġ", "Ġab", "<|im_end|>", "c"];
    VocabSpec {
        kind: TokenizerKind::Gpt2 {
            pre: pre.into(),
            merges: vec!["a b".into(), "Ġ ab".into()],
        },
        tokens: tokens.iter().map(|s| s.to_string()).collect(),
        scores: None,
        token_types: Some(vec![1, 1, 1, 1, 1, 3, 1]),
        special: SpecialTokenIds {
            eos: Some(5),
            bos: Some(5),
            ..Default::default()
        },
        add_bos: None,
        add_eos: None,
        add_space_prefix: None,
    }
}

#[test]
fn in_memory_bpe_merges_by_rank_and_splits_specials() {
    let tok = Tokenizer::from_spec(bpe_spec("smollm")).unwrap();
    assert_eq!(tok.encode("ab ab", false, true), [2, 4]);
    assert_eq!(tok.encode("ab<|im_end|>c", false, true), [2, 5, 6]);
    // Without parse_special the control token is plain text; unknown bytes are dropped like
    // llama.cpp does when no single-byte token exists.
    assert_eq!(tok.encode("<|im_end|>", false, false), Vec::<u32>::new());
    assert_eq!(tok.decode(&[2, 4]), b"ab ab");
    assert!(tok.is_end_of_generation(5));
}

#[test]
fn bad_vocabularies_are_load_errors() {
    let err = |spec| Tokenizer::from_spec(spec).unwrap_err();
    assert_eq!(
        err(bpe_spec("klingon")),
        TokenizerError::UnsupportedPreTokenizer("klingon".into())
    );
    let mut s = bpe_spec("gpt-2");
    s.special.bos = Some(7);
    assert!(matches!(
        err(s),
        TokenizerError::TokenIdOutOfRange { id: 7, .. }
    ));
    let mut s = bpe_spec("gpt-2");
    s.token_types = Some(vec![1; 3]);
    assert!(matches!(err(s), TokenizerError::ArrayLength { len: 3, .. }));
    let mut s = bpe_spec("gpt-2");
    s.tokens.clear();
    assert_eq!(err(s), TokenizerError::EmptyVocab);
    let mut s = bpe_spec("gpt-2");
    s.kind = TokenizerKind::Llama;
    s.token_types = Some(vec![1, 1, 1, 1, 6, 1, 1]);
    assert!(matches!(err(s), TokenizerError::BadByteToken { id: 4, .. }));
    let mut s = bpe_spec("gpt-2");
    s.scores = Some(vec![0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(err(s), TokenizerError::NanScore(1));
}

#[test]
fn arbitrary_text_never_panics() {
    let vocab = include_bytes!("fixtures/tokenizer/ggml-vocab-llama-spm.gguf");
    let spm = Tokenizer::from_gguf(&Gguf::parse(vocab).unwrap()).unwrap();
    let bpe = Tokenizer::from_spec(bpe_spec("default")).unwrap();
    let llama3 = Tokenizer::from_spec(bpe_spec("llama3")).unwrap();
    let mut x: u64 = 0x1234_5678;
    for len in 0..300 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        for tok in [&spm, &bpe, &llama3] {
            let ids = tok.encode(&text, true, true);
            assert!(ids.iter().all(|&id| (id as usize) < tok.n_vocab()));
            let _ = tok.decode(&ids);
        }
    }
}
