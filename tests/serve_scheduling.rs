//! `flexserve serve` with a real guest under KVM, its scheduling and lifecycle: a full
//! queue answered 429 with Retry-After and gone clients cancelled, clients taking turns, a
//! short request answered while a long one runs, a guest crash failing the request in
//! flight and the next request served by a new guest, and the real binary's sd_notify
//! handshake and drain on SIGTERM.

use flexserve::serve::Daemon;
use flexserve::serve::config::Config;
use flexserve::serve::metrics::Outcome;
use flexserve_e2e::serve_rig::*;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_full_queue_answers_429_and_gone_clients_are_cancelled() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let dir = temp_dir("queue");
    // One request in the guest at a time, one waiting.
    let d = Daemon::start(Config {
        max_active: 1,
        ..config(&dir, DEFAULT, 2048, 1)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let chat = "/v1/chat/completions";
    let long = chat_body(
        DEFAULT,
        "Count to a million.",
        1500,
        r#","stream":true,"ignore_eos":true"#,
    );
    // A: in the guest, streaming.
    let mut a = TcpStream::connect(addr).unwrap();
    request(&mut a, "POST", chat, &long);
    read_until_first_token(&mut a);
    // B: waiting in the queue (the only place).
    let mut b = TcpStream::connect(addr).unwrap();
    request(
        &mut b,
        "POST",
        chat,
        &chat_body(DEFAULT, "Hello", 1500, r#","ignore_eos":true"#),
    );
    let start = Instant::now();
    while d.shared().queue.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "B never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    // C: no room.
    let c = http(addr, "POST", chat, &chat_body(DEFAULT, "Hi", 4, ""));
    assert_eq!(c.status, 429, "{}", c.body);
    assert!(c.head.contains("retry-after: 1"), "{}", c.head);
    assert_eq!(c.json()["error"]["code"], "rate_limit_exceeded");
    // A and B go away: A stops between two tokens, B never runs.
    drop(a);
    drop(b);
    let start = Instant::now();
    let m = &d.shared().metrics;
    while m.requests(Outcome::Cancelled) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "A and B were not cancelled"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Far fewer than 1500 tokens were generated for A.
    let generated = m
        .generated_tokens
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        generated < 1500,
        "{generated} tokens generated for cancelled requests"
    );
    let r = http(addr, "POST", chat, &chat_body(DEFAULT, "Hi", 4, ""));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(m.requests(Outcome::Rejected), 1);
    d.stop();
}

#[test]
fn a_guest_crash_fails_the_request_and_a_new_guest_serves_the_next() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let dir = temp_dir("crash");
    let d = Daemon::start(config(&dir, DEFAULT, 2048, 16)).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let chat = "/v1/chat/completions";
    let probe = chat_body(DEFAULT, "What is two plus two?", 12, "");
    let before = http(addr, "POST", chat, &probe);
    assert_eq!(before.status, 200, "{}", before.body);

    let mut s = TcpStream::connect(addr).unwrap();
    let long = chat_body(
        DEFAULT,
        "Go on.",
        1500,
        r#","stream":true,"ignore_eos":true"#,
    );
    request(&mut s, "POST", chat, &long);
    let mut seen = read_until_first_token(&mut s);
    assert!(d.crash_guest_for_tests(), "a guest is running");
    seen.push_str(&read_rest(&mut s));
    assert!(seen.contains("\"error\""), "{seen}");
    assert!(seen.contains("guest VM failed"), "{seen}");
    assert!(!seen.contains("[DONE]"), "{seen}");

    let after = http(addr, "POST", chat, &probe);
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(
        after.json()["choices"][0]["message"]["content"],
        before.json()["choices"][0]["message"]["content"]
    );
    let m = &d.shared().metrics;
    assert_eq!(
        m.guest_crashes.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(m.guest_starts.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(m.requests(Outcome::Failed), 1);
    d.stop();
}

#[test]
fn the_daemon_binary_tells_systemd_and_drains_on_sigterm() {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    if !guests_can_run(&[TINY]) {
        return;
    }
    let Some(bin) = flexserve_bin() else {
        return;
    };
    let dir = temp_dir("binary");
    // A bad key is refused with its name before anything starts.
    std::fs::write(dir.join("bad.toml"), "[guest]\nvcpu = 2\n").unwrap();
    let out = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(dir.join("bad.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vcpu"), "{err}");

    let socket = dir.join("api.sock");
    std::fs::write(
        dir.join("flexserve.toml"),
        format!(
            "[listen]\nsocket = {socket:?}\nsocket_mode = \"0600\"\n[guest]\nvcpus = 2\n\
             min_isolation = \"none\"\nimages = {:?}\n[models]\ndir = {:?}\ndefault = \"{TINY}\"\ncontext = 256\n",
            repo().join("images/out"),
            repo().join("models"),
        ),
    )
    .unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(dir.join("flexserve.toml"))
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within a minute");
    assert_eq!(&buf[..n], b"READY=1");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut s = UnixStream::connect(&socket).unwrap();
    request(&mut s, "GET", "/health", "");
    let health = read_reply(s);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["guest"], "up");
    // A stream in flight when SIGTERM comes still gets to its end.
    let mut s = UnixStream::connect(&socket).unwrap();
    let body = chat_body(TINY, "Hi", 200, r#","stream":true,"ignore_eos":true"#);
    request(&mut s, "POST", "/v1/chat/completions", &body);
    read_until_first_token(&mut s);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let rest = read_rest(s);
    assert!(rest.contains("\"completion_tokens\":200"), "{rest}");
    assert!(rest.contains("[DONE]"), "{rest}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[test]
fn clients_take_turns_in_the_queue() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let dir = temp_dir("fair");
    // One request in the guest at a time: the order is the queue's.
    let d = Daemon::start(Config {
        max_active: 1,
        ..config(&dir, DEFAULT, 2048, 16)
    })
    .expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let chat = "/v1/chat/completions";
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let body = |user: &str, n: u32| {
        chat_body(
            DEFAULT,
            "Tell me a story.",
            n,
            &format!(r#","ignore_eos":true,"user":"{user}""#),
        )
    };
    // x1 runs in the guest while x2..x6 and then y1 queue up.
    let mut x1 = TcpStream::connect(addr).unwrap();
    let stream = chat_body(
        DEFAULT,
        "Tell me a story.",
        48,
        r#","ignore_eos":true,"stream":true,"user":"x""#,
    );
    request(&mut x1, "POST", chat, &stream);
    read_until_first_token(&mut x1);
    let mut threads = vec![std::thread::spawn({
        let done = done.clone();
        move || {
            read_rest(x1);
            done.lock().unwrap().push("x1".to_string());
        }
    })];
    let submit =
        |name: String, user: &'static str, threads: &mut Vec<std::thread::JoinHandle<()>>| {
            let mut s = TcpStream::connect(addr).unwrap();
            request(&mut s, "POST", chat, &body(user, 24));
            let done = done.clone();
            threads.push(std::thread::spawn(move || {
                let r = read_reply(s);
                assert_eq!(r.status, 200, "{}", r.body);
                done.lock().unwrap().push(name);
            }));
        };
    for i in 2..=6 {
        submit(format!("x{i}"), "x", &mut threads);
        let start = Instant::now();
        while d.shared().queue.len() < i - 1 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "x{i} never queued"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    submit("y1".into(), "y", &mut threads);
    for t in threads {
        t.join().unwrap();
    }
    d.stop();
    let order = done.lock().unwrap().clone();
    // Round-robin: after x1 and x2 (the head of x's line when y arrived), y1 goes next
    // instead of after x6.
    let y = order.iter().position(|n| n == "y1").unwrap();
    assert!(y <= 2, "{order:?}");
}

#[test]
fn a_short_request_is_not_stuck_behind_a_long_one() {
    if !guests_can_run(&[DEFAULT]) {
        return;
    }
    let dir = temp_dir("interleave");
    let d = Daemon::start(config(&dir, DEFAULT, 2048, 16)).expect("daemon starts");
    let addr = d.tcp_addr.unwrap();
    let chat = "/v1/chat/completions";
    let long = chat_body(
        DEFAULT,
        "Count to a million.",
        1500,
        r#","stream":true,"ignore_eos":true"#,
    );
    let mut a = TcpStream::connect(addr).unwrap();
    request(&mut a, "POST", chat, &long);
    read_until_first_token(&mut a);
    // The long request alone takes ~12 s; the short one is answered between its slices.
    let start = Instant::now();
    let b = http(
        addr,
        "POST",
        chat,
        &chat_body(DEFAULT, "What is two plus two?", 12, ""),
    );
    let took = start.elapsed();
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.json()["usage"]["completion_tokens"], 12);
    let m = &d.shared().metrics;
    assert_eq!(
        m.requests(Outcome::Ok),
        1,
        "the long request is still running"
    );
    // The property is the order (the long request is still running when the short one is
    // answered, checked above), not a time, which a loaded machine stretches.
    eprintln!("the short request took {took:?} beside the long one");
    drop(a);
    d.stop();
}
