//! Bulk transfers between the two simulated stacks, and what every clean
//! one must show: shared by the simulator's test files.

use std::time::Duration;

use tcp_user::tcp::{Config, State};

use super::apps::{run_to_completion, CloseWhen, Peer};
use super::net::{Link, Rng, Side, SimNet};

/// The bytes a test sends: seeded, so a failure is reproducible.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed ^ 0x5eed_5eed).bytes(len)
}

/// Short TIME-WAIT and FIN-WAIT-2 so runs end soon in virtual time.
pub fn short_timers() -> Config {
    Config {
        msl: Duration::from_secs(2),
        fin_wait2_timeout: Duration::from_secs(10),
        ..Config::default()
    }
}

pub fn conn_id(p: &Peer) -> u64 {
    p.conn.expect("peer has a connection").0
}

/// "first difference at byte N" rather than two huge vectors.
pub fn assert_same_bytes(net: &SimNet, what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    net.fail(&format!(
        "{what}: got {} bytes, want {}; first difference at byte {at}",
        got.len(),
        want.len()
    ));
}

/// Every corrupted copy that reached a stack was dropped by it, for its
/// checksum (or as malformed when the flip hit the header length), and
/// nothing else was.
pub fn assert_corruption_caught(net: &SimNet) {
    for side in [Side::A, Side::B] {
        let from = side.peer();
        let corrupted = net.stats[from as usize].corrupted_delivered;
        let dropped = net.counter(side, "drop_bad_checksum") + net.counter(side, "drop_malformed");
        if corrupted != dropped {
            net.fail(&format!(
                "{side:?} received {corrupted} corrupted segments but dropped {dropped} as bad"
            ));
        }
    }
}

/// A connects to B's listener, writes `data`, closes; B reads to the end,
/// then closes. Runs until both connections are released.
pub fn bulk(
    name: &str,
    seed: u64,
    data: Vec<u8>,
    links: [Link; 2],
    cfg: Config,
) -> (SimNet, Peer, Peer) {
    let mut net = SimNet::new(name, seed, cfg);
    net.links = links;
    let mut b = Peer::new(Side::B, vec![], CloseWhen::AfterEof).listen(&mut net, 80);
    let mut a = Peer::new(Side::A, data, CloseWhen::AfterSending).connect(&mut net, 40000, 80);
    run_to_completion(&mut net, &mut a, &mut b);
    (net, a, b)
}

/// What every clean bulk transfer must show.
pub fn check_clean_bulk(net: &SimNet, a: &Peer, b: &Peer) {
    assert_same_bytes(net, "B received", &b.rx, &a.tx);
    if a.result != Some(None) || b.result != Some(None) {
        net.fail(&format!(
            "not a clean close: A {:?}, B {:?}",
            a.result, b.result
        ));
    }
    if !(a.send_errors.is_empty() && b.recv_errors.is_empty()) {
        net.fail(&format!(
            "errors: A send {:?}, B recv {:?}",
            a.send_errors, b.recv_errors
        ));
    }
    for side in [Side::A, Side::B] {
        if !net.stack_ref(side).connections().is_empty() {
            net.fail(&format!("{side:?} still has connections"));
        }
    }
    let (ia, ib) = (conn_id(a), conn_id(b));
    let a_states = net.states_of(Side::A, ia);
    let b_states = net.states_of(Side::B, ib);
    if !a_states.contains(&State::TimeWait) || !b_states.contains(&State::LastAck) {
        net.fail(&format!(
            "A should close actively, B passively: A {a_states:?}, B {b_states:?}"
        ));
    }
    // TIME-WAIT lasts at least 2 MSL (longer when a retransmitted FIN
    // restarted it). The exception is a reset: RFC 9293 §3.10.7.4 has
    // TIME-WAIT end on an RST, as Linux does by default, and with
    // duplication B (already CLOSED) can answer A's re-ACK of a duplicate
    // with one (the "TIME-WAIT assassination" of RFC 1337).
    let msl = net.configs[0].msl;
    let tw = net.entered(Side::A, ia, State::TimeWait).unwrap();
    let gone = net.entered(Side::A, ia, State::Closed).unwrap();
    if gone.saturating_duration_since(tw) < 2 * msl && net.counter(Side::A, "rst_received") == 0 {
        net.fail(&format!(
            "TIME-WAIT lasted {:?}, less than 2 MSL = {:?}",
            gone.saturating_duration_since(tw),
            2 * msl
        ));
    }
    assert_corruption_caught(net);
}

pub fn report(net: &SimNet, len: usize) {
    eprintln!(
        "{} seed {}: {len} bytes in {:?} virtual, {} iterations; A rto_expirations={} fast_retransmits={} retransmits={}; links {:?}",
        net.name,
        net.seed,
        net.elapsed(),
        net.iterations,
        net.counter(Side::A, "rto_expirations"),
        net.counter(Side::A, "fast_retransmits"),
        net.counter(Side::A, "retransmits"),
        net.stats
    );
}

/// A connects to B's echo server, writes `data`, shuts its write side
/// down and reads the echo to the end, then closes; B echoes everything
/// and closes after A's FIN. Runs until both connections are released.
pub fn echo(
    name: &str,
    seed: u64,
    data: Vec<u8>,
    links: [Link; 2],
    configs: [Config; 2],
    read_chunk: usize,
) -> (SimNet, Peer, Peer) {
    let [ca, cb] = configs;
    let mut net = SimNet::with_configs(name, seed, ca, cb);
    net.links = links;
    let mut b = Peer::echo(Side::B).listen(&mut net, 7);
    b.read_chunk = read_chunk;
    let mut a =
        Peer::new(Side::A, data, CloseWhen::ShutdownThenAfterEof).connect(&mut net, 40000, 7);
    run_to_completion(&mut net, &mut a, &mut b);
    (net, a, b)
}

/// What every clean echo must show: A got back exactly what it sent, B
/// read all of it, both closed without error and released everything.
pub fn check_clean_echo(net: &SimNet, a: &Peer, b: &Peer) {
    assert_same_bytes(net, "B received", &b.rx, &a.tx);
    assert_same_bytes(net, "A got back", &a.rx, &a.tx);
    if a.result != Some(None) || b.result != Some(None) {
        net.fail(&format!(
            "not a clean close: A {:?}, B {:?}",
            a.result, b.result
        ));
    }
    let errors = [
        &a.send_errors,
        &a.recv_errors,
        &b.send_errors,
        &b.recv_errors,
    ];
    if errors.iter().any(|e| !e.is_empty()) {
        net.fail(&format!(
            "errors (A send, A recv, B send, B recv): {errors:?}"
        ));
    }
    for side in [Side::A, Side::B] {
        if !net.stack_ref(side).connections().is_empty() {
            net.fail(&format!("{side:?} still has connections"));
        }
    }
    assert_corruption_caught(net);
}
