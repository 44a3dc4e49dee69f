//! Accepted owners: the guest accepts a header only from an owner it was told to accept (or
//! from any owner when told none), and never without the owner's valid signature. Also the
//! chunk cursor a receiver that stores chunks before opening them walks.

use alloc::vec::Vec;

use crate::tests::{MEASUREMENT, guest, owner, plaintext, seal_for, sealed, split_chunks};
use crate::{ChunkCursor, Header, OwnerKey, OwnerPublicKey, SealError, Unsealer, derive_guest_key};

#[test]
fn wrong_guest_and_owner_are_refused() {
    let file = sealed(9);
    let (header_bytes, _) = split_chunks(&file);
    let other_guest = derive_guest_key(&[8; 32], &MEASUREMENT);
    assert_eq!(
        Unsealer::new(&header_bytes, &other_guest, &[]).map(|_| ()),
        Err(SealError::NotARecipient {
            guest: other_guest.public()
        })
    );

    let stranger = OwnerKey::from_seed(&[10; 32]).public();
    assert_eq!(
        Unsealer::new(&header_bytes, &guest(), &[stranger]).map(|_| ()),
        Err(SealError::UnknownOwner {
            owner: owner().public()
        })
    );
    let accepted = [stranger, owner().public()];
    assert!(Unsealer::new(&header_bytes, &guest(), &accepted).is_ok());

    // Signed by another owner: refused where only ours is accepted.
    let forged = seal_for(
        &plaintext(9),
        &[guest().public()],
        &OwnerKey::from_seed(&[10; 32]),
    );
    let (forged_header, _) = split_chunks(&forged);
    assert_eq!(
        Unsealer::new(&forged_header, &guest(), &[owner().public()]).map(|_| ()),
        Err(SealError::UnknownOwner { owner: stranger })
    );
}

#[test]
fn accepting_an_owner_never_excuses_a_bad_signature() {
    let file = sealed(11);
    let (mut header_bytes, _) = split_chunks(&file);
    let n = header_bytes.len();
    header_bytes[n - 1] ^= 0x80; // the signature's last byte
    let ours = owner().public();
    for accepted in [&[][..], &[ours][..]] {
        assert_eq!(
            Unsealer::new(&header_bytes, &guest(), accepted).map(|_| ()),
            Err(SealError::BadSignature),
            "{} accepted",
            accepted.len()
        );
    }
    // A stranger's list refuses by owner first: a refused owner's signature is not checked.
    let stranger = OwnerKey::from_seed(&[10; 32]).public();
    assert_eq!(
        Unsealer::new(&header_bytes, &guest(), &[stranger]).map(|_| ()),
        Err(SealError::UnknownOwner { owner: ours })
    );
}

#[test]
fn the_unknown_owner_error_names_the_owner_and_the_unsealer_reports_it() {
    let ours = owner().public();
    let message = alloc::format!("{}", SealError::UnknownOwner { owner: ours });
    assert_eq!(
        message,
        alloc::format!("owner {ours} is not one of the accepted owners")
    );
    let (header_bytes, _) = split_chunks(&sealed(12));
    let unsealer = Unsealer::new(&header_bytes, &guest(), &[]).expect("any owner");
    assert_eq!(unsealer.owner(), ours);
    let fingerprint = alloc::format!("{}", ours.fingerprint());
    assert_eq!(fingerprint.len(), 16);
    assert!(alloc::format!("{ours}").starts_with(&fingerprint));
    let zero = OwnerPublicKey([0; 32]).fingerprint();
    assert_eq!(alloc::format!("{zero}"), "0000000000000000");
}

#[test]
fn a_chunk_cursor_walks_the_chunk_plan() {
    let (header_bytes, _) = split_chunks(&sealed(13));
    let (header, _) = Header::parse(&header_bytes).expect("parse");
    let mut cursor = ChunkCursor::default();
    let mut walked = Vec::new();
    while let Some(c) = cursor.peek(&header) {
        cursor.advance(&header, &c);
        walked.push(c);
    }
    assert_eq!(cursor.index(), header.chunk_count());
    assert_eq!(walked, header.chunk_plan().collect::<Vec<_>>());
}
