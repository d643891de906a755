//! Sequence numbers: 32-bit, compared modulo 2^32 (RFC 9293 §3.4).
//!
//! "It is essential to remember that the actual sequence number space is
//! finite, though very large ... all arithmetic dealing with sequence numbers
//! must be performed modulo 2**32." There is deliberately no `PartialOrd`:
//! the order of two sequence numbers only makes sense when they are less
//! than 2^31 apart, and the methods below say so at every use.

use core::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNum(u32);

impl SeqNum {
    pub const fn new(v: u32) -> Self {
        SeqNum(v)
    }
    pub const fn get(self) -> u32 {
        self.0
    }
    /// `self - other` as a signed distance.
    pub fn diff(self, other: SeqNum) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }
    pub fn lt(self, other: SeqNum) -> bool {
        self.diff(other) < 0
    }
    pub fn le(self, other: SeqNum) -> bool {
        self.diff(other) <= 0
    }
    pub fn gt(self, other: SeqNum) -> bool {
        self.diff(other) > 0
    }
    pub fn ge(self, other: SeqNum) -> bool {
        self.diff(other) >= 0
    }
    /// The later of two sequence numbers.
    pub fn max(self, other: SeqNum) -> SeqNum {
        if self.ge(other) {
            self
        } else {
            other
        }
    }
    /// Whether `self` lies in `[start, end)`.
    pub fn in_range(self, start: SeqNum, end: SeqNum) -> bool {
        start.le(self) && self.lt(end)
    }
}

impl core::ops::Add<u32> for SeqNum {
    type Output = SeqNum;
    fn add(self, n: u32) -> SeqNum {
        SeqNum(self.0.wrapping_add(n))
    }
}

impl core::ops::AddAssign<u32> for SeqNum {
    fn add_assign(&mut self, n: u32) {
        self.0 = self.0.wrapping_add(n);
    }
}

impl core::ops::Sub<u32> for SeqNum {
    type Output = SeqNum;
    fn sub(self, n: u32) -> SeqNum {
        SeqNum(self.0.wrapping_sub(n))
    }
}

impl fmt::Debug for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps() {
        let a = SeqNum::new(u32::MAX - 5);
        let b = a + 10;
        assert_eq!(b.get(), 4);
        assert!(a.lt(b));
        assert!(b.gt(a));
        assert_eq!(b.diff(a), 10);
        assert!(SeqNum::new(2).in_range(a, b));
        assert!(!b.in_range(a, b));
    }

    proptest! {
        #[test]
        fn order_is_consistent_across_wrap(x in any::<u32>(), d in 1u32..(1 << 31)) {
            let a = SeqNum::new(x);
            let b = a + d;
            prop_assert!(a.lt(b));
            prop_assert!(b.gt(a));
            prop_assert!(!b.lt(a));
            prop_assert!(a.le(a) && a.ge(a));
            prop_assert_eq!(b.diff(a), d as i32);
            prop_assert_eq!(b - d, a);
            prop_assert_eq!(a.max(b), b);
        }

        #[test]
        fn in_range_matches_offsets(x in any::<u32>(), len in 1u32..100_000, off in 0u32..200_000) {
            let start = SeqNum::new(x);
            prop_assert_eq!((start + off).in_range(start, start + len), off < len);
        }
    }
}
