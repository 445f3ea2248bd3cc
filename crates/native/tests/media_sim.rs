//! The media path on a simulated network: real participants' media sessions (str0m, SFrame)
//! and the real SFU core, all sans-IO, driven through a network with loss, delay and
//! bandwidth limits in simulated time (the simulator is `conclave_sim::network`). No
//! sockets; the addresses are labels.

use std::time::Duration;

use conclave_e2ee::{EpochSecrets, RoomCipherSuite};
use conclave_native::media_link::Kind;
use conclave_sfu::{SfuConfig, PLI_INTERVAL};
use conclave_sim::network::Sim;

#[test]
fn media_flows_between_every_pair_on_a_clean_network() {
    let mut sim = Sim::new(3, SfuConfig::default());
    sim.run_for(Duration::from_secs(3));
    for at in 0..3 {
        for from in (0..3).filter(|f| *f != at) {
            let c = sim.counts(at, from);
            assert!(c.video_decrypted > 60, "{at} from {from}: {c:?}");
            assert!(
                c.decrypted - c.video_decrypted > 100,
                "{at} from {from}: {c:?}"
            );
            assert_eq!(c.failed, 0, "{at} from {from}: {c:?}");
            assert!(c.keyframe_first_per_epoch);
        }
    }
}

#[test]
fn a_receiver_flooding_keyframe_requests_does_not_raise_any_senders_keyframe_rate() {
    let mut sim = Sim::new(3, SfuConfig::default());
    sim.run_for(Duration::from_secs(3));
    let before: Vec<u64> = sim.nodes.iter().map(|n| n.link.keyframes_sent).collect();
    let coalesced = sim.sfu.stats().keyframe_requests_coalesced;
    // Node 2 asks for keyframes 100 times a second for 10 s.
    sim.nodes[2].pli_every = Some(Duration::from_millis(10));
    sim.nodes[2].next_pli = sim.now;
    let secs = 10.0;
    sim.run_for(Duration::from_secs(10));
    let folded = sim.sfu.stats().keyframe_requests_coalesced - coalesced;
    assert!(
        folded > 500,
        "the flood did not reach the SFU ({folded} coalesced)"
    );
    let limit = 1.0 / PLI_INTERVAL.as_secs_f64();
    for (i, n) in sim.nodes.iter().enumerate().take(2) {
        let rate = (n.link.keyframes_sent - before[i]) as f64 / secs;
        println!("sender {i}: {rate:.2} keyframes/s under a 100/s PLI flood (limit {limit}/s, plus one every 90 frames)");
        // PLIs at most every PLI_INTERVAL, plus the sender's own keyframe every 90 frames.
        assert!(rate <= limit + 0.5, "sender {i}: {rate} keyframes/s");
    }
    // The flooder still gets video.
    let c = sim.counts(2, 0);
    assert!(c.video_decrypted > 300, "{c:?}");
}

#[test]
fn video_keeps_decoding_under_5_percent_loss_and_100_ms_delay() {
    let mut sim = Sim::new(3, SfuConfig::default());
    for n in &mut sim.nodes {
        for l in [&mut n.up, &mut n.down] {
            l.loss = 0.05;
            l.delay = Duration::from_millis(50);
        }
    }
    sim.run_for(Duration::from_secs(4));
    let before: Vec<Vec<u64>> = (0..3)
        .map(|at| (0..3).map(|f| sim.counts(at, f).video_decrypted).collect())
        .collect();
    let secs = 15;
    sim.run_for(Duration::from_secs(secs));
    let mut worst = f64::MAX;
    for (at, before) in before.iter().enumerate() {
        for from in (0..3).filter(|f| *f != at) {
            let c = sim.counts(at, from);
            let fps = (c.video_decrypted - before[from]) as f64 / secs as f64;
            worst = worst.min(fps);
            assert_eq!(c.failed, 0, "{at} from {from}: {c:?}");
        }
    }
    println!(
        "5% loss each way on every link, 50 ms each way (100 ms sender to receiver): worst \
         video {worst:.1} frames/s of 30; {} of {} datagrams lost",
        sim.lost, sim.sent
    );
    assert!(worst >= 27.0, "video decoded at {worst:.1} frames/s");
}

#[test]
fn last_n_forwards_the_most_recent_speakers_video_and_switches_with_them() {
    // Ten senders and one listener; each receiver gets the 4 most recent speakers' video.
    let mut sim = Sim::new(
        11,
        SfuConfig {
            last_n: 4,
            top_k_audio: 3,
        },
    );
    let listener = 10;
    sim.nodes[listener].sends = false;
    for n in &mut sim.nodes {
        n.link.set_audio_level(Some(-90));
    }
    sim.run_for(Duration::from_secs(2));
    let order = [3usize, 7, 1, 9, 5, 0, 3];
    let mut recent: Vec<usize> = Vec::new();
    for &speaker in &order {
        sim.nodes[speaker].link.set_audio_level(Some(-20));
        sim.run_for(Duration::from_millis(900));
        assert_eq!(
            sim.sfu.speakers("room").first(),
            Some(&(speaker as u64)),
            "the SFU hears {speaker}"
        );
        // The listener's client shows the speaker as speaking (top k audio = 3 streams).
        assert!(
            sim.counts(listener, speaker).speaking,
            "the listener does not show {speaker} speaking"
        );
        sim.nodes[speaker].link.set_audio_level(Some(-90));
        recent.retain(|s| *s != speaker);
        recent.insert(0, speaker);
        // Let the switch settle, then look at what reaches the listener.
        sim.run_for(Duration::from_millis(300));
        let mut want: Vec<u64> = recent.iter().map(|s| *s as u64).collect();
        // Before four people have spoken, the rest of the four are the earliest arrivals.
        for s in 0..10u64 {
            if want.len() >= 4 {
                break;
            }
            if !want.contains(&s) {
                want.push(s);
            }
        }
        want.truncate(4);
        want.sort();
        let mut video: Vec<u64> = sim
            .sfu
            .forwarding_to(listener as u64)
            .into_iter()
            .filter(|(k, _)| *k == Kind::Video)
            .map(|(_, p)| p)
            .collect();
        video.sort();
        assert_eq!(video, want, "after {speaker} spoke");
        // And the listener really decodes video from exactly those, and nobody else.
        let before: Vec<u64> = (0..10)
            .map(|f| sim.counts(listener, f).video_decrypted)
            .collect();
        sim.run_for(Duration::from_millis(500));
        let got: Vec<u64> = (0..10u64)
            .filter(|f| sim.counts(listener, *f as usize).video_decrypted > before[*f as usize])
            .collect();
        assert_eq!(got, want, "video decoded after {speaker} spoke");
    }
    for f in 0..10 {
        let c = sim.counts(listener, f);
        assert_eq!(c.failed, 0, "from {f}: {c:?}");
        if c.video_decrypted > 0 {
            assert!(c.keyframe_first_per_epoch, "from {f}: {c:?}");
        }
    }
}

#[test]
fn twenty_rekeys_during_a_call_lose_no_frames_and_start_each_epoch_with_a_keyframe() {
    let n = 4;
    let mut sim = Sim::new(n, SfuConfig::default());
    for node in &mut sim.nodes {
        for l in [&mut node.up, &mut node.down] {
            l.delay = Duration::from_millis(20);
        }
    }
    sim.run_for(Duration::from_secs(2));
    // A quiet moment, so that nothing is in flight when the counts are taken.
    for node in &mut sim.nodes {
        node.sends = false;
    }
    sim.run_for(Duration::from_millis(200));
    for node in &mut sim.nodes {
        node.sends = true;
    }
    let audio_before: Vec<u64> = sim.nodes.iter().map(|n| n.link.audio_sent).collect();
    let ticks_before: Vec<u64> = sim.nodes.iter().map(|n| n.link.video_ticks).collect();
    let opened_before: Vec<Vec<(u64, u64)>> = (0..n)
        .map(|at| {
            (0..n)
                .map(|f| {
                    let c = sim.counts(at, f);
                    (c.decrypted - c.video_decrypted, c.video_decrypted)
                })
                .collect()
        })
        .collect();
    let switches_before = sim.sfu.stats().layer_switches;
    let members: Vec<u32> = (0..n as u32).collect();
    for epoch in 2..22u64 {
        // The commit reaches the members 15 ms apart (as a fan-out does): early members seal
        // under the new key while late ones are still on the old one.
        for i in 0..n {
            let secrets = EpochSecrets::from_base_key(
                RoomCipherSuite::Curve25519Aes128,
                epoch,
                &[epoch as u8; 16],
                i as u32,
                members.clone(),
            );
            let (ts, now) = (sim.ts(), sim.now);
            let node = &mut sim.nodes[i];
            node.frames.media_mut().install_epoch(secrets, ts).unwrap();
            node.link.release_held(&mut node.frames, now);
            sim.run_for(Duration::from_millis(15));
        }
        sim.run_for(Duration::from_millis(400));
    }
    // Stop sending, let everything in flight arrive.
    for node in &mut sim.nodes {
        node.sends = false;
    }
    sim.run_for(Duration::from_millis(500));
    for (at, opened_before) in opened_before.iter().enumerate() {
        for from in (0..n).filter(|f| *f != at) {
            let c = sim.counts(at, from);
            assert_eq!(c.failed, 0, "{at} from {from}: {c:?}");
            assert!(c.keyframe_first_per_epoch, "{at} from {from}: {c:?}");
            // Every frame sealed during the rekeys was opened: none lost to a key change.
            // Audio one for one; video one per capture instant, plus at most one extra per
            // simulcast layer switch (the old layer's frame of the switching instant).
            let audio = c.decrypted - c.video_decrypted - opened_before[from].0;
            let video = c.video_decrypted - opened_before[from].1;
            let audio_sent = sim.nodes[from].link.audio_sent - audio_before[from];
            let ticks = sim.nodes[from].link.video_ticks - ticks_before[from];
            let switches = sim.sfu.stats().layer_switches - switches_before;
            assert_eq!(audio, audio_sent, "{at} from {from}: {c:?}");
            assert!(
                video >= ticks && video <= ticks + switches,
                "{at} from {from}: {video} video frames for {ticks} instants; {c:?}"
            );
        }
    }
    for node in &sim.nodes {
        assert_eq!(node.frames.intake().held(), 0);
    }
    let frames: u64 = (0..n)
        .map(|f| {
            sim.nodes[f].link.audio_sent - audio_before[f] + sim.nodes[f].link.video_ticks
                - ticks_before[f]
        })
        .sum();
    println!(
        "20 rekeys, 4 members, commits arriving 15 ms apart: {frames} frames sealed during \
         them, every one opened by all 3 receivers (0 lost to key changes)"
    );
}

#[test]
fn a_receiver_capped_at_300_kbps_gets_the_low_layer_and_the_others_keep_the_high_one() {
    // Two senders; two receivers, one behind a 300 kbit/s downlink.
    let mut sim = Sim::new(4, SfuConfig::default());
    let (capped, free) = (2usize, 3usize);
    sim.nodes[capped].sends = false;
    sim.nodes[free].sends = false;
    // First everyone has room: the high layer everywhere.
    sim.run_for(Duration::from_secs(4));
    for f in 0..2 {
        let c = sim.counts(capped, f);
        assert_eq!(c.last_layer, Some(2), "before the cap, from {f}: {c:?}");
    }
    // Then one receiver's downlink drops to 300 kbit/s.
    sim.nodes[capped].down.rate = Some(300_000);
    let cap_at = sim.now;
    let (mut decided_after, mut switched_after) = (None, None);
    for _ in 0..100 {
        sim.run_for(Duration::from_millis(100));
        let (_, layers) = sim.sfu.video_layers_to(capped as u64);
        let decided = layers
            .iter()
            .filter(|(from, _, _)| *from < 2)
            .all(|(_, current, _)| current.as_deref() == Some("l"));
        if decided && decided_after.is_none() {
            decided_after = Some(sim.now - cap_at);
        }
        let low = (0..2).all(|f| sim.counts(capped, f).last_layer == Some(0));
        if low && switched_after.is_none() {
            switched_after = Some(sim.now - cap_at);
        }
    }
    let decided_after = decided_after.expect("the SFU never moved the capped receiver down");
    let switched_after = switched_after.expect("the capped receiver never got the low layer");
    // Over the last 3 s: what each receiver decodes, by layer.
    let before: Vec<Vec<[u64; 3]>> = (0..4)
        .map(|at| (0..2).map(|f| sim.counts(at, f).video_layers).collect())
        .collect();
    sim.run_for(Duration::from_secs(3));
    let delta = |at: usize, f: usize| {
        let now = sim.counts(at, f).video_layers;
        [0, 1, 2].map(|l| now[l] - before[at][f][l])
    };
    let mut low_fps = Vec::new();
    for f in 0..2 {
        // Low layer only, at 20 frames a second or more (it runs at 30; the estimate sits
        // near the cap, so some frames are lost to the bottleneck).
        let d = delta(capped, f);
        assert!(
            d[0] >= 60 && d[1] == 0 && d[2] == 0,
            "capped from {f}: {d:?}"
        );
        low_fps.push(d[0] as f64 / 3.0);
        let d = delta(free, f);
        assert!(d[2] >= 80 && d[0] == 0 && d[1] == 0, "free from {f}: {d:?}");
    }
    let d = delta(1, 0);
    assert!(d[2] >= 80, "sender 1 from 0: {d:?}");
    for at in [capped, free] {
        for f in 0..2 {
            let c = sim.counts(at, f);
            assert_eq!(c.failed, 0, "{at} from {f}: {c:?}");
        }
    }
    println!(
        "a receiver whose downlink drops to 300 kbit/s (300 ms bottleneck queue): the SFU \
         forwards it the low layer {:.1} s later, the first low-layer frame is decoded {:.1} s \
         later (behind the queue it had built), then {:.1} frames/s of 30 from each sender; \
         the others stay on the high layer; {} layer switches in all",
        decided_after.as_secs_f64(),
        switched_after.as_secs_f64(),
        low_fps.iter().cloned().fold(f64::MAX, f64::min),
        sim.sfu.stats().layer_switches
    );
    assert!(decided_after < Duration::from_secs(4), "{decided_after:?}");
    assert!(
        switched_after < Duration::from_secs(8),
        "{switched_after:?}"
    );
}

#[test]
fn a_receiver_showing_small_tiles_gets_the_low_layer_whatever_its_bandwidth() {
    let mut sim = Sim::new(3, SfuConfig::default());
    sim.nodes[2].sends = false;
    sim.run_for(Duration::from_secs(3));
    let now = sim.now;
    sim.sfu.set_max_video_width(2, 320, now);
    sim.run_for(Duration::from_secs(2));
    let before: Vec<[u64; 3]> = (0..2).map(|f| sim.counts(2, f).video_layers).collect();
    let other = sim.counts(1, 0).video_layers;
    sim.run_for(Duration::from_secs(2));
    for (f, before) in before.iter().enumerate() {
        let now = sim.counts(2, f).video_layers;
        let d = [0, 1, 2].map(|l| now[l] - before[l]);
        assert!(
            d[0] >= 50 && d[1] == 0 && d[2] == 0,
            "small tiles from {f}: {d:?}"
        );
    }
    let now = sim.counts(1, 0).video_layers;
    assert!(
        now[2] - other[2] >= 50,
        "a full-size receiver stays on the high layer"
    );
}
