//! Pre-encoded media files as frame sources: IVF (VP8 video) and Ogg (Opus audio).
//!
//! Each reader turns a whole file into frames, checking the container as it goes and
//! refusing (with a reason) anything it cannot account for; it never panics on bad input. The
//! frames are the codec's own bytes: the client seals each one with SFrame and sends it, and
//! nothing on the way can read it. A few writers exist too, for tests and tools.

use crate::NetError as Error;

/// Largest frame or packet accepted from a file.
pub const MAX_FRAME: usize = 4 << 20;

/// One VP8 frame of an IVF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoFrame {
    /// Presentation time, in the file's time base.
    pub pts: u64,
    /// The VP8 frame.
    pub data: Vec<u8>,
    /// Whether it is a keyframe (P bit of the VP8 frame tag clear).
    pub keyframe: bool,
}

/// An IVF file's frames and time base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ivf {
    /// Width and height in pixels, as the header says.
    pub size: (u16, u16),
    /// Time base: `pts * numerator / denominator` seconds.
    pub timebase: (u32, u32),
    /// The frames, in file order.
    pub frames: Vec<VideoFrame>,
}

fn bad(what: &str) -> Error {
    Error::MediaFile(what.to_owned())
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Ivf {
    /// Parses an IVF file whose codec is VP8.
    pub fn parse(bytes: &[u8]) -> Result<Ivf, Error> {
        if bytes.get(0..4) != Some(b"DKIF") {
            return Err(bad("IVF: no DKIF signature"));
        }
        let header_len = u16le(bytes, 6).ok_or_else(|| bad("IVF: short header"))? as usize;
        if header_len < 32 || bytes.len() < header_len {
            return Err(bad("IVF: bad header length"));
        }
        if bytes.get(8..12) != Some(b"VP80") {
            return Err(bad("IVF: the codec is not VP8"));
        }
        let size = (u16le(bytes, 12).unwrap_or(0), u16le(bytes, 14).unwrap_or(0));
        let denominator = u32le(bytes, 16).unwrap_or(0);
        let numerator = u32le(bytes, 20).unwrap_or(0);
        if denominator == 0 || numerator == 0 {
            return Err(bad("IVF: zero in the time base"));
        }
        let mut frames = Vec::new();
        let mut at = header_len;
        while at < bytes.len() {
            let len = u32le(bytes, at).ok_or_else(|| bad("IVF: truncated frame header"))? as usize;
            let pts = u64le(bytes, at + 4).ok_or_else(|| bad("IVF: truncated frame header"))?;
            if len == 0 || len > MAX_FRAME {
                return Err(bad("IVF: frame size out of range"));
            }
            let data = bytes
                .get(at + 12..at + 12 + len)
                .ok_or_else(|| bad("IVF: truncated frame"))?
                .to_vec();
            let keyframe = conclave_media_meta::vp8::frame_is_keyframe(&data);
            frames.push(VideoFrame {
                pts,
                data,
                keyframe,
            });
            at += 12 + len;
        }
        if frames.is_empty() {
            return Err(bad("IVF: no frames"));
        }
        if !frames[0].keyframe {
            return Err(bad("IVF: the first frame is not a keyframe"));
        }
        Ok(Ivf {
            size,
            timebase: (numerator, denominator),
            frames,
        })
    }

    /// Writes an IVF file (for tests and tools).
    pub fn write(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"DKIF");
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&32u16.to_le_bytes());
        out.extend_from_slice(b"VP80");
        out.extend_from_slice(&self.size.0.to_le_bytes());
        out.extend_from_slice(&self.size.1.to_le_bytes());
        out.extend_from_slice(&self.timebase.1.to_le_bytes());
        out.extend_from_slice(&self.timebase.0.to_le_bytes());
        out.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for f in &self.frames {
            out.extend_from_slice(&(f.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&f.pts.to_le_bytes());
            out.extend_from_slice(&f.data);
        }
        out
    }
}

/// The Opus packets of an Ogg Opus file (RFC 7845), header packets removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OggOpus {
    /// Channels, from the OpusHead header.
    pub channels: u8,
    /// The audio packets, in order.
    pub packets: Vec<Vec<u8>>,
}

/// Ogg's page checksum (CRC-32, polynomial 0x04c11db7, not reflected, initial value 0).
fn ogg_crc(bytes: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in bytes {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

impl OggOpus {
    /// Parses an Ogg file holding one Opus stream; checks every page's checksum.
    pub fn parse(bytes: &[u8]) -> Result<OggOpus, Error> {
        let mut packets: Vec<Vec<u8>> = Vec::new();
        let mut partial: Vec<u8> = Vec::new();
        let mut at = 0;
        let mut serial = None;
        while at < bytes.len() {
            if bytes.get(at..at + 4) != Some(b"OggS") {
                return Err(bad("Ogg: no page at the expected place"));
            }
            let head = bytes
                .get(at..at + 27)
                .ok_or_else(|| bad("Ogg: truncated page header"))?;
            if head[4] != 0 {
                return Err(bad("Ogg: unknown version"));
            }
            let page_serial = u32le(head, 14).unwrap_or(0);
            if *serial.get_or_insert(page_serial) != page_serial {
                return Err(bad("Ogg: more than one stream"));
            }
            let nseg = head[26] as usize;
            let table = bytes
                .get(at + 27..at + 27 + nseg)
                .ok_or_else(|| bad("Ogg: truncated segment table"))?;
            let body_len: usize = table.iter().map(|&l| l as usize).sum();
            let page_len = 27 + nseg + body_len;
            let page = bytes
                .get(at..at + page_len)
                .ok_or_else(|| bad("Ogg: truncated page"))?;
            let stored = u32le(page, 22).unwrap_or(0);
            let mut zeroed = page.to_vec();
            zeroed[22..26].fill(0);
            if ogg_crc(&zeroed) != stored {
                return Err(bad("Ogg: page checksum mismatch"));
            }
            let continued = head[5] & 1 != 0;
            if !continued && !partial.is_empty() {
                return Err(bad("Ogg: a packet was cut off"));
            }
            let mut body = &page[27 + nseg..];
            for &l in table {
                let (seg, rest) = body.split_at(l as usize);
                body = rest;
                partial.extend_from_slice(seg);
                if partial.len() > MAX_FRAME {
                    return Err(bad("Ogg: packet too large"));
                }
                if l < 255 {
                    packets.push(std::mem::take(&mut partial));
                }
            }
            at += page_len;
        }
        if !partial.is_empty() {
            return Err(bad("Ogg: the last packet is unfinished"));
        }
        let mut it = packets.into_iter();
        let head = it.next().ok_or_else(|| bad("Ogg: empty"))?;
        if !head.starts_with(b"OpusHead") || head.len() < 19 {
            return Err(bad("Ogg: not an Opus stream (no OpusHead)"));
        }
        let channels = head[9];
        if channels == 0 {
            return Err(bad("Opus: zero channels"));
        }
        let tags = it.next().ok_or_else(|| bad("Ogg: no OpusTags"))?;
        if !tags.starts_with(b"OpusTags") {
            return Err(bad("Ogg: no OpusTags"));
        }
        let packets: Vec<Vec<u8>> = it.filter(|p| !p.is_empty()).collect();
        if packets.is_empty() {
            return Err(bad("Ogg: no audio packets"));
        }
        Ok(OggOpus { channels, packets })
    }

    /// Writes an Ogg Opus file, one packet per page (for tests and tools).
    pub fn write(&self, serial: u32) -> Vec<u8> {
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, self.channels]);
        head.extend_from_slice(&312u16.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        let mut tags = b"OpusTags".to_vec();
        tags.extend_from_slice(&8u32.to_le_bytes());
        tags.extend_from_slice(b"conclave");
        tags.extend_from_slice(&0u32.to_le_bytes());
        let mut out = Vec::new();
        let all = [head, tags]
            .into_iter()
            .chain(self.packets.iter().cloned())
            .collect::<Vec<_>>();
        let last = all.len() - 1;
        for (seq, p) in all.iter().enumerate() {
            let mut lacing = vec![255u8; p.len() / 255];
            lacing.push((p.len() % 255) as u8);
            let flags = match seq {
                0 => 2,
                s if s == last => 4,
                _ => 0,
            };
            let granule = (seq.saturating_sub(1) as u64) * 960;
            let mut page = b"OggS".to_vec();
            page.push(0);
            page.push(flags);
            page.extend_from_slice(&granule.to_le_bytes());
            page.extend_from_slice(&serial.to_le_bytes());
            page.extend_from_slice(&(seq as u32).to_le_bytes());
            page.extend_from_slice(&0u32.to_le_bytes());
            page.push(lacing.len() as u8);
            page.extend_from_slice(&lacing);
            page.extend_from_slice(p);
            let crc = ogg_crc(&page);
            page[22..26].copy_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&page);
        }
        out
    }
}

/// Loops over a file's frames; on request, skips ahead to the next keyframe.
#[derive(Clone, Debug)]
pub struct Looping<T> {
    frames: Vec<T>,
    next: usize,
}

impl<T> Looping<T> {
    /// Over `frames` (not empty).
    pub fn new(frames: Vec<T>) -> Option<Self> {
        (!frames.is_empty()).then_some(Looping { frames, next: 0 })
    }

    /// The next frame, wrapping around at the end.
    pub fn next_frame(&mut self) -> &T {
        let i = self.next % self.frames.len();
        self.next = i + 1;
        &self.frames[i]
    }

    /// Moves to the first frame from here on (wrapping) that `is_key` accepts.
    pub fn seek(&mut self, is_key: impl Fn(&T) -> bool) {
        let n = self.frames.len();
        if let Some(k) = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| is_key(&self.frames[i]))
        {
            self.next = k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp8(key: bool, n: usize, fill: u8) -> Vec<u8> {
        let mut f = if key {
            vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]
        } else {
            vec![0x11, 0x02, 0x00]
        };
        f.resize(n, fill);
        f
    }

    fn sample_ivf() -> Ivf {
        Ivf {
            size: (640, 480),
            timebase: (1, 30),
            frames: (0..40)
                .map(|i| VideoFrame {
                    pts: i,
                    data: vp8(i % 15 == 0, 300 + i as usize, i as u8),
                    keyframe: i % 15 == 0,
                })
                .collect(),
        }
    }

    #[test]
    fn ivf_round_trips_and_knows_keyframes() {
        let ivf = sample_ivf();
        let parsed = Ivf::parse(&ivf.write()).unwrap();
        assert_eq!(parsed, ivf);
        assert_eq!(parsed.frames.iter().filter(|f| f.keyframe).count(), 3);
    }

    #[test]
    fn ivf_refuses_bad_files_with_a_reason() {
        let good = sample_ivf().write();
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (b"RIFF".to_vec(), "signature"),
            (good[..40].to_vec(), "truncated"),
            (good[..32].to_vec(), "no frames"),
        ];
        let mut vp9 = good.clone();
        vp9[8..12].copy_from_slice(b"VP90");
        cases.push((vp9, "not VP8"));
        let mut huge = good.clone();
        huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push((huge, "out of range"));
        for (bytes, why) in cases {
            let e = Ivf::parse(&bytes).unwrap_err().to_string();
            assert!(e.contains(why), "{e} (wanted {why})");
        }
    }

    #[test]
    fn ogg_opus_round_trips_including_packets_over_255_bytes() {
        let ogg = OggOpus {
            channels: 2,
            packets: (0..50).map(|i| vec![i as u8; 10 + i * 13]).collect(),
        };
        assert_eq!(OggOpus::parse(&ogg.write(7)).unwrap(), ogg);
    }

    #[test]
    fn ogg_refuses_bad_checksums_streams_and_truncation() {
        let good = OggOpus {
            channels: 1,
            packets: vec![vec![1; 40]; 5],
        }
        .write(1);
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let e = OggOpus::parse(&flipped).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        let e = OggOpus::parse(&good[..good.len() - 3])
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = OggOpus::parse(b"OggS").unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn looping_wraps_and_seeks_to_the_next_keyframe() {
        let mut l = Looping::new(sample_ivf().frames).unwrap();
        for _ in 0..41 {
            l.next_frame();
        }
        assert_eq!(l.next_frame().pts, 1);
        l.seek(|f| f.keyframe);
        assert_eq!(l.next_frame().pts, 15);
        for _ in 0..20 {
            l.next_frame();
        }
        l.seek(|f| f.keyframe);
        assert_eq!(l.next_frame().pts, 0);
    }

    #[test]
    fn random_bytes_never_panic_the_readers() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let good_ivf = sample_ivf().write();
        let good_ogg = OggOpus {
            channels: 1,
            packets: vec![vec![3; 300]; 4],
        }
        .write(3);
        for i in 0..3000 {
            let mut b = if i % 2 == 0 {
                good_ivf.clone()
            } else {
                good_ogg.clone()
            };
            for _ in 0..1 + i % 8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % b.len();
                b[at] = (x >> 32) as u8;
            }
            b.truncate((x >> 40) as usize % (b.len() + 1));
            let _ = Ivf::parse(&b);
            let _ = OggOpus::parse(&b);
        }
    }
}
