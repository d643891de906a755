//! The one place the XDP program touches packet memory. Every access is
//! checked against `data_end` right where it happens, in the form the
//! verifier can follow.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use core::mem::size_of;

/// Eight-byte rounds the checksum loop may take: 1480 bytes of TCP.
const MAX_QUADS: usize = 185;

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
    /// valid Internet checksum. None if the packet is shorter than `len`.
    pub fn checksum_ok(&self, offset: usize, len: usize, pseudo: u32) -> Option<bool> {
        // Eight bytes per round, one bounds check each: the bytes at even
        // offsets are the high halves of the 16-bit words, the odd ones the
        // low halves, so two plain byte sums make the one's complement sum
        // (at most 1480 * 255 * 256, far from overflowing u32).
        let (mut high, mut low) = (0u32, 0u32);
        let quads = len / 8;
        // The offset grows with the loop counter only, so the verifier sees
        // a bounded, checked access each time round.
        for i in 0..MAX_QUADS {
            if i >= quads {
                break;
            }
            let b = self.header::<[u8; 8]>(offset + i * 8)?;
            high += b[0] as u32 + b[2] as u32 + b[4] as u32 + b[6] as u32;
            low += b[1] as u32 + b[3] as u32 + b[5] as u32 + b[7] as u32;
        }
        let mut sum = pseudo + (high << 8) + low;
        // Up to three words left.
        let tail = offset + quads * 8;
        let words = (len % 8) / 2;
        for j in 0..3 {
            if j >= words {
                break;
            }
            sum += self.word(tail + j * 2)?;
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
