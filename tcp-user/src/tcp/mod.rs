//! The sans-IO TCP core (RFC 9293, with RFC 1122, 5961, 6298, 6528).
//!
//! CONTRACT (the driver and the simulator are written against exactly this
//! public surface; internals are free):
//!
//! - The core never does I/O and never reads a clock: every entry point that
//!   needs the time takes `now: Instant`.
//! - Input: whole TCP segments (header + options + payload) with the IPv4
//!   addresses of the datagram that carried them, via [`Stack::handle_segment`].
//!   The core verifies the checksum itself, except for segments handed in
//!   through [`Stack::handle_verified_segment`] with a
//!   [`crate::wire::ChecksumVerified`]: the driver's frames, whose checksums
//!   the XDP program verified before redirecting them.
//! - Output: [`Stack::poll_transmit`] writes one complete TCP segment (with a
//!   correct checksum over the IPv4 pseudo-header) into the caller's buffer.
//! - Timers: [`Stack::poll_timeout`] returns the earliest deadline of all
//!   connections; the driver sleeps until then and calls
//!   [`Stack::handle_timeout`]. This must stay cheap with 100,000 connections.
//! - Events for the application come out of [`Stack::poll_event`].

use core::time::Duration;
use std::net::{Ipv4Addr, SocketAddrV4};

pub mod cc;
mod conn;
pub(crate) mod recovery;
#[cfg(test)]
mod rto_tests;
pub mod seq;
mod stack;
mod table;
#[cfg(test)]
mod tests;

pub use stack::Stack;

/// A point in time in the core: microseconds since an epoch the driver picks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The epoch.
    pub const ZERO: Instant = Instant(0);
    /// From microseconds since the epoch.
    pub const fn from_micros(us: u64) -> Self {
        Instant(us)
    }
    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }
    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.as_micros() as u64))
    }
}

/// A connection as the endpoint sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FourTuple {
    /// The endpoint's address and port.
    pub local: SocketAddrV4,
    /// The peer's address and port.
    pub remote: SocketAddrV4,
}

/// Two writes (the addresses, then the ports) instead of several per
/// field: the 4-tuple is hashed for every arriving segment. Inlined so
/// that the flow table's hasher (foldhash, see `stack.rs`) sees a fresh
/// state and folds both writes into one multiply; out of line it ran its
/// generic buffering code (about 40 instructions a segment, callgrind).
impl std::hash::Hash for FourTuple {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let ips = (u32::from(*self.local.ip()) as u64) << 32 | u32::from(*self.remote.ip()) as u64;
        state.write_u64(ips);
        state.write_u32((self.local.port() as u32) << 16 | self.remote.port() as u32);
    }
}

/// Handle of one connection inside a [`Stack`]. Stale handles (of a
/// connection that has been released) are detected, never aliased.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// The 11 states of RFC 9293 §3.3.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum State {
    Closed,
    Listen,
    SynSent,
    SynReceived,
    Established,
    #[serde(rename = "FIN-WAIT-1")]
    FinWait1,
    #[serde(rename = "FIN-WAIT-2")]
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

/// Why a connection failed, as the application sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("connection refused")]
    Refused,
    #[error("connection reset by peer")]
    Reset,
    #[error("connection timed out")]
    TimedOut,
    #[error("connection aborted locally")]
    Aborted,
    #[error("operation would block")]
    WouldBlock,
    #[error("the connection is closed for writing")]
    WriteClosed,
    #[error("no such connection")]
    NotFound,
    #[error("address or port already in use")]
    InUse,
    #[error("connection table full")]
    Full,
}

/// Tunables of the core. `Default` gives the documented defaults.
///
/// - `msl` 30 s, so TIME-WAIT lasts 60 s: RFC 9293 suggests an MSL of 2
///   minutes (4 minutes of TIME-WAIT), BSD uses 30 s, and Linux holds
///   TIME-WAIT for 60 s; we match Linux's observable behaviour.
/// - `fin_wait2_timeout` 60 s, as Linux's `tcp_fin_timeout`.
/// - `min_rto` 200 ms as Linux (RFC 6298 says 1 s, a value widely judged too
///   conservative on modern networks); `initial_rto` 1 s per RFC 6298;
///   `max_rto` 120 s as Linux.
#[derive(Clone, Debug)]
pub struct Config {
    /// MSS we advertise (interface MTU − 40).
    pub mss: u16,
    /// Maximum segment lifetime; TIME-WAIT lasts 2 × MSL.
    pub msl: Duration,
    /// How long FIN-WAIT-2 may last after the application closed.
    pub fin_wait2_timeout: Duration,
    /// RTO before any RTT sample (RFC 6298: 1 s).
    pub initial_rto: Duration,
    /// Lower bound of the RTO.
    pub min_rto: Duration,
    /// Upper bound of the RTO.
    pub max_rto: Duration,
    /// Retransmissions of a data segment before the connection is aborted.
    pub max_retries: u32,
    /// Retransmissions of a SYN or SYN-ACK before giving up.
    pub syn_retries: u32,
    /// Receive buffer per connection, bytes (the advertised window's ceiling).
    pub recv_buffer: usize,
    /// Send buffer per connection, bytes.
    pub send_buffer: usize,
    /// Delayed-ACK timeout: the longest; a connection with an SRTT waits
    /// at most that long (at least 1 ms, `conn::delayed_ack_timeout`).
    pub delayed_ack: Duration,
    /// Maximum number of connections (all states).
    pub max_connections: usize,
    /// Challenge ACKs allowed per second across the stack (RFC 5961 §7).
    pub challenge_ack_limit: u32,
    /// Secret key of the RFC 6528 ISN generator (random in production).
    pub isn_secret: [u8; 16],
    /// Offer and accept RFC 7323 window scaling (windows beyond 64 KiB).
    pub window_scaling: bool,
    /// Congestion control for new connections (CUBIC by default, as Linux).
    pub congestion: cc::Algorithm,
    /// Offer and accept SACK (RFC 2018): report out-of-order data, and
    /// recover from losses with a scoreboard (RFC 6675) and RACK-TLP (RFC
    /// 8985). Without it, NewReno recovery (RFC 6582). On by default.
    pub sack: bool,
    /// Offer and accept timestamps (RFC 7323): RTT samples across
    /// retransmissions and PAWS. On by default.
    pub timestamps: bool,
}

/// Something the application should know about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A passive open completed (now ESTABLISHED); `listener` is the local port.
    Accepted { conn: ConnId, listener: u16 },
    /// An active open completed.
    Connected(ConnId),
    /// New in-order data (or the peer's FIN: `recv` then returns `Ok(0)`).
    Readable(ConnId),
    /// Send-buffer space became free after being full.
    Writable(ConnId),
    /// The connection is finished and its handle released: after a clean
    /// close `error` is None; otherwise it says why (reset, timeout, ...).
    Closed {
        conn: ConnId,
        tuple: FourTuple,
        error: Option<Error>,
    },
}

/// One row of the connection table, for `tcp-user stat`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConnInfo {
    pub id: u64,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub state: State,
    /// Bytes queued to send, not yet acknowledged.
    pub send_queue: usize,
    /// Bytes received, not yet read by the application.
    pub recv_queue: usize,
    /// Smoothed RTT, microseconds (0 before a sample).
    pub srtt_us: u64,
    /// Current RTO, microseconds.
    pub rto_us: u64,
    /// Segments retransmitted so far.
    pub retransmits: u64,
    /// Congestion window, bytes (0 once nothing is left to send).
    pub cwnd: usize,
    /// The peer's window, bytes.
    pub snd_wnd: u32,
    /// Bytes sent and not yet acknowledged.
    pub in_flight: usize,
    /// The window we advertise, bytes.
    pub rcv_wnd: u32,
    /// In loss recovery (fast recovery, or after a timeout).
    pub recovering: bool,
    /// SACK in use on this connection.
    pub sack: bool,
    /// Timestamps in use on this connection.
    pub timestamps: bool,
    /// Bytes the peer has SACKed above the cumulative ACK.
    pub sacked: usize,
    /// Bytes deemed lost, not yet sent again.
    pub lost: usize,
    /// Retransmission (or persist) timer armed.
    pub timer_armed: bool,
}

/// One segment written by [`Stack::poll_transmit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// IPv4 source (the endpoint).
    pub src: Ipv4Addr,
    /// IPv4 destination (the peer).
    pub dst: Ipv4Addr,
    /// Length of the TCP segment written at the start of the buffer.
    pub len: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mss: 1460,
            msl: Duration::from_secs(30),
            fin_wait2_timeout: Duration::from_secs(60),
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(120),
            max_retries: 15,
            syn_retries: 6,
            // 1 MiB, not 256 KiB: under loss, data held beyond a hole fills
            // the window, and a sender whose retransmission of the hole is
            // lost while it has no room for new data cannot detect that
            // loss (RFC 8985 needs a later transmission to be delivered)
            // and waits for its RTO (200 ms for Linux). A Linux receiver
            // lets its window grow to several MiB (tcp_rmem).
            recv_buffer: 1024 * 1024,
            send_buffer: 1024 * 1024,
            delayed_ack: Duration::from_millis(40),
            max_connections: 100_000,
            challenge_ack_limit: 1000,
            isn_secret: [0; 16],
            window_scaling: true,
            congestion: cc::Algorithm::Cubic,
            sack: true,
            timestamps: true,
        }
    }
}

/// One edge of the state diagram: the engine's own transition table, which
/// `cargo xtask state-diagram` renders and which every state change the
/// engine makes is checked against (debug assertion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    /// What causes it, e.g. "rcv SYN / snd SYN,ACK".
    pub label: &'static str,
}

macro_rules! transitions {
    ($($from:ident -> $to:ident : $label:literal;)*) => {
        &[$(Transition { from: State::$from, to: State::$to, label: $label }),*]
    };
}

/// Every transition the engine can make (RFC 9293 §3.3.2, Figure 5, plus
/// the timeouts and resets of §3.10).
pub fn transitions() -> &'static [Transition] {
    transitions! {
        Closed -> Listen: "passive OPEN";
        Closed -> SynSent: "active OPEN / snd SYN";
        Listen -> SynReceived: "rcv SYN / snd SYN,ACK";
        SynSent -> Established: "rcv SYN,ACK / snd ACK";
        SynSent -> SynReceived: "rcv SYN (simultaneous open) / snd SYN,ACK";
        SynSent -> Closed: "rcv RST,ACK / timeout / CLOSE";
        SynReceived -> Established: "rcv ACK of SYN";
        SynReceived -> Closed: "rcv RST (passive open) / timeout";
        SynReceived -> FinWait1: "CLOSE / snd FIN";
        SynReceived -> CloseWait: "rcv ACK of SYN with FIN / snd ACK";
        Established -> FinWait1: "CLOSE / snd FIN";
        Established -> CloseWait: "rcv FIN / snd ACK";
        Established -> Closed: "rcv RST / timeout / ABORT";
        FinWait1 -> FinWait2: "rcv ACK of FIN";
        FinWait1 -> Closing: "rcv FIN / snd ACK";
        FinWait1 -> TimeWait: "rcv FIN,ACK of FIN / snd ACK";
        FinWait1 -> Closed: "rcv RST / timeout / ABORT";
        FinWait2 -> TimeWait: "rcv FIN / snd ACK";
        FinWait2 -> Closed: "FIN-WAIT-2 timeout / rcv RST / ABORT";
        CloseWait -> LastAck: "CLOSE / snd FIN";
        CloseWait -> Closed: "rcv RST / timeout / ABORT";
        Closing -> TimeWait: "rcv ACK of FIN";
        Closing -> Closed: "rcv RST / timeout / ABORT";
        LastAck -> Closed: "rcv ACK of FIN / rcv RST / timeout";
        TimeWait -> TimeWait: "rcv FIN / snd ACK, restart 2MSL";
        TimeWait -> Closed: "2MSL timeout / rcv RST";
    }
}

/// Whether the engine's table has the edge (checked on every state change
/// in debug builds).
pub(crate) fn is_transition(from: State, to: State) -> bool {
    from == to || transitions().iter().any(|t| t.from == from && t.to == to)
}
