//! `tcp-user bench` end to end, in every mode, against the Linux kernel's
//! TCP as the server and against another endpoint (kernel bypass on both
//! ends). Functional checks only: the numbers belong to benchmarks.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use e2e_tests::{binary, Endpoint, Topology};
use tcp_user::bench::Chargen;

/// Runs `tcp-user bench ... --json` in namespace `ns`; its report.
fn bench(ns: &str, args: &[String]) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(binary())
        .arg("bench")
        .args(args)
        .args(["--time", "2", "--json"])
        .output()
        .expect("running tcp-user bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tcp-user bench {args:?} failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("bench {args:?}: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

/// A kernel server for echo (7), discard (9, counting bytes) and chargen
/// (19, RFC 864) in the client namespace; stops when dropped.
struct KernelServers {
    stop: Arc<AtomicBool>,
    discarded: Arc<AtomicU64>,
}

impl KernelServers {
    fn start(topo: &Topology) -> KernelServers {
        let stop = Arc::new(AtomicBool::new(false));
        let discarded = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        for port in [7u16, 9, 19] {
            let (stop, discarded, ready) = (stop.clone(), discarded.clone(), ready_tx.clone());
            let addr = SocketAddrV4::new(topo.cl_addr, port);
            topo.spawn_in_client(move || {
                let l = TcpListener::bind(addr).expect("kernel listener");
                l.set_nonblocking(true).unwrap();
                ready.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            let discarded = discarded.clone();
                            std::thread::spawn(move || serve(port, s, &discarded));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            });
        }
        for _ in 0..3 {
            ready_rx.recv().unwrap();
        }
        KernelServers { stop, discarded }
    }
}

fn serve(port: u16, mut s: std::net::TcpStream, discarded: &AtomicU64) {
    let mut buf = vec![0u8; 65536];
    match port {
        19 => {
            let mut g = Chargen::new();
            loop {
                g.fill(&mut buf);
                if s.write_all(&buf).is_err() {
                    return;
                }
            }
        }
        _ => loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = s.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => n,
            };
            if port == 9 {
                discarded.fetch_add(n as u64, Ordering::Relaxed);
            } else if s.write_all(&buf[..n]).is_err() {
                return;
            }
        },
    }
}

impl Drop for KernelServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn check_modes(ns: &str, iface: &str, server: &str, discarded: Option<&AtomicU64>) {
    let base = ["--iface", iface, "--server", server];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };

    let r = bench(ns, &with(&["--mode", "bulk", "-P", "2"]));
    assert_eq!(r["errors"], 0);
    let sent = r["bytes"].as_u64().unwrap();
    assert!(sent > 0, "{r}");
    if let Some(d) = discarded {
        // The bench waits for the discard server's close, so everything
        // it counted has arrived.
        assert_eq!(d.load(Ordering::Relaxed), sent, "bytes the server got");
    }

    let r = bench(ns, &with(&["--mode", "bulk", "--reverse"]));
    assert_eq!(r["errors"], 0);
    assert!(
        r["bytes"].as_u64().unwrap() > 0,
        "chargen bytes checked: {r}"
    );

    let r = bench(ns, &with(&["--mode", "rr", "-P", "8", "--size", "64"]));
    assert_eq!(r["errors"], 0);
    assert!(r["transactions"].as_u64().unwrap() > 0, "{r}");
    let l = &r["latency"];
    assert!(l["p50_us"].as_f64().unwrap() <= l["p99_us"].as_f64().unwrap());
    assert!(l["p99_us"].as_f64().unwrap() <= l["p999_us"].as_f64().unwrap());

    let r = bench(ns, &with(&["--mode", "crr", "-P", "4"]));
    assert_eq!(r["errors"], 0);
    assert!(r["transactions"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn bench_against_a_kernel_server() {
    let topo = Topology::new("bk", 45);
    let servers = KernelServers::start(&topo);
    check_modes(
        &topo.ep_ns,
        &topo.ep_if,
        &topo.cl_addr.to_string(),
        Some(&servers.discarded),
    );
}

#[test]
fn bench_against_another_endpoint() {
    let topo = Topology::new("be", 46);
    let ep = Endpoint::start(
        &topo,
        &[
            "--service",
            "echo:7",
            "--service",
            "discard:9",
            "--service",
            "chargen:19",
        ],
    );
    // The bench runs on the client's side of the veth, through XDP and
    // AF_XDP there too.
    check_modes(&topo.cl_ns, &topo.cl_if, &topo.ep_addr.to_string(), None);
    let c = &ep.stat()["counters"];
    assert!(c["conns_accepted"].as_u64().unwrap() >= 4, "{c}");
}
