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
//! segment again at once, so no hole ever reaches the server).
//!
//! The kernel server and the client are hidden subcommands of xtask
//! (`bench-server`, `bench-client`), so that both sides are plain blocking
//! socket code run as separate, pinnable processes inside `ip netns exec`.
//!
//! Workloads are a list ([`workloads`]) so that later ones (many
//! connections, short requests, ...) join the same command and table.

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
pub(crate) const SRV_CPU: &str = "1";
pub(crate) const CLI_CPU: &str = "0";
/// Both servers' minimum RTO: on a veth the RTT is microseconds, and
/// Linux's 200 ms default would make every timeout dominate the run.
const MIN_RTO_MS: u32 = 20;
const LOSS_TABLE: &str = "tcpu_bench_loss";

const PORT_ECHO: u16 = 7;
const PORT_DISCARD: u16 = 9;
const PORT_CHARGEN: u16 = 19;

/// How long a server gets to print READY.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest transfer (1 TiB): far beyond any sensible run, and far
/// from overflowing a byte count.
const MAX_SIZE_MIB: u64 = 1 << 20;
/// A client socket that moves nothing for this long fails the run.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Only the workloads whose name contains this (e.g. `upload`, `5pct`,
    /// `echo-1pct`).
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
    /// Runs per workload and server.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Where to write the results as JSON [default: target/bench/results.json].
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Bytes per transfer without loss, in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// Bytes per transfer with loss, in MiB.
    #[arg(long, default_value_t = 16)]
    lossy_size_mib: u64,
    /// List the workloads and exit.
    #[arg(long)]
    list: bool,
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

/// One entry of the workload list.
#[derive(Clone, Debug)]
struct Workload {
    name: String,
    direction: Direction,
    loss_pct: u32,
    bytes: u64,
}

fn workloads(args: &BenchArgs) -> Vec<Workload> {
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
                direction,
                loss_pct,
                bytes: mib << 20,
            });
        }
    }
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Endpoint,
    Kernel,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Endpoint => "endpoint",
            Server::Kernel => "kernel",
        }
    }
}

/// One measured run.
struct RunResult {
    secs: f64,
    mbps: f64,
    /// CPU time the server spent over the client's run: the server
    /// process (all its threads) plus the server veth's NAPI kthreads,
    /// where the kernel's receive processing runs for both servers.
    server_cpu_ms: f64,
    /// The endpoint's core counters after the run; for the kernel, its
    /// server namespace's TCP counters over the run (see `kernel_counters`).
    counters: BTreeMap<String, u64>,
    /// 1-minute load average when the run started: other work on the
    /// machine shows here.
    load1: f64,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let all = workloads(&args);
    if args.list {
        for w in &all {
            println!("{}", w.name);
        }
        return Ok(());
    }
    if !is_root() {
        bail!("the benchmark needs root (network namespaces, XDP, AF_XDP); try sudo");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
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
        Some(f) => all.into_iter().filter(|w| w.name.contains(f)).collect(),
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
    let tcp_user = build(true)?;
    let xtask = std::env::current_exe().context("finding the xtask binary")?;
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    crate::install_signal_forwarding();

    let _topo = BenchTopology::create()?;
    let mut report = Vec::new();
    let mut failures = 0;
    for w in &selected {
        say(format!(
            "{}: {} MiB, {} % loss each way, {} runs per server",
            w.name,
            w.bytes >> 20,
            w.loss_pct,
            args.runs
        ));
        let _loss = LossRules::install(w.direction.port(), w.loss_pct)?;
        let mut results: BTreeMap<&str, Vec<Result<RunResult>>> = BTreeMap::new();
        for run in 0..args.runs {
            for server in [Server::Endpoint, Server::Kernel] {
                let r = run_one(server, w, &tcp_user, &xtask, &out_dir);
                if STOP.load(Ordering::SeqCst) != 0 {
                    bail!("interrupted");
                }
                match &r {
                    Ok(r) => say(format!(
                        "  run {} {:8}: {:8.1} Mbit/s ({:.2} s, server CPU {:.0} µs/MiB){}",
                        run + 1,
                        server.name(),
                        r.mbps,
                        r.secs,
                        cpu_per_mib(r, w),
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
        report.push((w.clone(), results));
    }

    print_table(&report);
    let doc = to_json(&args, &report);
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    say(format!("wrote {}", json_path.display()));
    if failures > 0 {
        bail!("{failures} run(s) failed (see above and the JSON)");
    }
    Ok(())
}

/// Server CPU time per MiB moved (echo moves each MiB twice: counted once).
fn cpu_per_mib(r: &RunResult, w: &Workload) -> f64 {
    r.server_cpu_ms * 1e3 / (w.bytes as f64 / (1 << 20) as f64)
}

/// Median of the successful runs' server CPU µs per MiB.
fn cpu_median(runs: &[Result<RunResult>], w: &Workload) -> Option<f64> {
    let mut v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| cpu_per_mib(r, w))
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn counters_note(c: &BTreeMap<String, u64>) -> String {
    if c.is_empty() {
        return String::new();
    }
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    format!(
        "  rto_expirations={} retransmits={} fast_retransmits={}",
        get("rto_expirations"),
        get("retransmits"),
        get("fast_retransmits")
    )
}

/// Starts `server`, runs the client once, reads the endpoint's counters,
/// stops the server.
fn run_one(
    server: Server,
    w: &Workload,
    tcp_user: &Path,
    xtask: &Path,
    out_dir: &Path,
) -> Result<RunResult> {
    let load1 = load_average();
    let control = out_dir.join("endpoint.sock");
    let mut proc = match server {
        Server::Endpoint => {
            let mut c = netns_cmd(NS_SRV, SRV_CPU, tcp_user);
            c.args(["run", "--iface", IF_SRV, "--addr"])
                .arg(SRV_ADDR.to_string())
                .args(["--min-rto-ms", &MIN_RTO_MS.to_string()])
                .args(["--service", &format!("echo:{PORT_ECHO}")])
                .args(["--service", &format!("discard:{PORT_DISCARD}")])
                .args(["--service", &format!("chargen:{PORT_CHARGEN}")])
                // Connections are over when the client is done: no grace.
                .args(["--grace-ms", "200", "--control-socket"])
                .arg(&control);
            ServerProc::start(c, &out_dir.join("endpoint.log"), "tcp-user")?
        }
        Server::Kernel => {
            let mut c = netns_cmd(NS_SRV, SRV_CPU, xtask);
            c.args(["bench-server", "--addr", &SRV_ADDR.to_string()]);
            ServerProc::start(c, &out_dir.join("kernel-server.log"), "bench-server")?
        }
    };
    // XDP attachment switches the veth to NAPI mode, so its kthread may
    // only now exist: pin after every start.
    pin_napi()?;
    let before = match server {
        Server::Endpoint => BTreeMap::new(),
        Server::Kernel => kernel_mib()?,
    };
    let server_pid = proc.pid();
    let cpu_before = server_cpu_ns(server_pid)?;
    let secs = run_client(w, xtask)?;
    let server_cpu_ms = server_cpu_ns(server_pid)?.saturating_sub(cpu_before) as f64 / 1e6;
    let counters = match server {
        Server::Endpoint => endpoint_counters(tcp_user, &control)?,
        Server::Kernel => kernel_counters(&before, &kernel_mib()?),
    };
    proc.stop();
    Ok(RunResult {
        secs,
        mbps: w.bytes as f64 * 8.0 / secs / 1e6,
        server_cpu_ms,
        counters,
        load1,
    })
}

/// `ip netns exec NS taskset -c CPU PROGRAM`: both exec, so the child's
/// pid is the program's own (signals reach it directly).
pub(crate) fn netns_cmd(ns: &str, cpu: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "taskset", "-c", cpu])
        .arg(program);
    c
}

fn run_client(w: &Workload, xtask: &Path) -> Result<f64> {
    let mut c = netns_cmd(NS_CLI, CLI_CPU, xtask);
    c.args(["bench-client", "--addr", &SRV_ADDR.to_string()])
        .args(["--direction", w.direction.name()])
        .args(["--bytes", &w.bytes.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = c.output().context("running bench-client")?;
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
    let counters = v["counters"]
        .as_object()
        .ok_or_else(|| anyhow!("tcp-user stat has no counters"))?;
    Ok(counters
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect())
}

/// The server namespace's TCP MIB (`/proc/net/snmp` and `netstat`, which
/// are per network namespace), as "Tcp.RetransSegs", "TcpExt.TCPTimeouts", ...
fn kernel_mib() -> Result<BTreeMap<String, u64>> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            NS_SRV,
            "cat",
            "/proc/net/snmp",
            "/proc/net/netstat",
        ])
        .output()
        .context("reading the server namespace's TCP counters")?;
    if !out.status.success() {
        bail!("reading /proc/net/snmp in {NS_SRV} failed");
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
    for k in [
        "TcpExt.TCPLossProbes",
        "TcpExt.TCPSackRecovery",
        "TcpExt.TCPRenoRecovery",
        "TcpExt.TCPSACKReorder",
    ] {
        c.insert(k.to_owned(), delta(k));
    }
    c
}

pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The server veth's NAPI kthreads (`napi/<iface>-<id>`).
pub(crate) fn napi_pids() -> Result<Vec<String>> {
    let out = Command::new("ps")
        .args(["-eo", "pid,comm"])
        .output()
        .context("running ps")?;
    let prefix = format!("napi/{IF_SRV}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let pid = f.next()?;
            f.next()?.starts_with(&prefix).then(|| pid.to_owned())
        })
        .collect())
}

/// Nanoseconds on a CPU of process `pid` (all its threads, also those
/// that have exited: utime + stime of `/proc/PID/stat`, in clock ticks)
/// plus the server veth's NAPI kthreads (`/proc/*/schedstat`, whose first
/// field is the time spent running in ns).
fn server_cpu_ns(pid: u32) -> Result<u64> {
    // Linux's USER_HZ is 100 on every architecture it exports it for.
    const NS_PER_TICK: u64 = 10_000_000;
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
    let mut total = ticks * NS_PER_TICK;
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
}

impl ServerProc {
    fn start(mut c: Command, log: &Path, what: &str) -> Result<ServerProc> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        CHILD.store(child.id() as i32, Ordering::SeqCst);
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so that the server never blocks on stdout.
            for _ in lines {}
        });
        let mut proc = ServerProc { child: Some(child) };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.starts_with("READY") => Ok(proc),
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

    /// The server's pid (`ip netns exec` and `taskset` exec it in place).
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        CHILD.store(0, Ordering::SeqCst);
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The namespaces and the veth pair; removed on drop (also on error and,
/// through the signal flag, on Ctrl-C).
pub(crate) struct BenchTopology;

impl BenchTopology {
    pub(crate) fn create() -> Result<BenchTopology> {
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
        // software checksums alike.
        for (ns, dev) in [(NS_CLI, IF_CLI), (NS_SRV, IF_SRV)] {
            status(
                Command::new("ip")
                    .args(["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"])
                    .stdout(Stdio::null()),
            )?;
        }
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
        // kthread, which is then pinned next to the server. A veth has
        // NAPI only with XDP attached or with GRO on; GRO on keeps it for
        // the kernel server too (and real NICs do GRO by default).
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

/// Median, min and max of the successful runs' Mbit/s.
fn summary(runs: &[Result<RunResult>]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.mbps)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

type Report = Vec<(Workload, BTreeMap<&'static str, Vec<Result<RunResult>>>)>;

fn print_table(report: &Report) {
    let cell = |s: Option<(f64, f64, f64)>| match s {
        Some((m, lo, hi)) => format!("{m:.0} [{lo:.0}–{hi:.0}]"),
        None => "failed".to_owned(),
    };
    println!();
    println!(
        "{:<10} {:>5}  {:>24}  {:>24}  {:>9}  {:>22}",
        "workload", "loss", "endpoint Mbit/s", "kernel Mbit/s", "ep/kernel", "server CPU µs/MiB"
    );
    println!(
        "{:<10} {:>5}  {:>24}  {:>24}  {:>9}  {:>22}",
        "", "", "median [min–max]", "median [min–max]", "", "endpoint/kernel (ratio)"
    );
    for (w, results) in report {
        let ep = summary(results.get("endpoint").map(Vec::as_slice).unwrap_or(&[]));
        let k = summary(results.get("kernel").map(Vec::as_slice).unwrap_or(&[]));
        let ratio = match (ep, k) {
            (Some(e), Some(k)) if k.0 > 0.0 => format!("{:.2}", e.0 / k.0),
            _ => "-".to_owned(),
        };
        let cpu = match (
            cpu_median(results.get("endpoint").map(Vec::as_slice).unwrap_or(&[]), w),
            cpu_median(results.get("kernel").map(Vec::as_slice).unwrap_or(&[]), w),
        ) {
            (Some(e), Some(k)) if k > 0.0 => format!("{e:.0}/{k:.0} ({:.2})", e / k),
            _ => "-".to_owned(),
        };
        println!(
            "{:<10} {:>4}%  {:>24}  {:>24}  {:>9}  {:>22}",
            w.direction.name(),
            w.loss_pct,
            cell(ep),
            cell(k),
            ratio,
            cpu
        );
    }
    println!();
}

fn to_json(args: &BenchArgs, report: &Report) -> Value {
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let workloads: Vec<Value> = report
        .iter()
        .map(|(w, results)| {
            let mut servers = serde_json::Map::new();
            for (name, runs) in results {
                let s = summary(runs);
                let cpu = cpu_median(runs, w);
                let runs: Vec<Value> = runs
                    .iter()
                    .map(|r| match r {
                        Ok(r) => {
                            let mut o = json!({
                                "secs": r.secs,
                                "mbps": r.mbps,
                                "server_cpu_ms": r.server_cpu_ms,
                                "server_cpu_us_per_mib": cpu_per_mib(r, w),
                                "load1": r.load1,
                            });
                            if !r.counters.is_empty() {
                                let get = |k: &str| r.counters.get(k).copied().unwrap_or(0);
                                o["rto_expirations"] = json!(get("rto_expirations"));
                                o["retransmits"] = json!(get("retransmits"));
                                o["fast_retransmits"] = json!(get("fast_retransmits"));
                                o["counters"] = json!(r.counters);
                            }
                            o
                        }
                        Err(e) => json!({ "error": format!("{e:#}") }),
                    })
                    .collect();
                servers.insert(
                    (*name).to_owned(),
                    json!({
                        "median_mbps": s.map(|s| s.0),
                        "min_mbps": s.map(|s| s.1),
                        "max_mbps": s.map(|s| s.2),
                        "median_server_cpu_us_per_mib": cpu,
                        "runs": runs,
                    }),
                );
            }
            let ratio = match (
                servers
                    .get("endpoint")
                    .and_then(|s| s["median_mbps"].as_f64()),
                servers
                    .get("kernel")
                    .and_then(|s| s["median_mbps"].as_f64()),
            ) {
                (Some(e), Some(k)) if k > 0.0 => Some(e / k),
                _ => None,
            };
            json!({
                "name": w.name,
                "direction": w.direction.name(),
                "loss_pct": w.loss_pct,
                "bytes": w.bytes,
                "servers": servers,
                "ratio_endpoint_kernel": ratio,
            })
        })
        .collect();
    json!({
        "commit": commit,
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "runs": args.runs,
        "topology": {
            "server": format!("{NS_SRV} {IF_SRV} {SRV_ADDR} cpu {SRV_CPU} (+ threaded NAPI kthread)"),
            "client": format!("{NS_CLI} {IF_CLI} {CLI_ADDR} cpu {CLI_CPU}"),
            "min_rto_ms": MIN_RTO_MS,
        },
        "workloads": workloads,
    })
}

// ---- the kernel server (`bench-server`) ----

/// One service on one accepted connection.
type ServeFn = fn(TcpStream) -> std::io::Result<()>;

/// Serves echo, discard and chargen on the kernel's TCP, one thread per
/// connection, until killed.
pub fn server(addr: Ipv4Addr) -> Result<()> {
    let services: [(u16, ServeFn); 3] = [
        (PORT_ECHO, serve_echo),
        (PORT_DISCARD, serve_discard),
        (PORT_CHARGEN, serve_chargen),
    ];
    let mut listeners = Vec::new();
    for (port, f) in services {
        let l = TcpListener::bind(SocketAddrV4::new(addr, port))
            .with_context(|| format!("binding {addr}:{port}"))?;
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
/// connect to the end of the transfer).
pub fn client(addr: Ipv4Addr, direction: Direction, bytes: u64) -> Result<()> {
    let target = SocketAddrV4::new(addr, direction.port());
    let start = Instant::now();
    let s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(10))
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
        // Garbage is skipped, not a panic.
        assert!(parse_mib("nonsense\nTcp: x\nIp: 1 2\n").is_empty());
    }

    #[test]
    fn summary_takes_median_min_max_of_successes() {
        let ok = |mbps: f64| {
            Ok(RunResult {
                secs: 1.0,
                mbps,
                server_cpu_ms: mbps * 10.0,
                counters: BTreeMap::new(),
                load1: 0.0,
            })
        };
        let runs = vec![ok(3.0), Err(anyhow!("x")), ok(1.0), ok(2.0)];
        assert_eq!(summary(&runs), Some((2.0, 1.0, 3.0)));
        assert_eq!(summary(&[Err(anyhow!("x"))]), None);
        // CPU per MiB: 20 ms over 2 MiB is 10,000 µs/MiB (the median run).
        let w = Workload {
            name: "t".into(),
            direction: Direction::Upload,
            loss_pct: 0,
            bytes: 2 << 20,
        };
        assert_eq!(cpu_median(&runs, &w), Some(10_000.0));
        assert_eq!(cpu_median(&[Err(anyhow!("x"))], &w), None);
    }

    #[test]
    fn workload_names_are_unique_and_sized() {
        let args = BenchArgs {
            only: None,
            runs: 3,
            json: None,
            size_mib: 64,
            lossy_size_mib: 16,
            list: false,
        };
        let w = workloads(&args);
        let mut names: Vec<_> = w.iter().map(|w| &w.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), w.len());
        assert!(w
            .iter()
            .all(|w| w.bytes == if w.loss_pct == 0 { 64 << 20 } else { 16 << 20 }));
    }
}
