//! The connection table: a slab indexed by the connection id, so that a
//! segment costs one hash lookup (its 4-tuple) and every later access to
//! its connection is an array index.

use super::conn::Conn;
use super::{ConnId, Instant};

struct Slot {
    /// Bumped each time the slot is freed: an old id never finds a newer
    /// connection in the same slot.
    generation: u32,
    conn: Option<Conn>,
}

/// Connections by id. Ids are `generation << 32 | slot`.
#[derive(Default)]
pub(crate) struct ConnTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    len: usize,
}

fn split(id: ConnId) -> (usize, u32) {
    ((id.0 & 0xffff_ffff) as usize, (id.0 >> 32) as u32)
}

impl ConnTable {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores the connection `make` builds for the id it is given.
    pub fn insert_with(&mut self, make: impl FnOnce(ConnId) -> Conn) -> ConnId {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.slots.push(Slot {
                    generation: 1,
                    conn: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        let id = ConnId((slot.generation as u64) << 32 | index as u64);
        slot.conn = Some(make(id));
        self.len += 1;
        id
    }

    pub fn get(&self, id: &ConnId) -> Option<&Conn> {
        let (i, generation) = split(*id);
        let slot = self.slots.get(i)?;
        if slot.generation != generation {
            return None;
        }
        slot.conn.as_ref()
    }

    pub fn get_mut(&mut self, id: &ConnId) -> Option<&mut Conn> {
        let (i, generation) = split(*id);
        let slot = self.slots.get_mut(i)?;
        if slot.generation != generation {
            return None;
        }
        slot.conn.as_mut()
    }

    pub fn remove(&mut self, id: &ConnId) -> Option<Conn> {
        let (i, generation) = split(*id);
        let slot = self.slots.get_mut(i)?;
        if slot.generation != generation {
            return None;
        }
        let conn = slot.conn.take()?;
        slot.generation = slot.generation.wrapping_add(1).max(1);
        self.free.push(i as u32);
        self.len -= 1;
        Some(conn)
    }

    pub fn values(&self) -> impl Iterator<Item = &Conn> {
        self.slots.iter().filter_map(|s| s.conn.as_ref())
    }
}

/// The connections' timers: a binary min-heap of (deadline, connection)
/// holding at most one entry per connection, with each entry's heap
/// position kept by the connection's slot index, so that re-arming a
/// timer moves its entry in place and closing a connection takes its
/// entry out (O(log n) each). Nothing is left behind for a closed
/// connection, and the heap never holds more entries than there are
/// connections with a timer armed.
#[derive(Default)]
pub(crate) struct TimerHeap {
    heap: Vec<(Instant, ConnId)>,
    /// By slot index: the position of that slot's entry in `heap`, or
    /// `NONE`.
    pos: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl TimerHeap {
    /// How many entries the heap holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// The earliest entry.
    pub fn peek(&self) -> Option<(Instant, ConnId)> {
        self.heap.first().copied()
    }

    /// The deadline `id` has in the heap, if any.
    #[cfg(test)]
    pub fn get(&self, id: ConnId) -> Option<Instant> {
        let p = self.position(id)?;
        Some(self.heap[p].0)
    }

    /// Arms `id`'s timer at `at`, moving its entry if it has one.
    pub fn set(&mut self, id: ConnId, at: Instant) {
        let (slot, _) = split(id);
        if slot >= self.pos.len() {
            self.pos.resize(slot + 1, NONE);
        }
        let p = self.pos[slot];
        if p == NONE {
            self.heap.push((at, id));
            let p = self.heap.len() - 1;
            self.pos[slot] = p as u32;
            self.sift_up(p);
            return;
        }
        // The slot's entry; an older connection's id in the same slot
        // (it should have been removed when it closed) is replaced.
        let p = p as usize;
        let old = self.heap[p];
        self.heap[p] = (at, id);
        if (at, id) < old {
            self.sift_up(p);
        } else {
            self.sift_down(p);
        }
    }

    /// Disarms `id`'s timer; false if it had none.
    pub fn remove(&mut self, id: ConnId) -> bool {
        let Some(p) = self.position(id) else {
            return false;
        };
        self.take(p);
        true
    }

    /// Removes and returns the earliest entry.
    pub fn pop(&mut self) -> Option<(Instant, ConnId)> {
        if self.heap.is_empty() {
            return None;
        }
        Some(self.take(0))
    }

    fn position(&self, id: ConnId) -> Option<usize> {
        let (slot, _) = split(id);
        let p = *self.pos.get(slot)?;
        if p == NONE || self.heap[p as usize].1 != id {
            return None;
        }
        Some(p as usize)
    }

    /// Takes out the entry at `p`, filling the hole with the last entry.
    fn take(&mut self, p: usize) -> (Instant, ConnId) {
        let last = self.heap.len() - 1;
        self.heap.swap(p, last);
        let e = self.heap.pop().expect("non-empty");
        self.pos[split(e.1).0] = NONE;
        if p < self.heap.len() {
            self.pos[split(self.heap[p].1).0] = p as u32;
            if p > 0 && self.heap[p] < self.heap[(p - 1) / 2] {
                self.sift_up(p);
            } else {
                self.sift_down(p);
            }
        }
        e
    }

    fn sift_up(&mut self, mut p: usize) {
        let e = self.heap[p];
        while p > 0 {
            let parent = (p - 1) / 2;
            if self.heap[parent] <= e {
                break;
            }
            self.heap[p] = self.heap[parent];
            self.pos[split(self.heap[p].1).0] = p as u32;
            p = parent;
        }
        self.heap[p] = e;
        self.pos[split(e.1).0] = p as u32;
    }

    fn sift_down(&mut self, mut p: usize) {
        let e = self.heap[p];
        let n = self.heap.len();
        loop {
            let l = 2 * p + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.heap[r] < self.heap[l] {
                r
            } else {
                l
            };
            if e <= self.heap[c] {
                break;
            }
            self.heap[p] = self.heap[c];
            self.pos[split(self.heap[p].1).0] = p as u32;
            p = c;
        }
        self.heap[p] = e;
        self.pos[split(e.1).0] = p as u32;
    }
}

impl std::ops::Index<&ConnId> for ConnTable {
    type Output = Conn;
    fn index(&self, id: &ConnId) -> &Conn {
        self.get(id).expect("no such connection")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::conn::{SynSent, Tcb};
    use crate::tcp::{Config, FourTuple, Instant};
    use std::net::SocketAddrV4;

    fn conn(id: ConnId) -> Conn {
        let t = FourTuple {
            local: SocketAddrV4::new([198, 18, 0, 1].into(), 1),
            remote: SocketAddrV4::new([198, 18, 0, 2].into(), 2),
        };
        let snd = crate::tcp::conn::Send::new(Default::default(), &Config::default());
        Conn::new(id, t, Tcb::SynSent(SynSent { snd }), Instant::ZERO)
    }

    #[test]
    fn stale_ids_do_not_find_a_reused_slot() {
        let mut t = ConnTable::default();
        let a = t.insert_with(conn);
        assert_eq!(t.get(&a).unwrap().id, a);
        assert!(t.remove(&a).is_some());
        assert!(t.remove(&a).is_none());
        let b = t.insert_with(conn);
        assert_ne!(a, b);
        assert!(t.get(&a).is_none());
        assert_eq!(t[&b].id, b);
        assert_eq!(t.len(), 1);
        assert_eq!(t.values().count(), 1);
    }

    fn at(us: u64) -> Instant {
        Instant::ZERO + std::time::Duration::from_micros(us)
    }

    /// Checks the heap property and that every position is right.
    fn check(h: &TimerHeap) {
        for (i, e) in h.heap.iter().enumerate() {
            if i > 0 {
                assert!(h.heap[(i - 1) / 2] <= *e, "heap order at {i}");
            }
            assert_eq!(h.pos[split(e.1).0], i as u32, "position of {:?}", e.1);
        }
        let live = h.pos.iter().filter(|&&p| p != NONE).count();
        assert_eq!(live, h.heap.len());
    }

    #[test]
    fn timer_heap_keeps_one_entry_per_connection_and_drops_closed_ones() {
        let mut t = ConnTable::default();
        let mut h = TimerHeap::default();
        let ids: Vec<ConnId> = (0..64).map(|_| t.insert_with(conn)).collect();
        // Armed, then re-armed later and earlier many times over: still one
        // entry each.
        for round in 0..10u64 {
            for (i, &id) in ids.iter().enumerate() {
                let i = i as u64;
                let d = if round % 2 == 0 {
                    1000 + i * 7 % 13
                } else {
                    500 - i
                };
                h.set(id, at(d + round));
                check(&h);
            }
        }
        assert_eq!(h.len(), ids.len());
        // Closing half of them takes their entries out.
        for &id in ids.iter().step_by(2) {
            assert!(h.remove(id));
            assert!(!h.remove(id));
            assert_eq!(h.get(id), None);
            t.remove(&id);
            check(&h);
        }
        assert_eq!(h.len(), ids.len() / 2);
        // A new connection reusing a freed slot does not see the old entry.
        let reused = t.insert_with(conn);
        assert_eq!(h.get(reused), None);
        h.set(reused, at(1));
        assert_eq!(h.peek(), Some((at(1), reused)));
        check(&h);
        // Popped in deadline order, ties by id (as the old heap did).
        let mut last = (Instant::ZERO, ConnId(0));
        let mut n = 0;
        while let Some(e) = h.pop() {
            assert!(e >= last);
            last = e;
            n += 1;
            check(&h);
        }
        assert_eq!(n, ids.len() / 2 + 1);
        assert!(h.pos.iter().all(|&p| p == NONE));
    }

    #[test]
    fn timer_heap_does_not_grow_under_connection_churn() {
        let mut t = ConnTable::default();
        let mut h = TimerHeap::default();
        let mut open = std::collections::VecDeque::new();
        // 10,000 short connections, 16 open at a time, each armed a few
        // times (SYN-ACK, delayed ACK, RTO) and closed with a timer armed.
        for k in 0..10_000u64 {
            let id = t.insert_with(conn);
            h.set(id, at(k + 200_000));
            h.set(id, at(k + 40_000));
            h.set(id, at(k + 20_000));
            open.push_back(id);
            if open.len() > 16 {
                let old = open.pop_front().unwrap();
                h.remove(old);
                t.remove(&old);
            }
            assert!(h.len() <= 17);
        }
        check(&h);
        assert_eq!(h.len(), open.len());
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// What an idle connection costs beyond its (lazily allocated) buffers:
    /// its slot (the congestion controller is inline). The target is 2 KiB.
    #[test]
    fn an_idle_connection_stays_under_2_kib() {
        let slot = std::mem::size_of::<Slot>();
        eprintln!(
            "slot {slot} bytes, conn {} bytes",
            std::mem::size_of::<Conn>()
        );
        assert!(slot <= 2048, "slot {slot}");
    }
}
