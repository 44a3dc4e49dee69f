//! The guest console: bytes written at offset `8 * i` are vCPU `i`'s output; each vCPU's
//! bytes are assembled into lines separately (so concurrent writers never interleave within
//! a line) and logged on the host with a prefix.
//!
//! Each line also keeps the host CPU time its writer's thread had used when the line ended:
//! writes arrive on the writing vCPU's own thread, so two lines from one vCPU bracket what
//! that vCPU cost the host in between (an idle wait should cost next to nothing).
//!
//! Guest text is untrusted: every line is escaped before it is kept or logged (a terminal
//! escape sequence would otherwise reach the operator's terminal or the journal), and the
//! history keeps only the latest lines, so a guest that prints forever costs bounded memory.

use super::{DeviceEvent, MmioDevice};
use crate::thread_cpu::thread_cpu_time;
use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Longest line kept before it is flushed anyway (a guest that never writes a newline
/// cannot grow host memory).
const MAX_LINE: usize = 4096;

/// Most lines the history keeps (the oldest go first).
const MAX_LINES: usize = 2048;
/// Most bytes of text the history keeps; escaping makes a line at most 4x its raw length,
/// so this holds at least 64 full-length lines.
const MAX_BYTES: usize = 1 << 20;

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
    /// Each kept line with its writer thread's CPU time when the line ended.
    lines: VecDeque<(String, Duration)>,
    /// Bytes of text in `lines`.
    bytes: usize,
    /// Lines dropped from the front to keep within the bounds.
    dropped: u64,
}

/// `raw` as text safe for a terminal or a log: UTF-8 (invalid bytes replaced), control
/// characters (but tab) and the bidirectional overrides that reorder displayed text written
/// as `\xNN` or `\u{NNNN}`; backslashes doubled so an escape cannot be forged.
pub fn escape(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        match c {
            '\t' => out.push(c),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || bidi => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

impl Console {
    /// The latest complete lines the guest printed (escaped), oldest first.
    pub fn lines(&self) -> Vec<String> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.lines.iter().map(|(l, _)| l.clone()).collect()
    }

    /// The latest complete lines, with the host CPU time the thread that wrote each had
    /// used when the line ended (the vCPU's thread: the console is written by MMIO exits).
    pub fn lines_with_writer_cpu(&self) -> Vec<(String, Duration)> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.lines.iter().cloned().collect()
    }

    /// Lines dropped from the history to keep it bounded.
    pub fn dropped_lines(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).dropped
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
                let line = escape(buf);
                buf.clear();
                eprintln!("[guest] {line}");
                s.bytes += line.len();
                s.lines.push_back((line, thread_cpu_time()));
                while s.lines.len() > MAX_LINES || s.bytes > MAX_BYTES {
                    let Some((old, _)) = s.lines.pop_front() else {
                        break;
                    };
                    s.bytes -= old.len();
                    s.dropped += 1;
                }
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
    fn a_console_flood_keeps_only_the_latest_lines() {
        let c = Console::default();
        for i in 0..MAX_LINES + 10 {
            c.write(0, format!("line {i}\n").as_bytes());
        }
        let lines = c.lines();
        assert_eq!(lines.len(), MAX_LINES);
        assert_eq!(lines[0], "line 10");
        assert_eq!(c.dropped_lines(), 10);
        // Long lines hit the byte bound first.
        let long = vec![0x1bu8; MAX_LINE - 1];
        for _ in 0..2 * MAX_BYTES / (4 * MAX_LINE) {
            c.write(0, &long);
            c.write(0, b"\n");
        }
        let kept: usize = c.lines().iter().map(String::len).sum();
        assert!(kept <= MAX_BYTES, "{kept}");
        assert!(c.dropped_lines() > 10);
    }

    #[test]
    fn control_characters_come_out_escaped() {
        let c = Console::default();
        c.write(0, b"\x1b[2J\x1b]0;owned\x07 tab\there \\x41 \xff\n");
        c.write(0, "\u{9b}31m \u{202e}gnp.exe\n".as_bytes());
        assert_eq!(
            c.lines(),
            [
                "\\x1b[2J\\x1b]0;owned\\x07 tab\there \\\\x41 \u{fffd}",
                "\\u{009b}31m \\u{202e}gnp.exe",
            ]
        );
        for line in c.lines() {
            assert!(!line.chars().any(|ch| ch.is_control() && ch != '\t'));
        }
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
