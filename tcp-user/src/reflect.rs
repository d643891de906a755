//! `tcp-user reflect`: the endpoint's raw AF_XDP path with no TCP at all,
//! the ceiling any TCP engine on top of it can reach.
//!
//! The same XDP program and AF_XDP sockets as `tcp-user run` (one socket
//! per RX queue) claim the TCP segments to one port on the endpoint's
//! address; every frame that arrives is turned around in its own UMEM
//! frame — Ethernet source and destination, IPv4 source and destination
//! and the two ports swapped — and put back on the TX ring: RX batch →
//! TX batch (one kick) → completions → fill ring. No copy, no allocation,
//! no TCP processing.
//!
//! The swap keeps every checksum valid: the IPv4 header checksum and the
//! TCP checksum (over the pseudo-header, which holds both addresses) are
//! one's complement sums, and a sum does not change when two of its terms
//! trade places. Ethernet carries no checksum in the frame (the FCS is the
//! NIC's). The unit tests check this on real segments.
//!
//! Counters are printed as one `STATS ...` line on SIGUSR1 (so a benchmark
//! can read them at the start and end of its measurement interval) and as
//! a final `DONE ...` line on SIGINT/SIGTERM or after `--duration`.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tcp_common::{EthHdr, Ipv4Hdr, ETH_P_IPV4, IPPROTO_TCP};

use crate::afxdp::{XskConfig, XskSocket, XskStatistics};
use crate::driver::Interface;
use crate::xdp::{XdpAttachment, XdpMode};

/// The largest RX batch (the rings hold 2048 descriptors).
pub const MAX_BATCH: usize = 2048;
/// How long one idle wait lasts at most (signals cut it short).
const IDLE_WAIT_MS: i32 = 100;

/// What `tcp-user reflect` was asked to do.
#[derive(Clone, Debug)]
pub struct ReflectConfig {
    pub iface: String,
    /// The address whose segments to `port` are reflected; the interface's
    /// first IPv4 address if None.
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    /// RX descriptors taken per socket per round.
    pub batch: usize,
    /// Stop after this long (else at SIGINT/SIGTERM).
    pub duration: Option<Duration>,
    /// Spin on the rings instead of sleeping in poll(2) when they are empty.
    pub busy_poll: bool,
    /// AF_XDP sockets to open (one per RX queue); all queues if None.
    pub queues: Option<u32>,
    pub xdp_mode: XdpMode,
    pub log_level: tracing::Level,
}

/// Turns a received frame around in place: Ethernet source and
/// destination, IPv4 source and destination, and the TCP or UDP ports are
/// swapped. Nothing else changes, so the checksums stay valid (see the
/// module documentation). False, with the frame untouched, if it is not an
/// IPv4 TCP or UDP frame with its ports inside the frame.
pub fn reflect_frame(frame: &mut [u8]) -> bool {
    const IPPROTO_UDP: u8 = 17;
    let ip = EthHdr::LEN;
    if frame.len() < ip + Ipv4Hdr::LEN
        || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IPV4
        || frame[ip] >> 4 != 4
    {
        return false;
    }
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    let proto = frame[ip + 9];
    let l4 = ip + ihl;
    if ihl < Ipv4Hdr::LEN || frame.len() < l4 + 4 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
    {
        return false;
    }
    let (dst_mac, rest) = frame.split_at_mut(6);
    dst_mac.swap_with_slice(&mut rest[..6]);
    let (src_ip, rest) = frame[ip + 12..].split_at_mut(4);
    src_ip.swap_with_slice(&mut rest[..4]);
    let (src_port, rest) = frame[l4..].split_at_mut(2);
    src_port.swap_with_slice(&mut rest[..2]);
    true
}

/// Counters over the whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReflectCounters {
    /// RX descriptors taken.
    pub received: u64,
    /// Frames put back on the TX ring.
    pub reflected: u64,
    /// Frames not reflected: not IPv4 TCP/UDP, or a descriptor outside the UMEM.
    pub dropped: u64,
    /// Sent frames the kernel handed back (completion ring).
    pub completed: u64,
    /// Idle waits in poll(2) (0 with busy polling).
    pub polls: u64,
}

/// A snapshot: our counters, the sockets' own, the kernel's drops and this
/// process's CPU time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub secs: f64,
    pub counters: ReflectCounters,
    pub tx_kicks: u64,
    pub tx_kick_errors: u64,
    pub rx_wakeups: u64,
    /// XDP_STATISTICS summed over the sockets.
    pub kernel: XskStatistics,
    /// Owned segments the XDP program redirected, and dropped (any reason).
    pub xdp_redirected: u64,
    pub xdp_dropped: u64,
    /// user + system CPU time of this process, in µs.
    pub cpu_us: u64,
}

impl Snapshot {
    /// `key=value` pairs, the same in the STATS and DONE lines.
    pub fn line(&self) -> String {
        let c = &self.counters;
        let k = &self.kernel;
        format!(
            "secs={:.6} received={} reflected={} dropped={} completed={} \
             rx_dropped={} rx_ring_full={} rx_fill_ring_empty={} rx_invalid_descs={} \
             tx_invalid_descs={} tx_ring_empty={} tx_kicks={} tx_kick_errors={} \
             rx_wakeups={} polls={} xdp_redirected={} xdp_dropped={} cpu_us={}",
            self.secs,
            c.received,
            c.reflected,
            c.dropped,
            c.completed,
            k.rx_dropped,
            k.rx_ring_full,
            k.rx_fill_ring_empty_descs,
            k.rx_invalid_descs,
            k.tx_invalid_descs,
            k.tx_ring_empty_descs,
            self.tx_kicks,
            self.tx_kick_errors,
            self.rx_wakeups,
            c.polls,
            self.xdp_redirected,
            self.xdp_dropped,
            self.cpu_us
        )
    }
}

static STOP: AtomicBool = AtomicBool::new(false);
static SNAPSHOT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGUSR1 {
        SNAPSHOT.store(true, Ordering::SeqCst);
    } else {
        STOP.store(true, Ordering::SeqCst);
    }
}

/// SIGINT/SIGTERM stop, SIGUSR1 asks for a STATS line. No SA_RESTART: a
/// signal cuts an idle poll(2) short.
fn install_signal_handlers() -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
        // Safety: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler only stores to atomics (async-signal-safe).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("installing signal handlers");
        }
    }
    Ok(())
}

/// CPU time (user + system) of this process, in µs.
fn process_cpu_us() -> u64 {
    // Safety: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // Safety: as above; RUSAGE_SELF covers every thread of the process.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// The attached program and the sockets, ready to reflect.
struct Reflector {
    xdp: XdpAttachment,
    sockets: Vec<XskSocket>,
    counters: ReflectCounters,
    start: Instant,
}

impl Reflector {
    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            secs: self.start.elapsed().as_secs_f64(),
            counters: self.counters,
            cpu_us: process_cpu_us(),
            ..Snapshot::default()
        };
        for sock in &self.sockets {
            let c = sock.counters();
            s.tx_kicks += c.tx_kicks;
            s.tx_kick_errors += c.tx_kick_errors;
            s.rx_wakeups += c.rx_wakeups;
            let k = sock.statistics();
            s.kernel.rx_dropped += k.rx_dropped;
            s.kernel.rx_invalid_descs += k.rx_invalid_descs;
            s.kernel.tx_invalid_descs += k.tx_invalid_descs;
            s.kernel.rx_ring_full += k.rx_ring_full;
            s.kernel.rx_fill_ring_empty_descs += k.rx_fill_ring_empty_descs;
            s.kernel.tx_ring_empty_descs += k.tx_ring_empty_descs;
        }
        for (name, v) in self.xdp.counters() {
            if name == "redirected" {
                s.xdp_redirected = v;
            } else if name.starts_with("drop") {
                s.xdp_dropped += v;
            }
        }
        s
    }
}

/// Attaches, prints READY through `ready`, reflects until a signal or the
/// duration, and returns the final snapshot.
pub fn run(cfg: &ReflectConfig, ready: impl FnOnce(&Interface, usize)) -> anyhow::Result<Snapshot> {
    if cfg.port == 0 {
        bail!("--port must be between 1 and 65535");
    }
    if !(1..=MAX_BATCH).contains(&cfg.batch) {
        bail!("--batch must be between 1 and {MAX_BATCH}");
    }
    if let Some(d) = cfg.duration {
        if d.is_zero() {
            bail!("--duration must be positive");
        }
    }
    let iface = Interface::lookup(&cfg.iface, cfg.addr)?;
    let mut xdp = XdpAttachment::load_with_log_level(Some(iface.addr), cfg.log_level)
        .context("loading the XDP program")?;
    let xsk_cfg = XskConfig::default();
    let sockets = xdp.bind_queue_sockets(&iface.name, cfg.queues, &xsk_cfg)?;
    xdp.add_listen_port(cfg.port)?;
    install_signal_handlers()?;
    let mode = xdp.attach(&iface.name, cfg.xdp_mode)?;
    tracing::info!(
        "reflecting TCP to {}:{} on {} ({mode:?} XDP, {} AF_XDP socket(s){}, batch {}{})",
        iface.addr,
        cfg.port,
        iface.name,
        sockets.len(),
        if sockets.iter().all(XskSocket::is_copy_mode) {
            ", copy mode"
        } else {
            ""
        },
        cfg.batch,
        if cfg.busy_poll { ", busy polling" } else { "" }
    );
    let mut r = Reflector {
        xdp,
        sockets,
        counters: ReflectCounters::default(),
        start: Instant::now(),
    };
    ready(&iface, r.sockets.len());
    let deadline = cfg.duration.map(|d| r.start + d);
    let mut pollfds: Vec<libc::pollfd> = r
        .sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        if STOP.load(Ordering::Relaxed) {
            break;
        }
        if SNAPSHOT.swap(false, Ordering::Relaxed) {
            print_line("STATS", &r.snapshot());
        }
        let mut busy = false;
        for sock in r.sockets.iter_mut() {
            let b = sock.forward_in_place(cfg.batch, reflect_frame);
            let c = &mut r.counters;
            c.received += u64::from(b.received);
            c.reflected += u64::from(b.forwarded);
            c.dropped += u64::from(b.dropped);
            c.completed += u64::from(b.completed);
            busy |= b.received > 0;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        if busy || cfg.busy_poll {
            continue;
        }
        let wait_ms = deadline.map_or(IDLE_WAIT_MS, |d| {
            (d - now).as_millis().min(IDLE_WAIT_MS as u128) as i32 + 1
        });
        r.counters.polls += 1;
        // Safety: poll(2) on our own live descriptors, the array's exact
        // length. EINTR (a signal) just ends the wait.
        unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, wait_ms) };
        r.xdp.flush_logs();
    }
    let last = r.snapshot();
    print_line("DONE", &last);
    Ok(last)
}

fn print_line(tag: &str, s: &Snapshot) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{tag} {}", s.line());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    /// An Ethernet + IPv4 + TCP frame with valid checksums and `payload`.
    fn tcp_frame(ihl_words: u8, payload: &[u8]) -> Vec<u8> {
        let src = Ipv4Addr::new(198, 18, 7, 2);
        let dst = Ipv4Addr::new(198, 18, 7, 1);
        let ihl = usize::from(ihl_words) * 4;
        let tcp_len = 20 + payload.len();
        let mut f = vec![0u8; 14 + ihl + tcp_len];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        let ip = &mut f[14..14 + ihl];
        ip[0] = 0x40 | ihl_words;
        ip[2..4].copy_from_slice(&((ihl + tcp_len) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = IPPROTO_TCP;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        for (i, b) in ip[20..].iter_mut().enumerate() {
            *b = if i == 0 { 1 } else { 0 }; // NOP options
        }
        let c = ip_checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let tcp = &mut f[14 + ihl..];
        tcp[..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&9u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18; // PSH ACK
        tcp[14..16].copy_from_slice(&1000u16.to_be_bytes());
        tcp[20..].copy_from_slice(payload);
        wire::fill_checksum(src, dst, tcp);
        f
    }

    /// The one's complement sum over the header; 0 means a valid checksum.
    fn ip_checksum(h: &[u8]) -> u16 {
        let mut sum: u32 = h
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn addrs(f: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
        let a = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
        (a(14 + 12), a(14 + 16))
    }

    #[test]
    fn swap_keeps_both_checksums_valid() {
        for (ihl_words, payload) in [
            (5u8, &b""[..]),
            (5, &b"x"[..]),
            (5, &b"ten bytes!"[..]),
            (6, &[0xffu8; 1460][..]),
            (15, &b"odd-length payload"[..]),
        ] {
            let ihl = usize::from(ihl_words) * 4;
            let orig = tcp_frame(ihl_words, payload);
            let mut f = orig.clone();
            assert!(reflect_frame(&mut f));
            // Swapped: MACs, addresses, ports. Nothing else moved.
            assert_eq!(f[..6], orig[6..12]);
            assert_eq!(f[6..12], orig[..6]);
            let (s, d) = addrs(&f);
            let (os, od) = addrs(&orig);
            assert_eq!((s, d), (od, os));
            let l4 = 14 + ihl;
            assert_eq!(f[l4..l4 + 2], orig[l4 + 2..l4 + 4]);
            assert_eq!(f[l4 + 2..l4 + 4], orig[l4..l4 + 2]);
            assert_eq!(f[l4 + 4..], orig[l4 + 4..]);
            assert_eq!(f[12..14 + 12], orig[12..14 + 12]);
            // Both checksums still verify, unchanged.
            assert_eq!(ip_checksum(&f[14..l4]), 0, "IPv4 header checksum");
            let seg = wire::TcpPacket::new_checked(&f[l4..]).unwrap();
            assert!(seg.verify_checksum(s, d), "TCP checksum");
            assert_eq!(f[l4 + 16..l4 + 18], orig[l4 + 16..l4 + 18]);
            // Reflecting twice gives the original back.
            assert!(reflect_frame(&mut f));
            assert_eq!(f, orig);
        }
    }

    #[test]
    fn ethernet_padding_is_left_alone() {
        // A 54-byte segment padded to the 60-byte Ethernet minimum.
        let mut f = tcp_frame(5, b"");
        f.extend_from_slice(&[0xaa; 6]);
        assert!(reflect_frame(&mut f));
        assert_eq!(f[54..], [0xaa; 6]);
    }

    #[test]
    fn refuses_what_it_cannot_turn_around() {
        let good = tcp_frame(5, b"abc");
        // Truncated before the ports.
        for len in [0, 13, 14, 33, 34, 37] {
            let mut f = good[..len].to_vec();
            assert!(!reflect_frame(&mut f), "len {len}");
            assert_eq!(f, good[..len]);
        }
        let mut f = good[..38].to_vec();
        assert!(reflect_frame(&mut f), "ports present");
        // Not IPv4, not version 4, IHL too small or past the end, not TCP/UDP.
        for (at, v) in [(12, 0x86), (14, 0x65), (14, 0x44), (14, 0x4f), (23, 1)] {
            let mut f = good.clone();
            f[at] = v;
            let before = f.clone();
            assert!(!reflect_frame(&mut f), "byte {at} = {v:#x}");
            assert_eq!(f, before);
        }
        let mut udp = good.clone();
        udp[23] = 17;
        assert!(reflect_frame(&mut udp));
    }
}
