//! Harness for the end-to-end tests: network namespaces joined by a veth
//! pair, the real `tcp-user` binary on one side, the Linux kernel's own TCP
//! on the other.
//!
//! Every test builds its own [`Topology`] (distinct names and a distinct
//! /24 from 198.18.0.0/15) and tears it down on drop, also when it panics.
//! Nothing is skipped: without root or without `TCP_USER_BIN` the tests fail
//! and say why.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The tcp-user binary under test.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("TCP_USER_BIN")
        .map(PathBuf::from)
        .expect("TCP_USER_BIN is not set: run the end-to-end tests through `cargo xtask test`");
    assert!(
        path.exists(),
        "TCP_USER_BIN={} does not exist",
        path.display()
    );
    path
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
/// `cl` for the Linux client (x.2).
pub struct Topology {
    pub ep_ns: String,
    pub cl_ns: String,
    pub ep_if: String,
    pub cl_if: String,
    pub ep_addr: Ipv4Addr,
    pub cl_addr: Ipv4Addr,
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
        sh(&[
            "ip",
            "-n",
            &t.ep_ns,
            "addr",
            "add",
            &format!("{}/24", t.ep_addr),
            "dev",
            &t.ep_if,
        ]);
        sh(&[
            "ip",
            "-n",
            &t.cl_ns,
            "addr",
            "add",
            &format!("{}/24", t.cl_addr),
            "dev",
            &t.cl_if,
        ]);
        for (ns, dev) in [(&t.ep_ns, &t.ep_if), (&t.cl_ns, &t.cl_if)] {
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // The kernel's veth sends CHECKSUM_PARTIAL segments; the XDP
        // program (rightly) wants full checksums, as real NICs deliver.
        sh(&[
            "ip", "netns", "exec", &t.cl_ns, "ethtool", "-K", &t.cl_if, "tx", "off",
        ]);
        t
    }

    fn remove(&self) {
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
        // setns only affects the calling thread, which is ours alone.
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
        let bin = binary();
        let control = std::env::temp_dir().join(format!("{}.sock", topo.ep_ns));
        let stderr_log = std::env::temp_dir().join(format!("{}.log", topo.ep_ns));
        let log = File::create(&stderr_log).expect("creating the endpoint log");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &topo.ep_ns])
            .args(wrapper)
            .arg(&bin)
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
        match rx.recv_timeout(Duration::from_secs(30)) {
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

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
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

/// Reads until EOF (with the socket's own read timeout).
pub fn read_to_end(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}
