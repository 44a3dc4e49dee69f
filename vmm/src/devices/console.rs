//! The guest console: bytes written to offset 0 become host log lines with a prefix.

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

#[derive(Default)]
struct ConsoleState {
    line: Vec<u8>,
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

    fn push(&self, bytes: &[u8]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for &b in bytes {
            if b != b'\n' {
                s.line.push(b);
            }
            if b == b'\n' || s.line.len() >= MAX_LINE {
                let line = String::from_utf8_lossy(&s.line).into_owned();
                eprintln!("[guest] {line}");
                s.lines.push(line);
                s.line.clear();
            }
        }
    }
}

impl MmioDevice for Console {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        if offset == 0 {
            self.push(data);
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
        c.write(8, b"ignored\n");
        assert_eq!(c.lines(), ["hello"]);
        c.write(0, &vec![b'x'; MAX_LINE + 1]);
        assert_eq!(c.lines().len(), 2);
    }
}
