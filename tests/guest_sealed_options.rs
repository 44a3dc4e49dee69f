//! `GuestVm::load_sealed_with` in a real guest under KVM (`make image`): the guest accepts
//! only the owners the host lists (an unlisted one is refused with `SealRejected` and the
//! guest keeps serving), the load reports the owner who signed, and a strawman load (store
//! everything, decrypt at the end) gives the same model. `guest_sealed.rs` has the default
//! load and tampering.

// The in-process rig's sealing and host engine; the rest of it is unused here.
#[path = "service_rig.rs"]
#[allow(dead_code)]
mod rig;

use flexserve_e2e::protected_images as images;
use rig::{HostEngine, OWNER_SEED, SEALING_ROOT, model, owner_public, seal_model};
use sealed_model::OwnerPublicKey;
use virtio_llm::Status;
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use vmm::devices::virtio_llm::SealingRoot;
use vmm::guest_vm::{GuestConfig, GuestError, GuestVm, SealedLoadOptions};

fn greedy_in_guest(vm: &mut GuestVm, session: u32, model_id: u32, prompt: &[u32]) -> Vec<u32> {
    vm.open_session(session, model_id, 256).expect("session");
    let mut sampling = SamplingParams::greedy(24);
    sampling.ignore_eog = true;
    let req = GenerateRequest {
        options: Default::default(),
        request_id: u64::from(session),
        session_id: session,
        sampling,
        prompt: Prompt::Tokens(prompt.to_vec()),
    };
    let mut got = Vec::new();
    vm.generate(&req, &mut |t, _| got.extend_from_slice(t), &|| false)
        .expect("the guest generates");
    got
}

#[test]
fn the_guest_accepts_listed_owners_and_loads_strawman_as_pipelined() {
    let (Some(images), Some((file, _))) = (images(), model()) else {
        return;
    };
    let parts = seal_model(&file, images.measurement(), 1 << 20);
    let mut fsm = parts.header.clone();
    for (_, chunk) in &parts.chunks {
        fsm.extend_from_slice(chunk);
    }
    let mut vm = GuestVm::start(
        &images,
        GuestConfig {
            vcpus: 2,
            private_bytes: (file.len().div_ceil(1 << 20) * 3 + 160) << 20,
            diagnostics: false,
            isolation: Default::default(),
            min_isolation: vmm::hypervisor::IsolationLevel::None,
            key_root: Some(SealingRoot {
                root: SEALING_ROOT.root,
                measurement: images.measurement(),
            }),
            kv_reuse: true,
        },
    )
    .expect("guest boots");
    let ours = OwnerPublicKey(owner_public(OWNER_SEED));
    let stranger = OwnerPublicKey(owner_public([2; 32]));

    let only_stranger = SealedLoadOptions {
        accepted_owners: vec![stranger],
        strawman: false,
        resume: false,
    };
    match vm.load_sealed_with(1, &fsm, &only_stranger, &mut |_| {}) {
        Err(GuestError::Refused { status, .. }) => assert_eq!(status, Status::SealRejected),
        other => panic!("an unlisted owner was not refused: {other:?}"),
    }

    let engine = HostEngine { file: file.clone() };
    let prompt = vec![1, 400, 500, 600, 700];
    let expected = engine.greedy(&prompt, 256, 24, false);
    for (id, strawman) in [(1, false), (2, true)] {
        let options = SealedLoadOptions {
            accepted_owners: vec![stranger, ours],
            strawman,
            resume: false,
        };
        let loaded = vm
            .load_sealed_with(id, &fsm, &options, &mut |_| {})
            .expect("the sealed model loads");
        assert_eq!(loaded.owner, ours);
        assert_eq!(
            greedy_in_guest(&mut vm, id, id, &prompt),
            expected,
            "strawman {strawman}"
        );
    }
    vm.shutdown().expect("clean shutdown");
}
