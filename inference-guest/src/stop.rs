//! Stop strings over streamed bytes: text that may be the start of a stop string is held
//! back until the next bytes decide it. Byte-wise, so a character split across tokens needs
//! no decoding first (a UTF-8 string matches exactly where its bytes do).

use alloc::vec::Vec;

/// Scans a generation's bytes for any of its stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopScanner {
    stops: Vec<Vec<u8>>,
    held: Vec<u8>,
    stopped: bool,
}

impl StopScanner {
    /// A scanner for `stops` (empty strings are ignored: they would match at once).
    pub fn new<S: AsRef<[u8]>>(stops: &[S]) -> Self {
        Self {
            stops: stops
                .iter()
                .map(|s| s.as_ref().to_vec())
                .filter(|s| !s.is_empty())
                .collect(),
            held: Vec::new(),
            stopped: false,
        }
    }

    /// Adds `bytes`; returns what can be released now and whether a stop string matched.
    /// On a match the text before it is released and everything after is dropped; nothing
    /// more is released after that.
    pub fn push(&mut self, bytes: &[u8]) -> (Vec<u8>, bool) {
        if self.stopped {
            return (Vec::new(), true);
        }
        self.held.extend_from_slice(bytes);
        if let Some(at) = self.earliest_match() {
            self.held.truncate(at);
            self.stopped = true;
            return (core::mem::take(&mut self.held), true);
        }
        let keep = self.longest_partial_suffix();
        let release = self.held.len() - keep;
        (self.held.drain(..release).collect(), false)
    }

    /// The bytes held back at the end of the generation (none once a stop matched).
    pub fn finish(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.held)
    }

    /// Whether a stop string has matched.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    fn earliest_match(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| self.held.windows(s.len()).position(|w| w == s.as_slice()))
            .min()
    }

    /// The longest tail of the held bytes that begins some stop string.
    fn longest_partial_suffix(&self) -> usize {
        let n = self.held.len();
        self.stops
            .iter()
            .flat_map(|s| (1..s.len().min(n + 1)).filter(|&k| self.held[n - k..] == s[..k]))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<u8>, bool) {
        let mut s = StopScanner::new(stops);
        let mut out = Vec::new();
        for p in pieces {
            let (text, hit) = s.push(p.as_bytes());
            out.extend(text);
            if hit {
                return (out, true);
            }
        }
        out.extend(s.finish());
        (out, false)
    }

    #[test]
    fn a_stop_split_over_pieces_cuts_the_text_before_it() {
        assert_eq!(
            run(&["END"], &["abc E", "N", "Dxyz"]),
            (b"abc ".to_vec(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), (b"a".to_vec(), true));
    }

    #[test]
    fn a_false_start_is_released_and_no_stop_releases_everything() {
        assert_eq!(run(&["END"], &["E", "N", "o"]), (b"ENo".to_vec(), false));
        assert_eq!(run(&[], &["a", "b"]), (b"ab".to_vec(), false));
        assert_eq!(run(&[""], &["a"]), (b"a".to_vec(), false));
    }

    #[test]
    fn false_starts_of_several_stops_release_everything_in_order() {
        // The daemon's old scanner's cases: nothing is lost or reordered while held back.
        assert_eq!(
            run(&["\n\n", "é!"], &["a\n", "b", "é", "x"]),
            ("a\nbéx".as_bytes().to_vec(), false)
        );
        assert_eq!(
            run(&["END"], &["hello E", "N", "Dmore"]),
            (b"hello ".to_vec(), true)
        );
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_bytes_are_held_only_while_undecided() {
        assert_eq!(run(&["yz", "b"], &["abcxyz"]), (b"a".to_vec(), true));
        let mut s = StopScanner::new(&["stop"]);
        assert_eq!(s.push(b"xxst"), (b"xx".to_vec(), false));
        assert_eq!(s.push(b"ay"), (b"stay".to_vec(), false));
        // A multi-byte character split across pushes.
        let mut s = StopScanner::new(&["é!"]);
        assert_eq!(s.push(&[b'a', 0xC3]), (b"a".to_vec(), false));
        assert_eq!(s.push(&[0xA9, b'!']), (Vec::new(), true));
        assert!(s.stopped());
    }

    #[test]
    fn the_work_per_push_does_not_grow_with_the_text() {
        // A long generation of near misses: only the undecided tail (shorter than the
        // longest stop string) is ever held, so each push scans that tail and the new
        // bytes, never the text released before.
        let mut s = StopScanner::new(&["abcdefgh", "\n\n"]);
        let mut released = 0;
        for _ in 0..100_000 {
            let (out, hit) = s.push(b"abcdefg\n");
            assert!(!hit);
            released += out.len();
            assert!(s.held.len() < 8, "{} bytes held", s.held.len());
        }
        assert_eq!(released + s.finish().len(), 800_000);
    }
}
