//! `cargo xtask bench --perf`: where a server's CPU goes.
//!
//! During the first run of each timed workload (rr, crr, iperf3) and
//! server, `perf record -C <server CPU> -g` samples the server CPU; its
//! samples are then sorted by call chain into the parts both servers have
//! in common on this topology and the parts that are each server's own.
//! Shares of the samples, times the run's measured server CPU per unit of
//! work, give µs per transaction, connection or MiB for each part.
//!
//! The part that matters most for reading the targets: a veth's transmit
//! is its peer's receive, and the bridge port and the client veth have no
//! NAPI, so every frame a server sends is bridged and received by the
//! client's TCP (which may answer at once: an ACK, a FIN's ACK) inside
//! the server's own transmit, on the server CPU, in `process_backlog`.
//! Both servers pay it; the bench counts it as server CPU for both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Where one sample of the server CPU was, by its call chain. The order
/// is the order of the checks in [`classify_sample`] and of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The frames a server sends, bridged and received by the client
    /// (its TCP and what that sends at once): `process_backlog`.
    BridgeAndClient,
    /// The server veth's NAPI kthread: XDP, the AF_XDP copy and wake-up
    /// (endpoint), or GRO, IP and TCP receive (kernel).
    Napi,
    /// Waiting: `epoll_wait`, `poll`, `ppoll` and their context switches.
    Wait,
    /// The endpoint's copy-mode AF_XDP transmit (the TX kick's `sendto`),
    /// without the bridge and client work it runs.
    XskTransmit,
    /// The kernel's TCP transmit from `send`/`write`, without the same.
    TcpSend,
    /// The kernel's TCP receive into `recv`/`read`.
    TcpRecv,
    Accept,
    Close,
    /// Any other kernel code (other system calls, interrupts, timers).
    OtherKernel,
    /// Kernel code whose call chain perf could not record (a sample with
    /// no chain, whose own address is in the kernel): where it was called
    /// from, and so its part, is unknown.
    KernelNoChain,
    /// The server's own userspace: its code, libc, vdso.
    User,
}

impl Part {
    pub const ALL: [Part; 11] = [
        Part::BridgeAndClient,
        Part::Napi,
        Part::Wait,
        Part::XskTransmit,
        Part::TcpSend,
        Part::TcpRecv,
        Part::Accept,
        Part::Close,
        Part::OtherKernel,
        Part::KernelNoChain,
        Part::User,
    ];

    /// The table's column heading.
    pub fn column(self) -> &'static str {
        match self {
            Part::BridgeAndClient => "bridge+cl",
            Part::Napi => "napi",
            Part::Wait => "wait",
            Part::XskTransmit => "xsk-tx",
            Part::TcpSend => "tcp-send",
            Part::TcpRecv => "tcp-recv",
            Part::Accept => "accept",
            Part::Close => "close",
            Part::OtherKernel => "other-k",
            Part::KernelNoChain => "no-chain",
            Part::User => "user",
        }
    }

    /// The JSON key.
    pub fn key(self) -> &'static str {
        match self {
            Part::BridgeAndClient => "bridge_and_client",
            Part::Napi => "napi",
            Part::Wait => "wait",
            Part::XskTransmit => "xsk_transmit",
            Part::TcpSend => "tcp_send",
            Part::TcpRecv => "tcp_recv",
            Part::Accept => "accept",
            Part::Close => "close",
            Part::OtherKernel => "other_kernel",
            Part::KernelNoChain => "kernel_no_chain",
            Part::User => "user",
        }
    }
}

/// One sample from `perf script`: the thread's name and its call chain,
/// leaf first, as (symbol, object) pairs.
#[derive(Debug, Default)]
struct Sample {
    comm: String,
    frames: Vec<(String, String)>,
}

/// Threads whose samples are not the server's: perf itself and the
/// `sleep` it times its recording with.
fn is_profiler(comm: &str) -> bool {
    comm == "perf" || comm.starts_with("perf-") || comm == "sleep" || comm.starts_with("swapper")
}

fn is_kernel(dso: &str) -> bool {
    dso.contains("kernel") || dso.starts_with("[k")
}

/// `leaf_in_kernel`: for a sample without a call chain, whether its own
/// address is in the kernel (None: not known).
fn classify_sample(s: &Sample, leaf_in_kernel: Option<bool>) -> Option<Part> {
    if is_profiler(&s.comm) {
        return None;
    }
    if s.frames.is_empty() && !s.comm.starts_with("napi/") {
        // Unknown is not userspace: counting it there would flatter the
        // estimate of a server without its own code.
        return Some(match leaf_in_kernel {
            Some(false) => Part::User,
            _ => Part::KernelNoChain,
        });
    }
    let has = |names: &[&str]| {
        s.frames
            .iter()
            .any(|(sym, _)| names.contains(&sym.as_str()))
    };
    let part = if has(&["process_backlog"]) {
        Part::BridgeAndClient
    } else if s.comm.starts_with("napi/") {
        Part::Napi
    } else if has(&["do_epoll_wait", "do_sys_poll", "do_poll"]) {
        Part::Wait
    } else if has(&["__xsk_generic_xmit", "xsk_generic_xmit"]) {
        Part::XskTransmit
    } else if has(&["tcp_sendmsg"]) {
        Part::TcpSend
    } else if has(&["tcp_recvmsg"]) {
        Part::TcpRecv
    } else if has(&["do_accept", "__sys_accept4", "inet_csk_accept"]) {
        Part::Accept
    } else if has(&["__x64_sys_close", "tcp_close"]) {
        Part::Close
    } else if s.frames.first().is_some_and(|(_, dso)| is_kernel(dso)) {
        Part::OtherKernel
    } else {
        Part::User
    };
    Some(part)
}

/// Splits `perf script -F comm,ip,sym,dso` output (with call chains) into
/// samples: a line at the margin names the thread, indented lines below
/// it are `ip symbol (object)`, a blank line ends the sample.
fn samples(script: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut cur: Option<Sample> = None;
    for line in script.lines() {
        if line.trim().is_empty() {
            out.extend(cur.take());
        } else if !line.starts_with([' ', '\t']) {
            out.extend(cur.take());
            cur = Some(Sample {
                comm: line.trim().to_owned(),
                frames: Vec::new(),
            });
        } else if let Some(s) = cur.as_mut() {
            let mut words = line.split_whitespace();
            let _ip = words.next();
            let rest: Vec<&str> = words.collect();
            let (sym, dso) = match rest.split_last() {
                Some((last, sym)) if last.starts_with('(') => {
                    (sym.join(" "), last.trim_matches(['(', ')']).to_owned())
                }
                _ => (rest.join(" "), String::new()),
            };
            // perf prints `symbol+0xoff` with --symoff; not asked for, but
            // harmless to strip.
            let sym = sym.split("+0x").next().unwrap_or("").to_owned();
            s.frames.push((sym, dso));
        }
    }
    out.extend(cur);
    out
}

/// The samples per part (the profiler's own left out), from `perf
/// script`'s output with call chains and, for the samples perf recorded
/// no chain for, `leaves`: its output with `--hide-call-graph`, one line
/// per sample in the same order, ending in the sample's `(object)`.
pub fn count_parts(script: &str, leaves: &str) -> BTreeMap<Part, u64> {
    let samples = samples(script);
    let leaves: Vec<&str> = leaves.lines().filter(|l| !l.trim().is_empty()).collect();
    // Paired by position only when both list the same samples.
    let paired = leaves.len() == samples.len();
    let mut counts = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        let leaf_in_kernel = paired.then(|| {
            let dso = leaves[i].trim_end().rsplit('(').next().unwrap_or("");
            is_kernel(dso)
        });
        if let Some(p) = classify_sample(s, leaf_in_kernel) {
            *counts.entry(p).or_insert(0) += 1;
        }
    }
    counts
}

/// The JSON a profiled run carries in `detail.profile`: the samples and
/// each part's share of them.
pub fn profile_json(counts: &BTreeMap<Part, u64>, perf_data: &Path) -> Value {
    let total: u64 = counts.values().sum();
    let shares: serde_json::Map<String, Value> = Part::ALL
        .iter()
        .map(|p| {
            let n = counts.get(p).copied().unwrap_or(0);
            let share = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            (p.key().to_owned(), json!(share))
        })
        .collect();
    json!({
        "perf_data": perf_data.display().to_string(),
        "samples": total,
        "shares": shares,
    })
}

/// Whether `perf` is there to run (checked before `--perf` builds
/// anything).
pub fn check_perf() -> Result<()> {
    let ok = Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("--perf needs the `perf` tool (Debian: apt-get install linux-perf)");
    }
    Ok(())
}

/// A `perf record` of one CPU over part of a run.
pub struct Recording {
    child: Child,
    path: PathBuf,
    ends: Instant,
}

impl Recording {
    /// Samples `cpu` with call chains for `secs` seconds, starting
    /// `delay` seconds from now (past the load's start-up), into `path`.
    pub fn start(cpu: &str, delay: f64, secs: f64, path: &Path) -> Result<Recording> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Kernel call chains only: the parts are told apart by kernel
        // symbols, and with user chains too perf recorded no chain at all
        // for 37-49 % of the kernel server's samples in some rr-1conn
        // runs (its userspace has no frame pointers).
        let child = Command::new("perf")
            .args([
                "record",
                "-q",
                "-g",
                "--kernel-callchains",
                "-F",
                "1999",
                "-C",
                cpu,
            ])
            .args(["-D", &format!("{:.0}", delay * 1e3)])
            .arg("-o")
            .arg(path)
            .args(["--", "sleep", &format!("{:.3}", delay + secs)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting perf record")?;
        Ok(Recording {
            child,
            path: path.to_owned(),
            ends: Instant::now() + Duration::from_secs_f64(delay + secs),
        })
    }

    /// Waits for the recording to end and sorts its samples.
    pub fn finish(self) -> Result<Value> {
        let budget = self.ends.saturating_duration_since(Instant::now()) + Duration::from_secs(30);
        let out = crate::bench::wait_output_within(self.child, budget, "perf record")?;
        if !out.status.success() {
            bail!(
                "perf record failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let script = |extra: &[&str]| -> Result<String> {
            let out = Command::new("perf")
                .args(["script", "-F", "comm,ip,sym,dso"])
                .args(extra)
                .arg("-i")
                .arg(&self.path)
                .stderr(Stdio::null())
                .output()
                .context("running perf script")?;
            if !out.status.success() {
                bail!("perf script failed ({})", out.status);
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let counts = count_parts(&script(&[])?, &script(&["--hide-call-graph"])?);
        if counts.is_empty() {
            bail!("perf recorded no samples of the server CPU");
        }
        Ok(profile_json(&counts, &self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of `perf script -F comm,ip,sym,dso` with call chains.
    const SCRIPT: &str = "\
tcp-user-main 
\tffffffff8a1 _raw_spin_unlock_irqrestore ([kernel.kallsyms])
\tffffffff8a2 tcp_v4_rcv ([kernel.kallsyms])
\tffffffff8a3 process_backlog ([kernel.kallsyms])
\tffffffff8a4 __xsk_generic_xmit ([kernel.kallsyms])
\t7f00001 __libc_sendto (/usr/lib/x86_64-linux-gnu/libc.so.6)

tcp-user-main 
\tffffffff8b1 copy_user ([kernel.kallsyms])
\tffffffff8b2 __xsk_generic_xmit ([kernel.kallsyms])

napi/tb-srv0-16 
\tffffffff8c1 veth_xdp_rcv ([kernel.kallsyms])
\tffffffff8c2 napi_threaded_poll ([kernel.kallsyms])

tcp-user-main 
\t55550001 tcp_user::tcp::stack::Stack::arrival (/tmp/tcp-user-main)

tcp-user-main 
\tffffffff8d1 finish_task_switch.isra.0 ([kernel.kallsyms])
\tffffffff8d2 do_epoll_wait ([kernel.kallsyms])
\t7f00002 epoll_wait (/usr/lib/x86_64-linux-gnu/libc.so.6)

xtask 
\tffffffff8e1 tcp_write_xmit ([kernel.kallsyms])
\tffffffff8e2 tcp_sendmsg ([kernel.kallsyms])

xtask 
\tffffffff8f1 inet_twsk_alloc ([kernel.kallsyms])
\tffffffff8f2 tcp_close ([kernel.kallsyms])
\tffffffff8f3 __x64_sys_close ([kernel.kallsyms])
xtask 
\tffffffff901 ktime_get ([kernel.kallsyms])
\tffffffff902 hrtimer_interrupt ([kernel.kallsyms])

perf 
\tffffffff911 perf_poll ([kernel.kallsyms])

sleep 
\tffffffff921 do_nanosleep ([kernel.kallsyms])
";

    #[test]
    fn samples_go_to_the_first_part_their_chain_names() {
        let c = count_parts(SCRIPT, "");
        let n = |p| c.get(&p).copied().unwrap_or(0);
        // The client's receive inside the TX kick is the path's, not the
        // kick's.
        assert_eq!(n(Part::BridgeAndClient), 1);
        assert_eq!(n(Part::XskTransmit), 1);
        assert_eq!(n(Part::Napi), 1);
        assert_eq!(n(Part::User), 1);
        assert_eq!(n(Part::Wait), 1);
        assert_eq!(n(Part::TcpSend), 1);
        // A sample right after another with no blank line between.
        assert_eq!(n(Part::Close), 1);
        assert_eq!(n(Part::OtherKernel), 1);
        // perf and its sleep are not the server's.
        assert_eq!(c.values().sum::<u64>(), 8);
    }

    #[test]
    fn shares_cover_every_part_and_sum_to_one() {
        let v = profile_json(&count_parts(SCRIPT, ""), Path::new("/x/perf.data"));
        assert_eq!(v["samples"], 8);
        let shares = v["shares"].as_object().unwrap();
        assert_eq!(shares.len(), Part::ALL.len());
        let sum: f64 = shares.values().map(|s| s.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-9);
        assert_eq!(shares["bridge_and_client"], 0.125);
        assert_eq!(shares["accept"], 0.0);
    }

    #[test]
    fn nothing_recorded_is_no_samples() {
        assert!(count_parts("", "").is_empty());
        assert!(count_parts("\n\n", "").is_empty());
        // A frame line with no thread line above it is skipped.
        assert!(count_parts("\tffff foo ([kernel.kallsyms])\n", "").is_empty());
    }

    #[test]
    fn a_sample_without_a_chain_is_placed_by_its_own_address() {
        let script = "xtask \n\nxtask \n\nxtask \n\tffff tcp_sendmsg ([kernel.kallsyms])\n";
        let leaves = "   xtask  ffff1 __fput ([kernel.kallsyms])\n\
                      \n   xtask  5555 main (/work/target/release/xtask)\n\
                         xtask  ffff2 tcp_write_xmit ([kernel.kallsyms])\n";
        let c = count_parts(script, leaves);
        assert_eq!(c.get(&Part::KernelNoChain), Some(&1));
        assert_eq!(c.get(&Part::User), Some(&1));
        assert_eq!(c.get(&Part::TcpSend), Some(&1));
        // Leaves that do not pair up with the samples: chainless samples
        // are not known to be userspace.
        let c = count_parts(script, "   xtask  5555 main (/x)\n");
        assert_eq!(c.get(&Part::KernelNoChain), Some(&2));
        assert_eq!(c.get(&Part::User), None);
        // The NAPI kthread's own samples are its, chain or not.
        let c = count_parts("napi/tb-srv0-16 \n\n", "");
        assert_eq!(c.get(&Part::Napi), Some(&1));
    }
}
