//! Reading a model file from disk, with errors that say what to do.

use std::path::{Path, PathBuf};

/// A model file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error(
        "model file {path} does not exist; run `make setup` for the default model or pass -m FILE"
    )]
    Missing { path: PathBuf },
    #[error("cannot read model file {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a GGUF file (it does not start with \"GGUF\"); pass a .gguf model")]
    NotGguf { path: PathBuf },
}

/// Reads the whole file; the engine borrows tensors from these bytes.
pub fn read_model(path: &Path) -> Result<Vec<u8>, ModelFileError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ModelFileError::Missing { path: path.to_path_buf() },
        _ => ModelFileError::Unreadable { path: path.to_path_buf(), source },
    })?;
    if !bytes.starts_with(b"GGUF") {
        return Err(ModelFileError::NotGguf { path: path.to_path_buf() });
    }
    Ok(bytes)
}
