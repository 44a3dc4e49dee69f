//! `flexserve bench-sealed`: cold starts of one model plain and sealed, in one run, the
//! modes taking turns within each repetition:
//! - `unsealed`: the plain GGUF streamed in and hashed, as `run` loads it;
//! - `sealed`: the pipeline: the first request is sent before the chunks, and the guest
//!   computes each layer of the prompt as soon as it is unsealed (each chunk copied into
//!   private memory and authenticated and decrypted there as it arrives);
//! - `serial`: the same unsealing, but the prompt only once the whole model is in (what the
//!   pipeline saves over it is the overlap);
//! - `strawman`: every chunk stored first, the whole body decrypted at the end, then the
//!   prompt (the naive secure load the pipeline is measured against).
//!
//! Each row is the median of its repetitions: cold time to first token from before the boot
//! (the model files are mapped and in the page cache already), split into boot, load (its
//! decrypting part counted by the guest) and prefill; and decode speed. It also measures
//! AES-256-GCM on the host with the very code the guest runs (`sealed_model::Unsealer`
//! opening every chunk in place), against the guest's strawman decryption (one pass over
//! the stored body). The last line is one JSON object.

use super::e2e::{BenchError, median, ms, prompt};
use crate::cli::BenchSealedArgs;
use crate::guest_root::GuestRoot;
use crate::model::{Access, HostModel};
use crate::run::host::RunError;
use sealed_model::{Header, TAG_BYTES, Unsealer, derive_guest_key};
use serde_json::{Value, json};
use std::time::Instant;
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use vmm::guest_images::GuestImages;
use vmm::guest_vm::{FirstRequest, GuestConfig, GuestError, GuestVm, SealedLoadOptions};
use vmm::hypervisor::IsolationLevel;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Unsealed,
    Sealed,
    Serial,
    Strawman,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Unsealed, Mode::Sealed, Mode::Serial, Mode::Strawman];
    /// Where each is in `ALL`, for the ratios.
    const UNSEALED: usize = 0;
    const SEALED: usize = 1;
    const SERIAL: usize = 2;
    const STRAWMAN: usize = 3;

    fn name(self) -> &'static str {
        match self {
            Mode::Unsealed => "unsealed",
            Mode::Sealed => "sealed",
            Mode::Serial => "serial",
            Mode::Strawman => "strawman",
        }
    }
}

/// One cold start's figures.
#[derive(Clone, Copy, Default)]
struct Sample {
    cold_ttft_ms: f64,
    boot_ms: f64,
    load_ms: f64,
    decrypt_ms: f64,
    prefill_ms: f64,
    decode_tps: f64,
}

/// A model as a plain GGUF and sealed to this host's guest.
struct Pair {
    plain: HostModel,
    sealed: HostModel,
}

/// What every cold start shares.
struct Rig<'a> {
    args: &'a BenchSealedArgs,
    images: GuestImages,
    root: GuestRoot,
}

/// Runs the benchmark on every pair of files and prints its rows.
pub fn run(args: &BenchSealedArgs) -> Result<(), BenchError> {
    let images = GuestImages::locate(args.images.as_deref()).map_err(GuestError::from)?;
    let root = GuestRoot::for_guest(&images, None, true).map_err(BenchError::KeyRoot)?;
    let rig = Rig { args, images, root };
    let mut rows = Vec::new();
    let mut crypto = Vec::new();
    for files in args.models.chunks(2) {
        let [plain, sealed] = files else {
            return Err(BenchError::Pairs);
        };
        let open = |p| HostModel::open(p, Access::Mapped).map_err(RunError::from);
        let pair = Pair {
            plain: open(plain)?,
            sealed: open(sealed)?,
        };
        if pair.plain.is_sealed() || !pair.sealed.is_sealed() {
            return Err(BenchError::Pairs);
        }
        let name = model_name(plain);
        for &n in &args.prompt_tokens {
            rows.extend(rig.rows(&pair, &name, n)?);
        }
        crypto.push(rig.crypto(&pair, &name)?);
    }
    let out = json!({"bench": "sealed", "rows": rows, "aes_gcm": crypto});
    println!("{out}");
    Ok(())
}

fn model_name(path: &std::path::Path) -> String {
    path.file_name().and_then(|n| n.to_str()).map_or_else(
        || path.display().to_string(),
        |n| n.strip_suffix(".gguf").unwrap_or(n).to_string(),
    )
}

impl Rig<'_> {
    /// The three modes at `n` prompt tokens, repetitions interleaved (each repetition runs
    /// every mode, starting one later each time), medians per mode, and the ratios.
    fn rows(&self, pair: &Pair, name: &str, n: usize) -> Result<Vec<Value>, BenchError> {
        let n_vocab = pair.plain.shape().map_err(RunError::from)?.n_vocab as u32;
        let ids = prompt(n, n_vocab);
        let mut samples: [Vec<Sample>; 4] = Default::default();
        for rep in 0..self.args.reps {
            for k in 0..Mode::ALL.len() {
                let i = (rep + k) % Mode::ALL.len();
                let s = self.cold_start(pair, Mode::ALL[i], &ids)?;
                eprintln!(
                    "[bench-sealed] {name} {n} tokens, {} rep {}: TTFT {:.0} ms (boot {:.0}, \
                     load {:.0}, decrypt {:.0}, prefill {:.0}), decode {:.1} tok/s",
                    Mode::ALL[i].name(),
                    rep + 1,
                    s.cold_ttft_ms,
                    s.boot_ms,
                    s.load_ms,
                    s.decrypt_ms,
                    s.prefill_ms,
                    s.decode_tps
                );
                samples[i].push(s);
            }
        }
        let med =
            |i: usize, f: fn(&Sample) -> f64| median(&samples[i].iter().map(f).collect::<Vec<_>>());
        let ttft = |i| med(i, |s| s.cold_ttft_ms);
        let mut rows = Vec::new();
        // What the pipeline's overlap of loading and computing hid: its time to first token
        // against the same unsealing with the prompt after the load, as a share of the
        // smaller of that load and that prefill.
        let (load, prefill) = (
            med(Mode::SERIAL, |s| s.load_ms),
            med(Mode::SERIAL, |s| s.prefill_ms),
        );
        let hidden = (ttft(Mode::SERIAL) - ttft(Mode::SEALED)) / load.min(prefill);
        for (i, mode) in Mode::ALL.iter().enumerate() {
            let (load, prefill) = (med(i, |s| s.load_ms), med(i, |s| s.prefill_ms));
            let hidden = (*mode == Mode::Sealed).then_some(hidden);
            rows.push(json!({
                "model": name,
                "mode": mode.name(),
                "prompt_tokens": n,
                "cold_ttft_ms": ttft(i),
                "boot_ms": med(i, |s| s.boot_ms),
                "load_ms": load,
                "decrypt_ms": med(i, |s| s.decrypt_ms),
                "prefill_ms": prefill,
                "decode_tps": med(i, |s| s.decode_tps),
                "overlap_hidden_share": hidden,
                "ttft_vs_unsealed": ttft(i) / ttft(Mode::UNSEALED),
                "ttft_vs_strawman": ttft(i) / ttft(Mode::STRAWMAN),
                "decode_vs_unsealed": med(i, |s| s.decode_tps)
                    / med(Mode::UNSEALED, |s| s.decode_tps),
                "reps": self.args.reps,
            }));
        }
        Ok(rows)
    }

    /// Boots a guest, loads the model in `mode`, and runs `ids` then `gen_tokens` greedy
    /// tokens on a new session.
    fn cold_start(&self, pair: &Pair, mode: Mode, ids: &[u32]) -> Result<Sample, BenchError> {
        let ctx = pair.plain.context(ids.len() + self.args.gen_tokens + 1);
        // One size for every mode: the largest any of them needs.
        let private = pair
            .plain
            .guest_memory(ctx, 1)
            .max(pair.sealed.guest_memory(ctx, 1));
        let t0 = Instant::now();
        let mut vm = GuestVm::start(
            &self.images,
            GuestConfig {
                vcpus: self.args.vcpus,
                private_bytes: usize::try_from(private).unwrap_or(usize::MAX),
                diagnostics: false,
                isolation: Default::default(),
                min_isolation: IsolationLevel::None,
                key_root: self.root.sealing,
                kv_reuse: true,
            },
        )?;
        let booted = Instant::now();
        let options = SealedLoadOptions {
            accepted_owners: Vec::new(),
            strawman: mode == Mode::Strawman,
            resume: false,
        };
        let req = GenerateRequest {
            options: Default::default(),
            request_id: 1,
            session_id: 1,
            sampling: SamplingParams {
                ignore_eog: true,
                ..SamplingParams::greedy(self.args.gen_tokens as u32)
            },
            prompt: Prompt::Tokens(ids.to_vec()),
        };
        let mut first = None;
        let on_tokens = &mut |_: &[u32], _: &[u8]| {
            first.get_or_insert_with(Instant::now);
        };
        let (end, loaded) = if mode == Mode::Sealed {
            let mut loaded = booted;
            let request = FirstRequest {
                model_id: 1,
                file: pair.sealed.bytes(),
                options: &options,
                context_len: ctx as u32,
                request: &req,
            };
            let progress = &mut |_| loaded = Instant::now();
            let (_, end) = vm.load_sealed_and_generate(request, progress, on_tokens, &|| None)?;
            (end, loaded)
        } else {
            let file = match mode {
                Mode::Unsealed => &pair.plain,
                _ => &pair.sealed,
            };
            file.load_into(&mut vm, 1, &options, &mut |_| {})?;
            let loaded = Instant::now();
            vm.open_session(1, 1, ctx as u32)?;
            (vm.generate(&req, on_tokens, &|| false)?, loaded)
        };
        let first = first.unwrap_or_else(Instant::now);
        let console = vm.shutdown()?;
        let decoded = end.generated_tokens.saturating_sub(1) as f64;
        Ok(Sample {
            cold_ttft_ms: ms(first - t0),
            boot_ms: ms(booted - t0),
            load_ms: ms(loaded - booted),
            decrypt_ms: decrypt_ms(&console).unwrap_or(0.0),
            prefill_ms: ms(first - loaded),
            decode_tps: decoded / (end.timings.generation_ns as f64 / 1e9).max(1e-9),
        })
    }

    /// AES-256-GCM throughput: this host opening every chunk of the sealed file in place
    /// with `sealed_model::Unsealer` (the guest's code), beside the guest's strawman
    /// decryption of the same body (median of a few cold starts' console counts).
    fn crypto(&self, pair: &Pair, name: &str) -> Result<Value, BenchError> {
        let sealing = self.root.sealing.ok_or(BenchError::Pairs)?;
        let key = derive_guest_key(&sealing.root, &sealing.measurement);
        let (header, header_bytes, body) =
            Header::split_file(pair.sealed.bytes()).map_err(GuestError::SealedFile)?;
        let mut host = Vec::new();
        let mut plain = vec![0u8; header.body_bytes() as usize];
        for _ in 0..self.args.reps.max(1) {
            let mut unsealer =
                Unsealer::new(header_bytes, &key, &[]).map_err(GuestError::SealedFile)?;
            let mut stored = Vec::new();
            for c in header.chunk_plan() {
                let (p, s) = (c.plaintext.clone(), c.sealed());
                let text = &body[s.start as usize..s.end as usize - TAG_BYTES];
                plain[p.start as usize..p.end as usize].copy_from_slice(text);
                let mut tag = [0u8; TAG_BYTES];
                tag.copy_from_slice(&body[s.end as usize - TAG_BYTES..s.end as usize]);
                stored.push((c.index, p, tag));
            }
            let t = Instant::now();
            for (index, p, tag) in &stored {
                let range = p.start as usize..p.end as usize;
                unsealer
                    .open_chunk_detached(*index, &mut plain[range], tag)
                    .map_err(GuestError::SealedFile)?;
            }
            host.push(t.elapsed());
            unsealer.finish().map_err(GuestError::SealedFile)?;
        }
        let mut guest = Vec::new();
        for _ in 0..self.args.reps.max(1) {
            let s = self.cold_start(pair, Mode::Strawman, &[1])?;
            guest.push(s.decrypt_ms);
        }
        let mib = header.body_bytes() as f64 / (1 << 20) as f64;
        let host_mibs = mib / median(&host.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>());
        let guest_mibs = mib / (median(&guest) / 1e3);
        eprintln!(
            "[bench-sealed] {name}: AES-256-GCM {host_mibs:.0} MiB/s on the host, \
             {guest_mibs:.0} MiB/s in the guest"
        );
        Ok(json!({
            "model": name,
            "body_mib": mib,
            "host_mib_per_s": host_mibs,
            "guest_mib_per_s": guest_mibs,
            "guest_vs_host": guest_mibs / host_mibs,
        }))
    }
}

/// The guest's decrypting time from its load line (`…, N ms decrypting`).
fn decrypt_ms(console: &[String]) -> Option<f64> {
    console
        .iter()
        .filter(|l| l.contains("engine: sealed model"))
        .find_map(|l| {
            l.strip_suffix(" ms decrypting")?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_s_decrypt_time_is_read_from_its_load_line() {
        let console = [
            "engine: ready".to_string(),
            "engine: sealed model 1 (93 MiB, strawman, owner 8a88e3dd7409f195, any owner): \
             94 ms from begin, 48 ms in chunks, 36 ms to check; 46 ms copying, 21 ms decrypting"
                .to_string(),
        ];
        assert_eq!(decrypt_ms(&console), Some(21.0));
        assert_eq!(decrypt_ms(&console[..1]), None);
    }
}
