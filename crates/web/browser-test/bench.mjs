// SFrame in WebAssembly, as the browser's worker runs it: seal and open of video-sized and
// audio-sized frames with conclave_web's `Call`, beside raw AES-128-GCM (Node's OpenSSL) on
// the same frames in the same process. Node's V8 runs the same WebAssembly as Chromium's.
//
// Usage: node bench.mjs <dir with conclave_web.js and conclave_web_bg.wasm>
//   (the build script writes them to target/release/build/conclave-*/out/web-pkg/)

import { createCipheriv, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const dir = process.argv[2];
if (!dir) {
  console.error("usage: node bench.mjs <web-pkg dir>");
  process.exit(2);
}
const wasm = await import(pathToFileURL(join(dir, "conclave_web.js")).href);
wasm.initSync({ module: readFileSync(join(dir, "conclave_web_bg.wasm")) });

// A room of one: this device creates the group, so it has an epoch's keys.
const SERVER_IDENTITY = "IDPllGgKGVRLRoVXfbfyykzE2rXpXShEOKSejhTnKm/2AAEPY29uY2xhdmUtc2VydmVy";
const id = wasm.newIdentity("bench", "Bench");
const call = new wasm.Call(id, "Bench", "bench", false);
call.handle(
  JSON.stringify({ type: "joined", version: 1, room: "bench", user_id: "bench", server_identity: SERVER_IDENTITY, create_group: true }),
  Date.now(),
  1,
);
if (call.sendingEpoch() === undefined) throw new Error("no key: the group was not created");

function frame(size, key) {
  const f = new Uint8Array(size);
  f.set(key ? [0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01] : [0x11, 0x02, 0x00]);
  for (let i = 10; i < size; i++) f[i] = (i * 31) & 0xff;
  return f;
}

function time(n, fn) {
  for (let i = 0; i < Math.min(200, n); i++) fn(i); // warm up
  const t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn(i);
  return Number(process.hrtime.bigint() - t) / n / 1000; // µs per call
}

const key = randomBytes(16);
const rows = [];
for (const [label, size, video] of [
  ["audio 80 B", 80, false],
  ["video delta 1,200 B", 1200, true],
  ["video keyframe 12,000 B", 12000, true],
]) {
  const f = frame(size, true);
  const n = size > 5000 ? 3000 : 20000;
  const sealed = [];
  const sealUs = time(n, (i) => {
    const s = call.seal(video, f);
    if (i < n) sealed[i] = s;
  });
  let k = 0;
  const all = sealed.filter(Boolean);
  const openUs = time(all.length - 400, () => {
    // Each sealed frame once (the replay window refuses a second open).
    const p = call.open(video, all[k++], 1, Date.now());
    if (!p) throw new Error("a frame did not open");
  });
  const iv = randomBytes(12);
  const aesUs = time(n, () => {
    const c = createCipheriv("aes-128-gcm", key, iv);
    c.update(f);
    c.final();
    c.getAuthTag();
  });
  rows.push({ frame: label, seal_us: sealUs.toFixed(2), open_us: openUs.toFixed(2), raw_aes_gcm_us: aesUs.toFixed(2) });
}
console.table(rows);
console.log(JSON.stringify({ node: process.version, rows }));
