//! The engine's pooled embeddings against llama.cpp's (`--embeddings --pooling mean`,
//! normalised), recorded by `tools/fixtures/gen_embedding_fixture.py` from
//! llama-cpp-python on the same model file.
//!
//! Model files come from `make setup` (git-ignored). When one is missing the test says so
//! and skips it, unless `FLEXSERVE_REQUIRE_MODELS=1` (set by `make test`), where it fails.

use inference_guest::gguf::Gguf;
use inference_guest::model::Model;
use inference_guest::parallel::ThreadPool;
use inference_guest::quant::Kernels;
use inference_guest::tokenizer::Tokenizer;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Smallest cosine similarity accepted. The blocks reproduce llama.cpp's numerics; only
/// the pooling sums in another order (f64 here, a matrix product of f32 there).
const MIN_COSINE: f64 = 0.999;

#[derive(Deserialize)]
struct Fixture {
    model: String,
    sha256: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn smollm2_q4_1_embeddings_match_llama_cpp() {
    let path = root().join("tests/fixtures/embedding/SmolLM2-135M-Instruct.Q4_1.json");
    let text = std::fs::read_to_string(&path).expect("fixture");
    let f: Fixture = serde_json::from_str(&text).expect("fixture json");
    let dir = std::env::var_os("FLEXSERVE_MODELS_DIR")
        .map_or_else(|| root().join("../models"), PathBuf::from);
    let Ok(bytes) = std::fs::read(dir.join(&f.model)) else {
        if std::env::var("FLEXSERVE_REQUIRE_MODELS").as_deref() == Ok("1") {
            panic!("{} is missing: run `make setup`", f.model);
        }
        eprintln!("SKIPPED: {} missing, run `make setup`", f.model);
        return;
    };
    assert_eq!(
        format!("{:x}", Sha256::digest(&bytes)),
        f.sha256,
        "{} differs from the file the fixture was made from",
        f.model
    );
    let gguf = Gguf::parse(&bytes).expect("parse");
    let model = Model::from_gguf(&gguf, Kernels::detect()).expect("load");
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    let pool = ThreadPool::new(2).expect("threads");
    for case in &f.cases {
        assert_eq!(
            tokenizer.encode(&case.prompt, true, false),
            case.prompt_ids,
            "`{}` tokenizes differently from llama.cpp",
            case.prompt
        );
        let got = model.embedding(&case.prompt_ids, &pool).expect("embedding");
        assert_eq!(got.len(), case.embedding.len());
        let norm: f64 = got
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not unit length: {norm}");
        let c = cosine(&got, &case.embedding);
        assert!(
            c >= MIN_COSINE,
            "`{}`: cosine {c} with llama.cpp",
            case.prompt
        );
        eprintln!("`{}`: cosine {c:.7}", case.prompt);
    }
}
