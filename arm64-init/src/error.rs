//! Everything that can go wrong in the init, each with its message.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call of the init's own set-up failed.
    #[error("{what}: {source}")]
    Sys { what: String, source: io::Error },
    /// A line of /checks does not parse.
    #[error("/checks line {line}: {why}")]
    CheckSyntax { line: usize, why: String },
    /// Reading a file (the checks, an expected output) failed.
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    /// A command could not be started.
    #[error("starting {program}: {source}")]
    Spawn { program: String, source: io::Error },
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Bad command-line arguments of a subcommand.
    #[error("usage: {0}")]
    Usage(&'static str),
}

impl Error {
    /// The last OS error, for `what` just failed.
    pub fn last_os(what: impl Into<String>) -> Self {
        Error::Sys {
            what: what.into(),
            source: io::Error::last_os_error(),
        }
    }
}
