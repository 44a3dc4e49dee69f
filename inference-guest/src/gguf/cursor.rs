//! A bounds-checked little-endian reader over the file buffer: every read either succeeds
//! or returns [`GgufError::Truncated`] saying what was being read and where.

use alloc::string::String;

use super::error::GgufError;

/// Reads forward through a byte slice; never indexes out of bounds.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Offset of the next byte to be read.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        let truncated = || GgufError::Truncated {
            what,
            offset: self.pos,
            needed: n,
            file_len: self.buf.len(),
        };
        let n_usize = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n_usize).ok_or_else(truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(truncated)?;
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
