//! Malformed GGUF files: each gives its own error variant, and none makes the reader panic.

use inference_guest::ggml_type::GgmlType;
use inference_guest::gguf::writer::GgufWriter;
use inference_guest::gguf::{Gguf, GgufError, MAX_ARRAY_DEPTH, Value, ValueType};

/// Hand-assembles GGUF bytes, including ones the writer would refuse to produce.
struct Raw(Vec<u8>);

impl Raw {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key.as_bytes()).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 and appends `n` bytes of tensor data.
    fn data(&mut self, n: usize) -> &mut Self {
        let len = self.0.len().next_multiple_of(32);
        self.0.resize(len + n, 0);
        self
    }
    fn parse(&self) -> Result<Gguf<'_>, GgufError> {
        Gguf::parse(&self.0)
    }
}

/// A small valid file whose last tensor ends exactly at the end (no trailing padding), so
/// that every proper prefix is invalid.
fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama").unwrap();
    w.add_u32("llama.block_count", 2).unwrap();
    w.add_f32("llama.rope.freq_base", 10000.0).unwrap();
    w.add_bool("b", false).unwrap();
    w.add_str_array("tokenizer.ggml.tokens", &["<s>", "a", "bc"])
        .unwrap();
    w.add_i32_array("tokenizer.ggml.token_type", &[3, 1, 1])
        .unwrap();
    let inner = Value::Array(ValueType::F32, vec![Value::F32(1.5)]);
    w.add("nested", &Value::Array(ValueType::Array, vec![inner]))
        .unwrap();
    w.add_tensor("q", GgmlType::Q4_1, &[32, 2], (0..40).collect())
        .unwrap();
    w.add_tensor("norm", GgmlType::F32, &[8], vec![0; 32])
        .unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn the_valid_file_parses() {
    let bytes = valid_file();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.tensors().len(), 2);
    assert_eq!(
        g.tensor("q").unwrap().data,
        (0..40).collect::<Vec<u8>>().as_slice()
    );
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = valid_file();
    for cut in 0..bytes.len() {
        let err = Gguf::parse(&bytes[..cut]).err();
        assert!(err.is_some(), "prefix of {cut} bytes parsed");
        // Messages are built for every variant reached (exercises all Display impls).
        assert!(!err.unwrap().to_string().is_empty());
    }
    let short = Gguf::parse(&bytes[..10]).unwrap_err();
    assert!(
        matches!(short, GgufError::Truncated { offset: 8, .. }),
        "{short}"
    );
    let msg = short.to_string();
    assert!(
        msg.contains("truncated") && msg.contains("re-download"),
        "{msg}"
    );
}

#[test]
fn header_errors() {
    let mut bad = valid_file();
    bad[0] = b'X';
    assert!(matches!(Gguf::parse(&bad), Err(GgufError::BadMagic { .. })));
    assert_eq!(
        Raw::new(1, 0, 0).parse().unwrap_err(),
        GgufError::VersionOne
    );
    assert_eq!(
        Raw::new(4, 0, 0).parse().unwrap_err(),
        GgufError::UnsupportedVersion { version: 4 }
    );
    // Big-endian files show up as a huge version number.
    assert!(matches!(
        Raw::new(3u32.swap_bytes(), 0, 0).parse(),
        Err(GgufError::UnsupportedVersion { .. })
    ));
    assert!(matches!(
        Raw::new(3, u64::MAX, 0).parse(),
        Err(GgufError::TooManyTensors { .. })
    ));
    assert!(matches!(
        Raw::new(3, 1 << 40, 0).parse(),
        Err(GgufError::TooManyTensors { .. })
    ));
    assert!(matches!(
        Raw::new(2, 0, u64::MAX / 2).parse(),
        Err(GgufError::TooManyMetadata { .. })
    ));
    // v2 is read too.
    let mut v2 = Raw::new(2, 0, 1);
    v2.kv_u32("k", 1);
    assert_eq!(v2.parse().unwrap().version(), 2);
}

#[test]
fn string_and_array_errors() {
    let mut r = Raw::new(3, 0, 1);
    r.u64(u64::MAX).u32(4).u32(0);
    assert!(matches!(
        r.parse(),
        Err(GgufError::StringTooLong { offset: 24, .. })
    ));

    let mut r = Raw::new(3, 0, 1);
    r.str(b"k").u32(8).u64(1 << 50);
    let err = r.parse().unwrap_err();
    assert!(
        matches!(&err, GgufError::StringTooLong { context, .. } if context.contains("'k'")),
        "{err}"
    );

    let mut r = Raw::new(3, 0, 1);
    r.str(b"arr").u32(9).u32(0).u64(u64::MAX);
    assert!(matches!(r.parse(), Err(GgufError::ArrayTooLong { key, .. }) if key == "arr"));
    // Strings need at least 8 bytes each: 4 of them cannot fit in 31 bytes.
    let mut r = Raw::new(3, 0, 1);
    r.str(b"arr").u32(9).u32(8).u64(4).0.extend([0u8; 31]);
    assert!(matches!(r.parse(), Err(GgufError::ArrayTooLong { .. })));

    let mut r = Raw::new(3, 0, 1);
    r.str(b"arr").u32(9).u32(13).u64(0);
    assert!(matches!(
        r.parse(),
        Err(GgufError::UnknownValueType { type_id: 13, .. })
    ));
    let mut r = Raw::new(3, 0, 1);
    r.str(b"k").u32(99).u32(0);
    assert!(matches!(
        r.parse(),
        Err(GgufError::UnknownValueType { type_id: 99, .. })
    ));

    let mut r = Raw::new(3, 0, 1);
    r.str(&[b'k', 0xff]).u32(4).u32(0);
    assert!(matches!(
        r.parse(),
        Err(GgufError::KeyNotUtf8 { offset: 32 })
    ));
    let mut r = Raw::new(3, 0, 1);
    r.str(b"k").u32(8).str(&[0xc3, 0x28]);
    assert!(matches!(r.parse(), Err(GgufError::ValueNotUtf8 { key, .. }) if key == "k"));

    let mut r = Raw::new(3, 0, 1);
    r.str(b"k").u32(7).0.push(2);
    assert!(matches!(
        r.parse(),
        Err(GgufError::InvalidBool { value: 2, .. })
    ));

    let mut r = Raw::new(3, 0, 1);
    r.str(b"deep").u32(9);
    for _ in 0..=MAX_ARRAY_DEPTH {
        r.u32(9).u64(1);
    }
    r.data(64);
    assert!(matches!(r.parse(), Err(GgufError::NestingTooDeep { .. })));
}

#[test]
fn duplicate_keys_and_alignment() {
    let mut r = Raw::new(3, 0, 2);
    r.kv_u32("k", 1).kv_u32("k", 2);
    assert!(matches!(r.parse(), Err(GgufError::DuplicateKey { key }) if key == "k"));

    for a in [0u32, 48, 3] {
        let mut r = Raw::new(3, 0, 1);
        r.kv_u32("general.alignment", a);
        assert_eq!(
            r.parse().unwrap_err(),
            GgufError::BadAlignment { value: a.into() }
        );
    }
    let mut r = Raw::new(3, 0, 1);
    r.str(b"general.alignment").u32(10).u64(64);
    assert!(matches!(r.parse(), Err(GgufError::MetadataType { .. })));
    let mut r = Raw::new(3, 1, 1);
    r.kv_u32("general.alignment", 64)
        .tensor("t", &[16], 0, 0)
        .data(128);
    let g = r.parse().unwrap();
    assert_eq!((g.alignment(), g.data_offset() % 64), (64, 0));
}

fn one_tensor(dims: &[u64], ty: u32, offset: u64, data: usize) -> Result<(), GgufError> {
    let mut r = Raw::new(3, 1, 0);
    r.tensor("t", dims, ty, offset).data(data);
    r.parse().map(|_| ())
}

#[test]
fn tensor_info_errors() {
    assert_eq!(one_tensor(&[8], 0, 0, 32), Ok(()));
    assert!(matches!(
        one_tensor(&[8], 0, 32, 32),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    assert!(matches!(
        one_tensor(&[8], 0, u64::MAX - 31, 32),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    assert!(matches!(
        one_tensor(&[8], 0, 4, 64),
        Err(GgufError::MisalignedTensor { offset: 4, .. })
    ));
    let err = one_tensor(&[8], 10, 0, 32).unwrap_err();
    assert_eq!(
        err,
        GgufError::UnknownTensorType {
            name: "t".into(),
            type_id: 10
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("'t'") && msg.contains("id 10 (Q2_K)"));
    // The converter parses with this reader, so the message must not send the user to it.
    assert!(msg.contains("uses the same reader") && !msg.contains("convert the model with"));
    assert!(matches!(
        one_tensor(&[8, 0], 0, 0, 32),
        Err(GgufError::ZeroDim { index: 1, .. })
    ));
    assert!(matches!(
        one_tensor(&[1, 1, 1, 1, 1], 0, 0, 32),
        Err(GgufError::BadDimCount { n_dims: 5, .. })
    ));
    assert!(matches!(
        one_tensor(&[], 0, 0, 32),
        Err(GgufError::BadDimCount { n_dims: 0, .. })
    ));
    let huge = 1u64 << 40;
    assert!(matches!(
        one_tensor(&[huge, huge], 0, 0, 32),
        Err(GgufError::SizeOverflow { .. })
    ));
    assert!(matches!(
        one_tensor(&[48], 2, 0, 32),
        Err(GgufError::RowNotWholeBlocks { .. })
    ));

    let mut r = Raw::new(3, 1, 0);
    r.str(&[0xff]).u32(1).u64(8).u32(0).u64(0).data(32);
    assert!(matches!(
        r.parse(),
        Err(GgufError::TensorNameNotUtf8 { .. })
    ));

    let mut r = Raw::new(3, 2, 0);
    r.tensor("t", &[8], 0, 0).tensor("t", &[8], 0, 32).data(64);
    assert!(matches!(r.parse(), Err(GgufError::DuplicateTensor { name }) if name == "t"));

    let mut r = Raw::new(3, 2, 0);
    r.tensor("a", &[16], 0, 0).tensor("b", &[8], 0, 32).data(64);
    assert!(matches!(r.parse(), Err(GgufError::TensorsOverlap { .. })));

    // Tensors need not be in offset order.
    let mut r = Raw::new(3, 2, 0);
    r.tensor("a", &[8], 0, 32).tensor("b", &[8], 0, 0).data(64);
    assert_eq!(r.parse().unwrap().tensor("b").unwrap().offset, 0);
}

/// splitmix64: a tiny seeded PRNG so the mutations are reproducible.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn random_mutations_never_panic() {
    let valid = valid_file();
    let mut state = 0x5eed;
    let mut accepted = 0;
    for _ in 0..5000 {
        let mut bytes = valid.clone();
        for _ in 0..1 + next(&mut state) % 4 {
            let at = (next(&mut state) % bytes.len() as u64) as usize;
            let r = next(&mut state);
            // Mostly single-byte noise; sometimes extreme values, which hit the size checks.
            bytes[at] = match r % 4 {
                0 => 0xff,
                1 => 0,
                _ => (r >> 8) as u8,
            };
        }
        if let Ok(g) = Gguf::parse(&bytes) {
            accepted += 1;
            for t in g.tensors() {
                assert_eq!(
                    t.data.len(),
                    t.ty.row_bytes(t.row_len()).unwrap() * t.n_rows()
                );
            }
        }
    }
    // Some mutations only touch tensor data or padding; most must be refused.
    assert!(accepted < 5000);
}

#[test]
fn real_model_if_present() {
    let name = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let dir = std::env::var("FLEXSERVE_MODELS_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models").to_owned());
    let path = std::path::Path::new(&dir).join(name);
    let Ok(bytes) = std::fs::read(&path) else {
        println!(
            "SKIPPED: model missing ({}), run make setup",
            path.display()
        );
        return;
    };
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!((g.version(), g.alignment()), (3, 32));
    assert_eq!((g.metadata().len(), g.tensors().len()), (33, 272));
    assert_eq!(g.get_str("general.architecture"), Ok(Some("llama")));
    assert_eq!(g.get_u32("llama.block_count"), Ok(Some(30)));
    assert_eq!(g.get_u32("llama.embedding_length"), Ok(Some(576)));
    assert_eq!(g.get_u32("llama.attention.head_count_kv"), Ok(Some(3)));
    assert_eq!(g.get_f32("llama.rope.freq_base"), Ok(Some(100000.0)));
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .len(),
        49152
    );
    assert_eq!(
        g.get_str_array("tokenizer.ggml.merges")
            .unwrap()
            .unwrap()
            .len(),
        48900
    );
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .unwrap()
            .len(),
        49152
    );
    let count = |ty| g.tensors().iter().filter(|t| t.ty == ty).count();
    assert_eq!(
        (
            count(GgmlType::Q4_1),
            count(GgmlType::Q8_0),
            count(GgmlType::F32)
        ),
        (210, 1, 61)
    );
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.dims.as_slice(), embd.data.len()),
        (&[576u64, 49152][..], 30081024)
    );
    assert_eq!(g.data_offset() as u64 + embd.offset, 1785664);
}
