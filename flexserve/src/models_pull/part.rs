//! The pieces every pull writes with: a hidden `.part` file removed unless it is renamed
//! into place, a writer that hashes what passes through it, and progress on stderr.

use super::error::PullError;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A file being written in the models directory under a hidden `.NAME.what.part` name,
/// which the catalogue never lists. Dropped without [`PartFile::finish`], it is removed:
/// whatever way a pull fails, nothing is left behind. A pull killed outright leaves its
/// part file; the next pull of that name takes it over (the lock tells a dead pull's file
/// from a running one's).
pub struct PartFile {
    path: PathBuf,
    /// Holds the lock until the file is renamed or removed.
    _lock: std::fs::File,
}

impl PartFile {
    /// Creates (or takes over from a killed pull) `dir/.NAME.WHAT.part`, empty.
    pub fn create(dir: &Path, name: &str, what: &str) -> Result<(Self, std::fs::File), PullError> {
        let path = dir.join(format!(".{name}.{what}.part"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(PullError::io("create", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(PullError::Busy {
                    name: name.to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(PullError::io("lock", &path)(e)),
        }
        // Truncated only under the lock: a running pull's file is never touched.
        file.set_len(0).map_err(PullError::io("truncate", &path))?;
        let lock = file.try_clone().map_err(PullError::io("open", &path))?;
        Ok((Self { path, _lock: lock }, file))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the file to `dest`, where it stays.
    pub fn finish(self, dest: &Path) -> Result<(), PullError> {
        std::fs::rename(&self.path, dest).map_err(PullError::io("rename into place", dest))
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        // Gone already after `finish`; a failed removal leaves only a hidden `.part`.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes through to a file while hashing and reporting progress.
pub struct HashingWriter {
    file: std::fs::File,
    hasher: Sha256,
    progress: Progress,
}

impl HashingWriter {
    pub fn new(file: std::fs::File, progress: Progress) -> Self {
        Self {
            file,
            hasher: Sha256::new(),
            progress,
        }
    }

    /// The digest of everything written, after a last progress line; the data is synced.
    pub fn finish(mut self) -> std::io::Result<[u8; 32]> {
        self.file.sync_all()?;
        self.progress.done();
        Ok(self.hasher.finalize().into())
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.progress.advance(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// `LABEL: DONE / TOTAL MiB` on stderr: redrawn in place on a terminal, a line every few
/// seconds in a log.
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    tty: bool,
    last: Instant,
    finished: bool,
    quiet: bool,
}

const MIB: f64 = (1 << 20) as f64;

impl Progress {
    pub fn new(label: impl Into<String>, total: Option<u64>) -> Self {
        Self {
            label: label.into(),
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
            finished: false,
            quiet: false,
        }
    }

    /// No output: for copies from local disk, which take seconds.
    pub fn quiet() -> Self {
        Self {
            quiet: true,
            ..Self::new("", None)
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.draw(false);
        }
    }

    fn done(&mut self) {
        if !self.finished {
            self.finished = true;
            self.draw(true);
        }
    }

    fn draw(&self, last: bool) {
        if self.quiet {
            return;
        }
        let total = self
            .total
            .map_or(String::new(), |t| format!(" / {:.1}", t as f64 / MIB));
        let line = format!("{}: {:.1}{total} MiB", self.label, self.done as f64 / MIB);
        match (self.tty, last) {
            (true, false) => eprint!("\r{line}"),
            (true, true) => eprintln!("\r{line}"),
            (false, _) => eprintln!("{line}"),
        }
    }
}
