//! The one place the XDP program touches packet memory. Every access is
//! checked against `data_end` right where it happens, in the form the
//! verifier can follow.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use core::mem::size_of;

/// Largest block handed to `bpf_csum_diff` at once: kernels before 6.13
/// sum through a 512-byte per-CPU scratch buffer and refuse more.
const CSUM_BLOCK: usize = 512;
/// Full blocks a 1480-byte segment can hold.
const MAX_FULL_BLOCKS: usize = 2;

pub struct Packet<'a> {
    ctx: &'a XdpContext,
    start: usize,
    end: usize,
}

impl<'a> Packet<'a> {
    pub fn new(ctx: &'a XdpContext) -> Self {
        Packet {
            ctx,
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    pub fn rx_queue_index(&self) -> u32 {
        self.ctx.rx_queue_index()
    }

    /// A header of type `T` at `offset`, if the packet holds all of it.
    /// `T` must be a plain byte-array struct (alignment 1).
    pub fn header<T: bytemuck_free::ByteStruct>(&self, offset: usize) -> Option<&'a T> {
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        // Safety: [at, at + size_of::<T>()) lies inside the packet (checked
        // just above against data_end, which the verifier tracks), T has
        // alignment 1 and no invalid bit patterns, and the packet outlives
        // the program invocation that borrows the context.
        Some(unsafe { &*(at as *const T) })
    }

    fn word(&self, offset: usize) -> Option<u32> {
        let b = self.header::<[u8; 2]>(offset)?;
        Some(u16::from_be_bytes(*b) as u32)
    }

    /// Whether the IPv4 header at `offset` (of `ihl` bytes, at most 60)
    /// sums to 0xffff.
    pub fn ipv4_header_checksum_ok(&self, offset: usize, ihl: usize) -> bool {
        let mut sum = 0u32;
        for i in 0..30 {
            if i * 2 >= ihl {
                break;
            }
            match self.word(offset + i * 2) {
                Some(w) => sum += w,
                None => return false,
            }
        }
        fold(sum) == 0xffff
    }

    /// Whether `len` bytes at `offset` plus the pseudo-header sum give a
    /// valid Internet checksum. None if the packet is shorter than `len`
    /// (`len` is at most 1480; the caller drops longer segments).
    pub fn checksum_ok(&self, offset: usize, len: usize, pseudo: u32) -> Option<bool> {
        // The whole 32-bit words go to the kernel's csum_partial through
        // bpf_csum_diff (no "from" buffer, the packet as "to": the plain
        // one's complement sum, chained through the seed): a few helper
        // calls instead of a byte loop of up to 185 rounds in the JIT.
        // Each block has a constant size, so each is one bounds check the
        // verifier can follow: up to two of 512 bytes, then one of each
        // power of two from 256 down to 4 that the rest needs.
        let words = len & !3;
        let mut at = offset;
        let mut native = 0u32;
        for _ in 0..MAX_FULL_BLOCKS {
            if words - (at - offset) < CSUM_BLOCK {
                break;
            }
            native = self.sum_block::<CSUM_BLOCK>(at, native)?;
            at += CSUM_BLOCK;
        }
        let rest = words - (at - offset);
        macro_rules! block {
            ($n:literal) => {
                if rest & $n != 0 {
                    native = self.sum_block::<$n>(at, native)?;
                    at += $n;
                }
            };
        }
        block!(256);
        block!(128);
        block!(64);
        block!(32);
        block!(16);
        block!(8);
        block!(4);
        // csum_partial adds the words as the CPU loads them. The one's
        // complement sum commutes with swapping the two bytes of every
        // word (RFC 1071 §2(B)), so the folded native sum, read big-endian,
        // is the sum of the big-endian words.
        let mut sum = pseudo + u16::from_be(fold(native) as u16) as u32;
        // Up to one 16-bit word and one odd byte left.
        if len & 2 != 0 {
            sum += self.word(at)?;
        }
        if len % 2 == 1 {
            let mut last = [0u8; 1];
            let at = offset + len - 1;
            // Safety: the helper copies one byte into our stack buffer and
            // checks the offset against the packet itself.
            let rc = unsafe {
                bpf_xdp_load_bytes(self.ctx.ctx, at as u32, last.as_mut_ptr() as *mut _, 1)
            };
            if rc != 0 {
                return None;
            }
            sum += (last[0] as u32) << 8;
        }
        Some(fold(sum) == 0xffff)
    }

    /// The one's complement sum of the `N` bytes at `offset` (`N` a
    /// multiple of 4, at most 512) added to `seed`, in the CPU's byte
    /// order. None if the packet is shorter.
    fn sum_block<const N: usize>(&self, offset: usize, seed: u32) -> Option<u32> {
        let block = self.header::<[u8; N]>(offset)?;
        // Safety: `block` is N bytes inside the packet (checked against
        // data_end by `header`); the helper only reads "to" (the "from"
        // side is empty), and N is a constant multiple of 4 within the
        // helper's 512-byte limit.
        let rc = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                block.as_ptr() as *mut _,
                N as u32,
                seed,
            )
        };
        // A negative return is an error (bad size); never with these sizes.
        u32::try_from(rc).ok()
    }
}

fn fold(mut sum: u32) -> u32 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum
}

/// Marker for the byte-array header structs the helper may view.
pub mod bytemuck_free {
    /// Types made only of `u8` arrays: alignment 1, any bit pattern valid.
    pub trait ByteStruct {}
    impl ByteStruct for tcp_common::EthHdr {}
    impl ByteStruct for tcp_common::Ipv4Hdr {}
    impl ByteStruct for tcp_common::TcpHdr {}
    impl<const N: usize> ByteStruct for [u8; N] {}
}
