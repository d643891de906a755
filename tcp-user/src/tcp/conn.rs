//! One connection: its state as a type per RFC 9293 state, each holding
//! only what is valid in that state, and the transitions between them as
//! functions that consume one state and return the next.
//!
//! - [`Send`]: the send sequence space, buffer and retransmission timer,
//!   from our SYN until our FIN is acknowledged.
//! - [`Recv`]: the receive sequence space, buffer and ACK obligations, from
//!   the peer's SYN on.
//!
//! SYN-SENT has no `Recv` (nothing received yet); FIN-WAIT-2 and TIME-WAIT
//! have no `Send` (everything we sent is acknowledged, so there is nothing
//! to retransmit); TIME-WAIT knows when it ends.
//!
//! The receive-side rules (which segment changes what) live in `stack.rs`
//! next to the RFC 9293 §3.10.7 text they implement; this file owns the
//! sending side: which segment goes out next, retransmission and the RTT
//! estimator (RFC 6298).

use std::collections::VecDeque;
use std::time::Duration;

use tcp_common::tcp_flags::{ACK, FIN, PSH, RST, SYN, URG};

use super::cc::{Algorithm, CongestionControl, Controller};
use super::recovery::{Delivery, Scoreboard};
use super::seq::SeqNum;
use super::{is_transition, Config, ConnId, ConnInfo, Error, FourTuple, Instant, State};
use crate::wire::{fill_checksum, SackBlocks, TcpOptions, TcpRepr};

/// The MSS assumed when the peer sends none (RFC 9293 §3.7.1, MUST-15).
pub const DEFAULT_PEER_MSS: u16 = 536;

/// Keepalive probes sent without an answer before the connection is
/// declared dead (Linux's tcp_keepalive_probes).
pub const KEEPALIVE_PROBES: u32 = 9;
/// Longest gap between keepalive probes (Linux's tcp_keepalive_intvl).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(75);

/// RFC 8985 §7.2's WCDelAckT: the longest the peer may delay the ACK of a
/// lone segment, which a probe timeout for one segment in flight waits out.
const WORST_CASE_DELAYED_ACK: Duration = Duration::from_millis(200);
/// The shortest probe timeout. RFC 8985 §7.2 asks for two SRTTs and sets
/// no floor but the timer's granularity; Linux adds 2 ms (two jiffies,
/// its timer's grain) to the two SRTTs. The driver's timer is precise to
/// microseconds, so the floor here only guards against ordinary delays
/// of a receiver that should answer at once (two or more segments in
/// flight, RFC 5681 §4.2: an ACK for every second full-sized segment; a
/// lone segment waits out WORST_CASE_DELAYED_ACK instead): the
/// scheduling of a busy host: a Linux client on the benchmark's veth
/// acknowledged 99.5 % of data segments within 223 µs and none between
/// 0.5 and 1 ms (the slower ones were lone segments behind a delayed ACK).
/// On that 40 µs path every tail whose last ACK is lost stalls for this
/// long; a probe that comes too early costs a few segments of new data,
/// or a duplicate that a D-SACK shows harmless (RFC 8985 §7.4).
const MIN_PROBE_TIMEOUT: Duration = Duration::from_micros(500);

/// The shortest the RTT bound sets the delayed-ACK timeout to
/// ([`delayed_ack_timeout`]): Linux's probe timeout for a flight of
/// several segments is two SRTTs plus 2 ms (two jiffies), so an ACK held
/// for less still beats the probe of a Linux sender on any path.
const MIN_DELAYED_ACK: Duration = Duration::from_millis(1);

/// How long the ACK of a lone in-order segment may wait: the configured
/// timeout (RFC 1122 §4.2.3.2, RFC 5681 §4.2), but no longer than one
/// smoothed round trip and never below [`MIN_DELAYED_ACK`]. A lone
/// segment is often a sender's tail-loss probe after our ACK of its
/// flight was lost (RFC 8985 §7): its sender expects the ACK within
/// about two round trips and otherwise waits for its retransmission
/// timeout. Held for the full 40 ms on a path of microseconds, the ACK
/// cost a Linux client a 40 ms stall, a 40 ms RTT sample that paced its
/// next segments milliseconds apart, and, when the late ACK was lost
/// too, its 200 ms RTO (upload at 1 % loss: one client RTO per 16 MiB
/// run, against 0.1 with the kernel receiving). Linux bounds its delay by
/// the RTT as well,
/// with a 40 ms floor that its jiffy timers need and a timerfd does not.
/// Request/response loses nothing: the response carries the ACK as soon
/// as the application writes it.
pub fn delayed_ack_timeout(configured: Duration, srtt: Option<Duration>) -> Duration {
    match srtt {
        Some(srtt) => configured.min(srtt.max(MIN_DELAYED_ACK)),
        None => configured,
    }
}

/// Bytes a timestamps option takes on every segment once negotiated
/// (NOP, NOP, kind, length, TSval, TSecr): the payload shrinks by as much
/// (RFC 6691).
const TIMESTAMPS_LEN: usize = 12;

/// RFC 7323 §5.5: a TS.Recent older than 24 days is not trusted for PAWS
/// (the peer's 1 ms clock may have wrapped past half its range).
pub const PAWS_IDLE: Duration = Duration::from_secs(24 * 24 * 3600);

/// A timestamp clock value: milliseconds (RFC 7323 §5.4: between 1 ms and
/// 1 s per tick; a faster clock would wrap within PAWS's window on a long
/// idle connection) plus a per-connection offset (§7.1, so the clock does
/// not leak the host's uptime or link connections together).
pub fn tsval(now: Instant, offset: u32) -> u32 {
    ((now.as_micros() / 1000) as u32).wrapping_add(offset)
}

/// RFC 3522 §3.2: the echoed timestamp `ecr` (0: none) is older than
/// `tsval`, so the ACK was drawn by a segment sent before the one that
/// carried `tsval` (modulo-2^32 comparison, RFC 7323 §5.2).
fn echo_predates(ecr: u32, tsval: u32) -> bool {
    ecr != 0 && (tsval.wrapping_sub(ecr) as i32) > 0
}

/// RFC 7323 timestamps state of the receive side, once negotiated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timestamps {
    /// Added to our millisecond clock in TSval.
    pub offset: u32,
    /// TS.Recent: the peer's TSval we echo (§4.3) and check PAWS against.
    pub recent: u32,
    /// When TS.Recent was recorded (§5.5).
    pub recent_at: Instant,
}

/// What the retransmission timer was when it fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// Data in flight was not acknowledged in time (RFC 6298), with no
    /// recovery under way.
    Retransmission,
    /// The same, during fast recovery (a loss recovery could not repair).
    RetransmissionInRecovery,
    /// The same, again after an earlier timeout (backed off).
    RetransmissionRepeated,
    /// Nothing in flight, data waiting behind a zero or too-small window:
    /// the persist timer (RFC 9293 §3.8.6.1).
    Persist,
}

/// The send side (RFC 9293 §3.3.1, send sequence variables).
pub(crate) struct Send {
    pub iss: SeqNum,
    pub snd_una: SeqNum,
    pub snd_nxt: SeqNum,
    /// Highest sequence number sent so far (snd_nxt goes back on a timeout).
    pub snd_max: SeqNum,
    pub snd_wnd: u32,
    /// The peer's window scale shift (RFC 7323 §2.3; 0 unless negotiated).
    pub snd_wscale: u8,
    /// The shift we offer in our SYN or SYN,ACK (None: no option sent).
    pub wscale_offer: Option<u8>,
    /// We offer SACK-permitted in our SYN or SYN,ACK (RFC 2018); after the
    /// peer's SYN, whether SACK is in use.
    pub sack_offer: bool,
    /// Our timestamp clock offset while we offer timestamps (RFC 7323);
    /// after the peer's SYN, Some only if they are in use.
    pub ts_offset: Option<u32>,
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
    /// Send urgent pointer: the sequence number just past the last urgent
    /// byte (RFC 6093), while it is not yet acknowledged.
    pub snd_up: Option<SeqNum>,
    pub rto: Duration,
    pub srtt: Option<Duration>,
    pub rttvar: Duration,
    /// The SYN being timed: (sequence that acknowledges it, sent at). Data
    /// is timed through the scoreboard's records.
    pub rtt_probe: Option<(SeqNum, Instant)>,
    pub retx_at: Option<Instant>,
    pub retries: u32,
    /// Zero window with data waiting: the next timeout sends a one-byte
    /// probe instead (RFC 9293 §3.8.6.1).
    pub probe_pending: bool,
    /// Sender MSS: the smaller of the peer's and ours.
    pub smss: usize,
    /// How many bytes may be in flight (RFC 5681).
    pub cc: Controller,
    pub algorithm: Algorithm,
    /// Duplicate ACKs in a row (RFC 5681 §2 definition).
    pub dupacks: u32,
    /// In fast recovery until this sequence number is acknowledged
    /// (RFC 6582's "recover").
    pub recover: Option<SeqNum>,
    /// A segment to retransmit at once, starting here (fast retransmit, a
    /// NewReno partial ACK, or the first retransmission of SACK-based
    /// recovery), without moving snd_nxt back.
    pub fast_retx: Option<SeqNum>,
    /// Sent segments: SACK marks, loss marks, send times.
    pub sb: Scoreboard,
    /// The current recovery began with a retransmission timeout (the
    /// window regrows by slow start, it is not reduced again).
    pub rto_recovery: bool,
    /// RACK's reordering timer (RFC 8985 §6.2 step 5).
    pub reorder_at: Option<Instant>,
    /// The tail-loss probe timer (RFC 8985 §7.2).
    pub probe_at: Option<Instant>,
    /// The probe timer fired: the next transmission is a probe.
    pub tlp_pending: bool,
    /// A probe of new data went out: this many more full-sized segments
    /// (up to two) follow it, whatever cwnd says, so that the probe draws
    /// an immediate ACK even when one of them is lost.
    pub tlp_follow: u8,
    /// After a first retransmission timeout with timestamps: the TSval of
    /// the retransmission (no earlier than this) and what the sender was
    /// before the timeout, to go back to if it proves spurious (RFC 3522
    /// detection, RFC 4015 response). Boxed, as is `recovery_undo`: each
    /// holds a whole congestion controller, and an idle connection should
    /// not carry two spare ones (an allocation per loss episode instead).
    pub rto_undo: Option<Box<RtoUndo>>,
    /// Timeouts found spurious and undone.
    pub spurious_rtos: u64,
    /// The current or last loss episode of fast recovery (RACK): the
    /// sender before its reduction and what was retransmitted, to go back
    /// to if every retransmission proves unnecessary (RFC 3522 / RFC 3708
    /// detection, RFC 4015 response).
    pub recovery_undo: Option<Box<RecoveryUndo>>,
    /// Fast recoveries found spurious and undone.
    pub recoveries_undone: u64,
    /// A probe is out: (SND.MAX when it was sent, it was a retransmission).
    pub tlp_end: Option<(SeqNum, bool)>,
    /// A probe that retransmitted: its range and TSval.
    pub tlp_probe: Option<(SeqNum, SeqNum, Option<u32>)>,
}

/// A loss episode of fast recovery, kept until it is undone or the next
/// one (or a timeout) begins.
pub struct RecoveryUndo {
    /// The congestion controller just before the reduction.
    cc: Controller,
    /// SND.UNA when the episode began: D-SACKs below it are older.
    start: SeqNum,
    /// TSval of the episode's first retransmission.
    tsval: Option<u32>,
    /// End of the highest retransmission of the episode.
    retx_high: Option<SeqNum>,
    /// Bytes retransmitted in the episode not yet reported duplicate by a
    /// D-SACK (Linux's undo_retrans, in bytes).
    retx_left: usize,
    /// The timestamp test was made (on the first ACK covering every
    /// retransmission) and failed: only D-SACKs may undo now.
    ts_checked: bool,
}

/// The sender's state just before a retransmission timeout.
pub struct RtoUndo {
    tsval: u32,
    cc: Controller,
    recover: Option<SeqNum>,
    rto_recovery: bool,
}

impl Send {
    pub fn new(iss: SeqNum, cfg: &Config) -> Send {
        Send {
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            snd_wnd: 0,
            snd_wscale: 0,
            wscale_offer: cfg.window_scaling.then(|| window_shift(cfg.recv_buffer)),
            sack_offer: cfg.sack,
            // The ISS is already a keyed hash of the 4-tuple and the clock
            // (RFC 6528): a fine source for the offset too.
            ts_offset: cfg
                .timestamps
                .then(|| iss.get().rotate_left(16) ^ 0x9e37_79b9),
            snd_wl1: SeqNum::default(),
            snd_wl2: SeqNum::default(),
            max_snd_wnd: 0,
            peer_mss: DEFAULT_PEER_MSS,
            send_buf: VecDeque::new(),
            buf_seq: iss + 1,
            send_cap: cfg.send_buffer,
            fin_queued: false,
            snd_up: None,
            rto: cfg.initial_rto,
            srtt: None,
            rttvar: Duration::ZERO,
            rtt_probe: None,
            retx_at: None,
            retries: 0,
            probe_pending: false,
            smss: cfg.mss as usize,
            algorithm: cfg.congestion,
            cc: cfg
                .congestion
                .build(DEFAULT_PEER_MSS.min(cfg.mss) as usize, None),
            dupacks: 0,
            recover: None,
            fast_retx: None,
            sb: Scoreboard::default(),
            rto_recovery: false,
            reorder_at: None,
            probe_at: None,
            tlp_pending: false,
            tlp_follow: 0,
            rto_undo: None,
            spurious_rtos: 0,
            recovery_undo: None,
            recoveries_undone: 0,
            tlp_end: None,
            tlp_probe: None,
        }
    }

    /// Bytes sent and not yet acknowledged.
    pub fn flight(&self) -> usize {
        self.snd_max.diff(self.snd_una).max(0) as usize
    }

    /// Takes what the peer's SYN tells the sender: its window and MSS, and
    /// whether window scaling is on. RFC 7323 §2.2: scaling is in effect
    /// only when both SYNs carry the option, and "the window field in a
    /// segment where the SYN bit is set MUST NOT be scaled". Returns the
    /// shift our receive side uses (0 when scaling is off).
    pub fn learn_from_syn(&mut self, seg: &TcpRepr<'_>) -> u8 {
        self.peer_mss = seg.options.mss.unwrap_or(DEFAULT_PEER_MSS).max(64);
        // RFC 7323 §3.2: timestamps are used only when both SYNs carry them.
        if seg.options.timestamps.is_none() {
            self.ts_offset = None;
        }
        // The sender MSS counts payload only: the timestamps option on every
        // segment comes out of it (RFC 6691).
        let options = if self.ts_offset.is_some() {
            TIMESTAMPS_LEN
        } else {
            0
        };
        self.smss = (self.smss.min(self.peer_mss as usize) - options).max(1);
        self.cc = self.algorithm.build(self.smss, None);
        let our_shift = match (self.wscale_offer, seg.options.window_scale) {
            (Some(ours), Some(theirs)) => {
                // "If a Window Scale option is received with a shift.cnt
                // value larger than 14, the TCP SHOULD ... use 14".
                self.snd_wscale = theirs.min(14);
                ours
            }
            _ => {
                self.wscale_offer = None;
                self.snd_wscale = 0;
                0
            }
        };
        // RFC 2018 §2: SACK is used only when both SYNs carried
        // SACK-permitted.
        self.sack_offer &= seg.options.sack_permitted;
        self.snd_wnd = seg.window as u32;
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = seg.seq;
        self.snd_wl2 = seg.ack;
        our_shift
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

    pub fn send_space(&self) -> usize {
        self.send_cap.saturating_sub(self.send_buf.len())
    }

    /// Bytes in the send buffer not sent yet (beyond snd_nxt).
    pub fn unsent(&self) -> usize {
        let offset = self.snd_nxt.diff(self.buf_seq).max(0) as usize;
        self.send_buf.len().saturating_sub(offset)
    }

    /// RFC 6298 §2.2–2.3: a new RTT measurement R.
    ///
    /// RFC 6298 §2.3: "RTO <- SRTT + max (G, K*RTTVAR)", and §2.4: "if it
    /// is less than 1 second, then the RTO SHOULD be rounded up" to the
    /// minimum. We apply the minimum to the variance term instead, as
    /// Linux does (`rttvar` never below `rto_min` in `tcp_set_rto`): RTO =
    /// SRTT + max(G, K*RTTVAR, min_rto). The RTO is then never below the
    /// RFC's either, and it stays a margin of at least `min_rto` above
    /// the smoothed RTT. With the minimum on the whole sum, a path whose
    /// RTT is steady near the minimum (the peer delays its ACK of a lone
    /// segment, or a busy receiver answers after tens of milliseconds)
    /// gets an RTO only a few RTTVARs above SRTT; RTTVAR shrinks by a
    /// quarter per sample, so after a few calm samples the next slow ACK
    /// lands after a spurious timeout (measured: 40,000 of them in 5 s of
    /// request/response over 10,000 connections against a Linux client,
    /// where the kernel server, with the same 20 ms minimum, had 661).
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
        let margin = (self.rttvar * 4).max(g).max(cfg.min_rto);
        self.rto = (self.srtt.unwrap_or(r) + margin).min(cfg.max_rto);
    }

    /// The RTT this ACK measures, if any: one sample per ACK (RFC 6298
    /// allows more than one per RTT; RFC 7323 §4 takes one from every
    /// timestamped ACK), from the send time of the most recently sent
    /// segment it delivers, in microseconds.
    ///
    /// Karn's rule (RFC 6298 §3: "RTT samples MUST NOT be made using
    /// segments that were retransmitted") is applied to the whole ACK when
    /// it cumulatively acknowledges retransmitted data, as Linux does: the
    /// retransmission filling the hole drew this ACK, so its timing says
    /// nothing about the segments sent once that it covers too (their own
    /// ACKs were lost or held behind the hole); measured from them, the
    /// sample would include the whole recovery. The echoed timestamp
    /// settles which transmission drew the ACK (RFC 7323 §4.2: the
    /// retransmission ambiguity "is eliminated by timestamps"): an echo no
    /// older than the TSval of the latest retransmission delivered means
    /// that retransmission drew it, and the RTT is timed from it. An older
    /// echo means an earlier transmission arrived and the ACK that said
    /// so was lost or delayed: RTT = now - TSecr would then measure the
    /// wait for the timeout (measured: 21–146 ms samples on a 40 µs path
    /// after lost ACKs at 5 % loss, an RTO of 160 ms), so there is no
    /// sample at all.
    fn ack_rtt(&self, now: Instant, delivery: &Delivery, seg: &TcpRepr<'_>) -> Option<Duration> {
        if !delivery.acked_retransmitted {
            return delivery.rtt;
        }
        let (offset, (_, ecr)) = (self.ts_offset?, seg.options.timestamps?);
        let sent_at = delivery.retransmission_sent_at?;
        if ecr == 0 || echo_predates(ecr, tsval(sent_at, offset)) {
            return None;
        }
        Some(now.saturating_duration_since(sent_at))
    }

    /// RFC 9293 §3.10.7.4, fifth step, for an ACK with SND.UNA < SEG.ACK
    /// =< SND.NXT: "set SND.UNA <- SEG.ACK. Any segments on the
    /// retransmission queue that are thereby entirely acknowledged are
    /// removed." Returns true if it acknowledged anything new.
    pub fn on_ack(&mut self, now: Instant, seg: &TcpRepr<'_>, cfg: &Config) -> bool {
        let ack = seg.ack;
        let advanced = ack.gt(self.snd_una);
        let blocks = if self.sack_offer {
            seg.options.sack.as_slice()
        } else {
            &[]
        };
        let cum = if advanced { ack } else { self.snd_una };
        let mut dsack_block = None;
        if let Some(&(left, right)) = blocks.first() {
            // RFC 2883 §4: "If the first SACK block's left edge is below the
            // cumulative ACK ... or if the first SACK block is contained in
            // the second SACK block, then the first block is a D-SACK".
            let dsack = left.lt(ack)
                || blocks
                    .get(1)
                    .is_some_and(|&(l2, r2)| l2.le(left) && right.le(r2));
            if dsack && left.lt(right) {
                dsack_block = Some((left, right));
                self.sb.on_dsack(self.snd_una, self.snd_nxt);
                self.on_dsack(left, right);
            }
        }
        let delivery = self.sb.on_ack(now, cum, self.snd_max, blocks);
        if !advanced {
            // RFC 1122 §4.2.2.17: the sender "MUST NOT close the connection
            // as long as the receiving TCP continues to send
            // acknowledgments in response to the probe segments": an answer
            // that keeps the window closed still proves the peer alive.
            if ack == self.snd_una && seg.window == 0 && self.snd_una != self.snd_max {
                self.retries = 0;
            }
            if self.sack_offer {
                if delivery.sacked > 0 {
                    self.detect_losses(now);
                    self.arm_probe(now);
                }
            } else {
                self.on_duplicate_ack(now, seg);
            }
            return false;
        }
        let acked = ack.diff(self.snd_una) as usize;
        let data_acked = ack.diff(self.buf_seq).clamp(0, self.send_buf.len() as i32) as usize;
        self.send_buf.drain(..data_acked);
        self.buf_seq += data_acked as u32;
        self.snd_una = ack;
        if self.snd_up.is_some_and(|up| up.le(ack)) {
            self.snd_up = None;
        }
        if self.snd_nxt.lt(self.snd_una) {
            self.snd_nxt = self.snd_una;
        }
        if self.fast_retx.is_some_and(|s| s.lt(ack)) {
            self.fast_retx = None;
        }
        let syn_sample = match self.rtt_probe {
            Some((s, t)) if ack.ge(s) => {
                self.rtt_probe = None;
                Some(now.saturating_duration_since(t))
            }
            _ => None,
        };
        if let Some(r) = self.ack_rtt(now, &delivery, seg).or(syn_sample) {
            self.rtt_sample(r, cfg);
        }
        self.dupacks = 0;
        self.retries = 0;
        // RFC 3522: the first ACK of new data after a timeout echoes a
        // TSval older than the retransmission's: the original arrived and
        // the timeout was spurious (on this path: a delayed or lost ACK).
        // RFC 4015's response: the window and recovery state go back to
        // what they were before it, and what the timeout marked lost is no
        // longer resent; RACK marks again what really is lost.
        let ecr = seg.options.timestamps.map_or(0, |(_, ecr)| ecr);
        if let Some(undo) = self.rto_undo.take() {
            if echo_predates(ecr, undo.tsval) && self.sack_offer {
                self.cc = undo.cc;
                self.recover = undo.recover;
                self.rto_recovery = undo.rto_recovery;
                self.sb.undo_timeout();
                self.spurious_rtos += 1;
            }
        }
        // RFC 3522 §3.2, applied to a fast-recovery episode (as Linux
        // does): the first ACK that covers every retransmission of the
        // episode echoes a TSval older than the first retransmission's:
        // the segment that filled the last hole was an original, so none
        // of the retransmissions was needed and the reduction is undone.
        if let Some(u) = self.recovery_undo.as_mut() {
            if let (Some(ts), Some(high)) = (u.tsval, u.retx_high) {
                if !u.ts_checked && ack.ge(high) {
                    u.ts_checked = true;
                    if echo_predates(ecr, ts) {
                        self.undo_recovery();
                    }
                }
            }
        }
        // RFC 6298 §5.2–5.3: all acknowledged → stop the timer, else restart it.
        self.retx_at = (self.snd_una != self.snd_max).then(|| now + self.rto);
        if self.sack_offer {
            self.sack_ack(now, ack, acked, dsack_block, ecr);
            return true;
        }
        match self.recover {
            // RFC 6582 §3.2 step 6: a full acknowledgment ends recovery.
            Some(recover) if ack.ge(recover) => {
                self.recover = None;
                let flight = self.flight();
                self.cc.on_recovery_end(flight);
            }
            // Step 5: a partial acknowledgment: retransmit the first
            // unacknowledged segment at once.
            Some(_) => {
                self.fast_retx = Some(self.snd_una);
                self.cc.on_partial_ack(acked);
            }
            None if self.syn_acked() => self.cc.on_ack(now, acked, self.srtt),
            None => {}
        }
        true
    }

    /// The rest of an ACK that advanced SND.UNA by `acked` bytes, with SACK
    /// in use (RFC 6675, RFC 8985).
    fn sack_ack(
        &mut self,
        now: Instant,
        ack: SeqNum,
        acked: usize,
        dsack: Option<(SeqNum, SeqNum)>,
        ecr: u32,
    ) {
        match self.recover {
            // RFC 6675 §5: recovery ends when the ACK covers RecoveryPoint.
            Some(recover) if ack.ge(recover) => {
                self.recover = None;
                self.sb.on_recovery_exit();
                if !std::mem::take(&mut self.rto_recovery) {
                    let flight = self.flight();
                    self.cc.on_recovery_end(flight);
                }
            }
            // After a timeout the window regrows by slow start (RFC 5681
            // §3.1); during fast recovery it stays put and the pipe
            // estimate decides what goes (RFC 6675 §5 step C).
            Some(_) if self.rto_recovery => self.cc.on_ack(now, acked, self.srtt),
            Some(_) => {}
            None if self.syn_acked() => self.cc.on_ack(now, acked, self.srtt),
            None => {}
        }
        if let Some((end, retransmission)) = self.tlp_end {
            if ack.ge(end) {
                self.tlp_end = None;
                // RFC 8985 §7.4: a probe that retransmitted data and is
                // acknowledged without a D-SACK repaired a real loss: the
                // congestion response is owed all the same. With a D-SACK
                // of the probe on this ACK, or an echo older than the
                // probe's TSval (RFC 3522: the original drew it), both
                // arrived and nothing was lost: no response.
                let probe = self.tlp_probe.take();
                let duplicate =
                    probe.is_some_and(|(s, e, _)| dsack.is_some_and(|(l, r)| l.le(s) && e.le(r)));
                let old_echo = probe
                    .and_then(|(_, _, ts)| ts)
                    .is_some_and(|ts| echo_predates(ecr, ts));
                if retransmission && self.recover.is_none() && !duplicate && !old_echo {
                    // A D-SACK of the probe arriving later still undoes
                    // the reduction (the episode of one retransmission).
                    self.recovery_undo = probe.map(|(s, e, _)| {
                        Box::new(RecoveryUndo {
                            cc: self.cc.clone(),
                            start: s,
                            tsval: None,
                            retx_high: Some(e),
                            retx_left: e.diff(s).max(0) as usize,
                            ts_checked: true,
                        })
                    });
                    let flight = self.flight();
                    self.cc.on_congestion_event(now, flight);
                    self.cc.on_recovery_end(flight);
                }
            }
        }
        self.detect_losses(now);
        self.arm_probe(now);
    }

    /// A D-SACK block `[left, right)` from the peer: it received those
    /// bytes twice. RFC 3708 §3 (the idea; we count bytes, not segments):
    /// when the duplicates reported cover every retransmission of a loss
    /// episode, the originals had all arrived and the episode was
    /// spurious: its reduction is undone.
    fn on_dsack(&mut self, left: SeqNum, right: SeqNum) {
        let Some(u) = self.recovery_undo.as_mut() else {
            return;
        };
        let Some(high) = u.retx_high else {
            return;
        };
        // Only duplicates of what this episode retransmitted count.
        let lo = if left.lt(u.start) { u.start } else { left };
        let hi = if right.gt(high) { high } else { right };
        if !lo.lt(hi) {
            return;
        }
        u.retx_left = u.retx_left.saturating_sub(hi.diff(lo) as usize);
        if u.retx_left == 0 {
            self.undo_recovery();
        }
    }

    /// RFC 4015 §3.2's response, applied to a spurious loss episode: "the
    /// TCP sender MUST ... restore the congestion window and slow-start
    /// threshold" to what they were before the reduction (only when the
    /// window has not since grown past that), end the recovery, and stop
    /// resending what the episode marked lost; RACK marks again what
    /// really is lost.
    fn undo_recovery(&mut self) {
        let Some(u) = self.recovery_undo.take() else {
            return;
        };
        if u.cc.cwnd() >= self.cc.cwnd() {
            self.cc = u.cc;
        }
        if self.recover.is_some() && !self.rto_recovery {
            self.recover = None;
            self.sb.on_recovery_exit();
            self.fast_retx = None;
            self.sb.undo_timeout();
        }
        self.recoveries_undone += 1;
    }

    /// A segment `[start, end)` sent at `now` went again: part of the
    /// current loss episode when fast recovery is under way.
    pub fn note_retransmission(&mut self, start: SeqNum, end: SeqNum, now: Instant) {
        if self.recover.is_none() || self.rto_recovery {
            return;
        }
        let offset = self.ts_offset;
        let Some(u) = self.recovery_undo.as_mut() else {
            return;
        };
        u.retx_left += end.diff(start).max(0) as usize;
        if u.retx_high.is_none_or(|h| end.gt(h)) {
            u.retx_high = Some(end);
        }
        if u.tsval.is_none() {
            u.tsval = offset.map(|o| tsval(now, o));
        }
    }

    /// RACK (RFC 8985 §6.2): marks what is now known lost, arms the
    /// reordering timer for what may still be, and starts recovery on the
    /// first loss (RFC 6675 §5 step 4: RecoveryPoint = HighData, reduce
    /// once, retransmit the first lost segment at once).
    pub fn detect_losses(&mut self, now: Instant) {
        let (lost, timer) = self.sb.detect_loss(now, self.recover.is_some(), self.srtt);
        self.reorder_at = timer;
        if lost > 0 && self.recover.is_none() {
            let flight = self.flight();
            self.recovery_undo = Some(Box::new(RecoveryUndo {
                cc: self.cc.clone(),
                start: self.snd_una,
                tsval: None,
                retx_high: None,
                retx_left: 0,
                ts_checked: false,
            }));
            self.cc.on_congestion_event(now, flight);
            self.recover = Some(self.snd_max);
            self.tlp_end = None;
            self.tlp_follow = 0;
            self.fast_retx = self.sb.first_lost().map(|(start, _)| start);
        }
    }

    /// RFC 8985 §7.2: after new data goes out or an ACK arrives, with data
    /// in flight, no recovery and no probe outstanding, a tail-loss probe
    /// is due in two smoothed RTTs (longer when a single segment may wait
    /// for a delayed ACK), unless the retransmission timer comes first.
    ///
    /// Unlike §7.2 the probe is armed in fast recovery too, once every
    /// segment deemed lost has been resent: RACK repairs further losses
    /// only while ACKs arrive, and with a small window the last
    /// retransmission is often answered by a single ACK. When that ACK or
    /// the retransmission is lost, the ACK clock stops and without a probe
    /// only the retransmission timer (a collapse of the window, and most
    /// often a spurious one) would end the wait. The probe (new data, or
    /// the last segment) arrives out of order or as two segments and is
    /// acknowledged at once; its SACK lets RACK find a lost retransmission.
    pub fn arm_probe(&mut self, now: Instant) {
        self.probe_at = None;
        let recovering = self.recover.is_some();
        if !self.sack_offer
            || !self.syn_acked()
            || (recovering && (self.rto_recovery || self.sb.lost_bytes() > 0))
            || self.tlp_end.is_some()
            || self.reorder_at.is_some()
            || self.snd_una == self.snd_max
        {
            return;
        }
        let Some(srtt) = self.srtt else {
            return;
        };
        let mut pto = srtt * 2;
        if self.flight() <= self.smss {
            pto = pto.max(srtt * 3 / 2 + WORST_CASE_DELAYED_ACK);
        }
        let at = now + pto.max(MIN_PROBE_TIMEOUT);
        // RFC 8985 §7.2: "if the time at which an RTO would fire ... is
        // sooner than the computed time for the PTO, then the sender
        // schedules a TLP to be sent at that RTO time." The probe then
        // goes instead of the timeout (`probe_preempts_rto`), and the RTO
        // is re-armed after it (§7.3). This matters when one segment is
        // in flight: its PTO waits out the peer's delayed ACK (200 ms),
        // far past a small RTO (20 ms in the benchmark), and a Linux peer
        // delays the ACK of a lone segment 40 ms: without the probe the
        // RTO fires, spuriously, and the window collapses to one segment.
        self.probe_at = Some(match self.retx_at {
            Some(rto) if rto < at => rto,
            _ => at,
        });
    }

    /// Whether a probe is due at `now` no later than the retransmission
    /// timer (RFC 8985 §7.2: a probe scheduled at the RTO's time): then
    /// the probe goes and the timeout waits another RTO (§7.3: "the
    /// sender MUST ... re-arm the RTO timer" after sending a probe).
    pub fn probe_preempts_rto(&mut self, now: Instant) -> bool {
        let Some(probe) = self.probe_at.filter(|&p| p <= now) else {
            return false;
        };
        if self.retx_at.is_some_and(|rto| probe <= rto) {
            self.retx_at = Some(now + self.rto);
        }
        true
    }

    /// A loss timer fired: RACK's reordering timer looks again; the probe
    /// timer makes the next transmission a probe (RFC 8985 §7.3).
    pub fn on_loss_timer(&mut self, now: Instant) {
        if self.reorder_at.is_some_and(|t| t <= now) {
            self.reorder_at = None;
            self.detect_losses(now);
        }
        if self.probe_at.is_some_and(|t| t <= now) {
            self.probe_at = None;
            self.tlp_pending = true;
        }
    }

    /// RFC 5681 §2: an ACK is a duplicate when it carries no data, no SYN or
    /// FIN, acknowledges SND.UNA with data outstanding, and does not change
    /// the window. The third starts fast retransmit (§3.2); more during
    /// recovery inflate the window by one segment each.
    fn on_duplicate_ack(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let window = (seg.window as u32) << self.snd_wscale;
        let duplicate = seg.payload.is_empty()
            && seg.flags & (SYN | FIN) == 0
            && seg.ack == self.snd_una
            && self.snd_una != self.snd_max
            && window == self.snd_wnd;
        if !duplicate {
            return;
        }
        self.dupacks += 1;
        if self.recover.is_some() {
            self.cc.on_dup_ack_in_recovery();
        } else if self.dupacks == 3 {
            let flight = self.flight();
            self.cc.on_fast_retransmit(now, flight);
            self.recover = Some(self.snd_max);
            self.fast_retx = Some(self.snd_una);
        }
    }

    /// "If SND.UNA =< SEG.ACK =< SND.NXT, the send window should be updated.
    /// If (SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK)),
    /// set SND.WND <- SEG.WND, set SND.WL1 <- SEG.SEQ, and set SND.WL2 <-
    /// SEG.ACK."
    pub fn update_window(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        if self.snd_una.le(seg.ack)
            && (self.snd_wl1.lt(seg.seq) || (self.snd_wl1 == seg.seq && self.snd_wl2.le(seg.ack)))
        {
            let was_closed = self.snd_wnd == 0;
            self.snd_wnd = (seg.window as u32) << self.snd_wscale;
            self.max_snd_wnd = self.max_snd_wnd.max(self.snd_wnd);
            self.snd_wl1 = seg.seq;
            self.snd_wl2 = seg.ack;
            // The window reopens with our probe (or anything else sent past
            // the closed window) not acknowledged: the peer dropped it as
            // outside its window (RFC 9293 §3.10.7.4: "segments with higher
            // beginning sequence numbers ... not in the window" are not
            // taken). Send it again now, within the new window, instead of
            // leaving a hole that only a backed-off timeout would fill.
            if was_closed && self.snd_wnd > 0 && seg.ack == self.snd_una && self.flight() > 0 {
                self.snd_nxt = self.snd_una;
                self.rtt_probe = None;
                self.retx_at = Some(now + self.rto);
            }
        }
        // Zero window with data waiting and nothing in flight: the
        // retransmission timer becomes the persist timer.
        if self.snd_wnd == 0
            && self.unsent() > 0
            && self.snd_una == self.snd_max
            && self.retx_at.is_none()
        {
            self.retx_at = Some(now + self.rto);
        }
    }

    /// RFC 6298 §5.4–5.6 on the retransmission timer firing: back off and go
    /// back to the oldest unacknowledged byte. Err when out of retries.
    pub fn on_retransmit_timeout(
        &mut self,
        now: Instant,
        cfg: &Config,
    ) -> Result<TimerKind, Error> {
        self.retries += 1;
        let limit = if self.syn_acked() {
            cfg.max_retries
        } else {
            cfg.syn_retries
        };
        // Nothing in flight and data waiting means the timer was the
        // persist timer: the window is zero (RFC 9293 §3.8.6.1, probe it)
        // or too small for sender SWS avoidance to use (§3.8.6.2.1: "the
        // data is PUSHed and the override timeout occurs", send what fits).
        // Neither counts against the retry limit while the peer answers.
        let zero_window_probe =
            self.syn_acked() && self.unsent() > 0 && self.snd_una == self.snd_max;
        if self.retries > limit && !zero_window_probe {
            return Err(Error::TimedOut);
        }
        self.rto = (self.rto * 2).min(cfg.max_rto);
        let kind = if zero_window_probe {
            TimerKind::Persist
        } else if self.rto_recovery || self.retries > 1 {
            TimerKind::RetransmissionRepeated
        } else if self.recover.is_some() {
            TimerKind::RetransmissionInRecovery
        } else {
            TimerKind::Retransmission
        };
        self.probe_at = None;
        self.reorder_at = None;
        self.tlp_pending = false;
        self.tlp_follow = 0;
        self.tlp_end = None;
        if zero_window_probe {
            self.probe_pending = true;
        } else if self.sack_offer && self.syn_acked() && !self.sb.is_empty() {
            // RFC 6675 §5.1 / RFC 8985 §6.3: everything not SACKed is lost
            // and goes again, lowest first, from a window of one segment
            // growing by slow start; SACKed data is not resent (unless the
            // peer seems to have reneged). Recovery lasts until all that was
            // outstanding is acknowledged, with no further reduction.
            // A timeout ends the loss episode: it has its own undo.
            self.recovery_undo = None;
            self.rto_undo = match self.ts_offset {
                Some(offset) if self.retries == 1 => Some(Box::new(RtoUndo {
                    tsval: tsval(now, offset),
                    cc: self.cc.clone(),
                    recover: self.recover,
                    rto_recovery: self.rto_recovery,
                })),
                _ => None,
            };
            let flight = self.flight();
            self.cc
                .on_rto(now, flight, kind == TimerKind::RetransmissionRepeated);
            self.sb.on_timeout(self.retries > 1);
            self.recover = Some(self.snd_max);
            self.rto_recovery = true;
            self.fast_retx = None;
            self.dupacks = 0;
            // Karn's rule for the SYN timer; data is timed per record.
            self.rtt_probe = None;
        } else {
            if self.syn_acked() {
                let flight = self.flight();
                self.cc
                    .on_rto(now, flight, kind == TimerKind::RetransmissionRepeated);
            }
            self.dupacks = 0;
            self.recover = None;
            self.rto_recovery = false;
            self.fast_retx = None;
            self.snd_nxt = self.snd_una;
            // Karn's rule: no RTT sample from a retransmitted segment.
            self.rtt_probe = None;
            // RFC 6298 §5.4: "Retransmit the earliest segment that has not
            // been acknowledged": whatever of it fits goes now, even when
            // sender SWS avoidance would hold a short segment, and one byte
            // goes into a zero window (the probe, §3.8.6.1, again) —
            // otherwise the timer fires with nothing sent until the retry
            // limit aborts a connection whose peer is alive.
            self.probe_pending = self.syn_acked();
        }
        self.retx_at = Some(now + self.rto);
        Ok(kind)
    }
}

/// The receive side (RFC 9293 §3.3.1, receive sequence variables) and the
/// ACKs we owe.
/// How many recent out-of-order arrivals decide the order of SACK blocks.
const SACK_RECENT: usize = 8;
/// An ACK answering this many segments or more is sent twice.
const ACK_COPY_AFTER: u32 = 4;

pub(crate) struct Recv {
    pub irs: SeqNum,
    pub rcv_nxt: SeqNum,
    /// Right edge of the window we advertised; never moves left.
    pub rcv_adv: SeqNum,
    pub recv_buf: VecDeque<u8>,
    pub recv_cap: usize,
    /// Our window scale shift (RFC 7323; 0 unless negotiated).
    pub rcv_wscale: u8,
    /// Send SACK blocks for out-of-order data (negotiated, RFC 2018).
    pub sack_ok: bool,
    /// One held segment of each run of held data that received a segment
    /// recently, the most recent first: the runs holding them are the
    /// blocks reported, in this order (RFC 2018 §4).
    pub sack_recent: [SeqNum; SACK_RECENT],
    pub sack_recent_len: u8,
    /// How many of `sack_recent` (from the front) received data since our
    /// last ACK.
    pub sack_fresh: u8,
    /// Out-of-order segments that arrived since our last ACK.
    pub arrivals_since_ack: u32,
    /// The ACK just sent answered a batch of segments: a copy follows.
    pub ack_copy_due: bool,
    /// Data filled a hole since our last ACK: the peer is in loss
    /// recovery, and the next ACK may be the one that ends it.
    pub hole_filled: bool,
    /// A duplicate segment to report once in a D-SACK block (RFC 2883).
    pub dsack: Option<(SeqNum, SeqNum)>,
    /// Segments beyond a hole, sorted by sequence number, held until the
    /// hole fills; their total stays within the receive window.
    pub out_of_order: Vec<(SeqNum, Vec<u8>)>,
    pub out_of_order_bytes: usize,
    pub ack_now: bool,
    pub ack_at: Option<Instant>,
    pub unacked_segs: u32,
    /// RFC 7323 timestamps, when negotiated.
    pub ts: Option<Timestamps>,
    /// Last.ACK.sent (RFC 7323 §4.3): the acknowledgment number of the
    /// last segment we sent, which decides whose TSval we echo.
    pub last_ack_sent: SeqNum,
}

impl Recv {
    /// The receive side after the peer's SYN with sequence number `irs`.
    pub fn new(irs: SeqNum, cfg: &Config) -> Recv {
        Recv {
            irs,
            rcv_nxt: irs + 1,
            rcv_adv: irs + 1,
            recv_buf: VecDeque::new(),
            recv_cap: cfg.recv_buffer,
            rcv_wscale: 0,
            sack_ok: false,
            sack_recent: [irs; SACK_RECENT],
            sack_recent_len: 0,
            sack_fresh: 0,
            arrivals_since_ack: 0,
            ack_copy_due: false,
            hole_filled: false,
            dsack: None,
            out_of_order: Vec::new(),
            out_of_order_bytes: 0,
            ack_now: false,
            ack_at: None,
            unacked_segs: 0,
            ts: None,
            last_ack_sent: irs + 1,
        }
    }

    /// A segment carrying our ACK is going out: nothing more is owed.
    fn ack_sent(&mut self) {
        // The segment carried the older fresh runs only (segment_options):
        // another ACK follows.
        let answered = self.arrivals_since_ack.saturating_add(self.unacked_segs);
        if let Some((lo, _)) = self.pre_ack_chunk(self.max_sack_blocks()) {
            self.sack_fresh = lo as u8;
            self.ack_now = true;
            self.arrivals_since_ack = answered;
        } else if answered >= ACK_COPY_AFTER
            && !self.ack_copy_due
            && self.sack_ok
            && (!self.out_of_order.is_empty() || self.hole_filled)
        {
            // RFC 5681 §4.2: "an ACK SHOULD be generated for at least
            // every second full-sized segment". We read arrivals in
            // batches, so one ACK may answer dozens of segments, where a
            // receiver answering each arrival would have sent a dozen
            // ACKs: if that one is lost while the sender is in recovery
            // (data is held beyond a hole, or this ACK covers the hole's
            // retransmission and ends the recovery; Linux sends no
            // tail-loss probe in recovery), a sender that has filled its
            // window hears nothing until its RTO. The same ACK goes twice.
            // (Only with SACK: a copy SACKs nothing new, so an RFC 6675
            // sender does not count it as a duplicate ACK, and a RACK
            // sender ignores it.)
            self.sack_fresh = 0;
            self.ack_now = true;
            self.ack_copy_due = true;
            self.hole_filled = false;
            self.arrivals_since_ack = 0;
        } else {
            self.sack_fresh = 0;
            self.ack_now = false;
            self.ack_copy_due = false;
            self.hole_filled = false;
            self.arrivals_since_ack = 0;
        }
        self.ack_at = None;
        self.unacked_segs = 0;
        self.last_ack_sent = self.rcv_nxt;
        // RFC 2883 §4: "each duplicate contiguous sequence of data received
        // is reported in at most one D-SACK block (i.e., the receiver
        // sends two identical D-SACK blocks in subsequent packets only if
        // the receiver receives two duplicate segments)".
        self.dsack = None;
    }

    /// The options of a non-SYN segment: timestamps when negotiated (RFC
    /// 7323 §3.2: "MUST be sent in every non-<RST> segment"), and SACK
    /// blocks for held data (three fit beside timestamps in 40 bytes).
    ///
    /// When more runs received data since our last ACK than one ACK has
    /// room for (we read arrivals in batches, so one ACK may answer dozens
    /// of segments), the segment carries the older of them and another
    /// ACK follows: each of these ACKs is the one an earlier arrival would
    /// have drawn, and a run of held data the peer never hears of is
    /// retransmitted for nothing.
    fn segment_options(&self, now: Instant) -> TcpOptions {
        TcpOptions {
            timestamps: self.ts.map(|t| (tsval(now, t.offset), t.recent)),
            sack: self.sack_blocks(self.max_sack_blocks()),
            ..Default::default()
        }
    }

    /// Three SACK blocks fit beside timestamps in 40 option bytes, else 4.
    fn max_sack_blocks(&self) -> usize {
        if self.ts.is_some() {
            3
        } else {
            4
        }
    }

    /// The fresh entries of `sack_recent` that this segment reports before
    /// the rest go in a later ACK, if they do not all fit.
    fn pre_ack_chunk(&self, max: usize) -> Option<(usize, usize)> {
        let room = max.saturating_sub(usize::from(self.dsack.is_some()));
        let fresh = self.sack_fresh as usize;
        (self.sack_ok && room > 0 && fresh > room).then(|| (room.max(fresh - room), fresh))
    }

    /// Free buffer space, at most what the window field can say.
    fn free_window(&self) -> u32 {
        let max = 65_535usize << self.rcv_wscale;
        self.recv_cap.saturating_sub(self.recv_buf.len()).min(max) as u32
    }

    fn sws_step(&self, our_mss: u16) -> i32 {
        (self.recv_cap / 2).min(our_mss as usize).max(1) as i32
    }

    /// The window to put in an outgoing segment. RFC 9293 §3.8.6.2.2
    /// (receiver SWS avoidance): the right edge only moves forward by at
    /// least min(half the buffer, one MSS); RFC 9293 §3.8.6 (shrinking the
    /// window is strongly discouraged): it never moves back.
    pub fn advertise(&mut self, our_mss: u16) -> u16 {
        let right = self.rcv_nxt + self.free_window();
        if right.diff(self.rcv_adv) >= self.sws_step(our_mss) || self.rcv_adv.lt(self.rcv_nxt) {
            self.rcv_adv = right;
        }
        // Scaled, rounded up so the advertised edge never moves left; the
        // edge we track is the one the peer will compute.
        let wnd = self.rcv_adv.diff(self.rcv_nxt).max(0) as u32;
        let unit = 1u32 << self.rcv_wscale;
        let field = wnd.div_ceil(unit).min(65_535);
        self.rcv_adv = self.rcv_nxt + (field << self.rcv_wscale);
        field as u16
    }

    /// The window for a SYN,ACK: never scaled (RFC 7323 §2.2).
    pub fn syn_window(&self) -> u16 {
        self.recv_cap
            .saturating_sub(self.recv_buf.len())
            .min(65_535) as u16
    }

    /// Whether reading freed enough room that the peer should hear of it
    /// in a window update of its own (an ACK that goes out anyway carries
    /// the new window too). RFC 9293 §3.8.6.2.2 / RFC 1122 §4.2.3.3
    /// (receiver SWS avoidance) bound how small a window increase may be;
    /// like Linux (`__tcp_cleanup_rbuf`), an update is sent only when the
    /// window the peer may still fill has fallen to half the buffer or
    /// less, and the right edge moves by at least two MSS (or half the
    /// buffer, if that is smaller). While more than half the buffer is
    /// still open, the peer is not held up, and the ACKs its data draws
    /// (every second full-sized segment) tell it of the room.
    pub fn window_update_due(&self, our_mss: u16) -> bool {
        let right = self.rcv_nxt + self.free_window();
        let half = self.recv_cap / 2;
        let step = (2 * our_mss as usize).min(half).max(1);
        self.rcv_wnd() as usize <= half && right.diff(self.rcv_adv) >= step as i32
    }

    /// The receive window as the acceptance test sees it.
    pub fn rcv_wnd(&self) -> u32 {
        self.rcv_adv.diff(self.rcv_nxt).max(0) as u32
    }

    /// Keeps data that arrived beyond a hole; false if it could not be kept
    /// (outside the window, or the queue is at its bound).
    pub fn hold_out_of_order(&mut self, seq: SeqNum, data: &[u8]) -> bool {
        self.arrivals_since_ack = self.arrivals_since_ack.saturating_add(1);
        // Room for a full default window (1 MiB) of full-sized segments.
        const MAX_SEGMENTS: usize = 1024;
        let right = self.rcv_nxt + self.rcv_wnd();
        let room = self.recv_cap.saturating_sub(self.recv_buf.len());
        if !seq.gt(self.rcv_nxt) || !seq.lt(right) || self.out_of_order.len() >= MAX_SEGMENTS {
            return false;
        }
        let len = (right.diff(seq) as usize).min(data.len());
        let end = seq + len as u32;
        if len > 0 && self.holds(seq, end) {
            // A duplicate of what we hold. RFC 2883 §4: "If the D-SACK
            // block reports a duplicate contiguous sequence from a
            // (possibly larger) block of data in the receiver's data queue
            // above the cumulative acknowledgement, then the second SACK
            // block in that SACK option should specify that (possibly
            // larger) block of data": the block holding it is made the
            // most recent, so it follows the D-SACK block.
            self.note_duplicate(seq, end);
            self.sack_touch(seq);
            return true;
        }
        if self.out_of_order_bytes + len > room {
            return false;
        }
        let at = self
            .out_of_order
            .iter()
            .position(|(s, _)| s.gt(seq))
            .unwrap_or(self.out_of_order.len());
        self.out_of_order.insert(at, (seq, data[..len].to_vec()));
        self.out_of_order_bytes += len;
        self.sack_touch(seq);
        true
    }

    /// Whether held data covers all of `[seq, end)`.
    fn holds(&self, seq: SeqNum, end: SeqNum) -> bool {
        let mut at = seq;
        for (s, d) in &self.out_of_order {
            let e = *s + d.len() as u32;
            if s.le(at) && at.lt(e) {
                at = e;
                if !at.lt(end) {
                    return true;
                }
            }
        }
        false
    }

    /// Records `[seq, end)` as received twice: the next segment we send
    /// reports it in a D-SACK block (RFC 2883 §4: "If the data packet
    /// being acknowledged contains a duplicate segment, the first SACK
    /// block is used to report the sequence number of the duplicate").
    pub fn note_duplicate(&mut self, seq: SeqNum, end: SeqNum) {
        if self.sack_ok && seq.lt(end) {
            self.dsack = Some((seq, end));
        }
    }

    /// RFC 2018 §4: "The first SACK block ... MUST specify the contiguous
    /// block of data containing the segment which triggered this ACK";
    /// the others repeat "the most recently reported SACK blocks". The run
    /// holding the segment starting at `seq` becomes the most recent (one
    /// entry per run: the entries of runs it joined go).
    fn sack_touch(&mut self, seq: SeqNum) {
        let Some((l, r)) = self.held_runs().find(|(l, r)| seq.in_range(*l, *r)) else {
            return;
        };
        self.sack_recent_remove(|s| s.in_range(l, r));
        let (len, fresh) = (self.sack_recent_len as usize, self.sack_fresh as usize);
        let keep = len.min(SACK_RECENT - 1);
        self.sack_recent.copy_within(0..keep, 1);
        self.sack_recent[0] = seq;
        self.sack_recent_len = (keep + 1) as u8;
        self.sack_fresh = (fresh + 1).min(keep + 1) as u8;
    }

    /// Entries of `sack_recent` whose data was delivered in order go.
    fn sack_forget_delivered(&mut self) {
        let rcv_nxt = self.rcv_nxt;
        self.sack_recent_remove(|s| !s.gt(rcv_nxt));
    }

    /// Removes the entries of `sack_recent` for which `gone` holds, keeping
    /// the order of the rest and the count of fresh ones among them.
    fn sack_recent_remove(&mut self, gone: impl Fn(SeqNum) -> bool) {
        let (mut len, mut fresh) = (self.sack_recent_len as usize, self.sack_fresh as usize);
        let mut i = 0;
        while i < len {
            if gone(self.sack_recent[i]) {
                self.sack_recent.copy_within(i + 1..len, i);
                len -= 1;
                if i < fresh {
                    fresh -= 1;
                }
            } else {
                i += 1;
            }
        }
        self.sack_recent_len = len as u8;
        self.sack_fresh = fresh as u8;
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
                let take = (data.len() - skip).min(self.rcv_wnd() as usize);
                self.recv_buf.extend(&data[skip..skip + take]);
                self.rcv_nxt += take as u32;
                moved |= take > 0;
            }
        }
        if moved {
            self.sack_forget_delivered();
        }
        if self.out_of_order.is_empty() && self.out_of_order.capacity() > 0 {
            // The hole is filled: the queue's room goes back.
            self.out_of_order = Vec::new();
        }
        moved
    }

    /// The SACK blocks to report (RFC 2018 §4): a D-SACK block first when
    /// a duplicate arrived since our last ACK (RFC 2883), then contiguous
    /// runs of held data, the one holding the most recent arrival first
    /// and the next most recent after it, at most `max` blocks in all.
    pub fn sack_blocks(&self, max: usize) -> SackBlocks {
        let mut out = SackBlocks::default();
        if !self.sack_ok || max == 0 {
            return out;
        }
        if let Some((l, r)) = self.dsack {
            out.push(l, r);
        }
        if self.out_of_order.is_empty() {
            return out;
        }
        // "The SACK option SHOULD be filled out by repeating the most
        // recently reported SACK blocks ... that are not subsets of a SACK
        // block already included in the SACK option being constructed."
        let skip = usize::from(self.dsack.is_some());
        let has = |out: &SackBlocks, l: SeqNum| out.as_slice()[skip..].iter().any(|b| b.0 == l);
        // Fresh runs that do not fit in the last ACK go first in an
        // earlier one (segment_options).
        let chunk = self.pre_ack_chunk(max).map_or(0..0, |(lo, hi)| lo..hi);
        let recent = &self.sack_recent[..self.sack_recent_len as usize];
        for &seq in recent[chunk].iter().chain(recent) {
            if out.len as usize >= max {
                break;
            }
            if let Some((l, r)) = self.held_runs().find(|(l, r)| seq.in_range(*l, *r)) {
                if !has(&out, l) {
                    out.push(l, r);
                }
            }
        }
        // Room left (held runs whose arrivals were not recent): the lowest
        // first, the holes the peer repairs next.
        for (l, r) in self.held_runs() {
            if out.len as usize >= max {
                break;
            }
            if !has(&out, l) {
                out.push(l, r);
            }
        }
        out.len = out.len.min(max as u8);
        out
    }

    /// The contiguous runs of held data, lowest first.
    fn held_runs(&self) -> impl Iterator<Item = (SeqNum, SeqNum)> + '_ {
        let mut segs = self.out_of_order.iter().peekable();
        std::iter::from_fn(move || {
            let (s, d) = segs.next()?;
            let (l, mut r) = (*s, *s + d.len() as u32);
            while let Some((s, d)) = segs.next_if(|(s, _)| s.le(r)) {
                r = r.max(*s + d.len() as u32);
            }
            Some((l, r))
        })
    }

    /// Copies out up to `buf.len()` received bytes.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.recv_buf.len());
        let (a, b) = self.recv_buf.as_slices();
        let first = a.len().min(n);
        buf[..first].copy_from_slice(&a[..first]);
        buf[first..n].copy_from_slice(&b[..n - first]);
        self.recv_buf.drain(..n);
        n
    }
}

/// SYN-SENT: our SYN is out; nothing received yet.
pub(crate) struct SynSent {
    pub snd: Send,
}

/// SYN-RECEIVED: SYNs exchanged, ours not acknowledged yet.
pub(crate) struct SynReceived {
    pub snd: Send,
    pub rcv: Recv,
    /// Opened by a SYN to a listener (a reset returns it to LISTEN).
    pub passive: bool,
}

/// ESTABLISHED: data flows both ways.
pub(crate) struct Established {
    pub snd: Send,
    pub rcv: Recv,
}

/// FIN-WAIT-1: we closed; our FIN is queued or in flight.
pub(crate) struct FinWait1 {
    pub snd: Send,
    pub rcv: Recv,
}

/// FIN-WAIT-2: our FIN is acknowledged; waiting for the peer's.
pub(crate) struct FinWait2 {
    /// Our next sequence number, for the ACKs we still send.
    pub snd_nxt: SeqNum,
    pub rcv: Recv,
    /// Set once the application closed: an orphan waits no longer than this.
    pub timeout: Option<Instant>,
}

/// CLOSE-WAIT: the peer closed; we may still send.
pub(crate) struct CloseWait {
    pub snd: Send,
    pub rcv: Recv,
}

/// CLOSING: both FINs sent, ours not acknowledged yet.
pub(crate) struct Closing {
    pub snd: Send,
    pub rcv: Recv,
}

/// LAST-ACK: the peer closed first, our FIN awaits its ACK.
pub(crate) struct LastAck {
    pub snd: Send,
    pub rcv: Recv,
}

/// TIME-WAIT: both sides done; we linger 2 MSL to ACK a lost final FIN.
pub(crate) struct TimeWait {
    pub snd_nxt: SeqNum,
    pub rcv: Recv,
    pub expires: Instant,
}

/// A connection's state, each variant holding only what is valid in it.
pub(crate) enum Tcb {
    /// Gone (a placeholder while a transition consumes the old state).
    Closed,
    SynSent(SynSent),
    SynReceived(SynReceived),
    Established(Established),
    FinWait1(FinWait1),
    FinWait2(FinWait2),
    CloseWait(CloseWait),
    Closing(Closing),
    LastAck(LastAck),
    TimeWait(TimeWait),
}

impl Tcb {
    pub fn state(&self) -> State {
        match self {
            Tcb::Closed => State::Closed,
            Tcb::SynSent(_) => State::SynSent,
            Tcb::SynReceived(_) => State::SynReceived,
            Tcb::Established(_) => State::Established,
            Tcb::FinWait1(_) => State::FinWait1,
            Tcb::FinWait2(_) => State::FinWait2,
            Tcb::CloseWait(_) => State::CloseWait,
            Tcb::Closing(_) => State::Closing,
            Tcb::LastAck(_) => State::LastAck,
            Tcb::TimeWait(_) => State::TimeWait,
        }
    }

    pub fn snd(&self) -> Option<&Send> {
        match self {
            Tcb::SynSent(s) => Some(&s.snd),
            Tcb::SynReceived(s) => Some(&s.snd),
            Tcb::Established(s) => Some(&s.snd),
            Tcb::FinWait1(s) => Some(&s.snd),
            Tcb::CloseWait(s) => Some(&s.snd),
            Tcb::Closing(s) => Some(&s.snd),
            Tcb::LastAck(s) => Some(&s.snd),
            Tcb::Closed | Tcb::FinWait2(_) | Tcb::TimeWait(_) => None,
        }
    }

    pub fn snd_mut(&mut self) -> Option<&mut Send> {
        match self {
            Tcb::SynSent(s) => Some(&mut s.snd),
            Tcb::SynReceived(s) => Some(&mut s.snd),
            Tcb::Established(s) => Some(&mut s.snd),
            Tcb::FinWait1(s) => Some(&mut s.snd),
            Tcb::CloseWait(s) => Some(&mut s.snd),
            Tcb::Closing(s) => Some(&mut s.snd),
            Tcb::LastAck(s) => Some(&mut s.snd),
            Tcb::Closed | Tcb::FinWait2(_) | Tcb::TimeWait(_) => None,
        }
    }

    pub fn rcv(&self) -> Option<&Recv> {
        match self {
            Tcb::SynReceived(s) => Some(&s.rcv),
            Tcb::Established(s) => Some(&s.rcv),
            Tcb::FinWait1(s) => Some(&s.rcv),
            Tcb::FinWait2(s) => Some(&s.rcv),
            Tcb::CloseWait(s) => Some(&s.rcv),
            Tcb::Closing(s) => Some(&s.rcv),
            Tcb::LastAck(s) => Some(&s.rcv),
            Tcb::TimeWait(s) => Some(&s.rcv),
            Tcb::Closed | Tcb::SynSent(_) => None,
        }
    }

    pub fn rcv_mut(&mut self) -> Option<&mut Recv> {
        match self {
            Tcb::SynReceived(s) => Some(&mut s.rcv),
            Tcb::Established(s) => Some(&mut s.rcv),
            Tcb::FinWait1(s) => Some(&mut s.rcv),
            Tcb::FinWait2(s) => Some(&mut s.rcv),
            Tcb::CloseWait(s) => Some(&mut s.rcv),
            Tcb::Closing(s) => Some(&mut s.rcv),
            Tcb::LastAck(s) => Some(&mut s.rcv),
            Tcb::TimeWait(s) => Some(&mut s.rcv),
            Tcb::Closed | Tcb::SynSent(_) => None,
        }
    }

    /// Whether the peer's FIN has been received (no more data will come).
    pub fn peer_closed(&self) -> bool {
        matches!(
            self,
            Tcb::CloseWait(_) | Tcb::Closing(_) | Tcb::LastAck(_) | Tcb::TimeWait(_)
        )
    }

    /// Whether new data from the peer is accepted in this state.
    pub fn receives_data(&self) -> bool {
        matches!(
            self,
            Tcb::Established(_) | Tcb::FinWait1(_) | Tcb::FinWait2(_)
        )
    }

    /// Our sequence number for outgoing ACKs and RSTs.
    pub fn snd_nxt(&self) -> SeqNum {
        match self {
            Tcb::FinWait2(s) => s.snd_nxt,
            Tcb::TimeWait(s) => s.snd_nxt,
            other => other.snd().map_or(SeqNum::default(), |s| s.snd_nxt),
        }
    }
}

// Transitions, as values: each consumes the old state and returns the new.

impl SynSent {
    /// "If SND.UNA > ISS (our SYN has been ACKed), change the connection
    /// state to ESTABLISHED."
    pub fn syn_acked(self, rcv: Recv) -> Established {
        Established { snd: self.snd, rcv }
    }
    /// "Otherwise, enter SYN-RECEIVED" (simultaneous open): our SYN goes
    /// again, now with an ACK.
    pub fn simultaneous_open(mut self, rcv: Recv) -> SynReceived {
        self.snd.snd_nxt = self.snd.iss;
        self.snd.rtt_probe = None;
        SynReceived {
            snd: self.snd,
            rcv,
            passive: false,
        }
    }
}

impl SynReceived {
    pub fn syn_acked(self) -> Established {
        Established {
            snd: self.snd,
            rcv: self.rcv,
        }
    }
    pub fn close(mut self) -> FinWait1 {
        self.snd.fin_queued = true;
        FinWait1 {
            snd: self.snd,
            rcv: self.rcv,
        }
    }
}

impl Established {
    pub fn close(mut self) -> FinWait1 {
        self.snd.fin_queued = true;
        FinWait1 {
            snd: self.snd,
            rcv: self.rcv,
        }
    }
    pub fn fin_received(self) -> CloseWait {
        CloseWait {
            snd: self.snd,
            rcv: self.rcv,
        }
    }
}

impl FinWait1 {
    pub fn fin_acked(self, timeout: Option<Instant>) -> FinWait2 {
        FinWait2 {
            snd_nxt: self.snd.snd_nxt,
            rcv: self.rcv,
            timeout,
        }
    }
    /// Simultaneous close: the peer's FIN crossed ours.
    pub fn fin_received(self) -> Closing {
        Closing {
            snd: self.snd,
            rcv: self.rcv,
        }
    }
    /// A FIN that also acknowledges ours.
    pub fn fin_received_fin_acked(self, expires: Instant) -> TimeWait {
        TimeWait::new(self.snd.snd_nxt, self.rcv, expires)
    }
}

impl TimeWait {
    /// TIME-WAIT keeps only what it needs to answer a retransmitted FIN:
    /// the receive side's buffers go back (a server may hold many
    /// thousands of TIME-WAITs).
    fn new(snd_nxt: SeqNum, mut rcv: Recv, expires: Instant) -> TimeWait {
        if rcv.recv_buf.is_empty() {
            rcv.recv_buf = VecDeque::new();
        }
        rcv.out_of_order = Vec::new();
        rcv.out_of_order_bytes = 0;
        TimeWait {
            snd_nxt,
            rcv,
            expires,
        }
    }
}

impl FinWait2 {
    pub fn fin_received(self, expires: Instant) -> TimeWait {
        TimeWait::new(self.snd_nxt, self.rcv, expires)
    }
}

impl CloseWait {
    pub fn close(mut self) -> LastAck {
        self.snd.fin_queued = true;
        LastAck {
            snd: self.snd,
            rcv: self.rcv,
        }
    }
}

impl Closing {
    pub fn fin_acked(self, expires: Instant) -> TimeWait {
        TimeWait::new(self.snd.snd_nxt, self.rcv, expires)
    }
}

/// The smallest window scale shift that lets the window field describe a
/// buffer of `bytes` (RFC 7323 §2.3: at most 14).
pub fn window_shift(bytes: usize) -> u8 {
    let mut shift = 0;
    while shift < 14 && (bytes >> shift) > 65_535 {
        shift += 1;
    }
    shift
}

/// What the stack should count after an `emit`.
#[derive(Default)]
pub(crate) struct EmitStats {
    pub retransmit: bool,
    /// The retransmission came from fast retransmit/recovery, not a timeout.
    pub fast: bool,
    /// A tail-loss probe (RFC 8985 §7).
    pub probe: bool,
}

/// One connection: its state plus what the stack and the application keep
/// about it whatever the state.
pub(crate) struct Conn {
    pub id: ConnId,
    pub tuple: FourTuple,
    pub tcb: Tcb,
    /// The application holds a handle (it got Accepted/Connected, or called
    /// connect): it is told when the connection ends.
    pub known_to_app: bool,
    /// The application called close(): nothing more will be read.
    pub app_closed: bool,
    /// The deadline currently in the stack's timer heap.
    pub scheduled: Option<Instant>,
    /// In the stack's transmit queue.
    pub queued: bool,
    pub want_writable: bool,
    pub nodelay: bool,
    pub retransmits: u64,
    pub keepalive: Option<Duration>,
    /// When the last segment arrived (keepalive idles from here).
    pub last_recv: Instant,
    pub keepalive_at: Option<Instant>,
    pub keepalive_probes: u32,
    pub keepalive_probe_due: bool,
    /// When we last answered an unacceptable segment with an ACK.
    pub last_oow_ack: Option<Instant>,
}

impl Conn {
    pub fn new(id: ConnId, tuple: FourTuple, tcb: Tcb, now: Instant) -> Conn {
        Conn {
            id,
            tuple,
            tcb,
            known_to_app: false,
            app_closed: false,
            scheduled: None,
            queued: false,
            want_writable: false,
            nodelay: false,
            retransmits: 0,
            keepalive: None,
            last_recv: now,
            keepalive_at: None,
            keepalive_probes: 0,
            keepalive_probe_due: false,
            last_oow_ack: None,
        }
    }

    pub fn state(&self) -> State {
        self.tcb.state()
    }

    /// Replaces the state through `f`, which consumes the old one; checked
    /// against the transition table in debug builds.
    pub fn transition(&mut self, f: impl FnOnce(Tcb) -> Tcb) {
        let from = self.tcb.state();
        let old = std::mem::replace(&mut self.tcb, Tcb::Closed);
        self.tcb = f(old);
        debug_assert!(
            is_transition(from, self.tcb.state()),
            "{from:?} -> {:?} is not in the transition table",
            self.tcb.state()
        );
    }

    pub fn info(&self) -> ConnInfo {
        let snd = self.tcb.snd();
        ConnInfo {
            id: self.id.0,
            local: self.tuple.local,
            remote: self.tuple.remote,
            state: self.state(),
            send_queue: snd.map_or(0, |s| s.send_buf.len()),
            recv_queue: self.tcb.rcv().map_or(0, |r| r.recv_buf.len()),
            srtt_us: snd.and_then(|s| s.srtt).map_or(0, |d| d.as_micros() as u64),
            rto_us: snd.map_or(0, |s| s.rto.as_micros() as u64),
            retransmits: self.retransmits,
            cwnd: snd.map_or(0, |s| s.cc.cwnd()),
            snd_wnd: snd.map_or(0, |s| s.snd_wnd),
            in_flight: snd.map_or(0, |s| s.flight()),
            rcv_wnd: self.tcb.rcv().map_or(0, |r| r.rcv_wnd()),
            recovering: snd.is_some_and(|s| s.recover.is_some()),
            sack: snd.is_some_and(|s| s.sack_offer) || self.tcb.rcv().is_some_and(|r| r.sack_ok),
            timestamps: self.tcb.rcv().is_some_and(|r| r.ts.is_some()),
            sacked: snd.map_or(0, |s| s.sb.sacked_bytes()),
            lost: snd.map_or(0, |s| s.sb.lost_bytes()),
            timer_armed: snd.is_some_and(|s| s.retx_at.is_some()),
        }
    }

    /// The end of FIN-WAIT-2 (orphaned) or of TIME-WAIT.
    pub fn close_at(&self) -> Option<Instant> {
        match &self.tcb {
            Tcb::FinWait2(s) => s.timeout,
            Tcb::TimeWait(s) => Some(s.expires),
            _ => None,
        }
    }

    /// The earliest of the connection's timers. Called after every segment
    /// in and out, so written out plainly: the same as an iterator chain
    /// (`[..].into_iter().flatten().min()` over the six timers), which the
    /// compiler turned into ~30 KiB of code and thousands of instructions
    /// per call (half the core's instructions in a bulk transfer).
    pub fn next_deadline(&self) -> Option<Instant> {
        fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
            match (a, b) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, None) => x,
                (None, y) => y,
            }
        }
        let mut d = earlier(self.keepalive_at, self.close_at());
        if let Some(s) = self.tcb.snd() {
            d = earlier(d, s.retx_at);
            d = earlier(d, s.reorder_at);
            d = earlier(d, s.probe_at);
        }
        if let Some(r) = self.tcb.rcv() {
            d = earlier(d, r.ack_at);
        }
        d
    }

    /// Asks for an ACK to go out with the next transmission.
    pub fn ack_now(&mut self) {
        if let Some(r) = self.tcb.rcv_mut() {
            r.ack_now = true;
        }
    }

    /// Re-arms the keepalive timer after activity (RFC 1122 §4.2.3.6: probes
    /// only after an idle interval; off unless the application sets it).
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
        let idle_conn = match &self.tcb {
            Tcb::Established(s) => s.snd.snd_una == s.snd.snd_max,
            Tcb::CloseWait(s) => s.snd.snd_una == s.snd.snd_max,
            _ => false,
        };
        if !idle_conn {
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

    /// A RST for this connection (on abort): <SEQ=SND.NXT><CTL=RST>.
    pub fn reset_segment(&self) -> (SeqNum, SeqNum, u8) {
        (self.tcb.snd_nxt(), SeqNum::default(), RST)
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
        let tuple = self.tuple;
        let our_mss = cfg.mss;
        let keepalive_probe = std::mem::take(&mut self.keepalive_probe_due);
        let nodelay = self.nodelay;
        match &mut self.tcb {
            Tcb::Closed => None,
            Tcb::SynSent(s) => {
                if s.snd.snd_nxt == s.snd.iss {
                    emit_syn(now, &tuple, our_mss, &mut s.snd, None, buf, stats)
                } else {
                    None
                }
            }
            Tcb::SynReceived(s) => {
                if s.snd.snd_nxt == s.snd.iss {
                    emit_syn(
                        now,
                        &tuple,
                        our_mss,
                        &mut s.snd,
                        Some(&mut s.rcv),
                        buf,
                        stats,
                    )
                } else {
                    emit_ack(now, &tuple, our_mss, s.snd.snd_nxt, &mut s.rcv, buf)
                }
            }
            Tcb::Established(Established { snd, rcv })
            | Tcb::FinWait1(FinWait1 { snd, rcv })
            | Tcb::CloseWait(CloseWait { snd, rcv })
            | Tcb::Closing(Closing { snd, rcv })
            | Tcb::LastAck(LastAck { snd, rcv }) => {
                if keepalive_probe {
                    // RFC 1122 §4.2.3.6: a probe is a segment with SEG.SEQ =
                    // SND.NXT-1 and no data; the peer answers with an ACK.
                    rcv.ack_now = true;
                    return emit_ack(now, &tuple, our_mss, snd.snd_nxt - 1, rcv, buf);
                }
                let sent = emit_data(now, &tuple, our_mss, nodelay, snd, rcv, buf, stats);
                if stats.retransmit {
                    self.retransmits += 1;
                }
                sent
            }
            Tcb::FinWait2(s) => emit_ack(now, &tuple, our_mss, s.snd_nxt, &mut s.rcv, buf),
            Tcb::TimeWait(s) => emit_ack(now, &tuple, our_mss, s.snd_nxt, &mut s.rcv, buf),
        }
    }
}

/// SYN (active open) or SYN,ACK (passive or simultaneous open), with our MSS.
fn emit_syn(
    now: Instant,
    tuple: &FourTuple,
    our_mss: u16,
    snd: &mut Send,
    rcv: Option<&mut Recv>,
    buf: &mut [u8],
    stats: &mut EmitStats,
) -> Option<usize> {
    // RFC 7323 §3.2: a SYN carries TSecr 0; a SYN,ACK echoes the SYN's TSval.
    let mut ts_echo = 0;
    let (flags, ack, window) = match rcv {
        Some(r) => {
            r.ack_sent();
            let w = r.syn_window();
            r.rcv_adv = r.rcv_nxt + w as u32;
            ts_echo = r.ts.map_or(0, |t| t.recent);
            (SYN | ACK, r.rcv_nxt, w)
        }
        None => (SYN, SeqNum::default(), u16::MAX),
    };
    let repr = TcpRepr {
        src_port: tuple.local.port(),
        dst_port: tuple.remote.port(),
        seq: snd.iss,
        ack,
        flags,
        window,
        urgent: 0,
        options: TcpOptions {
            mss: Some(our_mss),
            window_scale: snd.wscale_offer,
            sack_permitted: snd.sack_offer,
            timestamps: snd.ts_offset.map(|offset| (tsval(now, offset), ts_echo)),
            ..Default::default()
        },
        payload: &[],
    };
    if buf.len() < repr.header_len() {
        return None;
    }
    stats.retransmit = snd.snd_max != snd.iss;
    if !stats.retransmit && snd.rtt_probe.is_none() {
        snd.rtt_probe = Some((snd.iss + 1, now));
    }
    snd.snd_nxt = snd.iss + 1;
    snd.snd_max = snd.snd_max.max(snd.snd_nxt);
    snd.retx_at.get_or_insert(now + snd.rto);
    Some(repr.emit(*tuple.local.ip(), *tuple.remote.ip(), buf))
}

/// A bare ACK, if one is owed.
fn emit_ack(
    now: Instant,
    tuple: &FourTuple,
    our_mss: u16,
    seq: SeqNum,
    rcv: &mut Recv,
    buf: &mut [u8],
) -> Option<usize> {
    if !rcv.ack_now || buf.len() < 60 {
        return None;
    }
    let options = rcv.segment_options(now);
    rcv.ack_sent();
    let window = rcv.advertise(our_mss);
    let repr = TcpRepr {
        src_port: tuple.local.port(),
        dst_port: tuple.remote.port(),
        seq,
        ack: rcv.rcv_nxt,
        flags: ACK,
        window,
        urgent: 0,
        options,
        payload: &[],
    };
    Some(repr.emit(*tuple.local.ip(), *tuple.remote.ip(), buf))
}

/// Copies `snd.send_buf[offset..offset + dst.len()]` (a VecDeque may wrap).
fn copy_out(snd: &Send, offset: usize, dst: &mut [u8]) {
    let n = dst.len();
    let (a, b) = snd.send_buf.as_slices();
    if offset < a.len() {
        let first = (a.len() - offset).min(n);
        dst[..first].copy_from_slice(&a[offset..offset + first]);
        dst[first..].copy_from_slice(&b[..n - first]);
    } else {
        let o = offset - a.len();
        dst.copy_from_slice(&b[o..o + n]);
    }
}

/// The next data segment (and/or FIN), or a bare ACK if one is owed.
#[allow(clippy::too_many_arguments)]
fn emit_data(
    now: Instant,
    tuple: &FourTuple,
    our_mss: u16,
    nodelay: bool,
    snd: &mut Send,
    rcv: &mut Recv,
    buf: &mut [u8],
    stats: &mut EmitStats,
) -> Option<usize> {
    // Timestamps and SACK blocks ride on data segments too; RFC 6691: the
    // data shrinks by the option bytes so the datagram still fits the path.
    let options = rcv.segment_options(now);
    let header = 20 + options.emitted_len();
    if buf.len() < header {
        // A buffer that cannot hold a header (a driver bug): send nothing
        // rather than panic; the connection keeps its state.
        return None;
    }
    let room = buf.len().saturating_sub(header);
    let mss = (snd.peer_mss.min(our_mss) as usize)
        .saturating_sub(header - 20)
        .min(room)
        .max(1);
    if let Some(start) = snd.fast_retx.take() {
        if let Some(len) = emit_retransmission(now, tuple, our_mss, snd, rcv, start, mss, buf) {
            stats.retransmit = true;
            stats.fast = !snd.rto_recovery;
            return Some(len);
        }
    }
    let flight = snd.flight();
    let sack = snd.sack_offer;
    // RFC 6675's pipe with SACK; without it, everything sent and not
    // acknowledged is assumed in the network.
    let pipe = if sack {
        snd.sb.pipe(flight)
    } else {
        snd.snd_nxt.diff(snd.snd_una).max(0) as usize
    };
    // RFC 3042 limited transmit: the first two duplicate ACKs each let one
    // new segment out beyond cwnd, to produce the ACKs fast retransmit
    // needs. (With SACK the pipe estimate does this by itself: SACKed
    // bytes leave it.)
    let limited = if snd.recover.is_none() && snd.dupacks < 3 {
        snd.dupacks as usize * snd.smss
    } else {
        0
    };
    let cwnd = snd.cc.cwnd().max(snd.smss.min(mss)) + limited;
    let probe = std::mem::take(&mut snd.tlp_pending);
    let follow_left = std::mem::take(&mut snd.tlp_follow);
    let follow = follow_left > 0 && !probe;
    if sack {
        // RFC 6675 NextSeg rule 1: the lowest lost segment first, when the
        // congestion window has room for it.
        if let Some((start, end)) = snd.sb.first_lost() {
            if pipe + snd.smss <= cwnd || probe {
                let len = (end.diff(start) as usize).min(mss);
                if let Some(n) = emit_retransmission(now, tuple, our_mss, snd, rcv, start, len, buf)
                {
                    stats.retransmit = true;
                    stats.fast = !snd.rto_recovery;
                    return Some(n);
                }
            }
        }
        // Data sent again after a rewind (a window that reopened) skips
        // what the peer holds already.
        while snd.snd_nxt.lt(snd.snd_max) {
            match snd.sb.sacked_run_end(snd.snd_nxt) {
                Some(end) => snd.snd_nxt = end,
                None => break,
            }
        }
    }
    let offset = snd.snd_nxt.diff(snd.buf_seq).max(0) as usize;
    let mut unsent = snd.send_buf.len().saturating_sub(offset);
    if sack && snd.snd_nxt.lt(snd.snd_max) {
        if let Some(next) = snd.sb.next_sacked_from(snd.snd_nxt) {
            unsent = unsent.min(next.diff(snd.snd_nxt).max(0) as usize);
        }
    }
    // Send no more than both windows allow (RFC 5681 §3.1: min(cwnd, rwnd)):
    // the peer's window counts sequence space, cwnd counts what is in the
    // network. A probe goes whatever cwnd says (RFC 8985 §7.3).
    //
    // The peer's window ends at SND.WL2 + SND.WND, not SND.UNA + SND.WND.
    // RFC 9293 §3.10.7.4: "SND.WND is an offset from SND.UNA, ... SND.WL1
    // records the sequence number of the last segment used to update
    // SND.WND, and SND.WL2 records the acknowledgment number of the last
    // segment used to update SND.WND. The check here prevents using old
    // segments to update the window." A segment that check turns away (a
    // retransmission, its SEG.SEQ below SND.WL1) still moves SND.UNA; the
    // window it carries was computed from that newer ACK but is not taken,
    // so SND.UNA + SND.WND would reach past every edge the peer offered
    // (the window is the offset from the ACK of the segment that carried
    // it, RFC 9293 §3.8.6). What lies beyond the edge the peer drops as
    // unacceptable, and so it does the bare ACKs that carry that SND.NXT.
    let edge = snd.snd_wl2 + snd.snd_wnd;
    let from = if snd.snd_nxt.lt(snd.snd_una) {
        snd.snd_una
    } else {
        snd.snd_nxt
    };
    let rwnd_room = edge.diff(from).max(0) as usize;
    let cwnd_room = if probe || (follow && unsent >= mss) {
        mss.max(cwnd.saturating_sub(pipe))
    } else {
        cwnd.saturating_sub(pipe)
    };
    let usable = rwnd_room.min(cwnd_room);
    let mut n = unsent.min(usable).min(mss);
    let in_flight = snd.snd_nxt != snd.snd_una;
    if probe && n == 0 {
        // RFC 8985 §7.3: no new data may go, so the probe retransmits the
        // last segment sent.
        if let Some(last) = snd.sb.last().copied() {
            let start = if last.end.diff(last.start) as usize > mss {
                last.end - mss as u32
            } else {
                last.start
            };
            if let Some(len) = emit_retransmission(now, tuple, our_mss, snd, rcv, start, mss, buf) {
                snd.tlp_end = Some((snd.snd_max, true));
                snd.tlp_probe = Some((start, last.end, snd.ts_offset.map(|o| tsval(now, o))));
                snd.retx_at = Some(now + snd.rto);
                stats.retransmit = true;
                stats.probe = true;
                return Some(len);
            }
        }
    }
    if snd.probe_pending {
        snd.probe_pending = false;
        if unsent > 0 && usable == 0 {
            n = 1;
        }
    } else if n > 0 && n < mss && !probe {
        // RFC 9293 §3.8.6.2.1 (sender SWS avoidance) and RFC 896 (Nagle):
        // a short segment goes out only when it is all there is to send and
        // nothing is in flight (or Nagle is off), or when it fills at least
        // half the largest window the peer offered.
        let tail = n == unsent;
        let nagle_ok = nodelay || !in_flight || snd.fin_queued;
        let half_window = n >= (snd.max_snd_wnd as usize / 2).max(1);
        if !((tail && nagle_ok) || half_window) {
            n = 0;
        }
    }
    let fin = snd.fin_queued
        && offset + n == snd.send_buf.len()
        && snd.fin_seq().is_some_and(|f| snd.snd_nxt + n as u32 == f);
    if n == 0 && !fin {
        // RFC 9293 §3.8.6.1: data waits behind a zero window and nothing is
        // in flight to bring an ACK: arm the persist timer.
        // The same timer overrides sender SWS avoidance when a window too
        // small to use stays that way (RFC 9293 §3.8.6.2.1).
        if unsent > 0 && !in_flight && snd.retx_at.is_none() {
            snd.retx_at = Some(now + snd.rto);
        }
        // A bare ACK carries the highest sequence number sent (as BSD does),
        // not SND.NXT: after a timeout rewinds SND.NXT it can sit below the
        // peer's RCV.NXT, the peer would find the ACK unacceptable and never
        // read its acknowledgment field.
        return emit_ack(now, tuple, our_mss, snd.snd_max, rcv, buf);
    }
    let mut flags = ACK;
    if fin {
        flags |= FIN;
    }
    if n > 0 && offset + n == snd.send_buf.len() {
        flags |= PSH;
    }
    // RFC 9293 §3.8.5 / RFC 6093: while urgent data is ahead, every segment
    // carries URG and the offset to the byte after it.
    let mut urgent = 0;
    if let Some(up) = snd.snd_up {
        if up.gt(snd.snd_nxt) {
            flags |= URG;
            urgent = up.diff(snd.snd_nxt).min(65_535) as u16;
        }
    }
    let window = rcv.advertise(our_mss);
    let repr = TcpRepr {
        src_port: tuple.local.port(),
        dst_port: tuple.remote.port(),
        seq: snd.snd_nxt,
        ack: rcv.rcv_nxt,
        flags,
        window,
        urgent,
        options,
        payload: &[],
    };
    repr.emit_header(buf, header);
    copy_out(snd, offset, &mut buf[header..header + n]);
    let len = header + n;
    fill_checksum(*tuple.local.ip(), *tuple.remote.ip(), &mut buf[..len]);

    let seg_len = n as u32 + fin as u32;
    stats.retransmit = snd.snd_nxt.lt(snd.snd_max);
    if stats.retransmit {
        snd.note_retransmission(snd.snd_nxt, snd.snd_nxt + seg_len, now);
    }
    snd.sb.on_transmit(snd.snd_nxt, snd.snd_nxt + seg_len, now);
    snd.snd_nxt += seg_len;
    snd.snd_max = snd.snd_max.max(snd.snd_nxt);
    snd.retx_at.get_or_insert(now + snd.rto);
    if probe {
        // RFC 8985 §7.3: after a probe the RTO is re-armed, and a second
        // probe waits for this one's answer.
        stats.probe = true;
        snd.tlp_end = Some((snd.snd_max, false));
        snd.retx_at = Some(now + snd.rto);
        // The probe exists to draw an ACK, but one in-order segment after
        // everything the peer already acknowledged need not draw one soon:
        // RFC 5681 §4.2 lets a receiver delay the ACK of a lone full-sized
        // segment (up to 500 ms; Linux waits 40 ms and more, longer than a
        // small RTO). That is the common tail here: the data all arrived
        // and the one ACK covering it was lost. A second full-sized
        // segment makes the ACK due at once (an ACK "for at least every
        // second full-sized segment"), and if anything before the probe
        // was lost the probe is out of order and is acknowledged at once
        // anyway. With two, though, a loss of the second (5 % of probes at
        // 5 % loss) leaves the first a lone in-order segment again, its
        // ACK delayed past the RTO; with three, any one lost leaves two
        // in order or one out of order, and the ACK is due at once either
        // way. So the probe is up to three full-sized segments of new
        // data when they are ready. Measured (download-5pct, 18 runs
        // each): RTOs per run 6.6 -> 3.1, throughput +44 %,
        // retransmissions unchanged. Only new data: a probe that must
        // resend stays one segment (RFC 8985 §7.3).
        let ready = unsent.min(rwnd_room) / mss.max(1);
        snd.tlp_follow = if n == mss {
            ready.saturating_sub(1).min(2) as u8
        } else {
            0
        };
    } else if follow {
        snd.tlp_end = Some((snd.snd_max, false));
        snd.tlp_follow = follow_left - 1;
    }
    snd.arm_probe(now);
    rcv.ack_sent();
    Some(len)
}

/// Up to `max` bytes of already-sent data starting at `start` (fast
/// retransmit, a NewReno partial ACK, a lost segment, a probe), leaving
/// snd_nxt where it is.
#[allow(clippy::too_many_arguments)]
fn emit_retransmission(
    now: Instant,
    tuple: &FourTuple,
    our_mss: u16,
    snd: &mut Send,
    rcv: &mut Recv,
    start: SeqNum,
    max: usize,
    buf: &mut [u8],
) -> Option<usize> {
    let options = rcv.segment_options(now);
    let header = 20 + options.emitted_len();
    let offset = start.diff(snd.buf_seq);
    if offset < 0 || !start.lt(snd.snd_max) || buf.len() < header {
        return None;
    }
    let offset = offset as usize;
    let mss = (snd.peer_mss.min(our_mss) as usize)
        .saturating_sub(header - 20)
        .max(1);
    let sent_end = snd.snd_max.diff(snd.buf_seq).max(0) as usize;
    let n = sent_end
        .min(snd.send_buf.len())
        .saturating_sub(offset)
        .min(max)
        .min(mss)
        .min(buf.len() - header);
    let fin = snd
        .fin_seq()
        .is_some_and(|f| start + n as u32 == f && snd.snd_max.gt(f));
    if n == 0 && !fin {
        return None;
    }
    let mut flags = ACK;
    if fin {
        flags |= FIN;
    }
    let window = rcv.advertise(our_mss);
    let repr = TcpRepr {
        src_port: tuple.local.port(),
        dst_port: tuple.remote.port(),
        seq: start,
        ack: rcv.rcv_nxt,
        flags,
        window,
        urgent: 0,
        options,
        payload: &[],
    };
    repr.emit_header(buf, header);
    copy_out(snd, offset, &mut buf[header..header + n]);
    let len = header + n;
    fill_checksum(*tuple.local.ip(), *tuple.remote.ip(), &mut buf[..len]);
    let end = start + n as u32 + fin as u32;
    snd.note_retransmission(start, end, now);
    snd.sb.on_transmit(start, end, now);
    // RFC 6298 §5.1: the timer runs while data is outstanding.
    snd.retx_at.get_or_insert(now + snd.rto);
    if snd.recover.is_some() {
        snd.arm_probe(now);
    }
    rcv.ack_sent();
    Some(len)
}
