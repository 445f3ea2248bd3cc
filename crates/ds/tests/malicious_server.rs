//! A malicious server around an honest delivery-service core: it rewrites, withholds, replays
//! or invents what the server sends, and the real participant cores (the same code as the
//! native client and, through WebAssembly, the browser) must not let it steer who gets in.
//! Each test is named after what it proves.

use conclave_sim::membership::*;
use std::time::Duration;

fn knock_of(net: &Net, host: ConnId, user: &str) -> (KnockId, conclave_e2ee::Fingerprint) {
    net.events_of(host)
        .iter()
        .find_map(|e| match e {
            Event::Knock {
                knock,
                user_id,
                fingerprint,
                ..
            } if user_id == user => Some((*knock, *fingerprint)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no knock from {user}: {:?}", net.events_of(host)))
}

/// Panics unless `conn` raised an alarm containing `needle` (and shows the ones it raised).
#[track_caller]
fn expect_alarm(net: &Net, conn: ConnId, needle: &str) {
    let raised = alarms(net, conn);
    assert!(
        raised.iter().any(|a| a.contains(needle)),
        "{needle:?} not in {raised:?}"
    );
}

fn alarms(net: &Net, conn: ConnId) -> Vec<String> {
    net.events_of(conn)
        .iter()
        .filter_map(|e| match e {
            Event::Alarm { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn assert_no_alarms(net: &Net, conn: ConnId) {
    let alarms = alarms(net, conn);
    assert!(alarms.is_empty(), "conn {conn}: {alarms:?}");
}

/// `user` connects on `conn` and knocks with `key_package`, whatever its bytes.
fn knock_raw(net: &mut Net, conn: ConnId, user: &str, key_package: Vec<u8>) {
    net.ds.connect(conn, "room", user, net.now);
    let msg = MembershipMsg::KeyPackage {
        key_package: Bytes(key_package),
    };
    net.ds.handle(conn, msg, net.now);
}

fn lobby_with_knock() -> (Net, KnockId, conclave_e2ee::Fingerprint) {
    let mut net = Net::new();
    net.join(ConnId(1), "host", NewRoomPolicy::Lobby, AdmitMode::Ask);
    net.join(ConnId(2), "bob", NewRoomPolicy::Open, AdmitMode::Ask);
    let (knock, fp) = knock_of(&net, ConnId(1), "bob");
    (net, knock, fp)
}

#[test]
fn server_cannot_swap_the_keypackage_of_an_approved_knock() {
    let (mut net, knock, bob_fp) = lobby_with_knock();
    // A device of the server's, presenting itself as bob.
    let mallory = device("bob");
    let mallory_fp = mallory.identity().fingerprint().unwrap();
    let mallory_kp = Bytes(mallory.key_package(None, net.now).unwrap());
    // From now on, every commit request the host gets carries mallory's KeyPackage under
    // the knock numbers the host was shown.
    let swap = mallory_kp.clone();
    net.rewrite.insert(
        ConnId(1),
        Box::new(move |m| match m {
            ServerMsg::CommitRequest { epoch, knocks } => vec![ServerMsg::CommitRequest {
                epoch,
                knocks: knocks
                    .into_iter()
                    .map(|k| KnockInfo {
                        key_package: swap.clone(),
                        ..k
                    })
                    .collect(),
            }],
            m => vec![m],
        }),
    );
    let now = net.now;
    net.p(ConnId(1)).admit(knock, now).unwrap();
    net.settle();
    let roster = net.p(ConnId(1)).roster();
    assert!(roster.iter().any(|e| e.fingerprint == bob_fp), "{roster:?}");
    assert!(roster.iter().all(|e| e.fingerprint != mallory_fp));

    // Later, the server asks again under bob's answered knock number, with mallory's
    // KeyPackage: the approval was for bob's KeyPackage, once, and is spent.
    let epoch = net.p(ConnId(1)).epoch().unwrap();
    net.deliver(
        ConnId(1),
        ServerMsg::CommitRequest {
            epoch,
            knocks: vec![KnockInfo {
                knock,
                user_id: "bob".into(),
                name: "bob".into(),
                key_package: mallory_kp,
            }],
        },
    );
    let sent: Vec<MembershipMsg> =
        std::iter::from_fn(|| net.p(ConnId(1)).poll_transmit()).collect();
    assert!(
        !sent
            .iter()
            .any(|m| matches!(m, MembershipMsg::Commit { .. })),
        "the host committed a KeyPackage nobody approved: {sent:?}"
    );
    assert_eq!(net.p(ConnId(1)).member_count(), 2);
}

#[test]
fn a_knock_shows_who_its_keypackage_names_not_what_the_server_says() {
    let mut net = Net::new();
    net.join(ConnId(1), "host", NewRoomPolicy::Lobby, AdmitMode::Ask);
    // The server tells the host that "Dr. Alice" knocks; the KeyPackage is bob's.
    net.rewrite.insert(
        ConnId(1),
        Box::new(|m| match m {
            ServerMsg::Knock { knock } => vec![ServerMsg::Knock {
                knock: KnockInfo {
                    user_id: "alice".into(),
                    name: "Dr. Alice".into(),
                    ..knock
                },
            }],
            m => vec![m],
        }),
    );
    net.join(ConnId(2), "bob", NewRoomPolicy::Open, AdmitMode::Ask);
    let shown: Vec<_> = net
        .events_of(ConnId(1))
        .iter()
        .filter_map(|e| match e {
            Event::Knock { user_id, name, .. } => Some((user_id.clone(), name.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(shown, vec![("bob".to_owned(), "bob".to_owned())]);
    assert_eq!(net.p(ConnId(1)).pending_knocks()[0].name, "bob");
    expect_alarm(&net, ConnId(1), "Dr. Alice");
}

#[test]
fn a_non_host_asked_to_commit_in_a_lobby_adds_nobody() {
    let (mut net, knock, _) = lobby_with_knock();
    let now = net.now;
    net.p(ConnId(1)).admit(knock, now).unwrap();
    net.settle();
    assert_eq!(net.ds.member_count("room"), 2);
    // Carol knocks; the server asks bob (no host) to commit her add.
    net.join(ConnId(3), "carol", NewRoomPolicy::Open, AdmitMode::Ask);
    let carol = net.seen[&ConnId(1)]
        .iter()
        .find_map(|m| match m {
            ServerMsg::Knock { knock } if knock.user_id == "carol" => Some(knock.clone()),
            _ => None,
        })
        .unwrap();
    let epoch = net.p(ConnId(2)).epoch().unwrap();
    net.deliver(
        ConnId(2),
        ServerMsg::CommitRequest {
            epoch,
            knocks: vec![carol],
        },
    );
    let sent: Vec<MembershipMsg> =
        std::iter::from_fn(|| net.p(ConnId(2)).poll_transmit()).collect();
    for m in &sent {
        if let MembershipMsg::Commit { welcome, .. } = m {
            assert!(welcome.is_none(), "a non-host admitted carol");
        }
    }
    // Not an error on its part: no alarm.
    net.pump();
    assert_no_alarms(&net, ConnId(2));
}

#[test]
fn a_forged_or_expired_keypackage_is_refused_at_the_knock_and_blocks_no_one() {
    let mut net = open_room(1);
    // Eve's KeyPackage with a broken signature (its last byte is the signature's).
    let eve = device("eve");
    let mut forged = eve.key_package(None, net.now).unwrap();
    *forged.last_mut().unwrap() ^= 1;
    knock_raw(&mut net, ConnId(5), "eve", forged);
    // Fred's expired one (made two days ago, valid for one).
    let fred = device("fred");
    let old = Timestamp::from_millis(net.now.as_millis() - 2 * 24 * 3600 * 1000);
    let expired = fred.key_package(None, old).unwrap();
    knock_raw(&mut net, ConnId(6), "fred", expired);
    // And one far over the size limit.
    knock_raw(
        &mut net,
        ConnId(7),
        "gus",
        vec![0; conclave_e2ee::MAX_KEY_PACKAGE_LEN + 1],
    );
    net.join(ConnId(2), "bob", NewRoomPolicy::Open, AdmitMode::Auto);
    net.settle();
    assert_eq!(net.ds.member_count("room"), 2, "bob got in");
    for (conn, why) in [
        (ConnId(5), "invalid KeyPackage"),
        (ConnId(6), "invalid KeyPackage"),
        (ConnId(7), "limit"),
    ] {
        assert!(
            net.seen[&conn].iter().any(|m| matches!(
                m,
                ServerMsg::Error { code: ErrorCode::Rejected, reason } if reason.contains(why)
            )),
            "conn {conn}: {:?}",
            net.seen[&conn]
        );
    }
    // Only bob's knock ever reached the committer.
    let requested: usize = net.seen[&ConnId(1)]
        .iter()
        .map(|m| match m {
            ServerMsg::CommitRequest { knocks, .. } => knocks.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(requested, 1);
    assert_no_alarms(&net, ConnId(1));
}

#[test]
fn commit_requests_are_bounded_in_bytes_and_everyone_still_gets_in() {
    let budget = 900;
    let mut net = Net::with_config(DsConfig {
        max_request_bytes: budget,
        ..DsConfig::default()
    });
    net.join(ConnId(1), "user1", NewRoomPolicy::Open, AdmitMode::Auto);
    for i in 2..=6 {
        net.connect_quietly(ConnId(i), &format!("user{i}"));
    }
    for _ in 0..10 {
        net.advance(Duration::from_secs(1));
    }
    assert_eq!(net.ds.member_count("room"), 6);
    let requests: Vec<usize> = net
        .seen
        .values()
        .flatten()
        .filter_map(|m| match m {
            ServerMsg::CommitRequest { knocks, .. } if !knocks.is_empty() => {
                Some(knocks.iter().map(|k| k.key_package.0.len()).sum())
            }
            _ => None,
        })
        .collect();
    assert!(requests.len() > 1, "{requests:?}");
    assert!(requests.iter().all(|&b| b <= budget), "{requests:?}");
}

#[test]
fn early_knocks_are_one_per_connection_and_a_silent_creator_is_replaced() {
    let mut net = Net::new();
    // Conn 1 is asked to create the group and never does.
    net.ds.connect(ConnId(1), "room", "lazy", net.now);
    net.pump();
    // Bob knocks before the group exists, twice.
    net.join(ConnId(2), "bob", NewRoomPolicy::Open, AdmitMode::Auto);
    let bob = device("bob");
    let kp = bob.key_package(None, net.now).unwrap();
    net.ds.handle(
        ConnId(2),
        MembershipMsg::KeyPackage {
            key_package: Bytes(kp),
        },
        net.now,
    );
    net.pump();
    net.expect_refused(ConnId(2), "already knocked");
    // After the creation timeout the silent creator is let go and bob creates the room.
    net.advance(DsConfig::default().create_timeout);
    net.settle();
    assert!(
        net.closed.contains(&ConnId(1)),
        "the silent creator was not let go"
    );
    assert_eq!(net.ds.member_count("room"), 1);
    assert!(net.p(ConnId(2)).epoch().is_some(), "bob never got the room");
}

#[test]
fn the_ds_says_a_connection_is_a_member_only_while_it_is_one() {
    let mut net = open_room(2);
    assert_eq!(net.members, vec![ConnId(1), ConnId(2)]);
    // A token holder that never knocks is no member (the SFU serves it nothing).
    net.ds.connect(ConnId(9), "room", "lurker", net.now);
    net.settle();
    assert!(!net.members.contains(&ConnId(9)));
    // A member that leaves stops being one when its removal is committed.
    net.p(ConnId(2)).leave().unwrap();
    net.settle();
    assert_eq!(net.members, vec![ConnId(1)]);
}

#[test]
fn a_member_cannot_add_a_device_that_never_knocked() {
    let mut net = open_room(2);
    let epoch = net.ds.epoch("room").unwrap();
    // Member 2 (modified software) commits the add of a device no token named.
    let ghost = device("ghost");
    let kp = ghost.key_package(None, net.now).unwrap();
    net.danger_commit(ConnId(2), &[kp]);
    net.pump();
    net.expect_commit_rejected(ConnId(2), "did not knock");
    assert_eq!(net.ds.epoch("room"), Some(epoch));
    assert_eq!(net.ds.member_count("room"), 2);
    // The room goes on: the next commit (a self-update) is accepted.
    net.p(ConnId(2))
        .danger_session_mut()
        .unwrap()
        .discard_commit();
    let now = net.now;
    net.p(ConnId(1)).self_update(now).unwrap();
    net.settle();
    assert_eq!(net.ds.epoch("room"), Some(epoch + 1));
}

#[test]
fn a_connection_cannot_carry_another_members_commit() {
    let mut net = open_room(3);
    let epoch = net.ds.epoch("room").unwrap();
    // Member 1's commit, sent on member 2's connection.
    let now = net.now;
    let bundle = net
        .p(ConnId(1))
        .danger_session_mut()
        .unwrap()
        .self_update(now)
        .unwrap();
    net.ds.handle(
        ConnId(2),
        MembershipMsg::Commit {
            epoch,
            commit: Bytes(bundle.commit),
            welcome: None,
        },
        now,
    );
    net.pump();
    net.expect_commit_rejected(ConnId(2), "sending member");
    assert_eq!(net.ds.epoch("room"), Some(epoch));
}

#[test]
fn a_member_cannot_freeze_the_room_with_an_add_proposal_by_reference() {
    let mut net = open_room(2);
    let epoch = net.ds.epoch("room").unwrap();
    let ghost = device("ghost");
    let kp = ghost.key_package(None, net.now).unwrap();
    let proposal = net
        .p(ConnId(2))
        .danger_session_mut()
        .unwrap()
        .danger_propose_add(&kp)
        .unwrap();
    let now = net.now;
    net.ds.handle(
        ConnId(2),
        MembershipMsg::Proposal {
            proposal: Bytes(proposal),
        },
        now,
    );
    net.settle();
    net.expect_refused(ConnId(2), "only propose its own removal");
    // Not cached, not relayed: the room goes on and admits people.
    assert!(!net.seen[&ConnId(1)]
        .iter()
        .any(|m| matches!(m, ServerMsg::Proposal { .. })));
    net.join(ConnId(3), "user3", NewRoomPolicy::Open, AdmitMode::Auto);
    assert_eq!(net.ds.epoch("room"), Some(epoch + 1));
    assert_eq!(net.ds.member_count("room"), 3);
}

#[test]
fn a_commit_may_add_only_the_exact_keypackage_that_knocked() {
    let mut net = open_room(2);
    let epoch = net.ds.epoch("room").unwrap();
    // Eve knocks as herself; a member commits another KeyPackage of the same device key
    // whose credential says "alice".
    let eve_id =
        DeviceIdentity::generate(SUITE, CredentialInfo::new("eve", "Eve").unwrap()).unwrap();
    let bytes = eve_id.to_bytes().unwrap();
    let eve = Device::new(eve_id, GroupStore::memory()).unwrap();
    let as_alice = Device::new(
        DeviceIdentity::from_bytes(&bytes)
            .unwrap()
            .with_display_name("Alice")
            .unwrap(),
        GroupStore::memory(),
    )
    .unwrap();
    net.ds.connect(ConnId(5), "room", "eve", net.now);
    let kp = eve.key_package(None, net.now).unwrap();
    net.ds.handle(
        ConnId(5),
        MembershipMsg::KeyPackage {
            key_package: Bytes(kp),
        },
        net.now,
    );
    let other = as_alice.key_package(None, net.now).unwrap();
    net.danger_commit(ConnId(2), &[other]);
    net.pump();
    net.expect_commit_rejected(ConnId(2), "did not knock");
    assert_eq!(net.ds.epoch("room"), Some(epoch));
}

#[test]
fn a_member_cut_off_by_the_ds_loses_its_media_at_once() {
    let mut net = open_room(2);
    assert!(net.members.contains(&ConnId(2)));
    // The DS drops the connection (a slow reader, say) while its socket may stay open.
    net.ds.disconnect(ConnId(2), net.now);
    net.pump();
    assert!(!net.members.contains(&ConnId(2)));
}

/// A lobby charter hosted by `host`'s device, for room "room".
fn lobby_charter(host: &Device) -> conclave_e2ee::RoomPolicy {
    conclave_e2ee::RoomPolicy::lobby("room", &[host.identity()])
}

fn ended(net: &Net, conn: ConnId) -> Option<String> {
    net.events_of(conn).iter().find_map(|e| match e {
        Event::Ended { reason } => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn server_cannot_move_a_lobby_host_into_an_open_group_it_made() {
    let mut net = Net::new();
    // The server's own device makes "room" an open group before the host arrives.
    net.join(
        ConnId(9),
        "server-device",
        NewRoomPolicy::Open,
        AdmitMode::Auto,
    );
    // The host made the meeting: its charter says lobby, hosted by its own device.
    let host = device("host");
    let charter = lobby_charter(&host);
    let p = Participant::new(host, "room", NewRoomPolicy::Lobby, AdmitMode::Ask)
        .with_charter(charter)
        .unwrap();
    net.join_as(ConnId(1), "host", p);
    assert!(
        net.p(ConnId(1)).session().is_none(),
        "the host joined the server's group"
    );
    let why = ended(&net, ConnId(1)).expect("the host says why it is not in");
    assert!(why.contains("charter"), "{why}");
}

#[test]
fn a_joiner_with_the_charter_refuses_a_group_with_other_hosts() {
    let mut net = Net::new();
    let host = device("host");
    let charter = lobby_charter(&host);
    // The server's device makes a lobby of its own for the room and admits everyone.
    net.join(
        ConnId(9),
        "server-device",
        NewRoomPolicy::Lobby,
        AdmitMode::Auto,
    );
    let p = Participant::new(device("bob"), "room", NewRoomPolicy::Open, AdmitMode::Ask)
        .with_charter(charter)
        .unwrap();
    net.join_as(ConnId(2), "bob", p);
    assert!(net.p(ConnId(2)).session().is_none());
    assert!(ended(&net, ConnId(2)).is_some_and(|w| w.contains("charter")));
}

#[test]
fn a_knocking_client_whose_charter_names_other_hosts_never_creates_the_group() {
    let mut net = Net::new();
    let host = device("host");
    let charter = lobby_charter(&host);
    // Bob arrives first and is asked to create the room: his charter says only the host may.
    let p = Participant::new(device("bob"), "room", NewRoomPolicy::Open, AdmitMode::Ask)
        .with_charter(charter.clone())
        .unwrap();
    net.join_as(ConnId(2), "bob", p);
    assert!(net.p(ConnId(2)).session().is_none());
    assert_eq!(net.ds.member_count("room"), 0, "bob made a group");
    // The host arrives, creates the charter's group, sees bob's knock and admits him.
    let p = Participant::new(host, "room", NewRoomPolicy::Lobby, AdmitMode::Ask)
        .with_charter(charter.clone())
        .unwrap();
    net.join_as(ConnId(1), "host", p);
    assert_eq!(
        net.p(ConnId(1)).session().map(|s| s.policy().clone()),
        Some(charter.clone())
    );
    let (knock, _) = knock_of(&net, ConnId(1), "bob");
    let now = net.now;
    net.p(ConnId(1)).admit(knock, now).unwrap();
    net.settle();
    assert_eq!(net.ds.member_count("room"), 2);
    assert_eq!(
        net.p(ConnId(2)).session().map(|s| s.policy().clone()),
        Some(charter)
    );
    assert_eq!(net.codes()[0], net.codes()[1]);
}

#[test]
fn a_lobby_whose_members_are_gone_is_started_again_only_by_its_host() {
    let mut net = Net::new();
    let host_id =
        DeviceIdentity::generate(SUITE, CredentialInfo::new("host", "host").unwrap()).unwrap();
    let host_bytes = host_id.to_bytes().unwrap();
    let host = Device::new(host_id, GroupStore::memory()).unwrap();
    let charter = lobby_charter(&host);
    let p = Participant::new(host, "room", NewRoomPolicy::Lobby, AdmitMode::Ask)
        .with_charter(charter.clone())
        .unwrap();
    net.join_as(ConnId(1), "host", p);
    net.leave_and_close(ConnId(1));
    // Someone without the charter is asked first; the group it makes (open) is refused.
    net.join(ConnId(3), "carol", NewRoomPolicy::Open, AdmitMode::Auto);
    assert_eq!(
        net.ds.member_count("room"),
        0,
        "the lobby became carol's open room"
    );
    net.expect_refused(ConnId(3), "same policy");
    // The host comes back (same device): it starts the lobby again under its charter.
    let again = Device::new(
        DeviceIdentity::from_bytes(&host_bytes).unwrap(),
        GroupStore::memory(),
    )
    .unwrap();
    let p = Participant::new(again, "room", NewRoomPolicy::Lobby, AdmitMode::Ask)
        .with_charter(charter.clone())
        .unwrap();
    net.join_as(ConnId(4), "host", p);
    assert_eq!(
        net.p(ConnId(4)).session().map(|s| s.policy().clone()),
        Some(charter)
    );
}

#[test]
fn a_known_user_id_with_a_new_device_key_raises_an_alarm() {
    let mut net = open_room(1);
    net.p(ConnId(1))
        .set_trust_store(conclave_e2ee::TrustStore::default());
    // Bob is seen for the first time: pinned, and the runtime is given the pins to keep.
    net.join(ConnId(2), "bob", NewRoomPolicy::Open, AdmitMode::Auto);
    let pins = net
        .p(ConnId(1))
        .take_trust_update()
        .expect("bob was pinned");
    let bob_fp = net
        .p(ConnId(2))
        .roster()
        .iter()
        .find(|e| e.user_id == "bob")
        .unwrap()
        .fingerprint;
    assert!(pins.contains(&bob_fp.to_hex()), "{pins}");
    assert!(alarms(&net, ConnId(1)).is_empty());
    // Bob leaves; a "bob" with another device key (one the server made, say) comes in.
    net.p(ConnId(2)).leave().unwrap();
    net.settle();
    net.join(ConnId(3), "bob", NewRoomPolicy::Open, AdmitMode::Auto);
    let a = alarms(&net, ConnId(1));
    assert!(
        a.iter()
            .any(|a| a.contains("bob") && a.contains("new device key")),
        "{a:?}"
    );
    // The pin stays the first key: the person decides.
    assert!(net.p(ConnId(1)).take_trust_update().is_none());

    // A joiner that knew bob (its pins came from its last call) sees it as it joins.
    let mut known = conclave_e2ee::TrustStore::default();
    known.check("bob", bob_fp);
    let mut p = Participant::new(device("dan"), "room", NewRoomPolicy::Open, AdmitMode::Auto);
    p.set_trust_store(known);
    net.join_as(ConnId(4), "dan", p);
    assert!(alarms(&net, ConnId(4))
        .iter()
        .any(|a| a.contains("new device key")));
}

#[test]
fn a_lobby_host_is_warned_of_a_changed_key_before_it_admits() {
    let mut net = Net::new();
    let mut host = Participant::new(device("host"), "room", NewRoomPolicy::Lobby, AdmitMode::Ask);
    let mut pins = conclave_e2ee::TrustStore::default();
    pins.check("bob", device("bob").identity().fingerprint().unwrap());
    host.set_trust_store(pins);
    net.join_as(ConnId(1), "host", host);
    // A "bob" with another key knocks.
    net.join(ConnId(2), "bob", NewRoomPolicy::Open, AdmitMode::Ask);
    let _ = knock_of(&net, ConnId(1), "bob");
    assert!(alarms(&net, ConnId(1))
        .iter()
        .any(|a| a.contains("new device key")));
    assert_eq!(net.ds.member_count("room"), 1, "nobody was admitted");
}

#[test]
fn a_copy_of_the_charters_lobby_made_by_the_server_cannot_take_in_the_host() {
    // The server's device makes "room" a lobby with exactly the charter's policy (hosted by
    // the real host's key, which it cannot sign with) and tries to add the host when it
    // knocks: only a host may add, even the host's own device (without the proof of a return),
    // so the copy stays empty.
    let host = device("host");
    let charter = lobby_charter(&host);
    let server_device = device("server-device");
    let mut copy = server_device
        .create_room(charter, None, T0)
        .expect("a group with the charter's policy");
    let kp = host.key_package(None, T0).unwrap();
    let err = copy.commit(std::slice::from_ref(&kp), &[], T0).unwrap_err();
    assert!(
        matches!(
            err,
            conclave_e2ee::Error::Policy(conclave_e2ee::PolicyViolation::NotAHost { .. })
        ),
        "{err:?}"
    );
    // A device of the server's that runs software skipping the policy builds the commit; the
    // host sees that the member who added it is no host and proved nothing, and refuses.
    let mut copy = danger_device("server-device")
        .create_room(lobby_charter(&host), None, T0)
        .unwrap();
    let bundle = copy.commit(&[kp], &[], T0).unwrap();
    host_refuses_as_unproven(&host, bundle);
}

#[test]
fn an_invite_list_room_admits_listed_devices_and_the_ds_refuses_others_at_the_knock() {
    let mut net = Net::new();
    let bob = device("bob");
    let bob_fp = bob.identity().fingerprint().unwrap();
    let p = Participant::new(
        device("host"),
        "room",
        NewRoomPolicy::InviteList(vec![bob_fp]),
        AdmitMode::Ask,
    );
    net.join_as(ConnId(1), "host", p);
    assert_eq!(
        net.p(ConnId(1)).session().map(|s| s.policy().kind()),
        Some("invite-list")
    );
    net.join_with(ConnId(2), "bob", bob, NewRoomPolicy::Open, AdmitMode::Ask);
    assert_eq!(net.ds.member_count("room"), 2, "bob is listed");
    net.join(ConnId(3), "eve", NewRoomPolicy::Open, AdmitMode::Ask);
    assert_eq!(net.ds.member_count("room"), 2);
    assert!(net.seen[&ConnId(3)].iter().any(|m| matches!(
        m,
        ServerMsg::Error { code: ErrorCode::Rejected, reason } if reason.contains("invite list")
    )));
    // Eve's knock never reached a committer.
    assert!(!net.seen[&ConnId(1)].iter().any(|m| matches!(
        m,
        ServerMsg::CommitRequest { knocks, .. } if knocks.iter().any(|k| k.user_id == "eve")
    )));
}

#[test]
fn another_device_claiming_ones_own_user_id_raises_an_alarm() {
    let mut net = open_room(1);
    net.p(ConnId(1))
        .set_trust_store(conclave_e2ee::TrustStore::default());
    // A second device under user1's own user id (a token the server minted for it).
    net.join(ConnId(2), "user1", NewRoomPolicy::Open, AdmitMode::Auto);
    assert!(
        alarms(&net, ConnId(1))
            .iter()
            .any(|a| a.contains("user1") && a.contains("new device key")),
        "{:?}",
        alarms(&net, ConnId(1))
    );
}

#[test]
fn a_would_be_host_without_a_charter_is_warned_when_put_in_another_group() {
    let mut net = Net::new();
    // The server's device made the room an open group; the person who meant to host a
    // lobby has a link without a charter.
    net.join(
        ConnId(9),
        "server-device",
        NewRoomPolicy::Open,
        AdmitMode::Auto,
    );
    net.join(ConnId(1), "host", NewRoomPolicy::Lobby, AdmitMode::Ask);
    assert!(net.p(ConnId(1)).session().is_some());
    expect_alarm(&net, ConnId(1), "was to host");
}

/// A lobby hosted by a device of its own (conn 1) with bob (conn 2) admitted; the host's
/// participant is returned to the test, its connection gone (the DS saw it drop).
fn lobby_whose_host_dropped() -> (Net, Participant, conclave_e2ee::RoomPolicy) {
    let host = device("host");
    let charter = lobby_charter(&host);
    let (net, p) = lobby_whose_host_dropped_under(host, charter.clone());
    (net, p, charter)
}

fn lobby_whose_host_dropped_under(
    host: Device,
    charter: conclave_e2ee::RoomPolicy,
) -> (Net, Participant) {
    let mut net = Net::new();
    let p = Participant::new(host, "room", NewRoomPolicy::Lobby, AdmitMode::Ask)
        .with_charter(charter.clone())
        .unwrap();
    net.join_as(ConnId(1), "host", p);
    net.join(ConnId(2), "bob", NewRoomPolicy::Open, AdmitMode::Ask);
    let (knock, _) = knock_of(&net, ConnId(1), "bob");
    let now = net.now;
    net.p(ConnId(1)).admit(knock, now).unwrap();
    net.settle();
    assert_eq!(net.ds.member_count("room"), 2);
    let host = net.drop_connection(ConnId(1)).unwrap();
    (net, host)
}

/// The host comes back on conn 3 with the same device, then admits carol (conn 4).
fn host_returns_and_admits_carol(
    net: &mut Net,
    host: Participant,
    charter: conclave_e2ee::RoomPolicy,
) {
    let p = Participant::new(
        host.into_device(),
        "room",
        NewRoomPolicy::Lobby,
        AdmitMode::Ask,
    )
    .with_charter(charter.clone())
    .unwrap();
    net.join_as(ConnId(3), "host", p);
    assert_eq!(
        net.p(ConnId(3)).session().map(|s| s.policy().clone()),
        Some(charter),
        "the host is back in its own group: {:?}",
        net.events_of(ConnId(3))
    );
    assert_eq!(net.ds.member_count("room"), 2, "bob and the host");
    assert!(
        alarms(net, ConnId(2)).is_empty(),
        "{:?}",
        alarms(net, ConnId(2))
    );
    assert!(
        alarms(net, ConnId(3)).is_empty(),
        "{:?}",
        alarms(net, ConnId(3))
    );
    net.join(ConnId(4), "carol", NewRoomPolicy::Open, AdmitMode::Ask);
    let (knock, _) = knock_of(net, ConnId(3), "carol");
    let now = net.now;
    net.p(ConnId(3)).admit(knock, now).unwrap();
    net.settle();
    assert_eq!(net.ds.member_count("room"), 3);
    let codes = net.codes();
    assert!(
        codes.iter().all(|c| !c.is_empty() && *c == codes[0]),
        "{codes:?}"
    );
}

#[test]
fn a_lobby_host_whose_connection_blinked_is_added_back_by_a_member_who_is_no_host() {
    // Its old leaf is still in the group (not yet removed): the DS proposes its removal at
    // the knock, and bob, no host, commits that with the host's return.
    let (mut net, host, charter) = lobby_whose_host_dropped();
    host_returns_and_admits_carol(&mut net, host, charter);
}

#[test]
fn a_lobby_host_gone_long_enough_to_be_removed_is_added_back_by_a_member_who_is_no_host() {
    let (mut net, host, charter) = lobby_whose_host_dropped();
    net.advance(Duration::from_secs(11));
    net.settle();
    assert_eq!(
        net.ds.member_count("room"),
        1,
        "the host's stale leaf is gone"
    );
    host_returns_and_admits_carol(&mut net, host, charter);
}

#[test]
fn a_member_who_is_no_host_cannot_add_back_a_host_device_that_was_never_in_the_group() {
    // A second device of the host's person, listed as a host in the charter but never in this
    // group: it holds no secret of the group, names no epoch, and bob cannot add it.
    let host = device("host");
    let laptop = device("host");
    let charter = conclave_e2ee::RoomPolicy::lobby("room", &[host.identity(), laptop.identity()]);
    let (mut net, _) = lobby_whose_host_dropped_under(host, charter.clone());
    net.advance(Duration::from_secs(11));
    let p = Participant::new(laptop, "room", NewRoomPolicy::Lobby, AdmitMode::Ask)
        .with_charter(charter)
        .unwrap();
    net.join_as(ConnId(3), "host", p);
    assert!(net.p(ConnId(3)).session().is_none());
    assert_eq!(net.ds.member_count("room"), 1);
}

fn danger_device(name: &str) -> Device {
    let id = DeviceIdentity::generate(SUITE, CredentialInfo::new(name, name).unwrap()).unwrap();
    Device::danger_without_policy_checks(id, GroupStore::memory()).unwrap()
}

#[test]
fn a_server_device_that_skips_the_policy_cannot_take_a_guest_into_its_copy_of_a_lobby() {
    // The server's device runs modified software: it makes "room" a lobby with the charter's
    // exact policy and adds the guest who knocks. The guest holds the charter, sees that the
    // member who added it is no host, and refuses the group.
    let host = device("host");
    let charter = lobby_charter(&host);
    let mut copy = danger_device("server-device")
        .create_room(charter.clone(), None, T0)
        .unwrap();
    let mut guest = Participant::new(device("guest"), "room", NewRoomPolicy::Open, AdmitMode::Ask)
        .with_charter(charter)
        .unwrap();
    let (_, server_identity) = generate_server_identity(SUITE).unwrap();
    use mls_rs_codec::MlsEncode;
    guest
        .handle(
            ServerMsg::Joined {
                version: conclave_proto::PROTOCOL_VERSION,
                room: "room".into(),
                user_id: "guest".into(),
                server_identity: Bytes(server_identity.mls_encode_to_vec().unwrap()),
                create_group: false,
            },
            T0,
        )
        .unwrap();
    let Some(MembershipMsg::KeyPackage { key_package }) = guest.poll_transmit() else {
        panic!("the guest knocks");
    };
    let bundle = copy.commit(&[key_package.0], &[], T0).unwrap();
    guest
        .handle(
            ServerMsg::Welcome {
                welcome: Bytes(bundle.welcome.unwrap()),
                ratchet_tree: Bytes(bundle.ratchet_tree),
            },
            T0,
        )
        .unwrap();
    assert!(guest.session().is_none());
    let mut ended = None;
    while let Some(e) = guest.poll_event() {
        if let Event::Ended { reason } = e {
            ended = Some(reason);
        }
    }
    let ended = ended.expect("the guest says why it will not join");
    assert!(ended.contains("only a host may admit"), "{ended}");
}

#[test]
fn a_copy_of_the_lobby_under_the_real_group_id_cannot_return_the_host_without_the_groups_secret() {
    // The host made the real group and dropped. The server's device makes a copy under the
    // same group id and policy, and adds the host's returning KeyPackage with a return PSK it
    // made up: the host cannot process the Welcome (the PSK is not the real group's secret).
    let host = device("host");
    let charter = lobby_charter(&host);
    let real = host.create_room(charter.clone(), None, T0).unwrap();
    let ticket = host.return_ticket("room").expect("the host keeps a ticket");
    assert_eq!(ticket.group_id, real.group_id());
    drop(real);
    let server_device = device("server-device");
    let mut copy = server_device
        .danger_create_room_with_group_id(charter, ticket.group_id.clone(), T0)
        .unwrap();
    server_device.danger_keep_return_secret(&ticket, "room", vec![7; 32]);
    let kp = host.key_package_with(None, Some(&ticket), T0).unwrap();
    let bundle = copy
        .commit_host_return(&kp, T0)
        .expect("the copy believes it has the secret");
    let refused = host.join("room", &bundle.welcome.unwrap(), &bundle.ratchet_tree, T0);
    assert!(refused.is_err(), "the host joined the server's copy");
}

#[test]
fn a_server_device_in_its_copy_of_an_invite_list_room_is_seen_and_the_guest_refuses() {
    // The server's device makes "room" with the invite-list charter's exact policy and adds a
    // listed guest (any member may add a listed device). The guest checks every member of the
    // group it is welcomed into: the server's device is no host and on no list.
    let host = device("host");
    let bob = device("bob");
    let charter = conclave_e2ee::RoomPolicy::invite_list(
        "room",
        &[host.identity()],
        vec![bob.identity().fingerprint().unwrap()],
    );
    let server_device = device("server-device");
    let server_fp = server_device.identity().fingerprint().unwrap();
    let mut copy = server_device.create_room(charter, None, T0).unwrap();
    let kp = bob.key_package(None, T0).unwrap();
    let bundle = copy.commit(&[kp], &[], T0).unwrap();
    let err = bob
        .join("room", &bundle.welcome.unwrap(), &bundle.ratchet_tree, T0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            conclave_e2ee::Error::Policy(conclave_e2ee::PolicyViolation::NotInvited { invitee })
                if invitee == server_fp
        ),
        "{err:?}"
    );
}

#[test]
fn a_member_who_helps_the_server_cannot_return_the_host_into_a_copy_holding_the_servers_devices() {
    // K, a member of the real group, hands the server its return secret of the host's last
    // epoch and builds, under K's own key, a copy of the group (same group id and policy) that
    // holds a device of the server's. The proof is right, but the host refuses: the copy holds
    // a member who was not in the group in the epoch it returns from.
    let host = device("host");
    let charter = lobby_charter(&host);
    let mut real = host.create_room(charter.clone(), None, T0).unwrap();
    let k_id = DeviceIdentity::generate(SUITE, CredentialInfo::new("k", "k").unwrap()).unwrap();
    let k_bytes = k_id.to_bytes().unwrap();
    let k = Device::new(k_id, GroupStore::memory()).unwrap();
    let kp = k.key_package(None, T0).unwrap();
    let bundle = real.commit(&[kp], &[], T0).unwrap();
    real.confirm_commit().unwrap();
    let k_real = k
        .join(
            "room",
            bundle.welcome.as_ref().unwrap(),
            &bundle.ratchet_tree,
            T0,
        )
        .unwrap();
    let ticket = host.return_ticket("room").expect("a ticket");
    assert_eq!(ticket.epoch, real.epoch());
    let secret = k_real.danger_return_secret().unwrap();

    let k_copy = Device::danger_without_policy_checks(
        DeviceIdentity::from_bytes(&k_bytes).unwrap(),
        GroupStore::memory(),
    )
    .unwrap();
    let mut copy = k_copy
        .danger_create_room_with_group_id(charter, ticket.group_id.clone(), T0)
        .unwrap();
    let spy = device("server-device");
    copy.commit(&[spy.key_package(None, T0).unwrap()], &[], T0)
        .unwrap();
    copy.confirm_commit().unwrap();
    k_copy.danger_keep_return_secret(&ticket, "room", secret);
    let kp = host.key_package_with(None, Some(&ticket), T0).unwrap();
    let bundle = copy.commit_host_return(&kp, T0).unwrap();
    host_refuses_as_unproven(&host, bundle);
}

#[test]
fn server_cannot_reuse_a_knock_number_the_host_saw_for_another_keypackage() {
    // The host is shown bob as a knock; the server says that knock is gone and sends the same
    // number again with mallory's KeyPackage, hoping the host's click on "bob" admits her.
    let (mut net, knock, _) = lobby_with_knock();
    let mallory = device("bob");
    let mallory_fp = mallory.identity().fingerprint().unwrap();
    net.deliver(ConnId(1), ServerMsg::KnockGone { knock });
    net.deliver(
        ConnId(1),
        ServerMsg::Knock {
            knock: KnockInfo {
                knock,
                user_id: "bob".into(),
                name: "bob".into(),
                key_package: Bytes(mallory.key_package(None, net.now).unwrap()),
            },
        },
    );
    net.pump();
    assert!(
        net.p(ConnId(1)).pending_knocks().is_empty(),
        "the number is not shown again"
    );
    let now = net.now;
    assert!(net.p(ConnId(1)).admit(knock, now).is_err());
    net.settle();
    assert_eq!(net.ds.member_count("room"), 1);
    assert!(!net
        .p(ConnId(1))
        .roster()
        .iter()
        .any(|r| r.fingerprint == mallory_fp));
    expect_alarm(&net, ConnId(1), "again after it was done");
}

#[test]
fn the_ds_refuses_a_return_naming_an_epoch_before_the_last_add() {
    // Bob keeps the real secret of an epoch before carol was added and, when the host comes
    // back naming that epoch, commits its return under it: carol never had that secret and
    // could not process the commit, so the DS refuses it, and the room goes on.
    let mut net = Net::new();
    let host = device("host");
    let charter = lobby_charter(&host);
    let p = Participant::new(host, "room", NewRoomPolicy::Lobby, AdmitMode::Ask)
        .with_charter(charter)
        .unwrap();
    net.join_as(ConnId(1), "host", p);
    let mut saved = None;
    for (conn, user) in [(ConnId(2), "bob"), (ConnId(3), "carol")] {
        net.join(conn, user, NewRoomPolicy::Open, AdmitMode::Ask);
        let (knock, _) = knock_of(&net, ConnId(1), user);
        let now = net.now;
        net.p(ConnId(1)).admit(knock, now).unwrap();
        net.settle();
        if conn == ConnId(2) {
            // Bob saves the secret of the epoch before carol's add.
            let s = net.p(ConnId(2)).session().unwrap();
            let old = conclave_e2ee::HostReturn {
                group_id: s.group_id().to_vec(),
                epoch: s.epoch(),
            };
            saved = Some((old, s.danger_return_secret().unwrap()));
        }
    }
    assert_eq!(net.ds.member_count("room"), 3);
    let (old, secret) = saved.unwrap();
    net.p(ConnId(2))
        .danger_session_mut()
        .unwrap()
        .danger_keep_return_secret(&old, secret);
    // The host drops and knocks again naming the old epoch (its device, modified).
    let host = net.parts.remove(&ConnId(1)).unwrap().into_device();
    net.ds.disconnect(ConnId(1), net.now);
    net.settle();
    let kp = host.key_package_with(None, Some(&old), net.now).unwrap();
    knock_raw(&mut net, ConnId(4), "host", kp.clone());
    net.settle();
    // Asked to commit (no host is online), bob builds the return under the secret he kept;
    // the DS refuses it.
    let rejected: Vec<&ServerMsg> = net.seen[&ConnId(2)]
        .iter()
        .filter(|m| matches!(m, ServerMsg::CommitRejected { .. }))
        .collect();
    assert!(
        rejected.iter().any(|m| matches!(
            m,
            ServerMsg::CommitRejected { reason, .. } if reason.contains("host's return must name")
        )),
        "{rejected:?}"
    );
    let welcomed = net
        .seen
        .get(&ConnId(4))
        .is_some_and(|v| v.iter().any(|m| matches!(m, ServerMsg::Welcome { .. })));
    assert!(!welcomed, "the host was not let in under that epoch");
    let bob = net.p(ConnId(2)).session().unwrap().epoch();
    assert_eq!(
        net.p(ConnId(3)).session().unwrap().epoch(),
        bob,
        "carol is not left behind"
    );
}

/// The host refuses the Welcome of `bundle`: added by a member who is no host, without the
/// proof of a return into its own group.
fn host_refuses_as_unproven(host: &Device, bundle: conclave_e2ee::CommitBundle) {
    let err = host
        .join("room", &bundle.welcome.unwrap(), &bundle.ratchet_tree, T0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            conclave_e2ee::Error::Policy(conclave_e2ee::PolicyViolation::ReturnUnproven { .. })
        ),
        "{err:?}"
    );
}
