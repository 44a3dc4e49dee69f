//! The guest's inference service (`guest-service`) against a host that sends any sequence
//! of commands and requests: the real driver and the real VMM device in one process (the
//! in-process transport of `tests/loopback.rs`), the service stepped on this thread as the
//! engine's main loop steps it. The host is honest about the ring protocol and hostile in
//! what it asks: commands for unknown or half-loaded models, loads with wrong digests,
//! sessions on anything, requests on closed sessions, cancels and preempts at any time,
//! arbitrary prompts, tokens and sampling, interleaved with loads of a real tiny model so
//! that sessions open and generate.
//!
//! Beyond "never panics": a step fails only on what the engine itself ignores (a malformed
//! message), and everything the service sends decodes on the host.
#![no_main]

use guest_service::memory::{MemoryUse, PrivateMemory};
use guest_service::service::{Environment, Service};
use inference_guest::parallel::SingleThread;
use inference_guest::quant::{CpuFeatures, Kernels};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use virtio_llm::device::DriverView;
use virtio_llm::device::chain::Window;
use virtio_llm::driver::{DriverError, LlmDriver};
use virtio_llm::spec::MAX_CHUNK_BYTES;
use virtio_llm::spec::layout::{SHARED_WINDOW_BASE, SHARED_WINDOW_SIZE};
use virtio_llm::wire::control::{
    CloseSession, ControlCommand, LoadModelBegin, LoadModelChunk, LoadModelEnd, OpenSession,
    UnloadModel,
};
use virtio_llm::wire::request::{
    CancelRequest, ChatRole, ChatTurn, GenerateRequest, PreemptRequest, Prompt, RequestMsg,
    SamplingParams,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::devices::DirectRegisters;
use vmm::devices::virtio_llm::{HostError, LlmConfig, LlmHost, VirtioLlm};
use vmm::devices::virtio_mmio::MmioTransport;

/// Tokens a request may generate here: enough to stream, few enough that the responses of
/// every request in flight fit the response ring while the host is not reading.
const MAX_TOKENS: u32 = 12;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut rig = Rig::new();
    for _ in 0..32 {
        if u.is_empty() || rig.act(&mut u).is_err() {
            break;
        }
        rig.pump();
    }
});

/// The pool's accounting: nothing held beyond the budget, so nothing to relinquish (a
/// relinquish would wait for a host that, on this one thread, never answers while a step
/// runs).
struct Pool;

impl PrivateMemory for Pool {
    fn usage(&self) -> MemoryUse {
        MemoryUse {
            in_use: 0,
            resident: 0,
            pending: 0,
            budget: 256 << 20,
            size: 256 << 20,
        }
    }
    /// Blocks come from this process's own heap, which has no granule pool to split up.
    fn fits(&self, _blocks: &[u64]) -> bool {
        true
    }
    fn set_budget(&self, _bytes: u64) {}
    fn trim(&self, _target: u64, _out: &mut [(u64, u64)]) -> usize {
        0
    }
    fn released(&self, _start: u64, _len: u64) {}
}

struct Env {
    epoch: Instant,
    random: Cell<u64>,
}

impl Environment for Env {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
    fn ticks(&self) -> u64 {
        self.now_ns()
    }
    fn memory(&self) -> &dyn PrivateMemory {
        &Pool
    }
    fn park(&self) {}
    fn random(&self) -> u64 {
        self.random
            .set(self.random.get().wrapping_add(0x9e37_79b9_7f4a_7c15));
        self.random.get()
    }
    fn count_nonzero(&self, _addr: u64, _len: u64) -> u64 {
        0
    }
    fn expose(&self, _bytes: &[u8]) -> u64 {
        0
    }
    fn log(&self, _line: &str) {}
    fn prefault(&self, _addr: u64, _len: u64) {}
}

struct Rig {
    host: Arc<LlmHost>,
    driver: LlmDriver<DriverView<GuestMemoryMmap>, DirectRegisters>,
    service: Service,
    env: Env,
}

fn model() -> &'static (Vec<u8>, [u8; 32]) {
    static MODEL: OnceLock<(Vec<u8>, [u8; 32])> = OnceLock::new();
    MODEL.get_or_init(|| {
        let file = virtio_llm_fuzz::tiny_llama();
        let sha = Sha256::digest(&file).into();
        (file, sha)
    })
}

impl Rig {
    fn new() -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(SHARED_WINDOW_BASE),
            SHARED_WINDOW_SIZE as usize,
        )])
        .expect("shared window");
        let irq = Arc::new(AtomicU32::new(0));
        let window = Window {
            base: SHARED_WINDOW_BASE,
            size: SHARED_WINDOW_SIZE,
        };
        let limits = LlmConfig {
            max_models: 2,
            max_sessions: 3,
            memory_budget: 256 << 20,
            ..LlmConfig::default()
        };
        let (device, host) =
            VirtioLlm::new(mem.clone(), window, irq.clone(), Arc::default(), limits)
                .expect("device");
        let transport = Arc::new(MmioTransport::with_interrupt_status(Box::new(device), irq));
        let driver = LlmDriver::new(
            DriverView(mem),
            DirectRegisters(transport),
            SHARED_WINDOW_BASE,
            SHARED_WINDOW_SIZE,
        )
        .expect("the driver comes up");
        let limits = driver.limits();
        let service = Service::new(
            Kernels::detect(),
            CpuFeatures::detect(),
            limits.max_models,
            limits.max_sessions,
            driver.features(),
        );
        let env = Env {
            epoch: Instant::now(),
            random: Cell::new(1),
        };
        Self {
            host,
            driver,
            service,
            env,
        }
    }

    /// One thing the host does.
    fn act(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        match u.int_in_range(0u8..=7)? {
            0 => self.command(&virtio_llm_fuzz::command(u)?),
            1 => {
                let mut req = virtio_llm_fuzz::request(u)?;
                if let RequestMsg::Generate(g) = &mut req {
                    g.sampling.max_tokens = g.sampling.max_tokens.min(MAX_TOKENS);
                }
                self.request(&req);
            }
            2 => self.load(u.int_in_range(1..=3)?, u.arbitrary()?),
            3 => self.command(&ControlCommand::OpenSession(OpenSession {
                session_id: u.int_in_range(1..=4)?,
                model_id: u.int_in_range(1..=3)?,
                context_len: u.int_in_range(0..=100)?,
            })),
            4 => {
                let req = generate(u)?;
                self.request(&req);
            }
            5 => {
                let request_id = u.int_in_range(1..=8)?;
                self.request(&if u.arbitrary()? {
                    RequestMsg::Cancel(CancelRequest { request_id })
                } else {
                    RequestMsg::Preempt(PreemptRequest { request_id })
                });
            }
            6 => self.command(&ControlCommand::CloseSession(CloseSession {
                session_id: u.int_in_range(1..=4)?,
            })),
            _ => self.command(&ControlCommand::UnloadModel(UnloadModel {
                model_id: u.int_in_range(1..=3)?,
                keep_layers: u.int_in_range(0..=2)?,
            })),
        }
        Ok(())
    }

    /// The tiny model as `model_id`, with its digest or (`forged`) a wrong one.
    fn load(&mut self, model_id: u32, forged: bool) {
        let (file, sha) = model();
        self.command(&ControlCommand::LoadModelBegin(LoadModelBegin {
            model_id,
            total_bytes: file.len() as u64,
        }));
        for (i, data) in file.chunks(MAX_CHUNK_BYTES).enumerate() {
            self.pump();
            self.command(&ControlCommand::LoadModelChunk(LoadModelChunk {
                model_id,
                offset: (i * MAX_CHUNK_BYTES) as u64,
                data,
            }));
        }
        self.pump();
        let mut sha256 = *sha;
        sha256[0] ^= u8::from(forged);
        self.command(&ControlCommand::LoadModelEnd(LoadModelEnd {
            model_id,
            sha256,
        }));
    }

    fn command(&self, cmd: &ControlCommand<'_>) {
        // A full ring or a message over the limits is not sent: the host's own checks.
        let _ = self.host.send_command(cmd, Duration::ZERO);
    }

    fn request(&self, req: &RequestMsg) {
        let _ = self.host.send_request(req, Duration::ZERO);
    }

    /// Steps the service until it is idle, reading everything it sent.
    fn pump(&mut self) {
        for _ in 0..64 {
            let step = self
                .service
                .step(&mut self.driver, &SingleThread, &self.env);
            match step {
                Ok(_) | Err(DriverError::Malformed { .. }) => {}
                Err(e) => panic!("the service failed a step against an honest device: {e}"),
            }
            self.drain();
            if matches!(step, Ok(guest_service::service::Step::Idle)) {
                break;
            }
        }
    }

    fn drain(&self) {
        loop {
            match self.host.recv_reply(Duration::ZERO) {
                Ok(_) => continue,
                Err(HostError::Timeout(_)) => break,
                Err(e) => panic!("a reply the host cannot take: {e}"),
            }
        }
        loop {
            match self.host.recv_response(Duration::ZERO) {
                Ok(_) => continue,
                Err(HostError::Timeout(_)) => break,
                Err(e) => panic!("a response the host cannot take: {e}"),
            }
        }
    }
}

/// A generation on one of the sessions the rig opens, with a prompt of ids, text or chat.
fn generate(u: &mut Unstructured<'_>) -> Result<RequestMsg> {
    let prompt = match u.int_in_range(0u8..=2)? {
        0 => Prompt::Tokens(
            (0..u.int_in_range(1..=24)?)
                .map(|_| u.int_in_range(0..=300))
                .collect::<Result<_>>()?,
        ),
        1 => Prompt::Text(u.arbitrary::<String>()?),
        // With an assistant turn and a tool result, for a `TOOL_CHAT` record's calls.
        _ => Prompt::Chat(vec![
            ChatTurn {
                role: ChatRole::System,
                content: "Be brief.".into(),
            },
            ChatTurn {
                role: ChatRole::User,
                content: u.arbitrary::<String>()?,
            },
            ChatTurn {
                role: ChatRole::Assistant,
                content: String::new(),
            },
            ChatTurn {
                role: ChatRole::Tool,
                content: u.arbitrary::<String>()?,
            },
        ]),
    };
    let mut sampling = SamplingParams::greedy(u.int_in_range(0..=MAX_TOKENS)?);
    sampling.temperature = f32::from(u.int_in_range(0u8..=20)?) / 10.0;
    sampling.seed = u.arbitrary()?;
    Ok(RequestMsg::Generate(GenerateRequest {
        options: virtio_llm_fuzz::options(u)?,
        request_id: u.int_in_range(1..=8)?,
        session_id: u.int_in_range(1..=4)?,
        sampling,
        prompt,
    }))
}
