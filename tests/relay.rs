//! A TCP relay in front of the daemon that keeps every byte it passes, per connection and
//! direction, so a test can say what the daemon's side of a connection was sent and sent
//! back (a sealed request's text must be in neither).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

type Log = Arc<Mutex<Vec<u8>>>;

/// What one relayed connection carried.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// From the client to the daemon.
    pub sent: Vec<u8>,
    /// From the daemon back to the client.
    pub received: Vec<u8>,
}

impl Traffic {
    /// Whether either direction holds `needle`.
    pub fn holds(&self, needle: &[u8]) -> bool {
        [&self.sent, &self.received]
            .iter()
            .any(|b| memchr::memmem::find(b, needle).is_some())
    }
}

pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<(Log, Log)>>>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to `upstream`. The
    /// listener lives as long as the test process.
    pub fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<(Log, Log)>>> = Arc::default();
        let all = connections.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let server = TcpStream::connect(upstream).expect("the relay reaches upstream");
                let (sent, received): (Log, Log) = Default::default();
                all.lock().unwrap().push((sent.clone(), received.clone()));
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    sent,
                );
                pipe(server, client, received);
            }
        });
        Relay { addr, connections }
    }

    /// What each connection so far carried, in the order they were accepted.
    pub fn traffic(&self) -> Vec<Traffic> {
        let copy = |l: &Log| l.lock().unwrap().clone();
        self.connections
            .lock()
            .unwrap()
            .iter()
            .map(|(s, r)| Traffic {
                sent: copy(s),
                received: copy(r),
            })
            .collect()
    }
}

/// Copies `from` to `to` until `from` ends, keeping a copy in `log`; then ends `to`'s
/// writing side, so the other end sees the close.
fn pipe(mut from: TcpStream, mut to: TcpStream, log: Log) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
