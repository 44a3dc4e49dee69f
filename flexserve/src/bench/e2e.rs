//! `flexserve bench-e2e`: one engine's end-to-end figures on one model, measured from this
//! process's start, for `tools/bench/bench_e2e.py` to set beside the others and llama.cpp:
//! cold time to first token (read + boot + load + prefill), warm time to first token (a new
//! session on the loaded model), prefill and decode tokens/s. `--mode floor` measures how
//! long a bare guest takes to first-touch as many private bytes as the model occupies.

use crate::cli::{BenchE2eArgs, BenchMode};
use crate::model::huge_buffer::Pages;
use crate::model::{Access, HostModel};
use crate::run::guest::ProtectedRunError;
use crate::run::host::RunError;
use inference_guest::generate::{Generation, generate};
use inference_guest::model::Model;
use inference_guest::parallel::ThreadPool;
use inference_guest::quant::Kernels;
use inference_guest::sampler::{Sampler, SamplerConfig};
use std::time::{Duration, Instant};
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use vmm::guest_images::GuestImages;
use vmm::guest_vm::{GuestConfig, GuestError, GuestVm};
use vmm::hypervisor::{IsolationLevel, IsolationRequest};
use vmm::machine::{Machine, MachineConfig};

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
        "--host-readable-pool applies to --mode guest and --mode paired only (it changes what backs the guest's memory)"
    )]
    HostReadablePoolNeedsGuest,
    #[error(
        "bench-sealed takes pairs of files: a plain GGUF, then the same model sealed to this \
         host's guest (`flexserve-model seal IN.gguf OUT.fsm --to $(flexserve guest-key --quiet)`)"
    )]
    Pairs,
    #[error(transparent)]
    KeyRoot(vmm::key_root::KeyRootError),
    #[error("the guest sent nothing for {0:?} while requests were in flight")]
    Stalled(Duration),
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

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The same deterministic prompt `bench-engine` and the llama.cpp script use.
pub(super) fn prompt(n: usize, n_vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 1000 + (i * 7919) % (n_vocab - 1000))
        .collect()
}

/// One request's figures: when it started and produced its first token, and its speeds.
struct Request {
    start: Instant,
    first: Instant,
    prefill_tps: f64,
    decode_tps: f64,
}

impl Figures {
    fn new(boot: Duration, load: Duration) -> Self {
        Self {
            cold_ttft: Duration::ZERO,
            boot,
            load,
            prefill_first: Duration::ZERO,
            warm_ttft: Vec::new(),
            prefill_tps: Vec::new(),
            decode_tps: Vec::new(),
        }
    }

    /// Adds request `rep` (0 is the cold one, timed from `t0`).
    fn add(&mut self, rep: usize, r: &Request, t0: Instant) {
        if rep == 0 {
            self.cold_ttft = r.first - t0;
            self.prefill_first = r.first - r.start;
        } else {
            self.warm_ttft.push(ms(r.first - r.start));
        }
        self.prefill_tps.push(r.prefill_tps);
        self.decode_tps.push(r.decode_tps);
    }
}

/// The host engine with its model loaded, as `run --unprotected` has it.
pub(super) struct HostEngine<'a> {
    pub(super) model: Model<'a>,
    pub(super) pool: ThreadPool,
}

impl HostEngine<'_> {
    /// A greedy request on a new session: `ids`, then `gen_tokens` tokens (end-of-generation
    /// tokens do not stop it), through the token loop and sampler `run --unprotected` uses,
    /// as the guest's service does.
    fn request(&self, ids: &[u32], gen_tokens: usize) -> Result<Request, BenchError> {
        let start = Instant::now();
        let mut session = self.model.new_session(ids.len() + gen_tokens + 1);
        let mut sampler = Sampler::new(SamplerConfig::greedy(), self.model.cfg.n_vocab);
        let mut first = None;
        let req = Generation {
            prompt: ids,
            max_tokens: gen_tokens,
            stop_at_eog: false,
        };
        generate(
            &self.model,
            &mut session,
            &mut sampler,
            &self.pool,
            &req,
            &|_| false,
            &mut |_| {
                first.get_or_insert_with(Instant::now);
                true
            },
        )
        .map_err(RunError::from)?;
        let end = Instant::now();
        let first = first.unwrap_or(end);
        Ok(Request {
            start,
            first,
            prefill_tps: ids.len() as f64 / (first - start).as_secs_f64(),
            decode_tps: (gen_tokens - 1) as f64 / (end - first).as_secs_f64(),
        })
    }
}

/// Reads the model as `run --unprotected` does (on `pages`), and starts the thread pool.
pub(super) fn with_host_engine<T>(
    args: &BenchE2eArgs,
    pages: Pages,
    then: impl FnOnce(&HostEngine<'_>, u32) -> Result<T, BenchError>,
) -> Result<T, BenchError> {
    let file = HostModel::open(&args.model, Access::Read(pages)).map_err(RunError::from)?;
    let model = file.engine(Kernels::detect()).map_err(RunError::from)?;
    // `run` builds the tokenizer before its first token: so does the benchmark.
    file.tokenizer().map_err(RunError::from)?;
    let pool = ThreadPool::new(args.vcpus).map_err(|source| RunError::Threads {
        threads: args.vcpus,
        source,
    })?;
    let n_vocab = model.cfg.n_vocab as u32;
    then(&HostEngine { model, pool }, n_vocab)
}

fn unprotected(args: &BenchE2eArgs, t0: Instant) -> Result<Figures, BenchError> {
    let pages = if args.base_pages {
        Pages::Base
    } else {
        Pages::Huge
    };
    with_host_engine(args, pages, |engine, n_vocab| {
        let mut f = Figures::new(t0.elapsed(), Duration::ZERO);
        let ids = prompt(args.prompt_tokens, n_vocab);
        for rep in 0..=args.warm_reps {
            f.add(rep, &engine.request(&ids, args.gen_tokens)?, t0);
        }
        Ok(f)
    })
}

/// The guest engine with the model loaded, as `run` has it.
pub(super) struct GuestEngine {
    pub(super) vm: GuestVm,
    pub(super) next_session: u32,
}

impl GuestEngine {
    /// Boots the guest and streams the model in, as `run` does once it checked the model.
    /// With memory for `sessions` sessions of the arguments' length at once.
    pub(super) fn start(
        args: &BenchE2eArgs,
        model: &HostModel,
        sessions: usize,
    ) -> Result<(Self, Duration), BenchError> {
        let images = GuestImages::locate(args.images.as_deref()).map_err(GuestError::from)?;
        let context = model.context(args.prompt_tokens + args.gen_tokens + 1);
        let private = model.guest_memory(context, sessions);
        let vm = GuestVm::start(
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
                min_isolation: IsolationLevel::None,
                key_root: None,
                kv_reuse: true,
            },
        )?;
        let booted = Instant::now();
        let mut engine = Self {
            vm,
            next_session: 1,
        };
        // As `run` does: the host's digest of the file comes from the cache after the first run.
        model.load_into(&mut engine.vm, 1, &Default::default(), &mut |_| {})?;
        Ok((engine, booted.elapsed()))
    }

    /// The JSON fields that say what the guest ran with: its isolation level and its
    /// kernels beside the host engine's.
    pub(super) fn row_fields(&self) -> String {
        let k = self.vm.kernels();
        let guest = k
            .guest
            .map_or_else(|| "unknown".to_string(), |i| format!("{i:?}"));
        format!(
            "\"isolation\":\"{}\",\"guest_kernels\":\"{guest}\",\"host_kernels\":\"{:?}\"",
            self.vm.isolation().level(),
            k.host
        )
    }

    /// A greedy request on a new session: `ids`, then `gen_tokens` tokens (end-of-generation
    /// tokens do not stop it). Speeds are the guest's own timings.
    fn request(&mut self, ids: &[u32], gen_tokens: usize) -> Result<Request, BenchError> {
        let sid = self.next_session;
        self.next_session += 1;
        let start = Instant::now();
        let ctx = ids.len() + gen_tokens + 1;
        self.vm.open_session(sid, 1, ctx as u32)?;
        let req = greedy_request(sid, ids.to_vec(), gen_tokens);
        let mut first = None;
        let end = self.vm.generate(
            &req,
            &mut |_, _| {
                first.get_or_insert_with(Instant::now);
            },
            &|| false,
        )?;
        self.vm.close_session(sid)?;
        Ok(Request {
            start,
            first: first.unwrap_or_else(Instant::now),
            prefill_tps: end.prompt_tokens as f64 / (end.timings.prompt_ns as f64 / 1e9),
            decode_tps: end.generated_tokens.saturating_sub(1) as f64
                / (end.timings.generation_ns as f64 / 1e9),
        })
    }
}

/// The benchmarks' request on session `sid`: prompt `ids`, then `gen_tokens` greedy tokens
/// (end-of-generation tokens do not stop it); its id is the session's.
pub(super) fn greedy_request(sid: u32, ids: Vec<u32>, gen_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        options: Default::default(),
        request_id: u64::from(sid),
        session_id: sid,
        sampling: SamplingParams {
            ignore_eog: true,
            ..SamplingParams::greedy(gen_tokens as u32)
        },
        prompt: Prompt::Tokens(ids),
    }
}

/// What `run` does before it boots: check the model on the host and build the host's
/// tokenizer (beside the boot and load, as `run` does). `then` gets the model and its
/// vocabulary size.
pub(super) fn with_checked_model<T>(
    args: &BenchE2eArgs,
    then: impl FnOnce(&HostModel, u32) -> Result<T, BenchError>,
) -> Result<T, BenchError> {
    let model = HostModel::open(&args.model, Access::Mapped).map_err(RunError::from)?;
    let n_vocab = model.shape().map_err(RunError::from)?.n_vocab as u32;
    std::thread::scope(|s| {
        let tokenizer = s.spawn(|| model.tokenizer().map(|_| ()));
        let result = then(&model, n_vocab)?;
        match tokenizer.join() {
            Ok(t) => t.map_err(RunError::from)?,
            Err(_) => return Err(BenchError::Thread),
        };
        Ok(result)
    })
}

/// The guest's figures and [`GuestEngine::row_fields`].
fn guest(args: &BenchE2eArgs, t0: Instant) -> Result<(Figures, String), BenchError> {
    with_checked_model(args, |model, n_vocab| {
        let (mut engine, load) = GuestEngine::start(args, model, 1)?;
        let mut f = Figures::new(t0.elapsed() - load, load);
        let ids = prompt(args.prompt_tokens, n_vocab);
        for rep in 0..=args.warm_reps {
            f.add(rep, &engine.request(&ids, args.gen_tokens)?, t0);
        }
        let fields = engine.row_fields();
        engine.vm.shutdown()?;
        Ok((f, fields))
    })
}

/// Guest and host engine in one process, their warm requests interleaved (guest, host, host,
/// guest, ...), so each pair of requests is a second apart and the machine's drifting load
/// cancels out of their ratio far better than between processes.
fn paired(args: &BenchE2eArgs) -> Result<(), BenchError> {
    with_checked_model(args, |model, n_vocab| {
        let (mut guest, _) = GuestEngine::start(args, model, 1)?;
        let ids = prompt(args.prompt_tokens, n_vocab);
        let pairs = with_host_engine(args, Pages::Huge, |host, _| {
            // A request each to warm both up (first touches of fresh KV cache pages).
            guest.request(&ids, args.gen_tokens)?;
            host.request(&ids, args.gen_tokens)?;
            let mut pairs = Vec::with_capacity(args.pairs);
            for i in 0..args.pairs {
                let (g, h) = if i % 2 == 0 {
                    let g = guest.request(&ids, args.gen_tokens)?;
                    (g, host.request(&ids, args.gen_tokens)?)
                } else {
                    let h = host.request(&ids, args.gen_tokens)?;
                    (guest.request(&ids, args.gen_tokens)?, h)
                };
                pairs.push((g, h));
            }
            Ok(pairs)
        })?;
        let fields = guest.row_fields();
        guest.vm.shutdown()?;
        print_pairs(&fields, &pairs);
        Ok(())
    })
}

/// The paired row: medians of both engines' decode speeds and of the per-pair ratios, and
/// every ratio (guest over host).
fn print_pairs(fields: &str, pairs: &[(Request, Request)]) {
    let series =
        |f: &dyn Fn(&(Request, Request)) -> f64| -> Vec<f64> { pairs.iter().map(f).collect() };
    let decode = series(&|(g, h)| g.decode_tps / h.decode_tps);
    let prefill = series(&|(g, h)| g.prefill_tps / h.prefill_tps);
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "{{\"mode\":\"paired\",{fields},\"pairs\":{},\"guest_decode_tps\":{:.1},\
\"unprotected_decode_tps\":{:.1},\"decode_ratio\":{:.3},\"prefill_ratio\":{:.3},\
\"decode_ratios\":[{}],\"prefill_ratios\":[{}]}}",
        pairs.len(),
        median(&series(&|(g, _)| g.decode_tps)),
        median(&series(&|(_, h)| h.decode_tps)),
        median(&decode),
        median(&prefill),
        list(&decode),
        list(&prefill),
    );
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
    if args.host_readable_pool && !matches!(args.mode, BenchMode::Guest | BenchMode::Paired) {
        return Err(BenchError::HostReadablePoolNeedsGuest);
    }
    let t0 = Instant::now();
    let (name, (f, fields)) = match args.mode {
        BenchMode::Floor => return floor(args),
        BenchMode::Paired => return paired(args),
        BenchMode::Batch => return super::e2e_batch::run(args),
        BenchMode::Guest if args.host_readable_pool => {
            ("guest-host-readable-pool", guest(args, t0)?)
        }
        BenchMode::Guest => ("guest", guest(args, t0)?),
        BenchMode::Unprotected => (
            "unprotected",
            (unprotected(args, t0)?, "\"isolation\":\"host\"".to_string()),
        ),
    };
    println!(
        "{{\"mode\":\"{name}\",{fields},\"cold_ttft_ms\":{:.1},\"boot_ms\":{:.1},\"load_ms\":{:.1},\
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
