//! The formats activations are converted to before a dot product with a weight row.

use crate::ggml_type::GgmlType;

/// Activation row format. Block layouts (little-endian):
/// - `Q8_0`: f16 d, 32 × i8 (34 bytes per 32 values)
/// - `Q8_1`: f16 d, f16 s = d·Σq, 32 × i8 (36 bytes per 32 values)
/// - `Q8K`: f32 d, 256 × i8, 16 × i16 block sums (292 bytes per 256 values)
/// - `F16`, `BF16`, `F32`: plain little-endian values
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActFormat {
    F32,
    F16,
    /// bfloat16, rounded to nearest even (ggml `GGML_FP32_TO_BF16`).
    BF16,
    Q8_0,
    Q8_1,
    Q8K,
}

impl ActFormat {
    /// The activation format llama.cpp pairs with a weight type (`vec_dot_type`).
    pub fn for_weights(ty: GgmlType) -> Self {
        match ty {
            GgmlType::F32 => Self::F32,
            GgmlType::F16 => Self::F16,
            // llama.cpp's `vec_dot_type` for BF16 is BF16: activations are rounded to bf16
            // and the products summed in f32. Keeping F32 activations would be more accurate
            // but would not reproduce llama.cpp's logits, which the engine is checked against.
            GgmlType::BF16 => Self::BF16,
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4NL => Self::Q8_0,
            GgmlType::Q4_1 | GgmlType::Q5_1 => Self::Q8_1,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K | GgmlType::IQ4XS => Self::Q8K,
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q8_0 | Self::Q8_1 => 32,
            Self::Q8K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q8_0 => 34,
            Self::Q8_1 => 36,
            Self::Q8K => 292,
        }
    }

    /// Bytes of a row of `n` values; `n` must be a multiple of [`ActFormat::block_len`].
    pub fn row_bytes(self, n: usize) -> usize {
        assert!(
            n.is_multiple_of(self.block_len()),
            "{self:?}: row length {n} is not whole blocks"
        );
        n / self.block_len() * self.block_bytes()
    }
}
