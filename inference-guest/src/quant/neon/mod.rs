//! aarch64 NEON kernels (placeholder until the NEON versions land).
use crate::ggml_type::GgmlType;
use crate::quant::act_format::ActFormat;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon(());

impl Neon {
    pub(crate) fn new() -> Self {
        Self(())
    }
    pub(crate) fn quantize_act(self, _fmt: ActFormat, _x: &[f32], _out: &mut [u8]) -> bool {
        false
    }
    pub(crate) fn dot(self, _ty: GgmlType, _w: &[u8], _a: &[u8]) -> Option<f32> {
        None
    }
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        self,
        _: GgmlType,
        _: usize,
        _: &[u8],
        _: usize,
        _: &[u8],
        _: usize,
        _: &mut [f32],
    ) -> bool {
        false
    }
}
