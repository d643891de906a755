//! The connection table and segment arrival processing (RFC 9293 §3.10).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::Duration;

use foldhash::fast::SeedableRandomState;
use foldhash::SharedSeed;
use siphasher::sip::SipHasher24;
use tcp_common::tcp_flags::{ACK, FIN, RST, SYN};

use super::conn::{
    delayed_ack_timeout, CloseWait, Conn, EmitStats, Established, Recv, Send, SynReceived, SynSent,
    Tcb, TimerKind, Timestamps, PAWS_IDLE,
};
use super::seq::SeqNum;
use super::table::{ConnTable, TimerHeap};
use super::{Config, ConnId, ConnInfo, Error, Event, FourTuple, Instant, State, Transmit};
use crate::wire::{ChecksumVerified, TcpOptions, TcpRepr, WireError};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        #[derive(Default, Debug)]
        struct Counters { $($name: u64),* }
        impl Counters {
            fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name)),*]
            }
        }
    };
}

counters! {
    segments_in,
    segments_out,
    retransmits,
    fast_retransmits,
    tail_loss_probes,
    rto_expirations,
    rto_in_recovery,
    rto_repeated,
    rto_undone,
    recovery_undone,
    persist_probes,
    rst_sent,
    rst_received,
    challenge_acks,
    challenge_acks_suppressed,
    oow_acks_suppressed,
    drop_bad_checksum,
    drop_malformed,
    drop_no_listener,
    drop_not_acceptable,
    drop_out_of_order,
    out_of_order_held,
    drop_table_full,
    drop_bad_flags,
    drop_old_ack,
    drop_paws,
    dup_below_rcv_nxt,
    conns_accepted,
    conns_connected,
    conns_closed,
    conns_reset,
    conns_timed_out,
}

/// RFC 9293 §3.10.7.4, the four cases of the acceptance test:
///
/// | Segment length | Receive window | Test                                       |
/// |----------------|----------------|--------------------------------------------|
/// | 0              | 0              | SEG.SEQ = RCV.NXT                          |
/// | 0              | >0             | RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND       |
/// | >0             | 0              | not acceptable                             |
/// | >0             | >0             | the first or the last byte in the window   |
pub(crate) fn segment_acceptable(rcv_nxt: SeqNum, wnd: u32, seq: SeqNum, seg_len: u32) -> bool {
    match (seg_len, wnd) {
        (0, 0) => seq == rcv_nxt,
        (0, _) => seq.in_range(rcv_nxt, rcv_nxt + wnd),
        (_, 0) => false,
        (_, _) => {
            seq.in_range(rcv_nxt, rcv_nxt + wnd)
                || (seq + seg_len - 1).in_range(rcv_nxt, rcv_nxt + wnd)
        }
    }
}

/// The timestamps state after the peer's SYN (RFC 7323 §3.2: in use only
/// when both SYNs carried the option; TS.Recent starts at the SYN's TSval).
fn negotiated_timestamps(snd: &Send, seg: &TcpRepr<'_>, now: Instant) -> Option<Timestamps> {
    let offset = snd.ts_offset?;
    let (tsval, _) = seg.options.timestamps?;
    Some(Timestamps {
        offset,
        recent: tsval,
        recent_at: now,
    })
}

/// The hasher of the flow table (and of the listener set): foldhash's
/// fast variant, keyed with secrets drawn from the OS.
///
/// Every arriving segment costs one lookup of its 4-tuple, so the hash is
/// on the per-segment path; SipHash-1-3 (std's default) cost about 190
/// instructions a segment there (callgrind, `corebench rr`). The 4-tuple
/// is chosen by the peer, so the hash must stay keyed with a secret the
/// peer does not know (an unkeyed FxHash would let anyone send SYNs from
/// colliding tuples and make every lookup a long probe). For our 12-byte
/// key (`FourTuple::hash` writes a u64 and a u32) foldhash-f is a single
/// folded multiply `fold((ips ^ s0) * (ports ^ s1))` with two 64-bit
/// secrets: s0 the per-table seed, s1 from the per-process `SharedSeed`.
///
/// Both secrets come from std's `RandomState` (keys from the OS's
/// getrandom), not from foldhash's own global seed (which mixes ASLR
/// addresses and the clock: weaker than we want for a network-facing
/// table). Foldhash claims only minimal DoS resistance: an attacker who
/// can read hash values or a table's iteration order can recover the
/// secrets. Neither leaks here: these tables are never iterated and no
/// hash is exposed. What is left is timing: inferring 128 secret bits
/// from lookups that differ by a probe of a cache line or two, seen
/// across a network, which we take to be impractical; and even then the
/// damage is bounded: `max_connections` caps the table, and a lookup
/// among colliding tuples is linear in their number.
type FlowHasher = SeedableRandomState;

/// 64 bits the peer cannot predict: std's `RandomState` keys SipHash with
/// 128 bits from the OS (per thread, then stepped per `new`), so the hash
/// of a constant under a fresh one is a fresh secret.
fn os_random_u64() -> u64 {
    std::hash::RandomState::new().hash_one(0x7463_705f_666c_6f77_u64)
}

/// A flow-table hasher with a fresh per-table seed and the per-process
/// shared seed.
fn flow_hasher() -> FlowHasher {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(os_random_u64()));
    FlowHasher::with_seed(os_random_u64(), shared)
}

/// A reset to send for a segment that matched no connection.
struct PendingRst {
    tuple: FourTuple,
    seq: SeqNum,
    ack: SeqNum,
    flags: u8,
}

/// All connections and listeners of one endpoint.
pub struct Stack {
    cfg: Config,
    conns: ConnTable,
    /// The flow table: one lookup per arriving segment.
    by_tuple: HashMap<FourTuple, ConnId, FlowHasher>,
    listeners: HashSet<SocketAddrV4, FlowHasher>,
    events: VecDeque<Event>,
    counters: Counters,
    /// (deadline, connection): one entry per connection with a timer
    /// armed, moved in place when re-armed, taken out when it closes.
    timers: TimerHeap,
    /// Connections that may have something to send.
    tx_queue: VecDeque<ConnId>,
    resets: VecDeque<PendingRst>,
    /// RFC 5961 §7: challenge ACKs sent in the current one-second window.
    challenge_window: (Instant, u32),
}

impl Stack {
    /// A stack with no listeners and no connections.
    pub fn new(config: Config) -> Self {
        Stack {
            cfg: config,
            conns: ConnTable::default(),
            by_tuple: HashMap::with_hasher(flow_hasher()),
            listeners: HashSet::with_hasher(flow_hasher()),
            events: VecDeque::new(),
            counters: Counters::default(),
            timers: TimerHeap::default(),
            tx_queue: VecDeque::new(),
            resets: VecDeque::new(),
            challenge_window: (Instant::ZERO, 0),
        }
    }

    /// Start accepting connections on `local` (an unspecified IP accepts any).
    pub fn listen(&mut self, local: SocketAddrV4) -> Result<(), Error> {
        if !self.listeners.insert(local) {
            return Err(Error::InUse);
        }
        Ok(())
    }

    /// Stops accepting on `local`; connections already open carry on.
    pub fn unlisten(&mut self, local: SocketAddrV4) -> bool {
        self.listeners.remove(&local)
    }

    /// Active open: send a SYN to `remote` from `local` (CLOSED → SYN-SENT).
    pub fn connect(
        &mut self,
        now: Instant,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<ConnId, Error> {
        let tuple = FourTuple { local, remote };
        if self.by_tuple.contains_key(&tuple) {
            return Err(Error::InUse);
        }
        if self.conns.len() >= self.cfg.max_connections {
            return Err(Error::Full);
        }
        let iss = self.isn(now, &tuple);
        let snd = Send::new(iss, &self.cfg);
        let id = self.conns.insert_with(|id| {
            let mut c = Conn::new(id, tuple, Tcb::SynSent(SynSent { snd }), now);
            c.known_to_app = true;
            c
        });
        self.by_tuple.insert(tuple, id);
        self.after(id);
        Ok(id)
    }

    /// RFC 6528: ISN = M + F(localip, localport, remoteip, remoteport,
    /// secretkey), M a 4 µs timer and F a keyed hash (SipHash-2-4 here).
    fn isn(&self, now: Instant, t: &FourTuple) -> SeqNum {
        let mut h = SipHasher24::new_with_key(&self.cfg.isn_secret);
        h.write(&t.local.ip().octets());
        h.write(&t.local.port().to_be_bytes());
        h.write(&t.remote.ip().octets());
        h.write(&t.remote.port().to_be_bytes());
        let m = (now.as_micros() / 4) as u32;
        SeqNum::new((h.finish() as u32).wrapping_add(m))
    }

    fn listening(&self, local: SocketAddrV4) -> bool {
        self.listeners.contains(&local)
            || self
                .listeners
                .contains(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, local.port()))
    }

    /// A segment arrived from `src` to `dst`; its checksum is verified
    /// here (for segments that did not come through the XDP program: the
    /// simulator, tests).
    pub fn handle_segment(&mut self, now: Instant, src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) {
        self.counters.segments_in += 1;
        self.arrival(now, src, dst, TcpRepr::parse(src, dst, segment));
    }

    /// A segment arrived from `src` to `dst` whose checksum the XDP
    /// program has already verified (the driver's path: every frame on an
    /// AF_XDP socket passed the program's checksum check).
    pub fn handle_verified_segment(
        &mut self,
        now: Instant,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        segment: ChecksumVerified<'_>,
    ) {
        self.counters.segments_in += 1;
        self.arrival(now, src, dst, TcpRepr::parse_verified(segment));
    }

    fn arrival(
        &mut self,
        now: Instant,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        parsed: Result<TcpRepr<'_>, WireError>,
    ) {
        let seg = match parsed {
            Ok(s) => s,
            Err(WireError::BadChecksum) => {
                self.counters.drop_bad_checksum += 1;
                return;
            }
            Err(_) => {
                self.counters.drop_malformed += 1;
                return;
            }
        };
        let tuple = FourTuple {
            local: SocketAddrV4::new(dst, seg.dst_port),
            remote: SocketAddrV4::new(src, seg.src_port),
        };
        if seg.src_port == 0 || seg.dst_port == 0 {
            self.counters.drop_malformed += 1;
            return;
        }
        match self.by_tuple.get(&tuple).copied() {
            Some(id) => self.segment_for_conn(now, id, &seg),
            None => self.segment_without_conn(now, tuple, &seg),
        }
    }

    /// RFC 9293 §3.10.7.1 (CLOSED) and §3.10.7.2 (LISTEN).
    fn segment_without_conn(&mut self, now: Instant, tuple: FourTuple, seg: &TcpRepr<'_>) {
        // "An incoming segment containing a RST is discarded."
        if seg.has(RST) {
            return;
        }
        if !self.listening(tuple.local) {
            self.counters.drop_no_listener += 1;
            self.reset_for(tuple, seg);
            return;
        }
        // LISTEN: "Any acknowledgment is bad if it arrives on a connection
        // still in the LISTEN state. An acceptable reset segment should be
        // formed for any arriving ACK-bearing segment."
        if seg.has(ACK) {
            self.reset_for(tuple, seg);
            return;
        }
        if !seg.has(SYN) {
            // "Any other control or text-bearing segment ... drop it."
            self.counters.drop_bad_flags += 1;
            return;
        }
        if seg.has(FIN) {
            // SYN+FIN is never produced by a sane stack; Linux drops it too.
            self.counters.drop_bad_flags += 1;
            return;
        }
        if self.conns.len() >= self.cfg.max_connections {
            self.counters.drop_table_full += 1;
            return;
        }
        // "Set RCV.NXT to SEG.SEQ+1, IRS is set to SEG.SEQ, ... ISS should
        // be selected and a SYN segment sent of the form
        // <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK>."
        let iss = self.isn(now, &tuple);
        let mut snd = Send::new(iss, &self.cfg);
        let shift = snd.learn_from_syn(seg);
        let mut rcv = Recv::new(seg.seq, &self.cfg);
        rcv.rcv_wscale = shift;
        rcv.sack_ok = snd.sack_offer;
        rcv.ts = negotiated_timestamps(&snd, seg, now);
        let id = self.conns.insert_with(|id| {
            Conn::new(
                id,
                tuple,
                Tcb::SynReceived(SynReceived {
                    snd,
                    rcv,
                    passive: true,
                }),
                now,
            )
        });
        // The tuple's second hash and probe (the first was the miss in
        // `arrival`): on the SYN path only, and one multiply with foldhash;
        // keeping the slot from the miss would need hashbrown's raw table.
        self.by_tuple.insert(tuple, id);
        self.after(id);
    }

    /// "If the incoming segment has an ACK field, the reset takes its
    /// sequence number from the ACK field of the segment, otherwise the
    /// reset has sequence number zero and the ACK field is set to the sum
    /// of the sequence number and segment length of the incoming segment."
    fn reset_for(&mut self, tuple: FourTuple, seg: &TcpRepr<'_>) {
        let rst = if seg.has(ACK) {
            PendingRst {
                tuple,
                seq: seg.ack,
                ack: SeqNum::default(),
                flags: RST,
            }
        } else {
            PendingRst {
                tuple,
                seq: SeqNum::default(),
                ack: seg.seq + seg.seg_len(),
                flags: RST | ACK,
            }
        };
        // Bounded: a flood of strays cannot grow memory without limit.
        if self.resets.len() < 4096 {
            self.resets.push_back(rst);
        }
    }

    fn segment_for_conn(&mut self, now: Instant, id: ConnId, seg: &TcpRepr<'_>) {
        let c = &self.conns[&id];
        match &c.tcb {
            Tcb::SynSent(_) => self.syn_sent_arrival(now, id, seg),
            Tcb::TimeWait(tw) if seg.has(SYN) && !seg.has(ACK) && !seg.has(RST) => {
                // RFC 6191 / RFC 9293 §3.6.1: a new SYN may reopen a
                // TIME-WAIT 4-tuple when its sequence number is beyond the
                // old connection's, so old duplicates cannot be confused.
                if seg.seq.gt(tw.rcv.rcv_nxt) && self.listening(c.tuple.local) {
                    let tuple = c.tuple;
                    self.remove(id, None);
                    self.segment_without_conn(now, tuple, seg);
                } else {
                    self.conns.get_mut(&id).expect("exists").ack_now();
                    self.after(id);
                }
            }
            _ => self.synchronized_arrival(now, id, seg),
        }
    }

    /// RFC 9293 §3.10.7.3: SYN-SENT.
    fn syn_sent_arrival(&mut self, now: Instant, id: ConnId, seg: &TcpRepr<'_>) {
        let c = self.conns.get_mut(&id).expect("exists");
        let Tcb::SynSent(ss) = &mut c.tcb else {
            return;
        };
        // "If SEG.ACK =< ISS or SEG.ACK > SND.NXT, send a reset (unless the
        // RST bit is set, if so drop the segment and return)."
        let ack_ok = seg.has(ACK) && seg.ack.gt(ss.snd.iss) && seg.ack.le(ss.snd.snd_max);
        if seg.has(ACK) && !ack_ok {
            if !seg.has(RST) {
                let tuple = c.tuple;
                self.reset_for(tuple, seg);
            }
            return;
        }
        if seg.has(RST) {
            // "If the ACK was acceptable, then signal to the user 'error:
            // connection reset', drop the segment, enter CLOSED state."
            if ack_ok {
                self.counters.rst_received += 1;
                self.remove(id, Some(Error::Refused));
            }
            return;
        }
        if !seg.has(SYN) {
            return;
        }
        let shift = ss.snd.learn_from_syn(seg);
        let mut rcv = Recv::new(seg.seq, &self.cfg);
        rcv.rcv_wscale = shift;
        rcv.sack_ok = ss.snd.sack_offer;
        rcv.ts = negotiated_timestamps(&ss.snd, seg, now);
        if ack_ok {
            // "If SND.UNA > ISS (our SYN has been ACKed), change the
            // connection state to ESTABLISHED, form an ACK segment."
            ss.snd.on_ack(now, seg, &self.cfg);
            rcv.ack_now = true;
            c.transition(|t| match t {
                Tcb::SynSent(s) => Tcb::Established(s.syn_acked(rcv)),
                other => other,
            });
            self.counters.conns_connected += 1;
            self.events.push_back(Event::Connected(id));
        } else {
            // "Otherwise, enter SYN-RECEIVED, form a SYN,ACK segment
            // <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK> and send it."
            c.transition(|t| match t {
                Tcb::SynSent(s) => Tcb::SynReceived(s.simultaneous_open(rcv)),
                other => other,
            });
        }
        self.after(id);
    }

    fn challenge_ack(&mut self, now: Instant, id: ConnId) {
        if now.saturating_duration_since(self.challenge_window.0) >= Duration::from_secs(1) {
            self.challenge_window = (now, 0);
        }
        if self.challenge_window.1 >= self.cfg.challenge_ack_limit {
            self.counters.challenge_acks_suppressed += 1;
            return;
        }
        self.challenge_window.1 += 1;
        self.counters.challenge_acks += 1;
        if let Some(c) = self.conns.get_mut(&id) {
            c.ack_now();
        }
        self.after(id);
    }

    /// "If an incoming segment is not acceptable, an acknowledgment should
    /// be sent in reply (unless the RST bit is set)". Answers to segments
    /// without data are limited to one per connection every 500 ms (Linux's
    /// tcp_invalid_ratelimit), so two ends disagreeing about sequence
    /// numbers cannot trade ACKs for ever. A segment with data is always
    /// answered, as Linux does: it is a retransmission whose ACK was lost,
    /// and silence would leave the peer to a timeout.
    fn ack_unacceptable(&mut self, now: Instant, id: ConnId, seg: &TcpRepr<'_>) {
        if seg.has(RST) {
            return;
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let due = !seg.payload.is_empty()
            || c.last_oow_ack
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_millis(500));
        if due {
            c.last_oow_ack = Some(now);
            c.ack_now();
            self.after(id);
        } else {
            self.counters.oow_acks_suppressed += 1;
        }
    }

    /// RFC 9293 §3.10.7.4: every state after SYN-SENT.
    fn synchronized_arrival(&mut self, now: Instant, id: ConnId, seg: &TcpRepr<'_>) {
        let cfg = self.cfg.clone();
        let c = self.conns.get_mut(&id).expect("exists");
        let seg_len = seg.seg_len();

        // SYN-RECEIVED seeing its SYN again: our SYN,ACK was lost.
        if let Tcb::SynReceived(sr) = &mut c.tcb {
            if seg.has(SYN) && !seg.has(ACK) && seg.seq == sr.rcv.irs {
                sr.snd.snd_nxt = sr.snd.iss;
                self.after(id);
                return;
            }
        }

        // TIME-WAIT: "The only thing that can arrive in this state is a
        // retransmission of the remote FIN. Acknowledge it, and restart the
        // 2 MSL timeout."
        if let Tcb::TimeWait(tw) = &mut c.tcb {
            if seg.has(FIN) && !seg.has(RST) && (seg.seq + seg_len) == tw.rcv.rcv_nxt {
                tw.rcv.ack_now = true;
                tw.expires = now + cfg.msl * 2;
                self.after(id);
                return;
            }
        }

        let Some(rcv) = c.tcb.rcv() else {
            return;
        };
        // RFC 7323 §5.3 R1 (PAWS), before the sequence number check: "If
        // there is a Timestamps option in the arriving segment, SEG.TSval <
        // TS.Recent, TS.Recent is valid (see later discussion), and if the
        // RST bit is not set, then treat the arriving segment as not
        // acceptable". (A segment without the option is taken, as Linux
        // does, although §3.2 says it SHOULD be dropped: middleboxes strip
        // options, and a stalled connection is worse than a missing check.)
        let paws_reject = match (rcv.ts, seg.options.timestamps) {
            (Some(ts), Some((tsval, _))) => {
                !seg.has(RST)
                    && (tsval.wrapping_sub(ts.recent) as i32) < 0
                    && now.saturating_duration_since(ts.recent_at) < PAWS_IDLE
            }
            _ => false,
        };
        if paws_reject {
            self.counters.drop_paws += 1;
            self.ack_unacceptable(now, id, seg);
            return;
        }

        // First, check sequence number: the four cases.
        let c = self.conns.get_mut(&id).expect("exists");
        let rcv = c.tcb.rcv().expect("synchronized");
        let (rcv_nxt, wnd) = (rcv.rcv_nxt, rcv.rcv_wnd());
        // A segment without data whose SEG.SEQ is the window's right edge
        // is taken too. The acceptance test's "RCV.NXT =< SEG.SEQ <
        // RCV.NXT+RCV.WND" leaves it out, but it is what a sender that
        // filled our window sends: its SND.NXT is then our RCV.NXT+RCV.WND
        // (RFC 9293 §3.3.1: "SND.UNA + SND.WND" bounds what it may send),
        // and every bare ACK it sends carries that SND.NXT. It occupies no
        // sequence space beyond the window, exactly like the segment with
        // SEG.SEQ = RCV.NXT that the zero-window row accepts, for which
        // the RFC asks "special allowance ... to accept valid ACKs".
        // Dropping it loses every acknowledgment of our data the peer
        // sends while our window is full, and only the retransmission
        // timer ends the wait (an echo server's window fills whenever its
        // sending falls behind). Linux accepts it (tcp_sequence: "!after(
        // seq, rcv_nxt + tcp_receive_window)"). Not for a RST: one outside
        // the window is still dropped silently (RFC 5961 §3.2).
        let at_right_edge = seg_len == 0 && !seg.has(RST) && seg.seq == rcv_nxt + wnd;
        let acceptable = segment_acceptable(rcv_nxt, wnd, seg.seq, seg_len) || at_right_edge;
        // "If the RCV.WND is zero, no segments will be acceptable, but
        // special allowance should be made to accept valid ACKs, URGs, and
        // RSTs": a zero-window probe still carries a usable ACK.
        let ack_only = !acceptable && wnd == 0 && seg.seq == rcv_nxt && seg.has(ACK);
        if !acceptable && !ack_only {
            // "If an incoming segment is not acceptable, an acknowledgment
            // should be sent in reply (unless the RST bit is set)."
            self.counters.drop_not_acceptable += 1;
            if seg.has(SYN) && !seg.has(RST) {
                // RFC 5961 §4.2: a SYN, whatever its sequence number, gets a
                // (rate-limited) challenge ACK.
                self.challenge_ack(now, id);
                return;
            }
            // RFC 2883 §4: "If the data packet being acknowledged contains
            // a duplicate segment, the first SACK block is used to report
            // the sequence number of the duplicate" (its case 1: data
            // wholly below RCV.NXT: a spurious retransmission, or a probe
            // of data we already took). The peer learns that the
            // retransmission was not needed and may undo its reduction.
            let end = seg.seq + seg.payload.len() as u32;
            if !seg.payload.is_empty() && end.le(rcv_nxt) {
                if let Some(rcv) = c.tcb.rcv_mut() {
                    rcv.note_duplicate(seg.seq, end);
                    self.counters.dup_below_rcv_nxt += 1;
                }
            }
            self.ack_unacceptable(now, id, seg);
            return;
        }
        // RFC 7323 §4.3 / §5.3 R3: "If SEG.TSval >= TS.Recent and SEG.SEQ =<
        // Last.ACK.sent, then record its timestamp in TS.Recent": the echo
        // follows the segment that caused our next ACK, so delayed and
        // out-of-order segments do not inflate the peer's RTT samples.
        if let (Some(rcv), Some((tsval, _))) = (c.tcb.rcv_mut(), seg.options.timestamps) {
            let last_ack_sent = rcv.last_ack_sent;
            if let Some(ts) = rcv.ts.as_mut() {
                if (tsval.wrapping_sub(ts.recent) as i32) >= 0 && seg.seq.le(last_ack_sent) {
                    ts.recent = tsval;
                    ts.recent_at = now;
                }
            }
        }
        c.last_recv = now;
        if c.keepalive.is_some() {
            c.rearm_keepalive();
        }

        // Second, check the RST bit (RFC 5961 §3.2): exactly RCV.NXT resets;
        // anywhere else in the window earns a challenge ACK.
        if seg.has(RST) {
            if seg.seq != rcv_nxt {
                self.challenge_ack(now, id);
                return;
            }
            self.counters.rst_received += 1;
            let error = match &c.tcb {
                // "If this connection was initiated with a passive OPEN, then
                // return this connection to the LISTEN state": the listener
                // never went away, so dropping the embryo is exactly that.
                Tcb::SynReceived(sr) if sr.passive => None,
                Tcb::SynReceived(_) => Some(Error::Refused),
                Tcb::Closing(_) | Tcb::LastAck(_) | Tcb::TimeWait(_) => None,
                _ => Some(Error::Reset),
            };
            if error.is_some() {
                self.counters.conns_reset += 1;
            }
            self.remove(id, error);
            return;
        }

        // Fourth, check the SYN bit (RFC 5961 §4.2): any SYN here gets a
        // challenge ACK, whatever its sequence number.
        if seg.has(SYN) {
            self.challenge_ack(now, id);
            return;
        }

        // Fifth, check the ACK field: "if the ACK bit is off, drop the
        // segment and return".
        if !seg.has(ACK) {
            self.counters.drop_bad_flags += 1;
            return;
        }

        if let Tcb::SynReceived(sr) = &c.tcb {
            // "If SND.UNA < SEG.ACK =< SND.NXT, then enter ESTABLISHED state"
            // "If the segment acknowledgment is not acceptable, form a reset
            // segment <SEQ=SEG.ACK><CTL=RST> and send it."
            if !(seg.ack.gt(sr.snd.snd_una) && seg.ack.le(sr.snd.snd_max)) {
                let tuple = c.tuple;
                self.reset_for(tuple, seg);
                return;
            }
            let passive = sr.passive;
            c.transition(|t| match t {
                Tcb::SynReceived(s) => Tcb::Established(s.syn_acked()),
                other => other,
            });
            c.known_to_app = true;
            if passive {
                self.counters.conns_accepted += 1;
                self.events.push_back(Event::Accepted {
                    conn: id,
                    listener: c.tuple.local.port(),
                });
            } else {
                self.counters.conns_connected += 1;
                self.events.push_back(Event::Connected(id));
            }
        }

        // ACK processing for the states that still have data or a FIN in
        // flight (FIN-WAIT-2 and TIME-WAIT have nothing left to acknowledge).
        if let Some(snd) = c.tcb.snd_mut() {
            // "If the ACK acks something not yet sent (SEG.ACK > SND.NXT),
            // then send an ACK, drop the segment, and return."
            if seg.ack.gt(snd.snd_max) {
                c.ack_now();
                self.after(id);
                return;
            }
            // RFC 5961 §5.2: an ACK is acceptable only within
            // (SND.UNA - MAX.SND.WND) =< SEG.ACK =< SND.NXT; "all incoming
            // segments whose ACK value doesn't satisfy the above condition
            // MUST be discarded and an ACK sent back" (rate-limited like
            // the other challenge ACKs, as Linux does), so blind data
            // injection needs a guess of the ACK number too.
            if seg.ack.lt(snd.snd_una - snd.max_snd_wnd) {
                self.counters.drop_old_ack += 1;
                self.challenge_ack(now, id);
                return;
            }
            let spurious_before = snd.spurious_rtos;
            let undone_before = snd.recoveries_undone;
            let advanced = snd.on_ack(now, seg, &cfg);
            if snd.spurious_rtos != spurious_before {
                self.counters.rto_undone += 1;
            }
            self.counters.recovery_undone += snd.recoveries_undone - undone_before;
            if advanced && c.want_writable && snd.send_space() > 0 && !snd.fin_queued {
                c.want_writable = false;
                self.events.push_back(Event::Writable(id));
            }
            let snd = c.tcb.snd_mut().expect("still sending");
            snd.update_window(now, seg);
            let fin_acked = snd.fin_acked();
            let fin_wait2_timeout = c.app_closed.then(|| now + cfg.fin_wait2_timeout);
            match c.tcb.state() {
                // "In addition to the processing for the ESTABLISHED state,
                // if the FIN segment is now acknowledged, then enter
                // FIN-WAIT-2." (A FIN in this very segment goes straight on
                // to TIME-WAIT below.)
                State::FinWait1 if fin_acked && !seg.has(FIN) => {
                    c.transition(|t| match t {
                        Tcb::FinWait1(s) => Tcb::FinWait2(s.fin_acked(fin_wait2_timeout)),
                        other => other,
                    });
                }
                // "If the ACK acknowledges our FIN, then enter the TIME-WAIT
                // state."
                State::Closing if fin_acked => {
                    c.transition(|t| match t {
                        Tcb::Closing(s) => Tcb::TimeWait(s.fin_acked(now + cfg.msl * 2)),
                        other => other,
                    });
                }
                // "The only thing that can arrive in this state is an
                // acknowledgment of our FIN. If our FIN is now acknowledged,
                // delete the TCB, enter the CLOSED state, and return."
                State::LastAck if fin_acked => {
                    self.remove(id, None);
                    return;
                }
                _ => {}
            }
        }
        if ack_only {
            c.ack_now();
            self.after(id);
            return;
        }

        // Seventh, process the segment text.
        let receives = c.tcb.receives_data();
        let ack_delay = delayed_ack_timeout(cfg.delayed_ack, c.tcb.snd().and_then(|s| s.srtt));
        let rcv = c.tcb.rcv_mut().expect("synchronized");
        let mut fin_in_order = seg.has(FIN);
        if !seg.payload.is_empty() {
            if receives {
                // Trim what we already have (the acceptance test kept it
                // because its end reaches into the window).
                let skip = rcv.rcv_nxt.diff(seg.seq).max(0) as usize;
                if skip > 0 {
                    // RFC 2883 §4 again: the part below RCV.NXT is a
                    // duplicate, reported in a D-SACK block.
                    let dup = skip.min(seg.payload.len()) as u32;
                    rcv.note_duplicate(seg.seq, seg.seq + dup);
                    self.counters.dup_below_rcv_nxt += 1;
                }
                if skip > 0 || seg.seq == rcv.rcv_nxt {
                    let data = &seg.payload[skip.min(seg.payload.len())..];
                    // Everything inside the window we advertised is taken:
                    // that is the promise the peer sent against. (With
                    // window scaling the advertised edge is rounded up, so
                    // the buffer may exceed recv_buffer by < 2^shift bytes;
                    // refusing those bytes would leave the peer's sequence
                    // numbers ahead of ours and its ACKs unacceptable.)
                    let take = data.len().min(rcv.rcv_wnd() as usize);
                    if take > 0 {
                        // RFC 5681 §4.2: "the receiver SHOULD send an
                        // immediate ACK when it receives a data segment
                        // that fills in all or part of a gap in the
                        // sequence space": in order while data beyond a
                        // hole is held, the segment fills at least part of
                        // that gap. (A
                        // delayed ACK here holds the peer's recovery up by
                        // the delayed-ACK timeout: its retransmission's
                        // ACK, and the SACK naming the next hole, come
                        // 40 ms late, past a small RTO.)
                        let fills_gap = !rcv.out_of_order.is_empty();
                        rcv.recv_buf.extend(&data[..take]);
                        rcv.rcv_nxt += take as u32;
                        rcv.drain_out_of_order();
                        if fills_gap {
                            rcv.ack_now = true;
                            rcv.hole_filled = true;
                        }
                        self.events.push_back(Event::Readable(id));
                    }
                    if take < data.len() {
                        // Window full: what did not fit comes again later.
                        fin_in_order = false;
                        rcv.ack_now = true;
                    } else {
                        rcv.unacked_segs += 1;
                        // RFC 1122 §4.2.3.2 / RFC 5681 §4.2: ACK at least
                        // every second full-sized segment, else within the
                        // delayed-ACK timeout (bounded by the RTT).
                        if rcv.unacked_segs >= 2 || skip > 0 {
                            rcv.ack_now = true;
                        } else if rcv.ack_at.is_none() {
                            rcv.ack_at = Some(now + ack_delay);
                        }
                    }
                } else {
                    // Out of order (RFC 9293 §3.10.7.4: "segments with higher
                    // beginning sequence numbers SHOULD be held for later
                    // processing"): keep it, bounded by the window, and send
                    // a duplicate ACK saying what we expect.
                    if rcv.hold_out_of_order(seg.seq, seg.payload) {
                        self.counters.out_of_order_held += 1;
                    } else {
                        self.counters.drop_out_of_order += 1;
                    }
                    fin_in_order = false;
                    rcv.ack_now = true;
                }
            } else {
                // CLOSE-WAIT, CLOSING, LAST-ACK, TIME-WAIT: "This should not
                // occur since a FIN has been received from the remote side.
                // Ignore the segment text."
                rcv.ack_now = true;
            }
        }

        // Eighth, check the FIN bit.
        let fin_here = fin_in_order && (seg.seq + seg_len - 1) == rcv.rcv_nxt;
        if fin_here && !c.tcb.peer_closed() {
            let rcv = c.tcb.rcv_mut().expect("synchronized");
            rcv.rcv_nxt += 1;
            rcv.ack_now = true;
            self.events.push_back(Event::Readable(id));
            let fin_acked = c.tcb.snd().is_some_and(|s| s.fin_acked());
            let expires = now + cfg.msl * 2;
            c.transition(|t| match t {
                Tcb::SynReceived(s) => Tcb::CloseWait(s.syn_acked().fin_received()),
                Tcb::Established(s) => Tcb::CloseWait(s.fin_received()),
                // "If our FIN has been ACKed (perhaps in this segment), then
                // enter TIME-WAIT ... otherwise, enter the CLOSING state."
                Tcb::FinWait1(s) if fin_acked => Tcb::TimeWait(s.fin_received_fin_acked(expires)),
                Tcb::FinWait1(s) => Tcb::Closing(s.fin_received()),
                Tcb::FinWait2(s) => Tcb::TimeWait(s.fin_received(expires)),
                other => other,
            });
        } else if fin_in_order && c.tcb.peer_closed() {
            c.ack_now();
        }
        // Our FIN acknowledged by a segment whose own FIN could not be
        // taken yet (data missing before it): FIN-WAIT-2 all the same.
        if let Tcb::FinWait1(s) = &c.tcb {
            if s.snd.fin_acked() {
                let timeout = c.app_closed.then(|| now + cfg.fin_wait2_timeout);
                c.transition(|t| match t {
                    Tcb::FinWait1(s) => Tcb::FinWait2(s.fin_acked(timeout)),
                    other => other,
                });
            }
        }
        self.after(id);
    }

    /// Re-queues a connection for transmission and re-arms its timer.
    fn after(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !c.queued {
            c.queued = true;
            self.tx_queue.push_back(id);
        }
        Self::schedule(&mut self.timers, c);
    }

    /// Keeps the connection's one heap entry no later than its next
    /// deadline (`scheduled` mirrors the entry). An earlier deadline moves
    /// the entry up; a later one, or none, leaves it where it is: it comes
    /// up early, finds nothing due and is re-armed then (the common case is
    /// the RTO pushed back by every ACK, which so costs no heap operation).
    /// A closed connection's entry is taken out in `remove`.
    fn schedule(timers: &mut TimerHeap, c: &mut Conn) {
        let Some(d) = c.next_deadline() else {
            return;
        };
        if c.scheduled.is_some_and(|s| s <= d) {
            return;
        }
        timers.set(c.id, d);
        c.scheduled = Some(d);
    }

    fn remove(&mut self, id: ConnId, error: Option<Error>) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        self.timers.remove(id);
        self.by_tuple.remove(&c.tuple);
        self.counters.conns_closed += 1;
        if c.known_to_app {
            self.events.push_back(Event::Closed {
                conn: id,
                tuple: c.tuple,
                error,
            });
        }
    }

    /// Writes the next segment to send into `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(r) = self.resets.pop_front() {
            let repr = TcpRepr {
                src_port: r.tuple.local.port(),
                dst_port: r.tuple.remote.port(),
                seq: r.seq,
                ack: r.ack,
                flags: r.flags,
                window: 0,
                urgent: 0,
                options: TcpOptions::default(),
                payload: &[],
            };
            if buf.len() < 20 {
                return None;
            }
            let len = repr.emit(*r.tuple.local.ip(), *r.tuple.remote.ip(), buf);
            self.counters.rst_sent += 1;
            self.counters.segments_out += 1;
            return Some(Transmit {
                src: *r.tuple.local.ip(),
                dst: *r.tuple.remote.ip(),
                len,
            });
        }
        while let Some(id) = self.tx_queue.pop_front() {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let mut stats = EmitStats::default();
            match c.emit(now, &self.cfg, buf, &mut stats) {
                Some(len) => {
                    // Round robin: it may have more, after the others.
                    self.tx_queue.push_back(id);
                    Self::schedule(&mut self.timers, c);
                    self.counters.segments_out += 1;
                    if stats.retransmit {
                        self.counters.retransmits += 1;
                    }
                    if stats.fast {
                        self.counters.fast_retransmits += 1;
                    }
                    if stats.probe {
                        self.counters.tail_loss_probes += 1;
                    }
                    return Some(Transmit {
                        src: *c.tuple.local.ip(),
                        dst: *c.tuple.remote.ip(),
                        len,
                    });
                }
                None => {
                    c.queued = false;
                    // Emitting may have armed a timer without sending
                    // anything (the persist timer behind a zero or
                    // too-small window): it must reach the heap, or the
                    // connection waits for a wakeup that never comes.
                    Self::schedule(&mut self.timers, c);
                }
            }
        }
        None
    }

    /// The earliest timer of any connection.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|(t, _)| t)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((t, id)) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(&id) else {
                debug_assert!(false, "timer of a closed connection");
                continue;
            };
            c.scheduled = None;
            if c.close_at().is_some_and(|d| d <= now) {
                // TIME-WAIT over, or an orphaned FIN-WAIT-2 given up.
                self.remove(id, None);
                continue;
            }
            if let Some(snd) = c.tcb.snd_mut() {
                snd.probe_preempts_rto(now);
                if snd.retx_at.is_some_and(|d| d <= now) {
                    snd.retx_at = None;
                    match snd.on_retransmit_timeout(now, &self.cfg) {
                        Ok(TimerKind::Retransmission) => self.counters.rto_expirations += 1,
                        Ok(TimerKind::RetransmissionInRecovery) => {
                            self.counters.rto_expirations += 1;
                            self.counters.rto_in_recovery += 1;
                        }
                        Ok(TimerKind::RetransmissionRepeated) => {
                            self.counters.rto_expirations += 1;
                            self.counters.rto_repeated += 1;
                        }
                        Ok(TimerKind::Persist) => self.counters.persist_probes += 1,
                        Err(e) => {
                            self.counters.rto_expirations += 1;
                            self.counters.conns_timed_out += 1;
                            self.remove(id, Some(e));
                            continue;
                        }
                    }
                }
                snd.on_loss_timer(now);
            }
            if c.keepalive_at.is_some_and(|d| d <= now) {
                if let Err(e) = c.on_keepalive_timeout(now) {
                    self.counters.conns_timed_out += 1;
                    self.remove(id, Some(e));
                    continue;
                }
            }
            if let Some(rcv) = c.tcb.rcv_mut() {
                if rcv.ack_at.is_some_and(|d| d <= now) {
                    rcv.ack_at = None;
                    rcv.ack_now = true;
                }
            }
            self.after(id);
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues data; returns how much fit (0 when the buffer is full: a
    /// `Writable` event follows when room frees up).
    pub fn send(&mut self, _now: Instant, conn: ConnId, data: &[u8]) -> Result<usize, Error> {
        let c = self.conns.get_mut(&conn).ok_or(Error::NotFound)?;
        // Data may be queued before the handshake completes and until the
        // application closes its side.
        let snd = match &mut c.tcb {
            Tcb::SynSent(SynSent { snd })
            | Tcb::SynReceived(SynReceived { snd, .. })
            | Tcb::Established(Established { snd, .. })
            | Tcb::CloseWait(CloseWait { snd, .. }) => snd,
            _ => return Err(Error::WriteClosed),
        };
        if snd.fin_queued {
            return Err(Error::WriteClosed);
        }
        let n = data.len().min(snd.send_space());
        snd.send_buf.extend(&data[..n]);
        if n < data.len() {
            c.want_writable = true;
        }
        if n > 0 {
            self.after(conn);
        }
        Ok(n)
    }

    /// Queues urgent data (RFC 9293 §3.8.5): sent like any data, with URG
    /// and the urgent pointer set until it is acknowledged. Receivers
    /// deliver it inline (RFC 6093). Returns how much fit; the pointer
    /// covers only what fit.
    pub fn send_urgent(&mut self, now: Instant, conn: ConnId, data: &[u8]) -> Result<usize, Error> {
        let n = self.send(now, conn, data)?;
        if n > 0 {
            let c = self.conns.get_mut(&conn).expect("send succeeded");
            if let Some(snd) = c.tcb.snd_mut() {
                snd.snd_up = Some(snd.buf_seq + snd.send_buf.len() as u32);
            }
        }
        Ok(n)
    }

    /// Reads received data: `Ok(0)` at end of stream, `WouldBlock` when
    /// nothing is there yet.
    pub fn recv(&mut self, _now: Instant, conn: ConnId, buf: &mut [u8]) -> Result<usize, Error> {
        let mss = self.cfg.mss;
        let c = self.conns.get_mut(&conn).ok_or(Error::NotFound)?;
        let peer_closed = c.tcb.peer_closed();
        let Some(rcv) = c.tcb.rcv_mut() else {
            return Err(Error::WouldBlock);
        };
        if rcv.recv_buf.is_empty() {
            return if peer_closed {
                Ok(0)
            } else {
                Err(Error::WouldBlock)
            };
        }
        let n = rcv.read(buf);
        // RFC 9293 §3.8.6.2.2: tell the peer once the window opened by at
        // least min(half the buffer, one MSS).
        if rcv.window_update_due(mss) {
            rcv.ack_now = true;
            self.after(conn);
        }
        Ok(n)
    }

    /// No more data will be sent: queue a FIN after what is buffered.
    pub fn shutdown_write(&mut self, _now: Instant, conn: ConnId) -> Result<(), Error> {
        let c = self.conns.get_mut(&conn).ok_or(Error::NotFound)?;
        match c.tcb.state() {
            // "CLOSE in SYN-SENT: delete the TCB".
            State::SynSent => {
                self.remove(conn, None);
                return Ok(());
            }
            State::SynReceived | State::Established | State::CloseWait => {}
            _ => return Ok(()),
        }
        c.transition(|t| match t {
            Tcb::SynReceived(s) => Tcb::FinWait1(s.close()),
            Tcb::Established(s) => Tcb::FinWait1(s.close()),
            Tcb::CloseWait(s) => Tcb::LastAck(s.close()),
            other => other,
        });
        self.after(conn);
        Ok(())
    }

    /// The application is done with the connection: FIN after buffered
    /// data; unread data makes it a reset (RFC 9293 §3.10.4, RFC 2525 §2.17).
    pub fn close(&mut self, now: Instant, conn: ConnId) -> Result<(), Error> {
        let c = self.conns.get_mut(&conn).ok_or(Error::NotFound)?;
        if c.tcb.rcv().is_some_and(|r| !r.recv_buf.is_empty()) {
            return self.abort(now, conn);
        }
        c.app_closed = true;
        self.shutdown_write(now, conn)?;
        // An orphaned FIN-WAIT-2 does not wait for ever.
        if let Some(c) = self.conns.get_mut(&conn) {
            if let Tcb::FinWait2(s) = &mut c.tcb {
                s.timeout.get_or_insert(now + self.cfg.fin_wait2_timeout);
            }
        }
        self.after(conn);
        Ok(())
    }

    /// Resets the connection at once (RFC 9293 §3.10.5 ABORT).
    pub fn abort(&mut self, _now: Instant, conn: ConnId) -> Result<(), Error> {
        let c = self.conns.get(&conn).ok_or(Error::NotFound)?;
        if !matches!(
            c.tcb.state(),
            State::SynSent | State::TimeWait | State::Closed
        ) {
            let (seq, ack, flags) = c.reset_segment();
            self.resets.push_back(PendingRst {
                tuple: c.tuple,
                seq,
                ack,
                flags,
            });
        }
        self.remove(conn, Some(Error::Aborted));
        Ok(())
    }

    /// Switches Nagle's algorithm off (true) or on.
    pub fn set_nodelay(&mut self, conn: ConnId, nodelay: bool) -> Result<(), Error> {
        let c = self.conns.get_mut(&conn).ok_or(Error::NotFound)?;
        c.nodelay = nodelay;
        self.after(conn);
        Ok(())
    }

    /// Switches the connection's congestion control; the new controller
    /// starts from the current window and threshold.
    pub fn set_congestion(
        &mut self,
        conn: ConnId,
        algorithm: super::cc::Algorithm,
    ) -> Result<(), Error> {
        use super::cc::CongestionControl as _;
        let c = self.conns.get_mut(&conn).ok_or(Error::NotFound)?;
        if let Some(snd) = c.tcb.snd_mut() {
            let from = (snd.cc.cwnd(), snd.cc.ssthresh());
            snd.algorithm = algorithm;
            snd.cc = algorithm.build(snd.smss, Some(from));
        }
        Ok(())
    }

    /// Keepalive probes after `idle` (None: off, the default).
    pub fn set_keepalive(&mut self, conn: ConnId, idle: Option<Duration>) -> Result<(), Error> {
        let c = self.conns.get_mut(&conn).ok_or(Error::NotFound)?;
        c.keepalive = idle;
        c.rearm_keepalive();
        self.after(conn);
        Ok(())
    }

    /// The addresses of a connection (None once released).
    pub fn tuple(&self, conn: ConnId) -> Option<FourTuple> {
        self.conns.get(&conn).map(|c| c.tuple)
    }

    /// Whether a connection with these addresses exists.
    pub fn in_use(&self, tuple: &FourTuple) -> bool {
        self.by_tuple.contains_key(tuple)
    }

    /// The state of a connection (None once released).
    pub fn state(&self, conn: ConnId) -> Option<State> {
        self.conns.get(&conn).map(|c| c.state())
    }

    /// The connection table.
    pub fn connections(&self) -> Vec<ConnInfo> {
        let mut v: Vec<ConnInfo> = self.conns.values().map(Conn::info).collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Counters of the stack, as name/value pairs.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut v = self.counters.pairs();
        v.push(("connections", self.conns.len() as u64));
        v
    }
}

#[cfg(test)]
mod timer_tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    /// Everything `from` has to send, handed to `to`.
    fn carry(now: Instant, from: &mut Stack, to: &mut Stack, src: Ipv4Addr, dst: Ipv4Addr) {
        let mut buf = [0u8; 1500];
        while let Some(t) = from.poll_transmit(now, &mut buf) {
            to.handle_segment(now, src, dst, &buf[..t.len]);
        }
    }

    /// The timer heap holds at most one entry per open connection: none is
    /// left behind by a closed one, however its timers were armed.
    fn heap_bounded(s: &Stack) {
        assert!(
            s.timers.len() <= s.conns.len(),
            "{} timer entries for {} connections",
            s.timers.len(),
            s.conns.len()
        );
    }

    #[test]
    fn closed_connections_leave_no_timer_entries() {
        let cfg = Config {
            min_rto: Duration::from_millis(20),
            msl: Duration::from_millis(100),
            ..Config::default()
        };
        let mut a = Stack::new(Config {
            isn_secret: [1; 16],
            ..cfg.clone()
        });
        let mut b = Stack::new(cfg);
        b.listen(SocketAddrV4::new(B, 9)).unwrap();
        let mut now = Instant::from_micros(1_000_000);
        let mut buf = [0u8; 256];
        for i in 0..300u16 {
            let ca = a
                .connect(
                    now,
                    SocketAddrV4::new(A, 20000 + i),
                    SocketAddrV4::new(B, 9),
                )
                .unwrap();
            let mut cb = None;
            for step in 0..40 {
                now = Instant::from_micros(now.as_micros() + 50);
                for s in [&mut a, &mut b] {
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now);
                    }
                }
                carry(now, &mut a, &mut b, A, B);
                carry(now, &mut b, &mut a, B, A);
                while let Some(ev) = b.poll_event() {
                    match ev {
                        Event::Accepted { conn, .. } => cb = Some(conn),
                        Event::Readable(c) => {
                            while matches!(b.recv(now, c, &mut buf), Ok(n) if n > 0) {}
                        }
                        _ => {}
                    }
                }
                while let Some(ev) = a.poll_event() {
                    if let Event::Readable(c) = ev {
                        while matches!(a.recv(now, c, &mut buf), Ok(n) if n > 0) {}
                    }
                }
                match step {
                    2 => {
                        a.send(now, ca, &[7; 64]).unwrap();
                    }
                    5 => {
                        // The server answers and closes first (it holds
                        // TIME-WAIT), the client closes after.
                        let cb = cb.expect("accepted");
                        b.send(now, cb, &[7; 64]).unwrap();
                        b.close(now, cb).unwrap();
                    }
                    8 => a.close(now, ca).unwrap(),
                    _ => {}
                }
                heap_bounded(&a);
                heap_bounded(&b);
            }
        }
        // Past every TIME-WAIT: nothing open, nothing in either heap.
        for _ in 0..200 {
            now = Instant::from_micros(now.as_micros() + 10_000);
            for s in [&mut a, &mut b] {
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
                heap_bounded(s);
            }
        }
        assert_eq!(a.conns.len() + b.conns.len(), 0, "all closed");
        assert_eq!(a.timers.len() + b.timers.len(), 0);
        assert_eq!(a.poll_timeout(), None);
    }
}

#[cfg(test)]
mod flow_table_tests {
    use super::*;

    /// Everything `from` has to send, handed to `to` (addresses from the
    /// transmit: the connections here span several IPs on each side).
    fn carry(now: Instant, from: &mut Stack, to: &mut Stack) {
        let mut buf = [0u8; 1500];
        while let Some(t) = from.poll_transmit(now, &mut buf) {
            to.handle_segment(now, t.src, t.dst, &buf[..t.len]);
        }
    }

    fn pump(now: &mut Instant, a: &mut Stack, b: &mut Stack) {
        for _ in 0..4 {
            *now = Instant::from_micros(now.as_micros() + 50);
            carry(*now, a, b);
            carry(*now, b, a);
        }
    }

    fn mirror(t: FourTuple) -> FourTuple {
        FourTuple {
            local: t.remote,
            remote: t.local,
        }
    }

    /// The flow table (keyed hash) finds every connection by its 4-tuple
    /// after many inserts and removes, re-inserts of removed tuples among
    /// them, on both the active (connect) and passive (SYN) side; removed
    /// tuples are gone, and each segment reaches its own connection.
    #[test]
    fn flow_table_finds_connections_after_churn() {
        let mut a = Stack::new(Config {
            isn_secret: [1; 16],
            ..Config::default()
        });
        let mut b = Stack::new(Config::default());
        b.listen(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9))
            .unwrap();
        b.listen(SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 443))
            .unwrap();
        let mut now = Instant::from_micros(1_000_000);
        // Tuples that differ in one field at a time, low and high bits.
        let tuple = |i: u32| {
            let local = SocketAddrV4::new(
                Ipv4Addr::from(0xc612_0000 | (i % 7) << 8 | 2),
                1024 + (i / 7) as u16,
            );
            let remote = if i.is_multiple_of(3) {
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 443)
            } else {
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 1 + (i % 5) as u8 * 50, 1), 9)
            };
            FourTuple { local, remote }
        };
        let mut live: Vec<(ConnId, FourTuple)> = Vec::new();
        let mut gone: Vec<FourTuple> = Vec::new();
        let mut next = 0u32;
        for round in 0..5 {
            // Re-open half of the tuples aborted last round, then new ones.
            let mut reopen: Vec<FourTuple> = gone.iter().step_by(2).copied().collect();
            gone.retain(|t| !reopen.contains(t));
            reopen.extend((0..600).map(|_| {
                next += 1;
                tuple(next)
            }));
            for t in reopen {
                let id = a.connect(now, t.local, t.remote).unwrap();
                live.push((id, t));
            }
            pump(&mut now, &mut a, &mut b);
            // Abort about a third (the RST removes the peer's side too).
            let mut kept = Vec::new();
            for (k, (id, t)) in live.drain(..).enumerate() {
                if (k * 7 + round).is_multiple_of(3) {
                    a.abort(now, id).unwrap();
                    gone.push(t);
                } else {
                    kept.push((id, t));
                }
            }
            live = kept;
            pump(&mut now, &mut a, &mut b);
            while b.poll_event().is_some() {}
            while a.poll_event().is_some() {}
        }
        assert!(live.len() > 1500, "{} live", live.len());
        assert!(gone.len() > 500, "{} gone", gone.len());
        for t in &gone {
            assert!(!a.in_use(t), "{t:?} still in A's table");
            assert!(!b.in_use(&mirror(*t)), "{t:?} still in B's table");
        }
        for (id, t) in &live {
            assert!(a.in_use(t), "{t:?} not in A's table");
            assert!(b.in_use(&mirror(*t)), "{t:?} not in B's table");
            assert_eq!(a.tuple(*id), Some(*t));
            assert_eq!(a.state(*id), Some(State::Established), "{t:?}");
        }
        assert_eq!(a.connections().len(), live.len());
        assert_eq!(b.connections().len(), live.len());
        // Each connection sends its own 4-tuple; each must arrive on the
        // peer's connection of that tuple.
        for (id, t) in &live {
            let mut msg = Vec::new();
            msg.extend_from_slice(&t.local.ip().octets());
            msg.extend_from_slice(&t.local.port().to_be_bytes());
            msg.extend_from_slice(&t.remote.ip().octets());
            msg.extend_from_slice(&t.remote.port().to_be_bytes());
            assert_eq!(a.send(now, *id, &msg).unwrap(), 12);
        }
        pump(&mut now, &mut a, &mut b);
        let mut seen = HashSet::new();
        let mut buf = [0u8; 64];
        while let Some(ev) = b.poll_event() {
            if let Event::Readable(c) = ev {
                let n = b.recv(now, c, &mut buf).unwrap();
                assert_eq!(n, 12);
                let at_b = b.tuple(c).expect("open");
                let ip = |o: usize| Ipv4Addr::new(buf[o], buf[o + 1], buf[o + 2], buf[o + 3]);
                let port = |o: usize| u16::from_be_bytes([buf[o], buf[o + 1]]);
                let sent = FourTuple {
                    local: SocketAddrV4::new(ip(0), port(4)),
                    remote: SocketAddrV4::new(ip(6), port(10)),
                };
                assert_eq!(mirror(at_b), sent, "segment reached the wrong connection");
                assert!(seen.insert(sent), "{sent:?} read twice");
            }
        }
        assert_eq!(seen.len(), live.len());
    }
}
