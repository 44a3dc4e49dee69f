//! Decode's memory-bandwidth roofline: single-stream decode reads every weight once per token,
//! so the bytes a step reads over the machine's read bandwidth is the fastest it can go.
//! `bench-engine` reports decode's share of that bound next to its tokens/s.

use inference_guest::gguf::Gguf;
use inference_guest::model::LlamaConfig;
use std::time::Instant;

/// Weight bytes one decode step reads: every tensor once, the token embedding only one row
/// unless the output layer is tied to it (and so reads it whole).
pub fn weight_bytes_per_token(gguf: &Gguf<'_>) -> u64 {
    let tied = gguf.tensor("output.weight").is_none();
    gguf.tensors()
        .iter()
        .map(|t| {
            if t.name == "token_embd.weight" && !tied {
                t.n_bytes() / t.n_rows().max(1)
            } else {
                t.n_bytes()
            }
        })
        .sum::<usize>() as u64
}

/// Bytes of keys and values (f32, every layer) one position adds to what a step reads.
pub fn kv_bytes_per_position(cfg: &LlamaConfig) -> u64 {
    (2 * cfg.n_layer * cfg.n_head_kv * cfg.head_dim * 4) as u64
}

/// The best of `passes` timed reads of a `bytes`-long buffer (larger than any cache) split
/// across `threads` threads, in bytes per second: what the memory system gives a streaming
/// reader, as STREAM's read kernels measure it.
pub fn read_bandwidth(threads: usize, bytes: usize, passes: usize) -> f64 {
    let words = bytes / 8;
    // Written once so every page is backed before the timed passes.
    let buf: Vec<u64> = (0..words as u64).collect();
    let part = words.div_ceil(threads.max(1));
    let mut best = 0.0f64;
    for _ in 0..passes {
        let start = Instant::now();
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(part)
                .map(|chunk| s.spawn(move || sum_words(chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        let secs = start.elapsed().as_secs_f64();
        // The sum is used so the reads cannot be optimised away.
        std::hint::black_box(total);
        best = best.max((words * 8) as f64 / secs);
    }
    best
}

/// Sums in eight independent lanes so the loop vectorises and is bound by loads.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let tail: u64 = chunks.remainder().iter().fold(0, |a, &w| a.wrapping_add(w));
    for c in chunks {
        for (l, &w) in lanes.iter_mut().zip(c) {
            *l = l.wrapping_add(w);
        }
    }
    lanes.iter().fold(tail, |a, &l| a.wrapping_add(l))
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference_guest::ggml_type::GgmlType;
    use inference_guest::gguf::writer::GgufWriter;

    #[test]
    fn the_word_sum_is_the_plain_sum() {
        let words: Vec<u64> = (0..1003).map(|i| i * 7 + 3).collect();
        let want = words.iter().fold(0u64, |a, &w| a.wrapping_add(w));
        assert_eq!(sum_words(&words), want);
    }

    fn gguf_bytes(with_output: bool) -> Vec<u8> {
        let mut w = GgufWriter::new();
        let f32s = |n: usize| vec![0u8; n * 4];
        w.add_tensor("token_embd.weight", GgmlType::F32, &[4, 10], f32s(40))
            .unwrap();
        w.add_tensor("blk.0.attn_q.weight", GgmlType::F32, &[4, 4], f32s(16))
            .unwrap();
        if with_output {
            w.add_tensor("output.weight", GgmlType::F32, &[4, 10], f32s(40))
                .unwrap();
        }
        let mut out = Vec::new();
        w.write_to(&mut out).unwrap();
        out
    }

    #[test]
    fn a_step_reads_one_embedding_row_unless_the_output_is_tied_to_the_table() {
        let untied = gguf_bytes(true);
        let g = Gguf::parse(&untied).unwrap();
        // One 16-byte embedding row, the 64-byte matrix, the 160-byte output.
        assert_eq!(weight_bytes_per_token(&g), 16 + 64 + 160);
        let tied = gguf_bytes(false);
        let g = Gguf::parse(&tied).unwrap();
        // The output layer reads the whole table.
        assert_eq!(weight_bytes_per_token(&g), 160 + 64);
    }

    #[test]
    fn a_read_sweep_reports_a_positive_finite_bandwidth() {
        let bw = read_bandwidth(2, 8 << 20, 2);
        assert!(bw.is_finite() && bw > 0.0, "{bw}");
    }
}
