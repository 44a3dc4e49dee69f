//! `flexserve models pull FILE`: a local model file copied into the models directory. The
//! copy goes to a hidden `.NAME.ext.part` file (which the catalogue never lists), hashed as
//! it is written, checked as a model and against `--sha256`, then renamed into place, so a
//! daemon never sees half a file and a bad one leaves nothing behind. Its digest is
//! remembered (`model::digest_cache`), so the first load and `/api/tags` need not hash it.

use crate::model::digest_cache;
use crate::model::info::ModelInfo;
use crate::models_cli::ModelsCliError;
use crate::serve::models::Catalogue;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Copies `source` into `dir` as `name` (default: its file stem).
pub fn pull(
    catalogue: &Catalogue,
    dir: &Path,
    source: &Path,
    name: Option<&str>,
    sha256: Option<&str>,
) -> Result<String, ModelsCliError> {
    let ext = match source.extension().and_then(|e| e.to_str()) {
        Some(e @ ("gguf" | "fsm")) => e,
        _ => return Err(ModelsCliError::NotAModelFile(source.to_path_buf())),
    };
    let stem = source.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    // `--name x.gguf` means `x`, as everywhere else a model is named.
    let name = name.unwrap_or(stem);
    let name = [".gguf", ".fsm"]
        .iter()
        .find_map(|e| name.strip_suffix(e))
        .unwrap_or(name)
        .to_string();
    check_name(&name)?;
    let expected = sha256.map(parse_digest).transpose()?;
    if catalogue.describe(&name).is_ok() {
        return Err(ModelsCliError::Exists {
            name,
            dir: dir.to_path_buf(),
        });
    }
    // Read as a model first: a file the daemon could not serve is not copied at all.
    let info = ModelInfo::read(source).map_err(|e| ModelsCliError::NotAModel {
        source_path: source.to_path_buf(),
        why: e.to_string(),
    })?;
    let dest = dir.join(format!("{name}.{ext}"));
    let part = dir.join(format!(".{name}.{ext}.part"));
    let copy_err = |source_err| ModelsCliError::Copy {
        from: source.to_path_buf(),
        to: dest.clone(),
        source: source_err,
    };
    let digest = copy_hashing(source, &part).map_err(|e| {
        let _ = std::fs::remove_file(&part);
        copy_err(e)
    })?;
    if let Some(want) = expected
        && want != digest
    {
        let _ = std::fs::remove_file(&part);
        return Err(ModelsCliError::DigestMismatch {
            path: source.to_path_buf(),
            expected: hex(&want),
            actual: hex(&digest),
        });
    }
    std::fs::rename(&part, &dest).map_err(|e| {
        let _ = std::fs::remove_file(&part);
        copy_err(e)
    })?;
    digest_cache::remember(&dest, &digest);
    Ok(format!(
        "pulled {name} into {}: {} bytes, {}, sha256 {}",
        dest.display(),
        info.size,
        if info.sealed { "sealed" } else { "gguf" },
        hex(&digest)
    ))
}

/// A name the API can use and that stays a plain file name in the directory.
fn check_name(name: &str) -> Result<(), ModelsCliError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ModelsCliError::BadName(name.to_string()))
    }
}

fn parse_digest(s: &str) -> Result<[u8; 32], ModelsCliError> {
    let bad = || ModelsCliError::BadDigest(s.to_string());
    if s.len() != 64 || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `from` to a new file `to` (never over an existing one), returning its SHA-256.
fn copy_hashing(from: &Path, to: &PathBuf) -> std::io::Result<[u8; 32]> {
    let mut src = std::fs::File::open(from)?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
    dst.sync_all()?;
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_digests_are_checked() {
        assert!(check_name("SmolLM2-135M.Q4_1").is_ok());
        for bad in ["", ".hidden", "../x", "a/b", "a b", "ü"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let d = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
        assert_eq!(hex(&parse_digest(d).unwrap()), d);
        for bad in [
            "",
            "xyz",
            &d[..63],
            &format!("{}g", &d[..63]),
            "é".repeat(32).as_str(),
        ] {
            assert!(parse_digest(bad).is_err(), "{bad:?}");
        }
    }
}
