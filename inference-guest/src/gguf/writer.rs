//! Builds GGUF v3 files (host only): used by the model converter, the tiny-model generator
//! and tests. Validates what it is given so that what it writes always parses back.

use std::collections::BTreeSet;
use std::io::Write;

use super::value::{Value, ValueType};
use crate::ggml_type::GgmlType;

/// Why a GGUF file could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    /// The underlying writer failed.
    #[error("writing the GGUF file failed: {0}; check free disk space and permissions")]
    Io(#[from] std::io::Error),
    /// A metadata key was added twice.
    #[error("metadata key '{0}' was added twice")]
    DuplicateKey(String),
    /// A tensor name was added twice.
    #[error("tensor '{0}' was added twice")]
    DuplicateTensor(String),
    /// Shape outside 1..=4 dims, a zero dim, a size overflow, or rows that are not whole blocks.
    #[error("tensor '{name}' has shape {dims:?}, which is invalid for {ty}: {why}")]
    BadShape {
        name: String,
        dims: Vec<u64>,
        ty: &'static str,
        why: &'static str,
    },
    /// The data length does not match the type and shape.
    #[error("tensor '{name}' needs {expected} bytes of data for its type and shape, got {got}")]
    DataSize {
        name: String,
        expected: usize,
        got: usize,
    },
    /// An array whose elements are not all of its declared type.
    #[error("metadata key '{key}': array elements must all be {elem}")]
    MixedArray { key: String, elem: ValueType },
    /// Alignment zero or not a power of two.
    #[error("alignment {0} is not a non-zero power of two")]
    BadAlignment(u32),
}

struct PendingTensor {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then writes a GGUF v3 file in one go.
///
/// Metadata is encoded as it is added (so borrowed values need not outlive the call);
/// tensors are written in the order added, each padded to the alignment.
pub struct GgufWriter {
    alignment: u32,
    kv_bytes: Vec<u8>,
    keys: BTreeSet<String>,
    tensors: Vec<PendingTensor>,
    tensor_names: BTreeSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// A writer with the default alignment (32), which it does not record in the metadata.
    pub fn new() -> Self {
        Self {
            alignment: 32,
            kv_bytes: Vec::new(),
            keys: BTreeSet::new(),
            tensors: Vec::new(),
            tensor_names: BTreeSet::new(),
        }
    }

    /// A writer with another alignment, recorded as `general.alignment`.
    pub fn with_alignment(alignment: u32) -> Result<Self, GgufWriteError> {
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(GgufWriteError::BadAlignment(alignment));
        }
        let mut w = Self::new();
        w.alignment = alignment;
        w.add("general.alignment", &Value::U32(alignment))?;
        Ok(w)
    }

    /// Adds a metadata entry of any type.
    pub fn add(&mut self, key: &str, value: &Value<'_>) -> Result<(), GgufWriteError> {
        if !self.keys.insert(key.to_owned()) {
            return Err(GgufWriteError::DuplicateKey(key.to_owned()));
        }
        check_array(key, value)?;
        put_str(&mut self.kv_bytes, key);
        put_u32(&mut self.kv_bytes, value.value_type().id());
        put_value(&mut self.kv_bytes, value);
        Ok(())
    }

    /// Adds a string entry.
    pub fn add_str(&mut self, key: &str, s: &str) -> Result<(), GgufWriteError> {
        self.add(key, &Value::String(s))
    }

    /// Adds a u32 entry.
    pub fn add_u32(&mut self, key: &str, v: u32) -> Result<(), GgufWriteError> {
        self.add(key, &Value::U32(v))
    }

    /// Adds an f32 entry.
    pub fn add_f32(&mut self, key: &str, v: f32) -> Result<(), GgufWriteError> {
        self.add(key, &Value::F32(v))
    }

    /// Adds a bool entry.
    pub fn add_bool(&mut self, key: &str, v: bool) -> Result<(), GgufWriteError> {
        self.add(key, &Value::Bool(v))
    }

    /// Adds an array of strings.
    pub fn add_str_array(&mut self, key: &str, items: &[&str]) -> Result<(), GgufWriteError> {
        let items = items.iter().map(|s| Value::String(s)).collect();
        self.add(key, &Value::Array(ValueType::String, items))
    }

    /// Adds an array of f32.
    pub fn add_f32_array(&mut self, key: &str, items: &[f32]) -> Result<(), GgufWriteError> {
        let items = items.iter().map(|&x| Value::F32(x)).collect();
        self.add(key, &Value::Array(ValueType::F32, items))
    }

    /// Adds an array of i32.
    pub fn add_i32_array(&mut self, key: &str, items: &[i32]) -> Result<(), GgufWriteError> {
        let items = items.iter().map(|&x| Value::I32(x)).collect();
        self.add(key, &Value::Array(ValueType::I32, items))
    }

    /// Adds a tensor. `dims` are `ne[0]` (row length) first; `data` must be exactly the
    /// tensor's size for `ty`.
    pub fn add_tensor(
        &mut self,
        name: &str,
        ty: GgmlType,
        dims: &[u64],
        data: Vec<u8>,
    ) -> Result<(), GgufWriteError> {
        let expected = tensor_bytes(name, ty, dims)?;
        if data.len() != expected {
            return Err(GgufWriteError::DataSize {
                name: name.to_owned(),
                expected,
                got: data.len(),
            });
        }
        if !self.tensor_names.insert(name.to_owned()) {
            return Err(GgufWriteError::DuplicateTensor(name.to_owned()));
        }
        self.tensors.push(PendingTensor {
            name: name.to_owned(),
            ty,
            dims: dims.to_vec(),
            data,
        });
        Ok(())
    }

    /// Writes the whole file.
    pub fn write_to(&self, mut out: impl Write) -> Result<(), GgufWriteError> {
        let align = self.alignment as usize;
        let mut head = Vec::with_capacity(self.kv_bytes.len() + 64 * self.tensors.len() + 24);
        head.extend_from_slice(b"GGUF");
        put_u32(&mut head, 3);
        put_u64(&mut head, self.tensors.len() as u64);
        put_u64(&mut head, self.keys.len() as u64);
        head.extend_from_slice(&self.kv_bytes);
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            put_u32(&mut head, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut head, d);
            }
            put_u32(&mut head, t.ty.id());
            put_u64(&mut head, offset as u64);
            offset += t.data.len().next_multiple_of(align);
        }
        head.resize(head.len().next_multiple_of(align), 0);
        out.write_all(&head)?;
        // Like llama.cpp's writer, pad after every tensor including the last.
        let zeros = vec![0u8; align];
        for t in &self.tensors {
            out.write_all(&t.data)?;
            let pad = t.data.len().next_multiple_of(align) - t.data.len();
            out.write_all(&zeros[..pad])?;
        }
        out.flush()?;
        Ok(())
    }

    /// Writes the whole file into a new `Vec`.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufWriteError> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }
}

/// Byte size of a tensor of `ty` and `dims`, validating the shape like the reader does.
pub fn tensor_bytes(name: &str, ty: GgmlType, dims: &[u64]) -> Result<usize, GgufWriteError> {
    let bad = |why| GgufWriteError::BadShape {
        name: name.to_owned(),
        dims: dims.to_vec(),
        ty: ty.name(),
        why,
    };
    if dims.is_empty() || dims.len() > 4 {
        return Err(bad("must have 1 to 4 dimensions"));
    }
    if dims.contains(&0) {
        return Err(bad("a dimension is zero"));
    }
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
        .ok_or_else(|| bad("the element count overflows"))?;
    let row = usize::try_from(dims[0]).map_err(|_| bad("the row length overflows"))?;
    if !row.is_multiple_of(ty.block_len()) {
        return Err(bad("the row length is not a multiple of the block length"));
    }
    (n / ty.block_len())
        .checked_mul(ty.block_bytes())
        .ok_or_else(|| bad("the byte size overflows"))
}

fn check_array(key: &str, value: &Value<'_>) -> Result<(), GgufWriteError> {
    if let Value::Array(elem, items) = value {
        for item in items {
            if item.value_type() != *elem {
                return Err(GgufWriteError::MixedArray {
                    key: key.to_owned(),
                    elem: *elem,
                });
            }
            check_array(key, item)?;
        }
    }
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Encodes a value without its type tag (arrays include their element type and length).
fn put_value(out: &mut Vec<u8>, value: &Value<'_>) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_str(out, s),
        Value::Array(elem, items) => {
            put_u32(out, elem.id());
            put_u64(out, items.len() as u64);
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}
