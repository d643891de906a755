//! TCP segments on the wire: a checked zero-copy view ([`TcpPacket`]) and a
//! parsed representation ([`TcpRepr`]) that can be emitted again, plus the
//! Internet checksum over the IPv4 pseudo-header (RFC 9293 §3.1).

use std::net::Ipv4Addr;

use tcp_common::{tcp_flags, tcp_option, IPPROTO_TCP};

use crate::tcp::seq::SeqNum;

/// Why bytes are not a usable TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("segment shorter than a TCP header")]
    Truncated,
    #[error("data offset out of range")]
    BadDataOffset,
    #[error("malformed option")]
    BadOption,
    #[error("bad checksum")]
    BadChecksum,
}

/// A view of a TCP segment whose header fits in the buffer.
#[derive(Debug)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Checks that the fixed header and the options fit.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < 20 {
            return Err(WireError::Truncated);
        }
        let doff = ((b[12] >> 4) as usize) * 4;
        if doff < 20 || doff > b.len() {
            return Err(WireError::BadDataOffset);
        }
        Ok(TcpPacket { buf })
    }
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    fn u16_at(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.b()[i], self.b()[i + 1]])
    }
    fn u32_at(&self, i: usize) -> u32 {
        u32::from_be_bytes([
            self.b()[i],
            self.b()[i + 1],
            self.b()[i + 2],
            self.b()[i + 3],
        ])
    }
    pub fn src_port(&self) -> u16 {
        self.u16_at(0)
    }
    pub fn dst_port(&self) -> u16 {
        self.u16_at(2)
    }
    pub fn seq(&self) -> SeqNum {
        SeqNum::new(self.u32_at(4))
    }
    pub fn ack(&self) -> SeqNum {
        SeqNum::new(self.u32_at(8))
    }
    pub fn header_len(&self) -> usize {
        ((self.b()[12] >> 4) as usize) * 4
    }
    pub fn flags(&self) -> u8 {
        self.b()[13]
    }
    pub fn window(&self) -> u16 {
        self.u16_at(14)
    }
    pub fn checksum(&self) -> u16 {
        self.u16_at(16)
    }
    pub fn urgent(&self) -> u16 {
        self.u16_at(18)
    }
    pub fn options(&self) -> &[u8] {
        &self.b()[20..self.header_len()]
    }
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }
    /// Whether the checksum over the pseudo-header and the whole segment holds.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        checksum_sum(src, dst, self.b()) == 0xffff
    }
}

/// Options the engine understands (RFC 9293 §3.2; others are skipped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: Option<(u32, u32)>,
    /// SACK blocks (RFC 2018), first `len` of them valid.
    pub sack: SackBlocks,
}

/// Up to four SACK blocks, [left, right) edges, most recent first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SackBlocks {
    pub blocks: [(SeqNum, SeqNum); 4],
    pub len: u8,
}

impl SackBlocks {
    pub fn as_slice(&self) -> &[(SeqNum, SeqNum)] {
        &self.blocks[..self.len as usize]
    }
    /// Adds a block; false when full.
    pub fn push(&mut self, left: SeqNum, right: SeqNum) -> bool {
        if self.len as usize == self.blocks.len() {
            return false;
        }
        self.blocks[self.len as usize] = (left, right);
        self.len += 1;
        true
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl TcpOptions {
    /// Parses an option list. "A TCP implementation MUST be able to receive
    /// a TCP Option in any segment" and MUST handle an illegal option length
    /// without crashing (RFC 9293 §3.1, MUST-7): the segment is rejected.
    pub fn parse(mut opts: &[u8]) -> Result<TcpOptions, WireError> {
        let mut out = TcpOptions::default();
        while let Some(&kind) = opts.first() {
            match kind {
                tcp_option::END => break,
                tcp_option::NOP => {
                    opts = &opts[1..];
                    continue;
                }
                _ => {}
            }
            let len = *opts.get(1).ok_or(WireError::BadOption)? as usize;
            if len < 2 || len > opts.len() {
                return Err(WireError::BadOption);
            }
            let body = &opts[2..len];
            match (kind, body.len()) {
                (tcp_option::MSS, 2) => out.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                (tcp_option::WINDOW_SCALE, 1) => out.window_scale = Some(body[0]),
                (tcp_option::SACK_PERMITTED, 0) => out.sack_permitted = true,
                (tcp_option::TIMESTAMPS, 8) => {
                    out.timestamps = Some((
                        u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    ))
                }
                (tcp_option::SACK, n) if n % 8 == 0 && n > 0 => {
                    for b in body.chunks_exact(8) {
                        let edge = |i: usize| {
                            SeqNum::new(u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]))
                        };
                        // More than four cannot fit in 40 bytes; extras are ignored.
                        out.sack.push(edge(0), edge(4));
                    }
                }
                (
                    tcp_option::MSS
                    | tcp_option::WINDOW_SCALE
                    | tcp_option::SACK_PERMITTED
                    | tcp_option::TIMESTAMPS
                    | tcp_option::SACK,
                    _,
                ) => return Err(WireError::BadOption),
                _ => {} // unknown option: skipped by its length
            }
            opts = &opts[len..];
        }
        Ok(out)
    }
}

/// A TCP segment whose checksum someone has already verified over the
/// IPv4 pseudo-header of the datagram that carried it: the XDP program
/// (`tcp-ebpf`) drops every owned segment whose IPv4 or TCP checksum is
/// wrong before it redirects the frame to an AF_XDP socket, so frames read
/// from those sockets need not be summed a second time. Frames from
/// anywhere else (the simulator, tests, a pcap) go through
/// [`TcpRepr::parse`], which verifies.
#[derive(Clone, Copy, Debug)]
pub struct ChecksumVerified<'a>(&'a [u8]);

impl<'a> ChecksumVerified<'a> {
    /// Vouches for `segment`'s checksum: call this only for frames that
    /// came through the XDP program (or that were verified otherwise).
    pub fn vouched_by_xdp(segment: &'a [u8]) -> Self {
        ChecksumVerified(segment)
    }

    /// Verifies the checksum here (for frames nobody vouches for).
    pub fn verify(src: Ipv4Addr, dst: Ipv4Addr, segment: &'a [u8]) -> Option<Self> {
        (checksum_sum(src, dst, segment) == 0xffff).then_some(ChecksumVerified(segment))
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// A parsed segment, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    pub options: TcpOptions,
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Parses and checks a segment carried from `src` to `dst`, its
    /// checksum included.
    pub fn parse(src: Ipv4Addr, dst: Ipv4Addr, bytes: &'a [u8]) -> Result<Self, WireError> {
        let p = TcpPacket::new_checked(bytes)?;
        if !p.verify_checksum(src, dst) {
            return Err(WireError::BadChecksum);
        }
        Self::parse_header(p, bytes)
    }

    /// Parses a segment whose checksum was already verified (see
    /// [`ChecksumVerified`]); everything else is checked as in [`parse`].
    ///
    /// [`parse`]: TcpRepr::parse
    pub fn parse_verified(seg: ChecksumVerified<'a>) -> Result<Self, WireError> {
        let bytes = seg.0;
        Self::parse_header(TcpPacket::new_checked(bytes)?, bytes)
    }

    fn parse_header(p: TcpPacket<&'a [u8]>, bytes: &'a [u8]) -> Result<Self, WireError> {
        Ok(TcpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq(),
            ack: p.ack(),
            flags: p.flags(),
            window: p.window(),
            urgent: p.urgent(),
            options: TcpOptions::parse(p.options())?,
            payload: &bytes[p.header_len()..],
        })
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Sequence space the segment occupies: payload plus SYN and FIN.
    pub fn seg_len(&self) -> u32 {
        self.payload.len() as u32
            + self.has(tcp_flags::SYN) as u32
            + self.has(tcp_flags::FIN) as u32
    }

    /// Bytes the header (with options) takes when emitted.
    pub fn header_len(&self) -> usize {
        20 + self.options.emitted_len()
    }

    /// Writes header and options into `buf` and copies the payload after
    /// them, fills in the checksum, and returns the segment's length.
    /// `buf` must hold `header_len() + payload.len()` bytes.
    pub fn emit(&self, src: Ipv4Addr, dst: Ipv4Addr, buf: &mut [u8]) -> usize {
        let hl = self.header_len();
        self.emit_header(buf, hl);
        buf[hl..hl + self.payload.len()].copy_from_slice(self.payload);
        let len = hl + self.payload.len();
        fill_checksum(src, dst, &mut buf[..len]);
        len
    }

    /// Writes only the header and options (the payload is the caller's).
    /// `hl` must be `header_len()`.
    pub fn emit_header(&self, buf: &mut [u8], hl: usize) {
        buf[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        buf[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        buf[4..8].copy_from_slice(&self.seq.get().to_be_bytes());
        buf[8..12].copy_from_slice(&self.ack.get().to_be_bytes());
        buf[12] = ((hl / 4) as u8) << 4;
        buf[13] = self.flags;
        buf[14..16].copy_from_slice(&self.window.to_be_bytes());
        buf[16..18].copy_from_slice(&[0, 0]);
        buf[18..20].copy_from_slice(&self.urgent.to_be_bytes());
        self.options.emit(&mut buf[20..hl]);
    }
}

impl TcpOptions {
    /// Bytes these options take on the wire, padded to 32 bits.
    pub fn emitted_len(&self) -> usize {
        // Mirrors `emit`: every option is laid out on 32-bit boundaries.
        let mss = if self.mss.is_some() { 4 } else { 0 };
        let sack_ts = match (self.sack_permitted, self.timestamps.is_some()) {
            (_, true) => 12,
            (true, false) => 4,
            (false, false) => 0,
        };
        let ws = if self.window_scale.is_some() { 4 } else { 0 };
        let blocks = if self.sack.is_empty() {
            0
        } else {
            4 + 8 * self.sack.len as usize
        };
        mss + sack_ts + ws + blocks
    }

    /// Writes the options in the layout Linux uses (MSS, SACK-permitted +
    /// timestamps, NOP + window scale), NOP-padded to `out.len()`.
    pub fn emit(&self, out: &mut [u8]) {
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        if let Some(mss) = self.mss {
            let m = mss.to_be_bytes();
            put(&[tcp_option::MSS, 4, m[0], m[1]]);
        }
        match (self.sack_permitted, self.timestamps) {
            (true, Some((val, ecr))) => {
                put(&[tcp_option::SACK_PERMITTED, 2, tcp_option::TIMESTAMPS, 10]);
                put(&val.to_be_bytes());
                put(&ecr.to_be_bytes());
            }
            (false, Some((val, ecr))) => {
                put(&[tcp_option::NOP, tcp_option::NOP, tcp_option::TIMESTAMPS, 10]);
                put(&val.to_be_bytes());
                put(&ecr.to_be_bytes());
            }
            (true, None) => put(&[
                tcp_option::NOP,
                tcp_option::NOP,
                tcp_option::SACK_PERMITTED,
                2,
            ]),
            (false, None) => {}
        }
        if let Some(shift) = self.window_scale {
            put(&[tcp_option::NOP, tcp_option::WINDOW_SCALE, 3, shift]);
        }
        if !self.sack.is_empty() {
            put(&[tcp_option::NOP, tcp_option::NOP]);
            put(&[tcp_option::SACK, 2 + 8 * self.sack.len]);
            for (l, r) in self.sack.as_slice() {
                put(&l.get().to_be_bytes());
                put(&r.get().to_be_bytes());
            }
        }
        let end = at;
        out[end..].fill(tcp_option::NOP);
    }
}

/// Computes and stores the checksum of a complete segment.
pub fn fill_checksum(src: Ipv4Addr, dst: Ipv4Addr, seg: &mut [u8]) {
    seg[16] = 0;
    seg[17] = 0;
    let c = !(checksum_sum(src, dst, seg) as u16);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
}

/// The checksum field value for a segment whose checksum field is zero.
pub fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> u16 {
    !(checksum_sum(src, dst, seg) as u16)
}

/// One's complement sum (folded to 16 bits) of the pseudo-header and `seg`.
///
/// RFC 1071 §2: the sum may be taken over wider words in either byte order
/// and folded at the end. The segment is summed in 32-bit native-endian
/// words into a 64-bit accumulator (no carry can be lost below 2^32 words),
/// folded to 16 bits and swapped into network order once.
fn checksum_sum(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> u32 {
    let mut acc: u64 = 0;
    let mut chunks = seg.chunks_exact(32);
    for c in &mut chunks {
        for w in c.chunks_exact(4) {
            acc += u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64;
        }
    }
    let mut words = chunks.remainder().chunks_exact(4);
    for w in &mut words {
        acc += u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
    let mut tail = [0u8; 4];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    acc += u32::from_ne_bytes(tail) as u64;
    // Fold to 16 bits in native order; then into network order.
    let mut sum = (acc & 0xffff_ffff) + (acc >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let mut sum = u16::from_be(sum as u16) as u64;
    // The pseudo-header, in network order.
    for a in [src.octets(), dst.octets()] {
        sum += u16::from_be_bytes([a[0], a[1]]) as u64 + u16::from_be_bytes([a[2], a[3]]) as u64;
    }
    sum += IPPROTO_TCP as u64 + seg.len() as u64;
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    // A SYN 198.18.0.2:40000 -> 198.18.0.1:7, seq 0x01020304, window 64240,
    // options MSS 1460, SACK-permitted, timestamps, NOP, window scale 7,
    // checksum computed independently with Python.
    const SYN: [u8; 40] = [
        0x9c, 0x40, 0x00, 0x07, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0x20, 0x99, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    #[test]
    fn parses_a_syn_with_options() {
        let r = TcpRepr::parse(SRC, DST, &SYN).unwrap();
        assert_eq!((r.src_port, r.dst_port), (40000, 7));
        assert_eq!(r.seq.get(), 0x01020304);
        assert_eq!(r.flags, tcp_flags::SYN);
        assert_eq!(r.window, 64240);
        assert_eq!(r.options.mss, Some(1460));
        assert!(r.options.sack_permitted);
        assert_eq!(r.options.timestamps, Some((1, 0)));
        assert_eq!(r.options.window_scale, Some(7));
        assert_eq!(r.seg_len(), 1);
        assert_eq!(
            tcp_checksum(SRC, DST, &{
                let mut z = SYN;
                z[16] = 0;
                z[17] = 0;
                z
            }),
            0x2099
        );
    }

    #[test]
    fn rejects_bad_segments() {
        let mut bad = SYN;
        bad[30] ^= 1;
        assert_eq!(TcpRepr::parse(SRC, DST, &bad), Err(WireError::BadChecksum));
        assert_eq!(
            TcpRepr::parse(SRC, DST, &SYN[..19]).unwrap_err(),
            WireError::Truncated
        );
        let mut off = SYN;
        off[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&off[..]).unwrap_err(),
            WireError::BadDataOffset
        );
        off[12] = 0xf0;
        assert_eq!(
            TcpPacket::new_checked(&off[..]).unwrap_err(),
            WireError::BadDataOffset
        );
        assert_eq!(TcpOptions::parse(&[2, 4, 5]), Err(WireError::BadOption));
        assert_eq!(TcpOptions::parse(&[2, 1]), Err(WireError::BadOption));
        assert_eq!(TcpOptions::parse(&[2, 3, 5]), Err(WireError::BadOption));
        assert_eq!(
            TcpOptions::parse(&[99, 2, 1, 0]).unwrap(),
            TcpOptions::default()
        );
    }

    #[test]
    fn every_option_combination_round_trips() {
        for mss in [None, Some(1460)] {
            for ws in [None, Some(7)] {
                for sack in [false, true] {
                    for ts in [None, Some((7, 9))] {
                        let mut blocks = SackBlocks::default();
                        if !sack {
                            blocks.push(SeqNum::new(100), SeqNum::new(200));
                            if ts.is_none() && mss.is_none() && ws.is_none() {
                                for i in 0..3 {
                                    blocks.push(SeqNum::new(300 + i), SeqNum::new(400 + i));
                                }
                            }
                        }
                        let opts = TcpOptions {
                            mss,
                            window_scale: ws,
                            sack_permitted: sack,
                            timestamps: ts,
                            sack: blocks,
                        };
                        let r = TcpRepr {
                            src_port: 1,
                            dst_port: 2,
                            seq: SeqNum::new(3),
                            ack: SeqNum::new(4),
                            flags: tcp_flags::SYN,
                            window: 5,
                            urgent: 0,
                            options: opts,
                            payload: b"x",
                        };
                        let mut buf = [0u8; 80];
                        let n = r.emit(SRC, DST, &mut buf);
                        assert_eq!(n % 4, 1, "header padded to 32 bits");
                        assert_eq!(TcpRepr::parse(SRC, DST, &buf[..n]).unwrap(), r);
                    }
                }
            }
        }
    }

    #[test]
    fn emit_round_trips() {
        let payload = b"hello, odd";
        let r = TcpRepr {
            src_port: 7,
            dst_port: 40000,
            seq: SeqNum::new(9),
            ack: SeqNum::new(0x01020305),
            flags: tcp_flags::ACK | tcp_flags::PSH,
            window: 1000,
            urgent: 0,
            options: TcpOptions {
                mss: Some(1460),
                ..Default::default()
            },
            payload,
        };
        let mut buf = [0u8; 64];
        let n = r.emit(DST, SRC, &mut buf);
        assert_eq!(n, 24 + payload.len());
        assert_eq!(TcpRepr::parse(DST, SRC, &buf[..n]).unwrap(), r);
    }

    proptest! {
        #[test]
        fn checksum_matches_a_naive_sum(data in proptest::collection::vec(any::<u8>(), 20..200)) {
            let mut seg = data.clone();
            seg[12] = 0x50;
            fill_checksum(SRC, DST, &mut seg);
            // naive 16-bit sum
            let mut words: Vec<u16> = vec![198 << 8 | 18, 2, 198 << 8 | 18, 1, 6, seg.len() as u16];
            for c in seg.chunks(2) {
                words.push(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            let mut s: u32 = words.iter().map(|&w| w as u32).sum();
            while s >> 16 != 0 { s = (s & 0xffff) + (s >> 16); }
            prop_assert_eq!(s, 0xffff);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = TcpRepr::parse(SRC, DST, &data);
            let _ = TcpOptions::parse(&data);
        }
    }
}
