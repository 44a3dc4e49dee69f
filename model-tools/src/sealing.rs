//! The model owner's side of sealed models (`docs/sealed-model.md`): owner keys, sealing a
//! GGUF to guests, and a sealed file's public header in words.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use inference_guest::gguf::{Gguf, GgufError};
use inference_guest::model::{LlamaConfig, ModelError};
use sealed_model::{
    GuestPublicKey, Header, OsRng, OwnerKey, SealError, SealRequest, TryRngCore, seal,
};

use crate::relayout::{RelayoutError, relayout};

/// What went wrong on the owner's side.
#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    #[error("{path}: {reason}")]
    Io {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path} exists; keygen never overwrites a key (move it away or choose another name)")]
    KeyExists { path: PathBuf },
    #[error("{0} is not a valid GGUF file: {1}")]
    NotGguf(PathBuf, GgufError),
    #[error("{0} is not a model the engine runs: {1}")]
    NotAModel(PathBuf, ModelError),
    #[error(transparent)]
    Relayout(#[from] RelayoutError),
    #[error(
        "--to {given:?}: {reason} (give a guest's sealing public key, as `flexserve guest-key` prints it, or a file holding it)"
    )]
    GuestKey { given: String, reason: SealError },
    #[error("{path}: not an owner secret key ({reason}); make one with `flexserve-model keygen`")]
    OwnerKey { path: PathBuf, reason: SealError },
    #[error("sealing failed: {0}")]
    Seal(#[from] SealError),
    #[error("{path}: not a sealed model: {reason}")]
    NotSealed { path: PathBuf, reason: SealError },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SealingError + '_ {
    move |reason| SealingError::Io {
        path: path.to_path_buf(),
        reason,
    }
}

/// Writes a new owner key: the secret to `secret` (mode 0600, never overwritten) and the
/// public key to `secret` + `.pub`. Returns the public key's text.
pub fn keygen(secret: &Path) -> Result<String, SealingError> {
    let key = OwnerKey::generate(&mut OsRng.unwrap_err());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(secret)
        .map_err(|reason| match reason.kind() {
            std::io::ErrorKind::AlreadyExists => SealingError::KeyExists {
                path: secret.to_path_buf(),
            },
            _ => SealingError::Io {
                path: secret.to_path_buf(),
                reason,
            },
        })?;
    file.write_all(key.to_secret_text().as_bytes())
        .map_err(io(secret))?;
    let public = format!("{}\n", key.public());
    let public_path = PathBuf::from(format!("{}.pub", secret.display()));
    std::fs::write(&public_path, &public).map_err(io(&public_path))?;
    Ok(public.trim().to_string())
}

/// A guest key given on the command line: 64 hex digits, or a file holding them.
fn guest_key(given: &str) -> Result<GuestPublicKey, SealingError> {
    let text = match std::fs::read_to_string(given) {
        Ok(text) => text,
        Err(_) => given.to_string(),
    };
    text.parse().map_err(|reason| SealingError::GuestKey {
        given: given.to_string(),
        reason,
    })
}

/// What `seal` made.
pub struct Sealed {
    pub layers: usize,
    pub body_bytes: u64,
    pub file_bytes: u64,
}

/// Seals `input` (a GGUF) to the guests `to`, signed with the owner key file `sign`, into
/// `output`. The model is checked as the engine loads it and re-laid layer by layer first.
pub fn seal_file(
    input: &Path,
    output: &Path,
    to: &[String],
    sign: &Path,
    chunk_bytes: u32,
) -> Result<Sealed, SealingError> {
    let recipients = to
        .iter()
        .map(|k| guest_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let owner_text = std::fs::read_to_string(sign).map_err(io(sign))?;
    let owner =
        OwnerKey::from_secret_text(&owner_text).map_err(|reason| SealingError::OwnerKey {
            path: sign.to_path_buf(),
            reason,
        })?;
    let bytes = std::fs::read(input).map_err(io(input))?;
    let gguf = Gguf::parse(&bytes).map_err(|e| SealingError::NotGguf(input.to_path_buf(), e))?;
    let shape = LlamaConfig::from_gguf(&gguf)
        .map_err(|e| SealingError::NotAModel(input.to_path_buf(), e))?;
    let relaid = relayout(&gguf)?;
    let request = SealRequest {
        plaintext: &relaid.bytes,
        layers: &relaid.layers,
        chunk_bytes,
        context_len: u32::try_from(shape.n_ctx_train).unwrap_or(u32::MAX),
        kv_bytes_per_token: shape.kv_cache_bytes(1) as u64,
        recipients: &recipients,
    };
    let sealed = seal(&request, &owner, &mut OsRng.unwrap_err())?;
    std::fs::write(output, &sealed).map_err(io(output))?;
    Ok(Sealed {
        layers: relaid.layers.len(),
        body_bytes: relaid.bytes.len() as u64,
        file_bytes: sealed.len() as u64,
    })
}

/// Whether `bytes` start like a sealed model.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(&sealed_model::MAGIC)
}

/// The public header of a sealed model in words (nothing in it needs a key).
pub fn inspect(path: &Path, bytes: &[u8]) -> Result<String, SealingError> {
    let (header, _) = Header::parse(bytes).map_err(|reason| SealingError::NotSealed {
        path: path.to_path_buf(),
        reason,
    })?;
    let signed = match header.verify_signature() {
        Ok(owner) => format!("valid, by owner {owner}"),
        Err(e) => format!("INVALID ({e})"),
    };
    let mut o = String::new();
    let _ = writeln!(o, "sealed model, format version {}", sealed_model::VERSION);
    let _ = writeln!(o, "signature: {signed}");
    let _ = writeln!(
        o,
        "body: {} bytes in {} chunks of up to {} bytes; {} bytes sealed",
        header.body_bytes(),
        header.chunk_count(),
        header.chunk_bytes(),
        header.sealed_body_bytes()
    );
    let _ = writeln!(
        o,
        "context: {} tokens, KV cache {} bytes per token",
        header.context_len(),
        header.kv_bytes_per_token()
    );
    let digest: String = header
        .content_digest()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let _ = writeln!(o, "content SHA-256: {digest}");
    let _ = writeln!(o, "recipients ({}):", header.recipients().len());
    for r in header.recipients() {
        let _ = writeln!(o, "  {}", r.public_key);
    }
    let _ = writeln!(o, "layers ({}), in load order:", header.layers().len());
    for (i, l) in header.layers().iter().enumerate() {
        let _ = writeln!(
            o,
            "  {i:4}  {:>12} .. {:>12}  ({} bytes)",
            l.start,
            l.end,
            l.end - l.start
        );
    }
    Ok(o)
}
