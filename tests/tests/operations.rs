//! Operating the endpoint: systemd readiness, graceful SIGTERM, pcap.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use e2e_tests::{binary, Endpoint, Segment, Topology};

fn connect(addr: SocketAddrV4) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

#[test]
fn systemd_unit_verifies() {
    // The unit as shipped, with ExecStart pointing at the binary under test
    // (verify checks that the executable exists).
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/tcp-user@.service"
    ))
    .expect("deploy/tcp-user@.service");
    assert!(unit.contains("Type=notify"));
    let dir = std::env::temp_dir().join(format!("tcpu-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = unit.replace("/usr/local/bin/tcp-user", &binary().display().to_string());
    std::fs::write(dir.join("tcp-user@.service"), unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("tcp-user@lo.service"))
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("systemd-analyze (package systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {err}");
    assert!(
        !err.contains("tcp-user@"),
        "systemd-analyze complained about the unit: {err}"
    );
}

#[test]
fn readiness_is_notified_only_once_xdp_is_attached() {
    let topo = Topology::new("ntfy", 30);
    let path = std::env::temp_dir().join(format!("tcpu-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixDatagram::bind(&path).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (ep_ns, ep_if) = (topo.ep_ns.clone(), topo.ep_if.clone());
    let waiter = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("a notification");
        // Check the interface the moment READY arrives.
        let link = Command::new("ip")
            .args(["-n", &ep_ns, "-d", "link", "show", &ep_if])
            .output()
            .unwrap();
        let attached = String::from_utf8_lossy(&link.stdout).contains("prog/xdp");
        tx.send((String::from_utf8_lossy(&buf[..n]).into_owned(), attached))
            .unwrap();
    });
    let mut ep = Endpoint::start_with_env(&topo, &[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let (msg, attached) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("READY=1 sent");
    waiter.join().unwrap();
    assert!(msg.starts_with("READY=1"), "{msg:?}");
    assert!(attached, "READY=1 came before XDP was attached");
    ep.stop();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn sigterm_lets_open_connections_finish_then_exits_cleanly() {
    let topo = Topology::new("grace", 31);
    let mut ep = Endpoint::start(&topo, &["--grace-ms", "10000"]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let client = topo.spawn_in_client(move || {
        let mut s = connect(addr).unwrap();
        s.write_all(b"before").unwrap();
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).unwrap();
        opened_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        // The endpoint is draining: this connection still works...
        s.write_all(b"during").unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"during");
        // ...but new ones are refused.
        let refused = connect(addr).err().map(|e| e.kind());
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        refused
    });
    opened_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    ep.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(ep.is_running(), "exited before its connection finished");
    go_tx.send(()).unwrap();
    let refused = client.join().unwrap();
    assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused));
    let status = ep
        .wait(Duration::from_secs(5))
        .expect("exited after the connection closed");
    assert!(status.success(), "{status}");
    assert!(!topo.xdp_attached());
}

#[test]
fn sigterm_resets_what_outlives_the_grace_period() {
    let topo = Topology::new("grace2", 32);
    let mut ep = Endpoint::start(&topo, &["--grace-ms", "500"]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let s = topo.in_client(move || connect(addr).unwrap());
    ep.signal(libc::SIGTERM);
    let status = ep
        .wait(Duration::from_secs(5))
        .expect("exited after the grace period");
    assert!(status.success());
    let mut s = s;
    let mut buf = [0u8; 4];
    let r = s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {r:?}"
    );
}

#[test]
fn pcap_holds_the_handshake() {
    let topo = Topology::new("pcap", 33);
    let file = std::env::temp_dir().join(format!("tcpu-{}.pcap", std::process::id()));
    let mut ep = Endpoint::start(&topo, &["--pcap", file.to_str().unwrap()]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    topo.in_client(move || {
        let mut s = connect(addr).unwrap();
        s.write_all(b"pcap").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
    });
    ep.stop();
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&file)
        .output()
        .expect("tcpdump");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ep_port = format!("{}.7 ", topo.ep_addr);
    assert!(
        text.lines()
            .any(|l| l.contains("Flags [S]") && l.contains(&format!("> {}", ep_port.trim_end()))),
        "no SYN in:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("Flags [S.]") && l.contains(&ep_port)),
        "no SYN-ACK in:\n{text}"
    );
}

#[test]
fn config_file_errors_are_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("tcpu-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "address = \"x\"\n",
            ":1: key `address`: \"x\" is not an IPv4 address",
        ),
        (
            "[tcp]\nmsl_ms = 0\n",
            ":2: key `tcp.msl_ms`: must be at least 1 ms",
        ),
        (
            "[tcp]\nwindow_scaling = \"yes\"\n",
            ":2: key `tcp.window_scaling`: invalid type",
        ),
        ("bogus = true\n", ":1: key `bogus`: unknown field `bogus`"),
        (
            "[[service]]\nname = \"echo\"\nport = 7\n[[service]]\nname = \"discard\"\nport = 7\n",
            ":6: key `service.port`: port 7 is given to more than one service",
        ),
        ("this is not toml\n", ":1"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = dir.join(format!("case{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = Command::new(binary())
            .args(["run", "--iface", "lo", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} accepted");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        let expect = format!("tcp-user: config {}{want}", file.display());
        assert!(
            err.starts_with(&expect),
            "for {text:?}\n got: {err}\nwant: {expect}"
        );
        assert!(!err.contains("panicked"));
    }
    let missing = Command::new(binary())
        .args(["run", "--config", "/nonexistent/tcp-user.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr)
        .contains("/nonexistent/tcp-user.toml: cannot read it"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_config_file_drives_the_endpoint_and_flags_override_it() {
    let topo = Topology::new("cfg", 34);
    let file = std::env::temp_dir().join(format!("tcpu-cfg-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        format!(
            "interface = \"{}\"\nxdp_mode = \"generic\"\n[[service]]\nname = \"echo\"\nport = 7007\n[tcp]\nmsl_ms = 100\n",
            topo.ep_if
        ),
    )
    .unwrap();
    // `--iface` comes from the file; the harness passes it too, which must agree.
    let ep = Endpoint::start(
        &topo,
        &["--config", file.to_str().unwrap(), "--xdp-mode", "native"],
    );
    assert!(ep.ready_line.ends_with("ports=7007"), "{}", ep.ready_line);
    assert!(
        ep.log().contains("Native mode"),
        "the flag overrode xdp_mode: {}",
        ep.log()
    );
    let addr = SocketAddrV4::new(topo.ep_addr, 7007);
    let back = topo.in_client(move || {
        let mut s = connect(addr).unwrap();
        s.write_all(b"configured").unwrap();
        let mut buf = [0u8; 10];
        s.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&back, b"configured");
    // TIME-WAIT of 2 x 100 ms from the file: the connection is soon gone.
    ep.wait_for(Duration::from_secs(5), "TIME-WAIT to end", |s| {
        s["connections"].as_array().unwrap().is_empty()
    });
    let _ = std::fs::remove_file(&file);
}

/// Sends one SYN with a wrong TCP checksum from the client namespace.
fn inject_bad_checksum(topo: &Topology) {
    topo.inject_from_client(&Segment {
        sport: 4321,
        dport: 7,
        flags: "S",
        seq: 0,
        ack: 0,
        payload: Vec::new(),
        checksum: Some(0x0bad),
    });
}

#[test]
fn xdp_log_records_join_the_log_stream_at_debug_level() {
    let topo = Topology::new("alog", 35);
    let mut ep = Endpoint::start(&topo, &["--log", "debug"]);
    inject_bad_checksum(&topo);
    ep.wait_for(Duration::from_secs(5), "the drop to be counted", |s| {
        s["xdp"]["drop_bad_tcp_checksum"] == 1
    });
    let mut found = false;
    for _ in 0..50 {
        if ep
            .log()
            .contains("XDP dropped an owned segment: drop_bad_tcp_checksum")
        {
            found = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(found, "no eBPF log record in:\n{}", ep.log());
    ep.stop();

    // At the default level the program does not even emit it.
    let topo = Topology::new("alog2", 36);
    let mut ep = Endpoint::start(&topo, &[]);
    inject_bad_checksum(&topo);
    ep.wait_for(Duration::from_secs(5), "the drop to be counted", |s| {
        s["xdp"]["drop_bad_tcp_checksum"] == 1
    });
    std::thread::sleep(Duration::from_millis(600));
    ep.stop();
    assert!(!ep.log().contains("XDP dropped"), "{}", ep.log());
}

#[test]
fn runs_unprivileged_with_only_the_units_capabilities() {
    // The unit's set (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_NET_RAW) as
    // user nobody. The unit lifts RLIMIT_MEMLOCK for the UMEM; this sandbox
    // cannot raise that limit, so CAP_IPC_LOCK stands in for it here.
    let caps = "+bpf,+perfmon,+net_admin,+net_raw,+ipc_lock";
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps",
        caps,
        "--ambient-caps",
        caps,
        "--",
    ];
    let topo = Topology::new("caps", 37);
    let ep = Endpoint::start_full(&topo, &[], &[], &wrapper);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let back = topo.in_client(move || {
        let mut s = connect(addr).unwrap();
        s.write_all(b"caps").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&back, b"caps");
    drop(ep);

    // And CAP_PERFMON is not optional: without it the verifier refuses the
    // program's packet pointer arithmetic.
    let topo = Topology::new("caps2", 38);
    let caps = "+bpf,+net_admin,+net_raw,+ipc_lock";
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.ep_ns,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .args(["--inh-caps", caps, "--ambient-caps", caps, "--"])
        .arg(binary())
        .args([
            "run",
            "--iface",
            &topo.ep_if,
            "--control-socket",
            "/tmp/tcpu-caps2.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the kernel refused the XDP program"));
}
