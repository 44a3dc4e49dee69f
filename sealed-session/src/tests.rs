//! The protocol end to end in one process: a client seals, a guest opens and answers, the
//! client opens the answer; then every tampering the spec promises to catch.

use alloc::vec::Vec;

use sealed_model::GuestPublicKey;

use crate::*;

const ROOT: [u8; 32] = [7; 32];
const MEASUREMENT: [u8; 32] = [9; 32];

fn rng() -> impl rand_core::CryptoRng {
    OsRng.unwrap_err()
}

fn exchange(binding: &[u8]) -> (ResponseSealer, ResponseOpener, Vec<u8>) {
    let key = derive_session_key(&ROOT, &MEASUREMENT);
    let (request, opener) =
        seal_request(&key.public(), binding, b"secret prompt", &mut rng()).expect("seal");
    assert!(
        !request.ciphertext.windows(6).any(|w| w == b"secret"),
        "the content is not in the clear"
    );
    let wire = request.to_bytes();
    let (content, sealer) =
        open_request(&key, &SealedRequest::from_bytes(&wire).unwrap(), binding).expect("open");
    (sealer, opener, content)
}

#[test]
fn a_request_and_its_answer_round_trip() {
    let (mut sealer, mut opener, content) = exchange(b"model=m;t=0");
    assert_eq!(content, b"secret prompt");
    let pieces = [
        sealer.seal(b"Hello", false).unwrap(),
        sealer.seal(b", world", false).unwrap(),
        sealer.seal(b"", true).unwrap(),
    ];
    assert!(
        sealer.seal(b"more", false).is_err(),
        "nothing after the last piece"
    );
    let text: Vec<u8> = pieces
        .iter()
        .flat_map(|p| opener.open(p).expect("open piece").text)
        .collect();
    assert_eq!(text, b"Hello, world");
    opener.finish().expect("ended");
}

#[test]
fn a_changed_binding_or_another_guest_key_does_not_open() {
    let key = derive_session_key(&ROOT, &MEASUREMENT);
    let (request, _) = seal_request(&key.public(), b"max_tokens=5", b"hi", &mut rng()).unwrap();
    assert_eq!(
        open_request(&key, &request, b"max_tokens=500").unwrap_err(),
        SessionError::RequestOpen
    );
    let other_image = derive_session_key(&ROOT, &[8; 32]);
    assert_ne!(other_image.public(), key.public());
    assert_eq!(
        open_request(&other_image, &request, b"max_tokens=5").unwrap_err(),
        SessionError::RequestOpen
    );
    let mut flipped = request.clone();
    flipped.ciphertext[0] ^= 1;
    assert_eq!(
        open_request(&key, &flipped, b"max_tokens=5").unwrap_err(),
        SessionError::RequestOpen
    );
    assert!(matches!(
        SealedRequest::from_bytes(&[0; 40]),
        Err(SessionError::RequestShort { got: 40, .. })
    ));
    open_request(&key, &request, b"max_tokens=5").expect("the untouched request opens");
}

#[test]
fn tampered_pieces_are_refused() {
    // A piece of another answer (another HPKE context) never opens here.
    let (mut other_sealer, _, _) = exchange(b"b");
    let foreign = other_sealer.seal(b"one", false).unwrap();
    let (mut sealer, mut opener, _) = exchange(b"b");
    assert_eq!(
        opener.open(&foreign),
        Err(SessionError::PieceForged { seq: 0 })
    );

    let p0 = sealer.seal(b"one", false).unwrap();
    let p1 = sealer.seal(b"two", false).unwrap();
    let p2 = sealer.seal(b"", true).unwrap();
    let mut flipped = p1.clone();
    flipped[PIECE_HEADER_BYTES] ^= 0x80;
    let mut marked_last = p1.clone();
    marked_last[8] = 1;
    opener.open(&p0).unwrap();
    assert_eq!(
        opener.open(&flipped),
        Err(SessionError::PieceForged { seq: 1 })
    );
    assert_eq!(
        opener.open(&marked_last),
        Err(SessionError::PieceForged { seq: 1 })
    );
    // Dropped (2 where 1 belongs), replayed (0 again).
    assert_eq!(
        opener.open(&p2),
        Err(SessionError::PieceOrder {
            expected: 1,
            got: 2
        })
    );
    assert_eq!(
        opener.open(&p0),
        Err(SessionError::PieceOrder {
            expected: 1,
            got: 0
        })
    );
    // Cut off: no end yet.
    assert_eq!(opener.finish(), Err(SessionError::MissingEnd { pieces: 1 }));
    opener.open(&p1).unwrap();
    opener.open(&p2).unwrap();
    opener.finish().unwrap();
    assert_eq!(opener.open(&p2), Err(SessionError::PieceAfterEnd));
    assert!(matches!(
        opener.open(&p2[..10]),
        Err(SessionError::PieceShort { got: 10, .. })
    ));
}

#[test]
fn statements_verify_and_edits_are_caught() {
    let statement = GuestStatement {
        session_key: derive_session_key(&ROOT, &MEASUREMENT).public(),
        sealing_key: GuestPublicKey(
            sealed_model::derive_guest_key(&ROOT, &MEASUREMENT)
                .public()
                .0,
        ),
        measurement: MEASUREMENT,
        isolation: Isolation::PrivateMemory,
        key_root: KeyRootKind::Development,
    };
    let signed = SignedStatement::sign(statement, &derive_attestation_key(&ROOT));
    let bytes = signed.encode();
    assert_eq!(SignedStatement::decode(&bytes).unwrap(), signed);
    assert_eq!(
        derive_attestation_key(&ROOT).public(),
        signed.attestation_key,
        "the attestation key depends on the root alone"
    );
    for at in [9, 50, 80, 104, STATEMENT_BYTES + 40] {
        let mut edited = bytes;
        edited[at] ^= 1;
        assert!(SignedStatement::decode(&edited).is_err(), "edit at {at}");
    }
    let mut wrong_magic = bytes;
    wrong_magic[0] = b'X';
    assert_eq!(
        SignedStatement::decode(&wrong_magic),
        Err(SessionError::StatementMagic)
    );
    assert!(SignedStatement::decode(&bytes[..10]).is_err());
    assert_eq!(
        Isolation::from_name("private-memory"),
        Some(Isolation::PrivateMemory)
    );
}
