//! `tcp-user reflect` end to end: frames sent from the client's namespace
//! through a raw packet socket come back through the same XDP program and
//! AF_XDP sockets as the endpoint's, turned around in place. Correctness
//! only (addresses and ports swapped, payload and checksums intact, every
//! frame exactly once); no timing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e_tests::{binary, pattern, Topology, READY_TIMEOUT};

const PORT: u16 = 7777;
/// The client's frames carry this source MAC, which no interface has: the
/// client kernel drops the reflections as "not for this host" instead of
/// answering them with resets.
const FAKE_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0xce, 0x11, 0x02];
const FRAMES: u32 = 600;
const BURST: u32 = 30;

/// `tcp-user reflect` in the endpoint namespace, its stdout collected.
struct Reflector {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Reflector {
    fn start(topo: &Topology, extra: &[&str]) -> Reflector {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &topo.ep_ns])
            .arg(binary())
            .args(["reflect", "--iface", &topo.ep_if, "--addr"])
            .arg(topo.ep_addr.to_string())
            .args(["--port", &PORT.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcp-user reflect");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let r = Reflector {
            child: Some(child),
            lines: rx,
        };
        let ready = r.line("READY ", READY_TIMEOUT);
        assert!(ready.contains(&format!("ports={PORT}")), "{ready}");
        r
    }

    fn line(&self, tag: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(tag) => return l,
                Ok(_) => {}
                Err(e) => panic!("no {tag:?} line from tcp-user reflect: {e}"),
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("running").id() as libc::pid_t;
        // Safety: kill(2) to our own unreaped child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// SIGTERM; the DONE line's counters and the exit status.
    fn stop(&mut self) -> (BTreeMap<String, f64>, std::process::ExitStatus) {
        self.signal(libc::SIGTERM);
        let done = self.line("DONE ", Duration::from_secs(10));
        let status = self.child.take().unwrap().wait().unwrap();
        (fields(&done), status)
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn fields(line: &str) -> BTreeMap<String, f64> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn sum16(bytes: &[u8], mut sum: u32) -> u32 {
    let mut it = bytes.chunks_exact(2);
    for w in &mut it {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = it.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

fn tcp_sum(src: &[u8], dst: &[u8], seg: &[u8]) -> u32 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(src);
    pseudo[4..8].copy_from_slice(dst);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&(seg.len() as u16).to_be_bytes());
    sum16(seg, sum16(&pseudo, 0))
}

/// Frame `i`: its own source port, sequence number and payload (length
/// 6 to ~1460 bytes, so both minimum-size and full frames occur).
fn frame(i: u32, dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let payload = pattern(u64::from(i) + 1, 6 + (i as usize * 97) % 1455);
    let tcp_len = 20 + payload.len();
    let mut f = vec![0u8; 34 + tcp_len];
    f[..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&FAKE_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&(i as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = !(sum16(ip, 0) as u16);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..];
    tcp[..2].copy_from_slice(&(20_000 + (i % 1000) as u16).to_be_bytes());
    tcp[2..4].copy_from_slice(&PORT.to_be_bytes());
    tcp[4..8].copy_from_slice(&i.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    tcp[20..].copy_from_slice(&payload);
    let c = !(tcp_sum(&src.octets(), &dst.octets(), tcp) as u16);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f
}

/// A raw packet socket on `iface` seeing every frame (ETH_P_ALL).
struct RawSocket(libc::c_int);

impl RawSocket {
    fn open(iface: &str) -> RawSocket {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // Safety: plain socket(2), checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let s = RawSocket(fd);
        let name = std::ffi::CString::new(iface).unwrap();
        // Safety: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "no interface {iface}");
        // Safety: an all-zero sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // Safety: bind(2) with a correctly sized sockaddr_ll.
        let rc = unsafe {
            libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let big: libc::c_int = 8 << 20;
        // Safety: setsockopt with a live c_int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &big as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        s
    }

    fn send(&self, frame: &[u8]) {
        // Safety: send(2) from a live buffer of its exact length.
        let n = unsafe {
            libc::send(
                self.0,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next incoming (not outgoing) frame, or None after `timeout`.
    fn recv_incoming(&self, buf: &mut [u8], timeout: Duration) -> Option<usize> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.0,
                events: libc::POLLIN,
                revents: 0,
            };
            // Safety: poll(2) on one live descriptor.
            if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) } <= 0 {
                continue;
            }
            // Safety: an all-zero sockaddr_ll is valid; recvfrom fills it.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // Safety: recvfrom(2) into a live buffer and address of their sizes.
            let n = unsafe {
                libc::recvfrom(
                    self.0,
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n > 0 && sll.sll_pkttype != libc::PACKET_OUTGOING {
                return Some(n as usize);
            }
        }
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // Safety: closes our own descriptor once.
        unsafe { libc::close(self.0) };
    }
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

#[test]
fn reflects_every_frame_with_addresses_swapped() {
    let topo = Topology::new("refl", 90);
    let mut r = Reflector::start(&topo, &["--batch", "16"]);
    let ep_mac = parse_mac(&topo.ep_mac());
    let (ep, cl, cl_if) = (topo.ep_addr, topo.cl_addr, topo.cl_if.clone());
    let seen = topo.in_client(move || {
        let sock = RawSocket::open(&cl_if);
        let mut seen = vec![0u32; FRAMES as usize];
        let mut buf = vec![0u8; 4096];
        let mut i = 0;
        while i < FRAMES {
            let burst = BURST.min(FRAMES - i);
            for k in i..i + burst {
                sock.send(&frame(k, ep_mac, cl, ep));
            }
            // Every frame of the burst back before the next: nothing is
            // lost to a full queue, and a missing frame shows here.
            let mut got = 0;
            while got < burst {
                let n = sock
                    .recv_incoming(&mut buf, Duration::from_secs(5))
                    .unwrap_or_else(|| panic!("frames {i}..{} not all reflected", i + burst));
                let f = &buf[..n];
                if f.len() < 54
                    || f[12..14] != [0x08, 0x00]
                    || f[23] != 6
                    || f[34..36] != PORT.to_be_bytes()
                {
                    continue; // not a reflection (e.g. IPv6 noise)
                }
                let k = u32::from_be_bytes(f[38..42].try_into().unwrap());
                assert!(k < FRAMES, "unknown sequence number {k}");
                let sent = frame(k, ep_mac, cl, ep);
                assert_eq!(f.len(), sent.len(), "frame {k}: length");
                // Swapped: MACs, IPv4 addresses, ports.
                assert_eq!(f[..6], FAKE_MAC, "frame {k}: destination MAC");
                assert_eq!(f[6..12], ep_mac, "frame {k}: source MAC");
                assert_eq!(f[26..30], ep.octets(), "frame {k}: source address");
                assert_eq!(f[30..34], cl.octets(), "frame {k}: destination address");
                assert_eq!(f[36..38], sent[34..36], "frame {k}: destination port");
                // Everything else as sent: IPv4 fields, TCP header, payload.
                assert_eq!(f[12..26], sent[12..26], "frame {k}: IPv4 header");
                assert_eq!(f[38..], sent[38..], "frame {k}: TCP header and payload");
                // And the checksums still verify.
                assert_eq!(sum16(&f[14..34], 0), 0xffff, "frame {k}: IPv4 checksum");
                assert_eq!(
                    tcp_sum(&f[26..30], &f[30..34], &f[34..]),
                    0xffff,
                    "frame {k}: TCP checksum"
                );
                seen[k as usize] += 1;
                got += 1;
            }
            i += burst;
        }
        seen
    });
    let twice: Vec<usize> = (0..seen.len()).filter(|&k| seen[k] != 1).collect();
    assert!(twice.is_empty(), "frames not seen exactly once: {twice:?}");
    // A STATS line on SIGUSR1, then the summary on SIGTERM.
    r.signal(libc::SIGUSR1);
    let stats = fields(&r.line("STATS ", Duration::from_secs(10)));
    assert_eq!(stats["reflected"], f64::from(FRAMES), "{stats:?}");
    let (done, status) = r.stop();
    assert!(status.success(), "exit status {status}");
    assert_eq!(done["received"], f64::from(FRAMES), "{done:?}");
    assert_eq!(done["reflected"], f64::from(FRAMES), "{done:?}");
    assert_eq!(done["dropped"], 0.0, "{done:?}");
    assert_eq!(done["xdp_redirected"], f64::from(FRAMES), "{done:?}");
    assert_eq!(done["rx_dropped"], 0.0, "{done:?}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let run = |args: &[&str]| {
        let out = Command::new(binary())
            .arg("reflect")
            .args(args)
            .output()
            .expect("running tcp-user reflect");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        (out.status.code(), err)
    };
    let (code, err) = run(&["--iface", "nosuchif0", "--port", "7"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("interface nosuchif0 does not exist"), "{err}");
    let (code, err) = run(&["--iface", "lo", "--port", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--port"), "{err}");
    let (code, err) = run(&["--iface", "lo", "--port", "7", "--batch", "0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--batch"), "{err}");
    let (code, err) = run(&["--iface", "lo", "--port", "7", "--duration", "-1"]);
    assert_ne!(code, Some(0), "{err}");
    let (code, err) = run(&["--port", "7"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("required"), "{err}");
}

#[test]
fn stops_by_itself_after_the_duration() {
    let topo = Topology::new("refd", 91);
    let start = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.ep_ns])
        .arg(binary())
        .args([
            "reflect",
            "--iface",
            &topo.ep_if,
            "--port",
            "7",
            "--duration",
            "0.5",
        ])
        .output()
        .expect("running tcp-user reflect");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().next().unwrap_or("").starts_with("READY "),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l.starts_with("DONE ")), "{stdout}");
    assert!(start.elapsed() < Duration::from_secs(20));
    // The XDP program went away with the process.
    assert!(!topo.xdp_attached());
}
