//! The reflection ceiling: the endpoint's raw AF_XDP path with no TCP
//! (`tcp-user reflect`, frames turned around in place from RX to TX in
//! batches) on the benchmark's own server veth, in frames/s and server CPU
//! per frame. What the TCP engine's packet rate is measured against.
//!
//! - Server: `tcp-user reflect` in the server namespace on the server CPU,
//!   next to the server veth's threaded NAPI kthread (pinned after the
//!   start, as for `bench`), reflecting TCP segments to [`PORT`].
//! - Client: `xtask bench-reflect-gen` on the client CPU, an AF_PACKET
//!   socket with PACKET_QDISC_BYPASS sending one prebuilt, valid TCP
//!   segment over and over with sendmmsg(2), as fast as it can. Its source
//!   MAC is [`GEN_MAC`], an address no interface has.
//! - The reflections go to [`GEN_MAC`]. With [`Discard::Bridge`] (the
//!   default) a static, sticky entry on the bridge says that address lives
//!   behind the server's bridge port, so the bridge drops each reflection
//!   at once (a frame is never forwarded back out of the port it came in
//!   on). With [`Discard::Client`] they cross the bridge to the client's
//!   veth, where the kernel drops them as "not for this host" in ip_rcv.
//!   Either way that work runs on the server CPU, inside the reflector's
//!   TX kick (a veth's transmit is its peer's receive), so it is counted.
//! - Measured: the reflector's own counters and CPU time, from a `STATS`
//!   line it prints on SIGUSR1 at the start and the end of the interval
//!   (after a warm-up), plus the NAPI kthreads' CPU time over the same
//!   interval (`/proc/PID/schedstat`). Frames/s is what the reflector sent
//!   back, not what the generator sent.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::bench::{
    load_average, napi_pids, netns_cmd, pin_napi, BenchTopology, CLI_ADDR, CLI_CPU, IF_CLI, IF_SRV,
    NS_CLI, NS_MID, NS_SRV, PORT_SRV, PORT_SRV_QDISC, SRV_ADDR, SRV_CPU,
};
use crate::{build, is_root, root, say, CHILD, STOP};

/// The reflected TCP port (the generator's destination).
pub const PORT: u16 = 7;
/// The generator's source port.
const GEN_PORT: u16 = 40_000;
/// The generator's source MAC: locally administered, on no interface.
pub const GEN_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0xce, 0x11, 0x01];
/// Smallest frame: Ethernet + IPv4 + TCP headers and 6 payload bytes, the
/// 60-byte Ethernet minimum (64 with the FCS a real wire adds).
pub const MIN_FRAME: usize = 60;
/// Largest frame: a full 1500-byte MTU plus the Ethernet header.
pub const MAX_FRAME: usize = 1514;
const HEADERS: usize = 14 + 20 + 20;
/// How long the reflector gets to answer a SIGUSR1.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the reflections are dropped (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Discard {
    /// The bridge drops them at the server's port (static sticky FDB entry).
    Bridge,
    /// They reach the client's veth; its IPv4 input drops them.
    Client,
}

impl Discard {
    fn name(self) -> &'static str {
        match self {
            Discard::Bridge => "bridge",
            Discard::Client => "client",
        }
    }
}

/// One measurement's settings.
#[derive(Clone, Debug)]
pub struct ReflectOpts {
    /// Bytes per frame as handed to the veth (no FCS), 60 to 1514.
    pub frame_len: usize,
    /// The measured interval.
    pub duration: Duration,
    /// Load before the interval starts.
    pub warmup: Duration,
    /// The reflector's RX batch.
    pub batch: usize,
    /// The reflector spins instead of sleeping in poll(2).
    pub busy_poll: bool,
    pub discard: Discard,
    /// Leave the bridge's netfilter calls on (the topology as `bench`
    /// uses it: br_netfilter sends every bridged IPv4 frame through the
    /// iptables hooks, both ways). False turns them off in the bridge's
    /// namespace for this measurement only.
    pub bridge_nf: bool,
    /// The generator sends through a PACKET_TX_RING instead of sendmmsg(2).
    pub gen_tx_ring: bool,
}

impl ReflectOpts {
    pub fn new(frame_len: usize, duration: Duration) -> ReflectOpts {
        ReflectOpts {
            frame_len,
            duration,
            warmup: Duration::from_secs(1),
            batch: 64,
            busy_poll: false,
            discard: Discard::Bridge,
            bridge_nf: true,
            gen_tx_ring: false,
        }
    }
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct ReflectResult {
    pub frame_len: usize,
    pub busy_poll: bool,
    pub batch: usize,
    pub discard: Discard,
    pub bridge_nf: bool,
    /// Length of the interval, by the reflector's clock.
    pub secs: f64,
    /// Frames reflected in the interval.
    pub frames: u64,
    pub frames_per_sec: f64,
    /// The reflector's CPU time (user + system) over the interval.
    pub reflector_cpu_ns: u64,
    /// The server veth's NAPI kthreads' CPU time over the interval.
    pub napi_cpu_ns: u64,
    /// ksoftirqd on the server CPU over the interval (not in the server
    /// CPU total: softirq work that overflowed from elsewhere lands here).
    pub ksoftirqd_cpu_ns: u64,
    /// Counter deltas over the interval: the reflector's (received,
    /// dropped, ...) and the socket's kernel statistics (rx_dropped, ...).
    pub counters: BTreeMap<String, u64>,
    /// The generator over its whole run (warm-up included): frames sent
    /// per second and its CPU time per frame sent.
    pub gen_frames_per_sec: f64,
    pub gen_cpu_ns_per_frame: f64,
    pub load1: f64,
}

impl ReflectResult {
    /// Server CPU (reflector + NAPI kthreads) per reflected frame, in µs.
    pub fn server_us_per_frame(&self) -> f64 {
        (self.reflector_cpu_ns + self.napi_cpu_ns) as f64 / 1e3 / self.frames.max(1) as f64
    }

    /// Server CPU over the interval as a fraction of one CPU.
    pub fn server_cpu_share(&self) -> f64 {
        (self.reflector_cpu_ns + self.napi_cpu_ns) as f64 / 1e9 / self.secs.max(1e-9)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "frame_len": self.frame_len,
            "busy_poll": self.busy_poll,
            "batch": self.batch,
            "discard": self.discard.name(),
            "bridge_nf": self.bridge_nf,
            "secs": self.secs,
            "frames": self.frames,
            "frames_per_sec": self.frames_per_sec,
            "server_us_per_frame": self.server_us_per_frame(),
            "server_cpu_share": self.server_cpu_share(),
            "reflector_cpu_ns": self.reflector_cpu_ns,
            "napi_cpu_ns": self.napi_cpu_ns,
            "ksoftirqd_cpu_ns": self.ksoftirqd_cpu_ns,
            "counters": self.counters,
            "generator_frames_per_sec": self.gen_frames_per_sec,
            "generator_cpu_ns_per_frame": self.gen_cpu_ns_per_frame,
            "load1": self.load1,
        })
    }
}

/// The ceiling for one frame size with the default settings (batch 64,
/// poll(2) when idle, reflections dropped on the bridge, 1 s warm-up).
/// The bench topology must exist and no server may be running on it.
// The entry point for `cargo xtask bench`'s ceiling-* workloads.
pub fn reflect_ceiling(
    tcp_user: &Path,
    xtask: &Path,
    frame_len: usize,
    duration: Duration,
) -> Result<ReflectResult> {
    reflect_ceiling_with(tcp_user, xtask, &ReflectOpts::new(frame_len, duration))
}

/// [`reflect_ceiling`] with every setting given.
pub fn reflect_ceiling_with(
    tcp_user: &Path,
    xtask: &Path,
    o: &ReflectOpts,
) -> Result<ReflectResult> {
    if !(MIN_FRAME..=MAX_FRAME).contains(&o.frame_len) {
        bail!(
            "frame length {} is outside {MIN_FRAME}..={MAX_FRAME}",
            o.frame_len
        );
    }
    if o.duration.is_zero() {
        bail!("the measured interval must be positive");
    }
    let load1 = load_average();
    let srv_mac = server_mac()?;
    let _fdb = match o.discard {
        Discard::Bridge => Some(FdbEntry::add()?),
        Discard::Client => None,
    };
    let _nf = if o.bridge_nf {
        None
    } else {
        Some(BridgeNfOff::apply()?)
    };
    let log = root().join("target/bench/reflect.log");
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut c = netns_cmd(NS_SRV, SRV_CPU, tcp_user);
    c.args(["reflect", "--iface", IF_SRV, "--addr"])
        .arg(SRV_ADDR.to_string())
        .args(["--port", &PORT.to_string()])
        .args(["--batch", &o.batch.to_string()]);
    if o.busy_poll {
        c.arg("--busy-poll");
    }
    let mut refl = ReflectorProc::start(c, &log)?;
    // Attaching XDP may have created the NAPI kthread just now.
    pin_napi()?;
    let gen_secs = o.warmup + o.duration + Duration::from_secs(2);
    let mut g = netns_cmd(NS_CLI, CLI_CPU, xtask);
    g.args(["bench-reflect-gen", "--iface", IF_CLI])
        .args(["--dst-mac", &mac_text(&srv_mac)])
        .args(["--src", &CLI_ADDR.to_string()])
        .args(["--dst", &SRV_ADDR.to_string()])
        .args(["--port", &PORT.to_string()])
        .args(["--frame-len", &o.frame_len.to_string()])
        .args(["--duration", &format!("{:.3}", gen_secs.as_secs_f64())])
        .args(o.gen_tx_ring.then_some("--tx-ring"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let gen = g.spawn().context("starting bench-reflect-gen")?;
    let gen = GenProc(Some(gen));
    std::thread::sleep(o.warmup);
    let a = refl.sample()?;
    sleep_unless_stopped(o.duration)?;
    let b = refl.sample()?;
    let gen_out = gen.finish()?;
    refl.stop();

    let get = |s: &Sample, k: &str| s.stats.get(k).copied().unwrap_or(0.0);
    let delta = |k: &str| (get(&b, k) - get(&a, k)).max(0.0) as u64;
    let secs = get(&b, "secs") - get(&a, "secs");
    let frames = delta("reflected");
    if frames == 0 {
        bail!(
            "nothing was reflected (generator: {gen_out:?}); the reflector's log: {}",
            log.display()
        );
    }
    let mut counters = BTreeMap::new();
    for k in [
        "received",
        "reflected",
        "dropped",
        "completed",
        "rx_dropped",
        "rx_ring_full",
        "rx_fill_ring_empty",
        "rx_invalid_descs",
        "tx_invalid_descs",
        "tx_kicks",
        "tx_kick_errors",
        "rx_wakeups",
        "polls",
        "xdp_redirected",
        "xdp_dropped",
    ] {
        counters.insert(k.to_owned(), delta(k));
    }
    let gen_field = |k: &str| -> f64 {
        gen_out
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0.0)
    };
    let gen_sent = gen_field("sent");
    Ok(ReflectResult {
        frame_len: o.frame_len,
        busy_poll: o.busy_poll,
        batch: o.batch,
        discard: o.discard,
        bridge_nf: o.bridge_nf,
        secs,
        frames,
        frames_per_sec: frames as f64 / secs.max(1e-9),
        reflector_cpu_ns: delta("cpu_us") * 1000,
        napi_cpu_ns: b.napi_ns.saturating_sub(a.napi_ns),
        ksoftirqd_cpu_ns: b.ksoftirqd_ns.saturating_sub(a.ksoftirqd_ns),
        counters,
        gen_frames_per_sec: gen_sent / gen_field("secs").max(1e-9),
        gen_cpu_ns_per_frame: gen_field("cpu_us") * 1e3 / gen_sent.max(1.0),
        load1,
    })
}

fn sleep_unless_stopped(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if STOP.load(Ordering::SeqCst) != 0 {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
}

/// The server veth's MAC, from its namespace.
fn server_mac() -> Result<[u8; 6]> {
    let out = Command::new("ip")
        .args(["-n", NS_SRV, "-j", "link", "show", "dev", IF_SRV])
        .output()
        .context("running ip link show")?;
    if !out.status.success() {
        bail!(
            "ip link show {IF_SRV} in {NS_SRV} failed (is the bench topology up?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing ip -j link")?;
    v[0]["address"]
        .as_str()
        .and_then(parse_mac)
        .ok_or_else(|| anyhow!("{IF_SRV} has no MAC address"))
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The static sticky FDB entry that puts [`GEN_MAC`] behind the server's
/// bridge port; removed on drop.
struct FdbEntry;

impl FdbEntry {
    fn args(op: &str) -> Vec<String> {
        [
            "-n",
            NS_MID,
            "fdb",
            op,
            &mac_text(&GEN_MAC),
            "dev",
            PORT_SRV,
            "master",
            "static",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn add() -> Result<FdbEntry> {
        FdbEntry::remove();
        let mut a = FdbEntry::args("add");
        // Sticky: the generator's frames, which carry this source address
        // in through the client's port, must not move it there.
        a.push("sticky".into());
        crate::status(Command::new("bridge").args(&a))?;
        Ok(FdbEntry)
    }

    fn remove() {
        let _ = Command::new("bridge")
            .args(FdbEntry::args("del"))
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for FdbEntry {
    fn drop(&mut self) {
        FdbEntry::remove();
    }
}

/// br_netfilter's calls into the iptables hooks turned off in the
/// bridge's namespace; the previous values restored on drop.
struct BridgeNfOff(Vec<(String, String)>);

impl BridgeNfOff {
    const KEYS: [&'static str; 3] = [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
        "net.bridge.bridge-nf-call-arptables",
    ];

    fn sysctl(arg: &str) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", NS_MID, "sysctl", "-n"])
            .arg(arg)
            .output()
            .context("running sysctl")?;
        if !out.status.success() {
            bail!(
                "sysctl {arg} in {NS_MID} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn apply() -> Result<BridgeNfOff> {
        let mut saved = Vec::new();
        for k in Self::KEYS {
            // No br_netfilter in this kernel: nothing to turn off.
            let Ok(v) = Self::sysctl(k) else { continue };
            saved.push((k.to_owned(), v));
        }
        let guard = BridgeNfOff(saved);
        for (k, _) in &guard.0 {
            Self::sysctl(&format!("{k}=0"))?;
        }
        Ok(guard)
    }
}

impl Drop for BridgeNfOff {
    fn drop(&mut self) {
        for (k, v) in &self.0 {
            let _ = Self::sysctl(&format!("{k}={v}"));
        }
    }
}

/// The generator; killed on drop if still running.
struct GenProc(Option<Child>);

impl GenProc {
    /// Waits for it to end and returns its `GEN ...` line.
    fn finish(mut self) -> Result<String> {
        let child = self.0.take().context("generator already reaped")?;
        let out = child
            .wait_with_output()
            .context("waiting for the generator")?;
        if !out.status.success() {
            bail!(
                "bench-reflect-gen failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("GEN "))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the generator printed no GEN line: {text:?}"))
    }
}

impl Drop for GenProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One STATS line with the kthreads' CPU time read next to it.
struct Sample {
    stats: BTreeMap<String, f64>,
    napi_ns: u64,
    ksoftirqd_ns: u64,
}

/// `tcp-user reflect`, its stdout read line by line; SIGTERM on drop.
struct ReflectorProc {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl ReflectorProc {
    fn start(mut c: Command, log: &Path) -> Result<ReflectorProc> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .context("starting tcp-user reflect")?;
        CHILD.store(child.id() as i32, Ordering::SeqCst);
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = ReflectorProc {
            child: Some(child),
            lines: rx,
            log: log.to_owned(),
        };
        match p.wait_line("READY", READY_TIMEOUT) {
            Ok(_) => Ok(p),
            Err(e) => {
                p.stop();
                bail!(
                    "tcp-user reflect did not become ready ({e:#}); its log ({}):\n{}",
                    p.log.display(),
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                )
            }
        }
    }

    fn wait_line(&self, tag: &str, timeout: Duration) -> Result<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(tag) => return Ok(l),
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => bail!("no {tag} line in {timeout:?}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("it exited"),
            }
        }
    }

    /// SIGUSR1, then its STATS line; the kthreads are read right after the
    /// signal, within microseconds of the reflector's own snapshot.
    fn sample(&self) -> Result<Sample> {
        let pid = self.child.as_ref().map_or(0, Child::id) as libc::pid_t;
        if pid <= 0 {
            bail!("the reflector is not running");
        }
        // Safety: kill(2) to our own unreaped child: the pid is still ours.
        if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signalling the reflector");
        }
        let napi_ns = kthreads_ns(&napi_pids()?);
        let ksoftirqd_ns = kthreads_ns(&ksoftirqd_pids());
        let line = self.wait_line("STATS ", STATS_TIMEOUT)?;
        Ok(Sample {
            stats: parse_stats(&line),
            napi_ns,
            ksoftirqd_ns,
        })
    }

    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        CHILD.store(0, Ordering::SeqCst);
        crate::bench::terminate(&mut c);
    }
}

impl Drop for ReflectorProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `key=value` pairs after the tag.
fn parse_stats(line: &str) -> BTreeMap<String, f64> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Sum of the kthreads' time on a CPU (first field of schedstat, in ns).
fn kthreads_ns(pids: &[String]) -> u64 {
    pids.iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/schedstat"))
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// ksoftirqd of the server CPU.
fn ksoftirqd_pids() -> Vec<String> {
    let name = format!("ksoftirqd/{SRV_CPU}");
    let Ok(out) = Command::new("ps").args(["-eo", "pid,comm"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let pid = f.next()?;
            (f.next()? == name).then(|| pid.to_owned())
        })
        .collect()
}

// ---- `cargo xtask bench-reflect` (hidden): topology, runs, table ----

/// How the reflector waits for frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PollMode {
    /// poll(2) when the rings are empty.
    Wait,
    /// Spin on the rings (`--busy-poll`).
    Busy,
    /// Both, one after the other.
    Both,
}

/// Options of `cargo xtask bench-reflect`.
#[derive(clap::Args, Debug)]
pub struct BenchReflectArgs {
    /// Frame lengths to measure (bytes handed to the veth, no FCS; 60 to 1514).
    #[arg(long, value_delimiter = ',', default_value = "60,1514")]
    frame_len: Vec<usize>,
    /// Seconds measured per run (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before the measured interval.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Runs per frame length and mode.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// The reflector's RX batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, value_enum, default_value = "wait")]
    poll: PollMode,
    /// Where the reflections are dropped.
    #[arg(long, value_enum, default_value = "bridge")]
    discard: Discard,
    /// Turn br_netfilter's iptables calls off on the bridge for these
    /// runs (the `bench` topology has them on, the kernel's default).
    #[arg(long)]
    no_bridge_nf: bool,
    /// The generator sends through a PACKET_TX_RING instead of sendmmsg(2).
    #[arg(long)]
    gen_tx_ring: bool,
    /// Where to write every run as JSON [default: target/bench/reflect.json].
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn bench_reflect(args: BenchReflectArgs) -> Result<()> {
    if !is_root() {
        bail!("the reflection benchmark needs root (network namespaces, XDP, AF_XDP); try sudo");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !(args.duration > 0.0 && args.duration <= 3600.0) {
        bail!("--duration must be between 0 and 3600 seconds");
    }
    if !(0.0..=600.0).contains(&args.warmup) {
        bail!("--warmup must be between 0 and 600 seconds");
    }
    if !(1..=2048).contains(&args.batch) {
        bail!("--batch must be between 1 and 2048");
    }
    if let Some(bad) = args
        .frame_len
        .iter()
        .find(|l| !(MIN_FRAME..=MAX_FRAME).contains(*l))
    {
        bail!("--frame-len {bad} is outside {MIN_FRAME}..={MAX_FRAME}");
    }
    let tcp_user = build(true)?;
    let xtask = crate::release_xtask()?;
    crate::install_signal_forwarding();
    let _topo = BenchTopology::create()?;
    let modes: &[bool] = match args.poll {
        PollMode::Wait => &[false],
        PollMode::Busy => &[true],
        PollMode::Both => &[false, true],
    };
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for &len in &args.frame_len {
        for &busy in modes {
            let mut o = ReflectOpts::new(len, Duration::from_secs_f64(args.duration));
            o.warmup = Duration::from_secs_f64(args.warmup);
            o.batch = args.batch;
            o.busy_poll = busy;
            o.discard = args.discard;
            o.bridge_nf = !args.no_bridge_nf;
            o.gen_tx_ring = args.gen_tx_ring;
            let mut runs = Vec::new();
            for run in 0..args.runs {
                let r = reflect_ceiling_with(&tcp_user, &xtask, &o);
                if STOP.load(Ordering::SeqCst) != 0 {
                    bail!("interrupted");
                }
                match r {
                    Ok(r) => {
                        say(format!(
                            "  {len} B {} run {}: {:.0} frames/s, server {:.2} µs/frame \
                             ({:.0} % of a CPU; reflector {:.2}, NAPI {:.2}), \
                             generator {:.0} frames/s at {:.2} µs/frame; drops {}",
                            if busy { "busy-poll" } else { "poll" },
                            run + 1,
                            r.frames_per_sec,
                            r.server_us_per_frame(),
                            r.server_cpu_share() * 100.0,
                            r.reflector_cpu_ns as f64 / 1e3 / r.frames as f64,
                            r.napi_cpu_ns as f64 / 1e3 / r.frames as f64,
                            r.gen_frames_per_sec,
                            r.gen_cpu_ns_per_frame / 1e3,
                            drops_note(&r.counters),
                        ));
                        all.push(r.to_json());
                        runs.push(r);
                    }
                    Err(e) => {
                        say(format!("  {len} B run {}: FAILED: {e:#}", run + 1));
                        all.push(json!({ "frame_len": len, "busy_poll": busy, "error": format!("{e:#}") }));
                    }
                }
            }
            rows.push((len, busy, runs));
        }
    }
    println!();
    println!(
        "{:>7} {:>9}  {:>28}  {:>26}  {:>9}  {:>16}",
        "frame B",
        "mode",
        "frames/s median [min–max]",
        "server µs/frame [min–max]",
        "CPU share",
        "1e6 / µs/frame"
    );
    for (len, busy, runs) in &rows {
        let fps = median_min_max(runs.iter().map(|r| r.frames_per_sec).collect());
        let us = median_min_max(runs.iter().map(|r| r.server_us_per_frame()).collect());
        let share = median_min_max(runs.iter().map(|r| r.server_cpu_share()).collect());
        let (Some(fps), Some(us), Some(share)) = (fps, us, share) else {
            println!(
                "{len:>7} {:>9}  failed",
                if *busy { "busy" } else { "poll" }
            );
            continue;
        };
        // What one whole server CPU would reflect at this cost per frame.
        println!(
            "{len:>7} {:>9}  {:>28}  {:>26}  {:>8.0}%  {:>16.0}",
            if *busy { "busy" } else { "poll" },
            format!("{:.0} [{:.0}–{:.0}]", fps.0, fps.1, fps.2),
            format!("{:.2} [{:.2}–{:.2}]", us.0, us.1, us.2),
            share.0 * 100.0,
            1e6 / us.0
        );
    }
    println!();
    let path = args
        .json
        .unwrap_or_else(|| root().join("target/bench/reflect.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let doc = json!({
        "topology": {
            "server": format!("{NS_SRV} {IF_SRV} {SRV_ADDR} cpu {SRV_CPU} (+ threaded NAPI kthread)"),
            "client": format!("{NS_CLI} {IF_CLI} {CLI_ADDR} cpu {CLI_CPU}"),
            "discard": args.discard.name(),
            "bridge_nf": !args.no_bridge_nf,
            "generator": if args.gen_tx_ring { "tx-ring" } else { "sendmmsg" },
            "server_port_qdisc": format!("{PORT_SRV} root {}", PORT_SRV_QDISC.join(" ")),
        },
        "runs": all,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    say(format!("wrote {}", path.display()));
    if rows.iter().any(|(_, _, r)| r.len() < args.runs as usize) {
        bail!("some runs failed (see above)");
    }
    Ok(())
}

fn drops_note(c: &BTreeMap<String, u64>) -> String {
    let mut v: Vec<String> = [
        "dropped",
        "rx_dropped",
        "rx_ring_full",
        "rx_fill_ring_empty",
        "xdp_dropped",
        "tx_kick_errors",
    ]
    .iter()
    .filter_map(|k| {
        let n = c.get(*k).copied().unwrap_or(0);
        (n > 0).then(|| format!("{k}={n}"))
    })
    .collect();
    if v.is_empty() {
        v.push("none".into());
    }
    v.join(" ")
}

fn median_min_max(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((m, v[0], v[n - 1]))
}

// ---- the generator (`bench-reflect-gen`, hidden) ----

/// Options of the generator.
#[derive(clap::Args, Debug)]
pub struct GenArgs {
    /// Interface to send on.
    #[arg(long)]
    iface: String,
    /// The reflector's MAC.
    #[arg(long, value_parser = parse_mac_arg)]
    dst_mac: [u8; 6],
    /// Source MAC [default: 02:00:5e:ce:11:01, on no interface].
    #[arg(long, value_parser = parse_mac_arg)]
    src_mac: Option<[u8; 6]>,
    /// Source IPv4 address.
    #[arg(long)]
    src: Ipv4Addr,
    /// The reflector's IPv4 address.
    #[arg(long)]
    dst: Ipv4Addr,
    /// The reflected TCP port.
    #[arg(long)]
    port: u16,
    /// Bytes per frame (no FCS), 60 to 1514.
    #[arg(long)]
    frame_len: usize,
    /// Seconds to send.
    #[arg(long)]
    duration: f64,
    /// Frames per sendmmsg(2) (or per send(2) kick with --tx-ring).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Send through a PACKET_TX_RING (TPACKET_V2) instead of sendmmsg(2).
    #[arg(long)]
    tx_ring: bool,
}

fn parse_mac_arg(s: &str) -> std::result::Result<[u8; 6], String> {
    parse_mac(s).ok_or_else(|| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))
}

/// One's complement sum of big-endian 16-bit words, folded.
fn sum16(bytes: &[u8], mut sum: u32) -> u32 {
    let mut it = bytes.chunks_exact(2);
    for w in &mut it {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = it.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// A valid Ethernet + IPv4 + TCP (ACK|PSH) frame of `len` bytes, payload
/// counting up from 0: what the XDP program accepts and redirects.
pub fn build_frame(
    len: usize,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let len = len.max(HEADERS);
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let tcp_len = len - 34;
    {
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        let c = !(sum16(ip, 0) as u16);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    {
        let tcp = &mut f[34..];
        tcp[..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
        tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
        for (i, b) in tcp[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&src.octets());
        pseudo[4..8].copy_from_slice(&dst.octets());
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        let c = !(sum16(tcp, sum16(&pseudo, 0)) as u16);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
    }
    f
}

/// Sends the frame over and over for the duration, then prints
/// `GEN sent=N secs=S busy=B cpu_us=C`.
pub fn generator(a: GenArgs) -> Result<()> {
    if !(MIN_FRAME..=MAX_FRAME).contains(&a.frame_len) {
        bail!("--frame-len must be between {MIN_FRAME} and {MAX_FRAME}");
    }
    if !(a.duration > 0.0 && a.duration <= 86_400.0) {
        bail!("--duration must be between 0 and 86400 seconds");
    }
    if !(1..=1024).contains(&a.batch) {
        bail!("--batch must be between 1 and 1024");
    }
    let frame = build_frame(
        a.frame_len,
        a.dst_mac,
        a.src_mac.unwrap_or(GEN_MAC),
        a.src,
        a.dst,
        GEN_PORT,
        a.port,
    );
    let sock = PacketSocket::open(&a.iface)?;
    if a.tx_ring {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(a.duration);
        let (sent, busy) = send_through_ring(&sock, &frame, a.batch, end)?;
        println!(
            "GEN sent={sent} secs={:.6} busy={busy} cpu_us={}",
            start.elapsed().as_secs_f64(),
            own_cpu_us()
        );
        return Ok(());
    }
    let mut iov: Vec<libc::iovec> = (0..a.batch)
        .map(|_| libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        })
        .collect();
    // Safety: an all-zero mmsghdr is valid (no name, no control data).
    let mut msgs: Vec<libc::mmsghdr> = (0..a.batch)
        .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
        .collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let (mut sent, mut busy) = (0u64, 0u64);
    while Instant::now() < end {
        // Safety: `msgs` holds `batch` headers, each pointing at one iovec
        // over `frame`, all alive for the call; the kernel only reads them
        // (and writes msg_len).
        let n = unsafe {
            libc::sendmmsg(
                sock.0,
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            sent += n as u64;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // Send buffer full (skbs still on their way) or the device
            // refused: try again.
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR) => {
                busy += 1;
                std::thread::yield_now();
            }
            _ => return Err(e).context("sendmmsg"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "GEN sent={sent} secs={secs:.6} busy={busy} cpu_us={}",
        own_cpu_us()
    );
    Ok(())
}

/// The generator's loop over a TPACKET_V2 TX ring: every ring frame holds
/// a copy of `frame` from the start; up to `batch` available ones are
/// marked for sending, then one send(2) kick. The kernel marks a frame
/// available again when its skb is freed. Returns (frames queued, kicks
/// that found nothing to do or were refused).
fn send_through_ring(
    sock: &PacketSocket,
    frame: &[u8],
    batch: usize,
    end: Instant,
) -> Result<(u64, u64)> {
    use std::sync::atomic::AtomicU32;
    const TPACKET_V2: libc::c_int = 1;
    const PACKET_VERSION: libc::c_int = 10;
    const PACKET_TX_RING: libc::c_int = 13;
    const TP_STATUS_AVAILABLE: u32 = 0;
    const TP_STATUS_SEND_REQUEST: u32 = 1;
    const TP_STATUS_WRONG_FORMAT: u32 = 4;
    /// Frame slot size, block size and count: 512 slots.
    const SLOT: usize = 2048;
    const BLOCK: usize = 1 << 16;
    const BLOCKS: usize = 16;
    /// TPACKET2_HDRLEN - sizeof(struct sockaddr_ll): where TX data starts.
    const DATA: usize = 32;
    let slots = BLOCK / SLOT * BLOCKS;
    sock.setopt(libc::SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        .context("PACKET_VERSION")?;
    // struct tpacket_req: block size, block count, frame size, frame count.
    let req: [libc::c_uint; 4] = [BLOCK as _, BLOCKS as _, SLOT as _, slots as _];
    // Safety: setsockopt with a live 16-byte tpacket_req.
    let rc = unsafe {
        libc::setsockopt(
            sock.0,
            libc::SOL_PACKET,
            PACKET_TX_RING,
            req.as_ptr() as *const libc::c_void,
            std::mem::size_of_val(&req) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("PACKET_TX_RING");
    }
    let len = BLOCK * BLOCKS;
    // Safety: maps the socket's ring, checked below, unmapped at the end.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            sock.0,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).context("mmap of the TX ring");
    }
    let base = map as *mut u8;
    let status = |i: usize| -> &AtomicU32 {
        // Safety: slot i's header starts at i * SLOT inside the mapping,
        // 4-byte aligned; the kernel and we only touch tp_status atomically.
        unsafe { &*(base.add(i * SLOT) as *const AtomicU32) }
    };
    for i in 0..slots {
        // Safety: slot i lies inside the mapping; its tp_len (offset 4) and
        // data (offset 32, at most 1514 bytes < 2048 - 32) are ours while
        // the slot is available, which all are before the first kick.
        unsafe {
            (base.add(i * SLOT + 4) as *mut u32).write(frame.len() as u32);
            std::ptr::copy_nonoverlapping(frame.as_ptr(), base.add(i * SLOT + DATA), frame.len());
        }
    }
    let (mut sent, mut busy, mut next) = (0u64, 0u64, 0usize);
    let mut result = Ok(());
    while Instant::now() < end {
        let mut marked = 0;
        while marked < batch {
            let st = status(next).load(Ordering::Acquire);
            if st & TP_STATUS_WRONG_FORMAT != 0 {
                result = Err(anyhow!("the kernel refused a TX ring frame (wrong format)"));
                break;
            }
            if st != TP_STATUS_AVAILABLE {
                break;
            }
            status(next).store(TP_STATUS_SEND_REQUEST, Ordering::Release);
            next = (next + 1) % slots;
            marked += 1;
        }
        if result.is_err() {
            break;
        }
        sent += marked as u64;
        if marked == 0 {
            busy += 1;
        }
        // Safety: a zero-length send(2) only kicks the TX ring.
        let rc = unsafe { libc::send(sock.0, std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR) => {
                    busy += 1;
                    std::thread::yield_now();
                }
                _ => {
                    result = Err(anyhow::Error::new(e).context("send (TX ring kick)"));
                    break;
                }
            }
        } else if marked == 0 {
            std::thread::yield_now();
        }
    }
    // Safety: unmaps the mapping made above; nothing refers into it now.
    unsafe { libc::munmap(map, len) };
    result.map(|_| (sent, busy))
}

fn own_cpu_us() -> u64 {
    // Safety: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // Safety: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// A send-only AF_PACKET socket bound to one interface, bypassing the
/// qdisc; protocol 0, so it receives nothing (the reflections are never
/// queued to it).
struct PacketSocket(libc::c_int);

impl PacketSocket {
    fn open(iface: &str) -> Result<PacketSocket> {
        let name = std::ffi::CString::new(iface).context("interface name contains NUL")?;
        // Safety: a plain libc call on a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("interface {iface} does not exist");
        }
        // Safety: plain socket(2); checked and owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        let sock = PacketSocket(fd);
        // Safety: an all-zero sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // Safety: bind(2) with a correctly sized sockaddr_ll.
        let rc = unsafe {
            libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("binding the packet socket");
        }
        let one: libc::c_int = 1;
        sock.setopt(libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, one)
            .context("PACKET_QDISC_BYPASS")?;
        // Room for many frames in flight (each skb is charged to the socket
        // until the server side frees it); SO_SNDBUFFORCE ignores the
        // wmem_max cap, as root may.
        let big: libc::c_int = 16 << 20;
        if sock
            .setopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, big)
            .is_err()
        {
            sock.setopt(libc::SOL_SOCKET, libc::SO_SNDBUF, big)
                .context("SO_SNDBUF")?;
        }
        Ok(sock)
    }

    fn setopt(&self, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> std::io::Result<()> {
        // Safety: passes a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                self.0,
                level,
                opt,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // Safety: closes the descriptor this value owns, once.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums_and_the_asked_length() {
        for len in [MIN_FRAME, 64, 65, 1514] {
            let f = build_frame(
                len,
                [2, 0, 0, 0, 0, 1],
                GEN_MAC,
                Ipv4Addr::new(198, 18, 200, 2),
                Ipv4Addr::new(198, 18, 200, 1),
                GEN_PORT,
                PORT,
            );
            assert_eq!(f.len(), len);
            assert_eq!(sum16(&f[14..34], 0), 0xffff, "IPv4 header checksum");
            let tcp_len = (len - 34) as u16;
            let mut pseudo = [0u8; 12];
            pseudo[..4].copy_from_slice(&f[26..30]);
            pseudo[4..8].copy_from_slice(&f[30..34]);
            pseudo[9] = 6;
            pseudo[10..12].copy_from_slice(&tcp_len.to_be_bytes());
            assert_eq!(sum16(&f[34..], sum16(&pseudo, 0)), 0xffff, "TCP checksum");
            assert_eq!(u16::from_be_bytes([f[36], f[37]]), PORT);
        }
    }

    #[test]
    fn stats_lines_and_macs_parse() {
        let s = parse_stats("STATS secs=1.5 reflected=10 bogus cpu_us=x");
        assert_eq!(s["secs"], 1.5);
        assert_eq!(s["reflected"], 10.0);
        assert!(!s.contains_key("cpu_us"));
        assert_eq!(parse_mac("02:00:5e:ce:11:01"), Some(GEN_MAC));
        assert_eq!(mac_text(&GEN_MAC), "02:00:5e:ce:11:01");
        assert!(parse_mac("02:00:5e:ce:11").is_none());
        assert!(parse_mac("02:00:5e:ce:11:01:07").is_none());
        assert!(parse_mac("zz:00:5e:ce:11:01").is_none());
        assert_eq!(median_min_max(vec![3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(median_min_max(vec![]), None);
    }
}
