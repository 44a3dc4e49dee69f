//! Tests of the tiny-model generator and the converter (F32 paths, which need no quantiser).

use inference_guest::ggml_type::GgmlType;
use inference_guest::gguf::writer::GgufWriter;
use inference_guest::gguf::{Gguf, Value};

use crate::convert::{ConvertError, convert};
use crate::tiny::{TinyParams, generate};

/// A minimal tokenizer-only GGUF standing in for a real model's vocabulary.
fn vocab() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama").unwrap();
    w.add_str("tokenizer.ggml.model", "gpt2").unwrap();
    w.add_str_array("tokenizer.ggml.tokens", &["<s>", "</s>", "a", "b", "ab"])
        .unwrap();
    w.add_i32_array("tokenizer.ggml.token_type", &[3, 3, 1, 1, 1])
        .unwrap();
    w.add_str_array("tokenizer.ggml.merges", &["a b"]).unwrap();
    w.add_u32("tokenizer.ggml.bos_token_id", 0).unwrap();
    w.to_bytes().unwrap()
}

fn params(seed: u64) -> TinyParams {
    TinyParams {
        arch: crate::tiny::TinyArch::Llama,
        ty: GgmlType::F32,
        type_for: Vec::new(),
        seed,
        embd: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: None,
        ff: 96,
        ctx: 128,
    }
}

fn tiny(seed: u64) -> Vec<u8> {
    let v = vocab();
    let g = Gguf::parse(&v).unwrap();
    generate(&g, &params(seed)).unwrap().to_bytes().unwrap()
}

#[test]
fn tiny_is_deterministic_per_seed() {
    assert_eq!(tiny(7), tiny(7));
    assert_ne!(tiny(7), tiny(8));
}

#[test]
fn tiny_parses_back_with_llama_names_and_shapes() {
    let bytes = tiny(1);
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.get_str("general.architecture"), Ok(Some("llama")));
    assert_eq!(g.get_u32("general.file_type"), Ok(Some(0)));
    assert_eq!(g.get_u32("llama.block_count"), Ok(Some(2)));
    assert_eq!(g.get_u32("llama.rope.dimension_count"), Ok(Some(16)));
    assert_eq!(g.get_u32("llama.vocab_size"), Ok(Some(5)));
    assert_eq!(
        g.get_str_array("tokenizer.ggml.merges"),
        Ok(Some(vec!["a b"]))
    );
    assert_eq!(g.get_u32("tokenizer.ggml.bos_token_id"), Ok(Some(0)));
    assert_eq!(g.tensors().len(), 1 + 2 * 9 + 1);
    assert!(g.tensor("output.weight").is_none(), "embeddings are tied");
    let dims = |n: &str| g.tensor(n).unwrap().dims.clone();
    assert_eq!(dims("token_embd.weight"), [64, 5]);
    assert_eq!(dims("blk.1.attn_q.weight"), [64, 64]);
    assert_eq!(dims("blk.1.attn_k.weight"), [64, 32]);
    assert_eq!(dims("blk.0.attn_v.weight"), [64, 32]);
    assert_eq!(dims("blk.0.ffn_gate.weight"), [64, 96]);
    assert_eq!(dims("blk.0.ffn_down.weight"), [96, 64]);
    assert_eq!(dims("output_norm.weight"), [64]);

    let floats = |n: &str| -> Vec<f32> {
        let d = g.tensor(n).unwrap().data;
        d.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    assert!(
        floats("blk.0.attn_norm.weight")
            .iter()
            .all(|x| (x - 1.0).abs() < 5.0 * crate::tiny::WEIGHT_STD)
    );
    let w = floats("blk.0.ffn_up.weight");
    let mean = w.iter().sum::<f32>() / w.len() as f32;
    let std = (w.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / w.len() as f32).sqrt();
    assert!(
        mean.abs() < 0.1 * crate::tiny::WEIGHT_STD
            && (std - crate::tiny::WEIGHT_STD).abs() < 0.1 * crate::tiny::WEIGHT_STD,
        "mean {mean} std {std}"
    );
}

#[test]
fn tiny_refuses_bad_shapes() {
    let v = vocab();
    let g = Gguf::parse(&v).unwrap();
    let mut p = params(0);
    p.kv_heads = 3;
    assert!(generate(&g, &p).is_err());
    let mut p = params(0);
    p.ty = GgmlType::Q4K; // 64 is not a multiple of 256
    assert!(generate(&g, &p).is_err());
}

#[test]
fn tiny_types_each_tensor_class_as_asked() {
    let v = vocab();
    let g = Gguf::parse(&v).unwrap();
    let mut p = params(0);
    p.ty = GgmlType::Q5_1;
    p.type_for = vec![
        ("token_embd".into(), GgmlType::Q5_0),
        ("ffn_down".into(), GgmlType::Q8_0),
    ];
    let bytes = generate(&g, &p).unwrap().to_bytes().unwrap();
    let t = Gguf::parse(&bytes).unwrap();
    let ty = |n: &str| t.tensor(n).unwrap().ty;
    assert_eq!(ty("token_embd.weight"), GgmlType::Q5_0);
    assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q8_0);
    assert_eq!(ty("blk.1.attn_q.weight"), GgmlType::Q5_1);
    assert_eq!(ty("output_norm.weight"), GgmlType::F32);
    p.type_for = vec![("ffn_dwn".into(), GgmlType::Q8_0)];
    assert!(generate(&g, &p).is_err(), "unknown class");
    p.type_for = vec![("attn_v".into(), GgmlType::Q5K)]; // 64 is not a multiple of 256
    assert!(generate(&g, &p).is_err());
}

/// Each architecture's tiny model loads in the engine with the graph changes it is meant
/// to exercise (the token-for-token checks are in inference-guest's engine_reference).
#[test]
fn tiny_gemma2_and_phi3_load_in_the_engine_as_their_architecture() {
    use crate::tiny::TinyArch;
    use inference_guest::model::{GemmaVersion, Model};
    use inference_guest::quant::Kernels;
    let v = vocab();
    let g = Gguf::parse(&v).unwrap();
    let mut p = params(0);
    p.arch = TinyArch::Gemma2;
    let bytes = generate(&g, &p).unwrap().to_bytes().unwrap();
    let gguf = Gguf::parse(&bytes).unwrap();
    let m = Model::from_gguf(&gguf, Kernels::scalar()).unwrap();
    let gemma = m.cfg.gemma.as_ref().unwrap();
    assert_eq!(gemma.version, GemmaVersion::Two);
    assert!(gemma.is_swa(0) && !gemma.is_swa(1));
    assert!(gemma.attn_softcap > 0.0 && gemma.final_softcap > 0.0);
    assert!(m.weights.layers[0].attn_post_norm.is_some());

    p.arch = TinyArch::Phi3;
    let bytes = generate(&g, &p).unwrap().to_bytes().unwrap();
    let gguf = Gguf::parse(&bytes).unwrap();
    assert!(gguf.tensor("blk.0.attn_qkv.weight").is_some());
    assert!(gguf.tensor("blk.0.ffn_gate.weight").is_none());
    let m = Model::from_gguf(&gguf, Kernels::scalar()).unwrap();
    assert_eq!(m.cfg.rope_dims, m.cfg.head_dim / 2);
    let layer = &m.weights.layers[0];
    assert_eq!((layer.wq.rows, layer.wk.rows, layer.wv.rows), (64, 32, 32));
    assert_eq!((layer.w_gate.rows, layer.w_up.rows), (96, 96));
    p.head_dim = Some(32); // 4 heads of 32 over an embedding of 64
    assert!(
        generate(&g, &p).is_err(),
        "phi3 needs heads × head size = embd"
    );
}

/// `convert` reads and writes every type the engine reads: F32 → T → F32 matches the
/// reference dequantisation of T.
#[test]
fn convert_round_trips_every_type() {
    let v = vocab();
    let g = Gguf::parse(&v).unwrap();
    let mut p = params(5);
    (p.embd, p.ff) = (256, 256);
    let src = generate(&g, &p).unwrap().to_bytes().unwrap();
    let f32_file = Gguf::parse(&src).unwrap();
    for ty in GgmlType::ALL {
        let typed = convert(&f32_file, ty, |_, _, _| {})
            .unwrap()
            .to_bytes()
            .unwrap();
        let tg = Gguf::parse(&typed).unwrap();
        let t = tg.tensor("blk.0.ffn_up.weight").unwrap();
        assert_eq!(t.ty, ty);
        let back = convert(&tg, GgmlType::F32, |_, _, _| {})
            .unwrap()
            .to_bytes()
            .unwrap();
        let bg = Gguf::parse(&back).unwrap();
        let mut want = vec![0f32; 256];
        crate::codec::dequantize_row(ty, &t.data[..ty.row_bytes(256).unwrap()], &mut want);
        let got = &bg.tensor("blk.0.ffn_up.weight").unwrap().data[..1024];
        let got: Vec<f32> = got
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got, want, "{}", ty.name());
    }
}

#[test]
fn convert_f32_to_f32_is_the_identity() {
    let src = tiny(3);
    let g = Gguf::parse(&src).unwrap();
    let mut seen = 0;
    let out = convert(&g, GgmlType::F32, |_, _, _| seen += 1)
        .unwrap()
        .to_bytes()
        .unwrap();
    assert_eq!(seen, g.tensors().len());
    // F32 → F32 is the identity, so the file is byte-identical.
    assert_eq!(out, src);

    let q = Gguf::parse(&out).unwrap();
    let meta: Vec<(&str, &Value<'_>)> = q.metadata().iter().map(|(k, v)| (*k, v)).collect();
    assert_eq!(meta.len(), g.metadata().len());
}

#[test]
fn convert_refuses_rows_that_are_not_whole_blocks() {
    let src = tiny(3);
    let g = Gguf::parse(&src).unwrap();
    let err = convert(&g, GgmlType::Q6K, |_, _, _| {}).err().unwrap();
    assert!(
        matches!(&err, ConvertError::RowNotWholeBlocks { tensor, .. } if tensor == "token_embd.weight")
    );
    assert!(err.to_string().contains("token_embd.weight"));
}

#[test]
fn relayout_keeps_every_tensor_and_puts_each_layer_in_one_range() {
    let bytes = tiny(3);
    let original = Gguf::parse(&bytes).unwrap();
    let relaid = model_tools::relayout::relayout(&original).unwrap();
    let g = Gguf::parse(&relaid.bytes).unwrap();
    assert_eq!(g.metadata(), original.metadata());
    assert_eq!(relaid.layers.len(), 2 + 2, "embeddings, two blocks, output");
    assert_eq!(relaid.layers[0].start, 0);
    assert_eq!(relaid.layers.last().unwrap().end, relaid.bytes.len() as u64);
    for pair in relaid.layers.windows(2) {
        assert_eq!(pair[0].end, pair[1].start, "contiguous");
        assert!(pair[0].start < pair[0].end, "non-empty");
    }
    let layer_of = |name: &str| {
        if name.starts_with("token_embd.") {
            0
        } else if let Some(rest) = name.strip_prefix("blk.") {
            1 + rest.split('.').next().unwrap().parse::<usize>().unwrap()
        } else {
            3
        }
    };
    for t in original.tensors() {
        let r = g.tensor(t.name).expect("every tensor is kept");
        assert_eq!(r.data, t.data, "{} keeps its bytes", t.name);
        let start = (g.data_offset() as u64) + r.offset;
        let range = &relaid.layers[layer_of(t.name)];
        assert!(
            range.start <= start && start + r.data.len() as u64 <= range.end,
            "{} lies in its layer's range",
            t.name
        );
    }
}

#[test]
fn a_sealed_model_unseals_to_the_relaid_gguf_for_its_guest_only() {
    use sealed_model::{Header, Unsealer, derive_guest_key};
    let dir = std::env::temp_dir().join(format!("flexserve-seal-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (model, sealed, owner) = (dir.join("m.gguf"), dir.join("m.fsm"), dir.join("owner"));
    let bytes = tiny(5);
    std::fs::write(&model, &bytes).unwrap();
    let owner_public = crate::sealing::keygen(&owner).unwrap();
    let guest = derive_guest_key(&[7; 32], &[1; 32]);
    let other = derive_guest_key(&[7; 32], &[2; 32]);
    let to = [guest.public().to_string()];
    let made = crate::sealing::seal_file(&model, &sealed, &to, &owner, 4096).unwrap();
    let file = std::fs::read(&sealed).unwrap();
    assert_eq!(made.file_bytes, file.len() as u64);

    let (header, head, body) = Header::split_file(&file).unwrap();
    assert_eq!(header.owner().to_string(), owner_public);
    let relaid = model_tools::relayout::relayout(&Gguf::parse(&bytes).unwrap()).unwrap();
    assert_eq!(header.layers(), relaid.layers.as_slice());
    let mut unsealer = Unsealer::new(head, &guest, &[header.owner()]).unwrap();
    let mut plain = Vec::new();
    while let Some(chunk) = unsealer.next_chunk() {
        let sealed = chunk.sealed();
        let mut buf = body[sealed.start as usize..sealed.end as usize].to_vec();
        plain.extend_from_slice(unsealer.open_chunk(chunk.index, &mut buf).unwrap());
    }
    unsealer.finish().unwrap();
    assert_eq!(plain, relaid.bytes, "the guest gets the re-laid GGUF back");
    assert!(
        Unsealer::new(head, &other, &[]).is_err(),
        "another image's key cannot unseal"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
