//! Stop sequences (`stop` in a request): the text is scanned as it streams, and text that
//! may be the start of a stop sequence is held back until the next piece decides it.

/// Scans streamed text for stop sequences.
pub struct StopScanner {
    stops: Vec<String>,
    held: String,
    /// Longest stop sequence in bytes minus one: the most text that can be held back.
    keep: usize,
}

impl StopScanner {
    pub fn new(stops: Vec<String>) -> Self {
        let keep = stops
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        Self {
            stops,
            held: String::new(),
            keep,
        }
    }

    /// Adds `piece`; returns the text that can be sent now and whether a stop sequence
    /// matched (the text before it is returned; the rest is dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (piece.to_string(), false);
        }
        self.held.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Keep the last `keep` bytes (on a character boundary).
        let mut cut = self.held.len().saturating_sub(self.keep);
        while !self.held.is_char_boundary(cut) {
            cut -= 1;
        }
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// The held-back text at the end of the generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_stops_everything_passes() {
        let mut s = StopScanner::new(vec![]);
        assert_eq!(s.push("abc"), ("abc".into(), false));
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn a_stop_split_over_pieces_is_found() {
        let mut s = StopScanner::new(vec!["END".into()]);
        assert_eq!(s.push("hello E"), ("hello".into(), false));
        assert_eq!(s.push("N"), (" ".into(), false));
        assert_eq!(s.push("Dmore"), ("".into(), true));
    }

    #[test]
    fn a_false_start_is_released() {
        // Holds back at most 2 bytes (the longest stop is 3), on character boundaries.
        let mut s = StopScanner::new(vec!["\n\n".into(), "é!".into()]);
        assert_eq!(s.push("a\n"), ("".into(), false));
        assert_eq!(s.push("b"), ("a".into(), false));
        assert_eq!(s.push("é"), ("\nb".into(), false));
        assert_eq!(s.push("x"), ("".into(), false));
        assert_eq!(s.finish(), "éx");
    }
}
