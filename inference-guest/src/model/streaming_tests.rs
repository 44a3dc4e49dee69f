//! A streaming load against the loaded model on the same file: bit-identical logits and
//! tokens, real overlap of compute with arrival, and a load that fails half way.
//!
//! The test models are not laid out in forward order, so [`relay`] re-lays them as
//! `flexserve-model`'s re-layout does (which this crate cannot depend on: it depends on
//! this crate). Model files come from `make setup`; a missing one skips its test unless
//! `FLEXSERVE_REQUIRE_MODELS=1`.

use super::{FileArrival, Logits, MAX_BATCH, Model, ModelError, Piece, StreamingModel};
use crate::generate::{Generation, generate, generate_arriving};
use crate::gguf::writer::GgufWriter;
use crate::gguf::{Gguf, Value};
use crate::parallel::ThreadPool;
use crate::quant::Kernels;
use crate::sampler::{Sampler, SamplerConfig};
use alloc::string::ToString;
use alloc::vec::Vec;
use core::marker::PhantomData;

/// Bytes one step of [`Arrival`] reveals.
const STEP: usize = 4096;
/// The context the tiny models (trained for 512) are re-laid with, for a prompt longer
/// than [`MAX_BATCH`].
const CTX: u32 = 2048;

fn read_model(name: &str) -> Option<Vec<u8>> {
    let path = alloc::format!("{}/../models/{name}", env!("CARGO_MANIFEST_DIR"));
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if std::env::var("FLEXSERVE_REQUIRE_MODELS").as_deref() == Ok("1") => {
            panic!("{path}: {e}: run `make setup`")
        }
        Err(_) => {
            std::eprintln!("SKIPPED: {path} missing, run `make setup`");
            None
        }
    }
}

/// Forward order: the embeddings (with llama3's `rope_freqs`), each block, then everything
/// else.
fn rank(name: &str) -> usize {
    if name.starts_with("token_embd.") || name.starts_with("rope_freqs.") {
        return 0;
    }
    let block = name.strip_prefix("blk.").and_then(|r| r.split('.').next());
    block
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(usize::MAX, |n| n + 1)
}

/// `bytes` re-laid in forward order, with the context length raised to `ctx` if given.
fn relay(bytes: &[u8], ctx: Option<u32>) -> Vec<u8> {
    let g = Gguf::parse(bytes).unwrap();
    let arch = g.get_str("general.architecture").unwrap().unwrap();
    let ctx_key = alloc::format!("{arch}.context_length");
    let mut out = match g.get("general.alignment") {
        Some(_) => GgufWriter::with_alignment(g.alignment() as u32).unwrap(),
        None => GgufWriter::new(),
    };
    for (key, value) in g.metadata() {
        match (*key, ctx) {
            ("general.alignment", _) => {}
            (k, Some(n)) if k == ctx_key => out.add(k, &Value::U32(n)).unwrap(),
            (k, _) => out.add(k, value).unwrap(),
        }
    }
    let mut tensors: Vec<_> = g.tensors().iter().collect();
    tensors.sort_by_key(|t| rank(t.name));
    for t in tensors {
        out.add_tensor(t.name, t.ty, &t.dims, t.data.to_vec())
            .unwrap();
    }
    out.to_bytes().unwrap()
}

/// Reveals `file` into a buffer [`STEP`] bytes at a time, as the decryptor does a sealed
/// model: the bytes past `available` are written while slices below it are live, so the
/// buffer is reached only through a raw pointer, as the guest service's arrival will be.
struct Arrival<'a> {
    /// The start of the buffer, exclusively borrowed for `'a` (see `_buf`).
    base: *mut u8,
    file: &'a [u8],
    available: usize,
    /// Every `wait_for` past this many bytes fails (a load that stops half way).
    fail_past: Option<usize>,
    /// Each piece the forward pass computed with, and `available` when it started.
    computing: Vec<(Piece, usize)>,
    _buf: PhantomData<&'a mut [u8]>,
}

impl<'a> Arrival<'a> {
    /// `buf` is filled with garbage so that reading unrevealed bytes would show.
    fn new(buf: &'a mut [u8], file: &'a [u8]) -> Self {
        assert_eq!(buf.len(), file.len());
        buf.fill(0xff);
        Self {
            base: buf.as_mut_ptr(),
            file,
            available: 0,
            fail_past: None,
            computing: Vec::new(),
            _buf: PhantomData,
        }
    }
}

impl<'a> FileArrival<'a> for Arrival<'a> {
    fn wait_for(&mut self, end: usize) -> Result<&'a [u8], ModelError> {
        if end > self.file.len() || self.fail_past.is_some_and(|limit| end > limit) {
            return Err(ModelError::Arrival {
                needed: end,
                reason: "test: the load stopped".to_string(),
            });
        }
        while self.available < end {
            let n = STEP.min(self.file.len() - self.available);
            // SAFETY: `[available, available + n)` is inside both the file and the buffer
            // (same length). Nothing else refers to those buffer bytes: `buf` is borrowed
            // by `self` for `'a`, and every slice handed out covers only `[0, available)`.
            unsafe {
                let src = self.file.as_ptr().add(self.available);
                core::ptr::copy_nonoverlapping(src, self.base.add(self.available), n);
            }
            self.available += n;
        }
        // SAFETY: `[0, available)` lies in the buffer, was written above, and is never
        // written again for `'a` (writes only go past `available`, which never shrinks).
        Ok(unsafe { core::slice::from_raw_parts(self.base, self.available) })
    }

    fn computing(&mut self, piece: Piece) {
        self.computing.push((piece, self.available));
    }
}

fn prompt(len: usize, n_vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 7919 + 13) % n_vocab) as u32)
        .collect()
}

fn bits(logits: &[f32]) -> Vec<u32> {
    logits.iter().map(|x| x.to_bits()).collect()
}

/// The loaded model's logits for `prompt` (all positions if `want` says so), then the last
/// position's after each of `decode` fed back one at a time.
fn reference(file: &[u8], prompt: &[u32], want: Logits, decode: &[u32]) -> Vec<Vec<u32>> {
    let pool = ThreadPool::new(2).unwrap();
    let g = Gguf::parse(file).unwrap();
    let model = Model::from_gguf(&g, Kernels::detect()).unwrap();
    let mut session = model.new_session(CTX as usize);
    let mut out = vec![bits(session.eval(&model, prompt, want, &pool).unwrap())];
    for &t in decode {
        out.push(bits(
            session.eval(&model, &[t], Logits::Last, &pool).unwrap(),
        ));
    }
    out
}

/// The same through a streaming load of `file` arriving [`STEP`] bytes at a time; also
/// checks that compute overlapped the arrival.
fn streamed(file: &[u8], prompt: &[u32], want: Logits, decode: &[u32]) -> Vec<Vec<u32>> {
    let pool = ThreadPool::new(2).unwrap();
    let mut buf = vec![0u8; file.len()];
    let mut arrival = Arrival::new(&mut buf, file);
    let mut model =
        StreamingModel::from_arrival(&mut arrival, file.len(), Kernels::detect()).expect("header");
    assert!(!model.is_loaded());
    let mut session = model.new_session(CTX as usize);
    let logits = session.eval_arriving(&mut model, prompt, want, &pool, &mut arrival);
    let mut out = vec![bits(logits.unwrap())];
    assert!(model.is_loaded());
    check_overlap(&model, &arrival.computing, file.len());
    arrival.computing.clear();
    for &t in decode {
        let logits = session.eval_arriving(&mut model, &[t], Logits::Last, &pool, &mut arrival);
        out.push(bits(logits.unwrap()));
    }
    // Once loaded, the arrival is no longer consulted, and the model is an ordinary one.
    assert!(arrival.computing.is_empty());
    let loaded = model.into_model().ok().expect("loaded");
    assert_eq!(loaded.weights.layers.len(), loaded.cfg.n_layer);
    out
}

/// Each piece was computed with as soon as its bytes were in (within one step), in order,
/// and layer 0 before the file was complete: the overlap this feature exists for.
fn check_overlap(model: &StreamingModel<'_>, computing: &[(Piece, usize)], file_len: usize) {
    let n_layer = model.cfg().n_layer;
    let mut expected = vec![Piece::Embeddings];
    expected.extend((0..n_layer).map(Piece::Layer));
    expected.push(Piece::Output);
    let pieces: Vec<Piece> = computing.iter().map(|&(p, _)| p).collect();
    assert_eq!(pieces, expected);
    for &(piece, available) in computing {
        let end = model.piece_end(piece).unwrap();
        // (The embeddings may start later: the header's parse may have asked for more.)
        let prompt = piece == Piece::Embeddings || available < end + STEP;
        assert!(
            available >= end && prompt,
            "{piece:?} needs {end} bytes, started at {available}"
        );
    }
    let (_, at_layer0) = computing[1];
    assert!(at_layer0 < file_len, "layer 0 waited for the whole file");
    let layer1 = model.piece_end(Piece::Layer(1.min(n_layer - 1))).unwrap();
    assert!(
        n_layer < 2 || at_layer0 < layer1,
        "layer 0 waited for layer 1"
    );
}

fn matches_loaded_model(name: &str, ctx: Option<u32>, prompt_lens: &[usize]) {
    matches_loaded_model_for(name, ctx, prompt_lens, &[Logits::Last, Logits::All]);
}

fn matches_loaded_model_for(name: &str, ctx: Option<u32>, prompt_lens: &[usize], wants: &[Logits]) {
    let Some(bytes) = read_model(name) else {
        return;
    };
    let file = relay(&bytes, ctx);
    drop(bytes);
    let n_vocab = Gguf::parse(&file).unwrap().tensors()[0].n_rows();
    for &len in prompt_lens {
        let p = prompt(len, n_vocab);
        let decode = [p[0], 5, 77];
        for &want in wants {
            let expected = reference(&file, &p, want, &decode);
            let positions = if want == Logits::All { len } else { 1 };
            assert_eq!(expected[0].len(), positions * n_vocab);
            let got = streamed(&file, &p, want, &decode);
            assert!(
                got == expected,
                "{name}: prompt of {len}, {want:?}: logits differ"
            );
        }
    }
}

#[test]
fn streamed_tiny_llama_matches_the_loaded_model_bit_for_bit() {
    matches_loaded_model("tiny.Q8_0.gguf", Some(CTX), &[1, 7, MAX_BATCH + 88]);
}

#[test]
fn streamed_tiny_qwen2_and_k_quants_match_the_loaded_model_bit_for_bit() {
    matches_loaded_model("tiny-qwen2.Q8_0.gguf", Some(CTX), &[9, MAX_BATCH + 1]);
    matches_loaded_model("tiny.Q4_K.gguf", Some(CTX), &[9, MAX_BATCH + 1]);
}

#[test]
fn streamed_tiny_qwen3_llama3_and_gemma3_match_the_loaded_model_bit_for_bit() {
    matches_loaded_model("tiny-qwen3.Q8_0.gguf", Some(CTX), &[9, MAX_BATCH + 1]);
    matches_loaded_model("tiny-llama3.Q8_0.gguf", Some(CTX), &[9, MAX_BATCH + 1]);
    matches_loaded_model("tiny-gemma3.Q8_0.gguf", Some(CTX), &[9, MAX_BATCH + 1]);
}

/// Gemma 2's soft-capped attention, and Phi-3's fused tensors split into views of a layer
/// that arrived whole.
#[test]
fn streamed_tiny_gemma2_and_phi3_match_the_loaded_model_bit_for_bit() {
    matches_loaded_model("tiny-gemma2.Q8_0.gguf", Some(CTX), &[9, MAX_BATCH + 1]);
    matches_loaded_model("tiny-phi3.Q8_0.gguf", Some(CTX), &[9, MAX_BATCH + 1]);
}

/// A real model's shapes, past one batch. The last position's logits only: every
/// position's (the tiny models check those) would add the output matrix over 520 positions,
/// about a quarter of the test's time, for no other code.
#[test]
fn streamed_smollm2_matches_the_loaded_model_bit_for_bit() {
    let name = "SmolLM2-135M-Instruct.Q8_0.gguf";
    matches_loaded_model_for(name, None, &[MAX_BATCH + 8], &[Logits::Last]);
}

/// The tiny llama re-laid with a [`CTX`] context, or `None` to skip.
fn tiny() -> Option<Vec<u8>> {
    read_model("tiny.Q8_0.gguf").map(|bytes| relay(&bytes, Some(CTX)))
}

#[test]
fn a_load_that_stops_at_a_layer_ends_the_evaluation_and_leaves_the_session() {
    let Some(file) = tiny() else {
        return;
    };
    let pool = ThreadPool::new(2).unwrap();
    let p = prompt(MAX_BATCH + 20, 49152);
    let expected = reference(&file, &p, Logits::Last, &[]);
    let mut buf = vec![0u8; file.len()];
    let mut arrival = Arrival::new(&mut buf, &file);
    let mut model =
        StreamingModel::from_arrival(&mut arrival, file.len(), Kernels::detect()).expect("header");
    let n_layer = model.cfg().n_layer;
    let mut session = model.new_session(CTX as usize);
    for k in [0, n_layer - 1] {
        // Stops just before layer k's last byte.
        let layer_end = model.piece_end(Piece::Layer(k)).unwrap();
        arrival.fail_past = Some(layer_end - 1);
        arrival.computing.clear();
        let err = session
            .eval_arriving(&mut model, &p, Logits::Last, &pool, &mut arrival)
            .expect_err("the load stopped");
        assert!(
            matches!(&err, ModelError::Arrival { needed, reason }
                if *needed == layer_end && reason.contains("test: the load stopped")),
            "{err}"
        );
        assert_eq!(session.n_past(), 0);
        assert!(!model.is_loaded());
        // Only the layers before k were computed with.
        let last = arrival.computing.last().map(|&(piece, _)| piece);
        assert_eq!(
            last,
            k.checked_sub(1)
                .map(Piece::Layer)
                .or(Some(Piece::Embeddings))
        );
    }
    // A later attempt in the same session, once the rest arrives, picks up where it stopped.
    arrival.fail_past = None;
    let logits = session.eval_arriving(&mut model, &p, Logits::Last, &pool, &mut arrival);
    assert!(bits(logits.unwrap()) == expected[0]);
    assert_eq!(session.n_past(), p.len());
}

#[test]
fn a_short_prefix_or_a_missing_header_is_an_error_not_a_read_past_it() {
    /// Returns one byte less than asked for: a broken arrival.
    struct Short<'a>(&'a [u8]);
    impl<'a> FileArrival<'a> for Short<'a> {
        fn wait_for(&mut self, end: usize) -> Result<&'a [u8], ModelError> {
            Ok(&self.0[..end.saturating_sub(1).min(self.0.len())])
        }
    }
    let Some(file) = tiny() else {
        return;
    };
    let header_len = Gguf::parse(&file).unwrap().data_offset();
    let err = StreamingModel::from_arrival(&mut Short(&file), file.len(), Kernels::detect())
        .err()
        .expect("short");
    assert!(
        matches!(err, ModelError::Arrival { needed: 4, .. }),
        "{err}"
    );
    let header = Gguf::parse_prefix(&file[..header_len], file.len()).unwrap();
    let mut model = StreamingModel::new(header, Kernels::detect()).unwrap();
    let pool = ThreadPool::new(2).unwrap();
    let mut session = model.new_session(64);
    let err = session
        .eval_arriving(&mut model, &[1, 2], Logits::Last, &pool, &mut Short(&file))
        .expect_err("short");
    let embd_end = model.piece_end(Piece::Embeddings).unwrap();
    assert!(
        matches!(err, ModelError::Arrival { needed, .. } if needed == embd_end),
        "{err}"
    );
    assert_eq!(session.n_past(), 0);
    // Not a GGUF at all: the parse error, not a wait.
    let garbage = vec![0x55u8; 4096];
    let mut garbage_buf = vec![0; 4096];
    let mut whole = Arrival::new(&mut garbage_buf, &garbage);
    let err = StreamingModel::from_arrival(&mut whole, 4096, Kernels::detect()).err();
    let err = err.expect("not a GGUF").to_string();
    assert!(err.contains("not a GGUF file"), "{err}");
}

#[test]
fn greedy_generation_while_arriving_matches_generate_on_the_loaded_model() {
    let Some(file) = tiny() else {
        return;
    };
    let pool = ThreadPool::new(2).unwrap();
    let p = prompt(40, 49152);
    let req = Generation {
        prompt: &p,
        max_tokens: 24,
        stop_at_eog: false,
    };
    let greedy = || Sampler::new(SamplerConfig::greedy(), 49152);
    let g = Gguf::parse(&file).unwrap();
    let loaded = Model::from_gguf(&g, Kernels::detect()).unwrap();
    let mut session = loaded.new_session(CTX as usize);
    let mut expected = Vec::new();
    let mut on_token = |t| {
        expected.push(t);
        true
    };
    let (s, no_eog) = (&mut session, &|_| false);
    generate(
        &loaded,
        s,
        &mut greedy(),
        &pool,
        &req,
        no_eog,
        &mut on_token,
    )
    .unwrap();
    assert_eq!(expected.len(), 24);

    let mut buf = vec![0u8; file.len()];
    let mut arrival = Arrival::new(&mut buf, &file);
    let mut model =
        StreamingModel::from_arrival(&mut arrival, file.len(), Kernels::detect()).expect("header");
    let mut session = model.new_session(CTX as usize);
    let mut got = Vec::new();
    let mut on_token = |t| {
        got.push(t);
        true
    };
    let (m, a, s) = (&mut model, &mut arrival, &mut session);
    generate_arriving(m, a, s, &mut greedy(), &pool, &req, no_eog, &mut on_token).unwrap();
    assert_eq!(got, expected);
    assert_eq!(session.n_past(), p.len() + 23);
    check_overlap(&model, &arrival.computing, file.len());
}
