//! A bounds-checked little-endian reader over the file buffer: every read either succeeds
//! or returns [`GgufError::Truncated`] saying what was being read and where.
//!
//! The buffer may be a prefix of a longer file (see [`super::Gguf::parse_prefix`]): sizes are
//! then checked against the file's declared length, and a read that fits the file but not
//! the prefix is [`GgufError::NeedMoreBytes`].

use alloc::string::String;

use super::error::GgufError;

/// Reads forward through a byte slice; never indexes out of bounds.
pub(crate) struct Cursor<'a> {
    /// The bytes available: the whole file, or a prefix of it.
    buf: &'a [u8],
    /// The whole file's length (`buf.len()` unless `buf` is a prefix).
    file_len: usize,
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor over `buf`, a prefix of a file of `file_len` bytes (`buf` is cut to it).
    pub(crate) fn new(buf: &'a [u8], file_len: usize) -> Self {
        let buf = buf.get(..file_len).unwrap_or(buf);
        Self {
            buf,
            file_len,
            pos: 0,
        }
    }

    /// Offset of the next byte to be read.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes of the file not yet read (whether or not they are in the buffer yet).
    pub(crate) fn remaining(&self) -> usize {
        self.file_len.saturating_sub(self.pos)
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        let truncated = || GgufError::Truncated {
            what,
            offset: self.pos,
            needed: n,
            file_len: self.file_len,
        };
        let n_usize = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n_usize).ok_or_else(truncated)?;
        if end > self.file_len {
            return Err(truncated());
        }
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(GgufError::NeedMoreBytes {
                needed: end,
                available: self.buf.len(),
            })?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, GgufError> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    pub(crate) fn f32(&mut self, what: &'static str) -> Result<f32, GgufError> {
        self.array(what).map(f32::from_le_bytes)
    }

    pub(crate) fn f64(&mut self, what: &'static str) -> Result<f64, GgufError> {
        self.array(what).map(f64::from_le_bytes)
    }

    /// Reads a GGUF string (u64 length + bytes) and returns its start offset and raw bytes.
    /// A length beyond the end of the file is [`GgufError::StringTooLong`], with `context`
    /// (built only on error) saying which string it was.
    pub(crate) fn string_bytes(
        &mut self,
        context: impl FnOnce() -> String,
    ) -> Result<(usize, &'a [u8]), GgufError> {
        let len_offset = self.pos;
        let len = self.u64("string length")?;
        let remaining = self.remaining();
        if usize::try_from(len).map_or(true, |l| l > remaining) {
            return Err(GgufError::StringTooLong {
                context: context(),
                offset: len_offset,
                len,
                remaining,
            });
        }
        let start = self.pos;
        Ok((start, self.take(len, "string")?))
    }
}
