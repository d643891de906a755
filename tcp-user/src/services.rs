//! The built-in services, run directly on the core's events (no task or
//! buffer copy per connection beyond what the protocol needs):
//! echo (RFC 862), discard (RFC 863) and daytime (RFC 867).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

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
}

impl Service {
    /// The port the RFC assigns.
    pub fn well_known_port(self) -> u16 {
        match self {
            Service::Echo => 7,
            Service::Discard => 9,
            Service::Daytime => 13,
        }
    }

    /// The services served when none is named.
    pub fn defaults() -> Vec<(Service, u16)> {
        [Service::Echo, Service::Discard, Service::Daytime]
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
            other => Err(format!(
                "unknown service '{other}' (known: echo, discard, daytime)"
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

struct AppConn {
    service: Service,
    /// Echo bytes read but not yet accepted by the send buffer.
    backlog: Vec<u8>,
    /// The peer finished sending; close once the backlog is out.
    peer_done: bool,
    closed: bool,
}

/// Per-connection state of the services.
pub struct Services {
    by_port: HashMap<u16, Service>,
    conns: HashMap<ConnId, AppConn>,
    scratch: Vec<u8>,
}

impl Services {
    pub fn new(specs: &[(Service, u16)]) -> Self {
        Services {
            by_port: specs.iter().map(|&(s, p)| (p, s)).collect(),
            conns: HashMap::new(),
            scratch: vec![0; ECHO_BACKLOG],
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
        assert!("chargen:19"
            .parse::<ServiceSpec>()
            .unwrap_err()
            .contains("unknown service"));
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
