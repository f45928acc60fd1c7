//! The blocking driver: an engine's steps on a [`Qmp`] client (and QEMU's [`Process`]), one
//! after the other.

use std::os::fd::AsFd;

use hvarch_qmp::{EventSubscription, Qmp};
use serde_json::Value;

use super::{no_process, Outcome, Process, ProcessStep, Step, SyncDriver};

/// Runs engines on a blocking [`Qmp`] client (what [`crate::Vm`] uses): a [`SyncDriver`],
/// so a [`super::Driver`] whose `run` returns the engine's result.
#[derive(Debug)]
pub struct Blocking<'q> {
    qmp: &'q Qmp,
    deleted: Option<&'q EventSubscription>,
    shutdowns: Option<&'q EventSubscription>,
    process: Option<&'q mut Process>,
}

impl<'q> Blocking<'q> {
    /// A driver on `qmp`, without standing subscriptions ([`Step::TakeDeleted`] then hands
    /// over nothing, [`Step::NextShutdown`] fails) and without QEMU's process
    /// ([`Step::Process`] fails).
    pub fn new(qmp: &'q Qmp) -> Self {
        Blocking {
            qmp,
            deleted: None,
            shutdowns: None,
            process: None,
        }
    }

    /// Hands over the events of `deleted` (a subscription to `DEVICE_DELETED` made when the
    /// connection was opened) for [`Step::TakeDeleted`].
    pub fn with_deleted(mut self, deleted: &'q EventSubscription) -> Self {
        self.deleted = Some(deleted);
        self
    }

    /// Takes [`Step::NextShutdown`]'s events from `shutdowns` (a subscription to `SHUTDOWN`
    /// made when the connection was opened).
    pub fn with_shutdowns(mut self, shutdowns: &'q EventSubscription) -> Self {
        self.shutdowns = Some(shutdowns);
        self
    }

    /// Carries out [`Step::Process`] on `process` (QEMU's).
    pub fn with_process(mut self, process: &'q mut Process) -> Self {
        self.process = Some(process);
        self
    }
}

impl SyncDriver for Blocking<'_> {
    fn step(&mut self, step: Step) -> Outcome {
        let qmp = self.qmp;
        match step {
            Step::Execute { command, timeout } => Outcome::Reply(match timeout {
                Some(timeout) => qmp.execute_with_timeout(&command, timeout),
                None => qmp.execute_command(&command),
            }),
            Step::GetFd { name, fd } => {
                Outcome::Reply(qmp.getfd(&name, fd.as_fd()).map(|()| Value::Null))
            }
            Step::ExecuteAndWaitEvent {
                command,
                event,
                timeout,
            } => {
                let waited = qmp.execute_and_wait_event(&command, &event, timeout);
                Outcome::Event(waited.map(|(_, event)| event))
            }
            Step::TakeDeleted => Outcome::Deleted(
                self.deleted
                    .map(|events| std::iter::from_fn(|| events.try_recv()).collect())
                    .unwrap_or_default(),
            ),
            Step::Sleep(duration) => {
                std::thread::sleep(duration);
                Outcome::Slept
            }
            Step::NextShutdown(timeout) => Outcome::Event(match self.shutdowns {
                Some(events) => events.recv_timeout(timeout),
                None => Err(hvarch_qmp::Error::Disconnected),
            }),
            Step::Process(step) => Outcome::Exit(match self.process.as_deref_mut() {
                Some(process) => match step {
                    ProcessStep::Wait(timeout) => process.wait_timeout(timeout),
                    ProcessStep::Kill => process.kill().map(Some),
                },
                None => Err(no_process()),
            }),
        }
    }
}
