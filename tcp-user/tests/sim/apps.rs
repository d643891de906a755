//! Applications on top of the simulated stacks: a peer that writes a
//! buffer as fast as the send window allows, reads everything the other
//! side sends, and closes the way the test asks.

use std::net::SocketAddrV4;

use tcp_user::tcp::{ConnId, Error, Event, Instant};

use super::net::{Side, SimNet};

/// When the peer calls `close`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseWhen {
    /// Once all its data is queued (it expects nothing back).
    AfterSending,
    /// Once the peer's FIN arrived (and its own data is queued).
    AfterEof,
    /// `shutdown_write` once its data is queued, `close` after EOF.
    ShutdownThenAfterEof,
    /// Never: the test decides.
    Never,
}

/// One application endpoint on one connection.
pub struct Peer {
    pub side: Side,
    pub conn: Option<ConnId>,
    /// Accept the first connection on this listener port...
    pub accept_on: Option<u16>,
    /// ... coming from this remote port (any when None).
    pub accept_from: Option<u16>,
    pub tx: Vec<u8>,
    pub written: usize,
    pub rx: Vec<u8>,
    pub eof: bool,
    pub close_when: CloseWhen,
    pub shut: bool,
    pub closed: bool,
    /// The `Closed` event: None until it came, then its error.
    pub result: Option<Option<Error>>,
    /// No reads before this time (a stalled application).
    pub read_paused_until: Option<Instant>,
    /// Largest read per `recv` call.
    pub read_chunk: usize,
    pub connected: bool,
    /// `send` errors seen (other than a full buffer).
    pub send_errors: Vec<Error>,
    /// `recv` errors seen (other than WouldBlock).
    pub recv_errors: Vec<Error>,
    /// An echo server (as `tcp-user`'s echo service): what it reads it
    /// writes back; what the send buffer does not take waits in
    /// `backlog`, and nothing more is read until it has gone (so a slow
    /// send side closes the receive window). It closes once the peer's
    /// FIN arrived and everything is echoed; `tx` is unused.
    pub echo: bool,
    pub backlog: Vec<u8>,
}

impl Peer {
    pub fn new(side: Side, tx: Vec<u8>, close_when: CloseWhen) -> Peer {
        Peer {
            side,
            conn: None,
            accept_on: None,
            accept_from: None,
            tx,
            written: 0,
            rx: Vec::new(),
            eof: false,
            close_when,
            shut: false,
            closed: false,
            result: None,
            read_paused_until: None,
            read_chunk: 64 * 1024,
            connected: false,
            send_errors: Vec::new(),
            recv_errors: Vec::new(),
            echo: false,
            backlog: Vec::new(),
        }
    }

    /// An echo server on `side` (see `echo`).
    pub fn echo(side: Side) -> Peer {
        Peer {
            echo: true,
            ..Peer::new(side, vec![], CloseWhen::Never)
        }
    }

    /// Listens on `port` and takes the first connection accepted there.
    pub fn listen(mut self, net: &mut SimNet, port: u16) -> Peer {
        net.stack(self.side)
            .listen(SocketAddrV4::new(self.side.ip(), port))
            .unwrap();
        self.accept_on = Some(port);
        self
    }

    /// Active open from `local_port` to the other side's `remote_port`.
    pub fn connect(mut self, net: &mut SimNet, local_port: u16, remote_port: u16) -> Peer {
        let now = net.now;
        let local = SocketAddrV4::new(self.side.ip(), local_port);
        let remote = SocketAddrV4::new(self.side.peer().ip(), remote_port);
        self.conn = Some(net.stack(self.side).connect(now, local, remote).unwrap());
        self
    }

    pub fn done(&self) -> bool {
        self.result.is_some()
    }

    /// Takes this side's events, then writes, reads and closes as it can.
    pub fn pump(&mut self, net: &mut SimNet) {
        loop {
            let (mine, accept_on, accept_from) = (self.conn, self.accept_on, self.accept_from);
            let claim = |ev: &Event, remote: Option<SocketAddrV4>| match *ev {
                Event::Accepted { listener, .. } => {
                    mine.is_none()
                        && Some(listener) == accept_on
                        && accept_from.is_none_or(|p| remote.is_some_and(|r| r.port() == p))
                }
                Event::Connected(c) | Event::Readable(c) | Event::Writable(c) => Some(c) == mine,
                Event::Closed { conn, .. } => Some(conn) == mine,
            };
            let Some(ev) = net.take_event_matching(self.side, claim) else {
                break;
            };
            match ev {
                Event::Accepted { conn, listener }
                    if self.conn.is_none() && Some(listener) == self.accept_on =>
                {
                    self.conn = Some(conn);
                    self.connected = true;
                }
                Event::Connected(c) if Some(c) == self.conn => self.connected = true,
                Event::Closed { conn, error, .. } if Some(conn) == self.conn => {
                    self.result = Some(error);
                }
                _ => {}
            }
        }
        let Some(conn) = self.conn else { return };
        if self.result.is_some() {
            return;
        }
        let now = net.now;
        let stack = net.stack(self.side);
        if self.echo {
            self.pump_echo(stack, now, conn);
            return;
        }
        // Writes wait for the handshake: CLOSE in SYN-SENT deletes the
        // connection with whatever was queued (RFC 9293 §3.10.4).
        if self.connected && !self.shut && !self.closed {
            while self.written < self.tx.len() {
                match stack.send(now, conn, &self.tx[self.written..]) {
                    Ok(0) => break,
                    Ok(n) => self.written += n,
                    Err(e) => {
                        self.send_errors.push(e);
                        break;
                    }
                }
            }
        }
        if self.read_paused_until.is_none_or(|t| now >= t) {
            let mut buf = vec![0u8; self.read_chunk];
            loop {
                match stack.recv(now, conn, &mut buf) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                    Err(Error::WouldBlock) => break,
                    Err(e) => {
                        self.recv_errors.push(e);
                        break;
                    }
                }
            }
        }
        let all_written = self.connected && self.written == self.tx.len();
        match self.close_when {
            CloseWhen::AfterSending if all_written && !self.closed => {
                stack.close(now, conn).unwrap();
                self.closed = true;
            }
            CloseWhen::AfterEof if all_written && self.eof && !self.closed => {
                stack.close(now, conn).unwrap();
                self.closed = true;
            }
            CloseWhen::ShutdownThenAfterEof => {
                if all_written && !self.shut {
                    stack.shutdown_write(now, conn).unwrap();
                    self.shut = true;
                }
                if self.shut && self.eof && !self.closed {
                    stack.close(now, conn).unwrap();
                    self.closed = true;
                }
            }
            _ => {}
        }
        // A close that released the connection at once (e.g. an abort)
        // still reports through an event, taken on the next pump.
    }
}

impl Peer {
    /// The echo server's turn: write the backlog, read only when it is
    /// gone, close after the peer's FIN once all is echoed.
    fn pump_echo(&mut self, stack: &mut tcp_user::tcp::Stack, now: Instant, conn: ConnId) {
        let mut buf = vec![0u8; self.read_chunk];
        loop {
            if !self.backlog.is_empty() {
                match stack.send(now, conn, &self.backlog) {
                    Ok(n) => {
                        self.written += n;
                        self.backlog.drain(..n);
                    }
                    Err(e) => {
                        self.send_errors.push(e);
                        self.backlog.clear();
                    }
                }
                if !self.backlog.is_empty() {
                    return;
                }
            }
            if self.eof {
                if !self.closed {
                    stack.close(now, conn).unwrap();
                    self.closed = true;
                }
                return;
            }
            match stack.recv(now, conn, &mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.rx.extend_from_slice(&buf[..n]);
                    self.backlog.extend_from_slice(&buf[..n]);
                }
                Err(Error::WouldBlock) => return,
                Err(e) => {
                    self.recv_errors.push(e);
                    return;
                }
            }
        }
    }
}

/// Runs both peers until both saw their connection's `Closed` event.
pub fn run_to_completion(net: &mut SimNet, a: &mut Peer, b: &mut Peer) {
    net.run_until("both connections closed", |net| {
        a.pump(net);
        b.pump(net);
        a.done() && b.done()
    });
}
