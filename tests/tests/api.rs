//! The library API end to end: `examples/api_echo.rs`, an application
//! written against `tcp_user::api`, as a server for the Linux kernel's TCP
//! and as a client of it, and the errors an active open reports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use e2e_tests::{echo_bytes, pattern, Topology};

/// The example binary, from `TCP_USER_EXAMPLES` (set by `cargo xtask test`).
fn example() -> PathBuf {
    let dir = std::env::var_os("TCP_USER_EXAMPLES")
        .map(PathBuf::from)
        .expect(
            "TCP_USER_EXAMPLES is not set: run the end-to-end tests through `cargo xtask test`",
        );
    let bin = dir.join("api_echo");
    assert!(bin.is_file(), "{} does not exist", bin.display());
    bin
}

/// Runs the example to completion in the endpoint's namespace; its stdout.
fn run_example(topo: &Topology, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.ep_ns])
        .arg(example())
        .args(args)
        .output()
        .expect("running api_echo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "api_echo {args:?}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The example's echo server, stopped on drop.
struct Server(Child);

impl Server {
    fn start(topo: &Topology, port: u16) -> Server {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &topo.ep_ns])
            .arg(example())
            .args(["serve", &topo.ep_if, &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting api_echo serve");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("api_echo serve printed nothing");
        assert!(ready.starts_with("READY "), "{ready}");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_api_example_serves_a_kernel_client() {
    let topo = Topology::new("apis", 40);
    let _server = Server::start(&topo, 7007);
    let addr = SocketAddrV4::new(topo.ep_addr, 7007);
    let data = pattern(40, 1 << 20);
    let expect = data.clone();
    let back = topo.in_client(move || echo_bytes(addr, &data));
    assert_eq!(back.len(), expect.len());
    assert!(back == expect, "the echo differs");
}

#[test]
fn the_api_example_connects_to_a_kernel_server() {
    let topo = Topology::new("apic", 41);
    let listen = SocketAddrV4::new(topo.cl_addr, 7008);
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = topo.spawn_in_client(move || {
        let l = TcpListener::bind(listen).expect("kernel listener");
        ready_tx.send(()).unwrap();
        let (mut s, peer) = l.accept().expect("accept");
        let mut buf = vec![0; 65536];
        let mut total = 0usize;
        loop {
            let n = s.read(&mut buf).expect("kernel server read");
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).expect("kernel server write");
            total += n;
        }
        s.shutdown(Shutdown::Write).unwrap();
        (peer, total)
    });
    ready_rx.recv().unwrap();
    let out = run_example(
        &topo,
        &["connect", &topo.ep_if, &listen.to_string(), "1048576"],
    );
    assert_eq!(out.trim(), "OK 1048576");
    let (peer, total) = server.join().unwrap();
    assert_eq!(total, 1 << 20);
    assert_eq!(peer.ip(), std::net::IpAddr::V4(topo.ep_addr));
    assert!(
        peer.port() >= 61000 || peer.port() < 32768,
        "source port {} outside the kernel's ephemeral range",
        peer.port()
    );
}

#[test]
fn connecting_to_a_port_without_listener_is_refused() {
    let topo = Topology::new("apir", 42);
    let target = SocketAddrV4::new(topo.cl_addr, 7009);
    let out = run_example(&topo, &["connect", &topo.ep_if, &target.to_string(), "10"]);
    assert!(out.starts_with("ERROR ConnectionRefused"), "{out}");
}

#[test]
fn connecting_to_a_peer_that_never_answers_times_out() {
    let topo = Topology::new("apit", 43);
    // The client's kernel answers ARP but drops the SYNs.
    let rules = "table inet tcpu_silent {\n\
        chain in { type filter hook input priority 0; tcp dport 7010 drop; }\n\
        }\n";
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &topo.cl_ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    nft.stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success());
    let target = SocketAddrV4::new(topo.cl_addr, 7010);
    // Two SYN retries: 1 + 2 + 4 s with the initial RTO of 1 s.
    let out = run_example(
        &topo,
        &["connect", &topo.ep_if, &target.to_string(), "10", "2"],
    );
    assert!(out.starts_with("ERROR TimedOut"), "{out}");
}

#[test]
fn connecting_without_a_route_says_so() {
    let topo = Topology::new("apiu", 44);
    // 198.19.0.0/16 is in the benchmarking range and routed nowhere here.
    let out = run_example(&topo, &["connect", &topo.ep_if, "198.19.44.1:7", "10"]);
    assert!(out.starts_with("ERROR NetworkUnreachable"), "{out}");
    assert!(out.contains("no route to 198.19.44.1"), "{out}");
}

#[test]
fn abort_resets_the_kernel_peer() {
    let topo = Topology::new("apia", 49);
    let listen = SocketAddrV4::new(topo.cl_addr, 7011);
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = topo.spawn_in_client(move || {
        let l = TcpListener::bind(listen).expect("kernel listener");
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (got, None),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Some(e.kind())),
            }
        }
    });
    ready_rx.recv().unwrap();
    let out = run_example(&topo, &["abort", &topo.ep_if, &listen.to_string()]);
    assert_eq!(out.trim(), "OK aborted");
    let (got, err) = server.join().unwrap();
    assert_eq!(got, b"ping");
    assert_eq!(
        err,
        Some(std::io::ErrorKind::ConnectionReset),
        "an abort is a RST, not a FIN"
    );
}
