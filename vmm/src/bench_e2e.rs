//! `flexserve bench-e2e`: one engine's end-to-end figures on one model, measured from this
//! process's start, for `tools/bench/bench_e2e.py` to set beside the others and llama.cpp:
//! cold time to first token (read + boot + load + prefill), warm time to first token (a new
//! session on the loaded model), prefill and decode tokens/s. `--mode floor` measures how
//! long a bare guest takes to first-touch as many private bytes as the model occupies.

use crate::cli::{BenchE2eArgs, BenchMode};
use crate::huge_buffer::Pages;
use crate::model_file::{map_model, read_model_on};
use crate::protected::ProtectedRunError;
use crate::unprotected::RunError;
use inference_guest::gguf::Gguf;
use inference_guest::model::{Logits, Model};
use inference_guest::parallel::ThreadPool;
use inference_guest::quant::Kernels;
use inference_guest::tokenizer::Tokenizer;
use std::time::{Duration, Instant};
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use vmm::guest_images::GuestImages;
use vmm::hypervisor::IsolationRequest;
use vmm::machine::{Machine, MachineConfig};
use vmm::protected_vm::{GuestConfig, GuestError, ProtectedVm};

/// A failed benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Protected(#[from] ProtectedRunError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("the floor program failed: {0}")]
    Floor(String),
    #[error("a helper thread panicked")]
    Thread,
    #[error(
        "--base-pages applies to --mode unprotected only (the guest's private memory has no huge pages anyway)"
    )]
    BasePagesNeedUnprotected,
    #[error(
        "--host-readable-pool applies to --mode guest only (it changes what backs the guest's memory)"
    )]
    HostReadablePoolNeedsGuest,
}

/// One measured run.
struct Figures {
    cold_ttft: Duration,
    /// Cold TTFT split: read + boot (host work before the guest has the model), load, and
    /// prefill up to the first token.
    boot: Duration,
    load: Duration,
    prefill_first: Duration,
    warm_ttft: Vec<f64>,
    prefill_tps: Vec<f64>,
    decode_tps: Vec<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The same deterministic prompt `bench-engine` and the llama.cpp script use.
fn prompt(n: usize, n_vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 1000 + (i * 7919) % (n_vocab - 1000))
        .collect()
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn unprotected(args: &BenchE2eArgs, t0: Instant) -> Result<Figures, BenchError> {
    // What `run --unprotected` does before its first token: read, parse, tokenizer, pool.
    let pages = if args.base_pages {
        Pages::Base
    } else {
        Pages::Huge
    };
    let bytes = read_model_on(&args.model, pages).map_err(RunError::from)?;
    let gguf = Gguf::parse(bytes.as_slice()).map_err(RunError::from)?;
    let model = Model::from_gguf(&gguf, Kernels::detect()).map_err(RunError::from)?;
    let tokenizer = Tokenizer::from_gguf(&gguf).map_err(RunError::from)?;
    let pool = ThreadPool::new(args.vcpus).map_err(|source| RunError::Threads {
        threads: args.vcpus,
        source,
    })?;
    let boot = t0.elapsed();
    let ids = prompt(args.prompt_tokens, model.cfg.n_vocab as u32);
    drop(tokenizer);
    let ctx = args.prompt_tokens + args.gen_tokens + 1;
    let mut f = Figures {
        cold_ttft: Duration::ZERO,
        boot,
        load: Duration::ZERO,
        prefill_first: Duration::ZERO,
        warm_ttft: Vec::new(),
        prefill_tps: Vec::new(),
        decode_tps: Vec::new(),
    };
    for rep in 0..=args.warm_reps {
        let start = Instant::now();
        let mut session = model.new_session(ctx);
        let mut next = argmax(
            session
                .eval(&model, &ids, Logits::Last, &pool)
                .map_err(RunError::from)?,
        );
        let first = Instant::now();
        for _ in 1..args.gen_tokens {
            next = argmax(
                session
                    .eval(&model, &[next], Logits::Last, &pool)
                    .map_err(RunError::from)?,
            );
        }
        let end = Instant::now();
        if rep == 0 {
            f.cold_ttft = first - t0;
            f.prefill_first = first - start;
        } else {
            f.warm_ttft.push(ms(first - start));
        }
        f.prefill_tps
            .push(args.prompt_tokens as f64 / (first - start).as_secs_f64());
        f.decode_tps
            .push((args.gen_tokens - 1) as f64 / (end - first).as_secs_f64());
    }
    Ok(f)
}

fn guest(args: &BenchE2eArgs, t0: Instant) -> Result<Figures, BenchError> {
    // What `run` does before its first token: check the model on the host, build the host's
    // tokenizer (beside the boot and load, as `run` does), boot, stream the model in.
    let file = map_model(&args.model).map_err(RunError::from)?;
    let gguf = Gguf::parse(file.as_slice()).map_err(RunError::from)?;
    let n_vocab = Model::from_gguf(&gguf, Kernels::detect())
        .map_err(RunError::from)?
        .cfg
        .n_vocab as u32;
    std::thread::scope(|s| {
        let tokenizer = s.spawn(|| Tokenizer::from_gguf(&gguf));
        let figures = guest_after_check(args, t0, file.as_slice(), n_vocab)?;
        match tokenizer.join() {
            Ok(t) => t.map_err(RunError::from)?,
            Err(_) => return Err(BenchError::Thread),
        };
        Ok(figures)
    })
}

fn guest_after_check(
    args: &BenchE2eArgs,
    t0: Instant,
    file: &[u8],
    n_vocab: u32,
) -> Result<Figures, BenchError> {
    let images = GuestImages::locate(args.images.as_deref()).map_err(GuestError::from)?;
    let ctx = args.prompt_tokens + args.gen_tokens + 1;
    let private = (file.len() as u64 + (256 << 20)).next_multiple_of(2 << 20);
    let mut vm = ProtectedVm::start(
        &images,
        GuestConfig {
            vcpus: args.vcpus as u8,
            private_bytes: private as usize,
            diagnostics: false,
            isolation: if args.host_readable_pool {
                IsolationRequest::HostReadableHugePages
            } else {
                IsolationRequest::default()
            },
        },
    )?;
    let boot = t0.elapsed();
    // As `run` does: the host's digest of the file comes from the cache after the first run.
    let known = vmm::digest_cache::lookup(&args.model);
    let sha256 = vm.load_model(1, file, known, &mut |_| {})?;
    if known.is_none() {
        vmm::digest_cache::remember(&args.model, &sha256);
    }
    let load = t0.elapsed() - boot;
    let ids = prompt(args.prompt_tokens, n_vocab);
    let mut f = Figures {
        cold_ttft: Duration::ZERO,
        boot,
        load,
        prefill_first: Duration::ZERO,
        warm_ttft: Vec::new(),
        prefill_tps: Vec::new(),
        decode_tps: Vec::new(),
    };
    for rep in 0..=args.warm_reps {
        let sid = rep as u32 + 1;
        let start = Instant::now();
        vm.open_session(sid, 1, ctx as u32)?;
        let req = GenerateRequest {
            request_id: u64::from(sid),
            session_id: sid,
            sampling: SamplingParams {
                ignore_eog: true,
                ..SamplingParams::greedy(args.gen_tokens as u32)
            },
            prompt: Prompt::Tokens(ids.clone()),
        };
        let mut first = None;
        let end = vm.generate(
            &req,
            &mut |_| {
                first.get_or_insert_with(Instant::now);
            },
            &|| false,
        )?;
        vm.close_session(sid)?;
        let first = first.unwrap_or_else(Instant::now);
        if rep == 0 {
            f.cold_ttft = first - t0;
            f.prefill_first = first - start;
        } else {
            f.warm_ttft.push(ms(first - start));
        }
        f.prefill_tps
            .push(end.prompt_tokens as f64 / (end.timings.prompt_ns as f64 / 1e9));
        f.decode_tps.push(
            end.generated_tokens.saturating_sub(1) as f64
                / (end.timings.generation_ns as f64 / 1e9),
        );
    }
    vm.shutdown()?;
    Ok(f)
}

fn floor(args: &BenchE2eArgs) -> Result<(), BenchError> {
    let size = std::fs::metadata(&args.model)
        .map_err(|e| BenchError::Floor(format!("{}: {e}", args.model.display())))?
        .len()
        .next_multiple_of(2 << 20);
    let images = GuestImages::locate(args.images.as_deref()).map_err(GuestError::from)?;
    let toucher = std::fs::read(&args.floor_image).map_err(|e| {
        BenchError::Floor(format!(
            "{}: {e} (run `make image`)",
            args.floor_image.display()
        ))
    })?;
    let t0 = Instant::now();
    let mut m = Machine::new(MachineConfig {
        private_size: size as usize,
        deadline: Duration::from_secs(600),
        ..MachineConfig::default()
    })
    .map_err(|e| BenchError::Floor(e.to_string()))?;
    let code = m
        .boot(&images.kernel, &toucher, 2)
        .map_err(|e| BenchError::Floor(e.to_string()))?;
    let wall = t0.elapsed();
    let guest_ns = m
        .console()
        .lines()
        .iter()
        .find_map(|l| l.strip_prefix("elapsed ns 0x"))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| BenchError::Floor(format!("exit code {code}, no timing printed")))?;
    println!(
        "{{\"mode\":\"floor\",\"bytes\":{size},\"touch_ms\":{:.1},\"wall_ms\":{:.1}}}",
        guest_ns as f64 / 1e6,
        ms(wall)
    );
    Ok(())
}

/// Runs the measurement and prints one JSON object.
pub fn run(args: &BenchE2eArgs) -> Result<(), BenchError> {
    if args.base_pages && args.mode != BenchMode::Unprotected {
        return Err(BenchError::BasePagesNeedUnprotected);
    }
    if args.host_readable_pool && args.mode != BenchMode::Guest {
        return Err(BenchError::HostReadablePoolNeedsGuest);
    }
    let t0 = Instant::now();
    let (name, f) = match args.mode {
        BenchMode::Floor => return floor(args),
        BenchMode::Guest if args.host_readable_pool => {
            ("guest-host-readable-pool", guest(args, t0)?)
        }
        BenchMode::Guest => ("guest", guest(args, t0)?),
        BenchMode::Unprotected => ("unprotected", unprotected(args, t0)?),
    };
    println!(
        "{{\"mode\":\"{name}\",\"cold_ttft_ms\":{:.1},\"boot_ms\":{:.1},\"load_ms\":{:.1},\
\"prefill_first_ms\":{:.1},\"warm_ttft_ms\":{:.1},\"prefill_tps\":{:.1},\"decode_tps\":{:.1}}}",
        ms(f.cold_ttft),
        ms(f.boot),
        ms(f.load),
        ms(f.prefill_first),
        median(&f.warm_ttft),
        median(&f.prefill_tps[1..]),
        median(&f.decode_tps[1..]),
    );
    Ok(())
}
