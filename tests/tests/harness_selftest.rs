//! The harness itself, proven without tcp-user: topologies are built as the
//! other tests assume and always removed, closures run in the namespace they
//! claim, a kernel echo server stands in for the endpoint, and `Endpoint`
//! drives a stand-in program through READY, SIGTERM and SIGKILL.
//!
//! These need root (namespaces) but not `TCP_USER_BIN`.

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use e2e_tests::{
    binary_from, netns_exists, pattern, read_digest, Digest, DigestWriter, Endpoint, Topology,
};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn ip_netns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Writes an executable shell script standing in for tcp-user.
fn stand_in(name: &str, body: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tcpu-standin-{name}-{}", std::process::id()));
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn process_exists(pid: u32) -> bool {
    // A reaped process has no /proc entry (pids are not reused that fast).
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn topology_is_built_as_specified_and_removed_on_drop() {
    let topo = Topology::with_queues("hs-a", 40, 2);
    let (ep_ns, cl_ns) = (topo.ep_ns.clone(), topo.cl_ns.clone());
    assert!(netns_exists(&ep_ns) && netns_exists(&cl_ns));

    let ep_addrs = ip_netns(&ep_ns, &["ip", "-4", "addr", "show", "dev", &topo.ep_if]);
    assert!(ep_addrs.contains("inet 198.18.40.1/24"), "{ep_addrs}");
    assert!(ep_addrs.contains("state UP") || ep_addrs.contains(",UP"));
    let cl_addrs = ip_netns(&cl_ns, &["ip", "-4", "addr", "show", "dev", &topo.cl_if]);
    assert!(cl_addrs.contains("inet 198.18.40.2/24"), "{cl_addrs}");
    for ns in [&ep_ns, &cl_ns] {
        let lo = ip_netns(ns, &["ip", "link", "show", "lo"]);
        assert!(lo.contains("UP"), "lo down in {ns}: {lo}");
    }

    // Checksum offload off on the client's end, so the kernel sends
    // complete checksums (CHECKSUM_PARTIAL would be dropped by XDP).
    let features = ip_netns(&cl_ns, &["ethtool", "-k", &topo.cl_if]);
    assert!(
        features.contains("tx-checksumming: off"),
        "client offload still on: {features}"
    );

    // Two RX and two TX queues on each end.
    for (ns, dev) in [(&ep_ns, &topo.ep_if), (&cl_ns, &topo.cl_if)] {
        let queues = ip_netns(ns, &["ls", &format!("/sys/class/net/{dev}/queues")]);
        let mut q: Vec<&str> = queues.split_whitespace().collect();
        q.sort();
        assert_eq!(q, ["rx-0", "rx-1", "tx-0", "tx-1"], "{dev} in {ns}");
    }

    // No XDP program until an endpoint attaches one.
    assert!(!topo.xdp_attached());

    drop(topo);
    assert!(!netns_exists(&ep_ns), "{ep_ns} left behind");
    assert!(!netns_exists(&cl_ns), "{cl_ns} left behind");
}

#[test]
fn topology_is_removed_when_the_test_panics() {
    let names = catch_unwind(|| {
        let topo = Topology::new("hs-p", 41);
        assert!(netns_exists(&topo.ep_ns));
        panic!("deliberate panic with {} {}", topo.ep_ns, topo.cl_ns);
    });
    let text = panic_text(names.expect_err("the closure panics"));
    assert!(text.starts_with("deliberate panic"), "{text}");
    assert!(!netns_exists("tcpu-t-hs-p-ep"));
    assert!(!netns_exists("tcpu-t-hs-p-cl"));
}

#[test]
fn leftovers_with_the_same_names_are_replaced() {
    // A namespace left by a killed run, with something in it.
    let stale = "tcpu-t-hs-l-ep";
    let _ = Command::new("ip")
        .args(["netns", "del", stale])
        .stderr(std::process::Stdio::null())
        .status();
    assert!(Command::new("ip")
        .args(["netns", "add", stale])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ip")
        .args(["-n", stale, "link", "add", "stale0", "type", "veth", "peer", "name", "stale1"])
        .status()
        .unwrap()
        .success());
    let topo = Topology::new("hs-l", 42);
    let links = ip_netns(&topo.ep_ns, &["ip", "-o", "link", "show"]);
    assert!(
        !links.contains("stale0"),
        "the old namespace survived: {links}"
    );
    assert!(links.contains(&topo.ep_if));
}

#[test]
fn closures_run_in_the_namespace_they_name() {
    let topo = Topology::new("hs-n", 43);
    let (ep, cl) = (topo.ep_addr, topo.cl_addr);
    // An address can be bound only in the namespace that owns it.
    let bind = |a| TcpListener::bind(SocketAddrV4::new(a, 0)).map(|_| ());
    let in_client = topo.in_client(move || (bind(cl).is_ok(), bind(ep).map_err(|e| e.kind())));
    assert_eq!(in_client, (true, Err(ErrorKind::AddrNotAvailable)));
    let in_ep = topo.in_endpoint(move || (bind(ep).is_ok(), bind(cl).map_err(|e| e.kind())));
    assert_eq!(in_ep, (true, Err(ErrorKind::AddrNotAvailable)));
    // The test's own thread stays where it was.
    assert!(bind(ep).is_err() && bind(cl).is_err());
    // A panic inside the namespace thread reaches the test.
    let r = catch_unwind(AssertUnwindSafe(|| topo.in_client(|| panic!("inside"))));
    assert_eq!(panic_text(r.expect_err("propagated")), "inside");
}

/// The data path the endpoint tests use, with the kernel's TCP on both
/// sides: a kernel echo server in the endpoint namespace.
#[test]
fn kernel_echo_server_through_the_topology() {
    let topo = Topology::new("hs-k", 44);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let listener = topo.in_endpoint(move || TcpListener::bind(addr).expect("bind"));
    const CONNS: u64 = 8;
    let server = std::thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..CONNS {
            let (s, _) = listener.accept().expect("accept");
            workers.push(std::thread::spawn(move || {
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                std::io::copy(&mut r, &mut w).expect("echoing");
                w.shutdown(Shutdown::Write).unwrap();
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
    });
    let clients: Vec<_> = (0..CONNS)
        .map(|i| {
            topo.spawn_in_client(move || {
                let data = pattern(i, (2 << 20) + i as usize);
                let sent = Digest::of(&data);
                let s = TcpStream::connect_timeout(&addr.into(), IO_TIMEOUT).expect("connect");
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                let mut r = s.try_clone().unwrap();
                let back = std::thread::spawn(move || read_digest(&mut r).unwrap());
                let mut w = s;
                w.write_all(&data).unwrap();
                w.shutdown(Shutdown::Write).unwrap();
                (sent, back.join().unwrap())
            })
        })
        .collect();
    for c in clients {
        let (sent, back) = c.join().unwrap();
        assert_eq!(back, sent);
    }
    server.join().unwrap();
}

#[test]
fn digests_ignore_chunking_and_see_every_byte() {
    let data = pattern(7, 100_003);
    let whole = Digest::of(&data);
    let mut d = DigestWriter::new();
    for chunk in data.chunks(4093) {
        d.update(chunk);
    }
    assert_eq!(d.finish(), whole);
    assert_eq!(whole.len, 100_003);
    let mut flipped = data.clone();
    flipped[50_000] ^= 1;
    assert_ne!(Digest::of(&flipped), whole);
    assert_ne!(Digest::of(&data[..100_002]), whole);
    assert_ne!(pattern(7, 64), pattern(8, 64));
    assert_eq!(pattern(7, 64), pattern(7, 64));
    let mut cursor = std::io::Cursor::new(data);
    assert_eq!(read_digest(&mut cursor).unwrap(), whole);
}

#[test]
fn tcp_user_bin_must_be_set_and_exist() {
    let unset = binary_from(None).unwrap_err();
    assert!(unset.contains("TCP_USER_BIN is not set"), "{unset}");
    let missing = binary_from(Some("/nonexistent/tcp-user".into())).unwrap_err();
    assert!(missing.contains("does not exist"), "{missing}");
    assert_eq!(
        binary_from(Some("/bin/sh".into())).unwrap(),
        PathBuf::from("/bin/sh")
    );
}

#[test]
fn endpoint_waits_for_ready_runs_in_its_namespace_and_stops_on_sigterm() {
    let topo = Topology::new("hs-e", 45);
    let prog = stand_in(
        "ready",
        "echo \"args: $*\" >&2\n\
         ls /sys/class/net >&2\n\
         trap 'echo got-sigterm >&2; exit 0' TERM\n\
         echo \"READY iface=$3 addr=0.0.0.0 ports=7\"\n\
         while :; do sleep 0.05; done\n",
    );
    let mut ep = Endpoint::start_program(&prog, &topo, &["--log", "debug"], &[], &[]);
    assert_eq!(
        ep.ready_line,
        format!("READY iface={} addr=0.0.0.0 ports=7", topo.ep_if)
    );
    let log = ep.log();
    let expect_args = format!(
        "args: run --iface {} --control-socket {} --log debug",
        topo.ep_if,
        ep.control.display()
    );
    assert!(log.contains(&expect_args), "{log}");
    // `ip netns exec` mounts the namespace's own /sys: only its interfaces.
    assert!(
        log.contains(&topo.ep_if) && !log.contains(&topo.cl_if),
        "{log}"
    );
    assert!(ep.is_running());
    let st = ep.stop().expect("was running");
    assert!(st.success(), "{st}");
    assert!(ep.log().contains("got-sigterm"));
    let _ = std::fs::remove_file(prog);
}

#[test]
fn endpoint_start_fails_with_the_programs_log_when_it_dies() {
    let topo = Topology::new("hs-d", 46);
    let prog = stand_in(
        "dies",
        "echo 'error: interface te-x does not exist' >&2\nexit 1\n",
    );
    let r = catch_unwind(AssertUnwindSafe(|| {
        Endpoint::start_program(&prog, &topo, &[], &[], &[])
    }));
    let text = panic_text(r.err().expect("start must fail"));
    assert!(text.contains("did not become ready"), "{text}");
    assert!(text.contains("interface te-x does not exist"), "{text}");
    let _ = std::fs::remove_file(prog);
}

#[test]
fn kill_hard_ends_a_program_that_ignores_sigterm() {
    let topo = Topology::new("hs-s", 47);
    let prog = stand_in(
        "stubborn",
        "trap '' TERM\necho READY iface=$3\nwhile :; do sleep 0.05; done\n",
    );
    let mut ep = Endpoint::start_program(&prog, &topo, &[], &[], &[]);
    let pid = ep.pid().expect("running");
    assert!(process_exists(pid));
    ep.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    assert!(ep.is_running(), "the stand-in should ignore SIGTERM");
    ep.kill_hard();
    assert!(!ep.is_running());
    assert!(!process_exists(pid), "pid {pid} still exists");
    let _ = std::fs::remove_file(prog);
}
