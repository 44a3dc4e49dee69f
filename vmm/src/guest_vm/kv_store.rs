//! Where the host keeps the sealed KV blocks a guest handed over (`feature::KV_EVICT`):
//! ciphertext it can neither read nor alter unnoticed, by the guest's handle. In memory for
//! `flexserve run`; one file per evicted cache for the daemon, so evicted caches leave RAM.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A host store of sealed KV blocks.
pub trait KvStore: Send {
    /// Stores evicted cache `handle`'s blocks, in order.
    fn put(&mut self, handle: u32, blocks: &[Vec<u8>]) -> io::Result<()>;
    /// Evicted cache `handle`'s blocks; an empty list when they are gone.
    fn get(&mut self, handle: u32) -> io::Result<Vec<Vec<u8>>>;
    /// Forgets evicted cache `handle` (brought back, recomputed or refused).
    fn remove(&mut self, handle: u32);
    /// Whether it holds any evicted cache.
    fn is_empty(&self) -> bool;
}

/// Blocks in host memory.
#[derive(Default)]
pub struct MemoryKvStore(BTreeMap<u32, Vec<Vec<u8>>>);

impl KvStore for MemoryKvStore {
    fn put(&mut self, handle: u32, blocks: &[Vec<u8>]) -> io::Result<()> {
        self.0.insert(handle, blocks.to_vec());
        Ok(())
    }
    fn get(&mut self, handle: u32) -> io::Result<Vec<Vec<u8>>> {
        Ok(self.0.get(&handle).cloned().unwrap_or_default())
    }
    fn remove(&mut self, handle: u32) {
        self.0.remove(&handle);
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One file per evicted cache in a directory (`kv-<handle>.sealed`: per block a u32 length
/// and the block). The directory is the store's alone: it starts empty (a guest's handles
/// mean nothing to the next guest).
pub struct FileKvStore {
    dir: PathBuf,
    held: std::collections::BTreeSet<u32>,
}

impl FileKvStore {
    /// A store in `dir`, created if missing, emptied of earlier guests' files.
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "sealed") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            held: Default::default(),
        })
    }

    /// The file of evicted cache `handle`.
    pub fn path(&self, handle: u32) -> PathBuf {
        self.dir.join(format!("kv-{handle}.sealed"))
    }
}

impl KvStore for FileKvStore {
    fn put(&mut self, handle: u32, blocks: &[Vec<u8>]) -> io::Result<()> {
        let mut f = io::BufWriter::new(std::fs::File::create(self.path(handle))?);
        for b in blocks {
            f.write_all(&(b.len() as u32).to_le_bytes())?;
            f.write_all(b)?;
        }
        f.flush()?;
        self.held.insert(handle);
        Ok(())
    }
    fn get(&mut self, handle: u32) -> io::Result<Vec<Vec<u8>>> {
        let mut bytes = Vec::new();
        match std::fs::File::open(self.path(handle)) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        // A file cut short or grown gives what it holds: the guest refuses what is wrong.
        let (mut blocks, mut rest) = (Vec::new(), &bytes[..]);
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let end = (4 + len).min(rest.len());
            blocks.push(rest[4..end].to_vec());
            rest = &rest[end..];
        }
        Ok(blocks)
    }
    fn remove(&mut self, handle: u32) {
        // Already gone is as good as removed.
        let _ = std::fs::remove_file(self.path(handle));
        self.held.remove(&handle);
    }
    fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

impl Drop for FileKvStore {
    /// The blocks are useless to any other guest: the files go with the store, and the
    /// directory too once empty.
    fn drop(&mut self) {
        for handle in std::mem::take(&mut self.held) {
            let _ = std::fs::remove_file(self.path(handle));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_store_gives_back_what_it_stored_and_forgets() {
        let dir = std::env::temp_dir().join(format!("kv-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kv-9.sealed"), b"an earlier guest's").unwrap();
        let mut s = FileKvStore::new(&dir).unwrap();
        assert!(!s.path(9).exists(), "earlier guests' files are removed");
        assert!(s.is_empty());
        let blocks = vec![vec![1u8; 10], vec![2u8; 3]];
        s.put(4, &blocks).unwrap();
        assert!(!s.is_empty());
        assert_eq!(s.get(4).unwrap(), blocks);
        s.remove(4);
        assert!(s.is_empty() && s.get(4).unwrap().is_empty());
        s.put(5, &blocks).unwrap();
        drop(s);
        assert!(!dir.exists(), "the store's files and directory go with it");
    }
}
