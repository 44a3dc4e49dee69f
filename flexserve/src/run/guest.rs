//! `flexserve run`: boot the protected guest, stream the model into it, and print the text
//! it generates. The host checks the model first (so a bad file fails with the engine's own
//! message before any VM exists). For a plain GGUF the host tokenizes the prompt; for a
//! sealed model it cannot read, the guest renders and tokenizes it. Either way the guest
//! sends the answer's text; the weights and the KV cache live only in its private region.

use crate::cli::RunArgs;
use crate::guest_root::GuestRoot;
use crate::model::{Access, HostModel};
use crate::run::host::{RunError, sampler_config};
use crate::size::parse_size;
use crate::text_stream::Utf8Stream;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use virtio_llm::wire::response::{EndOfStream, StopReason};
use vmm::guest_images::GuestImages;
use vmm::guest_vm::{FirstRequest, GuestConfig, GuestError, GuestVm, Interrupt, SealedLoadOptions};
use vmm::hypervisor::{Isolation, IsolationLevel};

/// A failed protected `run`.
#[derive(Debug, thiserror::Error)]
pub enum ProtectedRunError {
    /// What `run --unprotected` can fail with too (model file, GGUF, tokenizer, sampling,
    /// output, empty prompt).
    #[error(transparent)]
    Engine(#[from] RunError),
    #[error("--memory {0:?} is not a size; write e.g. 2G, 1536M or 4294967296")]
    BadMemory(String),
    #[error(
        "--memory {given} MiB cannot hold the model ({model} MiB) and its context; \
         give at least {needed} MiB"
    )]
    MemoryTooSmall { given: u64, model: u64, needed: u64 },
    #[error("--vcpus must be between 1 and 8, not {0}")]
    BadVcpus(usize),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("the tokenizer thread panicked")]
    Thread,
    #[error(transparent)]
    KeyRoot(#[from] vmm::key_root::KeyRootError),
    #[error(
        "the guest images do not send text (virtio-llm GUEST_TEXT): they are older than this \
         flexserve; rebuild them with `make image`"
    )]
    NoGuestText,
}

const MIB: u64 = 1 << 20;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// A progress line on stderr for the model load, when stdout is a terminal.
struct Progress {
    total: u64,
    start: Instant,
    shown: bool,
}

impl Progress {
    fn update(&mut self, done: u64) {
        if !std::io::stdout().is_terminal() {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64().max(1e-6);
        let width = 30;
        let filled = (done * width / self.total.max(1)) as usize;
        eprint!(
            "\r[flexserve] loading model [{}{}] {:>5.1}/{:.1} MiB {:>7.1} MiB/s",
            "#".repeat(filled),
            " ".repeat(width as usize - filled),
            done as f64 / MIB as f64,
            self.total as f64 / MIB as f64,
            done as f64 / MIB as f64 / secs
        );
        self.shown = true;
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// Says what isolation the guest got, its key root and whether the model is sealed, and at
/// `none` warns once why.
fn report_isolation(isolation: &Isolation, root: &GuestRoot, sealed: bool) {
    eprintln!("[flexserve] isolation: {}", isolation.describe());
    eprintln!("[flexserve] {}", root.report());
    eprintln!(
        "[flexserve] sealed: {}",
        if sealed {
            "yes (the host holds only ciphertext; the guest unseals it)"
        } else {
            "no (plain GGUF: the host can read the weights)"
        }
    );
    if isolation.level() == IsolationLevel::None {
        eprintln!(
            "[flexserve] warning: isolation none: the host can read the model and the prompts \
             in guest memory ({}); --min-isolation private-memory refuses such hosts",
            isolation.limit
        );
    }
}

/// Generates from `prompt` inside the protected guest and streams the text to stdout.
/// Returns whether Ctrl-C cut the generation short.
pub fn run(args: &RunArgs, prompt: &str) -> Result<bool, ProtectedRunError> {
    if prompt.trim().is_empty() {
        return Err(RunError::EmptyPrompt.into());
    }
    if !(1..=8).contains(&args.vcpus) {
        return Err(ProtectedRunError::BadVcpus(args.vcpus));
    }
    let start = Instant::now();
    // Check everything on the host first: errors carry the engine's own words.
    let model = HostModel::open(&args.model, Access::Mapped).map_err(RunError::from)?;
    sampler_config(&args.sampling)
        .validate()
        .map_err(RunError::from)?;
    let ctx = model.context(args.ctx);
    let private = private_memory(args, &model, ctx)?;
    let images = GuestImages::locate(args.images.as_deref()).map_err(GuestError::from)?;
    let root = GuestRoot::for_guest(&images, None, model.is_sealed())?;
    let (mut vm, booted, loaded) = boot_and_load(args, &model, &images, private, ctx, &root)?;
    if !vm.owns_text() {
        return Err(ProtectedRunError::NoGuestText);
    }
    let (prompt, chat) = model
        .guest_prompt(prompt, args.raw)
        .map_err(RunError::from)?;
    let req = request(args, prompt);

    INTERRUPTED.store(false, Ordering::SeqCst);
    // Ctrl-C cancels the generation; the guest then shuts down cleanly.
    let _ = vmm_sys_util::signal::register_signal_handler(libc::SIGINT, on_sigint);
    let (end, first, loaded) = match loaded {
        Some(loaded) => {
            let (end, first) = stream_answer(&mut vm, |vm, on| {
                vm.generate(&req, on, &|| INTERRUPTED.load(Ordering::SeqCst))
            })?;
            (end, first, loaded)
        }
        None => run_pipelined(args, &mut vm, &model, ctx, &req)?,
    };
    let stats = vm.stats()?;
    let memory = vm.memory()?;
    let level = vm.isolation().level();
    vm.shutdown()?;
    let prefill_s = end.timings.prompt_ns as f64 / 1e9;
    let decode_s = end.timings.generation_ns as f64 / 1e9;
    let decoded = end.generated_tokens.saturating_sub(1);
    eprintln!(
        "[flexserve] guest, isolation {level} ({} vCPUs{}): boot {:.0} ms, load {:.0} ms, TTFT \
         {:.0} ms, prefill {} tok at {:.1} tok/s, decode {} tok at {:.1} tok/s, private memory: \
         {} MiB in use, {} MiB held, budget {} of {} MiB, stop: {}",
        args.vcpus,
        if chat { ", chat template" } else { "" },
        (booted - start).as_secs_f64() * 1e3,
        (loaded - booted).as_secs_f64() * 1e3,
        (first - start).as_secs_f64() * 1e3,
        end.prompt_tokens,
        end.prompt_tokens as f64 / prefill_s.max(1e-9),
        decoded,
        decoded as f64 / decode_s.max(1e-9),
        stats.memory_used_bytes / MIB,
        memory.resident_bytes / MIB,
        memory.budget_bytes / MIB,
        memory.max_bytes / MIB,
        match end.reason {
            StopReason::EndOfGeneration => "end of generation",
            StopReason::MaxTokens => "max tokens",
            StopReason::ContextFull => "context full",
            StopReason::Cancelled => "cancelled (Ctrl-C)",
            StopReason::Preempted => "preempted",
        }
    );
    Ok(end.reason == StopReason::Cancelled)
}

/// The guest's private memory: what the model needs at `ctx`, or `--memory` if that is
/// at least as much.
fn private_memory(args: &RunArgs, model: &HostModel, ctx: usize) -> Result<u64, ProtectedRunError> {
    let needed = model.guest_memory(ctx, 1);
    let Some(m) = &args.memory else {
        return Ok(needed);
    };
    let given = parse_size(m).ok_or_else(|| ProtectedRunError::BadMemory(m.clone()))?;
    if given < needed {
        return Err(ProtectedRunError::MemoryTooSmall {
            given: given / MIB,
            model: (model.bytes().len() as u64).div_ceil(MIB),
            needed: needed / MIB,
        });
    }
    Ok(given.next_multiple_of(2 * MIB))
}

/// Loads a sealed model while its first request, `req`, runs (the pipeline: the guest
/// computes each layer as soon as it is unsealed) and writes the answer. Returns how it
/// ended, when the first token came and when the load was complete.
fn run_pipelined(
    args: &RunArgs,
    vm: &mut GuestVm,
    model: &HostModel,
    ctx: usize,
    req: &GenerateRequest,
) -> Result<(EndOfStream, Instant, Instant), ProtectedRunError> {
    let mut progress = Progress {
        total: model.load_bytes(),
        start: Instant::now(),
        shown: false,
    };
    let mut loaded = None;
    let options = SealedLoadOptions {
        accepted_owners: args.accept_owners.clone(),
        strawman: false,
        resume: false,
    };
    let (end, first) = stream_answer(vm, |vm, on| {
        let first = FirstRequest {
            model_id: 1,
            file: model.bytes(),
            options: &options,
            context_len: ctx as u32,
            request: req,
        };
        // The last chunk taken is when the load is over (but for its end, which the guest
        // serves after the request).
        let on_progress = &mut |done: u64| {
            progress.update(done);
            loaded = Some(Instant::now());
        };
        let interrupt = || {
            INTERRUPTED
                .load(Ordering::SeqCst)
                .then_some(Interrupt::Cancel)
        };
        let (sealed, end) = vm.load_sealed_and_generate(first, on_progress, on, &interrupt)?;
        progress.finish();
        report_owner(args, &sealed.owner);
        Ok(end)
    })?;
    Ok((end, first, loaded.unwrap_or(first)))
}

fn report_owner(args: &RunArgs, owner: &sealed_model::OwnerPublicKey) {
    eprintln!(
        "[flexserve] sealed model signed by owner {} ({})",
        owner.fingerprint(),
        match args.accept_owners.len() {
            0 => "any owner accepted: pass --accept-owner to require one".to_string(),
            n => format!("one of {n} accepted"),
        }
    );
}

/// Boots the guest; streams the model in and opens session 1 (with `--pipeline` a sealed
/// model is loaded with its first request instead: [`run_pipelined`]). A plain model's
/// tokenizer (for the prompt) is built meanwhile. Returns the guest, when it had booted and
/// when it had loaded (`None` when the pipeline will load it).
fn boot_and_load(
    args: &RunArgs,
    model: &HostModel,
    images: &GuestImages,
    private: u64,
    ctx: usize,
    root: &GuestRoot,
) -> Result<(GuestVm, Instant, Option<Instant>), ProtectedRunError> {
    std::thread::scope(|s| {
        let tokenizer = s.spawn(|| match model.is_sealed() {
            true => Ok(()),
            false => model.tokenizer().map(|_| ()),
        });
        let mut vm = GuestVm::start(
            images,
            GuestConfig {
                vcpus: args.vcpus as u8,
                private_bytes: usize::try_from(private).unwrap_or(usize::MAX),
                diagnostics: false,
                isolation: vmm::hypervisor::IsolationRequest::Best,
                min_isolation: args.min_isolation(),
                key_root: root.sealing,
                kv_reuse: true,
            },
        )?;
        report_isolation(vm.isolation(), root, model.is_sealed());
        let booted = Instant::now();
        if model.is_sealed() && args.pipeline {
            return Ok((vm, booted, None));
        }
        let mut progress = Progress {
            total: model.bytes().len() as u64,
            start: booted,
            shown: false,
        };
        let options = SealedLoadOptions {
            accepted_owners: args.accept_owners.clone(),
            strawman: false,
            resume: false,
        };
        let owner = model.load_into(&mut vm, 1, &options, &mut |done| progress.update(done))?;
        progress.finish();
        if let Some(owner) = owner {
            report_owner(args, &owner);
        }
        vm.open_session(1, 1, ctx as u32)?;
        let loaded = Instant::now();
        tokenizer
            .join()
            .map_err(|_| ProtectedRunError::Thread)?
            .map_err(RunError::from)?;
        Ok((vm, booted, Some(loaded)))
    })
}

/// The request for session 1 with the CLI's sampling options.
fn request(args: &RunArgs, prompt: Prompt) -> GenerateRequest {
    let s = &args.sampling;
    GenerateRequest {
        options: Default::default(),
        request_id: 1,
        session_id: 1,
        sampling: SamplingParams {
            temperature: s.temperature,
            top_k: s.top_k as u32,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            seed: s.seed,
            max_tokens: s.max_tokens as u32,
            ignore_eog: false,
        },
        prompt,
    }
}

/// Runs `req` and writes the answer's text (the guest's) to stdout as it arrives (Ctrl-C
/// cancels it). Returns how it ended and when the first token came.
fn stream_answer(
    vm: &mut GuestVm,
    generate: impl FnOnce(
        &mut GuestVm,
        &mut dyn FnMut(&[u32], &[u8]),
    ) -> Result<EndOfStream, GuestError>,
) -> Result<(EndOfStream, Instant), ProtectedRunError> {
    let mut out = std::io::stdout().lock();
    let mut stream = Utf8Stream::default();
    let mut first_token = None;
    let mut write_err = None;
    let end = generate(vm, &mut |_, text| {
        first_token.get_or_insert_with(Instant::now);
        if write_err.is_some() {
            return;
        }
        let piece = stream.push(text);
        if let Err(e) = out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
            write_err = Some(e);
        }
    })?;
    let tail = stream.finish();
    writeln!(out, "{tail}").map_err(RunError::Output)?;
    if let Some(e) = write_err {
        return Err(RunError::Output(e).into());
    }
    Ok((end, first_token.unwrap_or_else(Instant::now)))
}
