//! The TOML configuration file (`tcp-user run --config FILE`).
//!
//! Every problem is reported as `FILE:LINE: key `KEY`: what is wrong`, so
//! an operator can go straight to it. Command-line flags override the file.
//!
//! ```toml
//! interface = "eth0"
//! address = "192.0.2.10"      # default: the interface's first IPv4 address
//! queues = 2                  # default: every RX queue
//! xdp_mode = "auto"           # auto | native | generic
//! control_socket = "/run/tcp-user/eth0.sock"
//! pcap = "/var/tmp/tcp-user.pcap"
//! grace_ms = 5000
//! log = "info"
//! busy_poll = false           # never sleep: spin on the rings, kernel busy polling (--busy-poll)
//!
//! [[service]]                 # the ports the endpoint owns
//! name = "echo"
//! port = 7
//!
//! [tcp]
//! msl_ms = 30000
//! fin_wait2_timeout_ms = 60000
//! initial_rto_ms = 1000
//! min_rto_ms = 200
//! max_rto_ms = 120000
//! max_retries = 15
//! syn_retries = 6
//! delayed_ack_ms = 40        # at most one SRTT (at least 1 ms) once one is known
//! recv_buffer = 1048576
//! send_buffer = 1048576
//! max_connections = 100000
//! window_scaling = true
//! sack = true               # RFC 2018 SACK, RFC 6675 + RACK-TLP recovery
//! timestamps = true         # RFC 7323: RTT measurement, PAWS
//! congestion = "cubic"      # cubic | newreno
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::services::Service;
use crate::tcp;
use crate::xdp::XdpMode;

/// A configuration problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    queues: Option<Spanned<u32>>,
    xdp_mode: Option<Spanned<String>>,
    control_socket: Option<PathBuf>,
    pcap: Option<PathBuf>,
    grace_ms: Option<u64>,
    log: Option<Spanned<String>>,
    busy_poll: Option<bool>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
    #[serde(default)]
    tcp: RawTcp,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    port: Spanned<u16>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    msl_ms: Option<Spanned<u64>>,
    fin_wait2_timeout_ms: Option<Spanned<u64>>,
    initial_rto_ms: Option<Spanned<u64>>,
    min_rto_ms: Option<Spanned<u64>>,
    max_rto_ms: Option<Spanned<u64>>,
    max_retries: Option<u32>,
    syn_retries: Option<u32>,
    delayed_ack_ms: Option<Spanned<u64>>,
    recv_buffer: Option<Spanned<usize>>,
    send_buffer: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    window_scaling: Option<bool>,
    sack: Option<bool>,
    timestamps: Option<bool>,
    congestion: Option<Spanned<String>>,
}

/// A validated configuration file; every field optional (flags and
/// built-in defaults fill the rest).
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    pub interface: Option<String>,
    pub address: Option<Ipv4Addr>,
    pub queues: Option<u32>,
    pub xdp_mode: Option<XdpMode>,
    pub control_socket: Option<PathBuf>,
    pub pcap: Option<PathBuf>,
    pub grace: Option<Duration>,
    pub log: Option<tracing::Level>,
    pub busy_poll: Option<bool>,
    pub services: Vec<(Service, u16)>,
    /// The TCP settings, starting from the defaults.
    pub tcp: tcp::Config,
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: None,
        key: None,
        message: format!("cannot read it: {e}"),
    })?;
    parse(path, &text)
}

/// Validates configuration text (`path` is only used in messages).
pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let at = |span: Option<Range<usize>>, key: Option<&str>, message: String| {
        let line = span.as_ref().map(|s| line_of(text, s.start));
        let key = key
            .map(str::to_owned)
            .or_else(|| span.and_then(|s| key_at(text, s.start)));
        ConfigError {
            file: path.to_owned(),
            line,
            key,
            message,
        }
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_owned();
        at(e.span(), None, message)
    })?;
    let err = |s: Range<usize>, key: &str, msg: String| at(Some(s), Some(key), msg);

    let mut out = FileConfig::default();
    if let Some(i) = raw.interface {
        let name = i.get_ref();
        if name.is_empty()
            || name.len() > 15
            || name.contains('/')
            || name.contains(char::is_whitespace)
        {
            return Err(err(
                i.span(),
                "interface",
                format!("{name:?} is not an interface name"),
            ));
        }
        out.interface = Some(name.clone());
    }
    if let Some(a) = raw.address {
        out.address = Some(a.get_ref().parse().map_err(|_| {
            err(
                a.span(),
                "address",
                format!("{:?} is not an IPv4 address", a.get_ref()),
            )
        })?);
    }
    if let Some(q) = raw.queues {
        if *q.get_ref() == 0 {
            return Err(err(q.span(), "queues", "must be at least 1".into()));
        }
        out.queues = Some(*q.get_ref());
    }
    if let Some(m) = raw.xdp_mode {
        out.xdp_mode = Some(
            m.get_ref()
                .parse()
                .map_err(|e: String| err(m.span(), "xdp_mode", e))?,
        );
    }
    out.control_socket = raw.control_socket;
    out.pcap = raw.pcap;
    out.grace = raw.grace_ms.map(Duration::from_millis);
    out.busy_poll = raw.busy_poll;
    if let Some(l) = raw.log {
        out.log = Some(l.get_ref().parse().map_err(|_| {
            err(
                l.span(),
                "log",
                format!(
                    "{:?} is not one of error, warn, info, debug, trace",
                    l.get_ref()
                ),
            )
        })?);
    }
    for s in &raw.services {
        let service: Service = s
            .name
            .get_ref()
            .parse()
            .map_err(|e: String| err(s.name.span(), "service.name", e))?;
        let port = *s.port.get_ref();
        if port == 0 {
            return Err(err(
                s.port.span(),
                "service.port",
                "port 0 cannot be served".into(),
            ));
        }
        if out.services.iter().any(|&(_, p)| p == port) {
            return Err(err(
                s.port.span(),
                "service.port",
                format!("port {port} is given to more than one service"),
            ));
        }
        out.services.push((service, port));
    }

    let t = raw.tcp;
    let ms =
        |v: &Option<Spanned<u64>>, key: &str, min: u64| -> Result<Option<Duration>, ConfigError> {
            match v {
                None => Ok(None),
                Some(v) if *v.get_ref() < min => {
                    Err(err(v.span(), key, format!("must be at least {min} ms")))
                }
                Some(v) => Ok(Some(Duration::from_millis(*v.get_ref()))),
            }
        };
    let tcp = &mut out.tcp;
    if let Some(d) = ms(&t.msl_ms, "tcp.msl_ms", 1)? {
        tcp.msl = d;
    }
    if let Some(d) = ms(&t.fin_wait2_timeout_ms, "tcp.fin_wait2_timeout_ms", 1)? {
        tcp.fin_wait2_timeout = d;
    }
    if let Some(d) = ms(&t.initial_rto_ms, "tcp.initial_rto_ms", 1)? {
        tcp.initial_rto = d;
    }
    if let Some(d) = ms(&t.min_rto_ms, "tcp.min_rto_ms", 1)? {
        tcp.min_rto = d;
    }
    if let Some(d) = ms(&t.max_rto_ms, "tcp.max_rto_ms", 1)? {
        tcp.max_rto = d;
    }
    if tcp.min_rto > tcp.max_rto {
        let span = t
            .min_rto_ms
            .as_ref()
            .or(t.max_rto_ms.as_ref())
            .map(|v| v.span());
        return Err(at(
            span,
            Some("tcp.min_rto_ms"),
            "must not exceed tcp.max_rto_ms".into(),
        ));
    }
    if let Some(d) = ms(&t.delayed_ack_ms, "tcp.delayed_ack_ms", 0)? {
        if d > Duration::from_millis(500) {
            let s = t.delayed_ack_ms.as_ref().unwrap().span();
            return Err(err(
                s,
                "tcp.delayed_ack_ms",
                "must be at most 500 ms (RFC 1122)".into(),
            ));
        }
        tcp.delayed_ack = d;
    }
    if let Some(n) = t.max_retries {
        tcp.max_retries = n;
    }
    if let Some(n) = t.syn_retries {
        tcp.syn_retries = n;
    }
    for (v, key, slot) in [
        (&t.recv_buffer, "tcp.recv_buffer", &mut tcp.recv_buffer),
        (&t.send_buffer, "tcp.send_buffer", &mut tcp.send_buffer),
    ] {
        if let Some(v) = v {
            let n = *v.get_ref();
            if !(4096..=(1 << 30)).contains(&n) {
                return Err(err(
                    v.span(),
                    key,
                    "must be between 4096 bytes and 1 GiB".into(),
                ));
            }
            *slot = n;
        }
    }
    if let Some(v) = &t.max_connections {
        if *v.get_ref() == 0 {
            return Err(err(
                v.span(),
                "tcp.max_connections",
                "must be at least 1".into(),
            ));
        }
        tcp.max_connections = *v.get_ref();
    }
    if let Some(w) = t.window_scaling {
        tcp.window_scaling = w;
    }
    if let Some(on) = t.sack {
        tcp.sack = on;
    }
    if let Some(on) = t.timestamps {
        tcp.timestamps = on;
    }
    if let Some(c) = &t.congestion {
        tcp.congestion = c
            .get_ref()
            .parse()
            .map_err(|e: String| err(c.span(), "tcp.congestion", e))?;
    }
    Ok(out)
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key whose value sits at `offset`: the key on that line,
/// prefixed by the table header above it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    let key = line.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('[') || !line.contains('=') {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<FileConfig, String> {
        parse(Path::new("/etc/tcp-user.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file_parses() {
        let c = check(
            r#"
interface = "eth0"
address = "198.18.0.1"
queues = 2
xdp_mode = "generic"
grace_ms = 100
log = "debug"
busy_poll = true

[[service]]
name = "echo"
port = 7

[[service]]
name = "discard"
port = 5001

[tcp]
msl_ms = 1000
min_rto_ms = 10
recv_buffer = 524288
congestion = "newreno"
"#,
        )
        .unwrap();
        assert_eq!(c.interface.as_deref(), Some("eth0"));
        assert_eq!(c.address, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(c.xdp_mode, Some(XdpMode::Generic));
        assert_eq!(
            c.services,
            vec![(Service::Echo, 7), (Service::Discard, 5001)]
        );
        assert_eq!(c.tcp.msl, Duration::from_secs(1));
        assert_eq!(c.tcp.min_rto, Duration::from_millis(10));
        assert_eq!(c.tcp.recv_buffer, 512 << 10, "not the 1 MiB default");
        assert_eq!(c.grace, Some(Duration::from_millis(100)));
        assert_eq!(c.busy_poll, Some(true));
        assert!(check("").is_ok(), "an empty file is valid");
    }

    #[test]
    fn every_error_names_file_line_and_key() {
        let cases: &[(&str, &str)] = &[
            ("address = \"nope\"\n", "config /etc/tcp-user.toml:1: key `address`: \"nope\" is not an IPv4 address"),
            ("\n\n[tcp]\nmsl_ms = 0\n", "config /etc/tcp-user.toml:4: key `tcp.msl_ms`: must be at least 1 ms"),
            ("[tcp]\nmsl_ms = \"long\"\n", "config /etc/tcp-user.toml:2: key `tcp.msl_ms`: invalid type: string \"long\", expected u64"),
            ("colour = 1\n", "config /etc/tcp-user.toml:1: key `colour`: unknown field `colour`"),
            ("[[service]]\nname = \"qotd\"\nport = 17\n", "config /etc/tcp-user.toml:2: key `service.name`: unknown service 'qotd' (known: echo, discard, daytime, chargen, iperf3)"),
            ("[[service]]\nname = \"echo\"\nport = 0\n", "config /etc/tcp-user.toml:3: key `service.port`: port 0 cannot be served"),
            ("[[service]]\nname = \"echo\"\nport = 70000\n", "config /etc/tcp-user.toml:3: key `service.port`: invalid value"),
            ("[tcp]\ncongestion = \"bbr\"\n", "config /etc/tcp-user.toml:2: key `tcp.congestion`: \"bbr\" is not available (supported: cubic, newreno)"),
            ("[tcp]\nmin_rto_ms = 5000\nmax_rto_ms = 1000\n", "config /etc/tcp-user.toml:2: key `tcp.min_rto_ms`: must not exceed tcp.max_rto_ms"),
            ("xdp_mode = \"fast\"\n", "config /etc/tcp-user.toml:1: key `xdp_mode`: unknown XDP mode \"fast\" (expected auto, native or generic)"),
            ("interface = \"eth0\"\ninterface = \"eth1\"\n", "config /etc/tcp-user.toml:2"),
            ("queues = [\n", "config /etc/tcp-user.toml:"),
        ];
        for (text, want) in cases {
            let got = check(text).unwrap_err();
            assert!(
                got.starts_with(want),
                "for {text:?}:\n got: {got}\nwant: {want}"
            );
            assert_eq!(got.lines().count(), 1, "one line: {got}");
        }
    }

    #[test]
    fn the_shipped_default_file_is_valid() {
        let text = include_str!("../../deploy/tcp-user.toml");
        let c = check(text).unwrap();
        assert_eq!(c.services.len(), 3);
        assert_eq!(c.tcp.msl, Duration::from_secs(30));
    }

    #[test]
    fn unreadable_files_are_named() {
        let e = load(Path::new("/nonexistent/tcp-user.toml")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("config /nonexistent/tcp-user.toml: cannot read it"));
    }
}
