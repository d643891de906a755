//! A kernel-bypass TCP endpoint: an XDP program steers the segments of the
//! flows it owns into AF_XDP sockets, and this crate runs TCP over them.
//!
//! - [`tcp`]: the sans-IO TCP core (RFC 9293). No I/O, no clock reads.
//! - [`wire`]: zero-copy views and emitters for TCP segments, checksums.
//! - [`afxdp`]: AF_XDP sockets (UMEM and rings) on `libc`.
//! - [`xdp`]: loads and attaches the embedded XDP program, owns its maps.
//! - [`frame`]: Ethernet and IPv4 framing around TCP segments.
//! - [`driver`]: the driver joining all of the above (a thread of its own
//!   for `tcp-user run`, a tokio task for the library API).
//! - `hrtimer`: the library driver's sub-millisecond deadline timer (a timerfd).
//! - `park`: where `tcp-user run`'s driver sleeps (epoll, a mailbox).
//! - [`api`]: the library API: `Endpoint`, `TcpListener`, `TcpStream`
//!   (tokio `AsyncRead`/`AsyncWrite`).
//! - [`netlink`]: routes and neighbours from the kernel (active opens).
//! - [`iperf3`]: a sans-IO iperf3-compatible test server.
//! - [`bench`]: `tcp-user bench`, the load generator.
//! - [`reflect`]: `tcp-user reflect`, the raw AF_XDP ceiling (frames
//!   turned around in place, no TCP).

pub mod afxdp;
pub mod api;
pub mod bench;
pub mod config;
pub mod control;
pub mod diagram;
pub mod driver;
pub mod frame;
mod hrtimer;
pub mod iperf3;
pub mod netlink;
pub mod notify;
mod park;
pub mod pcap;
pub mod reflect;
pub mod services;
pub mod tcp;
pub mod wire;
pub mod xdp;
