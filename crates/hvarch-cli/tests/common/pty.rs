//! A pseudo-terminal for testing `hvarch` as a person at a terminal uses it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the program wrote to its terminal so far, and whether it has closed it.
#[derive(Default)]
struct Screen {
    bytes: Vec<u8>,
    closed: bool,
}

/// A child on the slave side of a pseudo-terminal (its controlling terminal, on stdin,
/// stdout and stderr). Everything it writes is kept; dropping it kills and reaps the child.
pub struct Pty {
    master: File,
    child: Child,
    screen: Arc<(Mutex<Screen>, Condvar)>,
}

impl Pty {
    /// Starts `command` on a new 80×24 terminal.
    pub fn spawn(mut command: Command) -> Pty {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty fills two descriptors; the name buffer and termios may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just created and are owned here alone.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the pty slave"));
        command
            .stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        // SAFETY: setsid and ioctl are async-signal-safe; the child makes the terminal on
        // its stdin its controlling terminal, as a login shell's children have one.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start hvarch on a pty");
        drop(slave);
        let master = File::from(master);
        let screen = Arc::new((Mutex::new(Screen::default()), Condvar::new()));
        let mut reader = master.try_clone().expect("dup the pty master");
        let shared = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                // EIO once every slave descriptor is closed (the child exited).
                let n = reader.read(&mut buf).unwrap_or(0);
                let (lock, ready) = &*shared;
                // Poisoned: the test failed while waiting; nobody reads any more.
                let Ok(mut screen) = lock.lock() else { break };
                if n == 0 {
                    screen.closed = true;
                } else {
                    screen.bytes.extend_from_slice(&buf[..n]);
                }
                ready.notify_all();
                if n == 0 {
                    break;
                }
            }
        });
        Pty {
            master,
            child,
            screen,
        }
    }

    /// Types `text` (in one write, as a paste or a fast typist's keys arrive).
    pub fn type_text(&mut self, text: &str) {
        self.master
            .write_all(text.as_bytes())
            .expect("write to the pty");
    }

    /// Waits until `needle` appears in the output at or after byte `from`; returns the
    /// offset just past it. Panics with the output so far after `timeout` (a bound, not an
    /// assertion on speed).
    pub fn wait_for(&self, needle: &str, from: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let (lock, ready) = &*self.screen;
        let mut screen = lock.lock().expect("screen lock");
        loop {
            let tail = &screen.bytes[from.min(screen.bytes.len())..];
            if let Some(at) = tail
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                return from + at + needle.len();
            }
            let now = Instant::now();
            if screen.closed || now >= deadline {
                panic!(
                    "no {needle:?} after byte {from} ({}); the terminal shows:\n{}",
                    if screen.closed {
                        "terminal closed"
                    } else {
                        "timed out"
                    },
                    String::from_utf8_lossy(&screen.bytes).escape_debug()
                );
            }
            screen = ready
                .wait_timeout(screen, deadline - now)
                .expect("screen lock")
                .0;
        }
    }

    /// Everything written so far.
    pub fn output(&self) -> String {
        let screen = self.screen.0.lock().expect("screen lock");
        String::from_utf8_lossy(&screen.bytes).into_owned()
    }

    /// Waits (up to `timeout`) for the child to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hvarch did not exit; the terminal shows:\n{}",
                self.output().escape_debug()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
