//! Receiving a model file in chunks: in order, within the announced size, hashed as it
//! arrives, into memory reserved up front (the private region in the guest), so a model that
//! cannot fit is refused at `LoadModelBegin`, before a byte is copied.

use alloc::vec::Vec;
use core::mem::MaybeUninit;
use inference_guest::parallel::{Parallel, for_each_chunk_mut};
use sha2::{Digest, Sha256};
use virtio_llm::Status;

/// One piece of a chunk's work.
enum Task<'a> {
    Hash(&'a mut Sha256, &'a [u8]),
    Copy(&'a mut [MaybeUninit<u8>], &'a [u8]),
}

impl Task<'_> {
    fn run(&mut self) {
        match self {
            Task::Hash(h, data) => h.update(data),
            Task::Copy(dst, src) => {
                for (d, &s) in dst.iter_mut().zip(src.iter()) {
                    d.write(s);
                }
            }
        }
    }
}

/// An empty buffer with room for a whole model file of `total` bytes, reserved up front (a
/// load never reallocates, and a model that cannot fit fails before any byte arrives);
/// `OutOfMemory` if the allocator cannot give it.
pub fn reserve_model(total: u64) -> Result<Vec<u8>, Status> {
    let len = usize::try_from(total).map_err(|_| Status::OutOfMemory)?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len)
        .map_err(|_| Status::OutOfMemory)?;
    Ok(bytes)
}

/// A model being received.
pub struct Loading {
    pub model_id: u32,
    total: u64,
    bytes: Vec<u8>,
    hasher: Sha256,
}

impl Loading {
    /// Reserves `total` bytes; `OutOfMemory` if the allocator cannot give them.
    pub fn begin(model_id: u32, total: u64) -> Result<Self, Status> {
        Ok(Self {
            model_id,
            total,
            bytes: reserve_model(total)?,
            hasher: Sha256::new(),
        })
    }

    /// The buffer the file goes into: start address and length.
    pub fn buffer(&self) -> (u64, u64) {
        (self.bytes.as_ptr() as u64, self.total)
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Appends a chunk that must start where the file so far ends. The hash and the copy
    /// (two halves) run as three items on `par`: in a VM the first touch of each page is
    /// the costly part of the copy, and it then runs beside the hash on every vCPU.
    pub fn chunk(&mut self, offset: u64, data: &[u8], par: &dyn Parallel) -> Result<(), Status> {
        let end = offset.checked_add(data.len() as u64);
        if offset != self.received() || end.is_none_or(|e| e > self.total) {
            return Err(Status::BadRequest);
        }
        let start = self.bytes.len();
        // Capacity was reserved for `total` bytes and `end <= total`: the slice exists.
        let dst = &mut self.bytes.spare_capacity_mut()[..data.len()];
        let half = data.len() / 2;
        let (d1, d2) = dst.split_at_mut(half);
        let (s1, s2) = data.split_at(half);
        let mut tasks = [
            Task::Hash(&mut self.hasher, data),
            Task::Copy(d1, s1),
            Task::Copy(d2, s2),
        ];
        for_each_chunk_mut(par, &mut tasks, 1, &|_, t| t.iter_mut().for_each(Task::run));
        // SAFETY: the two copy tasks above wrote every byte of [start, start + data.len()),
        // which lies within the reserved capacity; `for_each_chunk_mut` returned only after
        // every task finished.
        unsafe { self.bytes.set_len(start + data.len()) };
        Ok(())
    }

    /// The whole file, if it is complete and its SHA-256 is `sha256`.
    pub fn finish(self, sha256: [u8; 32]) -> Result<Vec<u8>, Status> {
        if self.received() != self.total {
            return Err(Status::BadModel);
        }
        let digest: [u8; 32] = self.hasher.finalize().into();
        if digest != sha256 {
            return Err(Status::BadModel);
        }
        Ok(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference_guest::parallel::SingleThread;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn chunks_in_order_with_the_right_hash_complete() {
        let file: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut l = Loading::begin(1, 1000).unwrap();
        l.chunk(0, &file[..400], &SingleThread).unwrap();
        assert_eq!(
            l.chunk(500, &file[500..], &SingleThread),
            Err(Status::BadRequest),
            "gap"
        );
        assert_eq!(
            l.chunk(0, &file[..10], &SingleThread),
            Err(Status::BadRequest),
            "overlap"
        );
        l.chunk(400, &file[400..], &SingleThread).unwrap();
        assert_eq!(
            l.chunk(1000, &[1], &SingleThread),
            Err(Status::BadRequest),
            "past the end"
        );
        assert_eq!(l.finish(sha(&file)).unwrap(), file);
    }

    #[test]
    fn short_files_and_wrong_hashes_are_bad_models() {
        let file = [7u8; 64];
        let mut l = Loading::begin(1, 64).unwrap();
        l.chunk(0, &file[..63], &SingleThread).unwrap();
        assert_eq!(l.finish(sha(&file)).err(), Some(Status::BadModel));
        let mut l = Loading::begin(1, 64).unwrap();
        l.chunk(0, &file, &SingleThread).unwrap();
        assert_eq!(l.finish([0; 32]).err(), Some(Status::BadModel));
    }

    #[test]
    fn an_impossible_size_is_out_of_memory_not_an_abort() {
        assert_eq!(
            Loading::begin(1, u64::MAX / 2).err(),
            Some(Status::OutOfMemory)
        );
    }
}
