//! The control socket: `ss`/`netstat` cannot see userspace connections, so
//! the running endpoint answers `tcp-user stat` over a local Unix socket
//! with a JSON snapshot of its connection table and counters.
//!
//! Protocol: the client sends one line (`stat`), the server answers with
//! one JSON document and closes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::tcp::ConnInfo;

/// Where the control socket of an interface lives unless told otherwise.
pub fn default_socket_path(iface: &str) -> PathBuf {
    PathBuf::from(format!("/run/tcp-user/{iface}.sock"))
}

/// Everything `tcp-user stat` shows.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub iface: String,
    pub addr: String,
    pub connections: Vec<ConnInfo>,
    /// Connections per state, like `ss -s`.
    pub states: BTreeMap<String, u64>,
    /// The TCP core's counters.
    pub counters: BTreeMap<String, u64>,
    /// The XDP program's verdict counters, summed over CPUs.
    pub xdp: BTreeMap<String, u64>,
    /// Per AF_XDP socket: the kernel's statistics and the engine's own counters.
    pub afxdp: Vec<serde_json::Value>,
    /// Driver counters (frames that could not be parsed or sent, ...).
    pub driver: BTreeMap<String, u64>,
}

/// A request from a control client, answered by the driver loop.
pub type Request = oneshot::Sender<Snapshot>;

/// Serves the control socket until the process ends: every client gets a
/// fresh snapshot from the driver loop through `requests`.
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Binds the socket (replacing a stale one left by a killed process).
    pub fn bind(path: &Path, requests: mpsc::Sender<Request>) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating control socket directory {}", dir.display()))?;
        }
        if path.exists() {
            // A live endpoint on the same socket would answer; a stale file would not.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another tcp-user already serves the control socket {}",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale control socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding control socket {}", path.display()))?;
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let requests = requests.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, requests).await {
                        tracing::debug!("control client: {e:#}");
                    }
                });
            }
        });
        Ok(ControlServer {
            path: path.to_owned(),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_one(stream: UnixStream, requests: mpsc::Sender<Request>) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(rd.take(256)).read_line(&mut line),
    )
    .await
    .context("control client sent nothing")??;
    if line.trim() != "stat" {
        wr.write_all(b"{\"error\":\"unknown request\"}\n").await?;
        return Ok(());
    }
    let (tx, rx) = oneshot::channel();
    requests.send(tx).await.context("driver gone")?;
    let snap = rx.await.context("driver gone")?;
    let mut body = serde_json::to_vec(&snap)?;
    body.push(b'\n');
    wr.write_all(&body).await?;
    wr.shutdown().await?;
    Ok(())
}

/// Asks a running endpoint for its snapshot (as raw JSON).
pub fn fetch(path: &Path) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "no endpoint answers on {} (is `tcp-user run` running?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"stat\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    serde_json::from_str(&body).context("the endpoint's answer is not JSON")
}

/// Renders a snapshot like `ss -tan` and `ss -s` do for the kernel.
pub fn render_table(snap: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>8} {:>8} {:<22} {:<22} {:>9} {:>9} {:>7} {:>8} {:<7}",
        "State",
        "Recv-Q",
        "Send-Q",
        "Local Address:Port",
        "Peer Address:Port",
        "RTT(ms)",
        "RTO(ms)",
        "Retrans",
        "Cwnd",
        "Opts"
    );
    let empty = Vec::new();
    let conns = snap["connections"].as_array().unwrap_or(&empty);
    for c in conns {
        let ms = |k: &str| c[k].as_u64().unwrap_or(0) as f64 / 1000.0;
        // What the connection negotiated, as `ss -i` shows it.
        let mut opts: Vec<&str> = Vec::new();
        if c["sack"].as_bool() == Some(true) {
            opts.push("sack");
        }
        if c["timestamps"].as_bool() == Some(true) {
            opts.push("ts");
        }
        if c["recovering"].as_bool() == Some(true) {
            opts.push("rec");
        }
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:>8} {:<22} {:<22} {:>9.3} {:>9.3} {:>7} {:>8} {:<7}",
            c["state"].as_str().unwrap_or("?"),
            c["recv_queue"].as_u64().unwrap_or(0),
            c["send_queue"].as_u64().unwrap_or(0),
            c["local"].as_str().unwrap_or("?"),
            c["remote"].as_str().unwrap_or("?"),
            ms("srtt_us"),
            ms("rto_us"),
            c["retransmits"].as_u64().unwrap_or(0),
            c["cwnd"].as_u64().unwrap_or(0),
            opts.join(","),
        );
    }
    let _ = write!(out, "\n{} connections", conns.len());
    if let Some(states) = snap["states"].as_object() {
        let per: Vec<String> = states.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if !per.is_empty() {
            let _ = write!(out, ": {}", per.join(", "));
        }
    }
    out.push('\n');
    for (title, key) in [
        ("XDP verdicts", "xdp"),
        ("TCP counters", "counters"),
        ("Driver", "driver"),
    ] {
        if let Some(map) = snap[key].as_object() {
            let nonzero: Vec<String> = map
                .iter()
                .filter(|(_, v)| v.as_u64() != Some(0))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(
                out,
                "{title}: {}",
                if nonzero.is_empty() {
                    "-".to_string()
                } else {
                    nonzero.join(" ")
                }
            );
        }
    }
    if let Some(socks) = snap["afxdp"].as_array() {
        for s in socks {
            // Busy polling (`--busy-poll`): the NAPI context the kernel
            // polls on each turn's recvfrom (0: none, no recvfrom made).
            let _ = writeln!(
                out,
                "AF_XDP queue {}: napi_id={} busy_polls={}",
                s["queue"].as_u64().unwrap_or(0),
                s["napi_id"].as_u64().unwrap_or(0),
                s["engine"]["busy_polls"].as_u64().unwrap_or(0),
            );
            let _ = writeln!(out, "AF_XDP: {s}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_connections_and_state_counts() {
        let snap = serde_json::json!({
            "connections": [{"id": 1, "local": "198.18.0.1:7", "remote": "198.18.0.2:40000",
                "state": "ESTABLISHED", "send_queue": 5, "recv_queue": 0, "srtt_us": 1500,
                "rto_us": 201500, "retransmits": 2, "cwnd": 14480, "sack": true,
                "timestamps": true, "recovering": false}],
            "states": {"ESTABLISHED": 1},
            "xdp": {"redirected": 10, "drop_bad_tcp_checksum": 0},
            "counters": {}, "driver": {}, "afxdp": []
        });
        let t = render_table(&snap);
        assert!(t.contains("ESTABLISHED"), "{t}");
        assert!(t.contains("198.18.0.2:40000"), "{t}");
        assert!(t.contains("1.500"), "{t}");
        assert!(t.contains("14480 sack,ts"), "{t}");
        assert!(t.contains("1 connections: ESTABLISHED 1"), "{t}");
        assert!(t.contains("XDP verdicts: redirected=10"), "{t}");
        assert!(
            !t.contains("drop_bad_tcp_checksum"),
            "zero counters are hidden: {t}"
        );
    }

    #[test]
    fn table_shows_busy_polling_per_socket() {
        let snap = serde_json::json!({
            "connections": [], "states": {}, "xdp": {}, "counters": {}, "driver": {},
            "afxdp": [
                {"queue": 0, "napi_id": 8193, "kernel": {}, "engine": {"busy_polls": 42}},
                {"queue": 1, "napi_id": 0, "kernel": {}, "engine": {"busy_polls": 0}}
            ]
        });
        let t = render_table(&snap);
        assert!(
            t.contains("AF_XDP queue 0: napi_id=8193 busy_polls=42\n"),
            "{t}"
        );
        assert!(
            t.contains("AF_XDP queue 1: napi_id=0 busy_polls=0\n"),
            "{t}"
        );
    }

    #[tokio::test]
    async fn serves_a_snapshot_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("tcpu-ctl-{}", std::process::id()));
        let path = dir.join("t.sock");
        let (tx, mut rx) = mpsc::channel::<Request>(4);
        let _server = ControlServer::bind(&path, tx).unwrap();
        tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                let _ = reply.send(Snapshot {
                    iface: "veth0".into(),
                    addr: "198.18.0.1".into(),
                    connections: vec![],
                    states: BTreeMap::from([("LISTEN".into(), 3)]),
                    counters: BTreeMap::new(),
                    xdp: BTreeMap::new(),
                    afxdp: vec![],
                    driver: BTreeMap::new(),
                });
            }
        });
        let p = path.clone();
        let v = tokio::task::spawn_blocking(move || fetch(&p))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v["iface"], "veth0");
        assert_eq!(v["states"]["LISTEN"], 3);
        let _ = std::fs::remove_dir_all(dir);
    }
}
