//! MLS commit build / process at 10, 100 and 1,000 members on a filled tree (every member has
//! committed once), through Conclave's `Session` and through raw mls-rs doing the same
//! operation with the same crypto backend; and joining from a Welcome at 1,000 members with the
//! ratchet tree out of band. Commit sizes are printed (criterion does not record sizes).
//!
//! Run: `cargo bench -p conclave-e2ee --bench mls` (builds the 1,000-member trees first:
//! about a minute per stack on 2 cores).

use std::time::{Duration, Instant};

use conclave_e2ee::{
    CredentialInfo, Device, DeviceIdentity, GroupStore, RoomCipherSuite, RoomPolicy, Session,
    Timestamp,
};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use mls_rs::client_builder::MlsConfig;
use mls_rs::group::ExportedTree;
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::identity::SigningIdentity;
use mls_rs::mls_rules::{CommitOptions, DefaultMlsRules};
use mls_rs::{CipherSuiteProvider, Client, CryptoProvider, ExtensionList, Group, MlsMessage};
use mls_rs_crypto_awslc::AwsLcCryptoProvider;

const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);
const SUITE: RoomCipherSuite = RoomCipherSuite::Curve25519Aes128;
const SIZES: [usize; 3] = [10, 100, 1000];

fn device(name: &str) -> Device {
    Device::new(
        DeviceIdentity::generate(SUITE, CredentialInfo::new(name, name).unwrap()).unwrap(),
        GroupStore::memory(),
    )
    .unwrap()
}

/// Conclave: member i adds member i+1, so every member's path gets filled. Returns
/// (member 0, the last member), both current, after the last member's own self-update.
fn conclave_filled(n: usize) -> (Session, Session) {
    let started = Instant::now();
    let first = device("m0");
    let mut observer = first
        .create_room(RoomPolicy::open("bench"), None, T0)
        .unwrap();
    let mut last: Option<Session> = None;
    for i in 1..n {
        let joiner = device(&format!("m{i}"));
        let kp = joiner.key_package(None, T0).unwrap();
        let committer = last.as_mut().unwrap_or(&mut observer);
        let b = committer.commit(&[kp], &[], T0).unwrap();
        committer.confirm_commit().unwrap();
        if let Some(l) = last.as_mut() {
            let _ = l;
            observer.process(&b.commit, T0).unwrap();
        }
        last = Some(
            joiner
                .join("bench", &b.welcome.unwrap(), &b.ratchet_tree, T0)
                .unwrap(),
        );
    }
    let mut last = last.unwrap();
    let b = last.self_update(T0).unwrap();
    last.confirm_commit().unwrap();
    observer.process(&b.commit, T0).unwrap();
    eprintln!(
        "conclave filled tree of {n}: built in {:?}",
        started.elapsed()
    );
    (observer, last)
}

fn raw_client(name: &str) -> Client<impl MlsConfig> {
    let provider = AwsLcCryptoProvider::default();
    let cs = provider.cipher_suite_provider(SUITE.mls()).unwrap();
    let (secret, public) = cs.signature_key_generate().unwrap();
    let id = SigningIdentity::new(
        BasicCredential::new(name.as_bytes().to_vec()).into_credential(),
        public,
    );
    Client::builder()
        .identity_provider(BasicIdentityProvider)
        .crypto_provider(provider)
        .mls_rules(
            DefaultMlsRules::new().with_commit_options(
                CommitOptions::new()
                    .with_path_required(true)
                    .with_ratchet_tree_extension(false)
                    .with_always_out_of_band_ratchet_tree(true),
            ),
        )
        .signing_identity(id, secret, SUITE.mls())
        .build()
}

/// Raw mls-rs, same construction.
fn raw_filled(n: usize) -> (Group<impl MlsConfig>, Group<impl MlsConfig>) {
    let started = Instant::now();
    let first = raw_client("m0");
    let mut observer = first
        .create_group(ExtensionList::new(), ExtensionList::new(), None)
        .unwrap();
    let mut last = None;
    for i in 1..n {
        let joiner = raw_client(&format!("m{i}"));
        let kp = joiner
            .generate_key_package_message(ExtensionList::new(), ExtensionList::new(), None)
            .unwrap();
        let out = match last.as_mut() {
            Some(l) => {
                let out = Group::commit_builder(l)
                    .add_member(kp)
                    .unwrap()
                    .build()
                    .unwrap();
                l.apply_pending_commit().unwrap();
                observer
                    .process_incoming_message(out.commit_message().clone())
                    .unwrap();
                out
            }
            None => {
                let out = observer
                    .commit_builder()
                    .add_member(kp)
                    .unwrap()
                    .build()
                    .unwrap();
                observer.apply_pending_commit().unwrap();
                out
            }
        };
        let tree = out.ratchet_tree().unwrap().clone();
        let (g, _) = joiner
            .join_group(Some(tree), &out.welcome_messages()[0], None)
            .unwrap();
        last = Some(g);
    }
    let mut last = last.unwrap();
    let out = last.commit(vec![]).unwrap();
    last.apply_pending_commit().unwrap();
    observer
        .process_incoming_message(out.commit_message().clone())
        .unwrap();
    eprintln!(
        "raw mls-rs filled tree of {n}: built in {:?}",
        started.elapsed()
    );
    (observer, last)
}

fn bench_commits(c: &mut Criterion) {
    let mut build = c.benchmark_group("commit_build");
    build
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let mut states = Vec::new();
    for n in SIZES {
        let (ours_c, ours_p) = conclave_filled(n);
        let (raw_c, raw_p) = raw_filled(n);

        build.bench_function(BenchmarkId::new("conclave", n), |b| {
            b.iter_batched_ref(
                || ours_c.danger_clone(),
                |s| s.self_update(T0).unwrap(),
                BatchSize::SmallInput,
            )
        });
        build.bench_function(BenchmarkId::new("raw_mls_rs", n), |b| {
            b.iter_batched_ref(
                || raw_c.clone(),
                |g| {
                    g.commit(vec![])
                        .unwrap()
                        .commit_message()
                        .to_bytes()
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
        states.push((n, ours_c, ours_p, raw_c, raw_p));
    }
    build.finish();

    let mut process = c.benchmark_group("commit_process");
    process
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    for (n, ours_c, ours_p, raw_c, raw_p) in &states {
        let commit = ours_c.danger_clone().self_update(T0).unwrap().commit;
        let raw_commit = raw_c
            .clone()
            .commit(vec![])
            .unwrap()
            .commit_message()
            .clone();
        let raw_bytes = raw_commit.to_bytes().unwrap();
        println!(
            "commit size at {n} members (filled tree, self-update): conclave {} B, raw mls-rs {} B; ratchet tree {} B",
            commit.len(),
            raw_commit.to_bytes().unwrap().len(),
            ours_c.ratchet_tree().unwrap().len()
        );
        process.bench_function(BenchmarkId::new("conclave", n), |b| {
            b.iter_batched_ref(
                || ours_p.danger_clone(),
                |s| s.process(&commit, T0).unwrap(),
                BatchSize::SmallInput,
            )
        });
        process.bench_function(BenchmarkId::new("raw_mls_rs", n), |b| {
            b.iter_batched_ref(
                || raw_p.clone(),
                |g| {
                    g.process_incoming_message(MlsMessage::from_bytes(&raw_bytes).unwrap())
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    process.finish();

    // Joining from a Welcome at 1,000 members, the tree served out of band.
    let mut join = c.benchmark_group("join_from_welcome");
    join.sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let (_, ours_c, _, raw_c, _) = states.pop().unwrap();
    join.bench_function(BenchmarkId::new("conclave", 1000), |b| {
        b.iter_batched(
            || {
                let d = device("joiner");
                let kp = d.key_package(None, T0).unwrap();
                let bundle = ours_c.danger_clone().commit(&[kp], &[], T0).unwrap();
                (d, bundle)
            },
            |(d, bundle)| {
                d.join(
                    "bench",
                    bundle.welcome.as_ref().unwrap(),
                    &bundle.ratchet_tree,
                    T0,
                )
                .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    join.bench_function(BenchmarkId::new("raw_mls_rs", 1000), |b| {
        b.iter_batched(
            || {
                let d = raw_client("joiner");
                let kp = d
                    .generate_key_package_message(ExtensionList::new(), ExtensionList::new(), None)
                    .unwrap();
                let out = raw_c
                    .clone()
                    .commit_builder()
                    .add_member(kp)
                    .unwrap()
                    .build()
                    .unwrap();
                let tree: ExportedTree<'static> = out.ratchet_tree().unwrap().clone();
                let welcome: MlsMessage = out.welcome_messages()[0].clone();
                (d, tree, welcome)
            },
            |(d, tree, welcome)| d.join_group(Some(tree), &welcome, None).unwrap(),
            BatchSize::PerIteration,
        )
    });
    join.finish();
}

criterion_group!(benches, bench_commits);
criterion_main!(benches);
