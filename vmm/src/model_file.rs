//! Reading a model file from disk, with errors that say what to do.

use crate::huge_buffer::HugePageBuffer;
use std::path::{Path, PathBuf};

/// A model file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error(
        "model file {path} does not exist; run `make setup` for the default model or pass -m FILE"
    )]
    Missing { path: PathBuf },
    #[error("cannot read model file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file (it does not start with \"GGUF\"); pass a .gguf model")]
    NotGguf { path: PathBuf },
}

/// Reads the whole file into ordinary memory: for the protected guest, where the host only
/// checks the file and streams it once. (Huge pages would only add compaction stalls on the
/// first fault, which were the slowest part of a cold start.)
pub fn read_model_plain(path: &Path) -> Result<Vec<u8>, ModelFileError> {
    let bytes = std::fs::read(path).map_err(|source| unreadable(path, source))?;
    if !bytes.starts_with(b"GGUF") {
        return Err(ModelFileError::NotGguf {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

fn unreadable(path: &Path, source: std::io::Error) -> ModelFileError {
    match source.kind() {
        std::io::ErrorKind::NotFound => ModelFileError::Missing {
            path: path.to_path_buf(),
        },
        _ => ModelFileError::Unreadable {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Reads the whole file into huge-page-backed memory; the engine borrows tensors from it.
pub fn read_model(path: &Path) -> Result<HugePageBuffer, ModelFileError> {
    let unreadable = |source| unreadable(path, source);
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    let len = usize::try_from(len).map_err(|_| {
        unreadable(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            "file too large",
        ))
    })?;
    let bytes = HugePageBuffer::read_from(&mut file, len).map_err(unreadable)?;
    if !bytes.as_slice().starts_with(b"GGUF") {
        return Err(ModelFileError::NotGguf {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}
