//! RFC 9605 Appendix C test vectors through Conclave's SFrame backend (AWS-LC natively).

use conclave_e2ee::media::{split_kid, kid};
use serde::Deserialize;
use sframe::frame::{EncryptedFrameView, MediaFrameView, SingleUseCounter};
use sframe::header::SframeHeader;
use sframe::CipherSuite;

#[derive(Deserialize)]
struct Vectors {
    header: Vec<HeaderVector>,
    sframe: Vec<SframeVector>,
}

#[derive(Deserialize)]
struct HeaderVector {
    kid: u64,
    ctr: u64,
    encoded: String,
}

#[derive(Deserialize)]
struct SframeVector {
    cipher_suite: u16,
    kid: u64,
    ctr: u64,
    base_key: String,
    metadata: String,
    pt: String,
    ct: String,
}

fn vectors() -> Vectors {
    let text = include_str!("../test_data/rfc9605-vectors.json");
    serde_json::from_str(text).expect("vector file parses")
}

fn suite(id: u16) -> CipherSuite {
    match id {
        4 => CipherSuite::AesGcm128Sha256,
        5 => CipherSuite::AesGcm256Sha512,
        other => panic!("suite {other} not in Conclave's set"),
    }
}

#[test]
fn rfc9605_header_vectors_encode_and_parse() {
    let v = vectors();
    assert!(v.header.len() > 100);
    for h in v.header {
        let header = SframeHeader::new(h.kid, h.ctr);
        let encoded = Vec::from(&header);
        assert_eq!(hex::encode(&encoded), h.encoded, "kid {} ctr {}", h.kid, h.ctr);
        let parsed = SframeHeader::deserialize(&encoded).unwrap();
        assert_eq!((parsed.key_id(), parsed.counter()), (h.kid, h.ctr));
    }
}

#[test]
fn rfc9605_appendix_c_vectors_pass_for_aes_gcm_suites() {
    let v = vectors();
    assert_eq!(v.sframe.len(), 2, "both AES-GCM suites are covered");
    for t in v.sframe {
        let cs = suite(t.cipher_suite);
        let base_key = hex::decode(&t.base_key).unwrap();
        let meta = hex::decode(&t.metadata).unwrap();
        let pt = hex::decode(&t.pt).unwrap();
        let ct = hex::decode(&t.ct).unwrap();

        // Seal with the vector's KID and counter: output must be `metadata | ct` exactly.
        let enc = conclave_e2ee::media::test_support::encryption_key(cs, t.kid, &base_key);
        let mut counter = SingleUseCounter::new(t.ctr);
        let frame = MediaFrameView::try_with_meta_data(&mut counter, &pt, &meta).unwrap();
        let mut out = Vec::new();
        frame.encrypt_into(&enc, &mut out).unwrap();
        assert_eq!(&out[..meta.len()], &meta[..]);
        assert_eq!(hex::encode(&out[meta.len()..]), t.ct, "suite {}", t.cipher_suite);

        // Open the vector's ciphertext.
        let dec = conclave_e2ee::media::test_support::decryption_key(cs, t.kid, &base_key);
        let view = EncryptedFrameView::try_with_meta_data(&ct, &meta).unwrap();
        let mut plain = Vec::new();
        let opened = view.decrypt_into(&dec, &mut plain).unwrap();
        assert_eq!(opened.payload(), &pt[..]);

        // A flipped ciphertext bit does not open.
        let mut bad = ct.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let view = EncryptedFrameView::try_with_meta_data(&bad, &meta).unwrap();
        assert!(view.decrypt_into(&dec, &mut plain).is_err());
    }
}

#[test]
fn kid_layout_is_context_index_epoch() {
    let k = kid(999, 0x1_0203);
    assert_eq!(k, (999 << 8) | 0x03);
    assert_eq!(split_kid(k), (0, 999, 0x03));
    assert_eq!(split_kid(k | (1 << 40)).0, 1 << 16);
}
