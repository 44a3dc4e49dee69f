//! Where a guest's secrets come from: the key root, a 32-byte secret handed to the guest
//! with the measurement of the images it boots, from which the guest derives its sealing
//! key (`sealed_model::derive_guest_key`). A different image derives a different key, so
//! only the image a model was sealed to can unseal it.
//!
//! Only the development root exists: a secret in a file the VMM reads. The host that runs
//! the VMM can read that file, so it protects nothing against a compromised host; it lets
//! everything above it (sealing, unsealing, image binding) be built and tested. The
//! production root comes from below the host (on Android pKVM, pvmfw's DICE chain: the
//! protected VM's CDI_Seal, bound to the image's signing authority so that keys survive
//! signed updates), is never visible to the host, and plugs in behind [`KeyRoot`]; see
//! docs/sealed-model.md.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Environment variable naming the development root's file.
pub const KEY_ROOT_ENV: &str = "FLEXSERVE_KEY_ROOT";

/// What went wrong with the key root.
#[derive(Debug, thiserror::Error)]
pub enum KeyRootError {
    #[error("cannot read the development key root {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("cannot create the development key root {path}: {reason}")]
    Create {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error(
        "the development key root {path} holds {len} bytes, not 32; it is damaged (remove it \
         to make a new one, which changes every guest's sealing key)"
    )]
    BadLength { path: PathBuf, len: usize },
    #[error("no place for the development key root: set {KEY_ROOT_ENV}, XDG_DATA_HOME or HOME")]
    NoPlace,
}

/// A source of the guest's root secret.
pub trait KeyRoot {
    /// How the isolation reports name it.
    fn describe(&self) -> &'static str;
    /// The 32-byte root secret.
    fn secret(&self) -> &[u8; 32];
}

/// The development root: a secret in a file of the host (see the module documentation).
pub struct DevelopmentRoot {
    secret: [u8; 32],
    path: PathBuf,
}

impl DevelopmentRoot {
    /// The root file: `$FLEXSERVE_KEY_ROOT`, else `$XDG_DATA_HOME/flexserve/key-root`, else
    /// `~/.local/share/flexserve/key-root`.
    pub fn default_path() -> Result<PathBuf, KeyRootError> {
        if let Some(p) = std::env::var_os(KEY_ROOT_ENV) {
            return Ok(PathBuf::from(p));
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .ok_or(KeyRootError::NoPlace)?;
        Ok(data.join("flexserve").join("key-root"))
    }

    /// Reads the root at `path`, creating it (32 random bytes, mode 0600) on first use.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyRootError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let secret: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| KeyRootError::BadLength {
                            path: path.to_path_buf(),
                            len: bytes.len(),
                        })?;
                Ok(Self {
                    secret,
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(reason) => Err(KeyRootError::Read {
                path: path.to_path_buf(),
                reason,
            }),
        }
    }

    fn create(path: &Path) -> Result<Self, KeyRootError> {
        let fail = |reason| KeyRootError::Create {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut secret = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut secret))
            .map_err(fail)?;
        // create_new: two processes racing to create it cannot end up with different roots
        // (the loser reads the winner's).
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(&secret)
                    .and_then(|()| f.sync_all())
                    .map_err(fail)?;
                Ok(Self {
                    secret,
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::open_or_create(path),
            Err(reason) => Err(fail(reason)),
        }
    }

    /// The file it lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl KeyRoot for DevelopmentRoot {
    fn describe(&self) -> &'static str {
        "development (no protection against a compromised host)"
    }

    fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

/// The measurement of a guest: SHA-256 over a label and the kernel and engine images as the
/// VMM loads them, each preceded by its length so no two pairs of images measure alike.
pub fn measure(kernel: &[u8], engine: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"flexserve guest measurement v1");
    for image in [kernel, engine] {
        h.update((image.len() as u64).to_le_bytes());
        h.update(image);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("flexserve-key-root-{}-{name}", std::process::id()))
    }

    #[test]
    fn the_root_is_made_once_private_and_then_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp("once").join("key-root");
        let a = DevelopmentRoot::open_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = DevelopmentRoot::open_or_create(&path).unwrap();
        assert_eq!(a.secret(), b.secret());
        assert_ne!(a.secret(), &[0u8; 32]);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_damaged_root_is_refused_not_replaced() {
        let path = temp("damaged");
        std::fs::write(&path, b"short").unwrap();
        let err = DevelopmentRoot::open_or_create(&path).err().unwrap();
        assert!(
            matches!(err, KeyRootError::BadLength { len: 5, .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn measurements_differ_when_any_byte_or_boundary_does() {
        let m = measure(b"kernel", b"engine");
        assert_ne!(m, measure(b"kernel", b"engine!"));
        assert_ne!(m, measure(b"kernelengine", b""));
        assert_ne!(m, measure(b"kerne", b"lengine"));
        assert_eq!(m, measure(b"kernel", b"engine"));
    }
}
