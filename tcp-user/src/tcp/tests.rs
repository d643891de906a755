//! Per-state tests of the core: a scripted peer sends hand-made segments
//! and checks what the stack answers, with time passed in explicitly.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use proptest::prelude::*;
use tcp_common::tcp_flags::{ACK, FIN, PSH, RST, SYN, URG};

use super::seq::SeqNum;
use super::*;
use crate::wire::{TcpOptions, TcpRepr};

const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PORT: u16 = 7;
const RPORT: u16 = 40000;
const PEER_ISS: u32 = 1_000;

/// What the stack sent, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Out {
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    mss: Option<u16>,
    payload: Vec<u8>,
    dst_port: u16,
}

struct Peer {
    stack: Stack,
    now: Instant,
    /// The peer's next sequence number.
    seq: u32,
    /// What the peer acknowledges (the stack's next sequence number).
    ack: u32,
}

fn config() -> Config {
    Config {
        msl: Duration::from_secs(1),
        fin_wait2_timeout: Duration::from_secs(3),
        isn_secret: [7; 16],
        ..Config::default()
    }
}

impl Peer {
    fn new() -> Peer {
        let mut stack = Stack::new(config());
        stack.listen(SocketAddrV4::new(LOCAL, PORT)).unwrap();
        Peer {
            stack,
            now: Instant::from_micros(1_000_000),
            seq: PEER_ISS,
            ack: 0,
        }
    }

    fn send_raw(&mut self, flags: u8, seq: u32, ack: u32, window: u16, payload: &[u8]) {
        self.send_full(flags, seq, ack, window, payload, None, PORT);
    }

    #[allow(clippy::too_many_arguments)]
    fn send_full(
        &mut self,
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
        payload: &[u8],
        mss: Option<u16>,
        port: u16,
    ) {
        let repr = TcpRepr {
            src_port: RPORT,
            dst_port: port,
            seq: SeqNum::new(seq),
            ack: SeqNum::new(ack),
            flags,
            window,
            urgent: 0,
            options: TcpOptions {
                mss,
                ..Default::default()
            },
            payload,
        };
        let mut buf = vec![0u8; repr.header_len() + payload.len()];
        repr.emit(REMOTE, LOCAL, &mut buf);
        self.stack.handle_segment(self.now, REMOTE, LOCAL, &buf);
    }

    /// A segment in sequence from the peer, advancing its sequence number.
    fn send(&mut self, flags: u8, payload: &[u8]) {
        let (seq, ack) = (self.seq, self.ack);
        self.send_raw(flags, seq, ack, 65535, payload);
        self.seq = self.seq.wrapping_add(
            payload.len() as u32 + (flags & SYN != 0) as u32 + (flags & FIN != 0) as u32,
        );
    }

    fn outputs(&mut self) -> Vec<Out> {
        let mut v = Vec::new();
        let mut buf = [0u8; 2048];
        while let Some(t) = self.stack.poll_transmit(self.now, &mut buf) {
            assert_eq!((t.src, t.dst), (LOCAL, REMOTE));
            let r = TcpRepr::parse(t.src, t.dst, &buf[..t.len]).expect("valid segment out");
            v.push(Out {
                flags: r.flags,
                seq: r.seq.get(),
                ack: r.ack.get(),
                window: r.window,
                mss: r.options.mss,
                payload: r.payload.to_vec(),
                dst_port: r.dst_port,
            });
        }
        v
    }

    fn one(&mut self) -> Out {
        let v = self.outputs();
        assert_eq!(v.len(), 1, "expected one segment, got {v:?}");
        v.into_iter().next().unwrap()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.stack.poll_event()).collect()
    }

    fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(t) = self.stack.poll_timeout() {
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            self.stack.handle_timeout(self.now);
        }
        self.now = until;
        self.stack.handle_timeout(self.now);
    }

    /// Completes a passive open; returns the connection.
    fn established() -> (Peer, ConnId) {
        let mut p = Peer::new();
        p.send_full(SYN, PEER_ISS, 0, 65535, &[], Some(1460), PORT);
        p.seq = PEER_ISS + 1;
        let synack = p.one();
        assert_eq!(synack.flags, SYN | ACK);
        p.ack = synack.seq.wrapping_add(1);
        p.send(ACK, &[]);
        let ev = p.events();
        let Some(Event::Accepted { conn, listener }) = ev.first().copied() else {
            panic!("no Accepted in {ev:?}");
        };
        assert_eq!(listener, PORT);
        assert_eq!(p.stack.state(conn), Some(State::Established));
        (p, conn)
    }

    fn state(&self, c: ConnId) -> Option<State> {
        self.stack.state(c)
    }
}

#[test]
fn listen_answers_syn_with_syn_ack_and_mss() {
    let mut p = Peer::new();
    p.send_full(SYN, PEER_ISS, 0, 65535, &[], Some(1200), PORT);
    let o = p.one();
    assert_eq!(o.flags, SYN | ACK);
    assert_eq!(o.ack, PEER_ISS + 1);
    assert_eq!(o.mss, Some(1460));
    assert_eq!(p.stack.connections()[0].state, State::SynReceived);
}

#[test]
fn handshake_accepts_and_data_flows_both_ways() {
    let (mut p, c) = Peer::established();
    p.send(ACK | PSH, b"hello");
    assert_eq!(p.events(), vec![Event::Readable(c)]);
    let mut buf = [0u8; 16];
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Err(Error::WouldBlock));
    assert_eq!(p.stack.send(p.now, c, b"world"), Ok(5));
    let o = p.one();
    assert_eq!(o.payload, b"world");
    assert_eq!(o.flags, ACK | PSH);
    assert_eq!(o.seq, p.ack);
    assert_eq!(o.ack, p.seq, "data piggybacks the ACK of ours");
}

#[test]
fn one_segment_gets_a_delayed_ack_two_get_an_immediate_one() {
    let (mut p, _c) = Peer::established();
    p.send(ACK, &[1; 100]);
    assert!(p.outputs().is_empty(), "first segment: ACK delayed");
    p.advance(Duration::from_millis(40));
    let o = p.one();
    assert_eq!((o.flags, o.ack), (ACK, p.seq));
    p.send(ACK, &[2; 100]);
    p.send(ACK, &[3; 100]);
    let o = p.one();
    assert_eq!(o.ack, p.seq, "second segment acknowledged at once");
}

#[test]
fn a_lone_segment_waits_for_its_ack_no_longer_than_the_round_trip() {
    // (handshake RTT, the ACK's delay): one SRTT, at least 1 ms, at most
    // the configured 40 ms.
    for (rtt_us, delay_us) in [(200, 1_000), (5_000, 5_000), (100_000, 40_000)] {
        let mut p = Peer::new();
        p.send_full(SYN, PEER_ISS, 0, 65535, &[], Some(1460), PORT);
        p.seq = PEER_ISS + 1;
        let synack = p.one();
        p.ack = synack.seq.wrapping_add(1);
        p.advance(Duration::from_micros(rtt_us));
        p.send(ACK, &[]);
        assert_eq!(p.stack.connections()[0].state, State::Established);
        p.send(ACK, &[1; 100]);
        p.advance(Duration::from_micros(delay_us - 1));
        assert!(p.outputs().is_empty(), "RTT {rtt_us} µs: ACK held");
        p.advance(Duration::from_micros(1));
        let o = p.one();
        assert_eq!((o.flags, o.ack), (ACK, p.seq), "RTT {rtt_us} µs");
    }
}

#[test]
fn duplicate_and_out_of_order_data_is_acked_not_delivered() {
    let (mut p, c) = Peer::established();
    let start = p.seq;
    p.send(ACK, b"abc");
    p.advance(Duration::from_millis(50));
    p.outputs();
    p.events();
    // The same bytes again: a duplicate ACK, nothing new to read.
    p.send_raw(ACK, start, p.ack, 65535, b"abc");
    let o = p.one();
    assert_eq!(o.ack, start + 3);
    // A segment beyond a hole: ACK of what we have, not delivered.
    p.send_raw(ACK, start + 10, p.ack, 65535, b"zzz");
    assert_eq!(p.one().ack, start + 3);
    let mut buf = [0u8; 16];
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Ok(3));
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Err(Error::WouldBlock));
}

#[test]
fn out_of_order_data_is_held_and_delivered_in_order() {
    let (mut p, c) = Peer::established();
    let start = p.seq;
    p.send_raw(ACK, start + 6, p.ack, 65535, b"ghi");
    p.send_raw(ACK, start + 3, p.ack, 65535, b"def");
    // Duplicate ACKs say what is still missing.
    assert!(p.outputs().iter().all(|o| o.ack == start));
    let mut buf = [0u8; 16];
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Err(Error::WouldBlock));
    p.send_raw(ACK, start, p.ack, 65535, b"abc");
    assert_eq!(p.one().ack, start + 9, "gap filled: immediate ACK of all");
    let n = p.stack.recv(p.now, c, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"abcdefghi");
}

#[test]
fn a_segment_filling_part_of_a_gap_is_acked_at_once() {
    let (mut p, _c) = Peer::established();
    let start = p.seq;
    p.send_raw(ACK, start + 6, p.ack, 65535, b"ghi");
    assert_eq!(p.one().ack, start, "out of order: duplicate ACK");
    // In order, but "def" is still missing: RFC 5681 §4.2 wants the ACK
    // now, not after the delayed-ACK timeout.
    p.send_raw(ACK, start, p.ack, 65535, b"abc");
    assert_eq!(p.one().ack, start + 3, "part of the gap filled");
}

/// A passive open on a stack whose receive buffer (and so its first
/// advertised window) is 4096 bytes.
fn established_with_a_4096_byte_receive_buffer() -> (Peer, ConnId) {
    let cfg = Config {
        recv_buffer: 4096,
        ..config()
    };
    let mut p = Peer::new();
    p.stack = Stack::new(cfg);
    p.stack.listen(SocketAddrV4::new(LOCAL, PORT)).unwrap();
    p.send_full(SYN, PEER_ISS, 0, 65535, &[], Some(1460), PORT);
    p.seq = PEER_ISS + 1;
    let synack = p.one();
    assert_eq!(synack.window, 4096);
    p.ack = synack.seq + 1;
    p.send(ACK, &[]);
    let Some(Event::Accepted { conn: c, .. }) = p.events().first().copied() else {
        panic!()
    };
    (p, c)
}

#[test]
fn a_bare_ack_at_the_windows_right_edge_is_taken() {
    let (mut p, c) = established_with_a_4096_byte_receive_buffer();
    // Our data goes out.
    p.stack.send(p.now, c, b"echo").unwrap();
    let data = p.one();
    assert_eq!(data.payload, b"echo");
    // The peer fills our window to its edge, the first 2048 bytes lost:
    // its SND.NXT is now our RCV.NXT + RCV.WND.
    let start = p.seq;
    p.send_raw(ACK, start + 2048, p.ack, 65535, &[9; 2048]);
    p.outputs();
    // Its bare ACK of our data carries that SND.NXT.
    let edge = start + 4096;
    p.send_raw(ACK, edge, p.ack + 4, 65535, &[]);
    let info = p.stack.connections();
    assert_eq!(info[0].in_flight, 0, "the ACK at the right edge was taken");
    assert!(p.outputs().is_empty(), "and not answered");
    // One past the edge is still outside the window: answered, not taken.
    p.stack.send(p.now, c, b"more").unwrap();
    p.outputs();
    p.send_raw(ACK, edge + 1, p.ack + 8, 65535, &[]);
    assert_eq!(p.stack.connections()[0].in_flight, 4);
}

#[test]
fn overlapping_segment_is_trimmed() {
    let (mut p, c) = Peer::established();
    let start = p.seq;
    p.send(ACK, b"abc");
    p.send_raw(ACK, start + 1, p.ack, 65535, b"bcdef");
    let mut buf = [0u8; 16];
    let n = p.stack.recv(p.now, c, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"abcdef");
}

#[test]
fn rst_for_segments_without_a_connection() {
    let mut p = Peer::new();
    // SYN to a port nobody listens on: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    p.send_full(SYN, 500, 0, 1000, &[], None, 9999);
    let o = p.one();
    assert_eq!(
        (o.flags, o.seq, o.ack, o.dst_port),
        (RST | ACK, 0, 501, RPORT)
    );
    // An ACK to a listener without a connection: <SEQ=SEG.ACK><CTL=RST>
    p.send_raw(ACK, 500, 777, 1000, &[]);
    let o = p.one();
    assert_eq!((o.flags, o.seq), (RST, 777));
    // A RST is never answered.
    p.send_raw(RST, 500, 0, 0, &[]);
    assert!(p.outputs().is_empty());
    // Data with no flags at all to a listener: dropped.
    p.send_raw(0, 500, 0, 0, b"x");
    assert!(p.outputs().is_empty());
}

#[test]
fn syn_received_rst_returns_to_listen() {
    let mut p = Peer::new();
    p.send_full(SYN, PEER_ISS, 0, 65535, &[], None, PORT);
    p.outputs();
    p.send_raw(RST, PEER_ISS + 1, 0, 0, &[]);
    assert!(p.stack.connections().is_empty());
    assert!(p.events().is_empty(), "the application never saw it");
    // Still listening.
    p.send_full(SYN, 9_000, 0, 65535, &[], None, PORT);
    assert_eq!(p.one().flags, SYN | ACK);
}

#[test]
fn syn_ack_is_retransmitted_with_backoff_then_given_up() {
    let mut p = Peer::new();
    p.send_full(SYN, PEER_ISS, 0, 65535, &[], None, PORT);
    let first = p.one();
    p.advance(Duration::from_millis(999));
    assert!(p.outputs().is_empty());
    p.advance(Duration::from_millis(1));
    assert_eq!(p.one(), first, "same SYN,ACK after the initial RTO");
    p.advance(Duration::from_millis(1999));
    assert!(p.outputs().is_empty(), "backed off to 2 s");
    p.advance(Duration::from_millis(1));
    assert_eq!(p.one(), first);
    p.advance(Duration::from_secs(600));
    p.outputs();
    assert!(
        p.stack.connections().is_empty(),
        "gave up after syn_retries"
    );
}

#[test]
fn lost_syn_ack_is_resent_when_the_syn_comes_again() {
    let mut p = Peer::new();
    p.send_full(SYN, PEER_ISS, 0, 65535, &[], None, PORT);
    let first = p.one();
    p.send_full(SYN, PEER_ISS, 0, 65535, &[], None, PORT);
    assert_eq!(p.one(), first);
}

#[test]
fn passive_close_close_wait_last_ack_closed() {
    let (mut p, c) = Peer::established();
    p.send(ACK | FIN, &[]);
    assert_eq!(p.state(c), Some(State::CloseWait));
    assert_eq!(p.one().ack, p.seq, "FIN acknowledged");
    assert_eq!(p.events(), vec![Event::Readable(c)]);
    let mut buf = [0u8; 4];
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Ok(0), "EOF");
    p.stack.close(p.now, c).unwrap();
    assert_eq!(p.state(c), Some(State::LastAck));
    let fin = p.one();
    assert_eq!(fin.flags, ACK | FIN);
    p.ack = fin.seq + 1;
    p.send(ACK, &[]);
    assert_eq!(p.state(c), None);
    assert!(matches!(
        p.events()[..],
        [Event::Closed { error: None, .. }]
    ));
}

#[test]
fn active_close_fin_wait_1_2_time_wait_closed() {
    let (mut p, c) = Peer::established();
    p.stack.close(p.now, c).unwrap();
    assert_eq!(p.state(c), Some(State::FinWait1));
    let fin = p.one();
    assert_eq!(fin.flags, ACK | FIN);
    p.ack = fin.seq + 1;
    p.send(ACK, &[]);
    assert_eq!(p.state(c), Some(State::FinWait2));
    p.send(ACK | FIN, &[]);
    assert_eq!(p.state(c), Some(State::TimeWait));
    assert_eq!(p.one().ack, p.seq);
    // A retransmitted FIN in TIME-WAIT is acknowledged again and restarts 2 MSL.
    p.advance(Duration::from_millis(1500));
    assert_eq!(p.state(c), Some(State::TimeWait));
    p.send_raw(ACK | FIN, p.seq - 1, p.ack, 65535, &[]);
    assert_eq!(p.one().ack, p.seq);
    p.advance(Duration::from_millis(1999));
    assert_eq!(p.state(c), Some(State::TimeWait), "timer restarted");
    p.advance(Duration::from_millis(1));
    assert_eq!(p.state(c), None, "gone after 2 MSL");
    assert!(p
        .events()
        .iter()
        .any(|e| matches!(e, Event::Closed { error: None, .. })));
}

#[test]
fn fin_wait_1_straight_to_time_wait_on_fin_ack() {
    let (mut p, c) = Peer::established();
    p.stack.close(p.now, c).unwrap();
    let fin = p.one();
    p.ack = fin.seq + 1;
    p.send(ACK | FIN, &[]);
    assert_eq!(p.state(c), Some(State::TimeWait));
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let (mut p, c) = Peer::established();
    p.stack.close(p.now, c).unwrap();
    let fin = p.one();
    // The peer's FIN crosses ours: it does not acknowledge our FIN.
    p.send_raw(ACK | FIN, p.seq, fin.seq, 65535, &[]);
    p.seq += 1;
    assert_eq!(p.state(c), Some(State::Closing));
    p.ack = fin.seq + 1;
    p.send(ACK, &[]);
    assert_eq!(p.state(c), Some(State::TimeWait));
}

#[test]
fn fin_wait_2_times_out_once_the_application_closed() {
    let (mut p, c) = Peer::established();
    p.stack.close(p.now, c).unwrap();
    let fin = p.one();
    p.ack = fin.seq + 1;
    p.send(ACK, &[]);
    assert_eq!(p.state(c), Some(State::FinWait2));
    p.advance(Duration::from_millis(2999));
    assert_eq!(p.state(c), Some(State::FinWait2));
    p.advance(Duration::from_millis(1));
    assert_eq!(p.state(c), None);
}

#[test]
fn rst_handling_follows_rfc_5961() {
    // Out of window: ignored.
    let (mut p, c) = Peer::established();
    p.send_raw(RST, p.seq.wrapping_add(1_000_000), 0, 0, &[]);
    assert!(p.outputs().is_empty());
    assert_eq!(p.state(c), Some(State::Established));
    // In window but not exact: challenge ACK, connection stays.
    p.send_raw(RST, p.seq + 10, 0, 0, &[]);
    let o = p.one();
    assert_eq!((o.flags, o.ack), (ACK, p.seq));
    assert_eq!(p.state(c), Some(State::Established));
    // Exactly RCV.NXT: reset.
    p.send_raw(RST, p.seq, 0, 0, &[]);
    assert_eq!(p.state(c), None);
    assert!(matches!(
        p.events()[..],
        [
            ..,
            Event::Closed {
                error: Some(Error::Reset),
                ..
            }
        ]
    ));
}

#[test]
fn syn_in_a_synchronized_state_gets_a_challenge_ack() {
    let (mut p, c) = Peer::established();
    p.send_raw(SYN, 12345, 0, 65535, &[]);
    let o = p.one();
    assert_eq!((o.flags, o.ack), (ACK, p.seq));
    assert_eq!(p.state(c), Some(State::Established));
}

#[test]
fn ack_of_unsent_data_is_answered_and_dropped() {
    let (mut p, c) = Peer::established();
    p.send_raw(ACK, p.seq, p.ack + 1000, 65535, b"data");
    let o = p.one();
    assert_eq!((o.flags, o.seq), (ACK, p.ack));
    let mut buf = [0u8; 8];
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Err(Error::WouldBlock));
}

#[test]
fn the_peer_window_and_mss_are_respected() {
    let mut p = Peer::new();
    p.send_full(SYN, PEER_ISS, 0, 3000, &[], Some(1000), PORT);
    p.seq = PEER_ISS + 1;
    let synack = p.one();
    p.ack = synack.seq + 1;
    p.send_raw(ACK, p.seq, p.ack, 3000, &[]);
    let Some(Event::Accepted { conn: c, .. }) = p.events().first().copied() else {
        panic!()
    };
    assert_eq!(p.stack.send(p.now, c, &[9; 10_000]), Ok(10_000));
    let segs = p.outputs();
    assert_eq!(
        segs.iter().map(|s| s.payload.len()).collect::<Vec<_>>(),
        vec![1000, 1000, 1000],
        "peer MSS 1000, window 3000"
    );
    // Window opens after an ACK.
    p.send_raw(ACK, p.seq, p.ack + 3000, 2000, &[]);
    let segs = p.outputs();
    assert_eq!(segs.iter().map(|s| s.payload.len()).sum::<usize>(), 2000);
}

#[test]
fn unacknowledged_data_is_retransmitted_then_the_connection_times_out() {
    let (mut p, c) = Peer::established();
    p.stack.send(p.now, c, b"lost").unwrap();
    let first = p.one();
    p.advance(Duration::from_secs(1));
    let again = p.outputs();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload, first.payload);
    assert_eq!(p.stack.connections()[0].retransmits, 1);
    p.advance(Duration::from_secs(3600));
    p.outputs();
    assert_eq!(p.state(c), None);
    assert!(p.events().iter().any(|e| matches!(
        e,
        Event::Closed {
            error: Some(Error::TimedOut),
            ..
        }
    )));
}

#[test]
fn zero_window_is_probed_and_reopened() {
    let (mut p, c) = Peer::established();
    p.send_raw(ACK, p.seq, p.ack, 0, &[]);
    p.stack.send(p.now, c, b"waiting").unwrap();
    assert!(p.outputs().is_empty(), "nothing goes into a zero window");
    p.advance(Duration::from_secs(1));
    let probe = p.one();
    assert_eq!(probe.payload.len(), 1, "one-byte window probe");
    // The peer took the probe byte and opens its window.
    p.send_raw(ACK, p.seq, p.ack + 1, 1000, &[]);
    let rest: usize = p.outputs().iter().map(|s| s.payload.len()).sum();
    assert_eq!(rest, 6, "the rest once the window opened");
    assert_eq!(p.state(c), Some(State::Established));
}

#[test]
fn reading_reopens_a_full_receive_window() {
    let (mut p, c) = established_with_a_4096_byte_receive_buffer();
    p.send(ACK, &[1; 2048]);
    p.send(ACK, &[2; 2048]);
    let o = p.outputs();
    assert_eq!(o.last().unwrap().window, 0, "buffer full");
    let mut buf = [0u8; 4096];
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Ok(4096));
    let upd = p.one();
    assert_eq!(upd.window, 4096, "window update after reading");
}

#[test]
fn reading_sends_a_window_update_only_when_the_open_window_is_low() {
    // RFC 9293 §3.8.6.2.2 / RFC 1122 §4.2.3.3, as Linux applies them: a
    // read sends a window update of its own only once the window the peer
    // may still fill is at most half the buffer and reading moved the
    // right edge by at least two MSS. Otherwise the ACKs the data draws
    // carry the window.
    let cap = 60_000;
    let mut p = Peer::new();
    p.stack = Stack::new(Config {
        recv_buffer: cap,
        ..config()
    });
    p.stack.listen(SocketAddrV4::new(LOCAL, PORT)).unwrap();
    p.send_full(SYN, PEER_ISS, 0, 65535, &[], Some(1460), PORT);
    p.seq = PEER_ISS + 1;
    let synack = p.one();
    p.ack = synack.seq + 1;
    p.send(ACK, &[]);
    let Some(Event::Accepted { conn: c, .. }) = p.events().first().copied() else {
        panic!()
    };
    let mut buf = vec![0u8; cap];
    // Two full segments: one immediate ACK (every second full segment).
    p.send(ACK, &[1; 1460]);
    p.send(ACK, &[2; 1460]);
    assert_eq!(p.outputs().len(), 1);
    // Reading them frees two MSS, but nearly the whole buffer is still
    // open: no update.
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Ok(2920));
    assert!(p.outputs().is_empty(), "no update while > half is open");
    // Fill more than half the buffer without reading; ACKs go out as the
    // data arrives (every second segment).
    let segs = cap / 2 / 1460 + 2;
    for i in 0..segs {
        p.send(ACK, &[i as u8; 1460]);
    }
    let acks = p.outputs();
    let last = acks.last().expect("ACKs for the data");
    assert_eq!(last.ack, p.seq);
    assert!(last.window as usize <= cap / 2, "window low");
    // Reading one segment's worth: the edge moves by less than two MSS.
    assert_eq!(p.stack.recv(p.now, c, &mut buf[..1000]), Ok(1000));
    assert!(p.outputs().is_empty(), "less than two MSS freed: no update");
    // Reading the rest: the window reopens and the peer hears of it.
    let rest = segs * 1460 - 1000;
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Ok(rest));
    let upd = p.one();
    assert_eq!(upd.ack, p.seq);
    assert!(upd.window as usize > cap / 2, "{upd:?}");
}

#[test]
fn active_open_and_simultaneous_open() {
    // Plain active open.
    let mut p = Peer::new();
    let local = SocketAddrV4::new(LOCAL, 5000);
    let remote = SocketAddrV4::new(REMOTE, RPORT);
    let c = p.stack.connect(p.now, local, remote).unwrap();
    let syn = p.one();
    assert_eq!(syn.flags, SYN);
    assert_eq!(p.state(c), Some(State::SynSent));
    p.send_full(
        SYN | ACK,
        PEER_ISS,
        syn.seq + 1,
        65535,
        &[],
        Some(1460),
        5000,
    );
    assert_eq!(p.state(c), Some(State::Established));
    assert_eq!(p.events(), vec![Event::Connected(c)]);
    assert_eq!(p.one().ack, PEER_ISS + 1);

    // Simultaneous open: a SYN crosses ours.
    let mut p = Peer::new();
    let c = p.stack.connect(p.now, local, remote).unwrap();
    let syn = p.one();
    p.send_full(SYN, PEER_ISS, 0, 65535, &[], None, 5000);
    assert_eq!(p.state(c), Some(State::SynReceived));
    let synack = p.one();
    assert_eq!(
        (synack.flags, synack.seq, synack.ack),
        (SYN | ACK, syn.seq, PEER_ISS + 1)
    );
    p.send_full(ACK, PEER_ISS + 1, syn.seq + 1, 65535, &[], None, 5000);
    assert_eq!(p.state(c), Some(State::Established));
    assert_eq!(p.events(), vec![Event::Connected(c)]);
}

#[test]
fn refused_active_open() {
    let mut p = Peer::new();
    let c = p
        .stack
        .connect(
            p.now,
            SocketAddrV4::new(LOCAL, 5000),
            SocketAddrV4::new(REMOTE, RPORT),
        )
        .unwrap();
    let syn = p.one();
    p.send_full(RST | ACK, 0, syn.seq + 1, 0, &[], None, 5000);
    assert_eq!(p.state(c), None);
    assert!(matches!(
        p.events()[..],
        [Event::Closed {
            error: Some(Error::Refused),
            ..
        }]
    ));
}

#[test]
fn isns_differ_per_tuple_and_secret() {
    let mut a = Peer::new();
    a.send_full(SYN, 1, 0, 65535, &[], None, PORT);
    let s1 = a.one().seq;
    let mut b = Peer::new();
    b.stack = Stack::new(Config {
        isn_secret: [8; 16],
        ..config()
    });
    b.stack.listen(SocketAddrV4::new(LOCAL, PORT)).unwrap();
    b.send_full(SYN, 1, 0, 65535, &[], None, PORT);
    assert_ne!(s1, b.one().seq);
}

#[test]
fn keepalive_probes_an_idle_peer_and_gives_up() {
    let (mut p, c) = Peer::established();
    assert!(p.outputs().is_empty());
    // Off by default: a long silence sends nothing.
    p.advance(Duration::from_secs(3 * 3600));
    assert!(p.outputs().is_empty());
    p.send(ACK, &[]);
    p.stack
        .set_keepalive(c, Some(Duration::from_secs(10)))
        .unwrap();
    p.advance(Duration::from_secs(10));
    let probe = p.one();
    assert_eq!(
        (probe.flags, probe.seq, probe.payload.len()),
        (ACK, p.ack - 1, 0)
    );
    // The peer answers: the connection lives on, the timer restarts.
    p.send(ACK, &[]);
    p.advance(Duration::from_secs(9));
    assert!(p.outputs().is_empty());
    p.advance(Duration::from_secs(1));
    assert_eq!(p.one().seq, p.ack - 1);
    // Silence now: 9 probes, then the connection is declared dead.
    for _ in 0..8 {
        p.advance(Duration::from_secs(10));
        assert_eq!(p.outputs().len(), 1);
    }
    assert_eq!(p.state(c), Some(State::Established));
    p.advance(Duration::from_secs(10));
    assert_eq!(p.state(c), None);
    assert!(p.events().iter().any(|e| matches!(
        e,
        Event::Closed {
            error: Some(Error::TimedOut),
            ..
        }
    )));
}

#[test]
fn urgent_data_is_flagged_out_and_delivered_inline_in() {
    let (mut p, c) = Peer::established();
    // Incoming URG: the bytes arrive in sequence, nothing is lost.
    let (seq, ack) = (p.seq, p.ack);
    let repr = TcpRepr {
        src_port: RPORT,
        dst_port: PORT,
        seq: SeqNum::new(seq),
        ack: SeqNum::new(ack),
        flags: ACK | URG | PSH,
        window: 65535,
        urgent: 3,
        options: TcpOptions::default(),
        payload: b"abc!",
    };
    let mut buf = [0u8; 64];
    let n = repr.emit(REMOTE, LOCAL, &mut buf);
    p.stack.handle_segment(p.now, REMOTE, LOCAL, &buf[..n]);
    p.seq += 4;
    let mut out = [0u8; 8];
    let n = p.stack.recv(p.now, c, &mut out).unwrap();
    assert_eq!(&out[..n], b"abc!");
    // Outgoing: URG with the pointer past the last urgent byte.
    p.stack.send_urgent(p.now, c, b"!!").unwrap();
    let o = p.outputs();
    let last = o.last().unwrap();
    assert_eq!(last.flags & URG, URG);
    assert_eq!(last.payload, b"!!");
    p.stack.send(p.now, c, b"more").unwrap();
    p.send_raw(ACK, p.seq, last.seq + 2, 65535, &[]);
    let o = p.outputs();
    assert!(
        o.iter().all(|s| s.flags & URG == 0),
        "urgent data acknowledged: {o:?}"
    );
}

#[test]
fn nagle_holds_small_segments_unless_nodelay() {
    let (mut p, c) = Peer::established();
    p.stack.send(p.now, c, b"a").unwrap();
    assert_eq!(p.outputs().len(), 1, "nothing in flight: goes at once");
    p.stack.send(p.now, c, b"b").unwrap();
    assert!(
        p.outputs().is_empty(),
        "Nagle: held while 'a' is unacknowledged"
    );
    p.stack.set_nodelay(c, true).unwrap();
    assert_eq!(p.one().payload, b"b", "no-delay sends it");
}

#[test]
fn syn_on_a_time_wait_tuple_with_a_higher_sequence_reopens() {
    let (mut p, c) = Peer::established();
    p.stack.close(p.now, c).unwrap();
    let fin = p.one();
    p.ack = fin.seq + 1;
    p.send(ACK | FIN, &[]);
    p.outputs();
    assert_eq!(p.state(c), Some(State::TimeWait));
    // An old duplicate SYN (lower sequence): answered with an ACK only.
    p.send_raw(SYN, PEER_ISS, 0, 65535, &[]);
    assert_eq!(p.one().flags, ACK);
    assert_eq!(p.state(c), Some(State::TimeWait));
    // A new incarnation (higher sequence): a new connection.
    p.send_raw(SYN, p.seq + 100_000, 0, 65535, &[]);
    assert_eq!(p.one().flags, SYN | ACK);
    assert_eq!(p.state(c), None);
    assert_eq!(p.stack.connections()[0].state, State::SynReceived);
}

#[test]
fn hostile_flag_combinations() {
    let mut p = Peer::new();
    // SYN+FIN and SYN+RST to a listener: dropped silently.
    p.send_raw(SYN | FIN, 5, 0, 100, &[]);
    p.send_raw(SYN | RST, 5, 0, 100, &[]);
    assert!(p.outputs().is_empty());
    assert!(p.stack.connections().is_empty());
    // No flags at all in ESTABLISHED: dropped (no ACK bit), nothing delivered.
    let (mut p, c) = Peer::established();
    p.send_raw(0, p.seq, 0, 100, b"noflags");
    let mut buf = [0u8; 16];
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Err(Error::WouldBlock));
    // SYN+RST in ESTABLISHED at RCV.NXT: the RST wins, the connection resets.
    p.send_raw(SYN | RST, p.seq, 0, 100, &[]);
    assert_eq!(p.state(c), None);
}

#[test]
fn timers_scale_to_100k_connections() {
    let mut stack = Stack::new(config());
    stack.listen(SocketAddrV4::new(LOCAL, PORT)).unwrap();
    let now = Instant::from_micros(1_000_000);
    let mut buf = [0u8; 128];
    for i in 0..100_000u32 {
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i / 50_000);
        let repr = TcpRepr {
            src_port: 1024 + (i % 50_000) as u16,
            dst_port: PORT,
            seq: SeqNum::new(i),
            ack: SeqNum::new(0),
            flags: SYN,
            window: 65535,
            urgent: 0,
            options: TcpOptions::default(),
            payload: &[],
        };
        let n = repr.emit(src, LOCAL, &mut buf);
        stack.handle_segment(now, src, LOCAL, &buf[..n]);
    }
    let mut sent = 0;
    while stack.poll_transmit(now, &mut buf).is_some() {
        sent += 1;
    }
    assert_eq!(sent, 100_000);
    assert_eq!(stack.connections().len(), 100_000);
    // One deadline for all of them; firing it retransmits every SYN,ACK.
    let t = stack.poll_timeout().unwrap();
    assert_eq!(t, now + Duration::from_secs(1));
    stack.handle_timeout(t);
    let mut again = 0;
    while stack.poll_transmit(t, &mut buf).is_some() {
        again += 1;
    }
    assert_eq!(again, 100_000);
}

#[test]
fn challenge_acks_are_rate_limited() {
    let mut p2 = Peer::new();
    p2.stack = Stack::new(Config {
        challenge_ack_limit: 2,
        ..config()
    });
    p2.stack.listen(SocketAddrV4::new(LOCAL, PORT)).unwrap();
    p2.send_full(SYN, PEER_ISS, 0, 65535, &[], None, PORT);
    p2.seq = PEER_ISS + 1;
    p2.ack = p2.one().seq + 1;
    p2.send(ACK, &[]);
    let mut sent = 0;
    for _ in 0..5 {
        p2.send_raw(SYN, 1, 0, 65535, &[]);
        sent += p2.outputs().len();
    }
    assert_eq!(sent, 2, "two challenge ACKs, then silence");
    let counters: std::collections::HashMap<_, _> = p2.stack.counters().into_iter().collect();
    assert_eq!(counters["challenge_acks"], 2);
    assert_eq!(counters["challenge_acks_suppressed"], 3);
    // A second later the budget is back.
    p2.advance(Duration::from_secs(1));
    p2.send_raw(SYN, 1, 0, 65535, &[]);
    assert_eq!(p2.outputs().len(), 1);
}

#[test]
fn a_peer_without_an_mss_option_gets_536_byte_segments() {
    let mut p = Peer::new();
    p.send_full(SYN, PEER_ISS, 0, 65535, &[], None, PORT);
    p.seq = PEER_ISS + 1;
    p.ack = p.one().seq + 1;
    p.send(ACK, &[]);
    let Some(Event::Accepted { conn: c, .. }) = p.events().first().copied() else {
        panic!()
    };
    p.stack.send(p.now, c, &[5; 2000]).unwrap();
    let sizes: Vec<usize> = p.outputs().iter().map(|o| o.payload.len()).collect();
    assert_eq!(sizes, vec![536, 536, 536], "the short tail waits (Nagle)");
    p.send_raw(ACK, p.seq, p.ack + 1608, 65535, &[]);
    assert_eq!(p.one().payload.len(), 392);
}

#[test]
fn window_scaling_is_negotiated_and_applied() {
    use super::conn::window_shift;
    assert_eq!(window_shift(65_535), 0);
    assert_eq!(window_shift(256 * 1024), 3);
    assert_eq!(window_shift(usize::MAX), 14);

    // The peer offers shift 7: we answer with ours (3 for 256 KiB).
    let mut p = Peer::new();
    let syn = TcpRepr {
        src_port: RPORT,
        dst_port: PORT,
        seq: SeqNum::new(PEER_ISS),
        ack: SeqNum::new(0),
        flags: SYN,
        window: 100,
        urgent: 0,
        options: TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            ..Default::default()
        },
        payload: &[],
    };
    let mut buf = [0u8; 64];
    let n = syn.emit(REMOTE, LOCAL, &mut buf);
    p.stack.handle_segment(p.now, REMOTE, LOCAL, &buf[..n]);
    p.seq = PEER_ISS + 1;
    let mut out = [0u8; 128];
    let t = p.stack.poll_transmit(p.now, &mut out).unwrap();
    let synack = TcpRepr::parse(LOCAL, REMOTE, &out[..t.len]).unwrap();
    assert_eq!(synack.options.window_scale, Some(5));
    assert_eq!(synack.window, 65535, "a SYN,ACK's window is never scaled");
    p.ack = synack.seq.get() + 1;
    // The peer's window of 100 now means 100 << 7 = 12800 bytes.
    p.send_raw(ACK, p.seq, p.ack, 100, &[]);
    let Some(Event::Accepted { conn: c, .. }) = p.events().first().copied() else {
        panic!()
    };
    p.stack.set_nodelay(c, true).unwrap();
    p.stack.send(p.now, c, &[1; 20_000]).unwrap();
    let sent: usize = p.outputs().iter().map(|o| o.payload.len()).sum();
    // Eight full segments; the 1120-byte rest of the window waits (sender
    // SWS avoidance: less than an MSS and less than half the window).
    assert_eq!(sent, 8 * 1460);
    // Our own window is advertised scaled by 5 (1 MiB).
    p.send(ACK, b"hi");
    p.send(ACK, b"hi");
    let o = p.outputs();
    let w = o.last().unwrap().window as usize;
    assert_eq!(Config::default().recv_buffer, 1 << 20);
    assert_eq!(w, ((1 << 20) - 4) / 32 + 1, "free space >> 5, rounded up");

    // Without the option from the peer, no scaling either way.
    let mut q = Peer::new();
    q.send_full(SYN, PEER_ISS, 0, 100, &[], Some(1460), PORT);
    let mut out = [0u8; 128];
    let t = q.stack.poll_transmit(q.now, &mut out).unwrap();
    let synack = TcpRepr::parse(LOCAL, REMOTE, &out[..t.len]).unwrap();
    assert_eq!(synack.options.window_scale, None);
}

#[test]
fn three_duplicate_acks_trigger_fast_retransmit_and_newreno_recovery() {
    let (mut p, c) = Peer::established();
    p.stack.send(p.now, c, &[7; 10 * 1460]).unwrap();
    let segs = p.outputs();
    assert_eq!(segs.len(), 10, "initial window of 10 segments");
    let base = p.ack;
    // Segments 1 and 3 are lost; the peer ACKs what it has: the ACK of
    // segment 0, then duplicates.
    p.send_raw(ACK, p.seq, base + 1460, 65535, &[]);
    p.outputs(); // new data may go out (window grew)
    p.send_raw(ACK, p.seq, base + 1460, 65535, &[]);
    p.send_raw(ACK, p.seq, base + 1460, 65535, &[]);
    let limited = p.outputs();
    assert!(
        limited.iter().all(|s| s.seq != base + 1460),
        "no retransmission before the 3rd"
    );
    p.send_raw(ACK, p.seq, base + 1460, 65535, &[]);
    let o = p.outputs();
    assert_eq!(
        o.first().map(|s| s.seq),
        Some(base + 1460),
        "fast retransmit of the hole: {o:?}"
    );
    assert_eq!(o[0].payload.len(), 1460);
    // A partial ACK (up to the second hole) retransmits the next hole at once.
    p.send_raw(ACK, p.seq, base + 3 * 1460, 65535, &[]);
    let o = p.outputs();
    assert_eq!(o.first().map(|s| s.seq), Some(base + 3 * 1460), "{o:?}");
    let counters: std::collections::HashMap<_, _> = p.stack.counters().into_iter().collect();
    assert_eq!(counters["fast_retransmits"], 2);
    assert_eq!(counters["rto_expirations"], 0);
}

/// Regression (seen against Linux at 2 % loss): with window scaling the
/// advertised edge is rounded up; data the peer sends up to that edge must
/// all be taken, or the peer's sequence numbers run ahead of ours, its ACKs
/// fail the acceptance test and the connection stalls in RTO backoff.
#[test]
fn everything_up_to_a_rounded_up_scaled_edge_is_taken() {
    let mut p = Peer::new();
    p.stack = Stack::new(Config {
        recv_buffer: 100_004, // shift 1; after 3 bytes the free space is odd
        ..config()
    });
    p.stack.listen(SocketAddrV4::new(LOCAL, PORT)).unwrap();
    let syn = TcpRepr {
        src_port: RPORT,
        dst_port: PORT,
        seq: SeqNum::new(PEER_ISS),
        ack: SeqNum::new(0),
        flags: SYN,
        window: 65535,
        urgent: 0,
        options: TcpOptions {
            mss: Some(1460),
            window_scale: Some(0),
            ..Default::default()
        },
        payload: &[],
    };
    let mut buf = [0u8; 64];
    let n = syn.emit(REMOTE, LOCAL, &mut buf);
    p.stack.handle_segment(p.now, REMOTE, LOCAL, &buf[..n]);
    p.seq = PEER_ISS + 1;
    p.ack = p.one().seq + 1;
    p.send(ACK, &[]);
    let Some(Event::Accepted { conn: c, .. }) = p.events().first().copied() else {
        panic!()
    };
    // Two small segments get an immediate ACK carrying the scaled window;
    // then fill exactly that window (field << 1), in MSS pieces.
    p.send(ACK, &[1; 1]);
    p.send(ACK, &[1; 2]);
    let ack = p.outputs().pop().expect("an ACK");
    assert_eq!(ack.ack, p.seq);
    let mut left = ack.window as usize * 2;
    assert!(left > 65_535, "scaled window beyond 64 KiB: {left}");
    while left > 0 {
        let n = left.min(1460);
        p.send(ACK, &vec![2; n]);
        left -= n;
    }
    p.outputs();
    let info = &p.stack.connections()[0];
    assert_eq!(info.rcv_wnd, 0, "window full, nothing refused");
    assert!(
        info.recv_queue > 100_004,
        "one byte past the buffer: {}",
        info.recv_queue
    );
    // Our data goes out; the peer's pure ACK at the edge is accepted.
    p.stack.set_nodelay(c, true).unwrap();
    p.stack.send(p.now, c, b"reply").unwrap();
    let out = p.outputs();
    let sent = out
        .iter()
        .find(|o| !o.payload.is_empty())
        .expect("data sent");
    p.send_raw(ACK, p.seq, sent.seq + 5, 65535, &[]);
    assert_eq!(
        p.stack.connections()[0].in_flight,
        0,
        "the ACK was processed"
    );
}

#[test]
fn sack_is_negotiated_and_reports_held_data_most_recent_first() {
    let mut p = Peer::new();
    p.stack = Stack::new(Config {
        sack: true,
        ..config()
    });
    p.stack.listen(SocketAddrV4::new(LOCAL, PORT)).unwrap();
    let syn = TcpRepr {
        src_port: RPORT,
        dst_port: PORT,
        seq: SeqNum::new(PEER_ISS),
        ack: SeqNum::new(0),
        flags: SYN,
        window: 65535,
        urgent: 0,
        options: TcpOptions {
            mss: Some(1460),
            sack_permitted: true,
            ..Default::default()
        },
        payload: &[],
    };
    let mut buf = [0u8; 64];
    let n = syn.emit(REMOTE, LOCAL, &mut buf);
    p.stack.handle_segment(p.now, REMOTE, LOCAL, &buf[..n]);
    let mut out = [0u8; 128];
    let t = p.stack.poll_transmit(p.now, &mut out).unwrap();
    let synack = TcpRepr::parse(LOCAL, REMOTE, &out[..t.len]).unwrap();
    assert!(synack.options.sack_permitted);
    p.seq = PEER_ISS + 1;
    p.ack = synack.seq.get() + 1;
    p.send(ACK, &[]);
    let start = p.seq;
    // Two holes: [start, +100) and [+200, +300) missing.
    let acks = |p: &mut Peer| -> Vec<Vec<(u32, u32)>> {
        let mut v = Vec::new();
        let mut out = [0u8; 256];
        while let Some(t) = p.stack.poll_transmit(p.now, &mut out) {
            let r = TcpRepr::parse(LOCAL, REMOTE, &out[..t.len]).unwrap();
            v.push(
                r.options
                    .sack
                    .as_slice()
                    .iter()
                    .map(|(l, r)| (l.get(), r.get()))
                    .collect(),
            );
        }
        v
    };
    p.send_raw(ACK, start + 100, p.ack, 65535, &[1; 100]);
    assert_eq!(acks(&mut p), vec![vec![(start + 100, start + 200)]]);
    p.send_raw(ACK, start + 300, p.ack, 65535, &[1; 100]);
    assert_eq!(
        acks(&mut p),
        vec![vec![(start + 300, start + 400), (start + 100, start + 200)]],
        "the newest block first"
    );
    // Filling the first hole merges: one block left, then none.
    p.send_raw(ACK, start, p.ack, 65535, &[1; 100]);
    assert_eq!(acks(&mut p), vec![vec![(start + 300, start + 400)]]);
    p.send_raw(ACK, start + 200, p.ack, 65535, &[1; 100]);
    assert_eq!(acks(&mut p), vec![Vec::<(u32, u32)>::new()]);

    // A peer without SACK-permitted gets neither the option nor blocks.
    let mut q = Peer::new();
    q.stack = Stack::new(Config {
        sack: true,
        ..config()
    });
    q.stack.listen(SocketAddrV4::new(LOCAL, PORT)).unwrap();
    q.send_full(SYN, PEER_ISS, 0, 65535, &[], Some(1460), PORT);
    let t = q.stack.poll_transmit(q.now, &mut out).unwrap();
    assert!(
        !TcpRepr::parse(LOCAL, REMOTE, &out[..t.len])
            .unwrap()
            .options
            .sack_permitted
    );
}

/// A connection with SACK and window scaling negotiated (no timestamps:
/// four blocks fit);
/// returns the peer and its next sequence number.
fn sack_peer() -> (Peer, u32) {
    let mut p = Peer::new();
    p.stack = Stack::new(Config {
        sack: true,
        ..config()
    });
    p.stack.listen(SocketAddrV4::new(LOCAL, PORT)).unwrap();
    let syn = TcpRepr {
        src_port: RPORT,
        dst_port: PORT,
        seq: SeqNum::new(PEER_ISS),
        ack: SeqNum::new(0),
        flags: SYN,
        window: 65535,
        urgent: 0,
        options: TcpOptions {
            mss: Some(1460),
            sack_permitted: true,
            window_scale: Some(7),
            ..Default::default()
        },
        payload: &[],
    };
    let mut buf = [0u8; 64];
    let n = syn.emit(REMOTE, LOCAL, &mut buf);
    p.stack.handle_segment(p.now, REMOTE, LOCAL, &buf[..n]);
    let mut out = [0u8; 128];
    let t = p.stack.poll_transmit(p.now, &mut out).unwrap();
    let synack = TcpRepr::parse(LOCAL, REMOTE, &out[..t.len]).unwrap();
    p.seq = PEER_ISS + 1;
    p.ack = synack.seq.get() + 1;
    p.send(ACK, &[]);
    let start = p.seq;
    (p, start)
}

/// The SACK blocks of every segment the stack sends now.
fn sack_of_acks(p: &mut Peer) -> Vec<Vec<(u32, u32)>> {
    let mut v = Vec::new();
    let mut out = [0u8; 256];
    while let Some(t) = p.stack.poll_transmit(p.now, &mut out) {
        let r = TcpRepr::parse(LOCAL, REMOTE, &out[..t.len]).unwrap();
        v.push(
            r.options
                .sack
                .as_slice()
                .iter()
                .map(|(l, r)| (l.get(), r.get()))
                .collect(),
        );
    }
    v
}

#[test]
fn sack_blocks_repeat_the_most_recently_reported_ones() {
    let (mut p, s) = sack_peer();
    // Five runs beyond a hole at s: [s+100k, s+100k+100) for k = 1, 3, 5,
    // 7, 9, arriving in the order 1, 5, 9, 3, 7.
    for k in [1, 5, 9, 3, 7] {
        p.send_raw(ACK, s + 100 * k, p.ack, 65535, &[1; 100]);
    }
    let run = |k: u32| (s + 100 * k, s + 100 * k + 100);
    // RFC 2018 §4: the block of the segment that triggered the ACK first,
    // then the most recently reported ones (not the lowest ones).
    let acks = sack_of_acks(&mut p);
    assert_eq!(acks.last(), Some(&vec![run(7), run(3), run(9), run(5)]));
    // Joining two older runs makes the joined run the first block.
    p.send_raw(ACK, s + 200, p.ack, 65535, &[1; 100]);
    assert_eq!(
        sack_of_acks(&mut p),
        vec![vec![(s + 100, s + 400), run(7), run(9), run(5)]]
    );
}

#[test]
fn runs_that_do_not_fit_in_one_ack_go_in_an_earlier_one() {
    let (mut p, s) = sack_peer();
    let run = |k: u32| (s + 100 * k, s + 100 * k + 100);
    // Six runs receive data before the stack is polled (a batch of
    // arrivals): four fit in one ACK, so two ACKs go, the older runs in
    // the first, the most recent first in the last (RFC 2018 §4).
    for k in [11, 1, 3, 5, 7, 9] {
        p.send_raw(ACK, s + 100 * k, p.ack, 65535, &[1; 100]);
    }
    let acks = sack_of_acks(&mut p);
    assert_eq!(acks.len(), 3, "{acks:?}");
    assert_eq!(acks[0][..2], [run(1), run(11)], "{acks:?}");
    assert_eq!(acks[1], vec![run(9), run(7), run(5), run(3)]);
    // The last answers six segments: it goes twice.
    assert_eq!(acks[2], acks[1]);
    // Every run was reported.
    for k in [1, 3, 5, 7, 9, 11] {
        assert!(acks.iter().flatten().any(|b| *b == run(k)), "run {k}");
    }
    // One fresh run: one ACK.
    p.send_raw(ACK, s + 1300, p.ack, 65535, &[1; 100]);
    assert_eq!(sack_of_acks(&mut p).len(), 1);
    // Filling the holes in one batch delivers everything: no blocks, and
    // the ACK that ends the sender's recovery answers seven segments, so
    // it goes twice.
    for k in [0, 2, 4, 6, 8, 10, 12] {
        p.send_raw(ACK, s + 100 * k, p.ack, 65535, &[1; 100]);
    }
    assert_eq!(sack_of_acks(&mut p), vec![Vec::<(u32, u32)>::new(); 2]);
}

#[test]
fn a_duplicate_of_held_data_draws_one_d_sack_block() {
    let (mut p, s) = sack_peer();
    p.send_raw(ACK, s + 100, p.ack, 65535, &[1; 100]);
    p.send_raw(ACK, s + 200, p.ack, 65535, &[1; 100]);
    p.send_raw(ACK, s + 400, p.ack, 65535, &[1; 100]);
    sack_of_acks(&mut p);
    // RFC 2883: the duplicate first, then the (larger) block holding it,
    // then the others.
    p.send_raw(ACK, s + 200, p.ack, 65535, &[1; 100]);
    assert_eq!(
        sack_of_acks(&mut p),
        vec![vec![
            (s + 200, s + 300),
            (s + 100, s + 300),
            (s + 400, s + 500)
        ]]
    );
    // Reported once: the next ACK has no D-SACK block.
    p.send_raw(ACK, s + 600, p.ack, 65535, &[1; 100]);
    assert_eq!(
        sack_of_acks(&mut p),
        vec![vec![
            (s + 600, s + 700),
            (s + 100, s + 300),
            (s + 400, s + 500)
        ]]
    );
    // A part of a held segment is a duplicate too.
    p.send_raw(ACK, s + 150, p.ack, 65535, &[1; 50]);
    assert_eq!(
        sack_of_acks(&mut p)[0][..2],
        [(s + 150, s + 200), (s + 100, s + 300)]
    );
}

#[test]
fn a_duplicate_below_rcv_nxt_draws_a_d_sack_block() {
    let (mut p, s) = sack_peer();
    let Some(Event::Accepted { conn: c, .. }) = p.events().first().copied() else {
        panic!("not accepted");
    };
    p.send_raw(ACK, s, p.ack, 65535, &[1; 100]);
    p.send_raw(ACK, s + 100, p.ack, 65535, &[1; 100]);
    sack_of_acks(&mut p);
    // RFC 2883 §4 case 1: wholly below RCV.NXT (a spurious
    // retransmission): the ACK reports it, once.
    p.send_raw(ACK, s + 100, p.ack, 65535, &[1; 100]);
    assert_eq!(sack_of_acks(&mut p), vec![vec![(s + 100, s + 200)]]);
    p.send_raw(ACK, s + 200, p.ack, 65535, &[1; 100]);
    p.advance(Duration::from_millis(500));
    assert_eq!(sack_of_acks(&mut p), vec![Vec::<(u32, u32)>::new()]);
    // Partly below: the old part is the duplicate, the rest is taken.
    p.send_raw(ACK, s + 250, p.ack, 65535, &[1; 100]);
    assert_eq!(sack_of_acks(&mut p), vec![vec![(s + 250, s + 300)]]);
    let mut buf = [0u8; 1024];
    assert_eq!(p.stack.recv(p.now, c, &mut buf), Ok(350));
}

#[test]
fn an_ack_answering_a_batch_beyond_a_hole_goes_twice() {
    let (mut p, s) = sack_peer();
    // Six segments in order, read in one batch: one ACK (no hole).
    for i in 0..6 {
        p.send_raw(ACK, s + 100 * i, p.ack, 65535, &[1; 100]);
    }
    assert_eq!(sack_of_acks(&mut p).len(), 1);
    let s = s + 600;
    // A hole, then two segments: one ACK.
    p.send_raw(ACK, s + 100, p.ack, 65535, &[1; 100]);
    p.send_raw(ACK, s + 200, p.ack, 65535, &[1; 100]);
    assert_eq!(sack_of_acks(&mut p), vec![vec![(s + 100, s + 300)]]);
    // Four more beyond the hole in one batch: the ACK goes twice.
    for i in 3..7 {
        p.send_raw(ACK, s + 100 * i, p.ack, 65535, &[1; 100]);
    }
    let acks = sack_of_acks(&mut p);
    assert_eq!(acks, vec![vec![(s + 100, s + 700)]; 2]);
    let o = p.outputs();
    assert!(o.is_empty(), "{o:?}");
}

#[test]
fn the_ack_that_ends_the_senders_recovery_goes_twice_after_a_batch() {
    // As in a Linux upload at 1 % loss: a segment lost, the rest SACKed,
    // then one batch with the retransmission and new data. A single ACK
    // for all of it, if lost, leaves a sender in recovery (no tail-loss
    // probe there) silent until its RTO.
    let (mut p, s) = sack_peer();
    for i in 1..4 {
        p.send_raw(ACK, s + 100 * i, p.ack, 65535, &[1; 100]);
    }
    assert_eq!(sack_of_acks(&mut p), vec![vec![(s + 100, s + 400)]; 1]);
    // The retransmission and three new segments: the ACK covers the
    // hole and answers four segments.
    for i in [0, 4, 5, 6] {
        p.send_raw(ACK, s + 100 * i, p.ack, 65535, &[1; 100]);
    }
    let o = p.outputs();
    assert_eq!(o.len(), 2, "{o:?}");
    assert!(
        o.iter().all(|a| a.ack == s + 700 && a.payload.is_empty()),
        "{o:?}"
    );
    // Nothing more owed: the copy is not copied again.
    p.advance(Duration::from_millis(500));
    let o = p.outputs();
    assert!(o.is_empty(), "{o:?}");
    // In order again, a batch of six: one ACK.
    for i in 7..13 {
        p.send_raw(ACK, s + 100 * i, p.ack, 65535, &[1; 100]);
    }
    assert_eq!(p.outputs().len(), 1);
    // A lone retransmission filling a hole answers too few to be copied.
    p.send_raw(ACK, s + 1400, p.ack, 65535, &[1; 100]);
    assert_eq!(sack_of_acks(&mut p), vec![vec![(s + 1400, s + 1500)]]);
    p.send_raw(ACK, s + 1300, p.ack, 65535, &[1; 100]);
    let o = p.outputs();
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(o[0].ack, s + 1500);
}

#[test]
fn a_default_window_of_segments_beyond_a_hole_is_held() {
    // The default window (1 MiB) holds 700 full-sized segments beyond a
    // lost one: all are kept and SACKed, so a sender whose retransmission
    // of the hole is lost still has room to send new data whose delivery
    // exposes that loss (RFC 8985), instead of waiting for its RTO.
    let (mut p, s) = sack_peer();
    let seg = 1460u32;
    // Two segments in order: their ACK advertises the scaled window.
    p.send_raw(ACK, s, p.ack, 65535, &[1; 1460]);
    p.send_raw(ACK, s + seg, p.ack, 65535, &[1; 1460]);
    assert_eq!(p.outputs().last().unwrap().ack, s + 2 * seg);
    let s = s + 2 * seg;
    for i in 1..=700 {
        p.send_raw(ACK, s + i * seg, p.ack, 65535, &[1; 1460]);
    }
    let acks = sack_of_acks(&mut p);
    assert_eq!(acks.last().unwrap()[0], (s + seg, s + 701 * seg));
    // The hole filled: everything is delivered at once.
    p.send_raw(ACK, s, p.ack, 65535, &[1; 1460]);
    let o = p.outputs();
    assert_eq!(o.last().unwrap().ack, s + 701 * seg);
}

#[test]
fn close_with_unread_data_resets() {
    let (mut p, c) = Peer::established();
    p.send(ACK, b"unread");
    p.stack.close(p.now, c).unwrap();
    let o = p.outputs();
    assert!(o.iter().any(|s| s.flags & RST != 0), "{o:?}");
    assert_eq!(p.state(c), None);
}

proptest! {
    /// The acceptance test against a model in unwrapped 64-bit offsets,
    /// anywhere in the sequence space (including across 2^32).
    #[test]
    fn acceptance_matches_a_model(
        base in any::<u32>(),
        wnd in prop_oneof![Just(0u32), 1u32..70_000],
        off in -200_000i64..200_000,
        len in prop_oneof![Just(0u32), 1u32..3_000],
    ) {
        let rcv_nxt = SeqNum::new(base);
        let seq = SeqNum::new((base as i64 + off).rem_euclid(1 << 32) as u32);
        let (w, l) = (wnd as i64, len as i64);
        let in_window = |x: i64| 0 <= x && x < w;
        let model = match (len, wnd) {
            (0, 0) => off == 0,
            (0, _) => in_window(off),
            (_, 0) => false,
            _ => in_window(off) || in_window(off + l - 1),
        };
        prop_assert_eq!(stack::segment_acceptable(rcv_nxt, wnd, seq, len), model);
    }

    /// Whatever arrives, in whatever state, the core does not panic.
    #[test]
    fn random_segments_never_panic(
        segs in proptest::collection::vec(
            (any::<u8>(), any::<u32>(), any::<u32>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..64)),
            1..40),
        raw in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let (mut p, c) = Peer::established();
        p.stack.handle_segment(p.now, REMOTE, LOCAL, &raw);
        for (i, (flags, seq, ack, win, payload)) in segs.into_iter().enumerate() {
            // Half the time near the real sequence numbers, to reach deep.
            let (seq, ack) = if i % 2 == 0 { (p.seq.wrapping_add(seq % 64), p.ack.wrapping_add(ack % 64)) } else { (seq, ack) };
            p.send_raw(flags, seq, ack, win, &payload);
            p.outputs();
            p.events();
            if i == 5 { let _ = p.stack.close(p.now, c); }
            p.advance(Duration::from_millis(300));
        }
    }
}

/// Fixtures: a connection driven into each state.
fn in_state(target: State) -> (Peer, ConnId) {
    match target {
        State::SynSent => {
            let mut p = Peer::new();
            let c = p
                .stack
                .connect(
                    p.now,
                    SocketAddrV4::new(LOCAL, PORT),
                    SocketAddrV4::new(REMOTE, RPORT),
                )
                .unwrap();
            let syn = p.one();
            p.ack = syn.seq + 1;
            (p, c)
        }
        State::SynReceived => {
            let mut p = Peer::new();
            p.send_full(SYN, PEER_ISS, 0, 65535, &[], None, PORT);
            p.seq = PEER_ISS + 1;
            let synack = p.one();
            p.ack = synack.seq + 1;
            let c = ConnId(p.stack.connections()[0].id);
            (p, c)
        }
        State::Established => Peer::established(),
        State::FinWait1 => {
            let (mut p, c) = Peer::established();
            p.stack.close(p.now, c).unwrap();
            p.one(); // our FIN, unacknowledged: p.ack stays before it
            (p, c)
        }
        State::FinWait2 => {
            let (mut p, c) = in_state(State::FinWait1);
            p.ack += 1;
            p.send(ACK, &[]);
            (p, c)
        }
        State::CloseWait => {
            let (mut p, c) = Peer::established();
            p.send(ACK | FIN, &[]);
            p.outputs();
            (p, c)
        }
        State::Closing => {
            let (mut p, c) = in_state(State::FinWait1);
            p.send(ACK | FIN, &[]);
            p.outputs();
            (p, c)
        }
        State::LastAck => {
            let (mut p, c) = in_state(State::CloseWait);
            p.stack.close(p.now, c).unwrap();
            p.one();
            (p, c)
        }
        State::TimeWait => {
            let (mut p, c) = in_state(State::FinWait2);
            p.send(ACK | FIN, &[]);
            p.outputs();
            (p, c)
        }
        State::Listen | State::Closed => unreachable!("no connection in these"),
    }
}

/// Every state against every kind of segment: the state reached is one the
/// transition table allows, and the RFC's per-kind rules hold.
#[test]
fn every_state_against_every_kind_of_segment() {
    let states = [
        State::SynSent,
        State::SynReceived,
        State::Established,
        State::FinWait1,
        State::FinWait2,
        State::CloseWait,
        State::Closing,
        State::LastAck,
        State::TimeWait,
    ];
    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Syn,
        SynAck,
        Ack,
        Data,
        Fin,
        RstInWindow,
        RstExact,
        RstOutOfWindow,
        DataOutOfWindow,
    }
    let kinds = [
        Kind::Syn,
        Kind::SynAck,
        Kind::Ack,
        Kind::Data,
        Kind::Fin,
        Kind::RstInWindow,
        Kind::RstExact,
        Kind::RstOutOfWindow,
        Kind::DataOutOfWindow,
    ];
    for &st in &states {
        for &kind in &kinds {
            let (mut p, c) = in_state(st);
            assert_eq!(p.state(c), Some(st), "fixture for {st:?}");
            p.events();
            let (seq, ack) = (p.seq, p.ack);
            match kind {
                Kind::Syn => p.send_raw(SYN, seq.wrapping_sub(5000), 0, 65535, &[]),
                Kind::SynAck => p.send_raw(SYN | ACK, seq.wrapping_sub(5000), ack, 65535, &[]),
                Kind::Ack => p.send_raw(ACK, seq, ack, 65535, &[]),
                Kind::Data => p.send_raw(ACK, seq, ack, 65535, b"data"),
                Kind::Fin => p.send_raw(ACK | FIN, seq, ack, 65535, &[]),
                Kind::RstInWindow => p.send_raw(RST, seq + 100, 0, 0, &[]),
                Kind::RstExact => p.send_raw(RST | ACK, seq, ack, 0, &[]),
                Kind::RstOutOfWindow => p.send_raw(RST, seq.wrapping_add(1 << 30), 0, 0, &[]),
                Kind::DataOutOfWindow => {
                    p.send_raw(ACK, seq.wrapping_add(1 << 30), ack, 65535, b"far")
                }
            }
            let out = p.outputs();
            let after = p.state(c).unwrap_or(State::Closed);
            let what = format!("{st:?} + {kind:?} -> {after:?}, sent {out:?}");
            assert!(is_transition(st, after), "not in the table: {what}");
            match kind {
                // Out-of-window RSTs and data never change anything (RFC 5961).
                Kind::RstOutOfWindow | Kind::DataOutOfWindow => {
                    assert_eq!(after, st, "{what}");
                    assert!(out.iter().all(|o| o.flags & RST == 0), "{what}");
                }
                // An in-window RST that is not exact: challenge ACK at most.
                Kind::RstInWindow => {
                    if st != State::SynSent {
                        assert_eq!(after, st, "{what}");
                    }
                    assert!(out.iter().all(|o| o.flags == ACK), "{what}");
                }
                Kind::RstExact => {
                    if st != State::SynSent {
                        assert_eq!(after, State::Closed, "{what}");
                    }
                }
                // A SYN in a synchronized state never resets or reopens it
                // (except a new incarnation on TIME-WAIT, not this old one).
                Kind::Syn | Kind::SynAck => {
                    if !matches!(st, State::SynSent | State::SynReceived) {
                        assert_eq!(after, st, "{what}");
                        assert!(out.iter().all(|o| o.flags & (RST | SYN) == 0), "{what}");
                    }
                }
                Kind::Fin => {
                    let want = match st {
                        State::Established | State::SynReceived => State::CloseWait,
                        State::FinWait1 => State::Closing,
                        State::FinWait2 => State::TimeWait,
                        other => other,
                    };
                    if st != State::SynSent {
                        assert_eq!(after, want, "{what}");
                    }
                }
                Kind::Ack | Kind::Data => {
                    if !matches!(st, State::SynSent | State::SynReceived) {
                        assert_eq!(after, st, "{what}");
                    }
                }
            }
        }
    }
}

/// Timers and windows found wanting in review: a zero or small window met
/// while idle, old ACKs, and a transmit buffer too small for a header.
mod review {
    use super::*;

    /// Established and idle long enough that no timer from the handshake is
    /// left in the heap, so nothing can wake the connection by accident.
    fn idle_established() -> (Peer, ConnId) {
        let (mut p, c) = Peer::established();
        p.advance(Duration::from_secs(5));
        assert_eq!(
            p.stack.poll_timeout(),
            None,
            "an idle connection has no timer"
        );
        (p, c)
    }

    #[test]
    fn zero_window_met_while_idle_is_still_probed() {
        let (mut p, c) = idle_established();
        p.send_raw(ACK, p.seq, p.ack, 0, &[]);
        assert!(p.outputs().is_empty());
        // Data is queued only after the zero window arrived.
        p.stack.send(p.now, c, b"waiting").unwrap();
        assert!(p.outputs().is_empty(), "nothing goes into a zero window");
        assert!(
            p.stack.poll_timeout().is_some(),
            "the persist timer is in the heap"
        );
        p.advance(Duration::from_secs(2));
        let probe = p.one();
        assert_eq!(probe.payload, b"w", "a one-byte window probe");
        assert_eq!(probe.seq, p.ack);
    }

    #[test]
    fn a_window_too_small_for_sws_avoidance_is_used_after_the_override_timeout() {
        let (mut p, c) = idle_established();
        p.send_raw(ACK, p.seq, p.ack, 100, &[]);
        p.outputs();
        p.stack.send(p.now, c, &[7u8; 1000]).unwrap();
        // Sender SWS avoidance: 100 bytes is less than half the largest
        // window the peer offered (65535), so nothing goes yet.
        assert!(p.outputs().is_empty());
        p.advance(Duration::from_secs(2));
        let o = p.one();
        assert_eq!(
            o.payload.len(),
            100,
            "what fits, once the override timer fired"
        );
        assert_eq!(o.seq, p.ack);
        assert_eq!(p.state(c), Some(State::Established));
        // The peer keeps offering 100 bytes, ACKing what came: the
        // connection keeps moving (timer-paced) and is never aborted.
        let base = p.ack;
        let mut sent_end = 100u32;
        for _ in 0..30 {
            p.ack = base.wrapping_add(sent_end);
            p.send_raw(ACK, p.seq, p.ack, 100, &[]);
            let mut out = p.outputs();
            p.advance(Duration::from_secs(2));
            out.extend(p.outputs());
            for s in out {
                assert!(s.payload.len() <= 100, "never beyond the window");
                sent_end = sent_end.max(s.seq.wrapping_sub(base) + s.payload.len() as u32);
            }
            if sent_end == 1000 {
                break;
            }
        }
        assert_eq!(sent_end, 1000, "everything went out, 100 bytes at a time");
        assert_eq!(p.state(c), Some(State::Established));
    }

    #[test]
    fn an_ack_older_than_the_largest_window_is_challenged_and_its_data_dropped() {
        let (mut p, c) = Peer::established();
        let old = p.ack.wrapping_sub(1 << 20);
        p.send_raw(ACK | PSH, p.seq, old, 65535, b"injected");
        let mut buf = [0u8; 16];
        assert_eq!(p.stack.recv(p.now, c, &mut buf), Err(Error::WouldBlock));
        let o = p.one();
        assert_eq!(
            (o.flags, o.seq, o.ack),
            (ACK, p.ack, p.seq),
            "challenge ACK"
        );
        assert_eq!(p.state(c), Some(State::Established));
        let n = p
            .stack
            .counters()
            .into_iter()
            .find(|(k, _)| *k == "drop_old_ack");
        assert_eq!(n, Some(("drop_old_ack", 1)));
        // A merely duplicate ACK (within the window) still carries data.
        p.send(ACK | PSH, b"fine");
        assert_eq!(p.stack.recv(p.now, c, &mut buf), Ok(4));
    }

    /// The peer's window stays closed for hours but it answers every
    /// probe: RFC 1122 §4.2.2.17 forbids giving up on it.
    #[test]
    fn zero_window_probes_go_on_while_the_peer_answers() {
        let (mut p, c) = Peer::established();
        p.send_raw(ACK, p.seq, p.ack, 0, &[]);
        p.stack.send(p.now, c, b"waiting").unwrap();
        assert!(p.outputs().is_empty());
        let mut probes = 0;
        while p.now < Instant::from_micros(4 * 3600 * 1_000_000) {
            let t = p
                .stack
                .poll_timeout()
                .expect("the persist timer stays armed");
            p.now = t;
            p.stack.handle_timeout(t);
            for o in p.outputs() {
                assert_eq!(
                    (o.seq, o.payload.as_slice()),
                    (p.ack, &b"w"[..]),
                    "the probe"
                );
                probes += 1;
                // Answered, the window still closed, the byte not taken.
                p.send_raw(ACK, p.seq, p.ack, 0, &[]);
            }
        }
        assert!(probes > 100, "{probes} probes in four hours");
        assert_eq!(p.state(c), Some(State::Established));
        // The window opens at last: everything goes.
        p.send_raw(ACK, p.seq, p.ack, 1000, &[]);
        let sent: Vec<u8> = p.outputs().into_iter().flat_map(|o| o.payload).collect();
        assert_eq!(sent, b"waiting");
    }

    /// A peer that vanished behind a zero window is given up on after the
    /// retry limit, with an error for the application.
    #[test]
    fn a_silent_peer_behind_a_zero_window_is_given_up() {
        let (mut p, c) = Peer::established();
        p.send_raw(ACK, p.seq, p.ack, 0, &[]);
        p.stack.send(p.now, c, b"waiting").unwrap();
        p.outputs();
        p.events();
        let mut probes = 0;
        while let Some(t) = p.stack.poll_timeout() {
            p.now = t;
            p.stack.handle_timeout(t);
            probes += p.outputs().len();
        }
        assert_eq!(p.state(c), None);
        assert!(probes > 1, "probed more than once: {probes}");
        assert!(matches!(
            p.events().last(),
            Some(Event::Closed {
                error: Some(Error::TimedOut),
                ..
            })
        ));
    }

    /// A short segment (sent into a small window) that is lost goes again
    /// on the timeout, although sender SWS avoidance alone would hold it.
    #[test]
    fn a_lost_short_segment_is_retransmitted_on_timeout() {
        let (mut p, c) = idle_established();
        p.send_raw(ACK, p.seq, p.ack, 100, &[]);
        p.stack.send(p.now, c, &[7u8; 1000]).unwrap();
        p.outputs();
        let t = p.stack.poll_timeout().unwrap();
        p.now = t;
        p.stack.handle_timeout(t);
        let first = p.one();
        assert_eq!((first.seq, first.payload.len()), (p.ack, 100));
        // Lost. The retransmission timer fires: the same 100 bytes again.
        let t = p.stack.poll_timeout().unwrap();
        p.now = t;
        p.stack.handle_timeout(t);
        let again = p.one();
        assert_eq!((again.seq, again.payload.len()), (p.ack, 100));
    }

    #[test]
    fn a_transmit_buffer_without_room_for_a_header_gets_nothing_and_loses_nothing() {
        let (mut p, c) = Peer::established();
        p.stack.send(p.now, c, b"data").unwrap();
        let mut small = [0u8; 10];
        assert_eq!(p.stack.poll_transmit(p.now, &mut small), None);
        // Sent later, with a real buffer, once anything wakes the connection.
        p.stack.send(p.now, c, b"more").unwrap();
        let o = p.one();
        assert_eq!(o.payload, b"datamore");
    }
}

/// Random segments and application calls in every state.
mod fuzz {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// Whatever arrives and whatever the application does, in any
        /// state: no panic (the transition table is checked in debug
        /// builds), the timer heap never points into the past after
        /// `handle_timeout`, and once the application closed and the peer
        /// fell silent the connection always ends (nothing is stuck).
        #[test]
        fn any_state_any_input_no_panic_and_always_ends(
            state in 0usize..9,
            steps in proptest::collection::vec(
                (0u8..8, any::<u8>(), -70000i64..70000, -70000i64..70000, any::<u16>(), 0usize..3000, 0u64..5000),
                1..30),
        ) {
            let states = [State::SynSent, State::SynReceived, State::Established, State::FinWait1,
                State::FinWait2, State::CloseWait, State::Closing, State::LastAck, State::TimeWait];
            let (mut p, c) = in_state(states[state]);
            let mut buf = vec![0u8; 4096];
            for (kind, flags, dseq, dack, win, len, ms) in steps {
                let seq = (p.seq as i64 + dseq) as u32;
                let ack = (p.ack as i64 + dack) as u32;
                match kind {
                    0..=3 => {
                        let payload = vec![0xabu8; len];
                        p.send_raw(flags & 0x3f, seq, ack, win, &payload);
                    }
                    4 => { let _ = p.stack.send(p.now, c, &buf[..len]); }
                    5 => { let _ = p.stack.recv(p.now, c, &mut buf); }
                    6 => { let _ = p.stack.close(p.now, c); }
                    _ => { let _ = p.stack.shutdown_write(p.now, c); }
                }
                p.outputs();
                p.events();
                p.advance(Duration::from_millis(ms));
                if let Some(t) = p.stack.poll_timeout() {
                    // the heap never points at the past after handle_timeout
                    prop_assert!(t > p.now, "timer {t:?} not after now {:?}", p.now);
                }
            }
            // Whatever happened, the connection ends eventually.
            let _ = p.stack.close(p.now, c);
            for _ in 0..200 { p.advance(Duration::from_secs(60)); p.outputs(); }
            p.outputs();
            prop_assert!(p.stack.connections().is_empty(), "{:?}", p.stack.connections());
        }
    }
}

/// SACK, timestamps, RACK-TLP: a peer that negotiates the options and
/// answers with SACK blocks and timestamps.
mod sack_rack_timestamps {
    use super::*;

    const MSS: u32 = 1460;

    /// What the stack sent, with the options these tests look at.
    #[derive(Debug)]
    struct Seg {
        flags: u8,
        seq: u32,
        len: u32,
        ts: Option<(u32, u32)>,
        sack: Vec<(u32, u32)>,
    }

    fn out(p: &mut Peer) -> Vec<Seg> {
        let mut v = Vec::new();
        let mut buf = [0u8; 2048];
        while let Some(t) = p.stack.poll_transmit(p.now, &mut buf) {
            let r = TcpRepr::parse(t.src, t.dst, &buf[..t.len]).expect("valid segment out");
            assert!(
                t.len <= 20 + MSS as usize,
                "segment of {} bytes exceeds the MSS",
                t.len
            );
            v.push(Seg {
                flags: r.flags,
                seq: r.seq.get(),
                len: r.payload.len() as u32,
                ts: r.options.timestamps,
                sack: r
                    .options
                    .sack
                    .as_slice()
                    .iter()
                    .map(|(l, r)| (l.get(), r.get()))
                    .collect(),
            });
        }
        v
    }

    impl Peer {
        /// A bare ACK of `ack` from the peer, with `ts` and SACK blocks.
        fn ack_with(&mut self, ack: u32, ts: Option<(u32, u32)>, sack: &[(u32, u32)]) {
            self.seg(ACK, self.seq, ack, &[], ts, sack, false);
        }

        #[allow(clippy::too_many_arguments)]
        fn seg(
            &mut self,
            flags: u8,
            seq: u32,
            ack: u32,
            payload: &[u8],
            ts: Option<(u32, u32)>,
            sack: &[(u32, u32)],
            syn_opts: bool,
        ) {
            let mut blocks = crate::wire::SackBlocks::default();
            for &(l, r) in sack {
                blocks.push(SeqNum::new(l), SeqNum::new(r));
            }
            let repr = TcpRepr {
                src_port: RPORT,
                dst_port: PORT,
                seq: SeqNum::new(seq),
                ack: SeqNum::new(ack),
                flags,
                window: 65535,
                urgent: 0,
                options: TcpOptions {
                    mss: syn_opts.then_some(MSS as u16),
                    sack_permitted: syn_opts,
                    timestamps: ts,
                    sack: blocks,
                    ..Default::default()
                },
                payload,
            };
            let mut buf = vec![0u8; repr.header_len() + payload.len()];
            repr.emit(REMOTE, LOCAL, &mut buf);
            self.stack.handle_segment(self.now, REMOTE, LOCAL, &buf);
        }
    }

    fn counter(p: &Peer, name: &str) -> u64 {
        p.stack
            .counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    fn info(p: &Peer) -> ConnInfo {
        p.stack
            .connections()
            .into_iter()
            .next()
            .expect("one connection")
    }

    /// A passive open with SACK-permitted and (optionally) timestamps
    /// (the peer's TSval starts at 100); returns the connection and our
    /// SYN,ACK's TSval.
    fn open(ts: bool) -> (Peer, ConnId, Option<u32>) {
        let mut p = Peer::new();
        p.stack = Stack::new(Config {
            window_scaling: false,
            ..config()
        });
        p.stack.listen(SocketAddrV4::new(LOCAL, PORT)).unwrap();
        p.seg(SYN, PEER_ISS, 0, &[], ts.then_some((100, 0)), &[], true);
        let synack = out(&mut p).remove(0);
        assert_eq!(synack.flags, SYN | ACK);
        if ts {
            assert_eq!(synack.ts.map(|t| t.1), Some(100), "the SYN's TSval echoed");
        } else {
            assert_eq!(synack.ts, None, "no timestamps unless the peer offers them");
        }
        p.seq = PEER_ISS + 1;
        p.ack = synack.seq + 1;
        let our_ts = synack.ts.map(|t| t.0);
        // A 10 ms round trip: the handshake's RTT sample.
        p.advance(Duration::from_millis(10));
        p.ack_with(p.ack, our_ts.map(|t| (101, t)), &[]);
        let Some(Event::Accepted { conn, .. }) = p.events().first().copied() else {
            panic!("not accepted");
        };
        let i = info(&p);
        assert!(i.sack);
        assert_eq!(i.timestamps, ts);
        (p, conn, our_ts)
    }

    #[test]
    fn timestamps_are_echoed_shrink_the_payload_and_guard_against_wrapped_sequences() {
        let (mut p, c, _) = open(true);
        p.stack.set_nodelay(c, true).unwrap();
        p.stack.send(p.now, c, &[5; 3000]).unwrap();
        let segs = out(&mut p);
        // 1460 - 12 bytes of timestamps option per segment (RFC 6691).
        assert_eq!(
            segs.iter().map(|s| s.len).collect::<Vec<_>>(),
            [1448, 1448, 104]
        );
        assert!(
            segs.iter().all(|s| s.ts.map(|t| t.1) == Some(101)),
            "{segs:?}"
        );
        // New data with TSval 200: TS.Recent follows, the ACK echoes it.
        p.advance(Duration::from_millis(5));
        p.seg(
            ACK,
            p.seq,
            p.ack + 3000,
            &[1; 100],
            Some((200, 0)),
            &[],
            false,
        );
        p.seq += 100;
        p.advance(Duration::from_millis(50));
        let ack = out(&mut p);
        assert_eq!(ack.last().and_then(|s| s.ts).map(|t| t.1), Some(200));
        // An old duplicate whose sequence numbers look new (they wrapped):
        // TSval 150 < TS.Recent, so PAWS drops it and says where we are.
        p.seg(
            ACK,
            p.seq,
            p.ack + 3000,
            &[9; 100],
            Some((150, 0)),
            &[],
            false,
        );
        assert_eq!(counter(&p, "drop_paws"), 1);
        let mut buf = [0u8; 256];
        assert_eq!(
            p.stack.recv(p.now, c, &mut buf),
            Ok(100),
            "only the good 100 bytes"
        );
        assert!(!out(&mut p).is_empty(), "an ACK answers the PAWS drop");
        // A RST is accepted whatever its timestamp (RFC 7323 §5.3 R1).
        p.seg(RST, p.seq, 0, &[], Some((1, 0)), &[], false);
        assert_eq!(p.stack.state(c), None);
    }

    #[test]
    fn an_out_of_order_segment_does_not_move_ts_recent() {
        let (mut p, c, _) = open(true);
        // Beyond a hole: held, its TSval (300) is not recorded (SEG.SEQ >
        // Last.ACK.sent), so the duplicate ACK still echoes 101.
        p.seg(
            ACK,
            p.seq + 100,
            p.ack,
            &[2; 100],
            Some((300, 0)),
            &[],
            false,
        );
        let dup = out(&mut p);
        assert_eq!(dup.last().and_then(|s| s.ts).map(|t| t.1), Some(101));
        assert_eq!(
            dup.last().map(|s| s.sack.clone()),
            Some(vec![(p.seq + 100, p.seq + 200)])
        );
        // The hole fills with TSval 301: recorded, and echoed.
        p.seg(ACK, p.seq, p.ack, &[1; 100], Some((301, 0)), &[], false);
        let ack = out(&mut p);
        assert_eq!(ack.last().and_then(|s| s.ts).map(|t| t.1), Some(301));
        let mut buf = [0u8; 512];
        assert_eq!(p.stack.recv(p.now, c, &mut buf), Ok(200));
    }

    #[test]
    fn rtt_is_measured_from_the_echo_across_a_retransmission() {
        let (mut p, c, _) = open(true);
        p.stack.send(p.now, c, &[5; 100]).unwrap();
        let first = out(&mut p);
        assert_eq!(first.len(), 1);
        // Lost. The RTO (200 ms: the minimum, SRTT being 10 ms) resends it.
        p.advance(Duration::from_millis(250));
        let again = out(&mut p);
        assert_eq!(again.len(), 1, "{again:?}");
        let tsval = again[0].ts.unwrap().0;
        // Acknowledged 30 ms later, echoing the retransmission's TSval:
        // that one arrived, the RTT is 30 ms (Karn's rule would forbid a
        // sample without the echo).
        p.advance(Duration::from_millis(30));
        p.ack_with(p.ack + 100, Some((102, tsval)), &[]);
        // SRTT was 10 ms (the handshake): 7/8 of it plus 1/8 of 30 ms.
        assert_eq!(info(&p).srtt_us, 12_500);
    }

    /// Ten segments out at t0; the peer's SACKs arrive 10 ms later.
    fn ten_out(ts: bool) -> (Peer, ConnId, u32, u32) {
        let (mut p, c, _) = open(ts);
        p.stack.send(p.now, c, &[7; 64 * 1024]).unwrap();
        let segs = out(&mut p);
        assert_eq!(segs.len(), 10, "initial window");
        let mss = segs[0].len;
        p.advance(Duration::from_millis(10));
        let base = p.ack;
        (p, c, base, mss)
    }

    #[test]
    fn sack_recovery_repairs_a_hole_and_a_lost_retransmission_without_a_timeout() {
        let (mut p, _c, base, mss) = ten_out(false);
        let seg = |i: u32| base + i * mss;
        // Segment 1 is lost: ACK of 0, then SACKs of 2, 2-3, 2-4.
        p.ack_with(seg(1), None, &[]);
        let _ = out(&mut p);
        let cwnd_before = info(&p).cwnd;
        for last in 3..=4 {
            p.ack_with(seg(1), None, &[(seg(2), seg(last))]);
            let o = out(&mut p);
            assert!(
                o.iter().all(|s| s.seq != seg(1)),
                "not yet lost with < 3 SACKed: {o:?}"
            );
        }
        p.ack_with(seg(1), None, &[(seg(2), seg(5))]);
        let o = out(&mut p);
        assert_eq!(
            o.first().map(|s| (s.seq, s.len)),
            Some((seg(1), mss)),
            "{o:?}"
        );
        let i = info(&p);
        assert!(i.recovering);
        assert!(
            i.cwnd < cwnd_before && i.cwnd * 10 >= cwnd_before * 6,
            "CUBIC's reduction to 0.7: {} -> {}",
            cwnd_before,
            i.cwnd
        );
        // The rest of the window is SACKed: the pipe empties and new data
        // goes out.
        p.advance(Duration::from_millis(1));
        p.ack_with(seg(1), None, &[(seg(2), seg(10))]);
        let fresh = out(&mut p);
        assert!(
            !fresh.is_empty() && fresh.iter().all(|s| s.seq >= seg(10)),
            "{fresh:?}"
        );
        // The retransmission is lost too. New data sent after it is SACKed
        // 10 ms later: an RTT after the retransmission with later data
        // delivered, RACK marks it lost again and it goes a third time.
        p.advance(Duration::from_millis(10));
        p.ack_with(seg(1), None, &[(seg(10), seg(11)), (seg(2), seg(10))]);
        let o = out(&mut p);
        assert_eq!(
            o.first().map(|s| s.seq),
            Some(seg(1)),
            "lost retransmission resent: {o:?}"
        );
        assert_eq!(counter(&p, "rto_expirations"), 0);
        assert_eq!(counter(&p, "fast_retransmits"), 2);
        // Everything acknowledged: recovery over.
        let top = fresh.iter().map(|s| s.seq + s.len).max().unwrap();
        p.ack_with(top, None, &[]);
        assert!(!info(&p).recovering);
    }

    #[test]
    fn a_tail_loss_is_probed_and_repaired_without_a_timeout() {
        let (mut p, c, base, mss) = ten_out(true);
        // Only ten segments' worth to send: the tail is the last two.
        let _ = c;
        let seg = |i: u32| base + i * mss;
        let tsecr = |p: &Peer| {
            let _ = p;
            0
        };
        // Segments 0..8 arrive; 8 and 9 are lost (and nothing follows,
        // since the window is used up until these ACKs make room: the
        // peer's window is what limits here).
        p.ack_with(seg(8), Some((110, tsecr(&p))), &[]);
        // New data fills the freed window; the peer loses all of it too.
        let more = out(&mut p);
        let top = more.iter().map(|s| s.seq + s.len).max().unwrap_or(seg(10));
        assert_eq!(counter(&p, "tail_loss_probes"), 0);
        // Nothing comes back. Two SRTTs (about 20 ms) later a probe goes.
        p.advance(Duration::from_millis(25));
        let probe = out(&mut p);
        assert_eq!(counter(&p, "tail_loss_probes"), 1, "{probe:?}");
        assert_eq!(counter(&p, "rto_expirations"), 0);
        // New data was waiting and the peer's window had room: the probe
        // carries it (RFC 8985 §7.3), three full-sized segments so that a
        // delayed-ACK receiver answers at once even if one is lost.
        assert_eq!(probe.len(), 3, "{probe:?}");
        assert_eq!(probe[0].seq, top, "the probe is new data");
        for w in probe.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + w[0].len);
        }
        let top = probe[2].seq + probe[2].len;
        // Its SACK, 10 ms later, shows everything before it missing: RACK
        // marks those lost and recovery resends them, still no timeout.
        p.advance(Duration::from_millis(10));
        p.ack_with(seg(8), Some((120, 0)), &[(probe[0].seq, top)]);
        let o = out(&mut p);
        assert_eq!(o.first().map(|s| s.seq), Some(seg(8)), "{o:?}");
        assert_eq!(counter(&p, "rto_expirations"), 0);
        assert!(info(&p).recovering);
    }

    /// The tail seen on a veth with 5 % loss against a Linux receiver: the
    /// peer got the whole flight, but the one ACK covering it was lost. A
    /// probe of one new segment would be a lone in-order full-sized
    /// segment, whose ACK a receiver may delay (RFC 5681 §4.2; Linux holds
    /// it 40 ms and more, past a 20 ms RTO). The probe is three segments,
    /// so the ACK is due at once, even when one of them is lost, and no
    /// timeout follows.
    #[test]
    fn a_probe_of_new_data_is_three_full_segments_so_a_delayed_ack_peer_answers() {
        let (mut p, c, our_ts) = open(true);
        p.stack.send(p.now, c, &[7; 48 * 1024]).unwrap();
        let first = out(&mut p);
        assert_eq!(first.len(), 10, "initial window");
        let mss = first[0].len;
        let top = first.iter().map(|s| s.seq + s.len).max().unwrap();
        // All ten arrive and are acknowledged.
        p.advance(Duration::from_millis(10));
        p.ack_with(top, Some((110, our_ts.unwrap())), &[]);
        let second = out(&mut p);
        assert!(second.len() >= 4, "{second:?}");
        let top = second.iter().map(|s| s.seq + s.len).max().unwrap();
        // These arrive too, but the peer's ACK of them is lost: silence.
        p.advance(Duration::from_millis(25));
        let probe = out(&mut p);
        assert_eq!(counter(&p, "tail_loss_probes"), 1, "{probe:?}");
        assert_eq!(
            probe.iter().map(|s| (s.seq, s.len)).collect::<Vec<_>>(),
            [(top, mss), (top + mss, mss), (top + 2 * mss, mss)],
            "three full-sized segments of new data"
        );
        // Nothing more goes until the probe is answered.
        assert!(out(&mut p).is_empty());
        // The last one is lost; the first two are two full-sized segments
        // in order: the peer acknowledges them at once.
        p.advance(Duration::from_millis(10));
        let end = top + 2 * mss;
        p.ack_with(end, Some((120, probe[1].ts.unwrap().0)), &[]);
        let more = out(&mut p);
        assert!(!more.is_empty() && more[0].seq == end + mss, "{more:?}");
        assert_eq!(counter(&p, "rto_expirations"), 0);
        assert!(!info(&p).recovering);
        // The peer's SACK of what follows shows the third probe segment
        // missing: RACK resends it, still without a timeout.
        p.advance(Duration::from_millis(10));
        let sacked = more[0].seq + more[0].len;
        p.ack_with(
            end,
            Some((130, more[0].ts.unwrap().0)),
            &[(end + mss, sacked)],
        );
        let o = out(&mut p);
        assert_eq!(o.first().map(|s| s.seq), Some(end), "{o:?}");
        assert_eq!(counter(&p, "rto_expirations"), 0);
    }

    /// Everything sent arrives, but every ACK of it is lost, the probe's
    /// too: the retransmission timer fires. (Segments sent, the probe, the
    /// timeout's retransmission and its TSval, cwnd before the timeout.)
    fn timeout_after_lost_acks(p: &mut Peer, c: ConnId, our_ts: u32) -> (u32, u32, u32, usize) {
        p.stack.send(p.now, c, &[7; 48 * 1024]).unwrap();
        let first = out(p);
        let top = first.iter().map(|s| s.seq + s.len).max().unwrap();
        p.advance(Duration::from_millis(10));
        p.ack_with(top, Some((110, our_ts)), &[]);
        let second = out(p);
        let una = second[0].seq;
        p.advance(Duration::from_millis(25));
        let probe = out(p);
        assert_eq!(counter(p, "tail_loss_probes"), 1, "{probe:?}");
        let top = probe.iter().map(|s| s.seq + s.len).max().unwrap();
        let probe_ts = probe[0].ts.unwrap().0;
        let cwnd = info(p).cwnd;
        // The RTO (the 200 ms minimum) runs from the probe.
        p.advance(Duration::from_millis(250));
        let again = out(p);
        assert_eq!(counter(p, "rto_expirations"), 1);
        assert_eq!(again.first().map(|s| s.seq), Some(una), "{again:?}");
        assert!(info(p).cwnd < cwnd);
        (top, probe_ts, again[0].ts.unwrap().0, cwnd)
    }

    /// RFC 3522 / RFC 4015: the ACK after the timeout echoes the probe's
    /// TSval, older than the retransmission's: the originals had arrived,
    /// the timeout was spurious, and its window reduction is undone.
    #[test]
    fn a_spurious_timeout_is_detected_by_the_echo_and_undone() {
        let (mut p, c, our_ts) = open(true);
        let (top, probe_ts, _, cwnd) = timeout_after_lost_acks(&mut p, c, our_ts.unwrap());
        let srtt = info(&p).srtt_us;
        p.advance(Duration::from_millis(1));
        p.ack_with(top, Some((130, probe_ts)), &[]);
        assert_eq!(counter(&p, "rto_undone"), 1);
        let i = info(&p);
        // The ACK was drawn by the retransmission (it came 1 ms after it)
        // but echoes the probe: no RTT sample, neither the 251 ms since the
        // probe nor 1 ms (Karn's ambiguity, which the echo does not settle).
        assert_eq!(i.srtt_us, srtt);
        assert!(!i.recovering);
        assert!(i.cwnd >= cwnd, "cwnd back: {} < {cwnd}", i.cwnd);
        // New data goes out with the window of before, not one segment.
        let o = out(&mut p);
        assert!(o.len() >= 4 && o[0].seq == top, "{o:?}");
    }

    /// The same with the echo of the retransmission: the original was
    /// lost, the timeout was real, and nothing is undone.
    #[test]
    fn a_timeout_repaired_by_its_retransmission_is_not_undone() {
        let (mut p, c, our_ts) = open(true);
        let (top, _, retx_ts, cwnd) = timeout_after_lost_acks(&mut p, c, our_ts.unwrap());
        let srtt = info(&p).srtt_us;
        p.advance(Duration::from_millis(1));
        p.ack_with(top, Some((130, retx_ts)), &[]);
        assert_eq!(counter(&p, "rto_undone"), 0);
        assert!(info(&p).cwnd < cwnd);
        // The echo names the retransmission: the RTT is timed from it (1
        // ms), not from the segments sent once that the ACK also covers.
        assert_eq!(info(&p).srtt_us, srtt * 7 / 8 + 1000 / 8);
    }

    /// Fast recovery with a small window: the retransmission fills the
    /// hole and the one ACK covering everything is lost. Every lost segment
    /// has been resent, the ACK clock has stopped: a probe goes two SRTTs
    /// later, not the retransmission timer.
    #[test]
    fn a_stalled_fast_recovery_is_probed_before_the_timer() {
        let (mut p, _c, base, mss) = ten_out(false);
        let seg = |i: u32| base + i * mss;
        p.ack_with(seg(1), None, &[]);
        let _ = out(&mut p);
        p.ack_with(seg(1), None, &[(seg(2), seg(5))]);
        let o = out(&mut p);
        assert_eq!(o.first().map(|s| s.seq), Some(seg(1)), "{o:?}");
        assert!(info(&p).recovering);
        let top = o.iter().map(|s| s.seq + s.len).max().unwrap().max(seg(10));
        // The rest arrives, the ACKs saying so are lost. Two SRTTs (20 ms)
        // later, well before the 200 ms RTO, a probe goes.
        p.advance(Duration::from_millis(25));
        let probe = out(&mut p);
        assert_eq!(counter(&p, "tail_loss_probes"), 1, "{probe:?}");
        assert!(!probe.is_empty() && probe.iter().all(|s| s.len > 0));
        let end = probe.iter().map(|s| s.seq + s.len).max().unwrap().max(top);
        // The peer answers it at once: recovery ends, no timeout.
        p.advance(Duration::from_millis(10));
        p.ack_with(end, None, &[]);
        assert_eq!(counter(&p, "rto_expirations"), 0);
        assert!(!info(&p).recovering);
    }

    /// A probe is two segments only when two full-sized ones are ready: one
    /// short tail goes alone, as RFC 8985 §7.3 has it.
    #[test]
    fn a_short_tail_is_probed_with_one_segment() {
        let (mut p, c, our_ts) = open(true);
        p.stack.set_nodelay(c, true).unwrap();
        p.stack.send(p.now, c, &[7; 10 * 1448]).unwrap();
        let first = out(&mut p);
        assert_eq!(first.len(), 10, "initial window");
        let top = first.iter().map(|s| s.seq + s.len).max().unwrap();
        // Two thirds of a segment more, written while the ten are out.
        p.stack.send(p.now, c, &[8; 1000]).unwrap();
        assert!(out(&mut p).is_empty(), "cwnd is full");
        p.advance(Duration::from_millis(10));
        p.ack_with(first[8].seq, Some((110, our_ts.unwrap())), &[]);
        let o = out(&mut p);
        assert_eq!(
            o.iter().map(|s| (s.seq, s.len)).collect::<Vec<_>>(),
            [(top, 1000)],
            "the short tail"
        );
        p.advance(Duration::from_millis(25));
        let probe = out(&mut p);
        assert_eq!(counter(&p, "tail_loss_probes"), 1, "{probe:?}");
        assert_eq!(probe.len(), 1, "{probe:?}");
    }

    #[test]
    fn with_nothing_new_to_send_the_probe_resends_the_last_segment() {
        let (mut p, c, _) = open(true);
        p.stack.send(p.now, c, &[7; 4 * 1448]).unwrap();
        let segs = out(&mut p);
        assert_eq!(segs.len(), 4);
        let last = segs.last().map(|s| (s.seq, s.len)).unwrap();
        // The first two arrive; the last two do not.
        p.advance(Duration::from_millis(10));
        p.ack_with(segs[2].seq, Some((110, 0)), &[]);
        assert!(out(&mut p).iter().all(|s| s.len == 0));
        p.advance(Duration::from_millis(25));
        let probe = out(&mut p);
        assert_eq!(
            probe.iter().map(|s| (s.seq, s.len)).collect::<Vec<_>>(),
            [last]
        );
        assert_eq!(counter(&p, "tail_loss_probes"), 1);
        // The probe's SACK exposes segment 2: resent at once.
        p.advance(Duration::from_millis(10));
        p.ack_with(segs[2].seq, Some((120, 0)), &[(last.0, last.0 + last.1)]);
        let o = out(&mut p);
        assert_eq!(o.first().map(|s| s.seq), Some(segs[2].seq), "{o:?}");
        p.ack_with(last.0 + last.1, Some((121, 0)), &[]);
        assert_eq!(counter(&p, "rto_expirations"), 0);
        assert_eq!(info(&p).in_flight, 0);
    }

    #[test]
    fn a_timeout_with_sack_resends_only_what_the_peer_lacks() {
        let (mut p, _c, base, mss) = ten_out(false);
        let seg = |i: u32| base + i * mss;
        // 1 and 2 SACKed, then silence (the rest and all later ACKs lost).
        p.ack_with(seg(0), None, &[(seg(1), seg(3))]);
        let _ = out(&mut p);
        p.advance(Duration::from_secs(3));
        let mut resent = Vec::new();
        // Acknowledge each retransmission as it comes (as far as the
        // first SACKed block, then beyond), so slow start lets more out.
        for _ in 0..20 {
            let o = out(&mut p);
            if o.is_empty() {
                break;
            }
            for s in &o {
                if s.len > 0 {
                    resent.push(s.seq);
                }
            }
        }
        assert!(counter(&p, "rto_expirations") >= 1);
        assert!(
            !resent.contains(&seg(1)) && !resent.contains(&seg(2)),
            "{resent:?}"
        );
        assert_eq!(resent.first(), Some(&seg(0)));
    }

    /// Ten segments out; segment 1 is delayed (reordered), and SACKs of
    /// 2..5 make RACK deem it lost: it is resent and the window reduced.
    /// (Peer, first sequence, MSS, our TSval on the originals, the
    /// retransmission's TSval, cwnd before the reduction.)
    fn spurious_fast_retransmit(ts: bool) -> (Peer, u32, u32, Option<u32>, Option<u32>, usize) {
        let (mut p, c, _) = open(ts);
        p.stack.send(p.now, c, &[7; 64 * 1024]).unwrap();
        let segs = out(&mut p);
        assert_eq!(segs.len(), 10, "initial window");
        let orig_ts = segs[0].ts.map(|t| t.0);
        let (base, mss) = (p.ack, segs[0].len);
        let seg = |i: u32| base + i * mss;
        let echo = |e: Option<u32>| e.map(|e| (110, e));
        p.advance(Duration::from_millis(10));
        p.ack_with(seg(1), echo(orig_ts), &[]);
        let _ = out(&mut p);
        let cwnd = info(&p).cwnd;
        p.ack_with(seg(1), echo(orig_ts), &[(seg(2), seg(5))]);
        let o = out(&mut p);
        assert_eq!(o.first().map(|s| s.seq), Some(seg(1)), "{o:?}");
        assert!(info(&p).recovering);
        assert!(info(&p).cwnd < cwnd);
        let retx_ts = o[0].ts.map(|t| t.0);
        if ts {
            assert_ne!(retx_ts, orig_ts);
        }
        (p, base, mss, orig_ts, retx_ts, cwnd)
    }

    /// RFC 3522 detection for a loss episode: the ACK covering the
    /// retransmission echoes the original's TSval (the original arrived
    /// late, filling the hole): the reduction is undone, recovery ends.
    #[test]
    fn a_spurious_fast_retransmit_is_undone_by_the_echo() {
        let (mut p, base, mss, orig_ts, _, cwnd) = spurious_fast_retransmit(true);
        p.advance(Duration::from_millis(2));
        p.ack_with(base + 10 * mss, Some((111, orig_ts.unwrap())), &[]);
        assert_eq!(counter(&p, "recovery_undone"), 1);
        let i = info(&p);
        assert!(!i.recovering);
        assert!(i.cwnd >= cwnd, "cwnd back: {} < {cwnd}", i.cwnd);
    }

    /// The echo is the retransmission's: it repaired a real loss, the
    /// reduction stands.
    #[test]
    fn a_fast_retransmit_that_repaired_a_loss_is_not_undone() {
        let (mut p, base, mss, _, retx_ts, cwnd) = spurious_fast_retransmit(true);
        p.advance(Duration::from_millis(10));
        p.ack_with(base + 10 * mss, Some((111, retx_ts.unwrap())), &[]);
        assert_eq!(counter(&p, "recovery_undone"), 0);
        assert!(info(&p).cwnd < cwnd);
        // A later D-SACK of something else does not undo it either.
        p.ack_with(
            base + 10 * mss,
            Some((112, retx_ts.unwrap())),
            &[(base + 5 * mss, base + 6 * mss)],
        );
        assert_eq!(counter(&p, "recovery_undone"), 0);
    }

    /// RFC 3708's idea without timestamps: the peer D-SACKs the
    /// retransmission (it had the original already): every retransmission
    /// of the episode was a duplicate, the reduction is undone.
    #[test]
    fn a_spurious_fast_retransmit_is_undone_by_a_d_sack() {
        let (mut p, base, mss, _, _, cwnd) = spurious_fast_retransmit(false);
        p.advance(Duration::from_millis(1));
        // The original arrives: everything acknowledged, recovery over.
        p.ack_with(base + 10 * mss, None, &[]);
        assert_eq!(counter(&p, "recovery_undone"), 0);
        assert!(info(&p).cwnd < cwnd);
        // Then the retransmission: a duplicate, reported below the ACK.
        p.advance(Duration::from_millis(9));
        p.ack_with(base + 10 * mss, None, &[(base + mss, base + 2 * mss)]);
        assert_eq!(counter(&p, "recovery_undone"), 1);
        assert!(info(&p).cwnd >= cwnd, "{} < {cwnd}", info(&p).cwnd);
    }

    /// What `probe_of_a_delivered_segment` leaves: the peer 5 ms after the
    /// probe, the probed segment `[start, end)`, the TSvals of its original
    /// and of the probe, and cwnd before the probe.
    struct DeliveredProbe {
        p: Peer,
        start: u32,
        end: u32,
        orig_ts: u32,
        probe_ts: u32,
        cwnd: usize,
    }

    /// Four segments all arrive, the ACK of the last is delayed: the probe
    /// resends the last segment.
    fn probe_of_a_delivered_segment() -> DeliveredProbe {
        let (mut p, c, _) = open(true);
        p.stack.send(p.now, c, &[7; 4 * 1448]).unwrap();
        let segs = out(&mut p);
        assert_eq!(segs.len(), 4);
        let last = segs.last().map(|s| (s.seq, s.len)).unwrap();
        let orig_ts = segs[3].ts.unwrap().0;
        p.advance(Duration::from_millis(10));
        p.ack_with(segs[2].seq, Some((110, orig_ts)), &[]);
        let _ = out(&mut p);
        let cwnd = info(&p).cwnd;
        p.advance(Duration::from_millis(25));
        let probe = out(&mut p);
        assert_eq!(
            probe.iter().map(|s| (s.seq, s.len)).collect::<Vec<_>>(),
            [last]
        );
        assert_eq!(counter(&p, "tail_loss_probes"), 1);
        let probe_ts = probe[0].ts.unwrap().0;
        p.advance(Duration::from_millis(5));
        DeliveredProbe {
            p,
            start: last.0,
            end: last.0 + last.1,
            orig_ts,
            probe_ts,
            cwnd,
        }
    }

    /// RFC 8985 §7.4: the delayed ACK of the original echoes its TSval,
    /// older than the probe's: nothing was lost, no window reduction.
    #[test]
    fn a_probe_of_delivered_data_answered_by_an_old_echo_costs_no_reduction() {
        let mut d = probe_of_a_delivered_segment();
        d.p.ack_with(d.end, Some((120, d.orig_ts)), &[]);
        assert!(
            info(&d.p).cwnd >= d.cwnd,
            "{} < {}",
            info(&d.p).cwnd,
            d.cwnd
        );
    }

    /// The same told by a D-SACK of the probe.
    #[test]
    fn a_probe_of_delivered_data_d_sacked_costs_no_reduction() {
        let mut d = probe_of_a_delivered_segment();
        // The echo is the probe's (the receiver took its TSval): only the
        // D-SACK says the probe was a duplicate.
        d.p.ack_with(d.end, Some((120, d.probe_ts)), &[(d.start, d.end)]);
        assert!(
            info(&d.p).cwnd >= d.cwnd,
            "{} < {}",
            info(&d.p).cwnd,
            d.cwnd
        );
    }

    /// The probe repaired a loss (the echo is its own): the window is
    /// reduced; a D-SACK of the probe arriving later undoes that.
    #[test]
    fn a_probe_that_repaired_a_loss_reduces_the_window_until_d_sacked() {
        let mut d = probe_of_a_delivered_segment();
        d.p.ack_with(d.end, Some((120, d.probe_ts)), &[]);
        assert!(
            info(&d.p).cwnd < d.cwnd,
            "{} >= {}",
            info(&d.p).cwnd,
            d.cwnd
        );
        assert_eq!(counter(&d.p, "recovery_undone"), 0);
        d.p.ack_with(d.end, Some((121, d.probe_ts)), &[(d.start, d.end)]);
        assert_eq!(counter(&d.p, "recovery_undone"), 1);
        assert!(
            info(&d.p).cwnd >= d.cwnd,
            "{} < {}",
            info(&d.p).cwnd,
            d.cwnd
        );
    }
}
