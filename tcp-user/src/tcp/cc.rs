//! Congestion control behind one small trait (RFC 5681 and RFC 6582's
//! NewReno here). The send side owns loss detection and recovery; a
//! controller only decides how large the congestion window is.

/// A congestion controller: told about acknowledged data, losses and
/// timeouts, it says how many bytes may be in flight.
pub trait CongestionControl: std::fmt::Debug + Send {
    /// The congestion window, in bytes.
    fn cwnd(&self) -> usize;
    /// `acked` bytes newly acknowledged outside loss recovery.
    fn on_ack(&mut self, acked: usize);
    /// Fast retransmit (three duplicate ACKs) with `flight` bytes
    /// outstanding: enter recovery.
    fn on_fast_retransmit(&mut self, flight: usize);
    /// One more duplicate ACK during recovery: a segment left the network.
    fn on_dup_ack_in_recovery(&mut self);
    /// A partial ACK during recovery (RFC 6582 §3.2 step 5) of `acked` bytes.
    fn on_partial_ack(&mut self, acked: usize);
    /// Recovery ends: everything outstanding at its start is acknowledged.
    fn on_recovery_end(&mut self, flight: usize);
    /// The retransmission timer expired with `flight` bytes outstanding.
    fn on_rto(&mut self, flight: usize);
}

/// NewReno (RFC 5681 §3.1–3.2, RFC 6582), with appropriate byte counting
/// in congestion avoidance (RFC 3465) and an initial window per RFC 6928.
#[derive(Debug, Clone)]
pub struct NewReno {
    mss: usize,
    cwnd: usize,
    ssthresh: usize,
    /// Bytes acknowledged since cwnd last grew in congestion avoidance.
    acked_in_ca: usize,
}

impl NewReno {
    /// RFC 6928: IW = min(10*MSS, max(2*MSS, 14600)).
    pub fn new(mss: usize) -> NewReno {
        let mss = mss.max(1);
        NewReno {
            mss,
            cwnd: (10 * mss).min((2 * mss).max(14_600)),
            ssthresh: usize::MAX,
            acked_in_ca: 0,
        }
    }

    pub fn ssthresh(&self) -> usize {
        self.ssthresh
    }

    /// RFC 5681 equation (4): ssthresh = max(FlightSize / 2, 2*SMSS).
    fn halve(&mut self, flight: usize) {
        self.ssthresh = (flight / 2).max(2 * self.mss);
    }
}

impl CongestionControl for NewReno {
    fn cwnd(&self) -> usize {
        self.cwnd
    }

    fn on_ack(&mut self, acked: usize) {
        if self.cwnd < self.ssthresh {
            // Slow start: "cwnd += min (N, SMSS)".
            self.cwnd += acked.min(self.mss);
        } else {
            // Congestion avoidance: one SMSS per window of data acknowledged.
            self.acked_in_ca += acked;
            if self.acked_in_ca >= self.cwnd {
                self.acked_in_ca -= self.cwnd;
                self.cwnd += self.mss;
            }
        }
    }

    fn on_fast_retransmit(&mut self, flight: usize) {
        self.halve(flight);
        // RFC 5681 §3.2 step 3: cwnd = ssthresh + 3*SMSS.
        self.cwnd = self.ssthresh + 3 * self.mss;
        self.acked_in_ca = 0;
    }

    fn on_dup_ack_in_recovery(&mut self) {
        self.cwnd += self.mss;
    }

    fn on_partial_ack(&mut self, acked: usize) {
        // RFC 6582 §3.2 step 5: deflate by the amount acknowledged, add back
        // one SMSS.
        self.cwnd = self.cwnd.saturating_sub(acked) + self.mss;
    }

    fn on_recovery_end(&mut self, flight: usize) {
        // RFC 6582 §3.2 step 6, option 1: min(ssthresh, max(FlightSize, SMSS) + SMSS).
        self.cwnd = self.ssthresh.min(flight.max(self.mss) + self.mss);
    }

    fn on_rto(&mut self, flight: usize) {
        self.halve(flight);
        // RFC 5681 §3.1: the loss window is one segment.
        self.cwnd = self.mss;
        self.acked_in_ca = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_window_follows_rfc_6928() {
        assert_eq!(NewReno::new(1460).cwnd(), 14_600);
        assert_eq!(NewReno::new(536).cwnd(), 5_360);
        assert_eq!(NewReno::new(9000).cwnd(), 18_000);
    }

    #[test]
    fn window_evolution_by_hand() {
        let mut c = NewReno::new(1000);
        assert_eq!(c.cwnd(), 10_000);
        // Slow start: +min(acked, mss) per ACK.
        c.on_ack(2000);
        assert_eq!(c.cwnd(), 11_000);
        c.on_ack(500);
        assert_eq!(c.cwnd(), 11_500);
        // Fast retransmit with 11_500 in flight: ssthresh 5750, cwnd 8750.
        c.on_fast_retransmit(11_500);
        assert_eq!((c.ssthresh(), c.cwnd()), (5_750, 8_750));
        c.on_dup_ack_in_recovery();
        assert_eq!(c.cwnd(), 9_750);
        c.on_partial_ack(3_000);
        assert_eq!(c.cwnd(), 7_750);
        c.on_recovery_end(4_000);
        assert_eq!(c.cwnd(), 5_000);
        // Congestion avoidance: +1 MSS once a window's worth is acked.
        c.on_ack(1_000); // cwnd 5000 < ssthresh 5750: still slow start
        assert_eq!(c.cwnd(), 6_000);
        for _ in 0..5 {
            c.on_ack(1_000);
        }
        assert_eq!(c.cwnd(), 6_000);
        c.on_ack(1_000);
        assert_eq!(c.cwnd(), 7_000);
        // Timeout: one segment, ssthresh from the flight.
        c.on_rto(7_000);
        assert_eq!((c.ssthresh(), c.cwnd()), (3_500, 1_000));
        c.on_rto(1_000);
        assert_eq!(c.ssthresh(), 2_000, "never below 2*SMSS");
    }
}
