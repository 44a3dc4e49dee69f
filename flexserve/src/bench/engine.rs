//! `flexserve bench-engine`: prefill and decode speed of the host engine on one model, the
//! way llama-bench measures them (a fixed-length prompt in one batch, then single-token
//! steps), so that `tools/bench/bench_engine.py` can set it beside llama.cpp. With
//! `--batch B`, the batched decode of B sessions instead (`Model::decode_batch`).

use super::roofline;
use crate::cli::{BenchArgs, KernelSet};
use crate::model::huge_buffer::Pages;
use crate::model::{Access, HostModel, HostModelError};
use crate::run::host::RunError;
use inference_guest::model::{BatchBuffers, DecodeStep, Logits, Model, Session};
use inference_guest::parallel::ThreadPool;
use inference_guest::quant::{Isa, Kernels};
use std::time::Instant;

/// The read sweep's buffer: several times the last-level caches seen here (up to 480 MiB
/// of L3), so the sweep measures DRAM. A model smaller than the cache can decode above
/// this bound: its share then reads over 100 %.
const ROOFLINE_BUFFER_BYTES: usize = 2 << 30;

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The kernels `set` names, if this CPU runs them.
fn kernels(set: KernelSet) -> Result<Kernels, RunError> {
    let wanted = match set {
        KernelSet::Best => return Ok(Kernels::detect()),
        KernelSet::Scalar => return Ok(Kernels::scalar()),
        KernelSet::Avx2 => Isa::Avx2Fma,
        KernelSet::Avx512Vnni => Isa::Avx512Vnni,
        KernelSet::Neon => Isa::Neon,
    };
    let available = Kernels::available();
    available
        .iter()
        .find(|k| k.isa() == wanted)
        .copied()
        .ok_or_else(|| RunError::KernelsUnavailable {
            wanted,
            available: available
                .iter()
                .map(|k| format!("{:?}", k.isa()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Runs the measurement and prints one JSON object.
pub fn run(args: &BenchArgs) -> Result<(), RunError> {
    let file = HostModel::open(&args.model, Access::Read(Pages::Huge))?;
    let model = file.engine(kernels(args.isa)?)?;
    let pool = ThreadPool::new(args.threads).map_err(|source| RunError::Threads {
        threads: args.threads,
        source,
    })?;
    // A deterministic prompt of ordinary token ids (no special tokens).
    let n_vocab = model.cfg.n_vocab as u32;
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32)
        .map(|i| 1000 + (i * 7919) % (n_vocab - 1000))
        .collect();
    if args.batch > 0 {
        return run_batched(args, &model, &pool, &prompt);
    }
    let mut session = model.new_session(args.prompt_tokens + args.gen_tokens + 1);
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for rep in 0..=args.reps {
        session.reset();
        let t0 = Instant::now();
        let mut next = argmax(session.eval(&model, &prompt, Logits::Last, &pool)?);
        let t1 = Instant::now();
        for _ in 0..args.gen_tokens {
            next = argmax(session.eval(&model, &[next], Logits::Last, &pool)?);
        }
        let t2 = Instant::now();
        if rep > 0 {
            // The first repetition warms caches and the pool; it is not counted.
            pp.push(args.prompt_tokens as f64 / (t1 - t0).as_secs_f64());
            tg.push(args.gen_tokens as f64 / (t2 - t1).as_secs_f64());
        }
    }
    let gguf = inference_guest::gguf::Gguf::parse(file.bytes()).map_err(HostModelError::from)?;
    let weight_bytes = roofline::weight_bytes_per_token(&gguf);
    let kv_bytes = roofline::kv_bytes_per_position(&model.cfg);
    // Decode's steps sit on average half-way through the generated tokens.
    let step_bytes = weight_bytes + kv_bytes * (args.prompt_tokens + args.gen_tokens / 2) as u64;
    let read_bps = roofline::read_bandwidth(args.threads, ROOFLINE_BUFFER_BYTES, 3);
    let decode_tps = median(&mut tg);
    let quant = quant_of(args);
    println!(
        "{{\"engine\":\"flexserve\",\"quant\":\"{quant}\",\"isa\":\"{:?}\",\"threads\":{},\"prompt_tokens\":{},\"gen_tokens\":{},\"prefill_tps\":{:.2},\"decode_tps\":{:.2},\"weight_bytes_per_token\":{weight_bytes},\"kv_bytes_per_position\":{kv_bytes},\"read_gbps\":{:.2},\"roofline_pct\":{:.1}}}",
        model.kernels().isa(),
        args.threads,
        args.prompt_tokens,
        args.gen_tokens,
        median(&mut pp),
        decode_tps,
        read_bps / 1e9,
        100.0 * decode_tps * step_bytes as f64 / read_bps,
    );
    Ok(())
}

/// The quantisation in the model's file name (`SmolLM2-135M-Instruct.Q8_0.gguf`: `Q8_0`).
fn quant_of(args: &BenchArgs) -> String {
    args.model
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit('.').nth(1))
        .unwrap_or("?")
        .to_string()
}

/// One round of batched decode on `sessions` (reset first): each prefilled alone (untimed)
/// with `prompt` rotated by its index (different tokens, the same length), then `gen_tokens`
/// greedy steps of all of them in one forward pass each. Returns the steps' tokens per second
/// (every session's tokens).
pub(super) fn batched_decode(
    model: &Model<'_>,
    pool: &ThreadPool,
    sessions: &mut [Session],
    prompt: &[u32],
    gen_tokens: usize,
    scratch: &mut BatchBuffers,
) -> Result<f64, RunError> {
    let mut next = Vec::with_capacity(sessions.len());
    for (i, s) in sessions.iter_mut().enumerate() {
        s.reset();
        let mut own = prompt.to_vec();
        own.rotate_left(i % prompt.len().max(1));
        next.push(argmax(s.eval(model, &own, Logits::Last, pool)?));
    }
    let t0 = Instant::now();
    for _ in 0..gen_tokens {
        let mut steps: Vec<DecodeStep<'_>> = sessions
            .iter_mut()
            .zip(&next)
            .map(|(session, &token)| DecodeStep { session, token })
            .collect();
        model.decode_batch(&mut steps, scratch, pool)?;
        drop(steps);
        for (s, n) in sessions.iter_mut().zip(next.iter_mut()) {
            *n = argmax(s.last_logits());
        }
    }
    Ok((sessions.len() * gen_tokens) as f64 / t0.elapsed().as_secs_f64())
}

/// `--batch B`: B sessions through [`batched_decode`], its first round a warm-up. Prints one
/// JSON object.
fn run_batched(
    args: &BenchArgs,
    model: &Model<'_>,
    pool: &ThreadPool,
    prompt: &[u32],
) -> Result<(), RunError> {
    let b = args.batch;
    let mut sessions: Vec<_> = (0..b)
        .map(|_| model.new_session(args.prompt_tokens + args.gen_tokens + 1))
        .collect();
    let mut scratch = BatchBuffers::default();
    let mut tps = Vec::new();
    for rep in 0..=args.reps {
        let t = batched_decode(
            model,
            pool,
            &mut sessions,
            prompt,
            args.gen_tokens,
            &mut scratch,
        )?;
        if rep > 0 {
            // The first repetition warms caches and the pool; it is not counted.
            tps.push(t);
        }
    }
    println!(
        "{{\"engine\":\"flexserve\",\"mode\":\"batch\",\"quant\":\"{}\",\"isa\":\"{:?}\",\"threads\":{},\"batch\":{b},\"prompt_tokens\":{},\"gen_tokens\":{},\"decode_tps\":{:.2}}}",
        quant_of(args),
        model.kernels().isa(),
        args.threads,
        args.prompt_tokens,
        args.gen_tokens,
        median(&mut tps)
    );
    Ok(())
}
