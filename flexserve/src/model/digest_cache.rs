//! Remembers the SHA-256 of model files, keyed by identity and change times, so a model is
//! hashed on the host once rather than on every start (the guest hashes what it receives
//! every time, and a stale entry therefore fails the load rather than passing it).
//!
//! The cache is a small text file under `$XDG_CACHE_HOME/flexserve/` (else
//! `~/.cache/flexserve/`); any problem with it only means hashing again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Entries kept (most recent last).
const MAX_ENTRIES: usize = 256;

fn cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("flexserve").join("model-sha256"))
}

/// What identifies one version of a file.
fn key(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let canon = std::fs::canonicalize(path).ok()?;
    Some(format!(
        "{} {} {} {}.{} {}.{} {}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        canon.display()
    ))
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The remembered digest of `path` as it is now, if any.
pub fn lookup(path: &Path) -> Option<[u8; 32]> {
    lookup_in(&cache_file()?, path)
}

/// Remembers `digest` for `path` as it is now.
pub fn remember(path: &Path, digest: &[u8; 32]) {
    if let Some(file) = cache_file() {
        remember_in(&file, path, digest);
    }
}

fn lookup_in(cache: &Path, path: &Path) -> Option<[u8; 32]> {
    let k = key(path)?;
    let text = std::fs::read_to_string(cache).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.split_once(' ').filter(|(_, rest)| *rest == k))
        .and_then(|(d, _)| unhex(d))
}

fn remember_in(cache: &Path, path: &Path, digest: &[u8; 32]) {
    let Some(k) = key(path) else { return };
    let old = std::fs::read_to_string(cache).unwrap_or_default();
    let mut lines: Vec<&str> = old
        .lines()
        .filter(|l| l.split_once(' ').is_some_and(|(_, rest)| rest != k))
        .collect();
    let entry = format!("{} {k}", hex(digest));
    lines.push(&entry);
    let keep = &lines[lines.len().saturating_sub(MAX_ENTRIES)..];
    let Some(dir) = cache.parent() else { return };
    let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
    let ok = std::fs::create_dir_all(dir).is_ok()
        && std::fs::write(&tmp, keep.join("\n") + "\n").is_ok()
        && std::fs::rename(&tmp, cache).is_ok();
    if !ok {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_until_the_file_changes() {
        let dir = std::env::temp_dir().join(format!("flexserve-digests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cache, model) = (dir.join("cache"), dir.join("model.gguf"));
        std::fs::write(&model, b"one").unwrap();
        assert_eq!(lookup_in(&cache, &model), None);
        remember_in(&cache, &model, &[7; 32]);
        assert_eq!(lookup_in(&cache, &model), Some([7; 32]));
        remember_in(&cache, &model, &[8; 32]);
        assert_eq!(lookup_in(&cache, &model), Some([8; 32]));
        assert_eq!(std::fs::read_to_string(&cache).unwrap().lines().count(), 1);
        // Rewriting the file changes its times: the entry no longer applies.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&model, b"two").unwrap();
        assert_eq!(lookup_in(&cache, &model), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
