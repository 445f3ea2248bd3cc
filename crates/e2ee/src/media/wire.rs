//! The SFrame wire format (RFC 9605 section 4): the header, and the framing around the
//! `sframe` crate's AEAD.

use sframe::crypto::{DecryptionBufferView, EncryptionBufferView};
use sframe::header::SframeHeader;

use super::FrameError;
use crate::sframe_backend::{DecryptionKey, EncryptionKey};

/// A parsed SFrame header (RFC 9605 section 4.3): KID, counter, and its length on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedHeader {
    /// Key id.
    pub kid: u64,
    /// Frame counter.
    pub counter: u64,
    /// Header length in bytes.
    pub len: usize,
}

/// Parses an SFrame header without allocating. `sframe`'s own parser collects each variable
/// length field into a `Vec`, two allocations per frame on the receive path; this one reads
/// the same format (differential-tested against it in `rfc9605_vectors`).
///
/// Config byte: `X KKK Y CCC`. With `X` clear, `KKK` is the KID; with `X` set, `KKK + 1` bytes
/// of big-endian KID follow. Likewise `Y`/`CCC` for the counter, after the KID bytes.
pub fn parse_header(bytes: &[u8]) -> Option<ParsedHeader> {
    let (&config, rest) = bytes.split_first()?;
    let field = |extended: bool, small: u8, at: &[u8]| -> Option<(u64, usize)> {
        if !extended {
            return Some((u64::from(small), 0));
        }
        let n = usize::from(small) + 1;
        let b = at.get(..n)?;
        Some((b.iter().fold(0u64, |v, x| (v << 8) | u64::from(*x)), n))
    };
    let (kid, klen) = field(config & 0x80 != 0, (config >> 4) & 0x07, rest)?;
    let (counter, clen) = field(config & 0x08 != 0, config & 0x07, rest.get(klen..)?)?;
    Some(ParsedHeader {
        kid,
        counter,
        len: 1 + klen + clen,
    })
}

/// RFC 9605 section 4.4.3 framing around the `sframe` crate's AEAD: writes
/// `meta | header | ciphertext | tag` into `out` with AAD `header | meta`, sealing in place
/// (one copy of the payload, no zero-filling). `aad` is scratch space.
pub(super) fn seal_frame(
    key: &EncryptionKey,
    counter: u64,
    meta: &[u8],
    payload: &[u8],
    aad: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let header = SframeHeader::new(key.key_id(), counter);
    let hlen = header.len();
    let tag_len = key.cipher_suite().auth_tag_len();
    aad.clear();
    aad.resize(hlen, 0);
    header
        .serialize(&mut aad[..])
        .map_err(|_| FrameError::Encryption)?;
    aad.extend_from_slice(meta);

    out.clear();
    out.reserve(meta.len() + hlen + payload.len() + tag_len);
    out.extend_from_slice(meta);
    out.extend_from_slice(&aad[..hlen]);
    out.extend_from_slice(payload);
    out.resize(out.len() + tag_len, 0);
    let (data, tag) = out[meta.len() + hlen..].split_at_mut(payload.len());
    key.encrypt(
        EncryptionBufferView {
            aad: &mut aad[..],
            data,
            tag,
        },
        counter,
    )
    .map_err(|_| FrameError::Encryption)
}

/// The inverse of [`seal_frame`]: `rest` is `header | ciphertext | tag` (the header already
/// parsed as `header`); `out` receives `meta | plaintext`, decrypted in place.
pub(super) fn open_frame(
    key: &DecryptionKey,
    header: &ParsedHeader,
    meta: &[u8],
    rest: &[u8],
    aad: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    let hlen = header.len;
    let tag_len = key.cipher_suite().auth_tag_len();
    let (header_bytes, body) = rest.split_at(hlen.min(rest.len()));
    if body.len() < tag_len {
        return Err(());
    }
    aad.clear();
    aad.extend_from_slice(header_bytes);
    aad.extend_from_slice(meta);
    out.clear();
    out.reserve(meta.len() + body.len());
    out.extend_from_slice(meta);
    out.extend_from_slice(body);
    key.decrypt(
        DecryptionBufferView {
            aad: &mut aad[..],
            data: &mut out[meta.len()..],
        },
        header.counter,
    )
    .map_err(|_| ())?;
    out.truncate(out.len() - tag_len);
    Ok(())
}
