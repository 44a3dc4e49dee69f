//! Sealing for the tests of sealed models in a real guest (`guest_sealed.rs`,
//! `guest_sealed_scan.rs`): a model re-laid and sealed as the owner's tool does, and a guest
//! booted with the development key root it was sealed to.

use inference_guest::gguf::Gguf;
use sealed_model::{OsRng, OwnerKey, SealRequest, TryRngCore, derive_guest_key};
use vmm::devices::virtio_llm::SealingRoot;
use vmm::guest_images::GuestImages;
use vmm::guest_vm::{GuestConfig, GuestVm};

/// The development key root the tests' guests get.
pub const ROOT: [u8; 32] = [0x5e; 32];

/// `file` re-laid and sealed in chunks of `chunk_bytes` to the guest whose key derives from
/// `root` and `measurement`. Every call draws a fresh content key.
pub fn seal(file: &[u8], root: &[u8; 32], measurement: &[u8; 32], chunk_bytes: u32) -> Vec<u8> {
    let gguf = Gguf::parse(file).expect("the model parses");
    let relaid = model_tools::relayout::relayout(&gguf).expect("re-lay the model");
    let request = SealRequest {
        plaintext: &relaid.bytes,
        layers: &relaid.layers,
        chunk_bytes,
        context_len: 512,
        kv_bytes_per_token: 0,
        recipients: &[derive_guest_key(root, measurement).public()],
    };
    let owner = OwnerKey::from_seed(&[3; 32]);
    sealed_model::seal(&request, &owner, &mut OsRng.unwrap_err()).expect("seal")
}

/// A guest booted from `images` with [`ROOT`] and the images' own measurement, with room
/// for a model of `model_bytes`.
pub fn sealing_guest(images: &GuestImages, model_bytes: usize) -> GuestVm {
    GuestVm::start(
        images,
        GuestConfig {
            vcpus: 2,
            private_bytes: (model_bytes.div_ceil(1 << 20) * 2 + 160) << 20,
            diagnostics: false,
            isolation: Default::default(),
            min_isolation: vmm::hypervisor::IsolationLevel::None,
            key_root: Some(SealingRoot {
                root: ROOT,
                measurement: images.measurement(),
            }),
            kv_reuse: true,
        },
    )
    .expect("guest boots")
}
