//! File descriptor passing over a Unix socket (SCM_RIGHTS), for `getfd` and `add-fd`.
//!
//! The fd is attached to the first bytes of the command itself, as QEMU (and govmm, kata) expect:
//! QEMU picks up the descriptor when it reads the command that consumes it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::io::FromRawFd;

/// Sends `data` with `fds` attached as SCM_RIGHTS ancillary data, with one `sendmsg`.
/// Returns how many bytes of `data` were sent (the fds go with them); the caller sends the rest
/// with ordinary writes. `EINTR` is retried.
pub fn send_with_fds(
    socket: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fd passing needs at least one byte of data",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let fds_len = std::mem::size_of_val(raw.as_slice());
    let fds_len_u32 = u32::try_from(fds_len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many fds"))?;
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(fds_len_u32) } as usize;
    // u64 elements keep the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero `msghdr` is a valid value (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg_control` points to `space` bytes, enough for one header holding `fds_len`
        // bytes, so CMSG_FIRSTHDR returns a non-null pointer inside `control`, and CMSG_DATA
        // points at room for `fds_len` bytes within it. `control` outlives these writes.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() {
                return Err(io::Error::other("no room for SCM_RIGHTS control message"));
            }
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len_u32) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fds_len,
            );
        }
    }
    loop {
        // SAFETY: `msg` references `iov` (pointing into `data`) and `control`, all alive for the
        // call; sendmsg does not write through these pointers.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sends all of `data` (with `fds` attached to its first bytes) with `sendmsg(MSG_NOSIGNAL)`:
/// a closed peer is an `EPIPE` error, never a `SIGPIPE` that would kill a process which does not
/// ignore it. On a blocking socket this blocks (bounded by its `SO_SNDTIMEO`); on a
/// non-blocking one it fails with `WouldBlock` when the socket is full.
pub(crate) fn send_all(
    socket: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut rest = data;
    let mut fds = fds;
    while !rest.is_empty() {
        match send_with_fds(socket, rest, fds)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => {
                rest = rest.get(n..).unwrap_or_default();
                fds = &[];
            }
        }
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and any fds sent with them (up to 8). Used by tests and the
/// fake server. Returns the byte count and the received fds, owned.
pub fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    const MAX_FDS: u32 = 8;
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(MAX_FDS * std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero `msghdr` is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` points to `iov` (into `buf`) and `control`, both alive and writable for
        // the stated lengths during the call.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_control`/`msg_controllen`; CMSG_FIRSTHDR/NXTHDR walk only
    // within that buffer and return null at its end.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is a non-null header inside `control` (see above).
        let (level, ty, len) = unsafe {
            (
                (*cmsg).cmsg_level,
                (*cmsg).cmsg_type,
                (*cmsg).cmsg_len as usize,
            )
        };
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure size computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = len.saturating_sub(header) / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: the data area holds `count` fds written by the kernel; read_unaligned
                // copes with any alignment.
                let fd = unsafe {
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>().add(i))
                };
                // SAFETY: the kernel installed `fd` in our table for us; we are its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn roundtrip_fd() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (mut r, mut w) = UnixStream::pair().expect("pair");
        let sent = send_with_fds(a.as_fd(), b"hello", &[w.as_fd()]).expect("send");
        assert_eq!(sent, 5);
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        // The received fd is the write end of the second pair.
        let mut passed = UnixStream::from(fds.into_iter().next().expect("fd"));
        passed.write_all(b"x").expect("write");
        drop(w.flush());
        let mut one = [0u8; 1];
        use std::io::Read;
        r.read_exact(&mut one).expect("read");
        assert_eq!(&one, b"x");
        assert!(send_with_fds(a.as_fd(), b"", &[]).is_err());
    }
}
