//! Round trips through the writer and reader, and the typed accessors' rules.

use super::writer::GgufWriter;
use super::*;
use crate::ggml_type::GgmlType;

fn sample() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama").unwrap();
    w.add("u8", &Value::U8(200)).unwrap();
    w.add("i8", &Value::I8(-5)).unwrap();
    w.add("u16", &Value::U16(60000)).unwrap();
    w.add("i16", &Value::I16(-300)).unwrap();
    w.add_u32("llama.block_count", 30).unwrap();
    w.add("i32", &Value::I32(-7)).unwrap();
    w.add_f32("llama.rope.freq_base", 10000.0).unwrap();
    w.add_bool("flag", true).unwrap();
    w.add("u64", &Value::U64(1 << 40)).unwrap();
    w.add("i64", &Value::I64(-1)).unwrap();
    w.add("f64", &Value::F64(0.5)).unwrap();
    w.add_str_array("tokens", &["a", "b", "<s>"]).unwrap();
    w.add_f32_array("scores", &[0.5, -1.0]).unwrap();
    w.add_i32_array("types", &[1, 3]).unwrap();
    let inner = Value::Array(ValueType::U8, vec![Value::U8(1), Value::U8(2)]);
    w.add(
        "nested",
        &Value::Array(ValueType::Array, vec![inner.clone(), inner]),
    )
    .unwrap();
    w.add_tensor("w", GgmlType::Q8_0, &[32, 2], vec![7u8; 68])
        .unwrap();
    w.add_tensor("n", GgmlType::F32, &[8], vec![1u8; 32])
        .unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn round_trip_all_value_types_and_tensors() {
    let bytes = sample();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.metadata().len(), 16);
    assert_eq!(g.metadata()[0].0, "general.architecture");
    assert_eq!(g.get("i16"), Some(&Value::I16(-300)));
    assert_eq!(g.get("f64"), Some(&Value::F64(0.5)));
    assert_eq!(g.get_u32("llama.block_count"), Ok(Some(30)));
    assert_eq!(g.get_u32("u8"), Ok(Some(200)));
    assert_eq!(g.get_u64("u64"), Ok(Some(1 << 40)));
    assert_eq!(g.get_f32("llama.rope.freq_base"), Ok(Some(10000.0)));
    assert_eq!(g.get_f32("f64"), Ok(Some(0.5)));
    assert_eq!(g.get_bool("flag"), Ok(Some(true)));
    assert_eq!(g.get_str("general.architecture"), Ok(Some("llama")));
    assert_eq!(g.get_str_array("tokens"), Ok(Some(vec!["a", "b", "<s>"])));
    assert_eq!(g.get_f32_array("scores"), Ok(Some(vec![0.5, -1.0])));
    assert_eq!(g.get_i32_array("types"), Ok(Some(vec![1, 3])));
    assert!(matches!(g.get("nested"), Some(Value::Array(ValueType::Array, v)) if v.len() == 2));
    assert_eq!(g.get_u32("missing"), Ok(None));

    let t = g.tensor("w").unwrap();
    assert_eq!(
        (t.ty, t.dims.as_slice(), t.data.len()),
        (GgmlType::Q8_0, &[32u64, 2][..], 68)
    );
    assert_eq!((t.n_elements(), t.row_len(), t.n_rows()), (64, 32, 2));
    assert!(t.data.iter().all(|&b| b == 7));
    let n = g.tensor("n").unwrap();
    assert_eq!((n.offset, n.n_rows()), (96, 1));
    assert_eq!(g.tensors().len(), 2);
    assert_eq!(g.data_offset() % 32, 0);
}

#[test]
fn wrong_types_and_ranges_name_the_key() {
    let bytes = sample();
    let g = Gguf::parse(&bytes).unwrap();
    let err = g.get_u32("general.architecture").unwrap_err();
    assert!(matches!(&err, GgufError::MetadataType { key, .. } if key == "general.architecture"));
    assert!(err.to_string().contains("general.architecture"));
    assert!(matches!(
        g.get_u32("i64"),
        Err(GgufError::MetadataRange { .. })
    ));
    assert!(matches!(
        g.get_u32("u64"),
        Err(GgufError::MetadataRange { .. })
    ));
    assert!(matches!(
        g.get_f32("u8"),
        Err(GgufError::MetadataType { .. })
    ));
    assert!(matches!(
        g.get_str("u8"),
        Err(GgufError::MetadataType { .. })
    ));
    assert!(matches!(
        g.get_str_array("scores"),
        Err(GgufError::MetadataType { .. })
    ));
    assert!(matches!(
        g.get_f32_array("tokens"),
        Err(GgufError::MetadataType { .. })
    ));
    assert!(matches!(
        g.get_i32_array("u8"),
        Err(GgufError::MetadataType { .. })
    ));
}

#[test]
fn writer_is_deterministic_and_honours_alignment() {
    assert_eq!(sample(), sample());
    let mut w = writer::GgufWriter::with_alignment(64).unwrap();
    w.add_tensor("a", GgmlType::F16, &[3], vec![0; 6]).unwrap();
    w.add_tensor("b", GgmlType::F16, &[3], vec![0; 6]).unwrap();
    let bytes = w.to_bytes().unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.tensor("b").unwrap().offset, 64);
    assert!(writer::GgufWriter::with_alignment(48).is_err());
}

#[test]
fn writer_refuses_bad_input() {
    let mut w = GgufWriter::new();
    w.add_u32("k", 1).unwrap();
    assert!(w.add_u32("k", 2).is_err());
    assert!(
        w.add_tensor("t", GgmlType::Q4_0, &[16], vec![0; 9])
            .is_err()
    );
    assert!(w.add_tensor("t", GgmlType::F32, &[2], vec![0; 7]).is_err());
    assert!(w.add_tensor("t", GgmlType::F32, &[2, 0], vec![]).is_err());
    w.add_tensor("t", GgmlType::F32, &[2], vec![0; 8]).unwrap();
    assert!(w.add_tensor("t", GgmlType::F32, &[2], vec![0; 8]).is_err());
    let mixed = Value::Array(ValueType::U8, vec![Value::I8(1)]);
    assert!(w.add("m", &mixed).is_err());
}

/// The first prefix length [`Gguf::parse_prefix`] accepts, checking on the way that every
/// shorter prefix is "needs more bytes" asking for more than it has and no more than that.
fn first_parsable_prefix(bytes: &[u8], lens: impl Iterator<Item = usize>) -> usize {
    for n in lens {
        match Gguf::parse_prefix(&bytes[..n], bytes.len()) {
            Ok(_) => return n,
            Err(GgufError::NeedMoreBytes { needed, available }) => {
                assert_eq!(available, n);
                assert!(needed > n && needed <= bytes.len(), "{n}: needs {needed}");
                assert!(
                    !GgufError::NeedMoreBytes { needed, available }
                        .to_string()
                        .is_empty()
                );
            }
            Err(e) => panic!("prefix of {n} bytes: {e}"),
        }
    }
    panic!("no prefix parsed")
}

#[test]
fn every_truncated_header_needs_more_bytes() {
    let bytes = sample();
    let whole = Gguf::parse(&bytes).unwrap();
    let header_end = first_parsable_prefix(&bytes, 0..=bytes.len());
    assert!(header_end <= whole.data_offset());
    assert!(header_end + whole.alignment() > whole.data_offset());
    let short = Gguf::parse_prefix(&bytes[..3], bytes.len()).unwrap_err();
    assert_eq!(
        short,
        GgufError::NeedMoreBytes {
            needed: 4,
            available: 3
        }
    );
    assert!(
        short
            .to_string()
            .starts_with("needs more bytes: at least 4")
    );
    // Every prefix from there on parses to the same header, with exactly the tensors wholly
    // inside it sliced.
    for n in header_end..=bytes.len() {
        let g = Gguf::parse_prefix(&bytes[..n], bytes.len()).unwrap();
        assert_eq!((g.file_len(), g.available()), (bytes.len(), n));
        assert_eq!(g.metadata(), whole.metadata());
        for (t, w) in g.tensors().iter().zip(whole.tensors()) {
            assert_eq!((t.name, &t.dims, t.offset), (w.name, &w.dims, w.offset));
            let range = g.file_range(t);
            assert_eq!(&bytes[range.clone()], w.data);
            let expected: &[u8] = if range.end <= n { w.data } else { &[] };
            assert_eq!(t.data, expected, "{} at prefix {n}", t.name);
        }
    }
}

#[test]
fn prefix_of_a_real_header_needs_more_bytes_until_the_tensor_infos_end() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny.Q8_0.gguf");
    let Ok(bytes) = std::fs::read(path) else {
        eprintln!("SKIPPED: {path} missing, run `make setup`");
        return;
    };
    let whole = Gguf::parse(&bytes).unwrap();
    let data_offset = whole.data_offset();
    // Strided (a parse of this header takes milliseconds), then byte by byte near the end.
    let coarse = (0..data_offset).step_by(65_521);
    let fine = data_offset.saturating_sub(2 * whole.alignment())..=data_offset;
    let header_end = first_parsable_prefix(&bytes, coarse.chain(fine));
    assert!(header_end + whole.alignment() > data_offset);
    // Retrying with what each error asks for converges on the same header.
    let (mut have, mut tries) = (0, 0);
    let g = loop {
        tries += 1;
        match Gguf::parse_prefix(&bytes[..have], bytes.len()) {
            Ok(g) => break g,
            Err(GgufError::NeedMoreBytes { needed, .. }) => have = needed.max(2 * have),
            Err(e) => panic!("{e}"),
        }
    };
    assert!(tries < 40, "{tries} attempts");
    assert_eq!(g.tensors().len(), whole.tensors().len());
    assert_eq!(g.metadata(), whole.metadata());
}

#[test]
fn declared_length_bounds_every_tensor() {
    let bytes = sample();
    let whole = Gguf::parse(&bytes).unwrap();
    let header = &bytes[..whole.data_offset()];
    // One byte short of the last tensor's end: out of bounds, although the prefix is fine.
    let last_end = whole
        .tensors()
        .iter()
        .map(|t| whole.file_range(t).end)
        .max();
    let short = Gguf::parse_prefix(header, last_end.unwrap() - 1).unwrap_err();
    assert!(
        matches!(&short, GgufError::TensorOutOfBounds { name, .. } if name == "n"),
        "{short}"
    );
    // A declared length inside the header is truncation, not a wait for more bytes.
    for file_len in [0, 10, 40, whole.data_offset() - 1] {
        let err = Gguf::parse_prefix(&bytes, file_len).unwrap_err();
        assert!(
            !matches!(err, GgufError::NeedMoreBytes { .. }),
            "{file_len}: {err}"
        );
    }
    // A longer declared length is fine; a prefix longer than it is cut to it.
    let longer = Gguf::parse_prefix(header, bytes.len() + 100).unwrap();
    assert!(longer.tensors().iter().all(|t| t.data.is_empty()));
    let cut = Gguf::parse_prefix(&bytes, last_end.unwrap()).unwrap();
    assert_eq!(cut.available(), last_end.unwrap());
    assert_eq!(cut.tensors(), whole.tensors());
}
