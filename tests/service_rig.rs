//! The rig of `guest_service.rs`: the guest service on a host thread against the real device
//! over the loopback, a host `Environment`, a private pool whose use the test sets, the host's
//! side of the protocol, and the host engine to compare with.

use flexserve_e2e::loopback::{Driver, Loopback};
use flexserve_e2e::model_path;
use guest_service::memory::{MemoryUse, PrivateMemory};
use guest_service::service::{Environment, Service, Step};
use inference_guest::generate::{Generation, generate};
use inference_guest::gguf::Gguf;
use inference_guest::model::{Model, Session};
use inference_guest::parallel::SingleThread;
use inference_guest::quant::{CpuFeatures, Kernels};
use inference_guest::sampler::{Sampler, SamplerConfig};
use inference_guest::tokenizer::Tokenizer;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use virtio_llm::Status;
use virtio_llm::spec::{MAX_CHUNK_BYTES, MAX_TOKENS_PER_RESPONSE};
use virtio_llm::wire::control::{
    Ack, ControlCommand, ControlReply, LoadModelBegin, LoadModelChunk, LoadModelEnd,
    LoadSealedBegin, LoadSealedChunk, OpenSession, StatsReply, StatsRequest, msg_type,
};
use virtio_llm::wire::memory::RelinquishReport;
use virtio_llm::wire::request::{GenerateRequest, Prompt, RequestMsg, SamplingParams};
use virtio_llm::wire::response::{EndOfStream, ResponseMsg};
use vmm::devices::MmioDevice;
use vmm::devices::Timer;
use vmm::devices::virtio_llm::{LlmConfig, LlmHost, SealingRoot};

pub const T: Duration = Duration::from_secs(60);
pub const MODEL: &str = "tiny.Q8_0.gguf";
pub const BUDGET: u64 = 512 << 20;
pub const MIB: u64 = 1 << 20;

/// The private pool's accounting, set by the test: `in_use` is what the test says the
/// service holds (the host's allocator serves the service's allocations).
#[derive(Default)]
pub struct TestPool {
    pub in_use: AtomicU64,
    pub budget: AtomicU64,
    /// Every budget the service set, in order, with the counter reads before it (the service
    /// reads the counter once per generated token).
    pub budgets: Mutex<Vec<(u64, u64)>>,
    pub ticks: AtomicU64,
    /// A hostile host's clock: from near the end of its range, each read earlier than the
    /// last (the VMM emulates the clock, so the guest must survive any value).
    pub backwards_clock: AtomicBool,
    clock_reads: AtomicU64,
    /// A pool whose free memory is in pieces: the largest block it can hand out (0: any).
    pub largest_block: AtomicU64,
}

impl PrivateMemory for TestPool {
    fn usage(&self) -> MemoryUse {
        let in_use = self.in_use.load(Ordering::SeqCst);
        MemoryUse {
            in_use,
            resident: in_use,
            pending: 0,
            budget: self.budget.load(Ordering::SeqCst),
            size: 1 << 30,
        }
    }

    fn fits(&self, blocks: &[u64]) -> bool {
        let largest = self.largest_block.load(Ordering::SeqCst);
        largest == 0 || blocks.iter().all(|&b| b <= largest)
    }

    fn set_budget(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::SeqCst);
        let ticks = self.ticks.load(Ordering::SeqCst);
        self.budgets.lock().unwrap().push((bytes, ticks));
    }

    fn trim(&self, _target: u64, _out: &mut [(u64, u64)]) -> usize {
        // Nothing is resident beyond what is in use: nothing to give back.
        0
    }

    fn released(&self, _start: u64, _len: u64) {}
}

/// The guest's environment on the host: the VMM's timer for parking, `Instant` for time.
pub struct HostEnv {
    pool: Arc<TestPool>,
    timer: Arc<Timer>,
    epoch: Instant,
    console: Arc<Mutex<Vec<String>>>,
}

impl Environment for HostEnv {
    fn now_ns(&self) -> u64 {
        if self.pool.backwards_clock.load(Ordering::SeqCst) {
            return u64::MAX - self.pool.clock_reads.fetch_add(1, Ordering::SeqCst);
        }
        self.epoch.elapsed().as_nanos() as u64
    }
    fn ticks(&self) -> u64 {
        self.pool.ticks.fetch_add(1, Ordering::SeqCst);
        self.now_ns()
    }
    fn memory(&self) -> &dyn PrivateMemory {
        &*self.pool
    }
    fn park(&self) {
        // vCPU 0's wait register, as the guest parks (woken by the device's notification).
        self.timer
            .write(guest_kernel::abi::TIMER_WAIT, &5_000_000u64.to_le_bytes());
    }
    fn random(&self) -> u64 {
        0x5eed
    }
    fn count_nonzero(&self, _addr: u64, _len: u64) -> u64 {
        0
    }
    fn expose(&self, _bytes: &[u8]) -> u64 {
        0
    }
    fn log(&self, line: &str) {
        eprintln!("[service] {line}");
        self.console.lock().unwrap().push(line.to_string());
    }
    fn prefault(&self, _addr: u64, _len: u64) {}
}

/// A service thread and the host's handle on its device, plus a thread that takes every
/// relinquish report (as the VMM's memory broker does) and passes it on.
pub struct Rig {
    _loopback: Loopback,
    pub host: Arc<LlmHost>,
    pub pool: Arc<TestPool>,
    /// The service's console lines so far.
    pub console: Arc<Mutex<Vec<String>>>,
    reports: mpsc::Receiver<RelinquishReport>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Rig {
    pub fn start(limits: LlmConfig) -> Self {
        let lb = Loopback::with_config(limits);
        let host = lb.host.clone();
        let pool = Arc::new(TestPool::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut driver = lb.driver();
        pool.set_budget(driver.limits().memory_budget);
        let console = Arc::new(Mutex::new(Vec::new()));
        let env = HostEnv {
            pool: pool.clone(),
            timer: lb.timer.clone(),
            epoch: Instant::now(),
            console: console.clone(),
        };
        let service_stop = stop.clone();
        let service = std::thread::spawn(move || serve(&mut driver, &env, &service_stop));
        host.wait_ready(T).expect("driver up");
        let (tx, reports) = mpsc::channel();
        let broker = {
            let (host, stop) = (host.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(r) = host.recv_relinquish(&mut |_| {}, Duration::from_millis(50)) {
                        let _ = tx.send(r);
                    }
                }
            })
        };
        Self {
            _loopback: lb,
            host,
            pool,
            console,
            reports,
            stop,
            threads: vec![service, broker],
        }
    }

    pub fn command(&self, cmd: &ControlCommand<'_>) -> ControlReply {
        self.host.send_command(cmd, T).expect("send command");
        self.host.recv_reply(T).expect("reply")
    }

    pub fn ack(&self, cmd: &ControlCommand<'_>) -> Ack {
        match self.command(cmd) {
            ControlReply::Ack(a) => a,
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    pub fn stats(&self) -> StatsReply {
        match self.command(&ControlCommand::Stats(StatsRequest)) {
            ControlReply::Stats(s) => s,
            other => panic!("expected stats, got {other:?}"),
        }
    }

    /// Loads `file` as `model_id` in `MAX_CHUNK_BYTES` slices; the status of the end.
    pub fn load(&self, model_id: u32, file: &[u8], sha256: [u8; 32]) -> Status {
        let begin = self.ack(&ControlCommand::LoadModelBegin(LoadModelBegin {
            model_id,
            total_bytes: file.len() as u64,
        }));
        assert_eq!(begin.command, msg_type::LOAD_MODEL_BEGIN);
        if begin.status != Status::Ok {
            return begin.status;
        }
        for (i, chunk) in file.chunks(MAX_CHUNK_BYTES).enumerate() {
            let a = self.ack(&ControlCommand::LoadModelChunk(LoadModelChunk {
                model_id,
                offset: (i * MAX_CHUNK_BYTES) as u64,
                data: chunk,
            }));
            assert_eq!(
                (a.command, a.status, a.object_id),
                (msg_type::LOAD_MODEL_CHUNK, Status::Ok, model_id)
            );
        }
        let end = self.ack(&ControlCommand::LoadModelEnd(LoadModelEnd {
            model_id,
            sha256,
        }));
        assert_eq!(end.command, msg_type::LOAD_MODEL_END);
        end.status
    }

    /// Sends a sealed load as the host would (`GuestVm::load_sealed`), one chunk at a time:
    /// the header, `chunks` as given (index, ciphertext||tag), then `LoadModelEnd`. The
    /// first refusal's status, or the end's.
    pub fn load_sealed(&self, model_id: u32, header: &[u8], chunks: &[(u64, Vec<u8>)]) -> Status {
        self.load_sealed_with(model_id, header, chunks, 0, &[])
    }

    /// [`Rig::load_sealed`] with `LoadSealedBegin`'s `flags` and accepted owners.
    pub fn load_sealed_with(
        &self,
        model_id: u32,
        header: &[u8],
        chunks: &[(u64, Vec<u8>)],
        flags: u32,
        accepted_owners: &[[u8; 32]],
    ) -> Status {
        let begin = self.ack(&ControlCommand::LoadSealedBegin(LoadSealedBegin {
            model_id,
            flags,
            accepted_owners,
            header,
        }));
        assert_eq!(begin.command, msg_type::LOAD_SEALED_BEGIN);
        if begin.status != Status::Ok {
            return begin.status;
        }
        for (index, data) in chunks {
            let a = self.ack(&ControlCommand::LoadSealedChunk(LoadSealedChunk {
                model_id,
                index: *index,
                data,
            }));
            assert_eq!(
                (a.command, a.object_id),
                (msg_type::LOAD_SEALED_CHUNK, model_id)
            );
            if a.status != Status::Ok {
                return a.status;
            }
        }
        let end = self.ack(&ControlCommand::LoadModelEnd(LoadModelEnd {
            model_id,
            sha256: [0; 32],
        }));
        assert_eq!(end.command, msg_type::LOAD_MODEL_END);
        end.status
    }

    /// The service's last console line.
    pub fn last_line(&self) -> String {
        self.console
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    pub fn open(&self, session_id: u32, model_id: u32, context_len: u32) -> Status {
        let a = self.ack(&ControlCommand::OpenSession(OpenSession {
            session_id,
            model_id,
            context_len,
        }));
        assert_eq!(
            (a.command, a.object_id),
            (msg_type::OPEN_SESSION, session_id)
        );
        a.status
    }

    pub fn request(&self, req: &RequestMsg) {
        self.host.send_request(req, T).expect("send request");
    }

    /// Every response of request `id` up to its end: the tokens (each slice checked) and the
    /// end of stream, or the error's status.
    pub fn collect(&self, id: u64) -> Result<(Vec<u32>, EndOfStream), Status> {
        self.collect_from(id, Vec::new())
    }

    /// [`collect`](Self::collect) after the first `tokens` of the stream were taken.
    pub fn collect_from(
        &self,
        id: u64,
        mut tokens: Vec<u32>,
    ) -> Result<(Vec<u32>, EndOfStream), Status> {
        loop {
            match self.host.recv_response(T).expect("response") {
                ResponseMsg::Tokens(t) => {
                    assert_eq!(t.request_id, id, "a response of another request");
                    assert!((1..=MAX_TOKENS_PER_RESPONSE).contains(&t.token_ids.len()));
                    tokens.extend_from_slice(&t.token_ids);
                }
                ResponseMsg::EndOfStream(e) => {
                    assert_eq!(e.request_id, id);
                    assert_eq!(e.generated_tokens as usize, tokens.len());
                    return Ok((tokens, e));
                }
                ResponseMsg::Error(e) => {
                    assert_eq!(e.request_id, id);
                    assert!(tokens.is_empty(), "an error after tokens: {e:?}");
                    assert!(!e.message.is_empty());
                    return Err(e.status);
                }
                other => panic!("unexpected response {other:?}"),
            }
        }
    }

    /// The first slice of tokens of request `id`.
    pub fn first_slice(&self, id: u64) -> Vec<u32> {
        match self.host.recv_response(T).expect("response") {
            ResponseMsg::Tokens(t) if t.request_id == id => t.token_ids,
            other => panic!("expected tokens of request {id}, got {other:?}"),
        }
    }

    /// The next relinquish report that answers budget change `sequence`.
    pub fn report_for(&self, sequence: u64) -> RelinquishReport {
        loop {
            let r = self.reports.recv_timeout(T).expect("a relinquish report");
            if r.sequence == sequence {
                return r;
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // After a failure the service may be stuck mid-request (waiting for the host to take
        // tokens): leave its threads to the end of the process rather than hang the run.
        if std::thread::panicking() {
            return;
        }
        for t in self.threads.drain(..) {
            t.join().expect("service thread");
        }
    }
}

/// The service loop of the engine's `main.rs`, on the host: step, and park when idle.
pub fn serve(driver: &mut Driver, env: &HostEnv, stop: &AtomicBool) {
    let cpu = CpuFeatures::detect();
    let kernels = Kernels::detect();
    let limits = driver.limits();
    let mut service = Service::new(
        kernels,
        cpu,
        limits.max_models,
        limits.max_sessions,
        driver.features(),
    );
    let mut idle = 0u32;
    while !stop.load(Ordering::SeqCst) {
        match service
            .step(driver, &SingleThread, env)
            .expect("service step")
        {
            Step::Worked => idle = 0,
            Step::Idle if idle > 200 => {
                if !driver.arm().expect("arm") {
                    env.park();
                }
                idle = 0;
            }
            Step::Idle => idle += 1,
        }
    }
}

pub fn limits() -> LlmConfig {
    LlmConfig {
        max_models: 2,
        max_sessions: 3,
        memory_budget: BUDGET,
        key_root: Some(SEALING_ROOT),
        // One request at a time, as these tests expect (`service_batch.rs` runs batches).
        batch: false,
        ..LlmConfig::default()
    }
}

/// The development key root and image measurement the rig's device hands the service.
pub const SEALING_ROOT: SealingRoot = SealingRoot {
    root: [7; 32],
    measurement: [9; 32],
};

/// A sealed model cut for sending: the header (with its signature) and every chunk as
/// (index, ciphertext||tag).
pub struct SealedParts {
    pub header: Vec<u8>,
    pub chunks: Vec<(u64, Vec<u8>)>,
}

/// The seed of the owner key `seal_model` signs with.
pub const OWNER_SEED: [u8; 32] = [1; 32];

/// The public key of the owner whose `seed` signs with [`seal_model_by`].
pub fn owner_public(seed: [u8; 32]) -> [u8; 32] {
    sealed_model::OwnerKey::from_seed(&seed).public().0
}

/// `file` re-laid as `flexserve-model seal` does, sealed to the guest whose image has
/// `measurement` under the rig's root, in chunks of `chunk_bytes`, signed by [`OWNER_SEED`].
pub fn seal_model(file: &[u8], measurement: [u8; 32], chunk_bytes: u32) -> SealedParts {
    seal_model_by(file, measurement, chunk_bytes, OWNER_SEED)
}

/// As [`seal_model`], signed by the owner whose key has seed `owner_seed`.
pub fn seal_model_by(
    file: &[u8],
    measurement: [u8; 32],
    chunk_bytes: u32,
    owner_seed: [u8; 32],
) -> SealedParts {
    use sealed_model::{Header, OsRng, OwnerKey, SealRequest, TryRngCore, derive_guest_key};
    let gguf = Gguf::parse(file).expect("the model parses");
    let relaid = model_tools::relayout::relayout(&gguf).expect("re-lay");
    let guest = derive_guest_key(&SEALING_ROOT.root, &measurement).public();
    let request = SealRequest {
        plaintext: &relaid.bytes,
        layers: &relaid.layers,
        chunk_bytes,
        context_len: 512,
        kv_bytes_per_token: 0,
        recipients: &[guest],
    };
    let owner = OwnerKey::from_seed(&owner_seed);
    let fsm = sealed_model::seal(&request, &owner, &mut OsRng.unwrap_err()).expect("seal");
    let (header, header_bytes, body) = Header::split_file(&fsm).expect("split");
    let chunks = header
        .chunk_plan()
        .map(|c| {
            let r = c.sealed();
            (c.index, body[r.start as usize..r.end as usize].to_vec())
        })
        .collect();
    SealedParts {
        header: header_bytes.to_vec(),
        chunks,
    }
}

/// The tiny model's file and its SHA-256; `None` (after saying why) without `make setup`.
pub fn model() -> Option<(Vec<u8>, [u8; 32])> {
    let file = std::fs::read(model_path(MODEL)?).expect("read the model");
    let sha = sha256(&file);
    Some((file, sha))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).into()
}

/// The host engine on the same file.
pub struct HostEngine {
    pub file: Vec<u8>,
}

impl HostEngine {
    pub fn with<R>(&self, f: impl FnOnce(&Model, &Tokenizer) -> R) -> R {
        let gguf = Gguf::parse(&self.file).unwrap();
        let model = Model::from_gguf(&gguf, Kernels::detect()).unwrap();
        let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
        f(&model, &tokenizer)
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.with(|_, t| t.encode(text, true, true))
    }

    /// Greedy tokens for `prompt` on `session` (a new one of `ctx` positions if `None`).
    pub fn greedy_on(
        model: &Model,
        tokenizer: &Tokenizer,
        session: &mut Session,
        prompt: &[u32],
        max_tokens: u32,
        stop_at_eog: bool,
    ) -> Vec<u32> {
        let mut out = Vec::new();
        let mut sampler = Sampler::new(SamplerConfig::greedy(), model.cfg.n_vocab);
        generate(
            model,
            session,
            &mut sampler,
            &SingleThread,
            &Generation {
                prompt,
                max_tokens: max_tokens as usize,
                stop_at_eog,
            },
            &|t| tokenizer.is_end_of_generation(t),
            &mut |t| {
                out.push(t);
                true
            },
        )
        .unwrap();
        out
    }

    pub fn greedy(&self, prompt: &[u32], ctx: u32, max_tokens: u32, stop_at_eog: bool) -> Vec<u32> {
        self.with(|model, tok| {
            let mut session = model.new_session(ctx as usize);
            Self::greedy_on(model, tok, &mut session, prompt, max_tokens, stop_at_eog)
        })
    }
}

pub fn greedy_request(id: u64, session_id: u32, prompt: Prompt, max_tokens: u32) -> RequestMsg {
    RequestMsg::Generate(GenerateRequest {
        options: Default::default(),
        request_id: id,
        session_id,
        sampling: SamplingParams::greedy(max_tokens),
        prompt,
    })
}

pub fn endless_request(id: u64, session_id: u32, prompt: Vec<u32>, max_tokens: u32) -> RequestMsg {
    let mut sampling = SamplingParams::greedy(max_tokens);
    sampling.ignore_eog = true;
    RequestMsg::Generate(GenerateRequest {
        options: Default::default(),
        request_id: id,
        session_id,
        sampling,
        prompt: Prompt::Tokens(prompt),
    })
}
