//! Wire layouts and BPF map types shared by the XDP program (`tcp-ebpf`) and
//! the userspace engine (`tcp-user`).
//!
//! Every header struct is `#[repr(C)]`, made only of bytes (alignment 1, no
//! padding) and `bytemuck::Pod`, so it can be read straight out of a packet at
//! any offset. Multi-byte fields are kept in network byte order and read or
//! written through the accessors, which convert.
#![no_std]
#![deny(missing_docs)]

use bytemuck::{Pod, Zeroable};

/// EtherType of IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// Longest TCP segment (header + payload) the XDP program accepts: a
/// 1500-byte MTU less the 20-byte IPv4 header. Longer owned segments are
/// dropped (`DropTooLong`), so the engine never offers an MSS above
/// `MAX_TCP_LEN - 20` (RFC 9293 §3.7.1: the MSS counts data and options
/// beyond the 20-byte TCP header).
pub const MAX_TCP_LEN: usize = 1480;

/// An Ethernet II header (no VLAN tag).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EthHdr {
    /// Destination MAC address.
    pub dst: [u8; 6],
    /// Source MAC address.
    pub src: [u8; 6],
    /// EtherType, big-endian.
    pub ethertype: [u8; 2],
}

impl EthHdr {
    /// Length of the header on the wire.
    pub const LEN: usize = 14;

    /// The EtherType in host order.
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes(self.ethertype)
    }

    /// Sets the EtherType from a host-order value.
    pub fn set_ethertype(&mut self, v: u16) {
        self.ethertype = v.to_be_bytes();
    }
}

/// An IPv4 header without options (options, when IHL > 5, follow it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and IHL in 32-bit words (low nibble).
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Total length of the datagram, big-endian.
    pub total_len: [u8; 2],
    /// Identification, big-endian.
    pub id: [u8; 2],
    /// Flags (reserved, DF, MF) and fragment offset, big-endian.
    pub frag_off: [u8; 2],
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub protocol: u8,
    /// Header checksum, big-endian.
    pub checksum: [u8; 2],
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    /// Length of the header without options.
    pub const LEN: usize = 20;
    /// The "more fragments" flag in `frag_off`.
    pub const FLAG_MF: u16 = 0x2000;
    /// The "don't fragment" flag in `frag_off`.
    pub const FLAG_DF: u16 = 0x4000;
    /// Mask of the fragment offset in `frag_off`.
    pub const OFFSET_MASK: u16 = 0x1fff;

    /// IP version (4 for a valid header).
    pub fn version(&self) -> u8 {
        self.version_ihl >> 4
    }
    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }
    /// Total length in host order.
    pub fn total_len(&self) -> u16 {
        u16::from_be_bytes(self.total_len)
    }
    /// Sets the total length.
    pub fn set_total_len(&mut self, v: u16) {
        self.total_len = v.to_be_bytes();
    }
    /// Flags and fragment offset in host order.
    pub fn frag_off(&self) -> u16 {
        u16::from_be_bytes(self.frag_off)
    }
    /// True when this datagram is a fragment (MF set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.frag_off() & (Self::FLAG_MF | Self::OFFSET_MASK) != 0
    }
    /// Header checksum as stored.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes(self.checksum)
    }
    /// Stores the header checksum.
    pub fn set_checksum(&mut self, v: u16) {
        self.checksum = v.to_be_bytes();
    }
    /// Source address as a host-order integer.
    pub fn src_u32(&self) -> u32 {
        u32::from_be_bytes(self.src)
    }
    /// Destination address as a host-order integer.
    pub fn dst_u32(&self) -> u32 {
        u32::from_be_bytes(self.dst)
    }
}

/// The fixed 20-byte part of a TCP header (RFC 9293 §3.1). Options follow it
/// up to the data offset.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |          Source Port          |       Destination Port        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                        Sequence Number                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    Acknowledgment Number                      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  Data |       |C|E|U|A|P|R|S|F|                               |
/// | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
/// |       |       |R|E|G|K|H|T|N|N|                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |           Checksum            |         Urgent Pointer        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                           [Options]                           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TcpHdr {
    /// Source port, big-endian.
    pub src_port: [u8; 2],
    /// Destination port, big-endian.
    pub dst_port: [u8; 2],
    /// Sequence number, big-endian.
    pub seq: [u8; 4],
    /// Acknowledgment number, big-endian.
    pub ack: [u8; 4],
    /// Data offset in 32-bit words (high nibble) and the 4 reserved bits.
    pub offset_reserved: u8,
    /// The eight control bits, CWR (MSB) to FIN (LSB).
    pub flags: u8,
    /// Receive window, big-endian.
    pub window: [u8; 2],
    /// Checksum, big-endian.
    pub checksum: [u8; 2],
    /// Urgent pointer, big-endian.
    pub urgent: [u8; 2],
}

/// TCP control bits as they sit in [`TcpHdr::flags`].
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN-Echo (RFC 3168).
    pub const ECE: u8 = 0x40;
    /// Congestion Window Reduced (RFC 3168).
    pub const CWR: u8 = 0x80;
}

/// TCP option kinds (IANA "TCP Option Kind Numbers").
pub mod tcp_option {
    /// End of option list.
    pub const END: u8 = 0;
    /// No-operation (padding).
    pub const NOP: u8 = 1;
    /// Maximum segment size (length 4).
    pub const MSS: u8 = 2;
    /// Window scale (length 3, RFC 7323).
    pub const WINDOW_SCALE: u8 = 3;
    /// SACK permitted (length 2, RFC 2018).
    pub const SACK_PERMITTED: u8 = 4;
    /// SACK blocks (length 2 + 8n, RFC 2018).
    pub const SACK: u8 = 5;
    /// Timestamps (length 10, RFC 7323).
    pub const TIMESTAMPS: u8 = 8;
}

macro_rules! be_field {
    ($get:ident, $set:ident, $field:ident, $ty:ty, $doc:literal) => {
        #[doc = concat!("The ", $doc, " in host order.")]
        pub fn $get(&self) -> $ty {
            <$ty>::from_be_bytes(self.$field)
        }
        #[doc = concat!("Sets the ", $doc, " from a host-order value.")]
        pub fn $set(&mut self, v: $ty) {
            self.$field = v.to_be_bytes();
        }
    };
}

macro_rules! flag {
    ($get:ident, $bit:ident) => {
        #[doc = concat!("True when ", stringify!($bit), " is set.")]
        pub fn $get(&self) -> bool {
            self.flags & tcp_flags::$bit != 0
        }
    };
}

impl TcpHdr {
    /// Length of the header without options.
    pub const LEN: usize = 20;

    be_field!(src_port, set_src_port, src_port, u16, "source port");
    be_field!(dst_port, set_dst_port, dst_port, u16, "destination port");
    be_field!(seq, set_seq, seq, u32, "sequence number");
    be_field!(ack, set_ack, ack, u32, "acknowledgment number");
    be_field!(window, set_window, window, u16, "window");
    be_field!(checksum, set_checksum, checksum, u16, "checksum");
    be_field!(urgent, set_urgent, urgent, u16, "urgent pointer");

    /// Header length in bytes including options (data offset × 4).
    pub fn header_len(&self) -> usize {
        ((self.offset_reserved >> 4) as usize) * 4
    }
    /// Sets the data offset from a header length in bytes (a multiple of 4, 20..=60).
    pub fn set_header_len(&mut self, bytes: usize) {
        self.offset_reserved = (((bytes / 4) as u8) << 4) | (self.offset_reserved & 0x0f);
    }
    /// The four reserved bits (must be zero on send, ignored on receive).
    pub fn reserved(&self) -> u8 {
        self.offset_reserved & 0x0f
    }

    flag!(fin, FIN);
    flag!(syn, SYN);
    flag!(rst, RST);
    flag!(psh, PSH);
    flag!(ack_flag, ACK);
    flag!(urg, URG);
    flag!(ece, ECE);
    flag!(cwr, CWR);
}

/// Key of the XDP `FLOWS` map: one TCP connection as seen from the endpoint.
/// Addresses and ports are in network byte order, exactly as in the packet,
/// so the XDP program copies them without conversion.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    /// The peer's IPv4 address (the packet's source).
    pub remote_ip: [u8; 4],
    /// The endpoint's IPv4 address (the packet's destination).
    pub local_ip: [u8; 4],
    /// The peer's port (the packet's source port).
    pub remote_port: [u8; 2],
    /// The endpoint's port (the packet's destination port).
    pub local_port: [u8; 2],
}

impl FlowKey {
    /// Builds a key from host-order addresses and ports.
    pub fn new(local_ip: u32, local_port: u16, remote_ip: u32, remote_port: u16) -> Self {
        Self {
            remote_ip: remote_ip.to_be_bytes(),
            local_ip: local_ip.to_be_bytes(),
            remote_port: remote_port.to_be_bytes(),
            local_port: local_port.to_be_bytes(),
        }
    }
}

/// Value of the `CONFIG` array map (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct XdpConfig {
    /// The endpoint's IPv4 address in network order; all zeroes means any
    /// address (listening ports are then claimed for every destination).
    pub local_ip: [u8; 4],
    /// Reserved for future switches; zero.
    pub flags: u32,
}

/// Names of the maps in the XDP object, so both sides agree.
pub mod maps {
    /// `HashMap<u16 (host-order port), u8>`: ports the endpoint listens on.
    pub const LISTEN_PORTS: &str = "LISTEN_PORTS";
    /// `HashMap<FlowKey, u8>`: connections the endpoint opened actively.
    pub const FLOWS: &str = "FLOWS";
    /// `XskMap` indexed by RX queue: the AF_XDP socket of each queue.
    pub const XSKS: &str = "XSKS";
    /// `PerCpuArray<u64>` indexed by [`Verdict`](crate::Verdict).
    pub const COUNTERS: &str = "COUNTERS";
    /// `Array<XdpConfig>` with one entry.
    pub const CONFIG: &str = "CONFIG";
}

/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "tcp_xdp";

/// Maximum number of entries in the `FLOWS` map.
pub const MAX_FLOWS: u32 = 262_144;
/// Maximum number of listening ports.
pub const MAX_LISTEN_PORTS: u32 = 1024;
/// Maximum number of RX queues (entries of `XSKS`).
pub const MAX_QUEUES: u32 = 64;

/// What the XDP program did with a frame: the index of its counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not IPv4 (ARP, IPv6, ...): passed to the kernel.
    PassNotIpv4 = 0,
    /// IPv4 but not TCP: passed to the kernel.
    PassNotTcp = 1,
    /// TCP for a port or flow the endpoint does not own: passed to the kernel.
    PassNotOwned = 2,
    /// Owned segment with a good checksum, redirected to the AF_XDP socket.
    Redirected = 3,
    /// Owned segment with a bad TCP checksum: dropped.
    DropBadChecksum = 4,
    /// Owned destination but an IP fragment: dropped.
    DropFragment = 5,
    /// IPv4 header malformed or truncated (bad version, IHL, total length): dropped if TCP.
    DropMalformedIp = 6,
    /// TCP header malformed or truncated (data offset < 5 or past the end): dropped if owned.
    DropMalformedTcp = 7,
    /// Owned segment too long for the in-XDP checksum: dropped.
    DropTooLong = 8,
    /// Owned segment but no AF_XDP socket on its RX queue: dropped.
    DropNoSocket = 9,
    /// IPv4 header checksum wrong on an owned segment: dropped.
    DropBadIpChecksum = 10,
}

impl Verdict {
    /// Number of verdicts (size of the `COUNTERS` map).
    pub const COUNT: u32 = 11;
    /// All verdicts in index order.
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Verdict::PassNotIpv4,
        Verdict::PassNotTcp,
        Verdict::PassNotOwned,
        Verdict::Redirected,
        Verdict::DropBadChecksum,
        Verdict::DropFragment,
        Verdict::DropMalformedIp,
        Verdict::DropMalformedTcp,
        Verdict::DropTooLong,
        Verdict::DropNoSocket,
        Verdict::DropBadIpChecksum,
    ];

    /// A short, stable name for displays and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::PassNotIpv4 => "pass_not_ipv4",
            Verdict::PassNotTcp => "pass_not_tcp",
            Verdict::PassNotOwned => "pass_not_owned",
            Verdict::Redirected => "redirected",
            Verdict::DropBadChecksum => "drop_bad_tcp_checksum",
            Verdict::DropFragment => "drop_fragment",
            Verdict::DropMalformedIp => "drop_malformed_ip",
            Verdict::DropMalformedTcp => "drop_malformed_tcp",
            Verdict::DropTooLong => "drop_too_long",
            Verdict::DropNoSocket => "drop_no_socket",
            Verdict::DropBadIpChecksum => "drop_bad_ip_checksum",
        }
    }
}

// Safety: each type is `#[repr(C)]`, made only of byte arrays or integers with
// no padding (checked by `bytemuck::Pod`'s derive), so any bit pattern is valid
// and aya may copy it to and from kernel maps.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
// Safety: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpConfig {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn sizes_match_the_wire() {
        assert_eq!(size_of::<EthHdr>(), EthHdr::LEN);
        assert_eq!(size_of::<Ipv4Hdr>(), Ipv4Hdr::LEN);
        assert_eq!(size_of::<TcpHdr>(), TcpHdr::LEN);
        assert_eq!(size_of::<FlowKey>(), 12);
        assert_eq!(size_of::<XdpConfig>(), 8);
    }

    // A SYN from 198.18.0.2:40000 to 198.18.0.1:7, captured by hand:
    // Ethernet + IPv4 (IHL 5) + TCP (data offset 10, with MSS option).
    const SYN_FRAME: [u8; 74] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // dst MAC
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // src MAC
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x3c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, // ver..cksum
        198, 18, 0, 2, 198, 18, 0, 1, // src, dst
        0x9c, 0x40, 0x00, 0x07, // ports 40000 -> 7
        0x01, 0x02, 0x03, 0x04, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0xa0, 0x02, 0xfa, 0xf0, // offset 10, SYN, window 64240
        0xab, 0xcd, 0x00, 0x00, // checksum, urgent
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
        0x04, 0x02, 0x08, 0x0a, 0, 0, 0, 1, 0, 0, 0, 0, 0x01, 0x03, 0x03,
        0x07, // SACK-perm, TS, NOP, WS
    ];

    #[test]
    fn parses_a_syn_fixture() {
        let eth: &EthHdr = bytemuck::from_bytes(&SYN_FRAME[..14]);
        assert_eq!(eth.ethertype(), ETH_P_IPV4);
        assert_eq!(eth.src, [2, 0, 0, 0, 0, 2]);
        let ip: &Ipv4Hdr = bytemuck::from_bytes(&SYN_FRAME[14..34]);
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.total_len(), 60);
        assert_eq!(ip.protocol, IPPROTO_TCP);
        assert!(!ip.is_fragment(), "DF alone is not a fragment");
        assert_eq!(ip.src_u32(), 0xc612_0002);
        let tcp: &TcpHdr = bytemuck::from_bytes(&SYN_FRAME[34..54]);
        assert_eq!(tcp.src_port(), 40000);
        assert_eq!(tcp.dst_port(), 7);
        assert_eq!(tcp.seq(), 0x0102_0304);
        assert_eq!(tcp.ack(), 0);
        assert_eq!(tcp.header_len(), 40);
        assert_eq!(tcp.reserved(), 0);
        assert!(tcp.syn() && !tcp.ack_flag() && !tcp.fin() && !tcp.rst());
        assert!(!tcp.psh() && !tcp.urg() && !tcp.ece() && !tcp.cwr());
        assert_eq!(tcp.window(), 64240);
        assert_eq!(tcp.checksum(), 0xabcd);
        assert_eq!(tcp.urgent(), 0);
        assert_eq!(SYN_FRAME[54], tcp_option::MSS);
        assert_eq!(SYN_FRAME[58], tcp_option::SACK_PERMITTED);
        assert_eq!(SYN_FRAME[60], tcp_option::TIMESTAMPS);
        assert_eq!(SYN_FRAME[71], tcp_option::WINDOW_SCALE);
    }

    #[test]
    fn setters_write_network_order() {
        let mut tcp = TcpHdr::default();
        tcp.set_src_port(0x1234);
        tcp.set_seq(0xdead_beef);
        tcp.set_header_len(24);
        tcp.flags = tcp_flags::SYN | tcp_flags::ACK | tcp_flags::ECE | tcp_flags::CWR;
        tcp.set_urgent(7);
        let bytes = bytemuck::bytes_of(&tcp);
        assert_eq!(&bytes[0..2], &[0x12, 0x34]);
        assert_eq!(&bytes[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(bytes[12], 0x60);
        assert_eq!(bytes[13], 0xd2);
        assert_eq!(&bytes[18..20], &[0, 7]);
        assert!(tcp.syn() && tcp.ack_flag() && tcp.ece() && tcp.cwr());
    }

    #[test]
    fn fragments_are_recognised() {
        let mut ip = Ipv4Hdr {
            frag_off: 0x2000u16.to_be_bytes(),
            ..Ipv4Hdr::default()
        };
        assert!(ip.is_fragment());
        ip.frag_off = 0x0001u16.to_be_bytes();
        assert!(ip.is_fragment());
        ip.frag_off = 0x4000u16.to_be_bytes();
        assert!(!ip.is_fragment());
    }

    #[test]
    fn flow_key_is_network_order() {
        let k = FlowKey::new(0xc612_0001, 7, 0xc612_0002, 40000);
        assert_eq!(k.local_ip, [198, 18, 0, 1]);
        assert_eq!(k.remote_ip, [198, 18, 0, 2]);
        assert_eq!(k.local_port, [0, 7]);
        assert_eq!(k.remote_port, [0x9c, 0x40]);
    }

    #[test]
    fn verdict_table_is_dense() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as u32, i as u32);
            assert!(!v.name().is_empty());
        }
    }
}
