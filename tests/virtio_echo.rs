//! virtio-llm under KVM: the guest's echo service (`guest-programs/src/bin/echo.rs`, the real
//! driver in guest user mode) against the VMM's device. The host sends 10,000 requests of
//! 1 B to 64 KiB, pipelined, and checks every byte of every reply.

use flexserve_e2e::{converse, guest_images};
use std::collections::VecDeque;
use std::time::Duration;
use virtio_llm::spec::MAX_ECHO_BYTES;
use virtio_llm::wire::echo::EchoRequest;
use virtio_llm::wire::request::RequestMsg;
use virtio_llm::wire::response::ResponseMsg;
use vmm::devices::virtio_llm::HostError;
use vmm::machine::VmError;

const REQUESTS: u64 = 10_000;
const IN_FLIGHT: u64 = 8;
const T: Duration = Duration::from_secs(30);

/// Request `i`'s bytes: lengths spread log-uniformly over 1..=64 KiB (both ends included),
/// contents from a per-request xorshift so a misplaced or stale buffer shows.
fn payload(i: u64) -> Vec<u8> {
    let len = match i % 50 {
        0 => 1,
        1 => MAX_ECHO_BYTES,
        _ => {
            let bits = 1 + (i.wrapping_mul(0x9e37_79b9) >> 7) % 16;
            let max = 1usize << bits;
            (1 + (i.wrapping_mul(0x2545_f491) as usize) % max).min(MAX_ECHO_BYTES)
        }
    };
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[test]
fn ten_thousand_echoes_of_1b_to_64k_come_back_byte_for_byte() {
    let Some((kernel, echo)) = guest_images("echo") else {
        return;
    };
    let run = converse(&kernel, &echo, 1, Duration::from_secs(120), |host| {
        host.wait_ready(T)?;
        let (mut sent, mut checked, mut bytes) = (0u64, 0u64, 0usize);
        let mut lens = (usize::MAX, 0usize);
        let mut in_flight = VecDeque::new();
        while checked < REQUESTS {
            while sent < REQUESTS && sent - checked < IN_FLIGHT {
                let data = payload(sent);
                lens = (lens.0.min(data.len()), lens.1.max(data.len()));
                let req = RequestMsg::Echo(EchoRequest {
                    request_id: sent,
                    data,
                });
                host.send_request(&req, T).expect("send");
                in_flight.push_back(sent);
                sent += 1;
            }
            let want = in_flight.pop_front().expect("in flight");
            match host.recv_response(T).expect("reply") {
                ResponseMsg::Echo(e) => {
                    assert_eq!(e.request_id, want, "replies out of order");
                    assert!(e.data == payload(want), "reply {want} differs");
                    bytes += e.data.len();
                }
                other => panic!("expected an echo reply, got {other:?}"),
            }
            checked += 1;
        }
        Ok((checked, bytes, lens, host.device_stats()))
    });
    let (checked, bytes, lens, stats) = run.host.unwrap_or_else(|e: HostError| {
        panic!(
            "the device never came up: {e}; VM: {:?}; console: {:?}",
            run.vm, run.console
        )
    });
    assert!(
        matches!(run.vm, Err(VmError::StoppedByHost)),
        "the guest ended on its own: {:?}; console: {:?}",
        run.vm,
        run.console
    );
    assert_eq!(checked, REQUESTS);
    assert_eq!(lens, (1, MAX_ECHO_BYTES));
    let stats = stats.expect("device live");
    assert_eq!(stats.refused_chains + stats.malformed_messages, 0);
    assert_eq!((stats.sent, stats.received), (REQUESTS, REQUESTS));
    assert_eq!(run.console, ["echo: ready"]);
    eprintln!("echoed {checked} requests, {bytes} bytes");
}
