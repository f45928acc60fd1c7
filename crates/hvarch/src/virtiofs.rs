//! virtio-fs shares: the daemon Kata starts for each one (virtiofsd), started and supervised
//! with the VM.
//!
//! A VM whose `shared_fs` is virtio-fs gets, for each volume, a `vhost-user-fs` device (the
//! volume's tag, a chardev on `<runtime_dir>/vhost-fs-<n>.sock`) and guest RAM in a shared
//! file-backed memory backend the daemon maps. [`crate::assemble()`] describes each share as a
//! [`VirtiofsShare`]; [`crate::Vm::launch`] starts its daemon before QEMU, stops it with the
//! VM, and reports a daemon that dies while the VM runs.
//!
//! # The daemon's command line
//!
//! Kata 3.x starts the Rust virtiofsd as `<virtio_fs_daemon> --syslog --cache=<mode>
//! --shared-dir=<dir> --fd=3 [--inode-file-handles=<mode>] <virtio_fs_extra_args…>`, with the
//! vhost-user socket bound and listening by the runtime and passed as descriptor 3, so it
//! exists before QEMU connects and nobody polls for it. hvarch does the same
//! ([`VirtiofsShare::args`]) except for `--syslog`: the daemon's log goes to
//! `<runtime_dir>/virtiofsd-<n>.stderr`, beside QEMU's stderr, so a daemon that dies is
//! reported with its own last words. Add `--syslog` to `virtio_fs_extra_args` to log as Kata
//! does.
//!
//! # The process
//!
//! The daemon follows QEMU's rules: its own process group, SIGKILL when
//! hvarch dies, only its mapped descriptors (the socket at 3), umask 077. A watcher thread
//! waits for it without reaping (`waitid(WNOWAIT)`), then reaps it under the lock
//! [`Virtiofsd::stop`] takes before signalling, so a signal can never reach a recycled pid.
//! An exit nobody asked for is logged, kept ([`Virtiofsd::exit`]) and published to the
//! [`DaemonEvents`] subscribers as a [`DaemonExit`]; [`crate::Vm::check`] turns it into
//! [`crate::VmError::VirtiofsDaemon`]. Kata stops the sandbox when its virtiofsd quits; hvarch
//! leaves that decision to the caller.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use hvarch_arch::settings::{InodeFileHandles, VirtioFsCache};
use hvarch_devices::fd::{FdTable, SharedFd};

use crate::lock;

/// The descriptor number the daemon gets its listening socket at (`--fd=3`, as in Kata).
pub const SOCKET_FD: RawFd = 3;
/// How much of a dead daemon's stderr a [`DaemonExit`] keeps (its end).
pub const STDERR_TAIL: usize = 4096;

/// One virtio-fs share of an assembled VM: the directory its daemon serves, under which tag,
/// on which socket, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtiofsShare {
    /// The tag the guest mounts (`mount -t virtiofs <tag> <dir>`).
    pub tag: String,
    /// The host directory shared.
    pub shared_dir: PathBuf,
    /// The vhost-user socket the daemon serves and QEMU's chardev connects to.
    pub socket: PathBuf,
    /// Where the daemon's stderr goes.
    pub stderr: PathBuf,
    /// The daemon binary (`virtio_fs_daemon`).
    pub daemon: PathBuf,
    /// `--cache`.
    pub cache: VirtioFsCache,
    /// `--inode-file-handles`, when set.
    pub inode_file_handles: Option<InodeFileHandles>,
    /// Appended after hvarch's arguments (`virtio_fs_extra_args`).
    pub extra_args: Vec<String>,
}

impl VirtiofsShare {
    /// The daemon's arguments (without the binary) for a listening socket at descriptor
    /// `fd`, in Kata's order (see the [module docs](self)).
    ///
    /// ```
    /// use hvarch::virtiofs::VirtiofsShare;
    /// use hvarch::hvarch_arch::settings::VirtioFsCache;
    /// let share = VirtiofsShare {
    ///     tag: "kataShared".into(),
    ///     shared_dir: "/run/kata-containers/shared/sandboxes/s1/shared".into(),
    ///     socket: "/run/hvarch/s1/vhost-fs-0.sock".into(),
    ///     stderr: "/run/hvarch/s1/virtiofsd-0.stderr".into(),
    ///     daemon: "/usr/libexec/virtiofsd".into(),
    ///     cache: VirtioFsCache::Auto,
    ///     inode_file_handles: None,
    ///     extra_args: vec!["--thread-pool-size=1".into(), "--announce-submounts".into()],
    /// };
    /// assert_eq!(share.args(3), [
    ///     "--cache=auto",
    ///     "--shared-dir=/run/kata-containers/shared/sandboxes/s1/shared",
    ///     "--fd=3",
    ///     "--thread-pool-size=1",
    ///     "--announce-submounts",
    /// ]);
    /// ```
    pub fn args(&self, fd: RawFd) -> Vec<OsString> {
        let mut shared_dir = OsString::from("--shared-dir=");
        shared_dir.push(&self.shared_dir);
        let mut args = vec![
            OsString::from(format!("--cache={}", self.cache.as_str())),
            shared_dir,
            OsString::from(format!("--fd={fd}")),
        ];
        if let Some(mode) = self.inode_file_handles {
            args.push(format!("--inode-file-handles={}", mode.as_str()).into());
        }
        args.extend(self.extra_args.iter().map(OsString::from));
        args
    }
}

/// A virtio-fs daemon that ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonExit {
    /// The share's tag.
    pub tag: String,
    /// The daemon's process id.
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
    /// The end of what it wrote to stderr (at most [`STDERR_TAIL`] bytes).
    pub stderr: String,
    /// Whether hvarch stopped it (or was stopping the VM when it ended).
    pub expected: bool,
}

impl fmt::Display for DaemonExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the virtio-fs daemon of share `{}` (pid {}) exited ({})",
            self.tag, self.pid, self.status
        )?;
        let said = self.stderr.trim();
        if !said.is_empty() {
            write!(f, "; it said: {said}")?;
        }
        Ok(())
    }
}

/// Where unexpected daemon exits are published: every subscriber gets each one.
#[derive(Clone, Debug, Default)]
pub struct DaemonEvents {
    subscribers: Arc<Mutex<Vec<mpsc::Sender<DaemonExit>>>>,
}

impl DaemonEvents {
    /// A channel with no subscribers yet.
    pub fn new() -> DaemonEvents {
        DaemonEvents::default()
    }

    /// A receiver of every unexpected exit from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<DaemonExit> {
        let (tx, rx) = mpsc::channel();
        lock(&self.subscribers).push(tx);
        rx
    }

    fn publish(&self, exit: &DaemonExit) {
        lock(&self.subscribers).retain(|tx| tx.send(exit.clone()).is_ok());
    }
}

/// The child and what is known of its end, under one lock (see the [module docs](self)).
#[derive(Debug)]
struct State {
    child: Child,
    exit: Option<DaemonExit>,
    /// Set before hvarch signals the daemon or takes the VM down: its exit is expected.
    stopping: bool,
}

/// A running virtio-fs daemon; stopped and reaped when dropped.
#[derive(Debug)]
pub struct Virtiofsd {
    tag: String,
    pid: u32,
    socket: PathBuf,
    state: Arc<Mutex<State>>,
    watcher: Option<JoinHandle<()>>,
    /// The daemon's stderr file, read at offsets.
    stderr: File,
}

impl Virtiofsd {
    /// Starts the daemon of `share` on `listener` (bound and listening at `share.socket`),
    /// its stderr to `stderr`; unexpected exits are published to `events`.
    pub fn spawn(
        share: &VirtiofsShare,
        listener: UnixListener,
        stderr: File,
        events: &DaemonEvents,
    ) -> io::Result<Virtiofsd> {
        let stderr_reader = stderr.try_clone()?;
        let stderr_tail = stderr.try_clone()?;
        let mut fds = FdTable::starting_at(SOCKET_FD);
        let socket_fd = SharedFd::new(OwnedFd::from(listener));
        let fd = fds.insert(&socket_fd);
        let mut command = Command::new(&share.daemon);
        command
            .args(share.args(fd))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        tracing::debug!(
            daemon = %share.daemon.display(),
            args = ?share.args(fd),
            tag = %share.tag,
            "starting the virtio-fs daemon"
        );
        // The spawner owns the table until the daemon has its descriptors.
        let child = crate::spawn::spawn(command, fds).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot execute {}: {e}", share.daemon.display()),
            )
        })?;
        // Only the daemon holds the listening socket now.
        drop(socket_fd);
        let pid = child.id();
        let state = Arc::new(Mutex::new(State {
            child,
            exit: None,
            stopping: false,
        }));
        let watcher = {
            let state = Arc::clone(&state);
            let tag = share.tag.clone();
            let events = events.clone();
            std::thread::Builder::new()
                .name(format!("virtiofsd-{pid}"))
                .spawn(move || watch(pid, &tag, &state, stderr_reader, &events))
        };
        let watcher = match watcher {
            Ok(handle) => handle,
            Err(e) => {
                // No watcher: stop and reap the daemon here rather than leave it unwatched.
                let mut state = lock(&state);
                let _ = state.child.kill();
                let _ = state.child.wait();
                return Err(e);
            }
        };
        tracing::info!(pid, tag = %share.tag, "virtio-fs daemon started");
        Ok(Virtiofsd {
            tag: share.tag.clone(),
            pid,
            socket: share.socket.clone(),
            state,
            watcher: Some(watcher),
            stderr: stderr_tail,
        })
    }

    /// The share's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The vhost-user socket it serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The end of what the daemon has written to stderr so far (at most [`STDERR_TAIL`]
    /// bytes).
    pub fn stderr(&self) -> String {
        tail(&self.stderr, STDERR_TAIL)
    }

    /// How the daemon ended, once it has (non-blocking).
    pub fn exit(&self) -> Option<DaemonExit> {
        lock(&self.state).exit.clone()
    }

    /// Marks the daemon's coming exit as expected (the VM is being taken down: the daemon
    /// ends when QEMU closes its socket).
    pub fn expect_exit(&self) {
        lock(&self.state).stopping = true;
    }

    /// Stops the daemon (SIGKILL, as Kata does: it holds no state of its own) unless it has
    /// already ended, and waits until it is reaped. The signal goes to the daemon's process
    /// group, so the processes it forked (virtiofsd's sandboxed server) go with it.
    /// Idempotent.
    pub fn stop(&mut self) -> Option<DaemonExit> {
        {
            let mut state = lock(&self.state);
            state.stopping = true;
            if state.exit.is_none() {
                // Not reaped yet (reaping happens under this lock), so the pid, and with it
                // the process group it leads, is still ours.
                if let Err(e) = kill_group(self.pid) {
                    tracing::warn!(pid = self.pid, "cannot kill the virtio-fs daemon: {e}");
                }
            }
        }
        if let Some(watcher) = self.watcher.take() {
            if watcher.join().is_err() {
                // The watcher panicked before reaping: reap here.
                let mut state = lock(&self.state);
                if state.exit.is_none() {
                    let _ = state.child.wait();
                }
            }
        }
        self.exit()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The watcher: waits for `pid` to exit without reaping it, then reaps it under the state
/// lock, records the exit and publishes it unless it was expected.
fn watch(pid: u32, tag: &str, state: &Mutex<State>, stderr: File, events: &DaemonEvents) {
    if let Err(e) = wait_exited(pid) {
        tracing::warn!(
            pid,
            "waiting for the virtio-fs daemon failed: {e}; reaping it"
        );
    }
    let exit = {
        let mut state = lock(state);
        let status = match state.child.wait() {
            Ok(status) => status,
            Err(e) => {
                tracing::error!(pid, "cannot reap the virtio-fs daemon: {e}");
                return;
            }
        };
        let exit = DaemonExit {
            tag: tag.to_owned(),
            pid,
            status,
            stderr: tail(&stderr, STDERR_TAIL),
            expected: state.stopping,
        };
        state.exit = Some(exit.clone());
        exit
    };
    if exit.expected {
        tracing::debug!(pid, tag, status = %exit.status, "virtio-fs daemon stopped");
    } else {
        tracing::error!(pid, tag, status = %exit.status, stderr = %exit.stderr.trim(), "virtio-fs daemon exited");
        events.publish(&exit);
    }
}

/// SIGKILL to the process group `pid` leads.
fn kill_group(pid: u32) -> io::Result<()> {
    let pgid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) has no memory-safety preconditions; the group's leader is our
    // unreaped child, so the id cannot name anyone else's group.
    if unsafe { libc::kill(-pgid, libc::SIGKILL) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Blocks until process `pid` (a child) has exited, leaving it to be reaped
/// (`waitid(P_PID, pid, WEXITED | WNOWAIT)`).
fn wait_exited(pid: u32) -> io::Result<()> {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to overwrite.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes into a valid siginfo_t; WNOWAIT leaves the child reapable.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The last `max` bytes of `file` (from its start if shorter), as text.
/// Reads at offsets (`pread`), so descriptors sharing the file's offset do not disturb each
/// other.
fn tail(file: &File, max: usize) -> String {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut offset = len.saturating_sub(max as u64);
    let mut bytes = vec![0u8; usize::try_from(len - offset).unwrap_or(max)];
    let mut filled = 0;
    while filled < bytes.len() {
        match file.read_at(&mut bytes[filled..], offset) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                filled += n;
                offset += n as u64;
            }
        }
    }
    bytes.truncate(filled);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A listening socket at `path` for a daemon (mode 0600), replacing nothing: `path` must not
/// exist.
#[cfg(test)]
fn bind(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use crate::runtime_dir::tests::Tmp;

    /// A share whose "daemon" is the shell script `script` (it gets the daemon's arguments).
    fn share(tmp: &Tmp, script: &str) -> VirtiofsShare {
        let daemon = tmp.0.join("fake-virtiofsd");
        std::fs::write(&daemon, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&daemon, std::fs::Permissions::from_mode(0o755)).unwrap();
        VirtiofsShare {
            tag: "kataShared".into(),
            shared_dir: tmp.0.clone(),
            socket: tmp.0.join("vhost-fs-0.sock"),
            stderr: tmp.0.join("virtiofsd-0.stderr"),
            daemon,
            cache: VirtioFsCache::Auto,
            inode_file_handles: None,
            extra_args: vec!["--extra".into()],
        }
    }

    fn start(share: &VirtiofsShare, events: &DaemonEvents) -> Virtiofsd {
        let listener = bind(&share.socket).unwrap();
        let stderr = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&share.stderr)
            .unwrap();
        Virtiofsd::spawn(share, listener, stderr, events).unwrap()
    }

    /// Whether `pid` still names a process (a zombie counts: it is not reaped).
    fn exists(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn arguments_in_katas_order() {
        let tmp = Tmp::new();
        let mut share = share(&tmp, "");
        share.cache = VirtioFsCache::Metadata;
        share.inode_file_handles = Some(InodeFileHandles::Mandatory);
        share.shared_dir = PathBuf::from(std::ffi::OsStr::from_bytes(b"/srv/\xff"));
        let args = share.args(7);
        assert_eq!(
            args,
            [
                OsString::from("--cache=metadata"),
                OsString::from(std::ffi::OsStr::from_bytes(b"--shared-dir=/srv/\xff")),
                OsString::from("--fd=7"),
                OsString::from("--inode-file-handles=mandatory"),
                OsString::from("--extra"),
            ]
        );
    }

    /// Polls (bounded) until `ready` holds; the bound is generous for a loaded machine.
    fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} never happened"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_daemon_gets_the_listening_socket_at_3_in_its_own_group() {
        let tmp = Tmp::new();
        let out = tmp.0.join("out");
        let share = share(
            &tmp,
            &format!(
                "/bin/echo \"$*\" >{out}.tmp; readlink /proc/$$/fd/3 >>{out}.tmp; \
                 cut -d' ' -f5 /proc/$$/stat >>{out}.tmp; mv {out}.tmp {out}; exec sleep 600",
                out = out.display()
            ),
        );
        let events = DaemonEvents::new();
        let mut daemon = start(&share, &events);
        let pid = daemon.pid();
        // QEMU's side: the socket accepts a connection before the daemon accepts it.
        let _client = UnixStream::connect(&share.socket).unwrap();
        wait_until("the report", || out.exists());
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "--cache=auto --shared-dir={} --fd=3 --extra",
                tmp.0.display()
            )
        );
        assert!(lines[1].starts_with("socket:["), "{text}");
        assert_eq!(lines[2], pid.to_string(), "its own process group");
        // Once it is `sleep`: stdio and the socket at 3.
        wait_until("the exec", || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "sleep\n")
        });
        let link = |fd: u32| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|l| l.display().to_string())
                .unwrap_or_default()
        };
        assert_eq!(link(0), "/dev/null");
        assert_eq!(link(1), "/dev/null");
        assert_eq!(link(2), share.stderr.display().to_string());
        assert!(link(3).starts_with("socket:["));
        // Nothing else of this process's: the shell's own /dev/null copy at most (dash
        // keeps one at 10), none of the descriptors the test process holds. Looked at until
        // it holds (bounded): right after its exec, `sleep` itself opens and closes the
        // locale archive, which is no leak; a leaked descriptor stays.
        let others = || -> Vec<String> {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|dir| {
                    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                        .filter(|&fd| fd > 3)
                        .map(link)
                        .filter(|l| l != "/dev/null")
                        .collect()
                })
                .unwrap_or_default()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut leaked = others();
        while !leaked.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            leaked = others();
        }
        assert!(leaked.is_empty(), "leaked into the daemon: {leaked:?}");
        let exit = daemon.stop().unwrap();
        assert!(exit.expected);
        assert!(!exists(pid), "stopped and reaped");
        assert_eq!(daemon.stop(), Some(exit), "idempotent");
    }

    #[test]
    fn a_daemon_that_dies_is_reported_with_its_stderr() {
        let tmp = Tmp::new();
        let share = share(&tmp, "echo 'cannot open the shared directory' >&2; exit 3");
        let events = DaemonEvents::new();
        let seen = events.subscribe();
        let late = events.subscribe();
        let daemon = start(&share, &events);
        let exit = seen.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(exit.tag, "kataShared");
        assert_eq!(exit.pid, daemon.pid());
        assert_eq!(exit.status.code(), Some(3));
        assert!(!exit.expected);
        assert_eq!(exit.stderr, "cannot open the shared directory\n");
        assert_eq!(late.recv_timeout(Duration::from_secs(60)).unwrap(), exit);
        assert_eq!(daemon.exit(), Some(exit.clone()));
        assert!(!exists(exit.pid), "reaped by the watcher");
        assert!(
            exit.to_string()
                .ends_with("exited (exit status: 3); it said: cannot open the shared directory"),
            "{exit}"
        );
    }

    #[test]
    fn stopping_or_dropping_publishes_nothing_and_reaps() {
        let tmp = Tmp::new();
        let share = share(&tmp, "exec sleep 600");
        let events = DaemonEvents::new();
        let seen = events.subscribe();
        let daemon = start(&share, &events);
        let pid = daemon.pid();
        assert!(exists(pid));
        assert_eq!(daemon.exit(), None);
        drop(daemon);
        assert!(!exists(pid), "dropped: killed and reaped");
        assert!(seen.recv_timeout(Duration::from_millis(200)).is_err());

        // An exit the VM expects (QEMU went away) is not an event either.
        let share = VirtiofsShare {
            socket: tmp.0.join("vhost-fs-1.sock"),
            stderr: tmp.0.join("virtiofsd-1.stderr"),
            ..share
        };
        std::fs::write(
            &share.daemon,
            format!(
                "#!/bin/sh\nwhile [ ! -e {0}/go ]; do sleep 0.01; done; exit 0\n",
                tmp.0.display()
            ),
        )
        .unwrap();
        let mut daemon = start(&share, &events);
        daemon.expect_exit();
        std::fs::write(tmp.0.join("go"), "").unwrap();
        wait_until("the daemon's own exit", || daemon.exit().is_some());
        let exit = daemon.stop().unwrap();
        assert!(exit.expected);
        assert_eq!(exit.status.code(), Some(0));
        assert!(seen.try_recv().is_err());
    }

    #[test]
    fn stopping_takes_the_daemons_own_children_too() {
        let tmp = Tmp::new();
        let helper = tmp.0.join("helper-pid");
        let share = share(
            &tmp,
            &format!(
                "sleep 600 & echo $! >{0}.tmp; mv {0}.tmp {0}; wait",
                helper.display()
            ),
        );
        let mut daemon = start(&share, &DaemonEvents::new());
        wait_until("the helper", || helper.exists());
        let helper_pid: u32 = std::fs::read_to_string(&helper)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(exists(helper_pid));
        daemon.stop();
        // Not our child: init reaps it once the group's SIGKILL has ended it.
        wait_until("the helper's end", || {
            std::fs::read_to_string(format!("/proc/{helper_pid}/stat"))
                .map(|s| s.contains(") Z ") || !s.contains("sleep"))
                .unwrap_or(true)
        });
    }

    #[test]
    fn a_missing_binary_is_an_error_naming_it() {
        let tmp = Tmp::new();
        let mut share = share(&tmp, "");
        share.daemon = tmp.0.join("no-such-virtiofsd");
        let listener = bind(&share.socket).unwrap();
        let stderr = File::create(&share.stderr).unwrap();
        let e = Virtiofsd::spawn(&share, listener, stderr, &DaemonEvents::new()).unwrap_err();
        assert!(e.to_string().contains("no-such-virtiofsd"), "{e}");
    }

    #[test]
    fn tails_keep_the_end() {
        let tmp = Tmp::new();
        let path = tmp.0.join("f");
        std::fs::write(&path, "abcdef").unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(tail(&file, 3), "def");
        assert_eq!(tail(&file, 100), "abcdef");
        assert_eq!(tail(&file, 0), "");
    }
}
