//! Parses and validates a whole GGUF file: header, metadata, tensor infos, data section.
//!
//! Every count, length and offset comes from an untrusted file, so each is checked against
//! the bytes actually left before it is used to allocate or to slice.
//!
//! [`Gguf::parse_prefix`] parses a file that is still arriving front to back from a final
//! prefix of it and the file's declared length: every check runs against the declared
//! length, and only the tensors wholly inside the prefix get their bytes.

use alloc::borrow::ToOwned;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use super::cursor::Cursor;
use super::error::GgufError;
use super::value::{Value, ValueType};
use crate::ggml_type::GgmlType;

/// The alignment GGUF uses when the file has no `general.alignment` key.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// Deepest nesting of arrays inside arrays we accept. Real files use at most 1 level; the
/// bound keeps a hostile file from recursing deeply.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Smallest possible metadata entry: key length (8) + value type (4) + a 1-byte value.
const MIN_KV_LEN: u64 = 13;
/// Smallest possible tensor info: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
const MIN_TENSOR_INFO_LEN: u64 = 32;

/// A tensor: its name, type, shape and borrowed data (exactly its size in bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo<'a> {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: &'a str,
    /// Element type.
    pub ty: GgmlType,
    /// Shape, `ne[0]` (the row length, contiguous) first; 1 to 4 entries, none zero.
    pub dims: Vec<u64>,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// The tensor's bytes; empty (no tensor has zero bytes) when the GGUF was parsed from a
    /// prefix of the file ([`Gguf::parse_prefix`]) that does not hold them yet.
    pub data: &'a [u8],
}

impl TensorInfo<'_> {
    /// Number of elements (product of the dims; validated not to overflow `usize`).
    pub fn n_elements(&self) -> usize {
        // Validated at parse time; saturating only keeps this total.
        self.dims.iter().fold(1usize, |acc, &d| {
            acc.saturating_mul(usize::try_from(d).unwrap_or(usize::MAX))
        })
    }

    /// Row length, `ne[0]`.
    pub fn row_len(&self) -> usize {
        self.dims
            .first()
            .map_or(0, |&d| usize::try_from(d).unwrap_or(usize::MAX))
    }

    /// Number of rows: the product of `ne[1..]` (1 for a 1-D tensor).
    pub fn n_rows(&self) -> usize {
        self.n_elements() / self.row_len().max(1)
    }

    /// Size of the tensor's data in bytes (validated not to overflow, and to lie in the file).
    pub fn n_bytes(&self) -> usize {
        (self.n_elements() / self.ty.block_len()).saturating_mul(self.ty.block_bytes())
    }
}

/// A parsed GGUF file borrowing from its buffer.
#[derive(Clone, Debug)]
pub struct Gguf<'a> {
    pub(crate) version: u32,
    pub(crate) alignment: usize,
    pub(crate) data_offset: usize,
    pub(crate) file_len: usize,
    pub(crate) available: usize,
    pub(crate) metadata: Vec<(&'a str, Value<'a>)>,
    pub(crate) tensors: Vec<TensorInfo<'a>>,
    pub(crate) key_index: BTreeMap<&'a str, usize>,
    pub(crate) tensor_index: BTreeMap<&'a str, usize>,
}

impl<'a> Gguf<'a> {
    /// Parses and validates `buf` as a GGUF v2 or v3 file (little-endian).
    pub fn parse(buf: &'a [u8]) -> Result<Self, GgufError> {
        Self::parse_prefix(buf, buf.len())
    }

    /// Parses the GGUF header, metadata and tensor infos of a file of `file_len` bytes from
    /// `prefix`, its first bytes (cut to `file_len` if longer). Every size, offset and tensor
    /// range is checked against `file_len`, exactly as [`Gguf::parse`] checks them against
    /// the whole file; only the tensors wholly inside `prefix` get their [`TensorInfo::data`],
    /// the others have none ([`Gguf::file_range`] says where their bytes will be).
    ///
    /// A prefix that ends before the tensor infos do is [`GgufError::NeedMoreBytes`], which
    /// says how many bytes the next attempt needs at least.
    pub fn parse_prefix(prefix: &'a [u8], file_len: usize) -> Result<Self, GgufError> {
        let buf = prefix.get(..file_len).unwrap_or(prefix);
        let mut c = Cursor::new(buf, file_len);
        let magic = c.take(4, "magic")?;
        if magic != b"GGUF" {
            let mut found = [0u8; 4];
            found.copy_from_slice(magic);
            return Err(GgufError::BadMagic { found });
        }
        let version = c.u32("version")?;
        match version {
            1 => return Err(GgufError::VersionOne),
            2 | 3 => {}
            _ => return Err(GgufError::UnsupportedVersion { version }),
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        let remaining = c.remaining();
        if !fits(n_kv, MIN_KV_LEN, remaining) {
            return Err(GgufError::TooManyMetadata {
                count: n_kv,
                remaining,
            });
        }
        if !fits(n_tensors, MIN_TENSOR_INFO_LEN, remaining) {
            return Err(GgufError::TooManyTensors {
                count: n_tensors,
                remaining,
            });
        }

        let (metadata, key_index) = parse_metadata(&mut c, n_kv)?;
        let alignment = alignment_of(&metadata, &key_index)?;
        let (mut tensors, tensor_index) = parse_tensor_infos(&mut c, n_tensors, alignment)?;

        let data_offset = c
            .pos()
            .checked_next_multiple_of(alignment)
            .unwrap_or(usize::MAX);
        // A file without tensors may end right after its metadata.
        if data_offset > file_len && !tensors.is_empty() {
            return Err(GgufError::Truncated {
                what: "padding before the tensor data",
                offset: c.pos(),
                needed: (data_offset - c.pos()) as u64,
                file_len,
            });
        }
        let data_len = file_len.saturating_sub(data_offset);
        attach_data(&mut tensors, buf, data_offset, data_len)?;

        Ok(Self {
            version,
            alignment,
            data_offset,
            file_len,
            available: buf.len(),
            metadata,
            tensors,
            key_index,
            tensor_index,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data: `general.alignment`, or 32.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The file's length: the buffer's, or the one [`Gguf::parse_prefix`] was given.
    pub fn file_len(&self) -> usize {
        self.file_len
    }

    /// How many bytes of the file the parse had: [`Gguf::file_len`] unless it parsed a prefix.
    pub fn available(&self) -> usize {
        self.available
    }

    /// Where `t` (one of this file's tensors) lies in the file: `data_offset + offset` on,
    /// [`TensorInfo::n_bytes`] long; checked at parse time to end within the file.
    pub fn file_range(&self, t: &TensorInfo<'_>) -> Range<usize> {
        let start = self
            .data_offset
            .saturating_add(usize::try_from(t.offset).unwrap_or(usize::MAX));
        start..start.saturating_add(t.n_bytes())
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(&'a str, Value<'a>)] {
        &self.metadata
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    /// The tensor with this name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.key_index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .map(|(_, v)| v)
    }
}

/// Whether `count` items of at least `min_len` bytes each can fit in `remaining` bytes.
fn fits(count: u64, min_len: u64, remaining: usize) -> bool {
    count
        .checked_mul(min_len)
        .is_some_and(|n| n <= remaining as u64)
}

type Metadata<'a> = (Vec<(&'a str, Value<'a>)>, BTreeMap<&'a str, usize>);

fn parse_metadata<'a>(c: &mut Cursor<'a>, n_kv: u64) -> Result<Metadata<'a>, GgufError> {
    // `n_kv` was checked against the bytes left, so this capacity is bounded by the file size.
    let mut metadata = Vec::with_capacity(usize::try_from(n_kv).unwrap_or(0));
    let mut index = BTreeMap::new();
    for i in 0..n_kv {
        let (offset, raw) = c.string_bytes(|| format!("key of metadata entry {i}"))?;
        let key = core::str::from_utf8(raw).map_err(|_| GgufError::KeyNotUtf8 { offset })?;
        let type_offset = c.pos();
        let type_id = c.u32("metadata value type")?;
        let value = read_value(c, key, type_id, type_offset, 0)?;
        if index.insert(key, metadata.len()).is_some() {
            return Err(GgufError::DuplicateKey {
                key: key.to_owned(),
            });
        }
        metadata.push((key, value));
    }
    Ok((metadata, index))
}

/// Reads one value of on-disk type `type_id` (whose tag sat at `type_offset`).
fn read_value<'a>(
    c: &mut Cursor<'a>,
    key: &str,
    type_id: u32,
    type_offset: usize,
    depth: usize,
) -> Result<Value<'a>, GgufError> {
    let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.to_owned(),
        type_id,
        offset: type_offset,
    })?;
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8("u8 value")?),
        ValueType::I8 => Value::I8(c.u8("i8 value")? as i8),
        ValueType::U16 => Value::U16(c.u16("u16 value")?),
        ValueType::I16 => Value::I16(c.u16("i16 value")? as i16),
        ValueType::U32 => Value::U32(c.u32("u32 value")?),
        ValueType::I32 => Value::I32(c.u32("i32 value")? as i32),
        ValueType::U64 => Value::U64(c.u64("u64 value")?),
        ValueType::I64 => Value::I64(c.u64("i64 value")? as i64),
        ValueType::F32 => Value::F32(c.f32("f32 value")?),
        ValueType::F64 => Value::F64(c.f64("f64 value")?),
        ValueType::Bool => {
            let offset = c.pos();
            match c.u8("bool value")? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                value => {
                    return Err(GgufError::InvalidBool {
                        key: key.to_owned(),
                        value,
                        offset,
                    });
                }
            }
        }
        ValueType::String => {
            let (offset, raw) = c.string_bytes(|| format!("value of metadata key '{key}'"))?;
            let s = core::str::from_utf8(raw).map_err(|_| GgufError::ValueNotUtf8 {
                key: key.to_owned(),
                offset,
            })?;
            Value::String(s)
        }
        ValueType::Array => read_array(c, key, depth)?,
    })
}

fn read_array<'a>(c: &mut Cursor<'a>, key: &str, depth: usize) -> Result<Value<'a>, GgufError> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep {
            key: key.to_owned(),
            max: MAX_ARRAY_DEPTH,
        });
    }
    let elem_offset = c.pos();
    let elem_id = c.u32("array element type")?;
    let elem_ty = ValueType::from_id(elem_id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.to_owned(),
        type_id: elem_id,
        offset: elem_offset,
    })?;
    let len_offset = c.pos();
    let len = c.u64("array length")?;
    let remaining = c.remaining();
    if !fits(len, elem_ty.min_encoded_len() as u64, remaining) {
        return Err(GgufError::ArrayTooLong {
            key: key.to_owned(),
            len,
            offset: len_offset,
            remaining,
        });
    }
    // Bounded by the bytes left (checked just above).
    let mut items = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    for _ in 0..len {
        let item_offset = c.pos();
        let item = if elem_ty == ValueType::Array {
            // Each nested array carries its own element type and length.
            read_array(c, key, depth + 1)?
        } else {
            read_value(c, key, elem_id, item_offset, depth)?
        };
        items.push(item);
    }
    Ok(Value::Array(elem_ty, items))
}

/// `general.alignment` if present (must be a u32 power of two), else the default.
fn alignment_of(
    metadata: &[(&str, Value<'_>)],
    index: &BTreeMap<&str, usize>,
) -> Result<usize, GgufError> {
    const KEY: &str = "general.alignment";
    let Some((_, value)) = index.get(KEY).and_then(|&i| metadata.get(i)) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let Value::U32(a) = *value else {
        return Err(GgufError::MetadataType {
            key: KEY.to_owned(),
            expected: "u32",
            found: value.value_type(),
        });
    };
    if a == 0 || !a.is_power_of_two() {
        return Err(GgufError::BadAlignment { value: a.into() });
    }
    usize::try_from(a).map_err(|_| GgufError::BadAlignment { value: a.into() })
}

type Tensors<'a> = (Vec<TensorInfo<'a>>, BTreeMap<&'a str, usize>);

fn parse_tensor_infos<'a>(
    c: &mut Cursor<'a>,
    n_tensors: u64,
    alignment: usize,
) -> Result<Tensors<'a>, GgufError> {
    // Re-check against what is left after the metadata, then allocate (bounded by the file).
    let remaining = c.remaining();
    if !fits(n_tensors, MIN_TENSOR_INFO_LEN, remaining) {
        return Err(GgufError::TooManyTensors {
            count: n_tensors,
            remaining,
        });
    }
    let mut tensors = Vec::with_capacity(usize::try_from(n_tensors).unwrap_or(0));
    let mut index = BTreeMap::new();
    for i in 0..n_tensors {
        let t = read_tensor_info(c, i, alignment)?;
        if index.insert(t.name, tensors.len()).is_some() {
            return Err(GgufError::DuplicateTensor {
                name: t.name.to_owned(),
            });
        }
        tensors.push(t);
    }
    Ok((tensors, index))
}

fn read_tensor_info<'a>(
    c: &mut Cursor<'a>,
    i: u64,
    alignment: usize,
) -> Result<TensorInfo<'a>, GgufError> {
    let (offset, raw) = c.string_bytes(|| format!("name of tensor {i}"))?;
    let name = core::str::from_utf8(raw).map_err(|_| GgufError::TensorNameNotUtf8 { offset })?;
    let owned = || String::from(name);
    let n_dims = c.u32("tensor dimension count")?;
    if !(1..=4).contains(&n_dims) {
        return Err(GgufError::BadDimCount {
            name: owned(),
            n_dims,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    let mut n_elements: usize = 1;
    for index in 0..n_dims as usize {
        let d = c.u64("tensor dimension")?;
        if d == 0 {
            return Err(GgufError::ZeroDim {
                name: owned(),
                index,
            });
        }
        n_elements = usize::try_from(d)
            .ok()
            .and_then(|d| n_elements.checked_mul(d))
            .ok_or_else(|| GgufError::SizeOverflow { name: owned() })?;
        dims.push(d);
    }
    let type_id = c.u32("tensor type")?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        name: owned(),
        type_id,
    })?;
    let row_len = dims.first().copied().unwrap_or(1);
    if !row_len.is_multiple_of(ty.block_len() as u64) {
        return Err(GgufError::RowNotWholeBlocks {
            name: owned(),
            row_len,
            ty: ty.name(),
            block_len: ty.block_len(),
        });
    }
    // Whole rows are whole blocks, so this is exact; only the multiplication can overflow.
    (n_elements / ty.block_len())
        .checked_mul(ty.block_bytes())
        .ok_or_else(|| GgufError::SizeOverflow { name: owned() })?;
    let data_offset = c.u64("tensor data offset")?;
    if !data_offset.is_multiple_of(alignment as u64) {
        return Err(GgufError::MisalignedTensor {
            name: owned(),
            offset: data_offset,
            alignment,
        });
    }
    Ok(TensorInfo {
        name,
        ty,
        dims,
        offset: data_offset,
        data: &[],
    })
}

/// Checks each tensor lies in the data section (`data_len` bytes from `data_offset`, which
/// may reach past `buf`), slices the bytes of those inside `buf`, and refuses overlapping
/// tensors.
fn attach_data<'a>(
    tensors: &mut [TensorInfo<'a>],
    buf: &'a [u8],
    data_offset: usize,
    data_len: usize,
) -> Result<(), GgufError> {
    for t in tensors.iter_mut() {
        let size = t.n_bytes();
        let out_of_bounds = || GgufError::TensorOutOfBounds {
            name: t.name.to_owned(),
            offset: t.offset,
            size: size as u64,
            data_len,
        };
        let start = usize::try_from(t.offset).map_err(|_| out_of_bounds())?;
        let end = start.checked_add(size).ok_or_else(out_of_bounds)?;
        if end > data_len {
            return Err(out_of_bounds());
        }
        // `data_offset + end <= file_len`, so neither sum overflows.
        t.data = buf
            .get(data_offset + start..data_offset + end)
            .unwrap_or(&[]);
    }
    // Sorted by offset, a tensor can only overlap its successor (or else also overlaps it).
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors.get(i).map_or(0, |t| t.offset));
    for pair in order.windows(2) {
        let &[i, j] = pair else { continue };
        if let (Some(a), Some(b)) = (tensors.get(i), tensors.get(j))
            && a.offset + a.n_bytes() as u64 > b.offset
        {
            return Err(GgufError::TensorsOverlap {
                first: a.name.to_owned(),
                second: b.name.to_owned(),
            });
        }
    }
    Ok(())
}
