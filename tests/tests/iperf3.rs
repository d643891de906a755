//! Debian's stock `iperf3 -c` against the endpoint's iperf3 server (a
//! default service on port 5201): it runs its tests and prints its normal
//! report. Functional checks only; the numbers belong to benchmarks.

use std::process::Command;

use e2e_tests::{Endpoint, Topology};

/// Runs `iperf3 -c ADDR -t 3 -J extra..` in the client namespace; its
/// exit status and JSON report.
fn iperf3(topo: &Topology, extra: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.cl_ns, "iperf3", "-c"])
        .arg(topo.ep_addr.to_string())
        .args(["-t", "3", "-J"])
        .args(extra)
        .output()
        .expect("running iperf3 (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("iperf3 {extra:?} printed no JSON ({e}): {text}"));
    eprintln!(
        "iperf3 {extra:?}: {} end.sum_sent {} end.sum_received {} error {}",
        out.status, json["end"]["sum_sent"], json["end"]["sum_received"], json["error"]
    );
    (out.status.success() && json["error"].is_null(), json)
}

fn bytes(v: &serde_json::Value) -> u64 {
    v["bytes"].as_u64().unwrap_or(0)
}

#[test]
fn stock_iperf3_client_runs_its_tests_against_the_endpoint() {
    let topo = Topology::new("ip3", 47);
    let ep = Endpoint::start(&topo, &[]);

    for extra in [&["-P", "4"][..], &["-R"], &["-l", "16K"]] {
        let (ok, j) = iperf3(&topo, extra);
        assert!(ok, "iperf3 {extra:?} failed: {}", j["error"]);
        assert!(bytes(&j["end"]["sum_sent"]) > 0, "{extra:?}: {}", j["end"]);
        assert!(
            bytes(&j["end"]["sum_received"]) > 0,
            "{extra:?}: {}",
            j["end"]
        );
        if extra == ["-P", "4"] {
            assert_eq!(j["end"]["streams"].as_array().map(Vec::len), Some(4));
        }
    }

    let (ok, j) = iperf3(&topo, &["--bidir"]);
    assert!(ok, "iperf3 --bidir failed: {}", j["error"]);
    for key in [
        "sum_sent",
        "sum_received",
        "sum_sent_bidir_reverse",
        "sum_received_bidir_reverse",
    ] {
        assert!(bytes(&j["end"][key]) > 0, "--bidir {key}: {}", j["end"]);
    }

    // UDP is refused the way a server refuses what it cannot do: an error
    // the client prints (with -J it reports it in the JSON).
    let (ok, j) = iperf3(&topo, &["-u"]);
    assert!(!ok, "UDP must be refused");
    assert!(
        j["error"].as_str().is_some_and(|e| !e.is_empty()),
        "the refusal is reported: {j}"
    );

    // Every test's connections were served by the endpoint.
    let c = &ep.stat()["counters"];
    assert!(c["conns_accepted"].as_u64().unwrap() > 4 + 2 + 2 + 3, "{c}");
}

#[test]
fn stock_iperf3_text_report_without_json() {
    let topo = Topology::new("ip3t", 48);
    let _ep = Endpoint::start(&topo, &[]);
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.cl_ns, "iperf3", "-c"])
        .arg(topo.ep_addr.to_string())
        .args(["-t", "3"])
        .output()
        .expect("running iperf3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("sender") && text.contains("receiver"),
        "{text}"
    );
    assert!(text.contains("iperf Done."), "{text}");
    // And UDP without -J: exit status 1 and the server's reason.
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.cl_ns, "iperf3", "-c"])
        .arg(topo.ep_addr.to_string())
        .args(["-u", "-t", "1"])
        .output()
        .expect("running iperf3");
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("error"), "{all}");
}
