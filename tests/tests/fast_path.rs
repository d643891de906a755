//! The fast path end to end: the Linux kernel's TCP in one namespace, the
//! endpoint (XDP → AF_XDP → userspace TCP) in the other.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use e2e_tests::{
    binary, kernel_seq_numbers, pattern, read_digest, read_to_end, Digest, Endpoint, Segment,
    Topology,
};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn connect(addr: SocketAddrV4) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Sends `data` to an echo server, half-closes, and returns the digest of
/// what came back until the server's EOF. A reader thread drains the echo
/// while the writer writes, so neither side's buffers can deadlock it.
fn echo_round_trip(addr: SocketAddrV4, data: Vec<u8>) -> Digest {
    let s = connect(addr);
    let mut reader = s.try_clone().unwrap();
    let back = std::thread::spawn(move || read_digest(&mut reader).expect("reading the echo"));
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
    let sent = Digest::of(&data);
    let back = topo.in_client(move || echo_round_trip(addr, data));
    assert_eq!(back.len, 16 << 20, "echoed length");
    assert_eq!(back, sent, "echoed bytes differ");
    // Every segment went through XDP to the engine; nothing was lost on
    // the way to the socket.
    let stat = ep.stat();
    assert!(stat["xdp"]["redirected"].as_u64().unwrap() > 10_000);
    assert_eq!(stat["afxdp"][0]["kernel"]["rx_dropped"], 0);
}

#[test]
fn echo_with_busy_poll() {
    // The driver spins on the rings instead of sleeping: the same bytes
    // come back, and a control request is still answered.
    let topo = Topology::new("busy", 18);
    let ep = Endpoint::start(&topo, &["--busy-poll"]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let data = pattern(3, 4 << 20);
    let sent = Digest::of(&data);
    let back = topo.in_client(move || echo_round_trip(addr, data));
    assert_eq!(back, sent, "echoed bytes differ");
    let stat = ep.stat();
    assert!(stat["xdp"]["redirected"].as_u64().unwrap() > 1_000);
}

#[test]
fn echo_64_concurrent_connections() {
    let topo = Topology::new("conc", 11);
    let _ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let handles: Vec<_> = (0..64u64)
        .map(|i| {
            topo.spawn_in_client(move || {
                // Distinct contents and lengths, so crossed streams show.
                let data = pattern(100 + i, 256 * 1024 + i as usize * 13);
                let sent = Digest::of(&data);
                (i, sent, echo_round_trip(addr, data))
            })
        })
        .collect();
    for h in handles {
        let (i, sent, back) = h.join().unwrap();
        assert_eq!(back, sent, "connection {i}: echo differs from what it sent");
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
                Digest::of(&data) == echo_round_trip(addr, data)
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

/// Days from 1970-01-01 to a proleptic Gregorian date (the
/// era-of-400-years method), independent of the endpoint's own code.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses "Weekday, Month Day, Year HH:MM:SS-UTC" into Unix seconds,
/// rejecting impossible dates and a weekday that does not fit the date.
fn parse_daytime(line: &str) -> Option<i64> {
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let words: Vec<&str> = line.split(' ').collect();
    let [weekday, month, day, year, time] = words[..] else {
        return None;
    };
    let weekday = DAYS.iter().position(|d| weekday == format!("{d},"))? as i64;
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let day: i64 = day.strip_suffix(',')?.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .strip_suffix("-UTC")?
        .split(':')
        .map(|f| (f.len() == 2).then(|| f.parse().ok()).flatten())
        .collect::<Option<_>>()?;
    let [h, mi, se] = hms[..] else { return None };
    if !(1..=31).contains(&day) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // Reject e.g. February 30, which would count into March.
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    if days >= days_from_civil(ny, nm, 1) {
        return None;
    }
    (days.rem_euclid(7) == weekday).then_some(days * 86_400 + h * 3600 + mi * 60 + se)
}

#[test]
fn daytime_parser_checks_what_it_claims() {
    assert_eq!(
        parse_daytime("Thursday, January 1, 1970 00:00:00-UTC"),
        Some(0)
    );
    assert_eq!(
        parse_daytime("Tuesday, February 29, 2000 00:00:00-UTC"),
        Some(951_782_400)
    );
    assert_eq!(parse_daytime("Friday, January 1, 1970 00:00:00-UTC"), None);
    assert_eq!(
        parse_daytime("Friday, February 29, 2001 00:00:00-UTC"),
        None
    );
    assert_eq!(parse_daytime("Thursday, January 1, 1970 00:00:00"), None);
    assert_eq!(
        parse_daytime("Thursday, January 1, 1970 24:00:00-UTC"),
        None
    );
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
    // "Tuesday, November 24, 2026 04:46:21-UTC\r\n": the RFC 867 example
    // form, a consistent weekday, and the clock of this very machine.
    assert!(line.ends_with("\r\n"), "line not CRLF-terminated: {line:?}");
    let told = parse_daytime(line.trim_end()).unwrap_or_else(|| panic!("bad daytime {line:?}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (told - now).abs() <= 300,
        "daytime {line:?} is {}s away from the host clock",
        told - now
    );
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

/// Injects, from the client's namespace, the data segment the endpoint
/// expects next on `s` (the client kernel's own sequence numbers, nothing
/// in flight), carrying `payload` and a wrong TCP checksum.
fn inject_next_with_a_bad_checksum(t: &Topology, s: &TcpStream, payload: Vec<u8>) {
    let (seq, ack) = kernel_seq_numbers(s);
    t.inject_from_client(&Segment {
        sport: s.local_addr().unwrap().port(),
        dport: 7,
        flags: "PA",
        seq,
        ack,
        payload,
        checksum: Some(0x0bad),
    });
}

#[test]
fn corrupted_checksum_dropped_and_counted() {
    let topo = std::sync::Arc::new(Topology::new("csum", 15));
    let ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let before = ep.xdp_counter("drop_bad_tcp_checksum");
    let t = topo.clone();
    let (first, second) = topo.in_client(move || {
        let mut s = connect(addr);
        s.write_all(b"first").unwrap();
        let mut first = [0u8; 5];
        s.read_exact(&mut first).unwrap();
        // Nothing in flight now: the segment below is exactly the one the
        // endpoint expects next, so were it accepted despite its checksum,
        // "evil" would come back in place of the start of "second".
        inject_next_with_a_bad_checksum(&t, &s, b"evil".to_vec());
        s.write_all(b"second").unwrap();
        let mut second = [0u8; 6];
        s.read_exact(&mut second).unwrap();
        (first, second)
    });
    assert_eq!(&first, b"first");
    assert_eq!(&second, b"second", "the connection did not carry on intact");
    let after = ep.xdp_counter("drop_bad_tcp_checksum");
    assert_eq!(after, before + 1, "XDP counted the corrupted segment");
}

/// The converse of the test above, so that it cannot pass because the
/// injected segment would have been ignored anyway: the same segment with
/// its correct checksum is taken as the connection's next bytes and echoed.
#[test]
fn injected_segment_with_a_good_checksum_is_accepted() {
    let topo = std::sync::Arc::new(Topology::new("inj", 19));
    // The connection is left inconsistent (the endpoint holds bytes the
    // client kernel never sent): no need to let it drain on SIGTERM.
    let ep = Endpoint::start(&topo, &["--grace-ms", "100"]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let t = topo.clone();
    let echoed = topo.in_client(move || {
        let mut s = connect(addr);
        s.write_all(b"first").unwrap();
        let mut first = [0u8; 5];
        s.read_exact(&mut first).unwrap();
        let (seq, ack) = kernel_seq_numbers(&s);
        // The echo acknowledges bytes the client kernel never sent, so the
        // kernel discards it; the capture sees it on the wire.
        t.inject_and_capture_reply(
            &Segment {
                sport: s.local_addr().unwrap().port(),
                dport: 7,
                flags: "PA",
                seq,
                ack,
                payload: b"good".to_vec(),
                checksum: None,
            },
            Duration::from_secs(10),
        )
    });
    assert_eq!(echoed, b"good");
    assert_eq!(ep.xdp_counter("drop_bad_tcp_checksum"), 0);
}

/// XDP sums a segment in blocks (two of 512 bytes, then one of each
/// power of two down to 4, then a word and an odd byte), so a segment of
/// every length must come through: one segment per write, each echoed
/// before the next (TCP_NODELAY, nothing else in flight), payloads 0 to
/// the full MSS, TCP lengths 32 (with timestamps) to 1480.
#[test]
fn every_segment_length_passes_the_checksum() {
    let topo = std::sync::Arc::new(Topology::new("lens", 24));
    let ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let longest = topo.in_client(move || {
        let mut s = connect(addr);
        s.set_nodelay(true).unwrap();
        let data = pattern(7, 1448);
        let mut back = vec![0u8; 1448];
        for n in 1..=1448 {
            s.write_all(&data[..n]).unwrap();
            s.read_exact(&mut back[..n])
                .unwrap_or_else(|e| panic!("echo of a {n}-byte write: {e}"));
            assert_eq!(back[..n], data[..n], "echo of a {n}-byte write");
        }
        1448
    });
    assert_eq!(longest, 1448);
    assert_eq!(ep.xdp_counter("drop_bad_tcp_checksum"), 0);
    assert_eq!(ep.xdp_counter("drop_malformed_tcp"), 0);
    // Each write was one segment of its own: at least 1448 data segments
    // plus the handshake went through XDP.
    assert!(ep.xdp_counter("redirected") >= 1448 + 2);
}

/// A bad checksum is caught whatever part of the sum it lands in: the
/// segment the endpoint expects next, with payloads that end in each of
/// the sum's pieces (an odd byte, a word, a 4-byte block, a 512-byte
/// block and more), carries a wrong checksum and is dropped, and the
/// connection goes on with the real bytes.
#[test]
fn bad_checksums_of_several_lengths_are_dropped() {
    let topo = std::sync::Arc::new(Topology::new("lens2", 25));
    let ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let lengths = [1usize, 2, 3, 4, 5, 511, 512, 513, 1027, 1440];
    let t = topo.clone();
    topo.in_client(move || {
        let mut s = connect(addr);
        s.set_nodelay(true).unwrap();
        for (i, &n) in lengths.iter().enumerate() {
            inject_next_with_a_bad_checksum(&t, &s, vec![0xee; n]);
            let real = pattern(i as u64 + 100, n);
            s.write_all(&real).unwrap();
            let mut back = vec![0u8; n];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, real, "after a corrupted {n}-byte segment");
        }
    });
    assert_eq!(
        ep.xdp_counter("drop_bad_tcp_checksum"),
        lengths.len() as u64,
        "XDP counted each corrupted segment"
    );
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
