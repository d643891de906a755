//! The fast path end to end: the Linux kernel's TCP in one namespace, the
//! endpoint (XDP → AF_XDP → userspace TCP) in the other.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use e2e_tests::{binary, pattern, read_to_end, Endpoint, Topology};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn connect(addr: SocketAddrV4) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Sends `data` to an echo server and returns what came back (until EOF).
fn echo_round_trip(addr: SocketAddrV4, data: Vec<u8>) -> Vec<u8> {
    let s = connect(addr);
    let mut reader = s.try_clone().unwrap();
    let back = std::thread::spawn(move || read_to_end(&mut reader).expect("reading the echo"));
    let mut w = s;
    w.write_all(&data).expect("writing to echo");
    w.shutdown(Shutdown::Write).unwrap();
    back.join().unwrap()
}

fn states(stat: &serde_json::Value) -> Vec<(u16, String)> {
    stat["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let local: SocketAddrV4 = c["local"].as_str().unwrap().parse().unwrap();
            (local.port(), c["state"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn echo_16mib_byte_exact() {
    let topo = Topology::new("echo", 10);
    let ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let data = pattern(1, 16 << 20);
    let expect = data.clone();
    let back = topo.in_client(move || echo_round_trip(addr, data));
    assert_eq!(back.len(), expect.len(), "echoed length");
    assert!(back == expect, "echoed bytes differ");
    // Every segment went through XDP to the engine; nothing was lost on
    // the way to the socket.
    let stat = ep.stat();
    assert!(stat["xdp"]["redirected"].as_u64().unwrap() > 10_000);
    assert_eq!(stat["afxdp"][0]["kernel"]["rx_dropped"], 0);
}

#[test]
fn echo_64_concurrent_connections() {
    let topo = Topology::new("conc", 11);
    let _ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let handles: Vec<_> = (0..64u64)
        .map(|i| {
            topo.spawn_in_client(move || {
                let data = pattern(100 + i, 256 * 1024 + i as usize * 13);
                let back = echo_round_trip(addr, data.clone());
                (i, back == data, back.len(), data.len())
            })
        })
        .collect();
    for h in handles {
        let (i, same, got, want) = h.join().unwrap();
        assert!(
            same,
            "connection {i}: {got} bytes back of {want}, or different bytes"
        );
    }
}

#[test]
fn one_socket_per_rx_queue() {
    let topo = Topology::with_queues("mq", 18, 2);
    let ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let handles: Vec<_> = (0..32u64)
        .map(|i| {
            topo.spawn_in_client(move || {
                let data = pattern(500 + i, 64 * 1024);
                echo_round_trip(addr, data.clone()) == data
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap(), "a connection's echo differed");
    }
    let stat = ep.stat();
    let sockets = stat["afxdp"].as_array().unwrap();
    assert_eq!(sockets.len(), 2, "one AF_XDP socket per RX queue");
    for s in sockets {
        assert!(
            s["engine"]["rx_frames"].as_u64().unwrap() > 0,
            "queue {} received nothing: {stat:#}",
            s["queue"]
        );
        assert_eq!(s["kernel"]["rx_dropped"], 0);
    }
    assert_eq!(stat["xdp"]["drop_no_socket"], 0);
}

#[test]
fn discard_accepts_16mib_and_close_completes() {
    let topo = Topology::new("disc", 12);
    let ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 9);
    let rest = topo.in_client(move || {
        let mut s = connect(addr);
        s.write_all(&pattern(2, 16 << 20))
            .expect("writing to discard");
        s.shutdown(Shutdown::Write).unwrap();
        // discard sends nothing; our FIN is answered with its FIN.
        read_to_end(&mut s).expect("waiting for the endpoint's FIN")
    });
    assert!(rest.is_empty(), "discard sent {} bytes", rest.len());
    ep.wait_for(
        Duration::from_secs(10),
        "the connection to leave the table",
        |s| s["connections"].as_array().unwrap().is_empty(),
    );
    let counters = &ep.stat()["counters"];
    assert_eq!(counters["conns_accepted"], 1);
    assert_eq!(counters["conns_reset"], 0);
}

#[test]
fn daytime_line_then_eof() {
    let topo = Topology::new("day", 13);
    let ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 13);
    let (line, rest) = topo.in_client(move || {
        let s = connect(addr);
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).expect("reading the daytime line");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).expect("reading to EOF");
        (line, rest)
    });
    // "Tuesday, November 24, 2026 04:46:21-UTC\r\n"
    assert!(line.ends_with("\r\n"), "line not CRLF-terminated: {line:?}");
    let words: Vec<&str> = line.trim_end().split(' ').collect();
    assert_eq!(words.len(), 5, "unexpected daytime format {line:?}");
    assert!(words[0].ends_with(','));
    assert!(words[4].ends_with("-UTC"), "{line:?}");
    assert!(rest.is_empty(), "data after the line: {rest:?}");
    // The endpoint closed first, so it is the one holding TIME-WAIT.
    ep.wait_for(Duration::from_secs(10), "TIME-WAIT on port 13", |s| {
        states(s).contains(&(13, "TIME-WAIT".to_owned()))
    });
}

#[test]
fn kernel_port_still_works() {
    let topo = Topology::new("kern", 14);
    let ep = Endpoint::start(&topo, &[]);
    let bind = SocketAddrV4::new(topo.ep_addr, 8080);
    let listener = topo.in_endpoint(move || TcpListener::bind(bind).expect("kernel listener"));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"kernel").unwrap();
        buf
    });
    let reply = topo.in_client(move || {
        let mut s = connect(bind);
        s.write_all(b"hello").unwrap();
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&server.join().unwrap(), b"hello");
    assert_eq!(&reply, b"kernel");
    assert!(topo.xdp_attached());
    assert!(
        ep.xdp_counter("pass_not_owned") > 0,
        "the kernel's segments passed XDP"
    );
    assert_eq!(ep.xdp_counter("redirected"), 0);
}

#[test]
fn corrupted_checksum_dropped_and_counted() {
    let topo = Topology::new("csum", 15);
    let ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let ep_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", topo.ep_if))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let out = Command::new("ip")
                .args(["netns", "exec", &topo.ep_ns, "cat"])
                .arg(format!("/sys/class/net/{}/address", topo.ep_if))
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        });
    let ep_mac = ep_mac.trim().to_owned();
    let before = ep.xdp_counter("drop_bad_tcp_checksum");
    let (cl_ns, cl_if, cl_addr) = (topo.cl_ns.clone(), topo.cl_if.clone(), topo.cl_addr);
    let ok = topo.in_client(move || {
        let mut s = connect(addr);
        s.write_all(b"first").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"first");
        let sport = s.local_addr().unwrap().port();
        // A segment of this very connection with a wrong TCP checksum.
        let script = format!(
            "from scapy.all import Ether, IP, TCP, Raw, sendp\n\
             sendp(Ether(dst='{ep_mac}')/IP(src='{cl_addr}', dst='{}')/\
             TCP(sport={sport}, dport=7, flags='PA', seq=1, ack=1, chksum=0xbad)/Raw(b'evil'), \
             iface='{cl_if}', verbose=False)\n",
            addr.ip()
        );
        let st = Command::new("ip")
            .args(["netns", "exec", &cl_ns, "/usr/bin/python3", "-c", &script])
            .status()
            .expect("running scapy");
        assert!(st.success(), "scapy failed");
        s.write_all(b"second").unwrap();
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).unwrap();
        &buf == b"second"
    });
    assert!(ok, "the connection did not carry on after the bad segment");
    let after = ep.xdp_counter("drop_bad_tcp_checksum");
    assert_eq!(after, before + 1, "XDP counted the corrupted segment");
}

#[test]
fn sigkill_detaches_xdp() {
    let topo = Topology::new("kill", 16);
    let mut ep = Endpoint::start(&topo, &[]);
    assert!(topo.xdp_attached(), "XDP attached while running");
    ep.kill_hard();
    // The kernel closes the process's link fd; give it a moment.
    let mut gone = false;
    for _ in 0..100 {
        if !topo.xdp_attached() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone, "XDP program still attached after SIGKILL");
    // The kernel owns port 7 again.
    let bind = SocketAddrV4::new(topo.ep_addr, 7);
    let listener = topo.in_endpoint(move || TcpListener::bind(bind).expect("kernel listener on 7"));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.write_all(b"kernel").unwrap();
    });
    let got = topo.in_client(move || {
        let mut s = connect(bind);
        read_to_end(&mut s).unwrap()
    });
    server.join().unwrap();
    assert_eq!(got, b"kernel");
}

#[test]
fn sigterm_exits_cleanly_and_detaches() {
    let topo = Topology::new("term", 17);
    let mut ep = Endpoint::start(&topo, &[]);
    let st = ep.stop().expect("endpoint was running");
    assert!(st.success(), "exit status after SIGTERM: {st}");
    assert!(!topo.xdp_attached());
}

#[test]
fn bad_cli_arguments_fail_cleanly() {
    let bin = binary();
    for args in [
        &["run", "--iface", "doesnotexist0"][..],
        &["run", "--iface", "lo", "--service", "bogus:7"],
        &["run", "--iface", "lo", "--service", "echo:notaport"],
        &["run", "--iface", "lo", "--xdp-mode", "sideways"],
        &["run"],
        &["frobnicate"],
    ] {
        let out = Command::new(&bin).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
    }
    let out = Command::new(&bin)
        .args(["run", "--iface", "doesnotexist0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("interface doesnotexist0 does not exist"));
}
