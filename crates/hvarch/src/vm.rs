//! [`Vm`]: a running QEMU, launched without polling and always cleaned up.
//!
//! # Launch
//!
//! [`Vm::launch`] creates the runtime directory (mode 0700), binds and listens on the QMP
//! socket itself (mode 0600), connects the client to it, and only then starts QEMU with the
//! listening descriptor (`-chardev socket,id=qmp,fd=3,server=on,wait=off -mon …`). The client's
//! connection waits in the socket's backlog, so the greeting arrives the moment QEMU is ready:
//! nobody polls for a socket file. If QEMU fails to start, its last listening reference goes
//! away with it, the pending connection ends, and the launch error carries QEMU's stderr.
//!
//! # Lifetime
//!
//! The child is QEMU itself (no shell, no `-daemonize`). [`Vm::shutdown`] asks the guest to
//! power off, then quits QEMU, then kills it; dropping a [`Vm`] kills and reaps the child and
//! removes the runtime directory, so a panicking test leaves no process and no socket behind.

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hvarch_devices::config::{MonitorEndpoint, MonitorMode};
use hvarch_devices::fd::{FdArg, FdTable};
use hvarch_devices::part::Syntax;
use hvarch_qmp::{Event, EventFilter, Qmp};
use serde_json::json;

use crate::assemble::{Assembled, RuntimePaths};
use crate::spawn::map_fds;
use crate::QemuArch;

/// What can go wrong while launching, driving or stopping a [`Vm`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// The VM could not be assembled (a spec or configuration problem).
    #[error(transparent)]
    Assembly(#[from] crate::Error),
    /// A host operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. "create runtime dir /run/hvarch/vm0".
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU did not start, or exited before it was ready.
    #[error("QEMU failed to start: {reason}{}", stderr_suffix(.stderr))]
    Launch {
        /// What went wrong.
        reason: String,
        /// What QEMU wrote to stderr (often the real cause, e.g. a refused option).
        stderr: String,
    },
    /// A QMP exchange failed.
    #[error(transparent)]
    Qmp(#[from] hvarch_qmp::Error),
    /// QEMU is no longer running.
    #[error("QEMU is not running ({status})")]
    NotRunning {
        /// How it ended.
        status: String,
    },
    /// The guest reported a failure (`query-status`: `guest-panicked` or `internal-error`).
    #[error("guest failure: {status}")]
    GuestFailure {
        /// QEMU's run state.
        status: String,
    },
    /// A hot plug or unplug failed (see [`crate::hotplug`]); a failed hot plug has been
    /// undone.
    #[error(transparent)]
    Hotplug(#[from] crate::hotplug::HotplugError),
    /// A save or restore (migration) failed, or did not complete within the arch's
    /// migration timeout (see [`crate::lifecycle`]).
    #[error("migration failed: {reason}")]
    Migration {
        /// What went wrong (QEMU's `error-desc` when it gave one).
        reason: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("; QEMU said: {trimmed}")
    }
}

/// The result type of VM operations.
pub type VmResult<T> = std::result::Result<T, VmError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

/// How to launch.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The QMP client's settings; `greeting_timeout` bounds the whole start (exec to
    /// negotiated QMP).
    pub qmp: hvarch_qmp::Config,
    /// Argument syntax for devices and objects.
    pub syntax: Syntax,
    /// Extra arguments appended after the generated ones.
    pub extra_args: Vec<String>,
    /// Remove the runtime directory when the `Vm` is dropped (default true).
    pub remove_runtime_dir: bool,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            qmp: hvarch_qmp::Config::default(),
            syntax: Syntax::Options,
            extra_args: Vec::new(),
            remove_runtime_dir: true,
        }
    }
}

/// A running QEMU and its QMP connection.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    exit: Option<ExitStatus>,
    qmp: Qmp,
    assembled: Assembled,
    hotplug: crate::hotplug::HotplugState,
    stderr_path: PathBuf,
    remove_runtime_dir: bool,
    stopped: bool,
}

impl Vm {
    /// Starts `assembled` and returns once QMP is negotiated (see the module docs).
    ///
    /// The assembled configuration's first QMP monitor is served on a socket hvarch binds
    /// itself at [`RuntimePaths::qmp`]; other monitors stay as configured. A configuration
    /// asking for `-daemonize` is refused: the `Vm` must be QEMU's parent to reap it.
    pub fn launch(mut assembled: Assembled, options: LaunchOptions) -> VmResult<Vm> {
        if assembled.config.knobs.daemonize {
            return Err(VmError::Launch {
                reason: "`daemonize` cannot be used with Vm::launch: the Vm reaps QEMU itself"
                    .into(),
                stderr: String::new(),
            });
        }
        let paths = assembled.paths.clone();
        create_private_dir(&paths.dir)?;
        // Armed from here: any failure below removes the runtime dir (and its socket).
        let mut guard = ChildGuard {
            child: None,
            dir: paths.dir.clone(),
            remove: options.remove_runtime_dir,
            armed: true,
        };
        let listener = bind_qmp(&paths.qmp)?;
        let client = UnixStream::connect(&paths.qmp)
            .map_err(io(format!("connect to {}", paths.qmp.display())))?;
        let listener_fd = FdArg::from(OwnedFd::from(listener));
        let monitor_index = attach_qmp_fd(&mut assembled, listener_fd);

        let mut fds = FdTable::new();
        let mut args = assembled.args(options.syntax, &mut fds)?;
        args.extend(options.extra_args.iter().cloned());
        let stderr_path = paths.dir.join("qemu.stderr");
        let stderr = fs::File::create(&stderr_path)
            .map_err(io(format!("create {}", stderr_path.display())))?;
        let mut command = Command::new(&assembled.qemu_path);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        map_fds(&mut command, &fds);
        tracing::debug!(qemu = %assembled.qemu_path.display(), ?args, "launching QEMU");
        let started = Instant::now();
        let child = command.spawn().map_err(|e| VmError::Launch {
            reason: format!("cannot execute {}: {e}", assembled.qemu_path.display()),
            stderr: String::new(),
        })?;
        // Only QEMU holds the listening socket now: if it dies, the pending connection ends.
        drop(fds);
        // Keep the configuration describing the socket, not a descriptor that is gone.
        if let Some(monitor) = assembled.config.monitors.get_mut(monitor_index) {
            monitor.endpoint = MonitorEndpoint::Path(paths.qmp.clone());
        }
        guard.child = Some(child);
        let qmp = match Qmp::from_stream(client, &options.qmp) {
            Ok(qmp) => qmp,
            Err(e) => {
                let status = guard
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                let reason = match status {
                    Some(status) => format!("QEMU exited ({status}) before QMP was ready"),
                    None => format!("QMP not ready: {e}"),
                };
                let stderr = read_to_string(&stderr_path);
                return Err(VmError::Launch { reason, stderr });
            }
        };
        let child = guard.child.take().ok_or_else(|| VmError::Launch {
            reason: "the QEMU child was lost during launch".into(),
            stderr: String::new(),
        })?;
        guard.armed = false;
        tracing::info!(pid = child.id(), elapsed = ?started.elapsed(), "QEMU ready");
        Ok(Vm {
            child,
            exit: None,
            qmp,
            hotplug: crate::hotplug::HotplugState::new(&assembled),
            assembled,
            stderr_path,
            remove_runtime_dir: options.remove_runtime_dir,
            stopped: false,
        })
    }

    /// The QMP client.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The runtime files (sockets, pidfile).
    pub fn paths(&self) -> &RuntimePaths {
        &self.assembled.paths
    }

    /// The assembled VM this was launched from (its configuration and backend).
    pub fn assembled(&self) -> &Assembled {
        &self.assembled
    }

    /// The arch backend (bridge slot state lives here).
    pub fn arch(&self) -> &dyn QemuArch {
        self.assembled.arch.as_ref()
    }

    /// The arch backend, mutable (to take or free bridge slots).
    pub fn arch_mut(&mut self) -> &mut dyn QemuArch {
        self.assembled.arch.as_mut()
    }

    /// The hotplug engine over this VM's QMP client, arch backend (bridge slots) and
    /// hotplug state (root ports, plugged devices): `vm.hotplug().add_block(…)`.
    pub fn hotplug(&mut self) -> crate::hotplug::Hotplugger<'_> {
        crate::hotplug::Hotplugger::new(&self.qmp, self.assembled.arch.as_mut(), &mut self.hotplug)
    }

    /// What is hot-plugged, and the free root ports.
    pub fn hotplug_state(&self) -> &crate::hotplug::HotplugState {
        &self.hotplug
    }

    /// Replaces the hotplug state (a restore).
    pub(crate) fn set_hotplug_state(&mut self, state: crate::hotplug::HotplugState) {
        self.hotplug = state;
    }

    /// What QEMU has written to stderr so far.
    pub fn stderr(&self) -> String {
        read_to_string(&self.stderr_path)
    }

    /// QEMU's exit status, if it has exited.
    pub fn try_wait(&mut self) -> VmResult<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().map_err(io("wait for QEMU"))?;
        }
        Ok(self.exit)
    }

    /// Waits up to `timeout` for QEMU to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> VmResult<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Pauses the vCPUs (`stop`).
    pub fn pause(&self) -> VmResult<()> {
        self.qmp.execute_raw("stop", json!({}))?;
        Ok(())
    }

    /// Resumes the vCPUs (`cont`).
    pub fn resume(&self) -> VmResult<()> {
        self.qmp.execute_raw("cont", json!({}))?;
        Ok(())
    }

    /// QEMU's run state (`query-status`), e.g. `running`, `paused`, `prelaunch`.
    pub fn status(&self) -> VmResult<String> {
        let reply = self.qmp.execute_raw("query-status", json!({}))?;
        Ok(reply
            .get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("unknown")
            .to_owned())
    }

    /// Checks the guest is healthy (Kata's `check`): an error if QEMU reports
    /// `guest-panicked` or `internal-error`.
    pub fn check(&self) -> VmResult<()> {
        let status = self.status()?;
        if status == "guest-panicked" || status == "internal-error" {
            return Err(VmError::GuestFailure { status });
        }
        Ok(())
    }

    /// Stops the VM, gracefully if possible, within about `grace` plus a few seconds:
    /// `system_powerdown` and a wait for QEMU to exit (or, with `-no-shutdown`, for the
    /// guest's `SHUTDOWN`), then `quit`, then SIGKILL. Idempotent: later calls return the
    /// first outcome's status.
    pub fn shutdown(&mut self, grace: Duration) -> VmResult<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            self.qmp.close();
            return Ok(status);
        }
        if !self.stopped {
            self.stopped = true;
            let shutdown = self.qmp.subscribe_filtered(EventFilter::name("SHUTDOWN"));
            // Bounded like `quit` below: a hung QEMU must not hold us for the command timeout.
            let powerdown = self.qmp.execute_with_timeout(
                &hvarch_qmp::Command::bare("system_powerdown"),
                grace.max(Duration::from_millis(100)),
            );
            if powerdown.is_ok() {
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline {
                    if self.try_wait()?.is_some() {
                        break;
                    }
                    if shutdown.try_recv().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if self.try_wait()?.is_none() {
                // `quit` may lose the race with an exiting QEMU; the wait below decides.
                let _ = self.qmp.execute_with_timeout(
                    &hvarch_qmp::Command::bare("quit"),
                    Duration::from_secs(2),
                );
                let _ = self.wait_timeout(Duration::from_secs(3))?;
            }
        }
        self.qmp.close();
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        tracing::warn!(pid = self.pid(), "QEMU ignored quit; killing it");
        self.child.kill().map_err(io("kill QEMU"))?;
        let status = self.child.wait().map_err(io("reap QEMU"))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Waits for the first event matching `filter` (a convenience over [`Vm::qmp`]).
    pub fn wait_event(&self, filter: &EventFilter, timeout: Duration) -> VmResult<Event> {
        Ok(self.qmp.wait_event(filter, timeout)?)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.qmp.close();
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.remove_runtime_dir {
            let _ = fs::remove_dir_all(&self.assembled.paths.dir);
        }
    }
}

/// Owns the runtime dir, then the child, while the launch is not complete: a failed launch
/// kills and reaps the child (if it was started) and removes the runtime dir.
struct ChildGuard {
    child: Option<Child>,
    dir: PathBuf,
    remove: bool,
    /// Cleared once the `Vm` owns everything.
    armed: bool,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.remove {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Creates `dir` (and parents) and makes it private (0700).
fn create_private_dir(dir: &Path) -> VmResult<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("create runtime dir {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod 0700 {}", dir.display())))
}

/// Binds and listens on `path` (replacing a stale socket), mode 0600.
fn bind_qmp(path: &Path) -> VmResult<UnixListener> {
    if fs::symlink_metadata(path).is_ok() {
        fs::remove_file(path).map_err(io(format!("remove stale {}", path.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io(format!("bind QMP socket {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod 0600 {}", path.display())))?;
    Ok(listener)
}

/// Serves the first QMP monitor on `fd` (adding one if the configuration has none); returns
/// the monitor's index.
fn attach_qmp_fd(assembled: &mut Assembled, fd: FdArg) -> usize {
    let monitors = &mut assembled.config.monitors;
    match monitors.iter().position(|m| m.mode == MonitorMode::Control) {
        Some(index) => {
            monitors[index].endpoint = MonitorEndpoint::Fd(fd);
            index
        }
        None => {
            monitors.push(hvarch_devices::config::Monitor::qmp(
                "qmp",
                MonitorEndpoint::Fd(fd),
            ));
            monitors.len() - 1
        }
    }
}

fn read_to_string(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}
