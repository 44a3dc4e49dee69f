//! How many connections the daemon holds and for how long. Without limits a client can open
//! connections until the process runs out of file descriptors, or hold each one forever by
//! sending its request head a byte at a time (slowloris). So:
//! - a connection with no request in flight that receives nothing for `idle_timeout` is
//!   closed (between keep-alive requests, and before the first one);
//! - once a request head has started, it must be complete within `header_timeout`;
//! - at `max_connections`, a new connection makes room by closing the connection idle the
//!   longest; only when every connection has a request in flight is the new one refused.
//!   Idle connections therefore never keep a client with a request from being served.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// The connection limits (`[server]` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// No request head has started since the last answer.
const NO_HEAD: u64 = u64::MAX;

/// Why a connection was closed by the daemon rather than by its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    Idle = 0,
    HeaderTimeout = 1,
}

/// What one connection is doing: shared by its reader (bytes arrive), its service (requests
/// begin and end) and its task (which closes it when a deadline passes).
pub struct Activity {
    opened: Instant,
    in_flight: AtomicU32,
    /// Milliseconds after `opened` of the last boundary: the connection opened or its last
    /// answer ended.
    since_ms: AtomicU64,
    /// Milliseconds after `opened` when the next request head's first byte came (`NO_HEAD`).
    head_ms: AtomicU64,
    /// A deadline may have moved (a head started, a request ended).
    pub(super) changed: Notify,
    /// The registry wants the room this connection takes.
    pub(super) evict: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            since_ms: AtomicU64::new(0),
            head_ms: AtomicU64::new(NO_HEAD),
            changed: Notify::new(),
            evict: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Bytes arrived: outside a request they start the next request's head.
    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self
                .head_ms
                .compare_exchange(NO_HEAD, self.now_ms(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// A request's head is complete and its answer is being made; the guard ends it when the
    /// answer's body is dropped (sent, or the connection went away).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_ms.store(NO_HEAD, Ordering::Release);
        InFlight(self.clone())
    }

    pub fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// When the connection is to be closed if nothing happens first, and why (none while
    /// a request is in flight).
    pub fn deadline(&self, limits: &ConnLimits) -> Option<(Instant, Cut)> {
        if !self.idle() {
            return None;
        }
        let ms = |m: u64| self.opened + Duration::from_millis(m);
        Some(match self.head_ms.load(Ordering::Acquire) {
            NO_HEAD => (
                ms(self.since_ms.load(Ordering::Acquire)) + limits.idle_timeout,
                Cut::Idle,
            ),
            head => (ms(head) + limits.header_timeout, Cut::HeaderTimeout),
        })
    }

    /// When the connection last became idle, for choosing whom to evict.
    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.since_ms.load(Ordering::Acquire))
    }
}

/// A request in flight on a connection (see [`Activity::begin`]).
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// Keeps the guard alive inside a closure that owns it.
    pub fn hold(&self) {}
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.since_ms.store(a.now_ms(), Ordering::Release);
            a.head_ms.store(NO_HEAD, Ordering::Release);
            a.changed.notify_one();
        }
    }
}

/// An accepted stream whose reads are reported to its [`Activity`].
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts of what the limits did since the last log line.
#[derive(Default)]
struct Report {
    evicted: u64,
    refused: u64,
    last: Option<Instant>,
}

/// How often the limit's log line may repeat: a flood must not flood the log too.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The open connections of all listeners.
pub struct Connections {
    pub limits: ConnLimits,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    report: Mutex<Report>,
    /// Connections closed by a deadline, by [`Cut`] (not logged one by one: a slowloris
    /// flood would flood the log).
    cuts: [AtomicU64; 2],
}

/// A connection's place in the registry, given back when dropped.
pub struct Admitted {
    pub id: u64,
    pub activity: Arc<Activity>,
    registry: Arc<Connections>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Connections {
    pub fn new(limits: ConnLimits) -> Self {
        Self {
            limits,
            open: Mutex::new(HashMap::new()),
            report: Mutex::new(Report::default()),
            cuts: Default::default(),
        }
    }

    /// Counts a connection a deadline closed (dropping it closes the socket).
    pub fn cut(&self, why: Cut) {
        self.cuts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The connection figures of `/metrics`, in Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "flexserve_connections_open";
        let _ = writeln!(out, "# HELP {name} Connections open now.");
        let _ = writeln!(out, "# TYPE {name} gauge\n{name} {}", self.open());
        let name = "flexserve_connections_cut_total";
        let _ = writeln!(out, "# HELP {name} Connections closed by a deadline.");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (reason, why) in [("idle", Cut::Idle), ("header_timeout", Cut::HeaderTimeout)] {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", self.cuts(why));
        }
    }

    /// Connections closed so far for `why`.
    pub fn cuts(&self, why: Cut) -> u64 {
        self.cuts[why as usize].load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        // Every critical section is one map operation: a poisoned map is still consistent.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().len()
    }

    /// Takes connection `id` in; at the limit the connection idle the longest is told to
    /// close, and with none idle `id` is refused (`None`: drop the stream).
    pub fn admit(self: &Arc<Self>, id: u64) -> Option<Admitted> {
        let mut open = self.lock();
        if open.len() >= self.limits.max_connections {
            let oldest = open
                .iter()
                .filter(|(_, a)| a.idle())
                .min_by_key(|(_, a)| a.idle_since())
                .map(|(id, _)| *id);
            match oldest.and_then(|o| open.remove(&o)) {
                Some(victim) => {
                    victim.evict.notify_one();
                    self.note(|r| r.evicted += 1);
                }
                None => {
                    drop(open);
                    self.note(|r| r.refused += 1);
                    return None;
                }
            }
        }
        let activity = Arc::new(Activity::new());
        open.insert(id, activity.clone());
        Some(Admitted {
            id,
            activity,
            registry: self.clone(),
        })
    }

    /// Counts what the limit did and logs it at most every `REPORT_EVERY`.
    fn note(&self, count: impl FnOnce(&mut Report)) {
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        count(&mut r);
        if r.last.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return;
        }
        eprintln!(
            "[flexserve] connection limit ({}) reached: closed {} idle connections and refused \
             {} new ones (all busy) since the last report; see server.max_connections",
            self.limits.max_connections, r.evicted, r.refused
        );
        *r = Report {
            last: Some(Instant::now()),
            ..Report::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> ConnLimits {
        ConnLimits {
            max_connections: max,
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn at_the_limit_the_longest_idle_connection_makes_room() {
        let c = Arc::new(Connections::new(limits(2)));
        let a = c.admit(1).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = c.admit(2).unwrap();
        let _busy = b.activity.begin();
        // 1 is idle and the older: it is told to go, and 3 takes its place.
        let d = c.admit(3).unwrap();
        assert_eq!(c.open(), 2);
        let evicted = a.activity.evict.notified();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { tokio::time::timeout(Duration::from_secs(1), evicted).await })
            .expect("connection 1 was told to close");
        // 2 is busy, 3 idle: 3 goes next; with both busy a new one is refused.
        let _busy3 = d.activity.begin();
        assert!(c.admit(4).is_none());
        drop(a);
        assert_eq!(c.open(), 2);
    }

    #[test]
    fn deadlines_follow_the_phase_of_the_connection() {
        let l = limits(8);
        let a = Arc::new(Activity::new());
        let (t, why) = a.deadline(&l).unwrap();
        assert_eq!(why, Cut::Idle);
        assert!(t > Instant::now() + Duration::from_secs(4));
        // A head starts: it has the header timeout from its first byte.
        a.read_some();
        let (t, why) = a.deadline(&l).unwrap();
        assert_eq!(why, Cut::HeaderTimeout);
        assert!(t < Instant::now() + Duration::from_millis(2100));
        // A request in flight has no deadline; after it, the connection is idle again.
        let busy = a.begin();
        a.read_some();
        assert!(a.deadline(&l).is_none());
        drop(busy);
        assert_eq!(a.deadline(&l).unwrap().1, Cut::Idle);
    }
}
