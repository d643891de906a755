//! `tcp_user::netlink` against the real kernel: each test builds its own
//! network namespaces (`tcpu-nl-<pid>-<n>-<tag>`, removed on drop, also when
//! the test panics), joined by veth pairs, with addresses from
//! 198.18.0.0/15, and asks its questions from a thread that entered the
//! namespace with setns(2). Needs root; without it the tests fail and say so.

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tcp_user::netlink::{neighbour, next_hop_mac, resolve, route_get, Interface, NetlinkError};

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn must_be_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("");
    assert_eq!(
        euid, "0",
        "the netlink tests need root (network namespaces)"
    );
}

/// A network namespace of our own, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        must_be_root();
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "tcpu-nl-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS args...`
    fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// The MAC of `ifname`, as `ip -n NS link show` has it.
    fn mac(&self, ifname: &str) -> [u8; 6] {
        let out = self.ip(&["link", "show", ifname]);
        let hex = out
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no link/ether in {out:?}"));
        let v: Vec<u8> = hex
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    /// Runs `f` on a thread inside this namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.name, f)
    }

    /// Runs the future on a current-thread runtime on a thread inside this
    /// namespace (so that every socket it opens is in here).
    fn block_on<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future,
        Fut::Output: Send + 'static,
    {
        self.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace takes its veths (and their peers) along.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// As tests/harness.rs: the calling thread of `f` enters `ns` and nothing
/// else does.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    let h = std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // Safety: plain syscall on an fd we hold open; setns moves only the
        // calling thread, which is ours alone and ends with `f`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    });
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// A veth pair: `a_if` in `a` with `a_addr`, `b_if` in `b` with `b_addr`
/// (either may be absent), both up.
fn veth(a: &Netns, a_if: &str, a_addr: Option<&str>, b: &Netns, b_if: &str, b_addr: Option<&str>) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        if let Some(addr) = addr {
            ns.ip(&["addr", "add", addr, "dev", ifname]);
        }
        ns.ip(&["link", "set", ifname, "up"]);
    }
}

const T: Duration = Duration::from_secs(3);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// (a) A peer on the link: no gateway, its MAC, also after the neighbour
/// entry was flushed.
#[test]
fn netlink_direct_peer() {
    let a = Netns::new("a");
    let p = Netns::new("p");
    veth(
        &a,
        "nl0",
        Some("198.18.210.1/24"),
        &p,
        "nl1",
        Some("198.18.210.2/24"),
    );
    let peer_mac = p.mac("nl1");
    let peer = ip("198.18.210.2");

    let ifindex = a.run(move || {
        let ifindex = Interface::from("nl0").index().unwrap();
        let r = route_get(peer).unwrap();
        assert_eq!(r.oif, ifindex);
        assert_eq!(r.gateway, None);
        assert_eq!(r.src, Some(ip("198.18.210.1")));
        assert_eq!(r.next_hop(), peer);
        // A fresh namespace: no entry yet.
        assert_eq!(neighbour(ifindex, peer).unwrap(), None);
        ifindex
    });
    let (src, mac) = a.block_on(move || next_hop_mac("nl0", peer, T)).unwrap();
    assert_eq!((src, mac), (ip("198.18.210.1"), peer_mac));
    assert_eq!(
        a.run(move || neighbour(ifindex, peer)).unwrap(),
        Some(peer_mac)
    );

    // Flushed: missing again, and resolved again.
    a.ip(&["neigh", "flush", "dev", "nl0"]);
    assert_eq!(a.run(move || neighbour(ifindex, peer)).unwrap(), None);
    let mac = a.block_on(move || resolve(ifindex, peer, T)).unwrap();
    assert_eq!(mac, peer_mac);

    // Flushed again; this time through next_hop_mac by index.
    a.ip(&["neigh", "flush", "dev", "nl0"]);
    let (src, mac) = a.block_on(move || next_hop_mac(ifindex, peer, T)).unwrap();
    assert_eq!((src, mac), (ip("198.18.210.1"), peer_mac));

    // A permanent entry is used as it is, without ARP.
    a.ip(&[
        "neigh",
        "add",
        "198.18.210.77",
        "lladdr",
        "02:00:5e:10:00:77",
        "nud",
        "permanent",
        "dev",
        "nl0",
    ]);
    let mac = a
        .run(move || neighbour(ifindex, ip("198.18.210.77")))
        .unwrap();
    assert_eq!(mac, Some([0x02, 0x00, 0x5e, 0x10, 0x00, 0x77]));
}

/// (b) Off-link destination behind a default gateway: the gateway's MAC;
/// plus a destination routed out of another interface, a local address and
/// an unknown interface.
#[test]
fn netlink_default_gateway() {
    let a = Netns::new("a");
    let g = Netns::new("g");
    veth(
        &a,
        "nl0",
        Some("198.18.211.2/24"),
        &g,
        "nl1",
        Some("198.18.211.1/24"),
    );
    veth(
        &a,
        "nl2",
        Some("198.18.212.1/24"),
        &g,
        "nl3",
        Some("198.18.212.2/24"),
    );
    a.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.18.211.1",
        "dev",
        "nl0",
    ]);
    let gw_mac = g.mac("nl1");
    let dst = ip("198.18.99.9");
    let gw = ip("198.18.211.1");

    let ifindex = a.run(move || {
        let ifindex = Interface::from("nl0").index().unwrap();
        let r = route_get(dst).unwrap();
        assert_eq!(r.oif, ifindex);
        assert_eq!(r.gateway, Some(gw));
        assert_eq!(r.src, Some(ip("198.18.211.2")));
        assert_eq!(r.next_hop(), gw);
        ifindex
    });
    let (src, mac) = a.block_on(move || next_hop_mac("nl0", dst, T)).unwrap();
    assert_eq!((src, mac), (ip("198.18.211.2"), gw_mac));
    a.run(move || {
        assert_eq!(neighbour(ifindex, gw).unwrap(), Some(gw_mac));
        // Nothing ARPs for the off-link destination itself.
        assert_eq!(neighbour(ifindex, dst).unwrap(), None);
    });

    // 198.18.212.0/24 leaves through nl2, not nl0.
    let e = a
        .block_on(|| next_hop_mac("nl0", ip("198.18.212.9"), T))
        .unwrap_err();
    assert!(matches!(e, NetlinkError::WrongInterface { .. }), "{e}");
    let s = e.to_string();
    assert!(
        s.contains("198.18.212.9") && s.contains("nl2") && s.contains("nl0"),
        "{s}"
    );

    // Our own address is local, not a destination on the wire.
    let e = a
        .block_on(|| next_hop_mac("nl0", ip("198.18.211.2"), T))
        .unwrap_err();
    assert!(
        matches!(e, NetlinkError::NotUnicast { kind: "local", .. }),
        "{e}"
    );

    let e = a.block_on(move || next_hop_mac("nl9", dst, T)).unwrap_err();
    assert!(
        matches!(e, NetlinkError::UnknownInterface(ref n) if n == "nl9"),
        "{e}"
    );
}

/// (c) No route, and unreachable/blackhole/prohibit routes: NoRoute.
#[test]
fn netlink_no_route() {
    let a = Netns::new("a");
    a.ip(&["route", "add", "unreachable", "198.18.220.0/24"]);
    a.ip(&["route", "add", "blackhole", "198.18.221.0/24"]);
    a.ip(&["route", "add", "prohibit", "198.18.222.0/24"]);
    a.run(|| {
        for d in [
            "198.18.99.9",
            "198.18.220.1",
            "198.18.221.1",
            "198.18.222.1",
        ] {
            let e = route_get(ip(d)).unwrap_err();
            assert!(
                matches!(e, NetlinkError::NoRoute(x) if x == ip(d)),
                "{d}: {e}"
            );
            assert!(e.to_string().contains(d), "{e}");
        }
    });
    let e = a
        .block_on(|| next_hop_mac("lo", ip("198.18.99.9"), T))
        .unwrap_err();
    assert!(matches!(e, NetlinkError::NoRoute(_)), "{e}");
}

/// (d) A gateway that never answers ARP: NeighbourUnreachable, on time.
#[test]
fn netlink_silent_gateway() {
    let a = Netns::new("a");
    let s = Netns::new("s");
    // The peer is up but does not have the gateway's address.
    veth(&a, "nl0", Some("198.18.216.2/24"), &s, "nl1", None);
    a.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.18.216.1",
        "dev",
        "nl0",
    ]);
    let timeout = Duration::from_millis(1500);
    let t0 = Instant::now();
    let e = a
        .block_on(move || next_hop_mac("nl0", ip("198.18.99.9"), timeout))
        .unwrap_err();
    let took = t0.elapsed();
    match &e {
        NetlinkError::NeighbourUnreachable {
            next_hop, waited, ..
        } => {
            assert_eq!(*next_hop, ip("198.18.216.1"));
            assert_eq!(*waited, timeout);
        }
        _ => panic!("expected NeighbourUnreachable, got {e}"),
    }
    let s = e.to_string();
    assert!(s.contains("198.18.216.1") && s.contains("nl0"), "{s}");
    assert!(took >= timeout, "gave up after {took:?}");
    assert!(took < timeout + Duration::from_secs(1), "took {took:?}");

    // The kernel did try: it has an INCOMPLETE or FAILED entry, which
    // neighbour() reports as None.
    let out = a.ip(&["neigh", "show", "198.18.216.1", "dev", "nl0"]);
    assert!(
        out.contains("INCOMPLETE") || out.contains("FAILED"),
        "{out:?}"
    );
    let gw = ip("198.18.216.1");
    assert_eq!(
        a.run(move || neighbour(Interface::from("nl0").index().unwrap(), gw))
            .unwrap(),
        None
    );
}

/// The namespaces go away when a test panics with them.
#[test]
fn netlink_namespaces_removed_on_panic() {
    let name = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(|| {
        let ns = Netns::new("panic");
        *name.lock().unwrap() = ns.name.clone();
        assert!(std::path::Path::new(&format!("/var/run/netns/{}", ns.name)).exists());
        ns.run(|| panic!("deliberate panic inside the namespace"));
    });
    assert!(r.is_err());
    let name = name.into_inner().unwrap();
    assert!(name.starts_with("tcpu-nl-"), "{name}");
    let listed = sh(&["ip", "netns", "list"]);
    assert!(!listed.contains(&name), "{name} left behind: {listed}");
}
