//! `flexserve proxy`: the client's end of sealed sessions (docs/sealed-session.md). It
//! runs where the user is, serves the OpenAI API on loopback, seals each request's content
//! to the guest's session key, relays it through the daemon (which cannot read it), and
//! opens the guest's numbered answer pieces, so that the daemon's host sees neither prompt
//! nor answer. `flexserve chat` uses the same client.
//!
//! `upstream.rs` the HTTP link to the daemon, `trust.rs` the guest's statement and key
//! pinning, `seal.rs` requests, `unseal.rs` answers (whole and streamed), `client.rs` the
//! three together, `server.rs` the proxy's routes.

pub mod client;
pub mod seal;
pub mod server;
pub mod trust;
pub mod unseal;
pub mod upstream;

use client::Client;
use sealed_session::SessionPublicKey;
use std::net::SocketAddr;
use std::sync::Arc;
use trust::TrustError;
use upstream::Upstream;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(
        "--listen {0} is not a loopback address: the proxy's clients send it plaintext, so it \
         listens on 127.0.0.1 or ::1 only"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the proxy's threads: {0}")]
    Threads(std::io::Error),
}

/// What `flexserve proxy` is told.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    /// The guest session key to insist on; `None`: trust on first use.
    pub guest_key: Option<SessionPublicKey>,
    /// Send requests unsealed (for comparison; the daemon then reads them).
    pub plain: bool,
}

/// A running proxy.
pub struct Proxy {
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The address it listens on (with the port the system chose for port 0).
    pub addr: SocketAddr,
    pub client: Arc<Client>,
}

impl Proxy {
    /// Fetches and checks the guest's statement (printing the trust notes), then listens.
    /// Returns once requests are accepted.
    pub fn start(config: ProxyConfig) -> Result<Self, ProxyError> {
        if !config.listen.ip().is_loopback() {
            return Err(ProxyError::NotLoopback(config.listen));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flexserve-proxy")
            .enable_all()
            .build()
            .map_err(ProxyError::Threads)?;
        let client = runtime.block_on(Client::connect(
            config.upstream.clone(),
            !config.plain,
            config.guest_key,
        ))?;
        match &client.guest {
            Some(g) => {
                for line in g.notes(config.guest_key.is_some()) {
                    eprintln!("[flexserve] {line}");
                }
            }
            None => eprintln!(
                "[flexserve] warning: --plain: requests go to the daemon unsealed; its host \
                 can read them"
            ),
        }
        let client = Arc::new(client);
        let listen_err = |source| ProxyError::Listen {
            addr: config.listen,
            source,
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.listen))
            .map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let app = server::router(client.clone());
        let server = runtime.spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                eprintln!("[flexserve] the proxy's listener failed: {e}");
            }
        });
        Ok(Self {
            runtime,
            stop,
            server: Some(server),
            addr,
            client,
        })
    }

    /// Blocks until SIGTERM or SIGINT.
    pub fn wait_for_signal(&self) {
        self.runtime.block_on(crate::serve::term_or_interrupt());
    }

    /// Stops accepting connections; the answers in flight finish.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(s) = self.server.take() {
            let _ = self.runtime.block_on(s);
        }
    }
}

/// `flexserve proxy`: serves until SIGTERM or SIGINT.
pub fn run(config: ProxyConfig) -> Result<(), ProxyError> {
    let upstream = config.upstream.clone();
    let p = Proxy::start(config)?;
    let how = if p.client.guest.is_some() {
        "sealed to the guest"
    } else {
        "plain"
    };
    eprintln!(
        "[flexserve] proxy on http://{}/v1 → {upstream} ({how})",
        p.addr
    );
    p.wait_for_signal();
    p.stop();
    Ok(())
}
