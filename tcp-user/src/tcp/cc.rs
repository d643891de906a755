//! Congestion control behind one small trait: NewReno (RFC 5681, RFC 6582)
//! and CUBIC (RFC 9438, the default, as in Linux). The send side owns loss
//! detection and recovery; a controller only decides how large the
//! congestion window is.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::Instant;

/// Which controller a connection uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    NewReno,
    /// The default, as in Linux: it regrows quickly on long fat paths.
    #[default]
    Cubic,
}

impl Algorithm {
    /// A controller for a connection with sender MSS `mss`, starting from
    /// `cwnd`/`ssthresh` when given (a switch mid-connection) or from the
    /// initial window.
    pub fn build(self, mss: usize, from: Option<(usize, usize)>) -> Controller {
        let mut c = match self {
            Algorithm::NewReno => Controller::NewReno(NewReno::new(mss)),
            Algorithm::Cubic => Controller::Cubic(Cubic::new(mss)),
        };
        if let Some((cwnd, ssthresh)) = from {
            let (w, t) = match &mut c {
                Controller::NewReno(r) => (&mut r.cwnd, &mut r.ssthresh),
                Controller::Cubic(r) => (&mut r.cwnd, &mut r.ssthresh),
            };
            *w = cwnd;
            *t = ssthresh;
        }
        c
    }
}

/// The controller a connection holds: one of the algorithms, stored inline
/// in the connection. A boxed trait object cost an allocation per
/// connection and a pointer chase to another cache line on every ACK.
#[derive(Debug, Clone)]
pub enum Controller {
    NewReno(NewReno),
    Cubic(Cubic),
}

/// Calls the same method on whichever algorithm the controller holds.
macro_rules! each {
    ($self:ident, $c:ident => $call:expr) => {
        match $self {
            Controller::NewReno($c) => $call,
            Controller::Cubic($c) => $call,
        }
    };
}

impl CongestionControl for Controller {
    fn cwnd(&self) -> usize {
        each!(self, c => c.cwnd())
    }
    fn ssthresh(&self) -> usize {
        each!(self, c => c.ssthresh())
    }
    fn on_ack(&mut self, now: Instant, acked: usize, srtt: Option<Duration>) {
        each!(self, c => c.on_ack(now, acked, srtt))
    }
    fn on_fast_retransmit(&mut self, now: Instant, flight: usize) {
        each!(self, c => c.on_fast_retransmit(now, flight))
    }
    fn on_dup_ack_in_recovery(&mut self) {
        each!(self, c => c.on_dup_ack_in_recovery())
    }
    fn on_partial_ack(&mut self, acked: usize) {
        each!(self, c => c.on_partial_ack(acked))
    }
    fn on_recovery_end(&mut self, flight: usize) {
        each!(self, c => c.on_recovery_end(flight))
    }
    fn on_rto(&mut self, now: Instant, flight: usize, repeated: bool) {
        each!(self, c => c.on_rto(now, flight, repeated))
    }
    fn on_congestion_event(&mut self, now: Instant, flight: usize) {
        each!(self, c => c.on_congestion_event(now, flight))
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "newreno" => Ok(Algorithm::NewReno),
            "cubic" => Ok(Algorithm::Cubic),
            other => Err(format!(
                "{other:?} is not available (supported: cubic, newreno)"
            )),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::NewReno => "newreno",
            Algorithm::Cubic => "cubic",
        })
    }
}

/// A congestion controller: told about acknowledged data, losses and
/// timeouts, it says how many bytes may be in flight.
/// A copy of the whole state (`Clone`) is what a spurious reduction goes
/// back to (RFC 4015).
pub trait CongestionControl: std::fmt::Debug + Clone + Send {
    /// The congestion window, in bytes.
    fn cwnd(&self) -> usize;
    /// The slow-start threshold, in bytes.
    fn ssthresh(&self) -> usize;
    /// `acked` bytes newly acknowledged outside loss recovery, at `now`,
    /// with the smoothed RTT if there is one.
    fn on_ack(&mut self, now: Instant, acked: usize, srtt: Option<Duration>);
    /// Fast retransmit (three duplicate ACKs) with `flight` bytes
    /// outstanding: enter recovery.
    fn on_fast_retransmit(&mut self, now: Instant, flight: usize);
    /// One more duplicate ACK during recovery: a segment left the network.
    fn on_dup_ack_in_recovery(&mut self);
    /// A partial ACK during recovery (RFC 6582 §3.2 step 5) of `acked` bytes.
    fn on_partial_ack(&mut self, acked: usize);
    /// Recovery ends: everything outstanding at its start is acknowledged.
    fn on_recovery_end(&mut self, flight: usize);
    /// The retransmission timer expired with `flight` bytes outstanding.
    /// `repeated`: it expired again before the data sent at the last
    /// expiry was acknowledged; RFC 5681 §3.1: "the value of ssthresh is
    /// held constant" then, only the window goes back to one segment.
    fn on_rto(&mut self, now: Instant, flight: usize, repeated: bool);
    /// A loss found by SACK-based detection (RFC 6675 §5 step 4.2, RFC 8985)
    /// with `flight` bytes outstanding: reduce once, without the window
    /// inflation of NewReno's fast recovery (the pipe estimate does that
    /// job: SACKed and lost bytes leave it).
    fn on_congestion_event(&mut self, now: Instant, flight: usize);
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

    /// RFC 5681 equation (4): ssthresh = max(FlightSize / 2, 2*SMSS).
    fn halve(&mut self, flight: usize) {
        self.ssthresh = (flight / 2).max(2 * self.mss);
    }
}

impl CongestionControl for NewReno {
    fn cwnd(&self) -> usize {
        self.cwnd
    }

    fn ssthresh(&self) -> usize {
        self.ssthresh
    }

    fn on_ack(&mut self, _now: Instant, acked: usize, _srtt: Option<Duration>) {
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

    fn on_fast_retransmit(&mut self, _now: Instant, flight: usize) {
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

    fn on_rto(&mut self, _now: Instant, flight: usize, repeated: bool) {
        if !repeated {
            self.halve(flight);
        }
        // RFC 5681 §3.1: the loss window is one segment.
        self.cwnd = self.mss;
        self.acked_in_ca = 0;
    }

    fn on_congestion_event(&mut self, _now: Instant, flight: usize) {
        // RFC 6675 §5 step 4.2: "ssthresh = cwnd = (FlightSize / 2)".
        self.halve(flight);
        self.cwnd = self.ssthresh;
        self.acked_in_ca = 0;
    }
}

/// CUBIC (RFC 9438): after a loss the window regrows along a cubic curve
/// centred on the size where the loss happened (W_max), with a
/// Reno-friendly floor, fast convergence, and beta 0.7.
#[derive(Debug, Clone)]
pub struct Cubic {
    mss: usize,
    cwnd: usize,
    ssthresh: usize,
    /// Window (segments) just before the last reduction.
    w_max: f64,
    /// Seconds the curve takes to grow back to W_max.
    k: f64,
    /// Start of the current congestion-avoidance epoch.
    epoch: Option<Instant>,
    /// The Reno-friendly estimate (segments), §4.3.
    w_est: f64,
}

/// RFC 9438 §5: C = 0.4, beta_cubic = 0.7.
const CUBIC_C: f64 = 0.4;
const CUBIC_BETA: f64 = 0.7;

impl Cubic {
    pub fn new(mss: usize) -> Cubic {
        let reno = NewReno::new(mss);
        Cubic {
            mss: reno.mss,
            cwnd: reno.cwnd,
            ssthresh: usize::MAX,
            w_max: 0.0,
            k: 0.0,
            epoch: None,
            w_est: 0.0,
        }
    }

    fn segments(&self) -> f64 {
        self.cwnd as f64 / self.mss as f64
    }

    /// §4.6–4.7: a congestion event at window `cwnd`.
    fn reduce(&mut self) {
        let w = self.segments();
        // Fast convergence: release bandwidth to newer flows when the
        // window stops reaching its previous maximum.
        self.w_max = if w < self.w_max {
            w * (1.0 + CUBIC_BETA) / 2.0
        } else {
            w
        };
        self.ssthresh = ((self.cwnd as f64 * CUBIC_BETA) as usize).max(2 * self.mss);
        // K itself is computed when the next epoch starts, from the window
        // congestion avoidance then starts at (§4.2).
        self.epoch = None;
    }

    /// W_cubic(t) of §4.2, in segments.
    fn w_cubic(&self, t: f64) -> f64 {
        CUBIC_C * (t - self.k).powi(3) + self.w_max
    }
}

impl CongestionControl for Cubic {
    fn cwnd(&self) -> usize {
        self.cwnd
    }

    fn ssthresh(&self) -> usize {
        self.ssthresh
    }

    fn on_ack(&mut self, now: Instant, acked: usize, srtt: Option<Duration>) {
        if self.cwnd < self.ssthresh {
            self.cwnd += acked.min(self.mss);
            return;
        }
        let cwnd = self.segments();
        let epoch = *self.epoch.get_or_insert_with(|| {
            // §4.2: a new epoch starts from cwnd_epoch, the window now (after
            // recovery, or after slow start regrew past ssthresh):
            // K = cbrt((W_max - cwnd_epoch) / C); without an earlier loss
            // (or above it) the curve starts at the current window.
            if self.w_max < cwnd {
                self.w_max = cwnd;
            }
            self.k = ((self.w_max - cwnd) / CUBIC_C).cbrt();
            self.w_est = cwnd;
            now
        });
        let rtt = srtt.unwrap_or(Duration::from_millis(100)).as_secs_f64();
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        // §4.2: the target is the curve one RTT ahead, bounded to 1.5 cwnd.
        let target = self.w_cubic(t + rtt).clamp(cwnd, 1.5 * cwnd);
        // §4.3: the Reno-friendly estimate grows by alpha_cubic per window
        // acked, and like Reno (alpha 1) once it has passed the window of
        // the last reduction.
        let alpha = if self.w_est >= self.w_max {
            1.0
        } else {
            3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA)
        };
        let acked_segments = acked as f64 / self.mss as f64;
        self.w_est += alpha * acked_segments / cwnd;
        let goal = target.max(self.w_est);
        // §4.4: cwnd grows by (goal - cwnd) / cwnd per segment acknowledged.
        let grow = (goal - cwnd) / cwnd * acked_segments;
        if grow > 0.0 {
            self.cwnd += (grow * self.mss as f64) as usize;
        }
    }

    fn on_fast_retransmit(&mut self, _now: Instant, _flight: usize) {
        self.reduce();
        // Fast recovery as in RFC 5681 §3.2, from CUBIC's ssthresh.
        self.cwnd = self.ssthresh + 3 * self.mss;
    }

    fn on_dup_ack_in_recovery(&mut self) {
        self.cwnd += self.mss;
    }

    fn on_partial_ack(&mut self, acked: usize) {
        self.cwnd = self.cwnd.saturating_sub(acked) + self.mss;
    }

    fn on_recovery_end(&mut self, _flight: usize) {
        self.cwnd = self.ssthresh;
        self.epoch = None;
    }

    fn on_rto(&mut self, _now: Instant, _flight: usize, repeated: bool) {
        if !repeated {
            self.reduce();
        }
        self.cwnd = self.mss;
    }

    fn on_congestion_event(&mut self, _now: Instant, _flight: usize) {
        // §4.6: cwnd = ssthresh = cwnd * beta_cubic.
        self.reduce();
        self.cwnd = self.ssthresh;
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
        let t0 = Instant::ZERO;
        c.on_ack(t0, 2000, None);
        assert_eq!(c.cwnd(), 11_000);
        c.on_ack(t0, 500, None);
        assert_eq!(c.cwnd(), 11_500);
        // Fast retransmit with 11_500 in flight: ssthresh 5750, cwnd 8750.
        c.on_fast_retransmit(t0, 11_500);
        assert_eq!((c.ssthresh(), c.cwnd()), (5_750, 8_750));
        c.on_dup_ack_in_recovery();
        assert_eq!(c.cwnd(), 9_750);
        c.on_partial_ack(3_000);
        assert_eq!(c.cwnd(), 7_750);
        c.on_recovery_end(4_000);
        assert_eq!(c.cwnd(), 5_000);
        // Congestion avoidance: +1 MSS once a window's worth is acked.
        c.on_ack(t0, 1_000, None); // cwnd 5000 < ssthresh 5750: still slow start
        assert_eq!(c.cwnd(), 6_000);
        for _ in 0..5 {
            c.on_ack(t0, 1_000, None);
        }
        assert_eq!(c.cwnd(), 6_000);
        c.on_ack(t0, 1_000, None);
        assert_eq!(c.cwnd(), 7_000);
        // Timeout: one segment, ssthresh from the flight.
        c.on_rto(t0, 7_000, false);
        assert_eq!((c.ssthresh(), c.cwnd()), (3_500, 1_000));
        c.on_rto(t0, 3_000, true);
        assert_eq!(
            (c.ssthresh(), c.cwnd()),
            (3_500, 1_000),
            "held on a repeated timeout"
        );
        c.on_rto(t0, 1_000, false);
        assert_eq!(c.ssthresh(), 2_000, "never below 2*SMSS");
    }

    #[test]
    fn cubic_regrows_along_its_curve() {
        let mss = 1000;
        let mut c = Cubic::new(mss);
        let mut now = Instant::from_micros(1_000_000);
        let rtt = Duration::from_millis(100);
        // Grow to 100 segments, then a loss.
        c.cwnd = 100 * mss;
        c.ssthresh = 50 * mss;
        c.on_fast_retransmit(now, 100 * mss);
        assert_eq!(c.ssthresh(), 70 * mss, "beta 0.7");
        c.on_recovery_end(0);
        assert_eq!(c.cwnd(), 70 * mss);
        // The epoch starts with the first ACK: K = cbrt((W_max -
        // cwnd_epoch) / C) = cbrt((100 - 70) / 0.4) = cbrt(75) = 4.217 s.
        c.on_ack(now, mss, Some(rtt));
        assert!((c.k - 4.217).abs() < 0.01, "K = {}", c.k);
        // ACK one window per RTT for 4.2 s: the window is back near W_max
        // (the concave part flattens out there), then grows past it.
        let mut at_k = 0;
        for step in 0..120 {
            let segs = c.cwnd() / mss;
            for _ in 0..segs {
                c.on_ack(now, mss, Some(rtt));
            }
            now = now + rtt;
            if step == 41 {
                at_k = c.cwnd();
            }
        }
        assert!((95 * mss..=101 * mss).contains(&at_k), "at t=K: {at_k}");
        assert!(
            c.cwnd() > 110 * mss,
            "convex growth beyond W_max: {}",
            c.cwnd()
        );
        // A second loss below the previous maximum: fast convergence.
        c.cwnd = 90 * mss;
        c.w_max = 100.0;
        c.on_rto(now, 90 * mss, false);
        assert!((c.w_max - 90.0 * 1.7 / 2.0).abs() < 1e-9);
        assert_eq!(c.cwnd(), mss);
    }

    #[test]
    fn congestion_events_reduce_once_without_inflation() {
        let t0 = Instant::ZERO;
        // NewReno: FlightSize 20 segments of 1000 -> ssthresh = cwnd = 10.
        let mut r = NewReno::new(1000);
        r.cwnd = 24_000;
        r.on_congestion_event(t0, 20_000);
        assert_eq!((r.ssthresh(), r.cwnd()), (10_000, 10_000));
        // Tiny flight: never below 2*SMSS.
        r.on_congestion_event(t0, 1_000);
        assert_eq!((r.ssthresh(), r.cwnd()), (2_000, 2_000));
        // CUBIC: 0.7 of cwnd (40 segments -> 28), W_max = 40, K = cbrt(30).
        let mut c = Cubic::new(1000);
        c.cwnd = 40_000;
        c.on_congestion_event(t0, 40_000);
        assert_eq!((c.ssthresh(), c.cwnd()), (28_000, 28_000));
        assert!((c.w_max - 40.0).abs() < 1e-9);
        c.on_recovery_end(0);
        assert_eq!(c.cwnd(), 28_000);
        // The next epoch: K = cbrt((40 - 28) / 0.4) = cbrt(30).
        c.on_ack(t0, 1000, Some(Duration::from_millis(10)));
        assert!((c.k - 30f64.cbrt()).abs() < 1e-9, "K = {}", c.k);
        // The Reno-friendly estimate grows by alpha_cubic = 0.3*3/1.7 per
        // window below W_max, then by 1 per window like Reno (§4.3).
        let before = c.w_est;
        for _ in 0..28 {
            c.on_ack(t0, 1000, Some(Duration::from_millis(10)));
        }
        let per_window = c.w_est - before;
        assert!((per_window - 0.9 / 1.7).abs() < 0.05, "{per_window}");
        c.w_est = 40.0;
        let before = c.w_est;
        let segs = c.cwnd() / 1000;
        for _ in 0..segs {
            c.on_ack(t0, 1000, Some(Duration::from_millis(10)));
        }
        // One segment per window acked (a little less, the window grows
        // as it goes): well above alpha_cubic's 0.53.
        let grown = c.w_est - before;
        assert!((0.8..=1.0).contains(&grown), "{grown}");
    }

    #[test]
    fn algorithms_parse_and_build() {
        assert_eq!("cubic".parse::<Algorithm>(), Ok(Algorithm::Cubic));
        assert_eq!("newreno".parse::<Algorithm>(), Ok(Algorithm::NewReno));
        assert!("bbr".parse::<Algorithm>().is_err());
        assert_eq!(Algorithm::default(), Algorithm::Cubic);
        let c = Algorithm::NewReno.build(1000, Some((5000, 4000)));
        assert_eq!((c.cwnd(), c.ssthresh()), (5000, 4000));
    }
}
