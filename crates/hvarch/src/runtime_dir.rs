//! The runtime directory of a VM: hvarch removes only what it created there.
//!
//! [`Vm::launch`](crate::Vm::launch) opens the runtime directory before anything else, the
//! way libvirt and systemd treat a directory they are given:
//!
//! - **A new directory** is created by hvarch (`mkdir`, mode 0700): hvarch owns it and removes
//!   it whole when the VM ends. Missing parents are created too (mode 0700) and are **never
//!   removed**: a parent such as `/run/hvarch` is shared by every VM, and removing it would
//!   race another VM creating its directory inside.
//! - **An existing directory** is used only if it is a real directory (not a symlink), owned by
//!   the effective uid and not writable by group or others; its mode is left alone. hvarch then
//!   removes only the files it created there (and the ones QEMU created at hvarch's request),
//!   never the directory or anything else in it. A file already present under one of the
//!   names hvarch is about to use ([`RuntimePaths`](crate::RuntimePaths): `qmp.sock`,
//!   `qemu.stderr`, `console.sock`, …) is not replaced: the launch is refused, naming it.
//!
//! The directory is opened once (`O_DIRECTORY | O_NOFOLLOW`) and every file hvarch creates is
//! created relative to that descriptor (`openat` with `O_CREAT | O_EXCL | O_NOFOLLOW`, mode
//! 0600), so a directory or file swapped after the check cannot redirect a write. UNIX sockets
//! are bound and connected through `/proc/self/fd/<dir>/<name>`, inside the checked directory
//! too (and free of the 108-byte socket path limit).
//!
//! # The lock and its record
//!
//! A lock file, [`LOCK_FILE`], holds an exclusive `flock` for as long as the VM uses the
//! directory: a second VM given the same directory fails with [`RuntimeDirError::Locked`],
//! naming the directory and the pid holding it, instead of taking over its sockets. After
//! locking, hvarch checks that the name still refers to the locked file (a previous holder may
//! have unlinked it in between) and starts over if not.
//!
//! The lock file is also hvarch's record of what it created: the holder's pid, whether hvarch
//! created the directory, and for each file it (or QEMU, for it) created, its name and identity
//! (device, inode number and birth time). When the VM ends, those files and the lock
//! file are removed; if hvarch could not clean up (it was killed), the next VM on the directory
//! finds the record under a lock nobody holds, and removes the leftovers before starting: only
//! files whose identity is recorded and still matches, so a file someone put in their place
//! later is never touched. A name recorded without an identity (hvarch was killed between
//! QEMU's creating it and QMP's being ready) is left alone, and refused as occupied if the new
//! VM needs it. A directory an earlier hvarch created, holding nothing but such leftovers once
//! they are removed, is owned whole again. An existing lock file that is not hvarch's record
//! (not empty and not starting with its header) makes the directory refused.
//!
//! [`LaunchOptions::remove_runtime_dir`](crate::LaunchOptions::remove_runtime_dir) `= false`
//! leaves everything hvarch created in place when the VM ends (QEMU's stderr, for debugging);
//! the record stays, so the next VM on the directory still cleans up.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use crate::lock;

/// The lock file hvarch keeps in every runtime directory it uses (see the [module
/// docs](self)).
pub const LOCK_FILE: &str = "hvarch.lock";

/// The first line of a lock file: what makes an existing [`LOCK_FILE`] hvarch's own.
const LOCK_HEADER: &str = "hvarch runtime directory lock";
/// The record line saying hvarch created the directory.
const CREATED_LINE: &str = "created-directory";
/// The prefix of a record line giving a created file's name and identity (see [`Made::write`]).
const MADE_PREFIX: &str = "made ";
/// The prefix of the record line naming the holder.
const PID_PREFIX: &str = "pid ";
/// How many times locking starts over when the locked file was unlinked meanwhile.
const LOCK_ATTEMPTS: usize = 64;

/// Why a runtime directory was refused or could not be set up. Every variant names the
/// directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeDirError {
    /// The path does not end in a directory name (e.g. `/`, `..`).
    #[error("runtime directory {}: the path must end in a directory name", dir.display())]
    NoName {
        /// The runtime directory.
        dir: PathBuf,
    },
    /// The path names a symbolic link; hvarch uses only a real directory.
    #[error("runtime directory {} is a symbolic link: refused (name the real directory)", dir.display())]
    Symlink {
        /// The runtime directory.
        dir: PathBuf,
    },
    /// The path names something that is not a directory.
    #[error("runtime directory {} exists and is not a directory", dir.display())]
    NotADirectory {
        /// The runtime directory.
        dir: PathBuf,
    },
    /// The directory belongs to another user.
    #[error(
        "runtime directory {} is owned by uid {owner}, not by this process's uid {euid}: refused",
        dir.display()
    )]
    ForeignOwner {
        /// The runtime directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// Group or others may write to the directory, so they could plant or swap files in it.
    #[error(
        "runtime directory {} has mode {mode:04o}: writable by group or others, refused \
         (chmod go-w, or name another directory)",
        dir.display()
    )]
    Writable {
        /// The runtime directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another VM holds the directory's lock.
    #[error(
        "runtime directory {} is in use by another VM ({}): two VMs cannot share a runtime \
         directory",
        dir.display(),
        holder(*.pid)
    )]
    Locked {
        /// The runtime directory.
        dir: PathBuf,
        /// The pid of the hvarch process holding the lock, when its record could be read.
        pid: Option<u32>,
    },
    /// A name hvarch is about to create already exists and is not recorded as a leftover of
    /// hvarch's.
    #[error(
        "runtime directory {}: {} already exists ({kind}) and is not recorded as created by \
         hvarch: refused rather than replaced (remove it, or name another directory)",
        dir.display(),
        name.to_string_lossy()
    )]
    Occupied {
        /// The runtime directory.
        dir: PathBuf,
        /// The file name.
        name: OsString,
        /// What is there (`a symbolic link`, `a regular file`, …).
        kind: &'static str,
    },
    /// [`LOCK_FILE`] exists and is not an hvarch lock file.
    #[error(
        "runtime directory {}: {LOCK_FILE} exists and is not an hvarch lock file: refused",
        dir.display()
    )]
    NotALockFile {
        /// The runtime directory.
        dir: PathBuf,
    },
    /// A file name hvarch was asked to create there is not a plain name.
    #[error(
        "runtime directory {}: {name:?} is not a plain file name (no `/`, newline or NUL, \
         not `.` or `..`)",
        dir.display()
    )]
    BadName {
        /// The runtime directory.
        dir: PathBuf,
        /// The name.
        name: OsString,
    },
    /// A system call failed.
    #[error("runtime directory {}: {what}: {source}", dir.display())]
    Io {
        /// The runtime directory.
        dir: PathBuf,
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("locked by hvarch pid {pid}"),
        None => "locked by a process whose pid is not recorded yet".into(),
    }
}

/// The result type of this module.
pub type Result<T, E = RuntimeDirError> = std::result::Result<T, E>;

/// An open, checked, locked runtime directory (see the [module docs](self)). Dropping it
/// removes what hvarch created (unless told not to) and releases the lock.
#[derive(Debug)]
pub(crate) struct RuntimeDir {
    path: PathBuf,
    /// The parent directory, for the final `rmdir` of a directory hvarch created.
    parent: OwnedFd,
    leaf: OsString,
    /// The directory itself (`O_DIRECTORY | O_NOFOLLOW`): every file is created relative to it.
    fd: OwnedFd,
    /// hvarch created the directory (or an earlier hvarch did, and left only leftovers).
    created: bool,
    /// The locked [`LOCK_FILE`]; `None` until locked.
    lock: Option<File>,
    /// The names hvarch (or QEMU, for it) creates here.
    names: Vec<OsString>,
    /// The identities of those created so far (recorded as they are learnt).
    made: Mutex<Vec<Made>>,
    /// Remove what hvarch created when dropped.
    remove: bool,
}

impl RuntimeDir {
    /// Creates or checks `path`, locks it, removes the leftovers an earlier hvarch recorded,
    /// and records `names` as the files this VM will create there; a name that already
    /// exists is refused ([`RuntimeDirError::Occupied`]).
    pub(crate) fn open(path: &Path, names: &[OsString]) -> Result<RuntimeDir> {
        let (parent_path, leaf) = split(path)?;
        for name in names {
            check_name(path, name)?;
        }
        let io_err = |what: &str| {
            let (dir, what) = (path.to_path_buf(), what.to_owned());
            move |source| RuntimeDirError::Io { dir, what, source }
        };
        if !parent_path.as_os_str().is_empty() && !parent_path.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&parent_path)
                .map_err(io_err(&format!(
                    "create the parent directory {}",
                    parent_path.display()
                )))?;
        }
        let parent_name = if parent_path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent_path.as_path()
        };
        let parent = open_at(
            None,
            parent_name.as_os_str(),
            libc::O_DIRECTORY | libc::O_RDONLY,
            0,
        )
        .map_err(io_err(&format!(
            "open the parent directory {}",
            parent_name.display()
        )))?;
        let leaf_c = cstring(&leaf);
        // SAFETY: mkdirat on a valid directory descriptor and a NUL-terminated name.
        let created = if unsafe { libc::mkdirat(parent.as_raw_fd(), leaf_c.as_ptr(), 0o700) } == 0 {
            true
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io_err("create")(e));
            }
            false
        };
        let fd = match open_at(
            Some(parent.as_raw_fd()),
            &leaf,
            libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_RDONLY,
            0,
        ) {
            Ok(fd) => fd,
            // Linux says ENOTDIR for a symlink opened O_DIRECTORY | O_NOFOLLOW, ELOOP without.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
                let link = stat_at(parent.as_raw_fd(), &leaf)
                    .ok()
                    .flatten()
                    .is_some_and(|stat| stat.st_mode & libc::S_IFMT == libc::S_IFLNK);
                return Err(if link {
                    RuntimeDirError::Symlink { dir: path.into() }
                } else {
                    RuntimeDirError::NotADirectory { dir: path.into() }
                });
            }
            Err(e) => return Err(io_err("open")(e)),
        };
        let mut dir = RuntimeDir {
            path: path.to_path_buf(),
            parent,
            leaf,
            fd,
            created,
            lock: None,
            names: Vec::new(),
            made: Mutex::new(Vec::new()),
            remove: true,
        };
        if created {
            // Exactly 0700, whatever the umask.
            // SAFETY: fchmod on the directory descriptor we hold.
            if unsafe { libc::fchmod(dir.fd.as_raw_fd(), 0o700) } != 0 {
                return Err(io_err("chmod 0700")(io::Error::last_os_error()));
            }
        }
        dir.check_owner()?;
        let (lock, record) = dir.lock()?;
        dir.lock = Some(lock);
        dir.remove_leftovers(&record)?;
        for name in names {
            if let Some(kind) = dir.entry_kind(name).map_err(io_err("stat"))? {
                return Err(RuntimeDirError::Occupied {
                    dir: path.into(),
                    name: name.clone(),
                    kind,
                });
            }
        }
        dir.names = names.to_vec();
        dir.write_record()
            .map_err(io_err(&format!("write {LOCK_FILE}")))?;
        tracing::debug!(dir = %path.display(), created = dir.created, "runtime directory ready");
        Ok(dir)
    }

    /// Whether hvarch created the directory (and removes it whole).
    pub(crate) fn created(&self) -> bool {
        self.created
    }

    /// Whether dropping removes what hvarch created (default true).
    pub(crate) fn set_remove(&mut self, remove: bool) {
        self.remove = remove;
    }

    /// Creates the recorded file `name` (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600) for
    /// writing and reading back.
    pub(crate) fn create_file(&self, name: &OsStr) -> io::Result<File> {
        debug_assert!(self.names.iter().any(|n| n == name), "unrecorded {name:?}");
        let fd = open_at(
            Some(self.fd.as_raw_fd()),
            name,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )?;
        let identity = identity_at(fd.as_raw_fd(), OsStr::new(""))?
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        self.note_made(name, identity)?;
        Ok(File::from(fd))
    }

    /// Binds and listens on the recorded UNIX socket `name` inside the directory (mode 0600).
    /// A name that exists already is an error (`EADDRINUSE`): nothing is replaced.
    pub(crate) fn bind(&self, name: &OsStr) -> io::Result<UnixListener> {
        debug_assert!(self.names.iter().any(|n| n == name), "unrecorded {name:?}");
        let listener = UnixListener::bind(self.fd_path(name))?;
        let name_c = cstring(name);
        // SAFETY: fchmodat on our directory descriptor and a NUL-terminated plain name; the
        // directory is ours and not writable by others, so the name is the socket just bound.
        if unsafe { libc::fchmodat(self.fd.as_raw_fd(), name_c.as_ptr(), 0o600, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(identity) = identity_at(self.fd.as_raw_fd(), name)? {
            self.note_made(name, identity)?;
        }
        Ok(listener)
    }

    /// Records the identity of every recorded name that exists now and has none yet: the
    /// files QEMU (or a daemon) created for hvarch. Called once QEMU is ready.
    pub(crate) fn note_existing(&self) -> io::Result<()> {
        let mut made = lock(&self.made);
        let before = made.len();
        for name in &self.names {
            if made.iter().any(|m| m.name == *name) {
                continue;
            }
            if let Some(identity) = identity_at(self.fd.as_raw_fd(), name)? {
                made.push(Made {
                    name: name.clone(),
                    identity,
                });
            }
        }
        self.append_record(made.get(before..).unwrap_or_default())
    }

    /// Records that hvarch created `made` (and writes the record).
    fn note_made(&self, name: &OsStr, identity: Identity) -> io::Result<()> {
        let made = Made {
            name: name.to_os_string(),
            identity,
        };
        let mut all = lock(&self.made);
        all.retain(|m| m.name != name);
        self.append_record(std::slice::from_ref(&made))?;
        all.push(made);
        Ok(())
    }

    /// Appends `made` to the record (one write at its end: a kill leaves at worst a last line
    /// without its newline, which is not read).
    fn append_record(&self, made: &[Made]) -> io::Result<()> {
        let Some(lock) = &self.lock else {
            return Ok(());
        };
        if made.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for m in made {
            m.write(&mut text);
        }
        lock.write_all_at(&text, lock.metadata()?.len())
    }

    /// Whether `name` in the directory is the file hvarch recorded creating during this VM's
    /// life (`None`: no identity recorded for it). The same device, inode number and birth
    /// time, known or not: within the VM's life only this user could have replaced it.
    fn is_made(&self, name: &OsStr) -> io::Result<Option<bool>> {
        let recorded = lock(&self.made)
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.identity);
        let Some(recorded) = recorded else {
            return Ok(None);
        };
        Ok(Some(
            identity_at(self.fd.as_raw_fd(), name)?.is_some_and(|now| now == recorded),
        ))
    }

    /// Connects to the UNIX socket `name` inside the directory.
    pub(crate) fn connect(&self, name: &OsStr) -> io::Result<UnixStream> {
        UnixStream::connect(self.fd_path(name))
    }

    /// `name` reached through the directory descriptor (`/proc/self/fd/<fd>/<name>`), so the
    /// lookup cannot leave the checked directory.
    fn fd_path(&self, name: &OsStr) -> PathBuf {
        Path::new(&format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(name)
    }

    /// Refuses a directory owned by another user or writable by group or others.
    fn check_owner(&self) -> Result<()> {
        let stat = fstat(self.fd.as_raw_fd()).map_err(|source| RuntimeDirError::Io {
            dir: self.path.clone(),
            what: "stat".into(),
            source,
        })?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if stat.st_uid != euid {
            return Err(RuntimeDirError::ForeignOwner {
                dir: self.path.clone(),
                owner: stat.st_uid,
                euid,
            });
        }
        let mode = stat.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(RuntimeDirError::Writable {
                dir: self.path.clone(),
                mode,
            });
        }
        Ok(())
    }

    /// Takes the directory's lock; returns the lock file and the record found in it.
    fn lock(&self) -> Result<(File, Vec<u8>)> {
        let io_err = |what: &str, source| RuntimeDirError::Io {
            dir: self.path.clone(),
            what: format!("{what} {LOCK_FILE}"),
            source,
        };
        let name = OsStr::new(LOCK_FILE);
        let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        for _ in 0..LOCK_ATTEMPTS {
            let fd = match open_at(
                Some(self.fd.as_raw_fd()),
                name,
                flags | libc::O_CREAT | libc::O_EXCL,
                0o600,
            ) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    match open_at(Some(self.fd.as_raw_fd()), name, flags, 0) {
                        Ok(fd) => fd,
                        // Unlinked by its holder meanwhile: start over.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                            return Err(RuntimeDirError::NotALockFile {
                                dir: self.path.clone(),
                            })
                        }
                        Err(e) => return Err(io_err("open", e)),
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(RuntimeDirError::NotALockFile {
                        dir: self.path.clone(),
                    })
                }
                Err(e) => return Err(io_err("create", e)),
            };
            let stat = fstat(fd.as_raw_fd()).map_err(|e| io_err("stat", e))?;
            if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(RuntimeDirError::NotALockFile {
                    dir: self.path.clone(),
                });
            }
            let file = File::from(fd);
            #[cfg(test)]
            tests::before_flock(&self.path);
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Err(RuntimeDirError::Locked {
                        dir: self.path.clone(),
                        pid: holder_pid(&file),
                    });
                }
                return Err(io_err("lock", e));
            }
            // The holder we waited for may have unlinked the file before we locked it: the
            // lock counts only if the name still refers to the locked file.
            match self.stat_at(name) {
                Ok(Some(now)) if now.st_dev == stat.st_dev && now.st_ino == stat.st_ino => {}
                Ok(_) => continue,
                Err(e) => return Err(io_err("stat", e)),
            }
            let record = read_all(&file).map_err(|e| io_err("read", e))?;
            if !record.is_empty() && !record.starts_with(LOCK_HEADER.as_bytes()) {
                // Not ours: unlock without touching it.
                return Err(RuntimeDirError::NotALockFile {
                    dir: self.path.clone(),
                });
            }
            return Ok((file, record));
        }
        Err(io_err(
            "lock",
            io::Error::other(format!(
                "the lock file was replaced {LOCK_ATTEMPTS} times while locking"
            )),
        ))
    }

    /// Removes the files an earlier hvarch recorded creating and did not remove (it was
    /// killed), those still the files it created (see [`Identity::proves`]); adopts the directory
    /// whole when that hvarch created it and nothing else is left in it.
    fn remove_leftovers(&mut self, record: &[u8]) -> Result<()> {
        let mut created_earlier = false;
        let mut leftovers = Vec::new();
        for line in record_lines(record) {
            if line == CREATED_LINE.as_bytes() {
                created_earlier = true;
            } else if let Some(made) = line
                .strip_prefix(MADE_PREFIX.as_bytes())
                .and_then(Made::parse)
            {
                // A record is only trusted for plain names inside this directory.
                if check_name(&self.path, &made.name).is_ok() {
                    leftovers.push(made);
                }
            }
        }
        let dir = self.fd.as_raw_fd();
        for made in &leftovers {
            let name = made.name.as_os_str();
            let log_name = name.to_string_lossy();
            match identity_at(dir, name) {
                Ok(Some(now)) if made.identity.proves(&now) => match unlink_at(dir, name, 0) {
                    Ok(()) => tracing::info!(
                        dir = %self.path.display(),
                        name = %log_name,
                        "removed a leftover of an earlier hvarch"
                    ),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => tracing::warn!(
                        dir = %self.path.display(),
                        name = %log_name,
                        error = %e,
                        "cannot remove a leftover of an earlier hvarch"
                    ),
                },
                Ok(Some(_)) => tracing::info!(
                    dir = %self.path.display(),
                    name = %log_name,
                    "not removed: not provably the file an earlier hvarch created"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    dir = %self.path.display(),
                    name = %log_name,
                    error = %e,
                    "cannot check a leftover of an earlier hvarch"
                ),
            }
        }
        if created_earlier && !self.created {
            let entries = list(dir).map_err(|source| RuntimeDirError::Io {
                dir: self.path.clone(),
                what: "list".into(),
                source,
            })?;
            self.created = entries.iter().all(|e| e == OsStr::new(LOCK_FILE));
        }
        Ok(())
    }

    /// Writes this holder's record into the lock file (one write): its pid and whether hvarch
    /// created the directory; each file's identity is appended as it is made.
    fn write_record(&self) -> io::Result<()> {
        let Some(lock) = &self.lock else {
            return Ok(());
        };
        let mut text = format!("{LOCK_HEADER}\n{PID_PREFIX}{}\n", std::process::id()).into_bytes();
        if self.created {
            text.extend_from_slice(CREATED_LINE.as_bytes());
            text.push(b'\n');
        }
        lock.set_len(0)?;
        lock.write_all_at(&text, 0)
    }

    /// What is at `name` in the directory (without following a symlink), if anything.
    fn entry_kind(&self, name: &OsStr) -> io::Result<Option<&'static str>> {
        Ok(self
            .stat_at(name)?
            .map(|stat| match stat.st_mode & libc::S_IFMT {
                libc::S_IFLNK => "a symbolic link",
                libc::S_IFREG => "a regular file",
                libc::S_IFDIR => "a directory",
                libc::S_IFSOCK => "a socket",
                libc::S_IFIFO => "a FIFO",
                _ => "a device node",
            }))
    }

    fn stat_at(&self, name: &OsStr) -> io::Result<Option<libc::stat>> {
        stat_at(self.fd.as_raw_fd(), name)
    }

    /// Removes what hvarch created (see the module docs); the lock file goes last, while it is
    /// still locked.
    fn clean(&self) {
        let dir = self.fd.as_raw_fd();
        if self.created {
            match list(dir) {
                Ok(entries) => {
                    for name in entries.iter().filter(|n| *n != OsStr::new(LOCK_FILE)) {
                        if let Err(e) = remove_entry(dir, name) {
                            tracing::warn!(dir = %self.path.display(), name = %name.to_string_lossy(), error = %e, "cannot remove");
                        }
                    }
                }
                Err(e) => tracing::warn!(dir = %self.path.display(), error = %e, "cannot list"),
            }
        } else {
            for name in &self.names {
                match self.is_made(name) {
                    // Replaced since hvarch created it: not hvarch's any more.
                    Ok(Some(false)) => {
                        tracing::info!(dir = %self.path.display(), name = %name.to_string_lossy(), "not removed: replaced since hvarch created it");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(dir = %self.path.display(), name = %name.to_string_lossy(), error = %e, "cannot check before removing");
                        continue;
                    }
                    // Created by hvarch, or by QEMU for it during this VM's life.
                    Ok(Some(true) | None) => {}
                }
                match unlink_at(dir, name, 0) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => {
                        tracing::warn!(dir = %self.path.display(), name = %name.to_string_lossy(), error = %e, "cannot remove")
                    }
                }
            }
        }
        if let Err(e) = unlink_at(dir, OsStr::new(LOCK_FILE), 0) {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove {LOCK_FILE}");
        }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if self.remove && self.lock.is_some() {
            self.clean();
        }
        if let Some(lock) = self.lock.take() {
            // Explicitly: the lock belongs to the open file description, which a child forked
            // by another thread may hold a copy of until its `exec`; closing ours alone would
            // keep the directory locked until then.
            // SAFETY: flock on the descriptor we own.
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
        }
        if self.remove && self.created {
            // `rmdir` through the parent: if the name no longer refers to our (now empty)
            // directory, a non-empty one is left alone (ENOTEMPTY) and nothing is lost.
            match unlink_at(self.parent.as_raw_fd(), &self.leaf, libc::AT_REMOVEDIR) {
                Ok(()) => {}
                // Another VM's files are in it (it took the lock first), or it is gone.
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::ENOENT)) =>
                {
                    tracing::debug!(dir = %self.path.display(), error = %e, "runtime directory left in place");
                }
                Err(e) => {
                    tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove the runtime directory")
                }
            }
        }
    }
}

/// What tells one file from any other, even one created later under the same name: its
/// device, inode number and birth time (an inode number freed by a removal is soon reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: (u32, u32),
    ino: u64,
    /// Seconds and nanoseconds; `None` where the filesystem does not keep it.
    born: Option<(i64, u32)>,
}

impl Identity {
    /// The identity of what `statx` filled in.
    fn of(stx: &libc::statx) -> Identity {
        Identity {
            dev: (stx.stx_dev_major, stx.stx_dev_minor),
            ino: stx.stx_ino,
            born: (stx.stx_mask & libc::STATX_BTIME != 0)
                .then_some((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec)),
        }
    }

    /// Whether `other` is provably the same file: without a birth time, nothing proves that
    /// an inode number was not reused.
    fn proves(&self, other: &Identity) -> bool {
        self.born.is_some() && self == other
    }
}

/// A file hvarch (or QEMU, for it) created in the directory: its name and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Made {
    name: OsString,
    identity: Identity,
}

impl Made {
    /// Appends its record line: `made <major>:<minor> <ino> <sec>.<nsec> <name>`, with `-`
    /// for an unknown birth time.
    fn write(&self, text: &mut Vec<u8>) {
        let Identity { dev, ino, born } = self.identity;
        let born = born.map_or("-".to_owned(), |(sec, nsec)| format!("{sec}.{nsec}"));
        text.extend_from_slice(
            format!("{MADE_PREFIX}{}:{} {ino} {born} ", dev.0, dev.1).as_bytes(),
        );
        text.extend_from_slice(self.name.as_bytes());
        text.push(b'\n');
    }

    /// Reads what follows [`MADE_PREFIX`] in a record line.
    fn parse(rest: &[u8]) -> Option<Made> {
        let mut fields = rest.splitn(4, |&b| b == b' ');
        let mut text = || std::str::from_utf8(fields.next()?).ok();
        let (dev, ino, born) = (text()?, text()?, text()?);
        let (major, minor) = dev.split_once(':')?;
        let born = match born {
            "-" => None,
            born => {
                let (sec, nsec) = born.split_once('.')?;
                Some((sec.parse().ok()?, nsec.parse().ok()?))
            }
        };
        let identity = Identity {
            dev: (major.parse().ok()?, minor.parse().ok()?),
            ino: ino.parse().ok()?,
            born,
        };
        let name = fields.next().filter(|name| !name.is_empty())?;
        Some(Made {
            name: OsString::from_vec(name.to_vec()),
            identity,
        })
    }
}

/// The complete lines of a record after its header: a last line without its newline (a write
/// cut short) is not read.
fn record_lines(record: &[u8]) -> impl Iterator<Item = &[u8]> {
    let complete = record
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&[][..], |end| record.get(..end).unwrap_or_default());
    complete.split(|&b| b == b'\n').skip(1)
}

/// Splits `path` into its parent and its last component, which must be a name.
fn split(path: &Path) -> Result<(PathBuf, OsString)> {
    match path.components().next_back() {
        Some(Component::Normal(leaf)) => {
            let mut parent = path.to_path_buf();
            parent.pop();
            Ok((parent, leaf.to_os_string()))
        }
        _ => Err(RuntimeDirError::NoName { dir: path.into() }),
    }
}

/// A plain file name: not empty, not `.` or `..`, no `/`, newline or NUL.
fn check_name(dir: &Path, name: &OsStr) -> Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes == b"."
        || bytes == b".."
        || bytes.iter().any(|b| matches!(b, b'/' | b'\n' | 0))
    {
        return Err(RuntimeDirError::BadName {
            dir: dir.into(),
            name: name.into(),
        });
    }
    Ok(())
}

/// `name` as a C string (callers pass names without NUL: paths and checked names).
fn cstring(name: &OsStr) -> CString {
    CString::new(name.as_bytes()).unwrap_or_default()
}

/// `openat(dir or AT_FDCWD, name, flags | O_CLOEXEC, mode)`.
fn open_at(
    dir: Option<RawFd>,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let name =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let dir = dir.unwrap_or(libc::AT_FDCWD);
    // SAFETY: openat with a valid (or AT_FDCWD) directory descriptor and a NUL-terminated
    // name; the mode is passed as the variadic argument openat expects with O_CREAT.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unlink_at(dir: RawFd, name: &OsStr, flags: libc::c_int) -> io::Result<()> {
    let name = cstring(name);
    // SAFETY: unlinkat on a valid directory descriptor and a NUL-terminated plain name.
    if unsafe { libc::unlinkat(dir, name.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `None` when there is no such name.
fn stat_at(dir: RawFd, name: &OsStr) -> io::Result<Option<libc::stat>> {
    let name_c = cstring(name);
    // SAFETY: an all-zero stat is a valid value for fstatat to overwrite.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat on a valid directory descriptor, a NUL-terminated name and a valid
    // out-pointer.
    let rc = unsafe { libc::fstatat(dir, name_c.as_ptr(), &mut stat, libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 {
        return Ok(Some(stat));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(e)
    }
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor the caller holds, with a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut stat) } == 0 {
        Ok(stat)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The identity of `name` in the directory `dir` (without following a symlink), if it exists;
/// of the open file `dir` itself when `name` is empty.
fn identity_at(dir: RawFd, name: &OsStr) -> io::Result<Option<Identity>> {
    let name_c = cstring(name);
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: an all-zero statx is a valid value for statx to overwrite.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let mask = libc::STATX_INO | libc::STATX_BTIME;
    // SAFETY: statx on a valid descriptor, a NUL-terminated name and a valid out-pointer.
    let rc = unsafe { libc::statx(dir, name_c.as_ptr(), flags, mask, &mut stx) };
    if rc == 0 {
        return Ok(Some(Identity::of(&stx)));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// The names in the directory `dir` (without `.` and `..`).
fn list(dir: RawFd) -> io::Result<Vec<OsString>> {
    // SAFETY: `dir` is a valid descriptor; the duplicate is owned by the DIR stream below.
    let dup = unsafe { libc::fcntl(dir, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fdopendir takes ownership of `dup`, a directory descriptor.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // A fresh stream on a duplicate shares the file offset: start from the beginning.
    // SAFETY: `stream` is a valid DIR stream.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    loop {
        // SAFETY: readdir on a valid stream; the entry is read before the next call.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: d_name of a valid entry is a NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    // SAFETY: closes the stream (and `dup`) exactly once.
    unsafe { libc::closedir(stream) };
    Ok(names)
}

/// Removes `name` from `dir`: a file, or a directory with everything in it (never following
/// a symbolic link).
fn remove_entry(dir: RawFd, name: &OsStr) -> io::Result<()> {
    match unlink_at(dir, name, 0) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::EPERM)) => {
            let sub = open_at(
                Some(dir),
                name,
                libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_RDONLY,
                0,
            )?;
            for entry in list(sub.as_raw_fd())? {
                remove_entry(sub.as_raw_fd(), &entry)?;
            }
            unlink_at(dir, name, libc::AT_REMOVEDIR)
        }
        Err(e) => Err(e),
    }
}

fn read_all(file: &File) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = file.read_at(&mut buf, data.len() as u64)?;
        if n == 0 {
            return Ok(data);
        }
        data.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
}

/// The pid recorded by the holder of `lock` (it writes it right after locking: a reader that
/// comes in between retries briefly).
fn holder_pid(lock: &File) -> Option<u32> {
    for _ in 0..50 {
        if let Ok(record) = read_all(lock) {
            let pid = record
                .split(|&b| b == b'\n')
                .find_map(|line| line.strip_prefix(PID_PREFIX.as_bytes()))
                .and_then(|pid| std::str::from_utf8(pid).ok()?.parse().ok());
            if pid.is_some() {
                return pid;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    None
}

/// Reads the whole of `file` from the start, whatever its offset (for QEMU's stderr).
pub(crate) fn read_from_start(file: &File) -> String {
    String::from_utf8_lossy(&read_all(file).unwrap_or_default()).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    type Hook = Box<dyn FnOnce() + Send>;

    /// Code to run in `lock` for a directory, between opening the lock file and `flock`.
    static BEFORE_FLOCK: Mutex<Vec<(PathBuf, Hook)>> = Mutex::new(Vec::new());

    pub(super) fn before_flock(dir: &Path) {
        let hook = {
            let mut hooks = BEFORE_FLOCK.lock().unwrap();
            let index = hooks.iter().position(|(d, _)| d == dir);
            index.map(|i| hooks.remove(i).1)
        };
        if let Some(hook) = hook {
            hook();
        }
    }

    /// A private temporary directory (removed on drop) for the crate's unit tests.
    pub(crate) struct Tmp(pub(crate) PathBuf);

    impl Tmp {
        pub(crate) fn new() -> Tmp {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "hvarch-unit-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
            Tmp(path)
        }

        /// An existing directory `name` inside, mode 0755 (private enough to be used).
        fn existing(&self, name: &str) -> PathBuf {
            let dir = self.0.join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            dir
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names() -> Vec<OsString> {
        ["qmp.sock", "qemu.stderr", "console.sock", "pid"]
            .iter()
            .map(OsString::from)
            .collect()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Creates what a VM creates: the stderr file and the QMP socket (hvarch), the console
    /// socket and pid file (as QEMU would, by path).
    fn populate(rt: &RuntimeDir, dir: &Path) -> UnixListener {
        rt.create_file(OsStr::new("qemu.stderr"))
            .unwrap()
            .write_all_at(b"qemu says", 0)
            .unwrap();
        let listener = rt.bind(OsStr::new("qmp.sock")).unwrap();
        std::fs::write(dir.join("pid"), "1\n").unwrap();
        let _console = UnixListener::bind(dir.join("console.sock")).unwrap();
        listener
    }

    #[test]
    fn a_new_directory_is_created_private_and_removed_whole_but_not_its_parents() {
        let tmp = Tmp::new();
        let dir = tmp.0.join("a/b/run");
        let rt = RuntimeDir::open(&dir, &names()).unwrap();
        assert!(rt.created());
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
        assert_eq!(
            std::fs::metadata(tmp.0.join("a"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700,
            "created parents are private"
        );
        let record = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(
            record,
            format!(
                "{LOCK_HEADER}\npid {}\ncreated-directory\n",
                std::process::id()
            )
        );
        let _listener = populate(&rt, &dir);
        rt.note_existing().unwrap();
        // Each file made is recorded once, with its identity, after the header.
        let record = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        let mut made: Vec<&str> = record
            .lines()
            .skip(3)
            .map(|line| {
                let fields: Vec<&str> = line.splitn(5, ' ').collect();
                assert_eq!(fields.first(), Some(&"made"), "{line}");
                fields[4]
            })
            .collect();
        made.sort_unstable();
        assert_eq!(made, ["console.sock", "pid", "qemu.stderr", "qmp.sock"]);
        // Whatever else lands in a directory hvarch owns goes with it.
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/x"), "x").unwrap();
        let mode = std::fs::symlink_metadata(dir.join("qmp.sock"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "QMP socket mode");
        drop(rt);
        assert!(!dir.exists(), "{:?}", entries(&dir));
        assert!(tmp.0.join("a/b").is_dir(), "parents are left in place");
    }

    #[test]
    fn an_existing_directory_keeps_everything_hvarch_did_not_create() {
        let tmp = Tmp::new();
        let dir = tmp.existing("run");
        std::fs::write(dir.join("disk.img"), "precious").unwrap();
        std::fs::create_dir(dir.join("keep")).unwrap();
        let rt = RuntimeDir::open(&dir, &names()).unwrap();
        assert!(!rt.created());
        let _listener = populate(&rt, &dir);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
            0o755,
            "the mode of a directory hvarch did not create is left alone"
        );
        drop(rt);
        assert_eq!(entries(&dir), ["disk.img", "keep"]);
        assert_eq!(
            std::fs::read_to_string(dir.join("disk.img")).unwrap(),
            "precious"
        );
    }

    #[test]
    fn symlinks_and_non_directories_are_refused() {
        let tmp = Tmp::new();
        let real = tmp.existing("real");
        std::fs::write(real.join("disk.img"), "precious").unwrap();
        let link = tmp.0.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = RuntimeDir::open(&link, &names()).unwrap_err();
        assert!(
            matches!(&err, RuntimeDirError::Symlink { dir } if *dir == link),
            "{err}"
        );
        assert!(err.to_string().contains(link.to_str().unwrap()), "{err}");
        assert_eq!(
            entries(&real),
            ["disk.img"],
            "nothing created through the link"
        );

        let file = tmp.0.join("file");
        std::fs::write(&file, "x").unwrap();
        let err = RuntimeDir::open(&file, &names()).unwrap_err();
        assert!(
            matches!(err, RuntimeDirError::NotADirectory { .. }),
            "{err}"
        );

        for bad in ["/", "a/..", ""] {
            let err = RuntimeDir::open(Path::new(bad), &names()).unwrap_err();
            assert!(
                matches!(err, RuntimeDirError::NoName { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn directories_writable_by_others_or_owned_by_another_user_are_refused() {
        let tmp = Tmp::new();
        for mode in [0o775, 0o757, 0o1777] {
            let dir = tmp.existing(&format!("m{mode:o}"));
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = RuntimeDir::open(&dir, &names()).unwrap_err();
            assert!(
                matches!(&err, RuntimeDirError::Writable { mode: m, .. } if *m == mode),
                "{mode:o}: {err}"
            );
            let text = err.to_string();
            assert!(
                text.contains(dir.to_str().unwrap()) && text.contains("writable"),
                "{text}"
            );
            assert!(
                entries(&dir).is_empty(),
                "no lock file left in a refused directory"
            );
        }
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let foreign = if euid == 0 {
            let dir = tmp.existing("foreign");
            let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
            // SAFETY: chown of a directory this test created.
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
            dir
        } else {
            // A root-owned system directory, refused before anything is created in it.
            PathBuf::from("/usr")
        };
        let err = RuntimeDir::open(&foreign, &names()).unwrap_err();
        assert!(
            matches!(&err, RuntimeDirError::ForeignOwner { euid: e, .. } if *e == euid),
            "{err}"
        );
        assert!(err.to_string().contains(foreign.to_str().unwrap()), "{err}");
    }

    #[test]
    fn a_name_hvarch_would_create_that_exists_is_refused_not_replaced() {
        let tmp = Tmp::new();
        let dir = tmp.existing("run");
        let target = tmp.0.join("target");
        std::fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("qemu.stderr")).unwrap();
        let err = RuntimeDir::open(&dir, &names()).unwrap_err();
        assert!(
            matches!(&err, RuntimeDirError::Occupied { name, kind, .. }
                if name == "qemu.stderr" && *kind == "a symbolic link"),
            "{err}"
        );
        assert!(err.to_string().contains("qemu.stderr"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(
            entries(&dir),
            ["qemu.stderr"],
            "the link stays, no lock file left"
        );

        std::fs::remove_file(dir.join("qemu.stderr")).unwrap();
        std::fs::write(dir.join("pid"), "mine").unwrap();
        let err = RuntimeDir::open(&dir, &names()).unwrap_err();
        assert!(
            matches!(
                &err,
                RuntimeDirError::Occupied {
                    kind: "a regular file",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(dir.join("pid")).unwrap(), "mine");
    }

    #[test]
    fn files_are_created_without_following_a_symlink_planted_after_the_check() {
        let tmp = Tmp::new();
        let dir = tmp.existing("run");
        let rt = RuntimeDir::open(&dir, &names()).unwrap();
        let target = tmp.0.join("target");
        std::fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("qemu.stderr")).unwrap();
        let err = rt.create_file(OsStr::new("qemu.stderr")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        std::fs::remove_file(dir.join("qemu.stderr")).unwrap();
        // The same for the socket: a planted file is not replaced.
        std::fs::write(dir.join("qmp.sock"), "precious").unwrap();
        assert!(rt.bind(OsStr::new("qmp.sock")).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.join("qmp.sock")).unwrap(),
            "precious"
        );
        std::fs::remove_file(dir.join("qmp.sock")).unwrap();
    }

    #[test]
    fn the_directory_is_used_through_its_descriptor_even_if_renamed() {
        let tmp = Tmp::new();
        let dir = tmp.0.join("run");
        let rt = RuntimeDir::open(&dir, &names()).unwrap();
        let moved = tmp.0.join("moved");
        std::fs::rename(&dir, &moved).unwrap();
        // An attacker (or accident) puts another directory at the old path.
        std::fs::create_dir(&dir).unwrap();
        rt.create_file(OsStr::new("qemu.stderr")).unwrap();
        let _listener = rt.bind(OsStr::new("qmp.sock")).unwrap();
        let _client = rt.connect(OsStr::new("qmp.sock")).unwrap();
        assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
        assert!(moved.join("qemu.stderr").exists() && moved.join("qmp.sock").exists());
        std::fs::write(dir.join("theirs"), "x").unwrap();
        drop(rt);
        assert_eq!(
            entries(&dir),
            ["theirs"],
            "the directory now at the path is not ours"
        );
    }

    #[test]
    fn a_second_holder_is_refused_with_the_directory_and_the_pid_then_admitted() {
        let tmp = Tmp::new();
        let dir = tmp.0.join("run");
        let first = RuntimeDir::open(&dir, &names()).unwrap();
        let _listener = populate(&first, &dir);
        let err = RuntimeDir::open(&dir, &names()).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(&err, RuntimeDirError::Locked { dir: d, pid: Some(p) } if *d == dir && *p == pid),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(dir.to_str().unwrap()) && text.contains(&format!("pid {pid}")),
            "{text}"
        );
        // The refused second VM took nothing away from the first.
        assert!(dir.join("qmp.sock").exists() && dir.join("qemu.stderr").exists());
        drop(first);
        let second = RuntimeDir::open(&dir, &names()).unwrap();
        assert!(second.created());
    }

    #[test]
    fn a_copy_of_the_lock_descriptor_does_not_keep_the_directory_locked() {
        let tmp = Tmp::new();
        let dir = tmp.0.join("run");
        let mut first = RuntimeDir::open(&dir, &names()).unwrap();
        // The lock file stays (a removed one would be replaced by a new, unlocked one).
        first.set_remove(false);
        // What a child forked by another thread holds until its exec: the same open file
        // description, which the flock belongs to.
        let lock = first.lock.as_ref().unwrap();
        // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we hold.
        let copy = unsafe { libc::fcntl(lock.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        assert!(copy >= 0);
        // SAFETY: a new descriptor nobody else owns.
        let copy = unsafe { OwnedFd::from_raw_fd(copy) };
        drop(first);
        let second = RuntimeDir::open(&dir, &names());
        assert!(second.is_ok(), "{:?}", second.err());
        drop(copy);
    }

    #[test]
    fn a_lock_file_unlinked_between_open_and_flock_is_not_trusted() {
        let tmp = Tmp::new();
        let dir = tmp.existing("run");
        let first = RuntimeDir::open(&dir, &names()).unwrap();
        // The second opener has the first's lock file open when the first ends (unlinks
        // it and unlocks): its flock then succeeds on a file no longer in the directory.
        let slot = std::sync::Arc::new(Mutex::new(Some(first)));
        let inside = std::sync::Arc::clone(&slot);
        BEFORE_FLOCK.lock().unwrap().push((
            dir.clone(),
            Box::new(move || drop(inside.lock().unwrap().take())),
        ));
        let second = RuntimeDir::open(&dir, &names()).unwrap();
        assert!(slot.lock().unwrap().is_none(), "the hook ran");
        let lock = second.lock.as_ref().unwrap();
        let named =
            std::fs::symlink_metadata(dir.join(LOCK_FILE)).expect("a lock file at the path");
        let held = lock.metadata().unwrap();
        assert_eq!(
            (named.dev(), named.ino()),
            (held.dev(), held.ino()),
            "the lock held is the one named"
        );
        // And it excludes a third.
        assert!(matches!(
            RuntimeDir::open(&dir, &names()),
            Err(RuntimeDirError::Locked { .. })
        ));
    }

    #[test]
    fn leftovers_of_a_killed_hvarch_are_removed_by_the_next_and_only_they() {
        let tmp = Tmp::new();
        let dir = tmp.existing("run");
        std::fs::write(dir.join("disk.img"), "precious").unwrap();
        left_by_a_killed_hvarch(&dir, true);
        assert_eq!(
            entries(&dir),
            [
                "console.sock",
                "disk.img",
                LOCK_FILE,
                "pid",
                "qemu.stderr",
                "qmp.sock"
            ]
        );
        let rt = RuntimeDir::open(&dir, &names()).unwrap();
        assert_eq!(
            entries(&dir),
            ["disk.img", LOCK_FILE],
            "leftovers gone before the launch"
        );
        let _listener = populate(&rt, &dir);
        drop(rt);
        assert_eq!(entries(&dir), ["disk.img"]);
    }

    /// Leaves `dir` as a VM's hvarch killed there leaves it: every file it and QEMU created, and
    /// its record, the lock released; `qemu_ready`: killed after QEMU's files were recorded.
    fn left_by_a_killed_hvarch(dir: &Path, qemu_ready: bool) {
        let mut rt = RuntimeDir::open(dir, &names()).unwrap();
        let _listener = populate(&rt, dir);
        if qemu_ready {
            rt.note_existing().unwrap();
        }
        rt.set_remove(false);
        drop(rt);
    }

    /// A killed hvarch's record names its files by identity: one replaced since (someone else's
    /// file under the same name) is not its any more, and stays.
    #[test]
    fn a_leftover_replaced_since_is_not_removed() {
        let tmp = Tmp::new();
        let dir = tmp.existing("run");
        left_by_a_killed_hvarch(&dir, true);
        // Kept under another name, so that the new file cannot reuse its inode number (the
        // birth time tells a reused one apart: `an_identity_differs_by_birth_time`).
        std::fs::rename(dir.join("qemu.stderr"), dir.join("old.stderr")).unwrap();
        std::fs::write(dir.join("qemu.stderr"), "my own log").unwrap();
        let err = RuntimeDir::open(&dir, &names()).unwrap_err();
        assert!(
            matches!(&err, RuntimeDirError::Occupied { name, .. } if name == "qemu.stderr"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("qemu.stderr")).unwrap(),
            "my own log"
        );
        assert_eq!(
            entries(&dir),
            ["old.stderr", "qemu.stderr"],
            "the other leftovers removed, the lock file of the refused open too"
        );
    }

    /// hvarch killed before QEMU was ready: the files QEMU made have no recorded identity, so
    /// nothing proves they are leftovers; they stay, and a VM that needs the name is refused.
    #[test]
    fn a_leftover_without_a_recorded_identity_is_not_removed() {
        let tmp = Tmp::new();
        let dir = tmp.existing("run");
        left_by_a_killed_hvarch(&dir, false);
        let err = RuntimeDir::open(&dir, &names()).unwrap_err();
        assert!(
            matches!(&err, RuntimeDirError::Occupied { name, .. } if name == "console.sock"),
            "{err}"
        );
        assert_eq!(entries(&dir), ["console.sock", "pid"]);
        assert_eq!(std::fs::read_to_string(dir.join("pid")).unwrap(), "1\n");
    }

    #[test]
    fn an_identity_differs_by_birth_time() {
        let made = Identity {
            dev: (8, 1),
            ino: 42,
            born: Some((1_700_000_000, 5)),
        };
        assert!(made.proves(&made));
        let reused = Identity {
            born: Some((1_700_000_001, 5)),
            ..made
        };
        assert!(!made.proves(&reused), "an inode number reused later");
        assert!(!made.proves(&Identity { ino: 43, ..made }));
        assert!(!made.proves(&Identity {
            dev: (8, 2),
            ..made
        }));
    }

    #[test]
    fn a_record_line_cut_short_is_not_read() {
        let record = b"header\nmade 8:1 2 3.4 a\nmade 8:1 5 6.7 b";
        let lines: Vec<&[u8]> = record_lines(record).collect();
        assert_eq!(lines, [&b"made 8:1 2 3.4 a"[..]]);
        assert_eq!(record_lines(b"header only").count(), 0);
        for bad in [
            "",
            "8:1",
            "8:1 2",
            "8:1 2 3.4",
            "8:1 2 3.4 ",
            "8 2 3.4 a",
            "8:x 2 3.4 a",
            "8:1 -2 3.4 a",
            "8:1 2 3 a",
            "8:1 2 3.x a",
        ] {
            assert_eq!(Made::parse(bad.as_bytes()), None, "{bad:?}");
        }
        let unknown = Made::parse(b"8:1 2 - a").expect("an unknown birth time");
        assert_eq!(unknown.identity.born, None);
        assert!(
            !unknown.identity.proves(&unknown.identity),
            "nothing proves it"
        );
    }

    proptest! {
        #[test]
        fn a_made_line_reads_back_as_written(
            name in "[^/\n\u{0}]{1,40}",
            dev in any::<(u32, u32)>(),
            ino in any::<u64>(),
            born in proptest::option::of(any::<(i64, u32)>()),
        ) {
            let made = Made { name: OsString::from(&name), identity: Identity { dev, ino, born } };
            let mut text = b"header\n".to_vec();
            made.write(&mut text);
            let lines: Vec<&[u8]> = record_lines(&text).collect();
            prop_assert_eq!(lines.len(), 1);
            let rest = lines[0].strip_prefix(MADE_PREFIX.as_bytes()).expect("prefix");
            prop_assert_eq!(Made::parse(rest), Some(made));
        }
    }

    #[test]
    fn a_directory_an_earlier_hvarch_created_is_owned_again_only_if_it_holds_only_leftovers() {
        let tmp = Tmp::new();
        let dir = tmp.0.join("run");
        left_by_a_killed_hvarch(&dir, true);
        let rt = RuntimeDir::open(&dir, &names()).unwrap();
        assert!(rt.created(), "only leftovers: owned whole again");
        let mut rt = rt;
        rt.set_remove(false);
        drop(rt);
        // Someone put a file of theirs there meanwhile: the directory is no longer ours.
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let rt = RuntimeDir::open(&dir, &names()).unwrap();
        assert!(!rt.created());
        drop(rt);
        assert_eq!(entries(&dir), ["notes.txt"]);
    }

    #[test]
    fn a_lock_file_that_is_not_hvarchs_is_refused_and_left_alone() {
        let tmp = Tmp::new();
        let dir = tmp.existing("run");
        std::fs::write(dir.join(LOCK_FILE), "my own notes").unwrap();
        let err = RuntimeDir::open(&dir, &names()).unwrap_err();
        assert!(matches!(err, RuntimeDirError::NotALockFile { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
            "my own notes"
        );

        std::fs::remove_file(dir.join(LOCK_FILE)).unwrap();
        // The link's target is the test's own file: a broken O_NOFOLLOW must not be able to
        // damage anything else (the test may run as root).
        let target = tmp.0.join("target");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(LOCK_FILE)).unwrap();
        let err = RuntimeDir::open(&dir, &names()).unwrap_err();
        assert!(matches!(err, RuntimeDirError::NotALockFile { .. }), "{err}");
        assert!(std::fs::symlink_metadata(dir.join(LOCK_FILE))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"",
            "nothing written through the link"
        );
    }

    #[test]
    fn a_record_cannot_make_hvarch_remove_outside_the_directory() {
        let tmp = Tmp::new();
        let dir = tmp.existing("run");
        // Only the test's own files are named: a broken check must not be able to remove
        // anything else (the test may run as root).
        let outside = tmp.0.join("outside");
        let absolute = tmp.0.join("absolute");
        std::fs::write(&outside, "precious").unwrap();
        std::fs::write(&absolute, "precious").unwrap();
        // With their true identities: only the name check stands between them and removal.
        let mut record = format!("{LOCK_HEADER}\npid 1\n").into_bytes();
        for (path, name) in [
            (&outside, "../outside".to_owned()),
            (&absolute, absolute.display().to_string()),
            (&tmp.0, "..".to_owned()),
        ] {
            let identity = identity_at(libc::AT_FDCWD, path.as_os_str())
                .unwrap()
                .unwrap();
            Made {
                name: name.into(),
                identity,
            }
            .write(&mut record);
        }
        std::fs::write(dir.join(LOCK_FILE), record).unwrap();
        let rt = RuntimeDir::open(&dir, &names()).unwrap();
        drop(rt);
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&absolute).unwrap(), "precious");
        assert!(entries(&dir).is_empty());
    }

    #[test]
    fn names_must_be_plain() {
        let tmp = Tmp::new();
        for bad in ["a/b", "", ".", "..", "a\nb"] {
            let err = RuntimeDir::open(&tmp.0.join("run"), &[OsString::from(bad)]).unwrap_err();
            assert!(
                matches!(err, RuntimeDirError::BadName { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(
            !tmp.0.join("run").exists(),
            "refused before anything is created"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever a user keeps in an existing directory survives a VM's whole life there,
        /// byte for byte; a name hvarch would use is refused and survives too.
        #[test]
        fn user_files_survive(
            files in proptest::collection::btree_map(
                prop_oneof![
                    4 => "[a-z][a-z.]{0,11}",
                    1 => proptest::sample::select(vec!["qmp.sock", "qemu.stderr", "console.sock", "pid"])
                        .prop_map(str::to_owned),
                ],
                proptest::collection::vec(any::<u8>(), 0..64),
                0..6,
            ),
            remove in any::<bool>(),
        ) {
            let tmp = Tmp::new();
            let dir = tmp.existing("run");
            for (name, data) in &files {
                std::fs::write(dir.join(name), data).unwrap();
            }
            let clash = files.keys().any(|n| names().iter().any(|r| r == n.as_str()));
            match RuntimeDir::open(&dir, &names()) {
                Ok(mut rt) => {
                    prop_assert!(!clash);
                    let _listener = populate(&rt, &dir);
                    // QEMU is ready: what it created is recorded too.
                    rt.note_existing().unwrap();
                    rt.set_remove(remove);
                    drop(rt);
                    if !remove {
                        // The next VM cleans up after one that left its files.
                        drop(RuntimeDir::open(&dir, &names()).unwrap());
                    }
                }
                Err(e) => prop_assert!(clash, "{}", e),
            }
            let mut expected: Vec<String> = files.keys().cloned().collect();
            expected.sort();
            prop_assert_eq!(entries(&dir), expected);
            for (name, data) in &files {
                prop_assert_eq!(&std::fs::read(dir.join(name)).unwrap(), data);
            }
        }
    }
}
