//! The state machine against the Linux kernel's TCP: closes from either
//! side, TIME-WAIT and FIN-WAIT-2 expiry with short timers, resets, and a
//! long transfer through a lossy path (nftables drops in the client's
//! namespace).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use e2e_tests::{echo_bytes, pattern, read_to_end, Endpoint, Topology};

fn connect(addr: SocketAddrV4) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

fn states_on(stat: &serde_json::Value, port: u16) -> Vec<String> {
    stat["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["local"].as_str().unwrap().ends_with(&format!(":{port}")))
        .map(|c| c["state"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn time_wait_lasts_two_msl_then_the_connection_is_gone() {
    let topo = Topology::new("tw", 20);
    let ep = Endpoint::start(&topo, &["--msl-ms", "500"]);
    let addr = SocketAddrV4::new(topo.ep_addr, 13);
    topo.in_client(move || {
        let mut s = connect(addr);
        let rest = read_to_end(&mut s).unwrap();
        assert!(!rest.is_empty());
        // dropping `s` closes our side: the endpoint goes FIN-WAIT-2 → TIME-WAIT.
    });
    ep.wait_for(Duration::from_secs(5), "TIME-WAIT", |s| {
        states_on(s, 13) == ["TIME-WAIT"]
    });
    ep.wait_for(Duration::from_secs(10), "TIME-WAIT to expire", |s| {
        states_on(s, 13).is_empty()
    });
}

#[test]
fn fin_wait_2_times_out_when_the_peer_never_closes() {
    let topo = Topology::new("fw2", 21);
    let ep = Endpoint::start(&topo, &["--fin-wait2-timeout-ms", "500"]);
    let addr = SocketAddrV4::new(topo.ep_addr, 13);
    // Keep the client socket open (half-closed by the endpoint only).
    let client = topo.in_client(move || {
        let s = connect(addr);
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        s
    });
    ep.wait_for(Duration::from_secs(5), "FIN-WAIT-2", |s| {
        states_on(s, 13) == ["FIN-WAIT-2"]
    });
    ep.wait_for(Duration::from_secs(10), "FIN-WAIT-2 to time out", |s| {
        states_on(s, 13).is_empty()
    });
    drop(client);
}

#[test]
fn passive_close_goes_through_last_ack() {
    let topo = Topology::new("pc", 22);
    let ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let back = topo.in_client(move || {
        let mut s = connect(addr);
        s.write_all(b"bye").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        read_to_end(&mut s).unwrap()
    });
    assert_eq!(back, b"bye");
    ep.wait_for(Duration::from_secs(5), "the connection to close", |s| {
        states_on(s, 7).is_empty()
    });
    let c = &ep.stat()["counters"];
    assert_eq!(c["conns_accepted"], 1);
    assert_eq!(c["conns_closed"], 1);
    assert_eq!(c["conns_reset"], 0);
}

#[test]
fn a_reset_from_the_peer_tears_the_connection_down() {
    let topo = Topology::new("rst", 23);
    let ep = Endpoint::start(&topo, &[]);
    let addr = SocketAddrV4::new(topo.ep_addr, 9);
    topo.in_client(move || {
        let mut s = connect(addr);
        s.write_all(b"something").unwrap();
        // SO_LINGER with a zero timeout: close() sends a RST.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // Safety: `linger` is live and its size is passed with it.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    });
    ep.wait_for(Duration::from_secs(5), "the reset connection to go", |s| {
        states_on(s, 9).is_empty() && s["counters"]["rst_received"].as_u64() == Some(1)
    });
    assert_eq!(ep.stat()["counters"]["conns_reset"], 1);
}

/// Echoes `mib` MiB through a path that drops `pct` % of the workload's
/// segments each way (nftables on a bridge between the two namespaces, so
/// neither end's stack sees the drops), with the Linux kernel's TCP as the
/// client, and checks every byte came back.
fn echo_through_loss(name: &str, subnet: u8, pct: u32, mib: usize) {
    let topo = Topology::bridged(name, subnet);
    // A short minimum RTO: on a veth the RTT is microseconds.
    let ep = Endpoint::start(&topo, &["--min-rto-ms", "20"]);
    topo.drop_randomly(7, pct);

    let addr = SocketAddrV4::new(topo.ep_addr, 7);
    let data = pattern(subnet as u64, mib << 20);
    let expect = data.clone();
    let back = topo.in_client(move || echo_bytes(addr, &data));
    assert_eq!(back.len(), expect.len());
    assert!(back == expect, "echo differs under loss");
    let (to_ep, from_ep) = topo.dropped();
    let c = &ep.stat()["counters"];
    eprintln!(
        "{name}: {pct} % loss each way, {mib} MiB echoed; bridge dropped {to_ep} to / {from_ep} from the endpoint; counters {c}"
    );
    assert!(to_ep > 0 && from_ep > 0, "the bridge dropped both ways");
    assert!(
        c["out_of_order_held"].as_u64().unwrap() > 0,
        "the client's losses reached the endpoint as holes: {c}"
    );
    assert!(
        c["retransmits"].as_u64().unwrap() > 0 && c["fast_retransmits"].as_u64().unwrap() > 0,
        "losses were recovered, most without a timeout: {c}"
    );
}

#[test]
fn echo_32mib_with_2pct_loss_each_way() {
    echo_through_loss("loss", 24, 2, 32);
}

#[test]
fn echo_64mib_with_5pct_loss_each_way() {
    echo_through_loss("loss5", 25, 5, 64);
}
