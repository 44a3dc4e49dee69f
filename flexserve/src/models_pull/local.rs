//! A local model file copied into a part file of the models directory.

use super::error::PullError;
use super::part::{HashingWriter, PartFile, Progress};
use super::{Fetched, settle_name};
use crate::model::info::ModelInfo;
use crate::serve::models::Catalogue;
use std::path::Path;

/// Copies `source` (named `NAME.gguf` or `NAME.fsm`) into a part file, if it reads as a
/// model: a file the daemon could not serve is not copied at all.
pub fn fetch(
    catalogue: &Catalogue,
    dir: &Path,
    source: &Path,
    name: Option<&str>,
) -> Result<Fetched, PullError> {
    if !matches!(
        source.extension().and_then(|e| e.to_str()),
        Some("gguf" | "fsm")
    ) {
        return Err(PullError::NotAModelFile(source.to_path_buf()));
    }
    let stem = source.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let name = settle_name(catalogue, dir, name.unwrap_or(stem))?;
    let source_name = source.display().to_string();
    ModelInfo::read(source).map_err(|e| PullError::NotAModel {
        source_name: source_name.clone(),
        why: e.to_string(),
    })?;
    let (part, file) = PartFile::create(dir, &name, "pull")?;
    let mut src = std::fs::File::open(source).map_err(PullError::io("open", source))?;
    let mut out = HashingWriter::new(file, Progress::quiet());
    std::io::copy(&mut src, &mut out).map_err(PullError::io("copy", source))?;
    let digest = out.finish().map_err(PullError::io("write", part.path()))?;
    Ok(Fetched {
        name,
        part,
        digest,
        source_name,
    })
}
