//! [`Vm`]: a running QEMU, launched without polling and always cleaned up.
//!
//! # Launch
//!
//! [`Vm::launch`] opens the runtime directory first (see [`crate::runtime_dir`]: created
//! 0700 by hvarch, or an existing private directory of the effective uid; locked against a
//! second VM), binds and listens on the QMP socket inside it (mode 0600), connects the client
//! to it, and only then starts QEMU with the listening descriptor (`-chardev
//! socket,id=qmp,fd=3,server=on,wait=off -mon …`). The client's connection waits in the
//! socket's backlog, so the greeting arrives the moment QEMU is ready: nobody polls for a
//! socket file. If QEMU fails to start, its last listening reference goes away with it, the
//! pending connection ends, and the launch error carries QEMU's stderr.
//!
//! QEMU receives only the descriptors the launch plan maps, runs in its own process group (a
//! terminal's Ctrl-C reaches the embedding process, not QEMU) and dies with the embedding
//! process (`PR_SET_PDEATHSIG`, from a spawner thread that lives as long as the process, since
//! the kernel sends that signal when the thread that forked exits).
//!
//! # Lifetime
//!
//! The child is QEMU itself (no shell, no `-daemonize`). [`Vm::shutdown`] asks the guest to
//! power off, then quits QEMU, then kills it, and reports which of them ended the VM
//! ([`ShutdownOutcome`]). Dropping a [`Vm`] kills and reaps the child and removes what hvarch
//! created in the runtime directory, so a panicking test leaves no process and no socket
//! behind.
//!
//! # Timeouts
//!
//! A timeout too large to add to the current time (`Duration::MAX`) means "no deadline":
//! every method taking a duration waits as long as it takes instead of panicking.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hvarch_devices::config::{Monitor, MonitorEndpoint, MonitorMode};
use hvarch_devices::fd::{FdArg, FdTable};
use hvarch_devices::part::Syntax;
use hvarch_qmp::{Event, EventFilter, EventSubscription, Qmp};
use serde_json::json;

use crate::assemble::{Assembled, RuntimePaths};
use crate::runtime_dir::{read_from_start, RuntimeDir, RuntimeDirError};
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
        /// What was being done, e.g. "bind QMP socket /run/hvarch/vm0/qmp.sock".
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime directory was refused (a symlink, another user's, writable by others,
    /// locked by another VM, holding a file hvarch would replace) or could not be set up.
    #[error(transparent)]
    RuntimeDir(#[from] RuntimeDirError),
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
    /// Extra monitors (QMP or HMP) beside the one hvarch drives, rendered by the device model
    /// like every other option (a path holding `,` or `=` cannot inject options). A socket
    /// path directly inside the runtime directory is one of the files hvarch removes.
    pub monitors: Vec<Monitor>,
    /// Extra arguments appended after the generated ones.
    pub extra_args: Vec<String>,
    /// Remove what hvarch created when the `Vm` ends (default true): the runtime directory
    /// itself if hvarch created it, else only the files hvarch (or QEMU, for it) created in
    /// it. Never anything else: see [`crate::runtime_dir`]. `false` leaves those files
    /// (QEMU's stderr, for debugging); the next VM on the directory removes them.
    pub remove_runtime_dir: bool,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            qmp: hvarch_qmp::Config::default(),
            syntax: Syntax::Options,
            monitors: Vec::new(),
            extra_args: Vec::new(),
            remove_runtime_dir: true,
        }
    }
}

/// A point in time a wait gives up at; none when the timeout does not fit an [`Instant`]
/// (`Duration::MAX`): overflow means "no deadline", never a panic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// `timeout` from now.
    pub(crate) fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now().checked_add(timeout))
    }

    /// The time left (zero once passed); `None` when there is no deadline.
    pub(crate) fn remaining(self) -> Option<Duration> {
        self.0
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }
}

/// The least time `system_powerdown` is given to be answered, even with a zero grace.
const POWERDOWN_MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// How long `quit` is given to be answered.
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long QEMU is given to exit after `quit` (or after the guest powered off).
const EXIT_TIMEOUT: Duration = Duration::from_secs(3);
/// A bound on reading the events QEMU sent before it exited (they are already in the
/// socket: the wait ends as soon as the reader reaches the end of the stream).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What ended a VM: the rung of [`Vm::shutdown`]'s ladder, or what else did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndedBy {
    /// The guest powered off (QEMU's `SHUTDOWN` reason `guest-shutdown`): after
    /// `system_powerdown`, or on its own. QEMU may have been quit afterwards (under
    /// `-no-shutdown` it waits for that).
    PoweredOff,
    /// The guest reset (a reboot, or a panic with `panic=N`), which `-no-reboot` turns into
    /// an exit (`SHUTDOWN` reason `guest-reset`).
    GuestReset,
    /// The guest panicked and the panic action stopped it (`SHUTDOWN` reason `guest-panic`).
    GuestPanicked,
    /// The guest did not power off within the grace period: QEMU obeyed hvarch's `quit`.
    Quit,
    /// QEMU did not obey `quit` either: hvarch killed it (SIGKILL).
    Killed,
    /// Nothing hvarch did: QEMU died from a signal hvarch did not send (its status says
    /// which, or its `SHUTDOWN` reason is `host-signal` when QEMU caught it), was quit by
    /// another monitor, or failed.
    Other,
}

impl EndedBy {
    /// Classifies an end from QEMU's first `SHUTDOWN` reason and the last rung hvarch took.
    fn classify(reason: Option<&str>, rung: Rung) -> EndedBy {
        match (reason, rung) {
            (Some("guest-shutdown"), _) => EndedBy::PoweredOff,
            (Some("guest-reset"), _) => EndedBy::GuestReset,
            (Some("guest-panic"), _) => EndedBy::GuestPanicked,
            (_, Rung::Kill) => EndedBy::Killed,
            (None | Some("host-qmp-quit"), Rung::Quit) => EndedBy::Quit,
            _ => EndedBy::Other,
        }
    }
}

/// The rungs of the shutdown ladder, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rung {
    /// hvarch asked nothing (QEMU had ended already).
    None,
    /// `system_powerdown`.
    PowerDown,
    /// `quit`.
    Quit,
    /// SIGKILL.
    Kill,
}

/// How a VM ended, as [`Vm::shutdown`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownOutcome {
    /// QEMU's exit status. (QEMU exits 0 when it is quit, and also when it catches SIGTERM,
    /// SIGINT or SIGHUP: read [`ShutdownOutcome::ended_by`] to know what happened.)
    pub status: ExitStatus,
    /// What ended the VM.
    pub ended_by: EndedBy,
    /// The `reason` of QEMU's first `SHUTDOWN` event (`guest-shutdown`, `host-qmp-quit`,
    /// `host-signal`, …), when it sent one.
    pub reason: Option<String>,
}

impl ShutdownOutcome {
    /// Whether the guest powered off (the only clean end of a running guest).
    pub fn powered_off(&self) -> bool {
        self.ended_by == EndedBy::PoweredOff
    }
}

impl fmt::Display for ShutdownOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status;
        match self.ended_by {
            EndedBy::PoweredOff => write!(f, "the guest powered off; QEMU exited ({status})"),
            EndedBy::GuestReset => write!(
                f,
                "the guest reset (a reboot or a panic), and QEMU exited instead of rebooting \
                 ({status})"
            ),
            EndedBy::GuestPanicked => write!(f, "the guest panicked; QEMU exited ({status})"),
            EndedBy::Quit => write!(
                f,
                "the guest did not power off in time: QEMU was told to quit ({status})"
            ),
            EndedBy::Killed => write!(
                f,
                "the guest did not power off and QEMU did not quit: hvarch killed it ({status})"
            ),
            EndedBy::Other => match (status.signal(), self.reason.as_deref()) {
                (Some(_), _) => write!(
                    f,
                    "QEMU was killed by a signal hvarch did not send ({status})"
                ),
                (None, Some("host-signal")) => write!(
                    f,
                    "QEMU was stopped by a signal hvarch did not send (SHUTDOWN reason \
                     host-signal; {status})"
                ),
                (None, Some(reason)) => write!(
                    f,
                    "QEMU ended without hvarch asking (SHUTDOWN reason {reason}; {status})"
                ),
                (None, None) => write!(f, "QEMU ended without hvarch asking ({status})"),
            },
        }
    }
}

/// A running QEMU and its QMP connection.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    exit: Option<ExitStatus>,
    qmp: Qmp,
    /// QEMU's `SHUTDOWN` events, from launch on.
    shutdown_events: EventSubscription,
    /// The reason of the first `SHUTDOWN` event.
    shutdown_reason: Option<String>,
    assembled: Assembled,
    hotplug: crate::hotplug::HotplugState,
    /// Every `DEVICE_DELETED` since launch, drained by each hotplug call.
    deleted: EventSubscription,
    /// QEMU's stderr (a descriptor of the file it writes, read from the start).
    stderr: File,
    /// The first shutdown's outcome (later calls return it).
    outcome: Option<ShutdownOutcome>,
    /// Dropped last: cleaned once QEMU is gone.
    runtime: RuntimeDir,
}

impl Vm {
    /// Starts `assembled` and returns once QMP is negotiated (see the module docs).
    ///
    /// The assembled configuration's first QMP monitor is served on a socket hvarch binds
    /// itself at [`RuntimePaths::qmp`]; other monitors stay as configured, and
    /// [`LaunchOptions::monitors`] are added after them. A configuration asking for
    /// `-daemonize` is refused: the `Vm` must be QEMU's parent to reap it.
    ///
    /// Errors: [`VmError::RuntimeDir`] when the runtime directory is refused (see
    /// [`crate::runtime_dir`]), [`VmError::Launch`] when QEMU does not start or never
    /// greets. On error nothing is left: no process, and nothing hvarch created.
    pub fn launch(mut assembled: Assembled, options: LaunchOptions) -> VmResult<Vm> {
        if assembled.config.knobs.daemonize {
            return Err(VmError::Launch {
                reason: "`daemonize` cannot be used with Vm::launch: the Vm reaps QEMU itself"
                    .into(),
                stderr: String::new(),
            });
        }
        let paths = assembled.paths.clone();
        let qmp_name = name_in(&paths, &paths.qmp, "paths.qmp")?;
        let stderr_name = name_in(&paths, &paths.stderr, "paths.stderr")?;
        let mut runtime = RuntimeDir::open(&paths.dir, &runtime_names(&assembled, &options))?;
        runtime.set_remove(options.remove_runtime_dir);
        let listener = runtime
            .bind(&qmp_name)
            .map_err(io(format!("bind QMP socket {}", paths.qmp.display())))?;
        let client = runtime
            .connect(&qmp_name)
            .map_err(io(format!("connect to {}", paths.qmp.display())))?;
        let listener_fd = FdArg::from(OwnedFd::from(listener));
        let monitor_index = attach_qmp_fd(&mut assembled, listener_fd);
        assembled
            .config
            .monitors
            .extend(options.monitors.iter().cloned());

        let mut fds = FdTable::new();
        let mut args = assembled.args(options.syntax, &mut fds)?;
        args.extend(options.extra_args.iter().cloned());
        let stderr = runtime
            .create_file(&stderr_name)
            .map_err(io(format!("create {}", paths.stderr.display())))?;
        let stderr_reader = stderr
            .try_clone()
            .map_err(io(format!("duplicate {}", paths.stderr.display())))?;
        let mut command = Command::new(&assembled.qemu_path);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        tracing::debug!(qemu = %assembled.qemu_path.display(), ?args, "launching QEMU");
        let started = Instant::now();
        let child = crate::spawn::spawn(command, &fds).map_err(|e| VmError::Launch {
            reason: format!("cannot execute {}: {e}", assembled.qemu_path.display()),
            stderr: read_from_start(&stderr_reader),
        })?;
        // Only QEMU holds the listening socket now: if it dies, the pending connection ends.
        drop(fds);
        // Armed from here: a failure below kills and reaps QEMU; `runtime` (declared
        // before, so dropped after) then removes what hvarch created.
        let mut guard = ChildGuard(Some(child));
        // Keep the configuration describing the socket, not a descriptor that is gone.
        if let Some(monitor) = assembled.config.monitors.get_mut(monitor_index) {
            monitor.endpoint = MonitorEndpoint::Path(paths.qmp.clone());
        }
        let qmp = match Qmp::from_stream(client, &options.qmp) {
            Ok(qmp) => qmp,
            Err(e) => {
                let status = guard.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
                let reason = match status {
                    Some(status) => format!("QEMU exited ({status}) before QMP was ready"),
                    None => format!("QMP not ready: {e}"),
                };
                let stderr = read_from_start(&stderr_reader);
                return Err(VmError::Launch { reason, stderr });
            }
        };
        let shutdown_events = qmp.subscribe_filtered(EventFilter::name("SHUTDOWN"));
        let shutdown_reason = qmp
            .take_early_events()
            .iter()
            .find(|e| e.name == "SHUTDOWN")
            .and_then(shutdown_reason);
        let child = guard.0.take().ok_or_else(|| VmError::Launch {
            reason: "the QEMU child was lost during launch".into(),
            stderr: String::new(),
        })?;
        tracing::info!(pid = child.id(), elapsed = ?started.elapsed(), "QEMU ready");
        Ok(Vm {
            child,
            exit: None,
            deleted: qmp.subscribe_filtered(EventFilter::name("DEVICE_DELETED")),
            qmp,
            shutdown_events,
            shutdown_reason,
            hotplug: crate::hotplug::HotplugState::new(&assembled),
            assembled,
            stderr: stderr_reader,
            outcome: None,
            runtime,
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

    /// Whether hvarch created the runtime directory, and so removes it whole when the VM
    /// ends (otherwise it removes only the files it created there; see
    /// [`crate::runtime_dir`]).
    pub fn owns_runtime_dir(&self) -> bool {
        self.runtime.created()
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
        self.hotplug_with(|driver| driver)
    }

    /// [`Vm::hotplug`] with its blocking driver wrapped by `wrap` (a driver that traces the
    /// steps, or injects faults in a test).
    pub fn hotplug_with<'v, D: crate::engine::Driver>(
        &'v mut self,
        wrap: impl FnOnce(crate::engine::Blocking<'v>) -> D,
    ) -> crate::hotplug::Hotplugger<'v, D> {
        let driver = crate::engine::Blocking::new(&self.qmp).with_deleted(&self.deleted);
        let arch = self.assembled.arch.as_mut();
        crate::hotplug::Hotplugger::with_driver(wrap(driver), arch, &mut self.hotplug)
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
        read_from_start(&self.stderr)
    }

    /// QEMU's exit status, if it has exited.
    pub fn try_wait(&mut self) -> VmResult<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().map_err(io("wait for QEMU"))?;
        }
        Ok(self.exit)
    }

    /// Waits up to `timeout` for QEMU to exit (`Duration::MAX`: as long as it takes).
    pub fn wait_timeout(&mut self, timeout: Duration) -> VmResult<Option<ExitStatus>> {
        self.wait_until(Deadline::after(timeout))
    }

    fn wait_until(&mut self, deadline: Deadline) -> VmResult<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            match deadline.remaining() {
                None => {
                    let status = self.child.wait().map_err(io("wait for QEMU"))?;
                    self.exit = Some(status);
                    return Ok(Some(status));
                }
                Some(left) if left.is_zero() => return Ok(None),
                Some(left) => std::thread::sleep(left.min(Duration::from_millis(5))),
            }
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

    /// Stops the VM, gracefully if possible, within about `grace` plus a few seconds, and
    /// says what ended it ([`ShutdownOutcome::ended_by`]). The ladder, the way libvirt's
    /// `virsh shutdown` then `destroy` goes:
    ///
    /// 1. `system_powerdown`, then up to `grace` for the guest to power off (QEMU's
    ///    `SHUTDOWN` event, reason `guest-shutdown`) → [`EndedBy::PoweredOff`];
    /// 2. `quit`, and up to a few seconds for QEMU to exit → [`EndedBy::Quit`];
    /// 3. SIGKILL → [`EndedBy::Killed`].
    ///
    /// A guest that powered off on its own (under `-no-shutdown` QEMU waits) skips to `quit`
    /// and still reports [`EndedBy::PoweredOff`]; a QEMU that had already ended reports what
    /// ended it, e.g. [`EndedBy::Other`] for a signal hvarch did not send. A `grace` of
    /// `Duration::MAX` waits for the guest as long as it takes. Idempotent: later calls
    /// return the first outcome.
    pub fn shutdown(&mut self, grace: Duration) -> VmResult<ShutdownOutcome> {
        if let Some(outcome) = &self.outcome {
            return Ok(outcome.clone());
        }
        let mut rung = Rung::None;
        // SHUTDOWN events that came before (the guest powered off on its own).
        while let Some(event) = self.shutdown_events.try_recv() {
            self.note_shutdown(&event);
        }
        if self.try_wait()?.is_none() && self.shutdown_reason.is_none() {
            rung = Rung::PowerDown;
            // Bounded like `quit` below: a hung QEMU must not hold us for the command timeout.
            let powerdown = self.qmp.execute_with_timeout(
                &hvarch_qmp::Command::bare("system_powerdown"),
                grace.max(POWERDOWN_MIN_TIMEOUT),
            );
            if powerdown.is_ok() {
                self.await_shutdown(Deadline::after(grace), false);
            }
        }
        if self.shutdown_reason.is_some() && !self.assembled.config.knobs.no_shutdown {
            // QEMU exits by itself after a SHUTDOWN (no `-no-shutdown`): let it.
            let deadline = Deadline::after(EXIT_TIMEOUT);
            self.await_shutdown(deadline, true);
            self.wait_until(deadline)?;
        }
        let mut quit_sent = false;
        if self.try_wait()?.is_none() {
            quit_sent = true;
            // `quit` may lose the race with an exiting QEMU: only an answered `quit` counts
            // (or QEMU's own word for it, below); the wait decides whether it worked.
            if self
                .qmp
                .execute_with_timeout(&hvarch_qmp::Command::bare("quit"), QUIT_TIMEOUT)
                .is_ok()
            {
                rung = Rung::Quit;
            }
            let deadline = Deadline::after(EXIT_TIMEOUT);
            self.await_shutdown(deadline, true);
            self.wait_until(deadline)?;
        }
        if self.try_wait()?.is_none() {
            rung = Rung::Kill;
            tracing::warn!(pid = self.pid(), "QEMU ignored quit; killing it");
            self.child.kill().map_err(io("kill QEMU"))?;
            let status = self.child.wait().map_err(io("reap QEMU"))?;
            self.exit = Some(status);
        }
        // QEMU is gone: what it said before it went is in the socket already.
        self.await_shutdown(Deadline::after(DRAIN_TIMEOUT), true);
        self.qmp.close();
        let status = match self.exit {
            Some(status) => status,
            None => self.child.wait().map_err(io("reap QEMU"))?,
        };
        let reason = self.shutdown_reason.as_deref();
        if quit_sent && reason == Some("host-qmp-quit") {
            // QEMU quit on a QMP `quit`: ours, whose answer was lost as QEMU went.
            rung = rung.max(Rung::Quit);
        }
        let outcome = ShutdownOutcome {
            status,
            ended_by: EndedBy::classify(reason, rung),
            reason: self.shutdown_reason.clone(),
        };
        tracing::info!(pid = self.pid(), %outcome, "VM ended");
        self.outcome = Some(outcome.clone());
        Ok(outcome)
    }

    /// Waits for QEMU's `SHUTDOWN` event (or, with `until_closed`, for the end of the QMP
    /// connection, noting the event on the way) until `deadline`.
    fn await_shutdown(&mut self, deadline: Deadline, until_closed: bool) {
        loop {
            let event = match deadline.remaining() {
                None => self.shutdown_events.recv(),
                Some(left) if left.is_zero() => return,
                Some(left) => self.shutdown_events.recv_timeout(left),
            };
            match event {
                Ok(event) => {
                    self.note_shutdown(&event);
                    if !until_closed {
                        return;
                    }
                }
                // Timed out, or QEMU closed the connection.
                Err(_) => return,
            }
        }
    }

    /// Keeps the reason of the first `SHUTDOWN` event.
    fn note_shutdown(&mut self, event: &Event) {
        if self.shutdown_reason.is_none() {
            self.shutdown_reason = shutdown_reason(event);
            tracing::debug!(reason = ?self.shutdown_reason, data = %event.data, "QEMU SHUTDOWN");
        }
    }

    /// Waits for the first event matching `filter` (a convenience over [`Vm::qmp`];
    /// `Duration::MAX`: no deadline).
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
        // `runtime` is dropped next, with QEMU gone: it removes what hvarch created.
    }
}

/// Kills and reaps the child of a launch that did not complete.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The reason of a `SHUTDOWN` event (`{"guest": bool, "reason": "…"}`).
fn shutdown_reason(event: &Event) -> Option<String> {
    Some(
        event
            .data
            .get("reason")
            .and_then(|r| r.as_str())
            .unwrap_or("unknown")
            .to_owned(),
    )
}

/// The name of `path`, which must be directly inside the runtime directory.
fn name_in(paths: &RuntimePaths, path: &Path, field: &str) -> VmResult<OsString> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if parent == paths.dir => Ok(name.to_os_string()),
        _ => Err(VmError::Launch {
            reason: format!(
                "`{field}` ({}) must be a file directly inside the runtime directory {}",
                path.display(),
                paths.dir.display()
            ),
            stderr: String::new(),
        }),
    }
}

/// The names hvarch and QEMU create in the runtime directory: the [`RuntimePaths`] files and
/// the monitor sockets directly inside it.
fn runtime_names(assembled: &Assembled, options: &LaunchOptions) -> Vec<OsString> {
    let dir = assembled.paths.dir.as_path();
    let monitors = assembled
        .config
        .monitors
        .iter()
        .chain(&options.monitors)
        .filter_map(|monitor| match &monitor.endpoint {
            MonitorEndpoint::Path(path) => Some(path.as_path()),
            MonitorEndpoint::Fd(_) => None,
        });
    let mut names: Vec<OsString> = Vec::new();
    for path in assembled.paths.files().chain(monitors) {
        if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
            if parent == dir && !names.iter().any(|n| n == name) {
                names.push(name.to_os_string());
            }
        }
    }
    names
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
            monitors.push(Monitor::qmp("qmp", MonitorEndpoint::Fd(fd)));
            monitors.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use hvarch_qmp::testing::{FakeConn, FakeServer};
    use proptest::prelude::*;

    use crate::runtime_dir::tests::Tmp;
    use crate::{GuestArch, VmSpec};

    /// A `Vm` whose "QEMU" is a stand-in process (`sleep`) and whose QMP peer is `script`,
    /// which gets the stand-in's pid (to end it the way QEMU would exit).
    fn fake_vm(
        tmp: &Tmp,
        no_shutdown: bool,
        script: impl FnOnce(FakeConn, u32) + Send + 'static,
    ) -> (Vm, FakeServer) {
        let mut spec = VmSpec::kata_default();
        spec.arch = Some(GuestArch::Aarch64);
        spec.host_memory_mb = Some(4096);
        spec.host_cpus = Some(2);
        spec.no_shutdown = no_shutdown;
        spec.runtime_dir = Some(tmp.0.join("run"));
        let assembled = crate::assemble(&spec).expect("assemble");
        let options = LaunchOptions::default();
        let runtime = RuntimeDir::open(&assembled.paths.dir, &runtime_names(&assembled, &options))
            .expect("runtime dir");
        let stderr = runtime
            .create_file(OsStr::new("qemu.stderr"))
            .expect("stderr file");
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let (client, server) = FakeServer::spawn(move |mut conn| {
            conn.handshake();
            script(conn, pid);
        })
        .expect("fake QMP server");
        let qmp = Qmp::from_stream(client, &hvarch_qmp::Config::default()).expect("negotiate");
        let shutdown_events = qmp.subscribe_filtered(EventFilter::name("SHUTDOWN"));
        let vm = Vm {
            child,
            exit: None,
            deleted: qmp.subscribe_filtered(EventFilter::name("DEVICE_DELETED")),
            qmp,
            shutdown_events,
            shutdown_reason: None,
            hotplug: crate::hotplug::HotplugState::new(&assembled),
            assembled,
            stderr,
            outcome: None,
            runtime,
        };
        (vm, server)
    }

    /// Ends the stand-in QEMU the way QEMU exits after a `SHUTDOWN`, and hangs up.
    fn exit_qemu(conn: FakeConn, pid: u32) {
        let pid = libc::pid_t::try_from(pid).expect("pid fits");
        // SAFETY: kill(2) of the stand-in child this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        conn.hang_up();
    }

    fn shutdown_event(conn: &mut FakeConn, guest: bool, reason: &str) {
        conn.event("SHUTDOWN", json!({"guest": guest, "reason": reason}));
    }

    /// Answers one `query-status`: running.
    fn running(conn: &mut FakeConn) {
        let cmd = conn.expect_command("query-status");
        conn.reply(&cmd, json!({"status": "running", "running": true}));
    }

    /// A guest that powers off when asked.
    fn cooperating(mut conn: FakeConn, pid: u32) {
        let cmd = conn.expect_command("system_powerdown");
        conn.reply(&cmd, json!({}));
        conn.event("POWERDOWN", json!({}));
        shutdown_event(&mut conn, true, "guest-shutdown");
        exit_qemu(conn, pid);
    }

    /// A guest that ignores the power button; QEMU obeys `quit`.
    fn ignoring(mut conn: FakeConn, pid: u32) {
        let cmd = conn.expect_command("system_powerdown");
        conn.reply(&cmd, json!({}));
        let cmd = conn.expect_command("quit");
        conn.reply(&cmd, json!({}));
        shutdown_event(&mut conn, false, "host-qmp-quit");
        exit_qemu(conn, pid);
    }

    fn signal_of(outcome: &ShutdownOutcome) -> Option<i32> {
        outcome.status.signal()
    }

    #[test]
    fn a_guest_that_powers_off_is_reported_as_powered_off() {
        let tmp = Tmp::new();
        let (mut vm, server) = fake_vm(&tmp, false, cooperating);
        let outcome = vm.shutdown(Duration::from_secs(30)).expect("shutdown");
        server.join();
        assert_eq!(outcome.ended_by, EndedBy::PoweredOff, "{outcome}");
        assert_eq!(outcome.reason.as_deref(), Some("guest-shutdown"));
        assert!(outcome.powered_off());
        assert!(
            outcome.to_string().starts_with("the guest powered off"),
            "{outcome}"
        );
        // Idempotent.
        assert_eq!(vm.shutdown(Duration::ZERO).expect("again"), outcome);
    }

    #[test]
    fn a_guest_that_ignores_powerdown_is_quit_and_says_so() {
        let tmp = Tmp::new();
        let (mut vm, server) = fake_vm(&tmp, false, ignoring);
        let outcome = vm.shutdown(Duration::from_millis(50)).expect("shutdown");
        server.join();
        assert_eq!(outcome.ended_by, EndedBy::Quit, "{outcome}");
        assert!(!outcome.powered_off());
        assert!(outcome.to_string().contains("told to quit"), "{outcome}");
    }

    #[test]
    fn a_guest_that_powered_off_under_no_shutdown_is_quit_but_reported_powered_off() {
        let tmp = Tmp::new();
        let (mut vm, server) = fake_vm(&tmp, true, |mut conn, pid| {
            // The guest powers off on its own; QEMU stays (-no-shutdown) until quit. No
            // `system_powerdown` is expected: the guest is off already.
            running(&mut conn);
            shutdown_event(&mut conn, true, "guest-shutdown");
            running(&mut conn);
            let cmd = conn.expect_command("quit");
            conn.reply(&cmd, json!({}));
            exit_qemu(conn, pid);
        });
        assert_eq!(vm.status().expect("status"), "running");
        // Answered after the event, on the same stream: the event is queued now.
        assert_eq!(vm.status().expect("status"), "running");
        let outcome = vm.shutdown(Duration::from_secs(30)).expect("shutdown");
        server.join();
        assert_eq!(outcome.ended_by, EndedBy::PoweredOff, "{outcome}");
    }

    #[test]
    fn qemu_stopped_by_a_signal_hvarch_did_not_send_is_not_a_clean_end() {
        let tmp = Tmp::new();
        let (mut vm, server) = fake_vm(&tmp, false, |mut conn, pid| {
            running(&mut conn);
            // QEMU caught SIGTERM (systemd's, say): it reports it and exits 0.
            shutdown_event(&mut conn, false, "host-signal");
            exit_qemu(conn, pid);
        });
        assert_eq!(vm.status().expect("status"), "running");
        let outcome = vm.shutdown(Duration::from_secs(30)).expect("shutdown");
        server.join();
        assert_eq!(outcome.ended_by, EndedBy::Other, "{outcome}");
        assert_eq!(outcome.reason.as_deref(), Some("host-signal"));
        assert!(
            outcome.to_string().contains("signal hvarch did not send"),
            "{outcome}"
        );
    }

    #[test]
    fn qemu_killed_by_someone_else_is_not_a_clean_end() {
        let tmp = Tmp::new();
        let (mut vm, server) = fake_vm(&tmp, false, |conn, pid| {
            let pid = libc::pid_t::try_from(pid).expect("pid fits");
            // SAFETY: kill(2) of the stand-in child this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            conn.hang_up();
        });
        let outcome = vm.shutdown(Duration::from_secs(30)).expect("shutdown");
        server.join();
        assert_eq!(outcome.ended_by, EndedBy::Other, "{outcome}");
        assert_eq!(signal_of(&outcome), Some(libc::SIGKILL));
        assert!(
            outcome
                .to_string()
                .contains("killed by a signal hvarch did not send"),
            "{outcome}"
        );
    }

    #[test]
    fn classification_table() {
        use EndedBy::*;
        let cases: &[(Option<&str>, Rung, EndedBy)] = &[
            (Some("guest-shutdown"), Rung::PowerDown, PoweredOff),
            (Some("guest-shutdown"), Rung::Kill, PoweredOff),
            (Some("guest-shutdown"), Rung::None, PoweredOff),
            (Some("guest-reset"), Rung::None, GuestReset),
            (Some("guest-panic"), Rung::PowerDown, GuestPanicked),
            (Some("host-qmp-quit"), Rung::Quit, Quit),
            (None, Rung::Quit, Quit),
            (Some("host-signal"), Rung::Quit, Other),
            (Some("host-qmp-quit"), Rung::PowerDown, Other),
            (None, Rung::Kill, Killed),
            (Some("host-signal"), Rung::Kill, Killed),
            (None, Rung::None, Other),
            (None, Rung::PowerDown, Other),
            (Some("host-signal"), Rung::None, Other),
        ];
        for &(reason, rung, expected) in cases {
            assert_eq!(
                EndedBy::classify(reason, rung),
                expected,
                "{reason:?} {rung:?}"
            );
        }
    }

    /// Durations at and around the edges of what an `Instant` can hold.
    fn durations() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            Just(Duration::from_secs(u64::MAX)),
            Just(Duration::new(u64::MAX / 2, 999_999_999)),
            Just(Duration::from_nanos(1)),
            (0u64..5_000).prop_map(Duration::from_millis),
            any::<u64>().prop_map(Duration::from_secs),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    #[test]
    fn deadlines_never_overflow() {
        for timeout in [Duration::MAX, Duration::from_secs(u64::MAX)] {
            assert_eq!(Deadline::after(timeout).remaining(), None, "{timeout:?}");
        }
        let left = Deadline::after(Duration::from_secs(60))
            .remaining()
            .expect("a deadline");
        assert!(left <= Duration::from_secs(60));
        assert_eq!(
            Deadline::after(Duration::ZERO).remaining(),
            Some(Duration::ZERO)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Any grace, `Duration::MAX` included: no panic, and a guest that powers off is
        /// reported as powered off.
        #[test]
        fn shutdown_takes_any_grace(grace in durations()) {
            let tmp = Tmp::new();
            let (mut vm, server) = fake_vm(&tmp, false, cooperating);
            let outcome = vm.shutdown(grace).expect("shutdown");
            server.join();
            prop_assert_eq!(outcome.ended_by, EndedBy::PoweredOff, "{}", outcome);
        }

        /// Any timeout: an exited QEMU is reported at once.
        #[test]
        fn wait_timeout_takes_any_timeout(timeout in durations()) {
            let tmp = Tmp::new();
            let (mut vm, server) = fake_vm(&tmp, false, exit_qemu);
            let status = vm.wait_timeout(timeout).expect("wait");
            if timeout >= Duration::from_secs(30) {
                prop_assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGTERM));
            }
            drop(vm);
            server.join();
        }

        /// Any timeout: an event that keeps coming is seen, or the wait times out.
        #[test]
        fn wait_event_takes_any_timeout(timeout in durations()) {
            let tmp = Tmp::new();
            let stop = Arc::new(AtomicBool::new(false));
            let ticking = Arc::clone(&stop);
            let (vm, server) = fake_vm(&tmp, false, move |mut conn, _| {
                while !ticking.load(Ordering::SeqCst) {
                    conn.event("TICK", json!({}));
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            let result = vm.wait_event(&EventFilter::name("TICK"), timeout);
            stop.store(true, Ordering::SeqCst);
            match result {
                Ok(event) => prop_assert_eq!(event.name, "TICK"),
                Err(VmError::Qmp(hvarch_qmp::Error::Timeout { .. })) => {
                    prop_assert!(timeout < Duration::from_secs(30), "{:?}", timeout)
                }
                Err(e) => prop_assert!(false, "{}", e),
            }
            drop(vm);
            server.join();
        }
    }

    #[test]
    fn a_vm_is_send() {
        fn send<T: Send>() {}
        send::<Vm>();
    }
}
