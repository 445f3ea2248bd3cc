//! Random and mutated bytes into every decoder of the core: each returns a typed error (or,
//! for a mutation that happens to stay valid, a result), and none panics.

use crate::common;
use common::*;
use conclave_e2ee::*;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % (max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn mutate(&mut self, src: &[u8]) -> Vec<u8> {
        let mut v = src.to_vec();
        match self.next() % 4 {
            0 if !v.is_empty() => {
                let i = self.next() as usize % v.len();
                v[i] ^= 1 << (self.next() % 8);
            }
            1 if !v.is_empty() => v.truncate(self.next() as usize % v.len()),
            2 => {
                let i = if v.is_empty() {
                    0
                } else {
                    self.next() as usize % v.len()
                };
                v.insert(i, self.next() as u8);
            }
            _ if v.len() > 4 => {
                let i = self.next() as usize % (v.len() - 4);
                v[i..i + 4].copy_from_slice(&(self.next() as u32).to_be_bytes());
            }
            _ => {}
        }
        v
    }
}

#[test]
fn mls_intake_survives_random_and_mutated_messages() {
    let mut room = Room::open(3);
    let valid = room.s(0).self_update(T0).unwrap();
    room.s(0).discard_commit();
    let app = room.s(2).encrypt_application(b"roster check").unwrap();
    let proposal = room.s(2).propose_leave().unwrap();
    let epoch = room.s(1).epoch();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..2000 {
        let input = rng.bytes(512);
        let _ = room.s(1).process(&input, T0);
    }
    for src in [&valid.commit, &proposal, &app] {
        for _ in 0..500 {
            let m = rng.mutate(src);
            if m == *src {
                continue;
            }
            let _ = room.s(1).process(&m, T0);
        }
    }
    // Nothing was applied (a mutated commit that still verified would be a forgery).
    assert_eq!(room.s(1).epoch(), epoch);
    // And the genuine messages still work.
    room.s(1).process(&proposal, T0).unwrap();
}

#[test]
fn join_survives_random_and_mutated_welcomes_and_trees() {
    let mut room = Room::open(2);
    let joiner = device("joiner");
    let kp = joiner.key_package(None, T0).unwrap();
    let b = room.s(0).commit(&[kp], &[], T0).unwrap();
    room.s(0).confirm_commit().unwrap();
    let welcome = b.welcome.unwrap();
    let mut rng = Rng(42);
    for _ in 0..300 {
        let w = rng.mutate(&welcome);
        let t = rng.mutate(&b.ratchet_tree);
        let _ = joiner.join("room", &w, &b.ratchet_tree, T0);
        let _ = joiner.join("room", &welcome, &t, T0);
        let _ = joiner.join("room", &rng.bytes(256), &rng.bytes(256), T0);
    }
}

#[test]
fn frame_intake_survives_random_and_mutated_frames() {
    let mut room = Room::open(3);
    let mut a = room.media(0);
    let mut b = room.media(1);
    let mut rng = Rng(7);
    let mut wire = Vec::new();
    let mut out = Vec::new();
    let mut opened = 0;
    for i in 0..3000u32 {
        let frame: Vec<u8> = (0..(i % 300)).map(|j| (j * 31) as u8).collect();
        let clear = [ClearPrefix::None, ClearPrefix::Vp8, ClearPrefix::Fixed(4)][i as usize % 3];
        a.seal(&frame, clear, &mut wire).unwrap();
        let m = rng.mutate(&wire);
        if b.open(&m, clear, &mut out, T0).is_ok() {
            // Only an unchanged frame may open.
            assert_eq!(m, wire);
            opened += 1;
        }
        let _ = b.open(&rng.bytes(64), clear, &mut out, T0);
    }
    assert!(b.stats().rejected() > 2000);
    assert!(opened < 3000);
}

#[test]
fn small_decoders_survive_random_input() {
    let mut rng = Rng(99);
    let host = device("host");
    let invite = Invite::sign(
        host.identity(),
        "room",
        host.identity().fingerprint().unwrap(),
    )
    .unwrap()
    .to_bytes()
    .unwrap();
    let identity = host.identity().to_bytes().unwrap();
    for _ in 0..2000 {
        let _ = Invite::from_bytes(&rng.bytes(200));
        let _ = Invite::from_bytes(&rng.mutate(&invite));
        let _ = DeviceIdentity::from_bytes(&rng.bytes(200));
        let _ = DeviceIdentity::from_bytes(&rng.mutate(&identity));
        let text = String::from_utf8_lossy(&rng.bytes(100)).into_owned();
        let _ = TrustStore::from_text(&text);
        let _ = Fingerprint::from_hex(&text);
        let _ = MediaCrypto::peek(&rng.bytes(40), ClearPrefix::Vp8);
    }
}
