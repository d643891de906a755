//! Forwarding received frames back out of the same socket without a copy:
//! the RX descriptor's UMEM frame goes straight onto the TX ring, and comes
//! back through the completion ring to the fill ring. Used by `tcp-user
//! reflect` (the raw AF_XDP ceiling: no TCP at all).
//!
//! Frame ownership in this mode: the receive half of the UMEM cycles
//! fill → RX → (edited in place) → TX → completion → fill. The send half
//! stays on the free list, untouched, so [`XskSocket::send_with`] and
//! [`XskSocket::reclaim`] must not be mixed with this on one socket
//! (reclaim would put RX frames on the TX free list).

use std::sync::atomic::Ordering;

use super::{RingIndex, XskSocket};

/// What one [`XskSocket::forward_in_place`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InPlaceBatch {
    /// RX descriptors taken (including those dropped or bad).
    pub received: u32,
    /// Frames put on the TX ring.
    pub forwarded: u32,
    /// Frames the callback refused, or descriptors outside the UMEM:
    /// returned to the fill ring unsent.
    pub dropped: u32,
    /// Sent frames taken back from the completion ring into the fill ring.
    pub completed: u32,
}

impl XskSocket {
    /// One in-place forwarding round: completions go back to the fill ring;
    /// then up to `max` received frames (never more than the TX ring has
    /// room for) are handed to `f`, which may rewrite each in place and
    /// returns true to send it back out (same UMEM frame, same length) or
    /// false to drop it; the TX ring is published and kicked once for the
    /// whole batch, and the fill ring woken if the kernel asked for it.
    pub fn forward_in_place(
        &mut self,
        max: usize,
        mut f: impl FnMut(&mut [u8]) -> bool,
    ) -> InPlaceBatch {
        let mut batch = InPlaceBatch {
            completed: self.completions_to_fill(),
            ..InPlaceBatch::default()
        };
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        let produced = self.rx.producer().load(Ordering::Acquire);
        let tx_cons = self.tx.consumer().load(Ordering::Acquire);
        // A dropped frame goes to the fill ring, which has room for every
        // RX frame; a forwarded one needs a TX slot.
        let n = RingIndex::filled(produced, self.rx.local)
            .min(max)
            .min(self.tx.index.free(self.tx.local, tx_cons));
        if n > 0 {
            let fill_cons = self.fill.consumer().load(Ordering::Acquire);
            let mut fill_room = self.fill.index.free(self.fill.local, fill_cons);
            let chunk_mask = !(self.frame_size as u64 - 1);
            for i in 0..n {
                let d = self.rx.desc_at(self.rx.local.wrapping_add(i));
                let send = match self.umem.frame_mut(d.addr, d.len as usize) {
                    Some(frame) => f(frame),
                    None => {
                        self.counters.rx_bad_descs += 1;
                        batch.dropped += 1;
                        continue;
                    }
                };
                if send {
                    let idx = self.tx.local;
                    self.tx.set_desc_at(idx, d);
                    self.tx.local = idx.wrapping_add(1);
                    batch.forwarded += 1;
                } else {
                    batch.dropped += 1;
                    if fill_room > 0 {
                        let idx = self.fill.local;
                        self.fill.set_addr_at(idx, d.addr & chunk_mask);
                        self.fill.local = idx.wrapping_add(1);
                        fill_room -= 1;
                    }
                }
            }
            batch.received = n;
            self.rx.local = self.rx.local.wrapping_add(n);
            self.rx.consumer().store(self.rx.local, Ordering::Release);
            self.fill
                .producer()
                .store(self.fill.local, Ordering::Release);
            self.counters.rx_frames += n as u64;
            self.counters.tx_frames += batch.forwarded as u64;
            self.tx_pending += batch.forwarded;
        }
        // Publishes the TX descriptors and kicks (always in copy mode).
        self.flush_tx();
        self.wake_rx_if_needed();
        batch
    }

    /// Moves every completed TX frame to the fill ring (room is certain:
    /// the fill ring holds all the frames that circulate).
    fn completions_to_fill(&mut self) -> u32 {
        let produced = self.comp.producer().load(Ordering::Acquire);
        let n = RingIndex::filled(produced, self.comp.local);
        if n == 0 {
            return 0;
        }
        let fill_cons = self.fill.consumer().load(Ordering::Acquire);
        let n = n.min(self.fill.index.free(self.fill.local, fill_cons));
        let chunk_mask = !(self.frame_size as u64 - 1);
        for i in 0..n {
            let addr = self.comp.addr_at(self.comp.local.wrapping_add(i));
            let idx = self.fill.local;
            self.fill.set_addr_at(idx, addr & chunk_mask);
            self.fill.local = idx.wrapping_add(1);
        }
        self.comp.local = self.comp.local.wrapping_add(n);
        self.comp
            .consumer()
            .store(self.comp.local, Ordering::Release);
        self.fill
            .producer()
            .store(self.fill.local, Ordering::Release);
        self.counters.tx_completed += n as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    // The fake kernel side of the rings is afxdp's own test fixture.
    use super::super::tests::{fake_socket, kernel_receive, kernel_transmit, small_config};
    use super::*;

    #[test]
    fn frames_go_out_in_place_and_return_to_fill_across_wrap() {
        let cfg = small_config();
        let mut sock = fake_socket(&cfg, u32::MAX - 3);
        let mut wire = Vec::new();
        let mut next = 0u32;
        for round in 0..30u32 {
            let k = 1 + round % 4;
            for _ in 0..k {
                assert!(
                    kernel_receive(&mut sock, &next.to_be_bytes()),
                    "fill starved"
                );
                next += 1;
            }
            // Odd numbers are refused; even ones are rewritten and sent.
            let b = sock.forward_in_place(64, |frame| {
                let v = u32::from_be_bytes(frame[..4].try_into().unwrap());
                frame[0] ^= 0xff;
                v % 2 == 0
            });
            assert_eq!(b.received, k);
            assert_eq!(b.forwarded + b.dropped, k);
            kernel_transmit(&mut sock, &mut wire);
            // The next round takes the completions back to the fill ring.
            let c = sock.forward_in_place(64, |_| unreachable!("nothing received"));
            assert_eq!((c.received, c.completed), (0, b.forwarded));
        }
        let expect: Vec<Vec<u8>> = (0..next)
            .filter(|v| v % 2 == 0)
            .map(|v| {
                let mut b = v.to_be_bytes();
                b[0] ^= 0xff;
                b.to_vec()
            })
            .collect();
        assert_eq!(wire, expect);
        // Every RX frame is back in the fill ring, each exactly once; the
        // send half was never touched.
        let fill = &sock.fill;
        let cons = fill.consumer().load(Ordering::Relaxed);
        let queued = RingIndex::filled(fill.producer().load(Ordering::Relaxed), cons);
        assert_eq!(queued, cfg.rx_frames);
        let mut chunks: Vec<u64> = (0..queued)
            .map(|i| fill.addr_at(cons.wrapping_add(i)))
            .collect();
        chunks.sort_unstable();
        assert_eq!(chunks, [0, 2048, 4096, 6144]);
        assert_eq!(sock.tx_free(), (cfg.frame_count - cfg.rx_frames) as usize);
        let c = sock.counters();
        assert_eq!(c.rx_frames, next as u64);
        assert_eq!(c.tx_frames, expect.len() as u64);
        assert_eq!(c.tx_completed, expect.len() as u64);
    }

    #[test]
    fn batch_is_bounded_by_tx_room() {
        let cfg = small_config();
        let mut sock = fake_socket(&cfg, 0);
        for i in 0..4u8 {
            assert!(kernel_receive(&mut sock, &[i]));
        }
        // The "kernel" sends nothing yet: the TX ring (4 slots) fills up.
        let b = sock.forward_in_place(2, |_| true);
        assert_eq!((b.received, b.forwarded), (2, 2));
        let b = sock.forward_in_place(64, |_| true);
        assert_eq!((b.received, b.forwarded), (2, 2));
        let mut wire = Vec::new();
        kernel_transmit(&mut sock, &mut wire);
        assert_eq!(wire, [[0u8], [1], [2], [3]]);
        let b = sock.forward_in_place(64, |_| true);
        assert_eq!((b.received, b.completed), (0, 4));
    }
}
