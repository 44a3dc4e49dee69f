//! A model file written front to back into one allocation while the engine already reads
//! the part that is written: the sealed-load pipeline, where prefill computes layer *i*
//! while layer *i + 1* is still being decrypted.
//!
//! The invariant every `unsafe` block here relies on: bytes below [`ArrivingFile::len`]
//! (the *final prefix*) are never written again, and every write goes to the spare
//! capacity above it through a raw pointer derived from the allocation, never through a
//! reference that covers the prefix. The allocation is reserved for the whole file up
//! front and never reallocates. So a shared slice over the final prefix stays valid while
//! the file keeps growing, for as long as the allocation stays where it is: a [`Gate`]
//! holds the file exclusively for the slices' lifetime, and what feeds the file in the
//! meantime gets only an [`Appender`], which can append and nothing else (it cannot drop,
//! replace or move the file).

use alloc::vec::Vec;
use virtio_llm::Status;

/// A file of a known size arriving front to back (see the module documentation).
pub struct ArrivingFile {
    /// `len()`: the final prefix; capacity: the whole file, reserved at once.
    bytes: Vec<u8>,
    total: usize,
}

impl ArrivingFile {
    /// Reserves `total` bytes; `OutOfMemory` if the allocator cannot give them.
    pub fn reserve(total: u64) -> Result<Self, Status> {
        let bytes = crate::loader::reserve_model(total)?;
        let total = bytes.capacity().min(total as usize);
        Ok(Self { bytes, total })
    }

    /// A file of `total` bytes whose first `prefix.len()` are `prefix`, final already (a
    /// kept layer prefix): its allocation grows to the whole file.
    pub fn from_prefix(mut prefix: Vec<u8>, total: u64) -> Result<Self, Status> {
        let total = usize::try_from(total).map_err(|_| Status::OutOfMemory)?;
        let more = total.checked_sub(prefix.len()).ok_or(Status::BadRequest)?;
        prefix
            .try_reserve_exact(more)
            .map_err(|_| Status::OutOfMemory)?;
        Ok(Self {
            bytes: prefix,
            total,
        })
    }

    /// Bytes that are final.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The file's size.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Where the file lives (for background pre-touching).
    pub fn address(&self) -> u64 {
        self.bytes.as_ptr() as u64
    }

    /// Appends to the file.
    pub fn appender(&mut self) -> Appender<'_> {
        Appender { file: self }
    }

    /// Holds the file for `'a`, lending out its final prefix for all of `'a` while `feed`
    /// appends to it (see [`Gate::wait_for`]).
    pub fn gate<'a, F, E>(&'a mut self, feed: F) -> Gate<'a, F>
    where
        F: FnMut(&mut Appender<'_>) -> Result<(), E>,
    {
        Gate { file: self, feed }
    }

    /// The whole file, once every byte arrived.
    pub fn into_complete(self) -> Option<Vec<u8>> {
        (self.bytes.len() == self.total).then_some(self.bytes)
    }

    /// The final prefix, as a slice valid for `'a`.
    ///
    /// # Safety
    /// The allocation must stay where it is and alive for `'a` (the caller holds the file
    /// exclusively for `'a`, and lets nothing but [`Appender`]s touch it meanwhile).
    unsafe fn prefix<'a>(&self) -> &'a [u8] {
        // SAFETY: these bytes are final and never written again (module invariant); the
        // caller guarantees the allocation outlives `'a` where it is.
        unsafe { core::slice::from_raw_parts(self.bytes.as_ptr(), self.bytes.len()) }
    }
}

/// The right to append to an [`ArrivingFile`], and nothing else.
pub struct Appender<'f> {
    file: &'f mut ArrivingFile,
}

impl Appender<'_> {
    /// Bytes that are final.
    pub fn len(&self) -> usize {
        self.file.len()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }

    /// Copies `src` in after the final prefix and has `finalize` turn it, in place, into
    /// what stays (decryption): only if it succeeds do the bytes join the prefix; if it
    /// fails they are dropped and its error returned. `finalize` also gets the prefix's
    /// last `tail` bytes (fewer if the prefix is shorter), to read alongside (the chunk
    /// before's plaintext, hashed meanwhile). `too_long` if `src` does not fit.
    pub fn append_with<E>(
        &mut self,
        src: &[u8],
        tail: usize,
        finalize: impl FnOnce(&[u8], &mut [u8]) -> Result<(), E>,
        too_long: E,
    ) -> Result<(), E> {
        let bytes = &mut self.file.bytes;
        let start = bytes.len();
        if src.len() > self.file.total - start {
            return Err(too_long);
        }
        let tail = tail.min(start);
        // SAFETY: `[start - tail, start)` is final prefix: initialised and never written
        // again (module invariant), so a shared slice over it may coexist with the other
        // shared slices lent out over the prefix and with the write below, which is above
        // it; it lives only in this call.
        let before = unsafe { core::slice::from_raw_parts(bytes.as_ptr().add(start - tail), tail) };
        // SAFETY: `[start, start + src.len())` lies within the reserved capacity (checked
        // above) and above the final prefix, so this mutable slice overlaps no slice lent
        // out over the prefix (module invariant); it is derived from the allocation's raw
        // pointer, not from a reference covering the prefix, and lives only in this call.
        let dst =
            unsafe { core::slice::from_raw_parts_mut(bytes.as_mut_ptr().add(start), src.len()) };
        dst.copy_from_slice(src);
        finalize(before, dst)?;
        // SAFETY: every byte of `[start, start + src.len())` was written just above.
        unsafe { bytes.set_len(start + src.len()) };
        Ok(())
    }
}

/// An [`ArrivingFile`] held for `'a`, fed by `feed` (which serves the load: it receives the
/// next chunk and appends it, or says why it cannot).
pub struct Gate<'a, F> {
    file: &'a mut ArrivingFile,
    feed: F,
}

impl<'a, F, E> Gate<'a, F>
where
    F: FnMut(&mut Appender<'_>) -> Result<(), E>,
{
    /// Feeds the file until at least `end` bytes are final (or the whole file, if `end`
    /// is past it), then lends out the final prefix for `'a`.
    pub fn wait_for(&mut self, end: usize) -> Result<&'a [u8], E> {
        let end = end.min(self.file.total);
        while self.file.len() < end {
            (self.feed)(&mut self.file.appender())?;
        }
        // SAFETY: the gate holds the file exclusively for `'a`, and `feed` only ever gets an
        // `Appender`, which cannot drop, replace or move it: the allocation stays where it
        // is for `'a`.
        Ok(unsafe { self.file.prefix() })
    }

    /// Bytes that are final.
    pub fn len(&self) -> usize {
        self.file.len()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_grows_and_a_failed_piece_is_dropped() {
        let mut f = ArrivingFile::reserve(8).unwrap();
        let ok = |before: &[u8], b: &mut [u8]| {
            assert!(before.is_empty());
            b.make_ascii_uppercase();
            Ok::<(), u8>(())
        };
        f.appender().append_with(b"abcd", 3, ok, 0).unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(f.appender().append_with(b"ef", 0, |_, _| Err(7), 0), Err(7));
        assert_eq!(f.len(), 4);
        assert_eq!(
            f.appender().append_with(b"efghi", 0, |_, _| Ok(()), 9),
            Err(9)
        );
        // The prefix's last bytes come along, to read while the new piece is finalised.
        f.appender()
            .append_with(
                b"efgh",
                3,
                |before, _| {
                    assert_eq!(before, b"BCD");
                    Ok::<(), u8>(())
                },
                0,
            )
            .unwrap();
        assert_eq!(f.into_complete().unwrap(), b"ABCDefgh");
    }

    #[test]
    fn a_gate_lends_prefixes_that_stay_valid_while_it_feeds() {
        let mut f = ArrivingFile::reserve(6).unwrap();
        let mut pieces = [&b"ab"[..], b"cd", b"ef"].into_iter();
        let mut gate = f.gate(|a: &mut Appender<'_>| match pieces.next() {
            Some(p) => a.append_with(p, 0, |_, _| Ok(()), "too long"),
            None => Err("no more"),
        });
        let first = gate.wait_for(1).unwrap();
        let second = gate.wait_for(4).unwrap();
        let all = gate.wait_for(100).unwrap();
        assert_eq!(
            (first, second, all),
            (&b"ab"[..], &b"abcd"[..], &b"abcdef"[..])
        );
        assert_eq!(f.into_complete().unwrap(), b"abcdef");
        let mut short = ArrivingFile::reserve(4).unwrap();
        let mut gate = short.gate(|_: &mut Appender<'_>| Err("lost"));
        assert_eq!(gate.wait_for(2), Err("lost"));
    }
}
