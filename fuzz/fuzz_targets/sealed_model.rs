//! A guest unsealing a hostile sealed model: the host controls every byte of the header and
//! of each chunk.
//!
//! 1. `Header::parse` on the raw input: no panic, and a header that parses re-encodes to
//!    exactly the bytes it was parsed from (no two encodings of one header).
//! 2. The input as a whole `.fsm` for a fixed guest: `Unsealer::new`, then every chunk the
//!    header plans, in order, until one is refused, then `finish`. No panic, no chunk opens
//!    out of order, and `finish` succeeds only after every planned chunk opened.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealed_model::{Header, Unsealer, derive_guest_key};

fuzz_target!(|data: &[u8]| {
    if let Ok((header, used)) = Header::parse(data) {
        let encoded = header.encode();
        assert_eq!(
            encoded.as_slice(),
            &data[..used],
            "a parsed header re-encodes"
        );
    }
    let guest = derive_guest_key(&[7; 32], &[1; 32]);
    let Ok((header, head, body)) = Header::split_file(data) else {
        return;
    };
    let Ok(mut unsealer) = Unsealer::new(head, &guest, &[]) else {
        return;
    };
    let planned = header.chunk_count();
    let mut opened = 0u64;
    while let Some(chunk) = unsealer.next_chunk() {
        assert_eq!(chunk.index, opened, "chunks open in order");
        let range = chunk.sealed();
        let Some(sealed) = body.get(range.start as usize..range.end as usize) else {
            return;
        };
        let mut buf = sealed.to_vec();
        if unsealer.open_chunk(chunk.index, &mut buf).is_err() {
            assert!(
                unsealer.finish().is_err(),
                "a stream with a refused chunk never finishes"
            );
            return;
        }
        opened += 1;
    }
    if unsealer.finish().is_ok() {
        assert_eq!(opened, planned, "finish succeeds only after every chunk");
    }
});
