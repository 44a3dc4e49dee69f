//! The daemon's HTTP/1 server: accepts on each listener, admits every connection through
//! the connection limits (`conn_limits.rs`) and serves it with hyper, closing it when its
//! idle or header deadline passes. (axum's own `serve` has neither deadlines nor a limit.)
//! Each request carries its connection's number and who is on the other end ([`Peer`]).

use super::conn_limits::{Activity, Admitted, Connections, Watched};
use super::listen::ConnId;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client, from this address.
    Tcp(SocketAddr),
    /// A Unix-socket client, with its user id (from `SO_PEERCRED`; none if it cannot be had).
    Unix { uid: Option<u32> },
}

/// A listening socket, in tokio.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// What every connection task gets.
#[derive(Clone)]
pub struct ServeCtx {
    pub app: Router,
    pub conns: Arc<Connections>,
    pub numbers: Arc<AtomicU64>,
    pub stop: watch::Receiver<bool>,
}

/// Serves `listener` until `ctx.stop` turns true, then waits for its connections to end
/// (each finishes the request it has in flight).
pub async fn serve(listener: Listener, ctx: ServeCtx, what: &'static str) {
    // Every connection task holds a sender; when all are dropped, all have ended.
    let (alive, mut ended) = mpsc::channel::<()>(1);
    let mut stop = ctx.stop.clone();
    loop {
        let accepted = tokio::select! {
            r = accept(&listener) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (peer, io) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, most likely: give connections time to close
                // rather than spin on the error.
                eprintln!("[flexserve] the {what} listener cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = ctx.numbers.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = ctx.conns.admit(id) else {
            continue;
        };
        let (c, alive) = (ctx.clone(), alive.clone());
        match io {
            Stream::Tcp(s) => {
                // Tokens stream in small writes; Nagle would hold them back.
                let _ = s.set_nodelay(true);
                tokio::spawn(connection(s, slot, peer, c, alive));
            }
            Stream::Unix(s) => {
                tokio::spawn(connection(s, slot, peer, c, alive));
            }
        }
    }
    drop(alive);
    let _ = ended.recv().await;
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<(Peer, Stream)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, addr) = l.accept().await?;
            Ok((Peer::Tcp(addr), Stream::Tcp(s)))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            let uid = s.peer_cred().ok().map(|c| c.uid());
            Ok((Peer::Unix { uid }, Stream::Unix(s)))
        }
    }
}

/// Serves one connection until it ends, its deadline passes, the registry evicts it, or
/// the daemon stops (then after its request in flight).
async fn connection<T>(
    io: T,
    slot: Admitted,
    peer: Peer,
    mut ctx: ServeCtx,
    _alive: mpsc::Sender<()>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = slot.activity.clone();
    let (id, app) = (ConnId(slot.id), ctx.app.clone());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req| call(&app, &activity, id, &peer, req))
    };
    let io = TokioIo::new(Watched::new(io, activity.clone()));
    // No hyper timer: the deadlines below cover the head and the idle time.
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let limits = ctx.conns.limits;
    let mut draining = false;
    loop {
        let deadline = activity.deadline(&limits);
        let expired = async {
            match deadline {
                Some((t, _)) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Client errors (a reset, a malformed head) end only their connection.
            _ = conn.as_mut() => return,
            _ = activity.changed.notified() => {}
            _ = activity.evict.notified() => {
                if activity.idle() {
                    return;
                }
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = ctx.stop.wait_for(|s| *s), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = expired => {
                if let Some((t, why)) = activity.deadline(&limits)
                    && t <= tokio::time::Instant::now().into_std()
                {
                    ctx.conns.cut(why);
                    return;
                }
            }
        }
    }
}

/// One request: tagged with its connection's number and peer, counted in flight until its
/// answer's body is dropped.
fn call(
    app: &Router,
    activity: &Arc<Activity>,
    id: ConnId,
    peer: &Peer,
    mut req: hyper::Request<Incoming>,
) -> impl std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>>
+ Send
+ use<> {
    let busy = activity.begin();
    req.extensions_mut().insert(ConnectInfo(id));
    req.extensions_mut().insert(peer.clone());
    let mut app = app.clone();
    async move {
        let res = tower_service::Service::call(&mut app, req).await?;
        Ok(res.map(|body| {
            Body::new(body.map_frame(move |frame| {
                busy.hold();
                frame
            }))
        }))
    }
}
