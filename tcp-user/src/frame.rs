//! Ethernet + IPv4 framing around the TCP segments the core consumes and
//! produces. The XDP program already checked everything it redirects
//! (IPv4, no fragment, header and TCP checksums), but the engine still
//! parses defensively: a frame it cannot make sense of is counted, not trusted.

use std::net::Ipv4Addr;

use tcp_common::{EthHdr, Ipv4Hdr, ETH_P_IPV4, IPPROTO_TCP};

/// Offset of the TCP segment in the frames the engine sends (no IP options).
pub const TCP_OFFSET: usize = EthHdr::LEN + Ipv4Hdr::LEN;

/// A received frame, taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct RxFrame<'a> {
    /// Where the frame came from: replies go back to this MAC address.
    pub src_mac: [u8; 6],
    /// The datagram's source (the peer).
    pub src: Ipv4Addr,
    /// The datagram's destination (the endpoint).
    pub dst: Ipv4Addr,
    /// The TCP segment: header, options and payload, without Ethernet padding.
    pub segment: &'a [u8],
}

/// Why a received frame was not handed to TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxError {
    /// Shorter than Ethernet + IPv4 headers.
    Truncated,
    /// Not IPv4, not TCP, or a fragment.
    NotTcpIpv4,
    /// IHL or total length inconsistent with the frame.
    BadIpHeader,
}

/// Takes an Ethernet frame apart down to the TCP segment.
pub fn parse(frame: &[u8]) -> Result<RxFrame<'_>, RxError> {
    if frame.len() < TCP_OFFSET {
        return Err(RxError::Truncated);
    }
    let eth: &EthHdr = bytemuck::from_bytes(&frame[..EthHdr::LEN]);
    if eth.ethertype() != ETH_P_IPV4 {
        return Err(RxError::NotTcpIpv4);
    }
    let ip: &Ipv4Hdr = bytemuck::from_bytes(&frame[EthHdr::LEN..TCP_OFFSET]);
    if ip.version() != 4 {
        return Err(RxError::BadIpHeader);
    }
    if ip.protocol != IPPROTO_TCP || ip.is_fragment() {
        return Err(RxError::NotTcpIpv4);
    }
    let ihl = ip.header_len();
    let total = ip.total_len() as usize;
    // The total length, not the frame length, bounds the segment: short
    // frames are padded to 60 bytes on Ethernet.
    if ihl < Ipv4Hdr::LEN || total < ihl || EthHdr::LEN + total > frame.len() {
        return Err(RxError::BadIpHeader);
    }
    Ok(RxFrame {
        src_mac: eth.src,
        src: Ipv4Addr::from(ip.src),
        dst: Ipv4Addr::from(ip.dst),
        segment: &frame[EthHdr::LEN + ihl..EthHdr::LEN + total],
    })
}

/// The addressing of an outgoing frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxHeaders {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IPv4 identification (RFC 6864: any value is fine with DF set).
    pub ip_id: u16,
}

/// Writes the Ethernet and IPv4 headers in front of a TCP segment of
/// `tcp_len` bytes already sitting at `frame[TCP_OFFSET..]`, and returns the
/// frame's length.
pub fn write_headers(frame: &mut [u8], h: &TxHeaders, tcp_len: usize) -> usize {
    let eth = EthHdr {
        dst: h.dst_mac,
        src: h.src_mac,
        ethertype: ETH_P_IPV4.to_be_bytes(),
    };
    frame[..EthHdr::LEN].copy_from_slice(bytemuck::bytes_of(&eth));
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        total_len: ((Ipv4Hdr::LEN + tcp_len) as u16).to_be_bytes(),
        id: h.ip_id.to_be_bytes(),
        // DF: the endpoint never sends more than the path's MSS.
        frag_off: Ipv4Hdr::FLAG_DF.to_be_bytes(),
        ttl: 64,
        protocol: IPPROTO_TCP,
        checksum: [0; 2],
        src: h.src.octets(),
        dst: h.dst.octets(),
    };
    ip.set_checksum(ipv4_header_checksum(bytemuck::bytes_of(&ip)));
    frame[EthHdr::LEN..TCP_OFFSET].copy_from_slice(bytemuck::bytes_of(&ip));
    TCP_OFFSET + tcp_len
}

/// RFC 791 header checksum: the one's complement of the one's complement sum
/// of the header's 16-bit words (with the checksum field zero).
fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_with(tcp: &[u8], pad: usize) -> Vec<u8> {
        let h = TxHeaders {
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 0, 1),
            ip_id: 7,
        };
        let mut f = vec![0u8; TCP_OFFSET + tcp.len() + pad];
        f[TCP_OFFSET..TCP_OFFSET + tcp.len()].copy_from_slice(tcp);
        let n = write_headers(&mut f, &h, tcp.len());
        assert_eq!(n, TCP_OFFSET + tcp.len());
        f
    }

    #[test]
    fn round_trip_strips_padding() {
        let tcp = [0xaa; 20];
        let f = frame_with(&tcp, 6);
        let rx = parse(&f).unwrap();
        assert_eq!(rx.segment, &tcp);
        assert_eq!(rx.src, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(rx.dst, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(rx.src_mac, [2, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn header_checksum_verifies_to_zero() {
        let f = frame_with(&[0; 20], 0);
        // Summing a header including its correct checksum gives 0xffff, whose complement is 0.
        assert_eq!(ipv4_header_checksum(&f[EthHdr::LEN..TCP_OFFSET]), 0);
        // Known vector (RFC 1071 style): a classic example header.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&hdr), 0xb861);
    }

    #[test]
    fn rejects_what_is_not_tcp_ipv4() {
        assert_eq!(parse(&[0; 10]), Err(RxError::Truncated));
        let mut f = frame_with(&[0; 20], 0);
        f[12] = 0x86;
        f[13] = 0xdd;
        assert_eq!(parse(&f), Err(RxError::NotTcpIpv4));
        let mut f = frame_with(&[0; 20], 0);
        f[EthHdr::LEN + 9] = 17;
        assert_eq!(parse(&f), Err(RxError::NotTcpIpv4));
        let mut f = frame_with(&[0; 20], 0);
        f[EthHdr::LEN + 6] = 0x20; // MF
        assert_eq!(parse(&f), Err(RxError::NotTcpIpv4));
        let mut f = frame_with(&[0; 20], 0);
        f[EthHdr::LEN + 3] = 200; // total length past the frame
        assert_eq!(parse(&f), Err(RxError::BadIpHeader));
        let mut f = frame_with(&[0; 20], 0);
        f[EthHdr::LEN] = 0x44; // IHL 4
        assert_eq!(parse(&f), Err(RxError::BadIpHeader));
    }
}
