//! SFrame seal/open through Conclave's key ring, beside raw AES-128-GCM from the same crypto
//! library (AWS-LC) on the same sizes, and beside the `sframe` crate's default `ring` backend.
//!
//! Run: `cargo bench -p conclave-e2ee --bench sframe`

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use conclave_e2ee::{ClearPrefix, EpochSecrets, MediaCrypto, RoomCipherSuite, Timestamp};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};

const SIZES: [usize; 3] = [100, 1200, 30_000];
const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn ring(members: u32) -> (MediaCrypto, MediaCrypto) {
    let base = [7u8; 16];
    let suite = RoomCipherSuite::Curve25519Aes128;
    let leaves: Vec<u32> = (0..members).collect();
    let mut a = MediaCrypto::default();
    a.install_epoch(EpochSecrets::from_base_key(suite, 1, &base, 0, leaves.clone()), T0).unwrap();
    let mut b = MediaCrypto::default();
    b.install_epoch(EpochSecrets::from_base_key(suite, 1, &base, 1, leaves), T0).unwrap();
    (a, b)
}

fn bench_seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    for size in SIZES {
        let frame: Vec<u8> = (0..size).map(|i| i as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));

        // Raw AEAD: copy the frame into a buffer (as any in-place API must) and seal it.
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[1u8; 16]).unwrap());
        let mut buf = Vec::with_capacity(size + 16);
        let mut n: u64 = 0;
        g.bench_with_input(BenchmarkId::new("raw_aes128gcm_awslc", size), &frame, |bch, f| {
            bch.iter(|| {
                buf.clear();
                buf.extend_from_slice(f);
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                let tag = key
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&[0u8; 4]), &mut buf)
                    .unwrap();
                buf.extend_from_slice(tag.as_ref());
            })
        });

        let (mut a, _) = ring(2);
        let mut out = Vec::with_capacity(size + 32);
        g.bench_with_input(BenchmarkId::new("conclave_sframe", size), &frame, |bch, f| {
            bch.iter(|| a.seal(f, ClearPrefix::None, &mut out).unwrap())
        });

        let key = sframe::key::EncryptionKey::derive_from(sframe::CipherSuite::AesGcm128Sha256, 256u64, [7u8; 16]).unwrap();
        let mut counter = MonotonicCounter::default();
        let mut out = Vec::with_capacity(size + 32);
        g.bench_with_input(BenchmarkId::new("sframe_crate_ring_backend", size), &frame, |bch, f| {
            bch.iter(|| {
                let v = MediaFrameView::try_new(&mut counter, f).unwrap();
                v.encrypt_into(&key, &mut out).unwrap();
            })
        });
    }
    g.finish();
}

fn bench_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    for size in SIZES {
        let frame: Vec<u8> = (0..size).map(|i| i as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));

        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[1u8; 16]).unwrap());
        let nonce = [3u8; 12];
        let mut sealed = frame.clone();
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&[0u8; 4]), &mut sealed)
            .unwrap();
        sealed.extend_from_slice(tag.as_ref());
        let mut buf = Vec::with_capacity(size + 16);
        g.bench_with_input(BenchmarkId::new("raw_aes128gcm_awslc", size), &sealed, |bch, s| {
            bch.iter(|| {
                buf.clear();
                buf.extend_from_slice(s);
                key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&[0u8; 4]), &mut buf)
                    .unwrap();
            })
        });

        // Our ring: a fresh counter per iteration so the replay window accepts every frame.
        let (mut a, mut b) = ring(2);
        let frames: Vec<Vec<u8>> = (0..4096)
            .map(|_| {
                let mut w = Vec::new();
                a.seal(&frame, ClearPrefix::None, &mut w).unwrap();
                w
            })
            .collect();
        let mut i = 0usize;
        let mut out = Vec::with_capacity(size + 32);
        g.bench_with_input(BenchmarkId::new("conclave_sframe", size), &frames, |bch, fs| {
            bch.iter(|| {
                if i == fs.len() {
                    // Re-key to reset the replay window (not measured often: once per 4096).
                    let (na, nb) = ring(2);
                    let _ = na;
                    b = nb;
                    i = 0;
                }
                b.open(&fs[i], ClearPrefix::None, &mut out, T0).unwrap();
                i += 1;
            })
        });

        let key = sframe::key::EncryptionKey::derive_from(sframe::CipherSuite::AesGcm128Sha256, 256u64, [7u8; 16]).unwrap();
        let dkey = sframe::key::DecryptionKey::derive_from(sframe::CipherSuite::AesGcm128Sha256, 256u64, [7u8; 16]).unwrap();
        let mut counter = MonotonicCounter::default();
        let enc = MediaFrameView::try_new(&mut counter, &frame).unwrap().encrypt(&key).unwrap();
        let wire = enc.as_ref().to_vec();
        let mut out = Vec::with_capacity(size + 32);
        g.bench_with_input(BenchmarkId::new("sframe_crate_ring_backend", size), &wire, |bch, w| {
            bch.iter(|| {
                let v = EncryptedFrameView::try_from(&w[..]).unwrap();
                v.decrypt_into(&dkey, &mut out).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_seal, bench_open);
criterion_main!(benches);
