//! The connection table: a slab indexed by the connection id, so that a
//! segment costs one hash lookup (its 4-tuple) and every later access to
//! its connection is an array index.

use super::conn::Conn;
use super::ConnId;

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
}

#[cfg(test)]
mod size {
    use super::*;

    /// What an idle connection costs beyond its (lazily allocated) buffers:
    /// its slot, plus the congestion controller's box. The target is 2 KiB.
    #[test]
    fn an_idle_connection_stays_under_2_kib() {
        let slot = std::mem::size_of::<Slot>();
        let cc = std::mem::size_of::<crate::tcp::cc::Cubic>();
        eprintln!(
            "slot {slot} bytes, conn {} bytes, cubic {cc} bytes",
            std::mem::size_of::<Conn>()
        );
        assert!(slot + cc <= 2048, "slot {slot} + cc {cc}");
    }
}
