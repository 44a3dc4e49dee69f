//! The answer, as numbered pieces sealed with AES-256-GCM under a key exported from the
//! request's HPKE context (`label::RESPONSE_KEY`, 32 bytes).
//!
//! A piece is `seq u64 LE || flags u8 || ciphertext || tag`; flags bit 0 marks the last
//! piece. The nonce is `seq u64 LE || flags || 0 0 0` and the AAD `label::PIECE_AAD || seq
//! u64 LE || flags`, so a piece cannot be moved, replayed or have its last mark changed.
//! The opener accepts pieces only in order from 0, none after the last, and
//! [`ResponseOpener::finish`] fails unless the last arrived: nothing can be dropped,
//! reordered, replayed or cut off unnoticed.

use alloc::vec::Vec;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};

use crate::{SessionError, TAG_BYTES, label};

/// Bytes before a piece's ciphertext: sequence number and flags.
pub const PIECE_HEADER_BYTES: usize = 9;
const LAST: u8 = 1;
const AAD_BYTES: usize = label::PIECE_AAD.len() + PIECE_HEADER_BYTES;

/// The response cipher from an HPKE exporter (`export(context, out)`).
pub(crate) fn response_cipher(
    export: impl FnOnce(&mut [u8]) -> Result<(), hpke::HpkeError>,
) -> Aes256Gcm {
    let mut key = [0u8; 32];
    export(&mut key).expect("32 bytes is far below HKDF-SHA256's export limit");
    Aes256Gcm::new(&key.into())
}

fn header(seq: u64, flags: u8) -> [u8; PIECE_HEADER_BYTES] {
    let mut h = [0u8; PIECE_HEADER_BYTES];
    h[..8].copy_from_slice(&seq.to_le_bytes());
    h[8] = flags;
    h
}

fn nonce_and_aad(head: &[u8; PIECE_HEADER_BYTES]) -> ([u8; 12], [u8; AAD_BYTES]) {
    let mut nonce = [0u8; 12];
    nonce[..PIECE_HEADER_BYTES].copy_from_slice(head);
    let mut aad = [0u8; AAD_BYTES];
    aad[..label::PIECE_AAD.len()].copy_from_slice(label::PIECE_AAD);
    aad[label::PIECE_AAD.len()..].copy_from_slice(head);
    (nonce, aad)
}

/// The guest's side: seals the answer piece by piece.
pub struct ResponseSealer {
    cipher: Aes256Gcm,
    next: u64,
    ended: bool,
}

impl core::fmt::Debug for ResponseSealer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ResponseSealer")
            .field("next", &self.next)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl ResponseSealer {
    pub(crate) fn new(cipher: Aes256Gcm) -> Self {
        Self {
            cipher,
            next: 0,
            ended: false,
        }
    }

    /// Seals the next piece; `last` marks the end of the answer (no piece may follow).
    pub fn seal(&mut self, text: &[u8], last: bool) -> Result<Vec<u8>, SessionError> {
        if self.ended {
            return Err(SessionError::ResponseEnded);
        }
        let head = header(self.next, if last { LAST } else { 0 });
        let (nonce, aad) = nonce_and_aad(&head);
        let mut piece = Vec::with_capacity(PIECE_HEADER_BYTES + text.len() + TAG_BYTES);
        piece.extend_from_slice(&head);
        piece.extend_from_slice(text);
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &aad,
                &mut piece[PIECE_HEADER_BYTES..],
            )
            .map_err(|_| SessionError::ResponseEnded)?;
        piece.extend_from_slice(&tag);
        self.next += 1;
        self.ended = last;
        Ok(piece)
    }

    /// Whether the last piece has been sealed.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

/// One opened piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedPiece {
    pub seq: u64,
    pub text: Vec<u8>,
    pub last: bool,
}

/// The client's side: opens the pieces of one answer, in order.
pub struct ResponseOpener {
    cipher: Aes256Gcm,
    next: u64,
    ended: bool,
}

impl core::fmt::Debug for ResponseOpener {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ResponseOpener")
            .field("next", &self.next)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl ResponseOpener {
    #[cfg(feature = "client")]
    pub(crate) fn new(cipher: Aes256Gcm) -> Self {
        Self {
            cipher,
            next: 0,
            ended: false,
        }
    }

    pub fn open(&mut self, piece: &[u8]) -> Result<OpenedPiece, SessionError> {
        let min = PIECE_HEADER_BYTES + TAG_BYTES;
        if piece.len() < min {
            return Err(SessionError::PieceShort {
                got: piece.len() as u64,
                min: min as u64,
            });
        }
        if self.ended {
            return Err(SessionError::PieceAfterEnd);
        }
        let mut head = [0u8; PIECE_HEADER_BYTES];
        head.copy_from_slice(&piece[..PIECE_HEADER_BYTES]);
        let seq = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let flags = head[8];
        if flags & !LAST != 0 {
            return Err(SessionError::PieceFlags { seq, flags });
        }
        if seq != self.next {
            return Err(SessionError::PieceOrder {
                expected: self.next,
                got: seq,
            });
        }
        let (nonce, aad) = nonce_and_aad(&head);
        let (body, tag) = piece[PIECE_HEADER_BYTES..].split_at(piece.len() - min);
        let mut text = body.to_vec();
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &aad,
                &mut text,
                Tag::from_slice(tag),
            )
            .map_err(|_| SessionError::PieceForged { seq })?;
        self.next += 1;
        let last = flags & LAST != 0;
        self.ended = last;
        Ok(OpenedPiece { seq, text, last })
    }

    /// Ok once the authenticated last piece has arrived; else the answer was cut off.
    pub fn finish(&self) -> Result<(), SessionError> {
        if self.ended {
            Ok(())
        } else {
            Err(SessionError::MissingEnd { pieces: self.next })
        }
    }

    /// Whether the last piece has arrived.
    pub fn ended(&self) -> bool {
        self.ended
    }
}
