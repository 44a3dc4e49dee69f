//! Opening chunks with the hash a chunk behind (`Unsealer::open_chunk_overlapped`): it
//! proves what opening them one by one proves, on one thread or two, and every way of
//! hashing out of order is refused.

extern crate std;

use alloc::vec::Vec;
use sha2::Digest;

use crate::tests::{guest, owner, plaintext, sealed, split_chunks};
use crate::{Header, InOrder, Join, LayerHashes, SealError, TAG_BYTES, Unsealed, Unsealer};

/// The two pieces on two threads, as the guest's vCPU pool runs them.
struct TwoThreads;

impl Join for TwoThreads {
    fn join(&self, a: &mut (dyn FnMut() + Send), b: &mut (dyn FnMut() + Send)) {
        std::thread::scope(|s| {
            s.spawn(a);
            b();
        });
    }
}

/// A chunk's ciphertext and tag.
type Part = (Vec<u8>, [u8; TAG_BYTES]);

/// The header bytes, and each chunk's ciphertext and tag.
fn chunks(file: &[u8]) -> (Vec<u8>, Vec<Part>) {
    let (header_bytes, sealed) = split_chunks(file);
    let parts = sealed
        .into_iter()
        .map(|c| {
            let (text, tag) = c.split_at(c.len() - TAG_BYTES);
            (text.to_vec(), tag.try_into().expect("tag"))
        })
        .collect();
    (header_bytes, parts)
}

/// Opens every chunk overlapped into one buffer (`previous` is the chunk before's
/// plaintext there), then hashes the last.
fn overlapped(file: &[u8], join: &dyn Join) -> Result<(Vec<u8>, Unsealed, LayerHashes), SealError> {
    let (header_bytes, parts) = chunks(file);
    let mut u = Unsealer::new(&header_bytes, &guest(), &[])?;
    let mut body = Vec::new();
    let mut previous = 0..0;
    for (i, (text, tag)) in parts.iter().enumerate() {
        let start = body.len();
        body.extend_from_slice(text);
        let (done, new) = body.split_at_mut(start);
        u.open_chunk_overlapped(i as u64, new, tag, &done[previous.clone()], join)?;
        previous = start..body.len();
    }
    u.hash_last(&body[previous])?;
    let (proof, layers) = u.finish_with_layers()?;
    Ok((body, proof, layers))
}

/// The layer states as digests (a hasher cannot be compared as it is).
fn digests(l: &LayerHashes) -> Vec<[u8; 32]> {
    l.ends.iter().map(|h| h.clone().finalize().into()).collect()
}

#[test]
fn overlapped_opening_proves_what_opening_one_by_one_does() {
    let file = sealed(3);
    let (header_bytes, parts) = chunks(&file);
    let mut u = Unsealer::new(&header_bytes, &guest(), &[]).expect("new");
    for (i, (text, tag)) in parts.iter().enumerate() {
        u.open_chunk_detached(i as u64, &mut text.clone(), tag)
            .expect("open");
    }
    let (proof, layers) = u.finish_with_layers().expect("finish");
    for join in [&InOrder as &dyn Join, &TwoThreads] {
        let (body, p, l) = overlapped(&file, join).expect("overlapped");
        assert_eq!(body, plaintext(3));
        assert_eq!(p, proof);
        assert_eq!(p.owner, owner().public());
        assert_eq!(digests(&l), digests(&layers));
        assert_eq!(
            l.layers(),
            Header::split_file(&file).unwrap().0.layers().len()
        );
    }
}

#[test]
fn hashing_out_of_order_is_refused() {
    let file = sealed(4);
    let (header_bytes, parts) = chunks(&file);
    let fresh = || Unsealer::new(&header_bytes, &guest(), &[]).expect("new");
    let open = |u: &mut Unsealer, i: usize, previous: &[u8]| {
        let (text, tag) = &parts[i];
        u.open_chunk_overlapped(i as u64, &mut text.clone(), tag, previous, &InOrder)
    };
    let unhashed = |index| Err(SealError::UnhashedChunk { index });

    // The chunk before not passed (or another length): refused, and the stream is over.
    let mut u = fresh();
    open(&mut u, 0, &[]).expect("chunk 0");
    assert_eq!(open(&mut u, 1, &[]), unhashed(0));
    assert_eq!(
        open(&mut u, 1, &[0; 4096]),
        Err(SealError::StreamFailed { index: 1 })
    );
    let mut u = fresh();
    open(&mut u, 0, &[]).expect("chunk 0");
    assert_eq!(open(&mut u, 1, &[0; 17]), unhashed(0));

    // Another way of opening while a chunk is unhashed.
    let mut u = fresh();
    open(&mut u, 0, &[]).expect("chunk 0");
    let (text, tag) = &parts[1];
    assert_eq!(
        u.open_chunk_detached(1, &mut text.clone(), tag),
        unhashed(0)
    );

    // The last chunk never hashed, or hashed with the wrong length: `finish` refuses.
    let all_opened = || {
        let mut u = fresh();
        let mut previous = Vec::new();
        for (i, (text, tag)) in parts.iter().enumerate() {
            let mut text = text.clone();
            u.open_chunk_overlapped(i as u64, &mut text, tag, &previous, &InOrder)
                .expect("open");
            previous = text;
        }
        (u, previous)
    };
    let last = parts.len() as u64 - 1;
    assert_eq!(all_opened().0.finish().map(|_| ()), unhashed(last));
    let (mut u, previous) = all_opened();
    assert_eq!(u.hash_last(&previous[1..]), unhashed(last));
}

#[test]
fn wrong_bytes_hashed_fail_the_content_digest() {
    let file = sealed(5);
    let (header_bytes, parts) = chunks(&file);
    let mut u = Unsealer::new(&header_bytes, &guest(), &[]).expect("new");
    let mut previous = Vec::new();
    for (i, (text, tag)) in parts.iter().enumerate() {
        let mut text = text.clone();
        // Chunk 2's plaintext is handed on with one byte changed.
        let mut handed = previous.clone();
        if i == 3 {
            handed[0] ^= 1;
        }
        u.open_chunk_overlapped(i as u64, &mut text, tag, &handed, &InOrder)
            .expect("open");
        previous = text;
    }
    u.hash_last(&previous).expect("last");
    assert_eq!(u.finish().map(|_| ()), Err(SealError::ContentDigest));
}

#[test]
fn a_tampered_chunk_is_refused_overlapped_too() {
    let mut file = sealed(6);
    let (header, _, _) = Header::split_file(&file).expect("split");
    let c = header.chunk_plan().nth(5).expect("chunk 5");
    let at = file.len() - header.sealed_body_bytes() as usize + c.sealed().start as usize + 9;
    file[at] ^= 0x10;
    assert_eq!(
        overlapped(&file, &TwoThreads).map(|_| ()),
        Err(SealError::ChunkAuth {
            index: 5,
            layer: c.layer
        })
    );
}
