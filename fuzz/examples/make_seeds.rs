//! Writes seed corpora for every target into `fuzz/corpus/<target>/`, from real traffic: the
//! signaling of a room forming, sealed frames, media files, a config, and the datagrams a
//! participant's media session sends the SFU.
#![forbid(unsafe_code)]

use std::path::Path;

use conclave_client::FramePath;
use conclave_e2ee::ClearPrefix;
use conclave_fuzz::{addrs, room_recording, sfu_with_answer};
use conclave_native::media_file::{Ivf, OggOpus, VideoFrame};
use conclave_proto::ClientMsg;

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn main() {
    // Signaling, both directions, from a room forming and a knock being committed.
    let (_, _, log) = room_recording();
    let mut n = 0;
    let mut from_server = Vec::new();
    let mut from_clients = Vec::new();
    for (conn, server, json) in log {
        if server {
            from_server.push(json);
        } else {
            from_clients.push((conn, json));
        }
    }
    from_clients.push((
        conclave_ds::ConnId(3),
        ClientMsg::Hello {
            version: 1,
            token: "ct1.e30.AA".into(),
        }
        .encode(),
    ));
    for m in &from_server {
        put("signaling", &format!("s{n}"), m.as_bytes());
        put("client_intake", &format!("s{n}"), m.as_bytes());
        n += 1;
    }
    for (c, m) in &from_clients {
        put("signaling", &format!("c{n}"), m.as_bytes());
        let mut b = vec![c.0 as u8];
        b.extend_from_slice(m.as_bytes());
        put("ds_intake", &format!("c{n}"), &b);
        n += 1;
    }
    // MLS messages: the payloads of the commit and welcome messages seen above.
    for m in from_server
        .iter()
        .chain(from_clients.iter().map(|(_, m)| m))
    {
        let v: serde_json::Value = serde_json::from_str(m).expect("json");
        for key in ["commit", "welcome", "proposal", "key_package", "message"] {
            if let Some(b64) = v.get(key).and_then(|x| x.as_str()) {
                use base64::Engine;
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) {
                    put("mls_intake", &format!("m{n}"), &bytes);
                    n += 1;
                }
            }
        }
    }

    // Frames sealed under the keys the sframe_open target installs (so mutations reach the
    // AEAD), and plain headers.
    let mut m = conclave_fuzz::epoch_crypto(1);
    for (i, (frame, clear)) in [
        (
            vec![
                0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 1, 2, 3,
            ],
            ClearPrefix::Vp8,
        ),
        (vec![0x11, 0x02, 0x00, 9, 9, 9, 9], ClearPrefix::Vp8),
        (vec![0xfc, 1, 2, 3, 4], ClearPrefix::None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut wire = Vec::new();
        m.seal(&frame, clear, &mut wire).expect("seal");
        put("sframe_open", &format!("f{i}"), &wire);
        put("sframe_header", &format!("f{i}"), &wire);
    }

    // Media files.
    let ivf = Ivf {
        size: (64, 48),
        timebase: (1, 30),
        frames: (0..4u64)
            .map(|i| VideoFrame {
                pts: i,
                data: if i == 0 {
                    vec![0x10, 2, 0, 0x9d, 1, 0x2a, 5]
                } else {
                    vec![0x11, 2, 0, 7]
                },
                keyframe: i == 0,
            })
            .collect(),
    };
    put("media_files", "ivf", &ivf.write());
    let ogg = OggOpus {
        channels: 2,
        packets: vec![vec![0xfc, 1, 2], vec![7; 300]],
    };
    put("media_files", "ogg", &ogg.write(5));

    // Configuration and a token-shaped string.
    put(
        "config_and_token",
        "toml",
        b"listen = \"127.0.0.1:8480\"\nmedia_listen = \"127.0.0.1:8481\"\nmax_room_size = 100\nremove_after_secs = 10\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
    );
    put(
        "config_and_token",
        "token",
        b"ct1.eyJyb29tIjoicm9vbSIsInN1YiI6ImEiLCJuYW1lIjoiQSIsImV4cCI6MX0.AAAA",
    );

    // Datagrams: what a participant's media session sends the SFU (STUN, then DTLS), and
    // what the SFU answers.
    let (mut s, mut link, now, answer) = sfu_with_answer();
    let (server, client) = addrs();
    let mut media = FramePath::default();
    link.accept_answer(&answer, &mut media, now)
        .expect("answer");
    let mut k = 0;
    for round in 0..30 {
        let t = now + std::time::Duration::from_millis(50 * round);
        link.handle_timeout(&mut media, t);
        while let Some((_, _, bytes)) = link.poll_transmit() {
            let mut b = vec![0u8];
            b.extend_from_slice(&bytes);
            put("sfu_datagram", &format!("d{k}"), &b);
            k += 1;
            s.handle_receive(t, client, server, &bytes);
        }
        s.handle_timeout(t);
        while let Some(tx) = s.poll_transmit() {
            put("media_link_datagram", &format!("d{k}"), &tx.contents);
            k += 1;
            link.handle_receive(server, client, &tx.contents, &mut media, t);
        }
    }
    println!("seeds written: {n} messages, {k} datagrams");
}
