//! One connection's transmission control block and what it sends.
//!
//! The receive-side rules (which segment changes what) live in
//! `stack.rs`, next to the RFC 9293 §3.10.7 text they implement; this file
//! owns the sending side: which segment goes out next, retransmission and
//! the RTT estimator (RFC 6298).

use std::collections::VecDeque;
use std::time::Duration;

use tcp_common::tcp_flags::{ACK, FIN, PSH, RST, SYN, URG};

use super::seq::SeqNum;
use super::{is_transition, Config, ConnId, ConnInfo, Error, FourTuple, Instant, State};
use crate::wire::{fill_checksum, TcpOptions, TcpRepr};

/// The MSS assumed when the peer sends none (RFC 9293 §3.7.1, MUST-15).
pub const DEFAULT_PEER_MSS: u16 = 536;

pub(crate) struct Conn {
    pub id: ConnId,
    pub tuple: FourTuple,
    pub state: State,
    /// The application holds a handle (it got Accepted/Connected, or called
    /// connect): it is told when the connection ends.
    pub known_to_app: bool,
    /// Opened by a SYN to a listener (a reset returns it to LISTEN).
    pub passive: bool,
    /// The application called close(): nothing more will be read.
    pub app_closed: bool,

    // Send sequence space (RFC 9293 §3.3.1).
    pub iss: SeqNum,
    pub snd_una: SeqNum,
    pub snd_nxt: SeqNum,
    /// Highest sequence number sent so far (snd_nxt goes back on a timeout).
    pub snd_max: SeqNum,
    pub snd_wnd: u32,
    pub snd_wl1: SeqNum,
    pub snd_wl2: SeqNum,
    /// Largest window the peer ever offered (sender SWS avoidance).
    pub max_snd_wnd: u32,
    pub peer_mss: u16,
    /// Unacknowledged and unsent bytes; `send_buf[0]` has sequence `buf_seq`.
    pub send_buf: VecDeque<u8>,
    pub buf_seq: SeqNum,
    pub send_cap: usize,
    /// The application finished writing: a FIN follows the last byte.
    pub fin_queued: bool,

    // Receive sequence space.
    pub irs: SeqNum,
    pub rcv_nxt: SeqNum,
    /// Right edge of the window we advertised; never moves left.
    pub rcv_adv: SeqNum,
    pub recv_buf: VecDeque<u8>,
    pub recv_cap: usize,
    pub peer_fin: bool,
    /// Segments beyond a hole, sorted by sequence number, held until the
    /// hole fills; their total stays within the receive window.
    pub out_of_order: Vec<(SeqNum, Vec<u8>)>,
    pub out_of_order_bytes: usize,

    // Timers and the RTT estimator.
    pub rto: Duration,
    pub srtt: Option<Duration>,
    pub rttvar: Duration,
    /// The segment being timed: (sequence that acknowledges it, sent at).
    pub rtt_probe: Option<(SeqNum, Instant)>,
    pub retx_at: Option<Instant>,
    pub retries: u32,
    /// Zero window with data waiting: the next retransmission timeout sends
    /// a one-byte probe instead (RFC 9293 §3.8.6.1).
    pub probe_pending: bool,
    pub ack_at: Option<Instant>,
    pub ack_now: bool,
    pub unacked_segs: u32,
    /// End of TIME-WAIT or of an orphaned FIN-WAIT-2.
    pub close_at: Option<Instant>,
    /// The deadline currently in the stack's timer heap.
    pub scheduled: Option<Instant>,
    /// In the stack's transmit queue.
    pub queued: bool,

    pub want_writable: bool,
    /// Send urgent pointer: the sequence number just past the last urgent
    /// byte (RFC 6093), while it is not yet acknowledged.
    pub snd_up: Option<SeqNum>,
    pub nodelay: bool,
    pub keepalive: Option<Duration>,
    pub retransmits: u64,
    /// When the last segment arrived (keepalive idles from here).
    pub last_recv: Instant,
    pub keepalive_at: Option<Instant>,
    pub keepalive_probes: u32,
    pub keepalive_probe_due: bool,
}

/// Keepalive probes sent without an answer before the connection is
/// declared dead (Linux's tcp_keepalive_probes).
pub const KEEPALIVE_PROBES: u32 = 9;
/// Longest gap between keepalive probes (Linux's tcp_keepalive_intvl).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(75);

/// What the stack should count after an `emit`.
#[derive(Default)]
pub(crate) struct EmitStats {
    pub retransmit: bool,
}

impl Conn {
    pub fn new(id: ConnId, tuple: FourTuple, state: State, iss: SeqNum, cfg: &Config) -> Conn {
        Conn {
            id,
            tuple,
            state,
            known_to_app: false,
            passive: false,
            app_closed: false,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            snd_wnd: 0,
            snd_wl1: SeqNum::default(),
            snd_wl2: SeqNum::default(),
            max_snd_wnd: 0,
            peer_mss: DEFAULT_PEER_MSS,
            send_buf: VecDeque::new(),
            buf_seq: iss + 1,
            send_cap: cfg.send_buffer,
            fin_queued: false,
            irs: SeqNum::default(),
            rcv_nxt: SeqNum::default(),
            rcv_adv: SeqNum::default(),
            recv_buf: VecDeque::new(),
            recv_cap: cfg.recv_buffer,
            peer_fin: false,
            out_of_order: Vec::new(),
            out_of_order_bytes: 0,
            rto: cfg.initial_rto,
            srtt: None,
            rttvar: Duration::ZERO,
            rtt_probe: None,
            retx_at: None,
            retries: 0,
            probe_pending: false,
            ack_at: None,
            ack_now: false,
            unacked_segs: 0,
            close_at: None,
            scheduled: None,
            queued: false,
            want_writable: false,
            snd_up: None,
            nodelay: false,
            keepalive: None,
            retransmits: 0,
            last_recv: Instant::ZERO,
            keepalive_at: None,
            keepalive_probes: 0,
            keepalive_probe_due: false,
        }
    }

    /// Re-arms the keepalive timer after activity (RFC 1122 §4.2.3.6: probes
    /// only after an idle interval, which MUST default to no less than two
    /// hours; here it is off unless the application sets it).
    pub fn rearm_keepalive(&mut self) {
        self.keepalive_probes = 0;
        self.keepalive_at = self.keepalive.map(|idle| self.last_recv + idle);
    }

    /// The keepalive timer fired: Err when the peer has not answered
    /// `KEEPALIVE_PROBES` probes.
    pub fn on_keepalive_timeout(&mut self, now: Instant) -> Result<(), Error> {
        let Some(idle) = self.keepalive else {
            self.keepalive_at = None;
            return Ok(());
        };
        let interval = idle.min(KEEPALIVE_INTERVAL);
        // Only an idle, synchronized connection is probed; one with data in
        // flight has the retransmission timer watching it.
        if !matches!(self.state, State::Established | State::CloseWait)
            || self.snd_una != self.snd_max
        {
            self.keepalive_at = Some(now + interval);
            return Ok(());
        }
        if self.keepalive_probes >= KEEPALIVE_PROBES {
            return Err(Error::TimedOut);
        }
        self.keepalive_probes += 1;
        self.keepalive_probe_due = true;
        self.keepalive_at = Some(now + interval);
        Ok(())
    }

    pub fn set_state(&mut self, to: State) {
        debug_assert!(
            is_transition(self.state, to),
            "{:?} -> {:?} is not in the transition table",
            self.state,
            to
        );
        self.state = to;
    }

    pub fn info(&self) -> ConnInfo {
        ConnInfo {
            id: self.id.0,
            local: self.tuple.local,
            remote: self.tuple.remote,
            state: self.state,
            send_queue: self.send_buf.len(),
            recv_queue: self.recv_buf.len(),
            srtt_us: self.srtt.map_or(0, |d| d.as_micros() as u64),
            rto_us: self.rto.as_micros() as u64,
            retransmits: self.retransmits,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [self.retx_at, self.ack_at, self.close_at, self.keepalive_at]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn syn_acked(&self) -> bool {
        self.snd_una.gt(self.iss)
    }

    /// Sequence number of our FIN, once the application finished writing.
    pub fn fin_seq(&self) -> Option<SeqNum> {
        self.fin_queued
            .then(|| self.buf_seq + self.send_buf.len() as u32)
    }

    pub fn fin_acked(&self) -> bool {
        self.fin_seq().is_some_and(|f| self.snd_una.gt(f))
    }

    /// Free space in the send buffer.
    pub fn send_space(&self) -> usize {
        self.send_cap.saturating_sub(self.send_buf.len())
    }

    /// The receive window we may offer now: free buffer space, at most
    /// 65535 without window scaling.
    fn free_window(&self) -> u32 {
        self.recv_cap
            .saturating_sub(self.recv_buf.len())
            .min(65_535) as u32
    }

    /// The window to put in an outgoing segment. RFC 9293 §3.8.6.2.2
    /// (receiver SWS avoidance): the right edge only moves forward by at
    /// least min(half the buffer, one MSS); RFC 9293 §3.8.6 (shrinking the
    /// window is strongly discouraged): it never moves back.
    pub fn advertise(&mut self, our_mss: u16) -> u16 {
        let right = self.rcv_nxt + self.free_window();
        let step = (self.recv_cap / 2).min(our_mss as usize).max(1) as i32;
        if right.diff(self.rcv_adv) >= step || self.rcv_adv.lt(self.rcv_nxt) {
            self.rcv_adv = right;
        }
        self.rcv_adv.diff(self.rcv_nxt).clamp(0, 65_535) as u16
    }

    /// Whether reading freed enough room that the peer should hear of it.
    pub fn window_update_due(&self, our_mss: u16) -> bool {
        let right = self.rcv_nxt + self.free_window();
        let step = (self.recv_cap / 2).min(our_mss as usize).max(1) as i32;
        right.diff(self.rcv_adv) >= step
    }

    /// Keeps data that arrived beyond a hole; false if it could not be kept
    /// (outside the window, or the queue is at its bound).
    pub fn hold_out_of_order(&mut self, seq: SeqNum, data: &[u8]) -> bool {
        const MAX_SEGMENTS: usize = 512;
        let right = self.rcv_nxt + self.rcv_wnd();
        let room = self.recv_cap.saturating_sub(self.recv_buf.len());
        if !seq.gt(self.rcv_nxt) || !seq.lt(right) || self.out_of_order.len() >= MAX_SEGMENTS {
            return false;
        }
        let len = (right.diff(seq) as usize).min(data.len());
        if self.out_of_order_bytes + len > room {
            return false;
        }
        if self
            .out_of_order
            .iter()
            .any(|(s, d)| *s == seq && d.len() >= len)
        {
            return true; // a duplicate of what we hold
        }
        let at = self
            .out_of_order
            .iter()
            .position(|(s, _)| s.gt(seq))
            .unwrap_or(self.out_of_order.len());
        self.out_of_order.insert(at, (seq, data[..len].to_vec()));
        self.out_of_order_bytes += len;
        true
    }

    /// Moves held data that became contiguous into the receive buffer;
    /// true if any did.
    pub fn drain_out_of_order(&mut self) -> bool {
        let mut moved = false;
        while let Some((seq, _)) = self.out_of_order.first() {
            if seq.gt(self.rcv_nxt) {
                break;
            }
            let (seq, data) = self.out_of_order.remove(0);
            self.out_of_order_bytes -= data.len();
            let skip = self.rcv_nxt.diff(seq) as usize;
            if skip < data.len() {
                let room = self.recv_cap.saturating_sub(self.recv_buf.len());
                let take = (data.len() - skip).min(room);
                self.recv_buf.extend(&data[skip..skip + take]);
                self.rcv_nxt += take as u32;
                moved |= take > 0;
            }
        }
        moved
    }

    /// The receive window as the acceptance test sees it.
    pub fn rcv_wnd(&self) -> u32 {
        self.rcv_adv.diff(self.rcv_nxt).max(0) as u32
    }

    /// RFC 6298 §2.2–2.3: a new RTT measurement R.
    pub fn rtt_sample(&mut self, r: Duration, cfg: &Config) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(r);
                self.rttvar = self.rttvar * 3 / 4 + delta / 4;
                self.srtt = Some(srtt * 7 / 8 + r / 8);
            }
        }
        let g = Duration::from_millis(1);
        let rto = self.srtt.unwrap_or(r) + (self.rttvar * 4).max(g);
        self.rto = rto.clamp(cfg.min_rto, cfg.max_rto);
    }

    /// RFC 6298 §5.4–5.6 on the retransmission timer firing: back off and go
    /// back to the oldest unacknowledged byte. Err when out of retries.
    pub fn on_retransmit_timeout(&mut self, now: Instant, cfg: &Config) -> Result<(), Error> {
        self.retries += 1;
        let limit = if self.syn_acked() {
            cfg.max_retries
        } else {
            cfg.syn_retries
        };
        let unsent = self.unsent();
        let zero_window_probe =
            self.syn_acked() && self.snd_wnd == 0 && unsent > 0 && self.snd_una == self.snd_max;
        if self.retries > limit && !zero_window_probe {
            return Err(Error::TimedOut);
        }
        self.rto = (self.rto * 2).min(cfg.max_rto);
        if zero_window_probe {
            self.probe_pending = true;
        } else {
            self.snd_nxt = self.snd_una;
            // Karn's rule: no RTT sample from a retransmitted segment.
            self.rtt_probe = None;
        }
        self.retx_at = Some(now + self.rto);
        Ok(())
    }

    /// Bytes in the send buffer not sent yet (beyond snd_nxt).
    pub fn unsent(&self) -> usize {
        let offset = self.snd_nxt.diff(self.buf_seq).max(0) as usize;
        self.send_buf.len().saturating_sub(offset)
    }

    /// Writes the next segment this connection has to send into `buf`, or
    /// returns None when it has nothing to say.
    pub fn emit(
        &mut self,
        now: Instant,
        cfg: &Config,
        buf: &mut [u8],
        stats: &mut EmitStats,
    ) -> Option<usize> {
        let (src, dst) = (*self.tuple.local.ip(), *self.tuple.remote.ip());
        let our_mss = cfg.mss;
        // SYN or SYN,ACK (re)transmission.
        if matches!(self.state, State::SynSent | State::SynReceived) && self.snd_nxt == self.iss {
            let flags = if self.state == State::SynSent {
                SYN
            } else {
                SYN | ACK
            };
            let ack = if flags & ACK != 0 {
                self.rcv_nxt
            } else {
                SeqNum::default()
            };
            let window = if flags & ACK != 0 {
                self.advertise(our_mss)
            } else {
                self.free_window() as u16
            };
            let repr = TcpRepr {
                src_port: self.tuple.local.port(),
                dst_port: self.tuple.remote.port(),
                seq: self.iss,
                ack,
                flags,
                window,
                urgent: 0,
                options: TcpOptions {
                    mss: Some(our_mss),
                    ..Default::default()
                },
                payload: &[],
            };
            if buf.len() < repr.header_len() {
                return None;
            }
            stats.retransmit = self.snd_max != self.iss;
            if !stats.retransmit && self.rtt_probe.is_none() {
                self.rtt_probe = Some((self.iss + 1, now));
            }
            self.snd_nxt = self.iss + 1;
            self.snd_max = self.snd_max.max(self.snd_nxt);
            self.retx_at.get_or_insert(now + self.rto);
            self.ack_now = false;
            self.ack_at = None;
            return Some(repr.emit(src, dst, buf));
        }
        if self.keepalive_probe_due {
            // RFC 1122 §4.2.3.6: a probe is a segment with SEG.SEQ = SND.NXT-1
            // and no data; the peer answers it with an ACK.
            self.keepalive_probe_due = false;
            if buf.len() >= 20 {
                let window = self.advertise(our_mss);
                let repr = TcpRepr {
                    src_port: self.tuple.local.port(),
                    dst_port: self.tuple.remote.port(),
                    seq: self.snd_nxt - 1,
                    ack: self.rcv_nxt,
                    flags: ACK,
                    window,
                    urgent: 0,
                    options: TcpOptions::default(),
                    payload: &[],
                };
                return Some(repr.emit(src, dst, buf));
            }
        }
        if !self.syn_acked() && !matches!(self.state, State::TimeWait) {
            // SYN-RECEIVED waiting for the ACK of our SYN: only ACKs go out.
            return self.emit_ack(our_mss, buf);
        }
        if matches!(self.state, State::TimeWait | State::Closed) {
            return self.emit_ack(our_mss, buf);
        }

        let header = 20;
        let room = buf.len().saturating_sub(header);
        let mss = (self.peer_mss.min(our_mss) as usize).min(room).max(1);
        let offset = self.snd_nxt.diff(self.buf_seq).max(0) as usize;
        let unsent = self.send_buf.len().saturating_sub(offset);
        let usable = (self.snd_una + self.snd_wnd).diff(self.snd_nxt).max(0) as usize;
        let mut n = unsent.min(usable).min(mss);
        let in_flight = self.snd_nxt != self.snd_una;
        if self.probe_pending {
            self.probe_pending = false;
            if unsent > 0 && usable == 0 {
                n = 1;
            }
        } else if n > 0 && n < mss {
            // RFC 9293 §3.8.6.2.1 (sender SWS avoidance) and RFC 896 (Nagle):
            // a short segment goes out only when it is all there is to send
            // and nothing is in flight (or Nagle is off), or when it fills at
            // least half the largest window the peer offered.
            let tail = n == unsent;
            let nagle_ok = self.nodelay || !in_flight || self.fin_queued;
            let half_window = n >= (self.max_snd_wnd as usize / 2).max(1);
            if !((tail && nagle_ok) || half_window) {
                n = 0;
            }
        }
        let fin = self.fin_queued
            && offset + n == self.send_buf.len()
            && self.snd_nxt + n as u32 == self.fin_seq().expect("fin queued");
        if n == 0 && !fin {
            // RFC 9293 §3.8.6.1: data waits behind a zero window and nothing
            // is in flight to bring an ACK: arm the persist timer.
            if unsent > 0 && usable == 0 && !in_flight && self.retx_at.is_none() {
                self.retx_at = Some(now + self.rto);
            }
            return self.emit_ack(our_mss, buf);
        }
        let mut flags = ACK;
        if fin {
            flags |= FIN;
        }
        if n > 0 && offset + n == self.send_buf.len() {
            flags |= PSH;
        }
        // RFC 9293 §3.8.5 / RFC 6093: while urgent data is ahead, every
        // segment carries URG and the offset to the byte after it.
        let mut urgent = 0;
        if let Some(up) = self.snd_up {
            if up.gt(self.snd_nxt) {
                flags |= URG;
                urgent = up.diff(self.snd_nxt).min(65_535) as u16;
            }
        }
        let window = self.advertise(our_mss);
        let repr = TcpRepr {
            src_port: self.tuple.local.port(),
            dst_port: self.tuple.remote.port(),
            seq: self.snd_nxt,
            ack: self.rcv_nxt,
            flags,
            window,
            urgent,
            options: TcpOptions::default(),
            payload: &[],
        };
        repr.emit_header(buf, header);
        let (a, b) = self.send_buf.as_slices();
        // Copy send_buf[offset..offset + n] (a VecDeque may wrap).
        let dst_payload = &mut buf[header..header + n];
        if offset < a.len() {
            let first = (a.len() - offset).min(n);
            dst_payload[..first].copy_from_slice(&a[offset..offset + first]);
            dst_payload[first..].copy_from_slice(&b[..n - first]);
        } else {
            let o = offset - a.len();
            dst_payload.copy_from_slice(&b[o..o + n]);
        }
        let len = header + n;
        fill_checksum(src, dst, &mut buf[..len]);

        let seg_len = n as u32 + fin as u32;
        stats.retransmit = self.snd_nxt.lt(self.snd_max);
        if stats.retransmit {
            self.retransmits += 1;
        } else if self.rtt_probe.is_none() {
            self.rtt_probe = Some((self.snd_nxt + seg_len, now));
        }
        self.snd_nxt += seg_len;
        self.snd_max = self.snd_max.max(self.snd_nxt);
        self.retx_at.get_or_insert(now + self.rto);
        self.ack_now = false;
        self.ack_at = None;
        self.unacked_segs = 0;
        Some(len)
    }

    fn emit_ack(&mut self, our_mss: u16, buf: &mut [u8]) -> Option<usize> {
        if !self.ack_now || buf.len() < 20 {
            return None;
        }
        self.ack_now = false;
        self.ack_at = None;
        self.unacked_segs = 0;
        let window = self.advertise(our_mss);
        let repr = TcpRepr {
            src_port: self.tuple.local.port(),
            dst_port: self.tuple.remote.port(),
            seq: self.snd_nxt,
            ack: self.rcv_nxt,
            flags: ACK,
            window,
            urgent: 0,
            options: TcpOptions::default(),
            payload: &[],
        };
        Some(repr.emit(*self.tuple.local.ip(), *self.tuple.remote.ip(), buf))
    }

    /// A RST for this connection (on abort): <SEQ=SND.NXT><CTL=RST>.
    pub fn reset_segment(&self) -> (SeqNum, SeqNum, u8) {
        (self.snd_nxt, SeqNum::default(), RST)
    }
}
