//! `tcp-user bench`: a load generator that runs over the endpoint's own
//! stack (active opens through [`crate::api`]), against any server that
//! speaks the classic services: echo (RFC 862), discard (RFC 863) and
//! chargen (RFC 864) — a Linux host's, or another `tcp-user run`.
//!
//! - `bulk`: N streams for the test's duration, into discard (or, with
//!   `reverse`, out of chargen, whose RFC 864 lines are checked as they
//!   arrive); goodput in Mbit/s.
//! - `rr`: request/response over M concurrent connections to echo: each
//!   writes a request, waits for the same bytes back (checked), and goes
//!   again; transactions/s and latency percentiles.
//! - `crr`: connection rate: W workers each connect, send a request, read
//!   the echo, close, and go again; connections/s and latency percentiles.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::{Endpoint, EndpointConfig};
/// The RFC 864 stream the `bulk --reverse` mode checks (the chargen
/// service's own generator).
pub use crate::services::Chargen;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bulk throughput over N streams.
    Bulk,
    /// Request/response transactions over M connections.
    Rr,
    /// Connect, request, response, close, again.
    Crr,
}

/// A benchmark run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub endpoint: EndpointConfig,
    pub server: Ipv4Addr,
    /// The server's port [default: discard 9, chargen 19 with `reverse`,
    /// echo 7 for rr and crr].
    pub port: Option<u16>,
    pub mode: Mode,
    /// Streams (bulk), connections (rr) or workers (crr).
    pub parallel: usize,
    /// Bulk: the server sends (chargen) instead of us (discard).
    pub reverse: bool,
    /// Request and response size (rr, crr), bytes.
    pub size: usize,
    pub duration: Duration,
}

/// Latency percentiles, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// The outcome of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub server: String,
    pub parallel: usize,
    pub reverse: bool,
    pub size: usize,
    pub seconds: f64,
    /// Payload bytes moved (bulk: sent or received and checked).
    pub bytes: u64,
    pub mbit_per_s: f64,
    /// Transactions (rr) or connections (crr) completed.
    pub transactions: u64,
    pub per_second: f64,
    pub latency: Option<Latency>,
    /// Connections or transactions that failed (each also printed).
    pub errors: u64,
}

impl Report {
    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = format!(
            "mode {:?}  server {}  parallel {}  {:.2} s\n",
            self.mode, self.server, self.parallel, self.seconds
        );
        match self.mode {
            Mode::Bulk => {
                out += &format!(
                    "{:>14} {:>12} {:>8}\n{:>14} {:>12.1} {:>8}\n",
                    "bytes", "Mbit/s", "errors", self.bytes, self.mbit_per_s, self.errors
                )
            }
            Mode::Rr | Mode::Crr => {
                let l = self.latency.unwrap_or_default();
                out += &format!(
                    "{:>12} {:>12} {:>10} {:>10} {:>10} {:>8}\n{:>12} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>8}\n",
                    if self.mode == Mode::Rr { "transactions" } else { "connections" },
                    "per second",
                    "p50 µs",
                    "p99 µs",
                    "p99.9 µs",
                    "errors",
                    self.transactions,
                    self.per_second,
                    l.p50_us,
                    l.p99_us,
                    l.p999_us,
                    self.errors
                );
            }
        }
        out
    }
}

/// Counters the workers update and the progress line reads.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    transactions: AtomicU64,
    errors: AtomicU64,
}

/// The percentile `q` (0..=1) of sorted samples, nearest rank.
fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

fn latency(mut samples: Vec<u32>) -> Option<Latency> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    Some(Latency {
        p50_us: percentile(&samples, 0.50),
        p99_us: percentile(&samples, 0.99),
        p999_us: percentile(&samples, 0.999),
    })
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Runs the benchmark; `progress` is called about once a second with the
/// numbers so far (elapsed, bytes, transactions, errors).
pub async fn run(
    cfg: BenchConfig,
    mut progress: impl FnMut(Duration, u64, u64, u64),
) -> io::Result<Report> {
    if cfg.parallel == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "parallel must be at least 1",
        ));
    }
    if cfg.mode != Mode::Bulk && cfg.size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "size must be at least 1",
        ));
    }
    let port = cfg.port.unwrap_or(match (cfg.mode, cfg.reverse) {
        (Mode::Bulk, false) => 9,
        (Mode::Bulk, true) => 19,
        _ => 7,
    });
    let server = SocketAddrV4::new(cfg.server, port);
    let endpoint = Endpoint::bind(cfg.endpoint.clone()).await?;
    let counters = Arc::new(Progress::default());
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..cfg.parallel {
        let (ep, c) = (endpoint.clone(), Arc::clone(&counters));
        let size = cfg.size;
        match (cfg.mode, cfg.reverse) {
            (Mode::Bulk, false) => tasks.spawn(bulk_send(ep, server, deadline, c)),
            (Mode::Bulk, true) => tasks.spawn(bulk_receive(ep, server, deadline, c)),
            (Mode::Rr, _) => tasks.spawn(request_response(ep, server, size, deadline, c)),
            (Mode::Crr, _) => tasks.spawn(connect_request_response(ep, server, size, deadline, c)),
        };
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut samples = Vec::new();
    while !tasks.is_empty() {
        tokio::select! {
            Some(done) = tasks.join_next() => match done {
                Ok(Ok(mut s)) => samples.append(&mut s),
                Ok(Err(e)) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("tcp-user bench: {:?}: {e}", e.kind());
                }
                Err(e) => return Err(io::Error::other(e)),
            },
            _ = tick.tick() => progress(
                start.elapsed(),
                counters.bytes.load(Ordering::Relaxed),
                counters.transactions.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed),
            ),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let bytes = counters.bytes.load(Ordering::Relaxed);
    let transactions = counters.transactions.load(Ordering::Relaxed);
    Ok(Report {
        mode: cfg.mode,
        server: server.to_string(),
        parallel: cfg.parallel,
        reverse: cfg.reverse,
        size: cfg.size,
        seconds,
        bytes,
        mbit_per_s: bytes as f64 * 8.0 / seconds / 1e6,
        transactions,
        per_second: transactions as f64 / seconds,
        latency: latency(samples),
        errors: counters.errors.load(Ordering::Relaxed),
    })
}

/// Bulk into discard: write until the deadline, then half-close and wait
/// for the server's close, so that every byte counted was delivered.
async fn bulk_send(
    ep: Endpoint,
    server: SocketAddrV4,
    deadline: Instant,
    c: Arc<Progress>,
) -> io::Result<Vec<u32>> {
    let mut s = ep.connect(server).await?;
    let mut block = vec![0u8; 64 * 1024];
    Chargen::new().fill(&mut block);
    while Instant::now() < deadline {
        let n = s.write(&block).await?;
        c.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    s.shutdown().await?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    Ok(Vec::new())
}

/// Bulk out of chargen: read until the deadline, checking the RFC 864
/// pattern, then close.
async fn bulk_receive(
    ep: Endpoint,
    server: SocketAddrV4,
    deadline: Instant,
    c: Arc<Progress>,
) -> io::Result<Vec<u32>> {
    let mut s = ep.connect(server).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pattern = Chargen::new();
    let mut total = 0u64;
    while Instant::now() < deadline {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(invalid(format!("chargen closed after {total} bytes")));
        }
        pattern
            .check(&buf[..n])
            .map_err(|i| invalid(format!("chargen stream wrong at byte {}", total + i as u64)))?;
        total += n as u64;
        c.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    // Unread data makes this a reset, as with a kernel socket: chargen
    // never stops on its own.
    s.abort();
    Ok(Vec::new())
}

/// One request/response exchange on an open connection; its latency.
async fn transaction(
    s: &mut crate::api::TcpStream,
    req: &[u8],
    resp: &mut [u8],
) -> io::Result<u32> {
    let t = Instant::now();
    s.write_all(req).await?;
    s.read_exact(resp).await?;
    if resp != req {
        return Err(invalid("the echo differs from the request".into()));
    }
    Ok(t.elapsed().as_micros().min(u32::MAX as u128) as u32)
}

async fn request_response(
    ep: Endpoint,
    server: SocketAddrV4,
    size: usize,
    deadline: Instant,
    c: Arc<Progress>,
) -> io::Result<Vec<u32>> {
    let mut s = ep.connect(server).await?;
    s.set_nodelay(true)?;
    let mut req = vec![0u8; size];
    let mut resp = vec![0u8; size];
    let mut samples = Vec::new();
    let mut k = 0u8;
    while Instant::now() < deadline {
        // A different request each time: a stale echo cannot pass.
        k = k.wrapping_add(1);
        req.fill(k);
        samples.push(transaction(&mut s, &req, &mut resp).await?);
        c.transactions.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(2 * size as u64, Ordering::Relaxed);
    }
    s.shutdown().await?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    Ok(samples)
}

async fn connect_request_response(
    ep: Endpoint,
    server: SocketAddrV4,
    size: usize,
    deadline: Instant,
    c: Arc<Progress>,
) -> io::Result<Vec<u32>> {
    let req = vec![0x5au8; size];
    let mut resp = vec![0u8; size];
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        let t = Instant::now();
        let mut s = match ep.connect(server).await {
            Ok(s) => s,
            // Every source port is in TIME-WAIT towards the server (the
            // client closes first): the client's port range, not the
            // server, is the limit for a moment. Wait for a port.
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        s.set_nodelay(true)?;
        transaction(&mut s, &req, &mut resp).await?;
        s.shutdown().await?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await?;
        samples.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        c.transactions.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(2 * size as u64, Ordering::Relaxed);
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::CHARGEN_LINE_LEN as CHARGEN_LINE;

    #[test]
    fn chargen_lines_follow_rfc_864() {
        let mut g = Chargen::new();
        let mut two = vec![0u8; 2 * CHARGEN_LINE];
        g.fill(&mut two);
        let first = std::str::from_utf8(&two[..CHARGEN_LINE]).unwrap();
        assert!(first.starts_with(" !\"#$%&'()*+,-./0123456789"), "{first}");
        assert!(first.ends_with("\r\n"));
        assert_eq!(two[CHARGEN_LINE], b'!', "line 2 starts one character on");
        // The check accepts the stream in any chunking and finds a bad byte.
        let mut all = vec![0u8; 95 * CHARGEN_LINE + 10];
        Chargen::new().fill(&mut all);
        let mut v = Chargen::new();
        for chunk in all.chunks(37) {
            assert_eq!(v.check(chunk), Ok(()));
        }
        let mut bad = all.clone();
        bad[500] ^= 1;
        assert_eq!(Chargen::new().check(&bad), Err(500));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&s, 0.5), 500.0);
        assert_eq!(percentile(&s, 0.99), 990.0);
        assert_eq!(percentile(&s, 0.999), 999.0);
        assert_eq!(percentile(&[7], 0.999), 7.0);
        assert_eq!(latency(Vec::new()), None);
    }
}
