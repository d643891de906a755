//! The built-in services, run directly on the core's events (no task or
//! buffer copy per connection beyond what the protocol needs):
//! echo (RFC 862), discard (RFC 863), daytime (RFC 867), chargen
//! (RFC 864), and an iperf3-compatible test server ([`crate::iperf3`]).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::iperf3;
use crate::tcp::{ConnId, Error, Event, Instant, Stack};

/// A service the endpoint can offer on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// RFC 862: send back whatever arrives.
    Echo,
    /// RFC 863: throw away whatever arrives.
    Discard,
    /// RFC 867: send the date and time as one line, then close.
    Daytime,
    /// RFC 864: send a repeating pattern of text lines until the peer
    /// closes; throw away whatever arrives.
    Chargen,
    /// iperf3's server: stock `iperf3 -c` clients run their tests here.
    Iperf3,
}

impl Service {
    /// The port the RFC assigns.
    pub fn well_known_port(self) -> u16 {
        match self {
            Service::Echo => 7,
            Service::Discard => 9,
            Service::Daytime => 13,
            Service::Chargen => 19,
            Service::Iperf3 => iperf3::DEFAULT_PORT,
        }
    }

    /// The services served when none is named (chargen only on request:
    /// it sends without being asked, a classic amplifier).
    pub fn defaults() -> Vec<(Service, u16)> {
        [
            Service::Echo,
            Service::Discard,
            Service::Daytime,
            Service::Iperf3,
        ]
        .into_iter()
        .map(|s| (s, s.well_known_port()))
        .collect()
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Echo => "echo",
            Service::Discard => "discard",
            Service::Daytime => "daytime",
            Service::Chargen => "chargen",
            Service::Iperf3 => "iperf3",
        })
    }
}

impl FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "echo" => Ok(Service::Echo),
            "discard" => Ok(Service::Discard),
            "daytime" => Ok(Service::Daytime),
            "chargen" => Ok(Service::Chargen),
            "iperf3" => Ok(Service::Iperf3),
            other => Err(format!(
                "unknown service '{other}' (known: echo, discard, daytime, chargen, iperf3)"
            )),
        }
    }
}

/// `NAME:PORT` as given to `--service`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub service: Service,
    pub port: u16,
}

impl FromStr for ServiceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, port) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}' is not NAME:PORT (for example echo:7)"))?;
        let service = name.parse()?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("'{port}' is not a port number (1-65535)"))?;
        if port == 0 {
            return Err("port 0 cannot be served".into());
        }
        Ok(ServiceSpec { service, port })
    }
}

/// How much an echo connection may hold back when the peer does not read
/// its replies; past this the service stops reading, and TCP flow control
/// pushes back on the sender.
const ECHO_BACKLOG: usize = 64 * 1024;

/// Characters per chargen line (RFC 864's example), before CR LF.
const CHARGEN_LINE: usize = 72;
/// The printable ASCII characters, ' ' to '~', that the lines rotate through.
const CHARGEN_CHARS: usize = 95;
/// Bytes after which the chargen stream repeats: one line starting at each
/// of the 95 characters.
pub const CHARGEN_CYCLE: usize = CHARGEN_CHARS * (CHARGEN_LINE + 2);

/// The length of one chargen line, CR LF included.
pub const CHARGEN_LINE_LEN: usize = CHARGEN_LINE + 2;

/// The first `len` bytes of the chargen stream (RFC 864).
pub fn chargen_pattern(len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    Chargen::new().fill(&mut v);
    v
}

/// RFC 864's character generator: line k is 72 characters of the 95
/// printable ASCII characters starting with the k-th (mod 95), then CR LF.
pub struct Chargen {
    line: usize,
    col: usize,
}

impl Chargen {
    pub fn new() -> Chargen {
        Chargen { line: 0, col: 0 }
    }

    fn byte(&self) -> u8 {
        match self.col {
            CHARGEN_LINE => b'\r',
            c if c == CHARGEN_LINE + 1 => b'\n',
            c => b' ' + ((self.line + c) % CHARGEN_CHARS) as u8,
        }
    }

    fn advance(&mut self) {
        self.col += 1;
        if self.col == CHARGEN_LINE_LEN {
            self.col = 0;
            self.line = (self.line + 1) % CHARGEN_CHARS;
        }
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.byte();
            self.advance();
        }
    }

    /// Checks that `data` is the next part of the stream; the offset of the
    /// first wrong byte otherwise.
    pub fn check(&mut self, data: &[u8]) -> Result<(), usize> {
        for (i, &b) in data.iter().enumerate() {
            if b != self.byte() {
                return Err(i);
            }
            self.advance();
        }
        Ok(())
    }
}

impl Default for Chargen {
    fn default() -> Self {
        Chargen::new()
    }
}

struct AppConn {
    service: Service,
    /// Echo bytes read but not yet accepted by the send buffer.
    backlog: Vec<u8>,
    /// The peer finished sending; close once the backlog is out.
    peer_done: bool,
    closed: bool,
    /// Chargen: where in the cycle the next byte to queue is.
    chargen_pos: usize,
}

/// The iperf3 server of one port and what it needs from the driver.
struct Iperf3Port {
    server: iperf3::Server,
    /// Control bytes the send buffer did not take yet, per connection.
    pending: HashMap<ConnId, Vec<u8>>,
}

/// Per-connection state of the services.
pub struct Services {
    by_port: HashMap<u16, Service>,
    conns: HashMap<ConnId, AppConn>,
    /// iperf3 servers by port, and which connection belongs to which.
    iperf3: HashMap<u16, Iperf3Port>,
    iperf3_conns: HashMap<ConnId, u16>,
    /// The payload of iperf3's test data (its content does not matter).
    iperf3_block: Vec<u8>,
    scratch: Vec<u8>,
    /// Two chargen cycles back to back, so that a whole cycle can be
    /// offered to the core from any position without wrapping.
    chargen: Vec<u8>,
}

impl Services {
    pub fn new(specs: &[(Service, u16)]) -> Self {
        Services {
            by_port: specs.iter().map(|&(s, p)| (p, s)).collect(),
            conns: HashMap::new(),
            scratch: vec![0; ECHO_BACKLOG],
            chargen: chargen_pattern(2 * CHARGEN_CYCLE),
            iperf3: specs
                .iter()
                .filter(|(s, _)| *s == Service::Iperf3)
                .map(|&(_, port)| {
                    let port_state = Iperf3Port {
                        server: iperf3::Server::default(),
                        pending: HashMap::new(),
                    };
                    (port, port_state)
                })
                .collect(),
            iperf3_conns: HashMap::new(),
            iperf3_block: vec![0x5a; iperf3::MAX_BLOCKSIZE],
        }
    }

    /// When the services' own earliest timer is due (iperf3's test clock).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.iperf3
            .values()
            .filter_map(|p| p.server.poll_timeout())
            .min()
    }

    /// Runs the services' timers due at `now`.
    pub fn handle_timeout(&mut self, stack: &mut Stack, now: Instant) {
        let ports: Vec<u16> = self
            .iperf3
            .iter()
            .filter(|(_, p)| p.server.poll_timeout().is_some_and(|t| t <= now))
            .map(|(&port, _)| port)
            .collect();
        for port in ports {
            if let Some(p) = self.iperf3.get_mut(&port) {
                p.server.handle_timeout(now);
            }
            self.iperf3_actions(stack, now, port);
        }
    }

    /// iperf3: feeds one event to the port's server and carries out what
    /// it asks for.
    fn iperf3_event(&mut self, stack: &mut Stack, now: Instant, event: Event) {
        let conn = match event {
            Event::Accepted { conn, .. }
            | Event::Connected(conn)
            | Event::Readable(conn)
            | Event::Writable(conn) => conn,
            Event::Closed { conn, .. } => conn,
        };
        let Some(&port) = self.iperf3_conns.get(&conn) else {
            return;
        };
        let Some(p) = self.iperf3.get_mut(&port) else {
            return;
        };
        match event {
            Event::Accepted { .. } => {
                // Control messages are small and come in quick succession:
                // Nagle would hold TEST_START for a delayed ACK.
                let _ = stack.set_nodelay(conn, true);
                p.server.on_accept(conn.0, now);
                Self::iperf3_read(p, stack, now, conn, &mut self.scratch);
            }
            Event::Readable(_) => Self::iperf3_read(p, stack, now, conn, &mut self.scratch),
            Event::Writable(_) => {
                if let Some(bytes) = p.pending.get_mut(&conn) {
                    let n = stack.send(now, conn, bytes).unwrap_or(bytes.len());
                    bytes.drain(..n);
                    if bytes.is_empty() {
                        p.pending.remove(&conn);
                    }
                }
                p.server.on_writable(conn.0, now);
            }
            Event::Closed { .. } => {
                p.pending.remove(&conn);
                p.server.on_closed(conn.0);
                self.iperf3_conns.remove(&conn);
            }
            Event::Connected(_) => {}
        }
        self.iperf3_actions(stack, now, port);
    }

    /// Reads what arrived on an iperf3 connection into the server.
    fn iperf3_read(
        p: &mut Iperf3Port,
        stack: &mut Stack,
        now: Instant,
        conn: ConnId,
        scratch: &mut [u8],
    ) {
        loop {
            match stack.recv(now, conn, scratch) {
                Ok(0) => {
                    p.server.on_peer_closed(conn.0);
                    return;
                }
                Ok(n) => p.server.on_data(conn.0, &scratch[..n], now),
                Err(_) => return,
            }
        }
    }

    /// Carries out the actions of a port's iperf3 server.
    fn iperf3_actions(&mut self, stack: &mut Stack, now: Instant, port: u16) {
        let Some(p) = self.iperf3.get_mut(&port) else {
            return;
        };
        while let Some(action) = p.server.poll_output() {
            match action {
                iperf3::Action::Send { conn, bytes } => {
                    let id = ConnId(conn);
                    // Behind bytes already waiting, or whatever the send
                    // buffer does not take now: kept, in order.
                    match p.pending.get_mut(&id) {
                        Some(q) => q.extend_from_slice(&bytes),
                        None => {
                            let n = stack.send(now, id, &bytes).unwrap_or(bytes.len());
                            if n < bytes.len() {
                                p.pending.insert(id, bytes[n..].to_vec());
                            }
                        }
                    }
                }
                iperf3::Action::SendData { conn, max } => {
                    let id = ConnId(conn);
                    let max = max.min(self.iperf3_block.len());
                    let n = if p.pending.contains_key(&id) {
                        0
                    } else {
                        stack.send(now, id, &self.iperf3_block[..max]).unwrap_or(0)
                    };
                    p.server.data_sent(conn, n, now);
                }
                iperf3::Action::Close { conn } => {
                    let _ = stack.close(now, ConnId(conn));
                }
                iperf3::Action::Abort { conn } => {
                    p.pending.remove(&ConnId(conn));
                    let _ = stack.abort(now, ConnId(conn));
                }
            }
        }
        while let Some(report) = p.server.poll_report() {
            tracing::info!("iperf3 on port {port}: {report:?}");
        }
    }

    /// Ports to listen on.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.by_port.keys().copied()
    }

    /// Number of connections the services hold.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Reacts to one event of the core.
    pub fn handle(&mut self, stack: &mut Stack, now: Instant, event: Event) {
        if let Event::Accepted { conn, listener } = event {
            if self.iperf3.contains_key(&listener) {
                self.iperf3_conns.insert(conn, listener);
            }
        }
        let conn = match event {
            Event::Accepted { conn, .. }
            | Event::Connected(conn)
            | Event::Readable(conn)
            | Event::Writable(conn)
            | Event::Closed { conn, .. } => conn,
        };
        if self.iperf3_conns.contains_key(&conn) {
            return self.iperf3_event(stack, now, event);
        }
        match event {
            Event::Accepted { conn, listener } => {
                let Some(&service) = self.by_port.get(&listener) else {
                    // A listener without a service: nothing will ever read it.
                    let _ = stack.abort(now, conn);
                    return;
                };
                self.conns.insert(
                    conn,
                    AppConn {
                        service,
                        backlog: Vec::new(),
                        peer_done: false,
                        closed: false,
                        chargen_pos: 0,
                    },
                );
                if service == Service::Daytime {
                    let line = daytime_line(SystemTime::now());
                    // A fresh connection's send buffer always holds one line.
                    let _ = stack.send(now, conn, line.as_bytes());
                    self.close(stack, now, conn);
                }
                // Data may have arrived with the handshake's last ACK.
                self.pump(stack, now, conn);
            }
            Event::Connected(conn) => {
                // The services only accept; an active open is not theirs.
                let _ = stack.abort(now, conn);
            }
            Event::Readable(conn) | Event::Writable(conn) => self.pump(stack, now, conn),
            Event::Closed { conn, .. } => {
                self.conns.remove(&conn);
            }
        }
    }

    /// Moves data as far as it goes for one connection.
    fn pump(&mut self, stack: &mut Stack, now: Instant, conn: ConnId) {
        let Some(app) = self.conns.get_mut(&conn) else {
            return;
        };
        if app.service == Service::Chargen {
            return Self::pump_chargen(app, &mut self.scratch, &self.chargen, stack, now, conn);
        }
        loop {
            if !app.backlog.is_empty() {
                match stack.send(now, conn, &app.backlog) {
                    Ok(n) => {
                        app.backlog.drain(..n);
                    }
                    Err(_) => {
                        // Write side gone (reset or closed): nothing to echo to.
                        app.backlog.clear();
                    }
                }
                if !app.backlog.is_empty() {
                    return; // wait for Writable
                }
            }
            if app.peer_done {
                if !app.closed {
                    app.closed = true;
                    let _ = stack.close(now, conn);
                }
                return;
            }
            match stack.recv(now, conn, &mut self.scratch) {
                Ok(0) => {
                    app.peer_done = true;
                }
                Ok(n) => {
                    if app.service == Service::Echo && !app.closed {
                        let sent = stack.send(now, conn, &self.scratch[..n]).unwrap_or(n);
                        app.backlog.extend_from_slice(&self.scratch[sent..n]);
                    }
                }
                Err(Error::WouldBlock) => return,
                Err(_) => return,
            }
        }
    }

    /// Chargen: throw away what arrives, close when the peer does, and
    /// otherwise keep the send buffer full. Nothing is held outside the
    /// core: what it does not take now is generated again on `Writable`.
    fn pump_chargen(
        app: &mut AppConn,
        scratch: &mut [u8],
        pattern: &[u8],
        stack: &mut Stack,
        now: Instant,
        conn: ConnId,
    ) {
        // Reading also keeps the receive window open for a talkative peer.
        loop {
            match stack.recv(now, conn, scratch) {
                Ok(0) => {
                    app.peer_done = true;
                    break;
                }
                Ok(_) => {}
                // WouldBlock, or no receive side left: nothing to discard.
                Err(_) => break,
            }
        }
        if app.closed {
            return;
        }
        if app.peer_done {
            // RFC 864: the service runs until the user closes. A FIN is
            // as far as a TCP peer can say that; a reset ends it in the core.
            app.closed = true;
            let _ = stack.close(now, conn);
            return;
        }
        loop {
            let chunk = &pattern[app.chargen_pos..app.chargen_pos + CHARGEN_CYCLE];
            match stack.send(now, conn, chunk) {
                Ok(n) => {
                    app.chargen_pos = (app.chargen_pos + n) % CHARGEN_CYCLE;
                    // A short write means the buffer is full, and the core
                    // has armed a `Writable` event for when it drains.
                    if n < chunk.len() {
                        return;
                    }
                }
                // The write side is gone (reset or closing): nothing to feed.
                Err(_) => return,
            }
        }
    }

    /// Daytime's active close: a full close, not a half-close, so that a
    /// peer that never closes its side cannot hold the connection in
    /// FIN-WAIT-2 for ever (the FIN-WAIT-2 timeout applies).
    fn close(&mut self, stack: &mut Stack, now: Instant, conn: ConnId) {
        if let Some(app) = self.conns.get_mut(&conn) {
            if !app.closed {
                app.closed = true;
                let _ = stack.close(now, conn);
            }
        }
    }
}

/// One line of RFC 867 daytime. The RFC sets no format; this is the
/// "Weekday, Month Day, Year HH:MM:SS-UTC" form it gives as an example.
pub fn daytime_line(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    format!(
        "{}, {} {}, {} {:02}:{:02}:{:02}-UTC\r\n",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        y,
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::{Config, State};
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::Duration;

    #[test]
    fn parses_service_specs() {
        assert_eq!(
            "echo:7".parse::<ServiceSpec>(),
            Ok(ServiceSpec {
                service: Service::Echo,
                port: 7
            })
        );
        assert_eq!(
            "daytime:1313".parse::<ServiceSpec>().unwrap().service,
            Service::Daytime
        );
        assert!("echo".parse::<ServiceSpec>().is_err());
        assert!("echo:0".parse::<ServiceSpec>().is_err());
        assert!("echo:70000".parse::<ServiceSpec>().is_err());
        assert_eq!(
            "chargen:19".parse::<ServiceSpec>().unwrap().service,
            Service::Chargen
        );
        assert!("qotd:17"
            .parse::<ServiceSpec>()
            .unwrap_err()
            .contains("unknown service"));
    }

    /// A Linux-like client stack and the server stack with the services,
    /// joined by a lossless wire, with virtual time.
    struct Net {
        server: Stack,
        services: Services,
        client: Stack,
        conn: ConnId,
        now: Instant,
        /// What the client has read so far.
        got: Vec<u8>,
    }

    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    impl Net {
        fn connect(service: Service, port: u16) -> Net {
            let mut server = Stack::new(Config::default());
            let services = Services::new(&[(service, port)]);
            for p in services.ports() {
                server.listen(SocketAddrV4::new(SERVER, p)).unwrap();
            }
            let mut client = Stack::new(Config {
                isn_secret: [1; 16],
                ..Config::default()
            });
            let now = Instant::from_micros(1_000_000);
            let conn = client
                .connect(
                    now,
                    SocketAddrV4::new(CLIENT, 40_000),
                    SocketAddrV4::new(SERVER, port),
                )
                .unwrap();
            let mut net = Net {
                server,
                services,
                client,
                conn,
                now,
                got: Vec::new(),
            };
            net.run_for(Duration::from_millis(10));
            assert_eq!(net.client.state(conn), Some(State::Established));
            net
        }

        /// Moves every pending segment across once and hands the server's
        /// events to the services; true if anything moved.
        fn exchange(&mut self) -> bool {
            let mut moved = false;
            let mut buf = vec![0u8; 2048];
            while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
                self.client
                    .handle_segment(self.now, t.src, t.dst, &buf[..t.len]);
                moved = true;
            }
            while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
                self.server
                    .handle_segment(self.now, t.src, t.dst, &buf[..t.len]);
                moved = true;
            }
            while let Some(ev) = self.server.poll_event() {
                self.services.handle(&mut self.server, self.now, ev);
                moved = true;
            }
            // The client's events only say what `read` would find anyway.
            while self.client.poll_event().is_some() {}
            moved
        }

        /// Runs the wire and the timers of both sides for `d` of virtual time.
        fn run_for(&mut self, d: Duration) {
            let until = self.now + d;
            loop {
                while self.exchange() {}
                let next = [self.server.poll_timeout(), self.client.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) if t <= until => {
                        self.now = self.now.max(t);
                        self.server.handle_timeout(self.now);
                        self.client.handle_timeout(self.now);
                    }
                    _ => break,
                }
            }
            self.now = until;
        }

        /// Reads what the client has received until `got` holds `max`
        /// bytes; true at the end of the stream.
        fn read(&mut self, max: usize) -> Result<bool, Error> {
            let mut buf = vec![0u8; 64 * 1024];
            while self.got.len() < max {
                let want = buf.len().min(max - self.got.len());
                match self.client.recv(self.now, self.conn, &mut buf[..want]) {
                    Ok(0) => return Ok(true),
                    Ok(n) => self.got.extend_from_slice(&buf[..n]),
                    Err(Error::WouldBlock) => break,
                    Err(e) => return Err(e),
                }
            }
            Ok(false)
        }

        /// The server's one connection, if it still has it.
        fn server_conn(&self) -> Option<crate::tcp::ConnInfo> {
            self.server.connections().into_iter().next()
        }
    }

    #[test]
    fn chargen_pattern_is_rfc_864s() {
        let p = chargen_pattern(2 * CHARGEN_CYCLE);
        let first =
            b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefg\r\n";
        assert_eq!(&p[..74], first);
        assert_eq!(
            &p[74..148],
            &b"!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefgh\r\n"[..]
        );
        // The last line of a cycle wraps from '~' back to ' '.
        let last = &p[CHARGEN_CYCLE - 74..CHARGEN_CYCLE];
        assert!(
            last.starts_with(b"~ !\"#"),
            "{:?}",
            String::from_utf8_lossy(last)
        );
        assert_eq!(&p[CHARGEN_CYCLE..], &p[..CHARGEN_CYCLE]);
    }

    #[test]
    fn chargen_streams_the_pattern_and_closes_after_the_peer() {
        let mut net = Net::connect(Service::Chargen, 19);
        let want = 3 * 1024 * 1024 + 17;
        while net.got.len() < want {
            net.read(want).unwrap();
            net.run_for(Duration::from_millis(1));
        }
        assert_eq!(net.got, chargen_pattern(want));
        // The peer's FIN ends the service: the rest of the buffer, a FIN,
        // and the connection is gone on the server.
        net.client.shutdown_write(net.now, net.conn).unwrap();
        let mut eof = false;
        for _ in 0..10_000 {
            net.run_for(Duration::from_millis(1));
            if net.read(usize::MAX).unwrap() {
                eof = true;
                break;
            }
        }
        assert!(eof, "no end of stream after the peer's FIN");
        net.run_for(Duration::from_secs(1));
        assert_eq!(net.got, chargen_pattern(net.got.len()));
        assert!(net.services.is_empty());
        assert!(net.server_conn().is_none(), "{:?}", net.server_conn());
    }

    #[test]
    fn chargen_sends_only_what_the_core_takes_and_resumes_when_it_drains() {
        let mut net = Net::connect(Service::Chargen, 19);
        // The client does not read: its window closes, the server's send
        // buffer fills, and chargen must stop there (the persist timer's
        // probes are all that moves).
        net.run_for(Duration::from_secs(5));
        let c = net.server_conn().expect("connection");
        assert_eq!(c.send_queue, Config::default().send_buffer);
        let recv_queue = net.client.connections()[0].recv_queue;
        assert!(recv_queue >= Config::default().recv_buffer, "{recv_queue}");
        assert!(net.services.conns.values().all(|a| a.backlog.is_empty()));
        // Reading reopens the window; the stream continues exactly where
        // it stopped (a lost or repeated chunk would break the pattern).
        let want = 4 * Config::default().send_buffer;
        for _ in 0..100_000 {
            if net.got.len() >= want {
                break;
            }
            net.read(want).unwrap();
            net.run_for(Duration::from_millis(1));
        }
        assert!(net.got.len() >= want, "stalled at {}", net.got.len());
        assert_eq!(net.got, chargen_pattern(net.got.len()));
    }

    #[test]
    fn chargen_discards_input_and_stops_on_reset() {
        let mut net = Net::connect(Service::Chargen, 19);
        let junk = vec![b'x'; 100_000];
        let mut sent = 0;
        while sent < junk.len() {
            sent += net.client.send(net.now, net.conn, &junk[sent..]).unwrap();
            net.read(usize::MAX).unwrap();
            net.run_for(Duration::from_millis(1));
        }
        net.run_for(Duration::from_millis(100));
        let c = net.server_conn().expect("connection");
        assert_eq!(c.recv_queue, 0, "chargen reads and drops what arrives");
        net.client.abort(net.now, net.conn).unwrap();
        net.run_for(Duration::from_millis(10));
        assert!(net.services.is_empty());
        assert!(net.server_conn().is_none());
    }

    #[test]
    fn daytime_formats_known_instants() {
        assert_eq!(
            daytime_line(UNIX_EPOCH),
            "Thursday, January 1, 1970 00:00:00-UTC\r\n"
        );
        // 2026-11-24 13:45:06 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_527_906);
        assert_eq!(
            daytime_line(t),
            "Tuesday, November 24, 2026 13:45:06-UTC\r\n"
        );
        // Leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(
            daytime_line(t),
            "Tuesday, February 29, 2000 00:00:00-UTC\r\n"
        );
    }
}
