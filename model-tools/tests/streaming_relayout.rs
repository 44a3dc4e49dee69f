//! `flexserve-model`'s re-layout against the engine's streaming load: the pieces the engine
//! waits for fall inside the re-laid file's layer ranges (the ones a sealed header lists),
//! and a file revealed one layer range at a time computes the loaded model's logits, each
//! layer as soon as its range is in.
//!
//! The model comes from `make setup`; when missing the test skips, unless
//! `FLEXSERVE_REQUIRE_MODELS=1`.

use inference_guest::gguf::Gguf;
use inference_guest::model::{FileArrival, Logits, Model, ModelError, Piece, StreamingModel};
use inference_guest::parallel::ThreadPool;
use inference_guest::quant::Kernels;
use model_tools::relayout::relayout;
use std::ops::Range;

/// Reveals the file one range at a time. The bytes are all there already, so plain slices
/// of them are sound; the point is which prefix the engine gets and when it computes.
struct ByRange<'a> {
    file: &'a [u8],
    ranges: &'a [Range<u64>],
    /// Ranges revealed so far.
    revealed: usize,
    computing: Vec<(Piece, usize)>,
}

impl ByRange<'_> {
    fn available(&self) -> usize {
        self.revealed
            .checked_sub(1)
            .map_or(0, |i| self.ranges[i].end as usize)
    }
}

impl<'a> FileArrival<'a> for ByRange<'a> {
    fn wait_for(&mut self, end: usize) -> Result<&'a [u8], ModelError> {
        while self.available() < end && self.revealed < self.ranges.len() {
            self.revealed += 1;
        }
        Ok(&self.file[..self.available()])
    }

    fn computing(&mut self, piece: Piece) {
        let layer = self.revealed;
        self.computing.push((piece, layer));
    }
}

#[test]
fn relaid_file_streams_layer_range_by_layer_range() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny.Q8_0.gguf");
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if std::env::var("FLEXSERVE_REQUIRE_MODELS").as_deref() == Ok("1") => {
            panic!("{path}: {e}: run `make setup`")
        }
        Err(_) => return eprintln!("SKIPPED: {path} missing, run `make setup`"),
    };
    let relaid = relayout(&Gguf::parse(&bytes).unwrap()).unwrap();
    let (file, ranges) = (&relaid.bytes, &relaid.layers);
    let pool = ThreadPool::new(2).unwrap();
    let prompt: Vec<u32> = (0..100).map(|i| (i * 7919 + 13) % 49152).collect();

    let g = Gguf::parse(file).unwrap();
    let loaded = Model::from_gguf(&g, Kernels::detect()).unwrap();
    let mut session = loaded.new_session(512);
    let expected = session
        .eval(&loaded, &prompt, Logits::All, &pool)
        .unwrap()
        .to_vec();

    let mut arrival = ByRange {
        file,
        ranges,
        revealed: 0,
        computing: Vec::new(),
    };
    let mut model =
        StreamingModel::from_arrival(&mut arrival, file.len(), Kernels::detect()).unwrap();
    // Range 0 is the header and the embeddings, range i + 1 block i, the last the output.
    let n_layer = model.cfg().n_layer;
    assert_eq!(ranges.len(), n_layer + 2);
    let range_of = |piece| match piece {
        Piece::Embeddings => 0,
        Piece::Layer(i) => i + 1,
        Piece::Output => n_layer + 1,
    };
    let mut session = model.new_session(512);
    let got = session
        .eval_arriving(&mut model, &prompt, Logits::All, &pool, &mut arrival)
        .unwrap();
    assert!(
        got.iter()
            .zip(&expected)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    assert_eq!(got.len(), expected.len());
    // Each piece ends inside its own range and is computed once exactly that range is in.
    assert_eq!(arrival.computing.len(), n_layer + 2);
    for &(piece, revealed) in &arrival.computing {
        let range = &ranges[range_of(piece)];
        let end = model.piece_end(piece).unwrap() as u64;
        assert!(
            range.start < end && end <= range.end,
            "{piece:?}: {end} in {range:?}"
        );
        assert_eq!(revealed, range_of(piece) + 1, "{piece:?}");
    }
    assert!(model.into_model().is_ok());
}
