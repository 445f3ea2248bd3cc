//! The delivery service with real participants (the client core and the E2EE core) on an
//! in-memory network, driven by simulated time.

use conclave_sim::membership::*;
use std::time::Duration;

#[test]
fn members_join_through_the_ds_and_agree_on_the_security_code() {
    let mut net = open_room(3);
    assert_eq!(net.ds.member_count("room"), 3);
    let codes = net.codes();
    assert!(!codes[0].is_empty());
    assert!(codes.windows(2).all(|w| w[0] == w[1]), "{codes:?}");
    let epoch = net.p(ConnId(1)).epoch().unwrap();
    assert_eq!(net.ds.epoch("room"), Some(epoch));

    // Media keys are in place on everyone: a frame from 1 opens at 2 and 3.
    let mut wire = Vec::new();
    net.p(ConnId(1))
        .media()
        .seal(b"hello", ClearPrefix::None, &mut wire)
        .unwrap();
    let now = net.now;
    for c in [2, 3].map(ConnId) {
        let mut out = Vec::new();
        net.p(c)
            .media()
            .open(&wire, ClearPrefix::None, &mut out, now)
            .unwrap();
        assert_eq!(out, b"hello");
    }
}

#[test]
fn knocks_arriving_together_are_added_in_one_commit() {
    let mut net = open_room(1);
    // Three knock within the batching window.
    for i in 2..=4 {
        net.connect_quietly(ConnId(i), &format!("user{i}"));
        net.pump();
    }
    assert_eq!(
        net.ds.member_count("room"),
        1,
        "nothing committed inside the window"
    );
    net.settle();
    assert_eq!(net.ds.member_count("room"), 4);
    assert_eq!(
        net.ds.stats().commits_accepted,
        1,
        "one commit added all three"
    );
    let codes = net.codes();
    assert!(codes.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn vanished_member_is_removed_by_a_server_proposal_within_bounded_time() {
    let mut net = open_room(3);
    let epoch = net.ds.epoch("room").unwrap();
    // Member 3's connection drops (killed process).
    let victim_leaf = net.p(ConnId(3)).session().unwrap().own_leaf();
    let mut victim = net.drop_connection(ConnId(3)).unwrap();
    assert_eq!(net.ds.epoch("room"), Some(epoch), "not before the timeout");

    // After the timeout the server proposes the removal and the designated committer commits.
    net.advance(DsConfig::default().remove_after);
    assert_eq!(net.ds.stats().removals_proposed, 1);
    assert_eq!(net.ds.epoch("room"), Some(epoch + 1));
    assert_eq!(net.ds.member_count("room"), 2);
    for c in [1, 2].map(ConnId) {
        assert!(net.p(c).roster().iter().all(|e| e.leaf != victim_leaf));
        assert_eq!(net.alarms(c), 0);
    }
    let codes = net.codes();
    assert_eq!(codes[0], codes[1]);

    // The killed client's keys do not open the new epoch's frames.
    let mut wire = Vec::new();
    net.p(ConnId(1))
        .media()
        .seal(b"after", ClearPrefix::None, &mut wire)
        .unwrap();
    let mut out = Vec::new();
    let later = net.now.saturating_add(Duration::from_secs(30));
    assert!(victim
        .media()
        .open(&wire, ClearPrefix::None, &mut out, later)
        .is_err());
}

#[test]
fn concurrent_commits_exactly_one_wins_and_nobody_forks() {
    let mut net = open_room(4);
    let epoch = net.ds.epoch("room").unwrap();
    let accepted = net.ds.stats().commits_accepted;
    // Two members self-update at the same time; both commits reach the DS before any answer.
    let now = net.now;
    net.p(ConnId(2)).self_update(now).unwrap();
    net.p(ConnId(3)).self_update(now).unwrap();
    let a = net.p(ConnId(2)).poll_transmit().unwrap();
    let b = net.p(ConnId(3)).poll_transmit().unwrap();
    net.ds.handle(ConnId(2), a, net.now);
    net.ds.handle(ConnId(3), b, net.now);
    net.settle();
    assert_eq!(net.ds.stats().commits_accepted, accepted + 1);
    assert_eq!(net.ds.stats().commits_rejected, 1);
    assert_eq!(net.ds.epoch("room"), Some(epoch + 1));
    let codes = net.codes();
    assert!(codes.windows(2).all(|w| w[0] == w[1]), "no fork: {codes:?}");
    for c in (1..=4).map(ConnId) {
        assert_eq!(net.p(c).epoch(), Some(epoch + 1));
        assert!(!net.p(c).session().unwrap().has_pending_commit());
    }
}

#[test]
fn clean_leave_is_committed_and_the_leaver_is_told() {
    for leaver in (1..=3).map(ConnId) {
        let mut net = open_room(3);
        let epoch = net.ds.epoch("room").unwrap();
        net.p(leaver).leave().unwrap();
        net.settle();
        // Committed at once, whoever leaves (a leaver is never the one asked to commit).
        assert_eq!(net.ds.epoch("room"), Some(epoch + 1), "leaver {leaver}");
        assert_eq!(net.ds.member_count("room"), 2);
        assert!(net.closed.contains(&leaver));
        assert_eq!(
            net.ds.stats().removals_proposed,
            0,
            "no duplicate server removal"
        );
    }
}

#[test]
fn a_clean_leave_is_a_standard_remove_and_the_leaver_is_never_asked_to_commit() {
    for legacy in [false, true] {
        let mut net = open_room(3);
        let epoch = net.ds.epoch("room").unwrap();
        let leaf = net.p(ConnId(3)).session().unwrap().own_leaf();
        let now = net.now;
        let proposal = if legacy {
            // What clients before this release sent: mls-rs's SelfRemove (0xF003).
            net.p(ConnId(3))
                .danger_session_mut()
                .unwrap()
                .danger_propose_legacy_self_remove()
                .unwrap()
        } else {
            net.p(ConnId(3)).leave().unwrap();
            match net.p(ConnId(3)).poll_transmit() {
                Some(MembershipMsg::Proposal { proposal }) => proposal.0,
                other => panic!("{other:?}"),
            }
        };
        // Another member reads it as an RFC 9420 Remove (type 3) of the leaver's own leaf,
        // which any MLS implementation decodes.
        let read = net
            .p(ConnId(1))
            .session()
            .unwrap()
            .danger_clone()
            .process(&proposal, now)
            .unwrap();
        let kind = if legacy { "self-remove" } else { "remove" };
        assert_eq!(
            read,
            conclave_e2ee::Incoming::Proposal {
                kind,
                target: Some(leaf),
                from_server: false
            }
        );
        let before = net.seen.get(&ConnId(3)).map_or(0, Vec::len);
        net.ds.handle(
            ConnId(3),
            MembershipMsg::Proposal {
                proposal: Bytes(proposal),
            },
            now,
        );
        net.settle();
        assert_eq!(net.ds.epoch("room"), Some(epoch + 1), "legacy {legacy}");
        assert_eq!(net.ds.member_count("room"), 2);
        assert!(
            !net.seen[&ConnId(3)][before..]
                .iter()
                .any(|m| matches!(m, ServerMsg::CommitRequest { .. })),
            "the leaver was asked to commit its own removal"
        );
        assert_eq!(net.ds.stats().removals_proposed, 0);
    }
}

#[test]
fn an_open_room_whose_members_all_left_can_be_started_again() {
    let mut net = open_room(1);
    // The only member leaves: nobody is left to commit, and its connection closes.
    net.leave_and_close(ConnId(1));
    // The next person opens the same link: a new group, and the one after gets in.
    net.join(ConnId(2), "user2", NewRoomPolicy::Open, AdmitMode::Auto);
    assert_eq!(
        net.p(ConnId(2)).epoch(),
        Some(0),
        "no new group was started"
    );
    net.join(ConnId(3), "user3", NewRoomPolicy::Open, AdmitMode::Auto);
    assert_eq!(net.ds.member_count("room"), 2);
    let codes = net.codes();
    assert!(!codes[0].is_empty() && codes[0] == codes[1], "{codes:?}");

    // Every member's connection drops while someone knocks (inside the batching window): the
    // knocker starts anew instead of waiting for nobody.
    let mut net = open_room(1);
    net.parts.insert(
        ConnId(5),
        Participant::new(
            device("user5"),
            "room",
            NewRoomPolicy::Open,
            AdmitMode::Auto,
        ),
    );
    net.ds.connect(ConnId(5), "room", "user5", net.now);
    net.pump();
    assert_eq!(net.ds.member_count("room"), 1, "the knock is still waiting");
    net.drop_connection(ConnId(1));
    // Not at once: the member may be back within `remove_after` (a blink must not hand the
    // room to whoever connects first).
    assert_eq!(net.p(ConnId(5)).epoch(), None);
    net.advance(DsConfig::default().remove_after);
    assert_eq!(
        net.p(ConnId(5)).epoch(),
        Some(0),
        "the knocker waits for nobody"
    );
    assert_eq!(net.ds.member_count("room"), 1);
}

#[test]
fn a_room_whose_every_committer_was_slow_asks_them_again() {
    let mut net = open_room(2);
    // Both members miss their first commit request (slow, not gone).
    let missed = std::rc::Rc::new(std::cell::Cell::new(0));
    for c in [1, 2].map(ConnId) {
        let missed = missed.clone();
        net.rewrite.insert(
            c,
            Box::new(move |m| match m {
                ServerMsg::CommitRequest { .. } if missed.get() < 2 => {
                    missed.set(missed.get() + 1);
                    vec![]
                }
                m => vec![m],
            }),
        );
    }
    net.join(ConnId(3), "user3", NewRoomPolicy::Open, AdmitMode::Auto);
    for _ in 0..4 {
        net.advance(DsConfig::default().commit_timeout);
    }
    assert_eq!(missed.get(), 2, "both were asked and missed it");
    assert_eq!(net.ds.member_count("room"), 3, "the room stayed stuck");
}

#[test]
fn lobby_knock_waits_for_the_host_and_can_be_denied() {
    let mut net = Net::new();
    net.join(ConnId(1), "host", NewRoomPolicy::Lobby, AdmitMode::Ask);
    net.join(ConnId(2), "guest", NewRoomPolicy::Open, AdmitMode::Auto);
    assert_eq!(
        net.ds.member_count("room"),
        1,
        "nobody gets in before the host decides"
    );
    let knocks = net.p(ConnId(1)).pending_knocks();
    assert_eq!(knocks.len(), 1);
    assert_eq!(knocks[0].user_id, "guest");

    // The host admits: its client commits the add at once.
    let now = net.now;
    net.p(ConnId(1)).admit(knocks[0].knock, now).unwrap();
    net.settle();
    assert_eq!(net.ds.member_count("room"), 2);
    assert_eq!(net.codes()[0], net.codes()[1]);

    // A second guest is turned away.
    net.join(ConnId(3), "intruder", NewRoomPolicy::Open, AdmitMode::Auto);
    let k = net.p(ConnId(1)).pending_knocks()[0].knock;
    net.p(ConnId(1)).deny(k);
    net.settle();
    assert!(net.seen[&ConnId(3)]
        .iter()
        .any(|m| matches!(m, ServerMsg::Denied { .. })));
    assert!(net.closed.contains(&ConnId(3)));
    assert_eq!(net.ds.member_count("room"), 2);
}

#[test]
fn a_knock_whose_knocker_left_leaves_the_hosts_list() {
    let mut net = Net::new();
    net.join(ConnId(1), "host", NewRoomPolicy::Lobby, AdmitMode::Ask);
    net.join(ConnId(2), "guest", NewRoomPolicy::Open, AdmitMode::Auto);
    net.join(ConnId(3), "other", NewRoomPolicy::Open, AdmitMode::Auto);
    assert_eq!(net.p(ConnId(1)).pending_knocks().len(), 2);
    // The guest gives up before the host decides.
    net.drop_connection(ConnId(2));
    let left: Vec<String> = net
        .p(ConnId(1))
        .pending_knocks()
        .into_iter()
        .map(|k| k.user_id)
        .collect();
    assert_eq!(left, ["other"]);
    assert!(net
        .events_of(ConnId(1))
        .iter()
        .any(|e| matches!(e, Event::KnockGone { name, .. } if name == "guest")));
    // The one still waiting is admitted as before.
    let k = net.p(ConnId(1)).pending_knocks()[0].knock;
    let now = net.now;
    net.p(ConnId(1)).admit(k, now).unwrap();
    net.settle();
    assert_eq!(net.ds.member_count("room"), 2);
}

#[test]
fn a_request_crossing_the_hosts_answer_to_a_knock_raises_no_alarm() {
    let mut net = Net::new();
    net.join(ConnId(1), "host", NewRoomPolicy::Lobby, AdmitMode::Ask);
    net.join(ConnId(2), "guest", NewRoomPolicy::Open, AdmitMode::Auto);
    let info = net.seen[&ConnId(1)]
        .iter()
        .find_map(|m| match m {
            ServerMsg::Knock { knock } => Some(knock.clone()),
            _ => None,
        })
        .expect("the host was shown the knock");
    net.p(ConnId(1)).deny(info.knock);
    // A commit request the DS sent before it saw the answer still names the knock.
    let epoch = net.p(ConnId(1)).epoch().unwrap();
    net.deliver(
        ConnId(1),
        ServerMsg::CommitRequest {
            epoch,
            knocks: vec![info],
        },
    );
    net.settle();
    assert_eq!(net.alarms(ConnId(1)), 0, "{:?}", net.events_of(ConnId(1)));
    assert!(net.p(ConnId(1)).pending_knocks().is_empty());
    assert_eq!(net.ds.member_count("room"), 1);
}

/// Knocks go only to who decides on them: nobody in an open room (the committer gets them
/// with its commit request), the hosts in a lobby room. Broadcasting each knock to every
/// member cost a room of 1,000 half a million messages while it filled.
#[test]
fn knocks_reach_only_the_members_who_decide_on_them() {
    let knocks_seen = |net: &Net, conn: ConnId| {
        net.seen.get(&conn).map_or(0, |m| {
            m.iter()
                .filter(|m| matches!(m, ServerMsg::Knock { .. }))
                .count()
        })
    };
    let net = open_room(4);
    assert_eq!(net.ds.member_count("room"), 4);
    for c in (1..=4).map(ConnId) {
        assert_eq!(
            knocks_seen(&net, c),
            0,
            "member {c} got a knock in an open room"
        );
    }

    // Lobby: the host sees the knock; a member who is not a host does not.
    let mut net = Net::new();
    net.join(ConnId(1), "host", NewRoomPolicy::Lobby, AdmitMode::Ask);
    net.join(ConnId(2), "guest", NewRoomPolicy::Open, AdmitMode::Auto);
    let k = net.p(ConnId(1)).pending_knocks()[0].knock;
    let now = net.now;
    net.p(ConnId(1)).admit(k, now).unwrap();
    net.settle();
    assert_eq!(net.ds.member_count("room"), 2);
    assert!(
        net.p(ConnId(1)).pending_knocks().is_empty(),
        "answered knocks are dropped"
    );
    net.join(ConnId(3), "second", NewRoomPolicy::Open, AdmitMode::Auto);
    assert_eq!(knocks_seen(&net, ConnId(1)), 2);
    assert_eq!(knocks_seen(&net, ConnId(2)), 0);
    assert!(net.p(ConnId(2)).pending_knocks().is_empty());
    assert_eq!(net.p(ConnId(1)).pending_knocks().len(), 1);
}

#[test]
fn commit_breaking_the_policy_is_refused_by_the_ds_and_the_room_goes_on() {
    let mut net = Net::new();
    net.join(ConnId(1), "host", NewRoomPolicy::Lobby, AdmitMode::Auto);
    let id = DeviceIdentity::generate(SUITE, CredentialInfo::new("mallory", "Mallory").unwrap())
        .unwrap();
    let bad = Device::danger_without_policy_checks(id, GroupStore::memory()).unwrap();
    net.join_with(
        ConnId(2),
        "mallory",
        bad,
        NewRoomPolicy::Open,
        AdmitMode::Auto,
    );
    assert_eq!(net.ds.member_count("room"), 2);
    let epoch = net.ds.epoch("room").unwrap();

    // Mallory (not a host) commits an add of a ghost.
    let ghost = device("ghost");
    let kp = ghost.key_package(None, net.now).unwrap();
    let now = net.now;
    let bundle = net
        .p(ConnId(2))
        .danger_session_mut()
        .unwrap()
        .commit(&[kp], &[], now)
        .unwrap();
    net.ds.handle(
        ConnId(2),
        MembershipMsg::Commit {
            epoch,
            commit: Bytes(bundle.commit),
            welcome: bundle.welcome.map(Bytes),
        },
        net.now,
    );
    net.settle();
    let refused = net.seen[&ConnId(2)].iter().any(|m| matches!(m, ServerMsg::CommitRejected { reason, .. } if reason.contains("only a host may admit")));
    assert!(refused, "{:?}", net.seen[&ConnId(2)]);
    assert_eq!(net.ds.epoch("room"), Some(epoch));
    assert_eq!(net.ds.member_count("room"), 2);
    // The host never saw it, and the room still works.
    assert_eq!(net.alarms(ConnId(1)), 0);
    net.p(ConnId(2))
        .danger_session_mut()
        .unwrap()
        .discard_commit();
    net.join(ConnId(3), "friend", NewRoomPolicy::Open, AdmitMode::Auto);
    assert_eq!(net.ds.member_count("room"), 3);
}

#[test]
fn malformed_and_unexpected_messages_are_refused_with_a_reason() {
    let mut net = open_room(2);
    let epoch = net.ds.epoch("room").unwrap();
    let cases = vec![
        MembershipMsg::Commit {
            epoch,
            commit: Bytes(vec![1, 2, 3]),
            welcome: None,
        },
        MembershipMsg::Commit {
            epoch: epoch + 5,
            commit: Bytes(vec![]),
            welcome: None,
        },
        MembershipMsg::Proposal {
            proposal: Bytes(vec![0xff; 100]),
        },
        MembershipMsg::Application {
            message: Bytes(vec![7; 10]),
        },
        MembershipMsg::KeyPackage {
            key_package: Bytes(vec![1]),
        },
        MembershipMsg::CreateGroup {
            group_info: Bytes(vec![]),
            ratchet_tree: Bytes(vec![]),
        },
        MembershipMsg::Deny { knock: KnockId(99) },
    ];
    for m in cases {
        let before = net.seen.get(&ConnId(1)).map_or(0, Vec::len);
        net.ds.handle(ConnId(1), m.clone(), net.now);
        net.pump();
        let answers = &net.seen[&ConnId(1)][before..];
        assert!(
            answers.iter().any(|a| matches!(
                a,
                ServerMsg::Error { .. } | ServerMsg::CommitRejected { .. }
            )),
            "{m:?} got {answers:?}"
        );
    }
    // The call goes on.
    assert_eq!(net.ds.epoch("room"), Some(epoch));
    net.join(ConnId(3), "user3", NewRoomPolicy::Open, AdmitMode::Auto);
    assert_eq!(net.ds.member_count("room"), 3);
}

#[test]
fn keypackage_naming_someone_else_than_the_token_is_refused() {
    let mut net = open_room(1);
    // The token says "eve", the KeyPackage's credential says "alice".
    net.parts.insert(
        ConnId(2),
        Participant::new(
            device("alice"),
            "room",
            NewRoomPolicy::Open,
            AdmitMode::Auto,
        ),
    );
    net.ds.connect(ConnId(2), "room", "eve", net.now);
    net.settle();
    assert!(net.seen[&ConnId(2)].iter().any(|m| matches!(
        m,
        ServerMsg::Error {
            code: ErrorCode::Rejected,
            ..
        }
    )));
    assert_eq!(net.ds.member_count("room"), 1);
}

#[test]
fn creator_vanishing_before_creating_hands_creation_to_the_next() {
    let mut net = Net::new();
    // Connection 1 is asked to create but never answers and goes away.
    net.ds.connect(ConnId(1), "room", "ghost", net.now);
    net.ds.connect(ConnId(2), "room", "user2", net.now);
    while net.ds.poll_output().is_some() {}
    net.parts.insert(
        ConnId(2),
        Participant::new(
            device("user2"),
            "room",
            NewRoomPolicy::Open,
            AdmitMode::Auto,
        ),
    );
    net.ds.disconnect(ConnId(1), net.now);
    net.settle();
    assert_eq!(net.ds.member_count("room"), 1);
    assert!(net.p(ConnId(2)).epoch().is_some());
}

#[test]
fn knocks_before_the_group_exists_are_kept_until_it_does() {
    let mut net = Net::new();
    // Alice is asked to create the group; before her upload reaches the DS, Bob knocks.
    net.parts.insert(
        ConnId(1),
        Participant::new(
            device("alice"),
            "room",
            NewRoomPolicy::Open,
            AdmitMode::Auto,
        ),
    );
    net.ds.connect(ConnId(1), "room", "alice", net.now);
    let joined_alice = net.ds.poll_output().unwrap();
    net.parts.insert(
        ConnId(2),
        Participant::new(device("bob"), "room", NewRoomPolicy::Open, AdmitMode::Auto),
    );
    net.ds.connect(ConnId(2), "room", "bob", net.now);
    net.pump(); // Bob knocks (the group does not exist yet)
    let Output::Send { msg, .. } = joined_alice else {
        panic!()
    };
    let now = net.now;
    net.p(ConnId(1)).handle(msg, now).unwrap();
    net.settle(); // Alice's group upload arrives
    assert_eq!(
        net.ds.member_count("room"),
        2,
        "{:?} / {:?}",
        net.seen.get(&ConnId(2)),
        net.seen.get(&ConnId(1))
    );
    assert_eq!(net.codes()[0], net.codes()[1]);
}

#[test]
fn a_device_that_lost_its_connection_rejoins_and_its_stale_leaf_goes_at_once() {
    let mut net = open_room(3);
    let epoch = net.ds.epoch("room").unwrap();
    let lost = net.drop_connection(ConnId(3)).unwrap();
    let start = net.now;
    net.advance(Duration::from_millis(700));
    // The same device comes back on a new connection, well before `remove_after`.
    net.join_with(
        ConnId(4),
        "user3",
        lost.into_device(),
        NewRoomPolicy::Open,
        AdmitMode::Auto,
    );
    net.settle();
    assert!(
        net.now.saturating_since(start) < DsConfig::default().remove_after,
        "the stale leaf was not replaced early"
    );
    assert_eq!(net.ds.member_count("room"), 3);
    assert!(net.ds.epoch("room").unwrap() > epoch);
    for c in [1, 2, 4].map(ConnId) {
        let roster = net.p(c).roster();
        assert_eq!(roster.len(), 3);
        assert_eq!(roster.iter().filter(|e| e.user_id == "user3").count(), 1);
        assert_eq!(net.alarms(c), 0);
    }
    let codes = net.codes();
    assert!(codes.iter().all(|c| !c.is_empty() && *c == codes[0]));
}

/// What a malicious server can try with the signaling it controls, against real members.
mod adversarial {
    use super::*;
    use conclave_proto::PROTOCOL_VERSION;

    #[test]
    fn server_cannot_move_a_member_out_of_its_group_with_a_second_joined() {
        let mut net = open_room(2);
        let epoch = net.p(ConnId(1)).epoch();
        let code = net.codes()[0].clone();
        for create_group in [true, false] {
            let msg = ServerMsg::Joined {
                version: PROTOCOL_VERSION,
                room: "room".into(),
                user_id: "user1".into(),
                server_identity: Bytes(Vec::new()),
                create_group,
            };
            let now = net.now;
            let err = net.p(ConnId(1)).handle(msg, now).unwrap_err();
            assert!(err.to_string().contains("second Joined"), "{err}");
        }
        assert_eq!(net.p(ConnId(1)).epoch(), epoch);
        assert_eq!(net.codes()[0], code);
        // It neither created a group nor knocked again.
        assert!(net.p(ConnId(1)).poll_transmit().is_none());
    }

    #[test]
    fn keypackage_substitution_is_visible_to_every_member_and_gets_the_real_joiner_nothing() {
        let mut net = open_room(2);
        let code = net.codes()[0].clone();
        // Carol knocks; the server swaps her KeyPackage for one of a device it controls,
        // under her name.
        let carol = device("carol");
        let carol_fp = carol.identity().fingerprint().unwrap().short_code();
        let impostor = device("carol");
        let impostor_fp = impostor.identity().fingerprint().unwrap().short_code();
        let kp = impostor.key_package(None, net.now).unwrap();
        net.ds.connect(ConnId(3), "room", "carol", net.now);
        net.ds.handle(
            ConnId(3),
            MembershipMsg::KeyPackage {
                key_package: Bytes(kp),
            },
            net.now,
        );
        net.settle();
        // In an open room the committer adds whoever knocks, but never silently: a new epoch
        // and security code, and a "carol" whose device fingerprint is not carol's.
        let codes = net.codes();
        assert_ne!(codes[0], code);
        for c in [1, 2].map(ConnId) {
            let roster = net.p(c).roster();
            let shown = roster.iter().find(|e| e.user_id == "carol").unwrap();
            assert_eq!(shown.fingerprint.short_code(), impostor_fp);
            assert_ne!(shown.fingerprint.short_code(), carol_fp);
        }
        // The real carol cannot use the Welcome: it is sealed to the impostor's key.
        let (welcome, tree) = net.seen[&ConnId(3)]
            .iter()
            .find_map(|m| match m {
                ServerMsg::Welcome {
                    welcome,
                    ratchet_tree,
                } => Some((welcome.0.clone(), ratchet_tree.0.clone())),
                _ => None,
            })
            .expect("a Welcome went to carol's connection");
        assert!(carol.join("room", &welcome, &tree, net.now).is_err());
    }

    #[test]
    fn a_device_already_in_the_room_cannot_join_it_twice() {
        let mut net = Net::new();
        let id = DeviceIdentity::generate(SUITE, CredentialInfo::new("user1", "user1").unwrap())
            .unwrap();
        let copy = DeviceIdentity::from_bytes(&id.to_bytes().unwrap()).unwrap();
        let first = Device::new(id, GroupStore::memory()).unwrap();
        net.join_with(
            ConnId(1),
            "user1",
            first,
            NewRoomPolicy::Open,
            AdmitMode::Auto,
        );
        net.join(ConnId(2), "user2", NewRoomPolicy::Open, AdmitMode::Auto);
        let code = net.codes()[0].clone();
        // The same device key on a second connection, while its leaf is connected.
        let second = Device::new(copy, GroupStore::memory()).unwrap();
        net.join_with(
            ConnId(3),
            "user1",
            second,
            NewRoomPolicy::Open,
            AdmitMode::Auto,
        );
        net.settle();
        assert_eq!(net.ds.member_count("room"), 2);
        assert!(net.seen[&ConnId(3)].iter().any(|m| matches!(
            m,
            ServerMsg::Error { code: ErrorCode::Rejected, reason } if reason.contains("already in the room")
        )));
        assert_eq!(net.codes()[0], code);
    }

    #[test]
    fn withheld_commit_forks_the_group_visibly() {
        let mut net = open_room(3);
        let before = net.codes()[2].clone();
        // The server keeps member 1's next commit from member 3.
        net.withhold_commits_from.push(ConnId(3));
        let now = net.now;
        net.p(ConnId(1)).self_update(now).unwrap();
        net.settle();
        let codes = net.codes();
        assert_eq!(codes[0], codes[1], "members 1 and 2 moved on together");
        assert_eq!(codes[2], before, "member 3 never saw the commit");
        assert_ne!(
            codes[0], codes[2],
            "the fork shows as different security codes"
        );
        // Media across the fork does not open: member 1's new key is not member 3's.
        let mut wire = Vec::new();
        net.p(ConnId(1))
            .media()
            .seal(b"across the fork", ClearPrefix::None, &mut wire)
            .unwrap();
        let mut out = Vec::new();
        let later = net.now.saturating_add(Duration::from_secs(5));
        assert!(net
            .p(ConnId(3))
            .media()
            .open(&wire, ClearPrefix::None, &mut out, later)
            .is_err());
        // The next commit member 3 does see is for an epoch it is not in: an alarm.
        net.withhold_commits_from.clear();
        assert_eq!(net.alarms(ConnId(3)), 0);
        let now = net.now;
        net.p(ConnId(2)).self_update(now).unwrap();
        net.settle();
        assert!(
            net.alarms(ConnId(3)) > 0,
            "the forked member raised no alarm"
        );
        assert_eq!(net.alarms(ConnId(1)), 0);
    }

    #[test]
    fn proposal_and_message_floods_from_a_member_are_refused_and_the_room_goes_on() {
        let mut net = open_room(3);
        let refused = net.ds.stats().refused;
        for i in 0..1000u32 {
            let junk = i.to_be_bytes().repeat(1 + (i as usize % 50));
            net.ds.handle(
                ConnId(2),
                MembershipMsg::Proposal {
                    proposal: Bytes(junk.clone()),
                },
                net.now,
            );
            net.ds.handle(
                ConnId(2),
                MembershipMsg::Commit {
                    epoch: u64::from(i),
                    commit: Bytes(junk),
                    welcome: None,
                },
                net.now,
            );
        }
        net.settle();
        assert!(net.ds.stats().refused + net.ds.stats().commits_rejected >= refused + 2000);
        assert_eq!(net.ds.member_count("room"), 3);
        // The room still works: someone joins and everyone agrees.
        net.join(ConnId(4), "user4", NewRoomPolicy::Open, AdmitMode::Auto);
        assert_eq!(net.ds.member_count("room"), 4);
        let codes = net.codes();
        assert!(codes.iter().all(|c| *c == codes[0]));
        for c in [1, 3, 4].map(ConnId) {
            assert_eq!(net.alarms(c), 0);
        }
    }
}

#[test]
fn a_members_own_timers_erase_old_keys_and_start_its_periodic_self_update() {
    let mut net = open_room(3);
    net.p(ConnId(1))
        .set_self_update(Duration::from_secs(60), 0x5eed);
    // The countdown starts at the next epoch change.
    net.join(ConnId(4), "user4", NewRoomPolicy::Open, AdmitMode::Auto);
    let joined_at = net.now;
    let epoch = net.ds.epoch("room").unwrap();
    assert!(
        net.p(ConnId(1)).media_ref().live_epochs().len() > 1,
        "the old epoch's keys are kept for a while"
    );
    // Only the member's own timers run: it erases the old keys when their grace ends, and
    // commits a self-update within the period's jitter (60 s, give or take 20%).
    let mut erased_at = None;
    for _ in 0..20 {
        let Some(t) = net.p(ConnId(1)).poll_timeout() else {
            break;
        };
        net.now = net.now.max(t);
        let now = net.now;
        net.p(ConnId(1)).handle_timeout(now).unwrap();
        if erased_at.is_none() && net.p(ConnId(1)).media_ref().live_epochs().len() == 1 {
            erased_at = Some(now);
        }
        net.ds.handle_timeout(now);
        net.settle();
        if net.ds.epoch("room") != Some(epoch) {
            break;
        }
    }
    assert!(erased_at.is_some(), "old keys erased on the member's timer");
    assert_eq!(net.ds.epoch("room"), Some(epoch + 1));
    let waited = net.now.saturating_since(joined_at);
    assert!(
        waited >= Duration::from_secs(48) && waited <= Duration::from_secs(73),
        "{waited:?}"
    );
    // It was a self-update: everyone moved to the same epoch, nobody was added or removed.
    let last = net.events_of(ConnId(2)).last().cloned();
    assert!(
        matches!(&last, Some(Event::EpochChanged { change, .. }) if change.added.is_empty() && change.removed.is_empty()),
        "{last:?}"
    );
    let codes = net.codes();
    assert!(codes.iter().all(|c| c == &codes[0]));
}
