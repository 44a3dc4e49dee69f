//! Flexible private memory under KVM: budgets shrink the guest's share (it evicts KV caches,
//! then models, and gives granules back), what it gives back comes back scrubbed, a shrink
//! during a generation is served at once, and a guest that ignores a shrink loses its memory
//! by force. (`private_memory.rs` checks who can read that memory.)

use flexserve_e2e::{engine_with_model, guest_images, machine_with_64_mib_private, model_path};
use std::time::{Duration, Instant};
use virtio_llm::Status;
use virtio_llm::spec::layout::SHARED_WINDOW_BASE;
use virtio_llm::spec::{MEMORY_GRANULE, MIN_MEMORY_BUDGET};
use virtio_llm::wire::probe::ProbeOp;
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use vm_memory::{Bytes, GuestAddress};
use vmm::guest_vm::{GuestError, GuestVm};
use vmm::machine::VmError;
use vmm::memory_broker::{MemoryBroker, MemoryError};

/// How long a cooperating guest gets to meet a lower budget: it meets it in milliseconds on
/// x86_64 KVM; the margin is for the emulated arm64 host (`make test-arm64`), ~10x slower.
const SHRINK_DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn released_private_pages_come_back_zeroed() {
    use guest_programs::scrub::{MAILBOX_OFFSET, SCRUB_BYTES, state};
    let Some((kernel, scrub)) = guest_images("scrub") else {
        return;
    };
    let mut m = machine_with_64_mib_private();
    let (shared, stop) = (m.memory_for_tests(), m.stop_handle());
    let private = m.private_memory().expect("a private region");
    let mailbox = GuestAddress(SHARED_WINDOW_BASE + MAILBOX_OFFSET);
    let wait_for = |want: &[u64]| {
        let start = Instant::now();
        loop {
            let s: u64 = shared.read_obj(mailbox).expect("read mailbox");
            if want.contains(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "guest stuck in state {s}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let (vm, result) = std::thread::scope(|s| {
        let guest = s.spawn(|| m.boot(&kernel, &scrub, 1));
        wait_for(&[state::FILLED]);
        private
            .release(private.guest_addr(), SCRUB_BYTES)
            .expect("release the filled pages");
        shared
            .write_obj(state::RELEASED, mailbox)
            .expect("write mailbox");
        let result = wait_for(&[state::ALL_ZERO, state::NOT_ZERO]);
        stop.stop();
        (guest.join().expect("VM thread"), result)
    });
    assert!(matches!(vm, Err(VmError::StoppedByHost)), "{vm:?}");
    assert_eq!(
        result,
        state::ALL_ZERO,
        "released pages kept their contents"
    );
    // Releasing outside the region is refused.
    assert!(
        private
            .release(private.guest_addr() + (64 << 20), 4096)
            .is_err()
    );
}

#[test]
fn memory_the_engine_relinquishes_comes_back_zeroed() {
    let Some((mut vm, _)) = engine_with_model(128) else {
        return;
    };
    vm.probe(ProbeOp::PlaceCanary).expect("place a canary");
    vm.probe(ProbeOp::DropCanary).expect("drop it");
    // Freed but not relinquished: the guest still backs it, with the canary in it.
    let kept = vm.probe(ProbeOp::CheckCanaryBlock).expect("check");
    assert!(kept.nonzero_bytes > 0, "the canary block was cleared early");
    // A budget of exactly what is in use: every free page must be given back.
    let in_use = vm.stats().expect("stats").memory_used_bytes;
    let budget = in_use.next_multiple_of(MEMORY_GRANULE);
    vm.set_budget(budget, SHRINK_DEADLINE)
        .expect("the guest shrinks in time");
    let m = vm.memory().expect("memory status");
    assert!(m.resident_bytes <= budget, "{m:?}");
    assert!(m.broker.released_bytes >= MEMORY_GRANULE, "{m:?}");
    vm.set_budget(m.max_bytes, SHRINK_DEADLINE)
        .expect("raise the budget again");
    let after = vm.probe(ProbeOp::CheckCanaryBlock).expect("check again");
    assert_eq!(
        after.block_addr, kept.block_addr,
        "the same guest-physical pages"
    );
    assert_eq!(
        after.nonzero_bytes, 0,
        "relinquished pages kept their contents"
    );
    vm.shutdown().expect("clean shutdown");
}

#[test]
fn a_lower_budget_evicts_idle_kv_caches_and_generation_continues() {
    let Some((mut vm, file)) = engine_with_model(256) else {
        return;
    };
    let (turn1, turn2) = ([1u32, 400, 401, 402, 403], [404u32, 405, 406]);
    // What the model (and the engine's message buffers) need, without any session.
    let model_only = vm.stats().expect("stats").memory_used_bytes;
    // Session 1 runs two turns with its cache evicted in between; session 2 runs the same
    // two turns undisturbed.
    vm.open_session(1, 1, 256).expect("open session 1");
    let first = run(&mut vm, &greedy(1, 1, &turn1)).expect("turn 1");
    let before = vm.memory().expect("memory status");
    // Room for the model and nothing else: every KV cache and scratch buffer goes.
    let budget = model_only.next_multiple_of(MEMORY_GRANULE);
    assert!(model_only >= file.len() as u64);
    let took = vm
        .set_budget(budget, SHRINK_DEADLINE)
        .expect("the guest fits the budget in time");
    let after = vm.memory().expect("memory status");
    assert!(after.resident_bytes <= budget, "{after:?}");
    assert!(
        after.resident_bytes < before.resident_bytes,
        "{before:?} -> {after:?}"
    );
    let stats = vm.stats().expect("stats");
    assert_eq!((stats.models_loaded, stats.sessions_open), (1, 1));
    eprintln!(
        "shrink {} -> {} MiB resident in {took:?}",
        before.resident_bytes >> 20,
        after.resident_bytes >> 20
    );
    vm.set_budget(before.max_bytes, SHRINK_DEADLINE)
        .expect("raise the budget");
    let second = run(&mut vm, &greedy(2, 1, &turn2)).expect("turn 2 after eviction");
    vm.open_session(2, 1, 256).expect("open session 2");
    assert_eq!(run(&mut vm, &greedy(3, 2, &turn1)).unwrap(), first);
    assert_eq!(
        run(&mut vm, &greedy(4, 2, &turn2)).unwrap(),
        second,
        "the rebuilt cache continues exactly like one never evicted"
    );
    vm.shutdown().expect("clean shutdown");
}

#[test]
fn the_smallest_budget_evicts_models_and_their_sessions_fail_clearly() {
    let Some((mut vm, _)) = engine_with_model(128) else {
        return;
    };
    vm.open_session(1, 1, 128).expect("open a session");
    run(&mut vm, &greedy(1, 1, &[1, 400])).expect("generate");
    assert!(matches!(
        vm.set_budget(0, SHRINK_DEADLINE),
        Err(GuestError::Memory(MemoryError::BadBudget { .. }))
    ));
    vm.set_budget(MIN_MEMORY_BUDGET, SHRINK_DEADLINE)
        .expect("the guest gives back all but its message buffers");
    let m = vm.memory().expect("memory status");
    assert!(m.resident_bytes <= MIN_MEMORY_BUDGET, "{m:?}");
    let stats = vm.stats().expect("stats");
    assert_eq!((stats.models_loaded, stats.sessions_open), (0, 0));
    match run(&mut vm, &greedy(2, 1, &[1, 400])) {
        Err(GuestError::Request { status, message }) => {
            assert_eq!(status, Status::NoSuchSession);
            assert!(message.contains("evicted"), "{message}");
        }
        other => panic!("expected NoSuchSession, got {other:?}"),
    }
    vm.set_budget(m.max_bytes, SHRINK_DEADLINE)
        .expect("raise the budget");
    let file = std::fs::read(model_path("tiny.Q8_0.gguf").unwrap()).unwrap();
    vm.load_model(1, &file, None, &mut |_| {})
        .expect("the model loads again");
    vm.shutdown().expect("clean shutdown");
}

#[test]
fn a_guest_that_ignores_a_shrink_is_stopped_and_its_memory_freed() {
    use guest_programs::hog::HOG_BYTES;
    let Some((kernel, hog)) = guest_images("hog") else {
        return;
    };
    let mut m = machine_with_64_mib_private();
    let (llm, stop) = (m.llm(), m.stop_handle());
    let private = m.private_memory().expect("a private region");
    let broker = MemoryBroker::start(llm.clone(), private.clone(), stop).expect("broker");
    let (vm, result) = std::thread::scope(|s| {
        let guest = s.spawn(|| m.boot(&kernel, &hog, 1));
        llm.wait_ready(Duration::from_secs(10))
            .expect("the hog brings virtio-llm up");
        let start = Instant::now();
        while private.resident_bytes().unwrap() < HOG_BYTES {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the hog never ate"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let result = broker.set_budget(MIN_MEMORY_BUDGET, Duration::from_millis(300));
        (guest.join().expect("VM thread"), result)
    });
    match result {
        Err(MemoryError::ShrinkIgnored {
            resident, budget, ..
        }) => {
            assert!(resident >= HOG_BYTES && budget == MIN_MEMORY_BUDGET);
        }
        other => panic!("expected the shrink to be ignored, got {other:?}"),
    }
    assert!(matches!(vm, Err(VmError::StoppedByHost)), "{vm:?}");
    assert_eq!(private.resident_bytes().unwrap(), 0, "the memory was freed");
}

#[test]
fn a_budget_change_during_a_generation_is_served_at_once() {
    let Some((mut vm, _)) = engine_with_model(256) else {
        return;
    };
    vm.open_session(1, 1, 512).expect("open session 1");
    vm.open_session(2, 1, 512).expect("open session 2");
    let prompt = [1u32, 400, 401, 402, 403];
    run(&mut vm, &greedy(1, 1, &prompt)).expect("warm session 1");
    run(&mut vm, &greedy(2, 2, &prompt)).expect("warm session 2");
    // Session 2's cache and buffers are freed but still backed: the shrink below can be met
    // by relinquishing them, with no eviction, while session 1 keeps generating.
    vm.close_session(2).expect("close session 2");
    // The budget leaves room for what the generation itself allocates: its scratch takes
    // whole 2 MiB granules, and on a pool of huge pages the host counts each one whole.
    let in_use = vm.stats().expect("stats").memory_used_bytes;
    let budget = (in_use + (8 << 20)).next_multiple_of(MEMORY_GRANULE);
    let broker = vm.memory_broker().expect("a broker");
    let (go, started) = std::sync::mpsc::channel::<()>();
    let shrunk = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shrink = {
        let shrunk = shrunk.clone();
        std::thread::spawn(move || {
            started.recv().expect("the generation started");
            let r = broker.set_budget(budget, SHRINK_DEADLINE);
            shrunk.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        })
    };
    let mut req = greedy(3, 1, &[404, 405]);
    req.sampling = SamplingParams {
        ignore_eog: true,
        ..SamplingParams::greedy(480)
    };
    let (mut tokens, mut after_shrink) = (0, 0);
    let end = vm
        .generate(
            &req,
            &mut |t, _| {
                if tokens == 0 {
                    let _ = go.send(());
                }
                tokens += t.len();
                if shrunk.load(std::sync::atomic::Ordering::SeqCst) {
                    after_shrink += t.len();
                }
            },
            &|| false,
        )
        .expect("the generation completes");
    let took = shrink
        .join()
        .expect("shrink thread")
        .expect("the shrink was served while generating");
    assert_eq!(end.generated_tokens, 480);
    assert!(
        after_shrink > 0,
        "the shrink was answered only after the generation ended"
    );
    let m = vm.memory().expect("memory status");
    assert!(m.resident_bytes <= budget, "{m:?}");
    let stats = vm.stats().expect("stats");
    assert_eq!((stats.models_loaded, stats.sessions_open), (1, 1));
    eprintln!("shrink during generation took {took:?}");
    vm.shutdown().expect("clean shutdown");
}

#[test]
fn sessions_that_do_not_fit_together_evict_each_other_and_still_agree() {
    let Some((mut vm, file)) = engine_with_model(256) else {
        return;
    };
    let base = vm.stats().expect("stats").memory_used_bytes;
    // The guest admits a session with its KV cache plus a 32 MiB scratch reserve. A budget
    // with room for that once (and less than one session's real use more) makes opening the
    // second session evict the first one's cache, and using the first again the second's.
    let gguf = inference_guest::gguf::Gguf::parse(&file).unwrap();
    let model =
        inference_guest::model::Model::from_gguf(&gguf, inference_guest::quant::Kernels::detect())
            .unwrap();
    let admit = model.cfg.kv_cache_bytes(512) as u64 + (32 << 20);
    let budget = (base + admit).next_multiple_of(MEMORY_GRANULE) + MEMORY_GRANULE;
    vm.set_budget(budget, SHRINK_DEADLINE)
        .expect("set the budget");
    let (a1, a2, b1) = ([1u32, 400, 401], [402u32, 403], [1u32, 500, 501]);
    vm.open_session(1, 1, 512).expect("open session 1");
    let first = run(&mut vm, &greedy(1, 1, &a1)).expect("session 1, turn 1");
    let one_session = vm.stats().unwrap().memory_used_bytes - base;
    assert!(one_session > MEMORY_GRANULE, "{one_session}");
    vm.open_session(2, 1, 512)
        .expect("open session 2 (evicts session 1's cache)");
    let other = run(&mut vm, &greedy(2, 2, &b1)).expect("session 2");
    let second = run(&mut vm, &greedy(3, 1, &a2)).expect("session 1, turn 2, rebuilt");
    let again = run(&mut vm, &greedy(4, 2, &a2)).expect("session 2, turn 2, rebuilt");
    assert!(vm.memory().unwrap().resident_bytes <= budget);
    // The same turns with room for everything.
    vm.set_budget(256 << 20, SHRINK_DEADLINE)
        .expect("raise the budget");
    vm.open_session(3, 1, 512).unwrap();
    vm.open_session(4, 1, 512).unwrap();
    assert_eq!(run(&mut vm, &greedy(5, 3, &a1)).unwrap(), first);
    assert_eq!(run(&mut vm, &greedy(6, 4, &b1)).unwrap(), other);
    assert_eq!(run(&mut vm, &greedy(7, 3, &a2)).unwrap(), second);
    assert_eq!(run(&mut vm, &greedy(8, 4, &a2)).unwrap(), again);
    vm.shutdown().expect("clean shutdown");
}

/// pKVM (arm64): a protected VM's pages stay pinned until it is destroyed, so the host
/// refuses a lower budget up front rather than letting the guest drop caches it could not
/// give back, and the guest goes on serving at its budget. Raising it stays possible.
#[test]
fn a_protected_vm_keeps_its_budget_and_keeps_serving() {
    let Some((mut vm, _)) = engine_with_model(128) else {
        return;
    };
    if !vm.isolation().protected_vm {
        eprintln!("SKIPPED: not a protected VM (arm64 pKVM only; make test-arm64 runs it)");
        vm.shutdown().expect("clean shutdown");
        return;
    }
    let m = vm.memory().expect("memory status");
    let lower = m.max_bytes / 2 / MEMORY_GRANULE * MEMORY_GRANULE;
    let refused = vm.set_budget(lower, SHRINK_DEADLINE);
    assert!(
        matches!(refused, Err(GuestError::Memory(MemoryError::CannotShrink))),
        "{refused:?}"
    );
    assert_eq!(
        vm.memory().expect("memory status").budget_bytes,
        m.budget_bytes
    );
    vm.open_session(1, 1, 64).expect("open a session");
    let tokens = run(&mut vm, &greedy(1, 1, &[1, 400, 401])).expect("generate");
    assert!(!tokens.is_empty(), "the guest stopped serving");
    vm.shutdown().expect("clean shutdown");
}

fn greedy(request_id: u64, session_id: u32, prompt: &[u32]) -> GenerateRequest {
    GenerateRequest {
        options: Default::default(),
        request_id,
        session_id,
        sampling: SamplingParams::greedy(12),
        prompt: Prompt::Tokens(prompt.to_vec()),
    }
}

fn run(vm: &mut GuestVm, req: &GenerateRequest) -> Result<Vec<u32>, GuestError> {
    let mut out = Vec::new();
    vm.generate(req, &mut |t, _| out.extend_from_slice(t), &|| false)?;
    Ok(out)
}
