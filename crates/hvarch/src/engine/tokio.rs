//! The tokio driver: an engine's steps on an [`AsyncQmp`] client (and QEMU's
//! [`AsyncProcess`]); the blocking driver with `.await`. Nothing here blocks a runtime thread.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use hvarch_qmp::{AsyncEventSubscription, AsyncQmp};
use serde_json::Value;
use tokio::io::unix::AsyncFd;

use super::process::POLL_INTERVAL;
use super::{
    deadline, no_process, remaining, Driver, Engine, Next, Outcome, Process, ProcessStep, Step,
};

/// Runs engines on an async [`AsyncQmp`] client (what [`crate::AsyncVm`] uses):
/// [`Driver::run`] returns a future (`Send`, so it can be spawned), which never blocks a
/// runtime thread.
#[derive(Debug)]
pub struct Tokio<'q> {
    qmp: &'q AsyncQmp,
    deleted: Option<&'q mut AsyncEventSubscription>,
    shutdowns: Option<&'q mut AsyncEventSubscription>,
    process: Option<&'q mut AsyncProcess>,
}

impl<'q> Tokio<'q> {
    /// A driver on `qmp`, without standing subscriptions and without QEMU's process (see
    /// [`super::Blocking::new`]).
    pub fn new(qmp: &'q AsyncQmp) -> Self {
        Tokio {
            qmp,
            deleted: None,
            shutdowns: None,
            process: None,
        }
    }

    /// Hands over the events of `deleted` (a subscription to `DEVICE_DELETED` made when the
    /// connection was opened) for [`Step::TakeDeleted`].
    pub fn with_deleted(mut self, deleted: &'q mut AsyncEventSubscription) -> Self {
        self.deleted = Some(deleted);
        self
    }

    /// Takes [`Step::NextShutdown`]'s events from `shutdowns` (a subscription to `SHUTDOWN`
    /// made when the connection was opened).
    pub fn with_shutdowns(mut self, shutdowns: &'q mut AsyncEventSubscription) -> Self {
        self.shutdowns = Some(shutdowns);
        self
    }

    /// Carries out [`Step::Process`] on `process` (QEMU's).
    pub fn with_process(mut self, process: &'q mut AsyncProcess) -> Self {
        self.process = Some(process);
        self
    }

    /// Carries out one step (what [`Driver::run`] does for each; a driver wrapping this one,
    /// to trace or inject faults, calls it: see [`AsyncDriver`]).
    pub async fn step(&mut self, step: Step) -> Outcome {
        let qmp = self.qmp;
        match step {
            Step::Execute { command, timeout } => Outcome::Reply(match timeout {
                Some(timeout) => qmp.execute_with_timeout(&command, timeout).await,
                None => qmp.execute_command(&command).await,
            }),
            Step::GetFd { name, fd } => {
                Outcome::Reply(qmp.getfd(&name, fd.as_fd()).await.map(|()| Value::Null))
            }
            Step::ExecuteAndWaitEvent {
                command,
                event,
                timeout,
            } => {
                let waited = qmp.execute_and_wait_event(&command, &event, timeout).await;
                Outcome::Event(waited.map(|(_, event)| event))
            }
            Step::TakeDeleted => Outcome::Deleted(match self.deleted.as_deref_mut() {
                Some(events) => std::iter::from_fn(|| events.try_recv()).collect(),
                None => Vec::new(),
            }),
            Step::Sleep(duration) => {
                ::tokio::time::sleep(duration).await;
                Outcome::Slept
            }
            Step::NextShutdown(timeout) => Outcome::Event(match self.shutdowns.as_deref_mut() {
                Some(events) => events.recv_timeout(timeout).await,
                None => Err(hvarch_qmp::Error::Disconnected),
            }),
            Step::Process(step) => Outcome::Exit(match self.process.as_deref_mut() {
                Some(process) => match step {
                    ProcessStep::Wait(timeout) => process.wait_timeout(timeout).await,
                    ProcessStep::Kill => process.kill().await.map(Some),
                },
                None => Err(no_process()),
            }),
        }
    }
}

/// A driver whose steps are awaited, as [`Tokio`]'s are: the async counterpart of
/// [`super::SyncDriver`]. A driver wrapping [`Tokio`] (to trace steps or inject faults)
/// implements this by awaiting the inner one's `step`, and runs engines as [`Awaited`].
///
/// ```
/// use hvarch::engine::{AsyncDriver, Awaited, Outcome, Step, Tokio};
///
/// /// Logs every step, then lets the tokio driver carry it out.
/// struct Traced<'q>(Tokio<'q>);
///
/// impl AsyncDriver for Traced<'_> {
///     async fn step(&mut self, step: Step) -> Outcome {
///         tracing::info!(?step, "engine step");
///         self.0.step(step).await
///     }
/// }
///
/// # async fn demo(qmp: &hvarch_qmp::AsyncQmp) -> hvarch::VmResult<()> {
/// use hvarch::engine::Driver;
/// Awaited(Traced(Tokio::new(qmp)))
///     .run(hvarch::lifecycle::wait(std::time::Duration::from_secs(5)))
///     .await
/// # }
/// ```
pub trait AsyncDriver: Send {
    /// Carries out one step.
    fn step(&mut self, step: Step) -> impl Future<Output = Outcome> + Send;
}

impl AsyncDriver for Tokio<'_> {
    async fn step(&mut self, step: Step) -> Outcome {
        Tokio::step(self, step).await
    }
}

/// An [`AsyncDriver`] as a [`Driver`]: [`Driver::run`] returns a future of the engine's
/// result.
#[derive(Debug)]
pub struct Awaited<D>(pub D);

/// What an async driver's [`Driver::run`] returns.
type Run<'r, T> = Pin<Box<dyn Future<Output = T> + Send + 'r>>;

/// The loop of an async driver: each step awaited, the engine resumed with its outcome.
async fn drive<D: AsyncDriver, T: Send>(driver: &mut D, mut engine: Engine<'_, T>) -> T {
    let mut outcome = None;
    loop {
        match engine.resume(outcome.take(), Instant::now()) {
            Next::Step(step) => outcome = Some(driver.step(step).await),
            Next::Done(value) => return value,
        }
    }
}

impl Driver for Tokio<'_> {
    type Run<'r, T: Send + 'r>
        = Run<'r, T>
    where
        Self: 'r;

    fn run<'r, T: Send + 'r>(&'r mut self, engine: Engine<'r, T>) -> Run<'r, T> {
        Box::pin(drive(self, engine))
    }
}

impl<D: AsyncDriver> Driver for Awaited<D> {
    type Run<'r, T: Send + 'r>
        = Run<'r, T>
    where
        Self: 'r;

    fn run<'r, T: Send + 'r>(&'r mut self, engine: Engine<'r, T>) -> Run<'r, T> {
        Box::pin(drive(&mut self.0, engine))
    }
}

/// QEMU's [`Process`] for an async owner: waits are readiness of its pidfd on the runtime's
/// reactor (or, without a pidfd, checks every few milliseconds on the runtime's timer), so
/// they never block a runtime thread. Dropping it kills a child that has not been reaped and
/// reaps it on a background thread (then releases what was to outlive it, such as a VM's
/// runtime directory).
#[derive(Debug)]
pub struct AsyncProcess {
    process: Process,
    /// The pidfd registered with the reactor.
    exited: Option<AsyncFd<OwnedFd>>,
}

impl AsyncProcess {
    /// Takes `process`; must be called within a tokio runtime (its pidfd is registered with the
    /// runtime's reactor; without a runtime, or a pidfd, waits check the child periodically).
    pub fn new(process: Process) -> AsyncProcess {
        let exited = ::tokio::runtime::Handle::try_current()
            .ok()
            .and_then(|_| process.pidfd())
            .and_then(|pidfd| pidfd.try_clone().ok())
            // SAFETY: the clone is a descriptor of our own, owned by the `AsyncFd` until it is
            // dropped (deregistered first), and never replaced or closed meanwhile.
            .and_then(|pidfd| unsafe { AsyncFd::register(pidfd) }.ok());
        AsyncProcess { process, exited }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// Its exit status if it has exited (reaping it), without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.process.try_wait()
    }

    /// Waits up to `timeout` for the child to exit (`Duration::ZERO`: only checks; a timeout
    /// too long for a deadline: as long as it takes).
    pub async fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let until = deadline(Instant::now(), timeout);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let left = remaining(until, Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let Some(exited) = &self.exited else {
                ::tokio::time::sleep(left.min(POLL_INTERVAL)).await;
                continue;
            };
            match ::tokio::time::timeout(left, exited.readable()).await {
                // Readable for good once the child exited: `try_wait` above reaps it.
                Ok(ready) => {
                    let mut ready = ready?;
                    if self.process.try_wait()?.is_none() {
                        ready.clear_ready();
                    }
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Kills the child (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) -> io::Result<ExitStatus> {
        self.process.start_kill()?;
        self.wait_timeout(Duration::MAX)
            .await?
            .ok_or_else(|| io::Error::other("QEMU did not exit after SIGKILL"))
    }

    /// The process it drives.
    pub(crate) fn process(&self) -> &Process {
        &self.process
    }

    /// The process it drives, mutable.
    pub(crate) fn process_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl From<Process> for AsyncProcess {
    fn from(process: Process) -> Self {
        AsyncProcess::new(process)
    }
}

impl Drop for AsyncProcess {
    fn drop(&mut self) {
        // Deregistered here, on the runtime's side, before the pidfd goes.
        drop(self.exited.take());
        self.process.reap_in_background();
    }
}
