//! The header parser: every rule refused with its error, and hostile input never panics.

use super::*;

fn header_bytes() -> Vec<u8> {
    split_chunks(&sealed(20)).0
}

fn parse(bytes: &[u8]) -> Result<usize, SealError> {
    Header::parse(bytes).map(|(_, n)| n)
}

fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn set_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Offsets in the fixture's header (4 layers).
const N_LAYERS: usize = 72;
const LAYER1_OFFSET: usize = 76 + 16;
const LAYER1_LEN: usize = 76 + 16 + 8;
const N_RECIPIENTS: usize = 76 + 4 * 16;

#[test]
fn framing_is_checked() {
    let good = header_bytes();
    assert_eq!(parse(&good), Ok(good.len()));
    let mut bad = good.clone();
    bad[0] = b'G';
    assert_eq!(parse(&bad), Err(SealError::BadMagic));
    let mut bad = good.clone();
    set_u32(&mut bad, 8, 2);
    assert_eq!(
        parse(&bad),
        Err(SealError::UnsupportedVersion { version: 2 })
    );
    let mut bad = good.clone();
    set_u32(&mut bad, 12, u32::MAX);
    assert!(matches!(
        parse(&bad),
        Err(SealError::HeaderLen {
            header_len: u32::MAX,
            ..
        })
    ));
    for cut in [0, 5, 15, 16, 100, good.len() - 1] {
        let got = parse(&good[..cut]);
        assert!(
            matches!(
                got,
                Err(SealError::BadMagic
                    | SealError::Short { .. }
                    | SealError::FieldTruncated { .. })
            ),
            "cut at {cut}: {got:?}"
        );
    }
    assert_eq!(
        parse(&good[..good.len() - 1]),
        Err(SealError::Short {
            needed: good.len() as u64,
            got: good.len() as u64 - 1
        })
    );
    // A lone header must be exactly that.
    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(parse(&longer), Ok(good.len()));
    assert_eq!(
        Unsealer::new(&longer, &guest(), &[]).map(|_| ()),
        Err(SealError::TrailingBytes { extra: 1 })
    );
}

#[test]
fn header_len_must_match_the_fields() {
    let good = header_bytes();
    let header_len = u32::from_le_bytes(good[12..16].try_into().expect("4"));
    // 16 more bytes claimed (and present): the fields end early.
    let mut bad = good.clone();
    set_u32(&mut bad, 12, header_len + 16);
    bad.extend_from_slice(&[0; 16]);
    assert_eq!(
        parse(&bad),
        Err(SealError::HeaderTrailing {
            header_len: header_len + 16,
            used: header_len
        })
    );
    // 16 fewer: the owner key no longer fits.
    let mut bad = good.clone();
    set_u32(&mut bad, 12, header_len - 16);
    assert_eq!(
        parse(&bad),
        Err(SealError::FieldTruncated { field: "owner_key" })
    );
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    let good = header_bytes();
    let mut bad = good.clone();
    set_u32(&mut bad, N_LAYERS, u32::MAX);
    assert_eq!(parse(&bad), Err(SealError::LayerCount { count: u32::MAX }));
    set_u32(&mut bad, N_LAYERS, 0);
    assert_eq!(parse(&bad), Err(SealError::LayerCount { count: 0 }));
    // 4096 layers is allowed, but they do not fit in this header_len.
    set_u32(&mut bad, N_LAYERS, 4096);
    assert!(matches!(parse(&bad), Err(SealError::FieldTruncated { .. })));

    let mut bad = good.clone();
    set_u32(&mut bad, N_RECIPIENTS, 1 << 30);
    assert_eq!(
        parse(&bad),
        Err(SealError::RecipientCount { count: 1 << 30 })
    );
    set_u32(&mut bad, N_RECIPIENTS, 0);
    assert_eq!(parse(&bad), Err(SealError::RecipientCount { count: 0 }));
}

#[test]
fn bad_sizes_and_layers_are_refused() {
    let good = header_bytes();
    let body = LAYER_SIZES.iter().sum::<u64>();
    let mut bad = good.clone();
    set_u32(&mut bad, 24, 100);
    assert_eq!(parse(&bad), Err(SealError::ChunkBytes { chunk_bytes: 100 }));
    set_u32(&mut bad, 24, (1 << 20) + 1);
    assert_eq!(
        parse(&bad),
        Err(SealError::ChunkBytes {
            chunk_bytes: (1 << 20) + 1
        })
    );

    let mut bad = good.clone();
    set_u64(&mut bad, 16, u64::MAX);
    assert_eq!(
        parse(&bad),
        Err(SealError::BodyBytes {
            body_bytes: u64::MAX
        })
    );
    set_u64(&mut bad, 16, body + 1);
    assert_eq!(
        parse(&bad),
        Err(SealError::LayerSum {
            covered: body,
            body_bytes: body + 1
        })
    );
    set_u64(&mut bad, 16, body - 1);
    assert_eq!(
        parse(&bad),
        Err(SealError::LayerPastBody {
            layer: 3,
            end: body,
            body_bytes: body - 1
        })
    );

    let mut bad = good.clone();
    set_u64(&mut bad, LAYER1_OFFSET, 9001);
    assert_eq!(
        parse(&bad),
        Err(SealError::LayerOffset {
            layer: 1,
            offset: 9001,
            expected: 9000
        })
    );
    let mut bad = good.clone();
    set_u64(&mut bad, LAYER1_LEN, 0);
    assert_eq!(parse(&bad), Err(SealError::EmptyLayer { layer: 1 }));
    let mut bad = good.clone();
    set_u64(&mut bad, LAYER1_LEN, u64::MAX);
    assert_eq!(
        parse(&bad),
        Err(SealError::LayerPastBody {
            layer: 1,
            end: u64::MAX,
            body_bytes: body
        })
    );
}

#[test]
fn random_and_mutated_input_never_panics() {
    let good = header_bytes();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let len = (next() % 700) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if next() % 2 == 0 && bytes.len() >= 16 {
            bytes[..16].copy_from_slice(&good[..16]); // get past the prefix
        }
        let _ = Header::parse(&bytes);
    }
    for _ in 0..20_000 {
        let mut bytes = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        let cut = if next() % 4 == 0 {
            (next() % bytes.len() as u64) as usize
        } else {
            bytes.len()
        };
        if let Ok((header, n)) = Header::parse(&bytes[..cut]) {
            // Whatever parses re-encodes to exactly what was read.
            assert_eq!(header.encode(), &bytes[..n]);
            assert_eq!(header.chunk_plan().count() as u64, header.chunk_count());
        }
        let _ = Unsealer::new(&bytes[..cut], &guest(), &[]);
    }
}

#[test]
fn the_largest_header_seals_and_unseals() {
    // 4096 one-byte layers (so 4096 chunks) and 64 recipients: header_len at its maximum.
    let plain = pseudo_random(14, 4096);
    let layers: Vec<_> = (0..4096u64).map(|i| i..i + 1).collect();
    let guests: Vec<_> = (0..64u8)
        .map(|m| derive_guest_key(&ROOT, &[m; 32]))
        .collect();
    let publics: Vec<_> = guests.iter().map(GuestKey::public).collect();
    let request = SealRequest {
        plaintext: &plain,
        layers: &layers,
        chunk_bytes: CHUNK,
        context_len: 1,
        kv_bytes_per_token: 1,
        recipients: &publics,
    };
    let file = seal(&request, &owner(), &mut OsRng.unwrap_err()).expect("seal");
    let (header, header_bytes, body) = Header::split_file(&file).expect("split");
    assert_eq!(
        u32::from_le_bytes(header_bytes[12..16].try_into().expect("4")),
        72800
    );
    assert_eq!(header.chunk_count(), 4096);
    let mut unsealer = Unsealer::new(header_bytes, &guests[63], &[]).expect("new");
    let mut out = Vec::new();
    for c in header.chunk_plan() {
        let mut buf = body[c.sealed().start as usize..c.sealed().end as usize].to_vec();
        out.extend_from_slice(unsealer.open_chunk(c.index, &mut buf).expect("open"));
    }
    unsealer.finish().expect("finish");
    assert_eq!(out, plain);
}
