//! An iperf3-compatible test server as a sans-IO state machine.
//!
//! The server speaks the control protocol of iperf3 (tested against the
//! stock 3.12 client): one control connection and `parallel` data
//! connections per test, all to the same port (5201 by convention). It does
//! no I/O and reads no clock: a driver (the userspace TCP stack, or kernel
//! sockets in the tests) tells it what happened on each connection and
//! executes the [`Action`]s it asks for.
//!
//! # Driving the server
//!
//! Connections are named by a `u64` the driver picks (the TCP core's
//! `ConnId.0`); every connection accepted on the iperf3 port goes to the
//! server. `now` is the driver's monotonic clock ([`Instant`], microseconds
//! since an epoch of the driver's choosing).
//!
//! | event on a connection                      | call                           |
//! |--------------------------------------------|--------------------------------|
//! | accepted                                    | [`Server::on_accept`]          |
//! | bytes arrived (in order)                    | [`Server::on_data`]            |
//! | the send buffer has room again              | [`Server::on_writable`]        |
//! | the peer sent FIN (no more bytes will come) | [`Server::on_peer_closed`]     |
//! | the connection is gone (closed or reset)    | [`Server::on_closed`]          |
//! | (optional) TCP retransmission counter       | [`Server::set_retransmits`]    |
//! | `now` reached [`Server::poll_timeout`]      | [`Server::handle_timeout`]     |
//!
//! Turn Nagle's algorithm off on the connections of the iperf3 port (with
//! this crate's core, `Stack::set_nodelay(conn, true)` on accept): the
//! control messages are small and come in quick succession, and with
//! Nagle on, TEST_START waits for the delayed ACK of CREATE_STREAMS (some
//! 40 ms), which the server counts as test time the client does not (the
//! kernel-socket test saw 1.04 s against the client's 1.00 s).
//!
//! Every accepted connection must eventually get `on_closed`, including
//! those the server itself closed or refused (the server forgets a
//! connection only then). `on_accept` must come before the connection's
//! first `on_data`.
//!
//! After every call, drain [`Server::poll_output`] until it returns `None`
//! and execute the actions in order:
//!
//! - [`Action::Send`]: queue the bytes (a control message) on the
//!   connection. These are small and rare; the driver must queue all of
//!   them (they are never retried).
//! - [`Action::SendData`]: bulk test data. Write **up to** `max` bytes of
//!   any content to the connection (iperf3 does not check the payload: a
//!   static pattern buffer of the block size, reused for every call, is
//!   enough; no allocation per call is needed), then report how many bytes
//!   the TCP stack accepted with [`Server::data_sent`]`(conn, n, now)`, `n`
//!   from 0 to `max` (`now` places the bytes in time, for `-O` and `-b`).
//!   If `n == max` the server asks for the next block right away (the next
//!   `poll_output` returns another `SendData`, or, when `-b` paces the
//!   test, a later [`Server::handle_timeout`] does). If `n < max` the
//!   send buffer is full: the server asks for nothing more on that
//!   connection until [`Server::on_writable`] is called, which the driver
//!   does when the connection can take bytes again (calling it when nothing
//!   is blocked is harmless). Exactly one `SendData` is outstanding per
//!   connection at any time, and a `SendData` must always be answered by
//!   `data_sent` (with 0 if the driver could not write at all), unless the
//!   connection is closed first.
//! - [`Action::Close`]: close the connection gracefully (FIN after what is
//!   queued). Bytes that still arrive on it may be discarded; passing them
//!   to `on_data` is harmless.
//! - [`Action::Abort`]: reset the connection (RST), dropping queued bytes.
//!
//! A driver's loop, in outline:
//!
//! ```
//! use tcp_user::iperf3::{Action, Instant, Server, MAX_BLOCKSIZE};
//!
//! let mut server = Server::default();
//! // The payload of every SendData: one buffer, allocated once.
//! let pattern = vec![0x5a_u8; MAX_BLOCKSIZE];
//! let now = Instant::from_micros(1_000);
//! server.on_accept(7, now);
//! server.on_data(7, b"abcdefghijklmnopqrstuvwxyz234567abcd\0", now);
//! while let Some(action) = server.poll_output() {
//!     match action {
//!         Action::Send { conn, bytes } => { /* queue `bytes` on `conn` */ }
//!         Action::SendData { conn, max } => {
//!             // let n = stack.send(conn, &pattern[..max]);
//!             let n = pattern[..max].len();
//!             // May queue the next SendData, which this loop picks up.
//!             server.data_sent(conn, n, now);
//!         }
//!         Action::Close { conn } => { /* FIN */ }
//!         Action::Abort { conn } => { /* RST */ }
//!     }
//! }
//! ```
//!
//! The server also emits [`Report`]s (test started, finished, failed,
//! connection refused) for logging, through [`Server::poll_report`].
//!
//! # Behaviour
//!
//! One test at a time, as iperf3: a connection arriving while a test runs
//! is sent ACCESS_DENIED and closed; a data connection whose cookie is not
//! the test's gets the same. TCP tests in all directions are served
//! (default, `-R`, `--bidir`), with `-P`, `-t`, `-n`, `-k`, `-l`, `-O` and
//! `-b` (pacing of what the server sends). UDP and SCTP tests are refused
//! with SERVER_ERROR, which the client prints as an error before exiting
//! with status 1. Socket options the client asks for (`-w`, `-M`, `-N`,
//! `-C`, `-S`) are not applied here; they are in [`TestParams`] for a driver
//! that wants to honour them. The results the server sends count, per
//! stream, the bytes received (or sent, on the streams the server sends
//! on) from the start of the test, minus the `-O` omitted seconds; CPU
//! utilisation is reported as 0.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use serde_json::{json, Value};

pub use crate::tcp::Instant;

/// The port iperf3 uses unless told otherwise.
pub const DEFAULT_PORT: u16 = 5201;

/// Length of the cookie that opens every connection of a test: 36
/// characters and a NUL.
pub const COOKIE_LEN: usize = 37;

/// Largest parameters document the server accepts (as iperf3).
pub const MAX_PARAMS_LEN: usize = 8 * 1024;

/// Largest results document the server accepts from a client. The client's
/// results grow with the number of streams (about 150 bytes each, at most
/// 128 streams), and may carry the client's own output.
pub const MAX_RESULTS_LEN: usize = 256 * 1024;

/// Most parallel streams a client may ask for (iperf3's `MAX_STREAMS`).
pub const MAX_STREAMS: u32 = 128;

/// Largest block size (`-l`) accepted (iperf3's `MAX_BLOCKSIZE`).
pub const MAX_BLOCKSIZE: usize = 1024 * 1024;

/// Longest test accepted (iperf3's `MAX_TIME`, one day).
pub const MAX_TIME: u32 = 86_400;

/// Longest omitted start accepted (iperf3's `MAX_OMIT_TIME`).
pub const MAX_OMIT: u32 = 600;

/// The block size iperf3 uses for TCP when the client gives none.
pub const DEFAULT_TCP_BLKSIZE: usize = 128 * 1024;

/// Control-connection states (each sent as one signed byte).
pub mod msg {
    pub const TEST_START: i8 = 1;
    pub const TEST_RUNNING: i8 = 2;
    pub const TEST_END: i8 = 4;
    pub const PARAM_EXCHANGE: i8 = 9;
    pub const CREATE_STREAMS: i8 = 10;
    pub const SERVER_TERMINATE: i8 = 11;
    pub const CLIENT_TERMINATE: i8 = 12;
    pub const EXCHANGE_RESULTS: i8 = 13;
    pub const DISPLAY_RESULTS: i8 = 14;
    pub const IPERF_START: i8 = 15;
    pub const IPERF_DONE: i8 = 16;
    pub const ACCESS_DENIED: i8 = -1;
    pub const SERVER_ERROR: i8 = -2;
}

/// iperf3's error numbers (`i_errno`) the server may send with
/// SERVER_ERROR; the client prints its own text for each.
pub mod ierr {
    /// "test duration valid values are 0 to 86400 seconds"
    pub const IEDURATION: i32 = 5;
    /// "number of parallel streams too large (maximum = 128)"
    pub const IENUMSTREAMS: i32 = 6;
    /// "block size too large (maximum = 1048576 bytes)"
    pub const IEBLOCKSIZE: i32 = 7;
    /// "bogus value for --omit (maximum = 600 seconds)"
    pub const IEOMIT: i32 = 12;
    /// "an option you are trying to set is not implemented yet"
    pub const IEUNIMP: i32 = 13;
    /// "no SCTP support available"
    pub const IENOSCTP: i32 = 18;
    /// "cannot be both reverse and bidirectional"
    pub const IEREVERSEBIDIR: i32 = 25;
    /// "received an unknown control message (ensure other side is iperf3
    /// and not iperf)"
    pub const IEMESSAGE: i32 = 110;
    /// "unable to receive parameters from client" (followed by errno text)
    pub const IERECVPARAMS: i32 = 114;
}

/// `EINVAL`, sent as the errno of a SERVER_ERROR about malformed input so
/// the client's message ends with "Invalid argument".
const EINVAL: i32 = 22;

/// Extra time past `-t` + `-O` the server waits for the client's TEST_END
/// before it gives the test up (iperf3 waits too; it is only a safety net
/// against a vanished client).
pub const DEFAULT_END_GRACE: Duration = Duration::from_secs(10);

/// How long a test may sit in its set-up or wind-down phases (waiting for
/// the cookie, the parameters, the data connections, the results or
/// IPERF_DONE) before the server drops it, so that a stalled client cannot
/// keep the server busy forever.
pub const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// What the driver must do. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Queue these bytes (a control message) on the connection.
    Send { conn: u64, bytes: Vec<u8> },
    /// Write up to `max` bytes of test data on the connection, then call
    /// [`Server::data_sent`] with what was accepted.
    SendData { conn: u64, max: usize },
    /// Close the connection gracefully.
    Close { conn: u64 },
    /// Reset the connection.
    Abort { conn: u64 },
}

/// Transport a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// Who sends the test data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The client sends, the server receives (iperf3's default).
    ClientToServer,
    /// The server sends (`-R`).
    ServerToClient,
    /// Both send, on separate streams (`--bidir`).
    Both,
}

/// The parameters of a test, as the client sent them.
#[derive(Clone, Debug, PartialEq)]
pub struct TestParams {
    pub protocol: Protocol,
    pub direction: Direction,
    /// Test length in seconds (`-t`); 0 when the test ends on a byte or
    /// block count.
    pub time: u32,
    /// Seconds at the start not counted (`-O`).
    pub omit: u32,
    /// Bytes to send (`-n`), 0 if unlimited.
    pub bytes: u64,
    /// Blocks to send (`-k`), 0 if unlimited.
    pub blocks: u64,
    /// Streams per direction (`-P`).
    pub parallel: u32,
    /// Block size (`-l`): the `max` of every [`Action::SendData`].
    pub len: usize,
    /// Target rate per stream in bits per second (`-b`), 0 if unlimited.
    pub bandwidth: u64,
    /// Socket buffer size asked for (`-w`).
    pub window: Option<u64>,
    /// MSS asked for (`-M`).
    pub mss: Option<u64>,
    /// Nagle off (`-N`).
    pub nodelay: bool,
    /// IP TOS (`-S`).
    pub tos: Option<u64>,
    /// Congestion control (`-C`).
    pub congestion: Option<String>,
    pub title: Option<String>,
    pub extra_data: Option<String>,
    pub client_version: Option<String>,
    /// The client asked for the server's output (`--get-server-output`).
    pub get_server_output: bool,
}

impl TestParams {
    /// Reads the client's parameters document. Absent keys take iperf3's
    /// defaults; keys of the wrong type are an error.
    pub fn from_json(doc: &[u8]) -> Result<TestParams, String> {
        let v: Value = serde_json::from_slice(doc).map_err(|e| format!("parameters: {e}"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| "parameters: not a JSON object".to_string())?;
        let flag = |k: &str| -> Result<bool, String> {
            match obj.get(k) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(false),
                Some(Value::Bool(true)) => Ok(true),
                Some(Value::Number(n)) => Ok(n.as_f64().is_some_and(|x| x != 0.0)),
                Some(_) => Err(format!("parameters: '{k}' is not a flag")),
            }
        };
        let num = |k: &str| -> Result<Option<u64>, String> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(x) => Ok(Some(x)),
                    None => match n.as_f64() {
                        Some(x) if x >= 0.0 && x.is_finite() && x <= u64::MAX as f64 => {
                            Ok(Some(x as u64))
                        }
                        _ => Err(format!("parameters: '{k}' is out of range")),
                    },
                },
                Some(_) => Err(format!("parameters: '{k}' is not a number")),
            }
        };
        let text = |k: &str| -> Result<Option<String>, String> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("parameters: '{k}' is not a string")),
            }
        };
        let protocol = if flag("sctp")? {
            Protocol::Sctp
        } else if flag("udp")? {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let reverse = flag("reverse")?;
        let bidir = flag("bidirectional")?;
        if reverse && bidir {
            return Err("parameters: both reverse and bidirectional".into());
        }
        let direction = match (reverse, bidir) {
            (_, true) => Direction::Both,
            (true, false) => Direction::ServerToClient,
            (false, false) => Direction::ClientToServer,
        };
        let clamp32 = |x: u64| x.min(u32::MAX as u64) as u32;
        Ok(TestParams {
            protocol,
            direction,
            time: clamp32(num("time")?.unwrap_or(10)),
            omit: clamp32(num("omit")?.unwrap_or(0)),
            bytes: num("num")?.unwrap_or(0),
            blocks: num("blockcount")?.unwrap_or(0),
            parallel: clamp32(num("parallel")?.unwrap_or(1)),
            len: num("len")?
                .unwrap_or(DEFAULT_TCP_BLKSIZE as u64)
                .min(usize::MAX as u64) as usize,
            bandwidth: num("bandwidth")?.unwrap_or(0),
            window: num("window")?.filter(|&w| w != 0),
            mss: num("MSS")?.filter(|&m| m != 0),
            nodelay: flag("nodelay")?,
            tos: num("TOS")?.filter(|&t| t != 0),
            congestion: text("congestion")?,
            title: text("title")?,
            extra_data: text("extra_data")?,
            client_version: text("client_version")?,
            get_server_output: flag("get_server_output")?,
        })
    }

    /// The iperf3 error number with which a server that only does TCP
    /// refuses these parameters, if it does.
    pub fn refusal(&self) -> Option<i32> {
        match self.protocol {
            Protocol::Udp => return Some(ierr::IEUNIMP),
            Protocol::Sctp => return Some(ierr::IENOSCTP),
            Protocol::Tcp => {}
        }
        if self.parallel == 0 || self.parallel > MAX_STREAMS {
            return Some(ierr::IENUMSTREAMS);
        }
        if self.len == 0 || self.len > MAX_BLOCKSIZE {
            return Some(ierr::IEBLOCKSIZE);
        }
        if self.time > MAX_TIME {
            return Some(ierr::IEDURATION);
        }
        if self.omit > MAX_OMIT {
            return Some(ierr::IEOMIT);
        }
        None
    }

    fn server_receives(&self) -> u32 {
        match self.direction {
            Direction::ClientToServer | Direction::Both => self.parallel,
            Direction::ServerToClient => 0,
        }
    }

    fn server_sends(&self) -> u32 {
        match self.direction {
            Direction::ServerToClient | Direction::Both => self.parallel,
            Direction::ClientToServer => 0,
        }
    }
}

/// What one stream carried, as the server counted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    /// iperf3's stream id (1, 3, 4, 5, … in the order the streams opened).
    pub id: u32,
    pub conn: u64,
    /// True if the server sent on this stream.
    pub sender: bool,
    /// Bytes counted (omitted seconds excluded).
    pub bytes: u64,
}

/// The outcome of a finished test.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub params: TestParams,
    /// From TEST_RUNNING to TEST_END.
    pub duration: Duration,
    pub streams: Vec<StreamSummary>,
    /// The client's results document, as it sent it.
    pub client_results: Value,
}

/// Things worth logging.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// A test's data connections are all open and data may flow.
    Started { ctrl: u64, params: TestParams },
    /// A test ended normally.
    Finished { ctrl: u64, summary: Summary },
    /// A test ended early; all its connections were closed or reset.
    Failed { ctrl: u64, error: String },
    /// A connection was refused (ACCESS_DENIED or SERVER_ERROR).
    Refused { conn: u64, reason: String },
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct Config {
    /// See [`DEFAULT_END_GRACE`].
    pub end_grace: Duration,
    /// See [`DEFAULT_SETUP_TIMEOUT`].
    pub setup_timeout: Duration,
    /// Congestion control named in the results (`congestion_used`), if the
    /// driver knows it.
    pub congestion_used: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            end_grace: DEFAULT_END_GRACE,
            setup_timeout: DEFAULT_SETUP_TIMEOUT,
            congestion_used: None,
        }
    }
}

/// Phases of the test, from the control connection's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the 37-byte cookie.
    Cookie,
    /// PARAM_EXCHANGE sent; reading the parameters.
    Params,
    /// CREATE_STREAMS sent; waiting for the data connections.
    CreateStreams,
    /// TEST_START and TEST_RUNNING sent; data flows until TEST_END.
    Running,
    /// EXCHANGE_RESULTS sent; reading the client's results.
    Results,
    /// Results and DISPLAY_RESULTS sent; waiting for IPERF_DONE.
    Done,
}

/// Sending state of one stream the server sends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tx {
    /// Nothing outstanding; not blocked.
    Idle,
    /// A `SendData` of this size is outstanding.
    Outstanding(usize),
    /// The last write was short; waiting for `on_writable`.
    Blocked,
    /// Over the `-b` rate; may send again at this time.
    Paced(Instant),
    /// Sending is over (test ended, limit reached or connection gone).
    Finished,
}

#[derive(Debug)]
struct Stream {
    conn: u64,
    /// Order of acceptance of the connection.
    seq: u64,
    id: u32,
    sender: bool,
    /// Bytes counted after the omitted seconds.
    bytes: u64,
    /// Bytes during the omitted seconds.
    omitted: u64,
    tx: Tx,
    open: bool,
    /// Retransmissions, if the driver reports them.
    retransmits: Option<u64>,
}

#[derive(Debug)]
struct Test {
    ctrl: u64,
    phase: Phase,
    /// Control bytes received and not yet consumed.
    rx: Vec<u8>,
    cookie: [u8; COOKIE_LEN],
    params: Option<TestParams>,
    streams: Vec<Stream>,
    /// When the current phase must be over.
    deadline: Option<Instant>,
    start: Option<Instant>,
    end: Option<Instant>,
    /// Bytes sent by the server on all streams, plus those asked for and
    /// not yet answered (for `-n`/`-k`).
    committed: u64,
    /// The client's results document.
    client_results: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The control connection of the current test.
    Control,
    /// A connection opened while streams are expected; its cookie is read.
    Pending,
    /// A data stream of the current test (index into `streams`).
    Stream(usize),
    /// Closed or refused by the server; whatever arrives is ignored.
    Dead,
}

#[derive(Debug)]
struct Conn {
    role: Role,
    /// Cookie bytes of a pending connection.
    rx: Vec<u8>,
    /// Order of acceptance.
    seq: u64,
}

/// The iperf3 server. See the module documentation.
pub struct Server {
    config: Config,
    conns: HashMap<u64, Conn>,
    test: Option<Test>,
    out: VecDeque<Action>,
    reports: VecDeque<Report>,
    /// The latest time the driver passed in.
    now: Instant,
    /// Connections accepted so far.
    accepted: u64,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("conns", &self.conns.len())
            .field("phase", &self.test.as_ref().map(|t| t.phase))
            .field("queued", &self.out.len())
            .finish()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new(Config::default())
    }
}

/// iperf3's stream ids: 1 for the first stream, then 3, 4, 5, … (the
/// client numbers its streams the same way, and the ids in the results
/// must match).
fn stream_id(index: usize) -> u32 {
    if index == 0 {
        1
    } else {
        index as u32 + 2
    }
}

fn framed(doc: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(doc).expect("serializing a JSON value cannot fail");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn server_error(code: i32, errno: i32) -> Vec<u8> {
    let mut b = Vec::with_capacity(9);
    b.push(msg::SERVER_ERROR as u8);
    b.extend_from_slice(&code.to_be_bytes());
    b.extend_from_slice(&errno.to_be_bytes());
    b
}

/// Reads a length-prefixed document from the front of `rx`: `Ok(None)` if
/// incomplete, the body if complete, an error if the length is over `max`.
fn take_framed(rx: &mut Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, String> {
    if rx.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([rx[0], rx[1], rx[2], rx[3]]) as usize;
    if len > max {
        return Err(format!("a {len}-byte document (at most {max} accepted)"));
    }
    if rx.len() < 4 + len {
        return Ok(None);
    }
    let body = rx[4..4 + len].to_vec();
    rx.drain(..4 + len);
    Ok(Some(body))
}

impl Server {
    pub fn new(config: Config) -> Self {
        Server {
            config,
            conns: HashMap::new(),
            test: None,
            out: VecDeque::new(),
            reports: VecDeque::new(),
            now: Instant::ZERO,
            accepted: 0,
        }
    }

    /// True while a test holds the server.
    pub fn is_busy(&self) -> bool {
        self.test.is_some()
    }

    /// The parameters of the current test, once received.
    pub fn params(&self) -> Option<&TestParams> {
        self.test.as_ref().and_then(|t| t.params.as_ref())
    }

    /// Next action for the driver.
    pub fn poll_output(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// Next thing worth logging.
    pub fn poll_report(&mut self) -> Option<Report> {
        self.reports.pop_front()
    }

    /// When [`Server::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.test.as_ref()?;
        let paced = t
            .streams
            .iter()
            .filter_map(|s| match s.tx {
                Tx::Paced(at) => Some(at),
                _ => None,
            })
            .min();
        match (t.deadline, paced) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        let Some(t) = self.test.as_mut() else { return };
        if t.deadline.is_some_and(|d| d <= now) {
            let what = match t.phase {
                Phase::Running => "the client sent no TEST_END",
                _ => "the client stalled",
            };
            self.fail(format!("timed out: {what}"));
            return;
        }
        let due: Vec<usize> = t
            .streams
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.tx, Tx::Paced(at) if at <= now))
            .map(|(i, _)| i)
            .collect();
        for i in due {
            self.arm(i);
        }
    }

    /// A connection to the iperf3 port was accepted.
    pub fn on_accept(&mut self, conn: u64, now: Instant) {
        self.tick(now);
        let role = match &mut self.test {
            None => {
                self.test = Some(Test {
                    ctrl: conn,
                    phase: Phase::Cookie,
                    rx: Vec::new(),
                    cookie: [0; COOKIE_LEN],
                    params: None,
                    streams: Vec::new(),
                    deadline: Some(now + self.config.setup_timeout),
                    start: None,
                    end: None,
                    committed: 0,
                    client_results: None,
                });
                Role::Control
            }
            Some(t) if t.phase == Phase::CreateStreams => Role::Pending,
            Some(_) => {
                // As iperf3: do not read from it, just say busy.
                self.out.push_back(Action::Send {
                    conn,
                    bytes: vec![msg::ACCESS_DENIED as u8],
                });
                self.out.push_back(Action::Close { conn });
                self.reports.push_back(Report::Refused {
                    conn,
                    reason: "a test is running".into(),
                });
                Role::Dead
            }
        };
        self.accepted += 1;
        self.conns.insert(
            conn,
            Conn {
                role,
                rx: Vec::new(),
                seq: self.accepted,
            },
        );
    }

    /// Bytes arrived on a connection, in order.
    pub fn on_data(&mut self, conn: u64, bytes: &[u8], now: Instant) {
        self.tick(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match c.role {
            Role::Dead => {}
            Role::Stream(i) => self.count_received(i, bytes.len() as u64, now),
            Role::Pending => {
                let want = COOKIE_LEN - c.rx.len();
                let take = want.min(bytes.len());
                c.rx.extend_from_slice(&bytes[..take]);
                if c.rx.len() == COOKIE_LEN {
                    let cookie = std::mem::take(&mut c.rx);
                    self.pending_cookie(conn, &cookie, now);
                    if let Some(Conn {
                        role: Role::Stream(i),
                        ..
                    }) = self.conns.get(&conn)
                    {
                        let i = *i;
                        if take < bytes.len() {
                            self.count_received(i, (bytes.len() - take) as u64, now);
                        }
                    }
                }
            }
            Role::Control => {
                if let Some(t) = self.test.as_mut() {
                    t.rx.extend_from_slice(bytes);
                }
                self.control(now);
            }
        }
    }

    /// The send buffer of a connection has room again.
    pub fn on_writable(&mut self, conn: u64, now: Instant) {
        self.tick(now);
        if let Some(Conn {
            role: Role::Stream(i),
            ..
        }) = self.conns.get(&conn)
        {
            let i = *i;
            if let Some(t) = &self.test {
                if matches!(t.streams[i].tx, Tx::Blocked | Tx::Idle) {
                    self.arm(i);
                }
            }
        }
    }

    /// Reports what the TCP stack accepted of the last
    /// [`Action::SendData`] on `conn`: `n` bytes, at most its `max`, at
    /// `now`. May queue the next `SendData` (see the module documentation).
    pub fn data_sent(&mut self, conn: u64, n: usize, now: Instant) {
        self.tick(now);
        let now = self.now;
        // A stream closed at TEST_END may still answer its last SendData:
        // those bytes were handed to TCP, so they count.
        let Some(i) = self.stream_index(conn) else {
            return;
        };
        let Some(t) = self.test.as_mut() else { return };
        let s = &mut t.streams[i];
        let max = match s.tx {
            Tx::Outstanding(max) => max,
            // Late or unasked-for; count it, change nothing.
            _ => n,
        };
        let n = n.min(max);
        let omitting = t.start.is_some_and(|st| {
            now < st + Duration::from_secs(t.params.as_ref().map_or(0, |p| p.omit as u64))
        });
        if omitting {
            s.omitted += n as u64;
        } else {
            s.bytes += n as u64;
        }
        if let Tx::Outstanding(_) = s.tx {
            t.committed -= (max - n) as u64;
            if n < max {
                s.tx = Tx::Blocked;
            } else {
                s.tx = Tx::Idle;
                self.arm(i);
            }
        }
    }

    /// Reports the retransmissions of `conn` so far (its TCP's counter).
    /// Optional: if the driver reports them for the streams the server
    /// sends on, any time before the client's results arrive, the results
    /// carry them and the client prints its Retr column for the server's
    /// side; otherwise the server says it does not know them.
    pub fn set_retransmits(&mut self, conn: u64, retransmits: u64) {
        if let Some(i) = self.stream_index(conn) {
            if let Some(t) = self.test.as_mut() {
                t.streams[i].retransmits = Some(retransmits);
            }
        }
    }

    /// The index of the current test's stream on `conn`, even after the
    /// server closed it.
    fn stream_index(&self, conn: u64) -> Option<usize> {
        let t = self.test.as_ref()?;
        match self.conns.get(&conn)? {
            Conn {
                role: Role::Stream(i),
                ..
            } => Some(*i),
            Conn {
                role: Role::Dead, ..
            } => t.streams.iter().position(|s| s.conn == conn),
            _ => None,
        }
    }

    /// The peer will send nothing more on `conn` (FIN received).
    pub fn on_peer_closed(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match c.role {
            Role::Dead => {}
            Role::Pending => {
                c.role = Role::Dead;
                self.out.push_back(Action::Close { conn });
            }
            Role::Stream(i) => {
                // The client will send no more on this stream; the test
                // goes on (iperf3 carries on too). A stream the server
                // receives on is closed; one it sends on may still be read,
                // so sending goes on until the test ends or the connection
                // is gone.
                let Some(t) = self.test.as_mut() else { return };
                if !t.streams[i].sender {
                    c.role = Role::Dead;
                    t.streams[i].open = false;
                    self.out.push_back(Action::Close { conn });
                }
            }
            Role::Control => {
                let done = self.test.as_ref().is_some_and(|t| t.phase == Phase::Done);
                if done {
                    self.finish();
                } else {
                    self.fail("the client closed the control connection".into());
                }
            }
        }
    }

    /// `conn` is gone (closed by both sides, or reset). The server forgets
    /// it.
    pub fn on_closed(&mut self, conn: u64) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        match c.role {
            Role::Control => {
                // Reinsert as dead so `fail` does not ask to close it again.
                self.conns.insert(
                    conn,
                    Conn {
                        role: Role::Dead,
                        rx: Vec::new(),
                        seq: c.seq,
                    },
                );
                let done = self.test.as_ref().is_some_and(|t| t.phase == Phase::Done);
                if done {
                    self.finish();
                } else {
                    self.fail("the control connection was lost".into());
                }
                self.conns.remove(&conn);
            }
            Role::Stream(i) => {
                if let Some(t) = self.test.as_mut() {
                    t.streams[i].open = false;
                    t.streams[i].tx = Tx::Finished;
                }
            }
            Role::Pending | Role::Dead => {}
        }
    }

    fn tick(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    fn count_received(&mut self, i: usize, n: u64, now: Instant) {
        let Some(t) = self.test.as_mut() else { return };
        if t.phase != Phase::Running {
            return;
        }
        let omit = Duration::from_secs(t.params.as_ref().map_or(0, |p| p.omit as u64));
        let s = &mut t.streams[i];
        if s.sender {
            return;
        }
        if t.start.is_some_and(|st| now < st + omit) {
            s.omitted += n;
        } else {
            s.bytes += n;
        }
    }

    /// A pending connection delivered its cookie.
    fn pending_cookie(&mut self, conn: u64, cookie: &[u8], now: Instant) {
        let Some(t) = self.test.as_mut() else { return };
        let Some(p) = t.params.as_ref() else { return };
        let total = (p.server_receives() + p.server_sends()) as usize;
        if cookie != t.cookie || t.streams.len() >= total {
            self.conns.get_mut(&conn).expect("pending conn").role = Role::Dead;
            self.out.push_back(Action::Send {
                conn,
                bytes: vec![msg::ACCESS_DENIED as u8],
            });
            self.out.push_back(Action::Close { conn });
            self.reports.push_back(Report::Refused {
                conn,
                reason: "data connection with a wrong cookie".into(),
            });
            return;
        }
        // Ids and directions are given once all streams are in (see
        // `start_test`).
        let index = t.streams.len();
        let seq = self.conns.get(&conn).map_or(0, |c| c.seq);
        t.streams.push(Stream {
            conn,
            seq,
            id: 0,
            sender: false,
            bytes: 0,
            omitted: 0,
            tx: Tx::Idle,
            open: true,
            retransmits: None,
        });
        self.conns.get_mut(&conn).expect("pending conn").role = Role::Stream(index);
        if t.streams.len() == total {
            self.start_test(now);
        }
    }

    fn start_test(&mut self, now: Instant) {
        let t = self.test.as_mut().expect("a test");
        let p = t.params.clone().expect("parameters");
        // As iperf3, streams are numbered in the order they were accepted
        // (the client opens them one after the other, each sending its
        // cookie before the next connects), the first `parallel` being the
        // ones the server receives on (the client opens its sending ones
        // first). Cookies may be processed in another order: a driver may
        // read connections in any order.
        t.streams.sort_by_key(|s| s.seq);
        let rec = p.server_receives() as usize;
        for (i, s) in t.streams.iter_mut().enumerate() {
            s.id = stream_id(i);
            s.sender = i >= rec;
            if let Some(c) = self.conns.get_mut(&s.conn) {
                c.role = Role::Stream(i);
            }
        }
        t.phase = Phase::Running;
        t.start = Some(now);
        t.deadline = if p.time > 0 {
            Some(now + Duration::from_secs(p.time as u64 + p.omit as u64) + self.config.end_grace)
        } else {
            None
        };
        let ctrl = t.ctrl;
        self.out.push_back(Action::Send {
            conn: ctrl,
            bytes: vec![msg::TEST_START as u8, msg::TEST_RUNNING as u8],
        });
        // Whoever connected but is not a stream is refused now.
        let extra: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.role == Role::Pending)
            .map(|(&k, _)| k)
            .collect();
        for conn in extra {
            self.conns.get_mut(&conn).expect("conn").role = Role::Dead;
            self.out.push_back(Action::Send {
                conn,
                bytes: vec![msg::ACCESS_DENIED as u8],
            });
            self.out.push_back(Action::Close { conn });
        }
        self.reports.push_back(Report::Started { ctrl, params: p });
        let n = self.test.as_ref().map_or(0, |t| t.streams.len());
        for i in 0..n {
            self.arm(i);
        }
    }

    /// Asks for the next block on sending stream `i`, if it may send.
    fn arm(&mut self, i: usize) {
        let now = self.now;
        let Some(t) = self.test.as_mut() else { return };
        let Some(p) = t.params.as_ref() else { return };
        let s = &mut t.streams[i];
        if !s.sender || matches!(s.tx, Tx::Outstanding(_) | Tx::Finished) {
            return;
        }
        match t.phase {
            // Not started yet (an early `on_writable`): nothing to do.
            Phase::Cookie | Phase::Params | Phase::CreateStreams => return,
            Phase::Running if s.open => {}
            _ => {
                s.tx = Tx::Finished;
                return;
            }
        }
        let mut max = p.len;
        let limit = if p.bytes > 0 {
            Some(p.bytes)
        } else if p.blocks > 0 {
            Some(p.blocks.saturating_mul(p.len as u64))
        } else {
            None
        };
        if let Some(limit) = limit {
            if t.committed >= limit {
                s.tx = Tx::Finished;
                return;
            }
            max = max.min((limit - t.committed).min(usize::MAX as u64) as usize);
        }
        if p.bandwidth > 0 {
            // iperf3's throttle: send while the average rate since the
            // start is under the target.
            let start = t.start.unwrap_or(now);
            let sent_bits = (s.bytes + s.omitted).saturating_mul(8) as u128;
            let due_us = sent_bits * 1_000_000 / p.bandwidth as u128;
            let due = start + Duration::from_micros(due_us.min(u64::MAX as u128) as u64);
            if due > now {
                s.tx = Tx::Paced(due);
                return;
            }
        }
        s.tx = Tx::Outstanding(max);
        t.committed += max as u64;
        self.out.push_back(Action::SendData { conn: s.conn, max });
    }

    /// Consumes what the control connection has delivered.
    fn control(&mut self, now: Instant) {
        loop {
            let Some(t) = self.test.as_mut() else { return };
            match t.phase {
                Phase::Cookie => {
                    if t.rx.len() < COOKIE_LEN {
                        return;
                    }
                    t.cookie.copy_from_slice(&t.rx[..COOKIE_LEN]);
                    t.rx.drain(..COOKIE_LEN);
                    t.phase = Phase::Params;
                    let ctrl = t.ctrl;
                    self.out.push_back(Action::Send {
                        conn: ctrl,
                        bytes: vec![msg::PARAM_EXCHANGE as u8],
                    });
                }
                Phase::Params => {
                    let doc = match take_framed(&mut t.rx, MAX_PARAMS_LEN) {
                        Ok(Some(doc)) => doc,
                        Ok(None) => return,
                        Err(e) => {
                            self.refuse(ierr::IERECVPARAMS, EINVAL, format!("parameters: {e}"));
                            return;
                        }
                    };
                    let params = match TestParams::from_json(&doc) {
                        Ok(p) => p,
                        Err(e) => {
                            let code = if e.contains("reverse and bidirectional") {
                                ierr::IEREVERSEBIDIR
                            } else {
                                ierr::IERECVPARAMS
                            };
                            self.refuse(code, EINVAL, e);
                            return;
                        }
                    };
                    if let Some(code) = params.refusal() {
                        let why = match params.protocol {
                            Protocol::Udp => "UDP tests are not supported".to_string(),
                            Protocol::Sctp => "SCTP tests are not supported".to_string(),
                            Protocol::Tcp => format!("parameters refused (iperf3 error {code})"),
                        };
                        self.refuse(code, 0, why);
                        return;
                    }
                    t.params = Some(params);
                    t.phase = Phase::CreateStreams;
                    let ctrl = t.ctrl;
                    self.out.push_back(Action::Send {
                        conn: ctrl,
                        bytes: vec![msg::CREATE_STREAMS as u8],
                    });
                }
                Phase::CreateStreams | Phase::Running | Phase::Done => {
                    // TEST_START is ignored (as iperf3 does); skip a run of
                    // them at once so that a flood costs one pass.
                    let skip =
                        t.rx.iter()
                            .take_while(|&&b| b as i8 == msg::TEST_START)
                            .count();
                    t.rx.drain(..skip);
                    let Some(&b) = t.rx.first() else { return };
                    t.rx.drain(..1);
                    match (t.phase, b as i8) {
                        (Phase::Running, msg::TEST_END) => self.end_test(now),
                        (Phase::Done, msg::IPERF_DONE) => {
                            self.finish();
                            return;
                        }
                        (_, msg::CLIENT_TERMINATE) => {
                            self.fail("the client terminated the test".into());
                            return;
                        }
                        (_, other) => {
                            self.fail_with(
                                Some((ierr::IEMESSAGE, 0)),
                                format!("unexpected control message {other}"),
                            );
                            return;
                        }
                    }
                }
                Phase::Results => {
                    let doc = match take_framed(&mut t.rx, MAX_RESULTS_LEN) {
                        Ok(Some(doc)) => doc,
                        Ok(None) => return,
                        Err(e) => {
                            // The client now waits for a document; an error
                            // state would be misread. Just hang up.
                            self.fail(format!("client results: {e}"));
                            return;
                        }
                    };
                    let results: Value = match serde_json::from_slice(&doc) {
                        Ok(v @ Value::Object(_)) => v,
                        Ok(_) => {
                            self.fail("client results: not a JSON object".into());
                            return;
                        }
                        Err(e) => {
                            self.fail(format!("client results: {e}"));
                            return;
                        }
                    };
                    self.send_results(results);
                }
            }
        }
    }

    /// Parameters refused: SERVER_ERROR, then hang up.
    fn refuse(&mut self, code: i32, errno: i32, why: String) {
        let Some(t) = self.test.as_ref() else { return };
        let ctrl = t.ctrl;
        self.reports.push_back(Report::Refused {
            conn: ctrl,
            reason: why.clone(),
        });
        self.fail_with(Some((code, errno)), why);
    }

    fn end_test(&mut self, now: Instant) {
        let t = self.test.as_mut().expect("a test");
        t.end = Some(now);
        t.phase = Phase::Results;
        t.deadline = Some(now + self.config.setup_timeout);
        // As iperf3: the data connections are closed at TEST_END.
        for s in &mut t.streams {
            s.tx = Tx::Finished;
            if s.open {
                s.open = false;
                self.out.push_back(Action::Close { conn: s.conn });
                if let Some(c) = self.conns.get_mut(&s.conn) {
                    c.role = Role::Dead;
                }
            }
        }
        let ctrl = t.ctrl;
        self.out.push_back(Action::Send {
            conn: ctrl,
            bytes: vec![msg::EXCHANGE_RESULTS as u8],
        });
    }

    fn send_results(&mut self, client_results: Value) {
        let t = self.test.as_mut().expect("a test");
        let p = t.params.as_ref().expect("parameters");
        // As iperf3, the streams' times start after the omitted seconds.
        let omit = Duration::from_secs(p.omit as u64);
        let secs = match (t.start, t.end) {
            (Some(s), Some(e)) => e.saturating_duration_since(s + omit).as_secs_f64(),
            _ => 0.0,
        };
        // -1: not a sender; 0: a sender that does not know its
        // retransmissions (the client then prints no Retr column); 1: they
        // are in the streams.
        let has_retransmits = t
            .streams
            .iter()
            .any(|s| s.sender && s.retransmits.is_some());
        let sender_has_retransmits = match (p.server_sends() > 0, has_retransmits) {
            (false, _) => -1,
            (true, false) => 0,
            (true, true) => 1,
        };
        let streams: Vec<Value> = t
            .streams
            .iter()
            .map(|s| {
                let retransmits = match (s.sender && has_retransmits, s.retransmits) {
                    (true, n) => n.unwrap_or(0) as i64,
                    (false, _) => -1,
                };
                json!({
                    "id": s.id,
                    "bytes": s.bytes,
                    "retransmits": retransmits,
                    "jitter": 0,
                    "errors": 0,
                    "packets": 0,
                    "start_time": 0,
                    "end_time": secs,
                })
            })
            .collect();
        let mut doc = json!({
            "cpu_util_total": 0,
            "cpu_util_user": 0,
            "cpu_util_system": 0,
            "sender_has_retransmits": sender_has_retransmits,
            "streams": streams,
        });
        if let Some(cc) = &self.config.congestion_used {
            doc["congestion_used"] = json!(cc);
        }
        if p.get_server_output {
            let mut text = String::new();
            for s in &t.streams {
                text.push_str(&format!(
                    "[{:3}] 0.00-{secs:.2} sec {} bytes {}\n",
                    s.id,
                    s.bytes,
                    if s.sender { "sender" } else { "receiver" }
                ));
            }
            doc["server_output_text"] = json!(text);
        }
        let mut bytes = framed(&doc);
        bytes.push(msg::DISPLAY_RESULTS as u8);
        t.phase = Phase::Done;
        let ctrl = t.ctrl;
        self.out.push_back(Action::Send { conn: ctrl, bytes });
        t.client_results = Some(client_results);
    }

    /// The test completed: close the control connection, report, go idle.
    fn finish(&mut self) {
        let Some(t) = self.test.take() else { return };
        self.close_ctrl(t.ctrl);
        let summary = Summary {
            params: t.params.clone().expect("parameters"),
            duration: match (t.start, t.end) {
                (Some(s), Some(e)) => e.saturating_duration_since(s),
                _ => Duration::ZERO,
            },
            streams: t
                .streams
                .iter()
                .map(|s| StreamSummary {
                    id: s.id,
                    conn: s.conn,
                    sender: s.sender,
                    bytes: s.bytes,
                })
                .collect(),
            client_results: t.client_results.unwrap_or(Value::Null),
        };
        self.reports.push_back(Report::Finished {
            ctrl: t.ctrl,
            summary,
        });
    }

    fn fail(&mut self, error: String) {
        self.fail_with(None, error);
    }

    /// The test ends early: optionally SERVER_ERROR on the control
    /// connection, then everything of the test is closed (data streams
    /// reset) and the server goes idle.
    fn fail_with(&mut self, server_err: Option<(i32, i32)>, error: String) {
        let Some(t) = self.test.take() else { return };
        let ctrl_alive = self
            .conns
            .get(&t.ctrl)
            .is_some_and(|c| c.role == Role::Control);
        if let (Some((code, errno)), true) = (server_err, ctrl_alive) {
            self.out.push_back(Action::Send {
                conn: t.ctrl,
                bytes: server_error(code, errno),
            });
        }
        self.close_ctrl(t.ctrl);
        for s in &t.streams {
            if let Some(c) = self.conns.get_mut(&s.conn) {
                if c.role != Role::Dead {
                    c.role = Role::Dead;
                    self.out.push_back(Action::Abort { conn: s.conn });
                }
            }
        }
        let pending: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.role == Role::Pending)
            .map(|(&k, _)| k)
            .collect();
        for conn in pending {
            self.conns.get_mut(&conn).expect("conn").role = Role::Dead;
            self.out.push_back(Action::Abort { conn });
        }
        self.reports.push_back(Report::Failed {
            ctrl: t.ctrl,
            error,
        });
    }

    fn close_ctrl(&mut self, ctrl: u64) {
        if let Some(c) = self.conns.get_mut(&ctrl) {
            if c.role == Role::Control {
                c.role = Role::Dead;
                self.out.push_back(Action::Close { conn: ctrl });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOKIE: &[u8; COOKIE_LEN] = b"abcdefghijklmnopqrstuvwxyz234567abcd\0";
    const OTHER: &[u8; COOKIE_LEN] = b"zzzzefghijklmnopqrstuvwxyz234567abcd\0";

    fn ms(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    fn drain(s: &mut Server) -> Vec<Action> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn reports(s: &mut Server) -> Vec<Report> {
        std::iter::from_fn(|| s.poll_report()).collect()
    }

    fn send(conn: u64, bytes: &[u8]) -> Action {
        Action::Send {
            conn,
            bytes: bytes.to_vec(),
        }
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn params(extra: &str) -> Vec<u8> {
        let mut doc = String::from(r#"{"tcp":true,"omit":0,"time":1,"parallel":1,"len":1000"#);
        if !extra.is_empty() {
            doc.push(',');
            doc.push_str(extra);
        }
        doc.push('}');
        frame(doc.as_bytes())
    }

    fn server_error_bytes(code: i32, errno: i32) -> Vec<u8> {
        let mut v = vec![0xfe];
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(&errno.to_be_bytes());
        v
    }

    const CLIENT_RESULTS: &[u8] = br#"{"cpu_util_total":1,"cpu_util_user":0.5,"cpu_util_system":0.5,"sender_has_retransmits":1,"streams":[{"id":1,"bytes":1200,"retransmits":0,"jitter":0,"errors":0,"packets":0,"start_time":0,"end_time":1}]}"#;

    /// Runs a test up to TEST_RUNNING with control connection 1 and data
    /// connections 2, 3, …; returns the server.
    fn running(extra: &str, streams: u64) -> Server {
        let mut s = Server::default();
        s.on_accept(1, ms(0));
        s.on_data(1, COOKIE, ms(1));
        assert_eq!(drain(&mut s), vec![send(1, &[9])]);
        s.on_data(1, &params(extra), ms(2));
        assert_eq!(drain(&mut s), vec![send(1, &[10])]);
        for c in 0..streams {
            s.on_accept(2 + c, ms(3));
            s.on_data(2 + c, COOKIE, ms(4));
        }
        let acts = drain(&mut s);
        assert_eq!(acts[0], send(1, &[1, 2]), "{acts:?}");
        let r = reports(&mut s);
        assert!(
            matches!(r.as_slice(), [Report::Started { ctrl: 1, .. }]),
            "{r:?}"
        );
        s.out.extend(acts.into_iter().skip(1));
        s
    }

    fn results_doc(a: &Action) -> Value {
        let Action::Send { conn: 1, bytes } = a else {
            panic!("not a send on the control connection: {a:?}")
        };
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 4 + len + 1);
        assert_eq!(*bytes.last().unwrap(), 14, "DISPLAY_RESULTS follows");
        serde_json::from_slice(&bytes[4..4 + len]).unwrap()
    }

    #[test]
    fn iperf3_default_test_every_action() {
        let mut s = running(r#""parallel":2"#, 2);
        assert_eq!(drain(&mut s), vec![], "a receiving server asks for no data");
        s.on_data(2, &[0; 500], ms(100));
        s.on_data(3, &[0; 700], ms(200));
        s.on_data(2, &[0; 1], ms(300));
        s.on_data(1, &[4], ms(1004));
        assert_eq!(
            drain(&mut s),
            vec![
                Action::Close { conn: 2 },
                Action::Close { conn: 3 },
                send(1, &[13])
            ]
        );
        // Data still in flight after TEST_END is ignored.
        s.on_data(2, &[0; 100], ms(1005));
        s.on_data(1, &frame(CLIENT_RESULTS), ms(1006));
        let acts = drain(&mut s);
        assert_eq!(acts.len(), 1);
        let doc = results_doc(&acts[0]);
        assert_eq!(doc["sender_has_retransmits"], -1);
        assert_eq!(doc["cpu_util_total"], 0);
        let st = doc["streams"].as_array().unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!(st[0]["id"], 1);
        assert_eq!(st[0]["bytes"], 501);
        assert_eq!(st[0]["retransmits"], -1);
        assert_eq!(st[1]["id"], 3);
        assert_eq!(st[1]["bytes"], 700);
        for k in ["jitter", "errors", "packets", "start_time"] {
            assert_eq!(st[1][k], 0, "{k}");
        }
        assert!((st[1]["end_time"].as_f64().unwrap() - 1.0).abs() < 0.01);
        assert!(s.is_busy());
        s.on_data(1, &[16], ms(1007));
        assert_eq!(drain(&mut s), vec![Action::Close { conn: 1 }]);
        assert!(!s.is_busy());
        let r = reports(&mut s);
        let [Report::Finished { ctrl: 1, summary }] = r.as_slice() else {
            panic!("{r:?}")
        };
        assert_eq!(summary.streams.iter().map(|s| s.bytes).sum::<u64>(), 1201);
        assert_eq!(summary.client_results["streams"][0]["bytes"], 1200);
        // The driver's close notifications are accepted, and a new test can
        // start.
        for c in 1..=3 {
            s.on_closed(c);
        }
        assert!(s.conns.is_empty());
        s.on_accept(9, ms(2000));
        s.on_data(9, OTHER, ms(2001));
        assert_eq!(drain(&mut s), vec![send(9, &[9])]);
    }

    #[test]
    fn iperf3_byte_at_a_time_is_the_same() {
        let mut whole = Vec::new();
        let mut split = Vec::new();
        for (one, out) in [(false, &mut whole), (true, &mut split)] {
            let mut s = Server::default();
            s.on_accept(1, ms(0));
            let mut feed = |s: &mut Server, conn: u64, b: &[u8]| {
                if one {
                    for &x in b {
                        s.on_data(conn, &[x], ms(1));
                    }
                } else {
                    s.on_data(conn, b, ms(1));
                }
                out.extend(drain(s));
            };
            feed(&mut s, 1, COOKIE);
            feed(&mut s, 1, &params(r#""reverse":true"#));
            s.on_accept(2, ms(1));
            feed(&mut s, 2, COOKIE);
            feed(&mut s, 1, &[4]);
            feed(&mut s, 1, &frame(CLIENT_RESULTS));
            feed(&mut s, 1, &[16]);
            assert!(!s.is_busy());
        }
        assert_eq!(whole, split);
        assert!(whole.contains(&Action::SendData { conn: 2, max: 1000 }));
    }

    #[test]
    fn iperf3_reverse_send_data_flow() {
        let mut s = running(r#""reverse":true"#, 1);
        assert_eq!(drain(&mut s), vec![Action::SendData { conn: 2, max: 1000 }]);
        // Nothing more until the outstanding block is answered.
        s.on_writable(2, ms(10));
        assert_eq!(drain(&mut s), vec![]);
        s.data_sent(2, 1000, ms(10));
        assert_eq!(drain(&mut s), vec![Action::SendData { conn: 2, max: 1000 }]);
        s.data_sent(2, 300, ms(10));
        assert_eq!(drain(&mut s), vec![], "short write: wait for writable");
        s.on_writable(2, ms(20));
        assert_eq!(drain(&mut s), vec![Action::SendData { conn: 2, max: 1000 }]);
        s.data_sent(2, 0, ms(10));
        assert_eq!(drain(&mut s), vec![]);
        // Client data on a sending stream is not counted.
        s.on_data(2, &[1; 50], ms(30));
        s.on_writable(2, ms(40));
        assert_eq!(drain(&mut s), vec![Action::SendData { conn: 2, max: 1000 }]);
        s.on_data(1, &[4], ms(1000));
        assert_eq!(
            drain(&mut s),
            vec![Action::Close { conn: 2 }, send(1, &[13])]
        );
        // The answer to the last SendData comes after TEST_END: counted (it
        // was handed to TCP), but no more data is asked for.
        s.data_sent(2, 1000, ms(10));
        s.on_writable(2, ms(1001));
        assert_eq!(drain(&mut s), vec![]);
        s.on_data(1, &frame(CLIENT_RESULTS), ms(1002));
        let acts = drain(&mut s);
        let doc = results_doc(&acts[0]);
        assert_eq!(doc["sender_has_retransmits"], 0);
        assert_eq!(doc["streams"][0]["bytes"], 1000 + 1000 + 300);
        assert_eq!(doc["streams"][0]["retransmits"], -1);
        // The client hangs up instead of IPERF_DONE: still a finished test.
        s.on_peer_closed(1);
        assert_eq!(drain(&mut s), vec![Action::Close { conn: 1 }]);
        assert!(matches!(
            reports(&mut s).as_slice(),
            [Report::Finished { .. }]
        ));
    }

    #[test]
    fn iperf3_bidir_receivers_first() {
        let mut s = running(r#""bidirectional":true,"parallel":2"#, 4);
        assert_eq!(
            drain(&mut s),
            vec![
                Action::SendData { conn: 4, max: 1000 },
                Action::SendData { conn: 5, max: 1000 }
            ]
        );
        s.on_data(2, &[0; 10], ms(5));
        s.on_data(3, &[0; 20], ms(5));
        s.data_sent(4, 40, ms(10));
        s.data_sent(5, 50, ms(10));
        s.set_retransmits(4, 7);
        s.on_data(1, &[4], ms(1000));
        drain(&mut s);
        s.on_data(1, &frame(CLIENT_RESULTS), ms(1001));
        let doc = results_doc(&drain(&mut s)[0]);
        let ids: Vec<_> = doc["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].as_u64().unwrap(), s["bytes"].as_u64().unwrap()))
            .collect();
        assert_eq!(ids, vec![(1, 10), (3, 20), (4, 40), (5, 50)]);
        assert_eq!(doc["sender_has_retransmits"], 1);
        let retr: Vec<_> = doc["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["retransmits"].as_i64().unwrap())
            .collect();
        assert_eq!(retr, vec![-1, -1, 7, 0]);
    }

    #[test]
    fn iperf3_streams_numbered_in_accept_order() {
        let mut s = Server::default();
        s.on_accept(1, ms(0));
        s.on_data(1, COOKIE, ms(0));
        s.on_data(1, &params(r#""bidirectional":true"#), ms(0));
        drain(&mut s);
        s.on_accept(20, ms(1));
        s.on_accept(10, ms(1));
        // Cookies read in the other order, and a TCP stack that says
        // "writable" early.
        s.on_data(10, COOKIE, ms(2));
        s.on_writable(10, ms(2));
        s.on_writable(20, ms(2));
        assert_eq!(drain(&mut s), vec![]);
        s.on_data(20, COOKIE, ms(2));
        assert_eq!(
            drain(&mut s),
            vec![
                send(1, &[1, 2]),
                Action::SendData {
                    conn: 10,
                    max: 1000
                }
            ]
        );
        s.on_data(20, &[0; 3], ms(3));
        s.on_data(1, &[4], ms(4));
        s.on_data(1, &frame(CLIENT_RESULTS), ms(5));
        let acts = drain(&mut s);
        let doc = results_doc(acts.last().unwrap());
        assert_eq!(doc["streams"][0]["id"], 1);
        assert_eq!(doc["streams"][0]["bytes"], 3);
        assert_eq!(doc["streams"][1]["id"], 3);
    }

    #[test]
    fn iperf3_second_client_is_denied() {
        let mut s = running("", 1);
        s.on_accept(7, ms(10));
        assert_eq!(
            drain(&mut s),
            vec![send(7, &[0xff]), Action::Close { conn: 7 }]
        );
        // Whatever it sends is ignored; the test goes on.
        s.on_data(7, COOKIE, ms(11));
        s.on_data(7, &params(""), ms(11));
        assert_eq!(drain(&mut s), vec![]);
        assert!(matches!(
            reports(&mut s).as_slice(),
            [Report::Refused { conn: 7, .. }]
        ));
        // Also while the control connection is still reading parameters.
        let mut s = Server::default();
        s.on_accept(1, ms(0));
        s.on_accept(2, ms(0));
        assert_eq!(
            drain(&mut s),
            vec![send(2, &[0xff]), Action::Close { conn: 2 }]
        );
    }

    #[test]
    fn iperf3_wrong_cookie_on_data_connection() {
        let mut s = Server::default();
        s.on_accept(1, ms(0));
        s.on_data(1, COOKIE, ms(0));
        s.on_data(1, &params(""), ms(0));
        drain(&mut s);
        s.on_accept(2, ms(1));
        s.on_data(2, &OTHER[..10], ms(1));
        assert_eq!(drain(&mut s), vec![]);
        s.on_data(2, &OTHER[10..], ms(1));
        assert_eq!(
            drain(&mut s),
            vec![send(2, &[0xff]), Action::Close { conn: 2 }]
        );
        // The right one still gets in, with data in the same segment.
        s.on_accept(3, ms(2));
        let mut b = COOKIE.to_vec();
        b.extend_from_slice(&[0; 5]);
        s.on_data(3, &b, ms(2));
        assert_eq!(drain(&mut s), vec![send(1, &[1, 2])]);
        s.on_data(3, &[0; 5], ms(3));
        assert_eq!(s.test.as_ref().unwrap().streams[0].bytes, 5 + 5);
        // A pending connection that hangs up is closed.
        let mut s = Server::default();
        s.on_accept(1, ms(0));
        s.on_data(1, COOKIE, ms(0));
        s.on_data(1, &params(r#""parallel":2"#), ms(0));
        drain(&mut s);
        s.on_accept(2, ms(1));
        s.on_peer_closed(2);
        assert_eq!(drain(&mut s), vec![Action::Close { conn: 2 }]);
        assert!(s.is_busy());
    }

    #[test]
    fn iperf3_udp_and_sctp_are_refused() {
        for (doc, code) in [
            (
                r#"{"udp":true,"time":1,"parallel":1,"len":1460}"#,
                ierr::IEUNIMP,
            ),
            (r#"{"sctp":true,"time":1,"parallel":1}"#, ierr::IENOSCTP),
            (r#"{"tcp":true,"parallel":200}"#, ierr::IENUMSTREAMS),
            (r#"{"tcp":true,"len":0}"#, ierr::IEBLOCKSIZE),
            (r#"{"tcp":true,"len":2000000}"#, ierr::IEBLOCKSIZE),
            (r#"{"tcp":true,"time":100000}"#, ierr::IEDURATION),
            (r#"{"tcp":true,"omit":1000}"#, ierr::IEOMIT),
        ] {
            let mut s = Server::default();
            s.on_accept(1, ms(0));
            s.on_data(1, COOKIE, ms(0));
            s.on_data(1, &frame(doc.as_bytes()), ms(0));
            assert_eq!(
                drain(&mut s),
                vec![
                    send(1, &[9]),
                    send(1, &server_error_bytes(code, 0)),
                    Action::Close { conn: 1 }
                ],
                "{doc}"
            );
            assert!(!s.is_busy());
            let r = reports(&mut s);
            assert!(matches!(r[0], Report::Refused { conn: 1, .. }), "{r:?}");
            assert!(matches!(r[1], Report::Failed { ctrl: 1, .. }), "{r:?}");
        }
    }

    fn after_cookie() -> Server {
        let mut s = Server::default();
        s.on_accept(1, ms(0));
        s.on_data(1, COOKIE, ms(0));
        assert_eq!(drain(&mut s), vec![send(1, &[9])]);
        s
    }

    #[test]
    fn iperf3_malformed_parameters() {
        let big = vec![b' '; MAX_PARAMS_LEN + 1];
        let cases: Vec<(Vec<u8>, i32)> = vec![
            (vec![0xff, 0xff, 0xff, 0xff], ierr::IERECVPARAMS),
            (
                ((MAX_PARAMS_LEN + 1) as u32).to_be_bytes().to_vec(),
                ierr::IERECVPARAMS,
            ),
            (frame(&big), ierr::IERECVPARAMS),
            (frame(b"{\"tcp\":tru"), ierr::IERECVPARAMS),
            (frame(b"[1,2,3]"), ierr::IERECVPARAMS),
            (frame(b""), ierr::IERECVPARAMS),
            (frame(b"{\"time\":\"ten\"}"), ierr::IERECVPARAMS),
            (frame(b"{\"parallel\":-1}"), ierr::IERECVPARAMS),
            (frame(b"{\"title\":5}"), ierr::IERECVPARAMS),
            (
                frame(b"{\"reverse\":true,\"bidirectional\":true}"),
                ierr::IEREVERSEBIDIR,
            ),
            (frame(&[0xc3, 0x28, 0x7b]), ierr::IERECVPARAMS),
        ];
        for (bytes, code) in cases {
            let mut s = after_cookie();
            s.on_data(1, &bytes, ms(1));
            assert_eq!(
                drain(&mut s),
                vec![
                    send(1, &server_error_bytes(code, EINVAL)),
                    Action::Close { conn: 1 }
                ],
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
            assert!(!s.is_busy());
            // Anything after is ignored.
            s.on_data(1, &[4, 4, 4], ms(2));
            assert_eq!(drain(&mut s), vec![]);
        }
        // Exactly 8 KiB of valid JSON is accepted.
        let mut doc = br#"{"tcp":true,"time":1,"title":""#.to_vec();
        doc.resize(MAX_PARAMS_LEN - 2, b'x');
        doc.extend_from_slice(b"\"}");
        let mut s = after_cookie();
        s.on_data(1, &frame(&doc), ms(1));
        assert_eq!(drain(&mut s), vec![send(1, &[10])]);
        assert_eq!(
            s.params().unwrap().title.as_ref().unwrap().len(),
            MAX_PARAMS_LEN - 32
        );
    }

    #[test]
    fn iperf3_garbage_control_states() {
        // While streams are awaited, and while running: SERVER_ERROR
        // (unknown message), control closed, data connections reset.
        let mut s = after_cookie();
        s.on_data(1, &params(""), ms(1));
        drain(&mut s);
        s.on_data(1, &[99], ms(2));
        assert_eq!(
            drain(&mut s),
            vec![
                send(1, &server_error_bytes(ierr::IEMESSAGE, 0)),
                Action::Close { conn: 1 }
            ]
        );
        for bad in [0x80u8, 9, 13, 16, 0xff] {
            let mut s = running(r#""parallel":2"#, 2);
            drain(&mut s);
            s.on_data(1, &[bad], ms(10));
            assert_eq!(
                drain(&mut s),
                vec![
                    send(1, &server_error_bytes(ierr::IEMESSAGE, 0)),
                    Action::Close { conn: 1 },
                    Action::Abort { conn: 2 },
                    Action::Abort { conn: 3 }
                ],
                "state byte {bad}"
            );
            assert!(!s.is_busy());
            assert!(matches!(
                reports(&mut s).as_slice(),
                [Report::Failed { .. }]
            ));
        }
        // TEST_START while running is ignored, as iperf3 does (a flood of
        // them too).
        let mut s = running("", 1);
        s.on_data(1, &[1], ms(10));
        s.on_data(1, &vec![1; 4 << 20], ms(10));
        assert_eq!(drain(&mut s), vec![]);
        assert!(s.is_busy());
        // CLIENT_TERMINATE ends the test without an error message.
        s.on_data(1, &[12], ms(11));
        assert_eq!(
            drain(&mut s),
            vec![Action::Close { conn: 1 }, Action::Abort { conn: 2 }]
        );
    }

    #[test]
    fn iperf3_malformed_results() {
        let big = ((MAX_RESULTS_LEN + 1) as u32).to_be_bytes();
        for bad in [&big[..], &frame(b"{oops")[..], &frame(b"42")[..]] {
            let mut s = running("", 1);
            s.on_data(1, &[4], ms(500));
            assert_eq!(
                drain(&mut s),
                vec![Action::Close { conn: 2 }, send(1, &[13])]
            );
            s.on_data(1, bad, ms(501));
            assert_eq!(drain(&mut s), vec![Action::Close { conn: 1 }]);
            assert!(!s.is_busy());
        }
        // IPERF_DONE expected after the results; anything else is an error.
        let mut s = running("", 1);
        s.on_data(1, &[4], ms(500));
        s.on_data(1, &frame(CLIENT_RESULTS), ms(501));
        drain(&mut s);
        s.on_data(1, &[4], ms(502));
        assert_eq!(
            drain(&mut s),
            vec![
                send(1, &server_error_bytes(ierr::IEMESSAGE, 0)),
                Action::Close { conn: 1 }
            ]
        );
    }

    #[test]
    fn iperf3_client_vanishes() {
        let mut s = running(r#""reverse":true"#, 1);
        drain(&mut s);
        s.on_peer_closed(1);
        assert_eq!(
            drain(&mut s),
            vec![Action::Close { conn: 1 }, Action::Abort { conn: 2 }]
        );
        assert!(!s.is_busy());
        // The answer to the last SendData comes too late: ignored.
        s.data_sent(2, 1000, ms(10));
        assert_eq!(drain(&mut s), vec![]);
        // A reset control connection does the same.
        let mut s = running("", 1);
        s.on_closed(1);
        assert_eq!(drain(&mut s), vec![Action::Abort { conn: 2 }]);
        assert!(!s.is_busy());
        // A data stream gone mid-test stops being sent on; the test goes on.
        let mut s = running(r#""reverse":true,"parallel":2"#, 2);
        drain(&mut s);
        s.on_closed(2);
        s.data_sent(2, 1000, ms(10));
        s.data_sent(3, 1000, ms(10));
        assert_eq!(drain(&mut s), vec![Action::SendData { conn: 3, max: 1000 }]);
        assert!(s.is_busy());
    }

    #[test]
    fn iperf3_timeouts() {
        // Set-up stalls.
        let mut s = Server::default();
        s.on_accept(1, ms(0));
        assert_eq!(
            s.poll_timeout(),
            Some(Instant::ZERO + DEFAULT_SETUP_TIMEOUT)
        );
        s.handle_timeout(ms(1000));
        assert_eq!(drain(&mut s), vec![]);
        s.handle_timeout(Instant::ZERO + DEFAULT_SETUP_TIMEOUT);
        assert_eq!(drain(&mut s), vec![Action::Close { conn: 1 }]);
        assert!(!s.is_busy());
        assert_eq!(s.poll_timeout(), None);
        // No TEST_END: given up after time + omit + grace.
        let mut s = running(r#""omit":2"#, 1);
        let end = ms(4) + Duration::from_secs(3) + DEFAULT_END_GRACE;
        assert_eq!(s.poll_timeout(), Some(end));
        s.handle_timeout(end);
        assert_eq!(
            drain(&mut s),
            vec![Action::Close { conn: 1 }, Action::Abort { conn: 2 }]
        );
        // A byte-count test has no deadline while running.
        let s = running(r#""time":0,"num":1000000"#, 1);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn iperf3_omitted_seconds_are_not_counted() {
        let mut s = running(r#""omit":1,"bidirectional":true"#, 2);
        assert_eq!(drain(&mut s), vec![Action::SendData { conn: 3, max: 1000 }]);
        s.on_data(2, &[0; 100], ms(500));
        s.data_sent(3, 1000, ms(500));
        s.on_data(2, &[0; 30], ms(1500));
        s.data_sent(3, 7, ms(1500));
        s.on_data(1, &[4], ms(2004));
        drain(&mut s);
        s.on_data(1, &frame(CLIENT_RESULTS), ms(2005));
        let doc = results_doc(&drain(&mut s)[0]);
        assert_eq!(doc["streams"][0]["bytes"], 30);
        assert_eq!(doc["streams"][1]["bytes"], 7);
        // Times count from the end of the omitted second.
        assert!((doc["streams"][1]["end_time"].as_f64().unwrap() - 1.0).abs() < 0.01);
    }

    #[test]
    fn iperf3_rate_and_count_limits() {
        // -b 8000 bit/s with 100-byte blocks: one block per 100 ms.
        let mut s = running(r#""reverse":true,"len":100,"bandwidth":8000"#, 1);
        assert_eq!(drain(&mut s), vec![Action::SendData { conn: 2, max: 100 }]);
        s.data_sent(2, 100, ms(4));
        assert_eq!(drain(&mut s), vec![]);
        assert_eq!(s.poll_timeout(), Some(ms(4 + 100)));
        s.handle_timeout(ms(50));
        assert_eq!(drain(&mut s), vec![]);
        s.handle_timeout(ms(104));
        assert_eq!(drain(&mut s), vec![Action::SendData { conn: 2, max: 100 }]);
        // -n 250 over two streams: 250 bytes in all, then nothing more.
        let mut s = running(r#""reverse":true,"len":100,"num":250,"parallel":2"#, 2);
        let mut total = 0;
        for _ in 0..10 {
            for a in drain(&mut s) {
                let Action::SendData { conn, max } = a else {
                    panic!("{a:?}")
                };
                total += max;
                s.data_sent(conn, max, ms(10));
            }
        }
        assert_eq!(total, 250);
        // -k 3 blocks.
        let mut s = running(r#""reverse":true,"len":100,"blockcount":3"#, 1);
        let mut total = 0;
        while let Some(Action::SendData { conn, max }) = s.poll_output() {
            total += max;
            s.data_sent(conn, max, ms(10));
        }
        assert_eq!(total, 300);
    }

    #[test]
    fn iperf3_params_defaults_and_options() {
        let p = TestParams::from_json(
            br#"{"tcp":true,"omit":0,"time":0,"num":0,"blockcount":0,"MSS":1400,"nodelay":true,"parallel":3,"reverse":true,"window":65536,"len":8192,"bandwidth":1000000,"pacing_timer":1000,"TOS":16,"congestion":"cubic","title":"t","extra_data":"x","get_server_output":1,"client_version":"3.12","unknown_key":[1]}"#,
        )
        .unwrap();
        assert_eq!(p.direction, Direction::ServerToClient);
        assert_eq!((p.parallel, p.len, p.time), (3, 8192, 0));
        assert_eq!(
            (p.mss, p.window, p.tos),
            (Some(1400), Some(65536), Some(16))
        );
        assert!(p.nodelay && p.get_server_output);
        assert_eq!(p.congestion.as_deref(), Some("cubic"));
        assert_eq!(p.refusal(), None);
        let d = TestParams::from_json(b"{}").unwrap();
        assert_eq!(d.protocol, Protocol::Tcp);
        assert_eq!((d.time, d.parallel, d.len), (10, 1, DEFAULT_TCP_BLKSIZE));
        assert_eq!(d.direction, Direction::ClientToServer);
    }

    proptest::proptest! {
        /// Arbitrary bytes and events, in any order, never panic and never
        /// leave more than one SendData outstanding per connection.
        #[test]
        fn iperf3_never_panics(
            ops in proptest::collection::vec(
                (0u8..8, 1u64..5, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)),
                0..200,
            )
        ) {
            let mut s = Server::default();
            let mut t = 0;
            let mut outstanding: HashMap<u64, usize> = HashMap::new();
            for (op, conn, bytes) in ops {
                t += 7;
                match op {
                    0 => s.on_accept(conn, ms(t)),
                    1 => s.on_data(conn, &bytes, ms(t)),
                    // Scripted pieces, so that later phases are reached.
                    2 => s.on_data(conn, COOKIE, ms(t)),
                    3 => s.on_data(conn, &params(r#""bidirectional":true"#), ms(t)),
                    4 => s.on_data(conn, &[*bytes.first().unwrap_or(&4) & 0x1f], ms(t)),
                    5 => {
                        if let Some(max) = outstanding.remove(&conn) {
                            s.data_sent(conn, bytes.len().min(max), ms(t));
                        }
                        s.on_writable(conn, ms(t));
                    }
                    6 => s.on_peer_closed(conn),
                    _ => {
                        s.on_closed(conn);
                        outstanding.remove(&conn);
                        s.handle_timeout(ms(t * 1000));
                    }
                }
                while let Some(a) = s.poll_output() {
                    match a {
                        Action::SendData { conn, max } => {
                            proptest::prop_assert!(outstanding.insert(conn, max).is_none());
                        }
                        Action::Close { conn } | Action::Abort { conn } => {
                            outstanding.remove(&conn);
                        }
                        Action::Send { .. } => {}
                    }
                }
                while s.poll_report().is_some() {}
            }
        }
    }
}

/// The server driven by kernel sockets on 127.0.0.1, against the stock
/// iperf3 client (skipped if `iperf3` is not installed).
#[cfg(test)]
mod kernel_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::process::{Command, Output, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Arc, Mutex};
    use std::thread;

    enum Cmd {
        Send(Vec<u8>),
        Data(usize),
        Close,
        Abort,
    }

    /// A blocking adapter: per connection, a reader thread feeds
    /// `on_data`, a writer thread executes the actions; a timer thread runs
    /// `handle_timeout`. The server's lock orders all calls.
    struct Harness {
        srv: Mutex<Server>,
        writers: Mutex<HashMap<u64, Sender<Cmd>>>,
        reports: Mutex<Vec<Report>>,
        epoch: std::time::Instant,
    }

    impl Harness {
        fn now(&self) -> Instant {
            Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
        }

        /// Calls `f` on the server, then hands its actions to the writers.
        fn with(&self, f: impl FnOnce(&mut Server, Instant)) {
            // The time of the event, not of when the lock was had.
            let now = self.now();
            let mut srv = self.srv.lock().unwrap();
            f(&mut srv, now);
            let writers = self.writers.lock().unwrap();
            while let Some(a) = srv.poll_output() {
                let (conn, cmd) = match a {
                    Action::Send { conn, bytes } => (conn, Cmd::Send(bytes)),
                    Action::SendData { conn, max } => (conn, Cmd::Data(max)),
                    Action::Close { conn } => (conn, Cmd::Close),
                    Action::Abort { conn } => (conn, Cmd::Abort),
                };
                if let Some(w) = writers.get(&conn) {
                    let _ = w.send(cmd);
                }
            }
            let mut reports = self.reports.lock().unwrap();
            while let Some(r) = srv.poll_report() {
                reports.push(r);
            }
        }

        fn start() -> (Arc<Harness>, u16) {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let h = Arc::new(Harness {
                srv: Mutex::new(Server::default()),
                writers: Mutex::new(HashMap::new()),
                reports: Mutex::new(Vec::new()),
                epoch: std::time::Instant::now(),
            });
            let next = AtomicU64::new(1);
            let hh = h.clone();
            thread::spawn(move || {
                for s in listener.incoming() {
                    let Ok(s) = s else { continue };
                    let conn = next.fetch_add(1, Ordering::Relaxed);
                    hh.spawn_conn(conn, s);
                }
            });
            let hh = h.clone();
            thread::spawn(move || loop {
                thread::sleep(Duration::from_millis(20));
                hh.with(|srv, now| {
                    if srv.poll_timeout().is_some_and(|t| t <= now) {
                        srv.handle_timeout(now);
                    }
                });
            });
            (h, port)
        }

        fn spawn_conn(self: &Arc<Self>, conn: u64, stream: TcpStream) {
            let (tx, rx) = channel::<Cmd>();
            self.writers.lock().unwrap().insert(conn, tx);
            stream
                .set_write_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            // Control messages must not wait for the ACK of the previous
            // one (see the module documentation).
            stream.set_nodelay(true).unwrap();
            let mut reader = stream.try_clone().unwrap();
            let mut writer = stream;
            // Before the reader starts: the server must know the
            // connection before its first bytes.
            self.with(|srv, now| srv.on_accept(conn, now));
            let h = self.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => {
                            h.with(|srv, _| srv.on_peer_closed(conn));
                            break;
                        }
                        Ok(n) => h.with(|srv, now| srv.on_data(conn, &buf[..n], now)),
                        Err(_) => {
                            h.with(|srv, _| srv.on_closed(conn));
                            break;
                        }
                    }
                }
            });
            let h = self.clone();
            thread::spawn(move || {
                // The payload: one pattern buffer, reused for every block.
                let mut pattern: Vec<u8> = Vec::new();
                for cmd in rx {
                    match cmd {
                        Cmd::Send(bytes) => {
                            if writer.write_all(&bytes).is_err() {
                                h.with(|srv, _| srv.on_closed(conn));
                                return;
                            }
                        }
                        Cmd::Data(max) => {
                            if pattern.len() < max {
                                pattern = (0..max).map(|i| i as u8).collect();
                            }
                            let n = match writer.write(&pattern[..max]) {
                                Ok(n) => n,
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) =>
                                {
                                    0
                                }
                                Err(_) => {
                                    h.with(|srv, _| srv.on_closed(conn));
                                    return;
                                }
                            };
                            h.with(|srv, now| {
                                srv.data_sent(conn, n, now);
                                if n < max {
                                    // A blocking socket can always be
                                    // tried again.
                                    srv.on_writable(conn, now);
                                }
                            });
                        }
                        Cmd::Close => {
                            let _ = writer.shutdown(Shutdown::Write);
                            h.with(|srv, _| srv.on_closed(conn));
                            return;
                        }
                        Cmd::Abort => {
                            let _ = writer.shutdown(Shutdown::Both);
                            h.with(|srv, _| srv.on_closed(conn));
                            return;
                        }
                    }
                }
            });
        }

        fn wait_idle(&self) {
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while self.srv.lock().unwrap().is_busy() {
                assert!(std::time::Instant::now() < until, "server still busy");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn client(port: u16, args: &[&str]) -> std::process::Child {
        Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run iperf3")
    }

    fn finish(child: std::process::Child) -> Output {
        // iperf3's own timeouts end it; the test harness's timeout is the
        // backstop.
        child.wait_with_output().unwrap()
    }

    fn json(out: &Output) -> Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "client output is not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    fn bytes(v: &Value, path: &[&str]) -> u64 {
        let mut x = v;
        for p in path {
            x = &x[*p];
        }
        x.as_u64().unwrap_or_else(|| panic!("no {path:?} in {v}"))
    }

    fn ok(out: &Output, what: &str) -> Value {
        assert!(
            out.status.success(),
            "{what}: iperf3 failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        json(out)
    }

    #[test]
    fn iperf3_stock_client_against_kernel_sockets() {
        // Never skipped: `cargo xtask setup` installs iperf3.
        assert!(
            Command::new("iperf3").arg("--version").output().is_ok(),
            "iperf3 is not installed (cargo xtask setup installs it)"
        );
        let (h, port) = Harness::start();

        // Default test: the client sends, the server's counts come back as
        // the receiver's numbers.
        let v = ok(&finish(client(port, &["-t", "1", "-J"])), "default");
        assert!(bytes(&v, &["end", "sum_sent", "bytes"]) > 0);
        let rx = bytes(&v, &["end", "sum_received", "bytes"]);
        assert!(rx > 0);
        assert!(rx <= bytes(&v, &["end", "sum_sent", "bytes"]));
        // The server's clock agrees with the client's on the test length.
        let secs = v["end"]["sum_received"]["seconds"].as_f64().unwrap();
        assert!((0.95..1.2).contains(&secs), "{secs}");
        h.wait_idle();

        // -P 4: four streams, each counted.
        let v = ok(&finish(client(port, &["-t", "1", "-J", "-P", "4"])), "-P 4");
        let streams = v["end"]["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 4);
        for s in streams {
            assert!(s["receiver"]["bytes"].as_u64().unwrap() > 0, "{s}");
        }
        assert!(bytes(&v, &["end", "sum_received", "bytes"]) > 0);
        h.wait_idle();

        // -R: the server sends (SendData / data_sent).
        let v = ok(&finish(client(port, &["-t", "1", "-J", "-R"])), "-R");
        assert!(bytes(&v, &["end", "sum_sent", "bytes"]) > 0);
        assert!(bytes(&v, &["end", "sum_received", "bytes"]) > 0);
        h.wait_idle();

        // --bidir: both ways at once.
        let v = ok(
            &finish(client(port, &["-t", "1", "-J", "--bidir"])),
            "--bidir",
        );
        for k in [
            "sum_sent",
            "sum_received",
            "sum_sent_bidir_reverse",
            "sum_received_bidir_reverse",
        ] {
            assert!(bytes(&v, &["end", k, "bytes"]) > 0, "{k}");
        }
        h.wait_idle();

        // -l with -R and -P: blocks of the client's size.
        let v = ok(
            &finish(client(
                port,
                &["-t", "1", "-J", "-R", "-P", "2", "-l", "8K"],
            )),
            "-R -P 2 -l 8K",
        );
        assert_eq!(v["start"]["test_start"]["blksize"], 8192);
        assert!(bytes(&v, &["end", "sum_received", "bytes"]) > 0);
        h.wait_idle();

        // The plain-text report.
        let out = finish(client(port, &["-t", "1", "--get-server-output"]));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("receiver") && text.contains("iperf Done."),
            "{text}"
        );
        assert!(text.contains("Server output:"), "{text}");
        h.wait_idle();

        // -O: the server's count (here as the sender) leaves out the
        // omitted second, and so do its times.
        let v = ok(
            &finish(client(port, &["-t", "1", "-J", "-R", "-O", "1"])),
            "-R -O 1",
        );
        assert!(bytes(&v, &["end", "sum_sent", "bytes"]) > 0);
        let secs = v["end"]["sum_sent"]["seconds"].as_f64().unwrap();
        assert!((0.9..1.5).contains(&secs), "{secs}");
        h.wait_idle();

        // -b paces what the server sends: two streams of 100 Mbit/s.
        let v = ok(
            &finish(client(
                port,
                &["-t", "1", "-J", "-R", "-P", "2", "-b", "100M"],
            )),
            "-R -b 100M",
        );
        let rate = v["end"]["sum_sent"]["bits_per_second"].as_f64().unwrap();
        assert!((1.4e8..2.6e8).contains(&rate), "{rate}");

        // UDP is refused with a clear error and a failing exit status
        // (iperf3 3.12 exits with 0 after an error when it reports in
        // JSON, whatever the server: the error is in the document).
        let out = finish(client(port, &["-t", "1", "-J", "-u"]));
        let err = json(&out)["error"].as_str().unwrap_or_default().to_string();
        assert!(err.contains("not implemented"), "{err}");
        let out = finish(client(port, &["-t", "1", "-u"]));
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("not implemented"), "{text}");
        h.wait_idle();

        // A second client while a test runs is told the server is busy.
        let started = || {
            h.reports
                .lock()
                .unwrap()
                .iter()
                .filter(|r| matches!(r, Report::Started { .. }))
                .count()
        };
        let before = started();
        let first = client(port, &["-t", "2", "-J"]);
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while started() == before {
            assert!(
                std::time::Instant::now() < until,
                "first test never started"
            );
            thread::sleep(Duration::from_millis(10));
        }
        let out = finish(client(port, &["-t", "1", "-J"]));
        let err = json(&out)["error"].as_str().unwrap_or_default().to_string();
        assert!(err.contains("busy"), "{err}");
        let out = finish(client(port, &["-t", "1"]));
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("busy"), "{text}");
        let v = ok(&finish(first), "first of two");
        assert!(bytes(&v, &["end", "sum_received", "bytes"]) > 0);
        h.wait_idle();

        let reports = h.reports.lock().unwrap();
        let finished = reports
            .iter()
            .filter(|r| matches!(r, Report::Finished { .. }))
            .count();
        assert_eq!(finished, 9, "{reports:#?}");
    }
}
