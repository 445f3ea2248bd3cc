//! The browser participant's core (what the worker calls through wasm-bindgen), run natively
//! against the real delivery-service core and a native participant, in simulated time. Every
//! message crosses as the JSON text the WebSocket carries.

use std::collections::VecDeque;

use conclave_client::{AdmitMode, NewRoomPolicy, Participant};
use conclave_ds::{generate_server_identity, ConnId, Ds, DsConfig};
use conclave_e2ee::{
    ClearPrefix, CredentialInfo, Device, DeviceIdentity, GroupStore, RoomCipherSuite, Timestamp,
};
use conclave_proto::{Bytes, MembershipMsg, ServerMsg};
use conclave_sim::membership::{exchange, Party};
use conclave_web::{new_identity, Call};

const T0: u64 = 1_700_000_000_000;
const NATIVE: ConnId = ConnId(1);
const BROWSER: ConnId = ConnId(2);
const THIRD: ConnId = ConnId(3);

/// A VP8 keyframe's first bytes (frame tag, start code, size) and a body.
fn vp8_keyframe(tag: u8) -> Vec<u8> {
    let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
    f.extend(std::iter::repeat_n(tag, 200));
    f
}

fn device(name: &str) -> Device {
    let id = DeviceIdentity::generate(
        RoomCipherSuite::Curve25519Aes128,
        CredentialInfo::new(name, name).unwrap(),
    )
    .unwrap();
    Device::new(id, GroupStore::memory()).unwrap()
}

/// The browser's `Call` as a party of the simulation: every message crosses as JSON text.
struct Browser(Call);

impl std::ops::Deref for Browser {
    type Target = Call;
    fn deref(&self) -> &Call {
        &self.0
    }
}

impl std::ops::DerefMut for Browser {
    fn deref_mut(&mut self) -> &mut Call {
        &mut self.0
    }
}

impl Party for Browser {
    fn deliver(&mut self, msg: ServerMsg, now: Timestamp) {
        let _ = self.0.handle(&msg.encode(), now.as_millis() as f64, 7);
    }

    fn transmit(&mut self) -> Vec<MembershipMsg> {
        std::iter::from_fn(|| self.0.poll_transmit())
            .map(|text| MembershipMsg::decode(&text).expect("the browser speaks the protocol"))
            .collect()
    }
}

struct Room {
    ds: Ds,
    natives: Vec<(ConnId, Participant)>,
    browser: Browser,
    now: u64,
    /// Server messages for the browser that the test holds back (to deliver later).
    hold_browser: bool,
    held: VecDeque<ServerMsg>,
    /// Rewrites what the server sends the browser (a misbehaving or differently built server).
    to_browser: fn(ServerMsg) -> Vec<ServerMsg>,
}

impl Room {
    /// A native member creates the room; the browser joins it.
    fn new() -> Room {
        let (secret, identity) =
            generate_server_identity(RoomCipherSuite::Curve25519Aes128).unwrap();
        let id = new_identity("bea", "Bea").unwrap();
        let mut room = Room {
            ds: Ds::new(DsConfig::default(), secret, identity),
            natives: vec![(
                NATIVE,
                Participant::new(device("ada"), "room", NewRoomPolicy::Open, AdmitMode::Auto),
            )],
            browser: Browser(Call::new(&id, "Bea", "room", false).unwrap()),
            now: T0,
            hold_browser: false,
            held: VecDeque::new(),
            to_browser: |m| vec![m],
        };
        room.ds.connect(NATIVE, "room", "ada", room.ts());
        room.settle();
        room
    }

    /// The browser alone (it will create the room: a lobby it hosts if `lobby`).
    fn browser_only(lobby: bool) -> Room {
        let (secret, identity) =
            generate_server_identity(RoomCipherSuite::Curve25519Aes128).unwrap();
        let id = new_identity("bea", "Bea").unwrap();
        Room {
            ds: Ds::new(DsConfig::default(), secret, identity),
            natives: Vec::new(),
            browser: Browser(Call::new(&id, "Bea", "room", lobby).unwrap()),
            now: T0,
            hold_browser: false,
            held: VecDeque::new(),
            to_browser: |m| vec![m],
        }
    }

    fn ts(&self) -> Timestamp {
        Timestamp::from_millis(self.now)
    }

    fn connect_browser(&mut self) {
        self.ds.connect(BROWSER, "room", "bea", self.ts());
        self.settle();
    }

    fn deliver_to_browser(&mut self, msg: ServerMsg) {
        let now = self.ts();
        for m in (self.to_browser)(msg) {
            self.browser.deliver(m, now);
        }
    }

    fn settle(&mut self) {
        for _ in 0..40 {
            self.pump();
            match self.ds.poll_timeout() {
                Some(t) if t.as_millis() <= self.now + 2_000 => {
                    self.now = self.now.max(t.as_millis());
                    self.ds.handle_timeout(self.ts());
                }
                _ => break,
            }
        }
        self.pump();
    }

    fn pump(&mut self) {
        let now = self.ts();
        let Room {
            ds,
            natives,
            browser,
            hold_browser,
            held,
            to_browser,
            ..
        } = self;
        let mut parties: Vec<(ConnId, &mut dyn Party)> = natives
            .iter_mut()
            .map(|(c, p)| (*c, p as &mut dyn Party))
            .collect();
        parties.push((BROWSER, browser));
        let route = |conn, msg| match conn {
            BROWSER if *hold_browser => {
                held.push_back(msg);
                Vec::new()
            }
            BROWSER => to_browser(msg),
            _ => vec![msg],
        };
        exchange(ds, now, &mut parties, route, |_, _| {});
    }

    fn native(&mut self, conn: ConnId) -> &mut Participant {
        &mut self
            .natives
            .iter_mut()
            .find(|(c, _)| *c == conn)
            .expect("a native member")
            .1
    }

    fn state(&self) -> serde_json::Value {
        serde_json::from_str(&self.browser.state(self.now as f64)).unwrap()
    }

    fn events(&mut self) -> Vec<serde_json::Value> {
        let mut v = Vec::new();
        while let Some(e) = self.browser.poll_event() {
            v.push(serde_json::from_str(&e).unwrap());
        }
        v
    }
}

#[test]
fn browser_never_seals_a_frame_without_a_key() {
    let mut room = Room::new();
    // Before it is in the group: nothing to seal with, so nothing is sent.
    assert!(room.browser.seal(true, &vp8_keyframe(1)).is_none());
    assert!(room.browser.seal(false, &[1, 2, 3]).is_none());
    assert_eq!(room.state()["frames"]["unsealed_dropped"], 2);
    assert_eq!(room.state()["frames"]["sealed"], 0);
    room.connect_browser();
    assert!(room.browser.seal(true, &vp8_keyframe(1)).is_some());
    // After leaving, the keys are gone again.
    room.browser.leave().unwrap();
    assert!(room.browser.seal(true, &vp8_keyframe(2)).is_none());
}

#[test]
fn browser_pins_keys_and_warns_when_a_known_user_id_comes_with_a_new_one() {
    // The browser saw "ada" with another device key in an earlier call (its pins, as the
    // worker keeps them in IndexedDB).
    let mut room = Room::new();
    let other = device("ada").identity().fingerprint().unwrap();
    room.browser
        .set_pins(&format!("{} ada\n", other.to_hex()))
        .unwrap();
    room.connect_browser();
    let events = room.events();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "alarm"
                && e["reason"].as_str().unwrap().contains("new device key")),
        "{events:?}"
    );
    // Ada's pin stays the old key (the person decides); the browser pinned its own user id
    // to its own device. Garbage pins are refused.
    let ada = room.native(NATIVE).session().unwrap().own_leaf();
    let ada_now = room.native(NATIVE).member(ada).unwrap().fingerprint;
    let pins = room.browser.take_pins().expect("its own pin");
    assert!(pins.contains(&format!("{} ada", other.to_hex())), "{pins}");
    assert!(!pins.contains(&ada_now.to_hex()), "{pins}");
    assert!(pins.contains(" bea"), "{pins}");
    assert!(room.browser.set_pins("not a pin line").is_err());

    // A browser with no pins pins what it sees, for the worker to keep.
    let mut fresh = Room::new();
    fresh.browser.set_pins("").unwrap();
    fresh.connect_browser();
    let pins = fresh.browser.take_pins().expect("ada pinned");
    let ada = fresh.native(NATIVE).session().unwrap().own_leaf();
    let ada_fp = fresh.native(NATIVE).member(ada).unwrap().fingerprint;
    assert!(pins.contains(&format!("{} ada", ada_fp.to_hex())), "{pins}");
}

#[test]
fn a_browser_creates_an_invite_list_room_that_admits_only_the_listed_device() {
    let mut room = Room::browser_only(false);
    let ada = device("ada");
    let listed = ada.identity().fingerprint().unwrap();
    assert!(room.browser.set_invite_list("not-hex").is_err());
    room.browser.set_invite_list(&listed.to_hex()).unwrap();
    room.connect_browser();
    assert_eq!(room.state()["policy"], "invite-list");
    room.natives.push((
        NATIVE,
        Participant::new(ada, "room", NewRoomPolicy::Open, AdmitMode::Auto),
    ));
    room.ds.connect(NATIVE, "room", "ada", room.ts());
    room.settle();
    room.natives.push((
        THIRD,
        Participant::new(device("cy"), "room", NewRoomPolicy::Open, AdmitMode::Auto),
    ));
    room.ds.connect(THIRD, "room", "cy", room.ts());
    room.settle();
    let names: Vec<String> = room.state()["roster"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["Bea", "ada"], "only the listed device got in");
}

#[test]
fn a_browser_lobby_host_whose_connection_dropped_is_added_back_by_a_member_who_is_no_host() {
    // The page hosts a lobby, admits ada, loses its connection and rejoins with the same
    // device (`Call::rejoin`, what the worker does): ada, no host, adds it back.
    let mut room = Room::browser_only(true);
    room.connect_browser();
    assert_eq!(room.state()["policy"], "lobby");
    room.natives.push((
        NATIVE,
        Participant::new(device("ada"), "room", NewRoomPolicy::Open, AdmitMode::Auto),
    ));
    room.ds.connect(NATIVE, "room", "ada", room.ts());
    room.settle();
    let knock = room.state()["knocks"][0]["knock"]
        .as_u64()
        .expect("ada knocks");
    room.browser.admit(knock, room.now as f64, 7).unwrap();
    room.settle();
    assert_eq!(room.ds.member_count("room"), 2);
    let code = room.state()["security_code"].clone();

    room.ds.disconnect(BROWSER, room.ts());
    let old = std::mem::replace(
        &mut room.browser,
        Browser(Call::new(&new_identity("x", "x").unwrap(), "x", "room", false).unwrap()),
    );
    room.browser = Browser(old.0.rejoin());
    room.now += 1_000;
    room.connect_browser();
    let state = room.state();
    assert_eq!(state["policy"], "lobby", "{state}");
    assert_eq!(state["is_host"], true);
    assert_eq!(state["roster"].as_array().map(Vec::len), Some(2));
    assert_ne!(state["security_code"], code, "a new epoch");
    assert_eq!(
        state["security_code"].as_str(),
        room.native(NATIVE)
            .security_code()
            .map(|c| c.to_string())
            .as_deref()
    );
}

#[test]
fn browser_and_native_member_open_each_others_frames_and_show_one_code() {
    let mut room = Room::new();
    room.connect_browser();
    let state = room.state();
    assert_eq!(state["roster"].as_array().unwrap().len(), 2);
    let native_code = room.native(NATIVE).security_code().unwrap().to_string();
    assert_eq!(state["security_code"], native_code.as_str());
    let events = room.events();
    assert!(events.iter().any(|e| e["type"] == "joined"), "{events:?}");

    // Browser to native: the VP8 header stays clear, the rest is sealed.
    let frame = vp8_keyframe(0xab);
    let wire = room.browser.seal(true, &frame).unwrap();
    assert_eq!(
        &wire[..10],
        &frame[..10],
        "the packetizer's bytes stay clear"
    );
    assert!(
        !wire.windows(32).any(|w| w == &frame[10..42]),
        "the body is not in the clear"
    );
    let mut plain = Vec::new();
    let ts = room.ts();
    let info = room
        .native(NATIVE)
        .media()
        .open(&wire, ClearPrefix::Vp8, &mut plain, ts)
        .unwrap();
    assert_eq!(plain, frame);
    assert_eq!(u64::from(info.sender), state["me"].as_u64().unwrap());

    // Native to browser (audio: all encrypted).
    let mut wire = Vec::new();
    room.native(NATIVE)
        .media()
        .seal(b"opus packet", ClearPrefix::None, &mut wire)
        .unwrap();
    let opened = room.browser.open(false, &wire, 1, room.now as f64).unwrap();
    assert_eq!(opened, b"opus packet");
    assert_eq!(room.browser.last_sender(), Some(0));
    let state = room.state();
    let ada = &state["roster"][0];
    assert_eq!(ada["name"], "ada");
    assert_eq!(ada["status"], "decrypting");
}

#[test]
fn frames_for_an_epoch_not_reached_are_held_then_released_in_order() {
    let mut room = Room::new();
    room.connect_browser();
    // A third member joins; the browser does not get the commit yet.
    room.hold_browser = true;
    room.natives.push((
        THIRD,
        Participant::new(device("cy"), "room", NewRoomPolicy::Open, AdmitMode::Auto),
    ));
    let ts = room.ts();
    room.ds.connect(THIRD, "room", "cy", ts);
    room.settle();
    assert_eq!(room.native(NATIVE).epoch(), Some(2));
    let mut tags = Vec::new();
    for i in 0..3u8 {
        let mut wire = Vec::new();
        room.native(NATIVE)
            .media()
            .seal(&vp8_keyframe(i), ClearPrefix::Vp8, &mut wire)
            .unwrap();
        let tag = 100 + u32::from(i);
        assert!(room
            .browser
            .open(true, &wire, tag, room.now as f64)
            .is_none());
        assert!(room.browser.last_held(), "held, not dropped");
        tags.push(tag);
    }
    assert_eq!(room.state()["roster"][0]["status"], "waiting for key");
    // The commit arrives: the held frames open, in order.
    room.hold_browser = false;
    while let Some(m) = room.held.pop_front() {
        room.deliver_to_browser(m);
    }
    assert_eq!(room.state()["epoch"], 2);
    let released = room.browser.release(room.now as f64);
    assert_eq!(released, tags);
    for (i, tag) in tags.iter().enumerate() {
        assert_eq!(
            room.browser.take_released(*tag).unwrap(),
            vp8_keyframe(i as u8)
        );
    }
    let events = room.events();
    let epoch = events.iter().find(|e| e["type"] == "epoch").unwrap();
    assert_eq!(epoch["reason"], "cy joined");
    assert_eq!(room.state()["last_change"]["reason"], "cy joined");
}

#[test]
fn a_welcome_whose_tree_came_in_parts_joins() {
    let mut room = Room::new();
    // The server sends the tree ahead of the Welcome in small pieces.
    room.to_browser = |m| match m {
        ServerMsg::Welcome {
            welcome,
            ratchet_tree,
        } => {
            let mut v: Vec<ServerMsg> = ratchet_tree
                .0
                .chunks(100)
                .map(|c| ServerMsg::TreePart {
                    part: Bytes(c.to_vec()),
                })
                .collect();
            v.push(ServerMsg::Welcome {
                welcome,
                ratchet_tree: Bytes(Vec::new()),
            });
            v
        }
        m => vec![m],
    };
    room.connect_browser();
    assert_eq!(room.state()["epoch"], 1);
    assert_eq!(
        room.state()["security_code"],
        room.native(NATIVE)
            .security_code()
            .unwrap()
            .to_string()
            .as_str()
    );
}

#[test]
fn the_token_claims_and_identity_are_read_without_trusting_them() {
    assert!(conclave_web::token_claims("not a token").is_none());
    assert!(conclave_web::token_claims("ct1.!!!.sig").is_none());
    let id = new_identity("u1", "Una").unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&conclave_web::identity_info(&id).unwrap()).unwrap();
    assert_eq!(info["user_id"], "u1");
    assert_eq!(info["name"], "Una");
    assert_eq!(info["fingerprint"].as_str().unwrap().split(' ').count(), 4);
    assert!(conclave_web::identity_info(&[1, 2, 3]).is_err());
    assert!(Call::new(&[0; 10], "x", "room", false).is_err());
}

/// Attacks by a malicious server or member on the browser core (`cargo test adversarial`).
mod adversarial {
    use super::*;

    #[test]
    fn tampered_or_replayed_frames_are_never_played_and_show_as_failing() {
        let mut room = Room::new();
        room.connect_browser();
        let mut wire = Vec::new();
        room.native(NATIVE)
            .media()
            .seal(&vp8_keyframe(3), ClearPrefix::Vp8, &mut wire)
            .unwrap();
        // A bit flip in the clear VP8 header: authenticated, so the frame fails.
        let mut bad = wire.clone();
        bad[4] ^= 0x01;
        assert!(room.browser.open(true, &bad, 1, room.now as f64).is_none());
        assert!(!room.browser.last_held());
        assert_eq!(room.state()["roster"][0]["status"], "failing");
        assert_eq!(room.state()["frames"]["failed"], 1);
        // The genuine frame still opens, once; its second copy is a duplicate, not played.
        assert!(room.browser.open(true, &wire, 2, room.now as f64).is_some());
        assert_eq!(room.state()["roster"][0]["status"], "decrypting");
        assert!(room.browser.open(true, &wire, 3, room.now as f64).is_none());
        assert_eq!(room.state()["roster"][0]["health"]["duplicates"], 1);
        // A KID naming no member does not make up a roster entry or a health record.
        let mut forged = wire.clone();
        forged[10] ^= 0x7f;
        assert!(room
            .browser
            .open(true, &forged, 4, room.now as f64)
            .is_none());
        assert_eq!(room.state()["roster"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn oversized_tree_parts_raise_an_alarm_and_are_dropped() {
        let mut room = Room::new();
        let part = ServerMsg::TreePart {
            part: Bytes(vec![0; conclave_proto::TREE_PART_LEN]),
        };
        let text = part.encode();
        let n = conclave_proto::MAX_TREE_LEN / conclave_proto::TREE_PART_LEN + 1;
        for _ in 0..n {
            let _ = room.browser.handle(&text, room.now as f64, 1);
        }
        let events = room.events();
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "alarm" && e["reason"].as_str().unwrap().contains("tree")),
            "{events:?}"
        );
    }

    #[test]
    fn malformed_server_messages_are_refused_and_the_call_goes_on() {
        let mut room = Room::new();
        room.connect_browser();
        for bad in [
            "",
            "{",
            r#"{"type":"commit","commit":"!!"}"#,
            r#"{"type":"nope"}"#,
        ] {
            assert!(
                room.browser.handle(bad, room.now as f64, 1).is_err(),
                "{bad}"
            );
        }
        // A commit that is not MLS: an alarm, no epoch change.
        let junk = ServerMsg::Commit {
            commit: Bytes(vec![1, 2, 3]),
        };
        let _ = room.browser.handle(&junk.encode(), room.now as f64, 1);
        let events = room.events();
        assert!(
            events.iter().filter(|e| e["type"] == "alarm").count() >= 5,
            "{events:?}"
        );
        assert_eq!(room.state()["epoch"], 1);
        assert!(room.browser.seal(false, b"still works").is_some());
    }
}
