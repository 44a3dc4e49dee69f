//! `make bench-virtio`: the guest's echo service over virtio-llm under KVM, against the same
//! driver and device wired together in one process (no VM) in the same run, so the ratio
//! shows what the VM boundary costs. Round-trip latency of 64-byte echoes (one in flight)
//! and throughput of 64 KiB echoes (8 in flight). Last line: one JSON object.

use flexserve_e2e::loopback::{Loopback, spawn_echo};
use flexserve_e2e::{converse, guest_images};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use virtio_llm::wire::echo::EchoRequest;
use virtio_llm::wire::request::RequestMsg;
use virtio_llm::wire::response::ResponseMsg;
use vmm::devices::virtio_llm::LlmHost;

const SMALL: usize = 64;
const LATENCY_ROUNDS: usize = 20_000;
const WARMUP: usize = 1_000;
const BIG: usize = 64 * 1024;
const BIG_MESSAGES: u64 = 20_000;
const IN_FLIGHT: u64 = 8;
const T: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    mb_per_s: f64,
}

fn echo(host: &LlmHost, id: u64, data: &[u8]) {
    let req = RequestMsg::Echo(EchoRequest {
        request_id: id,
        data: data.to_vec(),
    });
    host.send_request(&req, T).expect("send");
}

fn reply(host: &LlmHost, id: u64, len: usize) {
    match host.recv_response(T).expect("reply") {
        ResponseMsg::Echo(e) if e.request_id == id && e.data.len() == len => {}
        other => panic!("bad reply to {id}: {other:?}"),
    }
}

fn measure(host: &LlmHost) -> Figures {
    host.wait_ready(T).expect("driver up");
    let small = vec![0x5au8; SMALL];
    let mut rtts = Vec::with_capacity(LATENCY_ROUNDS);
    for i in 0..(WARMUP + LATENCY_ROUNDS) as u64 {
        let t = Instant::now();
        echo(host, i, &small);
        reply(host, i, SMALL);
        if i as usize >= WARMUP {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    rtts.sort_by(f64::total_cmp);
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];

    let big = vec![0xa5u8; BIG];
    let t = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    let mut in_flight = VecDeque::new();
    while done < BIG_MESSAGES {
        while sent < BIG_MESSAGES && sent - done < IN_FLIGHT {
            echo(host, sent, &big);
            in_flight.push_back(sent);
            sent += 1;
        }
        reply(host, in_flight.pop_front().expect("in flight"), BIG);
        done += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    Figures {
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        mb_per_s: (BIG_MESSAGES as f64 * BIG as f64) / secs / 1e6,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes the harness; nothing to list.
    }
    let Some((kernel, echo_image)) = guest_images("echo") else {
        eprintln!("bench-virtio needs /dev/kvm and `make image`");
        std::process::exit(1);
    };
    let lb = Loopback::new();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = spawn_echo(&lb, stop.clone());
    let base = measure(&lb.host);
    stop.store(true, Ordering::Relaxed);
    thread.join().expect("loopback echo thread");

    let run = converse(&kernel, &echo_image, 1, Duration::from_secs(600), measure);
    let guest = run.host;
    println!("virtio-llm echo           p50 RTT   p99 RTT   64 KiB throughput");
    for (name, f) in [("in-process (no VM)", &base), ("guest under KVM", &guest)] {
        println!(
            "  {name:<22} {:>6.1} µs {:>6.1} µs {:>9.0} MB/s",
            f.p50_us, f.p99_us, f.mb_per_s
        );
    }
    println!(
        "{{\"bench\":\"virtio\",\"small_bytes\":{SMALL},\"big_bytes\":{BIG},\"in_flight\":{IN_FLIGHT},\
\"guest\":{{\"rtt_p50_us\":{:.2},\"rtt_p99_us\":{:.2},\"mb_per_s\":{:.1}}},\
\"loopback\":{{\"rtt_p50_us\":{:.2},\"rtt_p99_us\":{:.2},\"mb_per_s\":{:.1}}},\
\"ratio_rtt_p50\":{:.2},\"ratio_throughput\":{:.2}}}",
        guest.p50_us,
        guest.p99_us,
        guest.mb_per_s,
        base.p50_us,
        base.p99_us,
        base.mb_per_s,
        guest.p50_us / base.p50_us,
        guest.mb_per_s / base.mb_per_s
    );
}
