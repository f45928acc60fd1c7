//! The socket system calls the blocking client needs beyond std: a non-blocking `recv`, waiting
//! for readability with a deadline (`ppoll`), and an `epoll` set its background reader sleeps on
//! while callers read for themselves.

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

/// An epoll set watching one socket for readability, which can be switched off and on.
#[derive(Debug)]
pub(crate) struct Watch {
    epoll: OwnedFd,
    socket: libc::c_int,
}

impl Watch {
    /// A set watching `socket` (off until [`Watch::on`]). The socket must outlive the set.
    pub(crate) fn new(socket: BorrowedFd<'_>) -> io::Result<Watch> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watch {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            socket: socket.as_raw_fd(),
        })
    }

    fn ctl(&self, op: libc::c_int) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: `event` is a valid epoll_event for the call (ignored for EPOLL_CTL_DEL).
        let r = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, self.socket, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Starts watching: [`Watch::wait`] returns while the socket is readable or hung up.
    pub(crate) fn on(&self) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD)
    }

    /// Stops watching: [`Watch::wait`] sleeps whatever the socket does. (Removal rather than
    /// an empty interest set: epoll always reports a hang-up of a watched descriptor.)
    pub(crate) fn off(&self) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL)
    }

    /// Sleeps until the watched socket is readable or hung up (while watching). `EINTR`
    /// returns early.
    pub(crate) fn wait(&self) -> io::Result<()> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: `event` has room for the one event asked for.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &mut event, 1, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
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
        watch.on().expect("on");
        watch.wait().expect("readable: returns");
        watch.off().expect("off");
        assert_eq!(recv_now(a.as_fd(), &mut buf).expect("data"), 2);
        drop(b);
        assert!(wait_readable(a.as_fd(), Some(Duration::from_secs(5))).expect("hang-up"));
        assert_eq!(recv_now(a.as_fd(), &mut buf).expect("eof"), 0);
    }
}
