//! RFC 9605 Appendix C test vectors through Conclave's SFrame backend (AWS-LC natively).

use conclave_e2ee::media::{kid, split_kid, test_support};
use serde::Deserialize;
use sframe::frame::EncryptedFrameView;
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
        assert_eq!(
            hex::encode(&encoded),
            h.encoded,
            "kid {} ctr {}",
            h.kid,
            h.ctr
        );
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

        // Seal through the ring's framing with the vector's KID and counter: the output must
        // be `metadata | ct` exactly.
        let enc = test_support::encryption_key(cs, t.kid, &base_key);
        let out = test_support::seal_frame(&enc, t.ctr, &meta, &pt);
        assert_eq!(&out[..meta.len()], &meta[..]);
        assert_eq!(
            hex::encode(&out[meta.len()..]),
            t.ct,
            "suite {}",
            t.cipher_suite
        );

        // Open the vector's ciphertext.
        let dec = test_support::decryption_key(cs, t.kid, &base_key);
        assert_eq!(test_support::open_frame(&dec, &meta, &ct).unwrap(), pt);

        // The sframe crate's own frame API agrees (independent framing code).
        let view = EncryptedFrameView::try_with_meta_data(&ct, &meta).unwrap();
        let mut plain = Vec::new();
        assert_eq!(
            view.decrypt_into(&dec, &mut plain).unwrap().payload(),
            &pt[..]
        );

        // A flipped bit anywhere (metadata, header, ciphertext, tag) does not open.
        for pos in 0..ct.len() {
            let mut bad = ct.clone();
            bad[pos] ^= 1;
            assert!(
                test_support::open_frame(&dec, &meta, &bad).is_none(),
                "ct bit {pos}"
            );
        }
        let mut bad_meta = meta.clone();
        bad_meta[0] ^= 1;
        assert!(test_support::open_frame(&dec, &bad_meta, &ct).is_none());
    }
}

#[test]
fn kid_layout_is_context_index_epoch() {
    let k = kid(999, 0x1_0203);
    assert_eq!(k, (999 << 8) | 0x03);
    assert_eq!(split_kid(k), (0, 999, 0x03));
    assert_eq!(split_kid(k | (1 << 40)).0, 1 << 16);
}

#[test]
fn allocation_free_header_parser_agrees_with_the_sframe_crate() {
    use conclave_e2ee::media::parse_header;
    // Every RFC header vector.
    for h in vectors().header {
        let bytes = hex::decode(&h.encoded).unwrap();
        let p = parse_header(&bytes).unwrap();
        assert_eq!((p.kid, p.counter, p.len), (h.kid, h.ctr, bytes.len()));
    }
    // Every config byte with every length of following bytes, and random tails.
    let mut x: u64 = 0xdead_beef_cafe_f00d;
    for config in 0..=255u8 {
        for tail in 0..18usize {
            let mut bytes = vec![config];
            for _ in 0..tail {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8);
            }
            let ours = parse_header(&bytes);
            let theirs = SframeHeader::deserialize(&bytes).ok();
            match (ours, theirs) {
                (Some(o), Some(t)) => {
                    assert_eq!(
                        (o.kid, o.counter, o.len),
                        (t.key_id(), t.counter(), t.len()),
                        "{bytes:02x?}"
                    )
                }
                (None, None) => {}
                (o, t) => panic!("disagree on {bytes:02x?}: ours {o:?}, sframe {t:?}"),
            }
        }
    }
}
