//! The blocking driver: an engine's steps on a [`Qmp`] client, one after the other.

use std::os::fd::AsFd;

use hvarch_qmp::{EventSubscription, Qmp};
use serde_json::Value;

use super::{Outcome, Step, SyncDriver};

/// Runs engines on a blocking [`Qmp`] client (what [`crate::Vm`] uses): a [`SyncDriver`],
/// so a [`super::Driver`] whose `run` returns the engine's result.
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
        }
    }
}
