//! `tcp-user`: the endpoint's command line.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tcp_user::config;
use tcp_user::control;
use tcp_user::driver::{self, RunConfig};
use tcp_user::services::{Service, ServiceSpec};
use tcp_user::xdp::XdpMode;

/// A kernel-bypass TCP endpoint: XDP steers the segments of its ports into
/// AF_XDP sockets and a userspace engine runs TCP over them.
#[derive(Parser, Debug)]
#[command(name = "tcp-user", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve TCP on an interface until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Show a running endpoint's connections and counters.
    Stat(StatArgs),
    /// Print the TCP state diagram (Graphviz DOT) from the engine's transition table.
    StateDiagram,
    /// Load generator over the endpoint's own stack, against echo (7),
    /// discard (9) and chargen (19) servers: kernel ones or `tcp-user run`.
    Bench(BenchArgs),
    /// The raw AF_XDP ceiling: the same XDP program and AF_XDP sockets as
    /// `run`, but every TCP segment to --port is sent straight back in its
    /// own UMEM frame (addresses and ports swapped), with no TCP at all.
    Reflect(ReflectArgs),
}

#[derive(clap::Args, Debug)]
struct ReflectArgs {
    /// Interface to attach to.
    #[arg(long)]
    iface: String,
    /// The address whose segments are reflected [default: the interface's
    /// first IPv4 address].
    #[arg(long)]
    addr: Option<Ipv4Addr>,
    /// The TCP port whose segments are reflected (claimed in XDP like a
    /// listening port).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// RX descriptors taken per socket per round (1 to 2048).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seconds to run [default: until SIGINT/SIGTERM].
    #[arg(long)]
    duration: Option<f64>,
    /// Spin on the rings instead of sleeping in poll(2) when they are empty.
    #[arg(long)]
    busy_poll: bool,
    /// AF_XDP sockets to open, one per RX queue [default: every queue].
    #[arg(long)]
    queues: Option<u32>,
    /// XDP attach mode: auto, native or generic.
    #[arg(long, default_value = "auto")]
    xdp_mode: XdpMode,
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log: tracing::Level,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Interface to attach to (the client side's).
    #[arg(long)]
    iface: String,
    /// This side's IPv4 address [default: the interface's first IPv4 address].
    #[arg(long)]
    addr: Option<Ipv4Addr>,
    /// The server's address.
    #[arg(long)]
    server: Ipv4Addr,
    /// The server's port [default: 9 (discard) for bulk, 19 (chargen) for
    /// bulk --reverse, 7 (echo) for rr and crr].
    #[arg(long)]
    port: Option<u16>,
    /// bulk (throughput), rr (request/response), crr (connect, request,
    /// response, close).
    #[arg(long, value_enum, default_value = "bulk")]
    mode: tcp_user::bench::Mode,
    /// Streams (bulk), connections (rr) or workers (crr).
    #[arg(long, short = 'P', default_value_t = 1)]
    parallel: usize,
    /// Bulk: the server sends (chargen) instead of this side (discard).
    #[arg(long, short = 'R')]
    reverse: bool,
    /// Request and response size in bytes (rr, crr).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds to run.
    #[arg(long, short = 't', default_value_t = 10.0)]
    time: f64,
    /// This side's maximum segment lifetime in ms: TIME-WAIT lasts twice
    /// this. A load generator's TIME-WAIT only guards its own connections
    /// against their old duplicates, and crr opens thousands a second from
    /// ~4,500 source ports, so the default is short [default: 100].
    #[arg(long, default_value_t = 100)]
    msl_ms: u64,
    /// Lower bound of the retransmission timeout, in ms [default: 200].
    #[arg(long)]
    min_rto_ms: Option<u64>,
    /// Print the final report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// A TOML configuration file; the flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Interface to attach to (for example eth0); required here or in the
    /// configuration file.
    #[arg(long)]
    iface: Option<String>,
    /// The endpoint's IPv4 address [default: the interface's first IPv4 address].
    #[arg(long)]
    addr: Option<Ipv4Addr>,
    /// A service to run, NAME:PORT with NAME one of echo, discard, daytime,
    /// chargen, iperf3; repeatable [default: echo:7 discard:9 daytime:13
    /// iperf3:5201].
    #[arg(long = "service", value_name = "NAME:PORT")]
    services: Vec<ServiceSpec>,
    /// AF_XDP sockets to open, one per RX queue [default: every queue].
    #[arg(long)]
    queues: Option<u32>,
    /// XDP attach mode: auto (native, else generic), native or generic
    /// [default: auto].
    #[arg(long)]
    xdp_mode: Option<XdpMode>,
    /// Maximum segment lifetime in ms; TIME-WAIT lasts twice this.
    #[arg(long)]
    msl_ms: Option<u64>,
    /// How long FIN-WAIT-2 may last after the application closed, in ms.
    #[arg(long)]
    fin_wait2_timeout_ms: Option<u64>,
    /// Lower bound of the retransmission timeout, in ms.
    #[arg(long)]
    min_rto_ms: Option<u64>,
    /// Congestion control: cubic or newreno [default: cubic].
    #[arg(long)]
    congestion: Option<tcp_user::tcp::cc::Algorithm>,
    /// Control socket for `tcp-user stat` [default: /run/tcp-user/IFACE.sock].
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Write every frame received and sent to this pcap file.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// On SIGTERM/SIGINT, how long open connections may take to finish
    /// before the rest are reset, in ms [default: 5000].
    #[arg(long)]
    grace_ms: Option<u64>,
    /// Log level on stderr: error, warn, info, debug or trace [default: info].
    #[arg(long)]
    log: Option<tracing::Level>,
    /// Never sleep: spin on the rings between turns (one CPU kept 100 %
    /// busy). Also sets SO_PREFER_BUSY_POLL, SO_BUSY_POLL (50 µs) and
    /// SO_BUSY_POLL_BUDGET (64) on each AF_XDP socket and, on every turn, asks
    /// the kernel to busy-poll the device with a non-blocking recvfrom —
    /// only on sockets the kernel gave a NAPI id (`tcp-user stat` shows it
    /// and the count); on veth it was observed to be 0, so there only the
    /// userspace spinning happens.
    #[arg(long)]
    busy_poll: bool,
}

#[derive(clap::Args, Debug)]
struct StatArgs {
    /// The interface the endpoint runs on (finds its default control socket).
    #[arg(
        long,
        conflicts_with = "control_socket",
        required_unless_present = "control_socket"
    )]
    iface: Option<String>,
    /// The endpoint's control socket.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Print the raw JSON snapshot.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                || matches!(
                    e.kind(),
                    ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                )
            {
                let _ = e.print();
                return if e.use_stderr() {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line: clap's first line, without its usage block.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("tcp-user: {first} (see tcp-user --help)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Stat(args) => stat(args),
        Command::Bench(args) => bench(args),
        Command::Reflect(args) => reflect(args),
        Command::StateDiagram => {
            print!("{}", tcp_user::diagram::state_diagram_dot());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp-user: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // The file first (its errors name file, line and key), then the flags.
    let file = match &args.config {
        Some(path) => config::load(path)?,
        None => config::FileConfig::default(),
    };
    let log_level = args.log.or(file.log).unwrap_or(tracing::Level::INFO);
    // Also the sink of the `log` records aya-log produces from the XDP
    // program's own messages (tracing-subscriber installs the bridge).
    tracing_subscriber::fmt()
        .with_max_level(log_level)
        .with_writer(std::io::stderr)
        .init();
    let iface = args.iface.or(file.interface).ok_or_else(|| {
        anyhow::anyhow!("no interface: give --iface or set `interface` in --config")
    })?;
    let mut tcp = file.tcp;
    if let Some(ms) = args.msl_ms {
        tcp.msl = Duration::from_millis(ms);
    }
    if let Some(ms) = args.fin_wait2_timeout_ms {
        tcp.fin_wait2_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.min_rto_ms {
        tcp.min_rto = Duration::from_millis(ms);
    }
    if let Some(a) = args.congestion {
        tcp.congestion = a;
    }
    tcp.isn_secret = random_secret()?;
    let services: Vec<(Service, u16)> = if !args.services.is_empty() {
        args.services.iter().map(|s| (s.service, s.port)).collect()
    } else if !file.services.is_empty() {
        file.services
    } else {
        Service::defaults()
    };
    let mut seen = std::collections::HashSet::new();
    for (_, port) in &services {
        if !seen.insert(*port) {
            anyhow::bail!("port {port} is given to more than one service");
        }
    }
    let control_socket = args
        .control_socket
        .or(file.control_socket)
        .unwrap_or_else(|| control::default_socket_path(&iface));
    let cfg = RunConfig {
        iface,
        addr: args.addr.or(file.address),
        services,
        queues: args.queues.or(file.queues),
        xdp_mode: args.xdp_mode.or(file.xdp_mode).unwrap_or(XdpMode::Auto),
        tcp,
        control_socket,
        pcap: args.pcap.or(file.pcap),
        grace: args
            .grace_ms
            .map(Duration::from_millis)
            .or(file.grace)
            .unwrap_or(Duration::from_secs(5)),
        log_level,
        busy_poll: args.busy_poll || file.busy_poll.unwrap_or(false),
    };
    driver::run(cfg, |iface, ports| {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "READY iface={} addr={} ports={}",
            iface.name,
            iface.addr,
            ports.join(",")
        );
        let _ = out.flush();
    })
}

/// The RFC 6528 ISN key: secret, and new each run.
fn random_secret() -> anyhow::Result<[u8; 16]> {
    use std::io::Read;
    let mut key = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| anyhow::anyhow!("reading /dev/urandom for the ISN key: {e}"))?;
    Ok(key)
}

fn stat(args: StatArgs) -> anyhow::Result<()> {
    let path = match (args.control_socket, args.iface) {
        (Some(p), _) => p,
        (None, Some(iface)) => control::default_socket_path(&iface),
        (None, None) => anyhow::bail!("give --iface or --control-socket"),
    };
    let snap = control::fetch(&path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
    } else {
        print!("{}", control::render_table(&snap));
    }
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    if !(args.time > 0.0 && args.time <= 86_400.0) {
        anyhow::bail!("--time must be between 0 and 86400 seconds");
    }
    if args.msl_ms == 0 {
        anyhow::bail!("--msl-ms must be at least 1");
    }
    let mut endpoint = tcp_user::api::EndpointConfig::new(args.iface.clone());
    endpoint.addr = args.addr;
    endpoint.tcp.msl = Duration::from_millis(args.msl_ms);
    if let Some(ms) = args.min_rto_ms {
        endpoint.tcp.min_rto = Duration::from_millis(ms.max(1));
    }
    let cfg = tcp_user::bench::BenchConfig {
        endpoint,
        server: args.server,
        port: args.port,
        mode: args.mode,
        parallel: args.parallel,
        reverse: args.reverse,
        size: args.size,
        duration: Duration::from_secs_f64(args.time),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = rt.block_on(tcp_user::bench::run(cfg, |t, bytes, n, errors| {
        eprintln!(
            "[{:>5.1} s] {:>12} bytes {:>10.1} Mbit/s {:>10} transactions {} errors",
            t.as_secs_f64(),
            bytes,
            bytes as f64 * 8.0 / t.as_secs_f64().max(1e-9) / 1e6,
            n,
            errors
        );
    }))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if report.errors > 0 {
        anyhow::bail!("{} connection(s) failed", report.errors);
    }
    Ok(())
}

fn reflect(args: ReflectArgs) -> anyhow::Result<()> {
    let duration = match args.duration {
        None => None,
        Some(s) if s > 0.0 && s <= 86_400.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => anyhow::bail!("--duration must be between 0 and 86400 seconds"),
    };
    tracing_subscriber::fmt()
        .with_max_level(args.log)
        .with_writer(std::io::stderr)
        .init();
    let cfg = tcp_user::reflect::ReflectConfig {
        iface: args.iface,
        addr: args.addr,
        port: args.port,
        batch: args.batch,
        duration,
        busy_poll: args.busy_poll,
        queues: args.queues,
        xdp_mode: args.xdp_mode,
        log_level: args.log,
    };
    tcp_user::reflect::run(&cfg, |iface, sockets| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "READY iface={} addr={} ports={} queues={sockets} batch={} busy_poll={}",
            iface.name, iface.addr, cfg.port, cfg.batch, cfg.busy_poll
        );
        let _ = out.flush();
    })?;
    Ok(())
}
