//! Where a tiled product puts its outputs: the row-major `[rows][cols]` of `Kernels::matmul`,
//! or one slice per activation column (`Kernels::matmul_to_cols`), which is how the model
//! lays out a token's values and spares it a transpose.

/// Takes output (weight row `i`, activation column `j`). Indices are the product's own;
/// every write is bounds-checked (once per output, next to a whole row of block products).
pub(super) trait Sink {
    fn put(&mut self, i: usize, j: usize, v: f32);

    /// Outputs of rows `i0..i0 + v.len()` in column `j`.
    fn put_rows(&mut self, i0: usize, j: usize, v: &[f32]) {
        for (k, &x) in v.iter().enumerate() {
            self.put(i0 + k, j, x);
        }
    }
}

/// `out[i * ncols + j]`.
pub(super) struct RowMajor<'a> {
    pub(super) out: &'a mut [f32],
    pub(super) ncols: usize,
}

impl Sink for RowMajor<'_> {
    #[inline]
    fn put(&mut self, i: usize, j: usize, v: f32) {
        self.out[i * self.ncols + j] = v;
    }
}

/// `cols[j][i]`.
pub(super) struct ByColumn<'a, 'b> {
    pub(super) cols: &'a mut [&'b mut [f32]],
}

impl Sink for ByColumn<'_, '_> {
    #[inline]
    fn put(&mut self, i: usize, j: usize, v: f32) {
        self.cols[j][i] = v;
    }

    #[inline]
    fn put_rows(&mut self, i0: usize, j: usize, v: &[f32]) {
        self.cols[j][i0..i0 + v.len()].copy_from_slice(v);
    }
}
