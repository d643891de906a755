//! The simulated network: two [`Stack`]s joined by two one-way links, a
//! queue of datagrams in flight ordered by delivery time, and virtual time
//! that jumps from one thing happening to the next.
//!
//! Everything random comes from one seeded [`Rng`], so a seed reproduces a
//! run exactly. Every segment either stack emits is checked against an
//! oracle written here (checksum, header sanity), every state change is
//! checked against the engine's own transition table, and a run that stops
//! making progress, or runs past its virtual-time or iteration budget,
//! fails with a diagnostic instead of hanging. On failure (or with
//! `SIM_PCAP=1`) the traffic is written to `/tmp/sim-<name>.pcap`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tcp_user::tcp::{transitions, Config, ConnId, ConnInfo, Event, Instant, Stack, State};

use super::pcap::{Pcap, TTL_DELIVERED, TTL_DROPPED};
use super::segment::{tcp_checksum_ok, SegmentView, FIN, RST, SYN};

/// Endpoint A's address.
pub const A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Endpoint B's address.
pub const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

/// Size of the buffer handed to `poll_transmit`.
const TX_BUF: usize = 65536;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, and every seed
/// (zero included) gives a full-period stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (never for p <= 0, always for p >= 1).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// A value in [0, n) (0 for n = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// Bursty loss: the Gilbert–Elliott channel. A two-state Markov chain
/// advanced once per datagram: in the good state a datagram is lost with
/// `loss_good`, in the bad state with `loss_bad`; after each datagram the
/// chain moves good → bad with probability `p` and bad → good with `r`.
/// The stationary share of the bad state is p / (p + r), so the long-run
/// loss rate is p/(p+r)·loss_bad + r/(p+r)·loss_good, and a visit to the
/// bad state lasts 1/r datagrams on average.
///
/// A chain that only steps per datagram (as netem's) stays bad across any
/// silence: a sender backing off after an RTO would meet the same burst
/// again and again, minutes later, which no real burst (a fade, a
/// cross-traffic spike) does. With `forget_after`, a datagram that comes
/// after the link was idle that long finds the chain in a state drawn
/// afresh from the stationary distribution: the long-run rate is kept, the
/// memory is not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GilbertElliott {
    pub p: f64,
    pub r: f64,
    pub loss_good: f64,
    pub loss_bad: f64,
    pub forget_after: Option<Duration>,
}

impl GilbertElliott {
    /// The simple Gilbert channel (nothing lost when good, everything when
    /// bad) with the given long-run loss rate and mean burst length in
    /// datagrams: r = 1/burst, and p from rate = p/(p+r).
    pub fn bursts(rate: f64, mean_burst: f64) -> GilbertElliott {
        let r = 1.0 / mean_burst;
        GilbertElliott {
            p: rate * r / (1.0 - rate),
            r,
            loss_good: 0.0,
            loss_bad: 1.0,
            forget_after: None,
        }
    }

    /// The stationary share of the bad state, p / (p + r).
    pub fn bad_share(&self) -> f64 {
        if self.p + self.r > 0.0 {
            self.p / (self.p + self.r)
        } else {
            0.0
        }
    }

    /// The long-run (stationary) loss rate.
    pub fn mean_loss(&self) -> f64 {
        let bad = self.bad_share();
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }

    /// The long-run rate of loss episodes (entries into the bad state) per
    /// datagram, for the simple Gilbert channel: what a sender that reacts
    /// once per burst sees as its congestion-event rate.
    pub fn burst_rate(&self) -> f64 {
        self.p * self.r / (self.p + self.r)
    }

    /// Whether the next datagram is lost, given whether the channel is in
    /// the bad state (updated for the datagram after it).
    pub fn draw(&self, bad: &mut bool, rng: &mut Rng) -> bool {
        let lost = rng.chance(if *bad { self.loss_bad } else { self.loss_good });
        *bad = if *bad {
            !rng.chance(self.r)
        } else {
            rng.chance(self.p)
        };
        lost
    }
}

/// One side of the simulated network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn ip(self) -> Ipv4Addr {
        match self {
            Side::A => A_IP,
            Side::B => B_IP,
        }
    }
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    /// Index of the link this side sends on.
    fn link(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// One direction of the path and the faults it injects.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// One-way propagation delay.
    pub latency: Duration,
    /// Largest IPv4 datagram; a segment longer than `mtu - 20` is dropped.
    pub mtu: usize,
    /// Serialization rate in bits per second (None: infinitely fast).
    pub bandwidth: Option<u64>,
    /// With a bandwidth: bytes that may wait for the wire before newly
    /// arriving datagrams are tail-dropped.
    pub queue_limit: usize,
    /// Chance a datagram is lost (independently of the others).
    pub loss: f64,
    /// Bursty loss on top of `loss` (None: none).
    pub bursty: Option<GilbertElliott>,
    /// Chance a datagram is delivered twice.
    pub duplicate: f64,
    /// Chance a copy is held back by an extra delay of up to `reorder_by`.
    pub reorder: f64,
    pub reorder_by: Duration,
    /// Chance one random bit of a copy is flipped.
    pub corrupt: f64,
    /// Drops everything.
    pub blackhole: bool,
}

impl Default for Link {
    fn default() -> Self {
        // 100 Mbit/s spaces a burst out (120 µs per full segment) as a real
        // wire does, so the receiver sees segments one by one rather than a
        // whole window at one instant.
        Link {
            latency: Duration::from_millis(5),
            mtu: 1500,
            bandwidth: Some(100_000_000),
            queue_limit: usize::MAX,
            loss: 0.0,
            bursty: None,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_by: Duration::ZERO,
            corrupt: 0.0,
            blackhole: false,
        }
    }
}

impl Link {
    pub fn lossy(loss: f64) -> Link {
        Link {
            loss,
            ..Link::default()
        }
    }
}

/// What happened to the datagrams of one link.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    pub sent: u64,
    pub payload_bytes: u64,
    pub lost: u64,
    pub too_big: u64,
    pub queue_drops: u64,
    pub blackholed: u64,
    pub filtered: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub reordered: u64,
    pub delivered: u64,
    pub corrupted_delivered: u64,
}

/// A datagram on its way.
#[derive(Debug)]
pub struct Datagram {
    pub at: Instant,
    /// Tie-break: datagrams due at the same instant arrive in send order.
    pub order: u64,
    pub from: Side,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub bytes: Vec<u8>,
    pub corrupted: bool,
}

impl PartialEq for Datagram {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Datagram {}
impl PartialOrd for Datagram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Datagram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// Datagrams in flight, earliest delivery first.
#[derive(Default)]
pub struct DeliveryQueue {
    heap: BinaryHeap<Reverse<Datagram>>,
    next_order: u64,
}

impl DeliveryQueue {
    pub fn push(&mut self, mut d: Datagram) {
        d.order = self.next_order;
        self.next_order += 1;
        self.heap.push(Reverse(d));
    }
    pub fn next_time(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(d)| d.at)
    }
    /// The earliest datagram if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        if self.next_time()? <= now {
            self.heap.pop().map(|Reverse(d)| d)
        } else {
            None
        }
    }
    pub fn len(&self) -> usize {
        self.heap.len()
    }
    /// (delivery time, sender) of everything queued, earliest first.
    pub fn snapshot(&self) -> Vec<(Instant, Side)> {
        let mut v: Vec<&Datagram> = self.heap.iter().map(|Reverse(d)| d).collect();
        v.sort();
        v.into_iter().map(|d| (d.at, d.from)).collect()
    }
}

/// Decides, per segment sent, whether the test wants it dropped (true).
pub type Filter = Box<dyn FnMut(Side, Instant, &SegmentView) -> bool>;

/// One state a connection was seen in.
#[derive(Clone, Copy, Debug)]
pub struct StateChange {
    pub at: Instant,
    pub side: Side,
    pub id: u64,
    /// `Closed` when the connection left the table.
    pub state: State,
}

/// The two endpoints and the network between them.
pub struct SimNet {
    pub name: String,
    pub seed: u64,
    pub now: Instant,
    pub start: Instant,
    pub a: Stack,
    pub b: Stack,
    pub configs: [Config; 2],
    pub links: [Link; 2],
    pub stats: [LinkStats; 2],
    rng: Rng,
    /// Each link's Gilbert–Elliott channel: in its bad state, and when it
    /// last drew.
    burst_bad: [bool; 2],
    burst_last: [Instant; 2],
    queue: DeliveryQueue,
    /// When each link's wire is free again (bandwidth model).
    busy_until: [Instant; 2],
    pub pcap: Pcap,
    /// Every state of every connection, in the order seen.
    pub history: Vec<StateChange>,
    last_state: HashMap<(Side, u64), State>,
    /// Events not yet taken by the applications.
    inbox: VecDeque<(Side, Event)>,
    /// Every event, for diagnostics.
    pub event_log: Vec<(Instant, Side, Event)>,
    pub filter: Option<Filter>,
    pub max_time: Duration,
    pub max_iterations: u64,
    pub iterations: u64,
    tx_buf: Vec<u8>,
}

impl SimNet {
    /// Both stacks with `cfg` (and distinct ISN secrets), default links.
    pub fn new(name: &str, seed: u64, cfg: Config) -> SimNet {
        Self::with_configs(name, seed, cfg.clone(), cfg)
    }

    pub fn with_configs(name: &str, seed: u64, mut ca: Config, mut cb: Config) -> SimNet {
        ca.isn_secret = secret(seed, 1);
        cb.isn_secret = secret(seed, 2);
        Self::starting_at(name, seed, ca, cb, Instant::from_micros(1_000_000))
    }

    /// With the ISN secrets as given and virtual time starting at `start`.
    pub fn starting_at(name: &str, seed: u64, ca: Config, cb: Config, start: Instant) -> SimNet {
        SimNet {
            name: name.to_string(),
            seed,
            now: start,
            start,
            a: Stack::new(ca.clone()),
            b: Stack::new(cb.clone()),
            configs: [ca, cb],
            links: [Link::default(); 2],
            stats: [LinkStats::default(); 2],
            rng: Rng::new(seed),
            burst_bad: [false; 2],
            burst_last: [start; 2],
            queue: DeliveryQueue::default(),
            busy_until: [start; 2],
            pcap: Pcap::default(),
            history: Vec::new(),
            last_state: HashMap::new(),
            inbox: VecDeque::new(),
            event_log: Vec::new(),
            filter: None,
            max_time: Duration::from_secs(3600),
            max_iterations: 5_000_000,
            iterations: 0,
            tx_buf: vec![0; TX_BUF],
        }
    }

    /// The same link both ways.
    pub fn set_links(&mut self, link: Link) {
        self.links = [link; 2];
    }

    pub fn stack(&mut self, side: Side) -> &mut Stack {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    pub fn stack_ref(&self, side: Side) -> &Stack {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now.saturating_duration_since(self.start)
    }

    /// The next event of `side` that `wanted` claims, given the event and
    /// the remote end of its connection (when still known).
    pub fn take_event_matching(
        &mut self,
        side: Side,
        mut wanted: impl FnMut(&Event, Option<SocketAddrV4>) -> bool,
    ) -> Option<Event> {
        let table = self.stack_ref(side).connections();
        let remote_of = |id: ConnId| table.iter().find(|c| c.id == id.0).map(|c| c.remote);
        let i = self.inbox.iter().position(|(s, ev)| {
            if *s != side {
                return false;
            }
            let remote = match ev {
                Event::Accepted { conn, .. } => remote_of(*conn),
                Event::Connected(c) | Event::Readable(c) | Event::Writable(c) => remote_of(*c),
                Event::Closed { tuple, .. } => Some(tuple.remote),
            };
            wanted(ev, remote)
        })?;
        self.inbox.remove(i).map(|(_, e)| e)
    }

    /// Datagrams in flight: (delivery time, sender), earliest first.
    pub fn in_flight(&self) -> Vec<(Instant, Side)> {
        self.queue.snapshot()
    }

    /// A connection's states, in order (ending in `Closed` once released).
    pub fn states_of(&self, side: Side, id: u64) -> Vec<State> {
        self.history
            .iter()
            .filter(|c| c.side == side && c.id == id)
            .map(|c| c.state)
            .collect()
    }

    /// When a connection was first seen in `state`.
    pub fn entered(&self, side: Side, id: u64, state: State) -> Option<Instant> {
        self.history
            .iter()
            .find(|c| c.side == side && c.id == id && c.state == state)
            .map(|c| c.at)
    }

    /// A stack counter by name.
    pub fn counter(&self, side: Side, name: &str) -> u64 {
        self.stack_ref(side)
            .counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Replaces a stack (a crash and restart of that endpoint: all its
    /// connection state is gone).
    pub fn restart(&mut self, side: Side) {
        let mut cfg = self.configs[side.link()].clone();
        cfg.isn_secret = secret(self.seed ^ self.now.as_micros(), 3);
        *self.stack(side) = Stack::new(cfg);
        self.last_state.retain(|(s, _), _| *s != side);
    }

    /// Moves everything both stacks want to send onto the links.
    fn transmit(&mut self) {
        for side in [Side::A, Side::B] {
            loop {
                let now = self.now;
                let mut buf = std::mem::take(&mut self.tx_buf);
                let t = self.stack(side).poll_transmit(now, &mut buf);
                let Some(t) = t else {
                    self.tx_buf = buf;
                    break;
                };
                let bytes = buf[..t.len].to_vec();
                self.tx_buf = buf;
                self.check_emitted(side, t.src, t.dst, &bytes);
                self.send_on_link(side, t.src, t.dst, bytes);
            }
        }
    }

    /// What the oracle demands of every segment a stack emits.
    fn check_emitted(&self, side: Side, src: Ipv4Addr, dst: Ipv4Addr, bytes: &[u8]) {
        if src != side.ip() || dst != side.peer().ip() {
            self.fail(&format!(
                "{side:?} emitted a segment {src} -> {dst}, not {} -> {}",
                side.ip(),
                side.peer().ip()
            ));
        }
        let Some(seg) = SegmentView::parse(bytes) else {
            self.fail(&format!(
                "{side:?} emitted a malformed segment: {bytes:02x?}"
            ));
        };
        if !tcp_checksum_ok(src, dst, bytes) {
            self.fail(&format!("{side:?} emitted a bad checksum: {seg}"));
        }
        if seg.has(SYN) && (seg.has(FIN) || seg.has(RST)) {
            self.fail(&format!("{side:?} emitted hostile flags: {seg}"));
        }
        if bytes.len() > TX_BUF {
            self.fail(&format!("{side:?} emitted {} bytes", bytes.len()));
        }
    }

    pub fn send_on_link(&mut self, from: Side, src: Ipv4Addr, dst: Ipv4Addr, bytes: Vec<u8>) {
        let li = from.link();
        let link = self.links[li];
        let seg = SegmentView::parse(&bytes).expect("checked");
        self.stats[li].sent += 1;
        self.stats[li].payload_bytes += seg.payload_len as u64;
        let now = self.now;
        let wire_len = bytes.len() + 20;
        let dropped = if link.blackhole {
            self.stats[li].blackholed += 1;
            true
        } else if wire_len > link.mtu {
            self.stats[li].too_big += 1;
            true
        } else if self.filter.as_mut().is_some_and(|f| f(from, now, &seg)) {
            self.stats[li].filtered += 1;
            true
        } else {
            false
        };
        // Serialization: the datagram waits for the wire, then takes its
        // length in bits over the bandwidth; a full queue tail-drops.
        let mut departs = now;
        let mut queue_drop = false;
        if let (false, Some(bps)) = (dropped, link.bandwidth) {
            let start = self.busy_until[li].max(now);
            let backlog =
                start.saturating_duration_since(now).as_micros() * bps as u128 / 8_000_000;
            if backlog as usize > link.queue_limit {
                self.stats[li].queue_drops += 1;
                queue_drop = true;
            } else {
                let tx_us = (wire_len as u128 * 8 * 1_000_000).div_ceil(bps as u128) as u64;
                departs = start + Duration::from_micros(tx_us);
                self.busy_until[li] = departs;
            }
        }
        // Only the datagrams that reach the lossy part of the path draw
        // (and advance the burst channel), so a run without `bursty`
        // draws exactly what it did before that model existed.
        let lost = !dropped
            && !queue_drop
            && (self.rng.chance(link.loss) | self.burst_lost(li, link.bursty));
        if lost {
            self.stats[li].lost += 1;
        }
        let gone = dropped || queue_drop || lost;
        self.pcap.record(
            now,
            src,
            dst,
            if gone { TTL_DROPPED } else { TTL_DELIVERED },
            &bytes,
        );
        if gone {
            return;
        }
        let copies = if self.rng.chance(link.duplicate) {
            self.stats[li].duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut copy = bytes.clone();
            let corrupted = self.rng.chance(link.corrupt);
            if corrupted {
                self.stats[li].corrupted += 1;
                let bit = self.rng.below(copy.len() as u64 * 8);
                copy[(bit / 8) as usize] ^= 1 << (bit % 8);
            }
            let mut at = departs + link.latency;
            if self.rng.chance(link.reorder) {
                self.stats[li].reordered += 1;
                let extra = self.rng.below(link.reorder_by.as_micros() as u64 + 1);
                at = at + Duration::from_micros(extra);
            }
            self.queue.push(Datagram {
                at,
                order: 0,
                from,
                src,
                dst,
                bytes: copy,
                corrupted,
            });
        }
    }

    /// Whether link `li`'s burst channel (if any) loses the next datagram.
    fn burst_lost(&mut self, li: usize, bursty: Option<GilbertElliott>) -> bool {
        let Some(ge) = bursty else { return false };
        let idle = self.now.saturating_duration_since(self.burst_last[li]);
        if ge.forget_after.is_some_and(|d| idle > d) {
            self.burst_bad[li] = self.rng.chance(ge.bad_share());
        }
        self.burst_last[li] = self.now;
        ge.draw(&mut self.burst_bad[li], &mut self.rng)
    }

    /// Takes events and state changes of both stacks into the logs.
    fn observe(&mut self) {
        for side in [Side::A, Side::B] {
            while let Some(ev) = self.stack(side).poll_event() {
                self.event_log.push((self.now, side, ev));
                if let Event::Closed { conn, .. } = ev {
                    if self.stack_ref(side).state(conn).is_some() {
                        self.fail(&format!(
                            "{side:?} reported {conn:?} closed but still has it"
                        ));
                    }
                }
                self.inbox.push_back((side, ev));
            }
            let table: Vec<ConnInfo> = self.stack_ref(side).connections();
            for info in &table {
                let prev = self.last_state.insert((side, info.id), info.state);
                if prev == Some(info.state) {
                    continue;
                }
                if let Some(p) = prev {
                    if !is_edge(p, info.state) {
                        self.fail(&format!(
                            "{side:?} conn {} went {p:?} -> {:?}, not an edge of tcp::transitions()",
                            info.id, info.state
                        ));
                    }
                }
                self.history.push(StateChange {
                    at: self.now,
                    side,
                    id: info.id,
                    state: info.state,
                });
            }
            let gone: Vec<u64> = self
                .last_state
                .keys()
                .filter(|(s, id)| *s == side && !table.iter().any(|c| c.id == *id))
                .map(|(_, id)| *id)
                .collect();
            for id in gone {
                let prev = self.last_state.remove(&(side, id)).expect("listed");
                if !is_edge(prev, State::Closed) {
                    self.fail(&format!(
                        "{side:?} conn {id} released from {prev:?}, which has no edge to CLOSED"
                    ));
                }
                self.history.push(StateChange {
                    at: self.now,
                    side,
                    id,
                    state: State::Closed,
                });
            }
        }
    }

    /// Advances to the next thing that happens and does it. False when
    /// nothing ever will (no datagram in flight, no timer armed).
    pub fn step(&mut self) -> bool {
        self.iterations += 1;
        if self.iterations > self.max_iterations {
            self.fail(&format!("more than {} iterations", self.max_iterations));
        }
        if self.elapsed() > self.max_time {
            self.fail(&format!("past {:?} of virtual time", self.max_time));
        }
        self.observe();
        self.transmit();
        self.observe();
        let next = [
            self.queue.next_time(),
            self.a.poll_timeout(),
            self.b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return false;
        };
        self.now = self.now.max(next);
        while let Some(d) = self.queue.pop_due(self.now) {
            let li = d.from.link();
            self.stats[li].delivered += 1;
            self.stats[li].corrupted_delivered += d.corrupted as u64;
            let now = self.now;
            self.stack(d.from.peer())
                .handle_segment(now, d.src, d.dst, &d.bytes);
            self.observe();
        }
        for side in [Side::A, Side::B] {
            let now = self.now;
            if self
                .stack_ref(side)
                .poll_timeout()
                .is_some_and(|t| t <= now)
            {
                self.stack(side).handle_timeout(now);
                self.observe();
            }
        }
        true
    }

    /// Runs the applications (`app`, between steps) until it returns true.
    pub fn run_until(&mut self, what: &str, mut app: impl FnMut(&mut SimNet) -> bool) {
        loop {
            if app(self) {
                self.observe();
                return;
            }
            if !self.step() {
                if app(self) {
                    return;
                }
                self.fail(&format!(
                    "stalled waiting for {what}: no datagram in flight, no timer armed"
                ));
            }
        }
    }

    /// Steps until virtual time reaches `until` (or nothing is left to do).
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.now < until {
            let next = [
                self.queue.next_time(),
                self.a.poll_timeout(),
                self.b.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            if next.is_none_or(|t| t > until) {
                self.observe();
                self.transmit();
                self.observe();
                self.now = until;
                return;
            }
            self.step();
        }
    }

    /// Panics with everything useful to reproduce and understand a failure.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{}", self.diagnostics(msg))
    }

    pub fn diagnostics(&self, msg: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "simulation {:?} seed {} failed at virtual t={:?} (iteration {}): {msg}",
            self.name,
            self.seed,
            self.elapsed(),
            self.iterations
        );
        for side in [Side::A, Side::B] {
            let st = self.stack_ref(side);
            let _ = writeln!(s, "  {side:?} ({}) connections:", side.ip());
            for c in st.connections() {
                let _ = writeln!(s, "    {c:?}");
            }
            let counters: Vec<String> = st
                .counters()
                .into_iter()
                .filter(|(_, v)| *v != 0)
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let _ = writeln!(s, "    counters: {}", counters.join(" "));
            let _ = writeln!(s, "    next timer: {:?}", st.poll_timeout());
            let _ = writeln!(s, "    link {side:?}->: {:?}", self.stats[side.link()]);
        }
        let _ = writeln!(s, "  in flight: {} datagrams", self.queue.len());
        let _ = writeln!(s, "  last state changes:");
        for c in self.history.iter().rev().take(12).rev() {
            let _ = writeln!(
                s,
                "    t={:?} {:?} conn {} {:?}",
                c.at.saturating_duration_since(self.start),
                c.side,
                c.id,
                c.state
            );
        }
        let _ = writeln!(s, "  last segments:");
        for line in self.pcap.tail(12, self.start) {
            let _ = writeln!(s, "    {line}");
        }
        let _ = write!(s, "  pcap: {}", self.pcap_path());
        s
    }

    pub fn pcap_path(&self) -> String {
        format!("/tmp/sim-{}.pcap", self.name)
    }
}

impl Drop for SimNet {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SIM_PCAP").is_some() {
            let path = self.pcap_path();
            match std::fs::write(&path, self.pcap.to_bytes()) {
                Ok(()) => eprintln!("simulation {}: wrote {path}", self.name),
                Err(e) => eprintln!("simulation {}: writing {path}: {e}", self.name),
            }
        }
    }
}

/// Whether the engine's transition table has the edge.
pub fn is_edge(from: State, to: State) -> bool {
    from == to || transitions().iter().any(|t| t.from == from && t.to == to)
}

fn secret(seed: u64, who: u64) -> [u8; 16] {
    let mut r = Rng::new(seed.wrapping_mul(31).wrapping_add(who));
    let mut k = [0; 16];
    k[..8].copy_from_slice(&r.next_u64().to_le_bytes());
    k[8..].copy_from_slice(&r.next_u64().to_le_bytes());
    k
}
