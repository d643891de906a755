//! Route and neighbour look-ups over rtnetlink, for the endpoint's active
//! opens: "which source address and which next-hop MAC do I use to reach the
//! IPv4 address D out of interface I?", answered the way the kernel itself
//! would route.
//!
//! - [`route_get`]: `RTM_GETROUTE` for one destination (`ip route get D`):
//!   output interface, preferred source, gateway.
//! - [`neighbour`]: `RTM_GETNEIGH` for one next hop (`ip neigh get N dev I`).
//! - [`resolve`]: makes the kernel resolve a missing neighbour (ARP) and waits
//!   for the entry.
//! - [`next_hop_mac`]: all of the above for one destination.
//!
//! The sockets are raw `NETLINK_ROUTE` sockets on `libc`; the few `unsafe`
//! blocks are the syscalls themselves, each with its `// Safety:` comment.
//! Encoding and decoding are plain functions on byte slices: every length is
//! checked, so a truncated or malformed answer is an [`NetlinkError::Malformed`]
//! and never a panic.
//!
//! Every socket belongs to the network namespace of the thread that creates
//! it: the free functions open theirs on the calling thread, [`resolve`] and
//! [`next_hop_mac`] on the thread that first polls them. The endpoint has one
//! namespace for the whole process; the tests run a current-thread runtime on
//! a thread that entered its namespace with `setns(2)`.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use thiserror::Error;

// Netlink and rtnetlink ABI (include/uapi/linux/{netlink,rtnetlink,neighbour}.h).
// Spelled out here so the encoders and their tests do not depend on which of
// them a given `libc` release happens to export.
const NETLINK_ROUTE: libc::c_int = 0;
const NETLINK_EXT_ACK: libc::c_int = 11;
const SOL_NETLINK: libc::c_int = 270;
const SO_BINDTOIFINDEX: libc::c_int = 62;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
/// Set in an `NLMSG_ERROR` when extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// Set in an `NLMSG_ERROR` when the kernel did not echo our whole request.
const NLM_F_CAPPED: u16 = 0x100;
const NLMSGERR_ATTR_MSG: u16 = 1;

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;

const AF_INET: u8 = 2;
const RTMSG_LEN: usize = 12;
const NDMSG_LEN: usize = 12;
const RTATTR_HDRLEN: usize = 4;
/// Attribute types carry two flag bits (NLA_F_NESTED, NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_VIA: u16 = 18;

const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;
const RTN_BROADCAST: u8 = 3;
const RTN_ANYCAST: u8 = 4;
const RTN_MULTICAST: u8 = 5;
const RTN_BLACKHOLE: u8 = 6;
const RTN_UNREACHABLE: u8 = 7;
const RTN_PROHIBIT: u8 = 8;
const RTN_THROW: u8 = 9;
const RTN_NAT: u8 = 10;

const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

const NUD_INCOMPLETE: u16 = 0x01;
const NUD_REACHABLE: u16 = 0x02;
const NUD_STALE: u16 = 0x04;
const NUD_DELAY: u16 = 0x08;
const NUD_PROBE: u16 = 0x10;
const NUD_FAILED: u16 = 0x20;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
/// States in which the entry's link-layer address can be used.
const NUD_USABLE: u16 =
    NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP;

/// How long one request waits for the kernel's answer before giving up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Receive buffer: answers to single GETs are a few hundred bytes.
const RECV_BUF: usize = 16 * 1024;

/// What can go wrong; every message names the address and, where one is
/// involved, the interface.
#[derive(Debug, Error)]
pub enum NetlinkError {
    /// The kernel has no usable route: network or host unreachable, or an
    /// `unreachable`, `blackhole` or `prohibit` route covers the address.
    #[error(
        "no route to {0}: the kernel's routing table has no usable route to it \
         (network/host unreachable, or an unreachable/blackhole/prohibit route); \
         check `ip route get {0}`"
    )]
    NoRoute(Ipv4Addr),
    /// The kernel routes the address out of another interface than ours.
    #[error(
        "{dst} is routed out of {actual}, not out of {expected} which this endpoint serves; \
         check `ip route get {dst}`"
    )]
    WrongInterface {
        dst: Ipv4Addr,
        expected: String,
        actual: String,
    },
    /// The address is local, broadcast, multicast, ...: nothing to open a
    /// TCP connection to over the wire.
    #[error(
        "{dst} is a {kind} address here (route type {kind}), not a unicast destination on a link"
    )]
    NotUnicast { dst: Ipv4Addr, kind: &'static str },
    /// The route names no source address (the interface has no IPv4 address).
    #[error(
        "the route to {dst} out of {iface} has no source address: give {iface} an IPv4 address"
    )]
    NoSourceAddress { dst: Ipv4Addr, iface: String },
    /// The route's next hop is not an IPv4 gateway (e.g. `via inet6 ...`).
    #[error("the route to {dst} out of {iface} has a next hop that is not an IPv4 address; not supported")]
    UnsupportedNextHop { dst: Ipv4Addr, iface: String },
    /// No interface by that name or index (in this network namespace).
    #[error("no network interface {0} (in this network namespace)")]
    UnknownInterface(String),
    /// ARP got no answer in time.
    #[error(
        "neighbour {next_hop} on {iface} did not answer ARP within {waited:?} \
         (no entry, or INCOMPLETE/FAILED); is it up and on that link?"
    )]
    NeighbourUnreachable {
        next_hop: Ipv4Addr,
        iface: String,
        waited: Duration,
    },
    /// A neighbour entry whose link-layer address is not Ethernet's 6 bytes.
    #[error("the neighbour entry for {next_hop} on {iface} has a {len}-byte link-layer address, not an Ethernet MAC")]
    NotEthernet {
        next_hop: Ipv4Addr,
        iface: String,
        len: usize,
    },
    /// The kernel refused a request for another reason.
    #[error("{request}: the kernel answered: {}{}", io::Error::from_raw_os_error(*errno), ext_msg(message))]
    Kernel {
        request: String,
        errno: i32,
        message: Option<String>,
    },
    /// The kernel's answer did not parse.
    #[error("malformed netlink answer: {0}")]
    Malformed(String),
    /// A socket call failed.
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn ext_msg(m: &Option<String>) -> String {
    match m {
        Some(m) => format!(" ({m})"),
        None => String::new(),
    }
}

fn malformed(what: impl Into<String>) -> NetlinkError {
    NetlinkError::Malformed(what.into())
}

/// The kernel's answer to `RTM_GETROUTE` for one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The destination asked about.
    pub dst: Ipv4Addr,
    /// Output interface index (`RTA_OIF`).
    pub oif: u32,
    /// Preferred source address (`RTA_PREFSRC`), the one the kernel would use.
    pub src: Option<Ipv4Addr>,
    /// Gateway, when the route goes through one (`RTA_GATEWAY`).
    pub gateway: Option<Ipv4Addr>,
    /// The next hop is not an IPv4 gateway (`RTA_VIA`, e.g. `via inet6`):
    /// there is no IPv4 address to ARP for.
    pub foreign_gateway: bool,
    /// Route type (`RTN_*`); [`route_get`] only returns unicast, local,
    /// broadcast, multicast, anycast or NAT routes, never the unreachable
    /// kinds.
    pub kind: u8,
}

impl Route {
    /// The address to resolve on the link: the gateway, else the destination.
    pub fn next_hop(&self) -> Ipv4Addr {
        self.gateway.unwrap_or(self.dst)
    }
}

/// An interface, by name or by index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interface {
    Name(String),
    Index(u32),
}

impl From<&str> for Interface {
    fn from(s: &str) -> Self {
        Interface::Name(s.to_owned())
    }
}

impl From<String> for Interface {
    fn from(s: String) -> Self {
        Interface::Name(s)
    }
}

impl From<u32> for Interface {
    fn from(i: u32) -> Self {
        Interface::Index(i)
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Interface::Name(n) => f.write_str(n),
            Interface::Index(i) => write!(f, "interface index {i}"),
        }
    }
}

impl Interface {
    /// The interface's index in the calling thread's network namespace.
    pub fn index(&self) -> Result<u32, NetlinkError> {
        match self {
            Interface::Index(i) => {
                if_name(*i).ok_or_else(|| NetlinkError::UnknownInterface(format!("index {i}")))?;
                Ok(*i)
            }
            Interface::Name(n) => {
                let c = CString::new(n.as_bytes())
                    .map_err(|_| NetlinkError::UnknownInterface(format!("{n:?}")))?;
                // Safety: `c` is a valid NUL-terminated string that lives
                // across the call; if_nametoindex only reads it.
                let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
                if i == 0 {
                    Err(NetlinkError::UnknownInterface(n.clone()))
                } else {
                    Ok(i)
                }
            }
        }
    }
}

/// The interface's name, if there is one with that index.
fn if_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // Safety: `buf` has the IF_NAMESIZE bytes if_indextoname may write
    // (name and NUL); it returns NULL or a pointer into `buf`.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // Safety: on success the kernel wrote a NUL-terminated name into `buf`,
    // which outlives this borrow.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// "eth0 (index 2)", or "interface index 2" when it has no name (any more).
fn iface_label(index: u32) -> String {
    match if_name(index) {
        Some(n) => format!("{n} (index {index})"),
        None => format!("interface index {index}"),
    }
}

// ---------------------------------------------------------------------------
// Encoding

fn push_nlmsghdr(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by finish
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
}

fn push_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = (RTATTR_HDRLEN + payload.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn finish(mut buf: Vec<u8>) -> Vec<u8> {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// `RTM_GETROUTE` for one IPv4 destination, as `ip route get D` sends it.
pub fn encode_route_request(seq: u32, dst: Ipv4Addr) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDRLEN + RTMSG_LEN + 8);
    push_nlmsghdr(&mut b, RTM_GETROUTE, NLM_F_REQUEST, seq);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type, flags (u32).
    b.extend_from_slice(&[AF_INET, 32, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&0u32.to_ne_bytes());
    push_attr(&mut b, RTA_DST, &dst.octets());
    finish(b)
}

/// `RTM_GETNEIGH` for one IPv4 neighbour on one interface (a single get,
/// not a dump: Linux 5.0 and later).
pub fn encode_neigh_request(seq: u32, ifindex: u32, addr: Ipv4Addr) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDRLEN + NDMSG_LEN + 8);
    push_nlmsghdr(&mut b, RTM_GETNEIGH, NLM_F_REQUEST, seq);
    // struct ndmsg: family, pad1, pad2 (u16), ifindex (i32), state (u16),
    // flags, type. The kernel insists the pads, state and type are zero.
    b.extend_from_slice(&[AF_INET, 0, 0, 0]);
    b.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]);
    push_attr(&mut b, NDA_DST, &addr.octets());
    finish(b)
}

// ---------------------------------------------------------------------------
// Decoding

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// One netlink message: its header fields and its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    pub payload: &'a [u8],
}

/// Splits a datagram from a netlink socket into its messages.
pub fn parse_messages(buf: &[u8]) -> Result<Vec<Message<'_>>, NetlinkError> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(malformed(format!(
                "{} trailing bytes, shorter than a message header",
                rest.len()
            )));
        }
        let len = u32_at(rest, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(malformed(format!(
                "message length {len} with {} bytes at hand",
                rest.len()
            )));
        }
        out.push(Message {
            ty: u16_at(rest, 4).unwrap_or(0),
            flags: u16_at(rest, 6).unwrap_or(0),
            seq: u32_at(rest, 8).unwrap_or(0),
            pid: u32_at(rest, 12).unwrap_or(0),
            payload: &rest[NLMSG_HDRLEN..len],
        });
        rest = rest.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Walks a run of `rtattr`s: (type without flag bits, payload).
pub fn parse_attrs(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, NetlinkError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < RTATTR_HDRLEN {
            return Err(malformed(format!(
                "{} trailing bytes, shorter than an attribute header",
                b.len()
            )));
        }
        let len = u16_at(b, 0).unwrap_or(0) as usize;
        let ty = u16_at(b, 2).unwrap_or(0) & NLA_TYPE_MASK;
        if len < RTATTR_HDRLEN || len > b.len() {
            return Err(malformed(format!(
                "attribute {ty} of length {len} with {} bytes at hand",
                b.len()
            )));
        }
        out.push((ty, &b[RTATTR_HDRLEN..len]));
        b = b.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

fn ipv4_attr(what: &str, p: &[u8]) -> Result<Ipv4Addr, NetlinkError> {
    let o: [u8; 4] = p
        .try_into()
        .map_err(|_| malformed(format!("{what} of {} bytes, not 4", p.len())))?;
    Ok(Ipv4Addr::from(o))
}

/// The payload of an `NLMSG_ERROR`: errno (positive; 0 for an ACK) and the
/// kernel's extended-ack message, if any.
pub fn parse_error(msg: &Message<'_>) -> Result<(i32, Option<String>), NetlinkError> {
    // struct nlmsgerr: int error; struct nlmsghdr msg; then, unless capped,
    // the rest of our request; then extack attributes.
    let err = u32_at(msg.payload, 0)
        .ok_or_else(|| malformed("error message shorter than 4 bytes"))? as i32;
    let mut message = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        let orig_len = u32_at(msg.payload, 4).unwrap_or(0) as usize;
        let echoed = if msg.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            orig_len.max(NLMSG_HDRLEN)
        };
        // Extack is an extra; a mangled one loses the message, not the errno.
        if let Some(tlvs) = msg.payload.get(4usize.saturating_add(align4(echoed))..) {
            if let Ok(attrs) = parse_attrs(tlvs) {
                message = attrs
                    .iter()
                    .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
                    .map(|(_, p)| {
                        let p = p.split(|&c| c == 0).next().unwrap_or(&[]);
                        String::from_utf8_lossy(p).into_owned()
                    })
                    .filter(|m| !m.is_empty());
            }
        }
    }
    Ok((err.wrapping_neg(), message))
}

/// Decodes an `RTM_NEWROUTE` answering a get for `dst`. Does not judge the
/// route type; [`route_get`] does.
pub fn parse_route(dst: Ipv4Addr, payload: &[u8]) -> Result<Route, NetlinkError> {
    let hdr = payload
        .get(..RTMSG_LEN)
        .ok_or_else(|| malformed(format!("route message of {} bytes", payload.len())))?;
    if hdr[0] != AF_INET {
        return Err(malformed(format!("route of address family {}", hdr[0])));
    }
    let kind = hdr[7];
    let mut route = Route {
        dst,
        oif: 0,
        src: None,
        gateway: None,
        foreign_gateway: false,
        kind,
    };
    let mut oif = None;
    for (ty, p) in parse_attrs(&payload[RTMSG_LEN..])? {
        match ty {
            RTA_OIF => {
                let o = u32_at(p, 0)
                    .filter(|_| p.len() == 4)
                    .ok_or_else(|| malformed(format!("RTA_OIF of {} bytes", p.len())))?;
                oif = Some(o);
            }
            RTA_PREFSRC => route.src = Some(ipv4_attr("RTA_PREFSRC", p)?),
            RTA_GATEWAY => route.gateway = Some(ipv4_attr("RTA_GATEWAY", p)?),
            RTA_VIA => route.foreign_gateway = true,
            _ => {}
        }
    }
    route.oif = match oif {
        Some(o) => o,
        None if matches!(kind, RTN_BLACKHOLE | RTN_UNREACHABLE | RTN_PROHIBIT) => 0,
        None => return Err(malformed(format!("route to {dst} without RTA_OIF"))),
    };
    Ok(route)
}

/// A decoded `RTM_NEWNEIGH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighEntry {
    pub ifindex: u32,
    pub state: u16,
    pub dst: Option<Ipv4Addr>,
    pub lladdr: Option<Vec<u8>>,
}

impl NeighEntry {
    /// Whether the kernel would use the entry's link-layer address now.
    pub fn usable(&self) -> bool {
        self.state & NUD_USABLE != 0 && self.state & (NUD_INCOMPLETE | NUD_FAILED) == 0
    }
}

/// Decodes an `RTM_NEWNEIGH`.
pub fn parse_neigh(payload: &[u8]) -> Result<NeighEntry, NetlinkError> {
    let hdr = payload
        .get(..NDMSG_LEN)
        .ok_or_else(|| malformed(format!("neighbour message of {} bytes", payload.len())))?;
    if hdr[0] != AF_INET {
        return Err(malformed(format!("neighbour of address family {}", hdr[0])));
    }
    let ifindex = u32_at(hdr, 4).unwrap_or(0);
    let state = u16_at(hdr, 8).unwrap_or(0);
    let mut e = NeighEntry {
        ifindex,
        state,
        dst: None,
        lladdr: None,
    };
    for (ty, p) in parse_attrs(&payload[NDMSG_LEN..])? {
        match ty {
            NDA_DST => e.dst = Some(ipv4_attr("NDA_DST", p)?),
            NDA_LLADDR => e.lladdr = Some(p.to_vec()),
            _ => {}
        }
    }
    Ok(e)
}

/// Name of a route type, for messages.
fn route_kind_name(kind: u8) -> &'static str {
    match kind {
        RTN_UNICAST => "unicast",
        RTN_LOCAL => "local",
        RTN_BROADCAST => "broadcast",
        RTN_ANYCAST => "anycast",
        RTN_MULTICAST => "multicast",
        RTN_BLACKHOLE => "blackhole",
        RTN_UNREACHABLE => "unreachable",
        RTN_PROHIBIT => "prohibit",
        RTN_THROW => "throw",
        RTN_NAT => "nat",
        _ => "unknown",
    }
}

/// Maps the kernel's answer to a route get to a [`Route`] or an error. The
/// kernel refuses with ENETUNREACH (no route, or a `throw` to nothing),
/// EHOSTUNREACH (`unreachable`), EACCES (`prohibit`) or EINVAL
/// (`blackhole`). EINVAL also means "bad request", but our request is fixed
/// and tested, and the kernel's complaints about requests carry an extack
/// message, route look-up failures do not: EINVAL with a message stays a
/// [`NetlinkError::Kernel`].
fn route_from_reply(dst: Ipv4Addr, msg: &Message<'_>) -> Result<Route, NetlinkError> {
    match msg.ty {
        NLMSG_ERROR => {
            let (errno, message) = parse_error(msg)?;
            match errno {
                libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES => {
                    Err(NetlinkError::NoRoute(dst))
                }
                libc::EINVAL if message.is_none() => Err(NetlinkError::NoRoute(dst)),
                0 => Err(malformed(format!("an ACK instead of the route to {dst}"))),
                _ => Err(NetlinkError::Kernel {
                    request: format!("route get {dst}"),
                    errno,
                    message,
                }),
            }
        }
        RTM_NEWROUTE => {
            let r = parse_route(dst, msg.payload)?;
            if matches!(
                r.kind,
                RTN_BLACKHOLE | RTN_UNREACHABLE | RTN_PROHIBIT | RTN_THROW
            ) {
                return Err(NetlinkError::NoRoute(dst));
            }
            Ok(r)
        }
        t => Err(malformed(format!(
            "message type {t} in answer to route get {dst}"
        ))),
    }
}

/// Maps the kernel's answer to a neighbour get.
fn neigh_from_reply(
    ifindex: u32,
    next_hop: Ipv4Addr,
    msg: &Message<'_>,
) -> Result<Option<[u8; 6]>, NetlinkError> {
    match msg.ty {
        NLMSG_ERROR => {
            let (errno, message) = parse_error(msg)?;
            match errno {
                libc::ENOENT => Ok(None),
                libc::ENODEV => Err(NetlinkError::UnknownInterface(format!("index {ifindex}"))),
                0 => Err(malformed(format!(
                    "an ACK instead of the neighbour {next_hop}"
                ))),
                _ => Err(NetlinkError::Kernel {
                    request: format!("neighbour get {next_hop} on {}", iface_label(ifindex)),
                    errno,
                    message,
                }),
            }
        }
        RTM_NEWNEIGH => {
            let e = parse_neigh(msg.payload)?;
            if e.ifindex != ifindex || e.dst.is_some_and(|d| d != next_hop) {
                return Err(malformed(format!(
                    "asked for {next_hop} on index {ifindex}, got {:?} on index {}",
                    e.dst, e.ifindex
                )));
            }
            if !e.usable() {
                return Ok(None);
            }
            match e.lladdr {
                Some(l) => match <[u8; 6]>::try_from(l.as_slice()) {
                    Ok(mac) => Ok(Some(mac)),
                    Err(_) => Err(NetlinkError::NotEthernet {
                        next_hop,
                        iface: iface_label(ifindex),
                        len: l.len(),
                    }),
                },
                // A NOARP device without addresses (e.g. a tunnel).
                None => Err(NetlinkError::NotEthernet {
                    next_hop,
                    iface: iface_label(ifindex),
                    len: 0,
                }),
            }
        }
        t => Err(malformed(format!(
            "message type {t} in answer to neighbour get {next_hop}"
        ))),
    }
}

// ---------------------------------------------------------------------------
// The socket

/// A `NETLINK_ROUTE` socket, in the network namespace of the thread that
/// opened it.
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

fn io_err(op: &'static str) -> NetlinkError {
    NetlinkError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

/// `setsockopt` of an `int` option.
fn set_int_opt(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // Safety: `fd` is an open socket for the borrow; we pass a pointer to a
    // live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl, NetlinkError> {
        // Safety: plain socket(2); on success we take sole ownership of the
        // new descriptor right away.
        let fd = unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_ROUTE,
            );
            if fd < 0 {
                return Err(io_err("opening a NETLINK_ROUTE socket"));
            }
            OwnedFd::from_raw_fd(fd)
        };
        // Best effort: the kernel's own words in error answers.
        let _ = set_int_opt(fd.as_fd(), SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // Safety: as set_int_opt, with a live timeval and its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io_err("setting SO_RCVTIMEO on the netlink socket"));
        }
        // Sequence numbers need only differ between requests on a socket;
        // starting from the clock keeps them apart across sockets in logs.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(Rtnl { fd, seq })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `req` (sequence `seq`) to the kernel and hands the answer with
    /// that sequence number to `take`. Answers to earlier, abandoned
    /// requests and datagrams not from the kernel are skipped.
    fn request<T>(
        &mut self,
        req: &[u8],
        seq: u32,
        mut take: impl FnMut(&Message<'_>) -> Result<T, NetlinkError>,
    ) -> Result<T, NetlinkError> {
        // Safety: sockaddr_nl is plain data; all zeroes but the family is
        // "the kernel".
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // Safety: `req` is a live buffer of req.len() bytes; `kernel` is a
        // live sockaddr_nl of the size we pass.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io_err("sending a netlink request"));
        }
        if n as usize != req.len() {
            return Err(malformed("short send of a netlink request"));
        }
        let mut buf = vec![0u8; RECV_BUF];
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(NetlinkError::Io {
                    op: "waiting for the kernel's netlink answer",
                    source: io::ErrorKind::TimedOut.into(),
                });
            }
            // Safety: sockaddr_nl is plain data.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // Safety: `buf` is a live, writable buffer of buf.len() bytes;
            // `from`/`from_len` a live sockaddr_nl and its size. MSG_TRUNC
            // makes the kernel return the datagram's real length.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    // SO_RCVTIMEO ran out.
                    io::ErrorKind::WouldBlock => {
                        return Err(NetlinkError::Io {
                            op: "waiting for the kernel's netlink answer",
                            source: io::ErrorKind::TimedOut.into(),
                        })
                    }
                    _ => {}
                }
                return Err(NetlinkError::Io {
                    op: "receiving the kernel's netlink answer",
                    source: e,
                });
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(malformed(format!(
                    "answer of {n} bytes does not fit {} bytes",
                    buf.len()
                )));
            }
            if from.nl_pid != 0 {
                continue; // not from the kernel
            }
            for m in parse_messages(&buf[..n])? {
                if m.seq != seq || m.ty == NLMSG_DONE {
                    continue;
                }
                return take(&m);
            }
        }
    }

    /// `ip route get dst`: see [`route_get`].
    pub fn route_get(&mut self, dst: Ipv4Addr) -> Result<Route, NetlinkError> {
        let seq = self.next_seq();
        let req = encode_route_request(seq, dst);
        self.request(&req, seq, |m| route_from_reply(dst, m))
    }

    /// `ip neigh get next_hop dev I`: see [`neighbour`].
    pub fn neighbour(
        &mut self,
        ifindex: u32,
        next_hop: Ipv4Addr,
    ) -> Result<Option<[u8; 6]>, NetlinkError> {
        let seq = self.next_seq();
        let req = encode_neigh_request(seq, ifindex, next_hop);
        self.request(&req, seq, |m| neigh_from_reply(ifindex, next_hop, m))
    }
}

// ---------------------------------------------------------------------------
// The API

/// The kernel's route to `dst` (`ip route get dst`): output interface,
/// preferred source address and gateway. [`NetlinkError::NoRoute`] when the
/// kernel has none (no matching route; `unreachable`, `blackhole` or
/// `prohibit` routes). Local, broadcast and multicast destinations come back
/// as such (see [`Route::kind`]); [`route_via`] refuses them.
pub fn route_get(dst: Ipv4Addr) -> Result<Route, NetlinkError> {
    Rtnl::open()?.route_get(dst)
}

/// [`route_get`], for an endpoint serving interface `ifindex`: the route
/// must be unicast, leave through `ifindex` ([`NetlinkError::WrongInterface`]
/// names both interfaces otherwise), have a source address and, if it has a
/// gateway, an IPv4 one.
pub fn route_via(ifindex: u32, dst: Ipv4Addr) -> Result<Route, NetlinkError> {
    check_route(ifindex, Rtnl::open()?.route_get(dst)?)
}

fn check_route(ifindex: u32, r: Route) -> Result<Route, NetlinkError> {
    if r.kind != RTN_UNICAST {
        return Err(NetlinkError::NotUnicast {
            dst: r.dst,
            kind: route_kind_name(r.kind),
        });
    }
    if r.oif != ifindex {
        return Err(NetlinkError::WrongInterface {
            dst: r.dst,
            expected: iface_label(ifindex),
            actual: iface_label(r.oif),
        });
    }
    if r.foreign_gateway {
        return Err(NetlinkError::UnsupportedNextHop {
            dst: r.dst,
            iface: iface_label(ifindex),
        });
    }
    if r.src.is_none_or(|s| s.is_unspecified()) {
        return Err(NetlinkError::NoSourceAddress {
            dst: r.dst,
            iface: iface_label(ifindex),
        });
    }
    Ok(r)
}

/// The neighbour table's MAC for `next_hop` on `ifindex`: `Some` when the
/// entry is REACHABLE, STALE, DELAY, PROBE, PERMANENT or NOARP (the states in
/// which the kernel itself sends to it), `None` when there is no entry or it
/// is INCOMPLETE or FAILED.
pub fn neighbour(ifindex: u32, next_hop: Ipv4Addr) -> Result<Option<[u8; 6]>, NetlinkError> {
    Rtnl::open()?.neighbour(ifindex, next_hop)
}

/// Makes the kernel resolve `next_hop` on `ifindex`.
///
/// Sends one UDP datagram (empty, to the discard port 9) from a kernel
/// socket bound to the interface (`SO_BINDTOIFINDEX`). The kernel then does
/// exactly what it does for its own traffic: creates the entry, ARPs with
/// its own retransmission timers and source-address rules, and moves a
/// FAILED entry back to INCOMPLETE. The alternative, `RTM_NEWNEIGH` with
/// `NTF_USE`, needs CAP_NET_ADMIN and relies on a less used corner of the
/// neighbour code; the datagram needs no privilege (binding an unbound
/// socket to a device is allowed since Linux 5.7) and costs the next hop one
/// packet it throws away.
fn kick_arp(ifindex: u32, next_hop: Ipv4Addr) -> Result<(), NetlinkError> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| {
        NetlinkError::Io {
            op: "opening a UDP socket to trigger ARP",
            source: e,
        }
    })?;
    set_int_opt(
        sock.as_fd(),
        libc::SOL_SOCKET,
        SO_BINDTOIFINDEX,
        ifindex as libc::c_int,
    )
    .map_err(|e| NetlinkError::Io {
        op: "binding the ARP trigger socket to the interface",
        source: e,
    })?;
    sock.set_nonblocking(true).map_err(|e| NetlinkError::Io {
        op: "making the ARP trigger socket non-blocking",
        source: e,
    })?;
    // The send itself may fail (e.g. EHOSTUNREACH reported from an earlier
    // failed resolution); the resolution has been started either way.
    let _ = sock.send_to(&[], SocketAddrV4::new(next_hop, 9));
    Ok(())
}

/// The MAC of `next_hop` on `ifindex`, resolving it with ARP if the table
/// has none: [`NetlinkError::NeighbourUnreachable`] if no usable entry
/// appears within `timeout`. Polls the table (every 10 ms at first, backing
/// off to 100 ms) and re-triggers resolution every second, so that an entry
/// that went FAILED is retried for as long as `timeout` allows.
///
/// The netlink round trips are blocking syscalls answered by the kernel
/// without waiting on the network (microseconds), so they run inline.
pub async fn resolve(
    ifindex: u32,
    next_hop: Ipv4Addr,
    timeout: Duration,
) -> Result<[u8; 6], NetlinkError> {
    let mut nl = Rtnl::open()?;
    resolve_with(&mut nl, ifindex, next_hop, timeout).await
}

async fn resolve_with(
    nl: &mut Rtnl,
    ifindex: u32,
    next_hop: Ipv4Addr,
    timeout: Duration,
) -> Result<[u8; 6], NetlinkError> {
    let start = Instant::now();
    if let Some(mac) = nl.neighbour(ifindex, next_hop)? {
        return Ok(mac);
    }
    const KICK_EVERY: Duration = Duration::from_secs(1);
    let mut last_kick = Instant::now();
    kick_arp(ifindex, next_hop)?;
    let mut pause = Duration::from_millis(10);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(NetlinkError::NeighbourUnreachable {
                next_hop,
                iface: iface_label(ifindex),
                waited: timeout,
            });
        }
        tokio::time::sleep(pause.min(timeout - elapsed)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
        if let Some(mac) = nl.neighbour(ifindex, next_hop)? {
            return Ok(mac);
        }
        if last_kick.elapsed() >= KICK_EVERY {
            last_kick = Instant::now();
            kick_arp(ifindex, next_hop)?;
        }
    }
}

/// For an active open to `dst` out of `iface`: the source address the
/// kernel would use and the MAC of the next hop (the route's gateway, or
/// `dst` itself when it is on the link), resolving it within `timeout`.
pub async fn next_hop_mac(
    iface: impl Into<Interface>,
    dst: Ipv4Addr,
    timeout: Duration,
) -> Result<(Ipv4Addr, [u8; 6]), NetlinkError> {
    let ifindex = iface.into().index()?;
    let mut nl = Rtnl::open()?;
    let route = check_route(ifindex, nl.route_get(dst)?)?;
    let src = route.src.unwrap_or(Ipv4Addr::UNSPECIFIED); // checked above
    let mac = resolve_with(&mut nl, ifindex, route.next_hop(), timeout).await?;
    Ok((src, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        push_nlmsghdr(&mut b, ty, flags, seq);
        b.extend_from_slice(payload);
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        b[..4].copy_from_slice(&len.to_ne_bytes());
        b
    }

    fn attr(ty: u16, p: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        push_attr(&mut b, ty, p);
        b
    }

    fn rtmsg(kind: u8) -> Vec<u8> {
        let mut b = vec![AF_INET, 32, 0, 0, 254, 0, 0, kind];
        b.extend_from_slice(&0x200u32.to_ne_bytes()); // RTM_F_CLONED
        b
    }

    fn route_payload(kind: u8, oif: u32, src: Option<[u8; 4]>, gw: Option<[u8; 4]>) -> Vec<u8> {
        let mut p = rtmsg(kind);
        p.extend(attr(RTA_DST, &[198, 18, 99, 9]));
        p.extend(attr(RTA_OIF, &oif.to_ne_bytes()));
        if let Some(s) = src {
            p.extend(attr(RTA_PREFSRC, &s));
        }
        if let Some(g) = gw {
            p.extend(attr(RTA_GATEWAY, &g));
        }
        p.extend(attr(15, &[1, 2, 3, 4, 5, 6, 7, 8])); // RTA_TABLE etc: ignored
        p
    }

    fn ndmsg(ifindex: u32, state: u16) -> Vec<u8> {
        let mut b = vec![AF_INET, 0, 0, 0];
        b.extend_from_slice(&ifindex.to_ne_bytes());
        b.extend_from_slice(&state.to_ne_bytes());
        b.extend_from_slice(&[0, 1]);
        b
    }

    fn neigh_payload(ifindex: u32, state: u16, mac: Option<&[u8]>) -> Vec<u8> {
        let mut p = ndmsg(ifindex, state);
        p.extend(attr(NDA_DST, &[198, 18, 210, 2]));
        if let Some(m) = mac {
            p.extend(attr(NDA_LLADDR, m));
        }
        p.extend(attr(NLA_TYPE_MASK & 0x8003 | 0x8000, &[0; 8])); // cacheinfo-like, flagged
        p
    }

    fn error_payload(errno: i32, ext: Option<&str>, capped: bool) -> (u16, Vec<u8>) {
        let mut p = (-errno).to_ne_bytes().to_vec();
        let req = encode_route_request(7, Ipv4Addr::new(198, 18, 1, 1));
        let mut flags = 0;
        if capped {
            p.extend_from_slice(&req[..NLMSG_HDRLEN]);
            flags |= NLM_F_CAPPED;
        } else {
            p.extend_from_slice(&req);
        }
        if let Some(m) = ext {
            flags |= NLM_F_ACK_TLVS;
            let mut s = m.as_bytes().to_vec();
            s.push(0);
            p.extend(attr(NLMSGERR_ATTR_MSG, &s));
        }
        (flags, p)
    }

    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 99, 9);
    const HOP: Ipv4Addr = Ipv4Addr::new(198, 18, 210, 2);

    #[test]
    fn netlink_encodes_route_request() {
        let b = encode_route_request(0x0102_0304, Ipv4Addr::new(198, 18, 210, 2));
        let mut want = Vec::new();
        want.extend_from_slice(&36u32.to_ne_bytes());
        want.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
        want.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        want.extend_from_slice(&0x0102_0304u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&RTA_DST.to_ne_bytes());
        want.extend_from_slice(&[198, 18, 210, 2]);
        assert_eq!(b, want);
        // And it reads back.
        let m = parse_messages(&b).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].ty, m[0].flags, m[0].seq),
            (RTM_GETROUTE, NLM_F_REQUEST, 0x0102_0304)
        );
    }

    #[test]
    fn netlink_encodes_neigh_request() {
        let b = encode_neigh_request(9, 0x0a0b_0c0d, Ipv4Addr::new(198, 18, 211, 1));
        assert_eq!(b.len(), 36);
        assert_eq!(u32_at(&b, 0), Some(36));
        assert_eq!(u16_at(&b, 4), Some(RTM_GETNEIGH));
        assert_eq!(u16_at(&b, 6), Some(NLM_F_REQUEST));
        assert_eq!(u32_at(&b, 8), Some(9));
        assert_eq!(&b[16..20], &[AF_INET, 0, 0, 0]);
        assert_eq!(u32_at(&b, 20), Some(0x0a0b_0c0d));
        assert_eq!(&b[24..28], &[0, 0, 0, 0], "state, flags, type must be zero");
        assert_eq!(u16_at(&b, 28), Some(8));
        assert_eq!(u16_at(&b, 30), Some(NDA_DST));
        assert_eq!(&b[32..36], &[198, 18, 211, 1]);
    }

    #[test]
    fn netlink_decodes_route_with_gateway() {
        let p = route_payload(
            RTN_UNICAST,
            5,
            Some([198, 18, 211, 2]),
            Some([198, 18, 211, 1]),
        );
        let b = msg(RTM_NEWROUTE, 0, 1, &p);
        let m = parse_messages(&b).unwrap();
        let r = route_from_reply(DST, &m[0]).unwrap();
        assert_eq!(
            r,
            Route {
                dst: DST,
                oif: 5,
                src: Some(Ipv4Addr::new(198, 18, 211, 2)),
                gateway: Some(Ipv4Addr::new(198, 18, 211, 1)),
                foreign_gateway: false,
                kind: RTN_UNICAST,
            }
        );
        assert_eq!(r.next_hop(), Ipv4Addr::new(198, 18, 211, 1));
        assert!(check_route(5, r).is_ok());
        assert!(matches!(
            check_route(6, r),
            Err(NetlinkError::WrongInterface { dst: DST, .. })
        ));
    }

    #[test]
    fn netlink_decodes_direct_route() {
        let p = route_payload(RTN_UNICAST, 3, Some([198, 18, 210, 1]), None);
        let r = parse_route(HOP, &p).unwrap();
        assert_eq!(r.gateway, None);
        assert_eq!(r.next_hop(), HOP);
        // No source address: refused by check_route.
        let p = route_payload(RTN_UNICAST, 3, None, None);
        let r = parse_route(HOP, &p).unwrap();
        let e = check_route(3, r).unwrap_err();
        assert!(matches!(e, NetlinkError::NoSourceAddress { .. }), "{e}");
    }

    #[test]
    fn netlink_route_types() {
        for (kind, no_route) in [
            (RTN_BLACKHOLE, true),
            (RTN_UNREACHABLE, true),
            (RTN_PROHIBIT, true),
            (RTN_THROW, true),
            (RTN_LOCAL, false),
            (RTN_BROADCAST, false),
        ] {
            let p = route_payload(kind, 1, Some([198, 18, 210, 1]), None);
            let b = msg(RTM_NEWROUTE, 0, 1, &p);
            let m = parse_messages(&b).unwrap();
            let r = route_from_reply(DST, &m[0]);
            if no_route {
                assert!(
                    matches!(r, Err(NetlinkError::NoRoute(DST))),
                    "{kind}: {r:?}"
                );
            } else {
                let e = check_route(1, r.unwrap()).unwrap_err();
                assert!(matches!(e, NetlinkError::NotUnicast { .. }), "{kind}: {e}");
            }
        }
        // An unreachable route without RTA_OIF is still "no route".
        let b = msg(RTM_NEWROUTE, 0, 1, &rtmsg(RTN_UNREACHABLE));
        let m = parse_messages(&b).unwrap();
        assert!(matches!(
            route_from_reply(DST, &m[0]),
            Err(NetlinkError::NoRoute(DST))
        ));
        // A unicast route without RTA_OIF is malformed.
        let b = msg(RTM_NEWROUTE, 0, 1, &rtmsg(RTN_UNICAST));
        let m = parse_messages(&b).unwrap();
        assert!(matches!(
            route_from_reply(DST, &m[0]),
            Err(NetlinkError::Malformed(_))
        ));
        // An IPv6 gateway (RTA_VIA) is refused.
        let mut p = route_payload(RTN_UNICAST, 1, Some([198, 18, 210, 1]), None);
        p.extend(attr(
            RTA_VIA,
            &[10, 0, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ));
        let r = parse_route(DST, &p).unwrap();
        assert!(matches!(
            check_route(1, r),
            Err(NetlinkError::UnsupportedNextHop { .. })
        ));
    }

    #[test]
    fn netlink_route_errors() {
        for (errno, ext, no_route) in [
            (libc::ENETUNREACH, None, true),
            (libc::EHOSTUNREACH, None, true),
            (libc::EACCES, None, true),
            (libc::EINVAL, None, true),
            (
                libc::EINVAL,
                Some("Invalid values in header for route get request"),
                false,
            ),
            (libc::ENOBUFS, None, false),
        ] {
            for capped in [false, true] {
                let (flags, p) = error_payload(errno, ext, capped);
                let b = msg(NLMSG_ERROR, flags, 1, &p);
                let m = parse_messages(&b).unwrap();
                assert_eq!(parse_error(&m[0]).unwrap(), (errno, ext.map(String::from)));
                let r = route_from_reply(DST, &m[0]);
                if no_route {
                    let e = r.unwrap_err();
                    assert!(matches!(e, NetlinkError::NoRoute(DST)), "{errno}: {e}");
                    assert!(e.to_string().contains("198.18.99.9"), "{e}");
                } else {
                    let e = r.unwrap_err();
                    assert!(
                        matches!(e, NetlinkError::Kernel { errno: x, .. } if x == errno),
                        "{e}"
                    );
                    if let Some(x) = ext {
                        assert!(e.to_string().contains(x), "{e}");
                    }
                }
            }
        }
        // An ACK where a route was expected.
        let (flags, p) = error_payload(0, None, true);
        let b = msg(NLMSG_ERROR, flags, 1, &p);
        let m = parse_messages(&b).unwrap();
        assert!(matches!(
            route_from_reply(DST, &m[0]),
            Err(NetlinkError::Malformed(_))
        ));
        // A mangled extack keeps the errno.
        let mut p = (-libc::EHOSTUNREACH).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0xff; 16]);
        p.extend_from_slice(&[200, 0, 1, 0]);
        let b = msg(NLMSG_ERROR, NLM_F_ACK_TLVS | NLM_F_CAPPED, 1, &p);
        let m = parse_messages(&b).unwrap();
        assert_eq!(parse_error(&m[0]).unwrap(), (libc::EHOSTUNREACH, None));
    }

    #[test]
    fn netlink_decodes_neighbour_states() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        for (state, usable) in [
            (NUD_REACHABLE, true),
            (NUD_STALE, true),
            (NUD_DELAY, true),
            (NUD_PROBE, true),
            (NUD_PERMANENT, true),
            (NUD_NOARP, true),
            (NUD_INCOMPLETE, false),
            (NUD_FAILED, false),
            (0, false),
        ] {
            let b = msg(RTM_NEWNEIGH, 0, 1, &neigh_payload(4, state, Some(&mac)));
            let m = parse_messages(&b).unwrap();
            let got = neigh_from_reply(4, HOP, &m[0]).unwrap();
            assert_eq!(got, usable.then_some(mac), "state {state:#x}");
        }
        // INCOMPLETE entries carry no lladdr: None, not an error.
        let b = msg(RTM_NEWNEIGH, 0, 1, &neigh_payload(4, NUD_INCOMPLETE, None));
        let m = parse_messages(&b).unwrap();
        assert_eq!(neigh_from_reply(4, HOP, &m[0]).unwrap(), None);
        // Missing entry: ENOENT.
        let mut p = (-libc::ENOENT).to_ne_bytes().to_vec();
        p.extend_from_slice(&encode_neigh_request(1, 4, HOP));
        let b = msg(NLMSG_ERROR, 0, 1, &p);
        let m = parse_messages(&b).unwrap();
        assert_eq!(neigh_from_reply(4, HOP, &m[0]).unwrap(), None);
        // Not Ethernet.
        let b = msg(
            RTM_NEWNEIGH,
            0,
            1,
            &neigh_payload(4, NUD_REACHABLE, Some(&[1, 2, 3, 4])),
        );
        let m = parse_messages(&b).unwrap();
        let e = neigh_from_reply(4, HOP, &m[0]).unwrap_err();
        assert!(matches!(e, NetlinkError::NotEthernet { len: 4, .. }), "{e}");
        assert!(e.to_string().contains("198.18.210.2"), "{e}");
        // An answer about another entry.
        let b = msg(
            RTM_NEWNEIGH,
            0,
            1,
            &neigh_payload(5, NUD_REACHABLE, Some(&mac)),
        );
        let m = parse_messages(&b).unwrap();
        assert!(matches!(
            neigh_from_reply(4, HOP, &m[0]),
            Err(NetlinkError::Malformed(_))
        ));
    }

    #[test]
    fn netlink_splits_several_messages() {
        let mut b = msg(
            RTM_NEWNEIGH,
            0,
            1,
            &neigh_payload(4, NUD_STALE, Some(&[1; 6])),
        );
        b.extend(msg(NLMSG_DONE, 0, 1, &[0, 0, 0, 0]));
        b.extend(msg(99, 0, 2, &[1, 2, 3])); // padded to 4
        let m = parse_messages(&b).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].ty, NLMSG_DONE);
        assert_eq!(m[2].payload, &[1, 2, 3]);
        // The last message may omit its padding.
        let b = &b[..b.len() - 1];
        assert_eq!(parse_messages(b).unwrap()[2].payload, &[1, 2, 3]);
    }

    /// Decodes `b` the way the socket path does, for any reply kind.
    fn decode_all(b: &[u8]) {
        if let Ok(ms) = parse_messages(b) {
            for m in ms {
                let _ = route_from_reply(DST, &m);
                let _ = neigh_from_reply(4, HOP, &m);
                let _ = parse_error(&m);
                let _ = parse_route(DST, m.payload);
                let _ = parse_neigh(m.payload);
            }
        }
    }

    #[test]
    fn netlink_truncated_answers_are_errors() {
        let route = msg(
            RTM_NEWROUTE,
            0,
            1,
            &route_payload(
                RTN_UNICAST,
                5,
                Some([198, 18, 211, 2]),
                Some([198, 18, 211, 1]),
            ),
        );
        let neigh = msg(
            RTM_NEWNEIGH,
            0,
            1,
            &neigh_payload(4, NUD_REACHABLE, Some(&[7; 6])),
        );
        let (flags, p) = error_payload(libc::EHOSTUNREACH, Some("some words"), false);
        let error = msg(NLMSG_ERROR, flags, 1, &p);
        for full in [&route, &neigh, &error] {
            for cut in 0..full.len() {
                let b = &full[..cut];
                // The header still claims the full length: never parses.
                if cut > 0 {
                    assert!(parse_messages(b).is_err(), "cut at {cut} parsed");
                }
                decode_all(b);
                // With the header's length fixed up, the payload is cut short:
                // each decoder gives an error or, for attributes it does not
                // need, a result, never a panic.
                if cut >= NLMSG_HDRLEN {
                    let mut b = b.to_vec();
                    let len = b.len() as u32;
                    b[..4].copy_from_slice(&len.to_ne_bytes());
                    let ms = parse_messages(&b).unwrap();
                    let m = &ms[0];
                    let payload = cut - NLMSG_HDRLEN;
                    match m.ty {
                        RTM_NEWROUTE if payload < RTMSG_LEN => {
                            assert!(route_from_reply(DST, m).is_err(), "cut at {cut}")
                        }
                        RTM_NEWNEIGH if payload < NDMSG_LEN => {
                            assert!(neigh_from_reply(4, HOP, m).is_err(), "cut at {cut}")
                        }
                        NLMSG_ERROR if payload < 4 => {
                            assert!(parse_error(m).is_err(), "cut at {cut}")
                        }
                        _ => decode_all(&b),
                    }
                }
            }
        }
        // Specific malformations.
        assert!(parse_attrs(&[3, 0, 1, 0]).is_err(), "attribute length < 4");
        assert!(
            parse_attrs(&[9, 0, 1, 0, 1, 2, 3, 4]).is_err(),
            "attribute past the end"
        );
        assert!(parse_attrs(&[8, 0]).is_err(), "half a header");
        let mut b = msg(RTM_NEWROUTE, 0, 1, &[]);
        b[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(parse_messages(&b).is_err(), "message length < header");
        b[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse_messages(&b).is_err(), "message length past the end");
        assert!(parse_route(DST, &[2, 32, 0]).is_err());
        assert!(parse_neigh(&[2, 0, 0, 0, 1]).is_err());
        let mut p = route_payload(RTN_UNICAST, 5, None, None);
        p.extend(attr(RTA_GATEWAY, &[1, 2, 3]));
        assert!(parse_route(DST, &p).is_err(), "3-byte gateway");
        let mut p = rtmsg(RTN_UNICAST);
        p.extend(attr(RTA_OIF, &[1, 0]));
        assert!(parse_route(DST, &p).is_err(), "2-byte OIF");
        let mut p = rtmsg(RTN_UNICAST);
        p[0] = 10;
        p.extend(attr(RTA_OIF, &1u32.to_ne_bytes()));
        assert!(parse_route(DST, &p).is_err(), "IPv6 family");
        let e = msg(NLMSG_ERROR, 0, 1, &[1, 2]);
        let ms = parse_messages(&e).unwrap();
        assert!(parse_error(&ms[0]).is_err(), "short error");
    }

    #[test]
    fn netlink_garbage_never_panics() {
        // xorshift: deterministic garbage, plus garbage with a plausible
        // header so the decoders behind parse_messages get exercised.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let len = (next() % 96) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && len >= NLMSG_HDRLEN {
                b[..4].copy_from_slice(&(len as u32).to_ne_bytes());
                let ty = [NLMSG_ERROR, RTM_NEWROUTE, RTM_NEWNEIGH][round / 2 % 3];
                b[4..6].copy_from_slice(&ty.to_ne_bytes());
                if len > NLMSG_HDRLEN {
                    b[NLMSG_HDRLEN] = AF_INET;
                }
            }
            decode_all(&b);
        }
    }

    #[test]
    fn netlink_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        assert_send(&resolve(1, HOP, Duration::from_secs(1)));
        assert_send(&next_hop_mac("eth0", DST, Duration::from_secs(1)));
        assert_send(&next_hop_mac(1u32, DST, Duration::from_secs(1)));
    }

    #[test]
    fn netlink_error_messages_name_things() {
        let e = NetlinkError::NeighbourUnreachable {
            next_hop: Ipv4Addr::new(198, 18, 211, 1),
            iface: "veth0 (index 3)".into(),
            waited: Duration::from_millis(1500),
        };
        let s = e.to_string();
        assert!(
            s.contains("198.18.211.1") && s.contains("veth0") && s.contains("1.5s"),
            "{s}"
        );
        let e = NetlinkError::Kernel {
            request: "route get 198.18.1.1".into(),
            errno: libc::ENOBUFS,
            message: Some("no room".into()),
        };
        let s = e.to_string();
        assert!(s.contains("198.18.1.1") && s.contains("no room"), "{s}");
    }
}
