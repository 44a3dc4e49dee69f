//! The guest's inference service (`guest-service`, the very code of the engine image) on the
//! host, against the real VMM device in one process over the loopback transport
//! (`loopback.rs`): load, sessions, generation, cancel, token slices, budget changes in the
//! middle of a generation, eviction, and every refusal with its documented status. The host
//! side talks through `LlmHost`, as `ProtectedVm` does; greedy output is compared with the
//! host engine's.

use flexserve_e2e::loopback::{Driver, Loopback};
use flexserve_e2e::model_path;
use guest_service::memory::{MemoryUse, PrivateMemory};
use guest_service::service::{Environment, Service, Step};
use inference_guest::generate::{GenerateRequest as HostRequest, generate};
use inference_guest::gguf::Gguf;
use inference_guest::model::{Logits, Model, Session};
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
    Ack, CloseSession, ControlCommand, ControlReply, LoadModelBegin, LoadModelChunk, LoadModelEnd,
    OpenSession, StatsReply, StatsRequest, UnloadModel, msg_type,
};
use virtio_llm::wire::memory::{BudgetChange, RelinquishReport};
use virtio_llm::wire::probe::{MemoryProbe, ProbeOp};
use virtio_llm::wire::request::{
    CancelRequest, GenerateRequest, Prompt, RequestMsg, SamplingParams,
};
use virtio_llm::wire::response::{EndOfStream, ResponseMsg, StopReason};
use vmm::devices::MmioDevice;
use vmm::devices::Timer;
use vmm::devices::virtio_llm::{LlmConfig, LlmHost};

const T: Duration = Duration::from_secs(60);
const MODEL: &str = "tiny.Q8_0.gguf";
const BUDGET: u64 = 512 << 20;
const MIB: u64 = 1 << 20;

/// The private pool's accounting, set by the test: `in_use` is what the test says the
/// service holds (the host's allocator serves the service's allocations).
#[derive(Default)]
struct TestPool {
    in_use: AtomicU64,
    budget: AtomicU64,
    /// Every budget the service set, in order, with the counter reads before it (the service
    /// reads the counter once per generated token).
    budgets: Mutex<Vec<(u64, u64)>>,
    ticks: AtomicU64,
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
struct HostEnv {
    pool: Arc<TestPool>,
    timer: Arc<Timer>,
    epoch: Instant,
}

impl Environment for HostEnv {
    fn now_ns(&self) -> u64 {
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
    }
    fn prefault(&self, _addr: u64, _len: u64) {}
}

/// A service thread and the host's handle on its device, plus a thread that takes every
/// relinquish report (as the VMM's memory broker does) and passes it on.
struct Rig {
    _loopback: Loopback,
    host: Arc<LlmHost>,
    pool: Arc<TestPool>,
    reports: mpsc::Receiver<RelinquishReport>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Rig {
    fn start(limits: LlmConfig) -> Self {
        let lb = Loopback::with_config(limits);
        let host = lb.host.clone();
        let pool = Arc::new(TestPool::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut driver = lb.driver();
        pool.set_budget(driver.limits().memory_budget);
        let env = HostEnv {
            pool: pool.clone(),
            timer: lb.timer.clone(),
            epoch: Instant::now(),
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
            reports,
            stop,
            threads: vec![service, broker],
        }
    }

    fn command(&self, cmd: &ControlCommand<'_>) -> ControlReply {
        self.host.send_command(cmd, T).expect("send command");
        self.host.recv_reply(T).expect("reply")
    }

    fn ack(&self, cmd: &ControlCommand<'_>) -> Ack {
        match self.command(cmd) {
            ControlReply::Ack(a) => a,
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    fn stats(&self) -> StatsReply {
        match self.command(&ControlCommand::Stats(StatsRequest)) {
            ControlReply::Stats(s) => s,
            other => panic!("expected stats, got {other:?}"),
        }
    }

    /// Loads `file` as `model_id` in `MAX_CHUNK_BYTES` slices; the status of the end.
    fn load(&self, model_id: u32, file: &[u8], sha256: [u8; 32]) -> Status {
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

    fn open(&self, session_id: u32, model_id: u32, context_len: u32) -> Status {
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

    fn request(&self, req: &RequestMsg) {
        self.host.send_request(req, T).expect("send request");
    }

    /// Every response of request `id` up to its end: the tokens (each slice checked) and the
    /// end of stream, or the error's status.
    fn collect(&self, id: u64) -> Result<(Vec<u32>, EndOfStream), Status> {
        self.collect_from(id, Vec::new())
    }

    /// [`collect`](Self::collect) after the first `tokens` of the stream were taken.
    fn collect_from(
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
    fn first_slice(&self, id: u64) -> Vec<u32> {
        match self.host.recv_response(T).expect("response") {
            ResponseMsg::Tokens(t) if t.request_id == id => t.token_ids,
            other => panic!("expected tokens of request {id}, got {other:?}"),
        }
    }

    /// The next relinquish report that answers budget change `sequence`.
    fn report_for(&self, sequence: u64) -> RelinquishReport {
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
        for t in self.threads.drain(..) {
            let r = t.join();
            if !std::thread::panicking() {
                r.expect("service thread");
            }
        }
    }
}

/// The service loop of the engine's `main.rs`, on the host: step, and park when idle.
fn serve(driver: &mut Driver, env: &HostEnv, stop: &AtomicBool) {
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

fn limits() -> LlmConfig {
    LlmConfig {
        max_models: 2,
        max_sessions: 3,
        memory_budget: BUDGET,
        ..LlmConfig::default()
    }
}

/// The tiny model's file and its SHA-256; `None` (after saying why) without `make setup`.
fn model() -> Option<(Vec<u8>, [u8; 32])> {
    let file = std::fs::read(model_path(MODEL)?).expect("read the model");
    let sha = sha256(&file);
    Some((file, sha))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).into()
}

/// The host engine on the same file.
struct HostEngine {
    file: Vec<u8>,
}

impl HostEngine {
    fn with<R>(&self, f: impl FnOnce(&Model, &Tokenizer) -> R) -> R {
        let gguf = Gguf::parse(&self.file).unwrap();
        let model = Model::from_gguf(&gguf, Kernels::detect()).unwrap();
        let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
        f(&model, &tokenizer)
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        self.with(|_, t| t.encode(text, true, true))
    }

    /// Greedy tokens for `prompt` on `session` (a new one of `ctx` positions if `None`).
    fn greedy_on(
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
            &HostRequest {
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

    fn greedy(&self, prompt: &[u32], ctx: u32, max_tokens: u32, stop_at_eog: bool) -> Vec<u32> {
        self.with(|model, tok| {
            let mut session = model.new_session(ctx as usize);
            Self::greedy_on(model, tok, &mut session, prompt, max_tokens, stop_at_eog)
        })
    }
}

fn greedy_request(id: u64, session_id: u32, prompt: Prompt, max_tokens: u32) -> RequestMsg {
    RequestMsg::Generate(GenerateRequest {
        request_id: id,
        session_id,
        sampling: SamplingParams::greedy(max_tokens),
        prompt,
    })
}

fn endless_request(id: u64, session_id: u32, prompt: Vec<u32>, max_tokens: u32) -> RequestMsg {
    let mut sampling = SamplingParams::greedy(max_tokens);
    sampling.ignore_eog = true;
    RequestMsg::Generate(GenerateRequest {
        request_id: id,
        session_id,
        sampling,
        prompt: Prompt::Tokens(prompt),
    })
}

#[test]
fn greedy_output_equals_the_host_engine_in_bounded_slices() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(10, 1, 256), Status::Ok);
    assert_eq!(rig.open(11, 1, 256), Status::Ok);

    // A text prompt (the service tokenizes) and a token prompt, each on its own session.
    let text = "The capital of France is";
    let ids = engine.encode(text);
    let want = engine.greedy(&ids, 256, 48, true);
    rig.request(&greedy_request(1, 10, Prompt::Text(text.into()), 48));
    let (got, end) = rig.collect(1).expect("generation");
    assert_eq!(
        got, want,
        "text prompt: guest service and host engine differ"
    );
    assert_eq!(end.prompt_tokens as usize, ids.len());
    let reason = if want.len() == 48 {
        StopReason::MaxTokens
    } else {
        StopReason::EndOfGeneration
    };
    assert_eq!(end.reason, reason);

    let ids2 = engine.encode("def fibonacci(n):");
    let want2 = engine.greedy(&ids2, 256, 200, false);
    rig.request(&endless_request(2, 11, ids2.clone(), 200));
    let (got2, end2) = rig.collect(2).expect("generation");
    assert_eq!(
        got2, want2,
        "token prompt: guest service and host engine differ"
    );
    assert_eq!(end2.reason, StopReason::MaxTokens);

    let s = rig.stats();
    assert_eq!((s.models_loaded, s.sessions_open), (1, 2));
    assert_eq!(s.requests_completed, 2);
    assert_eq!(s.tokens_generated, (want.len() + want2.len()) as u64);
    assert_eq!(s.engine_kernels, Kernels::detect().isa().code());
    assert_eq!(s.memory_budget_bytes, BUDGET);
}

#[test]
fn a_cancel_ends_its_request_and_a_request_queued_behind_it_runs_next() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 4096), Status::Ok);
    assert_eq!(rig.open(2, 1, 256), Status::Ok);
    let prompt = engine.encode("Once upon a time");

    // Request 7 would take thousands of tokens; request 8 arrives while it runs, then a
    // cancel for an unknown request (ignored), then the cancel for 7.
    rig.request(&endless_request(7, 1, prompt.clone(), 4000));
    let first = rig.first_slice(7);
    rig.request(&endless_request(8, 2, prompt.clone(), 16));
    rig.request(&RequestMsg::Cancel(CancelRequest { request_id: 99 }));
    rig.request(&RequestMsg::Cancel(CancelRequest { request_id: 7 }));
    let (got, end) = rig.collect_from(7, first).expect("cancelled, not refused");
    assert_eq!(end.reason, StopReason::Cancelled);
    assert!(
        end.generated_tokens < 4000,
        "{} tokens: the cancel did not stop it",
        end.generated_tokens
    );

    let (tokens, end8) = rig
        .collect(8)
        .expect("the queued request runs after the cancel");
    assert_eq!(end8.reason, StopReason::MaxTokens);
    assert_eq!(tokens, engine.greedy(&prompt, 256, 16, false));
    // What request 7 streamed before the cancel is the greedy output so far.
    assert_eq!(got, engine.greedy(&prompt, 4096, got.len() as u32, false));
    // A cancelled request still counts as completed.
    assert_eq!(rig.stats().requests_completed, 2);
}

#[test]
fn a_budget_change_mid_generation_is_answered_while_the_generation_goes_on() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 512), Status::Ok);
    let prompt = engine.encode("Write a haiku about the sea.");
    let want = engine.greedy(&prompt, 512, 450, false);

    rig.request(&endless_request(5, 1, prompt, 450));
    let first = rig.first_slice(5);
    let shrunk = BUDGET - 128 * MIB;
    rig.host
        .send_budget(
            &BudgetChange {
                sequence: 1,
                new_budget_bytes: shrunk,
            },
            T,
        )
        .expect("budget change");
    let report = rig.report_for(1);
    assert!(report.ranges.is_empty(), "nothing was resident beyond use");
    assert_eq!(rig.pool.budget.load(Ordering::SeqCst), shrunk);
    let (got, end) = rig.collect_from(5, first).expect("the generation goes on");
    assert_eq!(end.reason, StopReason::MaxTokens);
    assert_eq!(got, want, "the budget change disturbed the generation");
    assert_eq!(rig.stats().memory_budget_bytes, shrunk);
    // Applied between two tokens, not after the request: tokens were generated after it.
    let budgets = rig.pool.budgets.lock().unwrap().clone();
    let at = budgets
        .iter()
        .find(|b| b.0 == shrunk)
        .expect("the new budget")
        .1;
    let last = rig.pool.ticks.load(Ordering::SeqCst);
    assert!(
        at + 10 < last,
        "the budget was applied at counter read {at} of {last}: not mid-generation"
    );
}

#[test]
fn a_shrink_below_what_is_in_use_evicts_models_and_closes_their_sessions() {
    let Some((file, sha)) = model() else { return };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 256), Status::Ok);
    rig.request(&greedy_request(1, 1, Prompt::Text("Hello".into()), 4));
    rig.collect(1).expect("generation");
    assert_eq!(rig.stats().models_loaded, 1);

    // More in use than the new budget, and nothing the service frees lowers it: it evicts
    // everything it holds (caches, tokenizers, models) and still answers the change.
    rig.pool.in_use.store(300 * MIB, Ordering::SeqCst);
    rig.host
        .send_budget(
            &BudgetChange {
                sequence: 9,
                new_budget_bytes: 256 * MIB,
            },
            T,
        )
        .expect("budget change");
    rig.report_for(9);
    let s = rig.stats();
    assert_eq!((s.models_loaded, s.sessions_open), (0, 0));
    rig.request(&greedy_request(2, 1, Prompt::Text("Hello".into()), 4));
    assert_eq!(rig.collect(2).err(), Some(Status::NoSuchSession));
}

#[test]
fn an_evicted_session_rebuilds_its_cache_from_its_history() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 512), Status::Ok);
    let p1 = engine.encode("The capital of France is");
    rig.request(&endless_request(1, 1, p1.clone(), 20));
    let (t1, _) = rig.collect(1).expect("generation");

    // Short of memory, opening session 2 evicts session 1's KV cache and still fails.
    rig.pool.in_use.store(BUDGET - 20 * MIB, Ordering::SeqCst);
    assert_eq!(rig.open(2, 1, 512), Status::OutOfMemory);
    rig.pool.in_use.store(0, Ordering::SeqCst);

    // Session 1's next request rebuilds the cache from the prompt and the generated tokens
    // that were fed back (all but the last), then goes on.
    let p2 = engine.encode(" and the capital of Italy is");
    rig.request(&endless_request(2, 1, p2.clone(), 20));
    let (t2, _) = rig.collect(2).expect("generation after eviction");
    let want = engine.with(|model, tok| {
        let mut session = model.new_session(512);
        let history: Vec<u32> = p1.iter().chain(&t1[..t1.len() - 1]).copied().collect();
        session
            .eval(model, &history, Logits::Last, &SingleThread)
            .unwrap();
        HostEngine::greedy_on(model, tok, &mut session, &p2, 20, false)
    });
    assert_eq!(
        t2, want,
        "the rebuilt cache differs from the evaluated history"
    );
}

#[test]
fn every_refusal_gets_its_documented_status() {
    let Some((file, sha)) = model() else { return };
    let rig = Rig::start(limits());
    let ack = |cmd: ControlCommand<'_>| rig.ack(&cmd).status;
    let begin = |model_id, total_bytes| {
        ControlCommand::LoadModelBegin(LoadModelBegin {
            model_id,
            total_bytes,
        })
    };

    // Loading.
    assert_eq!(
        ack(begin(1, BUDGET + MIB)),
        Status::OutOfMemory,
        "larger than the budget"
    );
    assert_eq!(
        rig.load(1, b"not a gguf file", sha256(b"not a gguf file")),
        Status::BadModel
    );
    assert_eq!(
        rig.load(1, &file, [0; 32]),
        Status::BadModel,
        "wrong SHA-256"
    );
    let end = |model_id| {
        ControlCommand::LoadModelEnd(LoadModelEnd {
            model_id,
            sha256: sha,
        })
    };
    assert_eq!(ack(end(1)), Status::BadRequest, "an end without a begin");
    assert_eq!(ack(begin(2, file.len() as u64)), Status::Ok);
    assert_eq!(
        ack(begin(3, file.len() as u64)),
        Status::Busy,
        "a load in progress"
    );
    let chunk = |model_id, offset| {
        ControlCommand::LoadModelChunk(LoadModelChunk {
            model_id,
            offset,
            data: &file[..16],
        })
    };
    assert_eq!(
        ack(chunk(3, 0)),
        Status::BadRequest,
        "a chunk of another model"
    );
    assert_eq!(
        ack(chunk(2, 16)),
        Status::BadRequest,
        "a chunk out of order"
    );
    assert_eq!(
        ack(end(2)),
        Status::BadRequest,
        "the failed chunk discarded the load"
    );
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(ack(begin(1, file.len() as u64)), Status::AlreadyExists);
    assert_eq!(rig.load(2, &file, sha), Status::Ok);
    assert_eq!(
        ack(begin(3, file.len() as u64)),
        Status::Busy,
        "max_models loaded"
    );
    let unload = |model_id| ControlCommand::UnloadModel(UnloadModel { model_id });
    assert_eq!(ack(unload(3)), Status::NoSuchModel);
    assert_eq!(ack(unload(2)), Status::Ok);

    // Sessions.
    assert_eq!(rig.open(1, 9, 256), Status::NoSuchModel);
    assert_eq!(rig.open(1, 1, 256), Status::Ok);
    assert_eq!(rig.open(1, 1, 256), Status::AlreadyExists);
    rig.pool.in_use.store(BUDGET - 20 * MIB, Ordering::SeqCst);
    assert_eq!(
        rig.open(2, 1, 256),
        Status::OutOfMemory,
        "a KV cache over budget"
    );
    rig.pool.in_use.store(0, Ordering::SeqCst);
    assert_eq!(rig.open(2, 1, 16), Status::Ok);
    assert_eq!(rig.open(3, 1, 16), Status::Ok);
    assert_eq!(rig.open(4, 1, 16), Status::Busy, "max_sessions open");
    let close = |session_id| ControlCommand::CloseSession(CloseSession { session_id });
    assert_eq!(ack(close(3)), Status::Ok);
    assert_eq!(ack(close(3)), Status::NoSuchSession);
    let probe = ControlCommand::Probe(MemoryProbe {
        op: ProbeOp::PlaceCanary,
    });
    match rig.command(&probe) {
        ControlReply::Probe(p) => assert_eq!(p.status, Status::Unsupported),
        other => panic!("expected a probe reply, got {other:?}"),
    }

    // Requests.
    let tokens =
        |id, session, prompt: Vec<u32>| greedy_request(id, session, Prompt::Tokens(prompt), 4);
    rig.request(&tokens(1, 42, vec![1, 2, 3]));
    assert_eq!(rig.collect(1).err(), Some(Status::NoSuchSession));
    rig.request(&tokens(2, 2, (0..20).collect()));
    assert_eq!(
        rig.collect(2).err(),
        Some(Status::ContextFull),
        "a prompt over the context"
    );
    rig.request(&tokens(3, 1, vec![1, 1 << 23]));
    assert_eq!(
        rig.collect(3).err(),
        Some(Status::BadRequest),
        "a token past the vocabulary"
    );
    let mut bad = SamplingParams::greedy(4);
    bad.temperature = 1.0;
    bad.top_p = 0.0;
    rig.request(&RequestMsg::Generate(GenerateRequest {
        request_id: 4,
        session_id: 1,
        sampling: bad,
        prompt: Prompt::Tokens(vec![1]),
    }));
    // The wire allows top_p 0; the engine's sampler does not.
    assert_eq!(
        rig.collect(4).err(),
        Some(Status::BadRequest),
        "sampling the engine refuses"
    );
    rig.pool.in_use.store(BUDGET, Ordering::SeqCst);
    rig.request(&tokens(5, 1, vec![1]));
    assert_eq!(
        rig.collect(5).err(),
        Some(Status::OutOfMemory),
        "no room to run"
    );
    rig.pool.in_use.store(0, Ordering::SeqCst);

    // Still serving after every refusal.
    rig.request(&tokens(6, 1, vec![1, 2, 3]));
    let (_, end) = rig.collect(6).expect("a good request after the refusals");
    assert_eq!(end.generated_tokens, 4);
    let s = rig.stats();
    assert_eq!(
        (s.models_loaded, s.sessions_open, s.requests_completed),
        (1, 2, 1)
    );
}
