//! The retransmission timeout computed from RTT samples (RFC 6298 §2, with
//! the minimum applied to the variance term as Linux does).

use std::time::Duration;

use super::conn::Send;
use super::seq::SeqNum;
use super::Config;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sender(min_rto: Duration) -> (Send, Config) {
    let cfg = Config {
        min_rto,
        ..Config::default()
    };
    (Send::new(SeqNum::new(1000), &cfg), cfg)
}

#[test]
fn first_sample_sets_srtt_and_half_of_it_as_rttvar() {
    // RFC 6298 §2.2: SRTT <- R, RTTVAR <- R/2, RTO <- SRTT + max(G, 4*RTTVAR).
    let (mut snd, cfg) = sender(ms(200));
    snd.rtt_sample(ms(100), &cfg);
    assert_eq!(snd.srtt, Some(ms(100)));
    assert_eq!(snd.rttvar, ms(50));
    assert_eq!(snd.rto, ms(300));
}

#[test]
fn a_steady_rtt_keeps_the_minimum_as_margin_above_srtt() {
    // RTTVAR shrinks by a quarter per equal sample: 50 ms × (3/4)^40 is
    // about 0.5 µs, so 4 × RTTVAR is far below the 200 ms minimum. RFC 6298
    // with the minimum on the sum would give max(200, 100 + ~0) = 200 ms,
    // a timeout only 100 ms past the usual ACK; the minimum on the margin
    // gives 300 ms.
    let (mut snd, cfg) = sender(ms(200));
    for _ in 0..40 {
        snd.rtt_sample(ms(100), &cfg);
    }
    assert_eq!(snd.srtt, Some(ms(100)));
    assert!(snd.rttvar < Duration::from_micros(10), "{:?}", snd.rttvar);
    assert_eq!(snd.rto, ms(300));
}

#[test]
fn a_variable_rtt_uses_four_rttvar_when_that_is_larger() {
    // 1st: SRTT 10, RTTVAR 5. 2nd (R = 90): RTTVAR = 3/4·5 + 1/4·80 = 23.75,
    // SRTT = 7/8·10 + 1/8·90 = 20; RTO = 20 + 4·23.75 = 115 ms (> 20 + 20).
    let (mut snd, cfg) = sender(ms(20));
    snd.rtt_sample(ms(10), &cfg);
    assert_eq!(snd.rto, ms(30));
    snd.rtt_sample(ms(90), &cfg);
    assert_eq!(snd.srtt, Some(ms(20)));
    assert_eq!(snd.rttvar, Duration::from_micros(23_750));
    assert_eq!(snd.rto, ms(115));
}

#[test]
fn the_rto_is_capped_at_max_rto() {
    let (mut snd, mut cfg) = sender(ms(200));
    cfg.max_rto = ms(1000);
    snd.rtt_sample(ms(900), &cfg);
    assert_eq!(snd.rto, ms(1000));
}

#[test]
fn a_late_ack_after_calm_samples_stays_inside_the_rto() {
    // The storm this rule removes: a busy Linux client answers each
    // response after ~30 ms, steadily, so RTTVAR decays; RFC 6298's RTO
    // with a 20 ms floor on the sum is then SRTT + a few µs, and an ACK
    // 15 ms later than usual comes after a (spurious) timeout.
    let (mut snd, cfg) = sender(ms(20));
    for _ in 0..30 {
        snd.rtt_sample(ms(30), &cfg);
    }
    let srtt = snd.srtt.unwrap();
    assert_eq!(srtt, ms(30));
    let rfc_sum_floor = (srtt + (snd.rttvar * 4).max(ms(1))).max(ms(20));
    assert!(rfc_sum_floor < ms(45), "{rfc_sum_floor:?}");
    // With the minimum on the margin the RTO is SRTT + 20 ms.
    assert_eq!(snd.rto, ms(50));
    assert!(snd.rto > ms(45));
}
