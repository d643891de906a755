//! The sans-IO TCP core (RFC 9293, with RFC 1122, 5961, 6298, 6528).
//!
//! CONTRACT (the driver and the simulator are written against exactly this
//! public surface; internals are free):
//!
//! - The core never does I/O and never reads a clock: every entry point that
//!   needs the time takes `now: Instant`.
//! - Input: whole TCP segments (header + options + payload) with the IPv4
//!   addresses of the datagram that carried them, via [`Stack::handle_segment`].
//!   The checksum was already verified by whoever delivered it (the XDP
//!   program in production, the simulator's receive path in tests).
//! - Output: [`Stack::poll_transmit`] writes one complete TCP segment (with a
//!   correct checksum over the IPv4 pseudo-header) into the caller's buffer.
//! - Timers: [`Stack::poll_timeout`] returns the earliest deadline of all
//!   connections; the driver sleeps until then and calls
//!   [`Stack::handle_timeout`]. This must stay cheap with 100,000 connections.
//! - Events for the application come out of [`Stack::poll_event`].

use core::time::Duration;
use std::net::{Ipv4Addr, SocketAddrV4};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FourTuple {
    /// The endpoint's address and port.
    pub local: SocketAddrV4,
    /// The peer's address and port.
    pub remote: SocketAddrV4,
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
    FinWait1,
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
    /// Delayed-ACK timeout.
    pub delayed_ack: Duration,
    /// Maximum number of connections (all states).
    pub max_connections: usize,
    /// Challenge ACKs allowed per second across the stack (RFC 5961 §7).
    pub challenge_ack_limit: u32,
    /// Secret key of the RFC 6528 ISN generator (random in production).
    pub isn_secret: [u8; 16],
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
    Closed { conn: ConnId, tuple: FourTuple, error: Option<Error> },
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

/// All connections and listeners of one endpoint.
pub struct Stack {
    _private: (),
}

impl Stack {
    /// A stack with no listeners and no connections.
    pub fn new(_config: Config) -> Self {
        todo!()
    }
    /// Start accepting connections on `local` (an unspecified IP accepts any).
    pub fn listen(&mut self, _local: SocketAddrV4) -> Result<(), Error> {
        todo!()
    }
    /// Active open: send a SYN to `remote` from `local` (CLOSED → SYN-SENT).
    pub fn connect(&mut self, _now: Instant, _local: SocketAddrV4, _remote: SocketAddrV4) -> Result<ConnId, Error> {
        todo!()
    }
    /// Feed one received TCP segment (header + payload). Malformed input is
    /// counted and dropped, never a panic.
    pub fn handle_segment(&mut self, _now: Instant, _src: Ipv4Addr, _dst: Ipv4Addr, _segment: &[u8]) {
        todo!()
    }
    /// Write the next segment to send into `buf` (at least MSS + 60 bytes).
    pub fn poll_transmit(&mut self, _now: Instant, _buf: &mut [u8]) -> Option<Transmit> {
        todo!()
    }
    /// The earliest timer deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }
    /// Run every timer whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, _now: Instant) {
        todo!()
    }
    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }
    /// Queue data to send; returns how much was taken (0 when the buffer is full).
    pub fn send(&mut self, _now: Instant, _conn: ConnId, _data: &[u8]) -> Result<usize, Error> {
        todo!()
    }
    /// Read in-order data. `Ok(0)` means end of stream (peer's FIN);
    /// `Err(WouldBlock)` means nothing yet.
    pub fn recv(&mut self, _now: Instant, _conn: ConnId, _buf: &mut [u8]) -> Result<usize, Error> {
        todo!()
    }
    /// No more data from us: FIN after what is queued (half close).
    pub fn shutdown_write(&mut self, _now: Instant, _conn: ConnId) -> Result<(), Error> {
        todo!()
    }
    /// The application is done with the connection: like `shutdown_write`,
    /// and the handle is released once the connection reaches CLOSED
    /// (`Event::Closed` is still delivered).
    pub fn close(&mut self, _now: Instant, _conn: ConnId) -> Result<(), Error> {
        todo!()
    }
    /// Send RST and drop the connection at once.
    pub fn abort(&mut self, _now: Instant, _conn: ConnId) -> Result<(), Error> {
        todo!()
    }
    /// Disable (true) or enable (false) Nagle's algorithm.
    pub fn set_nodelay(&mut self, _conn: ConnId, _nodelay: bool) -> Result<(), Error> {
        todo!()
    }
    /// Keepalive probes after `idle` of silence (None: off, the default).
    pub fn set_keepalive(&mut self, _conn: ConnId, _idle: Option<Duration>) -> Result<(), Error> {
        todo!()
    }
    /// The state of a connection.
    pub fn state(&self, _conn: ConnId) -> Option<State> {
        todo!()
    }
    /// The connection table.
    pub fn connections(&self) -> Vec<ConnInfo> {
        todo!()
    }
    /// Counters of the stack (segments in/out, drops by reason,
    /// retransmissions, RSTs sent, challenge ACKs, ...), as name/value pairs.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        todo!()
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

/// Every transition the engine can make.
pub fn transitions() -> &'static [Transition] {
    todo!()
}
