//! `--convert TYPE` and `--seal`: the pulled GGUF re-typed or sealed into a new part file
//! by the code `flexserve-model convert` and `flexserve-model seal` run.

use super::error::PullError;
use super::part::PartFile;
use crate::cli::PullArgs;
use inference_guest::ggml_type::GgmlType;
use inference_guest::gguf::Gguf;
use std::io::Write;
use std::path::Path;

/// `input` with every 2-D weight re-typed to `ty` (like `llama-quantize --pure`).
pub fn convert(
    dir: &Path,
    name: &str,
    input: &PartFile,
    ty: GgmlType,
    source_name: &str,
) -> Result<PartFile, PullError> {
    let fail = |why: String| PullError::Convert {
        source_name: source_name.to_string(),
        why,
    };
    let bytes = std::fs::read(input.path()).map_err(PullError::io("read", input.path()))?;
    let gguf = Gguf::parse(&bytes).map_err(|e| fail(e.to_string()))?;
    eprintln!(
        "converting to {} ({} tensors)",
        ty.name(),
        gguf.tensors().len()
    );
    let writer =
        model_tools::convert::convert(&gguf, ty, |_, _, _| {}).map_err(|e| fail(e.to_string()))?;
    let (part, file) = PartFile::create(dir, name, "convert")?;
    let mut out = std::io::BufWriter::new(file);
    writer.write_to(&mut out).map_err(|e| fail(e.to_string()))?;
    out.flush().map_err(PullError::io("write", part.path()))?;
    Ok(part)
}

/// `input` sealed to the guests `--to`, signed with `--sign`, as `flexserve-model seal`.
pub fn seal(
    dir: &Path,
    name: &str,
    input: &PartFile,
    args: &PullArgs,
) -> Result<PartFile, PullError> {
    let Some(sign) = args.sign.as_deref() else {
        return Err(PullError::SealNeeds("--sign"));
    };
    if args.to.is_empty() {
        return Err(PullError::SealNeeds("--to"));
    }
    // `seal_file` writes the output itself; the part file only reserves the name and
    // removes whatever is there if sealing fails.
    let (part, _) = PartFile::create(dir, name, "seal")?;
    let chunk_bytes = args.chunk_bytes.unwrap_or(sealed_model::MAX_CHUNK_BYTES);
    let sealed =
        model_tools::sealing::seal_file(input.path(), part.path(), &args.to, sign, chunk_bytes)?;
    eprintln!(
        "sealed: {} layers, {} plaintext bytes, {} bytes sealed to {} guest(s)",
        sealed.layers,
        sealed.body_bytes,
        sealed.file_bytes,
        args.to.len()
    );
    Ok(part)
}
