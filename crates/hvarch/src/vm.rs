//! [`Vm`]: a running QEMU, launched without polling and always cleaned up; with the `tokio`
//! feature, [`crate::AsyncVm`] is the same VM for async code.
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
//! # virtio-fs daemons
//!
//! Before QEMU, the launch starts the daemon of each virtio-fs share ([`crate::virtiofs`]) on
//! a socket it binds in the runtime directory, under the same rules as QEMU (descriptors,
//! process group, parent death). The daemons stop with the VM (after QEMU, before the runtime
//! directory's files go); one that dies while the VM runs is published
//! ([`Vm::subscribe_virtiofs_exits`]) and reported by [`Vm::check`] as
//! [`VmError::VirtiofsDaemon`].
//!
//! # Lifetime
//!
//! The child is QEMU itself (no shell, no `-daemonize`). [`Vm::shutdown`] asks the guest to
//! power off, then quits QEMU, then kills it, and reports which of them ended the VM
//! ([`ShutdownOutcome`]; the ladder is an engine, see [`crate::shutdown`]). Dropping a [`Vm`]
//! kills and reaps the child and removes what hvarch created in the runtime directory, so a
//! panicking test leaves no process and no socket behind.
//!
//! # One VM, two drivers
//!
//! [`Vm`] and [`crate::AsyncVm`] are thin drivers of the same code: the launch plan, the
//! engines (hotplug, save and restore, the shutdown ladder) and every method body are written
//! once; a method of [`Vm`] returns its result, the same method of [`crate::AsyncVm`] a
//! future of it.
//!
//! # Timeouts
//!
//! A timeout too large to add to the current time (`Duration::MAX`) means "no deadline":
//! every method taking a duration waits as long as it takes instead of panicking.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::Duration;

use hvarch_devices::config::Monitor;
use hvarch_devices::fd::FdTable;
use hvarch_devices::part::Syntax;
use hvarch_qmp::{EventSubscription, Qmp};

use crate::assemble::Assembled;
use crate::engine::{Blocking, Process};
use crate::runtime_dir::RuntimeDirError;
use crate::shutdown::ShutdownLadder;
use crate::virtiofs::{DaemonEvents, Virtiofsd};

pub use crate::shutdown::{EndedBy, ShutdownOutcome};

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
    /// A virtio-fs daemon exited while the VM was running (see [`crate::virtiofs`]): its
    /// share is gone from the guest. Kata stops the sandbox then; the caller decides.
    #[error("{0}")]
    VirtiofsDaemon(crate::virtiofs::DaemonExit),
}

/// `; QEMU said: <stderr>`, or nothing when QEMU said nothing.
pub(crate) fn stderr_suffix(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("; QEMU said: {trimmed}")
    }
}

/// The result type of VM operations.
pub type VmResult<T> = std::result::Result<T, VmError>;

/// Wraps an OS error with what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
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

/// What a running VM is besides its QMP client and QEMU's process, whichever driver runs it.
#[derive(Debug)]
pub(crate) struct Core {
    /// The assembled VM (configuration, arch backend with its bridge slots).
    pub(crate) assembled: Assembled,
    /// What is hot-plugged.
    pub(crate) hotplug: crate::hotplug::HotplugState,
    /// QEMU's stderr (a descriptor of the file it writes, read from the start).
    stderr: File,
    /// The reason of a `SHUTDOWN` QEMU sent while the client negotiated.
    early_shutdown: Option<String>,
    /// The first shutdown's outcome (later calls return it).
    outcome: Option<ShutdownOutcome>,
    /// Where the virtio-fs daemons' unexpected exits are published.
    pub(crate) daemon_events: DaemonEvents,
}

impl Core {
    pub(crate) fn new(
        assembled: Assembled,
        stderr: File,
        early_shutdown: Option<String>,
        daemon_events: DaemonEvents,
    ) -> Core {
        Core {
            hotplug: crate::hotplug::HotplugState::new(&assembled),
            assembled,
            stderr,
            early_shutdown,
            outcome: None,
            daemon_events,
        }
    }

    /// What QEMU has written to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        crate::runtime_dir::read_from_start(&self.stderr)
    }

    /// The shutdown ladder for this VM, or the outcome of the one that ended it.
    pub(crate) fn ladder(&self, grace: Duration) -> Result<ShutdownLadder, ShutdownOutcome> {
        match &self.outcome {
            Some(outcome) => Err(outcome.clone()),
            None => Ok(
                ShutdownLadder::new(grace, self.assembled.config.knobs.no_shutdown)
                    .after(self.early_shutdown.clone()),
            ),
        }
    }

    /// Keeps the outcome of the shutdown of QEMU `pid`.
    pub(crate) fn ended(&mut self, pid: u32, outcome: ShutdownOutcome) -> ShutdownOutcome {
        tracing::info!(pid, %outcome, "VM ended");
        self.outcome = Some(outcome.clone());
        outcome
    }
}

/// A virtio-fs daemon that died while the VM ran is an error.
pub(crate) fn daemons_alive(daemons: &[Virtiofsd]) -> VmResult<()> {
    match daemons
        .iter()
        .find_map(|d| d.exit().filter(|e| !e.expected))
    {
        Some(exit) => Err(VmError::VirtiofsDaemon(exit)),
        None => Ok(()),
    }
}

/// A guest reporting a failure (`query-status`) is an error.
pub(crate) fn healthy(status: String) -> VmResult<()> {
    if status == "guest-panicked" || status == "internal-error" {
        return Err(VmError::GuestFailure { status });
    }
    Ok(())
}

/// QEMU's run state in a `query-status` reply.
pub(crate) fn run_state(reply: &serde_json::Value) -> String {
    reply
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("unknown")
        .to_owned()
}

/// The methods [`Vm`] and [`crate::AsyncVm`] share, written once over each type's own client
/// (`$qmp`), driver (`$driver`) and the private `spawn`, `connect`, `driver` and `offload`
/// each type has. `vm_methods!(Qmp, Blocking, [], [])` gives the blocking ones,
/// `vm_methods!(AsyncQmp, Tokio, [async], [.await])` the async ones: the bodies are the same,
/// only whether a call is awaited differs.
macro_rules! vm_methods {
    ($qmp:ty, $driver:ident, [$($async_:tt)?], [$(.$await_:tt)?]) => {
        /// Starts `assembled` and returns once QMP is negotiated (see the [module
        /// docs](crate::vm)).
        ///
        /// The assembled configuration's first QMP monitor is served on a socket hvarch binds
        /// itself at [`RuntimePaths::qmp`](crate::RuntimePaths::qmp); other monitors stay as
        /// configured, and [`LaunchOptions::monitors`](crate::LaunchOptions::monitors) are added
        /// after them. A configuration asking for `-daemonize` is refused: hvarch must be QEMU's
        /// parent to reap it.
        ///
        /// Errors: [`VmError::RuntimeDir`](crate::VmError::RuntimeDir) when the runtime directory
        /// is refused (see [`crate::runtime_dir`]), [`VmError::Launch`](crate::VmError::Launch)
        /// when QEMU does not start or never greets. On error nothing is left: no process, and
        /// nothing hvarch created.
        pub $($async_)? fn launch(
            assembled: $crate::Assembled,
            options: $crate::LaunchOptions,
        ) -> $crate::VmResult<Self> {
            let qmp = options.qmp.clone();
            let prepare = move || $crate::launch::Plan::new(assembled, &options);
            let (plan, command, fds) = Self::offload(prepare)$(.$await_)??;
            let (started, client) = plan.started(Self::spawn(command, fds)$(.$await_)?)?;
            let connected = Self::connect(client, &qmp)$(.$await_)?;
            Ok(Self::from(started.connected(connected)?))
        }

        /// The QMP client.
        pub fn qmp(&self) -> &$qmp {
            &self.qmp
        }

        /// QEMU's process id.
        pub fn pid(&self) -> u32 {
            self.process.id()
        }

        /// The runtime files (sockets, pidfile).
        pub fn paths(&self) -> &$crate::RuntimePaths {
            &self.core.assembled.paths
        }

        /// Whether hvarch created the runtime directory, and so removes it whole when the VM
        /// ends (otherwise it removes only the files it created there; see
        /// [`crate::runtime_dir`]).
        pub fn owns_runtime_dir(&self) -> bool {
            $crate::launch::Qemu::process(&self.process)
                .runtime()
                .is_some_and($crate::runtime_dir::RuntimeDir::created)
        }

        /// The virtio-fs daemons, one per share, in the order of
        /// [`Assembled::virtiofs`](crate::Assembled::virtiofs).
        pub fn virtiofs_daemons(&self) -> &[$crate::virtiofs::Virtiofsd] {
            $crate::launch::Qemu::process(&self.process).virtiofs()
        }

        /// A receiver of every virtio-fs daemon exit hvarch did not cause, from now on.
        pub fn subscribe_virtiofs_exits(
            &self,
        ) -> std::sync::mpsc::Receiver<$crate::virtiofs::DaemonExit> {
            self.core.daemon_events.subscribe()
        }

        /// The assembled VM this was launched from (its configuration and backend).
        pub fn assembled(&self) -> &$crate::Assembled {
            &self.core.assembled
        }

        /// The arch backend (bridge slot state lives here).
        pub fn arch(&self) -> &dyn $crate::QemuArch {
            self.core.assembled.arch.as_ref()
        }

        /// The arch backend, mutable (to take or free bridge slots).
        pub fn arch_mut(&mut self) -> &mut dyn $crate::QemuArch {
            self.core.assembled.arch.as_mut()
        }

        /// The hotplug engine over this VM's QMP client, arch backend (bridge slots) and
        /// hotplug state (root ports, plugged devices): `vm.hotplug().add_block(…)`.
        pub fn hotplug(&mut self) -> $crate::Hotplugger<'_, $crate::engine::$driver<'_>> {
            self.hotplug_with(|driver| driver)
        }

        /// [`Self::hotplug`] with its driver wrapped by `wrap` (a driver that traces the
        /// steps, or injects faults in a test).
        pub fn hotplug_with<'v, D: $crate::engine::Driver>(
            &'v mut self,
            wrap: impl FnOnce($crate::engine::$driver<'v>) -> D,
        ) -> $crate::Hotplugger<'v, D> {
            let (driver, core) = self.driver();
            let arch = core.assembled.arch.as_mut();
            $crate::Hotplugger::with_driver(wrap(driver), arch, &mut core.hotplug)
        }

        /// What is hot-plugged, and the free root ports.
        pub fn hotplug_state(&self) -> &$crate::HotplugState {
            &self.core.hotplug
        }

        /// What QEMU has written to stderr so far.
        pub fn stderr(&self) -> String {
            self.core.stderr()
        }

        /// QEMU's exit status, if it has exited.
        pub fn try_wait(&mut self) -> $crate::VmResult<Option<std::process::ExitStatus>> {
            self.process.try_wait().map_err($crate::vm::io("wait for QEMU"))
        }

        /// Waits up to `timeout` for QEMU to exit (`Duration::MAX`: as long as it takes).
        pub $($async_)? fn wait_timeout(
            &mut self,
            timeout: std::time::Duration,
        ) -> $crate::VmResult<Option<std::process::ExitStatus>> {
            let waited = self.process.wait_timeout(timeout)$(.$await_)?;
            waited.map_err($crate::vm::io("wait for QEMU"))
        }

        /// Pauses the vCPUs (`stop`).
        pub $($async_)? fn pause(&self) -> $crate::VmResult<()> {
            self.qmp.execute_command(&hvarch_qmp::commands::stop())$(.$await_)??;
            Ok(())
        }

        /// Resumes the vCPUs (`cont`).
        pub $($async_)? fn resume(&self) -> $crate::VmResult<()> {
            self.qmp.execute_command(&hvarch_qmp::commands::cont())$(.$await_)??;
            Ok(())
        }

        /// QEMU's run state (`query-status`), e.g. `running`, `paused`, `prelaunch`.
        pub $($async_)? fn status(&self) -> $crate::VmResult<String> {
            let query = hvarch_qmp::commands::query_status();
            Ok($crate::vm::run_state(&self.qmp.execute_command(&query)$(.$await_)??))
        }

        /// Checks the VM is healthy (Kata's `check`): an error if a virtio-fs daemon has died
        /// ([`VmError::VirtiofsDaemon`](crate::VmError::VirtiofsDaemon)) or QEMU reports
        /// `guest-panicked` or `internal-error`.
        pub $($async_)? fn check(&self) -> $crate::VmResult<()> {
            $crate::vm::daemons_alive(self.virtiofs_daemons())?;
            $crate::vm::healthy(self.status()$(.$await_)??)
        }

        /// Stops the VM, gracefully if possible, within about `grace` plus a few seconds, and says
        /// what ended it ([`ShutdownOutcome::ended_by`](crate::ShutdownOutcome::ended_by)): the
        /// shutdown ladder (see [`crate::shutdown`]), the way libvirt's `virsh shutdown` then
        /// `destroy` goes:
        ///
        /// 1. `system_powerdown`, then up to `grace` for the guest to power off (QEMU's `SHUTDOWN`
        ///    event, reason `guest-shutdown`) →
        ///    [`EndedBy::PoweredOff`](crate::EndedBy::PoweredOff);
        /// 2. `quit`, and up to a few seconds for QEMU to exit →
        ///    [`EndedBy::Quit`](crate::EndedBy::Quit);
        /// 3. SIGKILL → [`EndedBy::Killed`](crate::EndedBy::Killed).
        ///
        /// A guest that powered off on its own (under `-no-shutdown` QEMU waits) skips to `quit`
        /// and still reports [`EndedBy::PoweredOff`](crate::EndedBy::PoweredOff); a QEMU that had
        /// already ended reports what ended it, e.g. [`EndedBy::Other`](crate::EndedBy::Other) for
        /// a signal hvarch did not send. A `grace` of `Duration::MAX` waits for the guest as long
        /// as it takes. Idempotent: later calls return the first outcome.
        pub $($async_)? fn shutdown(
            &mut self,
            grace: std::time::Duration,
        ) -> $crate::VmResult<$crate::ShutdownOutcome> {
            let ladder = match self.core.ladder(grace) {
                Ok(ladder) => ladder,
                Err(outcome) => return Ok(outcome),
            };
            // The daemons end with QEMU (it closes their sockets): expected from here.
            for daemon in self.virtiofs_daemons() {
                daemon.expect_exit();
            }
            let (mut driver, _) = self.driver();
            let outcome = $crate::engine::Driver::run(&mut driver, ladder.engine())$(.$await_)??;
            self.qmp.close()$(.$await_)?;
            let process = $crate::launch::Qemu::process_mut(&mut self.process);
            let mut daemons = process.take_virtiofs();
            let stop = move || {
                $crate::engine::stop_virtiofs(&mut daemons);
                Ok(daemons)
            };
            let daemons = Self::offload(stop)$(.$await_)??;
            $crate::launch::Qemu::process_mut(&mut self.process).put_virtiofs(daemons);
            let pid = self.process.id();
            Ok(self.core.ended(pid, outcome))
        }

        /// Waits for the first event matching `filter` (a convenience over
        /// [`Self::qmp`]; `Duration::MAX`: no deadline).
        pub $($async_)? fn wait_event(
            &self,
            filter: &hvarch_qmp::EventFilter,
            timeout: std::time::Duration,
        ) -> $crate::VmResult<hvarch_qmp::Event> {
            Ok(self.qmp.wait_event(filter, timeout)$(.$await_)??)
        }
    };
}
#[cfg(feature = "tokio")]
pub(crate) use vm_methods;

/// A running QEMU and its QMP connection (see the [module docs](self)).
///
/// ```no_run
/// use std::time::Duration;
/// use hvarch::{assemble, LaunchOptions, Vm, VmSpec};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut vm = Vm::launch(assemble(&VmSpec::kata_default())?, LaunchOptions::default())?;
/// vm.resume()?;
/// assert_eq!(vm.status()?, "running");
/// let outcome = vm.shutdown(Duration::from_secs(10))?;
/// println!("{outcome}");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Vm {
    // Dropped in this order: the connection closes, then QEMU is killed and reaped (unless
    // it ended), then what hvarch created in the runtime directory is removed.
    qmp: Qmp,
    /// QEMU's `SHUTDOWN` events, from launch on.
    shutdowns: EventSubscription,
    /// Every `DEVICE_DELETED` since launch, drained by each hotplug call.
    deleted: EventSubscription,
    process: Process,
    core: Core,
}

impl Vm {
    vm_methods!(Qmp, Blocking, [], []);
    crate::lifecycle::lifecycle_methods!(Blocking, [], []);

    /// The blocking driver over everything the engines need, and the rest of the VM.
    fn driver(&mut self) -> (Blocking<'_>, &mut Core) {
        let driver = Blocking::new(&self.qmp)
            .with_deleted(&self.deleted)
            .with_shutdowns(&self.shutdowns)
            .with_process(&mut self.process);
        (driver, &mut self.core)
    }

    /// Starts QEMU from the spawner thread, waiting for its answer.
    fn spawn(command: Command, fds: FdTable) -> std::io::Result<Child> {
        crate::spawn::spawn(command, fds)
    }

    /// Negotiates QMP on the launch's connection.
    fn connect(stream: UnixStream, config: &hvarch_qmp::Config) -> hvarch_qmp::Result<Qmp> {
        Qmp::from_stream(stream, config)
    }

    /// Runs blocking work (file I/O): here, on the caller's thread.
    fn offload<T>(work: impl FnOnce() -> VmResult<T>) -> VmResult<T> {
        work()
    }
}

/// `From<Launched<$qmp, $process>>` for a VM type (`Vm`, `AsyncVm`) whose fields are
/// those of [`Launched`].
macro_rules! from_launched {
    ($vm:ident, $qmp:ty, $process:ty) => {
        impl From<$crate::launch::Launched<$qmp, $process>> for $vm {
            fn from(launched: $crate::launch::Launched<$qmp, $process>) -> Self {
                $vm {
                    qmp: launched.qmp,
                    shutdowns: launched.shutdowns,
                    deleted: launched.deleted,
                    process: launched.process,
                    core: launched.core,
                }
            }
        }
    };
}
#[cfg(feature = "tokio")]
pub(crate) use from_launched;

from_launched!(Vm, Qmp, Process);

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use hvarch_qmp::testing::{FakeConn, FakeServer};
    use hvarch_qmp::EventFilter;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::launch::{runtime_names, Launched};
    use crate::runtime_dir::tests::Tmp;
    use crate::runtime_dir::RuntimeDir;
    use crate::{GuestArch, VmSpec};

    /// A VM type the fake can build: its client, its process type, and how each is made.
    trait FakeVm: Sized {
        type Client: crate::launch::Client;
        type Process: crate::launch::Qemu;
        fn connect(stream: std::os::unix::net::UnixStream) -> Self::Client;
        fn from_launched(launched: Launched<Self::Client, Self::Process>) -> Self;
    }

    impl FakeVm for Vm {
        type Client = Qmp;
        type Process = Process;
        fn connect(stream: std::os::unix::net::UnixStream) -> Qmp {
            Vm::connect(stream, &hvarch_qmp::Config::default()).expect("negotiate")
        }
        fn from_launched(launched: Launched<Qmp, Process>) -> Self {
            Vm::from(launched)
        }
    }

    #[cfg(feature = "tokio")]
    impl FakeVm for crate::AsyncVm {
        type Client = hvarch_qmp::AsyncQmp;
        type Process = crate::engine::AsyncProcess;
        fn connect(stream: std::os::unix::net::UnixStream) -> hvarch_qmp::AsyncQmp {
            let config = hvarch_qmp::Config::default();
            let connected =
                tokio_runtime().block_on(hvarch_qmp::AsyncQmp::from_std(stream, &config));
            connected.expect("negotiate")
        }
        fn from_launched(launched: Launched<Self::Client, Self::Process>) -> Self {
            crate::AsyncVm::from(launched)
        }
    }

    /// The runtime the `AsyncVm` tests run on.
    #[cfg(feature = "tokio")]
    fn tokio_runtime() -> &'static ::tokio::runtime::Runtime {
        static RUNTIME: std::sync::OnceLock<::tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RUNTIME.get_or_init(|| ::tokio::runtime::Runtime::new().expect("a tokio runtime"))
    }

    /// A VM whose "QEMU" is a stand-in process (`sleep`) and whose QMP peer is `script`,
    /// which gets the stand-in's pid (to end it the way QEMU would exit).
    fn fake_vm<V: FakeVm>(
        tmp: &Tmp,
        no_shutdown: bool,
        script: impl FnOnce(FakeConn, u32) + Send + 'static,
    ) -> (V, FakeServer) {
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
        let mut process = Process::new(child);
        process.keep_until_gone(crate::engine::Held {
            virtiofs: Vec::new(),
            runtime,
        });
        let (client, server) = FakeServer::spawn(move |mut conn| {
            conn.handshake();
            script(conn, pid);
        })
        .expect("fake QMP server");
        let qmp = V::connect(client);
        #[cfg(feature = "tokio")]
        let _context = tokio_runtime().enter();
        let launched = Launched {
            shutdowns: crate::launch::Client::subscribe(&qmp, EventFilter::name("SHUTDOWN")),
            deleted: crate::launch::Client::subscribe(&qmp, EventFilter::name("DEVICE_DELETED")),
            qmp,
            process: V::Process::from(process),
            core: Core::new(assembled, stderr, None, DaemonEvents::new()),
        };
        (V::from_launched(launched), server)
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

    /// The shutdown ladder's exact exchanges (the fake QEMU expects each command in turn) and
    /// the waits, on `Vm` and on `AsyncVm`: the items given, compiled in modules `blocking`
    /// and `tokio`, whose `TestVm` and `finish` they use.
    macro_rules! on_both_drivers {
        ($($item:item)*) => {
            mod blocking {
                use super::*;
                type TestVm = Vm;
                fn finish<T>(result: T) -> T {
                    result
                }
                $($item)*
            }
            #[cfg(feature = "tokio")]
            mod tokio {
                use super::*;
                type TestVm = crate::AsyncVm;
                fn finish<F: std::future::Future>(future: F) -> F::Output {
                    tokio_runtime().block_on(future)
                }
                $($item)*
            }
        };
    }

    on_both_drivers! {
        #[test]
        fn a_guest_that_powers_off_is_reported_as_powered_off() {
            let tmp = Tmp::new();
            let (mut vm, server) = fake_vm::<TestVm>(&tmp, false, cooperating);
            let outcome = finish(vm.shutdown(Duration::from_secs(30))).expect("shutdown");
            server.join();
            assert_eq!(outcome.ended_by, EndedBy::PoweredOff, "{outcome}");
            assert_eq!(outcome.reason.as_deref(), Some("guest-shutdown"));
            assert!(outcome.powered_off());
            assert!(
                outcome.to_string().starts_with("the guest powered off"),
                "{outcome}"
            );
            // Idempotent.
            assert_eq!(finish(vm.shutdown(Duration::ZERO)).expect("again"), outcome);
        }

        #[test]
        fn a_guest_that_ignores_powerdown_is_quit_and_says_so() {
            let tmp = Tmp::new();
            let (mut vm, server) = fake_vm::<TestVm>(&tmp, false, ignoring);
            let outcome = finish(vm.shutdown(Duration::from_millis(50))).expect("shutdown");
            server.join();
            assert_eq!(outcome.ended_by, EndedBy::Quit, "{outcome}");
            assert!(!outcome.powered_off());
            assert!(outcome.to_string().contains("told to quit"), "{outcome}");
        }

        #[test]
        fn a_guest_that_powered_off_under_no_shutdown_is_quit_but_reported_powered_off() {
            let tmp = Tmp::new();
            let (mut vm, server) = fake_vm::<TestVm>(&tmp, true, |mut conn, pid| {
                // The guest powers off on its own; QEMU stays (-no-shutdown) until quit. No
                // `system_powerdown` is expected: the guest is off already.
                running(&mut conn);
                shutdown_event(&mut conn, true, "guest-shutdown");
                running(&mut conn);
                let cmd = conn.expect_command("quit");
                conn.reply(&cmd, json!({}));
                exit_qemu(conn, pid);
            });
            assert_eq!(finish(vm.status()).expect("status"), "running");
            // Answered after the event, on the same stream: the event is queued now.
            assert_eq!(finish(vm.status()).expect("status"), "running");
            let outcome = finish(vm.shutdown(Duration::from_secs(30))).expect("shutdown");
            server.join();
            assert_eq!(outcome.ended_by, EndedBy::PoweredOff, "{outcome}");
        }

        #[test]
        fn qemu_stopped_by_a_signal_hvarch_did_not_send_is_not_a_clean_end() {
            let tmp = Tmp::new();
            let (mut vm, server) = fake_vm::<TestVm>(&tmp, false, |mut conn, pid| {
                running(&mut conn);
                // QEMU caught SIGTERM (systemd's, say): it reports it and exits 0.
                shutdown_event(&mut conn, false, "host-signal");
                exit_qemu(conn, pid);
            });
            assert_eq!(finish(vm.status()).expect("status"), "running");
            let outcome = finish(vm.shutdown(Duration::from_secs(30))).expect("shutdown");
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
            let (mut vm, server) = fake_vm::<TestVm>(&tmp, false, |conn, pid| {
                let pid = libc::pid_t::try_from(pid).expect("pid fits");
                // SAFETY: kill(2) of the stand-in child this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                conn.hang_up();
            });
            let outcome = finish(vm.shutdown(Duration::from_secs(30))).expect("shutdown");
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

        proptest! {
            #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

            /// Any grace, `Duration::MAX` included: no panic, and a guest that powers off is
            /// reported as powered off.
            #[test]
            fn shutdown_takes_any_grace(grace in durations()) {
                let tmp = Tmp::new();
                let (mut vm, server) = fake_vm::<TestVm>(&tmp, false, cooperating);
                let outcome = finish(vm.shutdown(grace)).expect("shutdown");
                server.join();
                prop_assert_eq!(outcome.ended_by, EndedBy::PoweredOff, "{}", outcome);
            }

            /// Any timeout: an exited QEMU is reported at once.
            #[test]
            fn wait_timeout_takes_any_timeout(timeout in durations()) {
                let tmp = Tmp::new();
                let (mut vm, server) = fake_vm::<TestVm>(&tmp, false, exit_qemu);
                let status = finish(vm.wait_timeout(timeout)).expect("wait");
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
                let (vm, server) = fake_vm::<TestVm>(&tmp, false, move |mut conn, _| {
                    while !ticking.load(Ordering::SeqCst) {
                        conn.event("TICK", json!({}));
                        std::thread::sleep(Duration::from_millis(2));
                    }
                });
                let result = finish(vm.wait_event(&EventFilter::name("TICK"), timeout));
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
    }

    #[test]
    fn a_vm_is_send() {
        fn send<T: Send>() {}
        send::<Vm>();
    }
}
