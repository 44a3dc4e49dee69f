//! Shared plumbing of the end-to-end tests and benches: finding the guest images, and
//! running a guest while the host talks to it over virtio-llm.

pub mod a64;
pub mod fake_pypi;
pub mod loopback;
pub mod memscan;
pub mod relay;
pub mod serve_rig;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vmm::devices::virtio_llm::LlmHost;
use vmm::machine::{Machine, MachineConfig, VmError};

/// Where cargo put the guest images: `$FLEXSERVE_TARGET_DIR` (tests run from an initramfs),
/// else `$CARGO_TARGET_DIR`, else the source tree's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("FLEXSERVE_TARGET_DIR")
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The guest kernel of this host's architecture (`make image` / `make image-arm64`).
#[cfg(target_arch = "x86_64")]
pub fn kernel_path() -> PathBuf {
    target_dir().join("x86_64-unknown-none/release/flexserve-guest-kernel")
}

/// The guest kernel of this host's architecture (`make image` / `make image-arm64`).
#[cfg(target_arch = "aarch64")]
pub fn kernel_path() -> PathBuf {
    target_dir().join("aarch64-unknown-none/release/flexserve-guest-kernel")
}

/// A guest user program of this host's architecture.
#[cfg(target_arch = "x86_64")]
pub fn program_path(program: &str) -> PathBuf {
    target_dir().join("release").join(program)
}

/// A guest user program of this host's architecture.
#[cfg(target_arch = "aarch64")]
pub fn program_path(program: &str) -> PathBuf {
    target_dir()
        .join("aarch64-unknown-none/release")
        .join(program)
}

/// The command that builds this architecture's guest images.
pub const MAKE_IMAGE: &str = if cfg!(target_arch = "aarch64") {
    "make image-arm64"
} else {
    "make image"
};

/// `FLEXSERVE_REQUIRE_KVM=1` (set by `.ci/run` where /dev/kvm exists): missing KVM or
/// images fail the test instead of skipping it.
pub fn kvm_required() -> bool {
    std::env::var("FLEXSERVE_REQUIRE_KVM").as_deref() == Ok("1")
}

/// The guest kernel and user `program` images; `None` (after saying why) when guests cannot
/// run here.
pub fn guest_images(program: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (kernel, user) = (kernel_path(), program_path(program));
    let missing = [&kernel, &user].into_iter().find(|p| !p.exists());
    if !std::path::Path::new("/dev/kvm").exists() || missing.is_some() {
        assert!(
            !kvm_required(),
            "cannot boot guests: /dev/kvm or {missing:?} missing (run `{MAKE_IMAGE}`)"
        );
        eprintln!("SKIPPED: /dev/kvm or guest images missing ({missing:?}); run `{MAKE_IMAGE}`");
        return None;
    }
    Some((std::fs::read(kernel).ok()?, std::fs::read(user).ok()?))
}

/// `models/<name>`; `None` (after saying why) when `make setup` has not made it, which
/// fails instead under `FLEXSERVE_REQUIRE_MODELS=1`.
pub fn model_path(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name);
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("FLEXSERVE_REQUIRE_MODELS").as_deref() != Ok("1"),
        "{} missing; run `make setup`",
        p.display()
    );
    eprintln!("SKIPPED: {} missing; run `make setup`", p.display());
    None
}

/// Where the production images are: `$FLEXSERVE_IMAGES`, else the source tree's.
fn images_dir() -> PathBuf {
    std::env::var_os("FLEXSERVE_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("..").join(vmm::guest_images::IMAGES_OUT))
}

/// The protected guest's images (`make image`), checked against their manifest; `None`
/// (after saying why) when guests cannot run here.
pub fn protected_images() -> Option<vmm::guest_images::GuestImages> {
    images_in(images_dir())
}

/// The images with the test build of the engine, which answers memory probes (`make image`
/// puts them beside the production ones, in `<images>-probes`); `None` as
/// [`protected_images`].
pub fn probe_images() -> Option<vmm::guest_images::GuestImages> {
    let mut dir = images_dir().into_os_string();
    dir.push("-probes");
    images_in(PathBuf::from(dir))
}

fn images_in(dir: PathBuf) -> Option<vmm::guest_images::GuestImages> {
    let ok = std::path::Path::new("/dev/kvm").exists() && dir.join("manifest.json").exists();
    if !ok {
        assert!(
            !kvm_required(),
            "/dev/kvm or the guest images are missing (run `{MAKE_IMAGE}`)"
        );
        eprintln!("SKIPPED: /dev/kvm or guest images missing; run `{MAKE_IMAGE}`");
        return None;
    }
    Some(vmm::guest_images::GuestImages::load(&dir).expect("images match their manifest"))
}

/// Whether a test of the private-memory property itself (the host cannot read the pool) can
/// run on a VM with `isolation`; if not, prints the one `SKIPPED` line that says why. Hosts
/// without guest_memfd (or with `FLEXSERVE_NO_GUEST_MEMFD=1`) run every other guest test.
pub fn private_memory_or_skip(test: &str, isolation: &vmm::hypervisor::Isolation) -> bool {
    if isolation.level() >= vmm::hypervisor::IsolationLevel::PrivateMemory {
        return true;
    }
    eprintln!(
        "SKIPPED: {test}: host KVM has no guest_memfd ({})",
        isolation.limit
    );
    false
}

/// What a guest run with a host-side conversation produced.
pub struct Conversation<R> {
    /// How the VM ended: `Err(VmError::StoppedByHost)` when the host finished first.
    pub vm: Result<u32, VmError>,
    /// What the host side returned.
    pub host: R,
    /// The guest's console lines.
    pub console: Vec<String>,
}

/// Boots `program` on `vcpus` vCPUs and runs `host` against its virtio-llm device on this
/// thread; stops the VM when `host` returns.
pub fn converse<R: Send>(
    kernel: &[u8],
    user: &[u8],
    vcpus: u8,
    deadline: Duration,
    host: impl FnOnce(&LlmHost) -> R + Send,
) -> Conversation<R> {
    let config = MachineConfig {
        deadline,
        ..MachineConfig::default()
    };
    let mut m = Machine::new(config).expect("create VM");
    let (llm, stop): (Arc<LlmHost>, _) = (m.llm(), m.stop_handle());
    let (vm, host) = std::thread::scope(|s| {
        let guest = s.spawn(|| m.boot(kernel, user, vcpus));
        let r = host(&llm);
        stop.stop();
        (guest.join().expect("VM thread"), r)
    });
    Conversation {
        vm,
        host,
        console: m.console().lines(),
    }
}

/// A machine with 64 MiB of private memory and a minute to run.
pub fn machine_with_64_mib_private() -> Machine {
    Machine::new(MachineConfig {
        private_size: 64 << 20,
        deadline: Duration::from_secs(60),
        ..MachineConfig::default()
    })
    .expect("create VM")
}

/// A guest with the test build of the engine (memory probes), and the tiny model loaded as model 1; `None`
/// (skipped) without the images or the model.
pub fn engine_with_model(private_mib: usize) -> Option<(vmm::guest_vm::GuestVm, Vec<u8>)> {
    let (images, path) = (probe_images()?, model_path("tiny.Q8_0.gguf")?);
    let file = std::fs::read(path).expect("read the tiny model");
    let mut vm = vmm::guest_vm::GuestVm::start(
        &images,
        vmm::guest_vm::GuestConfig {
            vcpus: 2,
            private_bytes: private_mib << 20,
            diagnostics: true,
            isolation: Default::default(),
            min_isolation: vmm::hypervisor::IsolationLevel::None,
            key_root: None,
            kv_reuse: true,
        },
    )
    .expect("guest boots");
    vm.load_model(1, &file, None, &mut |_| {})
        .expect("model loads");
    warm_up(&mut vm, 1);
    Some((vm, file))
}

/// Runs one token on a throwaway session of model `model_id`, so that what the guest holds
/// for the model includes its tokenizer (the first generation builds it when the guest owns
/// text): its small blocks count against the budget like the rest, and tests that measure
/// "the model alone" to set budgets from it would otherwise miss them.
pub fn warm_up(vm: &mut vmm::guest_vm::GuestVm, model_id: u32) {
    use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
    const SESSION: u32 = 0xffff;
    vm.open_session(SESSION, model_id, 16)
        .expect("open a warm-up session");
    let req = GenerateRequest {
        options: Default::default(),
        request_id: u64::MAX,
        session_id: SESSION,
        sampling: SamplingParams::greedy(1),
        prompt: Prompt::Tokens(vec![1]),
    };
    vm.generate(&req, &mut |_, _| {}, &|| false)
        .expect("the warm-up token");
    vm.close_session(SESSION)
        .expect("close the warm-up session");
}
