//! No plaintext of a sealed model outside the guest (`make image`, SmolLM2-135M Q8_0).
//!
//! 64-byte runs of the re-laid plaintext's tensor data, a few from every layer, are looked
//! for while a real guest unseals the model and after: in the shared window (at every
//! isolation level), and in every readable mapping of this process, the VMM, where only the
//! private pool may hold them, and only at isolation `none`, whose pool is host memory by
//! design. The runs are picked and the model sealed in a child process, so this one never
//! holds the plaintext beyond the runs themselves. A plaintext load of the same model is the
//! control: the same scans find its runs in the shared window, and in the pool at `none`.

#[path = "sealing.rs"]
mod sealing;

use flexserve_e2e::memscan::{RUN, Runs, readable_guest_bytes, scan_guest, scan_process};
use flexserve_e2e::{model_path, protected_images};
use inference_guest::gguf::Gguf;
use sealed_model::MAX_CHUNK_BYTES;
use sealing::{ROOT, seal, sealing_guest};
use std::collections::BTreeSet;
use std::io::Read;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use virtio_llm::spec::layout::{SHARED_WINDOW_BASE, SHARED_WINDOW_SIZE};
use vm_memory::GuestMemoryMmap;
use vmm::guest_vm::{GuestError, GuestVm};
use vmm::hypervisor::IsolationLevel;

const MODEL: &str = "SmolLM2-135M-Instruct.Q8_0.gguf";
/// Names the directory the child writes `model.fsm` and `runs.bin` to.
const CHILD_ENV: &str = "FLEXSERVE_SEAL_CHILD_DIR";
/// Runs taken from each layer's tensor data.
const RUNS_PER_LAYER: usize = 2;
/// A run with fewer distinct bytes could occur by chance (zeros, padding, repeats).
const MIN_DISTINCT: usize = 16;

/// The child process's half of the test below: re-lays the model, picks the runs and seals
/// it, then writes both for the parent. Run only by the parent, with `CHILD_ENV` set.
#[test]
#[ignore = "the child process of no_plaintext_of_a_sealed_model_leaves_the_guest"]
fn seal_in_a_child_process() {
    let dir = PathBuf::from(std::env::var_os(CHILD_ENV).expect(
        "FLEXSERVE_SEAL_CHILD_DIR unset: this is run by \
         no_plaintext_of_a_sealed_model_leaves_the_guest, in a child process",
    ));
    let images = protected_images().expect("the parent found the images");
    let file = std::fs::read(model_path(MODEL).expect("the parent found the model"))
        .expect("read the model");
    let relaid = model_tools::relayout::relayout(&Gguf::parse(&file).expect("the model parses"))
        .expect("re-lay the model");
    let runs = pick_runs(&relaid.bytes, &relaid.layers);
    // `seal` re-lays the model again, to the same bytes.
    let fsm = seal(&file, &ROOT, &images.measurement(), MAX_CHUNK_BYTES);
    std::fs::write(dir.join("model.fsm"), fsm).expect("write the sealed model");
    std::fs::write(dir.join("runs.bin"), runs).expect("write the runs");
}

/// `RUNS_PER_LAYER` runs of tensor data from each layer of the re-laid `bytes`, spread
/// through the layer: the first run of at least `MIN_DISTINCT` distinct bytes at or after
/// each point, stepping a run at a time.
fn pick_runs(bytes: &[u8], layers: &[Range<u64>]) -> Vec<u8> {
    let gguf = Gguf::parse(bytes).expect("the re-laid model parses");
    let base = gguf.data_offset();
    let tensors: Vec<Range<usize>> = gguf
        .tensors()
        .iter()
        .map(|t| base + t.offset as usize..base + t.offset as usize + t.data.len())
        .collect();
    let mut runs = Vec::new();
    for (l, layer) in layers.iter().enumerate() {
        let layer = layer.start as usize..layer.end as usize;
        // Every run-aligned offset of the layer's tensor data (layer 0 also holds the
        // header and metadata).
        let starts: Vec<usize> = tensors
            .iter()
            .filter(|t| layer.contains(&t.start))
            .flat_map(|t| (t.start..t.end.saturating_sub(RUN - 1)).step_by(RUN))
            .collect();
        for i in 1..=RUNS_PER_LAYER {
            let from = starts.len() * i / (RUNS_PER_LAYER + 1);
            let at = starts[from..]
                .iter()
                .find(|&&s| distinct(&bytes[s..s + RUN]) >= MIN_DISTINCT)
                .unwrap_or_else(|| panic!("layer {l} has no run of distinct bytes"));
            runs.extend_from_slice(&bytes[*at..*at + RUN]);
        }
    }
    runs
}

fn distinct(run: &[u8]) -> usize {
    let mut seen = [false; 256];
    run.iter().for_each(|&b| seen[b as usize] = true);
    seen.iter().filter(|&&s| s).count()
}

/// Runs the child: the sealed model and the runs (read into one buffer, the only copy).
fn seal_in_a_child() -> (Vec<u8>, Runs) {
    let dir = std::env::temp_dir().join(format!("flexserve-sealed-scan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("make the child's directory");
    let status = std::process::Command::new(std::env::current_exe().expect("this test's path"))
        .args(["--exact", "seal_in_a_child_process", "--ignored"])
        .args(["--test-threads=1", "--quiet"])
        .env(CHILD_ENV, &dir)
        .status()
        .expect("run the child");
    assert!(status.success(), "the child failed: {status}");
    let fsm = std::fs::read(dir.join("model.fsm")).expect("read the sealed model");
    let mut f = std::fs::File::open(dir.join("runs.bin")).expect("open the runs");
    let len = f.metadata().expect("the runs' size").len() as usize;
    let mut bytes = vec![0u8; len];
    f.read_exact(&mut bytes).expect("read the runs");
    std::fs::remove_dir_all(&dir).expect("remove the child's directory");
    (fsm, Runs::new(bytes))
}

/// What the scans during and after one load found.
#[derive(Default)]
struct Seen {
    /// Runs found in the shared window.
    window: BTreeSet<usize>,
    window_scans: u32,
    /// Runs found in this process: in the runs' own buffer, in the private pool, and
    /// anywhere else (with the host address).
    in_storage: BTreeSet<usize>,
    in_pool: BTreeSet<usize>,
    outside_pool: Vec<(usize, u64)>,
    process_scans: u32,
    /// The fewest bytes a process scan read.
    least_scanned: u64,
    slowest_window: Duration,
    slowest_process: Duration,
}

/// Scans for `runs` around one guest's load.
struct Scanner<'a> {
    runs: &'a Runs,
    mem: GuestMemoryMmap,
    pool: Range<u64>,
    seen: Seen,
}

impl Scanner<'_> {
    fn window(&mut self) {
        let (t, runs, seen) = (Instant::now(), self.runs, &mut self.seen);
        scan_guest(
            &self.mem,
            SHARED_WINDOW_BASE,
            SHARED_WINDOW_SIZE,
            RUN - 1,
            &mut |_, piece| {
                runs.find(piece, &mut |r, _| {
                    seen.window.insert(r);
                })
            },
        );
        seen.window_scans += 1;
        seen.slowest_window = seen.slowest_window.max(t.elapsed());
    }

    fn process(&mut self) {
        let (t, runs, seen) = (Instant::now(), self.runs, &mut self.seen);
        let (own, pool) = (runs.storage(), &self.pool);
        let scanned = scan_process(RUN - 1, &mut |at, piece| {
            runs.find(piece, &mut |r, p| {
                let addr = at + p as u64;
                if own.contains(&addr) {
                    seen.in_storage.insert(r);
                } else if pool.contains(&addr) {
                    seen.in_pool.insert(r);
                } else {
                    seen.outside_pool.push((r, addr));
                }
            })
        });
        seen.least_scanned = match seen.process_scans {
            0 => scanned,
            _ => seen.least_scanned.min(scanned),
        };
        seen.process_scans += 1;
        seen.slowest_process = seen.slowest_process.max(t.elapsed());
    }
}

/// Runs `load` (of `total` bytes, as its progress counts them), scanning the shared window
/// at every progress report and this process once past half of it, then both after it.
fn load_and_scan(
    vm: &mut GuestVm,
    runs: &Runs,
    total: u64,
    load: impl FnOnce(&mut GuestVm, &mut dyn FnMut(u64)) -> Result<(), GuestError>,
) -> Seen {
    let mut s = Scanner {
        runs,
        mem: vm.memory_for_tests(),
        pool: vm.private_range_for_tests().expect("a private pool"),
        seen: Seen::default(),
    };
    // pKVM: reading a page donated to the guest breaks the guest; scan it only afterwards.
    let mut halfway = vm.isolation().protected_vm;
    load(vm, &mut |done| {
        s.window();
        if !halfway && done * 2 >= total {
            halfway = true;
            s.process();
        }
    })
    .expect("the model loads");
    s.window();
    s.process();
    let readable = readable_guest_bytes(&s.mem);
    assert!(
        s.seen.least_scanned >= readable,
        "a process scan read {} bytes, less than the {readable} of readable guest memory",
        s.seen.least_scanned
    );
    let seen = s.seen;
    eprintln!(
        "{} window scans (slowest {:?}): {} of {} runs; {} process scans (at least {} MiB, \
         slowest {:?}): {} runs in the pool, {} hits outside it",
        seen.window_scans,
        seen.slowest_window,
        seen.window.len(),
        runs.len(),
        seen.process_scans,
        seen.least_scanned >> 20,
        seen.slowest_process,
        seen.in_pool.len(),
        seen.outside_pool.len()
    );
    seen
}

/// See the module documentation.
#[test]
fn no_plaintext_of_a_sealed_model_leaves_the_guest() {
    let (Some(images), Some(path)) = (protected_images(), model_path(MODEL)) else {
        return;
    };
    let (fsm, runs) = seal_in_a_child();
    assert!(runs.len() >= 32, "only {} runs", runs.len());
    let mut vm = sealing_guest(&images, fsm.len());
    let level = vm.isolation().level();
    let body = sealed_model::Header::split_file(&fsm)
        .expect("a sealed file")
        .2
        .len();
    let seen = load_and_scan(&mut vm, &runs, body as u64, |vm, progress| {
        vm.load_sealed(1, &fsm, progress).map(|_| ())
    });
    assert!(seen.window_scans >= 4, "{} window scans", seen.window_scans);
    assert!(
        seen.window.is_empty(),
        "runs {:?} of the plaintext are in the shared window",
        seen.window
    );
    assert!(
        seen.outside_pool.is_empty(),
        "plaintext outside the private pool (run, host address): {:x?}",
        seen.outside_pool
    );
    // The process scans see this process's heap: they found the runs' own copies.
    assert_eq!(seen.in_storage.len(), runs.len());
    if flexserve_e2e::private_memory_or_skip(
        "no_plaintext_of_a_sealed_model_leaves_the_guest (the pool)",
        vm.isolation(),
    ) {
        assert!(
            seen.in_pool.is_empty(),
            "the host read runs {:?} in the private pool",
            seen.in_pool
        );
    } else {
        // `none`: the pool is host memory; the guest unsealed every run into it.
        assert_eq!(seen.in_pool.len(), runs.len(), "runs in the pool");
    }
    shut_down(vm);
    drop(fsm);

    // The control: a plaintext load of the same model, scanned alike.
    let file = std::fs::read(path).expect("read the model");
    let mut vm = sealing_guest(&images, file.len());
    let seen = load_and_scan(&mut vm, &runs, file.len() as u64, |vm, progress| {
        vm.load_model(1, &file, None, progress).map(|_| ())
    });
    assert!(
        !seen.window.is_empty(),
        "the window scans found no run of a plaintext load: they cannot see what they look for"
    );
    if level == IsolationLevel::None {
        assert_eq!(seen.in_pool.len(), runs.len(), "plaintext runs in the pool");
    }
    shut_down(vm);
}

/// Stops `vm`; on pKVM the scans' reads may have broken the guest, which is not this
/// test's subject.
fn shut_down(vm: GuestVm) {
    if vm.isolation().protected_vm {
        let _ = vm.shutdown();
    } else {
        vm.shutdown().expect("clean shutdown");
    }
}
