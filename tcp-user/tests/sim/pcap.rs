//! Classic pcap (not pcapng) of the simulated traffic, LINKTYPE_RAW: each
//! record an IPv4 datagram whose header the simulator synthesizes around
//! the TCP segment a stack emitted. Records are taken at the sender, so a
//! lost segment still shows up; its IPv4 TTL is set to [`TTL_DROPPED`]
//! (Wireshark filter `ip.ttl == 1` lists what the network dropped).

use std::net::Ipv4Addr;

use tcp_user::tcp::Instant;

use super::segment::{ones_complement_add, SegmentView};

/// LINKTYPE_RAW: the packet begins with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;
/// TTL of a datagram the network carried.
pub const TTL_DELIVERED: u8 = 64;
/// TTL of a datagram the network dropped (loss, MTU, queue, blackhole).
pub const TTL_DROPPED: u8 = 1;

struct Record {
    at: Instant,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    segment: Vec<u8>,
}

/// Everything sent, in memory until written.
#[derive(Default)]
pub struct Pcap {
    records: Vec<Record>,
}

impl Pcap {
    pub fn record(&mut self, at: Instant, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, segment: &[u8]) {
        self.records.push(Record {
            at,
            src,
            dst,
            ttl,
            segment: segment.to_vec(),
        });
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The last `n` records as text, times relative to `start`.
    pub fn tail(&self, n: usize, start: Instant) -> Vec<String> {
        let from = self.records.len().saturating_sub(n);
        self.records[from..]
            .iter()
            .map(|r| {
                let seg = SegmentView::parse(&r.segment)
                    .map_or_else(|| "malformed".to_string(), |s| s.to_string());
                format!(
                    "t={:?} {} -> {} {seg}{}",
                    r.at.saturating_duration_since(start),
                    r.src,
                    r.dst,
                    if r.ttl == TTL_DROPPED {
                        " (dropped)"
                    } else {
                        ""
                    }
                )
            })
            .collect()
    }

    /// The file: global header, then one record per datagram.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            24 + self
                .records
                .iter()
                .map(|r| 36 + r.segment.len())
                .sum::<usize>(),
        );
        out.extend(0xa1b2_c3d4u32.to_le_bytes()); // magic, microsecond stamps
        out.extend(2u16.to_le_bytes()); // version 2.4
        out.extend(4u16.to_le_bytes());
        out.extend(0i32.to_le_bytes()); // thiszone
        out.extend(0u32.to_le_bytes()); // sigfigs
        out.extend(65535u32.to_le_bytes()); // snaplen
        out.extend(LINKTYPE_RAW.to_le_bytes());
        for (i, r) in self.records.iter().enumerate() {
            let ip = ipv4_header(r.src, r.dst, r.segment.len(), i as u16, r.ttl);
            let len = (ip.len() + r.segment.len()) as u32;
            let us = r.at.as_micros();
            out.extend(((us / 1_000_000) as u32).to_le_bytes());
            out.extend(((us % 1_000_000) as u32).to_le_bytes());
            out.extend(len.to_le_bytes()); // captured
            out.extend(len.to_le_bytes()); // on the wire
            out.extend(ip);
            out.extend(&r.segment);
        }
        out
    }
}

/// A 20-byte IPv4 header (DF, protocol TCP) with a correct checksum.
pub fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, payload: usize, id: u16, ttl: u8) -> [u8; 20] {
    let total = (20 + payload) as u16;
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6] = 0x40;
    h[8] = ttl;
    h[9] = 6;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let sum = !(ones_complement_add(0, &h) as u16);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}
