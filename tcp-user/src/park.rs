//! Where `tcp-user run`'s driver sleeps: its own thread, parked in
//! `epoll_wait`, not a tokio task.
//!
//! Why not tokio's reactor there: in a 64-byte ping-pong on one connection
//! every transaction wakes the driver once, and under tokio that wake-up
//! went through the runtime's scheduler, its I/O and time drivers and the
//! polls of every source the loop waited on (signals, control requests, the
//! log tick, the application's `Notify`, the timer): `perf record -C 1`
//! over the server CPU put tokio's code at 12 % of all samples, twice the
//! TCP core's. The driver of `tcp-user run` serves no tokio task of its own
//! (the built-in services are synchronous), so it sleeps in the kernel
//! directly: one epoll set holds the AF_XDP sockets, a [`Mailbox`]'s eventfd
//! and a timerfd for the core's earliest deadline. A wake-up is the one
//! system call that ends the wait.
//!
//! The timerfd is programmed lazily, as `hrtimer`'s: a deadline that moves
//! later (the retransmission timer restarted by every ACK) leaves the kernel
//! timer where it was, and its expiry, early, only makes the loop park again
//! with the deadline programmed then. A timeout on the wait itself
//! (`epoll_pwait2`) was tried first: it arms and cancels a kernel timer on
//! every wait, and 64-byte ping-pong then cost as much server CPU per
//! transaction as under tokio.
//!
//! The control socket and the signal handlers stay on tokio, on a thread of
//! their own, and post to the mailbox. The library API's driver stays a
//! tokio task: the application's tasks share its runtime and wake it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::Request;
use crate::hrtimer::{arm_timerfd, new_timerfd};

/// What another thread can ask of a parked driver.
#[derive(Debug)]
pub(crate) enum Letter {
    /// A control client wants a snapshot.
    Request(Request),
    /// SIGTERM or SIGINT arrived: drain and stop (a second one: stop now).
    Stop,
}

/// Letters for the driver, and an eventfd that wakes it when one comes.
pub(crate) struct Mailbox {
    doorbell: OwnedFd,
    /// Set by the first letter since the driver last took its mail; only
    /// that letter writes the eventfd, so a burst costs one write.
    rung: AtomicBool,
    letters: Mutex<VecDeque<Letter>>,
}

impl Mailbox {
    pub(crate) fn new() -> io::Result<Mailbox> {
        // Safety: eventfd takes no pointers; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Mailbox {
            // Safety: `raw` is a fresh descriptor that nothing else owns.
            doorbell: unsafe { OwnedFd::from_raw_fd(raw) },
            rung: AtomicBool::new(false),
            letters: Mutex::new(VecDeque::new()),
        })
    }

    /// Leaves `letter` for the driver and wakes it.
    pub(crate) fn post(&self, letter: Letter) {
        self.letters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(letter);
        // The letter is queued before the flag is read: a driver that
        // cleared the flag before this swap takes the letter on its next
        // look, and one that clears it after is woken by the write.
        if !self.rung.swap(true, Ordering::AcqRel) {
            let one = 1u64.to_ne_bytes();
            // Safety: writes 8 bytes from `one`, which lives across the
            // call, to the open eventfd. A full counter (EAGAIN) is
            // readable already, which is all a write is for.
            unsafe { libc::write(self.doorbell.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// The letters posted since the last call; one atomic swap when none.
    pub(crate) fn take(&self) -> VecDeque<Letter> {
        if !self.rung.swap(false, Ordering::AcqRel) {
            return VecDeque::new();
        }
        std::mem::take(&mut *self.letters.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resets the eventfd's counter (it stays readable until read).
    fn clear_doorbell(&self) {
        read_counter(&self.doorbell);
    }
}

/// The epoll tokens of the mailbox's eventfd and of the timerfd; the
/// descriptors to watch get their index.
const MAILBOX_TOKEN: u64 = u64::MAX;
const TIMER_TOKEN: u64 = u64::MAX - 1;

/// A thread's wait on some descriptors, a mailbox and a deadline.
pub(crate) struct Parker {
    epoll: OwnedFd,
    mailbox: Arc<Mailbox>,
    /// One-shot CLOCK_MONOTONIC timerfd (the clock of `Instant`).
    timer: OwnedFd,
    /// When the timerfd is set to expire; None: disarmed or expired.
    programmed: Option<Instant>,
    /// Waits that slept (none of the sources was ready at once).
    pub(crate) parks: u64,
    /// `timerfd_settime` calls.
    pub(crate) timer_programs: u64,
}

impl Parker {
    /// A wait on `readable` and `mailbox`. `readable` is watched
    /// edge-triggered: a descriptor wakes the wait when it becomes readable
    /// after the caller last drained it, not while it stays so.
    pub(crate) fn new(mailbox: Arc<Mailbox>, readable: &[RawFd]) -> io::Result<Parker> {
        // Safety: epoll_create1 takes no pointers; the result is checked.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: `raw` is a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        let timer = new_timerfd()?;
        // The sockets edge-triggered: a level-triggered entry is polled
        // again by the next wait after every wake-up, and an AF_XDP
        // socket's poll in copy mode runs its transmit path (the socket's
        // mutex and a look at the TX ring: `tx_ring_empty_descs` per
        // transaction in rr-1conn 3.0 level-triggered, 2.0 edge-triggered,
        // one of them the `sendto` kick's own). An
        // edge still comes with every frame the kernel delivers, also
        // between the caller's last look at the RX ring and this wait.
        // The eventfd and the timerfd level-triggered: `park` reads them.
        let watched = (0u64..)
            .zip(readable.iter().copied())
            .map(|(token, fd)| (token, fd, libc::EPOLLIN | libc::EPOLLET))
            .chain([
                (MAILBOX_TOKEN, mailbox.doorbell.as_raw_fd(), libc::EPOLLIN),
                (TIMER_TOKEN, timer.as_raw_fd(), libc::EPOLLIN),
            ]);
        for (token, fd, flags) in watched {
            let mut ev = libc::epoll_event {
                events: flags as u32,
                u64: token,
            };
            // Safety: `ev` is a valid epoll_event that outlives the call;
            // both descriptors are open.
            let r = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Parker {
            epoll,
            mailbox,
            timer,
            programmed: None,
            parks: 0,
            timer_programs: 0,
        })
    }

    /// Sleeps until a descriptor is readable, a letter is posted or
    /// `deadline` passes (never before it); returns at once when one of
    /// them already holds. It may also return early (the kernel timer was
    /// left at an earlier deadline); it does not say why: the caller looks
    /// at everything.
    pub(crate) fn park(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        if let Some(at) = deadline {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            // Expiring first already: leave it (see the module docs).
            if self.programmed.is_none_or(|p| p > at) {
                self.program(at, left)?;
            }
        }
        self.parks += 1;
        // Safety: all-zero bytes are valid epoll_events.
        let mut events: [libc::epoll_event; 8] = unsafe { std::mem::zeroed() };
        // Safety: `events` is writable for as many entries as passed.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                -1,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // A signal (handled on the control thread) interrupted the
            // wait: wake, and let the caller look.
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(())
            } else {
                Err(e)
            };
        }
        for ev in &events[..n as usize] {
            match ev.u64 {
                MAILBOX_TOKEN => self.mailbox.clear_doorbell(),
                TIMER_TOKEN => {
                    read_counter(&self.timer);
                    self.programmed = None;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Sets the timerfd to expire `left` from now, that is at `at` or just
    /// after.
    fn program(&mut self, at: Instant, left: Duration) -> io::Result<()> {
        self.timer_programs += 1;
        arm_timerfd(&self.timer, Some(left))?;
        // Setting it also resets a count not read yet: no stale expiry.
        self.programmed = Some(at);
        Ok(())
    }
}

/// Reads (and so resets) an eventfd's or a timerfd's 8-byte counter; a
/// zero counter (EAGAIN on these non-blocking descriptors) reads nothing.
fn read_counter(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    // Safety: reads at most 8 bytes into `buf`, which lives across the
    // call, from an open non-blocking descriptor.
    unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An eventfd standing in for an AF_XDP socket: readable while its
    /// counter is not zero.
    fn fake_socket() -> OwnedFd {
        // Safety: eventfd takes no pointers; checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(raw >= 0);
        // Safety: fresh descriptor, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(raw) }
    }

    fn make_readable(fd: &OwnedFd) {
        let one = 1u64.to_ne_bytes();
        // Safety: 8 bytes from `one` to an open eventfd.
        let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        assert_eq!(n, 8);
    }

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn wakes_at_the_deadline_never_before() {
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let mut p = Parker::new(Arc::clone(&mailbox), &[]).unwrap();
        for us in [30, 300, 2_000, 15_000] {
            let at = Instant::now() + Duration::from_micros(us);
            p.park(Some(at)).unwrap();
            assert!(Instant::now() >= at, "woke before a {us} µs deadline");
        }
        // A deadline already past: no sleep at all.
        let before = p.parks;
        p.park(Some(Instant::now() - Duration::from_millis(1)))
            .unwrap();
        assert_eq!(p.parks, before);
        assert!(mailbox.take().is_empty());
    }

    #[test]
    fn a_letter_posted_before_the_wait_ends_it_at_once() {
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let mut p = Parker::new(Arc::clone(&mailbox), &[]).unwrap();
        mailbox.post(Letter::Stop);
        mailbox.post(Letter::Stop);
        let t0 = Instant::now();
        p.park(Some(t0 + LONG)).unwrap();
        assert!(t0.elapsed() < LONG);
        let letters = mailbox.take();
        assert_eq!(letters.len(), 2);
        assert!(letters.iter().all(|l| matches!(l, Letter::Stop)));
        // Taken: the next look finds nothing, and the doorbell was reset,
        // so a wait sleeps to its deadline.
        assert!(mailbox.take().is_empty());
        let at = Instant::now() + Duration::from_millis(5);
        p.park(Some(at)).unwrap();
        assert!(Instant::now() >= at);
    }

    #[test]
    fn a_letter_from_another_thread_wakes_the_wait() {
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let mut p = Parker::new(Arc::clone(&mailbox), &[]).unwrap();
        for round in 0..50 {
            let m = Arc::clone(&mailbox);
            let poster = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(200));
                let (reply, _) = tokio::sync::oneshot::channel();
                m.post(Letter::Request(reply));
            });
            // However the post and the wait interleave, the wait ends and
            // the letter is there.
            let mut got = VecDeque::new();
            while got.is_empty() {
                p.park(None).unwrap();
                got = mailbox.take();
            }
            poster.join().unwrap();
            assert_eq!(got.len(), 1, "round {round}");
            assert!(matches!(got[0], Letter::Request(_)));
        }
    }

    #[test]
    fn a_descriptor_becoming_readable_ends_the_wait_once() {
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let sock = fake_socket();
        let mut p = Parker::new(Arc::clone(&mailbox), &[sock.as_raw_fd()]).unwrap();
        let s2 = sock.try_clone().unwrap();
        let t0 = Instant::now();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            make_readable(&s2);
        });
        p.park(Some(t0 + LONG)).unwrap();
        t.join().unwrap();
        assert!(t0.elapsed() < LONG);
        assert!(
            p.programmed.is_some(),
            "woken by the descriptor, not the timer"
        );
        // Edge-triggered: still readable, but nothing new, so the next
        // wait lasts until its deadline (the timer's expiry ends it) ...
        let at = Instant::now() + Duration::from_millis(3);
        p.park(Some(at)).unwrap();
        assert!(Instant::now() >= at);
        assert!(p.programmed.is_none(), "woken by the timer");
        // ... and more data, already there when the wait starts, ends it.
        make_readable(&sock);
        let t1 = Instant::now();
        p.park(Some(t1 + LONG)).unwrap();
        assert!(t1.elapsed() < LONG);
        assert!(mailbox.take().is_empty());
    }

    #[test]
    fn a_later_deadline_keeps_the_kernel_timer_and_an_earlier_one_reprograms_it() {
        const MS: Duration = Duration::from_millis(1);
        let mailbox = Arc::new(Mailbox::new().unwrap());
        let mut p = Parker::new(Arc::clone(&mailbox), &[]).unwrap();
        let t0 = Instant::now();
        // Programmed for 5 ms, woken by a letter before.
        mailbox.post(Letter::Stop);
        p.park(Some(t0 + 5 * MS)).unwrap();
        assert_eq!(mailbox.take().len(), 1);
        assert_eq!(p.timer_programs, 1);
        // A later deadline leaves the kernel timer alone: its expiry ends
        // the wait (early, and the timer is spent) ...
        p.park(Some(t0 + 40 * MS)).unwrap();
        assert_eq!(p.timer_programs, 1);
        assert!(p.programmed.is_none());
        assert!(Instant::now() >= t0 + 5 * MS);
        // ... and the waits that follow program the deadline once.
        while Instant::now() < t0 + 40 * MS {
            p.park(Some(t0 + 40 * MS)).unwrap();
        }
        assert_eq!(p.timer_programs, 2);
        // An earlier deadline than the one programmed re-programs at once.
        mailbox.post(Letter::Stop);
        p.park(Some(Instant::now() + LONG)).unwrap();
        mailbox.take();
        assert_eq!(p.timer_programs, 3);
        let at = Instant::now() + 2 * MS;
        p.park(Some(at)).unwrap();
        assert_eq!(p.timer_programs, 4);
        assert!(Instant::now() >= at);
        assert!(p.programmed.is_none(), "woken by the re-programmed timer");
    }
}
