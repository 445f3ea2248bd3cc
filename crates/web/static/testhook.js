// For tests and diagnostics: what the page shows, and the decoder's counts per slot, as
// `window.conclave` (read by the browser test). `page` gives read access to the page's state.

export function installTestHook(page) {
  window.conclave = {
    async snapshot() {
      const decoded = {};
      const rtp = {};
      if (page.pc() && page.pc().connectionState !== "closed") {
        const stats = await page.pc().getStats();
        stats.forEach((s) => {
          if (s.type === "inbound-rtp" && s.kind === "video") {
            const r = page.recv.find((x) => x.transceiver.mid === s.mid);
            if (r) {
              decoded[r.slot] = s.framesDecoded || 0;
              rtp[r.slot] = {
                framesDecoded: s.framesDecoded,
                keyFramesDecoded: s.keyFramesDecoded,
                framesDropped: s.framesDropped,
                pliCount: s.pliCount,
                firCount: s.firCount,
                nackCount: s.nackCount,
                freezeCount: s.freezeCount,
                packetsLost: s.packetsLost,
                frameWidth: s.frameWidth,
              };
            }
          }
        });
      }
      return {
        support: page.support,
        badge: document.getElementById("e2ee").textContent,
        securityCode: page.state() ? page.state().security_code : null,
        epoch: page.state() ? page.state().epoch : null,
        me: page.state() ? page.state().me : null,
        roster: page.state()
          ? page.state().roster.map((m) => ({ leaf: m.leaf, name: m.name, status: m.status, health: m.health, speaking: page.speaking.has(m.leaf) }))
          : [],
        slots: page.state()
          ? page.state().slots
              .filter((s) => s.kind === "video")
              .map((s) => ({ slot: s.slot, leaf: s.leaf, name: page.nameOf(s.leaf), framesDecoded: decoded[s.slot] || 0, rtp: rtp[s.slot] }))
          : [],
        frames: page.state() ? page.state().frames : null,
        charter: page.state() ? page.state().charter : null,
        heldToCharter: page.state() ? page.state().held_to_charter : false,
        connection: page.pc() ? page.pc().connectionState : null,
        alarms: page.alarms.slice(),
      };
    },
    probe() {
      return new Promise((resolve) => {
        page.onProbe(resolve);
        page.worker().postMessage({ type: "probe" });
      });
    },
    leave() {
      page.leave();
    },
  };
}
