//! Looking for known bytes in memory the host can read: every readable mapping of this
//! process (read through `/proc/self/mem`), a range of guest memory, and a finder for 64-byte
//! runs (samples of a model's plaintext) at any alignment.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Bytes a scan reads at a time.
const PIECE: usize = 1 << 20;

/// One scan of this process at a time: a scan copies what it reads (another test's shared
/// window, say) into its buffer, and a second scan running meanwhile would find that copy in
/// this process's heap.
static SCAN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Reads every readable mapping of this process in pieces of at most 1 MiB and hands each
/// to `visit` with its host address; consecutive pieces of a mapping share `overlap` bytes,
/// so anything up to `overlap + 1` bytes long lies whole in some piece. Pages that cannot
/// be read (a private pool among them) are skipped a piece at a time. The scan's own buffer
/// is cut out of its mapping, and the bytes on either side of it scanned: skipping every
/// piece that touched it skipped up to a megabyte of the heap beside it (once, in CI, the
/// very runs a test looked for as its positive control). Returns the bytes read.
pub fn scan_process(overlap: usize, visit: &mut dyn FnMut(u64, &[u8])) -> u64 {
    assert!(overlap < PIECE / 2, "overlap {overlap} too large");
    let _one_at_a_time = SCAN.lock().unwrap_or_else(|e| e.into_inner());
    let mut maps = String::new();
    std::fs::File::open("/proc/self/maps")
        .and_then(|mut f| f.read_to_string(&mut maps))
        .expect("read /proc/self/maps");
    let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
    let mut scanned = 0u64;
    let mut buf = vec![0u8; PIECE];
    // The scan's own buffer holds copies of what it read last; it is not memory to search.
    let own = buf.as_ptr() as u64..buf.as_ptr() as u64 + buf.len() as u64;
    let around_own = |(start, end): (u64, u64)| {
        [(start, end.min(own.start)), (start.max(own.end), end)]
            .into_iter()
            .filter(|(s, e)| s < e)
    };
    for (start, end) in maps
        .lines()
        .filter_map(readable_mapping)
        .flat_map(around_own)
    {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            if mem.read_exact_at(&mut buf[..n], at).is_ok() {
                scanned += n as u64;
                visit(at, &buf[..n]);
            }
            if at + n as u64 >= end {
                break;
            }
            at += (n - overlap) as u64;
        }
    }
    // Freed heap stays mapped and readable: leave no copy for the next scan to find.
    buf.fill(0);
    std::hint::black_box(&buf);
    scanned
}

/// The address range of a readable line of `/proc/self/maps`.
fn readable_mapping(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    if !perms.starts_with('r') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some((
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    ))
}

/// Reads `len` bytes of guest memory from guest-physical `base` (the shared window, say) in
/// pieces that share `overlap` bytes, handing each to `visit` with its guest address; the
/// copies are wiped afterwards. Returns the bytes read.
pub fn scan_guest(
    mem: &vm_memory::GuestMemoryMmap,
    base: u64,
    len: u64,
    overlap: usize,
    visit: &mut dyn FnMut(u64, &[u8]),
) -> u64 {
    let mut buf = vec![0u8; PIECE];
    let end = base + len;
    let mut at = base;
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        mem.read_slice(&mut buf[..n], GuestAddress(at))
            .expect("the range lies in guest memory");
        visit(at, &buf[..n]);
        if at + n as u64 >= end {
            break;
        }
        at += (n - overlap) as u64;
    }
    buf.fill(0);
    std::hint::black_box(&buf);
    len
}

/// Bytes of guest memory the host maps readable (boot memory and the shared window; the
/// private pool is not part of it). A scan that read less than this missed memory it should
/// have seen, so it would prove nothing by not finding what it looks for.
pub fn readable_guest_bytes(mem: &vm_memory::GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Length of a run.
pub const RUN: usize = 64;
/// Length of the keys runs are indexed by.
const KEY: usize = 8;
/// Haystack positions looked up: every run that lies whole in a haystack starts at most
/// `STRIDE` bytes before one of them, with that key inside it.
const STRIDE: usize = RUN - KEY;

/// Hashes a key that is already random bytes: one multiplication.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// 64-byte runs to look for, found at any alignment. Every 8-byte key of a run (at run
/// offsets 0..=56) is indexed, so a haystack is looked up only every 56 bytes and a hit is
/// then compared in full: 32 MiB take a few milliseconds.
pub struct Runs {
    /// The runs, one after another: the only copy the scans must not count.
    bytes: Vec<u8>,
    index: HashMap<u64, Vec<(u32, u8)>, BuildHasherDefault<KeyHasher>>,
}

impl Runs {
    /// The runs `bytes` holds back to back (taken as it is: no copy is made).
    pub fn new(bytes: Vec<u8>) -> Self {
        assert!(
            !bytes.is_empty() && bytes.len().is_multiple_of(RUN),
            "{} bytes are not whole runs",
            bytes.len()
        );
        let mut index: HashMap<u64, Vec<(u32, u8)>, _> = HashMap::default();
        for (i, run) in bytes.chunks_exact(RUN).enumerate() {
            for off in 0..=STRIDE {
                index
                    .entry(key(&run[off..]))
                    .or_default()
                    .push((i as u32, off as u8));
            }
        }
        Self { bytes, index }
    }

    /// How many runs there are.
    pub fn len(&self) -> usize {
        self.bytes.len() / RUN
    }

    /// Never true (clippy wants the pair).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Where this process keeps the runs themselves (a process scan finds them there).
    pub fn storage(&self) -> Range<u64> {
        let start = self.bytes.as_ptr() as u64;
        start..start + self.bytes.len() as u64
    }

    /// Calls `hit(run, offset)` for every run lying whole in `haystack` (a run met at two
    /// lookups is reported twice).
    pub fn find(&self, haystack: &[u8], hit: &mut dyn FnMut(usize, usize)) {
        let mut q = 0;
        while q + KEY <= haystack.len() {
            if let Some(candidates) = self.index.get(&key(&haystack[q..])) {
                for &(run, off) in candidates {
                    let run = run as usize;
                    let Some(p) = q.checked_sub(off as usize) else {
                        continue;
                    };
                    if haystack.get(p..p + RUN) == Some(&self.bytes[run * RUN..(run + 1) * RUN]) {
                        hit(run, p);
                    }
                }
            }
            q += STRIDE;
        }
    }
}

/// The 8 bytes at the start of `b`, as a key.
fn key(b: &[u8]) -> u64 {
    let mut k = [0u8; KEY];
    k.copy_from_slice(&b[..KEY]);
    u64::from_le_bytes(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every run is found at every alignment, including across a piece's end with the
    /// overlap scans use, and nothing else is.
    #[test]
    fn runs_are_found_at_any_offset_and_only_there() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        };
        let runs_bytes = noise(3 * RUN);
        let mut hay = noise(5000);
        let runs = Runs::new(runs_bytes.clone());
        let mut miss = 0;
        runs.find(&hay, &mut |_, _| miss += 1);
        assert_eq!(miss, 0);
        for at in [0usize, 1, 55, 56, 57, 100, 4000, 5000 - RUN] {
            let r = at % 3;
            let saved = hay[at..at + RUN].to_vec();
            hay[at..at + RUN].copy_from_slice(&runs_bytes[r * RUN..(r + 1) * RUN]);
            let mut hits = Vec::new();
            runs.find(&hay, &mut |run, p| hits.push((run, p)));
            hits.dedup();
            assert_eq!(hits, [(r, at)], "run {r} at {at}");
            hay[at..at + RUN].copy_from_slice(&saved);
        }
        let mut cut = Vec::new();
        runs.find(&runs_bytes[1..RUN + 63], &mut |run, p| cut.push((run, p)));
        assert!(cut.is_empty(), "{cut:?}");
    }
}
