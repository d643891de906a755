//! AF_XDP sockets on `libc`: the UMEM, its fill and completion rings, and
//! the RX and TX rings, one socket per RX queue.
//!
//! This module and the XDP program's packet helper are the only places with
//! `unsafe`. The rings are single-producer/single-consumer queues shared
//! with the kernel through `mmap`: we read the other side's index with
//! Acquire and publish ours with Release, so descriptor contents are visible
//! before the index that covers them.
//!
//! Frame ownership: the UMEM is cut into `frame_count` frames. The first
//! `rx_frames` live in the fill ring / RX ring cycle (the kernel writes
//! received frames there, we hand each back to the fill ring after reading
//! it); the rest are for TX (a free list, the TX ring, and back through the
//! completion ring).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, AtomicU32, Ordering};

use anyhow::{bail, Context};

// In-place forwarding (RX frame → TX ring, no copy) for `tcp-user reflect`.
mod in_place;
pub use in_place::InPlaceBatch;

/// How to bind: zero-copy needs driver support (veth has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy if the driver allows it, else copy.
    Auto,
    Copy,
    ZeroCopy,
}

/// Sizes of the UMEM and the rings.
#[derive(Clone, Debug)]
pub struct XskConfig {
    /// Bytes per UMEM frame (a power of two, 2048 or 4096).
    pub frame_size: u32,
    /// Frames in the UMEM: `rx_frames` for receiving, the rest for sending.
    pub frame_count: u32,
    /// Frames that cycle through the fill and RX rings.
    pub rx_frames: u32,
    /// Entries of each of the four rings (a power of two, at least as many
    /// as the receive frames and as the send frames).
    pub ring_size: u32,
    pub mode: BindMode,
    /// Ask the kernel to say when it needs a kick (XDP_USE_NEED_WAKEUP).
    pub need_wakeup: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            // 2048-byte frames hold a 1514-byte frame behind the 256
            // bytes of RX headroom (the XDP program admits no longer TCP).
            // 12,288 RX frames: a backlog of that many frames waits in the
            // RX ring, and beyond it the kernel drops for want of a fill
            // entry (rx_fill_ring_empty_descs). rr over 10,000 connections
            // (each with a request in flight) lost ~100,000 frames per 5 s
            // run there with 8192 (150,000 with 2048) whenever the engine
            // fell behind, and the clients' 200 ms retransmissions made its
            // p99; with 12,288 (and the driver's timers waiting for such a
            // backlog) 9,000-87,000. The kernel queues such a backlog in its
            // sockets. 16,384 lost fewer in some runs, more in others, and
            // served fewer transactions (docs/benchmarks.md). 4096 TX
            // frames: a copy-mode kick completes a frame at once, and a
            // NIC's zero-copy completion within ~1 ms at 10 Gbit/s needs
            // ~900. 32 MiB of UMEM in all, mapped and touched at start.
            frame_size: 2048,
            frame_count: 16384,
            rx_frames: 12288,
            ring_size: 16384,
            mode: BindMode::Auto,
            need_wakeup: true,
        }
    }
}

impl XskConfig {
    /// Checks what the kernel would refuse with a bare EINVAL.
    fn validate(&self) -> anyhow::Result<()> {
        // Safety: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
        if !self.frame_size.is_power_of_two() || !(2048..=page).contains(&self.frame_size) {
            bail!(
                "AF_XDP frame size {} must be a power of two from 2048 to the page size {page}",
                self.frame_size
            );
        }
        if !self.ring_size.is_power_of_two() {
            bail!("AF_XDP ring size {} is not a power of two", self.ring_size);
        }
        if self.rx_frames == 0 || self.rx_frames >= self.frame_count {
            bail!(
                "AF_XDP needs receive and send frames: {} of {} frames for receiving",
                self.rx_frames,
                self.frame_count
            );
        }
        // The fill ring must take every RX frame back and the completion
        // ring every TX frame, or recycling could find them full.
        let most = self.rx_frames.max(self.frame_count - self.rx_frames);
        if most > self.ring_size {
            bail!(
                "AF_XDP ring size {} is smaller than the {most} frames one ring must hold \
                 ({} for receiving of {})",
                self.ring_size,
                self.rx_frames,
                self.frame_count
            );
        }
        Ok(())
    }
}

/// The kernel's own drop statistics for one socket (XDP_STATISTICS): XDP
/// counters only say a frame was redirected, these say whether it arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStatistics {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

impl XskStatistics {
    pub fn as_pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_dropped", self.rx_dropped),
            ("rx_invalid_descs", self.rx_invalid_descs),
            ("tx_invalid_descs", self.tx_invalid_descs),
            ("rx_ring_full", self.rx_ring_full),
            ("rx_fill_ring_empty_descs", self.rx_fill_ring_empty_descs),
            ("tx_ring_empty_descs", self.tx_ring_empty_descs),
        ]
    }
}

/// The engine's own counters for one socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub tx_kicks: u64,
    /// send_with found no free frame or TX slot.
    pub tx_full: u64,
    /// TX frames the kernel handed back through the completion ring.
    pub tx_completed: u64,
    /// Kicks the kernel refused for a reason other than "busy, try again".
    pub tx_kick_errors: u64,
    pub rx_wakeups: u64,
    /// RX descriptors pointing outside the UMEM (skipped, frame recycled).
    pub rx_bad_descs: u64,
    /// Non-blocking recvfrom calls that asked the kernel to busy-poll the
    /// socket's NAPI context ([`XskSocket::kernel_busy_poll`]).
    pub busy_polls: u64,
}

impl XskCounters {
    pub fn as_pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_frames", self.rx_frames),
            ("tx_frames", self.tx_frames),
            ("tx_kicks", self.tx_kicks),
            ("tx_full", self.tx_full),
            ("tx_completed", self.tx_completed),
            ("tx_kick_errors", self.tx_kick_errors),
            ("rx_wakeups", self.rx_wakeups),
            ("rx_bad_descs", self.rx_bad_descs),
            ("busy_polls", self.busy_polls),
        ]
    }
}

/// Number of RX queues of an interface (at least 1).
pub fn interface_queue_count(ifname: &str) -> anyhow::Result<u32> {
    let dir = std::path::Path::new("/sys/class/net")
        .join(ifname)
        .join("queues");
    let entries =
        std::fs::read_dir(&dir).with_context(|| format!("interface {ifname} does not exist"))?;
    let n = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count() as u32;
    Ok(n.max(1))
}

/// Index arithmetic shared by the four rings. Indices run freely and wrap
/// at 2^32; the slot is `index & mask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RingIndex {
    size: u32,
}

impl RingIndex {
    fn slot(self, index: u32) -> usize {
        (index & (self.size - 1)) as usize
    }
    /// Entries between a consumer and a producer index.
    fn filled(producer: u32, consumer: u32) -> u32 {
        producer.wrapping_sub(consumer)
    }
    fn free(self, producer: u32, consumer: u32) -> u32 {
        self.size - Self::filled(producer, consumer)
    }
}

/// One mmapped ring.
struct Ring {
    map: NonNull<libc::c_void>,
    map_len: usize,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<u8>,
    index: RingIndex,
    /// Our side's index, published with Release when a batch is done.
    local: u32,
}

// Safety: a Ring owns its mapping (nothing else holds these pointers or
// unmaps it) and is only used through `&mut self`, so moving it to another
// thread moves the sole user; the kernel, the only other party, is
// synchronised with through the atomics, not through the thread.
unsafe impl Send for Ring {}

impl Ring {
    fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        desc_size: usize,
        pgoff: u64,
        name: &str,
    ) -> anyhow::Result<Ring> {
        let map_len = off.desc as usize + size as usize * desc_size;
        // Safety: a fresh shared mapping of the socket's ring at the page
        // offset the kernel defines for it; we check the result below.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("mmap of the {name} ring"));
        }
        let map = NonNull::new(p).context("mmap returned null")?;
        // Safety: the kernel sized the mapping for its own offsets and
        // `size` descriptors of `desc_size` bytes.
        Ok(unsafe { Ring::from_mapping(map, map_len, off, size, desc_size) })
    }

    /// Builds the ring view over a mapping that it then owns (and unmaps).
    ///
    /// # Safety
    /// `map` must be a live `mmap`ed region of `map_len` bytes that nothing
    /// else unmaps; the offsets must lie inside it, be 4-byte aligned for
    /// the indices and flags and 8-byte aligned for the descriptors, with
    /// room for `size` descriptors of `desc_size` bytes after `off.desc`.
    unsafe fn from_mapping(
        map: NonNull<libc::c_void>,
        map_len: usize,
        off: &libc::xdp_ring_offset,
        size: u32,
        desc_size: usize,
    ) -> Ring {
        debug_assert!(size.is_power_of_two());
        debug_assert!(off.desc as usize + size as usize * desc_size <= map_len);
        let base = map.as_ptr() as *mut u8;
        // Safety: the caller promises every offset lies inside the mapping,
        // so the pointer is in bounds and not null.
        let at = |o: u64| unsafe { NonNull::new_unchecked(base.add(o as usize)) };
        Ring {
            map,
            map_len,
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            descs: at(off.desc),
            index: RingIndex { size },
            local: 0,
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // Safety: points into our live mapping; the kernel and we access it
        // only atomically, and it is 4-byte aligned per the ABI.
        unsafe { self.producer.as_ref() }
    }
    fn consumer(&self) -> &AtomicU32 {
        // Safety: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }
    fn needs_wakeup(&self) -> bool {
        // Safety: as for `producer`.
        unsafe { self.flags.as_ref() }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Reads the u64 address at `index` (fill/completion rings).
    fn addr_at(&self, index: u32) -> u64 {
        // Safety: the slot is inside the descriptor array (masked index),
        // 8-byte aligned, and owned by us between the indices we hold.
        unsafe {
            (self.descs.as_ptr() as *const u64)
                .add(self.index.slot(index))
                .read_volatile()
        }
    }
    fn set_addr_at(&mut self, index: u32, addr: u64) {
        // Safety: as for `addr_at`; the slot is ours until we publish it.
        unsafe {
            (self.descs.as_ptr() as *mut u64)
                .add(self.index.slot(index))
                .write_volatile(addr)
        }
    }
    fn desc_at(&self, index: u32) -> libc::xdp_desc {
        // Safety: as for `addr_at`, for the 16-byte descriptors of RX/TX.
        unsafe {
            (self.descs.as_ptr() as *const libc::xdp_desc)
                .add(self.index.slot(index))
                .read_volatile()
        }
    }
    fn set_desc_at(&mut self, index: u32, desc: libc::xdp_desc) {
        // Safety: as for `desc_at`; the slot is ours until we publish it.
        unsafe {
            (self.descs.as_ptr() as *mut libc::xdp_desc)
                .add(self.index.slot(index))
                .write_volatile(desc)
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Safety: unmaps exactly the mapping made in `Ring::map`; nothing
        // refers into it once the ring is dropped.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}

/// The packet buffer shared with the kernel.
struct Umem {
    base: NonNull<u8>,
    len: usize,
}

// Safety: the UMEM area is owned by its socket alone (allocated and freed
// by it, never aliased outside `&mut self` methods); frames shared with the
// kernel change hands only through the rings' acquire/release indexes,
// whichever thread the socket lives on.
unsafe impl Send for Umem {}

impl Umem {
    fn new(len: usize) -> anyhow::Result<Umem> {
        // Safety: a fresh private anonymous mapping; checked below.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("allocating the UMEM");
        }
        Ok(Umem {
            base: NonNull::new(p as *mut u8).expect("mmap never returns null"),
            len,
        })
    }

    fn frame(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = addr as usize;
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // Safety: [start, end) is inside the UMEM (checked); the kernel
        // wrote this frame before publishing its descriptor, and does not
        // touch it again until we return it through the fill ring.
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), len) })
    }

    fn frame_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let start = addr as usize;
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // Safety: as for `frame`; a TX frame on our free list is ours alone
        // until its descriptor is published on the TX ring.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), len) })
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // Safety: unmaps the mapping made in `Umem::new`, after the socket
        // (which referenced it) was closed: fields drop in declaration order.
        unsafe { libc::munmap(self.base.as_ptr() as *mut _, self.len) };
    }
}

/// One AF_XDP socket bound to one RX queue, with its own UMEM.
pub struct XskSocket {
    // Declaration order is drop order: rings, then the socket, then the UMEM.
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    fd: OwnedFd,
    umem: Umem,
    frame_size: u32,
    queue: u32,
    copy_mode: bool,
    need_wakeup: bool,
    /// TX frames not in flight (capacity for all of them: never grows).
    tx_free: Vec<u64>,
    /// TX descriptors written but not yet published.
    tx_pending: u32,
    counters: XskCounters,
    /// The NAPI context the kernel recorded for the socket's traffic (0:
    /// none), as last read by [`refresh_napi_id`](XskSocket::refresh_napi_id).
    napi_id: u32,
}

/// The four rings of one socket, before they are assembled into it.
struct Rings {
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
}

impl XskSocket {
    /// Opens a socket on `ifname`'s RX queue `queue`.
    pub fn new(ifname: &str, queue: u32, cfg: &XskConfig) -> anyhow::Result<XskSocket> {
        cfg.validate()?;
        let c_name = CString::new(ifname).context("interface name contains NUL")?;
        // Safety: a plain libc call on a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            bail!("interface {ifname} does not exist");
        }
        Self::open(ifindex, queue, cfg)
            .with_context(|| format!("AF_XDP socket on {ifname} queue {queue}"))
    }

    fn open(ifindex: u32, queue: u32, cfg: &XskConfig) -> anyhow::Result<XskSocket> {
        // Safety: plain socket(2); the result is checked and owned at once.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => " (needs root or CAP_NET_RAW)",
                Some(libc::EAFNOSUPPORT) => " (kernel built without CONFIG_XDP_SOCKETS)",
                _ => "",
            };
            return Err(e).with_context(|| format!("socket(AF_XDP){hint}"));
        }
        // Safety: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Umem::new(cfg.frame_size as usize * cfg.frame_count as usize)?;
        let reg = libc::xdp_umem_reg {
            addr: umem.base.as_ptr() as u64,
            len: umem.len as u64,
            chunk_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(&fd, libc::XDP_UMEM_REG, &reg).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::ENOMEM) | Some(libc::EPERM) => {
                    "; raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK"
                }
                _ => "",
            };
            anyhow::Error::new(e).context(format!(
                "registering the {} KiB UMEM{hint}",
                umem.len / 1024
            ))
        })?;
        for opt in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
        ] {
            setsockopt(&fd, opt, &cfg.ring_size).context("sizing the rings")?;
        }
        let mut off: libc::xdp_mmap_offsets = zeroed_offsets();
        let mut optlen = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // Safety: getsockopt writes at most `optlen` bytes into `off`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                &mut off as *mut _ as *mut libc::c_void,
                &mut optlen,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("XDP_MMAP_OFFSETS");
        }
        let n = cfg.ring_size;
        let raw_fd = fd.as_raw_fd();
        let desc = std::mem::size_of::<libc::xdp_desc>();
        let rings = Rings {
            rx: Ring::map(
                raw_fd,
                &off.rx,
                n,
                desc,
                libc::XDP_PGOFF_RX_RING as u64,
                "RX",
            )?,
            tx: Ring::map(
                raw_fd,
                &off.tx,
                n,
                desc,
                libc::XDP_PGOFF_TX_RING as u64,
                "TX",
            )?,
            fill: Ring::map(
                raw_fd,
                &off.fr,
                n,
                8,
                libc::XDP_UMEM_PGOFF_FILL_RING,
                "fill",
            )?,
            comp: Ring::map(
                raw_fd,
                &off.cr,
                n,
                8,
                libc::XDP_UMEM_PGOFF_COMPLETION_RING,
                "completion",
            )?,
        };
        // The fill ring gets the receive half of the UMEM before binding, so
        // the first frames already have somewhere to go.
        let mut sock = XskSocket::assemble(rings, fd, umem, queue, cfg, true);

        // With neither XDP_COPY nor XDP_ZEROCOPY the kernel tries zero-copy
        // and falls back to copy by itself; XDP_OPTIONS then says which.
        let mut flags = match cfg.mode {
            BindMode::Auto => 0,
            BindMode::Copy => libc::XDP_COPY,
            BindMode::ZeroCopy => libc::XDP_ZEROCOPY,
        };
        if cfg.need_wakeup {
            flags |= libc::XDP_USE_NEED_WAKEUP;
        }
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // A socket closed a moment ago may still hold the queue: the kernel
        // releases it from a work queue. Give that a second before calling
        // the queue taken.
        let mut busy_retries = 20;
        loop {
            // Safety: bind(2) with a correctly sized sockaddr_xdp.
            let rc = unsafe {
                libc::bind(
                    raw_fd,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) && busy_retries > 0 {
                busy_retries -= 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
            let hint = match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) if cfg.mode == BindMode::ZeroCopy => {
                    " (driver has no zero-copy support)"
                }
                Some(libc::EINVAL) => " (no such queue on this interface?)",
                Some(libc::EBUSY) => " (queue already has an AF_XDP socket)",
                _ => "",
            };
            let mode = match cfg.mode {
                BindMode::Auto => "",
                BindMode::Copy => " (copy mode)",
                BindMode::ZeroCopy => " (zero-copy mode)",
            };
            return Err(e).with_context(|| format!("bind{mode}{hint}"));
        }
        sock.copy_mode = match cfg.mode {
            BindMode::Copy => true,
            BindMode::ZeroCopy => false,
            BindMode::Auto => !sock.bound_zero_copy(),
        };
        if cfg.mode == BindMode::Auto && sock.copy_mode {
            tracing::debug!("AF_XDP queue {queue}: no zero-copy support, using copy mode");
        }
        Ok(sock)
    }

    /// Whether the kernel bound this socket in zero-copy mode (false if it
    /// won't say: treating the socket as copy mode only costs extra kicks).
    fn bound_zero_copy(&self) -> bool {
        let mut opts = libc::xdp_options { flags: 0 };
        let mut len = std::mem::size_of::<libc::xdp_options>() as libc::socklen_t;
        // Safety: getsockopt writes at most `len` bytes into `opts`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_OPTIONS,
                &mut opts as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        rc == 0 && opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0
    }

    /// Puts the parts together and hands the receive half of the UMEM to
    /// the fill ring; the send half goes on the free list.
    fn assemble(
        rings: Rings,
        fd: OwnedFd,
        umem: Umem,
        queue: u32,
        cfg: &XskConfig,
        copy: bool,
    ) -> XskSocket {
        let Rings {
            rx,
            tx,
            mut fill,
            comp,
        } = rings;
        let frame = cfg.frame_size as u64;
        let rx_frames = cfg.rx_frames;
        for i in 0..rx_frames {
            let idx = fill.local;
            fill.set_addr_at(idx, i as u64 * frame);
            fill.local = idx.wrapping_add(1);
        }
        fill.producer().store(fill.local, Ordering::Release);
        let tx_free = (rx_frames..cfg.frame_count)
            .map(|i| i as u64 * frame)
            .collect();
        XskSocket {
            rx,
            tx,
            fill,
            comp,
            fd,
            umem,
            frame_size: cfg.frame_size,
            queue,
            copy_mode: copy,
            need_wakeup: cfg.need_wakeup,
            tx_free,
            tx_pending: 0,
            counters: XskCounters::default(),
            napi_id: 0,
        }
    }

    /// The socket's descriptor, for the XDP program's XskMap.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn queue_id(&self) -> u32 {
        self.queue
    }

    /// True when bound in copy mode (zero-copy was refused or not asked for).
    pub fn is_copy_mode(&self) -> bool {
        self.copy_mode
    }

    /// Hands up to `max` received frames to `f`, then returns their UMEM
    /// frames to the fill ring in one batch. Returns how many it handled.
    pub fn recv_batch(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        let produced = self.rx.producer().load(Ordering::Acquire);
        let ready = RingIndex::filled(produced, self.rx.local).min(max);
        if ready == 0 {
            return 0;
        }
        // The fill ring has room for every RX frame, so there is always room
        // for the ones coming back; check anyway rather than overwrite.
        let fill_cons = self.fill.consumer().load(Ordering::Acquire);
        let room = self.fill.index.free(self.fill.local, fill_cons);
        let n = ready.min(room);
        let chunk_mask = !(self.frame_size as u64 - 1);
        for i in 0..n {
            let d = self.rx.desc_at(self.rx.local.wrapping_add(i));
            let Some(frame) = self.umem.frame(d.addr, d.len as usize) else {
                // Not one of our frames: nothing to read, nothing to recycle.
                self.counters.rx_bad_descs += 1;
                continue;
            };
            f(frame);
            // desc.addr points past the headroom; the chunk starts at the
            // frame boundary below it.
            let idx = self.fill.local;
            self.fill.set_addr_at(idx, d.addr & chunk_mask);
            self.fill.local = idx.wrapping_add(1);
        }
        self.rx.local = self.rx.local.wrapping_add(n);
        self.rx.consumer().store(self.rx.local, Ordering::Release);
        self.fill
            .producer()
            .store(self.fill.local, Ordering::Release);
        self.counters.rx_frames += n as u64;
        n as usize
    }

    /// Kicks the kernel when it asked to be told about new fill entries.
    pub fn wake_rx_if_needed(&mut self) {
        // Order our fill-ring producer store before reading the flag the
        // kernel sets when it found the ring empty.
        fence(Ordering::SeqCst);
        if self.fill.needs_wakeup() {
            self.counters.rx_wakeups += 1;
            self.empty_recv();
        }
    }

    /// TX frames that are free right now.
    pub fn tx_free(&self) -> usize {
        self.tx_free.len()
    }

    /// Lets `f` write one frame into a free TX frame (returning its length,
    /// 0 to cancel) and queues it; published by [`flush_tx`](Self::flush_tx).
    /// False when no frame or TX slot is free: `f` was not called.
    pub fn send_with(&mut self, f: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.tx_free.is_empty() {
            self.reclaim();
        }
        let cons = self.tx.consumer().load(Ordering::Acquire);
        if self.tx.index.free(self.tx.local, cons) == 0 {
            // Every slot is written; publishing them frees room later.
            self.counters.tx_full += 1;
            return false;
        }
        let Some(addr) = self.tx_free.pop() else {
            self.counters.tx_full += 1;
            return false;
        };
        let frame_size = self.frame_size as usize;
        let len = match self.umem.frame_mut(addr, frame_size) {
            Some(buf) => f(buf).min(frame_size),
            None => 0,
        };
        if len == 0 {
            self.tx_free.push(addr);
            return true;
        }
        let idx = self.tx.local;
        self.tx.set_desc_at(
            idx,
            libc::xdp_desc {
                addr,
                len: len as u32,
                options: 0,
            },
        );
        self.tx.local = idx.wrapping_add(1);
        self.tx_pending += 1;
        self.counters.tx_frames += 1;
        true
    }

    /// Publishes queued TX descriptors and kicks the kernel if it needs it
    /// (always in copy mode, where only sendto moves frames). One copy-mode
    /// kick sends a bounded batch, so it kicks until the ring is drained or
    /// the kernel says to try later.
    pub fn flush_tx(&mut self) {
        if self.tx_pending > 0 {
            self.tx.producer().store(self.tx.local, Ordering::Release);
            self.tx_pending = 0;
        }
        let outstanding =
            |s: &Self| RingIndex::filled(s.tx.local, s.tx.consumer().load(Ordering::Acquire));
        if outstanding(self) == 0 {
            return;
        }
        // As in wake_rx_if_needed: the producer store before the flag read.
        fence(Ordering::SeqCst);
        if !self.copy_mode && self.need_wakeup && !self.tx.needs_wakeup() {
            return;
        }
        // The kernel's copy-mode batch is 32 frames; allow some slack.
        let max_kicks = outstanding(self) / 16 + 4;
        for _ in 0..max_kicks {
            self.counters.tx_kicks += 1;
            // Safety: a zero-length non-blocking sendto only kicks TX; it
            // reads nothing through the null pointers.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    ptr::null(),
                    0,
                )
            };
            if rc < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    // EAGAIN: one batch went out and more are queued.
                    Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                    // EBUSY, ENOBUFS, ENETDOWN, ...: the kernel can't take
                    // more now; the frames stay queued for the next flush.
                    _ => {
                        self.counters.tx_kick_errors += 1;
                        break;
                    }
                }
            }
            if !self.copy_mode || outstanding(self) == 0 {
                break;
            }
        }
    }

    /// Takes sent frames back from the completion ring.
    pub fn reclaim(&mut self) {
        let produced = self.comp.producer().load(Ordering::Acquire);
        let n = RingIndex::filled(produced, self.comp.local);
        if n == 0 {
            return;
        }
        let chunk_mask = !(self.frame_size as u64 - 1);
        for i in 0..n {
            let addr = self.comp.addr_at(self.comp.local.wrapping_add(i));
            self.tx_free.push(addr & chunk_mask);
        }
        self.comp.local = self.comp.local.wrapping_add(n);
        self.comp
            .consumer()
            .store(self.comp.local, Ordering::Release);
        self.counters.tx_completed += n as u64;
    }

    /// Asks the kernel to busy-poll this socket's NAPI context when we
    /// call [`kernel_busy_poll`](Self::kernel_busy_poll): SO_PREFER_BUSY_POLL
    /// on, SO_BUSY_POLL `usecs`, SO_BUSY_POLL_BUDGET `budget`. Stops at the
    /// first option the kernel refuses and names it.
    pub fn enable_kernel_busy_poll(&self, usecs: u32, budget: u32) -> anyhow::Result<()> {
        let opts: [(&str, libc::c_int, libc::c_int); 3] = [
            ("SO_PREFER_BUSY_POLL", libc::SO_PREFER_BUSY_POLL, 1),
            (
                "SO_BUSY_POLL",
                libc::SO_BUSY_POLL,
                libc::c_int::try_from(usecs).unwrap_or(libc::c_int::MAX),
            ),
            (
                "SO_BUSY_POLL_BUDGET",
                libc::SO_BUSY_POLL_BUDGET,
                libc::c_int::try_from(budget).unwrap_or(libc::c_int::MAX),
            ),
        ];
        for (name, opt, value) in opts {
            setsockopt_level(&self.fd, libc::SOL_SOCKET, opt, &value)
                .with_context(|| format!("setting {name} to {value}"))?;
        }
        Ok(())
    }

    /// Reads SO_INCOMING_NAPI_ID again (the kernel records it from the
    /// socket's traffic, so it can appear after the first frames), keeps it
    /// for [`kernel_busy_poll`](Self::kernel_busy_poll) and returns it.
    pub fn refresh_napi_id(&mut self) -> u32 {
        self.napi_id = self.incoming_napi_id();
        self.napi_id
    }

    /// The kernel's SO_INCOMING_NAPI_ID for this socket right now; 0 when
    /// there is none or the kernel will not say.
    pub fn incoming_napi_id(&self) -> u32 {
        let mut id: libc::c_uint = 0;
        let mut len = std::mem::size_of::<libc::c_uint>() as libc::socklen_t;
        // Safety: getsockopt writes at most `len` bytes into `id`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_INCOMING_NAPI_ID,
                &mut id as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc == 0 {
            id
        } else {
            0
        }
    }

    /// One non-blocking recvfrom, with which the kernel busy-polls the
    /// socket's NAPI context (when busy polling is enabled on it) — only
    /// when the socket has a NAPI id: without one the call does nothing
    /// but cost a system call. True when it was made.
    pub fn kernel_busy_poll(&mut self) -> bool {
        if self.napi_id == 0 {
            return false;
        }
        self.counters.busy_polls += 1;
        self.empty_recv();
        true
    }

    /// A zero-length non-blocking recvfrom: it wakes the kernel's RX
    /// processing for this socket (and busy-polls its NAPI context when
    /// busy polling is on) and receives nothing.
    fn empty_recv(&self) {
        // Safety: with a zero length and null buffer and address pointers
        // the kernel writes nothing through them.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
    }

    /// The kernel's statistics for this socket (zeroes if it won't say).
    pub fn statistics(&self) -> XskStatistics {
        let mut st = libc::xdp_statistics {
            rx_dropped: 0,
            rx_invalid_descs: 0,
            tx_invalid_descs: 0,
            rx_ring_full: 0,
            rx_fill_ring_empty_descs: 0,
            tx_ring_empty_descs: 0,
        };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // Safety: getsockopt writes at most `len` bytes into `st`; older
        // kernels write a shorter prefix and leave the rest zero.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                &mut st as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return XskStatistics::default();
        }
        XskStatistics {
            rx_dropped: st.rx_dropped,
            rx_invalid_descs: st.rx_invalid_descs,
            tx_invalid_descs: st.tx_invalid_descs,
            rx_ring_full: st.rx_ring_full,
            rx_fill_ring_empty_descs: st.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: st.tx_ring_empty_descs,
        }
    }

    pub fn counters(&self) -> XskCounters {
        self.counters
    }

    /// A registration of this socket with tokio's reactor, to sleep until
    /// frames arrive. It holds its own duplicate of the descriptor.
    pub fn readiness(&self) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
        let dup = self.fd.try_clone()?;
        // Safety: the AsyncFd owns `dup`, so the descriptor stays open and
        // names the same socket for as long as the registration lives.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)
    }
}

impl AsRawFd for XskSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, value: &T) -> io::Result<()> {
    setsockopt_level(fd, libc::SOL_XDP, opt, value)
}

fn setsockopt_level<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // Safety: passes a pointer to a live `T` and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn zeroed_offsets() -> libc::xdp_mmap_offsets {
    let z = || libc::xdp_ring_offset {
        producer: 0,
        consumer: 0,
        desc: 0,
        flags: 0,
    };
    libc::xdp_mmap_offsets {
        rx: z(),
        tx: z(),
        fr: z(),
        cr: z(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_indices_wrap() {
        let r = RingIndex { size: 8 };
        assert_eq!(r.slot(9), 1);
        assert_eq!(r.slot(u32::MAX), 7);
        assert_eq!(RingIndex::filled(3, u32::MAX - 1), 5);
        assert_eq!(r.free(3, u32::MAX - 1), 3);
        assert_eq!(RingIndex::filled(7, 7), 0);
        assert_eq!(r.free(7, 7), 8);
        assert_eq!(RingIndex::filled(u32::MAX.wrapping_add(8), u32::MAX), 8);
    }

    const HEADROOM: u64 = 256;

    /// Anonymous memory laid out like a kernel ring, all indices at `start`.
    pub(super) fn fake_ring(size: u32, desc_size: usize, start: u32) -> Ring {
        let off = libc::xdp_ring_offset {
            producer: 0,
            consumer: 64,
            flags: 128,
            desc: 192,
        };
        let mem = Umem::new(192 + size as usize * desc_size).unwrap();
        let (base, len) = (mem.base.cast(), mem.len);
        // The ring takes over the mapping and unmaps it when dropped.
        std::mem::forget(mem);
        // Safety: a live page-aligned mapping of `len` bytes, offsets inside
        // it and aligned, room for `size` descriptors after `off.desc`.
        let mut ring = unsafe { Ring::from_mapping(base, len, &off, size, desc_size) };
        ring.local = start;
        ring.producer().store(start, Ordering::Relaxed);
        ring.consumer().store(start, Ordering::Relaxed);
        ring
    }

    /// A socket whose rings are plain memory, with `start` as every ring's
    /// first index so the test crosses the 2^32 wrap; the "kernel" below
    /// plays the other side. Kicks go to /dev/null and fail harmlessly.
    pub(super) fn fake_socket(cfg: &XskConfig, start: u32) -> XskSocket {
        cfg.validate().unwrap();
        let desc = std::mem::size_of::<libc::xdp_desc>();
        let n = cfg.ring_size;
        let rings = Rings {
            rx: fake_ring(n, desc, start),
            tx: fake_ring(n, desc, start),
            fill: fake_ring(n, 8, start),
            comp: fake_ring(n, 8, start),
        };
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let umem = Umem::new(cfg.frame_size as usize * cfg.frame_count as usize).unwrap();
        XskSocket::assemble(rings, fd, umem, 0, cfg, true)
    }

    /// The kernel's RX side: takes a fill-ring frame, writes `payload` past
    /// the headroom and publishes an RX descriptor. False if fill is empty.
    pub(super) fn kernel_receive(sock: &mut XskSocket, payload: &[u8]) -> bool {
        let cons = sock.fill.consumer().load(Ordering::Relaxed);
        if sock.fill.producer().load(Ordering::Acquire) == cons {
            return false;
        }
        let chunk = sock.fill.addr_at(cons);
        sock.fill
            .consumer()
            .store(cons.wrapping_add(1), Ordering::Release);
        let addr = chunk + HEADROOM;
        sock.umem
            .frame_mut(addr, payload.len())
            .unwrap()
            .copy_from_slice(payload);
        let prod = sock.rx.producer().load(Ordering::Relaxed);
        sock.rx.set_desc_at(
            prod,
            libc::xdp_desc {
                addr,
                len: payload.len() as u32,
                options: 0,
            },
        );
        sock.rx
            .producer()
            .store(prod.wrapping_add(1), Ordering::Release);
        true
    }

    /// The kernel's TX side: sends every published descriptor (into `wire`)
    /// and hands each frame back through the completion ring.
    pub(super) fn kernel_transmit(sock: &mut XskSocket, wire: &mut Vec<Vec<u8>>) {
        let prod = sock.tx.producer().load(Ordering::Acquire);
        let mut cons = sock.tx.consumer().load(Ordering::Relaxed);
        while cons != prod {
            let d = sock.tx.desc_at(cons);
            wire.push(sock.umem.frame(d.addr, d.len as usize).unwrap().to_vec());
            let cp = sock.comp.producer().load(Ordering::Relaxed);
            sock.comp.set_addr_at(cp, d.addr);
            sock.comp
                .producer()
                .store(cp.wrapping_add(1), Ordering::Release);
            cons = cons.wrapping_add(1);
        }
        sock.tx.consumer().store(cons, Ordering::Release);
    }

    pub(super) fn small_config() -> XskConfig {
        XskConfig {
            frame_size: 2048,
            frame_count: 8,
            rx_frames: 4,
            ring_size: 4,
            mode: BindMode::Copy,
            need_wakeup: true,
        }
    }

    #[test]
    fn rx_frames_recycle_across_index_wrap() {
        let cfg = small_config();
        let mut sock = fake_socket(&cfg, u32::MAX - 2);
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        for round in 0..40 {
            // The kernel fills what it can: at most the 4 RX frames.
            let mut delivered = 0;
            while delivered < 1 + round % 4 && kernel_receive(&mut sock, &next_in.to_be_bytes()) {
                next_in += 1;
                delivered += 1;
            }
            assert!(delivered >= 1, "round {round}: fill ring starved");
            while sock.recv_batch(3, |frame| {
                assert_eq!(frame, next_out.to_be_bytes());
                next_out += 1;
            }) > 0
            {}
            assert_eq!(next_out, next_in);
        }
        assert!(next_in > 40);
        // Every RX frame is back in the fill ring, none lost or duplicated.
        let fill = &sock.fill;
        let queued = RingIndex::filled(fill.producer().load(Ordering::Relaxed), {
            fill.consumer().load(Ordering::Relaxed)
        });
        assert_eq!(queued, cfg.rx_frames);
        let mut chunks: Vec<u64> = (0..queued)
            .map(|i| fill.addr_at(fill.consumer().load(Ordering::Relaxed).wrapping_add(i)))
            .collect();
        chunks.sort_unstable();
        assert_eq!(chunks, [0, 2048, 4096, 6144]);
        assert_eq!(sock.counters().rx_frames, next_in as u64);
        assert_eq!(sock.counters().rx_bad_descs, 0);
        // The indices did cross 2^32.
        assert!(sock.rx.local < 1000);
    }

    #[test]
    fn rx_descriptor_outside_umem_is_counted_not_read() {
        let cfg = small_config();
        let mut sock = fake_socket(&cfg, 0);
        assert!(kernel_receive(&mut sock, b"ok"));
        assert!(kernel_receive(&mut sock, b"corrupt"));
        // A broken descriptor in place of the second frame.
        let last = sock.rx.producer().load(Ordering::Relaxed).wrapping_sub(1);
        sock.rx.set_desc_at(
            last,
            libc::xdp_desc {
                addr: u64::MAX - 10,
                len: 100,
                options: 0,
            },
        );
        let mut seen = Vec::new();
        assert_eq!(sock.recv_batch(8, |f| seen.push(f.to_vec())), 2);
        assert_eq!(seen, [b"ok".to_vec()]);
        assert_eq!(sock.counters().rx_bad_descs, 1);
        // Only the real frame went back to the fill ring.
        let fill = &sock.fill;
        let queued = RingIndex::filled(
            fill.producer().load(Ordering::Relaxed),
            fill.consumer().load(Ordering::Relaxed),
        );
        assert_eq!(queued, 3);
        assert!(kernel_receive(&mut sock, b"x"));
        assert_eq!(sock.recv_batch(8, |f| assert_eq!(f, b"x")), 1);
    }

    #[test]
    fn tx_frames_recycle_across_index_wrap() {
        let cfg = small_config();
        let mut sock = fake_socket(&cfg, u32::MAX - 1);
        let tx_frames = (cfg.frame_count - cfg.rx_frames) as usize;
        assert_eq!(sock.tx_free(), tx_frames);
        let mut wire = Vec::new();
        let mut sent = 0u32;
        for _ in 0..25 {
            // Fill every free frame; the next send finds nothing free.
            while sock.send_with(|buf| {
                assert_eq!(buf.len(), cfg.frame_size as usize);
                buf[..4].copy_from_slice(&sent.to_be_bytes());
                sent += 1;
                4
            }) {}
            assert!(!sock.send_with(|_| unreachable!("no frame is free")));
            assert_eq!(sock.tx_free(), 0);
            // Nothing reaches the wire before flush_tx publishes it.
            kernel_transmit(&mut sock, &mut wire);
            assert_eq!(wire.len() as u32 + tx_frames as u32, sent);
            sock.flush_tx();
            kernel_transmit(&mut sock, &mut wire);
            assert_eq!(wire.len() as u32, sent);
            // Completions come back lazily, on the next send_with.
            assert_eq!(sock.tx_free(), 0);
            sock.reclaim();
            assert_eq!(sock.tx_free(), tx_frames);
        }
        for (i, frame) in wire.iter().enumerate() {
            assert_eq!(frame[..], (i as u32).to_be_bytes());
        }
        let c = sock.counters();
        assert_eq!(c.tx_frames, sent as u64);
        assert_eq!(c.tx_completed, sent as u64);
        // Two refusals a round: the one ending the loop and the assert.
        assert_eq!(c.tx_full, 50);
        // Copy mode kicks on every flush; /dev/null refuses them.
        assert!(c.tx_kicks >= 25);
        assert!(sock.tx.local < 1000);
    }

    #[test]
    fn cancelled_send_returns_the_frame() {
        let cfg = small_config();
        let mut sock = fake_socket(&cfg, 0);
        let free = sock.tx_free();
        assert!(sock.send_with(|_| 0));
        assert_eq!(sock.tx_free(), free);
        sock.flush_tx();
        let mut wire = Vec::new();
        kernel_transmit(&mut sock, &mut wire);
        assert!(wire.is_empty());
        assert_eq!(sock.counters().tx_frames, 0);
    }

    #[test]
    fn send_reclaims_completions_when_out_of_frames() {
        let cfg = small_config();
        let mut sock = fake_socket(&cfg, 7);
        while sock.send_with(|buf| {
            buf[0] = 1;
            1
        }) {}
        sock.flush_tx();
        let mut wire = Vec::new();
        kernel_transmit(&mut sock, &mut wire);
        assert_eq!(sock.tx_free(), 0);
        // No explicit reclaim: send_with takes the completions itself.
        assert!(sock.send_with(|buf| {
            buf[0] = 2;
            1
        }));
        assert_eq!(sock.tx_free(), 3);
    }

    #[test]
    fn kernel_busy_poll_needs_a_napi_id() {
        let mut sock = fake_socket(&small_config(), 0);
        // /dev/null is no socket: no NAPI id, so no system call is made.
        assert_eq!(sock.refresh_napi_id(), 0);
        assert!(!sock.kernel_busy_poll());
        assert_eq!(sock.counters().busy_polls, 0);
        // With an id, every call is made and counted (the recvfrom on
        // /dev/null fails harmlessly).
        sock.napi_id = 7;
        assert!(sock.kernel_busy_poll());
        assert!(sock.kernel_busy_poll());
        assert_eq!(sock.counters().busy_polls, 2);
        assert!(sock.counters().as_pairs().contains(&("busy_polls", 2)));
        // A refresh that finds none turns the calls off again.
        assert_eq!(sock.refresh_napi_id(), 0);
        assert!(!sock.kernel_busy_poll());
    }

    #[test]
    fn refused_busy_poll_options_are_named() {
        let sock = fake_socket(&small_config(), 0);
        let e = sock.enable_kernel_busy_poll(50, 64).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("setting SO_PREFER_BUSY_POLL to 1:"),
            "{e:#}"
        );
    }

    #[test]
    fn rejects_bad_configs_and_interfaces() {
        for bad in [
            XskConfig {
                frame_size: 3000,
                ..XskConfig::default()
            },
            XskConfig {
                frame_size: 1024,
                ..XskConfig::default()
            },
            XskConfig {
                ring_size: 1000,
                ..XskConfig::default()
            },
            XskConfig {
                ring_size: 1024,
                ..XskConfig::default()
            },
            XskConfig {
                frame_count: 1,
                ..XskConfig::default()
            },
            XskConfig {
                rx_frames: 0,
                ..XskConfig::default()
            },
            XskConfig {
                rx_frames: 16384,
                ..XskConfig::default()
            },
            // 15,000 receive frames do not fit 8192-entry rings.
            XskConfig {
                rx_frames: 15000,
                ring_size: 8192,
                ..XskConfig::default()
            },
            // Nor 20,000 send frames 16,384-entry rings.
            XskConfig {
                frame_count: 24000,
                rx_frames: 4000,
                ..XskConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
            assert!(XskSocket::new("lo", 0, &bad).is_err());
        }
        XskConfig::default().validate().unwrap();
        let e = XskSocket::new("nosuchif0", 0, &XskConfig::default())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("does not exist"));
        assert!(XskSocket::new("bad\0name", 0, &XskConfig::default()).is_err());
        assert!(interface_queue_count("nosuchif0").is_err());
        assert!(interface_queue_count("lo").unwrap() >= 1);
    }
}
