//! A sealed model in a real guest under KVM (`make image`): the VMM hands the guest the
//! development key root and the measurement of the images it booted in virtio-llm's
//! configuration space, `GuestVm::load_sealed` streams the `.fsm`, and the engine unseals it
//! into private memory; greedy output equals the host engine's on the plaintext model.
//! Tampered and forged files (a flipped bit, duplicated, swapped and foreign chunks, an
//! edited header, another key root or image) are refused with `SealRejected` and the reason
//! on the guest's console, a cut file by the VMM itself, and the guest keeps serving.
//! `guest_sealed_scan.rs` checks that no plaintext leaves the guest.

#[path = "sealing.rs"]
mod sealing;

use flexserve_e2e::{model_path, protected_images as images};
use inference_guest::generate::{Generation, generate};
use inference_guest::gguf::Gguf;
use inference_guest::model::Model;
use inference_guest::parallel::SingleThread;
use inference_guest::quant::Kernels;
use inference_guest::sampler::{Sampler, SamplerConfig};
use sealed_model::{Header, MAX_CHUNK_BYTES, SealError};
use sealing::{ROOT, seal, sealing_guest};
use std::ops::Range;
use virtio_llm::Status;
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use vmm::guest_images::GuestImages;
use vmm::guest_vm::{FirstRequest, GuestError, GuestVm, SealedLoadOptions};

const PROMPT: [u32; 5] = [1, 400, 500, 600, 700];

/// `n` greedy tokens of model 1 on `prompt`, in a new session `session_id`.
fn guest_greedy(vm: &mut GuestVm, session_id: u32, prompt: &[u32], n: u32) -> Vec<u32> {
    vm.open_session(session_id, 1, 512).expect("session");
    let mut got = Vec::new();
    let mut sampling = SamplingParams::greedy(n);
    sampling.ignore_eog = true;
    let req = GenerateRequest {
        options: Default::default(),
        request_id: session_id.into(),
        session_id,
        sampling,
        prompt: Prompt::Tokens(prompt.to_vec()),
    };
    vm.generate(&req, &mut |t, _| got.extend_from_slice(t), &|| false)
        .expect("the guest generates");
    got
}

fn host_greedy(file: &[u8], prompt: &[u32], n: u32) -> Vec<u32> {
    let gguf = Gguf::parse(file).unwrap();
    let model = Model::from_gguf(&gguf, Kernels::detect()).unwrap();
    let mut session = model.new_session(512);
    let mut sampler = Sampler::new(SamplerConfig::greedy(), model.cfg.n_vocab);
    let mut out = Vec::new();
    let generation = Generation {
        prompt,
        max_tokens: n as usize,
        stop_at_eog: false,
    };
    generate(
        &model,
        &mut session,
        &mut sampler,
        &SingleThread,
        &generation,
        &|_| false,
        &mut |t| {
            out.push(t);
            true
        },
    )
    .unwrap();
    out
}

#[test]
fn a_sealed_model_unseals_in_the_guest_and_generates_as_the_plaintext() {
    let (Some(images), Some(path)) = (images(), model_path("tiny.Q8_0.gguf")) else {
        return;
    };
    let file = std::fs::read(path).unwrap();
    let fsm = seal(&file, &ROOT, &images.measurement(), MAX_CHUNK_BYTES);
    let mut vm = sealing_guest(&images, file.len());

    // One flipped bit in the body's middle: refused, and the guest goes on.
    let mut tampered = fsm.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;
    match vm.load_sealed(1, &tampered, &mut |_| {}) {
        Err(GuestError::Refused { status, .. }) => assert_eq!(status, Status::SealRejected),
        other => panic!("a tampered chunk was not refused: {other:?}"),
    }

    vm.load_sealed(1, &fsm, &mut |_| {})
        .expect("the sealed model loads");
    assert_eq!(
        guest_greedy(&mut vm, 1, &PROMPT, 24),
        host_greedy(&file, &PROMPT, 24)
    );
    vm.shutdown().expect("clean shutdown");
}

/// The pipeline in a real guest: the first request is sent before the chunks
/// (`GuestVm::load_sealed_and_generate`) and its prefill runs as the layers are unsealed;
/// its tokens equal the host engine's, the guest's log shows the first block ran before the
/// whole model was in, and the loaded model then serves another session alike.
#[test]
fn a_sealed_model_loads_with_its_first_request_and_generates_as_the_plaintext() {
    let (Some(images), Some(path)) = (images(), model_path("tiny.Q8_0.gguf")) else {
        return;
    };
    let file = std::fs::read(path).unwrap();
    let fsm = seal(&file, &ROOT, &images.measurement(), SMALL_CHUNKS);
    let mut vm = sealing_guest(&images, file.len());
    let mut sampling = SamplingParams::greedy(24);
    sampling.ignore_eog = true;
    let req = GenerateRequest {
        options: Default::default(),
        request_id: 7,
        session_id: 7,
        sampling,
        prompt: Prompt::Tokens(PROMPT.to_vec()),
    };
    let first = FirstRequest {
        model_id: 1,
        file: &fsm,
        options: &SealedLoadOptions::default(),
        context_len: 512,
        request: &req,
    };
    let mut got = Vec::new();
    let (loaded, end) = vm
        .load_sealed_and_generate(
            first,
            &mut |_| {},
            &mut |t, _| got.extend_from_slice(t),
            &|| None,
        )
        .expect("the pipelined load and its request");
    let want = host_greedy(&file, &PROMPT, 24);
    assert_eq!(got, want);
    assert_eq!(end.generated_tokens, 24);
    assert_eq!(
        loaded.body_bytes,
        Header::split_file(&fsm).unwrap().0.body_bytes()
    );
    assert_eq!(guest_greedy(&mut vm, 8, &PROMPT, 24), want);
    let console = vm.shutdown().expect("clean shutdown");
    let line = console
        .iter()
        .find(|l| l.contains("ran as sealed model 1 arrived"))
        .unwrap_or_else(|| panic!("no pipeline line in {console:?}"));
    let kib: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert!(kib[kib.len() - 2] < kib[kib.len() - 1], "{line}");
}

/// Plaintext bytes per chunk of the forged files: small, so the tiny model has many
/// neighbouring chunks of one length to duplicate, swap and splice.
const SMALL_CHUNKS: u32 = 64 << 10;

/// How the load of a forged file must end.
#[derive(Debug)]
enum Refusal {
    /// The guest refuses with `SealRejected` and says `engine: sealed model 1 refused: …`
    /// with this reason on its console.
    Guest(String),
    /// The VMM refuses the file before the guest sees any of it.
    Host(SealError),
}

/// Each chunk of a whole sealed file: its layer and where it lies in the file.
fn chunk_ranges(fsm: &[u8]) -> Vec<(u32, Range<usize>)> {
    let (header, header_bytes, _) = Header::split_file(fsm).expect("a whole sealed file");
    let base = header_bytes.len();
    header
        .chunk_plan()
        .map(|c| {
            let r = c.sealed();
            (c.layer, base + r.start as usize..base + r.end as usize)
        })
        .collect()
}

/// The forged files and how each load must end. `good` and `other` are two sealings of
/// the tiny model `file` to this guest (in `SMALL_CHUNKS`, under two content keys).
fn forgeries(
    file: &[u8],
    good: &[u8],
    other: &[u8],
    images: &GuestImages,
) -> Vec<(&'static str, Vec<u8>, Refusal)> {
    let chunks = chunk_ranges(good);
    // Chunks k and k + 1: the first neighbours of one length after chunk 0, so the guest
    // has opened a chunk of the file before the forged one.
    let k = (1..chunks.len() - 1)
        .find(|&i| chunks[i].1.len() == chunks[i + 1].1.len())
        .expect("two neighbouring chunks of one length");
    let (a, b) = (chunks[k].1.clone(), chunks[k + 1].1.clone());
    let auth = |i: usize| {
        Refusal::Guest(format!(
            "chunk {i} (layer {}) does not authenticate",
            chunks[i].0
        ))
    };
    let body = (good.len() - chunks[0].1.start) as u64;
    let short = |by: usize| {
        Refusal::Host(SealError::BodyLength {
            expected: body,
            got: body - by as u64,
        })
    };
    let measurement = images.measurement();
    let ours = sealed_model::derive_guest_key(&ROOT, &measurement).public();
    let not_ours = || {
        Refusal::Guest(format!(
            "the model is not sealed to this guest (sealing key {ours})"
        ))
    };

    let mut duplicated = good.to_vec();
    duplicated.copy_within(a.clone(), b.start);
    let mut swapped = good.to_vec();
    swapped[a.start..b.end].copy_from_slice(&[&good[b.clone()], &good[a.clone()]].concat());
    assert_eq!(
        chunk_ranges(other)[k].1,
        a,
        "both sealings lay their chunks out alike"
    );
    let mut spliced = good.to_vec();
    spliced[a.clone()].copy_from_slice(&other[a.clone()]);
    let mut dropped = good.to_vec();
    dropped.drain(a.clone());
    let mut edited = good.to_vec();
    edited[28] ^= 1; // context_len: the owner signed another value
    // The measurement of the same images with one byte of the engine changed.
    let mut engine = images.engine.clone();
    let mid = engine.len() / 2;
    engine[mid] ^= 1;
    let changed = vmm::key_root::measure(&images.kernel, &engine);
    assert_ne!(changed, measurement);
    vec![
        ("a duplicated chunk (k over k + 1)", duplicated, auth(k + 1)),
        ("two neighbouring chunks swapped", swapped, auth(k)),
        ("chunk k of another sealing of the model", spliced, auth(k)),
        ("a dropped chunk", dropped, short(a.len())),
        (
            "a truncated file",
            good[..good.len() - 1000].to_vec(),
            short(1000),
        ),
        (
            "an edited header byte",
            edited,
            Refusal::Guest("the owner's signature does not verify over the header".into()),
        ),
        (
            "sealed under another key root",
            seal(file, &[0x11; 32], &measurement, SMALL_CHUNKS),
            not_ours(),
        ),
        (
            "sealed to the images with one engine byte changed",
            seal(file, &ROOT, &changed, SMALL_CHUNKS),
            not_ours(),
        ),
    ]
}

/// Forged sealed files in one real guest: each refused with its reason (the guest's
/// `SealRejected` and console line, or the VMM's own check of the file's length), no
/// partial model stays, and the guest then loads the genuine file and generates as the
/// host engine does.
#[test]
fn every_forged_sealed_file_is_refused_and_the_guest_keeps_serving() {
    let (Some(images), Some(path)) = (images(), model_path("tiny.Q8_0.gguf")) else {
        return;
    };
    let file = std::fs::read(path).unwrap();
    let measurement = images.measurement();
    let good = seal(&file, &ROOT, &measurement, SMALL_CHUNKS);
    let other = seal(&file, &ROOT, &measurement, SMALL_CHUNKS);
    let cases = forgeries(&file, &good, &other, &images);
    let mut vm = sealing_guest(&images, file.len());
    let started = std::time::Instant::now();
    for (what, fsm, refusal) in &cases {
        let got = vm.load_sealed(1, fsm, &mut |_| {});
        match (refusal, &got) {
            (Refusal::Guest(_), Err(GuestError::Refused { status, .. })) => {
                assert_eq!(*status, Status::SealRejected, "{what}")
            }
            (Refusal::Host(want), Err(GuestError::SealedFile(e))) => assert_eq!(e, want, "{what}"),
            _ => panic!("{what}: expected {refusal:?}, got {got:?}"),
        }
        assert_eq!(
            vm.stats().expect("stats").models_loaded,
            0,
            "{what}: a model stayed"
        );
    }
    eprintln!(
        "{} forged files refused in {:?}",
        cases.len(),
        started.elapsed()
    );
    vm.load_sealed(1, &good, &mut |_| {})
        .expect("the genuine file loads after the forged ones");
    assert_eq!(
        guest_greedy(&mut vm, 1, &PROMPT, 16),
        host_greedy(&file, &PROMPT, 16)
    );
    // The guest said why it refused each file it saw, in order, and nothing else.
    let console = vm.shutdown().expect("clean shutdown");
    let refused: Vec<&str> = console
        .iter()
        .filter_map(|l| l.trim().strip_prefix("engine: sealed model 1 refused: "))
        .collect();
    let want: Vec<&str> = cases
        .iter()
        .filter_map(|(_, _, r)| match r {
            Refusal::Guest(why) => Some(why.as_str()),
            Refusal::Host(_) => None,
        })
        .collect();
    assert_eq!(refused, want, "the guest's reasons");
}
