//! `flexserve serve`: the daemon. OpenAI- and Ollama-compatible HTTP APIs (axum on tokio)
//! on a Unix socket and optionally loopback TCP, in front of one protected guest that a
//! dedicated worker thread owns. Requests are checked and tokenized on the async side,
//! queued fairly (round-robin over clients, bounded: a full queue is a 429), and generated
//! by the guest one at a time with tokens streamed back as they come.
//!
//! `config.rs` the configuration (`config_access.rs` its access sections), `listen.rs`
//! sockets and socket activation, `server.rs` the HTTP/1 connections and `conn_limits.rs`
//! their limits, `guard.rs` the Host/Origin/key/Content-Type checks and `auth.rs` API keys,
//! `notify.rs` sd_notify, `api.rs` routes and answers, `generation.rs` the path every
//! API's generation request takes, `openai/` request parsing and response shapes,
//! `ollama/` Ollama's API, `models_api.rs` `/v1/models`, `error.rs` API errors,
//! `models.rs` the models directory, `scheduler.rs` the fair queue, `worker.rs` the guest
//! thread, `stop.rs` stop sequences, `metrics.rs` `/metrics`, `workflows.rs` which model an agent
//! asks next (prefetched by `worker/prefetch.rs`).

pub mod api;
pub mod auth;
pub mod blocking;
pub mod config;
pub mod config_access;
pub mod conn_limits;
pub mod deadlines;
pub mod embeddings;
pub mod error;
pub mod fan_out;
pub mod generation;
pub mod guard;
pub mod keep_alive;
pub mod layer_prefix;
pub mod listen;
pub mod metrics;
pub mod models;
pub mod models_api;
pub mod notify;
pub mod ollama;
pub mod openai;
pub mod residency;
pub mod sampling;
pub mod scheduler;
pub mod sealed_api;
pub mod sealed_tools;
pub mod server;
pub mod tool_prompt;
pub mod worker;
pub mod workflows;

use crate::guest_root::GuestRoot;
use config::{Config, StartMode};
use conn_limits::Connections;
use error::ApiError;
use listen::{ListenError, Socket};
use metrics::Metrics;
use models::{Catalogue, ServedModel};
use scheduler::JobQueue;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use vmm::guest_images::{GuestImages, ImageError};
use worker::{Job, Worker};

/// What the HTTP handlers and the worker share.
pub struct Shared {
    pub config: Config,
    pub queue: JobQueue<Job>,
    pub metrics: Metrics,
    pub catalogue: Catalogue,
    /// The key root every guest gets (reported with the isolation level).
    pub root: GuestRoot,
    /// Numbers answers (`chatcmpl-N`).
    pub next_id: AtomicU64,
    /// The TCP addresses listened on (the `Host` check accepts them).
    pub tcp_addrs: Vec<SocketAddr>,
    /// The open connections and their limits.
    pub conns: Arc<Connections>,
    /// Bounds the model checks and tokenizations on blocking threads (`limits.blocking_tasks`).
    pub blocking: tokio::sync::Semaphore,
    /// The running guest's signed statement (docs/sealed-session.md), taken at its boot.
    pub statement: std::sync::Mutex<Option<[u8; virtio_llm::spec::SIGNED_STATEMENT_BYTES]>>,
    /// The running guest's memory, for tests that crash or hang it.
    #[cfg(feature = "test-hooks")]
    pub guest_memory: std::sync::Mutex<Option<vmm::parked_writer::ParkedWriter>>,
    /// Where the running guest's private pool is mapped in this process, for scans.
    #[cfg(feature = "test-hooks")]
    pub private_range: std::sync::Mutex<Option<std::ops::Range<u64>>>,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Images(#[from] ImageError),
    #[error("default model: {0}")]
    Model(ApiError),
    #[error("cannot start the guest: {0}")]
    Guest(String),
    #[error("cannot start the daemon's threads: {0}")]
    Threads(std::io::Error),
    #[error(transparent)]
    KeyRoot(vmm::key_root::KeyRootError),
}

/// A running daemon.
pub struct Daemon {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// The TCP address it listens on (with the port the system chose for port 0).
    pub tcp_addr: Option<SocketAddr>,
    /// The Unix socket it created (none under socket activation).
    pub socket: Option<PathBuf>,
}

/// The listening sockets: those systemd passed, else the configured Unix socket (its path
/// is returned, to remove at exit) and the TCP one if any.
fn open_sockets(config: &Config) -> Result<(Vec<Socket>, Option<PathBuf>), ServeError> {
    let sockets = listen::activated();
    if !sockets.is_empty() {
        // A socket unit may say `ListenStream=0.0.0.0:8080`: the same rule as `listen.tcp`.
        for s in &sockets {
            if let Socket::Tcp(l) = s
                && let Ok(addr) = l.local_addr()
            {
                config.check_tcp(addr)?;
            }
        }
        return Ok((sockets, None));
    }
    let mut sockets = vec![Socket::Unix(listen::unix(
        &config.socket,
        config.socket_mode,
    )?)];
    if let Some(addr) = config.tcp {
        sockets.push(Socket::Tcp(listen::tcp(addr)?));
    }
    Ok((sockets, Some(config.socket.clone())))
}

/// Starts the thread that owns the guest; with a `startup` model, returns once that guest
/// is up (or fails with why it is not).
fn start_worker(
    shared: &Arc<Shared>,
    images: GuestImages,
    startup: Option<Arc<ServedModel>>,
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    let (booted_tx, booted) = std::sync::mpsc::channel();
    let w = Worker::new(shared.clone(), images);
    let worker = std::thread::Builder::new()
        .name("flexserve-guest".into())
        .spawn(move || w.run(startup, booted_tx))
        .map_err(ServeError::Threads)?;
    let first = booted
        .recv()
        .unwrap_or_else(|_| Err("the guest thread ended".into()));
    if let Err(e) = first {
        shared.queue.close();
        let _ = worker.join();
        return Err(ServeError::Guest(e));
    }
    Ok(worker)
}

impl Daemon {
    /// Opens the listeners, starts the guest worker (booting the default model first when
    /// `guest.start = "startup"`) and serves. Returns once requests are being accepted.
    pub fn start(config: Config) -> Result<Self, ServeError> {
        let images = GuestImages::locate(config.images.as_deref())?;
        // Never an error when not required: without a root, sealed models are refused.
        let root = GuestRoot::for_guest(&images, config.key_root.as_deref(), false)
            .map_err(ServeError::KeyRoot)?;
        eprintln!("[flexserve] {}", root.report());
        let catalogue = Catalogue::new(
            config.models_dir.clone(),
            config.context,
            config.max_active,
            config.memory_max,
            root.sealing.is_some(),
        );
        let startup = match config.start {
            StartMode::Startup => Some(
                catalogue
                    .get(&config.default_model)
                    .map_err(ServeError::Model)?,
            ),
            StartMode::Lazy => None,
        };
        let (sockets, socket) = open_sockets(&config)?;
        let metrics = Metrics::default();
        metrics
            .memory_max_bytes
            .store(config.memory_max, Ordering::Relaxed);
        let tcp_addrs = listen::tcp_addrs(&sockets);
        let shared = Arc::new(Shared {
            queue: JobQueue::new(config.queue_depth, config.client_share()),
            tcp_addrs,
            conns: Arc::new(Connections::new(config.server)),
            blocking: tokio::sync::Semaphore::new(config.blocking_tasks),
            config,
            metrics,
            catalogue,
            root,
            next_id: AtomicU64::new(1),
            statement: std::sync::Mutex::new(None),
            #[cfg(feature = "test-hooks")]
            guest_memory: std::sync::Mutex::new(None),
            #[cfg(feature = "test-hooks")]
            private_range: std::sync::Mutex::new(None),
        });
        let worker = start_worker(&shared, images, startup)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flexserve-http")
            .enable_all()
            .build()
            .map_err(ServeError::Threads)?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let ctx = server::ServeCtx {
            app: api::router(shared.clone()),
            conns: shared.conns.clone(),
            numbers: Arc::new(AtomicU64::new(1)),
            stop: stop_rx,
        };
        let mut servers = Vec::new();
        let mut tcp_addr = None;
        for s in sockets {
            let _guard = runtime.enter();
            let bind = |what: &str| {
                let what = what.to_string();
                move |source| ListenError::Bind { what, source }
            };
            let (listener, what) = match s {
                Socket::Unix(l) => (
                    l.set_nonblocking(true)
                        .and_then(|()| tokio::net::UnixListener::from_std(l))
                        .map(server::Listener::Unix)
                        .map_err(bind("the Unix socket"))?,
                    "Unix socket",
                ),
                Socket::Tcp(l) => {
                    tcp_addr = l.local_addr().ok();
                    (
                        l.set_nonblocking(true)
                            .and_then(|()| tokio::net::TcpListener::from_std(l))
                            .map(server::Listener::Tcp)
                            .map_err(bind("the TCP socket"))?,
                        "TCP",
                    )
                }
            };
            servers.push(runtime.spawn(server::serve(listener, ctx.clone(), what)));
        }
        Ok(Self {
            runtime,
            shared,
            stop,
            servers,
            worker: Some(worker),
            tcp_addr,
            socket,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Blocks until SIGTERM or SIGINT.
    pub fn wait_for_signal(&self) {
        self.runtime.block_on(term_or_interrupt());
    }

    /// Stops accepting connections, lets the requests in flight and in the queue finish,
    /// stops the guest.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        for s in std::mem::take(&mut self.servers) {
            let _ = self.runtime.block_on(s);
        }
        self.shared.queue.close();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The host address ranges of the running guest's memory (its boot region and private
    /// pool) in this process: what scans for host-side copies leave out, since what the
    /// guest holds is guarded by the isolation level, not by the daemon.
    #[cfg(feature = "test-hooks")]
    pub fn guest_ranges_for_tests(&self) -> Vec<std::ops::Range<u64>> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let mut ranges: Vec<_> = self
            .shared
            .guest_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|writer| {
                writer
                    .memory()
                    .iter()
                    .map(|r| {
                        let start = r.as_ptr() as u64;
                        start..start + r.len()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        ranges.extend(
            self.shared
                .private_range
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        );
        ranges
    }

    /// Overwrites the guest engine's code with breakpoints: its next instruction traps, as
    /// a crashing guest would. Returns false when no guest ran yet.
    #[cfg(feature = "test-hooks")]
    pub fn crash_guest_for_tests(&self) -> bool {
        use vm_memory::{Bytes, GuestAddress};
        let g = self
            .shared
            .guest_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        g.as_ref().is_some_and(|writer| {
            writer
                .memory()
                .write_slice(&[0xcc; 0x20_0000], GuestAddress(0x20_0000))
                .is_ok()
        })
    }

    /// Makes the running guest spin without answering ([`ParkedWriter::hang_engine`]).
    ///
    /// [`ParkedWriter::hang_engine`]: vmm::parked_writer::ParkedWriter::hang_engine
    #[cfg(all(feature = "test-hooks", target_arch = "x86_64"))]
    pub fn hang_guest_for_tests(&self) -> Result<(), String> {
        let writer = self
            .shared
            .guest_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or("no guest is running")?;
        writer.hang_engine().map_err(|e| e.to_string())
    }
}

/// Returns on SIGTERM or SIGINT (never, if the handlers cannot be installed): the daemon
/// and the proxy stop on either.
pub(crate) async fn term_or_interrupt() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `flexserve serve`: runs until SIGTERM or SIGINT, telling systemd READY=1 once requests
/// are accepted (after the guest is up, with `guest.start = "startup"`) and STOPPING=1
/// when it starts draining.
pub fn run(config: Config) -> Result<(), ServeError> {
    let d = Daemon::start(config)?;
    let mut on = Vec::new();
    if let Some(s) = &d.socket {
        on.push(s.display().to_string());
    }
    if let Some(a) = d.tcp_addr {
        on.push(format!("http://{a}"));
    }
    if on.is_empty() {
        on.push("sockets from systemd".into());
    }
    eprintln!(
        "[flexserve] serving the OpenAI and Ollama APIs on {} (minimum isolation: {})",
        on.join(" and "),
        d.shared.config.min_isolation
    );
    if let Err(e) = notify::notify("READY=1") {
        eprintln!("[flexserve] cannot notify systemd: {e}");
    }
    d.wait_for_signal();
    eprintln!("[flexserve] stopping: finishing the requests in flight");
    let _ = notify::notify("STOPPING=1");
    d.stop();
    eprintln!("[flexserve] stopped");
    Ok(())
}
