//! What the sender knows about the data it has sent: one record per
//! transmitted segment (when it left, whether it was sent again, whether the
//! peer has SACKed it, whether it is deemed lost), and the loss detection
//! that runs on those records.
//!
//! Loss detection with SACK is RACK (RFC 8985 §6): a segment is lost when a
//! segment sent *after* it has been delivered and more than one RTT plus a
//! reordering window has passed since it was sent. We chose RACK-TLP over
//! RFC 6675's DupThresh rule because time, not counting, is what detects
//! the two losses the issue names without waiting for an RTO:
//! - a lost retransmission: the retransmission was sent later than the
//!   segments SACKed after it, so once an RTT has passed with them
//!   delivered, it is marked lost again (DupThresh never fires twice for
//!   one hole);
//! - a tail loss: no later segment exists to produce duplicate ACKs, so a
//!   tail-loss probe (RFC 8985 §7, driven by the send side) provokes the
//!   SACK that lets RACK see the hole.
//!
//! RFC 6675 supplies the rest: the pipe estimate (bytes in the network:
//! neither SACKed nor deemed lost, retransmissions counted again), the
//! order retransmissions go in (lowest lost sequence first), and when
//! recovery ends. Linux makes the same choice (RACK-TLP is its default).
//!
//! Without SACK the records are kept all the same: they give an RTT sample
//! per acknowledgment (Karn's rule applied per segment), and the send side
//! falls back to NewReno (RFC 6582).

use std::collections::VecDeque;
use std::time::Duration;

use super::seq::SeqNum;
use super::Instant;

/// RFC 6675 / RFC 5681's DupThresh: three SACKed segments above a hole.
pub const DUP_THRESH: usize = 3;

/// One transmitted segment, `[start, end)` in sequence space (a FIN counts
/// as one octet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentSeg {
    pub start: SeqNum,
    pub end: SeqNum,
    /// When it was last (re)transmitted.
    pub sent_at: Instant,
    /// It has been sent more than once: an ACK for it is ambiguous.
    pub retransmitted: bool,
    /// The peer reported holding it (RFC 2018).
    pub sacked: bool,
    /// Deemed lost and not retransmitted since.
    pub lost: bool,
}

impl SentSeg {
    fn len(&self) -> usize {
        self.end.diff(self.start) as usize
    }
}

/// What an acknowledgment told the scoreboard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// RTT of the most recently sent segment this ACK newly delivered
    /// (cumulatively or by SACK) that was sent only once.
    pub rtt: Option<Duration>,
    /// Bytes newly SACKed.
    pub sacked: usize,
    /// Some newly cumulatively acknowledged data had been retransmitted.
    pub acked_retransmitted: bool,
    /// When the most recently sent of the newly delivered segments that
    /// had been retransmitted left (its latest transmission).
    pub retransmission_sent_at: Option<Instant>,
}

/// The per-connection record of sent, unacknowledged segments, in
/// sequence order, and RACK's state (RFC 8985 §6.1).
#[derive(Clone, Debug, Default)]
pub struct Scoreboard {
    segs: VecDeque<SentSeg>,
    /// Bytes SACKed (all above SND.UNA).
    sacked_bytes: usize,
    /// Segments SACKed.
    sacked_segs: usize,
    /// Records sent more than once. While there are none, sequence order
    /// is also sending order, and RACK's scan stops at the first record
    /// sent after the most recently delivered one.
    retransmitted_segs: usize,
    /// Bytes deemed lost and not yet retransmitted.
    lost_bytes: usize,
    /// RACK.xmit_ts / RACK.end_seq: the most recently sent segment known
    /// delivered.
    rack_sent: Option<(Instant, SeqNum)>,
    /// RACK.rtt: the RTT of that segment.
    rack_rtt: Duration,
    /// RACK.min_RTT (over the connection's life: the path's floor).
    min_rtt: Option<Duration>,
    /// The highest SACKed sequence (end of its block).
    highest_sacked: Option<SeqNum>,
    /// RACK.reordering_seen: the peer delivered out of order at least once
    /// without a retransmission explaining it.
    reordering_seen: bool,
    /// RACK.reo_wnd_mult: the reordering window in quarters of min_RTT
    /// (0 stands for the initial 1).
    reo_wnd_mult: u32,
    /// RACK.reo_wnd_persist: loss recoveries left before the multiplier
    /// goes back to 1.
    reo_wnd_persist: u32,
    /// RACK.dsack_round: SND.NXT when the multiplier last grew; no more
    /// growth until SND.UNA passes it (one step per round trip).
    dsack_round: Option<SeqNum>,
}

/// RFC 8985 §6.2 step 4: "RACK.reo_wnd_persist = 16" after a D-SACK.
const REO_WND_PERSIST: u32 = 16;
/// A bound on the multiplier (the window never exceeds SRTT anyway).
const REO_WND_MULT_MAX: u32 = 64;

/// Whether a transmission at `t1` of a segment ending at `e1` happened after
/// one at `t2` ending at `e2` (RFC 8985 §6.2, RACK_sent_after: equal times
/// are ordered by sequence, as segments of one burst are).
fn sent_after(t1: Instant, e1: SeqNum, t2: Instant, e2: SeqNum) -> bool {
    t1 > t2 || (t1 == t2 && e1.gt(e2))
}

impl Scoreboard {
    /// Records a transmission of `[start, end)` at `now`: new data extends
    /// the record; data sent before is marked as retransmitted (and no
    /// longer lost), splitting records where the new segment's edges fall
    /// inside one.
    pub fn on_transmit(&mut self, start: SeqNum, end: SeqNum, now: Instant) {
        if !start.lt(end) {
            return;
        }
        let top = self.segs.back().map(|s| s.end);
        let new_from = match top {
            None => start,
            Some(top) if start.ge(top) => start,
            Some(top) => {
                // The part at or below the top was sent before.
                let resent_end = if end.lt(top) { end } else { top };
                self.split_at(start);
                self.split_at(resent_end);
                let first = self.index_of(start);
                for seg in self.segs.range_mut(first..) {
                    if !seg.start.lt(resent_end) {
                        break;
                    }
                    seg.sent_at = now;
                    if !seg.retransmitted {
                        seg.retransmitted = true;
                        self.retransmitted_segs += 1;
                    }
                    if seg.lost {
                        seg.lost = false;
                        self.lost_bytes -= seg.len();
                    }
                }
                top
            }
        };
        if new_from.lt(end) {
            self.segs.push_back(SentSeg {
                start: new_from,
                end,
                sent_at: now,
                retransmitted: false,
                sacked: false,
                lost: false,
            });
        }
    }

    /// Index of the first record ending after `seq`.
    fn index_of(&self, seq: SeqNum) -> usize {
        let Some(base) = self.segs.front().map(|s| s.start) else {
            return 0;
        };
        let off = seq.diff(base);
        self.segs.partition_point(|s| s.end.diff(base) <= off)
    }

    /// Makes `seq` a record boundary (if it falls strictly inside one).
    fn split_at(&mut self, seq: SeqNum) {
        let i = self.index_of(seq);
        let Some(seg) = self.segs.get(i).copied() else {
            return;
        };
        if seg.start.lt(seq) && seq.lt(seg.end) {
            self.segs[i].end = seq;
            self.segs.insert(i + 1, SentSeg { start: seq, ..seg });
            if seg.sacked {
                self.sacked_segs += 1;
            }
            if seg.retransmitted {
                self.retransmitted_segs += 1;
            }
        }
    }

    /// An acknowledgment: everything below `snd_una` is delivered, and so is
    /// every SACK block that lies within `(snd_una, snd_max]` (others are
    /// ignored, RFC 2018 §4 and RFC 6675 §2: a block below SND.UNA is a
    /// D-SACK or stale, one above SND.MAX is bogus).
    pub fn on_ack(
        &mut self,
        now: Instant,
        snd_una: SeqNum,
        snd_max: SeqNum,
        blocks: &[(SeqNum, SeqNum)],
    ) -> Delivery {
        let mut out = Delivery::default();
        let mut newest: Option<SentSeg> = None;
        // Cumulatively acknowledged records leave the board.
        while let Some(front) = self.segs.front_mut() {
            if front.end.le(snd_una) {
                let seg = self.segs.pop_front().expect("front exists");
                self.forget(&seg);
                if !seg.sacked {
                    out.acked_retransmitted |= seg.retransmitted;
                    self.deliver(now, &seg, &mut newest, &mut out);
                }
            } else {
                if front.start.lt(snd_una) {
                    // A partial acknowledgment of one record (the peer
                    // acknowledged a prefix): the rest stays.
                    let seg = *front;
                    front.start = snd_una;
                    if !seg.sacked {
                        out.acked_retransmitted |= seg.retransmitted;
                        self.deliver(now, &seg, &mut newest, &mut out);
                    }
                    if seg.sacked {
                        self.sacked_bytes -= snd_una.diff(seg.start) as usize;
                    }
                    if seg.lost {
                        self.lost_bytes -= snd_una.diff(seg.start) as usize;
                    }
                }
                break;
            }
        }
        for &(left, right) in blocks {
            if !(snd_una.lt(left) && left.lt(right) && right.le(snd_max)) {
                continue;
            }
            self.split_at(left);
            self.split_at(right);
            let first = self.index_of(left);
            let mut i = first;
            while let Some(seg) = self.segs.get(i).copied() {
                if !seg.start.lt(right) {
                    break;
                }
                if !seg.sacked {
                    let len = seg.len();
                    if seg.lost {
                        self.lost_bytes -= len;
                    }
                    self.segs[i].sacked = true;
                    self.segs[i].lost = false;
                    self.sacked_bytes += len;
                    self.sacked_segs += 1;
                    out.sacked += len;
                    // RFC 8985 §6.2 step 3: delivered below something
                    // already SACKed, and not because we sent it again:
                    // the network reordered.
                    if !seg.retransmitted && self.highest_sacked.is_some_and(|h| h.gt(seg.end)) {
                        self.reordering_seen = true;
                    }
                    self.deliver(now, &seg, &mut newest, &mut out);
                }
                i += 1;
            }
            if self.highest_sacked.is_none_or(|h| right.gt(h)) {
                self.highest_sacked = Some(right);
            }
        }
        if self.highest_sacked.is_some_and(|h| h.le(snd_una)) {
            self.highest_sacked = None;
        }

        out.rtt = newest
            .filter(|s| !s.retransmitted)
            .map(|s| now.saturating_duration_since(s.sent_at));
        out
    }

    fn forget(&mut self, seg: &SentSeg) {
        if seg.retransmitted {
            self.retransmitted_segs -= 1;
        }
        if seg.sacked {
            self.sacked_bytes -= seg.len();
            self.sacked_segs -= 1;
        }
        if seg.lost {
            self.lost_bytes -= seg.len();
        }
    }

    /// RFC 8985 §6.2 step 2, for one newly delivered segment: RACK follows
    /// the most recently sent delivered segment and its RTT.
    /// `out` learns the latest transmission time of the retransmitted
    /// segments delivered.
    fn deliver(
        &mut self,
        now: Instant,
        seg: &SentSeg,
        newest: &mut Option<SentSeg>,
        out: &mut Delivery,
    ) {
        let rtt = now.saturating_duration_since(seg.sent_at);
        if seg.retransmitted {
            out.retransmission_sent_at = out.retransmission_sent_at.max(Some(seg.sent_at));
            // "If the segment was retransmitted and ... the RTT is less
            // than RACK.min_RTT, the ACK was probably for the original
            // transmission": ambiguous, not used.
            if self.min_rtt.is_none_or(|m| rtt < m) {
                return;
            }
        } else {
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        }
        if newest.is_none_or(|n| sent_after(seg.sent_at, seg.end, n.sent_at, n.end)) {
            *newest = Some(*seg);
        }
        let newer = self
            .rack_sent
            .is_none_or(|(t, e)| sent_after(seg.sent_at, seg.end, t, e));
        if newer {
            self.rack_sent = Some((seg.sent_at, seg.end));
            self.rack_rtt = rtt;
        }
    }

    /// RFC 8985 §6.2 step 4: the reordering window. Zero once DupThresh
    /// segments are SACKed or recovery is under way, unless this path has
    /// been seen to reorder; then a quarter of the minimum RTT, at most
    /// SRTT.
    fn reo_wnd(&self, in_recovery: bool, srtt: Option<Duration>) -> Duration {
        if !self.reordering_seen && (in_recovery || self.sacked_segs >= DUP_THRESH) {
            return Duration::ZERO;
        }
        // "RACK.reo_wnd = RACK.reo_wnd_mult * RACK.min_RTT / 4",
        // "return min(RACK.reo_wnd, SRTT)".
        let wnd = self.min_rtt.unwrap_or_default() / 4 * self.reo_wnd_mult.max(1);
        srtt.map_or(wnd, |s| wnd.min(s))
    }

    /// RFC 8985 §6.2 step 4, on an ACK carrying a D-SACK block: "If
    /// RACK.dsack_round is not None and SND.UNA >= RACK.dsack_round:
    /// RACK.dsack_round = None"; "If RACK.dsack_round is None and a DSACK
    /// option is present on the latest received ACK: RACK.dsack_round =
    /// SND.NXT, RACK.reo_wnd_mult += 1, RACK.reo_wnd_persist = 16".
    ///
    /// A D-SACK also counts as reordering seen (as Linux counts it): the
    /// peer received something twice, most often a retransmission whose
    /// original RACK gave up on too early; without this the window stays
    /// zero in recovery and the multiplier has no effect.
    pub fn on_dsack(&mut self, snd_una: SeqNum, snd_nxt: SeqNum) {
        if self.dsack_round.is_some_and(|r| snd_una.ge(r)) {
            self.dsack_round = None;
        }
        if self.dsack_round.is_none() {
            self.dsack_round = Some(snd_nxt);
            self.reo_wnd_mult = (self.reo_wnd_mult.max(1) + 1).min(REO_WND_MULT_MAX);
            self.reo_wnd_persist = REO_WND_PERSIST;
        }
        self.reordering_seen = true;
    }

    /// RFC 8985 §6.2 step 4: "Else if exiting Fast or RTO recovery:
    /// RACK.reo_wnd_persist -= 1; If RACK.reo_wnd_persist <= 0:
    /// RACK.reo_wnd_mult = 1".
    pub fn on_recovery_exit(&mut self) {
        self.reo_wnd_persist = self.reo_wnd_persist.saturating_sub(1);
        if self.reo_wnd_persist == 0 {
            self.reo_wnd_mult = 1;
        }
    }

    /// RFC 8985 §6.2 step 5: marks lost every segment sent before the most
    /// recently delivered one whose RTT plus reordering window has run out.
    /// Returns the bytes newly marked and, if some segment may still turn
    /// out lost, when to look again (RACK's reordering timer).
    pub fn detect_loss(
        &mut self,
        now: Instant,
        in_recovery: bool,
        srtt: Option<Duration>,
    ) -> (usize, Option<Instant>) {
        let Some((rack_t, rack_e)) = self.rack_sent else {
            return (0, None);
        };
        let reo = self.reo_wnd(in_recovery, srtt);
        let mut newly = 0;
        let mut timer: Option<Instant> = None;
        let in_send_order = self.retransmitted_segs == 0;
        for seg in self.segs.iter_mut() {
            if seg.sacked || seg.lost {
                continue;
            }
            if !sent_after(rack_t, rack_e, seg.sent_at, seg.end) {
                // Sent after what was delivered: not evidence of anything
                // yet. Without retransmissions the records are in sending
                // order too, and so is everything after this one: the scan
                // ends here (per ACK it visits only the records that may be
                // lost). Otherwise it goes on (a retransmission may sit
                // below a record sent earlier).
                if in_send_order {
                    break;
                }
                continue;
            }
            let deadline = seg.sent_at + self.rack_rtt + reo;
            if deadline <= now {
                seg.lost = true;
                newly += seg.len();
            } else {
                timer = Some(timer.map_or(deadline, |t| t.min(deadline)));
            }
        }
        self.lost_bytes += newly;
        (newly, timer)
    }

    /// After a retransmission timeout (RFC 6675 §5.1, RFC 8985 §6.3): every
    /// segment not SACKed is lost. When the segment at SND.UNA is marked
    /// SACKed the peer has reneged (RFC 2018 §8: SACK is advisory), and
    /// from the second timeout on the peer may have reneged silently: then
    /// the SACK marks go too and everything is resent.
    pub fn on_timeout(&mut self, forget_sacks: bool) {
        let reneged = self.segs.front().is_some_and(|s| s.sacked);
        for seg in self.segs.iter_mut() {
            if seg.sacked && (reneged || forget_sacks) {
                seg.sacked = false;
            }
            if !seg.sacked {
                seg.lost = true;
            }
        }
        if reneged || forget_sacks {
            self.sacked_bytes = 0;
            self.sacked_segs = 0;
            self.highest_sacked = None;
        }
        self.lost_bytes = self.segs.iter().filter(|s| s.lost).map(SentSeg::len).sum();
    }

    /// A timeout turned out spurious (RFC 4015): what it marked lost is
    /// in the network after all; RACK marks again what really is lost.
    pub fn undo_timeout(&mut self) {
        for seg in self.segs.iter_mut() {
            seg.lost = false;
        }
        self.lost_bytes = 0;
    }

    /// RFC 6675's pipe: of the `flight` bytes between SND.UNA and SND.MAX,
    /// those still in the network (neither SACKed nor lost; a lost segment
    /// that was retransmitted is in the network again).
    pub fn pipe(&self, flight: usize) -> usize {
        flight.saturating_sub(self.sacked_bytes + self.lost_bytes)
    }

    /// The lowest segment deemed lost and not retransmitted since (RFC 6675
    /// NextSeg rule 1).
    pub fn first_lost(&self) -> Option<(SeqNum, SeqNum)> {
        if self.lost_bytes == 0 {
            return None;
        }
        self.segs.iter().find(|s| s.lost).map(|s| (s.start, s.end))
    }

    /// If `seq` lies in SACKed data, where that SACKed run ends.
    pub fn sacked_run_end(&self, seq: SeqNum) -> Option<SeqNum> {
        if self.sacked_bytes == 0 {
            return None;
        }
        let mut i = self.index_of(seq);
        let mut end = None;
        while let Some(seg) = self.segs.get(i) {
            if !seg.sacked || end.is_none() && !seq.in_range(seg.start, seg.end) {
                break;
            }
            if end.is_some_and(|e: SeqNum| e != seg.start) {
                break;
            }
            end = Some(seg.end);
            i += 1;
        }
        end
    }

    /// Where the next SACKed record at or after `seq` starts, if any.
    pub fn next_sacked_from(&self, seq: SeqNum) -> Option<SeqNum> {
        if self.sacked_bytes == 0 {
            return None;
        }
        self.segs
            .range(self.index_of(seq)..)
            .find(|s| s.sacked)
            .map(|s| if s.start.lt(seq) { seq } else { s.start })
    }

    /// The last segment sent (the tail-loss probe's retransmission).
    pub fn last(&self) -> Option<&SentSeg> {
        self.segs.back()
    }

    pub fn sacked_bytes(&self) -> usize {
        self.sacked_bytes
    }

    pub fn lost_bytes(&self) -> usize {
        self.lost_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    #[cfg(test)]
    pub fn records(&self) -> Vec<SentSeg> {
        self.segs.iter().copied().collect()
    }

    /// Checks the cached sums against the records (tests).
    #[cfg(test)]
    pub fn check(&self) {
        let sacked: usize = self
            .segs
            .iter()
            .filter(|s| s.sacked)
            .map(SentSeg::len)
            .sum();
        let lost: usize = self.segs.iter().filter(|s| s.lost).map(SentSeg::len).sum();
        let segs = self.segs.iter().filter(|s| s.sacked).count();
        let retransmitted = self.segs.iter().filter(|s| s.retransmitted).count();
        assert_eq!(
            (sacked, lost, segs, retransmitted),
            (
                self.sacked_bytes,
                self.lost_bytes,
                self.sacked_segs,
                self.retransmitted_segs
            )
        );
        for w in self.segs.iter().collect::<Vec<_>>().windows(2) {
            assert_eq!(w[0].end, w[1].start, "records are contiguous");
        }
        for s in &self.segs {
            assert!(s.start.lt(s.end));
            assert!(!(s.sacked && s.lost));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    fn seq(n: u32) -> SeqNum {
        // Near the wrap, so every comparison is exercised across it.
        SeqNum::new(u32::MAX - 2500) + n
    }

    /// Ten segments of MSS bytes sent 1 ms apart from t = 0.
    fn ten_sent() -> Scoreboard {
        let mut sb = Scoreboard::default();
        for i in 0..10 {
            sb.on_transmit(seq(i * MSS), seq((i + 1) * MSS), at(i as u64));
        }
        sb.check();
        sb
    }

    #[test]
    fn records_follow_transmissions_and_acks() {
        let mut sb = ten_sent();
        assert_eq!(sb.pipe(10_000), 10_000);
        // Cumulative ACK of 2.5 segments at t = 50: RTT sample from the
        // most recently sent one delivered (sent at 2 ms).
        let d = sb.on_ack(at(50), seq(2500), seq(10_000), &[]);
        assert_eq!(d.rtt, Some(Duration::from_millis(48)));
        sb.check();
        assert_eq!(sb.records()[0].start, seq(2500));
        assert_eq!(sb.records().len(), 8);
    }

    #[test]
    fn sack_blocks_mark_split_and_validate() {
        let mut sb = ten_sent();
        // A block covering segments 3..5 and half of 5; one below SND.UNA
        // and one beyond SND.MAX are ignored.
        let blocks = [
            (seq(3000), seq(5500)),
            (seq(0), seq(500)),
            (seq(9000), seq(11_000)),
        ];
        let d = sb.on_ack(at(40), seq(0), seq(10_000), &blocks);
        sb.check();
        assert_eq!(d.sacked, 2500);
        assert_eq!(sb.sacked_bytes(), 2500);
        assert_eq!(sb.pipe(10_000), 7500);
        assert_eq!(sb.sacked_run_end(seq(3100)), Some(seq(5500)));
        assert_eq!(sb.sacked_run_end(seq(2999)), None);
        assert_eq!(sb.next_sacked_from(seq(1000)), Some(seq(3000)));
        // The same block again changes nothing.
        let d = sb.on_ack(at(41), seq(0), seq(10_000), &blocks);
        assert_eq!(d.sacked, 0);
        sb.check();
    }

    #[test]
    fn rack_marks_losses_one_rtt_after_a_later_delivery() {
        let mut sb = ten_sent();
        // Segment 0 lost; segments 1..4 SACKed at t = 41..44 (RTT 40 ms).
        for i in 1..4u32 {
            sb.on_ack(
                at(40 + i as u64),
                seq(0),
                seq(10_000),
                &[(seq(MSS), seq((i + 1) * MSS))],
            );
        }
        sb.check();
        // Three segments SACKed, no reordering seen: reo_wnd 0. Segment 0
        // was sent at 0, the newest delivered at 3 with RTT 40: lost once
        // 0 + 40 <= now.
        let (lost, timer) = sb.detect_loss(at(43), false, None);
        assert_eq!(lost, 1000);
        assert_eq!(timer, None);
        assert_eq!(sb.first_lost(), Some((seq(0), seq(MSS))));
        assert_eq!(sb.pipe(10_000), 10_000 - 3000 - 1000);
        // Retransmitted at 45: in the network again, no longer lost.
        sb.on_transmit(seq(0), seq(MSS), at(45));
        sb.check();
        assert_eq!(sb.first_lost(), None);
        assert_eq!(sb.pipe(10_000), 7000);
        // The retransmission is lost too: segments 4..6 SACKed at 86, sent
        // at 4..6, i.e. before the retransmission at 45 — no evidence yet.
        sb.on_ack(at(86), seq(0), seq(10_000), &[(seq(MSS), seq(6 * MSS))]);
        assert_eq!(sb.detect_loss(at(86), true, None).0, 0);
        // New data sent at 50 and SACKed at 90: sent after the
        // retransmission, so the retransmission is lost once 45 + 40 has
        // passed — without any timeout.
        sb.on_transmit(seq(10_000), seq(11_000), at(50));
        sb.on_ack(at(90), seq(0), seq(11_000), &[(seq(10_000), seq(11_000))]);
        let (lost, _) = sb.detect_loss(at(90), true, None);
        assert!(lost >= 1000, "the lost retransmission is detected: {lost}");
        assert_eq!(sb.first_lost(), Some((seq(0), seq(MSS))));
        sb.check();
    }

    #[test]
    fn reordering_window_and_timer() {
        let mut sb = ten_sent();
        // One segment (9) SACKed at t = 49: only one SACKed segment, so the
        // reordering window is min_rtt / 4 = 10 ms. Segments 0..8 were sent
        // at 0..8 with RTT 40: lost at sent + 40 + 10.
        sb.on_ack(at(49), seq(0), seq(10_000), &[(seq(9000), seq(10_000))]);
        let (lost, timer) = sb.detect_loss(at(49), false, None);
        assert_eq!(lost, 0);
        assert_eq!(timer, Some(at(50)), "segment 0: 0 + 40 + 10");
        let (lost, timer) = sb.detect_loss(at(52), false, None);
        assert_eq!(lost, 3000, "segments 0, 1, 2");
        assert_eq!(timer, Some(at(53)));
        sb.check();
        // A segment delivered below the highest SACK without having been
        // retransmitted: the path reorders, the window stays open even
        // with DupThresh SACKs.
        sb.on_ack(at(53), seq(0), seq(10_000), &[(seq(8000), seq(9000))]);
        assert!(sb.reordering_seen);
        assert_eq!(sb.reo_wnd(true, None), Duration::from_micros(10_000));
    }

    #[test]
    fn d_sacks_grow_the_reordering_window_once_per_round_and_recoveries_reset_it() {
        let mut sb = ten_sent();
        sb.on_ack(at(10), seq(MSS), seq(10 * MSS), &[]);
        let srtt = Some(Duration::from_millis(100));
        // min_RTT 10 ms; in recovery with no reordering seen: zero.
        assert_eq!(sb.reo_wnd(true, srtt), Duration::ZERO);
        // A D-SACK: reordering seen, the multiplier goes to 2.
        sb.on_dsack(seq(MSS), seq(10 * MSS));
        assert_eq!(sb.reo_wnd(true, srtt), Duration::from_micros(5_000));
        // Another in the same round trip: no change.
        sb.on_dsack(seq(2 * MSS), seq(10 * MSS));
        assert_eq!(sb.reo_wnd(true, srtt), Duration::from_micros(5_000));
        // SND.UNA past the round: grows again, bounded by SRTT.
        sb.on_dsack(seq(10 * MSS), seq(12 * MSS));
        assert_eq!(sb.reo_wnd(true, srtt), Duration::from_micros(7_500));
        assert_eq!(
            sb.reo_wnd(true, Some(Duration::from_millis(6))),
            Duration::from_millis(6)
        );
        // 15 recoveries end: still grown; the 16th resets it to a quarter.
        for _ in 0..15 {
            sb.on_recovery_exit();
        }
        assert_eq!(sb.reo_wnd(true, srtt), Duration::from_micros(7_500));
        sb.on_recovery_exit();
        assert_eq!(sb.reo_wnd(true, srtt), Duration::from_micros(2_500));
    }

    #[test]
    fn timeout_marks_everything_unsacked_lost_and_detects_reneging() {
        let mut sb = ten_sent();
        sb.on_ack(at(45), seq(0), seq(10_000), &[(seq(5000), seq(7000))]);
        sb.on_timeout(false);
        sb.check();
        assert_eq!(sb.lost_bytes(), 8000);
        assert_eq!(sb.pipe(10_000), 0);
        // Retransmitting in order clears the marks one by one.
        sb.on_transmit(seq(0), seq(2 * MSS), at(300));
        assert_eq!(sb.lost_bytes(), 6000);
        sb.check();
        // A second timeout forgets the SACKs (the peer may have reneged).
        sb.on_timeout(true);
        sb.check();
        assert_eq!(sb.sacked_bytes(), 0);
        assert_eq!(sb.lost_bytes(), 10_000);
    }

    #[test]
    fn partial_ack_and_retransmission_across_new_data() {
        let mut sb = ten_sent();
        sb.on_timeout(false);
        // A retransmission that runs past the highest byte sent: the part
        // above is new data.
        sb.on_transmit(seq(9500), seq(10_500), at(20));
        sb.check();
        let recs = sb.records();
        assert_eq!(recs.last().unwrap().start, seq(10_000));
        assert!(!recs.last().unwrap().retransmitted);
        assert!(recs[recs.len() - 2].retransmitted);
        // An ACK inside a lost record trims it.
        let d = sb.on_ack(at(60), seq(1500), seq(10_500), &[]);
        sb.check();
        // Marked lost but never sent again: the originals arrived after
        // all, unambiguously (the newest, segment 1, left at 1 ms).
        assert_eq!(d.rtt, Some(Duration::from_millis(59)));
        assert_eq!(sb.lost_bytes(), 9500 - 1500);
    }

    #[test]
    fn ambiguous_retransmission_acks_give_no_rtt() {
        let mut sb = ten_sent();
        sb.on_ack(at(40), seq(1000), seq(10_000), &[]);
        sb.on_timeout(false);
        sb.on_transmit(seq(1000), seq(2000), at(200));
        // Acknowledged 1 ms after the retransmission: faster than the
        // minimum RTT, so it was the original that arrived.
        let d = sb.on_ack(at(201), seq(2000), seq(10_000), &[]);
        assert!(d.acked_retransmitted);
        assert_eq!(d.rtt, None);
    }

    /// RACK's rule applied to every record, as it was before the scan
    /// learned to stop early: the reference the early stop must agree with.
    fn detect_loss_full_scan(
        sb: &mut Scoreboard,
        now: Instant,
        in_recovery: bool,
        srtt: Option<Duration>,
    ) -> (usize, Option<Instant>) {
        let Some((rack_t, rack_e)) = sb.rack_sent else {
            return (0, None);
        };
        let reo = sb.reo_wnd(in_recovery, srtt);
        let (mut newly, mut timer) = (0, None::<Instant>);
        for seg in sb.segs.iter_mut() {
            if seg.sacked || seg.lost || !sent_after(rack_t, rack_e, seg.sent_at, seg.end) {
                continue;
            }
            let deadline = seg.sent_at + sb.rack_rtt + reo;
            if deadline <= now {
                seg.lost = true;
                newly += seg.len();
            } else {
                timer = Some(timer.map_or(deadline, |t| t.min(deadline)));
            }
        }
        sb.lost_bytes += newly;
        (newly, timer)
    }

    proptest::proptest! {
        /// Random transmissions, retransmissions, ACKs with SACK blocks and
        /// timeouts: the early-stopping scan marks exactly what a scan of
        /// every record marks, and arms the same timer.
        #[test]
        fn early_stop_matches_the_full_scan(
            ops in proptest::collection::vec((0u8..6, 0u32..40, 1u32..6, 0u64..30), 1..80)
        ) {
            let mut sb = Scoreboard::default();
            let (mut una, mut max, mut now) = (0u32, 0u32, 0u64);
            for (op, a, b, dt) in ops {
                now += dt;
                let t = at(now);
                match op {
                    0 | 1 => {
                        sb.on_transmit(seq(max * 100), seq((max + b) * 100), t);
                        max += b;
                    }
                    2 if max > una => {
                        let start = una + a % (max - una);
                        let end = (start + b).min(max);
                        sb.on_transmit(seq(start * 100), seq(end * 100), t);
                    }
                    3 if max > una => {
                        una += a % (max - una + 1);
                        sb.on_ack(t, seq(una * 100), seq(max * 100), &[]);
                    }
                    4 if max > una => {
                        let left = una + 1 + a % (max - una);
                        let right = (left + b).min(max);
                        if left < right {
                            sb.on_ack(
                                t,
                                seq(una * 100),
                                seq(max * 100),
                                &[(seq(left * 100), seq(right * 100))],
                            );
                        }
                    }
                    5 => sb.on_timeout(a % 2 == 0),
                    _ => {}
                }
                let srtt = Some(Duration::from_millis(10));
                let mut reference = sb.clone();
                let want = detect_loss_full_scan(&mut reference, t, a % 3 == 0, srtt);
                let got = sb.detect_loss(t, a % 3 == 0, srtt);
                proptest::prop_assert_eq!(got, want);
                proptest::prop_assert_eq!(sb.records(), reference.records());
                sb.check();
            }
        }
    }
}
