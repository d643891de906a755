//! `cargo xtask bench`: the endpoint against the Linux kernel's own TCP
//! server, same topology, same client, same pinning, alternated run by run.
//!
//! Topology: the server's and the client's network namespaces on one
//! Ethernet segment through a bridge in a third namespace (veths with one
//! queue pair each); the server (either one) on CPU 1 together with the
//! server veth's threaded NAPI kthread, the client on CPU 0. Loss is random
//! drops by nftables on the bridge, on the workload's port, each way: a
//! drop inside the client's own stack would not be loss (its TCP learns of
//! a netfilter drop on its output path from the return code and sends the
//! segment again at once, so no hole ever reaches the server). The bridge
//! port that feeds the server veth has a pfifo qdisc (PORT_SRV_QDISC), so
//! that a full receive ring of the server veth holds frames back instead
//! of dropping them (Linux >= 6.16).
//!
//! The kernel server and the client are hidden subcommands of xtask
//! (`bench-server`, `bench-client`), so that both sides are plain blocking
//! socket code run as separate, pinnable processes inside `ip netns exec`.
//!
//! Workloads are a list ([`workloads`]): single-connection bulk transfers
//! with loss (the xtask's own client), stock iperf3, request/response and
//! connect/request/response/close (`bench-load`, loadgen.rs, against the
//! endpoint and a single-threaded epoll echo server on the kernel's TCP),
//! many idle connections (memory per connection), and the reflection
//! ceiling (bench_reflect.rs: the endpoint's AF_XDP path with no TCP,
//! endpoint column only), against which report.rs sets the endpoint's
//! TCP packet rate and single-stream bulk rate. Every workload has
//! its own metrics ([`Workload::metrics`]) and reports the server's CPU
//! time per unit of work; report.rs prints the table, writes the JSON and
//! draws the chart.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::bench_reflect;
use crate::profile;
use crate::report::{self, Metric, Report, RunResult};
use crate::{build, is_root, root, say, status, CHILD, STOP};

pub(crate) const NS_SRV: &str = "tcpu-bench-srv";
pub(crate) const NS_CLI: &str = "tcpu-bench-cli";
pub(crate) const NS_MID: &str = "tcpu-bench-mid";
/// The bridge's ports, peers of IF_SRV and IF_CLI.
pub(crate) const PORT_SRV: &str = "tb-srvp";
const PORT_CLI: &str = "tb-clip";
pub(crate) const IF_SRV: &str = "tb-srv0";
pub(crate) const IF_CLI: &str = "tb-cli0";
const SUBNET: &str = "198.18.200.0/24";
pub(crate) const SRV_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
pub(crate) const CLI_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 2);
/// The client's secondary addresses, sources of the idle connections
/// (51,000 explicit source ports each, IDLE_PORTS).
const IDLE_SRC: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 200, 10),
    Ipv4Addr::new(198, 18, 200, 11),
    Ipv4Addr::new(198, 18, 200, 12),
];
const IDLE_PORTS: &str = "10000-60999";
pub(crate) const SRV_CPU: &str = "1";
pub(crate) const CLI_CPU: &str = "0";
/// Both servers' minimum RTO: on a veth the RTT is microseconds, and
/// Linux's 200 ms default would make every timeout dominate the run.
const MIN_RTO_MS: u32 = 20;
const LOSS_TABLE: &str = "tcpu_bench_loss";
/// The qdisc on the bridge port PORT_SRV, the device that transmits into
/// the server veth's 256-entry receive ring (a ptr_ring, there whenever
/// the server veth has NAPI: XDP attached or GRO on). Since Linux 6.16
/// (commit dc82a33297fc) a veth whose peer's ring is full stops its TX
/// queue and returns NETDEV_TX_BUSY instead of dropping the frame, but
/// only when a qdisc is attached to it; a veth has none by default
/// (noqueue), and then every frame that finds the ring full is dropped
/// (`veth.to_server_dropped`). With a qdisc the frame waits in it and
/// the queue is woken once the NAPI poll has made room: backpressure
/// instead of loss. The other three veth ends transmit into a peer with
/// no NAPI (GRO off, no XDP: the frame goes to the receiving CPU's
/// backlog, netif_rx), where a qdisc changes nothing. The same for both
/// servers (one topology). Measured (idle-10k, 29 Nov 2026): the
/// endpoint's runs went from 25,000–76,000 `veth.to_server_dropped` to
/// none (the qdisc requeued 550–1,050 times instead, and overflowed its
/// limit by ~100 in 2 of 8 runs), leaving ~200–3,100 drops per run in the
/// client CPU's backlog on the way in (`veth.client_to_bridge_dropped`
/// = `softnet.cpu0_dropped`); kernel runs still
/// showed up to ~100 at this port, always together with
/// `softnet.cpu1_dropped`: without XDP the veth evidently hands bridged
/// frames to the CPU backlog (netdev_max_backlog, system wide), which no
/// qdisc guards. limit 1000 is a veth's default txqueuelen: larger would
/// let a bulk upload stand a longer queue here (the client's TCP small
/// queues stop accounting at its own veth).
pub(crate) const PORT_SRV_QDISC: [&str; 3] = ["pfifo", "limit", "1000"];

const PORT_ECHO: u16 = 7;
const PORT_DISCARD: u16 = 9;
const PORT_CHARGEN: u16 = 19;
const PORT_IPERF3: u16 = 5201;

/// How long a server gets to print READY.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest transfer (1 TiB): far beyond any sensible run, and far
/// from overflowing a byte count.
const MAX_SIZE_MIB: u64 = 1 << 20;
/// A client socket that moves nothing for this long fails the run.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Request and response size of rr, crr and idle.
const RR_SIZE: usize = 64;

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Only the workloads whose name contains this (e.g. `upload`, `5pct`,
    /// `iperf3`, `rr-`, `crr`, `idle`, `ceiling`); several, comma-separated:
    /// the workloads that match any (`ceiling,rr-,upload-0pct`).
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
    /// Runs per workload and server.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Where to write the results as JSON [default:
    /// target/bench/results.json; the chart goes next to it as chart.svg].
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Bytes per transfer without loss, in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// Bytes per transfer with loss, in MiB.
    #[arg(long, default_value_t = 16)]
    lossy_size_mib: u64,
    /// Seconds of every timed workload (iperf3, rr, crr, the rr phase of
    /// idle) [default: iperf3 10, rr 5, crr 10, idle 5].
    #[arg(long)]
    secs: Option<f64>,
    /// List the workloads (with the time each takes) and exit.
    #[arg(long)]
    list: bool,
    /// No qdisc on the bridge port into the server veth (the veth default,
    /// noqueue): frames that find the server veth's 256-entry ring full
    /// are dropped instead of held back (for comparison runs).
    #[arg(long)]
    no_port_qdisc: bool,
    /// Keep br_netfilter's calls into iptables/ip6tables/arptables on for
    /// the bench bridge (its namespace's default when br_netfilter is
    /// loaded; off by default since they cost both servers alike on every
    /// frame and the bench installs no such rules).
    #[arg(long)]
    bridge_netfilter: bool,
    /// An extra argument for the endpoint's `tcp-user run` (repeatable),
    /// e.g. `--endpoint-arg=--busy-poll`; recorded in the JSON.
    #[arg(long = "endpoint-arg", value_name = "ARG", allow_hyphen_values = true)]
    endpoint_args: Vec<String>,
    /// Run this tcp-user binary as the endpoint instead of the one built
    /// from the tree (to compare builds under the same conditions);
    /// recorded in the JSON.
    #[arg(long, value_name = "PATH")]
    endpoint_bin: Option<PathBuf>,
    /// Congestion control of both servers: the endpoint's `--congestion`
    /// and the kernel's matching module (cubic, reno), so that a loss
    /// workload compares recovery, not two different controllers.
    #[arg(long, value_enum, default_value_t = Congestion::Cubic)]
    congestion: Congestion,
    /// The kernel's congestion control instead of the one matching
    /// `--congestion` (e.g. `bbr`, a machine's default that ignores random
    /// loss and has no endpoint counterpart); applies to every kernel TCP
    /// in the bench, the client's too.
    #[arg(long, value_name = "NAME")]
    kernel_cc: Option<String>,
    /// Profile the server CPU with `perf record` during the first run of
    /// every rr, crr and iperf3 workload and server, and print where its
    /// time goes (profile.rs; `detail.profile` in the JSON, the
    /// recordings in target/bench/perf/). That run's figures carry
    /// perf's own cost (sampling at 1999 Hz).
    #[arg(long)]
    perf: bool,
}

/// The congestion controls both servers have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Congestion {
    Cubic,
    /// NewReno: the kernel's `reno` (with SACK, as the endpoint's).
    Newreno,
}

impl Congestion {
    /// The endpoint's `--congestion` value.
    fn endpoint_name(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::Newreno => "newreno",
        }
    }

    /// The kernel's module name.
    fn kernel_name(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::Newreno => "reno",
        }
    }
}

/// Which way the bulk data goes, seen from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// Client → discard:9.
    Upload,
    /// chargen:19 → client.
    Download,
    /// Client → echo:7 → client, concurrently.
    Echo,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
            Direction::Echo => "echo",
        }
    }

    fn port(self) -> u16 {
        match self {
            Direction::Upload => PORT_DISCARD,
            Direction::Download => PORT_CHARGEN,
            Direction::Echo => PORT_ECHO,
        }
    }
}

/// The veths' offloads during an iperf3 workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offloads {
    /// Linux's defaults (TSO/GSO and checksum offload on). For the
    /// endpoint the client's tx checksum offload stays off: a veth would
    /// hand it CHECKSUM_PARTIAL segments, which the XDP program drops as
    /// a real NIC never delivers them.
    Default,
    /// `ethtool -K tx off` on both veth ends (TSO goes with it): both
    /// servers see the same 1500-byte frames.
    TxOff,
}

/// What a workload does.
#[derive(Clone, Debug)]
pub enum Kind {
    /// One connection: N bytes to discard, from chargen, or through echo,
    /// with random loss on the bridge.
    Bulk {
        direction: Direction,
        loss_pct: u32,
        bytes: u64,
    },
    /// Stock `iperf3 -c` for `secs`.
    Iperf {
        streams: u32,
        reverse: bool,
        offloads: Offloads,
    },
    /// 64-byte request/response over `conns` persistent connections.
    Rr { conns: usize },
    /// Connect, 64-byte request, response, close, by `workers`.
    Crr { workers: usize },
    /// `conns` idle connections (memory per connection), then rr over
    /// `rr_conns` of them.
    Idle { conns: usize, rr_conns: usize },
    /// The reflection ceiling (bench_reflect.rs): `tcp-user reflect`
    /// turns `frame_len`-byte frames around from RX to TX in place, no
    /// TCP, for `secs`. The endpoint's own AF_XDP path, so it has the
    /// endpoint column only.
    Ceiling { frame_len: usize },
}

/// One entry of the workload list.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub kind: Kind,
    /// Seconds of load (timed workloads).
    pub secs: f64,
}

impl Workload {
    /// The metrics the table shows for this workload, the primary first.
    pub fn metrics(&self) -> Vec<Metric> {
        const MBPS: Metric =
            Metric::new("mbps", "Mbit/s", true).with_cpu("cpu_us_per_mib", "µs/MiB");
        const P50: Metric = Metric::new("p50_us", "p50 µs", false);
        const P99: Metric = Metric::new("p99_us", "p99 µs", false);
        const P999: Metric = Metric::new("p999_us", "p99.9 µs", false);
        let tps =
            Metric::new("tps", "transactions/s", true).with_cpu("cpu_us_per_txn", "µs/transaction");
        match self.kind {
            Kind::Bulk { .. } | Kind::Iperf { .. } => vec![MBPS],
            Kind::Rr { conns: 1 } => vec![tps, P50, P99, P999],
            Kind::Rr { .. } => vec![tps, P99],
            Kind::Crr { .. } => vec![
                Metric::new("cps", "connections/s", true)
                    .with_cpu("cpu_us_per_conn", "µs/connection"),
                P99,
            ],
            Kind::Idle { .. } => vec![
                Metric::new("kib_per_conn", "KiB/idle conn", false)
                    .with_cpu("cpu_us_per_conn", "µs/conn opened"),
                tps,
                P99,
            ],
            // frames/s is what the generator got through (a floor when
            // either CPU is shared); per server CPU-second, what one
            // whole server CPU would reflect at the measured cost.
            Kind::Ceiling { .. } => vec![
                Metric::new("frames_per_sec", "frames/s", true)
                    .with_cpu("server_us_per_frame", "µs/frame"),
                Metric::new("frames_per_cpu_sec", "frames/CPU-s", true),
                Metric::new("server_cpu_pct", "% of CPU 1", true),
            ],
        }
    }

    /// The servers a workload runs against: the ceiling has no kernel
    /// counterpart.
    pub fn servers(&self) -> &'static [Server] {
        match self.kind {
            Kind::Ceiling { .. } => &[Server::Endpoint],
            _ => &[Server::Endpoint, Server::Kernel],
        }
    }

    /// About how long one run takes, server start and stop included.
    pub fn estimate_secs(&self) -> f64 {
        match self.kind {
            Kind::Bulk { .. } => 3.0,
            Kind::Iperf { .. } => self.secs + 3.0,
            Kind::Rr { .. } | Kind::Crr { .. } => self.secs + 2.5,
            Kind::Idle { conns, .. } => self.secs + 5.0 + conns as f64 / 8_000.0,
            // Reflector start, 1 s warm-up, the interval, the generator's
            // 2 s beyond it.
            Kind::Ceiling { .. } => self.secs + 4.0,
        }
    }

    /// The longest one run may take before it fails.
    fn budget(&self) -> Duration {
        Duration::from_secs_f64(self.estimate_secs() * 3.0 + 60.0)
    }

    /// The port the workload's loss rules apply to.
    fn loss(&self) -> (u16, u32) {
        match self.kind {
            Kind::Bulk {
                direction,
                loss_pct,
                ..
            } => (direction.port(), loss_pct),
            _ => (PORT_ECHO, 0),
        }
    }

    /// Client and server veth tx checksum offload (true = on) for `server`.
    fn tx_offload(&self, server: Server) -> (bool, bool) {
        match (&self.kind, server) {
            (
                Kind::Iperf {
                    offloads: Offloads::Default,
                    ..
                },
                Server::Endpoint,
            ) => (false, true),
            (
                Kind::Iperf {
                    offloads: Offloads::Default,
                    ..
                },
                Server::Kernel,
            ) => (true, true),
            _ => (false, false),
        }
    }

    /// A line for `--list` and the progress output.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Bulk {
                direction,
                loss_pct,
                bytes,
            } => format!(
                "one connection, {} MiB {}, {loss_pct} % loss each way",
                bytes >> 20,
                match direction {
                    Direction::Upload => "into discard:9",
                    Direction::Download => "from chargen:19",
                    Direction::Echo => "through echo:7",
                }
            ),
            Kind::Iperf {
                streams,
                reverse,
                offloads,
            } => format!(
                "iperf3 -c -P {streams}{} -t {}, {}",
                if *reverse { " -R" } else { "" },
                self.secs,
                match offloads {
                    Offloads::Default =>
                        "default offloads (endpoint: client tx checksum off)",
                    Offloads::TxOff => "tx off on both veth ends",
                }
            ),
            Kind::Rr { conns } => format!(
                "{RR_SIZE}-byte ping-pong on {conns} connection(s), {} s",
                self.secs
            ),
            Kind::Crr { workers } => format!(
                "connect, {RR_SIZE} B request, response, close; {workers} worker(s), {} s",
                self.secs
            ),
            Kind::Idle { conns, rr_conns } => format!(
                "{conns} idle connections (memory per connection), then rr over {rr_conns} of them for {} s",
                self.secs
            ),
            Kind::Ceiling { frame_len } => format!(
                "reflection ceiling: tcp-user reflect turns {frame_len} B frames around \
                 (XDP -> AF_XDP -> TX, no TCP), {} s; endpoint column only",
                self.secs
            ),
        }
    }
}

pub fn workloads(args: &BenchArgs) -> Vec<Workload> {
    let mut v = Vec::new();
    for direction in [Direction::Upload, Direction::Download, Direction::Echo] {
        for loss_pct in [0, 1, 5] {
            let mib = if loss_pct == 0 {
                args.size_mib
            } else {
                args.lossy_size_mib
            };
            v.push(Workload {
                name: format!("{}-{loss_pct}pct", direction.name()),
                kind: Kind::Bulk {
                    direction,
                    loss_pct,
                    bytes: mib << 20,
                },
                secs: 0.0,
            });
        }
    }
    let secs = |default: f64| args.secs.unwrap_or(default);
    for offloads in [Offloads::Default, Offloads::TxOff] {
        for reverse in [false, true] {
            for streams in [1, 4] {
                v.push(Workload {
                    name: format!(
                        "iperf3-{}-P{streams}-{}",
                        if reverse { "down" } else { "up" },
                        match offloads {
                            Offloads::Default => "offload",
                            Offloads::TxOff => "txoff",
                        }
                    ),
                    kind: Kind::Iperf {
                        streams,
                        reverse,
                        offloads,
                    },
                    secs: secs(10.0),
                });
            }
        }
    }
    for conns in [1, 32] {
        v.push(Workload {
            name: format!("rr-{conns}conn"),
            kind: Kind::Rr { conns },
            secs: secs(5.0),
        });
    }
    for workers in [1, 16] {
        v.push(Workload {
            name: format!("crr-{workers}w"),
            kind: Kind::Crr { workers },
            secs: secs(10.0),
        });
    }
    for frame_len in [bench_reflect::MIN_FRAME, bench_reflect::MAX_FRAME] {
        v.push(Workload {
            name: format!("ceiling-{frame_len}B"),
            kind: Kind::Ceiling { frame_len },
            secs: secs(5.0),
        });
    }
    for (name, conns) in [("idle-10k", 10_000), ("idle-100k", 100_000)] {
        v.push(Workload {
            name: name.to_owned(),
            kind: Kind::Idle {
                conns,
                rr_conns: 10_000,
            },
            secs: secs(5.0),
        });
    }
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Endpoint,
    Kernel,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Endpoint => "endpoint",
            Server::Kernel => "kernel",
        }
    }
}

/// What every run needs.
struct Ctx {
    tcp_user: PathBuf,
    /// `--endpoint-arg`s, appended to `tcp-user run` (after `--congestion`).
    endpoint_args: Vec<String>,
    /// The kernel server's and the client's congestion control, set on
    /// every socket of the bulk and iperf3 workloads.
    kernel_cc: String,
    xtask: PathBuf,
    out_dir: PathBuf,
    /// `--perf`: profile the first run of each timed workload.
    perf: bool,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let all = workloads(&args);
    if args.list {
        let mut total = 0.0;
        for w in &all {
            let t = w.estimate_secs() * w.servers().len() as f64 * args.runs.max(1) as f64;
            total += t;
            println!("{:<22} ~{:>4.0} s  {}", w.name, t, w.describe());
        }
        println!(
            "all: ~{:.0} min with --runs {} (both servers)",
            total / 60.0,
            args.runs.max(1)
        );
        return Ok(());
    }
    if !is_root() {
        bail!("the benchmark needs root (network namespaces, XDP, AF_XDP); try sudo");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.secs.is_some_and(|s| !(0.1..=3600.0).contains(&s)) {
        bail!("--secs must be between 0.1 and 3600");
    }
    for (flag, mib) in [
        ("--size-mib", args.size_mib),
        ("--lossy-size-mib", args.lossy_size_mib),
    ] {
        if !(1..=MAX_SIZE_MIB).contains(&mib) {
            bail!("{flag} must be between 1 and {MAX_SIZE_MIB}");
        }
    }
    let selected: Vec<Workload> = match &args.only {
        Some(f) => all.into_iter().filter(|w| selects(f, &w.name)).collect(),
        None => all,
    };
    if selected.is_empty() {
        bail!(
            "no workload matches --only {:?} (see `cargo xtask bench --list`)",
            args.only.as_deref().unwrap_or("")
        );
    }
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| root().join("target/bench/results.json"));
    let chart_path = json_path.with_file_name("chart.svg");
    let kernel_cc = args
        .kernel_cc
        .clone()
        .unwrap_or_else(|| args.congestion.kernel_name().to_owned());
    // Before anything is built or created: a bad name fails at once.
    check_kernel_congestion(&kernel_cc)?;
    if args.perf {
        profile::check_perf()?;
    }
    let ctx = Ctx {
        tcp_user: match &args.endpoint_bin {
            Some(p) => {
                if !p.is_file() {
                    bail!("--endpoint-bin {}: no such file", p.display());
                }
                std::fs::canonicalize(p)?
            }
            None => build(true)?,
        },
        kernel_cc: kernel_cc.clone(),
        endpoint_args: std::iter::once(format!("--congestion={}", args.congestion.endpoint_name()))
            .chain(args.endpoint_args.iter().cloned())
            .collect(),
        xtask: crate::release_xtask()?,
        out_dir: root().join("target/bench"),
        perf: args.perf,
    };
    std::fs::create_dir_all(&ctx.out_dir)
        .with_context(|| format!("creating {}", ctx.out_dir.display()))?;
    crate::install_signal_forwarding();

    let _topo = BenchTopology::create_with(!args.no_port_qdisc, !args.bridge_netfilter)?;
    let bridge_nf = bridge_netfilter_state();
    say(format!(
        "congestion control: endpoint {}, kernel {kernel_cc}",
        args.congestion.endpoint_name()
    ));
    if !args.endpoint_args.is_empty() {
        say(format!(
            "endpoint: tcp-user run ... {}",
            args.endpoint_args.join(" ")
        ));
    }
    let mut report: Report = Vec::new();
    let mut failures = 0;
    for w in &selected {
        say(format!(
            "{}: {}; {} runs per server",
            w.name,
            w.describe(),
            args.runs
        ));
        let (port, loss_pct) = w.loss();
        let _loss = LossRules::install(port, loss_pct)?;
        let mut results: BTreeMap<&'static str, Vec<Result<RunResult>>> = BTreeMap::new();
        for run in 0..args.runs {
            for &server in w.servers() {
                let r = run_one(server, w, &ctx, ctx.perf && run == 0);
                if STOP.load(Ordering::SeqCst) != 0 {
                    bail!("interrupted");
                }
                match &r {
                    Ok(r) => say(format!(
                        "  run {} {:8}: {}{}",
                        run + 1,
                        server.name(),
                        report::run_line(w, r),
                        counters_note(&r.counters)
                    )),
                    Err(e) => {
                        failures += 1;
                        say(format!(
                            "  run {} {:8}: FAILED: {e:#}",
                            run + 1,
                            server.name()
                        ));
                    }
                }
                results.entry(server.name()).or_default().push(r);
            }
        }
        if let Kind::Idle { conns, .. } = w.kind {
            isolate_kernel_server_memory(&mut results, conns);
        }
        report.push((w.clone(), results));
    }

    report::print_table(&report);
    let mut topology = topology_json(!args.no_port_qdisc);
    topology["bridge_netfilter"] = bridge_nf;
    topology["endpoint_extra_args"] = json!(args.endpoint_args);
    topology["endpoint_bin"] = json!(ctx.tcp_user.display().to_string());
    topology["congestion_control"] = json!({
        "endpoint": args.congestion.endpoint_name(),
        "kernel": kernel_cc,
    });
    let doc = report::to_json(args.runs, &topology, &report);
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    say(format!("wrote {}", json_path.display()));
    std::fs::write(&chart_path, report::chart_svg(&report))
        .with_context(|| format!("writing {}", chart_path.display()))?;
    say(format!("wrote {}", chart_path.display()));
    if failures > 0 {
        bail!("{failures} run(s) failed (see above and the JSON)");
    }
    Ok(())
}

/// Whether `--only FILTER` selects workload `name`: FILTER is one or more
/// comma-separated parts, and a part selects the names containing it.
fn selects(filter: &str, name: &str) -> bool {
    filter
        .split(',')
        .any(|part| !part.is_empty() && name.contains(part))
}

fn topology_json(port_qdisc: bool) -> Value {
    let qdisc = if port_qdisc {
        format!(
            "{NS_MID} {PORT_SRV} root {}: the bridge port that transmits into {IF_SRV}'s ring; \
             a qdisc makes the veth stop its queue on a full ring (Linux >= 6.16) instead of \
             dropping; every other veth end keeps noqueue (its peer has no NAPI ring); \
             counters qdisc.to_server_*",
            PORT_SRV_QDISC.join(" ")
        )
    } else {
        format!("none (--no-port-qdisc): {PORT_SRV} noqueue, a full {IF_SRV} ring drops")
    };
    json!({
        "server": format!("{NS_SRV} {IF_SRV} {SRV_ADDR} cpu {SRV_CPU} (+ threaded NAPI kthread)"),
        "client": format!("{NS_CLI} {IF_CLI} {CLI_ADDR} cpu {CLI_CPU}"),
        "idle_sources": format!("{} ports {IDLE_PORTS}", IDLE_SRC.map(|a| a.to_string()).join(",")),
        "server_rx": format!("{IF_SRV}'s threaded NAPI kthread on cpu {SRV_CPU} for both servers (GRO on; the bridge ports' tx offload follows the sending side's, so a forwarded frame reaches that NAPI); the client's TCP receive runs in the transmitting CPU's softirq"),
        "crr_sources": std::iter::once(CLI_ADDR).chain(IDLE_SRC).map(|a| a.to_string()).collect::<Vec<_>>().join(","),
        "min_rto_ms": MIN_RTO_MS,
        "client_sysctls": "net.ipv4.tcp_tw_reuse=1, net.ipv4.ip_local_port_range=1024 65535",
        "server_port_qdisc": qdisc,
    })
}

fn counters_note(c: &BTreeMap<String, u64>) -> String {
    if c.is_empty() {
        return String::new();
    }
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    if c.contains_key("reflected") {
        // The reflector's (ceiling-*): frames it had no fill ring entry for.
        return format!(
            "  reflected={} rx_dropped={} rx_fill_ring_empty={}",
            get("reflected"),
            get("rx_dropped"),
            get("rx_fill_ring_empty")
        );
    }
    let mut s = format!(
        "  rto_expirations={} retransmits={} fast_retransmits={}",
        get("rto_expirations"),
        get("retransmits"),
        get("fast_retransmits")
    );
    for k in [
        "drop_table_full",
        "afxdp.kernel.rx_dropped",
        "afxdp.kernel.rx_fill_ring_empty_descs",
        "afxdp.kernel.rx_ring_full",
        "veth.to_server_dropped",
        "veth.to_client_dropped",
        "qdisc.to_server_requeues",
        "qdisc.to_server_dropped",
        "veth.client_to_bridge_dropped",
        "veth.bridge_to_client_dropped",
        "softnet.cpu0_dropped",
        "softnet.cpu1_dropped",
    ] {
        if get(k) > 0 {
            s += &format!(" {k}={}", get(k));
        }
    }
    s
}

/// Starts `server` for `w`, runs the workload's client once, reads the
/// server's counters, stops the server; `with_perf`: with a `perf record`
/// of the server CPU over the middle of the run (rr, crr and iperf3
/// workloads of 3 s or more).
fn run_one(server: Server, w: &Workload, ctx: &Ctx, with_perf: bool) -> Result<RunResult> {
    let load1 = load_average();
    let (cli_tx, srv_tx) = w.tx_offload(server);
    set_tx_offload(cli_tx, srv_tx)?;
    if let Kind::Ceiling { frame_len } = w.kind {
        return run_ceiling(ctx, frame_len, w.secs, load1);
    }
    let control = ctx.out_dir.join("endpoint.sock");
    let mut proc = match server {
        Server::Endpoint => {
            let mut c = netns_cmd(NS_SRV, SRV_CPU, &ctx.tcp_user);
            c.args(["run", "--iface", IF_SRV, "--addr"])
                .arg(SRV_ADDR.to_string())
                .args(["--min-rto-ms", &MIN_RTO_MS.to_string()])
                .args(["--service", &format!("echo:{PORT_ECHO}")])
                .args(["--service", &format!("discard:{PORT_DISCARD}")])
                .args(["--service", &format!("chargen:{PORT_CHARGEN}")])
                .args(["--service", &format!("iperf3:{PORT_IPERF3}")])
                // Connections are over when the client is done: no grace.
                .args(["--grace-ms", "200", "--control-socket"])
                .arg(&control)
                .args(&ctx.endpoint_args);
            ServerProc::start(c, &ctx.out_dir.join("endpoint.log"), "tcp-user", "READY")?
        }
        Server::Kernel => match w.kind {
            Kind::Ceiling { .. } => bail!("the reflection ceiling has no kernel run"),
            Kind::Bulk { .. } => {
                let mut c = netns_cmd(NS_SRV, SRV_CPU, &ctx.xtask);
                c.args(["bench-server", "--addr", &SRV_ADDR.to_string()])
                    .args(["--congestion", &ctx.kernel_cc]);
                ServerProc::start(
                    c,
                    &ctx.out_dir.join("kernel-server.log"),
                    "bench-server",
                    "READY",
                )?
            }
            Kind::Iperf { .. } => {
                let mut c = netns_cmd(NS_SRV, SRV_CPU, Path::new("iperf3"));
                c.args(["-s", "--forceflush", "-B", &SRV_ADDR.to_string()])
                    .args(["-p", &PORT_IPERF3.to_string()]);
                ServerProc::start(
                    c,
                    &ctx.out_dir.join("iperf3-server.log"),
                    "iperf3 -s",
                    "Server listening",
                )?
            }
            Kind::Rr { .. } | Kind::Crr { .. } | Kind::Idle { .. } => {
                let mut c = netns_cmd(NS_SRV, SRV_CPU, &ctx.xtask);
                c.args(["bench-server", "--epoll", "--addr", &SRV_ADDR.to_string()]);
                if let Kind::Idle { conns, .. } = w.kind {
                    c.args(["--procs", &procs_for(conns).to_string()]);
                }
                ServerProc::start(
                    c,
                    &ctx.out_dir.join("kernel-server.log"),
                    "bench-server --epoll",
                    "READY",
                )?
            }
        },
    };
    // XDP attachment switches the veth to NAPI mode, so its kthread may
    // only now exist: pin after every start.
    pin_napi()?;
    let before = match server {
        Server::Endpoint => BTreeMap::new(),
        Server::Kernel => kernel_mib()?,
    };
    let client_before = match w.kind {
        Kind::Bulk { .. } => Some(mib_of(NS_CLI)?),
        _ => None,
    };
    let server_pid = &proc.pids();
    let veth_before = path_counters();
    let cpu_before = server_cpu_ns(server_pid)?;
    let recording = match w.kind {
        Kind::Rr { .. } | Kind::Crr { .. } | Kind::Iperf { .. } if with_perf && w.secs >= 3.0 => {
            let path = ctx
                .out_dir
                .join("perf")
                .join(format!("{}-{}.data", w.name, server.name()));
            // Past the load's start-up, and over before its end.
            Some(profile::Recording::start(
                SRV_CPU,
                1.0,
                (w.secs - 2.0).min(5.0),
                &path,
            )?)
        }
        _ => None,
    };
    let mut r = match &w.kind {
        Kind::Bulk {
            direction, bytes, ..
        } => {
            let secs = run_client(*direction, *bytes, ctx)?;
            let server_cpu_ms = cpu_ms_since(server_pid, cpu_before)?;
            let mib = *bytes as f64 / (1 << 20) as f64;
            RunResult::new(server_cpu_ms, load1)
                .metric("secs", secs)
                .metric("mbps", *bytes as f64 * 8.0 / secs / 1e6)
                .metric("cpu_us_per_mib", server_cpu_ms * 1e3 / mib)
        }
        Kind::Iperf {
            streams, reverse, ..
        } => {
            let (bytes, secs, detail) = run_iperf3(*streams, *reverse, w, &ctx.kernel_cc)?;
            let server_cpu_ms = cpu_ms_since(server_pid, cpu_before)?;
            let mib = bytes as f64 / (1 << 20) as f64;
            let mut r = RunResult::new(server_cpu_ms, load1)
                .metric("secs", secs)
                .metric("mbps", bytes as f64 * 8.0 / secs / 1e6)
                .metric("cpu_us_per_mib", server_cpu_ms * 1e3 / mib.max(1e-9));
            r.detail = detail;
            r
        }
        Kind::Rr { conns } => {
            let out = run_load(
                &ctx.xtask,
                &["--mode", "rr", "--conns", &conns.to_string()],
                w,
            )?;
            let server_cpu_ms = cpu_ms_since(server_pid, cpu_before)?;
            rr_result(out, server_cpu_ms, load1, "tps", "cpu_us_per_txn")?
        }
        Kind::Crr { workers } => {
            let workers = workers.to_string();
            let mut args = vec!["--mode", "crr", "--conns", &workers];
            // The client's own address and the secondary ones: each has
            // its own ephemeral ports for the client's TIME-WAITs.
            let sources: Vec<String> = std::iter::once(CLI_ADDR)
                .chain(IDLE_SRC)
                .map(|a| a.to_string())
                .collect();
            for a in &sources {
                args.extend(["--src", a.as_str()]);
            }
            let out = run_load(&ctx.xtask, &args, w)?;
            let server_cpu_ms = cpu_ms_since(server_pid, cpu_before)?;
            let mut r = rr_result(out, server_cpu_ms, load1, "cps", "cpu_us_per_conn")?;
            let cps = r.metrics["cps"];
            r.metrics.insert("tps".into(), cps);
            r
        }
        Kind::Idle { conns, rr_conns } => {
            run_idle(ctx, w, server, *conns, *rr_conns, server_pid, load1)?
        }
        Kind::Ceiling { .. } => unreachable!("run_ceiling returned above"),
    };
    r.counters = match server {
        Server::Endpoint => endpoint_counters(&ctx.tcp_user, &control)?,
        Server::Kernel => kernel_counters(&before, &kernel_mib()?),
    };
    if let Some(b) = client_before {
        r.counters.extend(client_counters(&b, &mib_of(NS_CLI)?));
    }
    for (k, v) in path_counters() {
        let d = v.saturating_sub(veth_before.get(&k).copied().unwrap_or(0));
        r.counters.insert(k, d);
    }
    if !matches!(w.kind, Kind::Idle { .. }) {
        add_segment_rates(&mut r);
    }
    if let Some(rec) = recording {
        // A failed profile is said and recorded; the run stands.
        match rec.finish() {
            Ok(p) => r.detail["profile"] = p,
            Err(e) => {
                say(format!("  perf: {e:#}"));
                r.detail["profile_error"] = json!(format!("{e:#}"));
            }
        }
    }
    r.detail["tx_offload"] = json!({ "client": cli_tx, "server": srv_tx });
    proc.stop();
    Ok(r)
}

/// One run of the reflection ceiling on the bench topology
/// (bench_reflect::reflect_ceiling: the reflector and the generator are
/// started and stopped there), as a bench result: frames/s reflected and
/// server CPU (reflector + NAPI kthreads) per frame.
fn run_ceiling(ctx: &Ctx, frame_len: usize, secs: f64, load1: f64) -> Result<RunResult> {
    let c = bench_reflect::reflect_ceiling(
        &ctx.tcp_user,
        &ctx.xtask,
        frame_len,
        Duration::from_secs_f64(secs),
    )?;
    let mut r = RunResult::new((c.reflector_cpu_ns + c.napi_cpu_ns) as f64 / 1e6, load1)
        .metric("secs", c.secs)
        .metric("frames_per_sec", c.frames_per_sec)
        .metric("server_us_per_frame", c.server_us_per_frame())
        .metric("server_cpu_share", c.server_cpu_share())
        .metric("server_cpu_pct", c.server_cpu_share() * 100.0)
        .metric("frames_per_cpu_sec", 1e6 / c.server_us_per_frame());
    r.counters = c.counters.clone();
    r.detail = json!({ "reflect": c.to_json() });
    Ok(r)
}

/// Segments the server received and sent over the run (the endpoint's
/// `segments_in`/`segments_out`, the kernel's Tcp InSegs/OutSegs) as
/// segment pairs (one in, one out: what one reflected frame is) per
/// second of the run and server CPU µs per pair: the TCP packet rate
/// that is compared with the reflection ceiling.
fn add_segment_rates(r: &mut RunResult) {
    let (Some(i), Some(o)) = (
        r.counters.get("segments_in"),
        r.counters.get("segments_out"),
    ) else {
        return;
    };
    let pairs = (i + o) as f64 / 2.0;
    let Some(secs) = r.metrics.get("secs").copied().filter(|s| *s > 0.0) else {
        return;
    };
    if pairs <= 0.0 {
        return;
    }
    r.metrics.insert("seg_pairs_per_sec".into(), pairs / secs);
    r.metrics
        .insert("cpu_us_per_seg_pair".into(), r.server_cpu_ms * 1e3 / pairs);
}

/// Frames the veths dropped on their way to the server and to the client
/// (the sending end's tx_dropped: a full receive ring on the other end),
/// and the bridge port's qdisc counters (PORT_SRV_QDISC): cumulative,
/// the caller takes the differences.
fn path_counters() -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    if let Ok(o) = Command::new("ip")
        .args([
            "netns", "exec", NS_MID, "tc", "-s", "-j", "qdisc", "show", "dev",
        ])
        .arg(PORT_SRV)
        .output()
    {
        m.extend(parse_qdisc_stats(&String::from_utf8_lossy(&o.stdout)));
    }
    // Frames for a peer without NAPI go to the receiving CPU's backlog
    // (netif_rx), which drops beyond net.core.netdev_max_backlog: system
    // wide, so other network work on the machine shows here too.
    if let Ok(t) = std::fs::read_to_string("/proc/net/softnet_stat") {
        m.extend(parse_softnet_stat(&t));
    }
    for (key, ns, dev) in [
        ("veth.to_server_dropped", NS_MID, PORT_SRV),
        ("veth.to_client_dropped", NS_SRV, IF_SRV),
        ("veth.client_to_bridge_dropped", NS_CLI, IF_CLI),
        ("veth.bridge_to_client_dropped", NS_MID, PORT_CLI),
    ] {
        let v = Command::new("ip")
            .args(["netns", "exec", ns, "cat"])
            .arg(format!("/sys/class/net/{dev}/statistics/tx_dropped"))
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
        if let Some(v) = v {
            m.insert(key.to_owned(), v);
        }
    }
    m
}

/// The root qdisc's counters from `tc -s -j qdisc show dev PORT_SRV`, as
/// `qdisc.to_server_{packets,requeues,dropped,overlimits}` (requeues:
/// frames the veth handed back because the server veth's ring was full).
fn parse_qdisc_stats(json_text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let Ok(v) = serde_json::from_str::<Value>(json_text) else {
        return m;
    };
    let Some(q) = v
        .as_array()
        .into_iter()
        .flatten()
        .find(|q| q["root"].as_bool() == Some(true))
    else {
        return m;
    };
    for (key, field) in [
        ("packets", "packets"),
        ("requeues", "requeues"),
        ("dropped", "drops"),
        ("overlimits", "overlimits"),
    ] {
        if let Some(n) = q[field].as_u64() {
            m.insert(format!("qdisc.to_server_{key}"), n);
        }
    }
    m
}

/// Per CPU, the backlog drops and the time squeezes of
/// /proc/net/softnet_stat (one line per CPU, hexadecimal: processed,
/// dropped, time_squeeze, ...) as `softnet.cpuN_{dropped,squeezed}`.
fn parse_softnet_stat(text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (cpu, line) in text.lines().enumerate() {
        let f: Vec<u64> = line
            .split_whitespace()
            .map_while(|v| u64::from_str_radix(v, 16).ok())
            .collect();
        if let [_, dropped, squeezed, ..] = f[..] {
            m.insert(format!("softnet.cpu{cpu}_dropped"), dropped);
            m.insert(format!("softnet.cpu{cpu}_squeezed"), squeezed);
        }
    }
    m
}

fn cpu_ms_since(pid: &[u32], before: u64) -> Result<f64> {
    Ok(server_cpu_ns(pid)?.saturating_sub(before) as f64 / 1e6)
}

/// `ip netns exec NS taskset -c CPU PROGRAM`: both exec, so the child's
/// pid is the program's own (signals reach it directly).
pub(crate) fn netns_cmd(ns: &str, cpu: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "taskset", "-c", cpu])
        .arg(program);
    c
}

/// Runs `c` to completion, killing it after `budget`; its output.
fn output_within(mut c: Command, budget: Duration, what: &str) -> Result<std::process::Output> {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {what}"))?;
    wait_output_within(child, budget, what)
}

/// A running child's output, or an error (and the child killed) once
/// `budget` has passed.
pub(crate) fn wait_output_within(
    child: Child,
    budget: Duration,
    what: &str,
) -> Result<std::process::Output> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(budget) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // Our own child, by its pid.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            bail!("{what} took longer than {} s", budget.as_secs())
        }
    }
}

fn run_client(direction: Direction, bytes: u64, ctx: &Ctx) -> Result<f64> {
    let mut c = netns_cmd(NS_CLI, CLI_CPU, &ctx.xtask);
    c.args(["bench-client", "--addr", &SRV_ADDR.to_string()])
        .args(["--congestion", &ctx.kernel_cc])
        .args(["--direction", direction.name()])
        .args(["--bytes", &bytes.to_string()]);
    let out = output_within(c, Duration::from_secs(600), "bench-client")?;
    if !out.status.success() {
        bail!(
            "client failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT secs="))
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .ok_or_else(|| anyhow!("client printed no result: {stdout:?}"))
}

/// Stock `iperf3 -c -J` in the client namespace: bytes the receiver got,
/// seconds, and the interesting part of its report.
fn run_iperf3(
    streams: u32,
    reverse: bool,
    w: &Workload,
    congestion: &str,
) -> Result<(u64, f64, Value)> {
    let mut c = netns_cmd(NS_CLI, CLI_CPU, Path::new("iperf3"));
    // -C: the client's sockets and, through the parameters it sends, the
    // server's (iperf3 -s applies them to its data sockets).
    c.args(["-c", &SRV_ADDR.to_string(), "-p", &PORT_IPERF3.to_string()])
        .args(["-C", congestion])
        .args(["-t", &format!("{}", w.secs), "-P", &streams.to_string()])
        .args(["-J", "--connect-timeout", "5000"]);
    if reverse {
        c.arg("-R");
    }
    let out = output_within(c, w.budget(), "iperf3 -c")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&stdout).map_err(|e| {
        anyhow!(
            "iperf3 -J output is not JSON ({e}; exit {}): {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(err) = v["error"].as_str() {
        bail!("iperf3: {err}");
    }
    if !out.status.success() {
        bail!("iperf3 -c failed ({})", out.status);
    }
    let recv = &v["end"]["sum_received"];
    let bytes = recv["bytes"]
        .as_u64()
        .ok_or_else(|| anyhow!("iperf3 report without end.sum_received.bytes"))?;
    let secs = recv["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .ok_or_else(|| anyhow!("iperf3 report without end.sum_received.seconds"))?;
    let detail = json!({
        "iperf3": {
            "sum_received": recv,
            "sum_sent": v["end"]["sum_sent"],
            "cpu_utilization_percent": v["end"]["cpu_utilization_percent"],
            "sender_tcp_congestion": v["end"]["sender_tcp_congestion"],
        }
    });
    Ok((bytes, secs, detail))
}

/// `xtask bench-load` in the client namespace (rr, crr); its RESULT.
fn run_load(xtask: &Path, args: &[&str], w: &Workload) -> Result<Value> {
    let mut c = netns_cmd(NS_CLI, CLI_CPU, xtask);
    c.args(["bench-load", "--addr", &SRV_ADDR.to_string()])
        .args(["--port", &PORT_ECHO.to_string()])
        .args(["--size", &RR_SIZE.to_string()])
        .args(["--secs", &w.secs.to_string()])
        .args(args);
    let out = output_within(c, w.budget(), "bench-load")?;
    if !out.status.success() {
        bail!(
            "bench-load failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_result(&String::from_utf8_lossy(&out.stdout))
}

fn parse_result(stdout: &str) -> Result<Value> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| anyhow!("bench-load printed no RESULT: {stdout:?}"))?;
    serde_json::from_str(line).context("parsing bench-load's RESULT")
}

/// A run's result from a bench-load report: `rate_key` (tps or cps) and
/// the latencies; server CPU per transaction under `cpu_key`.
fn rr_result(
    out: Value,
    server_cpu_ms: f64,
    load1: f64,
    rate_key: &str,
    cpu_key: &str,
) -> Result<RunResult> {
    let n = out["transactions"].as_u64().unwrap_or(0);
    if n == 0 {
        bail!("no transaction completed: {out}");
    }
    let secs = out["secs"].as_f64().unwrap_or(f64::NAN);
    let mut r = RunResult::new(server_cpu_ms, load1)
        .metric("secs", secs)
        .metric(rate_key, n as f64 / secs)
        .metric(cpu_key, server_cpu_ms * 1e3 / n as f64);
    for k in ["mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        if let Some(v) = out["latency"][k].as_f64() {
            r = r.metric(k, v);
        }
    }
    r.detail = json!({ "load": out });
    Ok(r)
}

/// The idle workload: open `conns`, measure memory, then rr over
/// `rr_conns` of them.
fn run_idle(
    ctx: &Ctx,
    w: &Workload,
    server: Server,
    conns: usize,
    rr_conns: usize,
    server_pid: &[u32],
    load1: f64,
) -> Result<RunResult> {
    let mem_before = kernel_mem()?;
    let rss_before = rss_bytes(server_pid)?;
    let cpu_before = server_cpu_ns(server_pid)?;
    // One load generator per CONNS_PER_PROC connections (file limit),
    // each with its own slice of the source addresses and ports; the
    // first one runs the rr phase over the first `rr_conns`.
    let procs = procs_for(conns);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children: Vec<Child> = Vec::new();
    let mut stdins = Vec::new();
    let log = ctx.out_dir.join("bench-load.log");
    let log_file = File::create(&log)?;
    let mut first = 0;
    for i in 0..procs {
        let n = (conns - first).div_ceil(procs - i);
        let mut c = netns_cmd(NS_CLI, CLI_CPU, &ctx.xtask);
        c.args([
            "bench-load",
            "--mode",
            "idle",
            "--addr",
            &SRV_ADDR.to_string(),
        ])
        .args(["--port", &PORT_ECHO.to_string()])
        .args(["--size", &RR_SIZE.to_string()])
        .args(["--secs", &w.secs.to_string()])
        .args(["--conns", &n.to_string()])
        .args(["--first", &first.to_string()])
        .args(["--rr-conns", &if i == 0 { rr_conns } else { 0 }.to_string()])
        .args(["--src-ports", IDLE_PORTS]);
        for a in IDLE_SRC {
            c.args(["--src", &a.to_string()]);
        }
        first += n;
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file.try_clone()?))
            .spawn()
            .context("starting bench-load")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((i, line)).is_err() {
                    break;
                }
            }
        });
        stdins.push(child.stdin.take().context("no stdin pipe")?);
        children.push(child);
    }
    let fail = |children: &mut Vec<Child>, what: String| -> anyhow::Error {
        for c in children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        anyhow!("{what}; bench-load: {}", text.trim())
    };
    // The lines starting with `prefix`, one from each process.
    let wait_all = |prefix: &str, budget: Duration| -> Option<Vec<String>> {
        let end = Instant::now() + budget;
        let mut got: Vec<Option<String>> = vec![None; procs];
        while got.iter().any(Option::is_none) {
            let (i, line) = rx
                .recv_timeout(end.saturating_duration_since(Instant::now()))
                .ok()?;
            if let Some(rest) = line.strip_prefix(prefix) {
                got[i] = Some(rest.to_owned());
            }
        }
        Some(got.into_iter().flatten().collect())
    };
    let Some(opened) = wait_all("OPENED ", w.budget()) else {
        return Err(fail(
            &mut children,
            format!("{conns} connections did not open"),
        ));
    };
    let opened: Vec<Value> = opened
        .iter()
        .map(|o| serde_json::from_str(o).unwrap_or(Value::Null))
        .collect();
    // Let the last handshakes' work (accept, ACKs) finish.
    std::thread::sleep(Duration::from_secs(1));
    let open_cpu_ms = cpu_ms_since(server_pid, cpu_before)?;
    let mem_after = kernel_mem()?;
    let rss_after = rss_bytes(server_pid)?;
    let cpu_rr = server_cpu_ns(server_pid)?;
    for s in &mut stdins {
        writeln!(s, "go")?;
    }
    let Some(results) = wait_all("RESULT ", w.budget()) else {
        return Err(fail(
            &mut children,
            "the rr phase did not finish".to_owned(),
        ));
    };
    let rr_cpu_ms = cpu_ms_since(server_pid, cpu_rr)?;
    drop(stdins);
    for i in 0..children.len() {
        let st = children[i].wait()?;
        if !st.success() {
            return Err(fail(&mut children, format!("bench-load exited with {st}")));
        }
    }
    let result = &results[0];
    let out: Value = serde_json::from_str(result).context("parsing RESULT")?;
    let mut r = rr_result(out, rr_cpu_ms, load1, "tps", "cpu_us_per_txn")?;
    let n = conns as f64;
    let rss_delta = rss_after as f64 - rss_before as f64;
    let mem_delta: BTreeMap<&str, f64> = mem_after
        .iter()
        .map(|(k, v)| {
            (
                *k,
                *v as f64 - mem_before.get(k).copied().unwrap_or(0) as f64,
            )
        })
        .collect();
    r.server_cpu_ms = open_cpu_ms + rr_cpu_ms;
    let own = match server {
        Server::Endpoint => rss_delta,
        // Provisional (half the kernel's growth, the other half being the
        // client's): replaced once every run is in, see
        // isolate_kernel_server_memory.
        Server::Kernel => rss_delta + mem_delta.get("total").copied().unwrap_or(0.0) / 2.0,
    };
    r = r
        .metric("cpu_us_per_conn", open_cpu_ms * 1e3 / n)
        .metric("kib_per_conn", own / n / 1024.0);
    r.detail["opened"] = json!(opened);
    r.detail["client_processes"] = json!(procs);
    r.detail["memory"] = json!({
        "conns": conns,
        "server_rss_delta_bytes": rss_delta,
        "system_delta_bytes": mem_delta,
        "open_server_cpu_ms": open_cpu_ms,
        "rr_server_cpu_ms": rr_cpu_ms,
    });
    Ok(r)
}

/// The kernel's memory: slab (kernel objects: sockets, files, inodes,
/// epoll items, ...) and TCP's buffer pages, system-wide, in bytes; plus
/// the TCP slab caches alone.
fn kernel_mem() -> Result<BTreeMap<&'static str, u64>> {
    let mut m = BTreeMap::new();
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    for l in meminfo.lines() {
        if let Some(kb) = l.strip_prefix("Slab:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            m.insert("slab", kb * 1024);
        }
    }
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    for l in sockstat.lines() {
        if let Some(rest) = l.strip_prefix("TCP:") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let Some(i) = f.iter().position(|k| *k == "mem") {
                let pages: u64 = f.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(0);
                m.insert("tcp_mem", pages * 4096);
            }
        }
    }
    let slabinfo = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    for l in slabinfo.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 3 && f[0] == "TCP" {
            let objs: u64 = f[1].parse().unwrap_or(0);
            let size: u64 = f[3].parse().unwrap_or(0);
            m.insert("slab_tcp", objs * size);
        }
    }
    m.insert(
        "total",
        m.get("slab").copied().unwrap_or(0) + m.get("tcp_mem").copied().unwrap_or(0),
    );
    Ok(m)
}

/// The resident memory of processes `pids`, summed.
fn rss_bytes(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        total += s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    }
    Ok(total)
}

/// Connections per process where one process holds a file per
/// connection: this container's hard RLIMIT_NOFILE is 20,000 and cannot
/// be raised without CAP_SYS_RESOURCE.
const CONNS_PER_PROC: usize = 15_000;

/// Processes for `conns` connections (kernel server, load generator).
fn procs_for(conns: usize) -> usize {
    conns.div_ceil(CONNS_PER_PROC).max(1)
}

/// The kernel's memory per server connection. The client's sockets live
/// in the same kernel, so a run against the kernel grows the kernel by
/// the client's and the server's sockets, a run against the endpoint by
/// the client's alone (the endpoint keeps its connections in its own
/// memory): the kernel server's share is the difference, plus the growth
/// of the kernel server process itself (its RSS, a few bytes per
/// connection). Without an endpoint run to subtract, half of the growth
/// is taken (client and server sockets are about the same).
fn isolate_kernel_server_memory(
    results: &mut BTreeMap<&'static str, Vec<Result<RunResult>>>,
    conns: usize,
) {
    let sys = |r: &RunResult| r.detail["memory"]["system_delta_bytes"]["total"].as_f64();
    let mut client: Vec<f64> = results
        .get("endpoint")
        .map(|v| {
            v.iter()
                .filter_map(|r| r.as_ref().ok())
                .filter_map(sys)
                .collect()
        })
        .unwrap_or_default();
    client.sort_by(f64::total_cmp);
    let client_median = (!client.is_empty()).then(|| client[client.len() / 2]);
    if let Some(runs) = results.get_mut("kernel") {
        for r in runs.iter_mut().flatten() {
            let Some(total) = sys(r) else { continue };
            let rss = r.detail["memory"]["server_rss_delta_bytes"]
                .as_f64()
                .unwrap_or(0.0);
            let (kernel_part, method) = match client_median {
                Some(c) => (
                    total - c,
                    "system slab + TCP pages growth minus the median growth of the endpoint runs (the client's sockets), plus the server's RSS growth",
                ),
                None => (
                    total / 2.0,
                    "half the system slab + TCP pages growth (no endpoint run to subtract), plus the server's RSS growth",
                ),
            };
            r.metrics.insert(
                "kib_per_conn".into(),
                (kernel_part + rss) / conns as f64 / 1024.0,
            );
            r.detail["memory"]["kernel_server_bytes"] = json!(kernel_part);
            r.detail["memory"]["method"] = json!(method);
        }
    }
}

/// Sets tx checksum offload (and with it TSO) on the client's and the
/// server's veth: every run sets both, so no run inherits another's.
///
/// The bridge port that forwards a side's frames follows that side's
/// setting. A veth hands a frame to its peer's NAPI (and so to the
/// threaded NAPI kthread pinned next to the receiver) only when the
/// sending device has no TSO or XDP is attached (veth_xmit); with TSO on
/// the bridge port, the kernel server's receive path ran in the client
/// CPU's backlog softirq, outside the server CPU the bench measures, and
/// the endpoint's (XDP) did not. With the sender's offload off nothing
/// crossing the bridge needs it; with it on (the iperf3 `-offload`
/// workloads) GSO packets pass through as before.
fn set_tx_offload(client: bool, server: bool) -> Result<()> {
    for (ns, dev, on) in [
        (NS_CLI, IF_CLI, client),
        (NS_SRV, IF_SRV, server),
        (NS_MID, PORT_SRV, client),
        (NS_MID, PORT_CLI, server),
    ] {
        status(
            Command::new("ip")
                .args(["netns", "exec", ns, "ethtool", "-K", dev, "tx"])
                .arg(if on { "on" } else { "off" })
                .stdout(Stdio::null()),
        )?;
    }
    Ok(())
}

/// Fails unless the kernel has congestion control `name` (loading its
/// module if it is one); a socket may then use it whatever the machine's
/// default and allowed list (setsockopt as root, set_congestion).
fn check_kernel_congestion(name: &str) -> Result<()> {
    const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";
    let has = || {
        let list = std::fs::read_to_string(AVAILABLE).unwrap_or_default();
        (list.split_whitespace().any(|a| a == name), list)
    };
    if !has().0 {
        let _ = Command::new("modprobe")
            .arg(format!("tcp_{name}"))
            .stderr(Stdio::null())
            .status();
    }
    match has() {
        (true, _) => Ok(()),
        (false, list) => bail!(
            "the kernel has no congestion control {name:?} (available: {})",
            list.trim()
        ),
    }
}

/// A TCP connection to `target` whose congestion control, if given, is
/// set before the SYN: set after connect, the namespace's default has
/// already been initialised on the socket, and a BBR default leaves the
/// socket paced (`sk_pacing_status`) under whatever control follows.
/// After a lost SYN-ACK (a first RTT sample of ~1 s) such a "CUBIC"
/// socket sent 16 MiB over a bare veth in 1.6–1.8 s, against 4 ms when
/// CUBIC was set before connecting.
fn connect_with(
    target: SocketAddrV4,
    congestion: Option<&str>,
    timeout: Duration,
) -> Result<TcpStream> {
    let sock = crate::loadgen::tcp_socket(0)?;
    if let Some(cc) = congestion {
        set_congestion(&sock, cc)?;
    }
    // A blocking connect(2) gives up after SO_SNDTIMEO.
    sock.set_write_timeout(Some(timeout))?;
    crate::loadgen::connect_fd(&sock, target).context("connect")?;
    Ok(sock)
}

/// Sets a kernel socket's congestion control (TCP_CONGESTION); one that
/// is not in net.ipv4.tcp_allowed_congestion_control needs CAP_NET_ADMIN,
/// which the bench's processes have.
fn set_congestion(socket: &impl std::os::fd::AsRawFd, name: &str) -> Result<()> {
    // Safety: passes a pointer to the name's bytes and their length; the
    // kernel copies at most that many.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!(
            "setting congestion control {name:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The endpoint's core counters (`tcp-user stat --json`).
fn endpoint_counters(tcp_user: &Path, control: &Path) -> Result<BTreeMap<String, u64>> {
    let out = Command::new(tcp_user)
        .args(["stat", "--json", "--control-socket"])
        .arg(control)
        .output()
        .context("running tcp-user stat")?;
    if !out.status.success() {
        bail!(
            "tcp-user stat failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing tcp-user stat --json")?;
    flatten_endpoint_stat(&v)
}

/// `tcp-user stat --json` as flat counters: the core's by name, the rest
/// prefixed by where they come from (`xdp.`, `driver.`, `afxdp.`).
fn flatten_endpoint_stat(v: &Value) -> Result<BTreeMap<String, u64>> {
    let counters = v["counters"]
        .as_object()
        .ok_or_else(|| anyhow!("tcp-user stat has no counters"))?;
    let mut c: BTreeMap<String, u64> = counters
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect();
    // The XDP verdicts, the driver's counters and the AF_XDP sockets'
    // kernel statistics (summed over the sockets): drops outside the TCP
    // core show here.
    for key in ["xdp", "driver"] {
        if let Some(m) = v[key].as_object() {
            for (k, v) in m {
                if let Some(v) = v.as_u64() {
                    c.insert(format!("{key}.{k}"), v);
                }
            }
        }
    }
    sum_afxdp(&v["afxdp"], &mut c);
    Ok(c)
}

/// The AF_XDP sockets' counters summed over the sockets: the kernel's
/// statistics and the engine's own counters (TX kicks, RX wakeups, ...),
/// one level down, as `afxdp.kernel.rx_dropped`, `afxdp.engine.tx_kicks`.
/// The queue and NAPI ids are not counters.
fn sum_afxdp(afxdp: &Value, c: &mut BTreeMap<String, u64>) {
    for sock in afxdp.as_array().into_iter().flatten() {
        for (k, v) in sock.as_object().into_iter().flatten() {
            if let Some(inner) = v.as_object() {
                for (k2, v2) in inner {
                    if let Some(v2) = v2.as_u64() {
                        *c.entry(format!("afxdp.{k}.{k2}")).or_default() += v2;
                    }
                }
            }
        }
    }
}

/// The server namespace's TCP MIB.
fn kernel_mib() -> Result<BTreeMap<String, u64>> {
    mib_of(NS_SRV)
}

/// A namespace's TCP MIB (`/proc/net/snmp` and `netstat`, which are per
/// network namespace), as "Tcp.RetransSegs", "TcpExt.TCPTimeouts", ...
fn mib_of(ns: &str) -> Result<BTreeMap<String, u64>> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "cat",
            "/proc/net/snmp",
            "/proc/net/netstat",
        ])
        .output()
        .with_context(|| format!("reading {ns}'s TCP counters"))?;
    if !out.status.success() {
        bail!("reading /proc/net/snmp in {ns} failed");
    }
    Ok(parse_mib(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses the "Prefix: names" / "Prefix: values" line pairs of /proc/net/snmp.
fn parse_mib(text: &str) -> BTreeMap<String, u64> {
    let mut map = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((p1, names)), Some((p2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if p1 != p2 {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse::<u64>() {
                map.insert(format!("{p1}.{n}"), v);
            }
        }
    }
    map
}

/// The kernel server's counters over one run, named like the endpoint's
/// where they mean about the same (all segments retransmitted; RTO
/// expirations; fast retransmits), plus a few raw ones.
fn kernel_counters(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let delta = |k: &str| {
        after
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(k).copied().unwrap_or(0))
    };
    let mut c = BTreeMap::new();
    c.insert("retransmits".to_owned(), delta("Tcp.RetransSegs"));
    c.insert("rto_expirations".to_owned(), delta("TcpExt.TCPTimeouts"));
    c.insert(
        "fast_retransmits".to_owned(),
        delta("TcpExt.TCPFastRetrans"),
    );
    // Segments, GSO/GRO segments counted one by one, like the endpoint's.
    c.insert("segments_in".to_owned(), delta("Tcp.InSegs"));
    c.insert("segments_out".to_owned(), delta("Tcp.OutSegs"));
    // Every other TcpExt counter that moved (undo, reordering, DSACK, ...):
    // which of the kernel's heuristics acted in the run.
    for k in after.keys().filter(|k| k.starts_with("TcpExt.")) {
        if delta(k) != 0 {
            c.insert(k.clone(), delta(k));
        }
    }
    c
}

/// The client's counters over one bulk run, for either server: the
/// sender's view in an upload (its retransmissions, timeouts, undos), as
/// "client.Tcp.RetransSegs" and every "client.TcpExt.*" that moved.
fn client_counters(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(k, _)| k.starts_with("TcpExt.") || *k == "Tcp.RetransSegs")
        .map(|(k, v)| (k, v.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|&(_, d)| d != 0)
        .map(|(k, d)| (format!("client.{k}"), d))
        .collect()
}

pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The server veth's NAPI kthreads (`napi/<iface>-<id>`).
pub(crate) fn napi_pids() -> Result<Vec<String>> {
    napi_pids_of(IF_SRV)
}

/// The NAPI kthreads of `iface` (`napi/<iface>-<id>`).
fn napi_pids_of(iface: &str) -> Result<Vec<String>> {
    let out = Command::new("ps")
        .args(["-eo", "pid,comm"])
        .output()
        .context("running ps")?;
    let prefix = format!("napi/{iface}-");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let pid = f.next()?;
            f.next()?.starts_with(&prefix).then(|| pid.to_owned())
        })
        .collect())
}

/// Nanoseconds on a CPU of processes `pids` (all their threads, also those
/// that have exited: utime + stime of `/proc/PID/stat`, in clock ticks)
/// plus the server veth's NAPI kthreads (`/proc/*/schedstat`, whose first
/// field is the time spent running in ns).
fn server_cpu_ns(pids: &[u32]) -> Result<u64> {
    // Linux's USER_HZ is 100 on every architecture it exports it for.
    const NS_PER_TICK: u64 = 10_000_000;
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name, which may contain spaces: state is
        // the first, utime the 12th and stime the 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        total += ticks * NS_PER_TICK;
    }
    for p in napi_pids()? {
        let text = std::fs::read_to_string(format!("/proc/{p}/schedstat")).unwrap_or_default();
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// Pins the server veth's NAPI kthreads (`napi/<iface>-<id>`) to the
/// server's CPU.
pub(crate) fn pin_napi() -> Result<()> {
    let pids = napi_pids()?;
    if pids.is_empty() {
        bail!("no NAPI kthread for {IF_SRV} (threaded NAPI not in effect?)");
    }
    for pid in pids {
        status(
            Command::new("taskset")
                .args(["-pc", SRV_CPU, &pid])
                .stdout(Stdio::null()),
        )?;
    }
    Ok(())
}

/// A server process: READY seen, stopped (SIGTERM, then SIGKILL) on drop.
struct ServerProc {
    child: Option<Child>,
    /// Every process of the server (`pids=` on its ready line; else the
    /// child alone).
    pids: Vec<u32>,
}

impl ServerProc {
    /// Starts `c` and waits for a line of its stdout containing `ready`.
    fn start(mut c: Command, log: &Path, what: &str, ready: &str) -> Result<ServerProc> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        CHILD.store(child.id() as i32, Ordering::SeqCst);
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        let marker = ready.to_owned();
        std::thread::spawn(move || {
            let mut sent = false;
            // Keep draining so that the server never blocks on stdout.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && line.contains(&marker) {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let pid = child.id();
        let mut proc = ServerProc {
            child: Some(child),
            pids: vec![pid],
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => {
                if let Some(p) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("pids="))
                {
                    proc.pids = p.split(',').filter_map(|p| p.parse().ok()).collect();
                }
                Ok(proc)
            }
            other => {
                proc.stop();
                let log_text = std::fs::read_to_string(log).unwrap_or_default();
                bail!(
                    "{what} did not become ready ({other:?}); its log ({}):\n{log_text}",
                    log.display()
                )
            }
        }
    }

    /// The server's pids (`ip netns exec` and `taskset` exec it in place).
    fn pids(&self) -> Vec<u32> {
        self.pids.clone()
    }

    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        CHILD.store(0, Ordering::SeqCst);
        terminate(&mut c);
    }
}

/// SIGTERM to a server child, then up to 10 s for it to exit before
/// SIGKILL.
pub(crate) fn terminate(c: &mut Child) {
    // Safety: kill(2) on our own child's pid, which `c` has not reaped yet.
    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() <= Duration::from_secs(10) {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The namespaces and the veth pair; removed on drop (also on error and,
/// through the signal flag, on Ctrl-C).
pub(crate) struct BenchTopology;

/// br_netfilter's switches, per network namespace.
const BRIDGE_NF_SYSCTLS: [&str; 3] = [
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
];

/// Whether br_netfilter is there (its sysctls exist only then).
fn bridge_netfilter_loaded() -> bool {
    Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
}

/// br_netfilter's switches as the bridge's namespace has them, for the
/// JSON: `{"br_netfilter": false}` without the module.
fn bridge_netfilter_state() -> Value {
    if !bridge_netfilter_loaded() {
        return json!({ "br_netfilter": false });
    }
    let mut o = json!({ "br_netfilter": true, "namespace": NS_MID });
    for k in BRIDGE_NF_SYSCTLS {
        let v = Command::new("ip")
            .args(["netns", "exec", NS_MID, "sysctl", "-n", k])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
        o[k] = json!(v);
    }
    o
}

impl BenchTopology {
    pub(crate) fn create() -> Result<BenchTopology> {
        BenchTopology::create_with(true, true)
    }

    /// `port_qdisc` false leaves the bridge port into the server veth
    /// without a qdisc (noqueue, the veth default): frames that find the
    /// server veth's ring full are dropped (for comparison runs).
    /// `bridge_nf_off` turns br_netfilter's calls into the IP tables off
    /// in the bridge's namespace (BRIDGE_NF_SYSCTLS), if it is loaded.
    pub(crate) fn create_with(port_qdisc: bool, bridge_nf_off: bool) -> Result<BenchTopology> {
        BenchTopology::remove();
        say(format!(
            "creating the bench topology: netns {NS_SRV} ({SRV_ADDR}, CPU {SRV_CPU}) <-bridge-> {NS_CLI} ({CLI_ADDR}, CPU {CLI_CPU})"
        ));
        let topo = BenchTopology;
        let ip = |args: &[&str]| status(Command::new("ip").args(args));
        for ns in [NS_SRV, NS_CLI, NS_MID] {
            ip(&["netns", "add", ns])?;
        }
        for (ns, dev, port) in [(NS_SRV, IF_SRV, PORT_SRV), (NS_CLI, IF_CLI, PORT_CLI)] {
            ip(&[
                "link",
                "add",
                dev,
                "numrxqueues",
                "1",
                "numtxqueues",
                "1",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "numrxqueues",
                "1",
                "numtxqueues",
                "1",
                "netns",
                NS_MID,
            ])?;
        }
        ip(&["-n", NS_MID, "link", "add", "br0", "type", "bridge"])?;
        for port in [PORT_SRV, PORT_CLI] {
            ip(&["-n", NS_MID, "link", "set", port, "master", "br0"])?;
            ip(&["-n", NS_MID, "link", "set", port, "up"])?;
        }
        ip(&["-n", NS_MID, "link", "set", "br0", "up"])?;
        // br_netfilter (when loaded, e.g. by a container runtime) makes
        // the bridge run every frame through the IP-family netfilter hooks
        // of its namespace: ~9 % of CPU 1 in a profile of rr-1conn, with no
        // rule there to match. The sysctls are per namespace (Linux >=
        // 5.3); the loss rules are in the bridge family, which does not
        // depend on them.
        if bridge_nf_off && bridge_netfilter_loaded() {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", NS_MID, "sysctl", "-q", "-w"]);
            for k in BRIDGE_NF_SYSCTLS {
                c.arg(format!("{k}=0"));
            }
            status(&mut c)?;
        }
        // Backpressure instead of drops into the server veth's ring
        // (PORT_SRV_QDISC).
        if port_qdisc {
            status(
                Command::new("ip")
                    .args(["netns", "exec", NS_MID, "tc", "qdisc", "replace", "dev"])
                    .args([PORT_SRV, "root"])
                    .args(PORT_SRV_QDISC),
            )?;
        }
        ip(&[
            "-n",
            NS_SRV,
            "addr",
            "add",
            &format!("{SRV_ADDR}/24"),
            "dev",
            IF_SRV,
        ])?;
        ip(&[
            "-n",
            NS_CLI,
            "addr",
            "add",
            &format!("{CLI_ADDR}/24"),
            "dev",
            IF_CLI,
        ])?;
        // The idle connections' source addresses (secondary: the client's
        // own connections keep coming from CLI_ADDR).
        for a in IDLE_SRC {
            ip(&[
                "-n",
                NS_CLI,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                IF_CLI,
            ])?;
        }
        // The client closes first in crr, so TIME-WAIT stays with it:
        // reuse it for new connects after 1 s (timestamps make that safe)
        // from the widest port range, so the client is not the limit.
        status(Command::new("ip").args([
            "netns",
            "exec",
            NS_CLI,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65535",
        ]))?;
        for (ns, dev) in [
            (NS_SRV, IF_SRV),
            (NS_CLI, IF_CLI),
            (NS_SRV, "lo"),
            (NS_CLI, "lo"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // The kernel's veth sends CHECKSUM_PARTIAL, which the XDP program
        // rightly drops; the server side too, so both servers pay for
        // software checksums alike. (Every run sets both ends again,
        // set_tx_offload: the iperf3 `-offload` workloads turn it on.)
        set_tx_offload(false, false)?;
        // The bridge sees single segments: with checksum offload off the
        // client's veth cannot take GSO packets, so they are cut up in its
        // transmit path, before they cross to the bridge.
        // The kernel server's minimum RTO, comparable to the endpoint's
        // --min-rto-ms (a route metric; the endpoint ignores routes).
        ip(&[
            "-n",
            NS_SRV,
            "route",
            "replace",
            SUBNET,
            "dev",
            IF_SRV,
            "proto",
            "kernel",
            "scope",
            "link",
            "src",
            &SRV_ADDR.to_string(),
            "rto_min",
            &format!("{MIN_RTO_MS}ms"),
        ])?;
        // Threaded NAPI gives the server veth's receive work its own
        // kthread, pinned next to the server (pin_napi), for both servers.
        // A veth has NAPI only with XDP attached or with GRO on (real NICs
        // do GRO by default); see set_tx_offload for the sender's side.
        // The client veth keeps none: the client's TCP receive runs in
        // the softirq of the CPU that transmitted, the server's, for both
        // servers alike. (Tried: GRO and threaded NAPI on the client veth
        // too, its kthread on CPU 0: rr-1conn fell to ~380 transactions/s
        // with a p50 of 3.5–3.9 ms for both servers; not pursued.)
        status(
            Command::new("ip")
                .args([
                    "netns", "exec", NS_SRV, "ethtool", "-K", IF_SRV, "gro", "on",
                ])
                .stdout(Stdio::null()),
        )?;
        status(Command::new("ip").args([
            "netns",
            "exec",
            NS_SRV,
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{IF_SRV}/threaded"),
        ]))?;
        Ok(topo)
    }

    fn remove() {
        for ns in [NS_SRV, NS_CLI, NS_MID] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for BenchTopology {
    fn drop(&mut self) {
        say("removing the bench topology");
        BenchTopology::remove();
    }
}

/// nftables rules on the bridge dropping `pct` % of the workload's
/// segments each way; removed on drop.
struct LossRules;

impl LossRules {
    fn install(port: u16, pct: u32) -> Result<LossRules> {
        LossRules::remove();
        if pct == 0 {
            return Ok(LossRules);
        }
        let rules = format!(
            "table bridge {LOSS_TABLE} {{\n\
             chain forward {{ type filter hook forward priority 0;\n\
             tcp sport {port} numgen random mod 100 < {pct} drop;\n\
             tcp dport {port} numgen random mod 100 < {pct} drop; }}\n\
             }}\n"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", NS_MID, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("running nft")?;
        nft.stdin
            .take()
            .context("no stdin pipe")?
            .write_all(rules.as_bytes())?;
        if !nft.wait()?.success() {
            bail!("installing the nftables loss rules failed");
        }
        Ok(LossRules)
    }

    fn remove() {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", NS_MID, "nft", "delete", "table", "bridge", LOSS_TABLE,
            ])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for LossRules {
    fn drop(&mut self) {
        LossRules::remove();
    }
}

// ---- the kernel server (`bench-server`) ----

/// One service on one accepted connection.
type ServeFn = fn(TcpStream) -> std::io::Result<()>;

/// Serves echo, discard and chargen on the kernel's TCP, one thread per
/// connection, until killed; every connection with congestion control
/// `congestion` (the namespace's default when `None`).
pub fn server(addr: Ipv4Addr, congestion: Option<&str>) -> Result<()> {
    let services: [(u16, ServeFn); 3] = [
        (PORT_ECHO, serve_echo),
        (PORT_DISCARD, serve_discard),
        (PORT_CHARGEN, serve_chargen),
    ];
    let mut listeners = Vec::new();
    for (port, f) in services {
        let l = TcpListener::bind(SocketAddrV4::new(addr, port))
            .with_context(|| format!("binding {addr}:{port}"))?;
        // Accepted connections inherit the listener's.
        if let Some(cc) = congestion {
            set_congestion(&l, cc)?;
        }
        listeners.push((l, f));
    }
    println!("READY addr={addr} ports={PORT_ECHO},{PORT_DISCARD},{PORT_CHARGEN}");
    std::io::stdout().flush()?;
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|(l, f)| {
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    // A client's reset ends a connection with an error;
                    // that is how the download ends, not a failure.
                    std::thread::spawn(move || f(s));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn serve_echo(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf)? {
            0 => return s.shutdown(Shutdown::Write),
            n => s.write_all(&buf[..n])?,
        }
    }
}

fn serve_discard(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    while s.read(&mut buf)? > 0 {}
    Ok(())
}

fn serve_chargen(mut s: TcpStream) -> std::io::Result<()> {
    let pattern = chargen_pattern(2 * CHARGEN_CYCLE);
    let mut pos = 0;
    loop {
        let n = s.write(&pattern[pos..pos + CHARGEN_CYCLE])?;
        if n == 0 {
            return Ok(());
        }
        pos = (pos + n) % CHARGEN_CYCLE;
    }
}

/// RFC 864's line: 72 printable characters, then CR LF.
const CHARGEN_LINE: usize = 72;
/// ' ' to '~'.
const CHARGEN_CHARS: usize = 95;
const CHARGEN_CYCLE: usize = CHARGEN_CHARS * (CHARGEN_LINE + 2);

/// The chargen stream (RFC 864), written independently of tcp-user's so
/// that the client's check is a check of the endpoint's.
fn chargen_pattern(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut line = 0;
    while v.len() < len {
        for c in 0..CHARGEN_LINE {
            v.push(b' ' + ((line + c) % CHARGEN_CHARS) as u8);
        }
        v.extend_from_slice(b"\r\n");
        line += 1;
    }
    v.truncate(len);
    v
}

// ---- the client (`bench-client`) ----

/// Period of the upload/echo data: not a power of two, so a shift by a
/// round number of bytes would not go unnoticed.
const DATA_PERIOD: usize = (1 << 20) + 13;

/// One period of the client's data (xorshift bytes).
fn data_pattern() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(DATA_PERIOD + 8);
    while v.len() < DATA_PERIOD {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(DATA_PERIOD);
    v
}

/// Checks `data` against the periodic `pattern` from `*pos`, advancing it.
fn matches(pattern: &[u8], period: usize, pos: &mut usize, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let k = data.len().min(period - *pos);
        if data[..k] != pattern[*pos..*pos + k] {
            return false;
        }
        *pos = (*pos + k) % period;
        data = &data[k..];
    }
    true
}

/// Runs one transfer and prints `RESULT secs=S` (from the start of the
/// connect to the end of the transfer), with congestion control
/// `congestion` (the namespace's default when `None`).
pub fn client(
    addr: Ipv4Addr,
    direction: Direction,
    bytes: u64,
    congestion: Option<&str>,
) -> Result<()> {
    let target = SocketAddrV4::new(addr, direction.port());
    let start = Instant::now();
    let s = connect_with(target, congestion, Duration::from_secs(10))
        .with_context(|| format!("connecting to {target}"))?;
    s.set_read_timeout(Some(STALL_TIMEOUT))?;
    s.set_write_timeout(Some(STALL_TIMEOUT))?;
    match direction {
        Direction::Upload => upload(s, bytes)?,
        Direction::Download => download(s, bytes)?,
        Direction::Echo => echo(s, bytes)?,
    }
    println!("RESULT secs={:.6}", start.elapsed().as_secs_f64());
    Ok(())
}

fn write_pattern(s: &mut TcpStream, pattern: &[u8], bytes: u64) -> Result<()> {
    let mut pos = 0usize;
    let mut left = bytes;
    while left > 0 {
        let k = (left as usize).min(DATA_PERIOD - pos).min(256 * 1024);
        s.write_all(&pattern[pos..pos + k])
            .with_context(|| format!("writing after {} bytes", bytes - left))?;
        pos = (pos + k) % DATA_PERIOD;
        left -= k as u64;
    }
    s.shutdown(Shutdown::Write)
        .context("shutting down the write side")
}

/// Everything into discard, then our FIN, then the server's close.
fn upload(mut s: TcpStream, bytes: u64) -> Result<()> {
    write_pattern(&mut s, &data_pattern(), bytes)?;
    let mut buf = [0u8; 4096];
    match s.read(&mut buf).context("waiting for the server's close")? {
        0 => Ok(()),
        n => bail!("discard sent {n} bytes back"),
    }
}

/// `bytes` of chargen, checked; then close (a reset, with data unread).
fn download(mut s: TcpStream, bytes: u64) -> Result<()> {
    let pattern = chargen_pattern(CHARGEN_CYCLE);
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    let mut pos = 0usize;
    while got < bytes {
        let want = ((bytes - got) as usize).min(buf.len());
        let n = s
            .read(&mut buf[..want])
            .with_context(|| format!("reading after {got} bytes"))?;
        if n == 0 {
            bail!("chargen closed after {got} of {bytes} bytes");
        }
        if !matches(&pattern, CHARGEN_CYCLE, &mut pos, &buf[..n]) {
            bail!(
                "chargen data differs from the pattern within bytes {got}..{}",
                got + n as u64
            );
        }
        got += n as u64;
    }
    Ok(())
}

/// Writes `bytes` to echo on one thread while reading them back on this
/// one, checking every byte; done at the server's FIN.
fn echo(s: TcpStream, bytes: u64) -> Result<()> {
    let pattern = std::sync::Arc::new(data_pattern());
    let mut w = s.try_clone().context("cloning the socket")?;
    let wp = pattern.clone();
    let writer = std::thread::spawn(move || write_pattern(&mut w, &wp, bytes));
    let mut r = s;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    let mut pos = 0usize;
    loop {
        let n = r
            .read(&mut buf)
            .with_context(|| format!("reading the echo after {got} bytes"))?;
        if n == 0 {
            break;
        }
        if !matches(&pattern, DATA_PERIOD, &mut pos, &buf[..n]) {
            bail!("echo differs within bytes {got}..{}", got + n as u64);
        }
        got += n as u64;
    }
    writer
        .join()
        .map_err(|_| anyhow!("the writer thread panicked"))??;
    if got != bytes {
        bail!("echo returned {got} of {bytes} bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn connect_with_sets_the_congestion_control_before_the_syn() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(target) = l.local_addr().unwrap() else {
            unreachable!()
        };
        // reno: allowed to every user (net.ipv4.tcp_allowed_congestion_control).
        let s = connect_with(target, Some("reno"), Duration::from_secs(5)).unwrap();
        let (peer, _) = l.accept().unwrap();
        assert_eq!(congestion_of(&s), "reno");
        drop(peer);
        let s = connect_with(target, None, Duration::from_secs(5)).unwrap();
        assert_eq!(s.peer_addr().unwrap(), SocketAddr::V4(target));
        // Errors name what failed, before and at the connect.
        let e = connect_with(target, Some("no-such-cc"), Duration::from_secs(5)).unwrap_err();
        assert!(format!("{e:#}").contains("no-such-cc"), "{e:#}");
        drop(l);
        let e = connect_with(target, None, Duration::from_secs(5)).unwrap_err();
        assert!(format!("{e:#}").contains("connect"), "{e:#}");
    }

    fn congestion_of(s: &TcpStream) -> String {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 16];
        let mut len = buf.len() as libc::socklen_t;
        // Safety: passes a buffer and its length; the kernel writes at most that.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0);
        String::from_utf8_lossy(&buf[..len as usize])
            .trim_end_matches('\0')
            .to_owned()
    }

    #[test]
    fn endpoint_stat_flattens_each_sockets_kernel_statistics() {
        let v = json!({
            "counters": {"segments_in": 10, "note": "x"},
            "xdp": {"redirected": 12},
            "driver": {"turns": 3},
            "afxdp": [
                {"queue": 0, "napi_id": 0,
                 "kernel": {"rx_dropped": 2, "rx_fill_ring_empty_descs": 2},
                 "engine": {"busy_polls": 1}},
                {"queue": 1, "napi_id": 0,
                 "kernel": {"rx_dropped": 3, "rx_fill_ring_empty_descs": 0},
                 "engine": {"busy_polls": 0}}
            ]
        });
        let c = flatten_endpoint_stat(&v).unwrap();
        assert_eq!(c["segments_in"], 10);
        assert!(!c.contains_key("note"));
        assert_eq!(c["xdp.redirected"], 12);
        assert_eq!(c["driver.turns"], 3);
        assert!(
            !c.contains_key("afxdp.queue"),
            "a queue number is not a counter"
        );
        assert_eq!(c["afxdp.kernel.rx_dropped"], 5);
        assert_eq!(c["afxdp.kernel.rx_fill_ring_empty_descs"], 2);
        assert_eq!(c["afxdp.engine.busy_polls"], 1);
    }

    #[test]
    fn chargen_lines() {
        let p = chargen_pattern(2 * CHARGEN_CYCLE);
        assert!(p[..74].starts_with(b" !\"#"));
        assert!(p[..74].ends_with(b"efg\r\n"));
        assert!(p[74..148].starts_with(b"!\"#"));
        assert_eq!(&p[CHARGEN_CYCLE..], &p[..CHARGEN_CYCLE]);
    }

    #[test]
    fn pattern_check_wraps_and_catches_shifts() {
        let p = data_pattern();
        let mut pos = DATA_PERIOD - 10;
        let mut data = p[DATA_PERIOD - 10..].to_vec();
        data.extend_from_slice(&p[..20]);
        assert!(matches(&p, DATA_PERIOD, &mut pos, &data));
        assert_eq!(pos, 20);
        let mut pos = 0;
        assert!(!matches(&p, DATA_PERIOD, &mut pos, &p[1..100]));
    }

    #[test]
    fn mib_pairs_parse_and_diff() {
        let before = parse_mib(
            "Tcp: RtoMin RetransSegs\nTcp: 200 5\nTcpExt: TCPTimeouts TCPFastRetrans\nTcpExt: 1 2\n",
        );
        assert_eq!(before["Tcp.RetransSegs"], 5);
        assert_eq!(before["TcpExt.TCPFastRetrans"], 2);
        let after = parse_mib(
            "Tcp: RtoMin RetransSegs\nTcp: 200 9\nTcpExt: TCPTimeouts TCPFastRetrans\nTcpExt: 4 2\n",
        );
        let c = kernel_counters(&before, &after);
        assert_eq!(c["retransmits"], 4);
        assert_eq!(c["rto_expirations"], 3);
        assert_eq!(c["fast_retransmits"], 0);
        assert!(!c.contains_key("nonsense"));
        // Any other TcpExt counter that moved is there, one that did not is not.
        let after = parse_mib("TcpExt: TCPFullUndo TCPTimeouts\nTcpExt: 3 1\n");
        let c = kernel_counters(&before, &after);
        assert_eq!(c["TcpExt.TCPFullUndo"], 3);
        assert!(!c.contains_key("TcpExt.TCPTimeouts"));
        let c = client_counters(
            &parse_mib("Tcp: RetransSegs InSegs\nTcp: 5 1\nTcpExt: TCPTimeouts\nTcpExt: 1\n"),
            &parse_mib("Tcp: RetransSegs InSegs\nTcp: 7 9\nTcpExt: TCPTimeouts\nTcpExt: 1\n"),
        );
        assert_eq!(
            c.into_iter().collect::<Vec<_>>(),
            [("client.Tcp.RetransSegs".to_owned(), 2)]
        );
        // Garbage is skipped, not a panic.
        assert!(parse_mib("nonsense\nTcp: x\nIp: 1 2\n").is_empty());
    }

    #[test]
    fn qdisc_counters_parse_from_tc_json() {
        let text = r#"[{"kind":"pfifo","handle":"8020:","root":true,"refcnt":3,"options":{"limit":1000},"bytes":9100,"packets":70,"drops":2,"overlimits":0,"requeues":31,"backlog":0,"qlen":0},
            {"kind":"pfifo","handle":"1:","parent":"8020:1","packets":999}]"#;
        let m = parse_qdisc_stats(text);
        assert_eq!(m["qdisc.to_server_packets"], 70);
        assert_eq!(m["qdisc.to_server_requeues"], 31);
        assert_eq!(m["qdisc.to_server_dropped"], 2);
        assert_eq!(m["qdisc.to_server_overlimits"], 0);
        assert_eq!(m.len(), 4);
        // noqueue (no counters) or no output: nothing, not a panic.
        assert!(parse_qdisc_stats(r#"[{"kind":"noqueue","handle":"0:","root":true}]"#).is_empty());
        assert!(parse_qdisc_stats("").is_empty());
    }

    #[test]
    fn segment_rates_are_pairs_per_second_and_cpu_per_pair() {
        let mut r = RunResult::new(1000.0, 0.0).metric("secs", 2.0);
        r.counters.insert("segments_in".into(), 300_000);
        r.counters.insert("segments_out".into(), 100_000);
        add_segment_rates(&mut r);
        // (300,000 + 100,000) / 2 = 200,000 pairs in 2 s; 1 s of CPU.
        assert_eq!(r.metrics["seg_pairs_per_sec"], 100_000.0);
        assert_eq!(r.metrics["cpu_us_per_seg_pair"], 5.0);
        // No segment counters (or no duration): nothing added.
        let mut r = RunResult::new(1000.0, 0.0).metric("secs", 2.0);
        add_segment_rates(&mut r);
        assert!(!r.metrics.contains_key("seg_pairs_per_sec"));
        // The kernel's come from its MIB.
        let c = kernel_counters(
            &parse_mib("Tcp: InSegs OutSegs\nTcp: 10 20\n"),
            &parse_mib("Tcp: InSegs OutSegs\nTcp: 310 120\n"),
        );
        assert_eq!((c["segments_in"], c["segments_out"]), (300, 100));
    }

    #[test]
    fn afxdp_counters_are_summed_over_sockets_one_level_down() {
        let v = json!([
            {"queue": 0, "napi_id": 9, "kernel": {"rx_dropped": 2}, "engine": {"tx_kicks": 5, "rx_wakeups": 1}},
            {"queue": 1, "napi_id": 9, "kernel": {"rx_dropped": 3}, "engine": {"tx_kicks": 7, "rx_wakeups": 0}},
        ]);
        let mut c = BTreeMap::new();
        sum_afxdp(&v, &mut c);
        assert_eq!(c["afxdp.kernel.rx_dropped"], 5);
        assert_eq!(c["afxdp.engine.tx_kicks"], 12);
        assert_eq!(c["afxdp.engine.rx_wakeups"], 1);
        assert!(!c.contains_key("afxdp.queue"));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn endpoint_args_pass_through_with_their_dashes() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let cli = Cli::try_parse_from([
            "bench",
            "--only",
            "rr-",
            "--endpoint-arg=--busy-poll",
            "--endpoint-arg",
            "--rx-batch=32",
        ])
        .unwrap();
        assert_eq!(cli.bench.endpoint_args, ["--busy-poll", "--rx-batch=32"]);
        assert_eq!(cli.bench.only.as_deref(), Some("rr-"));
        assert!(!cli.bench.bridge_netfilter);
        let cli = Cli::try_parse_from(["bench"]).unwrap();
        assert!(cli.bench.endpoint_args.is_empty());
    }

    #[test]
    fn only_takes_comma_separated_parts() {
        let names: Vec<String> = workloads(&tests_support::args())
            .into_iter()
            .map(|w| w.name)
            .filter(|n| selects("ceiling,rr-32,upload-0pct", n))
            .collect();
        assert_eq!(
            names,
            ["upload-0pct", "rr-32conn", "ceiling-60B", "ceiling-1514B"]
        );
        assert!(selects("echo", "echo-1pct"));
        assert!(!selects("", "echo-1pct"));
        assert!(!selects(",", "echo-1pct"));
    }

    #[test]
    fn the_ceiling_runs_against_the_endpoint_alone() {
        let w = workloads(&tests_support::args());
        let c = w.iter().find(|w| w.name == "ceiling-60B").unwrap();
        assert!(matches!(c.kind, Kind::Ceiling { frame_len: 60 }));
        assert_eq!(c.servers(), &[Server::Endpoint]);
        assert_eq!(c.metrics()[0].key, "frames_per_sec");
        assert_eq!(
            c.metrics()[0].cpu,
            Some(("server_us_per_frame", "µs/frame"))
        );
        assert_eq!(c.estimate_secs(), 9.0);
        let r = w.iter().find(|w| w.name == "rr-1conn").unwrap();
        assert_eq!(r.servers(), &[Server::Endpoint, Server::Kernel]);
    }

    #[test]
    fn softnet_stat_parses_per_cpu() {
        let text = "18fa25a5 000055e0 0000003a 00000000\n243e3a71 00001d6b 00000089 00000000\n";
        let m = parse_softnet_stat(text);
        assert_eq!(m["softnet.cpu0_dropped"], 0x55e0);
        assert_eq!(m["softnet.cpu0_dropped"], 21_984);
        assert_eq!(m["softnet.cpu1_dropped"], 7_531);
        assert_eq!(m["softnet.cpu1_squeezed"], 137);
        assert_eq!(m.len(), 4);
        assert!(parse_softnet_stat("zz\n").is_empty());
    }

    #[test]
    fn workload_names_are_unique_and_sized() {
        let w = workloads(&tests_support::args());
        let mut names: Vec<_> = w.iter().map(|w| &w.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), w.len());
        for w in &w {
            if let Kind::Bulk {
                loss_pct, bytes, ..
            } = w.kind
            {
                assert_eq!(bytes, if loss_pct == 0 { 64 << 20 } else { 16 << 20 });
            }
            assert!(!w.metrics().is_empty());
            assert!(
                w.metrics()[0].cpu.is_some(),
                "{}: server CPU per unit",
                w.name
            );
        }
        for name in [
            "iperf3-up-P1-offload",
            "iperf3-down-P4-txoff",
            "rr-1conn",
            "rr-32conn",
            "crr-1w",
            "crr-16w",
            "idle-10k",
            "idle-100k",
            "ceiling-60B",
            "ceiling-1514B",
        ] {
            assert!(w.iter().any(|w| w.name == name), "{name}");
        }
    }

    #[test]
    fn the_whole_benchmark_fits_its_budget() {
        // The issue asks for a full `--runs 3` in about 25 minutes.
        let total: f64 = workloads(&tests_support::args())
            .iter()
            .map(|w| w.estimate_secs() * w.servers().len() as f64 * 3.0)
            .sum();
        assert!(total < 25.0 * 60.0, "{total} s");
    }

    #[test]
    fn offloads_differ_only_where_asked() {
        let w = workloads(&tests_support::args());
        let get = |n: &str| w.iter().find(|w| w.name == n).unwrap();
        let d = get("iperf3-up-P1-offload");
        assert_eq!(d.tx_offload(Server::Kernel), (true, true));
        assert_eq!(d.tx_offload(Server::Endpoint), (false, true));
        for n in ["iperf3-up-P1-txoff", "upload-0pct", "rr-1conn"] {
            for s in [Server::Kernel, Server::Endpoint] {
                assert_eq!(get(n).tx_offload(s), (false, false), "{n}");
            }
        }
    }

    #[test]
    fn kernel_memory_is_the_difference_to_the_endpoint_runs() {
        let run = |total: f64, rss: f64| {
            let mut r = RunResult::new(0.0, 0.0).metric("kib_per_conn", 0.0);
            r.detail = json!({ "memory": {
                "system_delta_bytes": { "total": total },
                "server_rss_delta_bytes": rss,
            }});
            Ok(r)
        };
        let mut results: BTreeMap<&'static str, Vec<Result<RunResult>>> = BTreeMap::new();
        results.insert(
            "endpoint",
            vec![run(4096e3, 0.0), run(5000e3, 0.0), run(1.0, 0.0)],
        );
        results.insert("kernel", vec![run(12288e3, 1024e3)]);
        isolate_kernel_server_memory(&mut results, 1000);
        let k = results["kernel"][0].as_ref().unwrap();
        // (12288e3 - 4096e3 + 1024e3) / 1000 / 1024
        assert!((k.metrics["kib_per_conn"] - 9.0).abs() < 1e-9);
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    pub fn args() -> super::BenchArgs {
        super::BenchArgs {
            only: None,
            runs: 3,
            json: None,
            size_mib: 64,
            lossy_size_mib: 16,
            secs: None,
            list: false,
            no_port_qdisc: false,
            bridge_netfilter: false,
            endpoint_args: Vec::new(),
            endpoint_bin: None,
            congestion: super::Congestion::Cubic,
            kernel_cc: None,
            perf: false,
        }
    }
}
