//! The connection table and segment arrival processing (RFC 9293 §3.10).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::Hasher;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use siphasher::sip::SipHasher24;
use tcp_common::tcp_flags::{ACK, FIN, RST, SYN};

use super::conn::{Conn, EmitStats};
use super::seq::SeqNum;
use super::{Config, ConnId, ConnInfo, Error, Event, FourTuple, Instant, State, Transmit};
use crate::wire::{TcpOptions, TcpRepr, WireError};

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
    rst_sent,
    rst_received,
    challenge_acks,
    challenge_acks_suppressed,
    drop_bad_checksum,
    drop_malformed,
    drop_no_listener,
    drop_not_acceptable,
    drop_out_of_order,
    out_of_order_held,
    drop_table_full,
    drop_bad_flags,
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
    conns: HashMap<ConnId, Conn>,
    by_tuple: HashMap<FourTuple, ConnId>,
    listeners: HashSet<SocketAddrV4>,
    events: VecDeque<Event>,
    next_id: u64,
    counters: Counters,
    /// (deadline, connection): at most one live entry per connection, plus
    /// stale ones that are skipped when they come up.
    timers: BinaryHeap<Reverse<(Instant, ConnId)>>,
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
            conns: HashMap::new(),
            by_tuple: HashMap::new(),
            listeners: HashSet::new(),
            events: VecDeque::new(),
            next_id: 1,
            counters: Counters::default(),
            timers: BinaryHeap::new(),
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
        let id = self.new_id();
        let iss = self.isn(now, &tuple);
        let mut c = Conn::new(id, tuple, State::Closed, iss, &self.cfg);
        c.set_state(State::SynSent);
        c.known_to_app = true;
        c.last_recv = now;
        self.conns.insert(id, c);
        self.by_tuple.insert(tuple, id);
        self.after(id);
        Ok(id)
    }

    fn new_id(&mut self) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        id
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

    /// A segment arrived from `src` to `dst`.
    pub fn handle_segment(&mut self, now: Instant, src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) {
        self.counters.segments_in += 1;
        let seg = match TcpRepr::parse(src, dst, segment) {
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
        let id = self.new_id();
        let iss = self.isn(now, &tuple);
        let mut c = Conn::new(id, tuple, State::Listen, iss, &self.cfg);
        c.passive = true;
        c.last_recv = now;
        c.set_state(State::SynReceived);
        c.irs = seg.seq;
        c.rcv_nxt = seg.seq + 1;
        c.rcv_adv = c.rcv_nxt;
        c.peer_mss = seg
            .options
            .mss
            .unwrap_or(super::conn::DEFAULT_PEER_MSS)
            .max(64);
        c.snd_wnd = seg.window as u32;
        c.max_snd_wnd = c.snd_wnd;
        c.snd_wl1 = seg.seq;
        c.snd_wl2 = seg.ack;
        self.conns.insert(id, c);
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
        let state = self.conns[&id].state;
        match state {
            State::SynSent => self.syn_sent_arrival(now, id, seg),
            State::TimeWait if seg.has(SYN) && !seg.has(ACK) && !seg.has(RST) => {
                // RFC 6191 / RFC 9293 §3.6.1: a new SYN may reopen a
                // TIME-WAIT 4-tuple when its sequence number is beyond the
                // old connection's, so old duplicates cannot be confused.
                let c = &self.conns[&id];
                if seg.seq.gt(c.rcv_nxt) && self.listening(c.tuple.local) {
                    let tuple = c.tuple;
                    self.remove(id, None);
                    self.segment_without_conn(now, tuple, seg);
                } else {
                    self.conns.get_mut(&id).expect("exists").ack_now = true;
                    self.after(id);
                }
            }
            _ => self.synchronized_arrival(now, id, seg),
        }
    }

    /// RFC 9293 §3.10.7.3: SYN-SENT.
    fn syn_sent_arrival(&mut self, now: Instant, id: ConnId, seg: &TcpRepr<'_>) {
        let c = self.conns.get_mut(&id).expect("exists");
        // "If SEG.ACK =< ISS or SEG.ACK > SND.NXT, send a reset (unless the
        // RST bit is set, if so drop the segment and return)."
        let ack_ok = seg.has(ACK) && seg.ack.gt(c.iss) && seg.ack.le(c.snd_max);
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
        c.irs = seg.seq;
        c.rcv_nxt = seg.seq + 1;
        c.rcv_adv = c.rcv_nxt;
        c.peer_mss = seg
            .options
            .mss
            .unwrap_or(super::conn::DEFAULT_PEER_MSS)
            .max(64);
        c.snd_wnd = seg.window as u32;
        c.max_snd_wnd = c.snd_wnd;
        c.snd_wl1 = seg.seq;
        c.snd_wl2 = seg.ack;
        if ack_ok {
            // "If SND.UNA > ISS (our SYN has been ACKed), change the
            // connection state to ESTABLISHED, form an ACK segment."
            c.snd_una = seg.ack;
            if let Some((s, t)) = c.rtt_probe.take() {
                if seg.ack.ge(s) {
                    let r = now.saturating_duration_since(t);
                    c.rtt_sample(r, &self.cfg);
                }
            }
            c.retries = 0;
            c.retx_at = None;
            c.set_state(State::Established);
            c.ack_now = true;
            self.counters.conns_connected += 1;
            self.events.push_back(Event::Connected(id));
        } else {
            // "Otherwise, enter SYN-RECEIVED, form a SYN,ACK segment
            // <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK> and send it."
            c.set_state(State::SynReceived);
            c.snd_nxt = c.iss;
            c.rtt_probe = None;
        }
        self.after(id);
    }

    fn challenge_ack(&mut self, now: Instant, id: ConnId) {
        let (start, n) = self.challenge_window;
        if now.saturating_duration_since(start) >= Duration::from_secs(1) {
            self.challenge_window = (now, 0);
        }
        if self.challenge_window.1 >= self.cfg.challenge_ack_limit {
            self.counters.challenge_acks_suppressed += 1;
            let _ = n;
            return;
        }
        self.challenge_window.1 += 1;
        self.counters.challenge_acks += 1;
        if let Some(c) = self.conns.get_mut(&id) {
            c.ack_now = true;
        }
        self.after(id);
    }

    /// RFC 9293 §3.10.7.4: every state after SYN-SENT.
    fn synchronized_arrival(&mut self, now: Instant, id: ConnId, seg: &TcpRepr<'_>) {
        let cfg_mss = self.cfg.mss;
        let c = self.conns.get_mut(&id).expect("exists");
        let seg_len = seg.seg_len();

        // SYN-RECEIVED seeing its SYN again: our SYN,ACK was lost.
        if c.state == State::SynReceived && seg.has(SYN) && !seg.has(ACK) && seg.seq == c.irs {
            c.snd_nxt = c.iss;
            self.after(id);
            return;
        }

        // TIME-WAIT: "The only thing that can arrive in this state is a
        // retransmission of the remote FIN. Acknowledge it, and restart the
        // 2 MSL timeout."
        if c.state == State::TimeWait
            && seg.has(FIN)
            && !seg.has(RST)
            && (seg.seq + seg_len) == c.rcv_nxt
        {
            c.ack_now = true;
            c.close_at = Some(now + self.cfg.msl * 2);
            self.after(id);
            return;
        }

        // First, check sequence number: the four cases.
        let wnd = c.rcv_wnd();
        let acceptable = segment_acceptable(c.rcv_nxt, wnd, seg.seq, seg_len);
        // "If the RCV.WND is zero, no segments will be acceptable, but
        // special allowance should be made to accept valid ACKs, URGs, and
        // RSTs": a zero-window probe still carries a usable ACK.
        let ack_only = !acceptable && wnd == 0 && seg.seq == c.rcv_nxt && seg.has(ACK);
        if !acceptable && !ack_only {
            // "If an incoming segment is not acceptable, an acknowledgment
            // should be sent in reply (unless the RST bit is set)."
            self.counters.drop_not_acceptable += 1;
            if !seg.has(RST) {
                c.ack_now = true;
                self.after(id);
            }
            return;
        }

        c.last_recv = now;
        if c.keepalive.is_some() {
            c.rearm_keepalive();
        }

        // Second, check the RST bit (RFC 5961 §3.2): exactly RCV.NXT resets;
        // anywhere else in the window earns a challenge ACK.
        if seg.has(RST) {
            if seg.seq != c.rcv_nxt {
                self.challenge_ack(now, id);
                return;
            }
            self.counters.rst_received += 1;
            let error = match c.state {
                // "If this connection was initiated with a passive OPEN, then
                // return this connection to the LISTEN state": the listener
                // never went away, so dropping the embryo is exactly that.
                State::SynReceived if c.passive => None,
                State::SynReceived => Some(Error::Refused),
                State::Closing | State::LastAck | State::TimeWait => None,
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

        if c.state == State::SynReceived {
            // "If SND.UNA < SEG.ACK =< SND.NXT, then enter ESTABLISHED state"
            // "If the segment acknowledgment is not acceptable, form a reset
            // segment <SEQ=SEG.ACK><CTL=RST> and send it."
            if !(seg.ack.gt(c.snd_una) && seg.ack.le(c.snd_max)) {
                let tuple = c.tuple;
                self.reset_for(tuple, seg);
                return;
            }
            c.set_state(State::Established);
            let id = c.id;
            if c.passive {
                let port = c.tuple.local.port();
                c.known_to_app = true;
                self.counters.conns_accepted += 1;
                self.events.push_back(Event::Accepted {
                    conn: id,
                    listener: port,
                });
            } else {
                c.known_to_app = true;
                self.counters.conns_connected += 1;
                self.events.push_back(Event::Connected(id));
            }
        }
        let c = self.conns.get_mut(&id).expect("exists");

        // "If the ACK acks something not yet sent (SEG.ACK > SND.NXT), then
        // send an ACK, drop the segment, and return."
        if seg.ack.gt(c.snd_max) {
            c.ack_now = true;
            self.after(id);
            return;
        }
        // "If SND.UNA < SEG.ACK =< SND.NXT, then set SND.UNA <- SEG.ACK."
        if seg.ack.gt(c.snd_una) {
            if !c.syn_acked() {
                // The SYN's sequence number is not in the send buffer.
            }
            let data_acked = seg.ack.diff(c.buf_seq).clamp(0, c.send_buf.len() as i32) as usize;
            c.send_buf.drain(..data_acked);
            c.buf_seq += data_acked as u32;
            c.snd_una = seg.ack;
            if c.snd_up.is_some_and(|up| up.le(seg.ack)) {
                c.snd_up = None;
            }
            if c.snd_nxt.lt(c.snd_una) {
                c.snd_nxt = c.snd_una;
            }
            if let Some((s, t)) = c.rtt_probe {
                if seg.ack.ge(s) {
                    c.rtt_probe = None;
                    let r = now.saturating_duration_since(t);
                    c.rtt_sample(r, &self.cfg);
                }
            }
            c.retries = 0;
            // RFC 6298 §5.2–5.3: all acked → stop the timer, else restart it.
            c.retx_at = (c.snd_una != c.snd_max).then(|| now + c.rto);
            if c.want_writable && c.send_space() > 0 && !c.fin_queued {
                c.want_writable = false;
                self.events.push_back(Event::Writable(id));
            }
        }
        // "If SND.UNA =< SEG.ACK =< SND.NXT, the send window should be
        // updated. If (SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and
        // SND.WL2 =< SEG.ACK)), set SND.WND <- SEG.WND, set SND.WL1 <-
        // SEG.SEQ, and set SND.WL2 <- SEG.ACK."
        if c.snd_una.le(seg.ack)
            && (c.snd_wl1.lt(seg.seq) || (c.snd_wl1 == seg.seq && c.snd_wl2.le(seg.ack)))
        {
            c.snd_wnd = seg.window as u32;
            c.max_snd_wnd = c.max_snd_wnd.max(c.snd_wnd);
            c.snd_wl1 = seg.seq;
            c.snd_wl2 = seg.ack;
        }
        // Zero window with data waiting and nothing in flight: the
        // retransmission timer becomes the persist timer.
        if c.snd_wnd == 0 && c.unsent() > 0 && c.snd_una == c.snd_max && c.retx_at.is_none() {
            c.retx_at = Some(now + c.rto);
        }

        let fin_acked = c.fin_acked();
        match c.state {
            // "In addition to the processing for the ESTABLISHED state, if
            // the FIN segment is now acknowledged, then enter FIN-WAIT-2."
            State::FinWait1 if fin_acked && !seg.has(FIN) => {
                c.set_state(State::FinWait2);
                if c.app_closed {
                    c.close_at = Some(now + self.cfg.fin_wait2_timeout);
                }
            }
            // "If the ACK acknowledges our FIN, then enter the TIME-WAIT state."
            State::Closing if fin_acked => {
                c.set_state(State::TimeWait);
                c.close_at = Some(now + self.cfg.msl * 2);
                c.retx_at = None;
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
        if ack_only {
            c.ack_now = true;
            self.after(id);
            return;
        }

        // Seventh, process the segment text.
        let mut fin_in_order = seg.has(FIN);
        if !seg.payload.is_empty() {
            if matches!(
                c.state,
                State::Established | State::FinWait1 | State::FinWait2
            ) {
                // Trim what we already have (the acceptance test kept it
                // because its end reaches into the window).
                let skip = c.rcv_nxt.diff(seg.seq).max(0) as usize;
                if skip > 0 || seg.seq == c.rcv_nxt {
                    let data = &seg.payload[skip.min(seg.payload.len())..];
                    let room = c.recv_cap.saturating_sub(c.recv_buf.len());
                    let take = data.len().min(room).min(c.rcv_wnd() as usize);
                    let mut filled_gap = false;
                    if take > 0 {
                        c.recv_buf.extend(&data[..take]);
                        c.rcv_nxt += take as u32;
                        filled_gap = c.drain_out_of_order();
                        self.events.push_back(Event::Readable(id));
                    }
                    if filled_gap {
                        // RFC 5681 §4.2: a segment that fills a gap is
                        // acknowledged at once.
                        c.ack_now = true;
                    }
                    if take < data.len() {
                        // Window full: what did not fit comes again later.
                        fin_in_order = false;
                        c.ack_now = true;
                    } else {
                        c.unacked_segs += 1;
                        // RFC 1122 §4.2.3.2 / RFC 5681 §4.2: ACK at least
                        // every second full-sized segment, else within the
                        // delayed-ACK timeout.
                        if c.unacked_segs >= 2 || skip > 0 {
                            c.ack_now = true;
                        } else if c.ack_at.is_none() {
                            c.ack_at = Some(now + self.cfg.delayed_ack);
                        }
                    }
                } else {
                    // Out of order (RFC 9293 §3.10.7.4: "segments with higher
                    // beginning sequence numbers SHOULD be held for later
                    // processing"): keep it, bounded by the window, and send
                    // a duplicate ACK saying what we expect.
                    if c.hold_out_of_order(seg.seq, seg.payload) {
                        self.counters.out_of_order_held += 1;
                    } else {
                        self.counters.drop_out_of_order += 1;
                    }
                    fin_in_order = false;
                    c.ack_now = true;
                }
            } else {
                // CLOSE-WAIT, CLOSING, LAST-ACK, TIME-WAIT: "This should not
                // occur since a FIN has been received from the remote side.
                // Ignore the segment text."
                c.ack_now = true;
            }
        }

        // Eighth, check the FIN bit.
        if fin_in_order && (seg.seq + seg_len - 1) == c.rcv_nxt && !c.peer_fin {
            c.rcv_nxt += 1;
            c.peer_fin = true;
            c.ack_now = true;
            self.events.push_back(Event::Readable(id));
            match c.state {
                State::SynReceived | State::Established => c.set_state(State::CloseWait),
                // "If our FIN has been ACKed (perhaps in this segment), then
                // enter TIME-WAIT ... otherwise, enter the CLOSING state."
                State::FinWait1 if c.fin_acked() => {
                    c.set_state(State::TimeWait);
                    c.close_at = Some(now + self.cfg.msl * 2);
                    c.retx_at = None;
                }
                State::FinWait1 => c.set_state(State::Closing),
                State::FinWait2 => {
                    c.set_state(State::TimeWait);
                    c.close_at = Some(now + self.cfg.msl * 2);
                }
                _ => {}
            }
        } else if fin_in_order && c.peer_fin {
            c.ack_now = true;
        }
        if c.state == State::FinWait1 && c.fin_acked() {
            c.set_state(State::FinWait2);
            if c.app_closed {
                c.close_at = Some(now + self.cfg.fin_wait2_timeout);
            }
        }
        let _ = cfg_mss;
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

    fn schedule(timers: &mut BinaryHeap<Reverse<(Instant, ConnId)>>, c: &mut Conn) {
        let Some(d) = c.next_deadline() else {
            return;
        };
        // An earlier entry already in the heap will fire first and
        // re-schedule; only an earlier deadline needs a new entry.
        if c.scheduled.is_some_and(|s| s <= d) {
            return;
        }
        c.scheduled = Some(d);
        timers.push(Reverse((d, c.id)));
    }

    fn remove(&mut self, id: ConnId, error: Option<Error>) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
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
                    return Some(Transmit {
                        src: *c.tuple.local.ip(),
                        dst: *c.tuple.remote.ip(),
                        len,
                    });
                }
                None => c.queued = false,
            }
        }
        None
    }

    /// The earliest timer of any connection.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.scheduled == Some(t) {
                c.scheduled = None;
            }
            if c.close_at.is_some_and(|d| d <= now) {
                // TIME-WAIT over, or an orphaned FIN-WAIT-2 given up.
                let error = None;
                self.remove(id, error);
                continue;
            }
            if c.retx_at.is_some_and(|d| d <= now) {
                c.retx_at = None;
                if let Err(e) = c.on_retransmit_timeout(now, &self.cfg) {
                    self.counters.conns_timed_out += 1;
                    self.remove(id, Some(e));
                    continue;
                }
            }
            if c.keepalive_at.is_some_and(|d| d <= now) {
                if let Err(e) = c.on_keepalive_timeout(now) {
                    self.counters.conns_timed_out += 1;
                    self.remove(id, Some(e));
                    continue;
                }
            }
            if c.ack_at.is_some_and(|d| d <= now) {
                c.ack_at = None;
                c.ack_now = true;
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
        if c.fin_queued
            || !matches!(
                c.state,
                State::SynSent | State::SynReceived | State::Established | State::CloseWait
            )
        {
            return Err(Error::WriteClosed);
        }
        let n = data.len().min(c.send_space());
        c.send_buf.extend(&data[..n]);
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
            c.snd_up = Some(c.buf_seq + c.send_buf.len() as u32);
        }
        Ok(n)
    }

    /// Reads received data: `Ok(0)` at end of stream, `WouldBlock` when
    /// nothing is there yet.
    pub fn recv(&mut self, _now: Instant, conn: ConnId, buf: &mut [u8]) -> Result<usize, Error> {
        let mss = self.cfg.mss;
        let c = self.conns.get_mut(&conn).ok_or(Error::NotFound)?;
        if c.recv_buf.is_empty() {
            return if c.peer_fin {
                Ok(0)
            } else {
                Err(Error::WouldBlock)
            };
        }
        let n = buf.len().min(c.recv_buf.len());
        let (a, b) = c.recv_buf.as_slices();
        let first = a.len().min(n);
        buf[..first].copy_from_slice(&a[..first]);
        buf[first..n].copy_from_slice(&b[..n - first]);
        c.recv_buf.drain(..n);
        // RFC 9293 §3.8.6.2.2: tell the peer once the window opened by at
        // least min(half the buffer, one MSS).
        if c.window_update_due(mss) {
            c.ack_now = true;
            self.after(conn);
        }
        Ok(n)
    }

    /// No more data will be sent: queue a FIN after what is buffered.
    pub fn shutdown_write(&mut self, _now: Instant, conn: ConnId) -> Result<(), Error> {
        let c = self.conns.get_mut(&conn).ok_or(Error::NotFound)?;
        if c.fin_queued {
            return Ok(());
        }
        match c.state {
            State::SynSent => {
                self.remove(conn, None);
                return Ok(());
            }
            State::SynReceived | State::Established => c.set_state(State::FinWait1),
            State::CloseWait => c.set_state(State::LastAck),
            _ => return Ok(()),
        }
        c.fin_queued = true;
        self.after(conn);
        Ok(())
    }

    /// The application is done with the connection: FIN after buffered
    /// data; unread data makes it a reset (RFC 9293 §3.10.4, RFC 2525 §2.17).
    pub fn close(&mut self, now: Instant, conn: ConnId) -> Result<(), Error> {
        let c = self.conns.get_mut(&conn).ok_or(Error::NotFound)?;
        if !c.recv_buf.is_empty() {
            return self.abort(now, conn);
        }
        c.app_closed = true;
        if c.state == State::FinWait2 && c.close_at.is_none() {
            c.close_at = Some(now + self.cfg.fin_wait2_timeout);
        }
        self.shutdown_write(now, conn)?;
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.state == State::FinWait2 && c.close_at.is_none() {
                c.close_at = Some(now + self.cfg.fin_wait2_timeout);
            }
        }
        self.after(conn);
        Ok(())
    }

    /// Resets the connection at once (RFC 9293 §3.10.5 ABORT).
    pub fn abort(&mut self, _now: Instant, conn: ConnId) -> Result<(), Error> {
        let c = self.conns.get(&conn).ok_or(Error::NotFound)?;
        if !matches!(c.state, State::SynSent | State::TimeWait | State::Closed) {
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

    /// Keepalive probes after `idle` (None: off, the default).
    pub fn set_keepalive(&mut self, conn: ConnId, idle: Option<Duration>) -> Result<(), Error> {
        let c = self.conns.get_mut(&conn).ok_or(Error::NotFound)?;
        c.keepalive = idle;
        c.rearm_keepalive();
        self.after(conn);
        Ok(())
    }

    /// The state of a connection (None once released).
    pub fn state(&self, conn: ConnId) -> Option<State> {
        self.conns.get(&conn).map(|c| c.state)
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
