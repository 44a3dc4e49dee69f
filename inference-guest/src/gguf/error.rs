//! Everything that can be wrong with a GGUF file, one variant per failure.
//!
//! Messages say what failed, where (byte offset, key or tensor name) and what to do about it.

use alloc::string::String;

use super::value::ValueType;
use crate::ggml_type::SUPPORTED_NAMES;

const FIX: &str = "re-download or re-convert the model";

/// ggml's names for the tensor type ids FlexServe does not read, so the error can name them.
const UNREAD_TYPES: &[(u32, &str)] = &[
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

fn unread_type_name(type_id: u32) -> &'static str {
    UNREAD_TYPES
        .iter()
        .find(|(id, _)| *id == type_id)
        .map_or("unknown", |(_, name)| name)
}

/// A GGUF file failed validation, or metadata was read as the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    /// The file ends before a field it declares.
    #[error(
        "file is truncated: expected {needed} bytes of {what} at offset {offset}, file has {file_len}; {FIX}"
    )]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: u64,
        file_len: usize,
    },

    /// Only a prefix of the file is there yet ([`super::Gguf::parse_prefix`]), and it ends
    /// before the end of the header, metadata and tensor infos: wait until at least `needed`
    /// bytes are there and parse again (the next attempt may ask for more).
    #[error(
        "needs more bytes: at least {needed} of the file are needed to parse its GGUF header, {available} are there so far"
    )]
    NeedMoreBytes { needed: usize, available: usize },

    /// The first four bytes are not `GGUF`.
    #[error(
        "not a GGUF file: magic is {found:02x?}, expected \"GGUF\"; check the path points at a .gguf model"
    )]
    BadMagic { found: [u8; 4] },

    /// GGUF v1 (32-bit counts) is obsolete and not read.
    #[error(
        "GGUF version 1 is not supported (obsolete since 2023); re-convert the model with a current llama.cpp"
    )]
    VersionOne,

    /// A version newer (or stranger) than 2 and 3.
    #[error(
        "GGUF version {version} is not supported (only 2 and 3); re-convert the model or upgrade FlexServe"
    )]
    UnsupportedVersion { version: u32 },

    /// The tensor count could not fit in the rest of the file.
    #[error(
        "tensor count {count} at offset 8 cannot fit in the {remaining} bytes left; the header is corrupt, {FIX}"
    )]
    TooManyTensors { count: u64, remaining: usize },

    /// The metadata count could not fit in the rest of the file.
    #[error(
        "metadata count {count} at offset 16 cannot fit in the {remaining} bytes left; the header is corrupt, {FIX}"
    )]
    TooManyMetadata { count: u64, remaining: usize },

    /// A string length prefix runs past the end of the file.
    #[error(
        "string of {len} bytes at offset {offset} ({context}) runs past the end of the file ({remaining} bytes left); {FIX}"
    )]
    StringTooLong {
        context: String,
        offset: usize,
        len: u64,
        remaining: usize,
    },

    /// A metadata key is not UTF-8.
    #[error("metadata key at offset {offset} is not valid UTF-8; {FIX}")]
    KeyNotUtf8 { offset: usize },

    /// A tensor name is not UTF-8.
    #[error("tensor name at offset {offset} is not valid UTF-8; {FIX}")]
    TensorNameNotUtf8 { offset: usize },

    /// A string metadata value is not UTF-8.
    #[error("string value of metadata key '{key}' at offset {offset} is not valid UTF-8; {FIX}")]
    ValueNotUtf8 { key: String, offset: usize },

    /// A value type tag the spec does not define.
    #[error("metadata key '{key}' has unknown value type {type_id} at offset {offset}; {FIX}")]
    UnknownValueType {
        key: String,
        type_id: u32,
        offset: usize,
    },

    /// A bool byte other than 0 or 1.
    #[error(
        "metadata key '{key}' has bool byte {value} at offset {offset} (must be 0 or 1); {FIX}"
    )]
    InvalidBool {
        key: String,
        value: u8,
        offset: usize,
    },

    /// An array length that could not fit in the rest of the file.
    #[error(
        "array of metadata key '{key}' at offset {offset} declares {len} elements, which cannot fit in the {remaining} bytes left; {FIX}"
    )]
    ArrayTooLong {
        key: String,
        len: u64,
        offset: usize,
        remaining: usize,
    },

    /// Arrays nested deeper than the reader allows.
    #[error(
        "metadata key '{key}' nests arrays deeper than {max} levels; the file is corrupt or hostile, {FIX}"
    )]
    NestingTooDeep { key: String, max: usize },

    /// The same metadata key twice.
    #[error("metadata key '{key}' appears twice; {FIX}")]
    DuplicateKey { key: String },

    /// The same tensor name twice.
    #[error("tensor '{name}' appears twice; {FIX}")]
    DuplicateTensor { name: String },

    /// `n_dims` outside 1..=4.
    #[error("tensor '{name}' has {n_dims} dimensions (must be 1 to 4); {FIX}")]
    BadDimCount { name: String, n_dims: u32 },

    /// A dimension of zero.
    #[error("tensor '{name}' has size 0 in dimension {index}; {FIX}")]
    ZeroDim { name: String, index: usize },

    /// The element count or byte size overflows.
    #[error("tensor '{name}' has dimensions whose product overflows; {FIX}")]
    SizeOverflow { name: String },

    /// A tensor type id this engine does not know. `flexserve-model convert` reads with this
    /// same reader, so the message must not send the user there.
    #[error(
        "tensor '{name}' has ggml type id {type_id} ({}), which FlexServe cannot read: it reads only {SUPPORTED_NAMES} tensors, and `flexserve-model convert` uses the same reader, so it refuses this file too. Use a GGUF whose tensors all have those types (llama.cpp's Q4_K_M, Q5_K_M, Q6_K and Q8_0 files do), e.g. re-quantise the original F16/F32 model with llama.cpp's `llama-quantize` to Q4_K_M or Q8_0; `flexserve-model convert` can then re-type that file",
        unread_type_name(*.type_id)
    )]
    UnknownTensorType { name: String, type_id: u32 },

    /// The row length is not a whole number of the type's blocks.
    #[error(
        "tensor '{name}' has rows of {row_len} elements, not a multiple of {ty}'s block of {block_len}; {FIX}"
    )]
    RowNotWholeBlocks {
        name: String,
        row_len: u64,
        ty: &'static str,
        block_len: usize,
    },

    /// A tensor offset that is not a multiple of the alignment.
    #[error(
        "tensor '{name}' has data offset {offset}, not a multiple of the alignment {alignment}; {FIX}"
    )]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: usize,
    },

    /// Tensor data that runs past the end of the data section.
    #[error(
        "tensor '{name}' occupies bytes {offset}..{offset}+{size} of the data section, which has only {data_len} bytes; the file is truncated or corrupt, {FIX}"
    )]
    TensorOutOfBounds {
        name: String,
        offset: u64,
        size: u64,
        data_len: usize,
    },

    /// Two tensors share bytes.
    #[error("tensors '{first}' and '{second}' overlap in the data section; {FIX}")]
    TensorsOverlap { first: String, second: String },

    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment is {value}; it must be a non-zero power of two; {FIX}")]
    BadAlignment { value: u64 },

    /// Metadata of another type than the caller asked for.
    #[error(
        "metadata key '{key}' is {found}, expected {expected}; the model was converted for another engine or is corrupt"
    )]
    MetadataType {
        key: String,
        expected: &'static str,
        found: ValueType,
    },

    /// An integer metadata value outside the range the caller asked for.
    #[error(
        "metadata key '{key}' has value {value}, which does not fit in {expected}; the model is corrupt"
    )]
    MetadataRange {
        key: String,
        expected: &'static str,
        value: i128,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn unknown_tensor_type_names_the_type_and_does_not_send_the_user_to_convert() {
        let msg = GgufError::UnknownTensorType {
            name: "blk.0.attn_v.weight".into(),
            type_id: 10,
        }
        .to_string();
        assert!(msg.contains("'blk.0.attn_v.weight'") && msg.contains("id 10 (Q2_K)"));
        assert!(msg.contains(SUPPORTED_NAMES));
        assert!(msg.contains("llama-quantize"));
        // `flexserve-model convert` parses with this reader and would refuse the same file.
        assert!(!msg.contains("convert the model with"));
        assert!(msg.contains("`flexserve-model convert` uses the same reader, so it refuses"));

        let msg = GgufError::UnknownTensorType {
            name: "t".into(),
            type_id: 99,
        }
        .to_string();
        assert!(msg.contains("id 99 (unknown)"));
    }
}
