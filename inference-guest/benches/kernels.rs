//! Single-thread kernel throughput: `cargo bench -p inference-guest --bench kernels`.
//! Decode shape (1536 × 576 weights, 768 for K-quants, 1 column) reports weight GB/s; prefill (128 columns)
//! reports GFLOP/s (2·n·rows·cols), as do batched decode's few columns (4 and 8). Type names as arguments (`-- Q8_0 Q4_0`) select types.

use std::hint::black_box;
use std::time::Instant;

use inference_guest::ggml_type::GgmlType;
use inference_guest::quant::{ActFormat, Kernels, quantize_row};

fn time<F: FnMut()>(mut f: F, min_secs: f64) -> f64 {
    f();
    let (mut iters, start) = (0u64, Instant::now());
    while start.elapsed().as_secs_f64() < min_secs {
        f();
        iters += 1;
    }
    start.elapsed().as_secs_f64() / iters as f64
}

fn main() {
    let nrows = 1536usize;
    let x: Vec<f32> = (0..nrows * 768)
        .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
        .collect();
    // Every kernel set this CPU runs (AVX-512 VNNI and AVX2 both on a VNNI machine).
    let kernels: Vec<Kernels> = std::iter::once(Kernels::scalar())
        .chain(Kernels::available())
        .collect();
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for ty in GgmlType::ALL {
        if !only.is_empty() && !only.iter().any(|o| o == ty.name()) {
            continue;
        }
        // K-quants need whole 256-value super-blocks.
        let n = if ty.block_len() == 256 { 768 } else { 576 };
        let wrb = ty.row_bytes(n).unwrap();
        let mut w = vec![0u8; wrb * nrows];
        for (r, o) in x.chunks_exact(n).zip(w.chunks_exact_mut(wrb)).take(nrows) {
            quantize_row(ty, r, o);
        }
        let fmt = ActFormat::for_weights(ty);
        for &k in &kernels {
            for ncols in [1usize, 4, 8, 128] {
                let mut act = vec![0u8; fmt.row_bytes(n) * ncols];
                for (j, a) in act.chunks_exact_mut(fmt.row_bytes(n)).enumerate() {
                    k.quantize_act(fmt, &x[j * n..(j + 1) * n], a);
                }
                let mut out = vec![0.0f32; nrows * ncols];
                let secs = if ncols == 1 { 0.3 } else { 0.6 };
                let t = time(
                    || {
                        k.matmul(
                            ty,
                            n,
                            black_box(&w),
                            nrows,
                            black_box(&act),
                            ncols,
                            &mut out,
                        )
                    },
                    secs,
                );
                if ncols == 1 {
                    println!(
                        "{:6} {:8?} decode  {:7.2} GB/s   ({:.1} us)",
                        ty.name(),
                        k.isa(),
                        w.len() as f64 / t / 1e9,
                        t * 1e6
                    );
                } else {
                    let flops = 2.0 * (n * nrows * ncols) as f64;
                    let shape = if ncols == 128 {
                        "prefill".to_string()
                    } else {
                        format!("batch{ncols}")
                    };
                    println!(
                        "{:6} {:8?} {shape:7} {:7.2} GFLOP/s ({:.2} ms)",
                        ty.name(),
                        k.isa(),
                        flops / t / 1e9,
                        t * 1e3
                    );
                }
            }
        }
    }
}
