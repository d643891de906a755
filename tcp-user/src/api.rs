//! The library API: TCP over the kernel-bypass endpoint, shaped like
//! `tokio::net`.
//!
//! An [`Endpoint`] owns one interface (all its RX queues): it loads the XDP
//! program, opens the AF_XDP sockets and runs the driver as a tokio task.
//! [`TcpListener`]s accept connections on its address, [`Endpoint::connect`]
//! opens them, and a [`TcpStream`] is read and written through tokio's
//! [`AsyncRead`] and [`AsyncWrite`].
//!
//! ```no_run
//! use tcp_user::api::{Endpoint, EndpointConfig};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let endpoint = Endpoint::bind(EndpointConfig::new("eth0")).await?;
//! let listener = endpoint.listen(7)?;
//! loop {
//!     let (mut stream, peer) = listener.accept().await?;
//!     tokio::spawn(async move {
//!         let mut buf = vec![0; 4096];
//!         while let Ok(n) = stream.read(&mut buf).await {
//!             if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
//!                 break;
//!             }
//!         }
//!         println!("{peer} done");
//!     });
//! }
//! # }
//! ```
//!
//! Every call takes the endpoint's core lock briefly (never across an
//! `.await`); the driver task takes it once per turn. Handles are `Send`
//! and work on any tokio runtime; a current-thread runtime keeps the
//! driver and the application on one CPU, which is fastest.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tcp_common::FlowKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::driver::{self, RunConfig, Shared};
use crate::tcp::{self, ConnId, ConnInfo, Event, FourTuple, Instant, Stack};
use crate::xdp::XdpMode;

/// Connections a listener holds accepted but not yet taken by
/// [`TcpListener::accept`]; more are reset (as a full kernel backlog drops
/// the handshake).
pub const ACCEPT_BACKLOG: usize = 4096;

/// How an [`Endpoint`] is set up. [`EndpointConfig::new`] gives the
/// defaults for an interface.
///
/// ```
/// use tcp_user::api::EndpointConfig;
/// let mut cfg = EndpointConfig::new("eth0");
/// cfg.tcp.min_rto = std::time::Duration::from_millis(20);
/// cfg.ephemeral_ports = 50_000..=50_999;
/// assert_eq!(cfg.iface, "eth0");
/// ```
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    pub iface: String,
    /// The endpoint's address; the interface's first IPv4 address if None.
    pub addr: Option<Ipv4Addr>,
    /// AF_XDP sockets to open (one per RX queue); all queues if None.
    pub queues: Option<u32>,
    pub xdp_mode: XdpMode,
    pub tcp: tcp::Config,
    /// Source ports for [`Endpoint::connect`]. By default a range disjoint
    /// from the kernel's `net.ipv4.ip_local_port_range`, so the kernel's own
    /// connections never collide with the endpoint's.
    pub ephemeral_ports: RangeInclusive<u16>,
    /// How long [`Endpoint::connect`] waits for the next hop's MAC address.
    pub resolve_timeout: Duration,
    /// Capture every frame received and sent to this pcap file.
    pub pcap: Option<PathBuf>,
    /// Spin on the rings instead of sleeping when idle (lower latency; the
    /// driver's thread stays busy). Off by default.
    pub busy_poll: bool,
}

impl EndpointConfig {
    /// Defaults for `iface`.
    pub fn new(iface: impl Into<String>) -> EndpointConfig {
        EndpointConfig {
            iface: iface.into(),
            addr: None,
            queues: None,
            xdp_mode: XdpMode::Auto,
            tcp: tcp::Config::default(),
            ephemeral_ports: default_ephemeral_ports(),
            resolve_timeout: Duration::from_secs(3),
            pcap: None,
            busy_poll: false,
        }
    }
}

/// The source ports the endpoint uses for active opens: above the kernel's
/// `ip_local_port_range` when there is room there (Linux's default range
/// ends at 60999, so 61000–65535), else below it.
pub fn default_ephemeral_ports() -> RangeInclusive<u16> {
    let kernel = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        });
    disjoint_range(kernel)
}

fn disjoint_range(kernel: Option<(u16, u16)>) -> RangeInclusive<u16> {
    const WANT: u16 = 1000;
    match kernel {
        Some((_, hi)) if hi <= 65535 - WANT => (hi + 1)..=65535,
        Some((lo, _)) if lo > 1024 + WANT => 1024..=(lo - 1),
        _ => 61000..=65535,
    }
}

/// The XDP flows-map key of a connection.
pub(crate) fn flow_key(t: &FourTuple) -> FlowKey {
    FlowKey {
        remote_ip: t.remote.ip().octets(),
        local_ip: t.local.ip().octets(),
        remote_port: t.remote.port().to_be_bytes(),
        local_port: t.local.port().to_be_bytes(),
    }
}

/// A core error as the `std::io::ErrorKind` a tokio user expects.
fn io_error(e: tcp::Error) -> io::Error {
    use io::ErrorKind as K;
    let kind = match e {
        tcp::Error::Refused => K::ConnectionRefused,
        tcp::Error::Reset => K::ConnectionReset,
        tcp::Error::TimedOut => K::TimedOut,
        tcp::Error::Aborted => K::ConnectionAborted,
        tcp::Error::WouldBlock => K::WouldBlock,
        tcp::Error::WriteClosed => K::BrokenPipe,
        tcp::Error::NotFound => K::NotConnected,
        tcp::Error::InUse => K::AddrInUse,
        tcp::Error::Full => K::OutOfMemory,
    };
    io::Error::new(kind, e)
}

/// What the library API keeps in the endpoint's core: its listeners, its
/// connections' wakers, and the flows it opened.
#[derive(Default)]
pub(crate) struct Apps {
    listeners: HashMap<u16, ListenerSlot>,
    conns: HashMap<ConnId, ConnSlot>,
    /// Active opens in the XDP flows map, removed when the core is done
    /// with them (after TIME-WAIT).
    flows: HashSet<FourTuple>,
}

#[derive(Default)]
struct ListenerSlot {
    backlog: VecDeque<ConnId>,
    waker: Option<Waker>,
}

struct ConnSlot {
    tuple: FourTuple,
    read: Option<Waker>,
    write: Option<Waker>,
    /// The handshake completed.
    established: bool,
    /// The core released the connection; `error` says why, if not cleanly.
    closed: bool,
    error: Option<tcp::Error>,
    /// The application dropped its handle: forget the slot once closed.
    dropped: bool,
}

impl ConnSlot {
    fn new(tuple: FourTuple, established: bool) -> ConnSlot {
        ConnSlot {
            tuple,
            read: None,
            write: None,
            established,
            closed: false,
            error: None,
            dropped: false,
        }
    }

    fn wake_all(&mut self) {
        if let Some(w) = self.read.take() {
            w.wake();
        }
        if let Some(w) = self.write.take() {
            w.wake();
        }
    }
}

impl Apps {
    /// Whether an event of the core concerns an API handle (else it goes
    /// to the built-in services).
    pub(crate) fn owns(&self, ev: &Event) -> bool {
        match ev {
            Event::Accepted { listener, .. } => self.listeners.contains_key(listener),
            Event::Connected(c) | Event::Readable(c) | Event::Writable(c) => {
                self.conns.contains_key(c)
            }
            Event::Closed { conn, .. } => self.conns.contains_key(conn),
        }
    }

    /// Whether `tuple` was an active open (and forgets it).
    pub(crate) fn forget_flow(&mut self, tuple: &FourTuple) -> bool {
        self.flows.remove(tuple)
    }

    pub(crate) fn handle(&mut self, stack: &mut Stack, now: Instant, ev: Event) {
        match ev {
            Event::Accepted { conn, listener } => {
                let Some(l) = self.listeners.get_mut(&listener) else {
                    return;
                };
                let Some(tuple) = stack.tuple(conn) else {
                    return;
                };
                if l.backlog.len() >= ACCEPT_BACKLOG {
                    let _ = stack.abort(now, conn);
                    return;
                }
                l.backlog.push_back(conn);
                self.conns.insert(conn, ConnSlot::new(tuple, true));
                if let Some(w) = l.waker.take() {
                    w.wake();
                }
            }
            Event::Connected(conn) => {
                if let Some(s) = self.conns.get_mut(&conn) {
                    s.established = true;
                    s.wake_all();
                }
            }
            Event::Readable(conn) => {
                if let Some(w) = self.conns.get_mut(&conn).and_then(|s| s.read.take()) {
                    w.wake();
                }
            }
            Event::Writable(conn) => {
                if let Some(w) = self.conns.get_mut(&conn).and_then(|s| s.write.take()) {
                    w.wake();
                }
            }
            Event::Closed { conn, error, .. } => {
                let Some(s) = self.conns.get_mut(&conn) else {
                    return;
                };
                if s.dropped {
                    self.conns.remove(&conn);
                    return;
                }
                s.closed = true;
                s.error = error;
                s.wake_all();
            }
        }
    }
}

/// Keeps the driver alive while any handle exists; the last one to go
/// wakes the driver so it can shut down.
struct Inner {
    shared: Arc<Shared>,
    liveness: Option<Arc<()>>,
    ephemeral: RangeInclusive<u16>,
    next_port: AtomicU32,
    resolve_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The token goes first, so the driver sees no handle left when the
        // wakeup reaches it.
        drop(self.liveness.take());
        self.shared.wake.notify_one();
    }
}

/// A kernel-bypass TCP endpoint on one interface. Cloning gives another
/// handle to the same endpoint; the XDP program stays attached until the
/// endpoint and every listener and stream made from it are dropped (then
/// open connections are reset and the program detached).
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use tcp_user::api::{Endpoint, EndpointConfig};
/// let endpoint = Endpoint::bind(EndpointConfig::new("eth0")).await?;
/// println!("serving on {}", endpoint.local_addr());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl Endpoint {
    /// Attaches to the interface and starts the driver on the current tokio
    /// runtime.
    pub async fn bind(cfg: EndpointConfig) -> io::Result<Endpoint> {
        if cfg.ephemeral_ports.is_empty() || *cfg.ephemeral_ports.start() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "ephemeral port range {:?} is empty or starts at 0",
                    cfg.ephemeral_ports
                ),
            ));
        }
        let run = RunConfig {
            iface: cfg.iface.clone(),
            addr: cfg.addr,
            services: Vec::new(),
            queues: cfg.queues,
            xdp_mode: cfg.xdp_mode,
            tcp: cfg.tcp.clone(),
            control_socket: PathBuf::new(),
            pcap: cfg.pcap.clone(),
            grace: Duration::ZERO,
            log_level: tracing::Level::WARN,
            busy_poll: cfg.busy_poll,
        };
        // Loading a BPF program and mapping rings block: not on a runtime
        // worker.
        let (driver, _) = tokio::task::spawn_blocking(move || driver::start(run))
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        let shared = driver.shared();
        let liveness = Arc::new(());
        tokio::spawn(driver.serve_library(Arc::downgrade(&liveness)));
        let start = *cfg.ephemeral_ports.start() as u32;
        Ok(Endpoint {
            inner: Arc::new(Inner {
                shared,
                liveness: Some(liveness),
                next_port: AtomicU32::new(start),
                ephemeral: cfg.ephemeral_ports,
                resolve_timeout: cfg.resolve_timeout,
            }),
        })
    }

    /// The endpoint's IPv4 address.
    pub fn local_addr(&self) -> Ipv4Addr {
        self.inner.shared.iface.addr
    }

    /// Listens on `port` of the endpoint's address.
    pub fn listen(&self, port: u16) -> io::Result<TcpListener> {
        TcpListener::bind(self, port)
    }

    /// The connection table (all connections, any owner), as `tcp-user
    /// stat` shows it.
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.inner.shared.lock().stack.connections()
    }

    /// The core's counters.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.inner.shared.lock().stack.counters()
    }

    /// Opens a connection to `remote` (active open). The next hop's MAC
    /// address comes from the kernel's routing and neighbour tables; the
    /// flow is in the XDP flows map before the SYN leaves.
    ///
    /// Errors: `ConnectionRefused` (a RST answered the SYN), `TimedOut`
    /// (no answer within the SYN retries), `AddrNotAvailable` (no free
    /// source port), `HostUnreachable`/`NetworkUnreachable` (no route or
    /// no neighbour).
    ///
    /// ```no_run
    /// # async fn demo(endpoint: tcp_user::api::Endpoint) -> std::io::Result<()> {
    /// use tokio::io::AsyncWriteExt;
    /// let mut s = endpoint.connect("198.18.0.2:9".parse().unwrap()).await?;
    /// s.write_all(b"hello").await?;
    /// s.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(&self, remote: SocketAddrV4) -> io::Result<TcpStream> {
        let shared = &self.inner.shared;
        let known = shared.lock().peer_macs.get(remote.ip()).copied();
        let mac = match known {
            Some(mac) => mac,
            None => {
                resolve_mac(&shared.iface.name, *remote.ip(), self.inner.resolve_timeout).await?
            }
        };
        let stream = {
            let mut guard = shared.lock();
            let core = &mut *guard;
            let now = core.clock.now();
            let local = self.free_port(&core.stack, remote)?;
            let tuple = FourTuple { local, remote };
            core.peer_macs.insert(*remote.ip(), mac);
            core.xdp
                .add_flow(flow_key(&tuple))
                .map_err(|e| io::Error::other(format!("{e:#}")))?;
            core.apps.flows.insert(tuple);
            let id = match core.stack.connect(now, local, remote) {
                Ok(id) => id,
                Err(e) => {
                    core.apps.flows.remove(&tuple);
                    let _ = core.xdp.remove_flow(flow_key(&tuple));
                    return Err(io_error(e));
                }
            };
            core.apps.conns.insert(id, ConnSlot::new(tuple, false));
            TcpStream::new(self.clone(), id, tuple)
        };
        shared.wake.notify_one();
        // Dropping this future drops the stream, which closes the embryo.
        std::future::poll_fn(|cx| stream.inner.poll_established(cx)).await?;
        Ok(stream)
    }

    /// A source port in the ephemeral range not in use towards `remote`.
    fn free_port(&self, stack: &Stack, remote: SocketAddrV4) -> io::Result<SocketAddrV4> {
        let (lo, hi) = (
            *self.inner.ephemeral.start() as u32,
            *self.inner.ephemeral.end() as u32,
        );
        let span = hi - lo + 1;
        for _ in 0..span {
            let n = self.inner.next_port.fetch_add(1, Ordering::Relaxed);
            let port = (lo + (n.wrapping_sub(lo)) % span) as u16;
            let local = SocketAddrV4::new(self.local_addr(), port);
            if !stack.in_use(&FourTuple { local, remote }) {
                return Ok(local);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!(
                "every source port in {}-{} is in use towards {remote}",
                lo, hi
            ),
        ))
    }
}

/// The next hop's MAC address towards `dst` out of `iface`, from the
/// kernel's routing and neighbour tables (resolving it when missing).
async fn resolve_mac(iface: &str, dst: Ipv4Addr, timeout: Duration) -> io::Result<[u8; 6]> {
    use crate::netlink::NetlinkError as E;
    match crate::netlink::next_hop_mac(iface, dst, timeout).await {
        Ok((_src, mac)) => Ok(mac),
        Err(e) => {
            let kind = match &e {
                E::NoRoute(_) | E::WrongInterface { .. } => io::ErrorKind::NetworkUnreachable,
                E::NeighbourUnreachable { .. } => io::ErrorKind::HostUnreachable,
                E::NotUnicast { .. } | E::UnsupportedNextHop { .. } => {
                    io::ErrorKind::AddrNotAvailable
                }
                _ => io::ErrorKind::Other,
            };
            Err(io::Error::new(kind, e))
        }
    }
}

/// Accepts connections on one port of an [`Endpoint`], like
/// `tokio::net::TcpListener`. Dropping it stops listening and resets the
/// connections it accepted but nobody took.
///
/// ```no_run
/// # async fn demo(endpoint: tcp_user::api::Endpoint) -> std::io::Result<()> {
/// use tcp_user::api::TcpListener;
/// let listener = TcpListener::bind(&endpoint, 8080)?;
/// let (stream, peer) = listener.accept().await?;
/// println!("{peer} connected from port {}", stream.peer_addr().port());
/// # Ok(()) }
/// ```
pub struct TcpListener {
    endpoint: Endpoint,
    port: u16,
}

impl TcpListener {
    /// Listens on `port` of the endpoint's address. `AddrInUse` if someone
    /// listens there already.
    pub fn bind(endpoint: &Endpoint, port: u16) -> io::Result<TcpListener> {
        if port == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "port 0 cannot be listened on",
            ));
        }
        let shared = &endpoint.inner.shared;
        let mut guard = shared.lock();
        let core = &mut *guard;
        if core.apps.listeners.contains_key(&port) || core.services.ports().any(|p| p == port) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("port {port} is already listened on"),
            ));
        }
        core.stack
            .listen(SocketAddrV4::new(shared.iface.addr, port))
            .map_err(io_error)?;
        if let Err(e) = core.xdp.add_listen_port(port) {
            core.stack
                .unlisten(SocketAddrV4::new(shared.iface.addr, port));
            return Err(io::Error::other(format!("{e:#}")));
        }
        core.apps.listeners.insert(port, ListenerSlot::default());
        Ok(TcpListener {
            endpoint: endpoint.clone(),
            port,
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.endpoint.local_addr(), self.port)
    }

    /// The next established connection and its peer's address.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddrV4)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next established connection.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddrV4)>> {
        let mut guard = self.endpoint.inner.shared.lock();
        let apps = &mut guard.apps;
        let Some(l) = apps.listeners.get_mut(&self.port) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the listener is gone",
            )));
        };
        match l.backlog.pop_front() {
            Some(id) => {
                let tuple = apps.conns.get(&id).map(|s| s.tuple).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "accepted connection vanished",
                    )
                })?;
                Poll::Ready(Ok((
                    TcpStream::new(self.endpoint.clone(), id, tuple),
                    tuple.remote,
                )))
            }
            None => {
                l.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let shared = &self.endpoint.inner.shared;
        let mut guard = shared.lock();
        let core = &mut *guard;
        let now = core.clock.now();
        core.stack
            .unlisten(SocketAddrV4::new(shared.iface.addr, self.port));
        let _ = core.xdp.remove_listen_port(self.port);
        if let Some(l) = core.apps.listeners.remove(&self.port) {
            for id in l.backlog {
                core.apps.conns.remove(&id);
                let _ = core.stack.abort(now, id);
            }
        }
        drop(guard);
        shared.wake.notify_one();
    }
}

/// One connection's handle, shared by a stream's halves.
struct StreamInner {
    endpoint: Endpoint,
    id: ConnId,
    tuple: FourTuple,
}

impl StreamInner {
    fn shared(&self) -> &Shared {
        &self.endpoint.inner.shared
    }

    /// The error a closed connection reports, or None after a clean close.
    fn closed_error(slot: Option<&ConnSlot>) -> Option<io::Error> {
        match slot {
            Some(s) => s.error.map(io_error),
            None => Some(io::Error::new(io::ErrorKind::NotConnected, "not connected")),
        }
    }

    fn poll_established(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut core = self.shared().lock();
        let Some(slot) = core.apps.conns.get_mut(&self.id) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "not connected",
            )));
        };
        if slot.established {
            return Poll::Ready(Ok(()));
        }
        if slot.closed {
            let err = slot.error.unwrap_or(tcp::Error::Refused);
            return Poll::Ready(Err(io_error(err)));
        }
        slot.write = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut guard = self.shared().lock();
        let core = &mut *guard;
        let now = core.clock.now();
        let result = core.stack.recv(now, self.id, buf.initialize_unfilled());
        match result {
            Ok(n) => {
                buf.advance(n);
                drop(guard);
                if n > 0 {
                    // Reading may open the window: the driver sends the update.
                    self.shared().wake.notify_one();
                }
                Poll::Ready(Ok(()))
            }
            Err(tcp::Error::WouldBlock) => {
                if let Some(s) = core.apps.conns.get_mut(&self.id) {
                    s.read = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            // Released by the core: end of stream after a clean close.
            Err(tcp::Error::NotFound) => match Self::closed_error(core.apps.conns.get(&self.id)) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Ready(Ok(())),
            },
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut guard = self.shared().lock();
        let core = &mut *guard;
        let now = core.clock.now();
        match core.stack.send(now, self.id, data) {
            Ok(0) => {
                if let Some(s) = core.apps.conns.get_mut(&self.id) {
                    s.write = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Ok(n) => {
                drop(guard);
                self.shared().wake.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(tcp::Error::NotFound) => {
                Poll::Ready(Err(Self::closed_error(core.apps.conns.get(&self.id))
                    .unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::BrokenPipe, "connection closed")
                    })))
            }
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        let mut guard = self.shared().lock();
        let core = &mut *guard;
        let now = core.clock.now();
        let result = core.stack.shutdown_write(now, self.id);
        drop(guard);
        self.shared().wake.notify_one();
        match result {
            Ok(()) | Err(tcp::Error::WriteClosed) => Ok(()),
            Err(tcp::Error::NotFound) => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    fn abort(&self) {
        let mut guard = self.shared().lock();
        let core = &mut *guard;
        let now = core.clock.now();
        let _ = core.stack.abort(now, self.id);
        drop(guard);
        self.shared().wake.notify_one();
    }
}

impl Drop for StreamInner {
    /// A dropped stream closes gracefully (FIN after what was written; a
    /// RST if data arrived that will now never be read, as Linux does).
    fn drop(&mut self) {
        let mut guard = self.shared().lock();
        let core = &mut *guard;
        let now = core.clock.now();
        let closed = match core.apps.conns.get_mut(&self.id) {
            Some(s) if s.closed => true,
            Some(s) => {
                s.dropped = true;
                s.read = None;
                s.write = None;
                false
            }
            None => true,
        };
        if closed {
            core.apps.conns.remove(&self.id);
        } else {
            let _ = core.stack.close(now, self.id);
        }
        drop(guard);
        self.shared().wake.notify_one();
    }
}

/// A TCP connection over the endpoint, like `tokio::net::TcpStream`:
/// [`AsyncRead`] and [`AsyncWrite`], `poll_shutdown` sends a FIN, dropping
/// it closes gracefully, [`TcpStream::abort`] resets.
///
/// ```no_run
/// # async fn demo(mut stream: tcp_user::api::TcpStream) -> std::io::Result<()> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// stream.set_nodelay(true)?;
/// stream.write_all(b"ping").await?;
/// let mut reply = [0; 4];
/// stream.read_exact(&mut reply).await?;
/// # Ok(()) }
/// ```
pub struct TcpStream {
    inner: Arc<StreamInner>,
}

impl TcpStream {
    fn new(endpoint: Endpoint, id: ConnId, tuple: FourTuple) -> TcpStream {
        TcpStream {
            inner: Arc::new(StreamInner {
                endpoint,
                id,
                tuple,
            }),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.inner.tuple.remote
    }

    /// The endpoint's address and port of this connection.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.inner.tuple.local
    }

    /// Turns Nagle's algorithm off (true) or on.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner
            .shared()
            .lock()
            .stack
            .set_nodelay(self.inner.id, nodelay)
            .map_err(io_error)
    }

    /// Sends keepalive probes after `idle` without traffic (None: off).
    pub fn set_keepalive(&self, idle: Option<Duration>) -> io::Result<()> {
        self.inner
            .shared()
            .lock()
            .stack
            .set_keepalive(self.inner.id, idle)
            .map_err(io_error)
    }

    /// Resets the connection at once (RST), discarding unsent data.
    pub fn abort(self) {
        self.inner.abort();
    }

    /// Borrowed halves, for reading and writing from one task.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        (ReadHalf(&self.inner), WriteHalf(&self.inner))
    }

    /// Owned halves, for reading and writing from two tasks. The connection
    /// closes when both are dropped.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        (
            OwnedReadHalf(Arc::clone(&self.inner)),
            OwnedWriteHalf(self.inner),
        )
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.inner.poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written data is in the core's send buffer already, as with a
        // kernel socket.
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.inner.shutdown_write())
    }
}

macro_rules! halves {
    ($read:ty, $write:ty) => {
        impl AsyncRead for $read {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                self.0.poll_read(cx, buf)
            }
        }
        impl AsyncWrite for $write {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                data: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.0.poll_write(cx, data)
            }
            fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(self.0.shutdown_write())
            }
        }
    };
}

/// The reading half of a [`TcpStream::split`].
///
/// ```no_run
/// # async fn demo(mut stream: tcp_user::api::TcpStream) -> std::io::Result<()> {
/// // Echo on one task: copy what the reading half gets to the writing half.
/// let (mut rx, mut tx) = stream.split();
/// tokio::io::copy(&mut rx, &mut tx).await?;
/// # Ok(()) }
/// ```
pub struct ReadHalf<'a>(&'a StreamInner);
/// The writing half of a [`TcpStream::split`]; see [`ReadHalf`].
///
/// ```no_run
/// # async fn demo(mut stream: tcp_user::api::TcpStream) -> std::io::Result<()> {
/// use tokio::io::AsyncWriteExt;
/// let (_rx, mut tx) = stream.split();
/// tx.write_all(b"bye").await?;
/// tx.shutdown().await?; // FIN: the peer reads end of stream
/// # Ok(()) }
/// ```
pub struct WriteHalf<'a>(&'a StreamInner);
/// The reading half of a [`TcpStream::into_split`], for another task.
///
/// ```no_run
/// # async fn demo(stream: tcp_user::api::TcpStream) -> std::io::Result<()> {
/// use tokio::io::AsyncReadExt;
/// let (mut rx, _tx) = stream.into_split();
/// let reader = tokio::spawn(async move {
///     let mut all = Vec::new();
///     rx.read_to_end(&mut all).await.map(|_| all)
/// });
/// let received = reader.await??;
/// # Ok(()) }
/// ```
pub struct OwnedReadHalf(Arc<StreamInner>);
/// The writing half of a [`TcpStream::into_split`]; shutting it down sends
/// a FIN. The connection closes when both halves are dropped.
///
/// ```no_run
/// # async fn demo(stream: tcp_user::api::TcpStream) -> std::io::Result<()> {
/// use tokio::io::AsyncWriteExt;
/// let (_rx, mut tx) = stream.into_split();
/// tokio::spawn(async move {
///     tx.write_all(&[0u8; 1 << 20]).await?;
///     tx.shutdown().await
/// });
/// # Ok(()) }
/// ```
pub struct OwnedWriteHalf(Arc<StreamInner>);

halves!(ReadHalf<'_>, WriteHalf<'_>);
halves!(OwnedReadHalf, OwnedWriteHalf);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_range_avoids_the_kernels() {
        assert_eq!(disjoint_range(Some((32768, 60999))), 61000..=65535);
        assert_eq!(disjoint_range(Some((40000, 65000))), 1024..=39999);
        assert_eq!(disjoint_range(Some((1024, 65535))), 61000..=65535);
        assert_eq!(disjoint_range(None), 61000..=65535);
    }

    #[test]
    fn core_errors_map_to_io_kinds() {
        use io::ErrorKind as K;
        for (e, k) in [
            (tcp::Error::Refused, K::ConnectionRefused),
            (tcp::Error::Reset, K::ConnectionReset),
            (tcp::Error::TimedOut, K::TimedOut),
            (tcp::Error::InUse, K::AddrInUse),
        ] {
            assert_eq!(io_error(e).kind(), k);
        }
    }

    #[test]
    fn handles_are_send() {
        fn send<T: Send + Sync>() {}
        send::<Endpoint>();
        send::<TcpListener>();
        send::<TcpStream>();
        send::<OwnedReadHalf>();
        send::<OwnedWriteHalf>();
    }
}
