//! The Qwen2.5 tokenizer from `models/` (151k tokens), read from the GGUF file's header.

use inference_guest::gguf::Gguf;
use inference_guest::tokenizer::Tokenizer;
use std::io::Read;
use std::path::PathBuf;

pub const MODEL: &str = "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf";

/// The tokenizer of `models/<MODEL>` (or `path`), or `None` with a note if it is missing.
pub fn tokenizer(path: Option<PathBuf>) -> Option<Tokenizer> {
    let path = path.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(MODEL)
    });
    let Ok(file) = std::fs::File::open(&path) else {
        println!(
            "SKIPPED: model missing ({}), run make setup",
            path.display()
        );
        return None;
    };
    let len = file.metadata().ok()?.len() as usize;
    // The vocabulary is in the metadata, at the front: read until the header parses.
    let mut prefix = Vec::new();
    let mut want = 16 << 20;
    loop {
        prefix.clear();
        file.try_clone()
            .ok()?
            .take(want as u64)
            .read_to_end(&mut prefix)
            .ok()?;
        match Gguf::parse_prefix(&prefix, len) {
            Ok(g) => return Some(Tokenizer::from_gguf(&g).expect("tokenizer")),
            Err(_) if want < len => want = (want * 2).min(len),
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}
