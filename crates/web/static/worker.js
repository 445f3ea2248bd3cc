// Conclave's call worker. It alone holds the keys: the device identity (kept in IndexedDB),
// the MLS group state and the SFrame keys all live in this worker's WebAssembly instance. It
// owns the signaling WebSocket, and every encoded audio and video frame of the call passes
// through it (RTCRtpScriptTransform, or transferred encoded streams where only those exist):
// outgoing frames are sealed or dropped, incoming frames are opened or dropped. The page only
// ever gets the roster, the security code and health figures.
import init, * as wasm from "./conclave_web.js";


let call = null; // wasm Call
let callKey = null; // token, room, name and lobby flag the call was made for
let ws = null;
let pendingOffer = null; // SDP to send once the server answered our hello
let helloAnswered = false;
let leaving = false;
let ended = false;
let nextTag = 1;
// Frames the core holds for an epoch not reached yet, by tag: the core decides how many and
// for how long; this keeps only the encoded-frame objects it will hand back or let go.
const held = new Map(); // tag -> { frame, controller }
const slots = new Map(); // receive slot -> { kind, leaf }
const senders = []; // { transformer, lastEpoch }
let timer = null;
let ready; // promise: wasm loaded
let wantProbe = false;
const probe = []; // test probe: plaintext samples of sent frames (only when asked for)
let probeTick = 0;

function post(msg) {
  self.postMessage(msg);
}

function rand() {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return a[0];
}

// --- identity in IndexedDB --------------------------------------------------------------

function idb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open("conclave", 1);
    req.onupgradeneeded = () => req.result.createObjectStore("identities");
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function idbGet(key) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const r = db.transaction("identities").objectStore("identities").get(key);
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

async function idbPut(key, value) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction("identities", "readwrite");
    tx.objectStore("identities").put(value, key);
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}

// One device key per user id (the token's subject), made here on first use.
async function identityFor(userId, name) {
  const key = `identity:${userId}`;
  let bytes = await idbGet(key).catch(() => undefined);
  let created = false;
  if (!(bytes instanceof Uint8Array)) {
    bytes = wasm.newIdentity(userId, name);
    created = true;
    await idbPut(key, bytes).catch((e) =>
      post({ type: "warning", text: `could not store the device key (${e}); it lasts for this call only` }),
    );
  }
  return { bytes, created, info: JSON.parse(wasm.identityInfo(bytes)) };
}

// --- signaling ---------------------------------------------------------------------------

// Trust-on-first-use pins of this user id, kept beside its device key.
let pinsKey = null;
function savePins() {
  const text = call && call.takePins();
  if (text !== undefined && pinsKey) {
    idbPut(pinsKey, text).catch((e) => post({ type: "warning", text: `could not keep the pinned keys (${e})` }));
  }
}

function flush() {
  savePins();
  if (!call || !ws || ws.readyState !== WebSocket.OPEN) return;
  let m;
  while ((m = call.pollTransmit()) !== undefined) ws.send(m);
  drainEvents();
}

function drainEvents() {
  let e;
  let epochMoved = false;
  while ((e = call.pollEvent()) !== undefined) {
    const ev = JSON.parse(e);
    if (ev.type === "joined" || ev.type === "epoch") epochMoved = true;
    if (ev.type === "ended") {
      ended = true;
    }
    post({ type: "event", event: ev });
  }
  if (epochMoved) {
    releaseHeld();
    postState();
  }
}

function releaseHeld() {
  const now = Date.now();
  for (const tag of call.release(now)) {
    const h = held.get(tag);
    const plain = call.takeReleased(tag);
    held.delete(tag);
    if (!h || !plain) continue;
    h.frame.data = plain.buffer;
    try {
      h.controller.enqueue(h.frame);
    } catch (_) {
      // The stream closed meanwhile.
    }
  }
  dropHeld();
}

// Lets go of the frames the core gave up on (expired, pushed out, refused).
function dropHeld() {
  for (const tag of call.takeDropped()) held.delete(tag);
}

function postState() {
  if (!call) return;
  const state = JSON.parse(call.state(Date.now()));
  state.slots = [...slots.entries()].map(([slot, s]) => ({ slot, kind: s.kind, leaf: s.leaf }));
  state.held_js = held.size;
  post({ type: "state", state });
}

function schedule() {
  if (timer) clearTimeout(timer);
  if (!call) return;
  const next = call.nextTimeout();
  const wait = next === undefined ? 1000 : Math.max(0, Math.min(1000, next - Date.now()));
  timer = setTimeout(tick, wait);
}

function tick() {
  timer = null;
  if (!call) return;
  try {
    call.handleTimeout(Date.now(), rand());
    dropHeld();
  } catch (e) {
    post({ type: "event", event: { type: "alarm", reason: String(e) } });
  }
  flush();
  postState();
  schedule();
}

async function start(msg) {
  await ready;
  // A new membership (the first, or a rejoin after a lost connection): nothing of the last
  // one is kept but the device (its key, and what a lobby host needs to be added back into
  // its own group when no other host is there).
  const old = ws;
  ws = null;
  if (old) old.close();
  const key = JSON.stringify([msg.token, msg.room, msg.name || "", !!msg.lobby]);
  let kept = null;
  if (call && callKey === key) {
    kept = call.rejoin(); // consumes the old call
    call = null;
  }
  wipe();
  helloAnswered = false;
  pendingOffer = null;
  leaving = false;
  ended = false;
  slots.clear();
  senders.length = 0;
  const claims = wasm.tokenClaims(msg.token);
  if (!claims) {
    post({ type: "fatal", text: "That link does not carry a join token." });
    return;
  }
  const c = JSON.parse(claims);
  const name = msg.name || c.name || c.sub;
  const id = await identityFor(c.sub, name);
  post({ type: "identity", userId: c.sub, name, fingerprint: id.info.fingerprint, created: id.created });
  call = kept || new wasm.Call(id.bytes, name, msg.room, !!msg.lobby);
  callKey = key;
  pinsKey = `pins:${c.sub}`;
  let pins = "";
  try {
    const stored = await idbGet(pinsKey);
    if (typeof stored === "string") pins = stored;
  } catch (e) {
    // Unreadable storage: keep going without overwriting what may be there.
    pinsKey = null;
    post({ type: "warning", text: `could not read the keys this browser pinned earlier (${e}); none are checked this time` });
  }
  // What the stored pins and the link fix about this call; any of them unusable: not joining.
  const setup = [
    [() => call.setPins(pins), "The keys this browser pinned earlier are unreadable"],
    [msg.allow && (() => call.setInviteList(msg.allow)), "This link's invite list is not valid"],
    [msg.charter && (() => call.setCharter(msg.charter)), "This link's meeting charter is not valid"],
  ];
  for (const [apply, failure] of setup) {
    if (!apply) continue;
    try {
      apply();
    } catch (e) {
      post({ type: "fatal", text: `${failure} (${e}); not joining.` });
      return;
    }
  }
  wantProbe = !!msg.probe;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const sock = new WebSocket(`${scheme}//${location.host}/ws/${encodeURIComponent(msg.room)}`);
  ws = sock;
  sock.onopen = () => {
    if (sock !== ws) return;
    sock.send(wasm.helloMessage(msg.token));
    post({ type: "signaling", state: "open" });
  };
  sock.onmessage = (m) => {
    if (sock !== ws || typeof m.data !== "string" || !call) return;
    const joinedBefore = helloAnswered;
    try {
      call.handle(m.data, Date.now(), rand());
    } catch (e) {
      // Refused input is already an alarm event; the call goes on.
    }
    helloAnswered = call.helloAnswered();
    if (!joinedBefore && helloAnswered && pendingOffer) {
      sock.send(wasm.Call.mediaOffer(pendingOffer.sdp));
      sock.send(wasm.Call.videoTiles(pendingOffer.tileWidth));
      pendingOffer = null;
    }
    flush();
    schedule();
  };
  sock.onclose = (e) => {
    if (sock !== ws) return; // a socket this worker already replaced
    post({ type: "signaling", state: "closed", code: e.code, reason: e.reason, leaving });
    ended = true;
    wipe();
  };
  sock.onerror = () => {
    if (sock === ws) post({ type: "signaling", state: "error" });
  };
  schedule();
}

// Erase every key: the call is over (left, removed, or the connection is gone; the native
// client rejoins as a new member after a lost connection, and so does a reloaded page).
function wipe() {
  if (timer) clearTimeout(timer);
  timer = null;
  held.clear();
  if (call) {
    call.free();
    call = null;
  }
  postState();
}

// --- media transforms ---------------------------------------------------------------------

function sendTransform(readable, writable, options, transformer) {
  const video = options.kind === "video";
  const s = { transformer, lastEpoch: undefined };
  senders.push(s);
  const ts = new TransformStream({
    transform(frame, controller) {
      if (!call || ended) return; // no keys: nothing goes out
      const plain = new Uint8Array(frame.data);
      const sealed = call.seal(video, plain);
      if (!sealed) return; // not ready: dropped, never sent in the clear
      const epoch = call.sendingEpoch();
      if (epoch !== s.lastEpoch) {
        // A new key: ask the encoder for a keyframe, so that whoever just joined can start.
        const first = s.lastEpoch === undefined;
        s.lastEpoch = epoch;
        if (!first && transformer && typeof transformer.generateKeyFrame === "function") {
          transformer.generateKeyFrame().catch(() => {});
        }
      }
      if (wantProbe && probe.length < 200 && plain.length > 64 && probeTick++ % 8 === 0) {
        // Test probe: 32 bytes from the encrypted part of every 8th frame (past any clear
        // prefix), so the samples span the call's first 15 s or so.
        const at = Math.min(plain.length - 32, 16 + ((probe.length * 7) % Math.max(1, plain.length - 48)));
        probe.push({ kind: options.kind, bytes: Array.from(plain.subarray(at, at + 32)) });
      }
      frame.data = sealed.buffer;
      controller.enqueue(frame);
    },
  });
  readable.pipeThrough(ts).pipeTo(writable).catch(() => {});
}

function recvTransform(readable, writable, options) {
  const video = options.kind === "video";
  const slot = { kind: options.kind, leaf: undefined };
  slots.set(options.slot, slot);
  const ts = new TransformStream({
    transform(frame, controller) {
      if (!call || ended) return; // nothing is played without a key
      const tag = nextTag++;
      const plain = call.open(video, new Uint8Array(frame.data), tag, Date.now());
      if (plain) {
        const leaf = call.lastSender();
        if (leaf !== slot.leaf) {
          slot.leaf = leaf;
          post({ type: "slot", slot: options.slot, kind: options.kind, leaf });
        }
        frame.data = plain.buffer;
        controller.enqueue(frame);
      } else if (call.lastHeld()) {
        held.set(tag, { frame, controller });
        dropHeld();
      }
      // Otherwise the frame failed (counted by the core, shown as the sender's health) and
      // is dropped: never handed to a decoder.
    },
  });
  readable.pipeThrough(ts).pipeTo(writable).catch(() => {});
}

function attach(readable, writable, options, transformer) {
  if (options.side === "send") sendTransform(readable, writable, options, transformer);
  else recvTransform(readable, writable, options);
}

// RTCRtpScriptTransform (Chromium, Firefox, Safari).
self.onrtctransform = (event) => {
  const t = event.transformer;
  attach(t.readable, t.writable, t.options, t);
};

self.onmessage = async (m) => {
  const msg = m.data;
  switch (msg.type) {
    case "start":
      start(msg).catch((e) => post({ type: "fatal", text: `could not start: ${e}` }));
      break;
    case "streams":
      // createEncodedStreams (older Chromium): the page transferred the streams here.
      attach(msg.readable, msg.writable, msg.options, null);
      break;
    case "offer":
      if (helloAnswered && ws && ws.readyState === WebSocket.OPEN) {
        ws.send(wasm.Call.mediaOffer(msg.sdp));
        ws.send(wasm.Call.videoTiles(msg.tileWidth));
      } else {
        pendingOffer = { sdp: msg.sdp, tileWidth: msg.tileWidth };
      }
      break;
    case "admit":
      if (call) {
        try {
          call.admit(BigInt(msg.knock), Date.now(), rand());
        } catch (e) {
          post({ type: "event", event: { type: "alarm", reason: String(e) } });
        }
        flush();
      }
      break;
    case "deny":
      if (call) {
        call.deny(BigInt(msg.knock));
        flush();
      }
      break;
    case "leave":
      leaving = true;
      if (call) {
        try {
          call.leave();
        } catch (_) {}
        flush();
      }
      setTimeout(() => {
        if (ws) ws.close(1000, "left");
        wipe();
      }, 300);
      break;
    case "state":
      postState();
      break;
    case "probe":
      post({ type: "probe", samples: probe.slice() });
      break;
  }
};

ready = init();
ready.then(
  () => {
    // When the page tries again after a lost connection: the participant core's schedule.
    const reconnect = [];
    for (let i = 0, ms; (ms = wasm.reconnectDelayMs(i, rand())) !== undefined; i++) reconnect.push(ms);
    post({ type: "ready", reconnect });
  },
  (e) => post({ type: "fatal", text: `the encryption module did not load: ${e}` }),
);
