//! Two TCP cores talking over a simulated network in virtual time:
//! latency, MTU, and seeded loss, duplication, reordering and corruption.
//! Deterministic: a failing seed fails the same way every run, and with
//! SIM_PCAP=1 (or on failure) the traffic is written to /tmp as a pcap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tcp_user::tcp::{Config, ConnId, Error, Event, Instant, Stack, State};

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

/// SplitMix64: tiny, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug)]
struct Link {
    latency: Duration,
    mtu: usize,
    loss: f64,
    duplicate: f64,
    /// Chance of an extra random delay of up to `reorder_by`.
    reorder: f64,
    reorder_by: Duration,
    corrupt: f64,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            latency: Duration::from_millis(5),
            mtu: 1500,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_by: Duration::ZERO,
            corrupt: 0.0,
        }
    }
}

struct Packet {
    at: Instant,
    order: u64,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    bytes: Vec<u8>,
}

impl PartialEq for Packet {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Packet {}
impl PartialOrd for Packet {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Packet {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

struct Sim {
    now: Instant,
    a: Stack,
    b: Stack,
    a_to_b: Link,
    b_to_a: Link,
    rng: Rng,
    in_flight: BinaryHeap<Reverse<Packet>>,
    order: u64,
    pcap: Vec<(Instant, Vec<u8>, Ipv4Addr, Ipv4Addr)>,
    record: bool,
    delivered: u64,
}

impl Sim {
    fn new(seed: u64, cfg: Config, a_to_b: Link, b_to_a: Link) -> Sim {
        let mut ca = cfg.clone();
        ca.isn_secret = [1; 16];
        let mut cb = cfg;
        cb.isn_secret = [2; 16];
        Sim {
            now: Instant::from_micros(1_000_000),
            a: Stack::new(ca),
            b: Stack::new(cb),
            a_to_b,
            b_to_a,
            rng: Rng(seed),
            in_flight: BinaryHeap::new(),
            order: 0,
            pcap: Vec::new(),
            record: std::env::var_os("SIM_PCAP").is_some(),
            delivered: 0,
        }
    }

    /// Moves every segment the stacks want to send onto the links.
    fn transmit(&mut self) {
        let mut buf = vec![0u8; 65536];
        for from_a in [true, false] {
            loop {
                let stack = if from_a { &mut self.a } else { &mut self.b };
                let Some(t) = stack.poll_transmit(self.now, &mut buf) else {
                    break;
                };
                let link = if from_a { self.a_to_b } else { self.b_to_a };
                let bytes = buf[..t.len].to_vec();
                if self.record {
                    self.pcap.push((self.now, bytes.clone(), t.src, t.dst));
                }
                if bytes.len() + 20 > link.mtu || self.rng.chance(link.loss) {
                    continue;
                }
                let copies = 1 + self.rng.chance(link.duplicate) as usize;
                for _ in 0..copies {
                    let mut b = bytes.clone();
                    if self.rng.chance(link.corrupt) {
                        let i = self.rng.below(b.len() as u64) as usize;
                        b[i] ^= 1 << self.rng.below(8);
                    }
                    let mut at = self.now + link.latency;
                    if self.rng.chance(link.reorder) {
                        at = at
                            + Duration::from_micros(
                                self.rng.below(link.reorder_by.as_micros() as u64 + 1),
                            );
                    }
                    self.order += 1;
                    self.in_flight.push(Reverse(Packet {
                        at,
                        order: self.order,
                        src: t.src,
                        dst: t.dst,
                        bytes: b,
                    }));
                }
            }
        }
    }

    /// Advances to the next thing that happens; false when nothing will.
    fn step(&mut self) -> bool {
        self.transmit();
        let next_packet = self.in_flight.peek().map(|Reverse(p)| p.at);
        let next = [next_packet, self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { return false };
        self.now = self.now.max(next);
        while self
            .in_flight
            .peek()
            .is_some_and(|Reverse(p)| p.at <= self.now)
        {
            let Reverse(p) = self.in_flight.pop().unwrap();
            let to = if p.dst == A { &mut self.a } else { &mut self.b };
            to.handle_segment(self.now, p.src, p.dst, &p.bytes);
            self.delivered += 1;
        }
        for s in [&mut self.a, &mut self.b] {
            if s.poll_timeout().is_some_and(|t| t <= self.now) {
                s.handle_timeout(self.now);
            }
        }
        true
    }

    fn write_pcap(&self, name: &str) {
        // LINKTYPE_RAW (101): each record an IPv4 datagram we synthesize.
        let mut out = Vec::new();
        for v in [
            0xa1b2c3d4u32.to_le_bytes().to_vec(),
            2u16.to_le_bytes().to_vec(),
            4u16.to_le_bytes().to_vec(),
        ] {
            out.extend(v);
        }
        out.extend(0i32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(65535u32.to_le_bytes());
        out.extend(101u32.to_le_bytes());
        for (t, seg, src, dst) in &self.pcap {
            let total = 20 + seg.len();
            let mut ip = vec![
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0x40,
                0,
                64,
                6,
                0,
                0,
            ];
            ip.extend(src.octets());
            ip.extend(dst.octets());
            let us = t.as_micros();
            out.extend(((us / 1_000_000) as u32).to_le_bytes());
            out.extend(((us % 1_000_000) as u32).to_le_bytes());
            out.extend((total as u32).to_le_bytes());
            out.extend((total as u32).to_le_bytes());
            out.extend(ip);
            out.extend(seg);
        }
        let path = format!("/tmp/sim-{name}.pcap");
        let _ = std::fs::write(&path, out);
        eprintln!("wrote {path}");
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

struct Outcome {
    received: Vec<u8>,
    a_states: Vec<State>,
    b_states: Vec<State>,
    a_error: Option<Option<Error>>,
    b_error: Option<Option<Error>>,
    virtual_time: Duration,
}

/// A connects to B, writes `data`, closes; B reads everything, then closes.
/// Runs until both connections are gone (after TIME-WAIT).
fn bulk(name: &str, seed: u64, len: usize, a_to_b: Link, b_to_a: Link, cfg: Config) -> Outcome {
    let data = pattern(seed ^ 0x5eed, len);
    let mut sim = Sim::new(seed, cfg, a_to_b, b_to_a);
    let b_addr = SocketAddrV4::new(B, 80);
    sim.b.listen(b_addr).unwrap();
    let ca = sim
        .a
        .connect(sim.now, SocketAddrV4::new(A, 40000), b_addr)
        .unwrap();
    let mut cb: Option<ConnId> = None;
    let (mut written, mut a_closed, mut b_closed) = (0usize, false, false);
    let mut received = Vec::with_capacity(len);
    let mut buf = vec![0u8; 256 * 1024];
    let (mut a_states, mut b_states) = (vec![], vec![]);
    let (mut a_error, mut b_error) = (None, None);
    let start = sim.now;
    let limit = Duration::from_secs(3600);
    loop {
        while let Some(ev) = sim.a.poll_event() {
            if let Event::Closed { error, .. } = ev {
                a_error = Some(error);
            }
        }
        while let Some(ev) = sim.b.poll_event() {
            match ev {
                Event::Accepted { conn, .. } => cb = Some(conn),
                Event::Closed { error, .. } => b_error = Some(error),
                _ => {}
            }
        }
        // Write once connected: a CLOSE in SYN-SENT deletes the connection
        // (RFC 9293 §3.10.4), queued data and all.
        let a_open = sim.a.state(ca).is_some_and(|s| s != State::SynSent);
        if a_error.is_none() && a_open {
            while written < data.len() {
                match sim.a.send(sim.now, ca, &data[written..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => written += n,
                }
            }
            if written == data.len() && !a_closed {
                sim.a.close(sim.now, ca).unwrap();
                a_closed = true;
            }
        }
        if let Some(c) = cb {
            loop {
                match sim.b.recv(sim.now, c, &mut buf) {
                    Ok(0) => {
                        if !b_closed {
                            sim.b.close(sim.now, c).unwrap();
                            b_closed = true;
                        }
                        break;
                    }
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
        }
        for (stack, conn, states) in [
            (&sim.a, Some(ca), &mut a_states),
            (&sim.b, cb, &mut b_states),
        ] {
            if let Some(s) = conn.and_then(|c| stack.state(c)) {
                if states.last() != Some(&s) {
                    states.push(s);
                }
            }
        }
        if a_error.is_some() && b_error.is_some() {
            break;
        }
        if !sim.step() || sim.now.saturating_duration_since(start) > limit {
            sim.write_pcap(name);
            panic!(
                "{name} (seed {seed}) stuck at {:?}: A {:?} B {:?}, {} of {} bytes received, A counters {:?}",
                sim.now.saturating_duration_since(start),
                sim.a.connections(),
                sim.b.connections(),
                received.len(),
                len,
                sim.a.counters()
            );
        }
    }
    if sim.record {
        sim.write_pcap(name);
    }
    let counters: std::collections::HashMap<_, _> = sim.a.counters().into_iter().collect();
    eprintln!(
        "{name} seed {seed}: sender rto_expirations={} fast_retransmits={} retransmits={}",
        counters["rto_expirations"], counters["fast_retransmits"], counters["retransmits"]
    );
    Outcome {
        received,
        a_states,
        b_states,
        a_error,
        b_error,
        virtual_time: sim.now.saturating_duration_since(start),
    }
}

fn short_timers() -> Config {
    Config {
        msl: Duration::from_secs(2),
        ..Config::default()
    }
}

fn check_bulk(name: &str, seed: u64, len: usize, link: Link) {
    let out = bulk(name, seed, len, link, link, short_timers());
    assert_eq!(out.received.len(), len, "{name} seed {seed}: length");
    assert!(
        out.received == pattern(seed ^ 0x5eed, len),
        "{name} seed {seed}: bytes differ"
    );
    assert_eq!(out.a_error, Some(None), "{name}: A closed cleanly");
    assert_eq!(out.b_error, Some(None), "{name}: B closed cleanly");
    assert!(
        out.a_states.contains(&State::TimeWait),
        "A did the active close: {:?}",
        out.a_states
    );
    assert!(
        out.b_states.contains(&State::LastAck),
        "B did the passive close: {:?}",
        out.b_states
    );
    eprintln!(
        "{name} seed {seed}: {len} bytes in {:?} virtual",
        out.virtual_time
    );
}

#[test]
fn handshake_and_small_transfer() {
    check_bulk("small", 1, 10_000, Link::default());
}

#[test]
fn transfer_16mib_with_5pct_loss_each_way() {
    let link = Link {
        loss: 0.05,
        ..Link::default()
    };
    check_bulk("loss16", 42, 16 << 20, link);
}

#[test]
fn lossy_transfers_across_seeds() {
    let link = Link {
        loss: 0.05,
        ..Link::default()
    };
    for seed in 100..105 {
        check_bulk("seeds", seed, 1 << 20, link);
    }
}

#[test]
fn duplication_reordering_corruption() {
    let link = Link {
        duplicate: 0.02,
        reorder: 0.1,
        reorder_by: Duration::from_millis(20),
        corrupt: 0.01,
        loss: 0.01,
        ..Link::default()
    };
    check_bulk("chaos", 7, 1 << 20, link);
}

#[test]
fn small_mtu_path_still_delivers() {
    // A path of 600-byte datagrams: both ends advertise an MSS that fits
    // (as the driver does from the interface MTU) and never exceed it.
    let link = Link {
        mtu: 600,
        ..Link::default()
    };
    let cfg = Config {
        mss: 560,
        ..short_timers()
    };
    let out = bulk("mtu", 3, 100_000, link, link, cfg);
    assert_eq!(out.received.len(), 100_000);
}

#[test]
fn simultaneous_open_and_close() {
    let mut sim = Sim::new(9, short_timers(), Link::default(), Link::default());
    let (pa, pb) = (SocketAddrV4::new(A, 5000), SocketAddrV4::new(B, 6000));
    let ca = sim.a.connect(sim.now, pa, pb).unwrap();
    let cb = sim.b.connect(sim.now, pb, pa).unwrap();
    let mut seen_a = vec![];
    let mut seen_b = vec![];
    let mut closed = (false, false);
    let mut close_sent = false;
    for _ in 0..100_000 {
        while let Some(e) = sim.a.poll_event() {
            if matches!(e, Event::Closed { error: None, .. }) {
                closed.0 = true;
            }
        }
        while let Some(e) = sim.b.poll_event() {
            if matches!(e, Event::Closed { error: None, .. }) {
                closed.1 = true;
            }
        }
        for (s, c, seen) in [(&sim.a, ca, &mut seen_a), (&sim.b, cb, &mut seen_b)] {
            if let Some(st) = s.state(c) {
                if seen.last() != Some(&st) {
                    seen.push(st);
                }
            }
        }
        if !close_sent
            && sim.a.state(ca) == Some(State::Established)
            && sim.b.state(cb) == Some(State::Established)
        {
            // Both close at the same instant: the FINs cross.
            sim.a.close(sim.now, ca).unwrap();
            sim.b.close(sim.now, cb).unwrap();
            close_sent = true;
        }
        for (s, c, seen) in [(&sim.a, ca, &mut seen_a), (&sim.b, cb, &mut seen_b)] {
            if let Some(st) = s.state(c) {
                if seen.last() != Some(&st) {
                    seen.push(st);
                }
            }
        }
        if closed == (true, true) {
            break;
        }
        if !sim.step() {
            break;
        }
    }
    let want = [
        State::SynSent,
        State::SynReceived,
        State::Established,
        State::FinWait1,
        State::Closing,
        State::TimeWait,
    ];
    assert_eq!(seen_a, want, "A's states");
    assert_eq!(seen_b, want, "B's states");
    assert_eq!(closed, (true, true), "both gone after TIME-WAIT");
}

#[test]
fn retry_limit_aborts_with_timed_out() {
    let cfg = Config {
        max_retries: 5,
        ..short_timers()
    };
    let mut sim = Sim::new(5, cfg, Link::default(), Link::default());
    let b_addr = SocketAddrV4::new(B, 80);
    sim.b.listen(b_addr).unwrap();
    let ca = sim
        .a
        .connect(sim.now, SocketAddrV4::new(A, 40000), b_addr)
        .unwrap();
    while sim.a.state(ca) != Some(State::Established) {
        assert!(sim.step());
    }
    // The path dies.
    sim.a_to_b.loss = 1.0;
    sim.b_to_a.loss = 1.0;
    sim.a.send(sim.now, ca, b"into the void").unwrap();
    let start = sim.now;
    let mut error = None;
    while error.is_none() {
        assert!(sim.step(), "nothing left to happen but no error reported");
        while let Some(e) = sim.a.poll_event() {
            if let Event::Closed { error: e, .. } = e {
                error = Some(e);
            }
        }
    }
    assert_eq!(error, Some(Some(Error::TimedOut)));
    // 5 retries with exponential backoff from at least 200 ms: no sooner
    // than 0.2 * (1+2+4+8+16+32) s, and well within an hour.
    let took = sim.now.saturating_duration_since(start);
    assert!(
        took >= Duration::from_millis(200 * 63),
        "gave up too soon: {took:?}"
    );
    assert!(took < Duration::from_secs(3600), "took {took:?}");
}

#[test]
fn rng_and_queue_are_deterministic() {
    let (mut a, mut b) = (Rng(3), Rng(3));
    for _ in 0..100 {
        assert_eq!(a.next(), b.next());
    }
    let mut q = BinaryHeap::new();
    for (at, order) in [(5, 2), (5, 1), (1, 3)] {
        q.push(Reverse(Packet {
            at: Instant::from_micros(at),
            order,
            src: A,
            dst: B,
            bytes: vec![],
        }));
    }
    let popped: Vec<u64> = std::iter::from_fn(|| q.pop().map(|Reverse(p)| p.order)).collect();
    assert_eq!(popped, vec![3, 1, 2]);
}
