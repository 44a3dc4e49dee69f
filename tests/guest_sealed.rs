//! A sealed model in a real guest under KVM (`make image`): the VMM hands the guest the
//! development key root and the measurement of the images it booted in virtio-llm's
//! configuration space, `GuestVm::load_sealed` streams the `.fsm`, and the engine unseals it
//! into private memory; greedy output equals the host engine's on the plaintext model. A
//! tampered chunk is refused with `SealRejected` and the guest keeps serving.

use flexserve_e2e::{model_path, protected_images as images};
use inference_guest::generate::{Generation, generate};
use inference_guest::gguf::Gguf;
use inference_guest::model::Model;
use inference_guest::parallel::SingleThread;
use inference_guest::quant::Kernels;
use inference_guest::sampler::{Sampler, SamplerConfig};
use sealed_model::{OsRng, OwnerKey, SealRequest, TryRngCore, derive_guest_key};
use virtio_llm::Status;
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use vmm::devices::virtio_llm::SealingRoot;
use vmm::guest_vm::{GuestConfig, GuestError, GuestVm};

const ROOT: [u8; 32] = [0x5e; 32];

/// `file` re-laid and sealed to the guest with `root` and `measurement`.
fn seal(file: &[u8], measurement: &[u8; 32]) -> Vec<u8> {
    let relaid = model_tools::relayout::relayout(&Gguf::parse(file).unwrap()).unwrap();
    let request = SealRequest {
        plaintext: &relaid.bytes,
        layers: &relaid.layers,
        chunk_bytes: sealed_model::MAX_CHUNK_BYTES,
        context_len: 512,
        kv_bytes_per_token: 0,
        recipients: &[derive_guest_key(&ROOT, measurement).public()],
    };
    let owner = OwnerKey::from_seed(&[3; 32]);
    sealed_model::seal(&request, &owner, &mut OsRng.unwrap_err()).unwrap()
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
    let fsm = seal(&file, &images.measurement());
    let mut vm = GuestVm::start(
        &images,
        GuestConfig {
            vcpus: 2,
            private_bytes: (file.len().div_ceil(1 << 20) * 2 + 160) << 20,
            diagnostics: false,
            isolation: Default::default(),
            min_isolation: vmm::hypervisor::IsolationLevel::None,
            key_root: Some(SealingRoot {
                root: ROOT,
                measurement: images.measurement(),
            }),
        },
    )
    .expect("guest boots");

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
    vm.open_session(1, 1, 512).expect("session");
    let prompt = vec![1, 400, 500, 600, 700];
    let mut got = Vec::new();
    let mut sampling = SamplingParams::greedy(24);
    sampling.ignore_eog = true;
    let req = GenerateRequest {
        request_id: 1,
        session_id: 1,
        sampling,
        prompt: Prompt::Tokens(prompt.clone()),
    };
    vm.generate(&req, &mut |t, _| got.extend_from_slice(t), &|| false)
        .expect("the guest generates");
    assert_eq!(got, host_greedy(&file, &prompt, 24));
    vm.shutdown().expect("clean shutdown");
}
