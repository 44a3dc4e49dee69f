//! `flexserve serve` with a real guest under KVM, against hostile or careless clients:
//! 300 idle connections while a client is served, a client that never finishes its request
//! head cut off at the header timeout, requests from web pages (wrong `Host`, a cross-origin
//! `Origin`, a `text/plain` body) refused, API keys, `/health` while the guest is down, and
//! one client unable to fill the queue.

use flexserve::serve::Daemon;
use flexserve::serve::auth::{ApiKey, digest};
use flexserve::serve::config::{Config, StartMode};
use flexserve::serve::config_access::Access;
use flexserve::serve::conn_limits::ConnLimits;
use flexserve_e2e::serve_rig::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

/// Sends `head` (the request line and headers, without the final blank line) and `body`.
fn raw(addr: SocketAddr, head: &str, body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_reply(s)
}

/// A chat request with `headers` (each ending in `\r\n`) besides Host and Content-Type.
fn post(addr: SocketAddr, headers: &str, body: &str) -> Reply {
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{headers}"
    );
    raw(addr, head.trim_end(), body)
}

fn error_code(r: &Reply) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_string()
}

/// Waits until `stream` is closed by the daemon; how long that took.
fn time_to_close(mut stream: TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) if start.elapsed() < limit => return start.elapsed(),
            Ok(0) | Err(_) => panic!("the connection was still open after {limit:?}"),
            Ok(_) => {}
        }
    }
}

/// Whether the daemon closed `s` (an idle connection: it sent nothing).
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    match s.read(&mut [0u8; 16]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn three_hundred_idle_connections_do_not_keep_a_client_from_being_served() {
    if !guests_can_run(&[TINY]) {
        return;
    }
    let dir = temp_dir("idle-flood");
    let d = Daemon::start(Config {
        server: ConnLimits {
            max_connections: 64,
            ..ConnLimits::default()
        },
        ..config(&dir, TINY, 512, 16)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let body = chat_body(TINY, "Tell me a story.", 16, "");
    let before = http(addr, "POST", CHAT, &body);
    assert_eq!(before.status, 200, "{}", before.body);
    // 300 connections that say nothing (and one that sent half a head).
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    idle[299].write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    let start = Instant::now();
    let during = http(addr, "POST", CHAT, &body);
    let took = start.elapsed();
    assert_eq!(during.status, 200, "{}", during.body);
    assert_eq!(
        during.json()["choices"][0]["message"]["content"],
        before.json()["choices"][0]["message"]["content"]
    );
    assert!(took < Duration::from_secs(5), "served in {took:?}");
    // The daemon holds no more than its limit: the oldest idle connections were closed.
    assert!(d.shared().conns.open() <= 64, "{}", d.shared().conns.open());
    let closed = idle
        .iter_mut()
        .take(200)
        .map(is_closed)
        .filter(|c| *c)
        .count();
    assert_eq!(closed, 200, "the 200 oldest idle connections are closed");
    d.stop();
}

#[test]
fn a_client_that_never_finishes_its_head_is_cut_off_at_the_header_timeout() {
    if !guests_can_run(&[TINY]) {
        return;
    }
    let dir = temp_dir("slowloris");
    let d = Daemon::start(Config {
        server: ConnLimits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            ..ConnLimits::default()
        },
        ..config(&dir, TINY, 512, 16)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    // Half a head, then a byte every 300 ms: cut 1 s after the head began.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let trickle = slow.try_clone().unwrap();
    let dripper = std::thread::spawn(move || {
        let mut t = trickle;
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(300));
            if t.write_all(b"X").is_err() {
                return;
            }
        }
    });
    let took = time_to_close(slow, Duration::from_secs(8));
    assert!(
        (Duration::from_millis(800)..Duration::from_millis(2500)).contains(&took),
        "the slow head was cut after {took:?}"
    );
    dripper.join().unwrap();
    // A connection that sends nothing is cut at the idle timeout.
    let silent = TcpStream::connect(addr).unwrap();
    let took = time_to_close(silent, Duration::from_secs(8));
    assert!(
        (Duration::from_millis(1800)..Duration::from_millis(3500)).contains(&took),
        "the silent connection was cut after {took:?}"
    );
    // A kept-alive connection serves a request, then is cut after the idle timeout.
    let mut kept = TcpStream::connect(addr).unwrap();
    write!(kept, "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let took = time_to_close(kept, Duration::from_secs(8));
    assert!(took < Duration::from_millis(3500), "{took:?}");
    let c = &d.shared().conns;
    use flexserve::serve::conn_limits::Cut;
    assert!(c.cuts(Cut::HeaderTimeout) >= 1 && c.cuts(Cut::Idle) >= 2);
    // And the daemon still serves.
    let r = http(addr, "POST", CHAT, &chat_body(TINY, "Hi", 4, ""));
    assert_eq!(r.status, 200, "{}", r.body);
    d.stop();
}

#[test]
fn requests_a_web_page_could_send_are_refused() {
    if !guests_can_run(&[TINY]) {
        return;
    }
    let dir = temp_dir("web");
    let d = Daemon::start(Config {
        access: Access {
            allowed_hosts: vec!["box.example".into()],
            cors_origins: vec!["http://app.example".into()],
            ..Access::default()
        },
        ..config(&dir, TINY, 512, 16)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let body = chat_body(TINY, "Hi", 4, "");
    let with_host = |host: &str| {
        raw(
            addr,
            &format!("POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"),
            &body,
        )
    };
    // DNS rebinding: the page's own name.
    let r = with_host("evil.example");
    assert_eq!(r.status, 421, "{}", r.body);
    assert_eq!(error_code(&r), "host_not_allowed");
    assert_eq!(with_host("evil.example:8080").status, 421);
    let r = raw(addr, "GET /health HTTP/1.1\r\nHost: evil.example", "");
    assert_eq!(r.status, 421);
    for host in [
        "localhost",
        "127.0.0.1:9",
        "[::1]:80",
        "box.example:8080",
        &addr.to_string(),
    ] {
        let r = with_host(host);
        assert_eq!(r.status, 200, "{host}: {}", r.body);
    }
    // A body a form could send without a preflight.
    let r = raw(
        addr,
        &format!("POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain"),
        &body,
    );
    assert_eq!(r.status, 415, "{}", r.body);
    assert_eq!(error_code(&r), "unsupported_media_type");
    let r = raw(
        addr,
        &format!("POST {CHAT} HTTP/1.1\r\nHost: localhost"),
        &body,
    );
    assert_eq!(r.status, 415, "{}", r.body);
    // Cross-origin: refused unless the origin is allowed.
    let r = post(addr, "Origin: http://evil.example\r\n", &body);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(error_code(&r), "origin_not_allowed");
    let preflight = |origin: &str| {
        raw(
            addr,
            &format!(
                "OPTIONS {CHAT} HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\n\
                 Access-Control-Request-Method: POST\r\n\
                 Access-Control-Request-Headers: content-type"
            ),
            "",
        )
    };
    assert_eq!(preflight("http://evil.example").status, 403);
    let ok = preflight("http://app.example");
    assert_eq!(ok.status, 204, "{}", ok.head);
    assert!(
        ok.head
            .contains("access-control-allow-origin: http://app.example"),
        "{}",
        ok.head
    );
    let r = post(addr, "Origin: http://app.example\r\n", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.head
            .contains("access-control-allow-origin: http://app.example")
    );
    d.stop();
}

#[test]
fn api_keys_are_required_when_configured_and_name_the_client() {
    use std::os::unix::fs::MetadataExt;
    if !guests_can_run(&[TINY]) {
        return;
    }
    let dir = temp_dir("keys");
    let key = "fsk-test-key-for-alice";
    let d = Daemon::start(Config {
        access: Access {
            keys: vec![ApiKey {
                name: "alice".into(),
                sha256: digest(key),
            }],
            ..Access::default()
        },
        ..config(&dir, TINY, 512, 16)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let body = chat_body(TINY, "Hi", 4, "");
    for (auth, why) in [
        ("", "missing"),
        ("Authorization: Bearer fsk-wrong\r\n", "wrong"),
        (
            "Authorization: Bearer fsk-test-key-for-alic\r\n",
            "a prefix",
        ),
        (&format!("Authorization: Basic {key}\r\n"), "not a bearer"),
    ] {
        let r = post(addr, auth, &body);
        assert_eq!(r.status, 401, "{why}: {}", r.body);
        assert_eq!(error_code(&r), "invalid_api_key", "{why}");
        assert!(r.head.contains("www-authenticate: bearer"), "{}", r.head);
    }
    let r = raw(addr, "GET /v1/models HTTP/1.1\r\nHost: localhost", "");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = post(addr, &format!("Authorization: Bearer {key}\r\n"), &body);
    assert_eq!(r.status, 200, "{}", r.body);
    // Probes need no key.
    let r = raw(addr, "GET /health HTTP/1.1\r\nHost: localhost", "");
    assert_eq!(r.status, 200, "{}", r.body);
    // The Unix socket: the peer's user id is who asks, no key needed.
    let socket = d.socket.clone().unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    request(&mut s, "POST", CHAT, &body);
    let r = read_reply(s);
    assert_eq!(r.status, 200, "{}", r.body);
    d.stop();
    // With an allow-list of user ids that leaves this one out: refused.
    let me = std::fs::metadata(&dir).unwrap().uid();
    let d = Daemon::start(Config {
        access: Access {
            unix_uids: vec![me.wrapping_add(1)],
            ..Access::default()
        },
        ..config(&dir, TINY, 512, 16)
    })
    .expect("daemon starts");
    let mut s = std::os::unix::net::UnixStream::connect(d.socket.clone().unwrap()).unwrap();
    request(&mut s, "POST", CHAT, &body);
    let r = read_reply(s);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains(&format!("user id {me}")), "{}", r.body);
    d.stop();
}

#[test]
fn health_is_503_while_the_guest_is_not_up() {
    if !guests_can_run(&[TINY]) {
        return;
    }
    let dir = temp_dir("health");
    let d = Daemon::start(Config {
        start: StartMode::Lazy,
        ..config(&dir, TINY, 512, 16)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let health = || http(addr, "GET", "/health", "");
    // Before the first boot.
    let h = health();
    assert_eq!(h.status, 503, "{}", h.body);
    assert_eq!(h.json()["guest"], "down");
    assert_eq!(h.json()["status"], "unavailable");
    let r = http(addr, "POST", CHAT, &chat_body(TINY, "Hi", 4, ""));
    assert_eq!(r.status, 200, "{}", r.body);
    let h = health();
    assert_eq!((h.status, h.json()["guest"].as_str()), (200, Some("up")));
    // A crash: the request in flight fails, a new guest comes up; whatever /health says
    // meanwhile, its status code agrees with the guest's state.
    let mut s = TcpStream::connect(addr).unwrap();
    let long = chat_body(TINY, "Go on.", 400, r#","stream":true,"ignore_eos":true"#);
    request(&mut s, "POST", CHAT, &long);
    read_until_first_token(&mut s);
    assert!(d.crash_guest_for_tests());
    let failed = read_rest(&mut s);
    assert!(failed.contains("guest VM failed"), "{failed}");
    let start = Instant::now();
    loop {
        let h = health();
        let up = h.json()["guest"] == "up";
        assert_eq!(h.status, if up { 200 } else { 503 }, "{}", h.body);
        if up {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no new guest");
        std::thread::sleep(Duration::from_millis(5));
    }
    d.stop();
}

#[test]
fn one_client_cannot_fill_the_queue() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let dir = temp_dir("share");
    let (key_a, key_b) = ("fsk-a", "fsk-b");
    let keys = [("a", key_a), ("b", key_b)]
        .into_iter()
        .map(|(name, key)| ApiKey {
            name: name.into(),
            sha256: digest(key),
        })
        .collect();
    // One request in the guest at a time; 4 places in the queue, 2 per client.
    let d = Daemon::start(Config {
        max_active: 1,
        access: Access {
            keys,
            ..Access::default()
        },
        ..config(&dir, DEFAULT, 2048, 4)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let auth = |key: &str| format!("Authorization: Bearer {key}\r\n");
    let send = |key: &str, body: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            auth(key),
            body.len()
        )
        .unwrap();
        s
    };
    // A's long request holds the guest.
    let long = chat_body(
        DEFAULT,
        "Count to a million.",
        1500,
        r#","stream":true,"ignore_eos":true"#,
    );
    let mut running = send(key_a, &long);
    read_until_first_token(&mut running);
    // A queues its share...
    let short = chat_body(DEFAULT, "Hi", 4, "");
    let queued: Vec<_> = (0..2).map(|_| send(key_a, &short)).collect();
    let start = Instant::now();
    while d.shared().queue.len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "A's requests never queued"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // ...and no more, though the queue has room.
    let r = post(addr, &auth(key_a), &short);
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(error_code(&r), "rate_limit_exceeded");
    assert!(r.head.contains("retry-after: 1"), "{}", r.head);
    assert_eq!(d.shared().queue.len(), 2);
    // B still gets a place, and its answer once A's long request goes away.
    let b = send(key_b, &short);
    let start = Instant::now();
    while d.shared().queue.len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(10), "B never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(running);
    let r = read_reply(b);
    assert_eq!(r.status, 200, "{}", r.body);
    for s in queued {
        assert_eq!(read_reply(s).status, 200);
    }
    d.stop();
}
