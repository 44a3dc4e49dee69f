//! Nothing of a user's prompt in host-readable guest memory (`make image`, the tiny model).
//!
//! A random 64-byte canary sentence goes to a real guest inside a chat message
//! (`Prompt::Chat`: the guest renders the template, tokenizes, and keeps the ids as the
//! session's history). The host then reads the whole boot region (kernel, engine image,
//! boot stacks, kernel heap: memory the host can read on x86_64 and arm64 normal VMs)
//! while the request runs, after it with the session still open, and after the session is
//! closed, looking for the sentence's bytes and for 16 of its token ids as the engine holds
//! them (u32, little-endian), at any alignment. Neither may be there: the engine's small
//! allocations (message copies, strings, token lists) and its user stacks live in the
//! private pool.
//!
//! The control shows the same scan finds both where the guest does keep them: in the
//! private pool, read through its host mapping where that is ordinary memory (isolation
//! `none`); where it is a guest_memfd the host cannot read, in a second guest on the
//! benchmark's host-readable pool, which runs the same engine.

use flexserve_e2e::memscan::{RUN, Runs, scan_guest};
use flexserve_e2e::{model_path, protected_images};
use guest_runtime::heap_alloc::EXIT_PRIVATE_POOL_REFUSED;
use inference_guest::gguf::Gguf;
use inference_guest::tokenizer::{ChatMessage, Tokenizer, chat};
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use virtio_llm::wire::request::{ChatRole, ChatTurn, GenerateRequest, Prompt, SamplingParams};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm::guest_vm::{GuestConfig, GuestVm};
use vmm::hypervisor::{IsolationLevel, IsolationRequest};
use vmm::machine::{Machine, MachineConfig, layout};

const MODEL: &str = "tiny.Q8_0.gguf";
/// vCPUs of the guests: the engine on vCPU 0 and a worker.
const VCPUS: u8 = 2;
/// Token ids in the token run (64 bytes).
const RUN_IDS: usize = RUN / 4;

/// The canary: a random sentence of exactly 64 ASCII bytes, ending in random digits.
fn canary_sentence() -> String {
    const WORDS: [&str; 32] = [
        "amber", "basil", "cedar", "delta", "ember", "fjord", "glade", "harbor", "indigo",
        "juniper", "kettle", "lantern", "meadow", "nectar", "orchid", "pepper", "quartz", "raven",
        "saffron", "timber", "umber", "velvet", "willow", "yonder", "zephyr", "otter", "falcon",
        "copper", "marble", "thistle", "walnut", "cobalt",
    ];
    let mut seed = [0u8; 40];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .expect("read /dev/urandom");
    let words: Vec<&str> = seed[..5].iter().map(|b| WORDS[*b as usize % 32]).collect();
    let mut s = format!(
        "The {} {} met the {} {} by the {} at ",
        words[0], words[1], words[2], words[3], words[4]
    );
    for b in &seed[5..] {
        if s.len() == RUN {
            break;
        }
        s.push(char::from(b'0' + b % 10));
    }
    assert_eq!(s.len(), RUN, "{s:?}");
    s
}

/// The chat prompt the guest gets.
fn chat_turns(canary: &str) -> Vec<ChatTurn> {
    vec![ChatTurn {
        role: ChatRole::User,
        content: format!("Please remember this sentence: {canary} Say it back."),
    }]
}

/// 16 ids of the canary's tokens as the guest tokenizes the chat prompt: the ids between
/// the prompt's and the canary-less prompt's common prefix and suffix, less one at each end
/// (a boundary token may merge with its neighbour).
fn canary_token_run(file: &[u8], canary: &str) -> Vec<u8> {
    let gguf = Gguf::parse(file).expect("the model parses");
    let template =
        chat::ChatTemplate::detect(gguf.get_str("tokenizer.chat_template").ok().flatten());
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("the model's tokenizer");
    let ids = |canary: &str| {
        let msgs: Vec<ChatMessage> = chat_turns(canary)
            .iter()
            .map(|t| ChatMessage::new(t.role.as_str(), &t.content))
            .collect();
        tokenizer.encode_chat(&msgs, template)
    };
    let (with, without) = (ids(canary), ids(""));
    let prefix = with
        .iter()
        .zip(&without)
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = with
        .iter()
        .rev()
        .zip(without.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let middle = &with[prefix..with.len() - suffix];
    assert!(
        middle.len() >= RUN_IDS + 2,
        "the canary is only {} tokens",
        middle.len()
    );
    middle[1..1 + RUN_IDS]
        .iter()
        .flat_map(|id| id.to_le_bytes())
        .collect()
}

/// What one scan found: the sentence (run 0), its token ids (run 1).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Found([bool; 2]);

/// Scans of one guest at each phase of the request.
#[derive(Debug, Default)]
struct Seen {
    boot_in_flight: Found,
    boot_open: Found,
    boot_closed: Found,
    /// The private pool while the request runs (`None`: the host cannot read it).
    pool_in_flight: Option<Found>,
    /// User code wrote to the boot-time user stacks between the prompt and the close.
    boot_stacks_written: bool,
}

/// The boot-time user stacks of the guest's vCPUs (the kernel starts each vCPU's user code
/// on one). A stack holds no recognisable copy of the prompt (locals are a few bytes each,
/// and the engine keeps text and ids on the heap), so a scan cannot tell whether it ran on
/// one: these bytes not changing while the prompt is handled shows it did not.
fn boot_stacks(mem: &GuestMemoryMmap) -> Vec<u8> {
    let (top, size) = (layout::USER_STACK_TOP, layout::USER_STACK_SIZE);
    let mut bytes = vec![0u8; (VCPUS as u64 * size) as usize];
    mem.read_slice(&mut bytes, GuestAddress(top - VCPUS as u64 * size))
        .expect("the boot stacks are guest memory");
    bytes
}

/// The boot region (the guest memory at 0) as the host maps it, scanned whole.
fn scan_boot_region(mem: &GuestMemoryMmap, runs: &Runs) -> Found {
    let boot = mem
        .iter()
        .find(|r| r.start_addr().0 == 0)
        .expect("the boot region is guest memory");
    let mut found = Found::default();
    let read = scan_guest(mem, 0, boot.len(), RUN - 1, &mut |_, piece| {
        runs.find(piece, &mut |run, _| found.0[run] = true)
    });
    assert!(read >= 64 << 20, "only {read} bytes of boot region");
    found
}

/// The private pool through its host mapping at `range` (ordinary memory at isolation
/// `none`).
fn scan_pool(range: &Range<u64>, runs: &Runs) -> Found {
    let (found, unread) = scan_host(range, runs);
    assert_eq!(unread, 0, "an ordinary-memory pool is readable");
    found
}

/// Host memory at `range` read through `/proc/self/mem` (a read of memory the host may
/// not touch fails or yields no guest data, but never faults this process), and how many
/// of its bytes could not be read.
fn scan_host(range: &Range<u64>, runs: &Runs) -> (Found, u64) {
    let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
    let (mut found, mut buf, mut at) = (Found::default(), vec![0u8; 1 << 20], range.start);
    let mut unread = 0;
    loop {
        let n = ((range.end - at) as usize).min(buf.len());
        match mem.read_exact_at(&mut buf[..n], at) {
            Ok(()) => runs.find(&buf[..n], &mut |run, _| found.0[run] = true),
            Err(_) => unread += n as u64,
        }
        if at + n as u64 >= range.end {
            break;
        }
        at += (n - (RUN - 1)) as u64;
    }
    buf.fill(0);
    std::hint::black_box(&buf);
    (found, unread)
}

/// A guest with the tiny model and session 1 open, the chat request that carries a fresh
/// canary, and the runs that find the canary's text and token ids.
struct Prompted {
    vm: GuestVm,
    req: GenerateRequest,
    runs: Runs,
}

/// Boots a guest (`isolation`) and gets it ready for the canary's request; `None` (skipped)
/// without KVM, images or the model.
fn prompted_guest(isolation: IsolationRequest) -> Option<Prompted> {
    let (images, path) = (protected_images()?, model_path(MODEL)?);
    let file = std::fs::read(path).expect("read the model");
    let canary = canary_sentence();
    let mut runs_bytes = canary.clone().into_bytes();
    runs_bytes.extend(canary_token_run(&file, &canary));
    let mut vm = GuestVm::start(
        &images,
        GuestConfig {
            vcpus: VCPUS,
            private_bytes: 128 << 20,
            diagnostics: false,
            isolation,
            min_isolation: IsolationLevel::None,
            key_root: None,
            kv_reuse: true,
        },
    )
    .expect("guest boots");
    eprintln!("isolation: {}", vm.isolation().describe());
    vm.load_model(1, &file, None, &mut |_| {})
        .expect("model loads");
    assert!(vm.owns_text(), "the engine takes chat prompts");
    vm.open_session(1, 1, 256).expect("open a session");
    let req = GenerateRequest {
        options: Default::default(),
        request_id: 1,
        session_id: 1,
        sampling: SamplingParams::greedy(8),
        prompt: Prompt::Chat(chat_turns(&canary)),
    };
    Some(Prompted {
        vm,
        req,
        runs: Runs::new(runs_bytes),
    })
}

/// Boots a guest (`isolation`), sends the canary in a chat prompt and scans at each phase;
/// `None` (skipped) without KVM, images or the model, or on a protected VM.
fn prompt_and_scan(isolation: IsolationRequest) -> Option<Seen> {
    let Prompted { mut vm, req, runs } = prompted_guest(isolation)?;
    if vm.isolation().protected_vm {
        // Reading a protected VM's pages breaks it: no_prompt_in_a_protected_vm scans it once.
        eprintln!("SKIPPED: no_prompt_in_the_boot_region: a protected VM");
        let _ = vm.shutdown();
        return None;
    }
    let mem = vm.memory_for_tests();
    let pool = (vm.isolation().level() == IsolationLevel::None)
        .then(|| vm.private_range_for_tests().expect("a private pool"));
    let mut seen = Seen::default();
    let stacks_before = boot_stacks(&mem);
    let mut in_flight = None;
    vm.generate(
        &req,
        &mut |_, _| {
            // The first tokens: the prompt is in, the request still runs.
            in_flight.get_or_insert_with(|| {
                (
                    scan_boot_region(&mem, &runs),
                    pool.as_ref().map(|p| scan_pool(p, &runs)),
                )
            });
        },
        &|| false,
    )
    .expect("the chat prompt runs");
    (seen.boot_in_flight, seen.pool_in_flight) = in_flight.expect("tokens came back");
    seen.boot_open = scan_boot_region(&mem, &runs);
    vm.close_session(1).expect("close the session");
    seen.boot_closed = scan_boot_region(&mem, &runs);
    seen.boot_stacks_written = boot_stacks(&mem) != stacks_before;
    eprintln!("{seen:?}");
    vm.shutdown().expect("clean shutdown");
    Some(seen)
}

impl Seen {
    fn assert_boot_region_clean(&self) {
        assert!(
            !self.boot_stacks_written,
            "user code ran on a boot-region stack while the prompt was handled"
        );
        let none = Found::default();
        assert_eq!(
            (self.boot_in_flight, self.boot_open, self.boot_closed),
            (none, none, none),
            "the boot region holds the prompt (text, token ids) in flight, with the session \
             open, after it closed"
        );
    }
}

#[test]
fn no_prompt_in_the_boot_region() {
    let Some(seen) = prompt_and_scan(IsolationRequest::default()) else {
        return;
    };
    seen.assert_boot_region_clean();
    let control = match seen.pool_in_flight {
        Some(pool) => pool,
        None => {
            // guest_memfd: the host cannot read this pool. The same engine on a pool the
            // host can read shows the scan finds the prompt where the guest keeps it.
            let other = prompt_and_scan(IsolationRequest::HostReadableHugePages)
                .expect("the control guest runs where the first one did");
            other.assert_boot_region_clean();
            other.pool_in_flight.expect("a host-readable pool")
        }
    };
    assert_eq!(
        control,
        Found([true, true]),
        "the scan did not find the prompt (text, token ids) in the private pool: it is broken"
    );
}

/// pKVM: the host can read nothing of a protected VM, so the scan covers all of its memory
/// but the shared window (the boot region and the pool), through `/proc/self/mem`, once the
/// answer is complete with the session open. A read of a page donated to the guest leaves
/// it unusable for the guest, so a protected VM is scanned once, not at each phase. The
/// control: the same reads of a guest on the benchmark's host-readable pool, on this host,
/// find the prompt where the guest keeps it.
#[test]
fn no_prompt_in_a_protected_vm() {
    let Some(Prompted { mut vm, req, runs }) = prompted_guest(IsolationRequest::default()) else {
        return;
    };
    if !vm.isolation().protected_vm {
        eprintln!("SKIPPED: no_prompt_in_a_protected_vm: no protected VMs on this host");
        vm.shutdown().expect("clean shutdown");
        return;
    }
    vm.generate(&req, &mut |_, _| {}, &|| false)
        .expect("the chat prompt runs");
    let mem = vm.memory_for_tests();
    let boot = mem
        .iter()
        .find(|r| r.start_addr().0 == 0)
        .expect("the boot region is guest memory");
    let boot_host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    let ranges = [
        boot_host..boot_host + boot.len(),
        vm.private_range_for_tests().expect("a private pool"),
    ];
    let mut found = Found::default();
    for range in &ranges {
        let (f, unread) = scan_host(range, &runs);
        eprintln!("{range:x?}: {f:?}, {unread} bytes unreadable");
        found.0[0] |= f.0[0];
        found.0[1] |= f.0[1];
    }
    // The reads broke the guest; a host can always stop it.
    let _ = vm.shutdown();
    assert_eq!(
        found,
        Found::default(),
        "the host read the prompt (text, token ids) in a protected VM's memory"
    );
    let control = prompt_and_scan(IsolationRequest::HostReadableHugePages)
        .expect("the control guest runs where the protected one did");
    assert_eq!(
        control.pool_in_flight,
        Some(Found([true, true])),
        "the scan did not find the prompt in a host-readable pool: it is broken"
    );
}

/// A host whose control page lies about the private pool, so that the guest would put a
/// user's data where the host reads it, gets a guest that refuses, says why and stops
/// before it holds anything of a user's: a pool inside the boot region or the shared
/// window, one whose end overflows, and none at all (the engine never falls back to the
/// boot region's heap). The real pool exists every time; only the report lies.
#[test]
fn the_engine_refuses_every_lie_about_its_private_pool() {
    let Some(images) = protected_images() else {
        return;
    };
    let lies = [
        (
            (layout::BOOT_BASE + (16 << 20), 64 << 20),
            "it overlaps the boot region",
        ),
        (
            (layout::SHARED_BASE, 64 << 20),
            "it overlaps the shared window",
        ),
        (
            (u64::MAX - (2 << 20) + 1, 4 << 20),
            "its base + size overflows",
        ),
        ((layout::PRIVATE_BASE, 0), "the host offers no private pool"),
    ];
    for (pool, why) in lies {
        let mut m = Machine::new(MachineConfig {
            private_size: 64 << 20,
            deadline: std::time::Duration::from_secs(60),
            reported_private_pool: Some(pool),
            ..MachineConfig::default()
        })
        .expect("create VM");
        let code = m.boot(&images.kernel, &images.engine, VCPUS);
        let console = m.console().lines().join("\n");
        assert!(
            matches!(code, Ok(EXIT_PRIVATE_POOL_REFUSED)),
            "pool {pool:x?}: {code:?}\n{console}"
        );
        assert!(console.contains(why), "pool {pool:x?}: {console}");
    }
}
