//! An independent reading of TCP segments: the simulator's oracle for what
//! the engine emits (written from RFC 9293 §3.1 and RFC 1071, deliberately
//! not reusing the engine's own wire module).

use std::fmt;
use std::net::Ipv4Addr;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

/// The header fields of one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentView {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub header_len: usize,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    pub payload_len: usize,
}

impl SegmentView {
    /// None when the bytes cannot be a TCP segment (short, or a data offset
    /// outside [5, length]).
    pub fn parse(b: &[u8]) -> Option<SegmentView> {
        if b.len() < 20 {
            return None;
        }
        let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let header_len = usize::from(b[12] >> 4) * 4;
        if header_len < 20 || header_len > b.len() {
            return None;
        }
        Some(SegmentView {
            src_port: be16(0),
            dst_port: be16(2),
            seq: be32(4),
            ack: be32(8),
            header_len,
            flags: b[13],
            window: be16(14),
            urgent: be16(18),
            payload_len: b.len() - header_len,
        })
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Sequence space the segment occupies (SYN and FIN count one each).
    pub fn seg_len(&self) -> u32 {
        self.payload_len as u32 + self.has(SYN) as u32 + self.has(FIN) as u32
    }
}

impl fmt::Display for SegmentView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut flags = String::new();
        for (bit, name) in [
            (SYN, 'S'),
            (FIN, 'F'),
            (RST, 'R'),
            (PSH, 'P'),
            (ACK, '.'),
            (URG, 'U'),
        ] {
            if self.has(bit) {
                flags.push(name);
            }
        }
        write!(
            f,
            "{} > {} [{flags}] seq {} ack {} win {} len {}",
            self.src_port, self.dst_port, self.seq, self.ack, self.window, self.payload_len
        )
    }
}

/// The 16-bit ones' complement sum of `data` added to `sum` (RFC 1071).
pub fn ones_complement_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Whether the checksum over the IPv4 pseudo-header and the segment holds.
pub fn tcp_checksum_ok(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> bool {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    let sum = ones_complement_add(ones_complement_add(0, &pseudo), segment);
    sum == 0xffff
}
