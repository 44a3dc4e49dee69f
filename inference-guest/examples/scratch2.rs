use inference_guest::ggml_type::GgmlType;
use inference_guest::quant::{ActFormat, Kernels};
fn main() {
    let k = Kernels::detect();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        let n = 576; let rows = 49152*2;
        let rb = ty.row_bytes(n).unwrap();
        let w: Vec<u8> = (0..rb*rows).map(|i| if i % (ty.block_bytes()) < 2 { 0x10 } else { (i*7) as u8 }).collect();
        let x: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
        let fmt = ActFormat::for_weights(ty);
        let mut a = vec![0u8; fmt.row_bytes(n)];
        k.quantize_act(fmt, &x, &mut a);
        let mut out = vec![0f32; rows];
        for _ in 0..3 {
            let t = std::time::Instant::now();
            for _ in 0..10 { k.matmul(ty, n, &w, rows, &a, 1, &mut out); }
            let s = t.elapsed().as_secs_f64();
            println!("{:?} {:.1} GB/s", ty, (w.len() * 10) as f64 / s / 1e9);
        }
    }
}
