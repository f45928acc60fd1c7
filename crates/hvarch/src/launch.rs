//! The launch plan both VM types follow (see [`crate::vm`]'s docs): what happens before QEMU
//! starts (the runtime directory, the QMP socket, the virtio-fs daemons, QEMU's command line),
//! and what happens once its QMP client is negotiated, written once. The drivers only spawn
//! (blocking, or awaiting the spawner thread's answer) and connect (a blocking or an async
//! client).

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use hvarch_devices::config::{Monitor, MonitorEndpoint, MonitorMode};
use hvarch_devices::fd::{FdArg, FdTable};
use hvarch_qmp::{Event, EventFilter};

use crate::assemble::{Assembled, RuntimePaths};
use crate::engine::{Held, Process};
use crate::runtime_dir::{read_from_start, RuntimeDir};
use crate::virtiofs::{DaemonEvents, Virtiofsd};
use crate::vm::{io, LaunchOptions, VmError, VmResult};

/// A VM ready to start: the runtime directory opened (and locked), the QMP socket bound with
/// the client connected to it, the virtio-fs daemons serving their sockets, QEMU's command
/// line rendered with the listener as a descriptor, and its stderr file created.
pub(crate) struct Plan {
    assembled: Assembled,
    client: UnixStream,
    stderr: File,
    daemon_events: DaemonEvents,
    /// Stopped before `runtime` is released if the launch fails.
    virtiofs: Vec<Virtiofsd>,
    runtime: RuntimeDir,
}

impl Plan {
    /// Prepares `assembled` (see [`crate::Vm::launch`]); returns the plan and QEMU's command
    /// with the descriptors it inherits, for the spawner.
    pub(crate) fn new(
        mut assembled: Assembled,
        options: &LaunchOptions,
    ) -> VmResult<(Plan, Command, FdTable)> {
        if assembled.config.knobs.daemonize {
            return Err(launch_error(
                "`daemonize` cannot be used with a launched VM: hvarch reaps QEMU itself",
            ));
        }
        let paths = assembled.paths.clone();
        let qmp_name = name_in(&paths, &paths.qmp, "paths.qmp")?;
        let stderr_name = name_in(&paths, &paths.stderr, "paths.stderr")?;
        let mut runtime = RuntimeDir::open(&paths.dir, &runtime_names(&assembled, options))?;
        runtime.set_remove(options.remove_runtime_dir);
        let listener = runtime
            .bind(&qmp_name)
            .map_err(io(format!("bind QMP socket {}", paths.qmp.display())))?;
        let client = runtime
            .connect(&qmp_name)
            .map_err(io(format!("connect to {}", paths.qmp.display())))?;
        let listener_fd = FdArg::from(OwnedFd::from(listener));
        let monitor = attach_qmp_fd(&mut assembled, listener_fd);
        // The daemons serve their sockets before QEMU connects to them.
        let daemon_events = DaemonEvents::new();
        let virtiofs = start_virtiofs(&assembled, &runtime, &daemon_events)?;
        assembled
            .config
            .monitors
            .extend(options.monitors.iter().cloned());

        let mut fds = FdTable::new();
        let mut args = assembled.args_buffer(options.syntax, &mut fds)?;
        args.extend(&options.extra_args);
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
        // Keep the configuration describing the socket, not a descriptor that goes to QEMU.
        if let Some(monitor) = assembled.config.monitors.get_mut(monitor) {
            monitor.endpoint = MonitorEndpoint::Path(paths.qmp.clone());
        }
        let plan = Plan {
            assembled,
            client,
            stderr: stderr_reader,
            daemon_events,
            virtiofs,
            runtime,
        };
        Ok((plan, command, fds))
    }

    /// Takes what the spawner answered, as the process type `P` of the VM being launched
    /// (blocking or async). From here a failure kills and reaps QEMU, then removes what hvarch
    /// created.
    pub(crate) fn started<P: Qemu>(
        self,
        spawned: std::io::Result<Child>,
    ) -> VmResult<(Started<P>, UnixStream)> {
        let Plan {
            assembled,
            client,
            stderr,
            daemon_events,
            virtiofs,
            runtime,
        } = self;
        // Dropped (the daemons stopped, then what hvarch created removed) if QEMU did not start.
        let held = Held { virtiofs, runtime };
        let child = spawned.map_err(|e| VmError::Launch {
            reason: format!("cannot execute {}: {e}", assembled.qemu_path.display()),
            stderr: read_from_start(&stderr),
        })?;
        let mut process = Process::new(child);
        process.keep_until_gone(held);
        let started = Started {
            process: P::from(process),
            assembled,
            stderr,
            daemon_events,
            at: Instant::now(),
        };
        Ok((started, client))
    }
}

/// QEMU's process as a VM holds it: [`Process`] or, for an async VM, `AsyncProcess`.
pub(crate) trait Qemu: From<Process> {
    /// The process.
    fn process(&self) -> &Process;

    /// The process, mutable.
    fn process_mut(&mut self) -> &mut Process;
}

impl Qemu for Process {
    fn process(&self) -> &Process {
        self
    }

    fn process_mut(&mut self) -> &mut Process {
        self
    }
}

#[cfg(feature = "tokio")]
impl Qemu for crate::engine::AsyncProcess {
    fn process(&self) -> &Process {
        crate::engine::AsyncProcess::process(self)
    }

    fn process_mut(&mut self) -> &mut Process {
        crate::engine::AsyncProcess::process_mut(self)
    }
}

/// A started QEMU whose QMP client is being connected.
pub(crate) struct Started<P> {
    process: P,
    assembled: Assembled,
    stderr: File,
    daemon_events: DaemonEvents,
    at: Instant,
}

/// What a VM is made of once its QMP client is negotiated, whichever client it is.
pub(crate) struct Launched<Q: Client, P> {
    pub(crate) process: P,
    pub(crate) qmp: Q,
    /// `SHUTDOWN` events, from launch on.
    pub(crate) shutdowns: Q::Subscription,
    /// `DEVICE_DELETED` events, from launch on.
    pub(crate) deleted: Q::Subscription,
    pub(crate) core: crate::vm::Core,
}

impl<P: Qemu> Started<P> {
    /// Takes the client's negotiation: the launched VM, or the launch error with QEMU's
    /// stderr (QEMU killed and reaped, what hvarch created removed).
    pub(crate) fn connected<Q: Client>(
        mut self,
        connected: hvarch_qmp::Result<Q>,
    ) -> VmResult<Launched<Q, P>> {
        let qmp = match connected {
            Ok(qmp) => qmp,
            Err(e) => {
                let process = self.process.process_mut();
                let mut reason = match process.try_wait().ok().flatten() {
                    Some(status) => format!("QEMU exited ({status}) before QMP was ready"),
                    None => format!("QMP not ready: {e}"),
                };
                // A daemon that could not serve its share is a likely cause: say what it said.
                for daemon in process.virtiofs() {
                    let said = daemon.stderr();
                    if !said.trim().is_empty() {
                        reason.push_str(&format!(
                            "; the virtio-fs daemon of share `{}` said: {}",
                            daemon.tag(),
                            said.trim()
                        ));
                    }
                }
                let stderr = read_from_start(&self.stderr);
                return Err(VmError::Launch { reason, stderr });
            }
        };
        // QEMU has created its sockets and pid file (and the daemons theirs): record which
        // files they are, so that only they are removed as leftovers should hvarch be killed.
        if let Some(runtime) = self.process.process().runtime() {
            if let Err(e) = runtime.note_existing() {
                tracing::warn!(error = %e, "cannot record the runtime files QEMU created");
            }
        }
        let shutdowns = qmp.subscribe(EventFilter::name("SHUTDOWN"));
        let early_shutdown = qmp
            .early_events()
            .iter()
            .find(|e| e.name == "SHUTDOWN")
            .map(crate::shutdown::shutdown_reason);
        let deleted = qmp.subscribe(EventFilter::name("DEVICE_DELETED"));
        let pid = self.process.process().id();
        tracing::info!(pid, elapsed = ?self.at.elapsed(), "QEMU ready");
        let core = crate::vm::Core::new(
            self.assembled,
            self.stderr,
            early_shutdown,
            self.daemon_events,
        );
        Ok(Launched {
            process: self.process,
            qmp,
            shutdowns,
            deleted,
            core,
        })
    }
}

/// What the launch needs of a QMP client, blocking or async.
pub(crate) trait Client {
    /// Its event subscription.
    type Subscription;

    /// Subscribes to events matching `filter` from now on.
    fn subscribe(&self, filter: EventFilter) -> Self::Subscription;

    /// Events that arrived during the negotiation.
    fn early_events(&self) -> Vec<Event>;
}

impl Client for hvarch_qmp::Qmp {
    type Subscription = hvarch_qmp::EventSubscription;

    fn subscribe(&self, filter: EventFilter) -> Self::Subscription {
        self.subscribe_filtered(filter)
    }

    fn early_events(&self) -> Vec<Event> {
        self.take_early_events()
    }
}

#[cfg(feature = "tokio")]
impl Client for hvarch_qmp::AsyncQmp {
    type Subscription = hvarch_qmp::AsyncEventSubscription;

    fn subscribe(&self, filter: EventFilter) -> Self::Subscription {
        self.subscribe_filtered(filter)
    }

    fn early_events(&self) -> Vec<Event> {
        self.take_early_events()
    }
}

fn launch_error(reason: impl Into<String>) -> VmError {
    VmError::Launch {
        reason: reason.into(),
        stderr: String::new(),
    }
}

/// The name of `path`, which must be directly inside the runtime directory.
fn name_in(paths: &RuntimePaths, path: &Path, field: &str) -> VmResult<OsString> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if parent == paths.dir => Ok(name.to_os_string()),
        _ => Err(launch_error(format!(
            "`{field}` ({}) must be a file directly inside the runtime directory {}",
            path.display(),
            paths.dir.display()
        ))),
    }
}

/// The names hvarch and QEMU create in the runtime directory: the [`RuntimePaths`] files, the
/// monitor sockets and the virtio-fs daemons' sockets and stderr files directly inside it.
pub(crate) fn runtime_names(assembled: &Assembled, options: &LaunchOptions) -> Vec<OsString> {
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
    let virtiofs = assembled
        .virtiofs
        .iter()
        .flat_map(|share| [share.socket.as_path(), share.stderr.as_path()]);
    let mut names: Vec<OsString> = Vec::new();
    for path in assembled.paths.files().chain(monitors).chain(virtiofs) {
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

/// Starts the daemon of each virtio-fs share on a socket bound in the runtime directory
/// (before QEMU, which connects to it), its stderr in a file beside QEMU's.
fn start_virtiofs(
    assembled: &Assembled,
    runtime: &RuntimeDir,
    events: &DaemonEvents,
) -> VmResult<Vec<Virtiofsd>> {
    let paths = &assembled.paths;
    let mut daemons = Vec::with_capacity(assembled.virtiofs.len());
    for share in &assembled.virtiofs {
        let what = format!("start the virtio-fs daemon of share `{}`", share.tag);
        if !share.shared_dir.is_dir() {
            return Err(VmError::Io {
                what: format!("{what}: shared directory {}", share.shared_dir.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let socket = name_in(paths, &share.socket, "virtiofs[].socket")?;
        let stderr = name_in(paths, &share.stderr, "virtiofs[].stderr")?;
        let listener = runtime
            .bind(&socket)
            .map_err(io(format!("bind {}", share.socket.display())))?;
        let stderr = runtime
            .create_file(&stderr)
            .map_err(io(format!("create {}", share.stderr.display())))?;
        daemons.push(Virtiofsd::spawn(share, listener, stderr, events).map_err(io(what))?);
    }
    Ok(daemons)
}
