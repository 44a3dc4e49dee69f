//! The guest console: bytes written at offset `8 * i` are vCPU `i`'s output; each vCPU's
//! bytes are assembled into lines separately (so concurrent writers never interleave within
//! a line) and logged on the host with a prefix.

use super::{DeviceEvent, MmioDevice};
use std::sync::Mutex;

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
}
