//! The XDP half of the endpoint: claims the TCP segments of the ports and
//! flows the endpoint owns, checks them, and redirects them to the AF_XDP
//! socket of the queue they arrived on. Everything else goes to the kernel
//! untouched, so SSH, ARP and every other port keep working.
//!
//! The checks happen here, before the frame costs a trip to userspace: a
//! fragment, a malformed header or a bad checksum on an owned port is
//! dropped and counted by reason in `COUNTERS`.

#![no_std]
#![no_main]

mod packet;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use tcp_common::{
    EthHdr, FlowKey, Ipv4Hdr, TcpHdr, Verdict, XdpConfig, ETH_P_IPV4, IPPROTO_TCP, MAX_FLOWS,
    MAX_LISTEN_PORTS, MAX_QUEUES, MAX_TCP_LEN,
};

use aya_log_ebpf::debug;
use packet::Packet;

/// Listening ports, keyed by host-order port number.
#[map]
static LISTEN_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_LISTEN_PORTS, 0);

/// Actively opened connections (their local port is not a listening one).
#[map]
static FLOWS: HashMap<FlowKey, u8> = HashMap::with_max_entries(MAX_FLOWS, 0);

/// The AF_XDP socket of each RX queue.
#[map]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

/// One counter per [`Verdict`], per CPU.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

#[map]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

#[xdp]
pub fn tcp_xdp(ctx: XdpContext) -> u32 {
    let (verdict, action) = classify(&ctx);
    count(verdict);
    if action == xdp_action::XDP_DROP {
        // Shown when tcp-user runs with --log debug (the loader sets the
        // level); the counters are the record that is always kept.
        debug!(&ctx, "XDP dropped an owned segment: {}", verdict.name());
    }
    action
}

fn count(v: Verdict) {
    if let Some(c) = COUNTERS.get_ptr_mut(v as u32) {
        // Safety: the pointer comes from the per-CPU map lookup and is valid
        // for this CPU while the program runs; nothing else on this CPU
        // touches it concurrently.
        unsafe { *c += 1 };
    }
}

fn classify(ctx: &XdpContext) -> (Verdict, u32) {
    let pkt = Packet::new(ctx);
    let Some(eth) = pkt.header::<EthHdr>(0) else {
        return (Verdict::PassNotIpv4, xdp_action::XDP_PASS);
    };
    if eth.ethertype() != ETH_P_IPV4 {
        return (Verdict::PassNotIpv4, xdp_action::XDP_PASS);
    }
    let Some(ip) = pkt.header::<Ipv4Hdr>(EthHdr::LEN) else {
        return (Verdict::PassNotIpv4, xdp_action::XDP_PASS);
    };
    if ip.protocol != IPPROTO_TCP {
        return (Verdict::PassNotTcp, xdp_action::XDP_PASS);
    }
    // The ports sit at the same place in every TCP header; read them before
    // trusting the IP header, so malformed traffic to ports we do not own is
    // still the kernel's business.
    let ihl = ip.header_len();
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN {
        return (Verdict::PassNotTcp, xdp_action::XDP_PASS);
    }
    // Summed before anything else is read past the fixed header: a later
    // check would let LLVM reuse earlier bounds checks the verifier cannot
    // connect to these accesses.
    let ip_checksum_ok = pkt.ipv4_header_checksum_ok(EthHdr::LEN, ihl);
    let tcp_off = EthHdr::LEN + ihl;
    let Some(ports) = pkt.header::<[u8; 4]>(tcp_off) else {
        return (Verdict::PassNotTcp, xdp_action::XDP_PASS);
    };
    let src_port = u16::from_be_bytes([ports[0], ports[1]]);
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    if !owned(ip, src_port, dst_port) {
        return (Verdict::PassNotOwned, xdp_action::XDP_PASS);
    }
    let drop = xdp_action::XDP_DROP;

    // From here on the segment is ours: anything wrong with it is dropped.
    if ip.is_fragment() {
        // The engine does not reassemble, and a fragment of an owned port
        // must not reach the kernel either (it would answer with a RST).
        return (Verdict::DropFragment, drop);
    }
    let total = ip.total_len() as usize;
    // A frame shorter than the IP total length shows up as a failed access
    // in the checksum loops below. (Comparing against the packet length
    // here would let LLVM drop per-access checks the verifier needs.)
    if total < ihl + TcpHdr::LEN {
        return (Verdict::DropMalformedIp, drop);
    }
    if !ip_checksum_ok {
        return (Verdict::DropBadIpChecksum, drop);
    }
    let Some(tcp) = pkt.header::<TcpHdr>(tcp_off) else {
        return (Verdict::DropMalformedTcp, drop);
    };
    let tcp_len = total - ihl;
    let doff = tcp.header_len();
    if doff < TcpHdr::LEN || doff > tcp_len {
        return (Verdict::DropMalformedTcp, drop);
    }
    if tcp_len > MAX_TCP_LEN {
        return (Verdict::DropTooLong, drop);
    }
    let pseudo = pseudo_header_sum(ip, tcp_len as u32);
    match pkt.checksum_ok(tcp_off, tcp_len, pseudo) {
        Some(true) => {}
        Some(false) => return (Verdict::DropBadChecksum, drop),
        None => return (Verdict::DropMalformedTcp, drop),
    }

    let queue = pkt.rx_queue_index();
    match XSKS.redirect(queue, xdp_action::XDP_DROP as u64) {
        Ok(action) => (Verdict::Redirected, action),
        Err(_) => (Verdict::DropNoSocket, drop),
    }
}

/// Whether the segment belongs to the endpoint: a listening port on its
/// address, or a connection it opened.
fn owned(ip: &Ipv4Hdr, src_port: u16, dst_port: u16) -> bool {
    let local_ip = CONFIG.get(0).map(|c| c.local_ip).unwrap_or([0; 4]);
    if local_ip != [0; 4] && local_ip != ip.dst {
        return false;
    }
    if LISTEN_PORTS.get_ptr(&dst_port).is_some() {
        return true;
    }
    let key = FlowKey {
        remote_ip: ip.src,
        local_ip: ip.dst,
        remote_port: src_port.to_be_bytes(),
        local_port: dst_port.to_be_bytes(),
    };
    FLOWS.get_ptr(&key).is_some()
}

/// The one's complement sum of the IPv4 pseudo-header (RFC 9293 §3.1).
fn pseudo_header_sum(ip: &Ipv4Hdr, tcp_len: u32) -> u32 {
    let w = |b: [u8; 2]| u16::from_be_bytes(b) as u32;
    w([ip.src[0], ip.src[1]])
        + w([ip.src[2], ip.src[3]])
        + w([ip.dst[0], ip.dst[1]])
        + w([ip.dst[2], ip.dst[3]])
        + IPPROTO_TCP as u32
        + tcp_len
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
