//! Starting QEMU: exactly the descriptors a launch plan maps, its own process group, and death
//! with its parent.
//!
//! - **Descriptors.** The child receives stdio and each descriptor of the [`FdTable`] at the
//!   number the command line names (`fd=3`, `fds=4:5`, …). Every other descriptor is marked
//!   close-on-exec after the `dup2`s (`close_range(…, CLOSE_RANGE_CLOEXEC)`, or `fcntl` one by
//!   one on kernels before 5.11), so a descriptor the embedding process inherited or opened
//!   without `O_CLOEXEC` does not leak into QEMU. (Marking rather than closing keeps the
//!   standard library's exec-error pipe open until the `exec`.)
//! - **Process group.** QEMU starts in a process group of its own: the terminal's Ctrl-C
//!   (SIGINT), SIGHUP and SIGQUIT go to the foreground group, which is hvarch's, and reach
//!   hvarch only; hvarch then asks the guest to power off. (systemd's default
//!   `KillMode=control-group` signals every process of the unit whatever its group: run
//!   hvarch under `KillMode=mixed`.)
//! - **Parent death.** QEMU gets `PR_SET_PDEATHSIG` = SIGKILL, so a hvarch that is killed
//!   leaves no orphan VM behind; the child checks its parent is still the launcher after the
//!   `prctl`, closing the window where the parent died between `fork` and `prctl`. The kernel
//!   sends the signal when the *thread* that forked exits, not the process: QEMU is therefore
//!   forked from one spawner thread that lives as long as the process, never from the caller's
//!   thread (which may be a short-lived pool thread, e.g. tokio's `spawn_blocking`).
//!
//! The child also gets umask 077, so the sockets QEMU creates (console, agent) are private.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::OnceLock;

use hvarch_devices::fd::FdTable;

/// The name of the thread QEMU is forked from.
pub(crate) const SPAWNER_THREAD: &str = "hvarch-spawner";

/// Starts `command` with the descriptors of `fds` at their numbers (see the module docs),
/// from the process-lifetime spawner thread; blocks until the child has exec'd (or failed).
pub(crate) fn spawn(command: Command, fds: FdTable) -> io::Result<Child> {
    let (reply, result) = mpsc::sync_channel(1);
    submit(command, fds, Reply::Blocking(reply))?;
    result.recv().map_err(|_| gone())?
}

/// [`spawn`] for an async caller: the spawner thread forks, the caller's task awaits its
/// answer, no runtime thread blocks. A caller that goes away before the answer leaves no
/// child behind: the spawner kills and reaps it.
#[cfg(feature = "tokio")]
pub(crate) async fn spawn_async(command: Command, fds: FdTable) -> io::Result<Child> {
    let (reply, result) = tokio::sync::oneshot::channel();
    submit(command, fds, Reply::Async(reply))?;
    result.await.map_err(|_| gone())?
}

/// Where the spawner sends a child.
enum Reply {
    Blocking(mpsc::SyncSender<io::Result<Child>>),
    #[cfg(feature = "tokio")]
    Async(tokio::sync::oneshot::Sender<io::Result<Child>>),
}

impl Reply {
    /// Sends `spawned`; a child nobody waits for any more is killed and reaped.
    fn send(self, spawned: io::Result<Child>) {
        let undelivered = match self {
            Reply::Blocking(reply) => reply.send(spawned).err().map(|e| e.0),
            #[cfg(feature = "tokio")]
            Reply::Async(reply) => reply.send(spawned).err(),
        };
        if let Some(Ok(mut child)) = undelivered {
            tracing::debug!(pid = child.id(), "the launch was abandoned; killing QEMU");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A spawn request for the spawner thread. It owns the descriptor table, so the descriptors
/// stay open until the child has them, whatever the caller does meanwhile.
struct Request {
    command: Command,
    fds: FdTable,
    reply: Reply,
}

/// The spawner thread's queue; an error when the thread could not be started.
static SPAWNER: OnceLock<Result<mpsc::Sender<Request>, String>> = OnceLock::new();

fn gone() -> io::Error {
    io::Error::other(format!("the {SPAWNER_THREAD} thread is gone"))
}

/// Queues `command` for the spawner thread, which answers on `reply`.
fn submit(mut command: Command, fds: FdTable, reply: Reply) -> io::Result<()> {
    prepare(&mut command, &fds);
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name(SPAWNER_THREAD.into())
            .spawn(move || {
                for mut request in rx {
                    let spawned = request.command.spawn();
                    // Only the child holds the descriptors now.
                    drop(request.fds);
                    request.reply.send(spawned);
                }
            })
            .map(|_| tx)
            .map_err(|e| format!("cannot start the {SPAWNER_THREAD} thread: {e}"))
    });
    let queue = spawner.as_ref().map_err(|e| io::Error::other(e.clone()))?;
    let request = Request {
        command,
        fds,
        reply,
    };
    queue.send(request).map_err(|_| gone())
}

/// Sets up what the child does between `fork` and `exec` (see the module docs).
fn prepare(command: &mut Command, fds: &FdTable) {
    let mut maps: Vec<(RawFd, RawFd)> = fds
        .mappings()
        .map(|(target, fd)| (fd.as_fd().as_raw_fd(), target))
        .collect();
    maps.sort_by_key(|&(_, target)| target);
    // The numbers the child must not keep open: everything from 3 up except the targets.
    let keep: Vec<RawFd> = maps.iter().map(|&(_, target)| target).collect();
    // Descriptors parked above every target number, so no source is clobbered while the
    // targets are filled. Allocated here: the child must not allocate.
    let mut parked: Vec<RawFd> = Vec::with_capacity(maps.len());
    let floor = keep.last().copied().unwrap_or(2) + 1;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let child_setup = move || -> io::Result<()> {
        // SAFETY: umask is async-signal-safe and only changes this (child) process's mask.
        unsafe { libc::umask(0o077) };
        parked.clear();
        for &(source, _) in &maps {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor the parent keeps open until
            // the spawn returns; async-signal-safe. The copy closes itself at exec.
            let copy = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, floor) };
            if copy < 0 {
                return Err(io::Error::last_os_error());
            }
            parked.push(copy);
        }
        for (&copy, &(_, target)) in parked.iter().zip(&maps) {
            // SAFETY: dup2 is async-signal-safe; `copy` is a valid descriptor from above and
            // the new `target` descriptor has close-on-exec cleared, so QEMU inherits it.
            if unsafe { libc::dup2(copy, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        cloexec_all_but(&keep)?;
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent-death signal.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The parent may have died before the prctl: the signal would never come.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    command.process_group(0);
    // SAFETY: the closure only calls async-signal-safe functions (umask, fcntl, dup2,
    // close_range, getrlimit, prctl, getppid) and writes into a vector whose capacity was
    // reserved before the fork, so it never allocates or takes a lock in the child.
    unsafe {
        command.pre_exec(child_setup);
    }
}

/// Marks every descriptor from 3 up that is not in `keep` (sorted) close-on-exec.
/// Async-signal-safe.
fn cloexec_all_but(keep: &[RawFd]) -> io::Result<()> {
    for (first, last) in gaps(keep) {
        cloexec_range(first, last)?;
    }
    Ok(())
}

/// The inclusive ranges of descriptor numbers from 3 up that are not in `keep` (sorted),
/// without allocating.
fn gaps(keep: &[RawFd]) -> impl Iterator<Item = (libc::c_uint, libc::c_uint)> + '_ {
    // The lowest number neither covered by a returned range nor kept; `None` once past the end.
    let mut next: Option<libc::c_uint> = Some(3);
    let mut targets = keep.iter().filter_map(|&t| libc::c_uint::try_from(t).ok());
    std::iter::from_fn(move || loop {
        let start = next?;
        match targets.next() {
            None => {
                next = None;
                return Some((start, libc::c_uint::MAX));
            }
            Some(target) if target > start => {
                next = target.checked_add(1);
                return Some((start, target - 1));
            }
            Some(target) if target == start => next = target.checked_add(1),
            // Below 3, or a duplicate.
            Some(_) => {}
        }
    })
}

/// Marks descriptors `first..=last` close-on-exec: `close_range(CLOSE_RANGE_CLOEXEC)` (Linux
/// 5.11), else `fcntl` on each open one below the descriptor limit. Async-signal-safe.
fn cloexec_range(first: libc::c_uint, last: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            last,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) {
        return Err(e);
    }
    // SAFETY: an all-zero rlimit is a valid value for getrlimit to overwrite.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes into a valid rlimit; async-signal-safe.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = libc::c_uint::try_from(limit.rlim_cur).unwrap_or(libc::c_uint::MAX);
    let mut fd = first;
    while fd <= last && fd < end {
        let raw = RawFd::try_from(fd).unwrap_or(RawFd::MAX);
        // SAFETY: fcntl(F_GETFD/F_SETFD) only reads and sets descriptor flags; a number that
        // is not open fails with EBADF, which is ignored.
        unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(raw, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
        fd += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime_dir::tests::Tmp;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// Opens `path` read-only WITHOUT close-on-exec, as a careless embedder would, at a
    /// number above any target (so no `dup2` replaces it by chance).
    fn open_inheritable(path: &std::path::Path) -> OwnedFd {
        let file = std::fs::File::open(path).unwrap();
        // SAFETY: F_DUPFD (not F_DUPFD_CLOEXEC: on purpose) duplicates a descriptor we hold.
        let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, 100) };
        assert!(fd >= 100, "{}", io::Error::last_os_error());
        // SAFETY: a new descriptor nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn the_child_sees_descriptors_at_their_numbers_only() {
        let dir = Tmp::new();
        let mut table = FdTable::new();
        let a = dir.0.join("a");
        let b = dir.0.join("b");
        let leaked = dir.0.join("not-cloexec");
        std::fs::write(&a, "first").unwrap();
        std::fs::write(&b, "second").unwrap();
        std::fs::write(&leaked, "").unwrap();
        // Unrelated descriptors must not reach the child: a close-on-exec one, and one
        // opened without O_CLOEXEC (it would leak without the close_range).
        let _unrelated = std::fs::File::open(&a).unwrap();
        let _inheritable = open_inheritable(&leaked);
        let fd_a = OwnedFd::from(std::fs::File::open(&a).unwrap()).into();
        let fd_b = OwnedFd::from(std::fs::File::open(&b).unwrap()).into();
        assert_eq!(table.insert(&fd_a), 3);
        assert_eq!(table.insert(&fd_b), 4);
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "cat <&3; echo; cat <&4; echo; umask; \
             for f in /proc/$$/fd/*; do readlink \"$f\"; done",
        ]);
        command.stdout(std::process::Stdio::piped());
        let out = spawn(command, table).unwrap().wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "first");
        assert_eq!(lines[1], "second");
        assert_eq!(lines[2], "0077");
        // Of this test's files, the child holds exactly the two mapped descriptors.
        let ours: Vec<&str> = lines[3..]
            .iter()
            .copied()
            .filter(|target| target.starts_with(dir.0.to_str().unwrap()))
            .collect();
        assert_eq!(ours, [a.to_str().unwrap(), b.to_str().unwrap()], "{text}");
    }

    #[test]
    fn gaps_cover_every_number_but_the_targets() {
        assert_eq!(gaps(&[]).collect::<Vec<_>>(), [(3, libc::c_uint::MAX)]);
        assert_eq!(gaps(&[3, 4]).collect::<Vec<_>>(), [(5, libc::c_uint::MAX)]);
        assert_eq!(
            gaps(&[3, 6]).collect::<Vec<_>>(),
            [(4, 5), (7, libc::c_uint::MAX)]
        );
    }

    proptest::proptest! {
        #[test]
        fn gaps_partition_the_numbers(mut keep in proptest::collection::vec(3i32..64, 0..8)) {
            keep.sort_unstable();
            keep.dedup();
            let ranges: Vec<_> = gaps(&keep).collect();
            for fd in 3u32..80 {
                let covering = ranges.iter().filter(|(lo, hi)| (*lo..=*hi).contains(&fd)).count();
                let kept = keep.contains(&(fd as i32));
                proptest::prop_assert_eq!(covering, usize::from(!kept), "fd {} in {:?}", fd, ranges);
            }
            proptest::prop_assert_eq!(ranges.last().map(|r| r.1), Some(libc::c_uint::MAX));
        }
    }

    #[test]
    fn the_child_has_its_own_process_group_and_outlives_the_thread_that_asked() {
        use std::io::{BufRead, Write};
        // Spawned from a thread that ends at once: the child must outlive that thread.
        let (child, tid) = std::thread::spawn(|| {
            let mut command = Command::new("sh");
            command.args(["-c", "read -r x; echo \"$x\"; cat /proc/$$/stat"]);
            command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped());
            // SAFETY: gettid has no preconditions.
            (spawn(command, FdTable::new()).unwrap(), unsafe {
                libc::gettid()
            })
        })
        .join()
        .unwrap();
        let mut child = ChildGuard(child);
        // The kernel sends the parent-death signal as it releases the thread: once the
        // thread is gone, a child that was to die has its SIGKILL pending and cannot answer.
        let released = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
            assert!(
                std::time::Instant::now() < released,
                "thread {tid} never released"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut stdin = child.0.stdin.take().unwrap();
        stdin.write_all(b"alive\n").unwrap();
        let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(
            line, "alive\n",
            "the child died with the thread that asked for it"
        );
        // /proc/<pid>/stat: "pid (comm) state ppid pgrp session …"
        line.clear();
        out.read_line(&mut line).unwrap();
        let after = &line[line.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let pgrp: u32 = fields[2].parse().unwrap();
        assert_eq!(pgrp, child.0.id(), "its own process group: {line}");
        assert_ne!(pgrp, std::process::id());
    }

    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
