//! Weight-matrix products over a batch of activations, spread over threads.
//!
//! Several products that read the same input (Q, K and V; gate and up) run in one parallel
//! region, so a decode step pays for fewer thread hand-offs.

use super::forward::resize_exact;
use super::weights::Matrix;
use crate::parallel::{Parallel, for_each_chunk_mut, guided_items};
use crate::quant::{ActFormat, Kernels};
use alloc::vec::Vec;

/// One product: `out[j][i] = matrix row i · input row j`.
pub struct Product<'m, 'o> {
    pub matrix: &'m Matrix<'m>,
    /// `t` rows of `matrix.rows` values.
    pub out: &'o mut [f32],
}

/// Reusable buffers for [`run`]; grow on demand, never shrink.
#[derive(Default)]
pub struct MatmulScratch {
    /// The input quantised once per activation format: (format, bytes).
    acts: Vec<(ActFormat, Vec<u8>)>,
    /// Row-major by weight row (`[rows][t]`) results before the transpose, for t > 1.
    transposed: Vec<f32>,
}

impl MatmulScratch {
    /// Bytes its buffers hold.
    pub(super) fn held_bytes(&self) -> usize {
        let acts: usize = self.acts.iter().map(|(_, b)| b.capacity()).sum();
        acts + self.acts.capacity() * size_of::<(ActFormat, Vec<u8>)>()
            + self.transposed.capacity() * 4
    }
}

/// One thread's share: rows `row0..row0 + rows` of one matrix against every input row.
struct Task<'a> {
    matrix: &'a Matrix<'a>,
    act: &'a [u8],
    row0: usize,
    rows: usize,
    /// The kernel's output: `[rows][t]` in the scratch for t > 1, else the product's own.
    out: &'a mut [f32],
    /// For t > 1, this task's part of each input row's output (`t` slices of `rows`), where
    /// the task copies `out` once computed, so the transpose runs on every thread.
    dst: Vec<&'a mut [f32]>,
}

/// Computes every product in `products` for the `t` input rows of `input` (each of the
/// matrices' common row length).
pub fn run(
    kernels: &Kernels,
    par: &dyn Parallel,
    scratch: &mut MatmulScratch,
    input: &[f32],
    t: usize,
    products: &mut [Product<'_, '_>],
) {
    let n = products[0].matrix.n;
    debug_assert!(
        products
            .iter()
            .all(|p| p.matrix.n == n && p.out.len() == t * p.matrix.rows)
    );
    debug_assert_eq!(input.len(), t * n);

    let n_acts = quantize_input(kernels, scratch, input, n, t, products);
    let acts = &scratch.acts[..n_acts];
    let act_for = |m: &Matrix<'_>| {
        let fmt = ActFormat::for_weights(m.ty);
        acts.iter()
            .find(|(f, _)| *f == fmt)
            .map(|(_, b)| b.as_slice())
            .unwrap_or(&[])
    };

    let total_rows: usize = products.iter().map(|p| p.matrix.rows).sum();
    if t > 1 {
        resize_exact(&mut scratch.transposed, total_rows * t, 0.0);
    }
    let mut tasks = Vec::new();
    {
        let mut spare: &mut [f32] = &mut scratch.transposed;
        for p in products.iter_mut() {
            let m = p.matrix;
            let min_rows = if t > 1 { 16 } else { 8 };
            let act = act_for(m);
            // For t > 1 the kernels write a scratch region and each input row's output is
            // cut below into the tasks' row ranges; for t = 1 they write the output itself.
            let (mut rest, mut dst_rows): (&mut [f32], Vec<&mut [f32]>) = if t > 1 {
                let (mine, tail) = core::mem::take(&mut spare).split_at_mut(m.rows * t);
                spare = tail;
                (mine, p.out.chunks_exact_mut(m.rows).collect())
            } else {
                (&mut *p.out, Vec::new())
            };
            for rows in guided_items(m.rows, par.n_threads(), min_rows) {
                let (out, tail) = core::mem::take(&mut rest).split_at_mut(rows.len() * t);
                rest = tail;
                let dst = dst_rows
                    .iter_mut()
                    .map(|row| {
                        let (mine, tail) = core::mem::take(row).split_at_mut(rows.len());
                        *row = tail;
                        mine
                    })
                    .collect();
                tasks.push(Task {
                    matrix: m,
                    act,
                    row0: rows.start,
                    rows: rows.len(),
                    out,
                    dst,
                });
            }
        }
        for_each_chunk_mut(par, &mut tasks, 1, &|_, task| {
            let task = &mut task[0];
            let m = task.matrix;
            let w = m.rows_slice(task.row0, task.rows);
            if t > 1 && kernels.matmul_to_cols(m.ty, m.n, w, task.rows, task.act, &mut task.dst) {
                return;
            }
            kernels.matmul(m.ty, m.n, w, task.rows, task.act, t, task.out);
            if t > 1 {
                untranspose(task.out, t, &mut task.dst);
            }
        });
    }
}

/// Quantises `input` (`t` rows of `n`) once for each activation format the matrices need,
/// into `scratch.acts`; returns how many formats that was.
fn quantize_input(
    kernels: &Kernels,
    scratch: &mut MatmulScratch,
    input: &[f32],
    n: usize,
    t: usize,
    products: &[Product<'_, '_>],
) -> usize {
    let mut n_acts = 0;
    for p in products {
        let fmt = ActFormat::for_weights(p.matrix.ty);
        if scratch.acts[..n_acts].iter().any(|(f, _)| *f == fmt) {
            continue;
        }
        if scratch.acts.len() == n_acts {
            scratch.acts.push((fmt, Vec::new()));
        }
        let (f, bytes) = &mut scratch.acts[n_acts];
        *f = fmt;
        let rb = fmt.row_bytes(n);
        resize_exact(bytes, rb * t, 0);
        for (row, dst) in input.chunks_exact(n).zip(bytes.chunks_exact_mut(rb)) {
            kernels.quantize_act(fmt, row, dst);
        }
        n_acts += 1;
    }
    n_acts
}

/// Copies a task's results, computed output row by output row (`[rows][t]`), into each
/// input row's part of the output (`dst[j]`, `rows` long).
fn untranspose(src: &[f32], t: usize, dst: &mut [&mut [f32]]) {
    let rows = src.len() / t;
    // 16 output rows at a time: each token's 16 values are one cache line, where a whole
    // `t`-long column at a time touched `t` lines per value (a 512-token prompt's 512 lines
    // do not stay in L1).
    for i0 in (0..rows).step_by(16) {
        let block = &src[i0 * t..(i0 + 16).min(rows) * t];
        for (j, d) in dst.iter_mut().enumerate() {
            for (k, v) in d[i0..i0 + block.len() / t].iter_mut().enumerate() {
                *v = block[k * t + j];
            }
        }
    }
}
