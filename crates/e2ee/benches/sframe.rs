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
    a.install_epoch(
        EpochSecrets::from_base_key(suite, 1, &base, 0, leaves.clone()),
        T0,
    )
    .unwrap();
    let mut b = MediaCrypto::default();
    b.install_epoch(EpochSecrets::from_base_key(suite, 1, &base, 1, leaves), T0)
        .unwrap();
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
        g.bench_with_input(
            BenchmarkId::new("raw_aes128gcm_awslc", size),
            &frame,
            |bch, f| {
                bch.iter(|| {
                    buf.clear();
                    buf.extend_from_slice(f);
                    n += 1;
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&n.to_be_bytes());
                    let tag = key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce),
                            Aad::from(&[0u8; 4]),
                            &mut buf,
                        )
                        .unwrap();
                    buf.extend_from_slice(tag.as_ref());
                })
            },
        );

        let (mut a, _) = ring(2);
        let mut out = Vec::with_capacity(size + 32);
        g.bench_with_input(
            BenchmarkId::new("conclave_sframe", size),
            &frame,
            |bch, f| bch.iter(|| a.seal(f, ClearPrefix::None, &mut out).unwrap()),
        );

        let key = sframe::key::EncryptionKey::derive_from(
            sframe::CipherSuite::AesGcm128Sha256,
            256u64,
            [7u8; 16],
        )
        .unwrap();
        let mut counter = MonotonicCounter::default();
        let mut out = Vec::with_capacity(size + 32);
        g.bench_with_input(
            BenchmarkId::new("sframe_crate_ring_backend", size),
            &frame,
            |bch, f| {
                bch.iter(|| {
                    let v = MediaFrameView::try_new(&mut counter, f).unwrap();
                    v.encrypt_into(&key, &mut out).unwrap();
                })
            },
        );
    }
    g.finish();
}

/// How many distinct sealed frames an open benchmark cycles through: enough that the input is
/// not one hot buffer, few enough (256 KiB) that both sides read from cache alike.
fn distinct(size: usize) -> usize {
    (256 * 1024 / size).clamp(8, 1024)
}

fn bench_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    for size in SIZES {
        let frame: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let k = distinct(size);
        g.throughput(Throughput::Bytes(size as u64));

        // Raw AEAD over k distinct sealed buffers.
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[1u8; 16]).unwrap());
        let sealed: Vec<([u8; 12], Vec<u8>)> = (0..k as u64)
            .map(|n| {
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                let mut s = frame.clone();
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&[0u8; 4]),
                        &mut s,
                    )
                    .unwrap();
                s.extend_from_slice(tag.as_ref());
                (nonce, s)
            })
            .collect();
        let mut buf = Vec::with_capacity(size + 16);
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("raw_aes128gcm_awslc", size), |bch| {
            bch.iter(|| {
                let (nonce, s) = &sealed[i % k];
                i += 1;
                buf.clear();
                buf.extend_from_slice(s);
                key.open_in_place(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(&[0u8; 4]),
                    &mut buf,
                )
                .unwrap();
            })
        });

        // Our ring over k distinct frames; the replay state is reset after each pass (keys kept).
        let (mut a, mut b) = ring(2);
        let frames: Vec<Vec<u8>> = (0..k)
            .map(|_| {
                let mut w = Vec::new();
                a.seal(&frame, ClearPrefix::None, &mut w).unwrap();
                w
            })
            .collect();
        let mut i = 0usize;
        let mut out = Vec::with_capacity(size + 32);
        g.bench_function(BenchmarkId::new("conclave_sframe", size), |bch| {
            bch.iter(|| {
                if i == k {
                    b.danger_reset_replay_windows();
                    i = 0;
                }
                b.open(&frames[i], ClearPrefix::None, &mut out, T0).unwrap();
                i += 1;
            })
        });

        let key = sframe::key::EncryptionKey::derive_from(
            sframe::CipherSuite::AesGcm128Sha256,
            256u64,
            [7u8; 16],
        )
        .unwrap();
        let dkey = sframe::key::DecryptionKey::derive_from(
            sframe::CipherSuite::AesGcm128Sha256,
            256u64,
            [7u8; 16],
        )
        .unwrap();
        let mut counter = MonotonicCounter::default();
        let wires: Vec<Vec<u8>> = (0..k)
            .map(|_| {
                MediaFrameView::try_new(&mut counter, &frame)
                    .unwrap()
                    .encrypt(&key)
                    .unwrap()
                    .as_ref()
                    .to_vec()
            })
            .collect();
        let mut i = 0usize;
        let mut out = Vec::with_capacity(size + 32);
        g.bench_function(BenchmarkId::new("sframe_crate_ring_backend", size), |bch| {
            bch.iter(|| {
                let v = EncryptedFrameView::try_from(&wires[i % k][..]).unwrap();
                i += 1;
                v.decrypt_into(&dkey, &mut out).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_seal, bench_open);
criterion_main!(benches);
