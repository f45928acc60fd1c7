//! The socket system calls the blocking client needs beyond std: `recv` without waiting,
//! waiting for readability with a deadline (`ppoll`), and the one-shot `epoll` watch its
//! background reader sleeps on.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Receives what is there without waiting (`MSG_DONTWAIT`); `WouldBlock` when nothing is.
/// `Ok(0)` is the end of the stream. `EINTR` is retried.
pub(crate) fn recv_now(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits until `socket` is readable (or hung up) or `timeout` has passed (`None`: no limit).
/// Returns whether it is readable. `EINTR` returns `Ok(false)`: the caller re-checks its
/// deadline and waits again.
pub(crate) fn wait_readable(socket: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below one billion: fits every `c_long`.
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pfd` is one valid pollfd, `ts_ptr` is null or points to `ts`, alive for the
    // call; a null signal mask leaves the mask unchanged.
    let n = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, std::ptr::null()) };
    if n >= 0 {
        return Ok(n > 0);
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::Interrupted {
        return Ok(false);
    }
    Err(err)
}

/// A one-shot epoll watch of one socket: armed, it reports the socket readable (or hung up)
/// once and disarms itself until armed again, so a sleeper on it wakes at most once for data
/// that someone else reads.
#[derive(Debug)]
pub(crate) struct Watch {
    epoll: OwnedFd,
    socket: libc::c_int,
}

impl Watch {
    /// A watch of `socket`, armed. The socket must outlive the watch.
    pub(crate) fn new(socket: BorrowedFd<'_>) -> io::Result<Watch> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let watch = Watch {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            socket: socket.as_raw_fd(),
        };
        watch.ctl(libc::EPOLL_CTL_ADD)?;
        Ok(watch)
    }

    fn ctl(&self, op: libc::c_int) -> io::Result<()> {
        self.ctl_events(op, (libc::EPOLLIN | libc::EPOLLONESHOT) as u32)
    }

    fn ctl_events(&self, op: libc::c_int, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: 0 };
        // SAFETY: `event` is a valid epoll_event for the call.
        let r = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, self.socket, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Arms the watch again after it reported: the next [`Watch::wait`] returns `true` as soon
    /// as the socket is readable or hung up (at once if it is now).
    pub(crate) fn arm(&self) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD)
    }

    /// Disables the watch as a report does, for tests: nothing is reported, not even a
    /// hang-up, until [`Watch::arm`].
    #[cfg(test)]
    pub(crate) fn disable(&self) -> io::Result<()> {
        self.ctl_events(libc::EPOLL_CTL_MOD, libc::EPOLLONESHOT as u32)
    }

    /// Sleeps until the armed watch reports (`true`, and it is disarmed) or `timeout` passes
    /// (`None`: no limit; `false`). `EINTR` returns `false` early.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // Rounded up, so that a wait does not end before `timeout`.
        let ms = timeout.map_or(-1, |t| {
            libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
        });
        // SAFETY: `event` has room for the one event asked for.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &mut event, 1, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn recv_wait_and_watch() {
        let (a, mut b) = UnixStream::pair().expect("pair");
        let mut buf = [0u8; 8];
        assert_eq!(
            recv_now(a.as_fd(), &mut buf).expect_err("empty").kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(!wait_readable(a.as_fd(), Some(Duration::ZERO)).expect("poll"));
        b.write_all(b"hi").expect("write");
        assert!(wait_readable(a.as_fd(), None).expect("poll"));
        let watch = Watch::new(a.as_fd()).expect("epoll");
        assert!(watch.wait(None).expect("readable: reports"));
        // One-shot: the data is still there, but the watch has reported it.
        let short = Some(Duration::from_millis(20));
        assert!(!watch.wait(short).expect("disarmed: times out"));
        watch.arm().expect("arm");
        watch.disable().expect("disable");
        assert!(!watch.wait(short).expect("disabled, readable: times out"));
        watch.arm().expect("arm");
        assert!(watch.wait(short).expect("armed, still readable: reports"));
        assert_eq!(recv_now(a.as_fd(), &mut buf).expect("data"), 2);
        watch.arm().expect("arm");
        assert!(!watch
            .wait(short)
            .expect("armed, nothing to read: times out"));
        b.write_all(b"hey").expect("write");
        assert!(wait_readable(a.as_fd(), Some(Duration::from_secs(5))).expect("data"));
        assert_eq!(recv_now(a.as_fd(), &mut buf).expect("data"), 3);
        drop(b);
        assert!(wait_readable(a.as_fd(), Some(Duration::from_secs(5))).expect("hang-up"));
        assert!(watch.wait(None).expect("hang-up: reports"));
        assert_eq!(recv_now(a.as_fd(), &mut buf).expect("eof"), 0);
    }
}
