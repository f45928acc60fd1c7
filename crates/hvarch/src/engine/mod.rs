//! Sans-IO engines: the hotplug flows and the save/restore sequences as state machines that
//! yield QMP [`Step`]s and consume their [`Outcome`]s, and the [`Driver`]s that carry the
//! steps out on a QMP connection.
//!
//! # Why
//!
//! A flow (hot-plug a disk and undo what was done if a step fails, save a VM and cancel a
//! migration that does not finish) is a sequence of decisions between QMP exchanges. Written
//! against a blocking client it could not serve an async caller, and a second copy for tokio
//! would drift. So, like `hvarch-qmp`'s protocol core, the flows do no I/O: an [`Engine`]
//! says what to send next ([`Engine::resume`] returns [`Next::Step`]) and is told what came
//! back; every decision (placement, undo order, what a timeout means) is the engine's. A
//! driver only executes steps:
//!
//! - [`Blocking`] over [`hvarch_qmp::Qmp`] (what [`crate::Vm`] uses). It is a [`SyncDriver`]:
//!   anything that carries out one step at a time is a [`Driver`] that way, such as a test's
//!   scripted driver (which answers steps without any socket, so the exact command sequence
//!   of a flow is tested on the engine itself and then once per driver) or a wrapper that
//!   traces steps or injects faults;
//! - `Tokio` over `hvarch_qmp::AsyncQmp` (feature `tokio`): the same steps, awaited.
//!
//! ```
//! use std::time::Duration;
//! use hvarch::engine::{Driver, Outcome, Step, SyncDriver};
//! use serde_json::json;
//!
//! /// A QEMU whose migration has completed.
//! struct Completed;
//!
//! impl SyncDriver for Completed {
//!     fn step(&mut self, step: Step) -> Outcome {
//!         match step {
//!             Step::Execute { command, .. } if command.name == "query-migrate" => {
//!                 Outcome::Reply(Ok(json!({"status": "completed"})))
//!             }
//!             other => panic!("unexpected step {other:?}"),
//!         }
//!     }
//! }
//!
//! let waited = Completed.run(hvarch::lifecycle::wait(Duration::from_secs(5)));
//! assert!(waited.is_ok());
//! ```
//!
//! # How a flow is written
//!
//! A flow is an `async fn` over its engine's port (crate-private), whose only await points
//! are QMP steps: awaiting a step hands it to the [`Engine`] and suspends the flow until the
//! driver resumes the engine with the outcome. The engine polls the flow with a no-op waker; no
//! runtime is involved, and the compiler writes the state machine. A flow awaits nothing but
//! its port (and other flows).
//!
//! # Time
//!
//! An engine never reads the clock: the driver passes the time with every
//! [`Engine::resume`], so a scripted driver can replay timeouts deterministically. Durations
//! are never added to an [`Instant`] unchecked: a deadline that does not fit is no deadline
//! ([`deadline`]).

use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hvarch_devices::fd::SharedFd;
use hvarch_qmp::{Command, Event, EventFilter};
use serde_json::Value;

mod blocking;
mod process;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "tokio")]
pub use self::tokio::{AsyncDriver, AsyncProcess, Awaited, Tokio};
pub use blocking::Blocking;
pub use process::Process;
pub(crate) use process::{stop_virtiofs, Held};

/// One QMP exchange an engine asks its driver to carry out.
///
/// Deliberately not `#[non_exhaustive]`: a new kind of step is one every driver must learn.
#[derive(Debug)]
pub enum Step {
    /// Execute `command` and wait for its reply: [`Outcome::Reply`].
    Execute {
        /// The command.
        command: Command,
        /// How long to wait for the reply; `None` is the client's command timeout.
        timeout: Option<Duration>,
    },
    /// Pass `fd` to QEMU under `name` (`getfd`, the descriptor sent with `SCM_RIGHTS`):
    /// [`Outcome::Reply`]. The step holds a reference to the descriptor until the driver has
    /// sent it.
    GetFd {
        /// The name QEMU files the descriptor under.
        name: String,
        /// The descriptor.
        fd: SharedFd,
    },
    /// Register a listener for `event`, then execute `command`, then wait for the event, all
    /// within `timeout`: [`Outcome::Event`]. The listener must be in place before the command
    /// is sent, so the event cannot race past it.
    ExecuteAndWaitEvent {
        /// The command.
        command: Command,
        /// The event awaited.
        event: EventFilter,
        /// The bound on the whole exchange.
        timeout: Duration,
    },
    /// Hand over every `DEVICE_DELETED` event received since the last such step on the
    /// connection's standing subscription (none if the driver has none): [`Outcome::Deleted`].
    /// No QMP traffic.
    TakeDeleted,
    /// Wait this long: [`Outcome::Slept`].
    Sleep(Duration),
    /// Wait up to this long for QEMU's next `SHUTDOWN` event on the connection's standing
    /// subscription (made at launch, so events that came before count; `Duration::ZERO` only
    /// takes one already received): [`Outcome::Event`], an error when none came in time, once
    /// the connection closed and every event was handed over, or when the driver has no such
    /// subscription. No QMP traffic.
    NextShutdown(Duration),
    /// A step on QEMU's process: [`Outcome::Exit`] (an error when the driver controls no
    /// process).
    Process(ProcessStep),
}

/// What a [`Step::Process`] asks of QEMU's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessStep {
    /// Wait up to this long for it to exit (`Duration::ZERO`: only check; a duration too long
    /// for a deadline: as long as it takes). Its exit status, or `None` if it still runs.
    Wait(Duration),
    /// Kill it (SIGKILL) and wait for it to exit. Its exit status.
    Kill,
}

/// What came of a [`Step`].
#[derive(Debug)]
pub enum Outcome {
    /// The reply to [`Step::Execute`] or [`Step::GetFd`] (`getfd` replies `{}`).
    Reply(hvarch_qmp::Result<Value>),
    /// The event of [`Step::ExecuteAndWaitEvent`], or why there is none (the command was
    /// refused or timed out, the event did not come in time, the connection closed).
    Event(hvarch_qmp::Result<Event>),
    /// The `DEVICE_DELETED` events of [`Step::TakeDeleted`], oldest first.
    Deleted(Vec<Event>),
    /// [`Step::Sleep`] is over.
    Slept,
    /// What came of a [`Step::Process`]: QEMU's exit status once it exited, `None` while it
    /// runs.
    Exit(std::io::Result<Option<ExitStatus>>),
}

/// What an engine wants next.
#[derive(Debug)]
pub enum Next<T> {
    /// Carry out this step, then [`Engine::resume`] with its outcome.
    Step(Step),
    /// The engine is done; this is its result. It must not be resumed again.
    Done(T),
}

/// A flow's future, polled by its [`Engine`].
type Flow<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What passes between an engine and its flow: the step the flow waits on, the outcome the
/// driver brought back, and the time.
#[derive(Debug)]
struct Exchange {
    step: Option<Step>,
    outcome: Option<Outcome>,
    now: Instant,
}

type Shared = Arc<Mutex<Exchange>>;

fn exchange(shared: &Shared) -> std::sync::MutexGuard<'_, Exchange> {
    // Nothing panics while holding the lock; a poisoned lock still holds consistent data.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A sans-IO state machine producing a `T`: resume it with the outcome of the last step until
/// it is [`Next::Done`] (see the [module docs](self)).
///
/// Engines are built by the hotplug flows ([`crate::hotplug::Hotplugger`]) and the save and
/// restore sequences ([`crate::lifecycle`]); a [`Driver`] runs them.
pub struct Engine<'a, T> {
    shared: Shared,
    flow: Option<Flow<'a, T>>,
}

impl<T> std::fmt::Debug for Engine<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("exchange", &*exchange(&self.shared))
            .field("done", &self.flow.is_none())
            .finish()
    }
}

impl<'a, T: Send + 'a> Engine<'a, T> {
    /// An engine running the flow `start` builds around its port.
    pub(crate) fn new<F, Fut>(start: F) -> Self
    where
        F: FnOnce(Port) -> Fut,
        Fut: Future<Output = T> + Send + 'a,
    {
        let shared: Shared = Arc::new(Mutex::new(Exchange {
            step: None,
            outcome: None,
            now: Instant::now(),
        }));
        let flow = start(Port {
            shared: shared.clone(),
        });
        Engine {
            shared,
            flow: Some(Box::pin(flow)),
        }
    }

    /// Resumes the engine with the outcome of the step it asked for (`None` the first time)
    /// at time `now`; returns the next step or the result.
    ///
    /// # Panics
    ///
    /// Like a future polled after completion, an engine resumed after it returned
    /// [`Next::Done`] panics: that is a bug in the driver.
    pub fn resume(&mut self, outcome: Option<Outcome>, now: Instant) -> Next<T> {
        {
            let mut exchange = exchange(&self.shared);
            exchange.outcome = outcome;
            exchange.now = now;
        }
        let Some(flow) = self.flow.as_mut() else {
            panic!("hvarch engine resumed after it was done (a driver bug)");
        };
        match flow.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(value) => {
                self.flow = None;
                Next::Done(value)
            }
            Poll::Pending => match exchange(&self.shared).step.take() {
                Some(step) => Next::Step(step),
                // Flows await nothing but their port: this cannot happen.
                None => panic!("hvarch engine flow is waiting on something other than a step"),
            },
        }
    }

    /// Runs the engine to completion from time `start`, carrying out each step with `step`,
    /// which returns the outcome and the time it came: the loop of a synchronous driver.
    pub fn run_with(
        mut self,
        start: Instant,
        mut step: impl FnMut(Step) -> (Outcome, Instant),
    ) -> T {
        let (mut outcome, mut now) = (None, start);
        loop {
            match self.resume(outcome.take(), now) {
                Next::Step(next) => {
                    let (came, at) = step(next);
                    (outcome, now) = (Some(came), at);
                }
                Next::Done(value) => return value,
            }
        }
    }
}

/// Carries out an engine's steps on a QMP connection: [`Blocking`], `Tokio`, or a test's
/// scripted driver.
///
/// [`crate::hotplug::Hotplugger`] is generic over its driver: with [`Blocking`] its methods
/// return their results, with `Tokio` they return futures of them.
pub trait Driver {
    /// What [`Driver::run`] gives for an engine producing `T`: `T` itself for a blocking
    /// driver, a future of `T` for an async one.
    type Run<'r, T: Send + 'r>
    where
        Self: 'r;

    /// Runs `engine` to completion.
    fn run<'r, T: Send + 'r>(&'r mut self, engine: Engine<'r, T>) -> Self::Run<'r, T>;
}

/// A driver that carries out each step before it returns (as [`Blocking`] does): it is a
/// [`Driver`] whose [`Driver::run`] returns the engine's result. A driver wrapping another
/// (to trace steps or inject faults) implements this by calling the inner one's `step`.
pub trait SyncDriver {
    /// Carries out one step.
    fn step(&mut self, step: Step) -> Outcome;

    /// The time the engine sees with each outcome (a test may replay a clock of its own).
    fn now(&self) -> Instant {
        Instant::now()
    }
}

impl<S: SyncDriver> Driver for S {
    type Run<'r, T: Send + 'r>
        = T
    where
        Self: 'r;

    fn run<'r, T: Send + 'r>(&'r mut self, mut engine: Engine<'r, T>) -> T {
        let mut outcome = None;
        loop {
            match engine.resume(outcome.take(), self.now()) {
                Next::Step(step) => outcome = Some(self.step(step)),
                Next::Done(value) => return value,
            }
        }
    }
}

/// A flow's side of its engine: each method is one [`Step`], awaited.
#[derive(Debug)]
pub(crate) struct Port {
    shared: Shared,
}

/// The future of one step: pending until the driver brought its outcome back.
struct Pending<'p> {
    shared: &'p Shared,
    step: Option<Step>,
}

impl Future for Pending<'_> {
    type Output = Option<Outcome>;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Outcome>> {
        let mut exchange = exchange(self.shared);
        match self.step.take() {
            Some(step) => {
                exchange.step = Some(step);
                Poll::Pending
            }
            None => Poll::Ready(exchange.outcome.take()),
        }
    }
}

/// The error a flow sees when a driver answers a step with the wrong kind of outcome.
fn mismatch(step: &str, outcome: Option<Outcome>) -> hvarch_qmp::Error {
    hvarch_qmp::Error::Protocol(format!(
        "the engine's driver answered a {step} step with {outcome:?}"
    ))
}

impl Port {
    async fn step(&self, step: Step) -> Option<Outcome> {
        Pending {
            shared: &self.shared,
            step: Some(step),
        }
        .await
    }

    /// The time the driver gave with the last outcome.
    pub(crate) fn now(&self) -> Instant {
        exchange(&self.shared).now
    }

    /// Executes `command` with the client's command timeout.
    pub(crate) async fn execute(&self, command: Command) -> hvarch_qmp::Result<Value> {
        self.execute_within(command, None).await
    }

    /// Executes `command`, waiting at most `timeout` for the reply (`None`: the client's
    /// command timeout).
    pub(crate) async fn execute_within(
        &self,
        command: Command,
        timeout: Option<Duration>,
    ) -> hvarch_qmp::Result<Value> {
        match self.step(Step::Execute { command, timeout }).await {
            Some(Outcome::Reply(reply)) => reply,
            other => Err(mismatch("command", other)),
        }
    }

    /// Passes `fd` to QEMU as `name`.
    pub(crate) async fn getfd(&self, name: String, fd: SharedFd) -> hvarch_qmp::Result<()> {
        match self.step(Step::GetFd { name, fd }).await {
            Some(Outcome::Reply(reply)) => reply.map(drop),
            other => Err(mismatch("getfd", other)),
        }
    }

    /// Executes `command` and waits for `event`, all within `timeout`.
    pub(crate) async fn execute_and_wait_event(
        &self,
        command: Command,
        event: EventFilter,
        timeout: Duration,
    ) -> hvarch_qmp::Result<Event> {
        let step = Step::ExecuteAndWaitEvent {
            command,
            event,
            timeout,
        };
        match self.step(step).await {
            Some(Outcome::Event(event)) => event,
            other => Err(mismatch("command-and-event", other)),
        }
    }

    /// The `DEVICE_DELETED` events received since the last call.
    pub(crate) async fn take_deleted(&self) -> Vec<Event> {
        match self.step(Step::TakeDeleted).await {
            Some(Outcome::Deleted(events)) => events,
            other => {
                tracing::error!(outcome = ?other, "the engine's driver did not hand over events");
                Vec::new()
            }
        }
    }

    /// Waits up to `timeout` for QEMU's next `SHUTDOWN` event.
    pub(crate) async fn next_shutdown(&self, timeout: Duration) -> hvarch_qmp::Result<Event> {
        match self.step(Step::NextShutdown(timeout)).await {
            Some(Outcome::Event(event)) => event,
            other => Err(mismatch("SHUTDOWN", other)),
        }
    }

    /// Carries out `step` on QEMU's process.
    pub(crate) async fn process(&self, step: ProcessStep) -> std::io::Result<Option<ExitStatus>> {
        match self.step(Step::Process(step)).await {
            Some(Outcome::Exit(exit)) => exit,
            other => Err(std::io::Error::other(mismatch("process", other))),
        }
    }

    /// Waits `duration`.
    pub(crate) async fn sleep(&self, duration: Duration) {
        if !matches!(self.step(Step::Sleep(duration)).await, Some(Outcome::Slept)) {
            tracing::error!("the engine's driver did not sleep");
        }
    }
}

/// What a driver without QEMU's process answers a [`Step::Process`] with.
fn no_process() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the engine's driver controls no QEMU process",
    )
}

/// `now + timeout`, or `None` (no deadline) when that does not fit in an [`Instant`].
pub fn deadline(now: Instant, timeout: Duration) -> Option<Instant> {
    now.checked_add(timeout)
}

/// The time left until `deadline` (`None`: no deadline, [`Duration::MAX`]).
pub fn remaining(deadline: Option<Instant>, now: Instant) -> Duration {
    deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A flow of two commands; the second one's argument is the first one's reply.
    async fn chain(port: Port) -> hvarch_qmp::Result<Value> {
        let first = port.execute(Command::bare("first")).await?;
        port.execute(Command::new("second", json!({ "got": first })))
            .await
    }

    /// Answers each command with the next outcome, and keeps the commands.
    struct Replies(std::vec::IntoIter<Outcome>, Vec<Command>);

    impl SyncDriver for Replies {
        fn step(&mut self, step: Step) -> Outcome {
            match step {
                Step::Execute { command, .. } => self.1.push(command),
                other => panic!("expected a command, got {other:?}"),
            }
            self.0.next().expect("an outcome")
        }
    }

    /// The commands [`chain`] sends when each is answered by the next of `outcomes`, and
    /// its result.
    fn run_chain(outcomes: Vec<Outcome>) -> (Vec<Command>, hvarch_qmp::Result<Value>) {
        let mut driver = Replies(outcomes.into_iter(), Vec::new());
        let result = driver.run(Engine::new(chain));
        (driver.1, result)
    }

    #[test]
    fn an_engine_yields_steps_and_consumes_outcomes() {
        let replies = vec![
            Outcome::Reply(Ok(json!(7))),
            Outcome::Reply(Ok(json!("done"))),
        ];
        let (sent, result) = run_chain(replies);
        assert_eq!(sent[0].name, "first");
        assert_eq!(sent[1].arguments, json!({"got": 7}));
        assert_eq!(result.expect("done"), "done");
    }

    #[test]
    fn a_refused_step_ends_the_flow_with_its_error() {
        let refused = hvarch_qmp::Error::Command {
            command: "first".into(),
            class: "GenericError".into(),
            desc: "no".into(),
        };
        let (sent, result) = run_chain(vec![Outcome::Reply(Err(refused))]);
        assert_eq!(sent.len(), 1);
        assert!(matches!(result, Err(hvarch_qmp::Error::Command { desc, .. }) if desc == "no"));
    }

    #[test]
    fn a_wrong_outcome_is_a_protocol_error_not_a_panic() {
        let (_, result) = run_chain(vec![Outcome::Slept]);
        match result {
            Err(hvarch_qmp::Error::Protocol(reason)) => {
                assert!(reason.contains("Slept"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_engine_sees_the_drivers_time() {
        let mut engine = Engine::new(|port: Port| async move {
            port.sleep(Duration::from_secs(1)).await;
            port.now()
        });
        let start = Instant::now();
        assert!(matches!(
            engine.resume(None, start),
            Next::Step(Step::Sleep(d)) if d == Duration::from_secs(1)
        ));
        let later = start + Duration::from_secs(1);
        match engine.resume(Some(Outcome::Slept), later) {
            Next::Done(now) => assert_eq!(now, later),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_flow_without_steps_is_done_at_once() {
        let mut engine = Engine::new(|_port| async { 5 });
        assert!(matches!(engine.resume(None, Instant::now()), Next::Done(5)));
    }

    #[test]
    fn deadlines_that_do_not_fit_are_none() {
        let now = Instant::now();
        assert_eq!(deadline(now, Duration::MAX), None);
        assert_eq!(remaining(None, now), Duration::MAX);
        let soon = deadline(now, Duration::from_millis(5));
        assert_eq!(remaining(soon, now), Duration::from_millis(5));
        assert_eq!(
            remaining(soon, now + Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
