//! `flexserve models list | show NAME | rm NAME | pull`: the daemon's models directory
//! (`models.dir` of its config, or `--models-dir`) as the daemon's catalogue sees it, with
//! the metadata `/v1/models` and `/api/tags` show. Nothing is loaded into a guest; a sealed
//! model shows only its public header.

use crate::cli::{ModelsArgs, ModelsCommand};
use crate::serve::config::{Config, ConfigError, Overrides};
use crate::serve::error::ApiError;
use crate::serve::models::{Catalogue, Listed};
use std::path::PathBuf;

/// Why a `flexserve models` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelsCliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no model `{name}` in {dir} (`flexserve models list` lists them)")]
    Unknown { name: String, dir: PathBuf },
    #[error("model `{name}`: {why}")]
    Unreadable { name: String, why: String },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pull(#[from] crate::models_pull::PullError),
}

pub fn run(args: &ModelsArgs) -> Result<(), ModelsCliError> {
    let flags = Overrides {
        models_dir: args.models_dir.clone(),
        ..Overrides::default()
    };
    let config = Config::load(args.config.as_deref(), &flags)?;
    let dir = config.models_dir.clone();
    // Sessions, memory and unsealing matter only to loads, which nothing here does.
    let catalogue = Catalogue::new(dir.clone(), config.context, 1, u64::MAX, false);
    let find = |name: &str| {
        catalogue.describe(name).map_err(|e| match e {
            ApiError::UnknownModel(name) => ModelsCliError::Unknown {
                name,
                dir: dir.clone(),
            },
            other => ModelsCliError::Unreadable {
                name: name.to_string(),
                why: other.to_string(),
            },
        })
    };
    match &args.command {
        ModelsCommand::List => print!("{}", table(&catalogue.describe_all())),
        ModelsCommand::Show { name } => {
            let m = find(name)?;
            if let Err(why) = &m.info {
                return Err(ModelsCliError::Unreadable {
                    name: m.id,
                    why: why.clone(),
                });
            }
            print!("{}", details(&m));
        }
        ModelsCommand::Rm { name } => {
            let m = find(name)?;
            std::fs::remove_file(&m.path).map_err(|source| ModelsCliError::Remove {
                path: m.path.clone(),
                source,
            })?;
            println!("removed {} ({})", m.id, m.path.display());
        }
        ModelsCommand::Pull(pull) => {
            println!("{}", crate::models_pull::pull(&catalogue, &dir, pull)?);
        }
    }
    Ok(())
}

const MIB: f64 = (1 << 20) as f64;

/// `list`'s table, one line per model under a header.
fn table(models: &[Listed]) -> String {
    let mut out = format!(
        "{:<36} {:<7} {:<7} {:>10} {:>8} {:>7}  {}\n",
        "NAME", "FORMAT", "QUANT", "SIZE", "CONTEXT", "PARAMS", "OWNER"
    );
    for m in models {
        let line = match &m.info {
            Ok(i) => format!(
                "{:<36} {:<7} {:<7} {:>10} {:>8} {:>7}  {}",
                m.id,
                if i.sealed { "sealed" } else { "gguf" },
                i.quantization.unwrap_or("-"),
                format!("{:.1} MiB", i.size as f64 / MIB),
                i.context_length,
                i.parameter_size().unwrap_or_else(|| "-".into()),
                i.owner
            ),
            Err(why) => format!("{:<36} unreadable: {why}", m.id),
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `show`'s `key: value` lines.
fn details(m: &Listed) -> String {
    let Ok(i) = &m.info else {
        return String::new();
    };
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows = [
        ("name", m.id.clone()),
        ("file", m.path.display().to_string()),
        ("format", if i.sealed { "sealed" } else { "gguf" }.into()),
        ("size", format!("{} bytes", i.size)),
        ("architecture", or_dash(i.architecture.clone())),
        (
            "parameters",
            or_dash(i.parameter_count.map(|n| n.to_string())),
        ),
        ("quantization", or_dash(i.quantization.map(str::to_string))),
        ("blocks", or_dash(i.block_count.map(|n| n.to_string()))),
        ("context", format!("{} tokens", i.context_length)),
        (
            "served context",
            format!("{} tokens (models.context)", m.context),
        ),
        ("owner", i.owner.clone()),
        ("sha256", or_dash(m.digest.clone())),
    ];
    rows.iter().map(|(k, v)| format!("{k:<15} {v}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::info::ModelInfo;
    use std::sync::Arc;

    #[test]
    fn the_table_says_what_each_file_is() {
        let ok = Listed {
            id: "m".into(),
            path: "/d/m.gguf".into(),
            modified: 0,
            info: Ok(Arc::new(ModelInfo {
                size: 3 << 20,
                sealed: false,
                context_length: 2048,
                architecture: Some("llama".into()),
                parameter_count: Some(135_000_000),
                quantization: Some("Q4_1"),
                block_count: Some(30),
                owner: "flexserve".into(),
            })),
            digest: None,
            context: 512,
        };
        let bad = Listed {
            id: "b".into(),
            info: Err("not a model".into()),
            ..ok.clone()
        };
        let t = table(&[ok.clone(), bad]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        assert!(
            lines[1].contains("Q4_1") && lines[1].contains("3.0 MiB") && lines[1].contains("135M")
        );
        assert!(lines[2].contains("unreadable: not a model"));
        let d = details(&ok);
        assert!(
            d.contains("architecture    llama\n") && d.contains("sha256          -\n"),
            "{d}"
        );
    }
}
