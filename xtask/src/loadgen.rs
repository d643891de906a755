//! `cargo xtask bench-load` (hidden): the request/response load generator
//! of `cargo xtask bench`, and `bench-server --epoll`, the kernel's side of
//! the same workloads.
//!
//! Both are one thread on one epoll instance with nonblocking kernel
//! sockets, so that a benchmark pinned to one CPU per side compares one
//! server loop against another and the client spends as little as it can
//! per transaction:
//!
//! - `rr`: `--conns` connections, each with one request of `--size` bytes
//!   outstanding at a time; every response is compared with its request
//!   (each request's bytes are derived from the connection and sequence
//!   number). Reports transactions/s and the latency percentiles of every
//!   transaction (each duration is stored, then sorted: exact percentiles).
//! - `crr`: `--conns` workers, each connecting, sending a request, reading
//!   the response, closing, and starting over. The client closes first, as
//!   real clients do, so TIME-WAIT stays on the client's side (where the
//!   benchmark sets `tcp_tw_reuse=1` and a wide `ip_local_port_range`),
//!   and the server does the normal passive close (LAST-ACK).
//! - `idle`: `--conns` connections from explicit source addresses and
//!   ports (`--src`, `--src-ports`), opened with at most `--max-pending`
//!   handshakes in flight; prints `OPENED {json}`, waits for a line on
//!   stdin, then runs `rr` over the first `--rr-conns` of them for
//!   `--secs`, prints `RESULT {json}` and resets every connection (SO_LINGER
//!   0: no TIME-WAIT on the fixed source ports, so the next run can reuse
//!   them).
//!
//! Every result is one line, `RESULT {json}`, on stdout; any failure (a
//! refused or reset connection, a wrong byte) ends the process with an
//! error: a load generator that hides errors measures the wrong thing.

use std::collections::HashMap;
use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// What `bench-load` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMode {
    /// Request/response over persistent connections.
    Rr,
    /// Connect, request, response, close.
    Crr,
    /// Open many idle connections, then request/response over some.
    Idle,
}

/// Options of `cargo xtask bench-load`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The server's address.
    #[arg(long)]
    pub addr: Ipv4Addr,
    /// The server's (echo) port.
    #[arg(long, default_value_t = 7)]
    pub port: u16,
    #[arg(long, value_enum)]
    pub mode: LoadMode,
    /// Connections (rr, idle) or concurrent workers (crr).
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Request and response size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds of measured load (rr, crr; idle: of the rr phase).
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// idle: source addresses, used one after the other; crr: source
    /// addresses taken in turn, each with its own ephemeral ports, so the
    /// client's TIME-WAITs do not cap the rate (repeatable).
    #[arg(long)]
    pub src: Vec<Ipv4Addr>,
    /// idle: source ports per address, FIRST-LAST.
    #[arg(long, default_value = "10000-60999")]
    pub src_ports: String,
    /// idle: connections of the rr phase (the first ones opened).
    #[arg(long, default_value_t = 10_000)]
    pub rr_conns: usize,
    /// idle: the index of this process's first connection among all the
    /// benchmark's (several processes share the source ports).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// idle: handshakes in flight at most while opening.
    #[arg(long, default_value_t = 256)]
    pub max_pending: usize,
}

/// The largest request: it must fit a socket buffer at once.
const MAX_SIZE: usize = 64 * 1024;
/// A connection that completes nothing for this long fails the run.
const STALL: Duration = Duration::from_secs(20);
/// How long opening the idle connections may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);

pub fn load(args: LoadArgs) -> Result<()> {
    if !(1..=MAX_SIZE).contains(&args.size) {
        bail!("--size must be between 1 and {MAX_SIZE}");
    }
    if args.conns == 0 {
        bail!("--conns must be at least 1");
    }
    let target = SocketAddrV4::new(args.addr, args.port);
    let secs = Duration::from_secs_f64(args.secs.max(0.01));
    raise_nofile(args.conns as u64 + 1024)?;
    let result = match args.mode {
        LoadMode::Rr => {
            let conns = open_all(target, args.conns, None, 256)?;
            rr(conns, args.size, secs)?
        }
        LoadMode::Crr => crr(target, &args.src, args.conns, args.size, secs)?,
        LoadMode::Idle => {
            if args.src.is_empty() {
                bail!("idle needs at least one --src address");
            }
            let (lo, hi) = args
                .src_ports
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
                .filter(|(a, b)| a <= b && *a > 0)
                .ok_or_else(|| anyhow!("--src-ports must be FIRST-LAST"))?;
            let per_addr = (hi - lo) as usize + 1;
            if args.first + args.conns > per_addr * args.src.len() {
                bail!(
                    "{} connections need more than {} source addresses × {per_addr} ports",
                    args.conns,
                    args.src.len()
                );
            }
            let start = Instant::now();
            let src = Sources {
                addrs: &args.src,
                first_port: lo,
                per_addr,
                first: args.first,
            };
            let mut conns = open_all(target, args.conns, Some(&src), args.max_pending)?;
            let open_secs = start.elapsed().as_secs_f64();
            // Nothing may have been closed by the server in the meantime.
            check_idle(&conns)?;
            println!(
                "OPENED {}",
                json!({ "conns": conns.len(), "secs": open_secs,
                        "conns_per_sec": conns.len() as f64 / open_secs })
            );
            std::io::stdout().flush()?;
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("waiting for the go line on stdin")?;
            check_idle(&conns)?;
            let rest = conns.split_off(args.rr_conns.min(conns.len()));
            let mut r = if conns.is_empty() {
                json!({ "mode": "idle", "transactions": 0 })
            } else {
                rr(conns, args.size, secs)?
            };
            r["idle_conns"] = json!(args.conns);
            r["open_secs"] = json!(open_secs);
            println!("RESULT {r}");
            std::io::stdout().flush()?;
            // The others stay open until every process is done.
            while std::io::stdin().lock().read_line(&mut line)? > 0 {}
            for c in &rest {
                reset_on_close(c);
            }
            return Ok(());
        }
    };
    println!("RESULT {result}");
    std::io::stdout().flush()?;
    Ok(())
}

/// Raises RLIMIT_NOFILE (soft and, as root, hard) to at least `want`.
pub fn raise_nofile(want: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(());
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE, which a container
    // may not grant: then the soft limit goes up to the hard one, and a
    // workload that needs more uses several processes.
    let new = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max.max(want),
    };
    // Safety: as below.
    if want > lim.rlim_max && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
        return Ok(());
    }
    let new = libc::rlimit {
        rlim_cur: want.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    if want > lim.rlim_max {
        // Safety: setrlimit reads the struct it is given.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) };
        bail!(
            "{want} open files needed, the hard limit is {} (no CAP_SYS_RESOURCE?)",
            lim.rlim_max
        );
    }
    // Safety: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        bail!(
            "raising the open-file limit to {want}: {} (fs.nr_open?)",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

// ---- epoll ----

/// An epoll instance (level-triggered).
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new() -> Result<Epoll> {
        // Safety: plain syscall; the fd is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        Ok(Epoll {
            // Safety: fd is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // Safety: ev lives across the call; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Waits up to `timeout_ms`; the ready (token, events) pairs.
    pub fn wait(&mut self, timeout_ms: i32) -> std::io::Result<Vec<(u64, u32)>> {
        // Safety: the buffer holds `len` events and outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(e);
        }
        Ok(self.events[..n as usize]
            .iter()
            .map(|e| (e.u64, e.events))
            .collect())
    }
}

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const ERR: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

// ---- sockets ----

/// Where the idle connections come from.
struct Sources<'a> {
    addrs: &'a [Ipv4Addr],
    first_port: u16,
    per_addr: usize,
    first: usize,
}

impl Sources<'_> {
    fn nth(&self, i: usize) -> SocketAddrV4 {
        let i = self.first + i;
        SocketAddrV4::new(
            self.addrs[i / self.per_addr],
            self.first_port + (i % self.per_addr) as u16,
        )
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> Result<()> {
    // Safety: passes a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("setsockopt: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A nonblocking connect to `to` (from `from` when given); in progress.
fn start_connect(to: SocketAddrV4, from: Option<SocketAddrV4>) -> Result<TcpStream> {
    start_connect_with(to, from, false)
}

fn start_connect_with(
    to: SocketAddrV4,
    from: Option<SocketAddrV4>,
    port_at_connect: bool,
) -> Result<TcpStream> {
    let s = tcp_socket(libc::SOCK_NONBLOCK)?;
    let fd = s.as_raw_fd();
    s.set_nodelay(true)?;
    if let Some(from) = from {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        if port_at_connect {
            setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        }
        let sa = sockaddr(from);
        // Safety: sa is a valid sockaddr_in of the given size.
        let r = unsafe {
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r != 0 {
            bail!("binding {from}: {}", std::io::Error::last_os_error());
        }
    }
    if let Err(e) = connect_fd(&s, to) {
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            bail!("connecting to {to}: {e}");
        }
    }
    Ok(s)
}

/// A new, unconnected IPv4 TCP socket (`extra`: more SOCK_* flags), for
/// options that must be set before bind or connect.
pub(crate) fn tcp_socket(extra: libc::c_int) -> Result<TcpStream> {
    // Safety: plain syscall; the fd is owned right after.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | extra,
            0,
        )
    };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // Safety: a fresh descriptor nobody else owns.
    Ok(TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// connect(2) on a socket made by hand (for options that must come before
/// the SYN); nonblocking sockets answer EINPROGRESS.
pub(crate) fn connect_fd(s: &TcpStream, to: SocketAddrV4) -> std::io::Result<()> {
    let sa = sockaddr(to);
    // Safety: sa is a valid sockaddr_in of the given size.
    let r = unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A nonblocking connect from `from` with the port left to the kernel,
/// chosen at connect time for the 4-tuple (IP_BIND_ADDRESS_NO_PORT), so
/// TIME-WAIT reuse works per destination as for an unbound socket.
fn start_connect_from_address(to: SocketAddrV4, from: Ipv4Addr) -> Result<TcpStream> {
    start_connect_with(to, Some(SocketAddrV4::new(from, 0)), true)
}

/// The result of a nonblocking connect once the socket is writable.
fn connect_result(s: &TcpStream) -> std::io::Result<()> {
    match s.take_error()? {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// SO_LINGER 0: close sends a reset and leaves no TIME-WAIT.
fn reset_on_close(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // Safety: passes a pointer to a live linger and its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Opens `n` connections, at most `max_pending` handshakes at a time.
fn open_all(
    to: SocketAddrV4,
    n: usize,
    src: Option<&Sources>,
    max_pending: usize,
) -> Result<Vec<TcpStream>> {
    let mut ep = Epoll::new()?;
    let mut pending: HashMap<u64, TcpStream> = HashMap::new();
    let mut done: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut next = 0usize;
    let mut opened = 0usize;
    let start = Instant::now();
    while opened < n {
        while next < n && pending.len() < max_pending.max(1) {
            let s = start_connect(to, src.map(|s| s.nth(next)))
                .with_context(|| format!("connection {} of {n} ({opened} open)", next + 1))?;
            ep.add(s.as_raw_fd(), OUT, next as u64)?;
            pending.insert(next as u64, s);
            next += 1;
        }
        if start.elapsed() > OPEN_TIMEOUT {
            bail!(
                "{opened} of {n} connections open after {} s, {} handshakes still pending",
                OPEN_TIMEOUT.as_secs(),
                pending.len()
            );
        }
        for (token, _) in ep.wait(100)? {
            let Some(s) = pending.remove(&token) else {
                continue;
            };
            connect_result(&s).with_context(|| {
                format!("connection {} of {n} ({opened} open before it)", token + 1)
            })?;
            ep.modify(s.as_raw_fd(), 0, token)?;
            done[token as usize] = Some(s);
            opened += 1;
        }
    }
    // The epoll instance goes; the sockets stay (a closed epoll drops its
    // registrations).
    Ok(done.into_iter().flatten().collect())
}

/// Fails if any idle connection has been closed or reset by the server.
fn check_idle(conns: &[TcpStream]) -> Result<()> {
    let mut buf = [0u8; 1];
    for (i, s) in conns.iter().enumerate() {
        match (&*s).read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(0) => bail!("idle connection {} was closed by the server", i + 1),
            Ok(_) => bail!("idle connection {} received data", i + 1),
            Err(e) => bail!("idle connection {}: {e}", i + 1),
        }
    }
    Ok(())
}

// ---- transactions ----

/// Fills `buf` with the request bytes of transaction `seq` of `conn`.
fn fill_request(buf: &mut [u8], conn: usize, seq: u64) {
    let mut x = (conn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq.wrapping_add(1);
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// One connection's transaction in progress.
struct Txn {
    req: Vec<u8>,
    resp: Vec<u8>,
    written: usize,
    got: usize,
    seq: u64,
    sent_at: Instant,
}

impl Txn {
    fn new(size: usize) -> Txn {
        Txn {
            req: vec![0; size],
            resp: vec![0; size],
            written: 0,
            got: 0,
            seq: 0,
            sent_at: Instant::now(),
        }
    }

    fn begin(&mut self, conn: usize, now: Instant) {
        fill_request(&mut self.req, conn, self.seq);
        self.written = 0;
        self.got = 0;
        self.sent_at = now;
    }

    /// Writes what it can; true when all of the request is out.
    fn write(&mut self, s: &TcpStream) -> Result<bool> {
        while self.written < self.req.len() {
            match (&*s).write(&self.req[self.written..]) {
                Ok(0) => bail!("write returned 0"),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("sending a request"),
            }
        }
        Ok(true)
    }

    /// Reads what is there; true once the whole response is in and equal
    /// to the request.
    fn read(&mut self, s: &TcpStream) -> Result<bool> {
        while self.got < self.resp.len() {
            match (&*s).read(&mut self.resp[self.got..]) {
                Ok(0) => bail!(
                    "the server closed the connection after {} of {} response bytes",
                    self.got,
                    self.resp.len()
                ),
                Ok(n) => self.got += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading a response"),
            }
        }
        if self.resp != self.req {
            let at = self
                .resp
                .iter()
                .zip(&self.req)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            bail!(
                "the response of transaction {} differs from its request at byte {at}",
                self.seq
            );
        }
        self.seq += 1;
        Ok(true)
    }
}

/// Latency samples, in ns.
#[derive(Default)]
struct Latencies(Vec<u32>);

impl Latencies {
    fn record(&mut self, d: Duration) {
        self.0.push(d.as_nanos().min(u32::MAX as u128) as u32);
    }

    /// p50, p99, p99.9 and max in µs.
    fn report(mut self) -> Value {
        self.0.sort_unstable();
        let v = &self.0;
        let pct = |q: f64| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            Some(v[rank - 1] as f64 / 1e3)
        };
        let mean = (!v.is_empty())
            .then(|| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64 / 1e3);
        json!({
            "mean_us": mean,
            "p50_us": pct(0.50),
            "p90_us": pct(0.90),
            "p99_us": pct(0.99),
            "p999_us": pct(0.999),
            "max_us": pct(1.0),
            "samples": v.len(),
        })
    }
}

/// Request/response over `conns` (connected) for `secs`.
fn rr(conns: Vec<TcpStream>, size: usize, secs: Duration) -> Result<Value> {
    let mut ep = Epoll::new()?;
    let mut txns: Vec<Txn> = (0..conns.len()).map(|_| Txn::new(size)).collect();
    let mut lat = Latencies::default();
    let start = Instant::now();
    let deadline = start + secs;
    for (i, s) in conns.iter().enumerate() {
        txns[i].begin(i, start);
        let events = if txns[i].write(s)? { IN } else { IN | OUT };
        ep.add(s.as_raw_fd(), events, i as u64)?;
    }
    let mut done = 0u64;
    let mut last_progress = start;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now - last_progress > STALL {
            bail!("no transaction completed for {} s", STALL.as_secs());
        }
        let timeout = (deadline - now).as_millis().clamp(1, 100) as i32;
        for (token, ev) in ep.wait(timeout)? {
            let i = token as usize;
            let (s, t) = (&conns[i], &mut txns[i]);
            if ev & OUT != 0 && t.write(s)? {
                ep.modify(s.as_raw_fd(), IN, token)?;
            }
            if ev & (IN | ERR) != 0 && t.read(s)? {
                let now = Instant::now();
                if now >= deadline {
                    continue;
                }
                lat.record(now - t.sent_at);
                done += 1;
                last_progress = now;
                t.begin(i, now);
                if !t.write(s)? {
                    ep.modify(s.as_raw_fd(), IN | OUT, token)?;
                }
            }
        }
    }
    let elapsed = secs.as_secs_f64();
    // Close before sorting the latencies: a response left unacknowledged
    // while the client sorts would draw a retransmission from the server.
    let n = conns.len();
    for s in &conns {
        reset_on_close(s);
    }
    drop(conns);
    Ok(json!({
        "mode": "rr",
        "conns": n,
        "size": size,
        "secs": elapsed,
        "transactions": done,
        "tps": done as f64 / elapsed,
        "bytes_echoed": done * size as u64,
        "latency": lat.report(),
    }))
}

/// Connect, request, response, close, by `workers` concurrent workers.
fn crr(
    to: SocketAddrV4,
    sources: &[Ipv4Addr],
    workers: usize,
    size: usize,
    secs: Duration,
) -> Result<Value> {
    let mut ep = Epoll::new()?;
    struct Worker {
        s: Option<TcpStream>,
        connected: bool,
        txn: Txn,
        started: Instant,
    }
    let start = Instant::now();
    let deadline = start + secs;
    let mut w: Vec<Worker> = (0..workers)
        .map(|_| Worker {
            s: None,
            connected: false,
            txn: Txn::new(size),
            started: start,
        })
        .collect();
    // The client closes first and keeps the TIME-WAIT: with one source
    // address, 64,512 ports reused after tcp_tw_reuse's ~1–2 s cap the
    // rate near 32,000 connections/s whatever the server. Each source
    // address has ports of its own (picked at connect time).
    let next_source = std::cell::Cell::new(0usize);
    let connect = |ep: &Epoll, w: &mut Worker, token: usize| -> Result<()> {
        let s = if sources.is_empty() {
            start_connect(to, None)?
        } else {
            let i = next_source.get();
            next_source.set((i + 1) % sources.len());
            start_connect_from_address(to, sources[i])?
        };
        ep.add(s.as_raw_fd(), OUT, token as u64)?;
        w.s = Some(s);
        w.connected = false;
        w.started = Instant::now();
        Ok(())
    };
    for (i, wk) in w.iter_mut().enumerate() {
        connect(&ep, wk, i)?;
    }
    let mut lat = Latencies::default();
    let mut done = 0u64;
    let mut last_progress = start;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now - last_progress > STALL {
            bail!("no connection completed for {} s", STALL.as_secs());
        }
        let timeout = (deadline - now).as_millis().clamp(1, 100) as i32;
        for (token, ev) in ep.wait(timeout)? {
            let i = token as usize;
            let wk = &mut w[i];
            let Some(s) = wk.s.as_ref() else { continue };
            if !wk.connected {
                if ev & (OUT | ERR) == 0 {
                    continue;
                }
                connect_result(s).with_context(|| format!("connect after {done} connections"))?;
                wk.connected = true;
                wk.txn.begin(i, Instant::now());
                let events = if wk.txn.write(s)? { IN } else { IN | OUT };
                ep.modify(s.as_raw_fd(), events, token)?;
                continue;
            }
            if ev & OUT != 0 && wk.txn.write(s)? {
                ep.modify(s.as_raw_fd(), IN, token)?;
            }
            if ev & (IN | ERR) != 0 && wk.txn.read(s)? {
                let now = Instant::now();
                // close(): our FIN first; TIME-WAIT stays here.
                wk.s = None;
                if now >= deadline {
                    continue;
                }
                lat.record(now - wk.started);
                done += 1;
                last_progress = now;
                connect(&ep, wk, i)?;
            }
        }
    }
    let elapsed = secs.as_secs_f64();
    // As in rr: closed before the latencies are sorted.
    drop(w);
    Ok(json!({
        "mode": "crr",
        "workers": workers,
        "size": size,
        "secs": elapsed,
        "transactions": done,
        "cps": done as f64 / elapsed,
        "bytes_echoed": done * size as u64,
        "latency": lat.report(),
    }))
}

// ---- the kernel's echo server (`bench-server --epoll`) ----

/// Echo on `addr:port` on the kernel's TCP: one thread, one epoll
/// instance, nonblocking sockets, until killed. Per connection it keeps
/// only the socket (and bytes it could not write yet, if any), so the
/// process's own memory per idle connection is a few bytes.
pub fn epoll_echo_server(addr: Ipv4Addr, port: u16, procs: usize, worker: bool) -> Result<()> {
    if worker {
        // Go when the first process goes (it is the one the benchmark
        // stops).
        // Safety: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    }
    // As many connections as the limit allows (see raise_nofile).
    let _ = raise_nofile(1 << 20);
    let l = listen_socket(SocketAddrV4::new(addr, port), procs > 1 || worker)
        .with_context(|| format!("listening on {addr}:{port}"))?;
    // More connections than one process may have files: more processes,
    // one listener each on the same port (SO_REUSEPORT spreads the
    // connections over them), all on the CPU this one was given.
    let mut pids = vec![std::process::id()];
    let mut children = Vec::new();
    for _ in 1..procs.max(1) {
        let mut c = std::process::Command::new(std::env::current_exe()?)
            .args([
                "bench-server",
                "--epoll",
                "--worker",
                "--addr",
                &addr.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting a worker process")?;
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.take().context("no stdout pipe")?).read_line(&mut line)?;
        if !line.starts_with("READY") {
            bail!("a worker process did not start: {line:?}");
        }
        pids.push(c.id());
        children.push(c);
    }
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    l.set_nonblocking(true)?;
    let mut ep = Epoll::new()?;
    const LISTENER: u64 = u64::MAX;
    ep.add(l.as_raw_fd(), IN, LISTENER)?;
    println!(
        "READY addr={addr} ports={port} (epoll echo) pids={}",
        pids.join(",")
    );
    std::io::stdout().flush()?;
    let mut conns: HashMap<u64, TcpStream> = HashMap::new();
    let mut unsent: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        for (token, ev) in ep.wait(-1)? {
            if token == LISTENER {
                loop {
                    match l.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(true)?;
                            s.set_nodelay(true)?;
                            let t = s.as_raw_fd() as u64;
                            ep.add(s.as_raw_fd(), IN, t)?;
                            conns.insert(t, s);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        // ECONNABORTED and the like: that one is gone.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let Some(s) = conns.get(&token) else { continue };
            let close = match serve_ready(s, ev, &mut buf, &mut unsent, token, &ep) {
                Ok(open) => !open,
                Err(_) => true,
            };
            if close {
                unsent.remove(&token);
                // Dropping closes the fd, which leaves the epoll set.
                conns.remove(&token);
            }
        }
    }
}

/// A listening socket with a large backlog (the kernel caps it at
/// net.core.somaxconn), with SO_REUSEPORT when asked.
fn listen_socket(addr: SocketAddrV4, reuseport: bool) -> Result<TcpListener> {
    // Safety: plain syscall; the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // Safety: a fresh descriptor nobody else owns.
    let l = TcpListener::from(unsafe { OwnedFd::from_raw_fd(fd) });
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuseport {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let sa = sockaddr(addr);
    // Safety: sa is a valid sockaddr_in of the given size.
    let r = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("bind: {}", std::io::Error::last_os_error());
    }
    // Safety: plain syscall on a socket we own.
    if unsafe { libc::listen(fd, 65535) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    Ok(l)
}

/// Handles readiness on one echo connection; false when it is to be closed.
fn serve_ready(
    s: &TcpStream,
    ev: u32,
    buf: &mut [u8],
    unsent: &mut HashMap<u64, Vec<u8>>,
    token: u64,
    ep: &Epoll,
) -> std::io::Result<bool> {
    let fd = s.as_raw_fd();
    if let Some(rest) = unsent.get_mut(&token) {
        // An error or hang-up shows in the write below, which closes.
        if ev & (OUT | ERR) == 0 {
            return Ok(true);
        }
        match (&*s).write(rest) {
            Ok(n) => {
                rest.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        }
        if !rest.is_empty() {
            return Ok(true);
        }
        unsent.remove(&token);
        ep.modify(fd, IN, token)?;
    }
    loop {
        let n = match (&*s).read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut w = 0;
        while w < n {
            match (&*s).write(&buf[w..n]) {
                Ok(k) => w += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // Stop reading until the peer takes what is written.
                    unsent.insert(token, buf[w..n].to_vec());
                    ep.modify(fd, OUT, token)?;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n < buf.len() {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_differ_by_connection_and_sequence() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        fill_request(&mut a, 0, 0);
        fill_request(&mut b, 0, 1);
        assert_ne!(a, b);
        fill_request(&mut b, 1, 0);
        assert_ne!(a, b);
        let mut c = [0u8; 61];
        fill_request(&mut c, 0, 0);
        assert_eq!(&c[..], &a[..61]);
    }

    #[test]
    fn percentiles_are_ranks() {
        let mut l = Latencies::default();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let r = l.report();
        assert_eq!(r["p50_us"], 500.0);
        assert_eq!(r["p90_us"], 900.0);
        assert_eq!(r["mean_us"], 500.5);
        assert_eq!(r["p99_us"], 990.0);
        assert_eq!(r["p999_us"], 999.0);
        assert_eq!(r["max_us"], 1000.0);
        assert_eq!(Latencies::default().report()["p50_us"], Value::Null);
    }

    #[test]
    fn sources_walk_ports_then_addresses() {
        let addrs = [
            Ipv4Addr::new(198, 18, 200, 10),
            Ipv4Addr::new(198, 18, 200, 11),
        ];
        let s = Sources {
            addrs: &addrs,
            first_port: 10000,
            per_addr: 3,
            first: 0,
        };
        assert_eq!(s.nth(0), "198.18.200.10:10000".parse().unwrap());
        assert_eq!(s.nth(2), "198.18.200.10:10002".parse().unwrap());
        assert_eq!(s.nth(3), "198.18.200.11:10000".parse().unwrap());
    }

    /// rr, crr and the epoll echo server against each other on loopback.
    #[test]
    fn rr_and_crr_against_the_epoll_server() {
        // Find a free port, then let the server take it.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::thread::spawn(move || epoll_echo_server(Ipv4Addr::LOCALHOST, port, 1, false));
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let start = Instant::now();
        while TcpStream::connect(to).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "server never came up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let conns = open_all(to, 4, None, 2).unwrap();
        let r = rr(conns, 1000, Duration::from_millis(200)).unwrap();
        assert!(r["transactions"].as_u64().unwrap() > 0, "{r}");
        assert!(r["latency"]["p50_us"].as_f64().unwrap() > 0.0, "{r}");
        let r = crr(to, &[], 2, 64, Duration::from_millis(200)).unwrap();
        assert!(r["transactions"].as_u64().unwrap() > 0, "{r}");
        let two = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)];
        let r = crr(to, &two, 2, 64, Duration::from_millis(200)).unwrap();
        assert!(r["transactions"].as_u64().unwrap() > 0, "{r}");
    }

    #[test]
    fn connect_from_an_address_leaves_the_port_to_connect() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let from = Ipv4Addr::new(127, 0, 0, 2);
        let s = start_connect_from_address(to, from).unwrap();
        let (_peer_side, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(from));
        assert_ne!(peer.port(), 0);
        let local = s.local_addr().unwrap();
        assert_eq!(local.ip(), std::net::IpAddr::V4(from));
        assert_eq!(local.port(), peer.port());
    }
}
