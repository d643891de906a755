//! Harness for the end-to-end tests: network namespaces joined by a veth
//! pair, the real `tcp-user` binary on one side, the Linux kernel's own TCP
//! on the other.
//!
//! Every test builds its own [`Topology`] (distinct names and a distinct
//! /24 from 198.18.0.0/15) and tears it down on drop, also when it panics.
//! Nothing is skipped: without root or without `TCP_USER_BIN` the tests fail
//! and say why.

use std::fs::File;
use std::hash::Hasher;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use siphasher::sip128::{Hasher128, SipHasher13};

/// How long [`Endpoint::start`] waits for the `READY` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The tcp-user binary under test, from `TCP_USER_BIN`.
pub fn binary() -> PathBuf {
    binary_from(std::env::var_os("TCP_USER_BIN")).unwrap_or_else(|e| panic!("{e}"))
}

/// Checks a `TCP_USER_BIN` value: set, and naming an existing file.
pub fn binary_from(var: Option<std::ffi::OsString>) -> Result<PathBuf, String> {
    let path = var
        .map(PathBuf::from)
        .ok_or("TCP_USER_BIN is not set: run the end-to-end tests through `cargo xtask test`")?;
    if !path.is_file() {
        return Err(format!("TCP_USER_BIN={} does not exist", path.display()));
    }
    Ok(path)
}

fn must_be_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("");
    assert_eq!(
        euid, "0",
        "the end-to-end tests need root (netns, XDP, AF_XDP)"
    );
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair: `ep` for the endpoint (x.1),
/// `cl` for the Linux client (x.2). With [`Topology::bridged`], a third
/// namespace sits between them as an Ethernet bridge, where loss can be
/// injected that neither end can see.
pub struct Topology {
    pub ep_ns: String,
    pub cl_ns: String,
    pub ep_if: String,
    pub cl_if: String,
    pub ep_addr: Ipv4Addr,
    pub cl_addr: Ipv4Addr,
    /// The bridge's namespace, when there is one.
    pub mid_ns: Option<String>,
}

impl Topology {
    /// `name` must be short (it goes into interface names); `subnet` picks
    /// 198.18.<subnet>.0/24.
    pub fn new(name: &str, subnet: u8) -> Topology {
        Topology::with_queues(name, subnet, 1)
    }

    /// Like [`new`](Self::new) with `queues` RX/TX queues on each veth end.
    pub fn with_queues(name: &str, subnet: u8, queues: u32) -> Topology {
        must_be_root();
        assert!(
            name.len() <= 8,
            "topology name too long for interface names"
        );
        let t = Topology {
            ep_ns: format!("tcpu-t-{name}-ep"),
            cl_ns: format!("tcpu-t-{name}-cl"),
            ep_if: format!("te-{name}"),
            cl_if: format!("tc-{name}"),
            ep_addr: Ipv4Addr::new(198, 18, subnet, 1),
            cl_addr: Ipv4Addr::new(198, 18, subnet, 2),
            mid_ns: None,
        };
        t.remove();
        sh(&["ip", "netns", "add", &t.ep_ns]);
        sh(&["ip", "netns", "add", &t.cl_ns]);
        let q = queues.to_string();
        sh(&[
            "ip",
            "link",
            "add",
            &t.ep_if,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "netns",
            &t.ep_ns,
            "type",
            "veth",
            "peer",
            "name",
            &t.cl_if,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "netns",
            &t.cl_ns,
        ]);
        t.configure_ends();
        t
    }

    /// The endpoint and the client on one Ethernet segment through a bridge
    /// in a third namespace: `ep_if` ↔ `tn-NAME` and `cl_if` ↔ `tm-NAME`,
    /// both bridge ports. Same addresses as [`new`](Self::new).
    ///
    /// Loss is injected on the bridge ([`drop_randomly`](Self::drop_randomly))
    /// because a drop inside either end's own stack is not loss: the
    /// kernel's TCP learns of a netfilter or qdisc drop on its output path
    /// from the return code and sends the segment again at once, so no
    /// hole ever reaches the receiver.
    pub fn bridged(name: &str, subnet: u8) -> Topology {
        must_be_root();
        assert!(
            name.len() <= 8,
            "topology name too long for interface names"
        );
        let mid = format!("tcpu-t-{name}-mid");
        let t = Topology {
            ep_ns: format!("tcpu-t-{name}-ep"),
            cl_ns: format!("tcpu-t-{name}-cl"),
            ep_if: format!("te-{name}"),
            cl_if: format!("tc-{name}"),
            ep_addr: Ipv4Addr::new(198, 18, subnet, 1),
            cl_addr: Ipv4Addr::new(198, 18, subnet, 2),
            mid_ns: Some(mid.clone()),
        };
        t.remove();
        let (ep_port, cl_port, br) = (format!("tn-{name}"), format!("tm-{name}"), "br0");
        for ns in [&t.ep_ns, &t.cl_ns, &mid] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for (ns, dev, port) in [
            (&t.ep_ns, &t.ep_if, &ep_port),
            (&t.cl_ns, &t.cl_if, &cl_port),
        ] {
            sh(&[
                "ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port,
                "netns", &mid,
            ]);
        }
        sh(&["ip", "-n", &mid, "link", "add", br, "type", "bridge"]);
        for port in [&ep_port, &cl_port] {
            sh(&["ip", "-n", &mid, "link", "set", port, "master", br]);
            sh(&["ip", "-n", &mid, "link", "set", port, "up"]);
        }
        sh(&["ip", "-n", &mid, "link", "set", br, "up"]);
        t.configure_ends();
        t
    }

    /// Drops `pct` % of the TCP segments to and from `port` in each
    /// direction on the bridge (nftables, bridge family), silently for both
    /// ends. Needs a [`bridged`](Self::bridged) topology.
    pub fn drop_randomly(&self, port: u16, pct: u32) {
        let mid = self
            .mid_ns
            .as_ref()
            .expect("drop_randomly needs Topology::bridged");
        let rules = format!(
            "table bridge tcpu_loss {{\n\
             chain forward {{ type filter hook forward priority 0;\n\
             tcp dport {port} numgen random mod 100 < {pct} counter drop;\n\
             tcp sport {port} numgen random mod 100 < {pct} counter drop; }}\n\
             }}\n"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", mid, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("running nft");
        use std::io::Write as _;
        nft.stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())
            .expect("writing the nftables rules");
        assert!(
            nft.wait().expect("nft").success(),
            "installing the nftables loss rules on the bridge"
        );
    }

    /// Packets the bridge's loss rules dropped so far: (to the port, from it).
    pub fn dropped(&self) -> (u64, u64) {
        let mid = self.mid_ns.as_ref().expect("bridged topology");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                mid,
                "nft",
                "list",
                "table",
                "bridge",
                "tcpu_loss",
            ])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout);
        let counts: Vec<u64> = text
            .split("packets ")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next()?.parse().ok())
            .collect();
        (
            counts.first().copied().unwrap_or(0),
            counts.get(1).copied().unwrap_or(0),
        )
    }

    /// Addresses and links of both ends, and the client's checksum offload
    /// off: the kernel's veth sends CHECKSUM_PARTIAL segments; the XDP
    /// program (rightly) wants full checksums, as real NICs deliver.
    fn configure_ends(&self) {
        for (ns, dev, addr) in [
            (&self.ep_ns, &self.ep_if, self.ep_addr),
            (&self.cl_ns, &self.cl_if, self.cl_addr),
        ] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.cl_ns,
            "ethtool",
            "-K",
            &self.cl_if,
            "tx",
            "off",
        ]);
    }

    fn remove(&self) {
        if let Some(mid) = &self.mid_ns {
            let _ = Command::new("ip")
                .args(["netns", "del", mid])
                .stderr(Stdio::null())
                .status();
        }
        for ns in [&self.ep_ns, &self.cl_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Runs `f` on a thread inside the client namespace.
    pub fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.cl_ns, f)
    }

    /// Runs `f` on a thread inside the endpoint namespace.
    pub fn in_endpoint<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.ep_ns, f)
    }

    /// Spawns `f` on a thread inside the client namespace.
    pub fn spawn_in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        spawn_in_netns(&self.cl_ns, f)
    }

    /// Spawns `f` on a thread inside the endpoint namespace.
    pub fn spawn_in_endpoint<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        spawn_in_netns(&self.ep_ns, f)
    }

    /// Whether an XDP program is attached to the endpoint's interface.
    pub fn xdp_attached(&self) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.ep_ns, "-d", "link", "show", &self.ep_if])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

/// A TCP segment for [`Topology::inject_from_client`]: sent from the
/// client's address and interface to the endpoint's, bypassing the client
/// kernel's TCP.
#[derive(Clone, Debug)]
pub struct Segment {
    pub sport: u16,
    pub dport: u16,
    /// scapy's flag letters: "S", "A", "PA", "R", "FA", ...
    pub flags: &'static str,
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
    /// `Some(c)` puts `c` into the checksum field (a corrupted segment);
    /// `None` lets scapy compute the correct checksum.
    pub checksum: Option<u16>,
}

impl Topology {
    /// The endpoint interface's MAC address.
    pub fn ep_mac(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ep_ns, "cat"])
            .arg(format!("/sys/class/net/{}/address", self.ep_if))
            .output()
            .expect("reading the endpoint's MAC address");
        let mac = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && mac.len() == 17,
            "no MAC for {}",
            self.ep_if
        );
        mac
    }

    /// Puts one hand-made TCP segment on the wire from the client's end of
    /// the veth (python3-scapy, `sendp` on the client interface).
    pub fn inject_from_client(&self, seg: &Segment) {
        self.run_scapy(seg, "sendp(frame, iface=IFACE, verbose=False)\n");
    }

    /// Like [`inject_from_client`](Self::inject_from_client), and returns
    /// the TCP payload of the first segment with data that the endpoint
    /// then sends to `seg.sport` (empty if none within `timeout`). The
    /// capture starts before the segment is sent.
    pub fn inject_and_capture_reply(&self, seg: &Segment, timeout: Duration) -> Vec<u8> {
        let sniff = format!(
            "def reply(p):\n\
             \x20   return TCP in p and p[IP].src == '{ep}' and p[TCP].sport == {dport} \
             and p[TCP].dport == {sport} and Raw in p\n\
             got = sniff(iface=IFACE, lfilter=reply, count=1, timeout={secs}, \
             started_callback=lambda: sendp(frame, iface=IFACE, verbose=False))\n\
             sys.stdout.write(''.join(bytes(p[Raw].load).hex() for p in got))\n",
            ep = self.ep_addr,
            sport = seg.sport,
            dport = seg.dport,
            secs = timeout.as_secs_f64(),
        );
        let hex = self.run_scapy(seg, &sniff);
        (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex from scapy"))
            .collect()
    }

    /// Runs `action` in python3 with scapy in the client namespace, where
    /// `frame` is `seg` addressed to the endpoint and `IFACE` the client's
    /// interface. Returns its stdout.
    fn run_scapy(&self, seg: &Segment, action: &str) -> String {
        let payload: String = seg.payload.iter().map(|b| format!("\\x{b:02x}")).collect();
        let checksum = seg
            .checksum
            .map(|c| format!(", chksum={c}"))
            .unwrap_or_default();
        let script = format!(
            "import sys\n\
             from scapy.all import Ether, IP, TCP, Raw, sendp, sniff\n\
             IFACE = '{iface}'\n\
             frame = Ether(dst='{mac}')/IP(src='{src}', dst='{dst}')/\
             TCP(sport={sport}, dport={dport}, flags='{flags}', seq={seq}, ack={ack}{checksum})/\
             Raw(b'{payload}')\n{action}",
            mac = self.ep_mac(),
            src = self.cl_addr,
            dst = self.ep_addr,
            sport = seg.sport,
            dport = seg.dport,
            flags = seg.flags,
            seq = seg.seq,
            ack = seg.ack,
            iface = self.cl_if,
        );
        // The distribution's python3, which python3-scapy installs into
        // (a python3 earlier on PATH, e.g. pyenv's, may lack it).
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.cl_ns,
                "/usr/bin/python3",
                "-c",
                &script,
            ])
            .output()
            .expect("running /usr/bin/python3 (scapy)");
        assert!(
            out.status.success(),
            "scapy with {seg:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The client kernel's next sequence number to send and next one expected
/// (SND.NXT, RCV.NXT) on `s`, read through TCP_REPAIR (needs CAP_NET_ADMIN).
/// Meaningful when nothing is in flight, e.g. right after an echo came back.
pub fn kernel_seq_numbers(s: &std::net::TcpStream) -> (u32, u32) {
    const TCP_REPAIR_ON: libc::c_int = 1;
    // Leave repair mode without the window probe TCP_REPAIR_OFF would send.
    const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
    const TCP_RECV_QUEUE: libc::c_int = 1;
    const TCP_SEND_QUEUE: libc::c_int = 2;
    let fd = s.as_raw_fd();
    let set = |opt: libc::c_int, val: libc::c_int| {
        // Safety: `val` is a live c_int and its size is passed with it.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                opt,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "setsockopt({opt}): {}",
            std::io::Error::last_os_error()
        );
    };
    let queue_seq = |queue: libc::c_int| -> u32 {
        set(libc::TCP_REPAIR_QUEUE, queue);
        let mut seq: u32 = 0;
        let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
        // Safety: `seq` and `len` are live and `len` is `seq`'s size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUEUE_SEQ,
                (&mut seq as *mut u32).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_QUEUE_SEQ: {}", std::io::Error::last_os_error());
        seq
    };
    set(libc::TCP_REPAIR, TCP_REPAIR_ON);
    let snd_nxt = queue_seq(TCP_SEND_QUEUE);
    let rcv_nxt = queue_seq(TCP_RECV_QUEUE);
    set(libc::TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    (snd_nxt, rcv_nxt)
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}

fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // Safety: plain syscall on an fd we hold open; setns moves only the
        // calling thread, which is ours alone and ends with `f`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
}

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    match spawn_in_netns(ns, f).join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// A running `tcp-user run`.
pub struct Endpoint {
    child: Option<Child>,
    pub control: PathBuf,
    pub ready_line: String,
    stderr_log: PathBuf,
}

impl Endpoint {
    /// Starts the endpoint on the topology and waits for its READY line.
    pub fn start(topo: &Topology, extra: &[&str]) -> Endpoint {
        Endpoint::start_with_env(topo, extra, &[])
    }

    /// Like [`start`](Self::start), with extra environment variables.
    pub fn start_with_env(topo: &Topology, extra: &[&str], env: &[(&str, &str)]) -> Endpoint {
        Endpoint::start_full(topo, extra, env, &[])
    }

    /// Like [`start`](Self::start), with extra environment variables and a
    /// command (`wrapper`, e.g. setpriv ...) the binary runs under.
    pub fn start_full(
        topo: &Topology,
        extra: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Endpoint {
        Endpoint::start_program(&binary(), topo, extra, env, wrapper)
    }

    /// Starts `bin` (normally [`binary()`]; the harness's own tests use a
    /// stand-in) as `bin run --iface <ep_if> --control-socket <path> extra..`
    /// inside the endpoint namespace and waits up to [`READY_TIMEOUT`] for
    /// its `READY ` line. Panics with the program's stderr if it exits or
    /// stays silent instead.
    pub fn start_program(
        bin: &Path,
        topo: &Topology,
        extra: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Endpoint {
        let control = std::env::temp_dir().join(format!("{}.sock", topo.ep_ns));
        let stderr_log = std::env::temp_dir().join(format!("{}.log", topo.ep_ns));
        let log = File::create(&stderr_log).expect("creating the endpoint log");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &topo.ep_ns])
            .args(wrapper)
            .arg(bin)
            .args(["run", "--iface", &topo.ep_if, "--control-socket"])
            .arg(&control)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting tcp-user");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the endpoint never blocks on stdout.
            for _ in lines {}
        });
        let mut ep = Endpoint {
            child: Some(child),
            control,
            ready_line: String::new(),
            stderr_log,
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.starts_with("READY ") => ep.ready_line = line,
            other => panic!(
                "tcp-user did not become ready ({other:?}); its log:\n{}",
                ep.log()
            ),
        }
        ep
    }

    /// What the endpoint wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The endpoint's JSON snapshot (`tcp-user stat --json`).
    pub fn stat(&self) -> serde_json::Value {
        let out = Command::new(binary())
            .args(["stat", "--json", "--control-socket"])
            .arg(&self.control)
            .output()
            .expect("running tcp-user stat");
        assert!(
            out.status.success(),
            "tcp-user stat failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("stat prints JSON")
    }

    /// One XDP verdict counter.
    pub fn xdp_counter(&self, name: &str) -> u64 {
        self.stat()["xdp"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no xdp counter {name}"))
    }

    /// Polls `cond` on snapshots until it holds or `timeout` passes.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) {
        let start = Instant::now();
        loop {
            let s = self.stat();
            if cond(&s) {
                return;
            }
            if start.elapsed() > timeout {
                panic!("timed out waiting for {what}; last snapshot: {s:#}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The endpoint's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as an OOM killer or a crash would.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs the binary, so this is tcp-user itself.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the running endpoint.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.pid().expect("the endpoint is not running");
        // Safety: plain syscall; `pid` is our own unreaped child, so it
        // cannot name another process.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// SIGTERM and wait (SIGKILL after 10 s); returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
        }
        let mut c = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- tcp-user log ----\n{}", self.log());
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// From the calling thread (run it in the client namespace): sends
/// `data` to the echo server at `addr`, half-closes, and returns what came
/// back until the server's EOF. A reader thread drains the echo while the
/// writer writes, so neither side's buffers can deadlock it.
pub fn echo_bytes(addr: std::net::SocketAddrV4, data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let s = std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = s.try_clone().unwrap();
    let rx = std::thread::spawn(move || read_to_end(&mut reader).expect("reading the echo"));
    let mut w = s;
    w.write_all(data).expect("writing to echo");
    w.shutdown(std::net::Shutdown::Write).unwrap();
    rx.join().unwrap()
}

/// Reads until EOF (with the socket's own read timeout).
pub fn read_to_end(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}

/// Length and 128-bit SipHash of a byte stream: what the byte-exact tests
/// compare, so a 16 MiB echo need not be held twice in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub len: u64,
    pub hash: u128,
}

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        let mut d = DigestWriter::new();
        d.update(bytes);
        d.finish()
    }
}

/// Incremental [`Digest`]: the same result however the stream is chunked.
pub struct DigestWriter {
    len: u64,
    hasher: SipHasher13,
}

impl DigestWriter {
    pub fn new() -> DigestWriter {
        // Fixed keys: the digests only need to agree within one test run.
        DigestWriter {
            len: 0,
            hasher: SipHasher13::new_with_keys(0x7463_702d_7573_6572, 0x6532_652d_7465_7374),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.hasher.write(bytes);
    }

    pub fn finish(&self) -> Digest {
        Digest {
            len: self.len,
            hash: self.hasher.finish128().as_u128(),
        }
    }
}

impl Default for DigestWriter {
    fn default() -> Self {
        DigestWriter::new()
    }
}

/// Reads until EOF (with the socket's own read timeout) and returns the
/// digest of everything read.
pub fn read_digest(s: &mut impl Read) -> std::io::Result<Digest> {
    let mut d = DigestWriter::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(d.finish()),
            Ok(n) => d.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether a named network namespace exists (`ip netns list`).
pub fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}
