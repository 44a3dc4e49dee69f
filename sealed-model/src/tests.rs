//! Seal, then unseal whole and tampered models: every tampering must be refused with its
//! own error. Header-parser tests live in `tests/header_tests.rs`.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use crate::{
    GuestKey, GuestPublicKey, Header, OsRng, OwnerKey, OwnerPublicKey, SealError, SealRequest,
    TAG_BYTES, TryRngCore, Unsealer, derive_guest_key, seal,
};

const ROOT: [u8; 32] = [7; 32];
pub(crate) const MEASUREMENT: [u8; 32] = [1; 32];
/// Layer sizes: chunks of 4096 give 3 + 4 + 1 + 4 = 12 chunks.
///   layer 0: chunks 0, 1, 2 (4096, 4096, 808)
///   layer 1: chunks 3, 4, 5, 6 (4096 each)
///   layer 2: chunk 7 (1 byte)
///   layer 3: chunks 8, 9, 10, 11 (4096, 4096, 4096, 57)
const LAYER_SIZES: [u64; 4] = [9000, 16384, 1, 12345];
const CHUNK: u32 = 4096;

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn layers() -> Vec<Range<u64>> {
    let mut start = 0;
    LAYER_SIZES
        .iter()
        .map(|len| {
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

pub(crate) fn guest() -> GuestKey {
    derive_guest_key(&ROOT, &MEASUREMENT)
}

pub(crate) fn owner() -> OwnerKey {
    OwnerKey::from_seed(&[9; 32])
}

pub(crate) fn plaintext(seed: u64) -> Vec<u8> {
    pseudo_random(seed, LAYER_SIZES.iter().sum::<u64>() as usize)
}

pub(crate) fn seal_for(
    plaintext: &[u8],
    recipients: &[GuestPublicKey],
    owner: &OwnerKey,
) -> Vec<u8> {
    let layers = layers();
    let request = SealRequest {
        plaintext,
        layers: &layers,
        chunk_bytes: CHUNK,
        context_len: 2048,
        kv_bytes_per_token: 36_864,
        recipients,
    };
    seal(&request, owner, &mut OsRng.unwrap_err()).expect("seal")
}

pub(crate) fn sealed(seed: u64) -> Vec<u8> {
    seal_for(&plaintext(seed), &[guest().public()], &owner())
}

/// The header bytes and each sealed chunk (ciphertext + tag) of a file, in order.
pub(crate) fn split_chunks(file: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (header, header_bytes, body) = Header::split_file(file).expect("split");
    let chunks = header
        .chunk_plan()
        .map(|c| body[c.sealed().start as usize..c.sealed().end as usize].to_vec())
        .collect();
    (header_bytes.to_vec(), chunks)
}

/// Feeds `chunks` as the stream's 0th, 1st, ... chunk (what a guest receiving them one after
/// another does), then finishes. Returns the plaintext.
fn unseal_stream(header_bytes: &[u8], chunks: &[Vec<u8>]) -> Result<Vec<u8>, SealError> {
    let mut unsealer = Unsealer::new(header_bytes, &guest(), &[owner().public()])?;
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut buf = chunk.clone();
        out.extend_from_slice(unsealer.open_chunk(i as u64, &mut buf)?);
    }
    unsealer.finish()?;
    Ok(out)
}

fn layer_of(header_bytes: &[u8], index: u64) -> u32 {
    let (header, _) = Header::parse(header_bytes).expect("parse");
    header
        .chunk_plan()
        .nth(index as usize)
        .expect("chunk")
        .layer
}

#[test]
fn round_trip_in_place() {
    let plain = plaintext(1);
    let file = seal_for(&plain, &[guest().public()], &owner());
    let (header, header_bytes, body) = Header::split_file(&file).expect("split");
    assert_eq!(header.body_bytes(), plain.len() as u64);
    assert_eq!(header.chunk_count(), 12);
    assert_eq!(
        header.sealed_body_bytes(),
        (plain.len() + 12 * TAG_BYTES) as u64
    );
    assert_eq!(header.context_len(), 2048);
    assert_eq!(header.kv_bytes_per_token(), 36_864);
    assert_eq!(header.layers(), &layers()[..]);
    assert_eq!(header.encode(), header_bytes);
    assert_eq!(header.verify_signature(), Ok(owner().public()));

    // Chunks never straddle a layer, tile the body, and only the final one is `last`.
    let plan: Vec<_> = header.chunk_plan().collect();
    let layers = layers();
    let mut pos = 0;
    for (i, c) in plan.iter().enumerate() {
        assert_eq!(c.index, i as u64);
        assert_eq!(c.plaintext.start, pos);
        let layer = &layers[c.layer as usize];
        assert!(layer.start <= c.plaintext.start && c.plaintext.end <= layer.end);
        assert!(c.len() <= CHUNK as usize && !c.is_empty());
        assert_eq!(c.last, i == plan.len() - 1);
        pos = c.plaintext.end;
    }
    assert_eq!(
        plan.iter().map(|c| c.layer).collect::<Vec<_>>(),
        [0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3, 3]
    );

    let (_, chunks) = split_chunks(&file);
    assert_eq!(unseal_stream(header_bytes, &chunks).expect("unseal"), plain);
    // The ciphertext is not the plaintext.
    assert_ne!(&body[..64], &plain[..64]);
}

#[test]
fn round_trip_into_and_detached() {
    let plain = plaintext(2);
    let file = sealed(2);
    let (header, header_bytes, body) = Header::split_file(&file).expect("split");
    let mut unsealer = Unsealer::new(header_bytes, &guest(), &[]).expect("new");
    assert_eq!(unsealer.owner(), owner().public());
    let mut private = vec![0u8; header.body_bytes() as usize];
    while let Some(c) = unsealer.next_chunk() {
        let sealed = &body[c.sealed().start as usize..c.sealed().end as usize];
        let (ciphertext, tag) = sealed.split_at(c.len());
        let tag: [u8; TAG_BYTES] = tag.try_into().expect("tag");
        let out = &mut private[c.plaintext.start as usize..c.plaintext.end as usize];
        if c.index % 2 == 0 {
            unsealer
                .open_chunk_into(c.index, ciphertext, &tag, out)
                .expect("into");
        } else {
            out.copy_from_slice(ciphertext);
            unsealer
                .open_chunk_detached(c.index, out, &tag)
                .expect("detached");
        }
    }
    let done = unsealer.finish().expect("finish");
    assert_eq!(private, plain);
    assert_eq!(done.owner, owner().public());
    assert_eq!(done.body_bytes, plain.len() as u64);
}

#[test]
fn flipped_bits_are_refused_at_their_chunk() {
    let file = sealed(3);
    let (header_bytes, chunks) = split_chunks(&file);
    // (chunk, byte within the sealed chunk): first ciphertext byte, middle, the whole short
    // layer, tag bytes, the last byte of the body.
    let last = chunks.len() - 1;
    let cases = [
        (0, 0),
        (5, 2000),
        (7, 0),
        (7, 1),
        (2, 808),
        (3, 4096 + 15),
        (last, 0),
        (last, chunks[last].len() - 1),
    ];
    for (chunk, byte) in cases {
        for bit in [0, 7] {
            let mut bad = chunks.clone();
            bad[chunk][byte] ^= 1 << bit;
            let layer = layer_of(&header_bytes, chunk as u64);
            assert_eq!(
                unseal_stream(&header_bytes, &bad),
                Err(SealError::ChunkAuth {
                    index: chunk as u64,
                    layer
                }),
                "chunk {chunk} byte {byte} bit {bit}"
            );
        }
    }
}

#[test]
fn dropped_duplicated_and_swapped_chunks_are_refused() {
    let file = sealed(4);
    let (header_bytes, chunks) = split_chunks(&file);
    // Chunks 3..=6 are all 4096 bytes, so each tampering gets past the length check.
    let mut dropped = chunks.clone();
    dropped.remove(4);
    assert_eq!(
        unseal_stream(&header_bytes, &dropped),
        Err(SealError::ChunkAuth { index: 4, layer: 1 })
    );

    let mut duplicated = chunks.clone();
    duplicated.insert(5, chunks[4].clone());
    assert_eq!(
        unseal_stream(&header_bytes, &duplicated),
        Err(SealError::ChunkAuth { index: 5, layer: 1 })
    );

    let mut swapped = chunks.clone();
    swapped.swap(4, 5);
    assert_eq!(
        unseal_stream(&header_bytes, &swapped),
        Err(SealError::ChunkAuth { index: 4, layer: 1 })
    );

    // Chunk 8 moved to layer 0's first slot: same length, wrong place.
    let mut moved = chunks.clone();
    moved[0] = chunks[8].clone();
    assert_eq!(
        unseal_stream(&header_bytes, &moved),
        Err(SealError::ChunkAuth { index: 0, layer: 0 })
    );
}

#[test]
fn truncated_body_fails_finish() {
    let file = sealed(5);
    let (header_bytes, chunks) = split_chunks(&file);
    for keep in [0, 1, 7, chunks.len() - 1] {
        assert_eq!(
            unseal_stream(&header_bytes, &chunks[..keep]),
            Err(SealError::Truncated {
                opened: keep as u64,
                count: chunks.len() as u64
            }),
            "keeping {keep} chunks"
        );
    }
    // The whole file cut short (or lengthened) is refused before any chunk is read.
    let expected = (file.len() - header_bytes.len()) as u64;
    let cut = &file[..file.len() - 1];
    assert_eq!(
        Header::split_file(cut).map(|_| ()),
        Err(SealError::BodyLength {
            expected,
            got: expected - 1
        })
    );
    let mut longer = file.clone();
    longer.push(0);
    assert_eq!(
        Header::split_file(&longer).map(|_| ()),
        Err(SealError::BodyLength {
            expected,
            got: expected + 1
        })
    );
}

#[test]
fn chunk_from_another_model_is_refused() {
    // Same sizes, same recipient and owner; one with other weights, one with the same
    // weights sealed again (a fresh content key).
    let file = sealed(6);
    let (header_bytes, chunks) = split_chunks(&file);
    for other in [sealed(60), sealed(6)] {
        let (_, other_chunks) = split_chunks(&other);
        for index in [0, 7, 11] {
            let mut spliced = chunks.clone();
            spliced[index] = other_chunks[index].clone();
            let layer = layer_of(&header_bytes, index as u64);
            assert_eq!(
                unseal_stream(&header_bytes, &spliced),
                Err(SealError::ChunkAuth {
                    index: index as u64,
                    layer
                })
            );
        }
    }
}

#[test]
fn stream_order_and_lengths_are_enforced() {
    let file = sealed(7);
    let (header_bytes, chunks) = split_chunks(&file);
    let mut unsealer = Unsealer::new(&header_bytes, &guest(), &[]).expect("new");
    let mut c5 = chunks[5].clone();
    assert_eq!(
        unsealer.open_chunk(5, &mut c5),
        Err(SealError::ChunkOutOfOrder {
            expected: 0,
            got: 5
        })
    );
    // Any error ends the stream, even for the right chunk afterwards.
    let mut c0 = chunks[0].clone();
    assert_eq!(
        unsealer.open_chunk(0, &mut c0),
        Err(SealError::StreamFailed { index: 0 })
    );
    assert_eq!(
        unsealer.finish().map(|_| ()),
        Err(SealError::StreamFailed { index: 0 })
    );

    let mut unsealer = Unsealer::new(&header_bytes, &guest(), &[]).expect("new");
    let mut short = chunks[0][..100].to_vec();
    assert_eq!(
        unsealer.open_chunk(0, &mut short),
        Err(SealError::ChunkLength {
            index: 0,
            expected: 4096 + 16,
            got: 100
        })
    );

    let mut unsealer = Unsealer::new(&header_bytes, &guest(), &[]).expect("new");
    for (i, chunk) in chunks.iter().enumerate() {
        unsealer
            .open_chunk(i as u64, &mut chunk.clone())
            .expect("open");
    }
    let mut extra = chunks[0].clone();
    assert_eq!(
        unsealer.open_chunk(12, &mut extra),
        Err(SealError::NoSuchChunk {
            index: 12,
            count: 12
        })
    );
}

#[test]
fn edited_header_fails_the_signature() {
    let file = sealed(8);
    let (header_bytes, _) = split_chunks(&file);
    // context_len at 28..32, kv_bytes_per_token at 32..40, a content_digest byte at 50, a
    // recipient's wrapped key (after 4 layers), owner key's last byte... and the signature.
    let n = header_bytes.len();
    let recipient_wrapped = 76 + 4 * 16 + 4 + 32 + 32 + 3;
    for at in [28, 33, 50, recipient_wrapped, n - 64 - 1, n - 1] {
        let mut edited = header_bytes.clone();
        edited[at] ^= 0x01;
        let got = Unsealer::new(&edited, &guest(), &[]).map(|_| ());
        // Editing the owner key may make it an invalid point instead.
        let expected = if at == n - 64 - 1 && got == Err(SealError::BadOwnerKey) {
            SealError::BadOwnerKey
        } else {
            SealError::BadSignature
        };
        assert_eq!(got, Err(expected), "byte {at}");
    }
}

#[test]
fn another_measurement_derives_another_key_and_cannot_unseal() {
    let a = derive_guest_key(&ROOT, &MEASUREMENT);
    let b = derive_guest_key(&ROOT, &[2; 32]);
    let c = derive_guest_key(&[6; 32], &MEASUREMENT);
    assert_eq!(a.public(), guest().public(), "derivation is deterministic");
    assert_ne!(a.public(), b.public());
    assert_ne!(a.public(), c.public());

    let file = sealed(10);
    let (header_bytes, _) = split_chunks(&file);
    assert_eq!(
        Unsealer::new(&header_bytes, &b, &[]).map(|_| ()),
        Err(SealError::NotARecipient { guest: b.public() })
    );
}

#[test]
fn several_recipients_each_unseal() {
    let guests = [
        derive_guest_key(&ROOT, &[3; 32]),
        guest(),
        derive_guest_key(&ROOT, &[4; 32]),
    ];
    let publics: Vec<_> = guests.iter().map(GuestKey::public).collect();
    let plain = plaintext(11);
    let file = seal_for(&plain, &publics, &owner());
    let (_, header_bytes, _) = Header::split_file(&file).expect("split");
    for g in &guests {
        Unsealer::new(header_bytes, g, &[]).expect("each recipient opens the key");
    }
    let duplicated = [guest().public(), guest().public()];
    let layers = layers();
    let request = SealRequest {
        plaintext: &plain,
        layers: &layers,
        chunk_bytes: CHUNK,
        context_len: 1,
        kv_bytes_per_token: 1,
        recipients: &duplicated,
    };
    assert_eq!(
        seal(&request, &owner(), &mut OsRng.unwrap_err()).map(|_| ()),
        Err(SealError::DuplicateRecipient { index: 1, first: 0 })
    );
}

#[test]
fn corrupt_wrapped_key_under_a_valid_signature_fails_unwrap() {
    let file = sealed(12);
    let (mut header, _) = Header::parse(&file).expect("parse");
    header.recipients[0].wrapped_key[3] ^= 0x80;
    header.signature = owner().sign(&header.encode_signed_part());
    assert_eq!(
        Unsealer::new(&header.encode(), &guest(), &[]).map(|_| ()),
        Err(SealError::KeyUnwrap { recipient: 0 })
    );
}

#[test]
#[allow(
    clippy::single_range_in_vec_init,
    reason = "one-layer bodies, not ranges of indices"
)]
fn seal_refuses_bad_requests() {
    let plain = plaintext(13);
    let guests = [guest().public()];
    let base = SealRequest {
        plaintext: &plain,
        layers: &[],
        chunk_bytes: CHUNK,
        context_len: 1,
        kv_bytes_per_token: 1,
        recipients: &guests,
    };
    let rng = &mut OsRng.unwrap_err();
    let len = plain.len() as u64;
    let cases: [(Vec<Range<u64>>, u32, SealError); 5] = [
        (vec![], CHUNK, SealError::LayerCount { count: 0 }),
        (
            vec![0..len - 1],
            CHUNK,
            SealError::LayerSum {
                covered: len - 1,
                body_bytes: len,
            },
        ),
        (
            vec![0..10, 11..len],
            CHUNK,
            SealError::LayerOffset {
                layer: 1,
                offset: 11,
                expected: 10,
            },
        ),
        (
            vec![0..0, 0..len],
            CHUNK,
            SealError::EmptyLayer { layer: 0 },
        ),
        (
            vec![0..len],
            4095,
            SealError::ChunkBytes { chunk_bytes: 4095 },
        ),
    ];
    for (layers, chunk_bytes, expected) in cases {
        let request = SealRequest {
            layers: &layers,
            chunk_bytes,
            ..base.clone()
        };
        assert_eq!(seal(&request, &owner(), rng).map(|_| ()), Err(expected));
    }
    let no_one = SealRequest {
        layers: &[0..len],
        recipients: &[],
        ..base.clone()
    };
    assert_eq!(
        seal(&no_one, &owner(), rng).map(|_| ()),
        Err(SealError::RecipientCount { count: 0 })
    );
}

#[test]
fn key_text_round_trips_and_is_checked() {
    let key = guest().public();
    let text = alloc::format!("{key}\n");
    assert_eq!(text.len(), 65);
    assert_eq!(text.parse::<GuestPublicKey>(), Ok(key));
    assert_eq!(text.to_uppercase().parse::<GuestPublicKey>(), Ok(key));
    assert_eq!(
        "abc".parse::<GuestPublicKey>(),
        Err(SealError::HexLength { got: 3 })
    );
    let mut bad = alloc::format!("{key}");
    bad.replace_range(10..11, "g");
    assert_eq!(
        bad.parse::<OwnerPublicKey>(),
        Err(SealError::HexDigit { position: 10 })
    );

    let owner = OwnerKey::generate(&mut OsRng.unwrap_err());
    let secret = owner.to_secret_text();
    assert!(secret.starts_with("flexserve-owner-secret-v1 "));
    let back = OwnerKey::from_secret_text(&secret).expect("parse");
    assert_eq!(back.public(), owner.public());
    let public_text = alloc::format!("{}", owner.public());
    assert_eq!(
        OwnerKey::from_secret_text(&public_text).map(|k| k.public()),
        Err(SealError::SecretKeyText),
        "a public key is not a secret key file"
    );
}

mod header_tests;
