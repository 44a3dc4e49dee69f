//! The real guest driver (`virtio_llm::driver::LlmDriver`) against the real VMM device
//! (`VirtioLlm` behind the virtio-mmio `MmioTransport`), in one process over guest memory,
//! with no VM (see `loopback.rs`); the host thread uses `LlmHost` as the CLI does.

use flexserve_e2e::loopback::{Driver, Loopback, idle, spawn_echo};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use virtio_llm::Status;
use virtio_llm::wire::control::{Ack, CloseSession, ControlCommand, ControlReply, OpenSession};
use virtio_llm::wire::echo::EchoRequest;
use virtio_llm::wire::request::{GenerateRequest, Prompt, RequestMsg, SamplingParams};
use virtio_llm::wire::response::{EndOfStream, ResponseMsg, StopReason, Timings, Tokens};
use vmm::devices::Timer;
use vmm::devices::virtio_llm::LlmHost;

const T: Duration = Duration::from_secs(20);

fn send_response(d: &mut Driver, timer: &Timer, msg: &ResponseMsg, scratch: &mut Vec<u8>) {
    while !d.send_response(msg, scratch).expect("send response") {
        idle(d, timer);
    }
}

/// A guest-side service for the protocol test: sessions, a generation that streams the
/// prompt back as tokens (in batches of up to 4) and echo. Returns when the host closes
/// session `u32::MAX`.
fn serve(mut d: Driver, timer: Arc<Timer>) -> Driver {
    let mut scratch = Vec::new();
    let mut out = Vec::new();
    let mut sessions = std::collections::HashSet::new();
    loop {
        let mut worked = false;
        let mut reply = None;
        if let Some(cmd) = d.poll_command(&mut scratch).expect("command") {
            worked = true;
            let (command, id, status) = match cmd {
                ControlCommand::OpenSession(o) => (
                    virtio_llm::wire::control::msg_type::OPEN_SESSION,
                    o.session_id,
                    if sessions.insert(o.session_id) {
                        Status::Ok
                    } else {
                        Status::AlreadyExists
                    },
                ),
                ControlCommand::CloseSession(c) => (
                    virtio_llm::wire::control::msg_type::CLOSE_SESSION,
                    c.session_id,
                    if sessions.remove(&c.session_id) {
                        Status::Ok
                    } else {
                        Status::NoSuchSession
                    },
                ),
                other => panic!("unexpected command {other:?}"),
            };
            reply = Some(ControlReply::Ack(Ack {
                command,
                status,
                object_id: id,
            }));
        }
        if let Some(r) = reply {
            while !d.send_reply(&r, &mut out).expect("reply") {
                idle(&mut d, &timer);
            }
            if let ControlReply::Ack(a) = r
                && a.object_id == u32::MAX
                && a.command == virtio_llm::wire::control::msg_type::CLOSE_SESSION
            {
                return d;
            }
        }
        if let Some(req) = d.poll_request(&mut scratch).expect("request") {
            worked = true;
            match req {
                RequestMsg::Generate(g) => {
                    let Prompt::Tokens(tokens) = g.prompt else {
                        panic!("text prompt")
                    };
                    assert!(sessions.contains(&g.session_id));
                    for batch in tokens.chunks(4) {
                        let msg = ResponseMsg::Tokens(Tokens {
                            logprobs: Default::default(),
                            request_id: g.request_id,
                            token_ids: batch.to_vec(),
                            text: Vec::new(),
                        });
                        send_response(&mut d, &timer, &msg, &mut out);
                    }
                    let end = ResponseMsg::EndOfStream(EndOfStream {
                        request_id: g.request_id,
                        reason: StopReason::MaxTokens,
                        prompt_tokens: tokens.len() as u32,
                        generated_tokens: tokens.len() as u32,
                        cached_tokens: 0,
                        timings: Timings::default(),
                    });
                    send_response(&mut d, &timer, &end, &mut out);
                }
                other => panic!("unexpected request {other:?}"),
            }
        }
        if !worked {
            idle(&mut d, &timer);
        }
    }
}

fn ack(host: &LlmHost) -> Ack {
    match host.recv_reply(T).expect("reply") {
        ControlReply::Ack(a) => a,
        other => panic!("expected an ack, got {other:?}"),
    }
}

fn open(host: &LlmHost, session_id: u32) -> Ack {
    let cmd = ControlCommand::OpenSession(OpenSession {
        session_id,
        model_id: 1,
        context_len: 4096,
    });
    host.send_command(&cmd, T).expect("open");
    ack(host)
}

fn close(host: &LlmHost, session_id: u32) -> Ack {
    let cmd = ControlCommand::CloseSession(CloseSession { session_id });
    host.send_command(&cmd, T).expect("close");
    ack(host)
}

fn generate(request_id: u64, prompt: Vec<u32>) -> RequestMsg {
    RequestMsg::Generate(GenerateRequest {
        options: Default::default(),
        request_id,
        session_id: 7,
        sampling: SamplingParams::greedy(16),
        prompt: Prompt::Tokens(prompt),
    })
}

#[test]
fn sessions_requests_and_100k_streamed_messages_none_lost_or_reordered() {
    let r = Loopback::new();
    let guest = {
        let d = r.driver();
        let timer = r.timer.clone();
        std::thread::spawn(move || serve(d, timer))
    };
    let host = &r.host;
    host.wait_ready(T).expect("driver up");
    assert_eq!(open(host, 7).status, Status::Ok);
    assert_eq!(open(host, 7).status, Status::AlreadyExists);

    // 30,000 requests of 1..=7 tokens, pipelined 8 deep; each streams its tokens back in
    // batches and ends with EndOfStream: with the requests, over 100,000 messages.
    let (mut sent, mut finished, mut messages) = (0u64, 0u64, 0u64);
    let requests = 30_000u64;
    let prompt = |id: u64| -> Vec<u32> {
        (0..1 + id % 7)
            .map(|k| (id * 31 + k) as u32 % 49_152)
            .collect()
    };
    let mut expected = std::collections::VecDeque::new();
    while finished < requests {
        while sent < requests && sent - finished < 8 {
            host.send_request(&generate(sent, prompt(sent)), T)
                .expect("request");
            expected.push_back((sent, prompt(sent), 0usize));
            sent += 1;
            messages += 1;
        }
        let resp = host.recv_response(T).expect("response");
        messages += 1;
        let (id, want, got) = expected.front_mut().expect("a request in flight");
        match resp {
            ResponseMsg::Tokens(t) => {
                assert_eq!(t.request_id, *id, "responses reordered");
                assert_eq!(t.token_ids[..], want[*got..*got + t.token_ids.len()]);
                *got += t.token_ids.len();
            }
            ResponseMsg::EndOfStream(e) => {
                assert_eq!(e.request_id, *id);
                assert_eq!(*got, want.len(), "tokens lost in request {id}");
                expected.pop_front();
                finished += 1;
            }
            other => panic!("unexpected response {other:?}"),
        }
    }
    assert!(messages >= 100_000, "{messages} messages");

    assert_eq!(close(host, 7).status, Status::Ok);
    assert_eq!(close(host, 7).status, Status::NoSuchSession);
    assert_eq!(open(host, u32::MAX).status, Status::Ok);
    assert_eq!(close(host, u32::MAX).status, Status::Ok);
    let d = guest.join().expect("guest thread");
    let (ds, hs) = (d.stats(), r.host.device_stats().expect("device live"));
    assert_eq!(ds.refused_buffers + ds.malformed, 0);
    assert_eq!(hs.refused_chains + hs.malformed_messages, 0);
    // Event indices keep notifications far below one per message in either direction.
    assert!(
        ds.notifications < messages / 4,
        "{} notifications for {messages} messages",
        ds.notifications
    );
}

#[test]
fn echo_of_every_size_class_comes_back_byte_for_byte() {
    let r = Loopback::new();
    let stop = Arc::new(AtomicBool::new(false));
    let guest = spawn_echo(&r, stop.clone());
    let host = &r.host;
    host.wait_ready(T).expect("driver up");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for (i, len) in [1usize, 2, 63, 4096, 65_535, 65_536]
        .into_iter()
        .cycle()
        .take(60)
        .enumerate()
    {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let req = RequestMsg::Echo(EchoRequest {
            request_id: i as u64,
            data: data.clone(),
        });
        host.send_request(&req, T).expect("echo");
        match host.recv_response(T).expect("reply") {
            ResponseMsg::Echo(e) => {
                assert_eq!(e.request_id, i as u64);
                assert!(e.data == data, "echo of {len} bytes differs");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    guest.join().expect("guest thread");
}

#[test]
fn budgets_reach_the_driver_and_a_report_returns_only_after_its_release_unlocked() {
    use std::sync::atomic::AtomicU64;
    use virtio_llm::spec::MEMORY_GRANULE as G;
    use virtio_llm::spec::layout::PRIVATE_POOL_BASE;
    use virtio_llm::wire::memory::{BudgetChange, MemRange, RelinquishReport};
    use vm_memory::{Bytes, GuestAddress};

    let r = Loopback::new();
    let mut d = r.driver();
    assert!(d.memory_enabled(), "the driver took the memory queues");
    let host = r.host.clone();
    host.wait_ready(T).expect("driver up");
    assert!(host.memory_queues_live());
    let change = BudgetChange {
        sequence: 1,
        new_budget_bytes: 64 * G,
    };
    host.send_budget(&change, T).expect("send the budget");
    let mut scratch = Vec::new();
    let got = loop {
        if let Some(c) = d.poll_budget(&mut scratch).expect("poll budget") {
            break c;
        }
        idle(&mut d, &r.timer);
    };
    assert_eq!(got, change);

    let report = RelinquishReport {
        sequence: 1,
        ranges: vec![
            MemRange {
                guest_phys: PRIVATE_POOL_BASE,
                len: 2 * G,
            },
            MemRange {
                guest_phys: PRIVATE_POOL_BASE + 8 * G,
                len: G,
            },
        ],
    };
    let ticket = d
        .send_relinquish(&report, &mut scratch)
        .expect("send the report")
        .expect("a free report buffer");
    // The host releases slowly; the driver must not see the buffer back before it is done.
    let released_at = Arc::new(AtomicU64::new(0));
    let host_side = {
        let released_at = released_at.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut seen = Vec::new();
            let got = host
                .recv_relinquish(
                    &mut |rep| {
                        // The release holds no device lock: another host thread is served
                        // meanwhile (hole-punching a big report must not stall requests).
                        let (tx, rx) = std::sync::mpsc::channel();
                        let other = host.clone();
                        std::thread::spawn(move || tx.send(other.device_stats().is_some()));
                        assert_eq!(
                            rx.recv_timeout(Duration::from_secs(2)),
                            Ok(true),
                            "the device stayed locked while the report was released"
                        );
                        std::thread::sleep(Duration::from_millis(50));
                        seen.extend(rep.ranges.iter().copied());
                        released_at.store(start.elapsed().as_micros() as u64 + 1, Ordering::SeqCst);
                    },
                    T,
                )
                .expect("receive the report");
            (got, seen)
        })
    };
    let back = loop {
        // Polled once more after the host thread ended: it returns the buffer first.
        let ended = host_side.is_finished();
        if let Some(t) = d.poll_released().expect("poll released") {
            break t;
        }
        if ended {
            // The host side failed (its panic says why) without giving the buffer back.
            match host_side.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(_) => panic!("the host took the report but never gave its buffer back"),
            }
        }
        idle(&mut d, &r.timer);
    };
    assert!(
        released_at.load(Ordering::SeqCst) != 0,
        "the report came back before the host released its ranges"
    );
    assert_eq!(back, ticket);
    let (got, seen) = host_side.join().expect("host thread");
    assert_eq!(got, report);
    assert_eq!(seen, report.ranges);
    // The report's buffer was cleared once the device gave it back.
    let mut buf = vec![0xffu8; 64];
    r.window()
        .read_slice(&mut buf, GuestAddress(ticket))
        .expect("read the report buffer");
    assert!(
        buf.iter().all(|&b| b == 0),
        "the transit buffer kept its bytes"
    );
}
