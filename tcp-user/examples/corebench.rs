//! A fixed, deterministic workload for the TCP core alone, for instruction
//! counts (`valgrind --tool=callgrind`) and allocation counts: two stacks
//! joined back to back in memory, no clock, no I/O.
//!
//! ```sh
//! cargo build --release --example corebench -p tcp-user
//! target/release/examples/corebench bulk 64      # 64 MiB one way, prints allocations/segment
//! target/release/examples/corebench rr 20000     # 20000 64-byte request/response transactions
//! target/release/examples/corebench crr 2000     # 2000 connect/request/response/close
//! valgrind --tool=callgrind target/release/examples/corebench bulk 16
//! ```
//!
//! Each round delivers every segment one side has to send to the other
//! side as one batch (as a driver turn does with an RX batch), then lets
//! the receiving application read everything, then turns around. Virtual
//! time advances 20 µs per round.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};

use tcp_user::tcp::{Config, ConnId, Event, Instant, Stack};
use tcp_user::wire::ChecksumVerified;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const FRAME: usize = 2048;

/// One direction of the wire: a fixed pool of frame buffers.
struct Wire {
    frames: Vec<[u8; FRAME]>,
    lens: Vec<usize>,
    n: usize,
    segments: u64,
}

impl Wire {
    fn new() -> Wire {
        Wire {
            frames: vec![[0; FRAME]; 4096],
            lens: vec![0; 4096],
            n: 0,
            segments: 0,
        }
    }
    /// Everything `from` has to send.
    fn collect(&mut self, now: Instant, from: &mut Stack) {
        while self.n < self.frames.len() {
            match from.poll_transmit(now, &mut self.frames[self.n][..1500]) {
                Some(t) => {
                    self.lens[self.n] = t.len;
                    self.n += 1;
                }
                None => break,
            }
        }
        self.segments += self.n as u64;
    }
    fn deliver(&mut self, now: Instant, to: &mut Stack, src: Ipv4Addr, dst: Ipv4Addr) {
        for i in 0..self.n {
            deliver(to, now, src, dst, &self.frames[i][..self.lens[i]]);
        }
        self.n = 0;
    }
}

/// As the driver does: the XDP program verified the checksum (the
/// segments here come straight from the other stack). `COREBENCH_VERIFY=1`
/// verifies it again in the core, as the simulator's path does.
fn deliver(to: &mut Stack, now: Instant, src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) {
    if verify() {
        to.handle_segment(now, src, dst, seg);
    } else {
        to.handle_verified_segment(now, src, dst, ChecksumVerified::vouched_by_xdp(seg));
    }
}

fn verify() -> bool {
    static VERIFY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERIFY.get_or_init(|| std::env::var_os("COREBENCH_VERIFY").is_some_and(|v| v == "1"))
}

struct Pair {
    a: Stack,
    b: Stack,
    ab: Wire,
    ba: Wire,
    now: Instant,
}

impl Pair {
    fn new() -> Pair {
        let cfg = Config {
            min_rto: std::time::Duration::from_millis(20),
            ..Config::default()
        };
        let a = Stack::new(Config {
            isn_secret: [1; 16],
            ..cfg.clone()
        });
        let mut b = Stack::new(cfg);
        b.listen(SocketAddrV4::new(B, 9)).unwrap();
        Pair {
            a,
            b,
            ab: Wire::new(),
            ba: Wire::new(),
            now: Instant::from_micros(1_000_000),
        }
    }
    /// One round: A's segments to B, B's to A; timers on both.
    fn round(&mut self) {
        self.now = Instant::from_micros(self.now.as_micros() + 20);
        for s in [&mut self.a, &mut self.b] {
            if s.poll_timeout().is_some_and(|t| t <= self.now) {
                s.handle_timeout(self.now);
            }
        }
        self.ab.collect(self.now, &mut self.a);
        self.ab.deliver(self.now, &mut self.b, A, B);
        self.ba.collect(self.now, &mut self.b);
        self.ba.deliver(self.now, &mut self.a, B, A);
    }
}

fn drain_reads(s: &mut Stack, now: Instant, buf: &mut [u8], got: &mut u64) -> Vec<Event> {
    let mut other = Vec::new();
    while let Some(ev) = s.poll_event() {
        match ev {
            Event::Readable(c) => {
                while let Ok(n) = s.recv(now, c, buf) {
                    if n == 0 {
                        break;
                    }
                    *got += n as u64;
                }
            }
            e => other.push(e),
        }
    }
    other
}

fn connect(p: &mut Pair, port: u16) -> (ConnId, ConnId) {
    let ca =
        p.a.connect(p.now, SocketAddrV4::new(A, port), SocketAddrV4::new(B, 9))
            .unwrap();
    let mut cb = None;
    for _ in 0..10 {
        p.round();
        while let Some(ev) = p.b.poll_event() {
            if let Event::Accepted { conn, .. } = ev {
                cb = Some(conn);
            }
        }
        while p.a.poll_event().is_some() {}
        if cb.is_some() {
            break;
        }
    }
    (ca, cb.expect("accepted"))
}

fn bulk(mib: u64) {
    let mut p = Pair::new();
    let (ca, _cb) = connect(&mut p, 40000);
    let total = mib << 20;
    let chunk = vec![0x5au8; 65536];
    let mut buf = vec![0u8; 65536];
    let (mut sent, mut got) = (0u64, 0u64);
    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    let segs0 = p.ab.segments + p.ba.segments;
    while got < total {
        while sent < total {
            let want = (total - sent).min(chunk.len() as u64) as usize;
            match p.a.send(p.now, ca, &chunk[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => sent += n as u64,
            }
        }
        p.round();
        let now = p.now;
        drain_reads(&mut p.b, now, &mut buf, &mut got);
        while p.a.poll_event().is_some() {}
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
    let data = p.ab.segments;
    let acks = p.ba.segments;
    let segs = data + acks - segs0;
    println!(
        "bulk {mib} MiB: {data} data segments, {acks} ACKs ({:.2} data per ACK), {allocs} allocations ({:.3} per segment), virtual {} ms",
        data as f64 / acks.max(1) as f64,
        allocs as f64 / segs.max(1) as f64,
        p.now.as_micros() / 1000
    );
}

fn rr(n: u64) {
    let mut p = Pair::new();
    let (ca, cb) = connect(&mut p, 40001);
    let req = [7u8; 64];
    let mut buf = vec![0u8; 65536];
    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    let segs0 = p.ab.segments + p.ba.segments;
    for _ in 0..n {
        p.a.send(p.now, ca, &req).unwrap();
        let mut got_b = 0;
        while got_b < 64 {
            p.round();
            let now = p.now;
            drain_reads(&mut p.b, now, &mut buf, &mut got_b);
        }
        p.b.send(p.now, cb, &req).unwrap();
        let mut got_a = 0;
        while got_a < 64 {
            p.round();
            let now = p.now;
            drain_reads(&mut p.a, now, &mut buf, &mut got_a);
        }
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
    let segs = p.ab.segments + p.ba.segments - segs0;
    println!(
        "rr {n}: {segs} segments ({:.2} per transaction), {allocs} allocations ({:.3} per transaction)",
        segs as f64 / n as f64,
        allocs as f64 / n as f64
    );
}

fn crr(n: u64) {
    let mut p = Pair::new();
    let req = [7u8; 64];
    let mut buf = vec![0u8; 65536];
    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    let segs0 = p.ab.segments + p.ba.segments;
    for i in 0..n {
        let (ca, cb) = connect(&mut p, 20000 + (i % 40000) as u16);
        p.a.send(p.now, ca, &req).unwrap();
        let mut got = 0;
        while got < 64 {
            p.round();
            let now = p.now;
            drain_reads(&mut p.b, now, &mut buf, &mut got);
        }
        p.b.send(p.now, cb, &req).unwrap();
        p.b.close(p.now, cb).unwrap();
        let mut got = 0;
        for _ in 0..10 {
            p.round();
            let now = p.now;
            drain_reads(&mut p.a, now, &mut buf, &mut got);
            if got >= 64 {
                break;
            }
        }
        p.a.close(p.now, ca).unwrap();
        for _ in 0..4 {
            p.round();
            while p.a.poll_event().is_some() {}
            while p.b.poll_event().is_some() {}
        }
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
    let segs = p.ab.segments + p.ba.segments - segs0;
    println!(
        "crr {n}: {segs} segments ({:.2} per connection), {allocs} allocations ({:.1} per connection)",
        segs as f64 / n as f64,
        allocs as f64 / n as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("bulk");
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    match what {
        "bulk" => bulk(n),
        "rr" => rr(n),
        "crr" => crr(n),
        _ => eprintln!("usage: corebench bulk|rr|crr N"),
    }
}
