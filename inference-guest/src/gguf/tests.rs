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
