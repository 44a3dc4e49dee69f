//! Quantised tensor formats and the kernels that compute with them.
//!
//! Every kernel has a scalar reference (`reference`) and SIMD versions (`avx2` on x86_64,
//! chosen at run time by CPU detection; `neon` on aarch64). Activations are quantised the way
//! llama.cpp does it before a dot product with quantised weights (Q8_0 for Q4_0/Q8_0, Q8_1 for
//! Q4_1, Q8_K for the K-quants, F16 for F16 weights), so logits match its numerics.
//!
//! CONTRACT (other modules code against exactly this API):
//! ```ignore
//! ActFormat::for_weights(GgmlType) -> ActFormat          // F32 | F16 | Q8_0 | Q8_1 | Q8K
//! fmt.row_bytes(n) -> usize                               // n must be a multiple of its block
//! let k = Kernels::detect();                              // best ISA this CPU has (cpuid; works without std)
//! CpuFeatures::detect() -> CpuFeatures                    // what it was chosen from, for reports
//! Kernels::scalar();                                      // the reference, for tests
//! k.isa() -> Isa                                          // Scalar | Avx2Fma | Avx512Vnni | Neon
//! k.quantize_act(fmt, x: &[f32], out: &mut [u8]);         // out.len() == fmt.row_bytes(x.len())
//! k.dot(w_ty, n, w_row: &[u8], act_row: &[u8]) -> f32;    // one weight row · one activation row
//! // out[i * ncols + j] = dot(weight row i, activation row j), i < nrows, j < ncols;
//! // w holds nrows rows of w_ty.row_bytes(n); act holds ncols rows of fmt.row_bytes(n).
//! k.matmul(w_ty, n, w: &[u8], nrows, act: &[u8], ncols, out: &mut [f32]);
//! k.dequantize_row(ty, src: &[u8], out: &mut [f32]);      // out.len() elements
//! quantize_row(ty, x: &[f32], out: &mut [u8]);            // reference weight quantiser (converter)
//! f16::f16_to_f32(u16) -> f32; f16::f32_to_f16(f32) -> u16 // IEEE, round to nearest even
//! ```
//! Slices of the wrong length are a caller bug: kernels `assert!` them (cheap, once per call).

mod act_format;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod cpu_features;
pub mod f16;
mod kernels;
#[cfg(target_arch = "aarch64")]
mod neon;
mod reference;

pub use act_format::ActFormat;
pub use cpu_features::CpuFeatures;
pub use kernels::{Isa, Kernels};
pub use reference::quantize_row;
