//! Loads the embedded XDP program, fills its maps and attaches it.
//!
//! The program is attached through a BPF link held by this process: when
//! the process ends, however it ends (even SIGKILL), the kernel closes the
//! link and detaches the program, and the kernel's own stack gets the ports
//! back. Nothing is pinned.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::str::FromStr;

use crate::afxdp::{interface_queue_count, XskConfig, XskSocket};
use anyhow::{bail, Context};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{xdp, Xdp};
use aya::Ebpf;
use tcp_common::{maps, FlowKey, Verdict, XdpConfig, XDP_PROGRAM};

/// The XDP object as built (alignment 1; see `embedded_object`).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tcp-ebpf.o"));

/// The embedded eBPF object, or an error saying how to build it.
pub fn embedded_object() -> anyhow::Result<Vec<u64>> {
    if OBJECT.is_empty() {
        bail!("this tcp-user was built without its eBPF object; build it with `cargo xtask build`");
    }
    let mut aligned = vec![0u64; OBJECT.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..OBJECT.len()].copy_from_slice(OBJECT);
    Ok(aligned)
}

/// How to attach the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode if the driver has it, else generic.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode: works everywhere, slower.
    Generic,
}

impl FromStr for XdpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            _ => Err(format!(
                "unknown XDP mode {s:?} (expected auto, native or generic)"
            )),
        }
    }
}

/// The loaded program and its maps.
pub struct XdpAttachment {
    // Field order matters on drop: the program (and its link) go first.
    ebpf: Ebpf,
    listen_ports: HashMap<MapData, u16, u8>,
    flows: HashMap<MapData, FlowKey, u8>,
    xsks: XskMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    attached: Option<(String, XdpMode)>,
    /// Reads the program's aya-log records into the process's log stream.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl XdpAttachment {
    /// Loads the program (through the verifier) and configures the
    /// endpoint's address; nothing is attached yet.
    pub fn load(local_ip: Option<Ipv4Addr>) -> anyhow::Result<Self> {
        Self::load_with_log_level(local_ip, tracing::Level::INFO)
    }

    /// Like [`load`](Self::load); the program's own log statements at
    /// `level` and above reach this process's log stream.
    pub fn load_with_log_level(
        local_ip: Option<Ipv4Addr>,
        level: tracing::Level,
    ) -> anyhow::Result<Self> {
        let object = embedded_object()?;
        // aya-log-common's numbering: Error = 1 ... Trace = 5.
        let ebpf_level: u8 = match level {
            tracing::Level::ERROR => 1,
            tracing::Level::WARN => 2,
            tracing::Level::INFO => 3,
            tracing::Level::DEBUG => 4,
            tracing::Level::TRACE => 5,
        };
        let mut ebpf = aya::EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &ebpf_level, false)
            .load(bytemuck::cast_slice(&object))
            .context("loading the eBPF object (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!("no eBPF log records: {e}");
                None
            }
        };
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        let mut config: Array<MapData, XdpConfig> = take(&mut ebpf, maps::CONFIG)?.try_into()?;
        let cfg = XdpConfig {
            local_ip: local_ip.map(|a| a.octets()).unwrap_or([0; 4]),
            flags: 0,
        };
        config.set(0, cfg, 0).context("writing the XDP config")?;
        let listen_ports = take(&mut ebpf, maps::LISTEN_PORTS)?.try_into()?;
        let flows = take(&mut ebpf, maps::FLOWS)?.try_into()?;
        let xsks = take(&mut ebpf, maps::XSKS)?.try_into()?;
        let counters = take(&mut ebpf, maps::COUNTERS)?.try_into()?;
        let prog: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .context("the eBPF object has no XDP program")?
            .try_into()?;
        prog.load().context("the kernel refused the XDP program")?;
        Ok(XdpAttachment {
            ebpf,
            listen_ports,
            flows,
            xsks,
            counters,
            attached: None,
            logger,
        })
    }
    /// Opens one AF_XDP socket per RX queue to be served (all of the
    /// interface's queues unless `requested` limits them: a socket sees
    /// only its own queue) and enters each in the XskMap.
    pub fn bind_queue_sockets(
        &mut self,
        ifname: &str,
        requested: Option<u32>,
        xsk_cfg: &XskConfig,
    ) -> anyhow::Result<Vec<XskSocket>> {
        let available = interface_queue_count(ifname)?;
        let queues = match requested {
            None => available,
            Some(0) => bail!("--queues must be at least 1"),
            Some(n) if n > available => {
                bail!("--queues {n}: interface {ifname} has only {available} RX queues")
            }
            Some(n) => n,
        };
        let mut sockets = Vec::with_capacity(queues as usize);
        for q in 0..queues {
            let sock = XskSocket::new(ifname, q, xsk_cfg)
                .with_context(|| format!("opening the AF_XDP socket for queue {q}"))?;
            self.register_xsk(q, sock.as_raw_fd())?;
            sockets.push(sock);
        }
        Ok(sockets)
    }

    /// Puts the AF_XDP socket of RX queue `queue` into the redirect map.
    pub fn register_xsk(&mut self, queue: u32, fd: RawFd) -> anyhow::Result<()> {
        // The caller's XskSocket owns the descriptor and outlives this call;
        // the map takes its own reference to the socket.
        let fd = RawFdRef(fd);
        self.xsks
            .set(queue, fd, 0)
            .with_context(|| format!("registering the AF_XDP socket of queue {queue}"))
    }

    /// Claims a local port for the endpoint.
    pub fn add_listen_port(&mut self, port: u16) -> anyhow::Result<()> {
        self.listen_ports
            .insert(port, 1, 0)
            .with_context(|| format!("claiming port {port} in XDP"))
    }

    /// Gives a local port back to the kernel.
    pub fn remove_listen_port(&mut self, port: u16) -> anyhow::Result<()> {
        self.listen_ports
            .remove(&port)
            .with_context(|| format!("releasing port {port} in XDP"))
    }

    /// Claims the segments of one actively opened connection.
    pub fn add_flow(&mut self, key: FlowKey) -> anyhow::Result<()> {
        self.flows.insert(key, 1, 0).context("adding a flow to XDP")
    }

    /// Releases one actively opened connection.
    pub fn remove_flow(&mut self, key: FlowKey) -> anyhow::Result<()> {
        self.flows.remove(&key).context("removing a flow from XDP")
    }

    /// Attaches the program to `iface` and returns the mode it got.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> anyhow::Result<XdpMode> {
        if !std::path::Path::new("/sys/class/net").join(iface).exists() {
            bail!("interface {iface} does not exist");
        }
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .context("the eBPF object has no XDP program")?
            .try_into()?;
        let got = match mode {
            XdpMode::Native => prog
                .attach(iface, xdp::XdpMode::Driver)
                .map(|_| XdpMode::Native)
                .with_context(|| format!("attaching XDP to {iface} in native mode"))?,
            XdpMode::Generic => prog
                .attach(iface, xdp::XdpMode::Skb)
                .map(|_| XdpMode::Generic)
                .with_context(|| format!("attaching XDP to {iface} in generic mode"))?,
            XdpMode::Auto => match prog.attach(iface, xdp::XdpMode::Driver) {
                Ok(_) => XdpMode::Native,
                Err(native) => {
                    tracing::info!("native XDP unavailable on {iface} ({native}); using generic");
                    prog.attach(iface, xdp::XdpMode::Skb)
                        .with_context(|| format!("attaching XDP to {iface}"))?;
                    XdpMode::Generic
                }
            },
        };
        self.attached = Some((iface.to_owned(), got));
        Ok(got)
    }

    /// Passes the program's pending log records on (non-blocking).
    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// The verdict counters, summed over CPUs, in `Verdict::ALL` order.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        Verdict::ALL
            .iter()
            .map(|&v| {
                let total = self
                    .counters
                    .get(&(v as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (v.name(), total)
            })
            .collect()
    }
}

/// A descriptor number as the `AsRawFd` the map API takes, without taking
/// ownership (the AF_XDP socket keeps it).
struct RawFdRef(RawFd);

impl std::os::fd::AsRawFd for RawFdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!("auto".parse::<XdpMode>(), Ok(XdpMode::Auto));
        assert_eq!("native".parse::<XdpMode>(), Ok(XdpMode::Native));
        assert_eq!("generic".parse::<XdpMode>(), Ok(XdpMode::Generic));
        assert!("skb"
            .parse::<XdpMode>()
            .unwrap_err()
            .contains("unknown XDP mode"));
    }

    #[test]
    fn embedded_object_is_an_elf_or_a_clear_error() {
        match embedded_object() {
            Ok(words) => {
                let bytes: &[u8] = bytemuck::cast_slice(&words);
                assert_eq!(&bytes[..4], b"\x7fELF");
            }
            Err(e) => assert!(e.to_string().contains("cargo xtask build")),
        }
    }
}
