//! Finding the guest image parts (`make image` → `images/out/`) and checking them against
//! their manifest before a guest boots.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where `/usr/lib` installs put the images.
const INSTALLED: &str = "/usr/lib/flexserve/images";

/// Why the images cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no guest images found (looked in {looked}); run `make image`, or pass --images DIR")]
    NotFound { looked: String },
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid image manifest: {reason}; rebuild with `make image`")]
    BadManifest { path: PathBuf, reason: String },
    #[error("guest image {path} does not match its manifest ({what}); rebuild with `make image`")]
    Mismatch { path: PathBuf, what: &'static str },
}

#[derive(Deserialize)]
struct Part {
    file: String,
    bytes: u64,
    sha256: String,
}

#[derive(Deserialize)]
struct Manifest {
    format: u32,
    kernel: Part,
    engine: Part,
}

/// The guest kernel and engine program, checked.
pub struct GuestImages {
    pub kernel: Vec<u8>,
    pub engine: Vec<u8>,
    pub dir: PathBuf,
}

impl GuestImages {
    /// What a guest booted from these images is: see [`crate::key_root::measure`].
    pub fn measurement(&self) -> [u8; 32] {
        crate::key_root::measure(&self.kernel, &self.engine)
    }
}

/// Where `make image` (x86_64) or `make image-arm64` put the images, under the source tree.
#[cfg(target_arch = "x86_64")]
pub const IMAGES_OUT: &str = "images/out";
#[cfg(target_arch = "aarch64")]
pub const IMAGES_OUT: &str = "images/out-aarch64";

fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(d) = explicit {
        return vec![d.to_path_buf()];
    }
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("FLEXSERVE_IMAGES") {
        dirs.push(PathBuf::from(d));
    }
    // A binary in <tree>/target/<profile>/ or <tree>/target/<triple>/<profile>/ finds
    // <tree>/images/out (out-aarch64 for arm64 images).
    if let Ok(exe) = std::env::current_exe() {
        let profile = exe.parent();
        for tree in [
            profile.and_then(Path::parent).and_then(Path::parent),
            profile
                .and_then(Path::parent)
                .and_then(Path::parent)
                .and_then(Path::parent),
        ]
        .into_iter()
        .flatten()
        {
            dirs.push(tree.join(IMAGES_OUT));
        }
    }
    dirs.push(PathBuf::from(INSTALLED));
    dirs
}

impl GuestImages {
    /// Finds and checks the images: `explicit`, else `$FLEXSERVE_IMAGES`, else the source
    /// tree's `images/out`, else the installed location.
    pub fn locate(explicit: Option<&Path>) -> Result<Self, ImageError> {
        let dirs = candidates(explicit);
        let dir = dirs
            .iter()
            .find(|d| d.join("manifest.json").is_file())
            .ok_or_else(|| ImageError::NotFound {
                looked: dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Self::load(dir)
    }

    /// Reads and checks the images in `dir`.
    pub fn load(dir: &Path) -> Result<Self, ImageError> {
        let read = |path: PathBuf| {
            std::fs::read(&path).map_err(|source| ImageError::Unreadable { path, source })
        };
        let manifest_path = dir.join("manifest.json");
        let manifest: Manifest =
            serde_json::from_slice(&read(manifest_path.clone())?).map_err(|e| {
                ImageError::BadManifest {
                    path: manifest_path.clone(),
                    reason: e.to_string(),
                }
            })?;
        if manifest.format != 1 {
            return Err(ImageError::BadManifest {
                path: manifest_path,
                reason: format!("format {} is not 1", manifest.format),
            });
        }
        let part = |p: &Part| -> Result<Vec<u8>, ImageError> {
            if p.file.contains('/') {
                return Err(ImageError::BadManifest {
                    path: manifest_path.clone(),
                    reason: format!("part {:?} is not a plain file name", p.file),
                });
            }
            let path = dir.join(&p.file);
            let bytes = read(path.clone())?;
            if bytes.len() as u64 != p.bytes {
                return Err(ImageError::Mismatch { path, what: "size" });
            }
            let digest = Sha256::digest(&bytes);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            if !hex.eq_ignore_ascii_case(&p.sha256) {
                return Err(ImageError::Mismatch {
                    path,
                    what: "SHA-256",
                });
            }
            Ok(bytes)
        };
        Ok(Self {
            kernel: part(&manifest.kernel)?,
            engine: part(&manifest.engine)?,
            dir: dir.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampered_or_missing_images_are_refused() {
        let dir = std::env::temp_dir().join(format!("flexserve-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kernel.elf"), b"kernel").unwrap();
        std::fs::write(dir.join("engine.elf"), b"engine").unwrap();
        let sha = |b: &[u8]| -> String {
            Sha256::digest(b)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect()
        };
        let manifest = format!(
            r#"{{"format":1,"kernel":{{"file":"kernel.elf","bytes":6,"sha256":"{}"}},
               "engine":{{"file":"engine.elf","bytes":6,"sha256":"{}"}}}}"#,
            sha(b"kernel"),
            sha(b"engine")
        );
        std::fs::write(dir.join("manifest.json"), &manifest).unwrap();
        let ok = GuestImages::load(&dir).unwrap();
        assert_eq!(
            (ok.kernel.as_slice(), ok.engine.as_slice()),
            (&b"kernel"[..], &b"engine"[..])
        );
        std::fs::write(dir.join("engine.elf"), b"engin3").unwrap();
        assert!(matches!(
            GuestImages::load(&dir),
            Err(ImageError::Mismatch {
                what: "SHA-256",
                ..
            })
        ));
        std::fs::write(dir.join("manifest.json"), "{").unwrap();
        assert!(matches!(
            GuestImages::load(&dir),
            Err(ImageError::BadManifest { .. })
        ));
        let missing = dir.join("nowhere");
        assert!(matches!(
            GuestImages::locate(Some(&missing)),
            Err(ImageError::NotFound { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
