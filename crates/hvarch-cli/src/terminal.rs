//! Terminal modes: the console of `hvarch run` and the line editor of the QMP shell.

use std::os::fd::RawFd;

/// How raw a terminal is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raw {
    /// A guest's console: every byte passes through untouched (no echo, no line
    /// buffering, no output processing), except that Ctrl-C and friends still signal.
    Console,
    /// A line editor: bytes are read one key at a time without echo, Ctrl-C arrives as a
    /// byte, and output keeps its processing (`\n` still starts a new line).
    Editor,
}

/// A terminal in raw mode until dropped.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Makes `fd` raw; `None` when it is not a terminal.
    pub fn enable(fd: RawFd, raw: Raw) -> Option<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it for a valid terminal fd and
        // reports failure otherwise.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut mode = saved;
        match raw {
            Raw::Console => {
                // SAFETY: cfmakeraw only edits the struct it is given.
                unsafe { libc::cfmakeraw(&mut mode) };
                mode.c_lflag |= libc::ISIG;
            }
            Raw::Editor => {
                mode.c_iflag &=
                    !(libc::BRKINT | libc::ICRNL | libc::INPCK | libc::ISTRIP | libc::IXON);
                mode.c_cflag |= libc::CS8;
                mode.c_lflag &= !(libc::ECHO | libc::ICANON | libc::IEXTEN | libc::ISIG);
                mode.c_cc[libc::VMIN] = 1;
                mode.c_cc[libc::VTIME] = 0;
            }
        }
        // SAFETY: sets attributes derived from the ones just read from the same fd.
        if unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, &mode) } != 0 {
            return None;
        }
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read from the same fd in `enable`.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSADRAIN, &self.saved);
        }
    }
}

/// The width of the terminal on `fd` in columns (80 when it cannot be read).
pub fn columns(fd: RawFd) -> usize {
    // SAFETY: winsize is plain data that TIOCGWINSZ fills, or the call fails.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into the valid struct passed.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
    if rc == 0 && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}
