//! Two TCP cores talking over a simulated network in virtual time:
//! latency, MTU, bandwidth, and seeded loss, duplication, reordering and
//! corruption. Deterministic: a failing seed fails the same way every run,
//! with a diagnostic naming the seed and the virtual time, and the traffic
//! written to `/tmp/sim-<name>.pcap` (also with `SIM_PCAP=1`).

#[path = "sim/mod.rs"]
mod sim;

use std::cell::RefCell;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::time::Duration;

use sim::apps::{run_to_completion, CloseWhen, Peer};
use sim::net::{
    is_edge, Datagram, DeliveryQueue, GilbertElliott, Link, Rng, Side, SimNet, A_IP, B_IP,
};
use sim::pcap::{ipv4_header, Pcap, LINKTYPE_RAW, TTL_DELIVERED};
use sim::segment::{ones_complement_add, tcp_checksum_ok, SegmentView, ACK, FIN, RST, SYN};
use sim::transfer::{
    assert_same_bytes, bulk, check_clean_bulk, conn_id, pattern, report, short_timers,
};
use tcp_user::tcp::{Config, Error, Instant, State};

// ---------------------------------------------------------------------
// The simulator itself.

#[test]
fn rng_is_deterministic_and_roughly_uniform() {
    let (mut a, mut b) = (Rng::new(3), Rng::new(3));
    for _ in 0..1000 {
        assert_eq!(a.next_u64(), b.next_u64());
    }
    assert_ne!(Rng::new(3).next_u64(), Rng::new(4).next_u64());
    // SplitMix64's first output for seed 0 (reference implementation).
    assert_eq!(Rng::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    let mut r = Rng::new(99);
    let hits = (0..100_000).filter(|_| r.chance(0.05)).count();
    assert!(
        (4_500..5_500).contains(&hits),
        "5% chance hit {hits} of 100000"
    );
    assert!(!(0..1000).any(|_| r.chance(0.0)));
    assert!((0..1000).all(|_| r.chance(1.0)));
    assert!((0..1000).all(|_| r.below(7) < 7));
    assert_eq!(r.below(0), 0);
}

#[test]
fn gilbert_elliott_long_run_loss_matches_the_stationary_formula() {
    // Two channels: the simple Gilbert one the loss-recovery tests use,
    // and a full Gilbert–Elliott one (loss in both states).
    let channels = [
        GilbertElliott::bursts(0.02, 10.0 / 3.0),
        GilbertElliott {
            p: 0.01,
            r: 0.2,
            loss_good: 0.005,
            loss_bad: 0.6,
            forget_after: None,
        },
    ];
    for ge in channels {
        let (p, r) = (ge.p, ge.r);
        let want = p / (p + r) * ge.loss_bad + r / (p + r) * ge.loss_good;
        assert!((ge.mean_loss() - want).abs() < 1e-12);
        let mut rng = Rng::new(7);
        let mut bad = false;
        let n = 1_000_000;
        let (mut lost, mut bursts, mut in_burst, mut bad_visits, mut bad_time) =
            (0, 0, false, 0, 0);
        for _ in 0..n {
            let was_bad = bad;
            let l = ge.draw(&mut bad, &mut rng);
            lost += l as u64;
            bursts += (l && !in_burst) as u64;
            in_burst = l;
            bad_visits += (!was_bad && bad) as u64;
            bad_time += bad as u64;
        }
        let rate = lost as f64 / n as f64;
        // The draws are correlated (bursts), so the standard error is
        // larger than binomial: sqrt(rate/n · (1 + 2·mean burst)) is
        // under 0.0005 for both channels; 10 % of the rate is far wider.
        assert!(
            (rate - want).abs() < 0.1 * want,
            "{ge:?}: lost {rate:.5}, stationary formula {want:.5}"
        );
        // Visits to the bad state last 1/r datagrams on average.
        let mean_visit = bad_time as f64 / bad_visits as f64;
        assert!(
            (mean_visit * r - 1.0).abs() < 0.05,
            "{ge:?}: bad state lasts {mean_visit:.2}, want {:.2}",
            1.0 / r
        );
        if ge.loss_good == 0.0 && ge.loss_bad == 1.0 {
            // Simple Gilbert: runs of losses are visits to the bad state.
            let mean_burst = lost as f64 / bursts as f64;
            assert!(
                (mean_burst * r - 1.0).abs() < 0.05,
                "mean burst {mean_burst:.2}"
            );
            let br = bursts as f64 / n as f64;
            assert!((br - ge.burst_rate()).abs() < 0.1 * ge.burst_rate());
        }
    }
    // Same seed, same losses; a link without `bursty` draws as before.
    let ge = GilbertElliott::bursts(0.1, 4.0);
    let run = |seed| {
        let (mut rng, mut bad) = (Rng::new(seed), false);
        (0..1000)
            .map(|_| ge.draw(&mut bad, &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
    assert_eq!(Link::default().bursty, None);
}

#[test]
fn delivery_queue_orders_by_time_then_send_order() {
    let mut q = DeliveryQueue::default();
    for (at, tag) in [(5u64, 1u8), (5, 2), (1, 3), (9, 4), (5, 5)] {
        q.push(Datagram {
            at: Instant::from_micros(at),
            order: 0,
            from: Side::A,
            src: A_IP,
            dst: B_IP,
            bytes: vec![tag],
            corrupted: false,
        });
    }
    assert!(q.pop_due(Instant::from_micros(0)).is_none());
    let mut got = vec![];
    while let Some(d) = q.pop_due(Instant::from_micros(5)) {
        got.push(d.bytes[0]);
    }
    assert_eq!(got, vec![3, 1, 2, 5], "time order, ties in send order");
    assert_eq!(q.next_time(), Some(Instant::from_micros(9)));
    assert_eq!(q.len(), 1);
}

#[test]
fn checksum_oracle_matches_rfc1071_example() {
    // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert_eq!(
        ones_complement_add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
        0xddf2
    );
    // A hand-made SYN: the checksum field set so the sum over the pseudo
    // header and the segment is all ones, then one flipped bit breaks it.
    let mut seg = vec![0u8; 20];
    seg[0..2].copy_from_slice(&40000u16.to_be_bytes());
    seg[2..4].copy_from_slice(&80u16.to_be_bytes());
    seg[4..8].copy_from_slice(&12345u32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = SYN;
    seg[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = vec![];
    pseudo.extend(A_IP.octets());
    pseudo.extend(B_IP.octets());
    pseudo.extend([0, 6, 0, 20]);
    let sum = ones_complement_add(ones_complement_add(0, &pseudo), &seg);
    seg[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    assert!(tcp_checksum_ok(A_IP, B_IP, &seg));
    let mut flipped = seg.clone();
    flipped[5] ^= 0x10;
    assert!(!tcp_checksum_ok(A_IP, B_IP, &flipped));
    // The pseudo-header counts: another destination, another sum.
    assert!(!tcp_checksum_ok(
        A_IP,
        std::net::Ipv4Addr::new(198, 18, 1, 3),
        &seg
    ));
    let v = SegmentView::parse(&seg).unwrap();
    assert_eq!(
        (v.src_port, v.dst_port, v.seq, v.seg_len()),
        (40000, 80, 12345, 1)
    );
    assert!(SegmentView::parse(&seg[..19]).is_none());
}

#[test]
fn pcap_format_bytes() {
    let mut p = Pcap::default();
    let seg = [0xabu8; 20];
    p.record(
        Instant::from_micros(3_000_042),
        A_IP,
        B_IP,
        TTL_DELIVERED,
        &seg,
    );
    let f = p.to_bytes();
    assert_eq!(
        &f[..24],
        &[
            0xd4, 0xc3, 0xb2, 0xa1, // magic (microseconds), little endian
            2, 0, 4, 0, // version 2.4
            0, 0, 0, 0, // thiszone
            0, 0, 0, 0, // sigfigs
            0xff, 0xff, 0, 0, // snaplen 65535
            101, 0, 0, 0, // LINKTYPE_RAW
        ]
    );
    assert_eq!(LINKTYPE_RAW, 101);
    // Record header: 3 s, 42 µs, 40 bytes captured and on the wire.
    assert_eq!(
        &f[24..40],
        &[3, 0, 0, 0, 42, 0, 0, 0, 40, 0, 0, 0, 40, 0, 0, 0]
    );
    let ip = &f[40..60];
    assert_eq!(ip[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 40);
    assert_eq!((ip[8], ip[9]), (64, 6));
    assert_eq!(&ip[12..16], &A_IP.octets());
    assert_eq!(&ip[16..20], &B_IP.octets());
    assert_eq!(ones_complement_add(0, ip), 0xffff, "IPv4 header checksum");
    assert_eq!(&f[60..], &seg);
    assert_eq!(f.len(), 24 + 16 + 40);
    assert_eq!(
        ipv4_header(A_IP, B_IP, 20, 0, 64),
        <[u8; 20]>::try_from(ip).unwrap()
    );
}

/// A valid bare ACK segment from A to B, for feeding links directly.
fn ack_segment(payload: usize) -> Vec<u8> {
    let mut seg = vec![0u8; 20 + payload];
    seg[12] = 5 << 4;
    seg[13] = ACK;
    let mut pseudo = vec![];
    pseudo.extend(A_IP.octets());
    pseudo.extend(B_IP.octets());
    pseudo.extend([0, 6]);
    pseudo.extend((seg.len() as u16).to_be_bytes());
    let sum = ones_complement_add(ones_complement_add(0, &pseudo), &seg);
    seg[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    seg
}

#[test]
fn link_models_latency_bandwidth_queue_and_mtu() {
    let mut net = SimNet::new("link-model", 1, Config::default());
    net.links[0] = Link {
        latency: Duration::from_millis(10),
        bandwidth: Some(8_000_000), // one byte per µs
        queue_limit: 1500,
        mtu: 1020,
        ..Link::default()
    };
    let t0 = net.now;
    // 980 + 20 TCP + 20 IP = 1000 bytes on the wire = 1 ms each.
    for _ in 0..4 {
        net.send_on_link(Side::A, A_IP, B_IP, ack_segment(960));
    }
    // Too big for the MTU: 1001 + 20 + 20 > 1020.
    net.send_on_link(Side::A, A_IP, B_IP, ack_segment(1001));
    let at: Vec<u64> = net
        .in_flight()
        .iter()
        .map(|(t, _)| t.saturating_duration_since(t0).as_micros() as u64)
        .collect();
    // Backlog when the third arrives is 2000 bytes > 1500: tail-dropped,
    // and so is the fourth.
    assert_eq!(at, vec![11_000, 12_000]);
    assert_eq!(net.stats[0].queue_drops, 2);
    assert_eq!(net.stats[0].too_big, 1);
    assert_eq!(net.stats[0].sent, 5);
    assert!(net.pcap.len() == 5, "drops are recorded too");
    assert!(is_edge(State::TimeWait, State::Closed));
    assert!(!is_edge(State::Listen, State::Established));
}

#[test]
fn bursts_do_not_outlive_silence_with_forget_after() {
    // Long bursts (100 datagrams), half the time bad. Datagrams 20 ms
    // apart: without forgetting, a loss is followed by another almost
    // always; with forget_after = 10 ms every datagram meets a fresh draw
    // from the stationary distribution, so about half the time; and the
    // long-run rate stays p/(p+r) either way.
    let ge = GilbertElliott {
        p: 0.01,
        r: 0.01,
        loss_good: 0.0,
        loss_bad: 1.0,
        forget_after: None,
    };
    let run = |forget_after| {
        let mut net = SimNet::new("forget", 3, Config::default());
        net.links[0] = Link {
            bandwidth: None,
            bursty: Some(GilbertElliott { forget_after, ..ge }),
            ..Link::default()
        };
        let (mut lost_prev, mut pairs, mut after_loss) = (false, 0u32, 0u32);
        for _ in 0..4000 {
            let before = net.stats[0].lost;
            net.send_on_link(Side::A, A_IP, B_IP, ack_segment(0));
            let lost = net.stats[0].lost > before;
            if lost_prev {
                after_loss += 1;
                pairs += lost as u32;
            }
            lost_prev = lost;
            net.now = net.now + Duration::from_millis(20);
        }
        (
            pairs as f64 / after_loss as f64,
            net.stats[0].lost as f64 / 4000.0,
        )
    };
    let (sticky, rate_sticky) = run(None);
    let (fresh, rate_fresh) = run(Some(Duration::from_millis(10)));
    assert!(sticky > 0.95, "P(loss | loss) without forgetting: {sticky}");
    assert!(
        (0.4..0.6).contains(&fresh),
        "P(loss | loss) forgetting: {fresh}"
    );
    assert!((0.3..0.7).contains(&rate_sticky), "{rate_sticky}");
    assert!((0.45..0.55).contains(&rate_fresh), "{rate_fresh}");
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let links = [Link {
            loss: 0.05,
            duplicate: 0.02,
            reorder: 0.05,
            reorder_by: Duration::from_millis(10),
            ..Link::default()
        }; 2];
        let (net, _, b) = bulk(
            "determinism",
            seed,
            pattern(seed, 200_000),
            links,
            short_timers(),
        );
        (net.elapsed(), net.pcap.to_bytes(), b.rx.len())
    };
    let (t1, p1, n1) = run(11);
    let (t2, p2, n2) = run(11);
    assert_eq!((t1, n1), (t2, n2));
    assert!(p1 == p2, "same seed, same packets");
    let (t3, p3, _) = run(12);
    assert!(t3 != t1 || p3 != p1, "another seed, another run");
}

// ---------------------------------------------------------------------
// Transfers.

#[test]
fn handshake_and_small_transfer() {
    let data = pattern(1, 10_000);
    let (net, a, b) = bulk("small", 1, data, [Link::default(); 2], short_timers());
    check_clean_bulk(&net, &a, &b);
    // Without loss the exact paths are known.
    let a_states = net.states_of(Side::A, conn_id(&a));
    let b_states = net.states_of(Side::B, conn_id(&b));
    assert_eq!(
        a_states[..2],
        [State::SynSent, State::Established],
        "{a_states:?}"
    );
    assert_eq!(
        b_states[..2],
        [State::SynReceived, State::Established],
        "{b_states:?}"
    );
    assert_eq!(
        b_states[2..],
        [State::CloseWait, State::LastAck, State::Closed],
        "{b_states:?}"
    );
    assert_eq!(a_states.last(), Some(&State::Closed));
    // And TIME-WAIT lasts exactly 2 MSL when no FIN restarts it.
    let tw = net.entered(Side::A, conn_id(&a), State::TimeWait).unwrap();
    let gone = net.entered(Side::A, conn_id(&a), State::Closed).unwrap();
    assert_eq!(gone.saturating_duration_since(tw), 2 * net.configs[0].msl);
    assert_eq!(net.stats[0].lost + net.stats[1].lost, 0);
    assert_eq!(
        net.counter(Side::A, "retransmits"),
        0,
        "nothing to retransmit"
    );
    report(&net, a.tx.len());
}

#[test]
fn acks_at_least_every_second_full_segment() {
    // RFC 9293 §3.8.6.3 (RFC 1122 §4.2.3.2): "an ACK SHOULD be generated
    // for at least every second full-sized segment".
    let len = 1 << 20;
    let (net, a, b) = bulk(
        "acks",
        2,
        pattern(2, len),
        [Link::default(); 2],
        short_timers(),
    );
    check_clean_bulk(&net, &a, &b);
    let full = (len as u64).div_ceil(1460);
    let acks = net.stats[1].sent;
    assert!(
        acks >= full / 2,
        "{acks} segments from B for {full} full-sized segments from A"
    );
    report(&net, len);
}

#[test]
fn transfer_16mib_with_5pct_loss_each_way() {
    let len = 16 << 20;
    let (net, a, b) = bulk(
        "loss16",
        42,
        pattern(42, len),
        [Link::lossy(0.05); 2],
        short_timers(),
    );
    check_clean_bulk(&net, &a, &b);
    assert!(net.stats[0].lost > 0 && net.stats[1].lost > 0);
    report(&net, len);
}

#[test]
fn lossy_transfers_across_seeds() {
    for seed in 100..105 {
        let (net, a, b) = bulk(
            &format!("seeds-{seed}"),
            seed,
            pattern(seed, 1 << 20),
            [Link::lossy(0.05); 2],
            short_timers(),
        );
        check_clean_bulk(&net, &a, &b);
        report(&net, 1 << 20);
    }
}

#[test]
fn duplication_reordering_corruption() {
    let link = Link {
        duplicate: 0.02,
        reorder: 0.1,
        reorder_by: Duration::from_millis(20),
        corrupt: 0.01,
        ..Link::default()
    };
    let (net, a, b) = bulk("chaos", 7, pattern(7, 1 << 20), [link; 2], short_timers());
    check_clean_bulk(&net, &a, &b);
    for i in 0..2 {
        let s = net.stats[i];
        assert!(
            s.duplicated > 0 && s.reordered > 0,
            "faults injected: {s:?}"
        );
    }
    assert!(
        net.stats[0].corrupted_delivered > 0,
        "corruption reached B: {:?}",
        net.stats[0]
    );
    report(&net, 1 << 20);
}

#[test]
fn chaos_across_seeds_with_loss_too() {
    let link = Link {
        loss: 0.03,
        duplicate: 0.03,
        reorder: 0.2,
        reorder_by: Duration::from_millis(30),
        corrupt: 0.02,
        ..Link::default()
    };
    for seed in 200..204 {
        let (net, a, b) = bulk(
            &format!("chaos-{seed}"),
            seed,
            pattern(seed, 512 << 10),
            [link; 2],
            short_timers(),
        );
        check_clean_bulk(&net, &a, &b);
        report(&net, 512 << 10);
    }
}

#[test]
fn small_mtu_path_never_exceeded() {
    // 600-byte datagrams: both ends advertise an MSS that fits (as the
    // driver does from the interface MTU) and never send more.
    let link = Link {
        mtu: 600,
        loss: 0.02,
        ..Link::default()
    };
    let cfg = Config {
        mss: 560,
        ..short_timers()
    };
    let (net, a, b) = bulk("mtu", 3, pattern(3, 300_000), [link; 2], cfg);
    check_clean_bulk(&net, &a, &b);
    assert_eq!(
        net.stats[0].too_big + net.stats[1].too_big,
        0,
        "{:?}",
        net.stats
    );
}

#[test]
fn asymmetric_mss_respected() {
    // B's path is narrow and B says so; A must never send more than B's
    // MSS even though A's own MSS is larger.
    let mut links = [Link::default(); 2];
    links[0].mtu = 576;
    let ca = short_timers();
    let cb = Config {
        mss: 536,
        ..short_timers()
    };
    let mut net = SimNet::with_configs("asym-mss", 4, ca, cb);
    net.links = links;
    let mut b = Peer::new(Side::B, pattern(5, 100_000), CloseWhen::AfterEof).listen(&mut net, 80);
    let mut a = Peer::new(
        Side::A,
        pattern(4, 100_000),
        CloseWhen::ShutdownThenAfterEof,
    )
    .connect(&mut net, 40000, 80);
    run_to_completion(&mut net, &mut a, &mut b);
    assert_same_bytes(&net, "B received", &b.rx, &a.tx);
    assert_same_bytes(&net, "A received", &a.rx, &b.tx);
    assert_eq!(net.stats[0].too_big, 0, "{:?}", net.stats);
}

#[test]
fn bidirectional_transfer_with_loss() {
    let mut net = SimNet::new("bidir", 21, short_timers());
    net.set_links(Link::lossy(0.03));
    let mut b = Peer::new(
        Side::B,
        pattern(22, 2 << 20),
        CloseWhen::ShutdownThenAfterEof,
    )
    .listen(&mut net, 80);
    let mut a = Peer::new(
        Side::A,
        pattern(21, 2 << 20),
        CloseWhen::ShutdownThenAfterEof,
    )
    .connect(&mut net, 40000, 80);
    run_to_completion(&mut net, &mut a, &mut b);
    assert_same_bytes(&net, "B received", &b.rx, &a.tx);
    assert_same_bytes(&net, "A received", &a.rx, &b.tx);
    assert_eq!((a.result, b.result), (Some(None), Some(None)));
    assert!(net.a.connections().is_empty() && net.b.connections().is_empty());
    report(&net, 4 << 20);
}

#[test]
fn many_connections_share_a_lossy_path() {
    let mut net = SimNet::new("many", 31, short_timers());
    net.set_links(Link {
        loss: 0.02,
        reorder: 0.05,
        reorder_by: Duration::from_millis(5),
        ..Link::default()
    });
    net.b.listen(SocketAddrV4::new(B_IP, 80)).expect("listen");
    let n = 16;
    let mut senders: Vec<Peer> = (0..n)
        .map(|i| {
            Peer::new(
                Side::A,
                pattern(300 + i, 100_000 + i as usize * 1000),
                CloseWhen::AfterSending,
            )
            .connect(&mut net, 41000 + i as u16, 80)
        })
        .collect();
    let mut receivers: Vec<Peer> = (0..n)
        .map(|i| {
            let mut p = Peer::new(Side::B, vec![], CloseWhen::AfterEof);
            p.accept_on = Some(80);
            p.accept_from = Some(41000 + i as u16);
            p
        })
        .collect();
    net.run_until("all connections closed", |net| {
        for p in senders.iter_mut().chain(receivers.iter_mut()) {
            p.pump(net);
        }
        senders.iter().chain(&receivers).all(Peer::done)
    });
    for (s, r) in senders.iter().zip(&receivers) {
        assert_same_bytes(&net, "received", &r.rx, &s.tx);
        assert_eq!((s.result, r.result), (Some(None), Some(None)));
    }
    assert!(net.a.connections().is_empty() && net.b.connections().is_empty());
}

#[test]
fn bottleneck_queue_drops() {
    // 10 Mbit/s with a 30 KB drop-tail queue and 20 ms each way: the
    // sender's congestion control meets real queue overflow, not random
    // loss. Deterministic virtual time, so the goodput floor (a quarter of
    // the link, far below what any sane controller gets) catches a
    // collapse without being a timing test.
    let link = Link {
        latency: Duration::from_millis(20),
        bandwidth: Some(10_000_000),
        queue_limit: 30_000,
        ..Link::default()
    };
    let len = 4 << 20;
    let (net, a, b) = bulk("bottleneck", 8, pattern(8, len), [link; 2], short_timers());
    check_clean_bulk(&net, &a, &b);
    let done = net
        .history
        .iter()
        .find(|c| c.side == Side::B && c.state == State::CloseWait)
        .expect("B saw the FIN")
        .at
        .saturating_duration_since(net.start);
    let goodput = len as f64 * 8.0 / done.as_secs_f64();
    eprintln!(
        "bottleneck: {len} bytes in {done:?} virtual = {:.2} Mbit/s; {:?}",
        goodput / 1e6,
        net.stats[0]
    );
    assert!(net.stats[0].queue_drops > 0, "the queue overflowed");
    report(&net, len);
    assert!(
        goodput > 2.5e6,
        "goodput {goodput:.0} bit/s on a 10 Mbit/s link"
    );
}

#[test]
fn sequence_numbers_wrap_mid_transfer() {
    // Pick the start time so A's ISN lies 1 MiB below 2^32 (RFC 6528: the
    // ISN is a keyed hash plus a 4 µs clock), then send 4 MiB through
    // loss: both the sender's and the receiver's arithmetic must wrap.
    let cfg = short_timers();
    let mut ca = cfg.clone();
    ca.isn_secret = [7; 16];
    let mut cb = cfg;
    cb.isn_secret = [8; 16];
    let probe = |at: Instant| -> u32 {
        let mut s = tcp_user::tcp::Stack::new(ca.clone());
        s.connect(
            at,
            SocketAddrV4::new(A_IP, 40000),
            SocketAddrV4::new(B_IP, 80),
        )
        .unwrap();
        let mut buf = vec![0u8; 1500];
        let t = s.poll_transmit(at, &mut buf).expect("a SYN");
        SegmentView::parse(&buf[..t.len]).unwrap().seq
    };
    let t0 = Instant::from_micros(1_000_000);
    let target = 0u32.wrapping_sub(1 << 20);
    let ticks = target.wrapping_sub(probe(t0)) as u64;
    let start = Instant::from_micros(t0.as_micros() + ticks * 4);
    let isn = probe(start);
    let below_wrap = 0u32.wrapping_sub(isn);
    assert!(
        (512 << 10..2 << 20).contains(&below_wrap),
        "ISN {isn:#x} not near the wrap: the ISN clock is not 4 µs?"
    );
    let mut net = SimNet::starting_at("wrap", 9, ca, cb, start);
    net.set_links(Link::lossy(0.03));
    let mut b = Peer::new(Side::B, pattern(10, 1 << 20), CloseWhen::AfterEof).listen(&mut net, 80);
    let mut a = Peer::new(
        Side::A,
        pattern(9, 4 << 20),
        CloseWhen::ShutdownThenAfterEof,
    )
    .connect(&mut net, 40000, 80);
    run_to_completion(&mut net, &mut a, &mut b);
    assert_same_bytes(&net, "B received", &b.rx, &a.tx);
    assert_same_bytes(&net, "A received", &a.rx, &b.tx);
    assert_eq!((a.result, b.result), (Some(None), Some(None)));
    report(&net, 5 << 20);
}

#[test]
fn heavy_loss_short_connections_across_seeds() {
    // 25 % loss each way on short two-way exchanges: SYNs, SYN-ACKs, the
    // handshake's last ACK, FINs and their ACKs all get lost somewhere.
    for seed in 300..340 {
        // More SYN retries than the default 6: seven SYNs in a row lost at
        // 25 % (p = 6e-5) is a correct timeout, not what this tests.
        let cfg = Config {
            syn_retries: 12,
            ..short_timers()
        };
        let mut net = SimNet::new(&format!("heavy-{seed}"), seed, cfg);
        net.set_links(Link::lossy(0.25));
        let mut b =
            Peer::new(Side::B, pattern(seed + 1, 3_000), CloseWhen::AfterEof).listen(&mut net, 80);
        let mut a = Peer::new(
            Side::A,
            pattern(seed, 20_000),
            CloseWhen::ShutdownThenAfterEof,
        )
        .connect(&mut net, 40000, 80);
        run_to_completion(&mut net, &mut a, &mut b);
        assert_same_bytes(&net, "B received", &b.rx, &a.tx);
        assert_same_bytes(&net, "A received", &a.rx, &b.tx);
        if (a.result, b.result) != (Some(None), Some(None)) {
            net.fail(&format!("A {:?} B {:?}", a.result, b.result));
        }
        if !(net.a.connections().is_empty() && net.b.connections().is_empty()) {
            net.fail("connections left over");
        }
    }
}

#[test]
fn crossing_retransmissions_after_lost_acks() {
    // Both sides send a window of data at once; it all arrives, but every
    // pure ACK is lost for 3 s, so both time out and go back to SND.UNA
    // (RFC 6298 §5.4). Their retransmissions are old news to the peer,
    // which answers with an ACK (RFC 9293 §3.10.7.4) — and that ACK must
    // be acceptable to the other side, or neither ever learns its data
    // arrived: a pure ACK carries the highest sequence number sent
    // (SND.MAX, as BSD does), not the rewound SND.NXT, which lies below
    // the peer's RCV.NXT.
    let mut net = SimNet::new("crossing", 20, short_timers());
    // A healthy run needs a few hundred; two ends trading ACKs for
    // unacceptable ACKs (an ACK storm) need millions.
    net.max_iterations = 20_000;
    let mut b = Peer::new(
        Side::B,
        pattern(201, 14_000),
        CloseWhen::ShutdownThenAfterEof,
    )
    .listen(&mut net, 80);
    let mut a = Peer::new(
        Side::A,
        pattern(200, 14_000),
        CloseWhen::ShutdownThenAfterEof,
    )
    .connect(&mut net, 40000, 80);
    net.run_until("established", |net| {
        a.pump(net);
        b.pump(net);
        a.connected && b.connected
    });
    let until = net.now + Duration::from_secs(3);
    net.filter = Some(Box::new(move |_, at, seg: &SegmentView| {
        at < until && seg.payload_len == 0 && seg.flags & (SYN | FIN | RST) == 0
    }));
    run_to_completion(&mut net, &mut a, &mut b);
    assert_same_bytes(&net, "B received", &b.rx, &a.tx);
    assert_same_bytes(&net, "A received", &a.rx, &b.tx);
    if (a.result, b.result) != (Some(None), Some(None)) {
        net.fail(&format!("A {:?} B {:?}", a.result, b.result));
    }
}

#[test]
fn small_writes_and_slow_small_reads() {
    // The writer makes 100-byte writes; the reader takes 700 bytes every
    // 5 ms from an 8 KiB buffer, so the window opens in slivers. SWS
    // avoidance on both sides (RFC 9293 §3.8.6.2) keeps segments from
    // shrinking to match; everything arrives intact through loss.
    let cfg = Config {
        recv_buffer: 8 * 1024,
        window_scaling: false,
        ..short_timers()
    };
    let mut net = SimNet::new("sws", 19, cfg);
    net.set_links(Link::lossy(0.02));
    let small = Rc::new(RefCell::new(0u32));
    let data_segs = Rc::new(RefCell::new(0u32));
    {
        let (small, data_segs) = (small.clone(), data_segs.clone());
        net.filter = Some(Box::new(move |side, _, seg: &SegmentView| {
            if side == Side::A && seg.payload_len > 0 {
                *data_segs.borrow_mut() += 1;
                if seg.payload_len < 536 {
                    *small.borrow_mut() += 1;
                }
            }
            false
        }));
    }
    let len = 300_000;
    let data = pattern(19, len);
    let mut b = Peer::new(Side::B, vec![], CloseWhen::AfterEof).listen(&mut net, 80);
    b.read_chunk = 700;
    let mut a = Peer::new(Side::A, vec![], CloseWhen::Never).connect(&mut net, 40000, 80);
    let mut fed = 0;
    let mut next_read = net.now;
    net.run_until("both closed", |net| {
        // The writer makes 100-byte writes for as long as they fit.
        if a.connected && !a.closed {
            let (now, conn) = (net.now, a.conn.unwrap());
            while fed < len {
                match net.a.send(now, conn, &data[fed..fed + 100]) {
                    Ok(100) => fed += 100,
                    Ok(n) => {
                        fed += n;
                        break;
                    }
                    Err(e) => net.fail(&format!("send: {e}")),
                }
            }
            if fed == len {
                net.a.close(now, conn).unwrap();
                a.closed = true;
            }
        }
        // The reader takes at most 700 bytes every 5 ms.
        b.read_paused_until = Some(next_read);
        let before = b.rx.len();
        a.pump(net);
        b.pump(net);
        if b.rx.len() != before {
            next_read = net.now + Duration::from_millis(5);
        }
        a.done() && b.done()
    });
    assert_same_bytes(&net, "B received", &b.rx, &data);
    let (small, segs) = (*small.borrow(), *data_segs.borrow());
    eprintln!(
        "sws: {segs} data segments, {small} under 536 bytes; {:?}",
        net.stats
    );
    assert!(
        small * 10 <= segs,
        "{small} of {segs} data segments were slivers under 536 bytes"
    );
}

// ---------------------------------------------------------------------
// Opening and closing.

#[test]
fn simultaneous_open() {
    let mut net = SimNet::new("simopen", 9, short_timers());
    let mut a = Peer::new(
        Side::A,
        pattern(91, 100_000),
        CloseWhen::ShutdownThenAfterEof,
    )
    .connect(&mut net, 5000, 6000);
    let mut b = Peer::new(
        Side::B,
        pattern(92, 50_000),
        CloseWhen::ShutdownThenAfterEof,
    )
    .connect(&mut net, 6000, 5000);
    run_to_completion(&mut net, &mut a, &mut b);
    for (p, other) in [(&a, &b), (&b, &a)] {
        let states = net.states_of(p.side, conn_id(p));
        assert_eq!(
            states[..3],
            [State::SynSent, State::SynReceived, State::Established],
            "{:?}: {states:?}",
            p.side
        );
        assert_same_bytes(&net, "received", &p.rx, &other.tx);
        assert_eq!(p.result, Some(None), "{:?} closed cleanly", p.side);
    }
    assert!(net.a.connections().is_empty() && net.b.connections().is_empty());
}

#[test]
fn simultaneous_close() {
    let mut net = SimNet::new("simclose", 10, short_timers());
    let mut b = Peer::new(Side::B, pattern(101, 20_000), CloseWhen::Never).listen(&mut net, 80);
    let mut a =
        Peer::new(Side::A, pattern(102, 30_000), CloseWhen::Never).connect(&mut net, 40000, 80);
    // Exchange data until everything sent was acknowledged...
    net.run_until("data exchanged and acknowledged", |net| {
        a.pump(net);
        b.pump(net);
        a.rx.len() == b.tx.len()
            && b.rx.len() == a.tx.len()
            && net
                .a
                .connections()
                .iter()
                .all(|c| c.in_flight == 0 && c.send_queue == 0)
            && net
                .b
                .connections()
                .iter()
                .all(|c| c.in_flight == 0 && c.send_queue == 0)
    });
    // ...then both close at the same instant: the FINs cross.
    let now = net.now;
    net.a.close(now, a.conn.unwrap()).unwrap();
    net.b.close(now, b.conn.unwrap()).unwrap();
    run_to_completion(&mut net, &mut a, &mut b);
    let msl = net.configs[0].msl;
    for p in [&a, &b] {
        let id = conn_id(p);
        let states = net.states_of(p.side, id);
        assert_eq!(
            states[states.len() - 5..],
            [
                State::Established,
                State::FinWait1,
                State::Closing,
                State::TimeWait,
                State::Closed
            ],
            "{:?}: {states:?}",
            p.side
        );
        let tw = net.entered(p.side, id, State::TimeWait).unwrap();
        let gone = net.entered(p.side, id, State::Closed).unwrap();
        assert_eq!(gone.saturating_duration_since(tw), 2 * msl, "{:?}", p.side);
        assert_eq!(p.result, Some(None));
    }
    assert_same_bytes(&net, "A received", &a.rx, &b.tx);
    assert_same_bytes(&net, "B received", &b.rx, &a.tx);
}

#[test]
fn connect_to_closed_port_is_refused() {
    let mut net = SimNet::new("refused", 12, short_timers());
    let mut a = Peer::new(Side::A, vec![], CloseWhen::Never).connect(&mut net, 40000, 81);
    net.run_until("A's connection closed", |net| {
        a.pump(net);
        a.done()
    });
    assert_eq!(a.result, Some(Some(Error::Refused)));
    assert_eq!(net.counter(Side::B, "rst_sent"), 1);
    assert!(net.a.connections().is_empty() && net.b.connections().is_empty());
}

#[test]
fn abort_resets_the_peer() {
    let mut net = SimNet::new("abort", 13, short_timers());
    net.set_links(Link::lossy(0.02));
    let mut b = Peer::new(Side::B, vec![], CloseWhen::Never).listen(&mut net, 80);
    let mut a =
        Peer::new(Side::A, pattern(13, 1 << 20), CloseWhen::Never).connect(&mut net, 40000, 80);
    net.run_until("B has 100 KB", |net| {
        a.pump(net);
        b.pump(net);
        b.rx.len() >= 100_000
    });
    let now = net.now;
    net.a.abort(now, a.conn.unwrap()).unwrap();
    // The RST itself may be lost: then B's next ACK or retransmission
    // draws another from A, which no longer knows the connection.
    run_to_completion(&mut net, &mut a, &mut b);
    assert_eq!(a.result, Some(Some(Error::Aborted)));
    assert_eq!(b.result, Some(Some(Error::Reset)));
    assert_same_bytes(&net, "B's prefix", &b.rx, &a.tx[..b.rx.len()]);
    assert!(net.a.connections().is_empty() && net.b.connections().is_empty());
}

#[test]
fn peer_restart_resets_the_connection() {
    let mut net = SimNet::new("restart", 14, short_timers());
    let mut b = Peer::new(Side::B, vec![], CloseWhen::Never).listen(&mut net, 80);
    let mut a =
        Peer::new(Side::A, pattern(14, 200_000), CloseWhen::Never).connect(&mut net, 40000, 80);
    net.run_until("B has 50 KB", |net| {
        a.pump(net);
        b.pump(net);
        b.rx.len() >= 50_000
    });
    // B crashes and comes back with no memory of the connection.
    net.restart(Side::B);
    net.b.listen(SocketAddrV4::new(B_IP, 80)).unwrap();
    net.run_until("A's connection closed", |net| {
        a.pump(net);
        a.done()
    });
    assert_eq!(a.result, Some(Some(Error::Reset)));
    assert!(net.a.connections().is_empty() && net.b.connections().is_empty());
}

#[test]
fn fin_wait_2_times_out_when_the_peer_never_closes() {
    let mut net = SimNet::new("finwait2", 15, short_timers());
    let mut b = Peer::new(Side::B, vec![], CloseWhen::Never).listen(&mut net, 80);
    let mut a = Peer::new(Side::A, pattern(15, 5_000), CloseWhen::AfterSending)
        .connect(&mut net, 40000, 80);
    net.run_until("A released", |net| {
        a.pump(net);
        b.pump(net);
        a.done()
    });
    let id = conn_id(&a);
    let fw2 = net
        .entered(Side::A, id, State::FinWait2)
        .expect("FIN-WAIT-2");
    let gone = net.entered(Side::A, id, State::Closed).unwrap();
    assert_eq!(
        gone.saturating_duration_since(fw2),
        net.configs[0].fin_wait2_timeout
    );
    assert_eq!(a.result, Some(None));
    assert!(b.eof, "B saw the FIN");
    assert_eq!(net.b.state(b.conn.unwrap()), Some(State::CloseWait));
    // B closes late: A answers its FIN with a reset, and B is released.
    let now = net.now;
    net.b.close(now, b.conn.unwrap()).unwrap();
    net.run_until("B released", |net| {
        b.pump(net);
        b.done()
    });
    eprintln!("late close of B ended with {:?}", b.result);
    assert!(net.a.connections().is_empty() && net.b.connections().is_empty());
}

#[test]
fn time_wait_acks_a_retransmitted_fin_and_restarts() {
    // Drop the first ACK of B's FIN: B retransmits its FIN, A (in
    // TIME-WAIT) must ACK it again and restart the 2 MSL timer.
    let mut net = SimNet::new("tw-refin", 16, short_timers());
    // No serialization delay: a FIN arrives exactly one latency after it
    // was sent.
    net.set_links(Link {
        bandwidth: None,
        ..Link::default()
    });
    let fins: Rc<RefCell<Vec<(Instant, u32)>>> = Rc::default();
    let dropped: Rc<RefCell<Option<Instant>>> = Rc::default();
    {
        let (fins, dropped) = (fins.clone(), dropped.clone());
        net.filter = Some(Box::new(move |side, at, seg: &SegmentView| {
            if side == Side::B && seg.has(FIN) {
                fins.borrow_mut().push((at, seg.seq));
                return false;
            }
            let fin_seq = fins.borrow().first().map(|f| f.1);
            if side == Side::A
                && dropped.borrow().is_none()
                && fin_seq.is_some_and(|s| seg.ack == s.wrapping_add(1) && !seg.has(FIN))
            {
                *dropped.borrow_mut() = Some(at);
                return true;
            }
            false
        }));
    }
    let mut b = Peer::new(Side::B, vec![], CloseWhen::AfterEof).listen(&mut net, 80);
    let mut a = Peer::new(Side::A, pattern(16, 3_000), CloseWhen::AfterSending)
        .connect(&mut net, 40000, 80);
    run_to_completion(&mut net, &mut a, &mut b);
    let fins = fins.borrow();
    assert!(dropped.borrow().is_some(), "an ACK of B's FIN was dropped");
    assert!(fins.len() >= 2, "B retransmitted its FIN: {fins:?}");
    assert_eq!((a.result, b.result), (Some(None), Some(None)));
    let latency = net.links[1].latency;
    let last_fin_arrival = fins.last().unwrap().0 + latency;
    let gone = net.entered(Side::A, conn_id(&a), State::Closed).unwrap();
    assert_eq!(
        gone.saturating_duration_since(last_fin_arrival),
        2 * net.configs[0].msl,
        "TIME-WAIT restarts at the retransmitted FIN"
    );
}

// ---------------------------------------------------------------------
// Giving up, and not giving up.

/// Sum of an exponentially backed-off timer: `first`, doubling, capped.
fn backoff_total(first: Duration, max: Duration, n: u32) -> Duration {
    (0..=n).map(|i| (first * 2u32.pow(i)).min(max)).sum()
}

#[test]
fn retry_limit() {
    let cfg = Config {
        max_retries: 5,
        ..short_timers()
    };
    let mut net = SimNet::new("retry", 5, cfg.clone());
    let mut b = Peer::new(Side::B, vec![], CloseWhen::Never).listen(&mut net, 80);
    let mut a = Peer::new(Side::A, vec![], CloseWhen::Never).connect(&mut net, 40000, 80);
    net.run_until("established", |net| {
        a.pump(net);
        b.pump(net);
        a.connected && b.connected
    });
    // The path dies; A has something to say.
    let data_segments = Rc::new(RefCell::new(0u32));
    let counted = data_segments.clone();
    net.filter = Some(Box::new(move |side, _, seg: &SegmentView| {
        if side == Side::A && seg.payload_len > 0 {
            *counted.borrow_mut() += 1;
        }
        true
    }));
    let rto = Duration::from_micros(net.a.connections()[0].rto_us);
    let now = net.now;
    net.a.send(now, a.conn.unwrap(), b"into the void").unwrap();
    let start = net.now;
    net.run_until("A gives up", |net| {
        a.pump(net);
        a.done()
    });
    assert_eq!(a.result, Some(Some(Error::TimedOut)));
    let took = net.now.saturating_duration_since(start);
    // RFC 6298 §5.5: the RTO doubles on each expiry; the abort comes
    // when the timer expires after the last allowed retransmission.
    let lower = backoff_total(cfg.min_rto, cfg.max_rto, cfg.max_retries);
    let upper = backoff_total(cfg.initial_rto.max(rto), cfg.max_rto, cfg.max_retries);
    eprintln!(
        "retry: RTO {rto:?} at blackhole, gave up after {took:?} (bounds {lower:?}..={upper:?})"
    );
    assert!(
        (lower..=upper).contains(&took),
        "gave up after {took:?}, want {lower:?}..={upper:?}"
    );
    // One segment in flight: its tail-loss probe would wait out a delayed
    // ACK, past the RTO, so RFC 8985 §7.2 sends it at the RTO's time and
    // re-arms the RTO after it (§7.3): one RTO more, then the doublings.
    assert_eq!(
        took,
        rto + backoff_total(rto, cfg.max_rto, cfg.max_retries),
        "one probe, then exactly max_retries doublings of the RTO in force"
    );
    assert_eq!(
        *data_segments.borrow(),
        1 + 1 + cfg.max_retries,
        "the original, the probe and max_retries retransmissions"
    );
    assert!(net.a.connections().is_empty());
}

#[test]
fn syn_retry_limit() {
    let cfg = Config {
        syn_retries: 3,
        ..short_timers()
    };
    let mut net = SimNet::new("syn-retry", 6, cfg.clone());
    net.links[0].blackhole = true;
    let mut a = Peer::new(Side::A, vec![], CloseWhen::Never).connect(&mut net, 40000, 80);
    net.run_until("A gives up", |net| {
        a.pump(net);
        a.done()
    });
    assert_eq!(a.result, Some(Some(Error::TimedOut)));
    assert_eq!(net.stats[0].sent, 1 + cfg.syn_retries as u64, "SYNs sent");
    assert_eq!(
        net.elapsed(),
        backoff_total(cfg.initial_rto, cfg.max_rto, cfg.syn_retries)
    );
}

#[test]
fn zero_window_is_probed_until_the_reader_returns() {
    // B's application stops reading for 10 minutes: A's window closes and
    // it probes with a backed-off persist timer. Answered probes must not
    // count against the retry limit, lost window updates must not
    // deadlock, and the data arrives intact.
    let cfg = Config {
        max_retries: 4,
        ..short_timers()
    };
    let mut net = SimNet::new("zero-window", 17, cfg);
    net.set_links(Link::lossy(0.05));
    let mut b = Peer::new(Side::B, vec![], CloseWhen::AfterEof).listen(&mut net, 80);
    b.read_paused_until = Some(net.now + Duration::from_secs(600));
    let mut a = Peer::new(Side::A, pattern(17, 2 << 20), CloseWhen::AfterSending)
        .connect(&mut net, 40000, 80);
    let mut saw_zero = false;
    run_until_done_watching(&mut net, &mut a, &mut b, |net| {
        saw_zero |= net.a.connections().iter().any(|c| c.snd_wnd == 0);
    });
    assert!(saw_zero, "A saw a zero window");
    check_clean_bulk(&net, &a, &b);
    report(&net, 2 << 20);
}

fn run_until_done_watching(
    net: &mut SimNet,
    a: &mut Peer,
    b: &mut Peer,
    mut watch: impl FnMut(&SimNet),
) {
    net.run_until("both connections closed", |net| {
        a.pump(net);
        b.pump(net);
        watch(net);
        a.done() && b.done()
    });
}

#[test]
fn zero_window_then_blackhole_times_out() {
    // The reader stalls, the window closes, then the peer vanishes: the
    // sender's persist probes go unanswered and it must give up rather
    // than probe for ever (RFC 9293 §3.8.6.1 lets a sender keep probing a
    // live receiver indefinitely; an unresponsive one is a dead peer).
    let cfg = Config {
        max_retries: 6,
        ..short_timers()
    };
    let mut net = SimNet::new("zero-window-dead", 18, cfg.clone());
    net.max_time = Duration::from_secs(4 * 3600);
    let mut b = Peer::new(Side::B, vec![], CloseWhen::Never).listen(&mut net, 80);
    b.read_paused_until = Some(Instant::from_micros(u64::MAX));
    let mut a =
        Peer::new(Side::A, pattern(18, 2 << 20), CloseWhen::Never).connect(&mut net, 40000, 80);
    net.run_until("A sees a zero window", |net| {
        a.pump(net);
        b.pump(net);
        net.a.connections().iter().any(|c| c.snd_wnd == 0)
    });
    net.run_for(Duration::from_secs(5));
    net.set_links(Link {
        blackhole: true,
        ..Link::default()
    });
    let start = net.now;
    net.run_until("A gives up", |net| {
        a.pump(net);
        a.done()
    });
    let took = net.now.saturating_duration_since(start);
    eprintln!("zero window, dead peer: gave up after {took:?}");
    assert_eq!(a.result, Some(Some(Error::TimedOut)));
    let upper = backoff_total(cfg.max_rto, cfg.max_rto, cfg.max_retries + 1);
    assert!(took <= upper, "took {took:?}, more than {upper:?}");
}
