// Conclave's page: camera, microphone, the WebRTC connection to the SFU, and what the call
// shows. It never touches a key: the worker (worker.js) holds them, and every encoded frame
// passes through the worker's transforms before it is sent or played. The page only asks the
// worker to do things and shows the roster, security code and health it reports.
import { detailsItems } from "./details.js";
import { installTestHook } from "./testhook.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const room = params.get("room");
const SLOTS = 8; // receive slots per kind: how many others can be seen and heard at once
const TILE_WIDTH = Number(params.get("tile")) || 640;
const SIMULCAST = [
  { rid: "l", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "m", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "h", maxBitrate: 1_200_000 },
];

// Which way this browser can put frames through the worker. Without either, Conclave sends
// and plays nothing: it never falls back to media the server could read.
function encodedTransformSupport() {
  if (typeof RTCRtpScriptTransform === "function") return "script"; // Chromium, Firefox, Safari
  if (typeof RTCRtpSender !== "undefined" && RTCRtpSender.prototype.createEncodedStreams) {
    return "streams"; // older Chromium
  }
  return null;
}

const support = encodedTransformSupport();
let worker = null;
let pc = null;
let local = null; // MediaStream
let state = null; // last state from the worker
let identity = null;
let lastCode = null;
let left = false;
const recv = []; // { slot, kind, transceiver, el }
const knockFingerprints = new Map();
const alarms = [];
let probeWaiter = null;
let finished = false; // removed, turned away or refused: no rejoining
let transformsAttached = 0;
let transformsWanted = 0;

function fatal(text) {
  $("fatal").textContent = text;
  $("fatal").classList.remove("hidden");
  for (const id of ["join", "lobby", "call"]) $(id).classList.add("hidden");
}

function alarm(text) {
  alarms.push(`${new Date().toLocaleTimeString()}: ${text}`);
  while (alarms.length > 5) alarms.shift();
  const box = $("alarms");
  box.replaceChildren(
    ...alarms.map((a) => {
      const d = document.createElement("div");
      d.textContent = `Warning: ${a}`;
      return d;
    }),
  );
}

function notice(text) {
  $("notice").textContent = text || "";
  $("notice").classList.toggle("hidden", !text);
}

function show(section) {
  for (const id of ["join", "lobby", "call", "left"]) $(id).classList.toggle("hidden", id !== section);
}

// --- joining -----------------------------------------------------------------------------

async function main() {
  if (!room) {
    fatal("Open a Conclave join link (it names the room and carries your token or an invitation).");
    return;
  }
  if (!support) {
    fatal(
      "This browser cannot encrypt media end to end (it has neither RTCRtpScriptTransform nor " +
        "encoded streams), so Conclave will not send or play any media in it. Use a current " +
        "Chromium, Firefox or Safari, or the conclave command-line client.",
    );
    return;
  }
  if (params.get("probe") === "1") {
    alarm("test probe on: this page keeps samples of its own outgoing media for a test");
  }
  worker = new Worker("/app/worker.js", { type: "module" });
  worker.onmessage = (m) => onWorker(m.data);
  worker.onerror = (e) => fatal(`The encryption worker failed: ${e.message}`);
  const token = params.get("token");
  if (token) {
    go(token, params.get("name") || "");
    return;
  }
  const invite = params.get("invite");
  if (!invite) {
    fatal("This link has neither a join token nor an invitation.");
    return;
  }
  $("join-room").textContent = room;
  $("join-name").value = localStorage.getItem("conclave-name") || "";
  show("join");
  $("join-form").onsubmit = async (e) => {
    e.preventDefault();
    const name = $("join-name").value.trim();
    if (!name) return;
    localStorage.setItem("conclave-name", name);
    const r = await fetch("/guest", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ room, invite, name }),
    });
    if (!r.ok) {
      fatal(`The server refused the invitation: ${await r.text()}`);
      return;
    }
    const g = await r.json();
    go(g.token, name);
  };
}

function protectSender(sender, kind) {
  transformsWanted++;
  if (support === "script") {
    sender.transform = new RTCRtpScriptTransform(worker, { side: "send", kind });
  } else {
    const { readable, writable } = sender.createEncodedStreams();
    worker.postMessage({ type: "streams", readable, writable, options: { side: "send", kind } }, [
      readable,
      writable,
    ]);
  }
  transformsAttached++;
}

function protectReceiver(receiver, kind, slot) {
  transformsWanted++;
  if (support === "script") {
    receiver.transform = new RTCRtpScriptTransform(worker, { side: "recv", kind, slot });
  } else {
    const { readable, writable } = receiver.createEncodedStreams();
    worker.postMessage({ type: "streams", readable, writable, options: { side: "recv", kind, slot } }, [
      readable,
      writable,
    ]);
  }
  transformsAttached++;
}

function preferCodec(transceiver, kind, mime) {
  if (!transceiver.setCodecPreferences || !RTCRtpReceiver.getCapabilities) return;
  const caps = RTCRtpReceiver.getCapabilities(kind);
  if (!caps) return;
  const wanted = caps.codecs.filter(
    (c) => c.mimeType.toLowerCase() === mime || c.mimeType.toLowerCase() === `${kind}/rtx`,
  );
  try {
    if (wanted.length) transceiver.setCodecPreferences(wanted);
  } catch (_) {
    // The SFU's answer picks VP8 and Opus anyway.
  }
}

// Rejoining after a lost connection, on the participant core's schedule, as the native
// client does (the worker sends it when it is ready: one wait per attempt; when they are used
// up the call ends). The device joins as a new member (a new epoch; in a lobby room a host
// admits it again).
let reconnectPlan = [];
let session = null; // { token, name }
let rejoinAttempt = 0;
let rejoinTimer = null;

async function go(token, name) {
  show("lobby");
  session = { token, name };
  try {
    local = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: 1280, height: 720, frameRate: 30 },
    });
  } catch (e) {
    alarm(`no camera or microphone (${e.message}); joining to watch and listen only`);
    local = new MediaStream();
  }
  const audioTrack = local.getAudioTracks()[0] || null;
  const videoTrack = local.getVideoTracks()[0] || null;
  selfTile(videoTrack);
  $("mic").disabled = !audioTrack;
  $("cam").disabled = !videoTrack;
  $("leave").disabled = false;
  $("mic").onclick = () => {
    audioTrack.enabled = !audioTrack.enabled;
    $("mic").textContent = audioTrack.enabled ? "Mute" : "Unmute";
    $("mic").classList.toggle("on", !audioTrack.enabled);
  };
  $("cam").onclick = () => {
    videoTrack.enabled = !videoTrack.enabled;
    $("cam").textContent = videoTrack.enabled ? "Camera off" : "Camera on";
    $("cam").classList.toggle("on", !videoTrack.enabled);
  };
  $("leave").onclick = () => leave("You left the call.");
  await connect();
}

// One membership: the worker's signaling session and a peer connection whose every sender and
// receiver goes through the worker.
async function connect() {
  worker.postMessage({
    type: "start",
    token: session.token,
    name: session.name,
    room,
    lobby: params.get("lobby") === "1",
    charter: params.get("charter") || null,
    allow: params.get("allow") || null,
    probe: params.get("probe") === "1",
  });
  transformsWanted = 0;
  transformsAttached = 0;
  const config = { bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" };
  if (support === "streams") config.encodedInsertableStreams = true;
  pc = new RTCPeerConnection(config);
  const audioTrack = local.getAudioTracks()[0] || null;
  const videoTrack = local.getVideoTracks()[0] || null;
  // Transforms go on before any track can send: no frame ever leaves unsealed.
  const a = pc.addTransceiver("audio", { direction: "sendonly" });
  protectSender(a.sender, "audio");
  preferCodec(a, "audio", "audio/opus");
  const v = pc.addTransceiver("video", { direction: "sendonly", sendEncodings: SIMULCAST });
  protectSender(v.sender, "video");
  preferCodec(v, "video", "video/vp8");
  for (let i = 0; i < SLOTS; i++) {
    const ra = pc.addTransceiver("audio", { direction: "recvonly" });
    protectReceiver(ra.receiver, "audio", 2 * i);
    recv.push({ slot: 2 * i, kind: "audio", transceiver: ra, el: null });
    const rv = pc.addTransceiver("video", { direction: "recvonly" });
    protectReceiver(rv.receiver, "video", 2 * i + 1);
    preferCodec(rv, "video", "video/vp8");
    recv.push({ slot: 2 * i + 1, kind: "video", transceiver: rv, el: null });
  }
  if (audioTrack) await a.sender.replaceTrack(audioTrack);
  if (videoTrack) await v.sender.replaceTrack(videoTrack);
  pc.ontrack = (e) => attachTrack(e.transceiver, e.track);
  pc.onconnectionstatechange = () => render();
  await pc.setLocalDescription();
  await gathered(pc, 2000);
  worker.postMessage({ type: "offer", sdp: pc.localDescription.sdp, tileWidth: TILE_WIDTH });
}

// The connection is gone: drop this membership's media (the worker already erased its keys).
function teardown() {
  if (pc) pc.close();
  pc = null;
  for (const r of recv) if (r.el) r.el.remove();
  recv.length = 0;
  state = null;
}

function rejoinLater(why) {
  if (left || rejoinTimer) return;
  teardown();
  if (rejoinAttempt >= reconnectPlan.length) {
    leave(`${why}; gave up after ${rejoinAttempt} attempts to rejoin.`, "Disconnected");
    return;
  }
  const wait = Math.round(reconnectPlan[rejoinAttempt]);
  rejoinAttempt++;
  notice(`Connection lost (${why}); rejoining in ${(wait / 1000).toFixed(1)} s, attempt ${rejoinAttempt} of ${reconnectPlan.length}. Nothing is sent until this device is back in the group.`);
  show("lobby");
  render();
  rejoinTimer = setTimeout(() => {
    rejoinTimer = null;
    connect().catch((e) => rejoinLater(`could not reconnect: ${e.message}`));
  }, wait);
}

function gathered(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(t);
        resolve();
      }
    });
  });
}

function leave(why, title = "You left the call") {
  if (left) return;
  left = true;
  if (rejoinTimer) clearTimeout(rejoinTimer);
  rejoinTimer = null;
  notice(null);
  worker.postMessage({ type: "leave" });
  if (pc) pc.close();
  if (local) for (const t of local.getTracks()) t.stop();
  $("left-title").textContent = title;
  $("left-why").textContent = why;
  for (const b of ["mic", "cam", "leave"]) $(b).disabled = true;
  show("left");
  render();
}

// --- media elements ------------------------------------------------------------------------

// A muted, autoplaying video element showing one track (sound goes through <audio>).
function videoOf(track) {
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  video.srcObject = new MediaStream([track]);
  return video;
}

function selfTile(track) {
  if (!track) return;
  const tile = document.createElement("div");
  tile.className = "tile self";
  const video = videoOf(track);
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = "You";
  tile.append(video, label);
  $("grid").prepend(tile);
}

function attachTrack(transceiver, track) {
  const r = recv.find((x) => x.transceiver === transceiver);
  if (!r) return;
  if (r.kind === "audio") {
    const el = document.createElement("audio");
    el.autoplay = true;
    el.srcObject = new MediaStream([track]);
    document.body.append(el);
    el.play().catch(() => soundButton());
    r.el = el;
    return;
  }
  const tile = document.createElement("div");
  tile.className = "tile hidden";
  tile.dataset.slot = r.slot;
  const video = videoOf(track);
  const label = document.createElement("span");
  label.className = "label";
  const st = document.createElement("span");
  st.className = "state";
  tile.append(video, label, st);
  $("grid").append(tile);
  r.el = tile;
  render();
}

function soundButton() {
  if ($("sound")) return;
  const b = document.createElement("button");
  b.id = "sound";
  b.textContent = "Enable sound";
  b.onclick = () => {
    for (const r of recv) if (r.kind === "audio" && r.el) r.el.play().catch(() => {});
    b.remove();
  };
  $("alarms").after(b);
}

// --- what the worker reports ---------------------------------------------------------------

function onWorker(msg) {
  switch (msg.type) {
    case "ready":
      reconnectPlan = msg.reconnect || [];
      break;
    case "fatal":
      fatal(msg.text);
      break;
    case "warning":
      alarm(msg.text);
      break;
    case "identity":
      identity = msg;
      $("my-fp-lobby").textContent = msg.fingerprint;
      break;
    case "state":
      state = msg.state;
      render();
      break;
    case "slot":
      if (state) {
        const s = state.slots.find((x) => x.slot === msg.slot);
        if (s) s.leaf = msg.leaf;
        else state.slots.push({ slot: msg.slot, kind: msg.kind, leaf: msg.leaf });
      }
      render();
      break;
    case "probe":
      if (probeWaiter) probeWaiter(msg.samples);
      probeWaiter = null;
      break;
    case "signaling":
      if (msg.state === "closed" && !left && !finished) {
        rejoinLater(msg.reason ? `the connection to the server closed (${msg.reason})` : "the connection to the server was lost");
      }
      break;
    case "event":
      onEvent(msg.event);
      break;
  }
}

function onEvent(ev) {
  switch (ev.type) {
    case "media_answer":
      pc.setRemoteDescription({ type: "answer", sdp: ev.sdp }).catch((e) =>
        alarm(`the media answer was refused: ${e.message}`),
      );
      break;
    case "knock":
      knockFingerprints.set(ev.knock, ev.fingerprint);
      break;
    case "alarm":
      alarm(ev.reason);
      break;
    case "joined":
      rejoinAttempt = 0;
      notice(null);
      break;
    case "ended":
      finished = true;
      leave(ev.reason, "The call ended for you");
      break;
    case "server_error":
      if (["unauthorized", "room_full", "version"].includes(ev.code)) {
        finished = true;
        fatal(`The server refused to let this device in: ${ev.reason}`);
      } else {
        alarm(`server: ${ev.reason}`);
      }
      break;
  }
}

function nameOf(leaf) {
  const m = state && state.roster.find((r) => r.leaf === leaf);
  return m ? m.name : `member ${leaf}`;
}

const STATUS_CLASS = {
  decrypting: "decrypting",
  "waiting for key": "waiting",
  failing: "failing",
  "no media": "none",
  "this device": "self",
};

// Whether every media path of this call goes through the worker's encryption.
function fullyEncrypted() {
  return (
    !!support &&
    transformsWanted > 0 &&
    transformsAttached === transformsWanted &&
    state &&
    state.epoch !== null &&
    state.epoch !== undefined
  );
}

function render() {
  const badge = $("e2ee");
  if (left) {
    badge.textContent = "Call ended; keys erased";
    badge.className = "badge off";
  } else if (fullyEncrypted()) {
    const connected = pc && pc.connectionState === "connected";
    badge.textContent = connected ? "End-to-end encrypted" : "End-to-end encrypted · media connecting";
    badge.className = "badge on";
  } else {
    badge.textContent = "Waiting for keys · nothing is sent";
    badge.className = "badge off";
  }
  if (!state) return;
  if (state.epoch !== null && state.epoch !== undefined && !left) show("call");
  const code = state.security_code || "–";
  if (lastCode !== null && code !== lastCode) {
    $("code").classList.add("changed");
    setTimeout(() => $("code").classList.remove("changed"), 3000);
  }
  lastCode = code;
  $("code").textContent = code;
  document.body.dataset.securityCode = state.security_code || "";
  const lc = state.last_change;
  $("epoch-info").textContent = lc
    ? `Epoch ${lc.epoch} · ${lc.reason} · ${new Date(lc.at_ms).toLocaleTimeString()}`
    : "";

  // Roster.
  $("count").textContent = `(${state.roster.length})`;
  $("roster").replaceChildren(
    ...state.roster.map((m) => {
      const li = document.createElement("li");
      const name = document.createElement("b");
      name.textContent = m.me ? `${m.name} (you)` : m.name;
      if (speaking.has(m.leaf)) li.classList.add("speaking-row");
      const st = document.createElement("span");
      st.className = `status ${STATUS_CLASS[m.status] || "none"}`;
      st.textContent = m.status;
      if (m.health && m.health.failed) st.title = `${m.health.failed} frames failed to decrypt: ${m.health.last_error || ""}`;
      const id = document.createElement("div");
      id.className = "fp";
      id.textContent = `${m.user_id} · key ${m.fingerprint}`;
      li.append(name, st, id);
      if (m.health && m.health.failed) {
        const f = document.createElement("div");
        f.className = "fp";
        f.textContent = `${m.health.failed} frames failed to decrypt (not played)`;
        li.append(f);
      }
      return li;
    }),
  );

  // Knocks (lobby hosts).
  const knocks = state.is_host ? state.knocks : [];
  $("knocks-box").classList.toggle("hidden", knocks.length === 0);
  $("knocks").replaceChildren(
    ...knocks.map((k) => {
      const li = document.createElement("li");
      const name = document.createElement("b");
      name.textContent = k.name;
      const id = document.createElement("div");
      id.className = "fp";
      id.textContent = `${k.user_id} · key ${knockFingerprints.get(k.knock) || "unknown"}`;
      const admit = document.createElement("button");
      admit.textContent = "Admit";
      admit.onclick = () => worker.postMessage({ type: "admit", knock: k.knock });
      const deny = document.createElement("button");
      deny.textContent = "Deny";
      deny.onclick = () => worker.postMessage({ type: "deny", knock: k.knock });
      li.append(name, id, admit, deny);
      return li;
    }),
  );

  // Tiles: a video slot shows whoever's frames it last decrypted.
  const members = new Set(state.roster.map((m) => m.leaf));
  for (const r of recv) {
    if (r.kind !== "video" || !r.el) continue;
    const s = state.slots.find((x) => x.slot === r.slot);
    const leaf = s ? s.leaf : undefined;
    const visible = leaf !== undefined && leaf !== null && members.has(leaf);
    r.el.classList.toggle("hidden", !visible);
    if (visible) {
      r.el.querySelector(".label").textContent = nameOf(leaf);
      const m = state.roster.find((x) => x.leaf === leaf);
      r.el.querySelector(".state").textContent = m ? m.status : "";
      r.el.dataset.leaf = leaf;
    }
    r.el.classList.toggle("speaking", visible && speaking.has(leaf));
  }
  renderDetails();
}

function renderDetails() {
  if (!state) return;
  const items = detailsItems(state);
  const dl = document.createElement("dl");
  for (const [k, v] of items) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
  $("details-body").replaceChildren(dl);
}

$("details-btn").onclick = () => {
  renderDetails();
  $("details").showModal();
};

setInterval(() => {
  if (worker && !left) worker.postMessage({ type: "state" });
}, 1000);

// Who is speaking: the decoded audio level of each receive slot (after decryption, in this
// browser), shown on the roster and the tiles.
const speaking = new Set();
setInterval(async () => {
  if (!pc || left || pc.connectionState === "closed" || !state) return;
  const stats = await pc.getStats();
  const now = new Set();
  stats.forEach((s) => {
    if (s.type !== "inbound-rtp" || s.kind !== "audio" || !(s.audioLevel > 0.02)) return;
    const r = recv.find((x) => x.transceiver.mid === s.mid);
    const slot = r && state.slots.find((x) => x.slot === r.slot);
    if (slot && slot.leaf !== undefined && slot.leaf !== null) now.add(slot.leaf);
  });
  const changed = now.size !== speaking.size || [...now].some((l) => !speaking.has(l));
  speaking.clear();
  for (const l of now) speaking.add(l);
  if (changed) render();
}, 500);

installTestHook({
  pc: () => pc,
  state: () => state,
  worker: () => worker,
  recv,
  speaking,
  alarms,
  support,
  nameOf,
  onProbe: (resolve) => {
    probeWaiter = resolve;
  },
  leave: () => leave("You left the call."),
});

main().catch((e) => fatal(`Could not start: ${e.message}`));
