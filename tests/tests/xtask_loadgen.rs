//! The benchmark's request/response load generator (`cargo xtask
//! bench-load`, xtask/src/loadgen.rs) against the endpoint's echo service
//! and against the kernel's epoll echo server (`xtask bench-server
//! --epoll`): transactions complete, every echoed byte is checked by the
//! generator (a wrong byte fails it), the counts add up. Functional checks
//! only: the numbers belong to `cargo xtask bench`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_tests::{Endpoint, Topology};

/// The xtask binary, from `XTASK_BIN` (set by `cargo xtask test`).
fn xtask() -> PathBuf {
    let p = PathBuf::from(
        std::env::var_os("XTASK_BIN")
            .expect("XTASK_BIN is not set: run the end-to-end tests through `cargo xtask test`"),
    );
    assert!(p.is_file(), "XTASK_BIN={} does not exist", p.display());
    p
}

/// Runs `xtask bench-load ARGS` in `ns`; its RESULT.
fn load(ns: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(xtask())
        .arg("bench-load")
        .args(args)
        .output()
        .expect("running xtask bench-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench-load {args:?} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    result(&stdout)
}

fn result(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line: {stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON ({e}): {line}"))
}

/// rr and crr: transactions done and every byte echoed.
fn check_rr_crr(ns: &str, server: &str) {
    let r = load(
        ns,
        &[
            "--addr", server, "--mode", "rr", "--conns", "4", "--size", "100", "--secs", "1",
        ],
    );
    let n = r["transactions"].as_u64().unwrap();
    assert!(n > 0, "{r}");
    assert_eq!(r["bytes_echoed"].as_u64().unwrap(), n * 100, "{r}");
    assert_eq!(r["latency"]["samples"].as_u64().unwrap(), n, "{r}");
    let l = &r["latency"];
    assert!(
        l["p50_us"].as_f64().unwrap() <= l["p99_us"].as_f64().unwrap(),
        "{r}"
    );
    assert!(
        l["p99_us"].as_f64().unwrap() <= l["p999_us"].as_f64().unwrap(),
        "{r}"
    );

    let r = load(
        ns,
        &[
            "--addr", server, "--mode", "crr", "--conns", "2", "--secs", "1",
        ],
    );
    let n = r["transactions"].as_u64().unwrap();
    assert!(n > 0, "{r}");
    assert_eq!(r["bytes_echoed"].as_u64().unwrap(), n * 64, "{r}");
}

#[test]
fn loadgen_against_the_endpoint() {
    let topo = Topology::new("xl", 57);
    let ep = Endpoint::start(&topo, &["--service", "echo:7"]);
    let server = topo.ep_addr.to_string();
    check_rr_crr(&topo.cl_ns, &server);

    // idle: 200 connections from explicit ports, then rr over 50 of them.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &topo.cl_ns])
        .arg(xtask())
        .args(["bench-load", "--mode", "idle", "--addr", &server])
        .args(["--conns", "200", "--rr-conns", "50", "--secs", "0.5"])
        .args([
            "--src",
            &topo.cl_addr.to_string(),
            "--src-ports",
            "20000-20999",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running bench-load --mode idle");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let opened = lines.next().expect("an OPENED line").unwrap();
    assert!(opened.starts_with("OPENED "), "{opened}");
    ep.wait_for(Duration::from_secs(5), "200 established connections", |s| {
        s["states"]["ESTABLISHED"].as_u64() == Some(200)
    });
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    let r = result(&lines.next().expect("a RESULT line").unwrap());
    assert_eq!(r["conns"], 50, "{r}");
    let n = r["transactions"].as_u64().unwrap();
    assert!(n > 0, "{r}");
    assert_eq!(r["bytes_echoed"].as_u64().unwrap(), n * 64, "{r}");
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn loadgen_against_the_kernel_epoll_server() {
    let topo = Topology::new("xk", 58);
    // The kernel's epoll echo server of the benchmark, in the endpoint's
    // namespace (no endpoint runs there).
    let mut server = Command::new("ip")
        .args(["netns", "exec", &topo.ep_ns])
        .arg(xtask())
        .args(["bench-server", "--epoll", "--procs", "2", "--addr"])
        .arg(topo.ep_addr.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running xtask bench-server --epoll");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let ready = lines.next().expect("a READY line").unwrap();
    assert!(
        ready.starts_with("READY") && ready.contains("pids="),
        "{ready}"
    );
    check_rr_crr(&topo.cl_ns, &topo.ep_addr.to_string());
    // Our own child, by its pid; its worker goes with it (PDEATHSIG).
    let _ = server.kill();
    let _ = server.wait();
}
