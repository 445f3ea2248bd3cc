// The "Encryption details" panel: what this call's keys, admission and server exposure are,
// in words, from the state the worker reports.

export function detailsItems(state) {
  const lc = state.last_change;
  return [
    [
      "Who holds the keys",
      `Only the ${state.roster.length} device(s) listed in this call. Each device made its own key ` +
        `(this browser with crypto.getRandomValues, in its encryption worker) and keeps it; ` +
        `the call's keys come from MLS (RFC 9420) among exactly those devices and change ` +
        `whenever someone joins or leaves.`,
    ],
    [
      "Ciphersuite",
      `${state.suite || "–"}. Media frames are encrypted with SFrame (RFC 9605) under a key per ` +
        `sender and epoch, inside WebRTC's own DTLS-SRTP.`,
    ],
    [
      "Current epoch",
      lc
        ? `${lc.epoch}, since ${new Date(lc.at_ms).toLocaleTimeString()}: ${lc.reason}. The security code changes with it.`
        : "not in the call yet",
    ],
    [
      "Room admission",
      state.policy === "lobby"
        ? "Lobby: a host admits each person after seeing the name and key fingerprint from that " +
          "person's own key package; the server cannot add anyone, and no other member can either."
        : state.policy === "invite_list" || state.policy === "invite-list"
          ? "Invite list: only invited devices can be added; the server cannot add anyone."
          : "Open: anyone the server gives a token or invitation can join, and appears in this list for everyone.",
    ],
    [
      "Meeting charter",
      (state.held_to_charter
        ? "This link carries the meeting's charter (in the part of the address the browser never " +
          "sends to the server): this page joins only a group with exactly that admission policy " +
          "and those hosts, and refuses any other."
        : "This link carries no meeting charter: this page joined whatever group the server's " +
          "room has (the policy above is that group's).") +
        (state.charter && state.is_host
          ? ` Links you hand out for this meeting should end with &charter=${state.charter}`
          : ""),
    ],
    [
      "What the server can see",
      "The room name; who knocked and joined with which identity, when and from which address; " +
        "packet sizes and timing; which video quality layer each person gets; how loud each " +
        "person's audio is (the audio-level header, used to pick who is speaking); and the first " +
        "bytes of each video frame (the VP8 frame header, which says whether it is a keyframe " +
        "and its size). It cannot see or hear the audio or video, and holds no key that opens them.",
    ],
    [
      "What this page relies on",
      "The page and its code come from this server. A server that served altered code could " +
        "take this browser's keys; the command-line client does not have that exposure. " +
        "This browser keeps its device key in this site's storage (IndexedDB), where any script " +
        "this site serves can read it. " +
        "Compare the security code with the others by voice: if all see the same code, all share " +
        "the same keys and the same list of members.",
    ],
    [
      "Frames",
      `sent encrypted: ${state.frames.sealed}; held back for lack of a key: ${state.frames.unsealed_dropped}; ` +
        `decrypted: ${state.frames.opened}; failed and not played: ${state.frames.failed}.`,
    ],
  ];
}
