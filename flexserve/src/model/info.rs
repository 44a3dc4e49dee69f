//! What can be said about a model file without loading it, for the daemon's `/v1/models`,
//! Ollama's `/api/tags` and `/api/show`, and `flexserve models`: a plain GGUF's
//! architecture, parameter count, dominant tensor type and context from its metadata and
//! tensor table; a sealed model's context, layer count and owner key from its public header
//! alone (its body is never parsed on the host: the host must not know more than the owner
//! put in the header).

use super::file::{ModelFileError, map_model};
use inference_guest::ggml_type::GgmlType;
use inference_guest::gguf::{Gguf, GgufError};
use sealed_model::{Header, SealError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Who owns a plain model: nobody signed it, so the server that serves it.
pub const DEFAULT_OWNER: &str = "flexserve";

/// Why a model file cannot be described.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error("{path}: not a GGUF file the engine reads: {source}")]
    Gguf { path: PathBuf, source: GgufError },
    #[error("{path}: its sealed header is invalid: {source}")]
    Sealed { path: PathBuf, source: SealError },
}

/// A model file's metadata, as far as the host may read it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// The file's size, bytes.
    pub size: u64,
    /// A sealed model (only a guest it was sealed to reads its weights).
    pub sealed: bool,
    /// The model's own context (GGUF `<arch>.context_length`; a sealed header's
    /// `context_len`), tokens.
    pub context_length: u32,
    /// `general.architecture`; `None` for a sealed model (its header does not say).
    pub architecture: Option<String>,
    /// Elements of all its tensors; `None` for a sealed model.
    pub parameter_count: Option<u64>,
    /// The tensor type most of its weight bytes are in (`Q4_K`, `Q8_0`, `F16`, ...);
    /// `None` for a sealed model.
    pub quantization: Option<&'static str>,
    /// Transformer blocks (a sealed header lists each layer's byte range).
    pub block_count: Option<u32>,
    /// A sealed model's owner key fingerprint (16 hex digits); [`DEFAULT_OWNER`] otherwise.
    pub owner: String,
}

impl ModelInfo {
    /// Reads `path`'s metadata: a sealed model's header, a plain model's GGUF header and
    /// tensor table (the weights are mapped, not read).
    pub fn read(path: &Path) -> Result<Self, InfoError> {
        let map = map_model(path)?;
        Self::from_bytes(path, map.as_slice())
    }

    fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, InfoError> {
        let size = bytes.len() as u64;
        if bytes.starts_with(&sealed_model::MAGIC) {
            let (header, _, _) = Header::split_file(bytes).map_err(|source| InfoError::Sealed {
                path: path.to_path_buf(),
                source,
            })?;
            return Ok(Self {
                size,
                sealed: true,
                context_length: header.context_len(),
                architecture: None,
                parameter_count: None,
                quantization: None,
                block_count: u32::try_from(header.layers().len()).ok(),
                owner: header.owner().fingerprint().to_string(),
            });
        }
        let gguf = |source| InfoError::Gguf {
            path: path.to_path_buf(),
            source,
        };
        let g = Gguf::parse(bytes).map_err(gguf)?;
        let architecture = g.get_str("general.architecture").map_err(gguf)?;
        let per_arch = |key: &str| -> Result<Option<u32>, InfoError> {
            match architecture {
                Some(a) => g.get_u32(&format!("{a}.{key}")).map_err(gguf),
                None => Ok(None),
            }
        };
        Ok(Self {
            size,
            sealed: false,
            context_length: per_arch("context_length")?.unwrap_or(0),
            architecture: architecture.map(str::to_string),
            parameter_count: Some(g.tensors().iter().map(|t| t.n_elements() as u64).sum()),
            quantization: dominant_type(&g).map(GgmlType::name),
            block_count: per_arch("block_count")?,
            owner: DEFAULT_OWNER.to_string(),
        })
    }

    /// The parameter count as Ollama shows it: `135M`, `1.2B`.
    pub fn parameter_size(&self) -> Option<String> {
        let n = self.parameter_count? as f64;
        Some(if n >= 1e9 {
            format!("{:.1}B", n / 1e9)
        } else if n >= 1e6 {
            format!("{:.0}M", n / 1e6)
        } else {
            format!("{:.0}K", n / 1e3)
        })
    }
}

/// The type of most weight bytes, over the matrices (norms and biases are F32 in every
/// file and say nothing of its quantisation).
fn dominant_type(g: &Gguf<'_>) -> Option<GgmlType> {
    let mut bytes: HashMap<GgmlType, u64> = HashMap::new();
    for t in g.tensors().iter().filter(|t| t.dims.len() >= 2) {
        *bytes.entry(t.ty).or_default() += t.n_bytes() as u64;
    }
    // Ties (never seen in a real file) go to the lower type id, so the answer is stable.
    bytes
        .into_iter()
        .max_by_key(|&(ty, n)| (n, std::cmp::Reverse(ty.id())))
        .map(|(ty, _)| ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Option<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models");
        dir.join("tiny.Q8_0.gguf").exists().then_some(dir)
    }

    #[test]
    fn a_plain_model_says_what_it_is() {
        let Some(dir) = models() else {
            return;
        };
        let i = ModelInfo::read(&dir.join("tiny.Q8_0.gguf")).unwrap();
        assert!(!i.sealed);
        assert_eq!(i.quantization, Some("Q8_0"));
        assert_eq!(i.owner, DEFAULT_OWNER);
        assert!(
            i.context_length > 0 && i.parameter_count.unwrap() > 0,
            "{i:?}"
        );
        assert!(i.architecture.is_some() && i.block_count.is_some(), "{i:?}");
        assert_eq!(
            i.size,
            std::fs::metadata(dir.join("tiny.Q8_0.gguf")).unwrap().len()
        );
    }

    #[test]
    fn other_files_are_errors_not_panics() {
        assert!(matches!(
            ModelInfo::from_bytes(Path::new("x"), b"GGUF\x03\x00"),
            Err(InfoError::Gguf { .. })
        ));
        let mut sealed = sealed_model::MAGIC.to_vec();
        sealed.extend_from_slice(&[0xff; 40]);
        assert!(matches!(
            ModelInfo::from_bytes(Path::new("x"), &sealed),
            Err(InfoError::Sealed { .. })
        ));
    }

    #[test]
    fn parameter_sizes_read_as_ollama_shows_them() {
        let with = |n| ModelInfo {
            size: 0,
            sealed: false,
            context_length: 0,
            architecture: None,
            parameter_count: n,
            quantization: None,
            block_count: None,
            owner: DEFAULT_OWNER.into(),
        };
        assert_eq!(
            with(Some(134_515_008)).parameter_size().as_deref(),
            Some("135M")
        );
        assert_eq!(
            with(Some(8_030_261_248)).parameter_size().as_deref(),
            Some("8.0B")
        );
        assert_eq!(with(None).parameter_size(), None);
    }
}
