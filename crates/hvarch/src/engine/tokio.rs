//! The tokio driver: an engine's steps on an [`AsyncQmp`] client; the blocking driver with
//! `.await`.

use std::future::Future;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::time::Instant;

use hvarch_qmp::{AsyncEventSubscription, AsyncQmp};
use serde_json::Value;

use super::{Driver, Engine, Next, Outcome, Step};

/// Runs engines on an async [`AsyncQmp`] client: [`Driver::run`] returns a future (`Send`,
/// so it can be spawned), which never blocks a runtime thread.
#[derive(Debug)]
pub struct Tokio<'q> {
    qmp: &'q AsyncQmp,
    deleted: Option<&'q mut AsyncEventSubscription>,
}

impl<'q> Tokio<'q> {
    /// A driver on `qmp`, without a standing `DEVICE_DELETED` subscription.
    pub fn new(qmp: &'q AsyncQmp) -> Self {
        Tokio { qmp, deleted: None }
    }

    /// Hands over the events of `deleted` (a subscription to `DEVICE_DELETED` made when the
    /// connection was opened) for [`super::Step::TakeDeleted`].
    pub fn with_deleted(mut self, deleted: &'q mut AsyncEventSubscription) -> Self {
        self.deleted = Some(deleted);
        self
    }

    /// Carries out one step (what [`Driver::run`] does for each; a driver wrapping this one,
    /// to trace or inject faults, calls it).
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
        }
    }
}

impl Driver for Tokio<'_> {
    type Run<'r, T: Send + 'r>
        = Pin<Box<dyn Future<Output = T> + Send + 'r>>
    where
        Self: 'r;

    fn run<'r, T: Send + 'r>(&'r mut self, mut engine: Engine<'r, T>) -> Self::Run<'r, T> {
        Box::pin(async move {
            let mut outcome = None;
            loop {
                match engine.resume(outcome.take(), Instant::now()) {
                    Next::Step(step) => outcome = Some(self.step(step).await),
                    Next::Done(value) => return value,
                }
            }
        })
    }
}
