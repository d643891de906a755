//! A kernel-bypass TCP endpoint: an XDP program steers the segments of the
//! flows it owns into AF_XDP sockets, and this crate runs TCP over them.
//!
//! - [`tcp`]: the sans-IO TCP core (RFC 9293). No I/O, no clock reads.
//! - [`wire`]: zero-copy views and emitters for TCP segments, checksums.
//! - [`afxdp`]: AF_XDP sockets (UMEM and rings) on `libc`; the only `unsafe`.
//! - [`xdp`]: loads and attaches the embedded XDP program, owns its maps.
//! - [`frame`]: Ethernet and IPv4 framing around TCP segments.
//! - [`driver`]: the tokio driver joining all of the above.
//! - [`iperf3`]: a sans-IO iperf3-compatible test server.

pub mod afxdp;
pub mod config;
pub mod control;
pub mod diagram;
pub mod driver;
pub mod frame;
pub mod iperf3;
pub mod notify;
pub mod pcap;
pub mod services;
pub mod tcp;
pub mod wire;
pub mod xdp;
