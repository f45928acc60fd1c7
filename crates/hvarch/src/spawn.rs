//! Starting QEMU with exactly the descriptors a launch plan maps, and nothing else.
//!
//! Every descriptor this process opens is close-on-exec (Rust's default), so the child
//! inherits only stdio and the descriptors of the [`FdTable`], each moved to the number the
//! command line names (`fd=3`, `fds=4:5`, …).

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use hvarch_devices::fd::FdTable;

/// Arranges for the child of `command` to receive each descriptor of `fds` at its number,
/// and to create files with mode 0600 / directories 0700 (umask 077), so the sockets QEMU
/// creates (console, agent) are private to their owner.
///
/// The table must outlive the spawn: the descriptors are read in the child between `fork`
/// and `exec`.
pub(crate) fn map_fds(command: &mut Command, fds: &FdTable) {
    let maps: Vec<(RawFd, RawFd)> = fds
        .mappings()
        .map(|(target, fd)| (fd.as_fd().as_raw_fd(), target))
        .collect();
    // Descriptors parked above every target number, so no source is clobbered while the
    // targets are filled. Allocated here: the child must not allocate.
    let mut parked: Vec<RawFd> = Vec::with_capacity(maps.len());
    let floor = maps.iter().map(|&(_, target)| target).max().unwrap_or(2) + 1;
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
        Ok(())
    };
    // SAFETY: the closure only calls async-signal-safe functions (umask, fcntl, dup2) and
    // writes into a vector whose capacity was reserved before the fork, so it never
    // allocates or takes a lock in the child.
    unsafe {
        command.pre_exec(child_setup);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    #[test]
    fn the_child_sees_descriptors_at_their_numbers_only() {
        let mut table = FdTable::new();
        let dir = std::env::temp_dir().join(format!("hvarch-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        let b = dir.join("b");
        std::fs::write(&a, "first").unwrap();
        std::fs::write(&b, "second").unwrap();
        // Open some unrelated descriptors too: they must not leak into the child.
        let _unrelated = std::fs::File::open(&a).unwrap();
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
        map_fds(&mut command, &table);
        let out = command.output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "first");
        assert_eq!(lines[1], "second");
        assert_eq!(lines[2], "0077");
        // Of this test's files, the child holds exactly the two mapped descriptors (the
        // unrelated one, close-on-exec, stayed behind).
        let ours: Vec<&str> = lines[3..]
            .iter()
            .copied()
            .filter(|target| target.starts_with(dir.to_str().unwrap()))
            .collect();
        assert_eq!(ours, [a.to_str().unwrap(), b.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
