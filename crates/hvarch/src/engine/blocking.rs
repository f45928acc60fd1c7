//! The blocking driver: an engine's steps on a [`Qmp`] client, one after the other.

use std::os::fd::AsFd;
use std::time::Instant;

use hvarch_qmp::{EventSubscription, Qmp};
use serde_json::Value;

use super::{Driver, Engine, Next, Outcome, Step};

/// Runs engines on a blocking [`Qmp`] client (what [`crate::Vm`] uses).
#[derive(Debug, Clone, Copy)]
pub struct Blocking<'q> {
    qmp: &'q Qmp,
    deleted: Option<&'q EventSubscription>,
}

impl<'q> Blocking<'q> {
    /// A driver on `qmp`, without a standing `DEVICE_DELETED` subscription
    /// ([`super::Step::TakeDeleted`] then hands over nothing).
    pub fn new(qmp: &'q Qmp) -> Self {
        Blocking { qmp, deleted: None }
    }

    /// Hands over the events of `deleted` (a subscription to `DEVICE_DELETED` made when the
    /// connection was opened) for [`super::Step::TakeDeleted`].
    pub fn with_deleted(mut self, deleted: &'q EventSubscription) -> Self {
        self.deleted = Some(deleted);
        self
    }

    /// Carries out one step (what [`Driver::run`] does for each; a driver wrapping this one,
    /// to trace or inject faults, calls it).
    pub fn step(&self, step: Step) -> Outcome {
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
            } => Outcome::Event(
                qmp.execute_and_wait_event(&command, &event, timeout)
                    .map(|(_, event)| event),
            ),
            Step::TakeDeleted => Outcome::Deleted(
                self.deleted
                    .map(|events| std::iter::from_fn(|| events.try_recv()).collect())
                    .unwrap_or_default(),
            ),
            Step::Sleep(duration) => {
                std::thread::sleep(duration);
                Outcome::Slept
            }
        }
    }
}

impl Driver for Blocking<'_> {
    type Run<'r, T: Send + 'r>
        = T
    where
        Self: 'r;

    fn run<'r, T: Send + 'r>(&'r mut self, mut engine: Engine<'r, T>) -> T {
        let mut outcome = None;
        loop {
            match engine.resume(outcome.take(), Instant::now()) {
                Next::Step(step) => outcome = Some(self.step(step)),
                Next::Done(value) => return value,
            }
        }
    }
}
