//! The guest console: bytes written at offset `8 * i` are vCPU `i`'s output; each vCPU's
//! bytes are assembled into lines separately (so concurrent writers never interleave within
//! a line) and logged on the host with a prefix.
//!
//! Each line also keeps the host CPU time its writer's thread had used when the line ended:
//! writes arrive on the writing vCPU's own thread, so two lines from one vCPU bracket what
//! that vCPU cost the host in between (an idle wait should cost next to nothing).

use super::{DeviceEvent, MmioDevice};
use crate::thread_cpu::thread_cpu_time;
use std::sync::Mutex;
use std::time::Duration;

/// Longest line kept before it is flushed anyway (a guest that never writes a newline
/// cannot grow host memory).
const MAX_LINE: usize = 4096;

/// Collects guest output line by line.
#[derive(Default)]
pub struct Console {
    state: Mutex<ConsoleState>,
}

/// Writers the console keeps separate lines for (one per vCPU).
const STREAMS: usize = 8;

#[derive(Default)]
struct ConsoleState {
    line: [Vec<u8>; STREAMS],
    lines: Vec<String>,
    /// For each of `lines`, its writer thread's CPU time when the line ended.
    writer_cpu: Vec<Duration>,
}

impl Console {
    /// Every complete line the guest printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lines
            .clone()
    }

    /// Every complete line so far, with the host CPU time the thread that wrote it had
    /// used when the line ended (the vCPU's thread: the console is written by MMIO exits).
    pub fn lines_with_writer_cpu(&self) -> Vec<(String, Duration)> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.lines
            .iter()
            .cloned()
            .zip(s.writer_cpu.iter().copied())
            .collect()
    }

    fn push(&self, stream: usize, bytes: &[u8]) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        let buf = &mut s.line[stream];
        for &b in bytes {
            if b != b'\n' {
                buf.push(b);
            }
            if b == b'\n' || buf.len() >= MAX_LINE {
                let line = String::from_utf8_lossy(buf).into_owned();
                eprintln!("[guest] {line}");
                s.lines.push(line);
                s.writer_cpu.push(thread_cpu_time());
                buf.clear();
            }
        }
    }
}

impl MmioDevice for Console {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        let stream = (offset / 8) as usize;
        if offset.is_multiple_of(8) && stream < STREAMS {
            self.push(stream, data);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_bounded() {
        let c = Console::default();
        c.write(0, b"hel");
        c.write(0, b"lo\nwor");
        c.write(3, b"ignored\n");
        assert_eq!(c.lines(), ["hello"]);
        c.write(8, b"other ");
        c.write(0, b"ld\n");
        c.write(8, b"vcpu\n");
        assert_eq!(c.lines(), ["hello", "world", "other vcpu"]);
        c.write(0, &vec![b'x'; MAX_LINE + 1]);
        assert_eq!(c.lines().len(), 4);
    }

    #[test]
    fn each_line_keeps_its_writers_cpu_time_in_order() {
        let c = Console::default();
        c.write(0, b"first\n");
        let mut x = 0u64;
        let start = thread_cpu_time();
        while thread_cpu_time() - start < Duration::from_millis(5) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        c.write(0, b"second\n");
        let lines = c.lines_with_writer_cpu();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0].0.as_str(), lines[1].0.as_str()),
            ("first", "second")
        );
        assert!(lines[1].1 >= lines[0].1 + Duration::from_millis(5));
    }
}
