//! QEMU's process as a driver controls it: the [`Step::Process`](super::Step::Process) steps
//! of the shutdown ladder (has QEMU exited? wait for it; kill it), without polling where the
//! kernel can say when a process ends.
//!
//! A [`Process`] holds the child and, on Linux 5.3 and later, a pidfd: a descriptor that
//! becomes readable when the process exits. The blocking driver waits with `poll(2)` on it;
//! the tokio driver's [`AsyncProcess`](super::AsyncProcess) registers it with the runtime's
//! reactor, so waiting never blocks a runtime thread. Without a pidfd (older kernels, some
//! user-mode emulators) a wait checks the child every few milliseconds instead.
//!
//! Dropping a [`Process`] whose child has not been reaped kills (SIGKILL) and reaps it, then
//! releases what was to outlive it: a VM's virtio-fs daemons ([`crate::virtiofs`]), then its
//! runtime directory ([`crate::runtime_dir`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use crate::engine::deadline;
use crate::runtime_dir::RuntimeDir;
use crate::virtiofs::Virtiofsd;

/// How often a wait checks the child when there is no pidfd to wait on.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// A child process (QEMU) that the drivers can poll, wait for and kill: with a pidfd where the
/// kernel has them (Linux 5.3 and later), so waiting needs no polling, else by checking the
/// child every few milliseconds. Dropping it kills and reaps a child that has not been
/// reaped, then releases the VM's virtio-fs daemons and runtime directory.
///
/// ```
/// use std::time::Duration;
/// use hvarch::engine::Process;
///
/// let child = std::process::Command::new("true").spawn()?;
/// let mut process = Process::new(child);
/// let status = process.wait_timeout(Duration::from_secs(30))?;
/// assert!(status.is_some_and(|s| s.success()));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Its exit status, once reaped.
    exit: Option<ExitStatus>,
    /// Readable once the child exits (`pidfd_open`), when the kernel has it.
    pidfd: Option<OwnedFd>,
    /// What is released once the child is gone.
    held: Option<Held>,
    /// Reaped by a background thread (see [`Process::reap_in_background`]).
    detached: bool,
}

impl Process {
    /// Takes `child` (not yet reaped) and opens a pidfd for it when the kernel can.
    pub fn new(child: Child) -> Process {
        let pidfd = pidfd_open(child.id());
        Process {
            child,
            exit: None,
            pidfd,
            held: None,
            detached: false,
        }
    }

    /// Releases `held` only once the child is gone (reaped).
    pub(crate) fn keep_until_gone(&mut self, held: Held) {
        self.held = Some(held);
    }

    /// The runtime directory released with the child, if any.
    pub(crate) fn runtime(&self) -> Option<&RuntimeDir> {
        self.held.as_ref().map(|held| &held.runtime)
    }

    /// The virtio-fs daemons stopped once the child is gone.
    pub(crate) fn virtiofs(&self) -> &[Virtiofsd] {
        self.held.as_ref().map_or(&[], |held| &held.virtiofs)
    }

    /// Takes the virtio-fs daemons (to stop them; [`Process::put_virtiofs`] gives them back).
    pub(crate) fn take_virtiofs(&mut self) -> Vec<Virtiofsd> {
        self.held
            .as_mut()
            .map(|held| std::mem::take(&mut held.virtiofs))
            .unwrap_or_default()
    }

    /// Gives back the daemons of [`Process::take_virtiofs`].
    pub(crate) fn put_virtiofs(&mut self, daemons: Vec<Virtiofsd>) {
        if let Some(held) = self.held.as_mut() {
            held.virtiofs = daemons;
        }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited (reaping it), without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// Waits up to `timeout` for the child to exit (`Duration::ZERO`: only checks; a timeout
    /// too long for a deadline: as long as it takes), blocking the calling thread.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let until = deadline(std::time::Instant::now(), timeout);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let Some(until) = until else {
                return self.wait().map(Some);
            };
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match &self.pidfd {
                Some(pidfd) => poll_readable(pidfd, left)?,
                None => std::thread::sleep(left.min(POLL_INTERVAL)),
            }
        }
    }

    /// Kills the child (SIGKILL) and waits for it to exit, blocking the calling thread.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        self.start_kill()?;
        self.wait()
    }

    /// Sends SIGKILL unless the child has been reaped.
    pub(crate) fn start_kill(&mut self) -> io::Result<()> {
        match self.exit {
            Some(_) => Ok(()),
            None => self.child.kill(),
        }
    }

    /// Waits for the child to exit, blocking the calling thread.
    fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait()?;
        self.exit = Some(status);
        Ok(status)
    }

    /// The pidfd, for a reactor to watch.
    #[cfg(feature = "tokio")]
    pub(crate) fn pidfd(&self) -> Option<&OwnedFd> {
        self.pidfd.as_ref()
    }

    /// Kills the child unless it has been reaped, and hands its reaping (and the release of
    /// what was to outlive it) to a background thread: for an owner that must not block, such
    /// as an async one being dropped. The `Process` is inert afterwards.
    #[cfg(feature = "tokio")]
    pub(crate) fn reap_in_background(&mut self) {
        if self.detached {
            return;
        }
        self.detached = true;
        let held = self.held.take();
        let exited = self.exit.is_some();
        if exited && held.as_ref().is_none_or(|held| held.virtiofs.is_empty()) {
            // Nothing to wait for: the runtime directory's files go at once.
            drop(held);
            return;
        }
        if !exited {
            let _ = self.child.kill();
        }
        let pid = self.child.id();
        let reap = move || {
            if !exited {
                let status = waitpid(pid);
                tracing::debug!(pid, ?status, "QEMU reaped in the background");
            }
            // Stops the daemons (a wait for each), then removes the runtime directory's files.
            drop(held);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("hvarch-reaper".into())
            .spawn(reap)
        {
            // No thread to hand it to: the reap is not lost, it happens here.
            tracing::warn!(pid, error = %e, "cannot start a reaper thread; reaping inline");
            if !exited {
                let _ = waitpid(pid);
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.detached && self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.wait();
        }
        // `held` is dropped next, with the child gone.
    }
}

/// What outlives QEMU until it is gone (see [`Process::keep_until_gone`]): its virtio-fs
/// daemons, stopped first (they end when QEMU closes their sockets), then the VM's runtime
/// directory, which removes what hvarch created.
#[derive(Debug)]
pub(crate) struct Held {
    /// The daemons, one per share.
    pub(crate) virtiofs: Vec<Virtiofsd>,
    /// The runtime directory (dropped after the daemons).
    pub(crate) runtime: RuntimeDir,
}

impl Drop for Held {
    fn drop(&mut self) {
        stop_virtiofs(&mut self.virtiofs);
    }
}

/// Stops `daemons` (their exit expected), each waited for.
pub(crate) fn stop_virtiofs(daemons: &mut [Virtiofsd]) {
    for daemon in daemons.iter() {
        daemon.expect_exit();
    }
    for daemon in daemons {
        daemon.stop();
    }
}

/// `pidfd_open(pid)`: `None` when the kernel (or an emulator) does not have it.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open only reads its arguments; the child is not reaped, so `pid` is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: a new descriptor nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits up to `timeout` for `fd` to become readable (or for a signal to interrupt the wait).
fn poll_readable(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up, so a wait of less than a millisecond does not spin.
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    let millis = libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll on one valid pollfd.
    if unsafe { libc::poll(&mut pollfd, 1, millis) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Reaps `pid`, blocking; its status, or the error.
#[cfg(feature = "tokio")]
fn waitpid(pid: u32) -> io::Result<ExitStatus> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    loop {
        let mut status = 0;
        // SAFETY: waitpid of our own child, writing into a local.
        if unsafe { libc::waitpid(pid, &mut status, 0) } >= 0 {
            return Ok(std::os::unix::process::ExitStatusExt::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::{Command, Stdio};

    fn sleeper() -> Process {
        Process::new(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn exists(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn a_running_child_is_waited_for_then_killed() {
        let mut process = sleeper();
        assert_eq!(process.try_wait().expect("try_wait"), None);
        assert_eq!(
            process
                .wait_timeout(Duration::from_millis(20))
                .expect("wait"),
            None
        );
        let status = process.kill().expect("kill");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(process.try_wait().expect("try_wait"), Some(status));
        // Killing a reaped child is a no-op.
        assert_eq!(process.kill().expect("kill again"), status);
    }

    #[test]
    fn an_exited_child_is_reported_at_once_with_any_timeout() {
        for timeout in [Duration::ZERO, Duration::from_secs(30), Duration::MAX] {
            let child = Command::new("true").spawn().expect("spawn true");
            let mut process = Process::new(child);
            let status = process.wait_timeout(Duration::MAX).expect("wait");
            assert!(status.is_some_and(|s| s.success()), "{timeout:?}");
            assert_eq!(process.wait_timeout(timeout).expect("again"), status);
        }
    }

    #[test]
    fn dropping_kills_and_reaps() {
        let process = sleeper();
        let pid = process.id();
        drop(process);
        assert!(!exists(pid), "process {pid} left behind");
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn background_reaping_kills_and_reaps() {
        let mut process = sleeper();
        let pid = process.id();
        process.reap_in_background();
        drop(process);
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while exists(pid) {
            assert!(
                std::time::Instant::now() < until,
                "process {pid} never reaped"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
