//! `cargo xtask`: set up, build, run and test the endpoint.
//!
//! - `setup`: installs what a fresh machine lacks (apt packages, the nightly
//!   `rust-src` component, bpf-linker built against rustc's own LLVM).
//! - `build [--release]`: the eBPF object, then `tcp-user` with it embedded.
//! - `run [--iface IFACE] [--release] [-- ARGS]`: build and run; without an
//!   interface, in a demo topology of two network namespaces.
//! - `test [--debug]`: every test, unit and end-to-end; fails when any
//!   test fails or is skipped.
//! - `state-diagram [--check]`: writes docs/tcp-states.{dot,svg}.
//! - `bench [--only NAME] [--runs N] [--json PATH] [--secs S]`: the
//!   endpoint against the kernel's TCP server (see bench.rs, loadgen.rs,
//!   report.rs); not part of `test`.
//! - `bench-reflect` (hidden): the raw AF_XDP ceiling, `tcp-user reflect`
//!   on the bench topology (see bench_reflect.rs).

mod bench;
mod bench_reflect;
mod loadgen;
mod profile;
mod report;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build the eBPF object and tcp-user with it embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run the endpoint (a demo topology when no --iface is given).
    Run {
        /// Interface to serve on; without it, a demo topology is created.
        #[arg(long)]
        iface: Option<String>,
        #[arg(long)]
        release: bool,
        /// Arguments passed on to `tcp-user run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: unit, simulation and end-to-end (root required).
    Test {
        /// Build tcp-user for the end-to-end tests in debug mode (slower).
        #[arg(long)]
        debug: bool,
    },
    /// Release build, then install the binary, the systemd unit and a
    /// default configuration (kept if one exists).
    Install {
        /// Install under this directory instead of / (for packaging).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Write docs/tcp-states.dot and .svg from the engine's transition table.
    StateDiagram {
        /// Only check that the committed diagram matches the code.
        #[arg(long)]
        check: bool,
    },
    /// Benchmark the endpoint against the kernel's TCP server (root required).
    Bench(bench::BenchArgs),
    /// The kernel-socket server of the benchmark (run by `bench`).
    #[command(hide = true)]
    BenchServer {
        #[arg(long)]
        addr: std::net::Ipv4Addr,
        /// Only echo (port 7), one thread on epoll (the request/response
        /// workloads) instead of a thread per connection.
        #[arg(long)]
        epoll: bool,
        /// With --epoll: processes, one SO_REUSEPORT listener each (for
        /// more connections than one process may have open files).
        #[arg(long, default_value_t = 1)]
        procs: usize,
        /// With --epoll: a process started by the first one.
        #[arg(long)]
        worker: bool,
        /// Congestion control of the bulk services' connections.
        #[arg(long)]
        congestion: Option<String>,
    },
    /// The request/response load generator of the benchmark (run by `bench`).
    #[command(hide = true)]
    BenchLoad(loadgen::LoadArgs),
    /// The client of the benchmark (run by `bench`).
    #[command(hide = true)]
    BenchClient {
        #[arg(long)]
        addr: std::net::Ipv4Addr,
        #[arg(long, value_enum)]
        direction: bench::Direction,
        #[arg(long)]
        bytes: u64,
        /// Congestion control of the connection.
        #[arg(long)]
        congestion: Option<String>,
    },
    /// The reflection ceiling: `tcp-user reflect` on the bench topology
    /// (see bench_reflect.rs; root required).
    #[command(hide = true)]
    BenchReflect(bench_reflect::BenchReflectArgs),
    /// The frame generator of `bench-reflect`.
    #[command(hide = true)]
    BenchReflectGen(bench_reflect::GenArgs),
}

const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "tcpdump",
    "bpftool",
    "nftables",
    "iperf3",
    "netcat-openbsd",
    "python3-scapy",
    "graphviz",
    "systemd",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Build { release } => setup().and_then(|_| build(release).map(|_| ())),
        Cmd::Run {
            iface,
            release,
            args,
        } => setup().and_then(|_| run(iface, release, args)),
        Cmd::Test { debug } => setup().and_then(|_| test(!debug)),
        Cmd::StateDiagram { check } => state_diagram(check),
        Cmd::Install { root } => setup().and_then(|_| install(&root)),
        Cmd::Bench(args) => setup().and_then(|_| bench::bench(args)),
        Cmd::BenchServer {
            addr,
            epoll: false,
            congestion,
            ..
        } => bench::server(addr, congestion.as_deref()),
        Cmd::BenchServer {
            addr,
            epoll: true,
            procs,
            worker,
            ..
        } => loadgen::epoll_echo_server(addr, 7, procs, worker),
        Cmd::BenchLoad(args) => loadgen::load(args),
        Cmd::BenchClient {
            addr,
            direction,
            bytes,
            congestion,
        } => bench::client(addr, direction, bytes, congestion.as_deref()),
        Cmd::BenchReflect(args) => setup().and_then(|_| bench_reflect::bench_reflect(args)),
        Cmd::BenchReflectGen(args) => bench_reflect::generator(args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("==> {}", msg.as_ref());
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A command with the outer cargo's environment removed, so a nested cargo
/// picks its own toolchain and flags.
fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k == "RUSTUP_TOOLCHAIN"
            || k == "RUSTC"
            || k == "RUSTFLAGS"
            || k == "RUSTDOC"
            || k == "CARGO_ENCODED_RUSTFLAGS"
            || k == "CARGO_TARGET_DIR"
            || (k.starts_with("CARGO_") && k != "CARGO_HOME")
        {
            c.env_remove(&k);
        }
    }
    c.current_dir(root());
    c
}

fn status(c: &mut Command) -> Result<()> {
    let st = c
        .status()
        .with_context(|| format!("running {:?}", c.get_program()))?;
    if !st.success() {
        bail!(
            "{:?} {:?} failed ({st})",
            c.get_program(),
            c.get_args().collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn output(c: &mut Command) -> Option<String> {
    let out = c.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    effective_uid() == 0
}

/// From /proc/self/status ("Uid: real effective saved fs").
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

fn setup() -> Result<()> {
    // apt packages
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing packages {missing:?}; run as root or install them");
        }
        say(format!("installing packages: {}", missing.join(" ")));
        status(
            Command::new("apt-get")
                .args(["update", "-qq"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    // nightly toolchain with rust-src
    let toolchains = output(cmd("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        say("installing the nightly toolchain");
        status(cmd("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let components =
        output(cmd("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
            .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        say("adding rust-src to the nightly toolchain");
        status(cmd("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    // bpf-linker, linked against rustc's own LLVM
    let have = output(cmd("bpf-linker").arg("--version")).unwrap_or_default();
    if !have.contains(BPF_LINKER_VERSION) {
        install_bpf_linker()?;
    }
    Ok(())
}

fn install_bpf_linker() -> Result<()> {
    let sysroot = output(cmd("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("finding the nightly sysroot")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
        })
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let dir = root().join("target/bpf-linker-llvm");
    std::fs::create_dir_all(&dir)?;
    let link = dir.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    say(format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against {} (takes a minute)",
        llvm.display()
    ));
    status(
        cmd("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env(
                "RUSTFLAGS",
                format!(
                    "-L {} -C link-arg=-Wl,-rpath,{}",
                    dir.display(),
                    lib.display()
                ),
            ),
    )
}

fn ebpf_object() -> PathBuf {
    root().join("target/bpfel-unknown-none/release/tcp-ebpf")
}

fn build(release: bool) -> Result<PathBuf> {
    say("building the XDP program (tcp-ebpf)");
    status(cmd("cargo").args([
        "+nightly",
        "build",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
        "-p",
        "tcp-ebpf",
        "--release",
    ]))?;
    say(format!(
        "building tcp-user ({})",
        if release { "release" } else { "debug" }
    ));
    let mut c = cmd("cargo");
    // The examples too: the end-to-end tests run the library API's example.
    c.args(["build", "-p", "tcp-user", "--bins", "--examples"]);
    if release {
        c.arg("--release");
    }
    status(c.env("TCP_EBPF_OBJ", ebpf_object()))?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("tcp-user"))
}

/// The xtask binary built with optimisations, for the benchmarks' own
/// processes (the kernel-socket server and the load generator): `cargo
/// xtask` runs a debug build, and a debug server or load generator would
/// charge its own slowness to the kernel's side and to the client.
fn release_xtask() -> Result<PathBuf> {
    say("building xtask (release) for the bench server and load generator");
    status(cmd("cargo").args(["build", "--release", "-p", "xtask"]))?;
    Ok(root().join("target/release/xtask"))
}

/// The child's pid, for the signal handler to forward to.
static CHILD: AtomicI32 = AtomicI32::new(0);
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // Safety: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

fn install_signal_forwarding() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // Safety: installs an async-signal-safe handler (atomics and kill only).
        unsafe { libc::signal(sig, forward_signal as *const () as libc::sighandler_t) };
    }
}

const DEMO_EP: &str = "tcpu-demo-ep";
const DEMO_CL: &str = "tcpu-demo-cl";

/// The demo topology; removed on drop.
struct Demo;

impl Demo {
    fn create() -> Result<Demo> {
        let _ = Demo::remove();
        say("creating the demo topology: netns tcpu-demo-ep (198.18.0.1) <-veth-> tcpu-demo-cl (198.18.0.2)");
        let demo = Demo;
        let ip = |args: &[&str]| status(Command::new("ip").args(args));
        ip(&["netns", "add", DEMO_EP])?;
        ip(&["netns", "add", DEMO_CL])?;
        ip(&[
            "link", "add", "tcpu-ep0", "netns", DEMO_EP, "type", "veth", "peer", "name",
            "tcpu-cl0", "netns", DEMO_CL,
        ])?;
        ip(&[
            "-n",
            DEMO_EP,
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            "tcpu-ep0",
        ])?;
        ip(&[
            "-n",
            DEMO_CL,
            "addr",
            "add",
            "198.18.0.2/24",
            "dev",
            "tcpu-cl0",
        ])?;
        for (ns, dev) in [
            (DEMO_EP, "tcpu-ep0"),
            (DEMO_CL, "tcpu-cl0"),
            (DEMO_EP, "lo"),
            (DEMO_CL, "lo"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // The kernel's veth sends CHECKSUM_PARTIAL; the XDP program insists
        // on full checksums, as a real NIC delivers them.
        status(
            Command::new("ip")
                .args([
                    "netns", "exec", DEMO_CL, "ethtool", "-K", "tcpu-cl0", "tx", "off",
                ])
                .stdout(Stdio::null()),
        )?;
        Ok(demo)
    }

    fn remove() -> Result<()> {
        for ns in [DEMO_EP, DEMO_CL] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        say("removing the demo topology");
        let _ = Demo::remove();
    }
}

fn run(iface: Option<String>, release: bool, args: Vec<String>) -> Result<()> {
    if !is_root() {
        bail!("running the endpoint needs root (XDP and AF_XDP); try sudo");
    }
    let bin = build(release)?;
    install_signal_forwarding();
    let (mut command, _demo, iface_name) = match iface {
        Some(iface) => {
            let mut c = Command::new(&bin);
            c.args(["run", "--iface", &iface]);
            (c, None, iface)
        }
        None => {
            let demo = Demo::create()?;
            let mut c = Command::new("ip");
            c.args(["netns", "exec", DEMO_EP])
                .arg(&bin)
                .args(["run", "--iface", "tcpu-ep0"]);
            (c, Some(demo), "tcpu-ep0".to_owned())
        }
    };
    command.args(&args).stdout(Stdio::piped());
    let mut child = command.spawn().context("starting tcp-user")?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        println!("{line}");
        if line.starts_with("READY") {
            if _demo.is_some() {
                let b = bin.display();
                eprintln!();
                eprintln!("The endpoint serves 198.18.0.1 in netns {DEMO_EP}. Talk to it from the client namespace:");
                eprintln!("  echo:     sudo ip netns exec {DEMO_CL} nc 198.18.0.1 7");
                eprintln!("  discard:  sudo ip netns exec {DEMO_CL} nc 198.18.0.1 9");
                eprintln!("  daytime:  sudo ip netns exec {DEMO_CL} nc 198.18.0.1 13");
                eprintln!("  iperf3:   sudo ip netns exec {DEMO_CL} iperf3 -c 198.18.0.1 -P 4");
                eprintln!("Its connection table:");
                eprintln!("  sudo ip netns exec {DEMO_EP} {b} stat --iface {iface_name}");
                eprintln!("Press Ctrl-C to stop; the topology is removed on exit.");
            } else {
                eprintln!(
                    "Connection table: sudo {} stat --iface {iface_name}",
                    bin.display()
                );
            }
        }
    }
    let st = child.wait()?;
    CHILD.store(0, Ordering::SeqCst);
    if st.success() || STOP.load(Ordering::SeqCst) != 0 {
        Ok(())
    } else {
        bail!("tcp-user exited with {st}")
    }
}

/// Totals parsed from libtest's "test result:" lines.
#[derive(Default, Debug)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    suites: u64,
}

fn run_tests(c: &mut Command, totals: &mut Totals) -> Result<bool> {
    c.stdout(Stdio::piped());
    let mut child = c.spawn().context("running cargo test")?;
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.trim().strip_prefix("test result: ") {
            totals.suites += 1;
            for part in rest.split(';') {
                let mut w = part.split_whitespace().rev();
                let (Some(name), Some(n)) = (w.next(), w.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match name {
                    "passed" => totals.passed += n,
                    "failed" => totals.failed += n,
                    "ignored" => totals.ignored += n,
                    _ => {}
                }
            }
        }
    }
    Ok(child.wait()?.success())
}

fn test(release: bool) -> Result<()> {
    if !is_root() {
        bail!("the end-to-end tests need root (network namespaces, XDP, AF_XDP)");
    }
    let bin = build(release)?;
    let mut totals = Totals::default();
    say("unit, property and simulation tests");
    let ok_unit = run_tests(
        cmd("cargo")
            .args([
                "test",
                "--workspace",
                "--exclude",
                "e2e-tests",
                "--exclude",
                "tcp-ebpf",
            ])
            .env("TCP_EBPF_OBJ", ebpf_object())
            .env("TCP_USER_BIN", &bin),
        &mut totals,
    )?;
    say(format!("end-to-end tests against {}", bin.display()));
    let ok_e2e = run_tests(
        cmd("cargo")
            .args(["test", "-p", "e2e-tests", "--", "--test-threads=1"])
            .env("TCP_EBPF_OBJ", ebpf_object())
            .env("TCP_USER_BIN", &bin)
            .env("TCP_USER_EXAMPLES", bin.with_file_name("examples"))
            // The benchmark's load generator and epoll server
            // (tests/tests/xtask_loadgen.rs).
            .env("XTASK_BIN", std::env::current_exe()?),
        &mut totals,
    )?;
    println!(
        "{} passed, {} failed, {} ignored",
        totals.passed, totals.failed, totals.ignored
    );
    if !ok_unit || !ok_e2e || totals.failed > 0 {
        bail!("tests failed");
    }
    if totals.ignored > 0 {
        bail!(
            "{} test(s) were skipped; every test must run",
            totals.ignored
        );
    }
    if totals.passed == 0 {
        bail!("no tests ran");
    }
    Ok(())
}

fn state_diagram(check: bool) -> Result<()> {
    let out = cmd("cargo")
        .args(["run", "--quiet", "-p", "tcp-user", "--", "state-diagram"])
        .stderr(Stdio::inherit())
        .output()
        .context("running tcp-user state-diagram")?;
    if !out.status.success() {
        bail!("tcp-user state-diagram failed");
    }
    let dot = String::from_utf8(out.stdout)?;
    let docs = root().join("docs");
    let dot_path = docs.join("tcp-states.dot");
    if check {
        let committed = std::fs::read_to_string(&dot_path).unwrap_or_default();
        if committed != dot {
            bail!("docs/tcp-states.dot is out of date: run `cargo xtask state-diagram`");
        }
        say("docs/tcp-states.dot matches the code");
        return Ok(());
    }
    std::fs::create_dir_all(&docs)?;
    std::fs::write(&dot_path, &dot)?;
    status(
        Command::new("dot")
            .args(["-Tsvg", "-o"])
            .arg(docs.join("tcp-states.svg"))
            .arg(&dot_path),
    )?;
    say("wrote docs/tcp-states.dot and docs/tcp-states.svg");
    Ok(())
}

fn install(root_dir: &Path) -> Result<()> {
    let bin = build(true)?;
    let place = |rel: &str| root_dir.join(rel.trim_start_matches('/'));
    let copy = |from: &Path, to: &Path, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Copy to a temporary name and rename: a running binary is replaced,
        // not overwritten in place.
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, to)?;
        say(format!("installed {}", to.display()));
        Ok(())
    };
    copy(&bin, &place("/usr/local/bin/tcp-user"), 0o755)?;
    copy(
        &root().join("deploy/tcp-user@.service"),
        &place("/etc/systemd/system/tcp-user@.service"),
        0o644,
    )?;
    let config = place("/etc/tcp-user/tcp-user.toml");
    if config.exists() {
        say(format!("kept the existing {}", config.display()));
    } else {
        copy(&root().join("deploy/tcp-user.toml"), &config, 0o644)?;
    }
    if root_dir == Path::new("/") && Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
    eprintln!("Start it with: sudo systemctl enable --now tcp-user@eth0");
    eprintln!("Watch it with: sudo tcp-user stat --iface eth0; journalctl -u tcp-user@eth0");
    Ok(())
}
