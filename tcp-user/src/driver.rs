//! The driver: the thin layer that joins the XDP program, the AF_XDP
//! sockets and the sans-IO TCP core.
//!
//! One loop owns the sockets. The core, the built-in services, the XDP
//! maps and the state of the library API's handles live in one [`Core`]
//! behind a mutex that the driver takes once per turn and an application
//! task takes once per read, write, accept or connect (never across an
//! `.await`). Each turn of the loop:
//!
//! 1. drains a batch of frames from every AF_XDP RX ring into the core,
//! 2. fires the core's timers when they are due,
//! 3. hands the core's events to the services (echo, discard, daytime),
//! 4. writes every segment the core wants to send straight into a free UMEM
//!    frame (the core writes at the TCP offset, the driver adds Ethernet and
//!    IPv4 headers in front) and kicks the TX ring once per batch,
//!
//! then sleeps until a socket is readable or the core's earliest timer is
//! due, or something else needs the loop. The core keeps its timers as
//! data, so there is one wakeup however many connections. With
//! `--busy-poll` the loop never sleeps: each turn first makes a
//! non-blocking recvfrom on every socket that has a NAPI id, with which the
//! kernel busy-polls the device (SO_PREFER_BUSY_POLL, SO_BUSY_POLL,
//! SO_BUSY_POLL_BUDGET are set on each socket).
//!
//! Where it sleeps depends on who else runs there:
//!
//! - `tcp-user run` ([`run`]): the loop has the calling thread to itself
//!   and sleeps in the kernel (`park`: one epoll set over the sockets and a
//!   mailbox, the deadline as the timeout). Control requests and signals
//!   arrive as letters from a control thread that runs the control socket
//!   and the signal handlers on tokio.
//! - The library API: the loop is a tokio task beside the application's
//!   and sleeps in tokio ([`Waiter`]): one timer (a timerfd, for
//!   sub-millisecond deadlines; see `hrtimer`), re-armed only when the
//!   deadline the turn returned moves, one registration for the
//!   application's wake-ups, and the log tick ([`Events`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::futures::Notified;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::afxdp::{XskConfig, XskSocket};
use crate::api::Apps;
use crate::control::{ControlServer, Request, Snapshot};
use crate::frame::{self, TxHeaders, TCP_OFFSET};
use crate::hrtimer::{DeadlineTimer, TimerSource};
use crate::notify;
use crate::park::{Letter, Mailbox, Parker};
use crate::pcap::PcapWriter;
use crate::services::{Service, Services};
use crate::tcp::{self, Instant, Stack};
use crate::wire::ChecksumVerified;
use crate::xdp::{XdpAttachment, XdpMode};

/// Frames taken from one RX ring per turn: large enough to amortise the
/// ring's atomics, small enough to keep ACKs flowing during a burst.
const RX_BATCH: usize = 64;

/// Everything `tcp-user run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub iface: String,
    /// The endpoint's address; the interface's first IPv4 address if None.
    pub addr: Option<Ipv4Addr>,
    pub services: Vec<(Service, u16)>,
    /// AF_XDP sockets to open (one per RX queue); all queues if None.
    pub queues: Option<u32>,
    pub xdp_mode: XdpMode,
    pub tcp: tcp::Config,
    pub control_socket: PathBuf,
    /// Capture every frame received and sent to this pcap file.
    pub pcap: Option<PathBuf>,
    /// On SIGTERM/SIGINT: how long open connections may take to finish
    /// before the rest are reset.
    pub grace: Duration,
    /// Level of the XDP program's own log records (aya-log).
    pub log_level: tracing::Level,
    /// Spin on the rings when idle instead of sleeping until a socket is
    /// readable or a timer is due (one CPU kept busy), and ask the kernel
    /// to busy-poll each socket's NAPI context, where it has one.
    pub busy_poll: bool,
}

/// What the driver knows about the interface it serves.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addr: Ipv4Addr,
}

impl Interface {
    /// Reads the interface's MAC, MTU and IPv4 address from the kernel.
    pub fn lookup(name: &str, addr: Option<Ipv4Addr>) -> anyhow::Result<Interface> {
        if name.is_empty() || name.len() > 15 || name.contains('/') {
            bail!("invalid interface name {name:?}");
        }
        let sys = PathBuf::from("/sys/class/net").join(name);
        if !sys.exists() {
            bail!("interface {name} does not exist");
        }
        let mac_text = std::fs::read_to_string(sys.join("address"))
            .with_context(|| format!("reading the MAC address of {name}"))?;
        let mac = parse_mac(mac_text.trim())
            .with_context(|| format!("interface {name} has no Ethernet address"))?;
        let mtu: u32 = std::fs::read_to_string(sys.join("mtu"))
            .with_context(|| format!("reading the MTU of {name}"))?
            .trim()
            .parse()
            .with_context(|| format!("interface {name} reports a bad MTU"))?;
        if mtu < 576 {
            bail!("interface {name} has MTU {mtu}, below the IPv4 minimum of 576");
        }
        let addr = match addr {
            Some(a) => a,
            None => interface_ipv4(name)?,
        };
        Ok(Interface {
            name: name.to_owned(),
            mac,
            mtu,
            addr,
        })
    }

    /// The MSS to advertise: the MTU less the IPv4 and TCP headers, capped
    /// by what one UMEM frame holds.
    pub fn mss(&self, frame_size: u32) -> u16 {
        let by_mtu = self.mtu.saturating_sub(40);
        let by_frame = frame_size.saturating_sub(256 + TCP_OFFSET as u32 + 60);
        // A jumbo MTU must not raise it past what the XDP program lets
        // through: a peer sending larger segments would see every one
        // dropped as too long.
        let by_xdp = (tcp_common::MAX_TCP_LEN - tcp_common::TcpHdr::LEN) as u32;
        by_mtu.min(by_frame).min(by_xdp) as u16
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    if parts.next().is_some() || mac == [0; 6] {
        return None;
    }
    Some(mac)
}

/// The first IPv4 address of an interface, asked of `ip` in JSON form.
fn interface_ipv4(name: &str) -> anyhow::Result<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-4", "addr", "show", "dev", name])
        .output()
        .context("running `ip` to find the interface's address (pass --addr instead)")?;
    if !out.status.success() {
        bail!(
            "`ip addr show dev {name}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing `ip -j addr` output")?;
    json.as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().into_iter().flatten())
        .find_map(|a| a["local"].as_str()?.parse().ok())
        .with_context(|| format!("interface {name} has no IPv4 address (pass --addr)"))
}

/// A monotonic clock for the core, which only ever sees microseconds since
/// the driver started.
#[derive(Clone, Copy)]
pub(crate) struct Clock(std::time::Instant);

impl Clock {
    pub(crate) fn now(&self) -> Instant {
        Instant::from_micros(self.0.elapsed().as_micros() as u64)
    }
    /// The core's instant `at` on the std clock.
    fn at(&self, at: Instant) -> std::time::Instant {
        self.0 + Duration::from_micros(at.as_micros())
    }
    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.at(at))
    }
}

/// The driver's own counters, shown by `tcp-user stat`.
#[derive(Default, Debug)]
struct DriverCounters {
    rx_frames: u64,
    rx_unparsable: u64,
    rx_not_ours: u64,
    tx_segments: u64,
    tx_no_peer_mac: u64,
    tx_ring_full_waits: u64,
    turns: u64,
    /// Turns that left due timers for a later turn (an RX backlog).
    timers_deferred: u64,
    /// `tcp-user run`: waits that slept, and how often their kernel timer
    /// was programmed.
    parks: u64,
    timer_programs: u64,
}

impl DriverCounters {
    fn as_map(&self) -> BTreeMap<String, u64> {
        [
            ("rx_frames", self.rx_frames),
            ("rx_unparsable", self.rx_unparsable),
            ("rx_not_ours", self.rx_not_ours),
            ("tx_segments", self.tx_segments),
            ("tx_no_peer_mac", self.tx_no_peer_mac),
            ("tx_ring_full_waits", self.tx_ring_full_waits),
            ("turns", self.turns),
            ("timers_deferred", self.timers_deferred),
            ("parks", self.parks),
            ("timer_programs", self.timer_programs),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// Everything the driver and the application's handles share.
pub(crate) struct Core {
    pub stack: Stack,
    pub services: Services,
    /// The library API's listeners and streams.
    pub apps: Apps,
    pub xdp: XdpAttachment,
    /// Where segments go: the MAC address of each peer (learned from its
    /// frames, or resolved for an active open).
    pub peer_macs: HashMap<Ipv4Addr, [u8; 6]>,
    pub clock: Clock,
}

impl Core {
    /// Hands the core's events to their owners: the library API's handles,
    /// or the built-in services. A connection the endpoint opened leaves
    /// the XDP flows map when it is gone (after TIME-WAIT).
    fn dispatch_events(&mut self, now: Instant) {
        while let Some(ev) = self.stack.poll_event() {
            if let tcp::Event::Closed { tuple, .. } = ev {
                if self.apps.forget_flow(&tuple) {
                    if let Err(e) = self.xdp.remove_flow(crate::api::flow_key(&tuple)) {
                        tracing::warn!("removing the flow {tuple:?} from XDP: {e:#}");
                    }
                }
            }
            if self.apps.owns(&ev) {
                self.apps.handle(&mut self.stack, now, ev);
            } else {
                self.services.handle(&mut self.stack, now, ev);
            }
        }
    }
}

/// The shared half of a running endpoint.
pub(crate) struct Shared {
    pub core: Mutex<Core>,
    /// Wakes the driver: an application handle queued something to send,
    /// or the last handle went away.
    pub wake: Notify,
    pub iface: Interface,
}

impl Shared {
    /// The core, also after a panic elsewhere poisoned the lock: the core's
    /// state is consistent between calls, and refusing service would only
    /// turn one failure into many.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running endpoint.
pub(crate) struct Driver {
    iface: Interface,
    clock: Clock,
    shared: Arc<Shared>,
    sockets: Vec<XskSocket>,
    ip_id: u16,
    /// The TX socket used next (round robin over the queues' sockets).
    tx_next: usize,
    counters: DriverCounters,
    pcap: Option<PcapWriter>,
    grace: Duration,
    busy_poll: bool,
    /// The peer MAC learned last: most frames come from the peer of the
    /// frame before, and this spares a map write per frame.
    last_peer: Option<(Ipv4Addr, [u8; 6])>,
    /// Whether a turn leaves the core's due timers for later (see `turn`).
    timer_deferral: TimerDeferral,
}

/// Arrivals before timers, boundedly: a turn that read a full RX batch
/// (more is queued) leaves the due timers for a later turn, but never more
/// than `max` turns in a row.
#[derive(Debug)]
struct TimerDeferral {
    /// Turns in a row that left them.
    run: u32,
    max: u32,
}

impl TimerDeferral {
    fn new(max: u32) -> TimerDeferral {
        TimerDeferral { run: 0, max }
    }

    /// Whether this turn, which found a backlog or not, leaves the timers.
    fn defer(&mut self, backlog: bool) -> bool {
        if backlog && self.run < self.max {
            self.run += 1;
            true
        } else {
            self.run = 0;
            false
        }
    }
}

/// Runs the endpoint until SIGINT or SIGTERM. `ready` is called once when
/// XDP is attached and the listeners are up.
///
/// The driver runs on the calling thread, parked in the kernel between
/// turns (see `park`); the control socket and the signal handlers run on a
/// tokio runtime on a thread of their own and post to its mailbox.
pub fn run(cfg: RunConfig, ready: impl FnOnce(&Interface, &[u16])) -> anyhow::Result<()> {
    let control_socket = cfg.control_socket.clone();
    let (mut driver, ports) = start(cfg)?;
    let mailbox = Arc::new(Mailbox::new().context("creating the driver's mailbox")?);
    // The handlers exist before anyone is told we are ready: a SIGTERM
    // right after READY must drain and exit 0, not kill the process.
    let control = ControlThread::spawn(control_socket, Arc::clone(&mailbox))?;
    ready(&driver.iface, &ports);
    let ports_text: Vec<String> = ports.iter().map(u16::to_string).collect();
    if let Err(e) = notify::notify(&format!(
        "READY=1\nSTATUS=serving {} on {} ports {}",
        driver.iface.addr,
        driver.iface.name,
        ports_text.join(",")
    )) {
        tracing::warn!("could not notify systemd: {e}");
    }
    let served = driver.serve(&mailbox);
    control.stop();
    served
}

/// The control socket and the signal handlers of `tcp-user run`, on a
/// current-thread tokio runtime of their own: they post control requests
/// and stop requests to the driver's mailbox.
struct ControlThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlThread {
    /// Starts the thread; returns once the control socket is bound and the
    /// signal handlers are installed (or with the error that prevented it).
    fn spawn(path: PathBuf, mailbox: Arc<Mailbox>) -> anyhow::Result<ControlThread> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tcp-user-control".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::new(e)
                            .context("starting the control thread's tokio runtime")));
                        return;
                    }
                };
                rt.block_on(control_loop(path, mailbox, ready_tx, stop_rx));
            })
            .context("starting the control thread")?;
        let started = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the control thread ended while starting")));
        let control = ControlThread {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        started.map(|()| control)
    }

    /// Ends the thread: the control socket is removed, the handlers go.
    fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        self.shut();
    }
}

/// The control thread's work: see [`ControlThread`].
async fn control_loop(
    path: PathBuf,
    mailbox: Arc<Mailbox>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
    mut stop: oneshot::Receiver<()>,
) {
    let setup = || -> anyhow::Result<_> {
        let (req_tx, req_rx) = mpsc::channel::<Request>(16);
        let server = ControlServer::bind(&path, req_tx)?;
        let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok((server, req_rx, term, int))
    };
    let (server, mut requests, mut term, mut int) = match setup() {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    loop {
        tokio::select! {
            // Sent, or the driver's side dropped: either way, done.
            _ = &mut stop => break,
            _ = term.recv() => mailbox.post(Letter::Stop),
            _ = int.recv() => mailbox.post(Letter::Stop),
            Some(req) = requests.recv() => mailbox.post(Letter::Request(req)),
        }
    }
    drop(server);
}

/// Loads and attaches the XDP program, opens one AF_XDP socket per queue
/// and listens on the services' ports: an endpoint ready to serve, whose
/// listening ports are returned too.
pub(crate) fn start(mut cfg: RunConfig) -> anyhow::Result<(Driver, Vec<u16>)> {
    let iface = Interface::lookup(&cfg.iface, cfg.addr)?;
    let xsk_cfg = XskConfig::default();
    cfg.tcp.mss = iface.mss(xsk_cfg.frame_size);

    let mut xdp = XdpAttachment::load_with_log_level(Some(iface.addr), cfg.log_level)
        .context("loading the XDP program")?;

    let mut sockets = xdp.bind_queue_sockets(&iface.name, cfg.queues, &xsk_cfg)?;
    if cfg.busy_poll {
        for sock in &mut sockets {
            enable_kernel_busy_poll(sock);
        }
    }

    let mut stack = Stack::new(cfg.tcp.clone());
    let services = Services::new(&cfg.services);
    let mut ports: Vec<u16> = services.ports().collect();
    ports.sort_unstable();
    for &port in &ports {
        stack
            .listen(SocketAddrV4::new(iface.addr, port))
            .map_err(|e| anyhow::anyhow!("listening on port {port}: {e}"))?;
        xdp.add_listen_port(port)?;
    }

    let mode = xdp.attach(&iface.name, cfg.xdp_mode)?;
    tracing::info!(
        "XDP attached to {} in {mode:?} mode, {} AF_XDP socket(s), mss {}",
        iface.name,
        sockets.len(),
        cfg.tcp.mss
    );
    let clock = Clock(std::time::Instant::now());
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            stack,
            services,
            apps: Apps::default(),
            xdp,
            peer_macs: HashMap::new(),
            clock,
        }),
        wake: Notify::new(),
        iface: iface.clone(),
    });
    let driver = Driver {
        iface,
        clock,
        shared,
        sockets,
        ip_id: 0,
        tx_next: 0,
        counters: DriverCounters::default(),
        pcap: match &cfg.pcap {
            Some(p) => Some(PcapWriter::create(p)?),
            None => None,
        },
        grace: cfg.grace,
        busy_poll: cfg.busy_poll,
        last_peer: None,
        // A ring's worth of batches: what was queued when the backlog began.
        timer_deferral: TimerDeferral::new(xsk_cfg.rx_frames / RX_BATCH as u32),
    };
    Ok((driver, ports))
}

/// `tcp-user run`'s wait between turns: the epoll set, the mailbox whose
/// eventfd is in it, and when the XDP program's log records are flushed
/// next.
struct RunWait {
    parker: Parker,
    mailbox: Arc<Mailbox>,
    log_flush: std::time::Instant,
}

/// How often the XDP program's log records are flushed.
const LOG_TICK: Duration = Duration::from_millis(250);

/// With `--busy-poll`: how often (in turns) each socket's NAPI id is read
/// again, since the kernel records it from traffic and it can appear late.
const NAPI_ID_RECHECK_TURNS: u64 = 4096;

/// With `--busy-poll`: SO_BUSY_POLL (µs) and SO_BUSY_POLL_BUDGET (frames)
/// on every AF_XDP socket.
const KERNEL_BUSY_POLL_USECS: u32 = 50;
const KERNEL_BUSY_POLL_BUDGET: u32 = 64;

/// What a turn leaves for the next one.
#[derive(Clone, Copy, Debug)]
struct Turn {
    /// Work is left for an immediate next turn (a full RX batch, or TX
    /// back-pressure).
    more: bool,
    /// When the earliest timer of the core or the services is due.
    deadline: Option<Instant>,
}

/// What ended a wait.
#[derive(Debug)]
enum Wake {
    /// An AF_XDP socket is readable.
    Readable,
    /// The deadline the wait was armed for passed.
    Deadline,
    /// An application handle queued work (or went away).
    Notified,
    /// Time to flush the XDP program's log records.
    LogTick,
}

/// The library driver's source besides the sockets, timers and wake-ups:
/// the log tick.
struct Events {
    log_tick: tokio::time::Interval,
}

impl Events {
    fn new() -> Events {
        let mut log_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + LOG_TICK, LOG_TICK);
        log_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Events { log_tick }
    }

    /// The log tick, when it is due.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        if self.log_tick.poll_tick(cx).is_ready() {
            return Poll::Ready(Wake::LogTick);
        }
        Poll::Pending
    }
}

/// The idle wait, kept across turns: one timer, re-armed only when the
/// deadline moves, and one registration for the application's wake-ups,
/// replaced only after it fired.
///
/// The timer is a timerfd in the running endpoint (sub-millisecond:
/// tokio's timer wheel rounds up to the next millisecond, which turned a
/// 2 ms tail-loss probe into a 3.2 ms stall) and tokio's sleep in the
/// tests, which run on tokio's paused clock ([`TimerSource`]).
struct Waiter<'a> {
    wake: &'a Notify,
    /// Enabled at once, so a wake-up while the driver is busy with a turn
    /// is kept for the next wait instead of lost.
    notified: Pin<Box<Notified<'a>>>,
    timer: DeadlineTimer,
    /// What `timer` is armed for; None: no timer.
    armed: Option<tokio::time::Instant>,
    /// How often `timer` was re-armed.
    rearms: u64,
}

impl<'a> Waiter<'a> {
    /// A waiter on tokio's timer (the tests' paused clock).
    #[cfg(test)]
    fn new(wake: &'a Notify) -> Waiter<'a> {
        Waiter::with_timer(wake, TimerSource::Tokio)
    }

    fn with_timer(wake: &'a Notify, source: TimerSource) -> Waiter<'a> {
        let mut notified = Box::pin(wake.notified());
        notified.as_mut().enable();
        Waiter {
            wake,
            notified,
            timer: DeadlineTimer::new(source),
            armed: None,
            rearms: 0,
        }
    }

    /// Arms the timer for `deadline` unless it already is.
    fn arm(&mut self, deadline: Option<tokio::time::Instant>) {
        if deadline == self.armed {
            return;
        }
        self.armed = deadline;
        self.rearms += 1;
        self.timer.set(deadline);
    }

    /// True when the application's wake-up fired; a fresh one is then
    /// registered straight away.
    fn poll_notified(&mut self, cx: &mut Context<'_>) -> bool {
        if self.notified.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.notified.set(self.wake.notified());
        self.notified.as_mut().enable();
        true
    }

    /// Waits for the next reason to take a turn: a socket is readable,
    /// `deadline` passed, an application handle queued work, or one of
    /// `events`.
    async fn idle(
        &mut self,
        deadline: Option<tokio::time::Instant>,
        readiness: &[AsyncFd<OwnedFd>],
        events: &mut Events,
    ) -> Wake {
        self.arm(deadline);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(w) = events.poll_next(cx) {
                return Poll::Ready(w);
            }
            if poll_readable(readiness, cx) {
                return Poll::Ready(Wake::Readable);
            }
            if self.poll_notified(cx) {
                return Poll::Ready(Wake::Notified);
            }
            if self.timer.poll_due(cx) {
                return Poll::Ready(Wake::Deadline);
            }
            Poll::Pending
        })
        .await
    }
}

/// Between turns that do not sleep (work left, or busy polling): lets the
/// runtime's other tasks run (the control socket, the application's
/// handles), then takes whichever of `events` is ready, without waiting.
async fn spin(events: &mut Events) -> Option<Wake> {
    tokio::task::yield_now().await;
    std::future::poll_fn(|cx| match events.poll_next(cx) {
        Poll::Ready(w) => Poll::Ready(Some(w)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

impl Driver {
    /// `tcp-user run`'s loop, on the calling thread: turns, and between
    /// them a wait in the kernel ([`Parker`]) unless work is left or
    /// `--busy-poll` is on. Returns after the first stop request, once the
    /// open connections drained.
    fn serve(&mut self, mailbox: &Arc<Mailbox>) -> anyhow::Result<()> {
        let fds: Vec<RawFd> = self.sockets.iter().map(|s| s.as_raw_fd()).collect();
        let mut wait = RunWait {
            parker: Parker::new(Arc::clone(mailbox), &fds)
                .context("setting up the driver's wait (epoll)")?,
            mailbox: Arc::clone(mailbox),
            log_flush: std::time::Instant::now() + LOG_TICK,
        };
        loop {
            let turn = self.turn();
            if self.between_turns(&mut wait, turn, None)? {
                break;
            }
        }
        self.drain(&mut wait)?;
        self.shared.lock().xdp.flush_logs();
        self.shutdown();
        Ok(())
    }

    /// Answers the control requests in the mailbox; true when a stop was
    /// among its letters.
    fn read_mail(&mut self, mailbox: &Mailbox) -> bool {
        let mut stop = false;
        for letter in mailbox.take() {
            match letter {
                Letter::Request(req) => {
                    let _ = req.send(self.snapshot());
                }
                Letter::Stop => stop = true,
            }
        }
        stop
    }

    /// Between two turns of `tcp-user run`: answers the control requests,
    /// flushes the XDP program's log records when due and, unless the turn
    /// left work (a full batch, TX back-pressure) or `--busy-poll` is on,
    /// sleeps until the turn's deadline, `cap` or the next flush, or until
    /// there is work ([`Parker::park`]). True when a stop request came.
    fn between_turns(
        &mut self,
        wait: &mut RunWait,
        turn: Turn,
        cap: Option<std::time::Instant>,
    ) -> anyhow::Result<bool> {
        if self.read_mail(&wait.mailbox) {
            return Ok(true);
        }
        let now = std::time::Instant::now();
        if now >= wait.log_flush {
            self.shared.lock().xdp.flush_logs();
            wait.log_flush = now + LOG_TICK;
        }
        if turn.more || self.busy_poll {
            return Ok(false);
        }
        let deadline = turn
            .deadline
            .map(|d| self.clock.at(d))
            .into_iter()
            .chain(cap)
            .fold(wait.log_flush, std::time::Instant::min);
        wait.parker
            .park(Some(deadline))
            .context("waiting in epoll")?;
        self.counters.parks = wait.parker.parks;
        self.counters.timer_programs = wait.parker.timer_programs;
        Ok(false)
    }

    /// The idle wait's timer: a timerfd, for sub-millisecond deadlines.
    /// `--busy-poll` never waits while serving (each turn reads the clock),
    /// and keeps tokio's timer for the drain on shutdown, as before.
    fn timer_source(&self) -> TimerSource {
        if self.busy_poll {
            TimerSource::Tokio
        } else {
            TimerSource::TimerFd
        }
    }

    /// The half the application's handles share.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// The library API's loop: serves until every application handle is
    /// gone (`handles` cannot be upgraded any more), then resets what is
    /// left and detaches.
    pub(crate) async fn serve_library(mut self, handles: Weak<()>) {
        let readiness: Vec<AsyncFd<OwnedFd>> = match self
            .sockets
            .iter()
            .map(|s| s.readiness())
            .collect::<Result<_, _>>()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("registering the AF_XDP sockets with tokio: {e}");
                return;
            }
        };
        let shared = self.shared();
        let mut waiter = Waiter::with_timer(&shared.wake, self.timer_source());
        let mut events = Events::new();
        while handles.strong_count() > 0 {
            let turn = self.turn();
            let wake = if turn.more || self.busy_poll {
                spin(&mut events).await
            } else {
                let deadline = turn.deadline.map(|d| self.clock.deadline(d));
                Some(waiter.idle(deadline, &readiness, &mut events).await)
            };
            if let Some(Wake::LogTick) = wake {
                self.shared.lock().xdp.flush_logs();
            }
        }
        self.shutdown();
    }

    /// Graceful shutdown: accept nothing new, let open connections finish
    /// for the grace period (TIME-WAIT counts as finished), then return.
    /// A second stop request cuts it short.
    fn drain(&mut self, wait: &mut RunWait) -> anyhow::Result<()> {
        let _ = notify::notify("STOPPING=1");
        {
            let mut core = self.shared.lock();
            let ports: Vec<u16> = core.services.ports().collect();
            for port in ports {
                core.stack
                    .unlisten(SocketAddrV4::new(self.iface.addr, port));
            }
        }
        let open = |d: &Driver| {
            d.shared
                .lock()
                .stack
                .connections()
                .iter()
                .filter(|c| c.state != tcp::State::TimeWait)
                .count()
        };
        let n = open(self);
        if n == 0 || self.grace.is_zero() {
            return Ok(());
        }
        tracing::info!("draining {n} connection(s) for up to {:?}", self.grace);
        let until = std::time::Instant::now() + self.grace;
        loop {
            let turn = self.turn();
            if !turn.more && open(self) == 0 {
                tracing::info!("all connections finished");
                return Ok(());
            }
            if self.between_turns(wait, turn, Some(until))? {
                return Ok(());
            }
            if std::time::Instant::now() >= until {
                tracing::info!("grace period over: resetting {} connection(s)", open(self));
                return Ok(());
            }
        }
    }

    /// One turn of the loop: what is left for the next.
    fn turn(&mut self) -> Turn {
        self.counters.turns += 1;
        if self.busy_poll {
            // Outside the core's lock: the kernel may poll the device here.
            let recheck = self.counters.turns.is_multiple_of(NAPI_ID_RECHECK_TURNS);
            for sock in &mut self.sockets {
                if recheck {
                    sock.refresh_napi_id();
                }
                sock.kernel_busy_poll();
            }
        }
        let now = self.clock.now();
        let shared = Arc::clone(&self.shared);
        let mut guard = shared.lock();
        let core = &mut *guard;
        let mut full_batch = false;
        for sock in &mut self.sockets {
            let stack = &mut core.stack;
            let macs = &mut core.peer_macs;
            let counters = &mut self.counters;
            let local = self.iface.addr;
            let pcap = &mut self.pcap;
            let last_peer = &mut self.last_peer;
            let n = sock.recv_batch(RX_BATCH, |bytes| {
                counters.rx_frames += 1;
                if let Some(p) = pcap.as_mut() {
                    p.write(bytes);
                }
                match frame::parse(bytes) {
                    Ok(f) if f.dst == local => {
                        if *last_peer != Some((f.src, f.src_mac)) {
                            macs.insert(f.src, f.src_mac);
                            *last_peer = Some((f.src, f.src_mac));
                        }
                        // The XDP program verified the IPv4 and TCP
                        // checksums of every frame it redirected here.
                        stack.handle_verified_segment(
                            now,
                            f.src,
                            f.dst,
                            ChecksumVerified::vouched_by_xdp(f.segment),
                        );
                    }
                    Ok(_) => counters.rx_not_ours += 1,
                    Err(_) => counters.rx_unparsable += 1,
                }
            });
            full_batch |= n == RX_BATCH;
            sock.wake_rx_if_needed();
        }
        // Arrivals before timers: while the RX rings hold a backlog (a full
        // batch came), the ACKs in it are still to be read, and a
        // retransmission timer that fires now may be for data they
        // acknowledge. So the core's timers wait until the backlog is read,
        // or at most as many turns as the RX frames take (a full ring's
        // worth: everything queued when the wait began), however long the
        // overload lasts. rr over 10,000 connections, where the engine
        // falls behind, drew tens of thousands of spurious RTOs per run
        // without this.
        if self.timer_deferral.defer(full_batch) {
            self.counters.timers_deferred += 1;
        } else if core.stack.poll_timeout().is_some_and(|t| t <= now) {
            core.stack.handle_timeout(now);
        }
        core.dispatch_events(now);
        if core.services.poll_timeout().is_some_and(|t| t <= now) {
            core.services.handle_timeout(&mut core.stack, now);
            core.dispatch_events(now);
        }
        let tx_blocked = self.transmit(now, core);
        if let Some(p) = self.pcap.as_mut() {
            p.flush();
        }
        let deadline = [core.stack.poll_timeout(), core.services.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        Turn {
            more: full_batch || tx_blocked,
            deadline,
        }
    }

    /// Sends everything the core has; true when the TX ring ran out of
    /// room (the rest waits for the next turn, still queued in the core).
    fn transmit(&mut self, now: Instant, core: &mut Core) -> bool {
        if self.sockets.is_empty() {
            return false;
        }
        let mut blocked = false;
        let mut sent_any = false;
        loop {
            let idx = self.tx_next % self.sockets.len();
            let sock = &mut self.sockets[idx];
            let stack = &mut core.stack;
            let macs = &core.peer_macs;
            let counters = &mut self.counters;
            let src_mac = self.iface.mac;
            let ip_id = &mut self.ip_id;
            let pcap = &mut self.pcap;
            let mut produced = false;
            let mut emit = |buf: &mut [u8]| -> usize {
                if buf.len() <= TCP_OFFSET {
                    return 0;
                }
                loop {
                    let Some(t) = stack.poll_transmit(now, &mut buf[TCP_OFFSET..]) else {
                        return 0;
                    };
                    produced = true;
                    let Some(&dst_mac) = macs.get(&t.dst) else {
                        // Only peers that sent us a frame are reachable
                        // until the endpoint speaks ARP; count and go on.
                        counters.tx_no_peer_mac += 1;
                        continue;
                    };
                    *ip_id = ip_id.wrapping_add(1);
                    let h = TxHeaders {
                        src_mac,
                        dst_mac,
                        src: t.src,
                        dst: t.dst,
                        ip_id: *ip_id,
                    };
                    counters.tx_segments += 1;
                    let len = frame::write_headers(buf, &h, t.len);
                    if let Some(p) = pcap.as_mut() {
                        p.write(&buf[..len]);
                    }
                    return len;
                }
            };
            let took_frame = sock.send_with(&mut emit);
            if !took_frame {
                // Ring full: push what is queued, reclaim completions, retry once.
                sock.flush_tx();
                sock.reclaim();
                if !sock.send_with(&mut emit) {
                    self.counters.tx_ring_full_waits += 1;
                    blocked = true;
                    break;
                }
            }
            if !produced {
                break;
            }
            sent_any = true;
            if self.sockets.len() > 1 {
                self.tx_next = self.tx_next.wrapping_add(1);
            }
        }
        if sent_any || blocked {
            for sock in &mut self.sockets {
                sock.flush_tx();
                sock.reclaim();
            }
        }
        blocked
    }

    fn snapshot(&self) -> Snapshot {
        let core = self.shared.lock();
        let connections = core.stack.connections();
        let mut states = BTreeMap::new();
        for c in &connections {
            let name = serde_json::to_value(c.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:?}", c.state));
            *states.entry(name).or_insert(0) += 1;
        }
        let to_map = |pairs: Vec<(&'static str, u64)>| -> BTreeMap<String, u64> {
            pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
        };
        let afxdp = self
            .sockets
            .iter()
            .map(|s| {
                serde_json::json!({
                    "queue": s.queue_id(),
                    // Read afresh: without --busy-poll nothing else reads it.
                    "napi_id": s.incoming_napi_id(),
                    "kernel": to_map(s.statistics().as_pairs()),
                    "engine": to_map(s.counters().as_pairs()),
                })
            })
            .collect();
        Snapshot {
            iface: self.iface.name.clone(),
            addr: self.iface.addr.to_string(),
            connections,
            states,
            counters: to_map(core.stack.counters()),
            xdp: to_map(core.xdp.counters()),
            afxdp,
            driver: self.counters.as_map(),
        }
    }

    /// Resets every connection (the peers learn at once instead of timing
    /// out) and sends those RSTs before the XDP program goes away.
    fn shutdown(&mut self) {
        let now = self.clock.now();
        let shared = Arc::clone(&self.shared);
        let mut guard = shared.lock();
        let core = &mut *guard;
        let ids: Vec<_> = core
            .stack
            .connections()
            .into_iter()
            .map(|c| tcp::ConnId(c.id))
            .collect();
        for id in ids {
            let _ = core.stack.abort(now, id);
        }
        // The handles learn that their connections are gone.
        core.dispatch_events(now);
        // Bounded: the core drains its RSTs; a full ring just loses them.
        for _ in 0..16 {
            if !self.transmit(now, core) {
                break;
            }
        }
        tracing::info!("shutting down: detaching XDP from {}", self.iface.name);
    }
}

/// With `--busy-poll`: asks the kernel to busy-poll the socket's NAPI
/// context on each turn's non-blocking recvfrom. A refusal only costs that
/// (the rings are still spun in userspace), so it is a warning.
fn enable_kernel_busy_poll(sock: &mut XskSocket) {
    let queue = sock.queue_id();
    if let Err(e) = sock.enable_kernel_busy_poll(KERNEL_BUSY_POLL_USECS, KERNEL_BUSY_POLL_BUDGET) {
        tracing::warn!(
            "AF_XDP socket of queue {queue}: no kernel busy polling ({e:#}); \
             spinning on the rings in userspace only"
        );
        return;
    }
    match sock.refresh_napi_id() {
        0 => tracing::info!(
            "AF_XDP socket of queue {queue}: kernel busy polling on, but the socket has \
             no NAPI id yet (no recvfrom until one appears, checked every \
             {NAPI_ID_RECHECK_TURNS} turns); spinning on the rings in userspace"
        ),
        id => tracing::info!(
            "AF_XDP socket of queue {queue}: kernel busy polling on NAPI id {id} \
             ({KERNEL_BUSY_POLL_USECS} µs, budget {KERNEL_BUSY_POLL_BUDGET})"
        ),
    }
}

/// True when any of the sockets is readable. Readiness is cleared on the
/// spot: the turn that follows drains the rings, and a frame arriving after
/// the clear raises a fresh edge.
fn poll_readable(fds: &[AsyncFd<OwnedFd>], cx: &mut Context<'_>) -> bool {
    let mut ready = false;
    for fd in fds {
        if let Poll::Ready(Ok(mut guard)) = fd.poll_read_ready(cx) {
            guard.clear_ready();
            ready = true;
        }
    }
    ready
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("02:00:5e:10:00:01"),
            Some([2, 0, 0x5e, 0x10, 0, 1])
        );
        assert_eq!(parse_mac("00:00:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:5e:10:00"), None);
        assert_eq!(parse_mac("02:00:5e:10:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:5e:10:00:01"), None);
    }

    #[test]
    fn unknown_interface_is_a_clear_error() {
        let e = Interface::lookup("nosuchif0", None).unwrap_err();
        assert_eq!(e.to_string(), "interface nosuchif0 does not exist");
        let e = Interface::lookup("../etc", None).unwrap_err();
        assert!(e.to_string().starts_with("invalid interface name"));
    }

    #[test]
    fn mss_follows_mtu_and_frame() {
        let i = Interface {
            name: "x".into(),
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            addr: Ipv4Addr::new(198, 18, 0, 1),
        };
        assert_eq!(i.mss(4096), 1460);
        assert_eq!(i.mss(2048), 1460);
        let small = Interface {
            mtu: 1280,
            ..i.clone()
        };
        assert_eq!(small.mss(2048), 1240);
        // A frame too small for a full segment behind the headroom.
        assert_eq!(i.mss(1024), 1024 - 256 - 34 - 60);
        // Jumbo frames: capped where the XDP program stops accepting.
        let jumbo = Interface { mtu: 9000, ..i };
        assert_eq!(jumbo.mss(4096), 1460);
        assert_eq!(jumbo.mss(2048), 1460);
    }

    #[test]
    fn timers_wait_for_a_backlog_but_never_more_than_max_turns_in_a_row() {
        let mut d = TimerDeferral::new(3);
        // No backlog: the timers run.
        assert!(!d.defer(false));
        // A backlog of any length: three turns leave them, the fourth runs
        // them, and the count starts again.
        let turns: Vec<bool> = (0..9).map(|_| d.defer(true)).collect();
        assert_eq!(
            turns,
            [true, true, true, false, true, true, true, false, true]
        );
        // The backlog read: they run at once, and a new backlog may wait
        // the full three turns again.
        assert!(!d.defer(false));
        assert!(d.defer(true) && d.defer(true) && d.defer(true));
        assert!(!d.defer(true));
        // A default-sized UMEM waits at most 192 turns of 64 frames.
        let rx = XskConfig::default().rx_frames;
        assert_eq!(rx / RX_BATCH as u32, 192);
    }

    /// The driver's wait on tokio's paused clock: time moves only when the
    /// runtime has nothing to do, straight to the next timer.
    mod wait {
        use super::super::*;
        use tokio::time::{self, Instant as TokioInstant};

        const MS: Duration = Duration::from_millis(1);

        async fn idle(w: &mut Waiter<'_>, ev: &mut Events, at: Option<TokioInstant>) -> Wake {
            w.idle(at, &[], ev).await
        }

        #[tokio::test(start_paused = true)]
        async fn wakes_on_the_deadline_and_not_before() {
            let notify = Notify::new();
            let mut w = Waiter::new(&notify);
            let mut ev = Events::new();
            let t0 = TokioInstant::now();
            let wake = idle(&mut w, &mut ev, Some(t0 + 10 * MS)).await;
            assert!(matches!(wake, Wake::Deadline), "{wake:?}");
            assert_eq!(TokioInstant::now() - t0, 10 * MS);
            // Without a deadline only the log tick ends the wait.
            let wake = idle(&mut w, &mut ev, None).await;
            assert!(matches!(wake, Wake::LogTick), "{wake:?}");
            assert_eq!(TokioInstant::now() - t0, LOG_TICK);
        }

        #[tokio::test(start_paused = true)]
        async fn wakes_on_notify_also_when_it_came_between_waits() {
            let notify = Arc::new(Notify::new());
            let mut w = Waiter::new(&notify);
            let mut ev = Events::new();
            let t0 = TokioInstant::now();
            // A wake-up while the driver was busy with a turn is kept.
            notify.notify_one();
            let wake = idle(&mut w, &mut ev, Some(t0 + 100 * MS)).await;
            assert!(matches!(wake, Wake::Notified), "{wake:?}");
            assert_eq!(TokioInstant::now(), t0);
            // One wake-up is one wake: the next wait sleeps to its deadline.
            let wake = idle(&mut w, &mut ev, Some(t0 + 100 * MS)).await;
            assert!(matches!(wake, Wake::Deadline), "{wake:?}");
            assert_eq!(TokioInstant::now() - t0, 100 * MS);
            // A wake-up during the wait, and again with the re-registered
            // future.
            for at in [130, 170] {
                let n = Arc::clone(&notify);
                tokio::spawn(async move {
                    time::sleep_until(t0 + at * MS).await;
                    n.notify_one();
                });
                let wake = idle(&mut w, &mut ev, Some(t0 + 1000 * MS)).await;
                assert!(matches!(wake, Wake::Notified), "{wake:?}");
                assert_eq!(TokioInstant::now() - t0, at * MS);
            }
        }

        #[tokio::test(start_paused = true)]
        async fn rearms_only_when_the_deadline_moves() {
            let notify = Arc::new(Notify::new());
            let mut w = Waiter::new(&notify);
            let mut ev = Events::new();
            let t0 = TokioInstant::now();
            let poke = |at: u32| {
                let n = Arc::clone(&notify);
                tokio::spawn(async move {
                    time::sleep_until(t0 + at * MS).await;
                    n.notify_one();
                });
            };
            // Armed for 50 ms, woken at 10 ms.
            poke(10);
            assert!(matches!(
                idle(&mut w, &mut ev, Some(t0 + 50 * MS)).await,
                Wake::Notified
            ));
            assert_eq!(w.rearms, 1);
            // The same deadline again: no re-arming, still wakes at 50 ms.
            poke(20);
            assert!(matches!(
                idle(&mut w, &mut ev, Some(t0 + 50 * MS)).await,
                Wake::Notified
            ));
            assert_eq!(w.rearms, 1);
            // Later: nothing happens at the old 50 ms, it wakes at 80 ms.
            let wake = idle(&mut w, &mut ev, Some(t0 + 80 * MS)).await;
            assert!(matches!(wake, Wake::Deadline), "{wake:?}");
            assert_eq!(TokioInstant::now() - t0, 80 * MS);
            assert_eq!(w.rearms, 2);
            // Armed far off (200 ms), woken at 90 ms, then moved earlier
            // (120 ms): it wakes at 120 ms, not 200.
            poke(90);
            assert!(matches!(
                idle(&mut w, &mut ev, Some(t0 + 200 * MS)).await,
                Wake::Notified
            ));
            let wake = idle(&mut w, &mut ev, Some(t0 + 120 * MS)).await;
            assert!(matches!(wake, Wake::Deadline), "{wake:?}");
            assert_eq!(TokioInstant::now() - t0, 120 * MS);
            assert_eq!(w.rearms, 4);
            // A deadline already past ends the wait at once.
            let wake = idle(&mut w, &mut ev, Some(t0 + 100 * MS)).await;
            assert!(matches!(wake, Wake::Deadline), "{wake:?}");
            assert_eq!(TokioInstant::now() - t0, 120 * MS);
            // No deadline any more: the old one does not fire; the log
            // tick (every 250 ms) does.
            let wake = idle(&mut w, &mut ev, None).await;
            assert!(matches!(wake, Wake::LogTick), "{wake:?}");
            assert_eq!(TokioInstant::now() - t0, LOG_TICK);
        }

        /// On a timerfd and the real clock: the order of wake-ups, never
        /// how late they come.
        #[tokio::test]
        async fn timerfd_wakes_not_before_the_deadline_nor_at_a_superseded_one() {
            let notify = Arc::new(Notify::new());
            let mut w = Waiter::with_timer(&notify, TimerSource::TimerFd);
            assert_eq!(w.timer.source(), TimerSource::TimerFd);
            let mut ev = Events::new();
            // Sub-millisecond deadlines, none reported early.
            for us in [40, 300, 1_500] {
                let at = TokioInstant::now() + Duration::from_micros(us);
                let wake = idle(&mut w, &mut ev, Some(at)).await;
                assert!(matches!(wake, Wake::Deadline), "{wake:?}");
                assert!(TokioInstant::now() >= at, "woke before the deadline");
            }
            // Armed for 2 ms, woken by the application, then moved to
            // 20 ms: nothing at 2 ms (the kernel timer's early expiry is
            // absorbed), the deadline at 20 ms.
            let t0 = TokioInstant::now();
            notify.notify_one();
            let wake = idle(&mut w, &mut ev, Some(t0 + 2 * MS)).await;
            assert!(matches!(wake, Wake::Notified), "{wake:?}");
            let wake = idle(&mut w, &mut ev, Some(t0 + 20 * MS)).await;
            assert!(matches!(wake, Wake::Deadline), "{wake:?}");
            assert!(TokioInstant::now() >= t0 + 20 * MS);
            // Armed, then no deadline: the application's wake-up (or the
            // log tick) ends the wait, never the old deadline.
            let t1 = TokioInstant::now();
            w.arm(Some(t1 + MS));
            let n = Arc::clone(&notify);
            tokio::spawn(async move {
                time::sleep(30 * MS).await;
                n.notify_one();
            });
            let wake = idle(&mut w, &mut ev, None).await;
            assert!(matches!(wake, Wake::Notified | Wake::LogTick), "{wake:?}");
        }

        #[tokio::test(start_paused = true)]
        async fn the_spin_never_waits() {
            let mut ev = Events::new();
            let t0 = TokioInstant::now();
            assert!(spin(&mut ev).await.is_none());
            assert_eq!(TokioInstant::now(), t0);
            time::sleep(LOG_TICK).await;
            assert!(matches!(spin(&mut ev).await, Some(Wake::LogTick)));
            assert_eq!(TokioInstant::now() - t0, LOG_TICK);
        }
    }
}
