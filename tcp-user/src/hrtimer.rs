//! The driver's deadline timer, with sub-millisecond precision.
//!
//! tokio's timer wheel has a 1 ms granularity and rounds up: a 2 ms timer
//! fires after about 3 ms, and the core's sub-millisecond timers (the RTT
//! of a veth path is tens of µs) cannot be honoured at all. A Linux
//! `timerfd` on CLOCK_MONOTONIC (the clock of `std::time::Instant`) has
//! nanosecond resolution and no timer slack; tokio learns of its expiry
//! through the reactor like of any other readable descriptor.
//!
//! [`DeadlineTimer`] hides the source: [`TimerSource::Tokio`] (tokio's
//! `Sleep`, which follows tokio's paused clock, for the tests) or
//! [`TimerSource::TimerFd`] (the running endpoint). Whatever the source, it
//! never reports a deadline before `Instant::now()` reached it; an early or
//! spurious expiry of the kernel timer is absorbed here (the kernel timer is
//! re-programmed and the wait goes on).
//!
//! The kernel timer is re-programmed lazily: a deadline moving later (the
//! retransmission timer restarted by each ACK) leaves the kernel timer
//! where it was, and its expiry, now early, only re-programs it. That costs
//! one extra wake-up per expiry instead of one `timerfd_settime` per turn.
//! A deadline moving earlier, and no deadline at all, re-program it at once.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Sleep;

/// Which clock a [`DeadlineTimer`] waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimerSource {
    /// tokio's timer wheel (1 ms granularity; follows tokio's paused clock).
    Tokio,
    /// A Linux timerfd on CLOCK_MONOTONIC (falls back to tokio's timer
    /// when the timerfd cannot be had).
    TimerFd,
}

/// A one-shot CLOCK_MONOTONIC timerfd registered with tokio's reactor.
pub(crate) struct TimerFd {
    fd: AsyncFd<OwnedFd>,
    /// When the kernel timer is set to expire; None: disarmed, or its
    /// expiry was read.
    programmed: Option<Instant>,
    /// `timerfd_settime` calls.
    programs: u64,
}

impl TimerFd {
    /// A disarmed timerfd (TFD_NONBLOCK | TFD_CLOEXEC), registered with the
    /// current tokio runtime, which must have its I/O driver enabled.
    pub(crate) fn new() -> io::Result<TimerFd> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "no tokio runtime to register a timerfd with",
            ));
        }
        let owned = new_timerfd()?;
        // Safety: the AsyncFd owns `owned`, so the descriptor stays open
        // and names the same timerfd for as long as the registration lives.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }?;
        Ok(TimerFd {
            fd,
            programmed: None,
            programs: 0,
        })
    }

    /// Programs the kernel timer to expire at `at` (at once, if `at` has
    /// passed), or disarms it (None). The expiry is relative to a clock
    /// read taken just before the call, so it is never before `at`.
    pub(crate) fn set(&mut self, at: Option<Instant>) -> io::Result<()> {
        let after = at.map(|at| at.saturating_duration_since(Instant::now()));
        self.programs += 1;
        arm_timerfd(self.fd.get_ref(), after)?;
        // Setting the timer also zeroes its expiry count: a stale expiry
        // is not read as this one.
        self.programmed = at;
        Ok(())
    }

    /// When the kernel timer is set to expire (None: disarmed or read).
    pub(crate) fn programmed(&self) -> Option<Instant> {
        self.programmed
    }

    /// Ready when the kernel timer expired (its expiry count is read, which
    /// disarms the descriptor's readiness); Pending otherwise, with the
    /// task registered for the expiry.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            match guard.try_io(|fd| read_expirations(fd.get_ref())) {
                Ok(Ok(_)) => {
                    // One-shot and just read: not readable until set again,
                    // so tokio's cached readiness goes too (saves a read
                    // that would only find EAGAIN).
                    guard.clear_ready();
                    self.programmed = None;
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Stale readiness (the timer was set again since): cleared
                // by try_io; poll again to register for the next expiry.
                Err(_would_block) => continue,
            }
        }
    }

    #[cfg(test)]
    fn kernel_remaining(&self) -> Duration {
        // Safety: all-zero bytes are a valid itimerspec.
        let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
        // Safety: the descriptor is an open timerfd; `cur` is a writable
        // itimerspec that outlives the call.
        let r = unsafe { libc::timerfd_gettime(self.fd.as_raw_fd(), &mut cur) };
        assert_eq!(r, 0, "timerfd_gettime: {}", io::Error::last_os_error());
        Duration::new(cur.it_value.tv_sec as u64, cur.it_value.tv_nsec as u32)
    }
}

/// A disarmed one-shot CLOCK_MONOTONIC timerfd (the clock of `Instant`),
/// non-blocking and close-on-exec.
pub(crate) fn new_timerfd() -> io::Result<OwnedFd> {
    // Safety: timerfd_create takes no pointers; its result is checked
    // before use.
    let raw = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: `raw` is a fresh descriptor that nothing else owns or closes.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Arms timerfd `fd` to expire once, `after` from now (a zero `after` in
/// 1 ns: zero would disarm it), or disarms it (None).
pub(crate) fn arm_timerfd(fd: &OwnedFd, after: Option<Duration>) -> io::Result<()> {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let it_value = match after {
        None => zero,
        Some(d) => {
            let d = d.max(Duration::from_nanos(1));
            libc::timespec {
                tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        }
    };
    let spec = libc::itimerspec {
        it_interval: zero,
        it_value,
    };
    // Safety: the descriptor is an open timerfd (owned by `fd`); `spec` is
    // a valid itimerspec that outlives the call, and a null old-value
    // pointer is allowed.
    let r = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a timerfd's 8-byte expiration count (WouldBlock when none).
fn read_expirations(fd: &OwnedFd) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    // Safety: reads at most 8 bytes into `buf`, which is 8 bytes long and
    // lives across the call; the descriptor is open (owned by `fd`).
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(io::Error::other(format!("timerfd read returned {n} bytes")));
    }
    Ok(u64::from_ne_bytes(buf))
}

/// Where tokio's sleep waits when there is no deadline.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

enum Kind {
    Tokio(Pin<Box<Sleep>>),
    Fd(TimerFd),
}

/// One deadline, or none, and a way to wait for it: see the module docs.
pub(crate) struct DeadlineTimer {
    kind: Kind,
    deadline: Option<tokio::time::Instant>,
}

impl DeadlineTimer {
    /// A timer without a deadline. A timerfd that cannot be had (no
    /// runtime, out of descriptors) leaves tokio's timer, with a warning.
    pub(crate) fn new(source: TimerSource) -> DeadlineTimer {
        let kind = match source {
            TimerSource::Tokio => Kind::Tokio(Box::pin(tokio::time::sleep_until(far_future()))),
            TimerSource::TimerFd => match TimerFd::new() {
                Ok(fd) => Kind::Fd(fd),
                Err(e) => {
                    tracing::warn!(
                        "no timerfd ({e}): the driver's timers fall back to tokio's \
                         (1 ms granularity)"
                    );
                    Kind::Tokio(Box::pin(tokio::time::sleep_until(far_future())))
                }
            },
        };
        DeadlineTimer {
            kind,
            deadline: None,
        }
    }

    /// The source in use (TimerFd may have fallen back to Tokio).
    #[cfg(test)]
    pub(crate) fn source(&self) -> TimerSource {
        match self.kind {
            Kind::Tokio(_) => TimerSource::Tokio,
            Kind::Fd(_) => TimerSource::TimerFd,
        }
    }

    /// Sets the deadline (None: none).
    pub(crate) fn set(&mut self, deadline: Option<tokio::time::Instant>) {
        self.deadline = deadline;
        let result = match &mut self.kind {
            Kind::Tokio(sleep) => {
                sleep.as_mut().reset(deadline.unwrap_or_else(far_future));
                return;
            }
            Kind::Fd(fd) => match deadline.map(|d| d.into_std()) {
                // Disarmed already (or its expiry is yet to be read, which
                // the wait absorbs).
                None if fd.programmed().is_none() => Ok(()),
                None => fd.set(None),
                // Due already: the wait ends without the kernel.
                Some(d) if d <= Instant::now() => Ok(()),
                // The kernel timer expires first: the wait re-programs it
                // then.
                Some(d) if fd.programmed().is_some_and(|p| p <= d) => Ok(()),
                Some(d) => fd.set(Some(d)),
            },
        };
        if let Err(e) = result {
            self.fall_back(e);
        }
    }

    /// True when the deadline passed; otherwise registers the task to be
    /// woken by then (or early: a spurious wake is harmless).
    pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.deadline else {
            return false;
        };
        let fd = match &mut self.kind {
            Kind::Tokio(sleep) => return sleep.as_mut().poll(cx).is_ready(),
            Kind::Fd(fd) => fd,
        };
        let deadline = deadline.into_std();
        loop {
            // Read an expiry, if any, first: it is stale or for this deadline.
            match fd.poll_expired(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => break self.fall_back_and_poll(e, cx),
                Poll::Pending => {}
            }
            if Instant::now() >= deadline {
                break true;
            }
            if fd.programmed().is_some() {
                // Registered above for its expiry, at or before the deadline.
                break false;
            }
            // The kernel timer expired early (the deadline moved later) or
            // was never set: set it, then poll again to register for it.
            if let Err(e) = fd.set(Some(deadline)) {
                break self.fall_back_and_poll(e, cx);
            }
        }
    }

    fn fall_back(&mut self, e: io::Error) {
        tracing::warn!(
            "timerfd failed ({e}): the driver's timers fall back to tokio's (1 ms granularity)"
        );
        let at = self.deadline.unwrap_or_else(far_future);
        self.kind = Kind::Tokio(Box::pin(tokio::time::sleep_until(at)));
    }

    fn fall_back_and_poll(&mut self, e: io::Error, cx: &mut Context<'_>) -> bool {
        self.fall_back(e);
        self.poll_due(cx)
    }

    /// `timerfd_settime` calls so far (0 with tokio's timer).
    #[cfg(test)]
    pub(crate) fn programs(&self) -> u64 {
        match &self.kind {
            Kind::Tokio(_) => 0,
            Kind::Fd(fd) => fd.programs,
        }
    }
}

#[cfg(test)]
mod tests {
    //! On the real clock: these assert order (never before the deadline,
    //! not at a superseded one, never when disarmed), not how late.
    use super::*;
    use std::future::poll_fn;

    const MS: Duration = Duration::from_millis(1);

    async fn expired(fd: &mut TimerFd) {
        poll_fn(|cx| fd.poll_expired(cx)).await.unwrap();
    }

    async fn due(t: &mut DeadlineTimer) {
        poll_fn(|cx| {
            if t.poll_due(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    #[tokio::test]
    async fn timerfd_expires_no_earlier_than_set() {
        let mut fd = TimerFd::new().unwrap();
        for us in [0, 1, 50, 300, 2_000] {
            let at = Instant::now() + Duration::from_micros(us);
            fd.set(Some(at)).unwrap();
            expired(&mut fd).await;
            assert!(
                Instant::now() >= at,
                "expired before the deadline ({us} µs)"
            );
            assert_eq!(fd.programmed(), None);
        }
    }

    #[tokio::test]
    async fn timerfd_set_later_supersedes_the_earlier_expiry() {
        let mut fd = TimerFd::new().unwrap();
        let t0 = Instant::now();
        fd.set(Some(t0 + 2 * MS)).unwrap();
        fd.set(Some(t0 + 20 * MS)).unwrap();
        expired(&mut fd).await;
        assert!(Instant::now() >= t0 + 20 * MS);
        // Also when the earlier one already expired unread: setting the
        // timer zeroes the count, and tokio's stale readiness is absorbed.
        let t1 = Instant::now();
        fd.set(Some(t1 + MS)).unwrap();
        std::thread::sleep(3 * MS);
        tokio::task::yield_now().await;
        fd.set(Some(t1 + 20 * MS)).unwrap();
        expired(&mut fd).await;
        assert!(Instant::now() >= t1 + 20 * MS);
    }

    #[tokio::test]
    async fn timerfd_disarmed_never_expires() {
        let mut fd = TimerFd::new().unwrap();
        fd.set(Some(Instant::now() + MS)).unwrap();
        assert!(fd.kernel_remaining() > Duration::ZERO);
        fd.set(None).unwrap();
        assert_eq!(fd.kernel_remaining(), Duration::ZERO);
        let waited = tokio::time::timeout(30 * MS, expired(&mut fd)).await;
        assert!(waited.is_err(), "a disarmed timerfd expired");
        assert_eq!(fd.kernel_remaining(), Duration::ZERO);
    }

    #[tokio::test]
    async fn deadline_timer_on_a_timerfd() {
        let mut t = DeadlineTimer::new(TimerSource::TimerFd);
        assert_eq!(t.source(), TimerSource::TimerFd);
        let t0 = tokio::time::Instant::now();
        // Moving later costs no syscall: the early expiry re-programs.
        t.set(Some(t0 + 2 * MS));
        t.set(Some(t0 + 5 * MS));
        t.set(Some(t0 + 9 * MS));
        assert_eq!(t.programs(), 1);
        due(&mut t).await;
        assert!(tokio::time::Instant::now() >= t0 + 9 * MS);
        assert_eq!(t.programs(), 2);
        // Due stays due (as tokio's Sleep does), without the kernel.
        due(&mut t).await;
        assert_eq!(t.programs(), 2);
        // Moving earlier re-programs at once.
        let t1 = tokio::time::Instant::now();
        t.set(Some(t1 + 50 * MS));
        t.set(Some(t1 + 3 * MS));
        assert_eq!(t.programs(), 4);
        due(&mut t).await;
        assert!(tokio::time::Instant::now() >= t1 + 3 * MS);
        // A past deadline is due at once, and costs no syscall.
        t.set(Some(t1));
        due(&mut t).await;
        assert_eq!(t.programs(), 4);
        // No deadline: never due.
        t.set(Some(tokio::time::Instant::now() + MS));
        t.set(None);
        assert!(tokio::time::timeout(30 * MS, due(&mut t)).await.is_err());
    }

    #[test]
    fn no_runtime_is_an_error_not_a_panic() {
        assert!(TimerFd::new().is_err());
    }
}
