//! The real DS core with real participants (the client core and the E2EE core) on an
//! in-memory network, driven by simulated time. The network is the server's: a test can
//! rewrite, withhold, reorder, replay or invent anything the server sends a connection (a
//! malicious server around an honest DS core), and every participant is the real, unmodified
//! core.

use std::collections::BTreeMap;
use std::time::Duration;

pub use conclave_client::{AdmitMode, Event, NewRoomPolicy, Participant};
pub use conclave_ds::{generate_server_identity, ConnId, Ds, DsConfig, Output};
pub use conclave_e2ee::{
    ClearPrefix, CredentialInfo, Device, DeviceIdentity, GroupStore, RoomCipherSuite, Timestamp,
};
pub use conclave_proto::{
    Bytes, ClientMsg, ErrorCode, KnockId, KnockInfo, MembershipMsg, ServerMsg,
};

pub use crate::{device, T0};

/// What a malicious server does to the messages for one connection: each message the DS core
/// sends there becomes whatever this returns (nothing, the same, another, several).
pub type Rewrite = Box<dyn FnMut(ServerMsg) -> Vec<ServerMsg>>;

pub use crate::SUITE;

/// The DS core, its participants by connection, and what a malicious server does between them.
pub struct Net {
    pub ds: Ds,
    pub parts: BTreeMap<ConnId, Participant>,
    pub closed: Vec<ConnId>,
    /// Every message the server sent, per connection (for assertions).
    pub seen: BTreeMap<ConnId, Vec<ServerMsg>>,
    pub events: BTreeMap<ConnId, Vec<Event>>,
    pub now: Timestamp,
    /// A malicious server: commits it does not deliver to these connections.
    pub withhold_commits_from: Vec<ConnId>,
    /// A malicious server: what it does to the messages for these connections.
    pub rewrite: BTreeMap<ConnId, Rewrite>,
    /// Connections the DS says are group members now (the SFU serves only these).
    pub members: Vec<ConnId>,
}

impl Default for Net {
    fn default() -> Net {
        Net::new()
    }
}

impl Net {
    /// A DS with the default configuration and nobody connected, at [`T0`].
    pub fn new() -> Net {
        Self::with_config(DsConfig::default())
    }

    /// A DS with `config` and nobody connected, at [`T0`].
    pub fn with_config(config: DsConfig) -> Net {
        let (secret, identity) = generate_server_identity(SUITE).expect("server identity");
        Net {
            ds: Ds::new(config, secret, identity),
            parts: BTreeMap::new(),
            closed: Vec::new(),
            seen: BTreeMap::new(),
            events: BTreeMap::new(),
            now: T0,
            withhold_commits_from: Vec::new(),
            rewrite: BTreeMap::new(),
            members: Vec::new(),
        }
    }

    pub fn join(&mut self, conn: ConnId, user: &str, policy: NewRoomPolicy, admit: AdmitMode) {
        self.join_with(conn, user, device(user), policy, admit)
    }

    pub fn join_with(
        &mut self,
        conn: ConnId,
        user: &str,
        d: Device,
        policy: NewRoomPolicy,
        admit: AdmitMode,
    ) {
        self.parts
            .insert(conn, Participant::new(d, "room", policy, admit));
        self.ds.connect(conn, "room", user, self.now);
        self.settle();
    }

    /// Connects `conn` as `user` (an open-room participant with its own device) without
    /// delivering anything yet: knocks that should arrive together.
    pub fn connect_quietly(&mut self, conn: ConnId, user: &str) {
        self.parts.insert(
            conn,
            Participant::new(device(user), "room", NewRoomPolicy::Open, AdmitMode::Auto),
        );
        self.ds.connect(conn, "room", user, self.now);
    }

    /// Connects `conn` as `user` with a participant made by the test (a charter, say).
    pub fn join_as(&mut self, conn: ConnId, user: &str, p: Participant) {
        self.parts.insert(conn, p);
        self.ds.connect(conn, "room", user, self.now);
        self.settle();
    }

    /// Delivers everything until quiet, then lets time run to each pending timeout (up to 1 s
    /// of simulated time, enough for batching windows).
    pub fn settle(&mut self) {
        self.pump();
        for _ in 0..20 {
            match self.ds.poll_timeout() {
                Some(t) if t <= self.now.saturating_add(Duration::from_secs(1)) => {
                    self.now = self.now.max(t);
                    self.ds.handle_timeout(self.now);
                    self.pump();
                }
                _ => break,
            }
        }
    }

    pub fn advance(&mut self, d: Duration) {
        self.now = self.now.saturating_add(d);
        self.ds.handle_timeout(self.now);
        self.settle();
    }

    pub fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(o) = self.ds.poll_output() {
                progressed = true;
                match o {
                    Output::Send { conn, msg } => {
                        if matches!(msg, ServerMsg::Commit { .. })
                            && self.withhold_commits_from.contains(&conn)
                        {
                            continue;
                        }
                        let msgs = match self.rewrite.get_mut(&conn) {
                            Some(f) => f(msg),
                            None => vec![msg],
                        };
                        for msg in msgs {
                            self.deliver(conn, msg);
                        }
                    }
                    Output::Close { conn, .. } => {
                        self.closed.push(conn);
                        if self.parts.remove(&conn).is_some() {
                            self.ds.disconnect(conn, self.now);
                        }
                    }
                    Output::Membership { conn, member } => {
                        self.members.retain(|c| *c != conn);
                        if member {
                            self.members.push(conn);
                        }
                    }
                    other => panic!("unexpected output {other:?}"),
                }
            }
            let conns: Vec<ConnId> = self.parts.keys().copied().collect();
            for c in conns {
                let p = self.parts.get_mut(&c).unwrap();
                let mut msgs = Vec::new();
                while let Some(m) = p.poll_transmit() {
                    msgs.push(m);
                }
                while let Some(e) = p.poll_event() {
                    self.events.entry(c).or_default().push(e);
                }
                for m in msgs {
                    progressed = true;
                    self.ds.handle(c, m, self.now);
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Hands `msg` to `conn` as the server would (recorded in `seen`).
    pub fn deliver(&mut self, conn: ConnId, msg: ServerMsg) {
        self.seen.entry(conn).or_default().push(msg.clone());
        if let Some(p) = self.parts.get_mut(&conn) {
            let _ = p.handle(msg, self.now);
        }
    }

    /// Member `conn`'s session (driven as modified software would be) commits `adds` on the
    /// current epoch, and the commit goes straight to the DS, skipping the participant core.
    pub fn danger_commit(&mut self, conn: ConnId, adds: &[Vec<u8>]) {
        let now = self.now;
        let s = self.p(conn).danger_session_mut().unwrap();
        let epoch = s.epoch();
        let bundle = s.commit(adds, &[], now).unwrap();
        self.ds.handle(
            conn,
            MembershipMsg::Commit {
                epoch,
                commit: Bytes(bundle.commit),
                welcome: bundle.welcome.map(Bytes),
            },
            now,
        );
    }

    /// Panics unless the server refused something of `conn`'s with a reason containing
    /// `needle` (and shows what it did send).
    #[track_caller]
    pub fn expect_refused(&self, conn: ConnId, needle: &str) {
        self.expect_seen(conn, needle, |m| match m {
            ServerMsg::Error { reason, .. } => Some(reason),
            _ => None,
        });
    }

    /// Panics unless the DS turned down a commit of `conn`'s with a reason containing
    /// `needle` (and shows what it did send).
    #[track_caller]
    pub fn expect_commit_rejected(&self, conn: ConnId, needle: &str) {
        self.expect_seen(conn, needle, |m| match m {
            ServerMsg::CommitRejected { reason, .. } => Some(reason),
            _ => None,
        });
    }

    #[track_caller]
    fn expect_seen(&self, conn: ConnId, needle: &str, reason: fn(&ServerMsg) -> Option<&String>) {
        let seen = self.seen.get(&conn).map_or(&[][..], Vec::as_slice);
        assert!(
            seen.iter().filter_map(reason).any(|r| r.contains(needle)),
            "connection {conn} was not told {needle:?}; it got {seen:?}"
        );
    }

    /// Events of `conn` so far.
    pub fn events_of(&self, conn: ConnId) -> &[Event] {
        self.events.get(&conn).map_or(&[], Vec::as_slice)
    }

    pub fn p(&mut self, conn: ConnId) -> &mut Participant {
        self.parts.get_mut(&conn).unwrap()
    }

    /// `conn`'s connection closes (a killed process or a lost network): the participant is
    /// taken out of the net and handed back, and the DS runs until quiet.
    pub fn drop_connection(&mut self, conn: ConnId) -> Option<Participant> {
        let p = self.parts.remove(&conn);
        self.ds.disconnect(conn, self.now);
        self.settle();
        p
    }

    /// `conn` leaves cleanly, then its connection closes.
    pub fn leave_and_close(&mut self, conn: ConnId) {
        self.p(conn).leave().expect("a member can leave");
        self.settle();
        self.drop_connection(conn);
    }

    pub fn codes(&self) -> Vec<String> {
        self.parts
            .values()
            .map(|p| p.security_code().map(|c| c.to_string()).unwrap_or_default())
            .collect()
    }

    pub fn alarms(&self, conn: ConnId) -> usize {
        self.events.get(&conn).map_or(0, |e| {
            e.iter()
                .filter(|e| matches!(e, Event::Alarm { .. }))
                .count()
        })
    }
}

pub fn open_room(n: u64) -> Net {
    let mut net = Net::new();
    for i in 1..=n {
        net.join(
            ConnId(i),
            &format!("user{i}"),
            NewRoomPolicy::Open,
            AdmitMode::Auto,
        );
    }
    net
}

/// One party on a connection to the DS: the native participant core, or a test's wrapper of
/// another (the browser's `Call`, which speaks JSON text).
pub trait Party {
    /// A message the server sends it.
    fn deliver(&mut self, msg: ServerMsg, now: Timestamp);
    /// Everything it has to send now; its events are drained.
    fn transmit(&mut self) -> Vec<MembershipMsg>;
}

impl Party for Participant {
    fn deliver(&mut self, msg: ServerMsg, now: Timestamp) {
        // A refusal is the participant's own business (an alarm event); the call goes on.
        let _ = self.handle(msg, now);
    }

    fn transmit(&mut self) -> Vec<MembershipMsg> {
        let out = std::iter::from_fn(|| self.poll_transmit()).collect();
        while self.poll_event().is_some() {}
        out
    }
}

/// Runs the DS and `parties` at `now` until quiet: what the DS sends a party's connection
/// passes through `route` (the server's hands: it returns what to deliver instead, nothing to
/// withhold), and what each party sends goes to the DS after `sent` has seen it.
pub fn exchange(
    ds: &mut Ds,
    now: Timestamp,
    parties: &mut [(ConnId, &mut dyn Party)],
    mut route: impl FnMut(ConnId, ServerMsg) -> Vec<ServerMsg>,
    mut sent: impl FnMut(ConnId, &MembershipMsg),
) {
    loop {
        let mut progressed = false;
        while let Some(o) = ds.poll_output() {
            progressed = true;
            if let Output::Send { conn, msg } = o {
                let msgs = route(conn, msg);
                if let Some((_, p)) = parties.iter_mut().find(|(c, _)| *c == conn) {
                    for m in msgs {
                        p.deliver(m, now);
                    }
                }
            }
        }
        for (c, p) in parties.iter_mut() {
            for m in p.transmit() {
                progressed = true;
                sent(*c, &m);
                ds.handle(*c, m, now);
            }
        }
        if !progressed {
            break;
        }
    }
}

/// Delivers every DS output to the participants (by connection id) and their replies back,
/// until quiet.
pub fn pump(ds: &mut Ds, parts: &mut [(ConnId, Participant)]) {
    pump_recording(ds, parts, &mut Vec::new());
}

/// [`pump`], keeping every message: (connection, from the server?, JSON).
pub fn pump_recording(
    ds: &mut Ds,
    parts: &mut [(ConnId, Participant)],
    log: &mut Vec<(ConnId, bool, String)>,
) {
    let log = std::cell::RefCell::new(log);
    let mut parties: Vec<(ConnId, &mut dyn Party)> = parts
        .iter_mut()
        .map(|(c, p)| (*c, p as &mut dyn Party))
        .collect();
    exchange(
        ds,
        T0,
        &mut parties,
        |c, m| {
            log.borrow_mut().push((c, true, m.encode()));
            vec![m]
        },
        |c, m| log.borrow_mut().push((c, false, m.encode())),
    );
}
