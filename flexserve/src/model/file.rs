//! Reading a model file from disk, with errors that say what to do.

use crate::model::huge_buffer::{HugePageBuffer, Pages};
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
    #[error(
        "{path} is neither a GGUF model (\"GGUF\") nor a sealed model (\"FLEXSEAL\"); pass a \
         .gguf or .fsm file"
    )]
    NotAModel { path: PathBuf },
    #[error(
        "{path} is a sealed model: only a guest it was sealed to can read it, so it cannot \
         run on the host engine; drop --unprotected (or use the plain GGUF)"
    )]
    SealedOnHost { path: PathBuf },
}

/// A model file mapped read-only: for the protected guest, where the host only checks the
/// file and streams it once, so copying it into memory first (a third of a cold start's
/// host time for a 145 MB model) buys nothing. Like llama.cpp's mmap, it assumes nobody
/// truncates the file while it is mapped (the guest would still catch a changed file by
/// its SHA-256).
pub struct MappedModel {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value; sharing `&[u8]` views of it
// across threads is like sharing any immutable buffer.
unsafe impl Send for MappedModel {}
// SAFETY: as above.
unsafe impl Sync for MappedModel {}

impl MappedModel {
    /// The file's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives (`new` checked
        // the mapping; `Drop` unmaps it); the mapping is private and read-only, so nothing
        // in this process writes it.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for MappedModel {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map_model`, which nothing uses after.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Maps the whole file read-only (see [`MappedModel`]).
pub fn map_model(path: &Path) -> Result<MappedModel, ModelFileError> {
    use std::os::fd::AsRawFd;
    let unreadable = |source| unreadable(path, source);
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    let not_gguf = || ModelFileError::NotAModel {
        path: path.to_path_buf(),
    };
    if len < 4 {
        return Err(not_gguf());
    }
    let len = usize::try_from(len).map_err(|_| {
        unreadable(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            "file too large",
        ))
    })?;
    // SAFETY: a fresh private read-only mapping of the whole file at an address the kernel
    // chooses; the result is checked before use. The fd may close afterwards.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(unreadable(std::io::Error::last_os_error()));
    }
    // SAFETY: advice on the mapping just made; failure only loses the read-ahead hint.
    unsafe { libc::madvise(ptr, len, libc::MADV_WILLNEED) };
    let mapped = MappedModel { ptr, len };
    let bytes = mapped.as_slice();
    if !bytes.starts_with(b"GGUF") && !bytes.starts_with(&sealed_model::MAGIC) {
        return Err(not_gguf());
    }
    Ok(mapped)
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

/// Reads the whole file into memory on `pages`; the host engine borrows tensors from it
/// (benchmarks compare it on base pages with the guest, whose private memory may have none).
pub fn read_model_on(path: &Path, pages: Pages) -> Result<HugePageBuffer, ModelFileError> {
    let unreadable = |source| unreadable(path, source);
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    let len = usize::try_from(len).map_err(|_| {
        unreadable(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            "file too large",
        ))
    })?;
    let bytes = HugePageBuffer::read_from(&mut file, len, pages).map_err(unreadable)?;
    let path = path.to_path_buf();
    match bytes.as_slice() {
        b if b.starts_with(b"GGUF") => Ok(bytes),
        b if b.starts_with(&sealed_model::MAGIC) => Err(ModelFileError::SealedOnHost { path }),
        _ => Err(ModelFileError::NotAModel { path }),
    }
}
