// Real-browser test: two headless Chromium participants and one native `conclave join` in one
// end-to-end encrypted room, against a real `conclave serve` on loopback.
//
// Proves, and fails (exit 1) if any does not hold:
// - browsers_decode_each_others_video: each browser's decoder keeps decoding video from the
//   other browser and from the native client (framesDecoded grows, per sender);
// - native_client_decrypts_both_browsers: the native client opens frames from both browsers
//   and none fails;
// - all_three_show_the_same_security_code: the same code and epoch on both pages and in the
//   native client's summary;
// - sfu_payloads_carry_no_plaintext: no 32-byte sample of what the browsers encoded (taken in
//   their encryption worker, past the clear VP8 header) appears in any payload the SFU
//   forwarded (the server's audit tap);
// - page_says_end_to_end_encrypted_only_with_keys: the badge says so only once in the group;
// - browsers_rejoin_after_the_server_restarts: the server stops and comes back at the same
//   address; both pages rejoin by themselves (a new group) and decode each other again;
// - invitation_link_gives_each_guest_an_identity: the second browser joins from the printed
//   kind of link (an invitation) by entering a name.
// It writes a screenshot of each browser's grid and a JSON report to the output folder.
//
// Usage: node call.mjs <path to conclave binary> <output dir>

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [bin, outDir] = process.argv.slice(2);
if (!bin || !outDir) {
  console.error("usage: node call.mjs <conclave binary> <output dir>");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
const data = mkdtempSync(join(tmpdir(), "conclave-browser-"));
const tapFile = join(data, "tap.bin");
const ROOM = "browser-test";
const results = [];
const children = [];
const t0 = Date.now();

function log(...a) {
  console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
}

function check(name, ok, detail) {
  results.push({ name, ok: !!ok, detail });
  log(`${ok ? "ok  " : "FAIL"} ${name}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, ms) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(250);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

// Two free loopback ports (TCP for HTTP, UDP for media), so that a restarted server comes
// back at the same address.
async function freePorts() {
  const net = await import("node:net");
  const dgram = await import("node:dgram");
  const tcp = await new Promise((resolve) => {
    const srv = net.createServer().listen(0, "127.0.0.1", () => {
      const port = srv.address().port;
      srv.close(() => resolve(port));
    });
  });
  const udp = await new Promise((resolve) => {
    const sock = dgram.createSocket("udp4").bind(0, "127.0.0.1", () => {
      const port = sock.address().port;
      sock.close(() => resolve(port));
    });
  });
  return { tcp, udp };
}

function startServer(ports, tap) {
  const child = spawn(
    bin,
    [
      "serve",
      "--listen", `127.0.0.1:${ports.tcp}`,
      "--media-listen", `127.0.0.1:${ports.udp}`,
      "--data-dir", data,
      ...(tap ? ["--media-tap", "20000", "--media-tap-file", tap] : []),
    ],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" } },
  );
  children.push(child);
  let out = "";
  child.stderr.on("data", (d) => process.stderr.write(`[server] ${d}`));
  return new Promise((resolve, reject) => {
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/serving at (http:\/\/[0-9.:]+)/);
      const invite = out.match(/(http:\/\/\S+#room=\S+&invite=\S+)/);
      if (m && invite) resolve({ child, url: m[1], stdout: () => out });
    });
    child.on("exit", (code) => reject(new Error(`server exited with ${code}: ${out}`)));
  });
}

function token(url, args) {
  return execFileSync(bin, ["token", "--room", ROOM, "--data-dir", data, "--url", url, ...args], {
    encoding: "utf8",
  }).trim();
}

// A short VP8 clip made by Chromium's own encoder (WebCodecs), written as IVF, for the native
// client to send: so that the browsers have real video from it to decode.
async function makeClip(browser, url, path) {
  const page = await browser.newPage();
  await page.goto(`${url}/metrics`); // any page of a secure context (loopback) has WebCodecs
  const chunks = await page.evaluate(async () => {
    const w = 320, h = 180, frames = 60;
    const canvas = new OffscreenCanvas(w, h);
    const ctx = canvas.getContext("2d");
    const out = [];
    const enc = new VideoEncoder({
      output: (chunk) => {
        const b = new Uint8Array(chunk.byteLength);
        chunk.copyTo(b);
        out.push({ key: chunk.type === "key", ts: chunk.timestamp, data: Array.from(b) });
      },
      error: (e) => { throw e; },
    });
    enc.configure({ codec: "vp8", width: w, height: h, bitrate: 300_000, framerate: 30 });
    for (let i = 0; i < frames; i++) {
      ctx.fillStyle = `hsl(${(i * 6) % 360} 70% 45%)`;
      ctx.fillRect(0, 0, w, h);
      ctx.fillStyle = "#fff";
      ctx.font = "40px sans-serif";
      ctx.fillText(`native ${i}`, 20, 100);
      const f = new VideoFrame(canvas, { timestamp: (i * 1e6) / 30 });
      enc.encode(f, { keyFrame: i % 30 === 0 });
      f.close();
    }
    await enc.flush();
    return out;
  });
  await page.close();
  // IVF: 32-byte file header, then a 12-byte header per frame.
  const header = Buffer.alloc(32);
  header.write("DKIF", 0);
  header.writeUInt16LE(0, 4);
  header.writeUInt16LE(32, 6);
  header.write("VP80", 8);
  header.writeUInt16LE(320, 12);
  header.writeUInt16LE(180, 14);
  header.writeUInt32LE(30, 16);
  header.writeUInt32LE(1, 20);
  header.writeUInt32LE(chunks.length, 24);
  const parts = [header];
  chunks.forEach((c, i) => {
    const fh = Buffer.alloc(12);
    fh.writeUInt32LE(c.data.length, 0);
    fh.writeBigUInt64LE(BigInt(i), 4);
    parts.push(fh, Buffer.from(c.data));
  });
  writeFileSync(path, Buffer.concat(parts));
  return chunks.length;
}

// A lobby room hosted by a browser: the host sees each knock with the knocker's key
// fingerprint, denies one and admits the other.
async function lobby(browser, server) {
  const room = "lobby-test";
  const link = (id, name) =>
    execFileSync(bin, ["token", "--room", room, "--identity", id, "--name", name, "--data-dir", data, "--url", server.url, "--link"], {
      encoding: "utf8",
    }).trim();
  const open = async (url) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 720 } });
    const page = await ctx.newPage();
    page.on("pageerror", (e) => log(`[lobby page error] ${e.message}`));
    await page.goto(url);
    return page;
  };
  const snap = (p) => p.evaluate(() => window.conclave.snapshot());
  const host = await open(link("hana", "Hana") + "&lobby=1");
  await until("the host in its room", () => snap(host).then((s) => s.epoch === 0), 20_000);
  // Kai's link carries the meeting's charter, as the host's page gives it.
  const charter = (await snap(host)).charter;
  const knocker = await open(link("kai", "Kai") + `&charter=${charter}`);
  const intruder = await open(link("ivo", "Ivo"));
  await until("two knocks on the host's page", () => host.locator("#knocks li").count().then((n) => n === 2), 20_000);
  const kaiFp = await knocker.textContent("#my-fp-lobby");
  const waiting = await knocker.isVisible("#lobby");
  const kaiItem = host.locator("#knocks li", { hasText: "Kai" });
  const shownFp = await kaiItem.textContent();
  await host.locator("#knocks li", { hasText: "Ivo" }).locator("button", { hasText: "Deny" }).click();
  await kaiItem.locator("button", { hasText: "Admit" }).click();
  await until("Kai admitted", () => snap(knocker).then((s) => s.epoch === 1), 20_000);
  await until("Ivo turned away", () => intruder.isVisible("#left"), 20_000);
  const [h, k, i] = [await snap(host), await snap(knocker), await snap(intruder)];
  check(
    "lobby_host_sees_the_knockers_fingerprint_and_decides",
    waiting && shownFp.includes(kaiFp) && kaiFp.length > 10 &&
      h.securityCode === k.securityCode && h.roster.length === 2 && i.epoch === null,
    { kai_waited_in_lobby: waiting, kai_fingerprint: kaiFp, host_shows: shownFp, host: h.roster.map((m) => m.name), ivo: await intruder.textContent("#left-why") },
  );
  check(
    "a_browser_holding_the_charter_joins_the_charters_group",
    typeof charter === "string" && charter.startsWith("c1.") && k.heldToCharter && k.charter === charter,
    { charter, kai_held_to_charter: k.heldToCharter, kai_group_charter: k.charter },
  );
  await host.screenshot({ path: join(outDir, "lobby-host.png") });
}

async function main() {
  const ports = await freePorts();
  let server = await startServer(ports, tapFile);
  log(`server at ${server.url}`);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      "--allow-loopback-in-peer-connection",
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
  const clip = join(data, "clip.ivf");
  const clipFrames = await makeClip(browser, server.url, clip);
  log(`made a ${clipFrames}-frame VP8 clip for the native client`);

  // Browser A: a join link for a named identity.
  const linkA = token(server.url, ["--identity", "ada", "--name", "Ada", "--link"]) + "&probe=1";
  const ctxA = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const pageA = await ctxA.newPage();
  pageA.on("console", (m) => m.type() === "error" && log(`[A console] ${m.text()}`));
  pageA.on("pageerror", (e) => log(`[A error] ${e.message}`));
  const badgeBefore = [];
  await pageA.goto(linkA);
  badgeBefore.push(await pageA.textContent("#e2ee"));
  await until("browser A in the group", () => pageA.evaluate(() => window.conclave.snapshot().then((s) => s.epoch !== null && s.epoch !== undefined)), 20_000);
  log("browser A created the room");

  // Browser B: the invitation link, as `conclave serve` prints it; enters a name.
  const invite = token(server.url, ["--invite", "--link"]) + "&probe=1";
  const ctxB = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const pageB = await ctxB.newPage();
  pageB.on("console", (m) => m.type() === "error" && log(`[B console] ${m.text()}`));
  pageB.on("pageerror", (e) => log(`[B error] ${e.message}`));
  await pageB.goto(invite);
  await pageB.fill("#join-name", "Bea");
  await pageB.click("#join-form button");
  await until("browser B in the group", () => pageB.evaluate(() => window.conclave.snapshot().then((s) => s.epoch !== null && s.epoch !== undefined)), 20_000);
  const snapB0 = await pageB.evaluate(() => window.conclave.snapshot());
  check(
    "invitation_link_gives_each_guest_an_identity",
    snapB0.roster.some((m) => m.name === "Bea"),
    snapB0.roster.map((m) => m.name).join(", "),
  );
  check(
    "page_says_end_to_end_encrypted_only_with_keys",
    !badgeBefore[0].includes("End-to-end encrypted") && snapB0.badge.startsWith("End-to-end encrypted"),
    { before_keys: badgeBefore[0], in_group: snapB0.badge },
  );

  // The native client.
  const nativeToken = token(server.url, ["--identity", "nat", "--name", "Native"]);
  const native = spawn(
    bin,
    // Its own data directory for this run (its device key and pins): the browsers' keys are
    // new in every run, and pins kept from an earlier run would rightly raise an alarm.
    ["join", server.url, "--room", ROOM, "--token", nativeToken, "--json", "--duration", "30s", "--video-file", clip, "--data-dir", join(data, "native")],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn" } },
  );
  children.push(native);
  let nativeOut = "";
  native.stdout.on("data", (d) => (nativeOut += d));
  native.stderr.on("data", (d) => process.stderr.write(`[native] ${d}`));
  const nativeDone = new Promise((r) => native.on("exit", (code) => r(code)));

  const snap = (p) => p.evaluate(() => window.conclave.snapshot());
  await until("three members on both pages", async () => {
    const [a, b] = [await snap(pageA), await snap(pageB)];
    return a.roster.length === 3 && b.roster.length === 3 && a.epoch === b.epoch;
  }, 30_000);
  log("all three in one epoch");

  // Decoding: per sender, framesDecoded must grow over a few seconds.
  const bySender = (s) => {
    const m = {};
    for (const x of s.slots) if (x.leaf !== undefined && x.leaf !== null) m[x.name] = (m[x.name] || 0) + x.framesDecoded;
    return m;
  };
  await until("video from both others decoding on both pages", async () => {
    const [a, b] = [bySender(await snap(pageA)), bySender(await snap(pageB))];
    return (a.Bea > 0 && a.Native > 0 && b.Ada > 0 && b.Native > 0);
  }, 30_000).catch((e) => log(e.message));
  const first = { A: bySender(await snap(pageA)), B: bySender(await snap(pageB)) };
  await sleep(5000);
  const second = { A: bySender(await snap(pageA)), B: bySender(await snap(pageB)) };
  const grew = (p, who) => (second[p][who] || 0) > (first[p][who] || 0);
  check(
    "browsers_decode_each_others_video",
    grew("A", "Bea") && grew("A", "Native") && grew("B", "Ada") && grew("B", "Native"),
    { first, five_seconds_later: second },
  );

  const [sa, sb] = [await snap(pageA), await snap(pageB)];
  await pageA.screenshot({ path: join(outDir, "browser-a.png") });
  await pageB.screenshot({ path: join(outDir, "browser-b.png") });
  log("screenshots written");
  const probes = [...(await pageA.evaluate(() => window.conclave.probe())), ...(await pageB.evaluate(() => window.conclave.probe()))];

  // Let the native client finish its call and print its summary.
  const code = await nativeDone;
  const lastLine = nativeOut.trim().split("\n").pop();
  let summary = null;
  try {
    summary = JSON.parse(lastLine);
  } catch (e) {
    log(`native output: ${nativeOut}`);
  }
  check("native_client_exits_cleanly", code === 0 && summary, { code });
  const sender = (name) => summary && summary.senders.find((s) => s.name === name);
  const ada = sender("Ada"), bea = sender("Bea");
  check(
    "native_client_decrypts_both_browsers",
    ada && bea && ada.frames_decrypted > 100 && bea.frames_decrypted > 100 && ada.frames_failed === 0 && bea.frames_failed === 0,
    summary ? summary.senders : "no summary",
  );
  // The native client left at the end: compare the codes of the epoch all three were in.
  const nativeCodes = summary ? summary.history.map((h) => h.security_code) : [];
  check(
    "all_three_show_the_same_security_code",
    sa.securityCode && sa.securityCode === sb.securityCode && sa.epoch === sb.epoch && nativeCodes.includes(sa.securityCode),
    { ada: sa.securityCode, bea: sb.securityCode, native_history: nativeCodes.slice(-3) },
  );
  check(
    "no_frame_failed_to_decrypt_in_the_browsers",
    sa.frames.failed === 0 && sb.frames.failed === 0,
    { ada: sa.frames, bea: sb.frames, ada_sees: sa.roster, bea_sees: sb.roster },
  );
  check("no_alarms", sa.alarms.filter((a) => !a.includes("test probe")).length === 0 && sb.alarms.filter((a) => !a.includes("test probe")).length === 0 && summary && summary.alarms.length === 0, { ada: sa.alarms, bea: sb.alarms, native: summary && summary.alarms });

  // The server goes away (its tap is written) and comes back at the same address: both
  // browsers rejoin by themselves, as a new group, and decode each other again.
  server.child.kill("SIGTERM");
  await new Promise((r) => server.child.on("exit", r));
  const tap = readFileSync(tapFile);
  server = await startServer(ports, null);
  log("server restarted");
  const rejoined = await until(
    "both browsers back in one group",
    async () => {
      const [a, b] = [await snap(pageA), await snap(pageB)];
      return a.roster.length === 2 && b.roster.length === 2 && a.securityCode === b.securityCode && a.securityCode !== sa.securityCode && [a, b];
    },
    45_000,
  ).catch((e) => (log(e.message), null));
  let again = null;
  if (rejoined) {
    const decoded = (s, who) => s.slots.filter((x) => x.name === who).reduce((n, x) => n + x.framesDecoded, 0);
    const r1 = [decoded(await snap(pageA), "Bea"), decoded(await snap(pageB), "Ada")];
    await sleep(4000);
    const r2 = [decoded(await snap(pageA), "Bea"), decoded(await snap(pageB), "Ada")];
    again = { ada_decodes_bea: [r1[0], r2[0]], bea_decodes_ada: [r1[1], r2[1]] };
  }
  check(
    "browsers_rejoin_after_the_server_restarts",
    rejoined && again.ada_decodes_bea[1] > again.ada_decodes_bea[0] && again.bea_decodes_ada[1] > again.bea_decodes_ada[0],
    rejoined ? { code: rejoined[0].securityCode, epoch: rejoined[0].epoch, decoded: again } : "did not rejoin",
  );
  await pageA.screenshot({ path: join(outDir, "browser-a-rejoined.png") });

  await pageA.evaluate(() => window.conclave.leave());
  await pageB.evaluate(() => window.conclave.leave());
  await lobby(browser, server);
  await sleep(500);
  await browser.close();
  server.child.kill("SIGTERM");
  await new Promise((r) => server.child.on("exit", r));

  // What the first server's SFU forwarded, against what the browsers encoded.
  const payloads = [];
  for (let i = 0; i + 4 <= tap.length; ) {
    const n = tap.readUInt32BE(i);
    payloads.push(tap.subarray(i + 4, i + 4 + n));
    i += 4 + n;
  }
  const hay = Buffer.concat(payloads);
  const leaked = probes.filter((p) => hay.indexOf(Buffer.from(p.bytes)) !== -1);
  check(
    "sfu_payloads_carry_no_plaintext",
    payloads.length > 100 && probes.length > 50 && leaked.length === 0,
    { payloads: payloads.length, bytes: hay.length, plaintext_samples: probes.length, found: leaked.length },
  );
  // A check of the check: a sample cut from a forwarded payload is found.
  if (payloads.length) {
    const p = payloads[Math.floor(payloads.length / 2)];
    check("tap_search_finds_what_is_there", p.length < 32 || hay.indexOf(p.subarray(0, 32)) !== -1, "self-check of the search");
  }

  writeFileSync(join(outDir, "report.json"), JSON.stringify({ results, first, second, pages: { ada: sa, bea: sb }, native: summary }, null, 2));
}

let failed = false;
try {
  await main();
} catch (e) {
  log(`error: ${e.stack || e}`);
  failed = true;
} finally {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
}
failed = failed || results.length === 0 || results.some((r) => !r.ok);
log(failed ? "browser test FAILED" : `browser test passed (${results.length} checks)`);
process.exit(failed ? 1 : 0);
