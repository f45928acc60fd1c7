//! The shutdown ladder as an engine (see [`crate::engine`]): ask the guest to power off, give
//! it a grace period, then `quit` QEMU, then kill it, and say which of them ended the VM
//! ([`ShutdownOutcome`]). [`crate::Vm::shutdown`] and `AsyncVm::shutdown` run it with their
//! drivers; its exact steps are tested on the engine alone and on each driver.
//!
//! The ladder, the way libvirt's `virsh shutdown` then `destroy` goes:
//!
//! 1. the `SHUTDOWN` events already received are noted (a guest that powered off on its own);
//!    unless QEMU has exited or the guest is off, `system_powerdown`, then up to the grace
//!    period for QEMU's `SHUTDOWN` event (reason `guest-shutdown`) → [`EndedBy::PoweredOff`];
//! 2. after a `SHUTDOWN`, QEMU exits by itself (unless it runs with `-no-shutdown`): up to
//!    [`EXIT_TIMEOUT`] for that;
//! 3. if QEMU still runs, `quit`, and up to [`EXIT_TIMEOUT`] for it to exit →
//!    [`EndedBy::Quit`];
//! 4. if it still runs, SIGKILL → [`EndedBy::Killed`];
//! 5. the events QEMU sent before it went are read (up to [`DRAIN_TIMEOUT`]: they are in the
//!    socket already, the wait ends at the end of the stream), and the first `SHUTDOWN`'s
//!    reason classifies the end ([`EndedBy`]).
//!
//! Process steps ([`Step::Process`](crate::engine::Step::Process)) ask whether QEMU has exited,
//! wait for it and kill it; [`Step::NextShutdown`](crate::engine::Step::NextShutdown) reads the
//! `SHUTDOWN` subscription the VM made at launch.
//!
//! ```
//! use std::os::unix::process::ExitStatusExt;
//! use std::process::ExitStatus;
//! use std::time::Duration;
//! use hvarch::engine::{Driver, Outcome, ProcessStep, Step, SyncDriver};
//! use hvarch::shutdown::{EndedBy, ShutdownLadder};
//! use hvarch_qmp::{Event, Timestamp};
//! use serde_json::json;
//!
//! /// A guest that powers off when asked; QEMU then exits.
//! #[derive(Default)]
//! struct Cooperating {
//!     events: Vec<Event>,
//!     exited: bool,
//! }
//!
//! impl SyncDriver for Cooperating {
//!     fn step(&mut self, step: Step) -> Outcome {
//!         match step {
//!             Step::Execute { command, .. } if command.name == "system_powerdown" => {
//!                 let data = json!({"guest": true, "reason": "guest-shutdown"});
//!                 let timestamp = Timestamp::default();
//!                 self.events.push(Event { name: "SHUTDOWN".into(), data, timestamp });
//!                 self.exited = true;
//!                 Outcome::Reply(Ok(json!({})))
//!             }
//!             Step::NextShutdown(_) if !self.events.is_empty() => {
//!                 Outcome::Event(Ok(self.events.remove(0)))
//!             }
//!             Step::NextShutdown(_) => Outcome::Event(Err(hvarch_qmp::Error::Disconnected)),
//!             Step::Process(ProcessStep::Wait(_)) => {
//!                 Outcome::Exit(Ok(self.exited.then(|| ExitStatus::from_raw(0))))
//!             }
//!             other => panic!("unexpected step {other:?}"),
//!         }
//!     }
//! }
//!
//! let ladder = ShutdownLadder::new(Duration::from_secs(10), false);
//! let outcome = Cooperating::default().run(ladder.engine()).unwrap();
//! assert_eq!(outcome.ended_by, EndedBy::PoweredOff);
//! ```

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use hvarch_qmp::{commands, Event};

use crate::engine::{deadline, remaining, Engine, Port, ProcessStep};
use crate::vm::{VmError, VmResult};

/// The least time `system_powerdown` is given to be answered, even with a zero grace.
pub const POWERDOWN_MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// How long `quit` is given to be answered, unless the ladder is given another
/// ([`ShutdownLadder::quit_timeout`]).
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long QEMU is given to exit after `quit` (or after the guest powered off), unless the
/// ladder is given another ([`ShutdownLadder::exit_timeout`]).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(3);
/// A bound on reading the events QEMU sent before it exited (they are already in the
/// socket: the wait ends as soon as the reader reaches the end of the stream).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What ended a VM: the rung of the shutdown ladder, or what else did.
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

/// How a VM ended, as the shutdown ladder ([`crate::Vm::shutdown`]) reports it.
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

/// The shutdown ladder (see the [module docs](self)): [`ShutdownLadder::engine`] is its
/// engine.
#[derive(Clone, Debug)]
pub struct ShutdownLadder {
    grace: Duration,
    no_shutdown: bool,
    reason: Option<String>,
    quit_timeout: Duration,
    exit_timeout: Duration,
}

impl ShutdownLadder {
    /// A ladder giving the guest `grace` to power off (a grace too long for a deadline waits
    /// as long as it takes), for a QEMU that stays after a `SHUTDOWN` when `no_shutdown`
    /// (`-no-shutdown`).
    pub fn new(grace: Duration, no_shutdown: bool) -> Self {
        ShutdownLadder {
            grace,
            no_shutdown,
            reason: None,
            quit_timeout: QUIT_TIMEOUT,
            exit_timeout: EXIT_TIMEOUT,
        }
    }

    /// Notes the reason of a `SHUTDOWN` QEMU sent before the standing subscription existed
    /// (during the QMP negotiation at launch): the guest is off already.
    pub fn after(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }

    /// How long `quit` is given to be answered ([`QUIT_TIMEOUT`] by default).
    pub fn quit_timeout(mut self, timeout: Duration) -> Self {
        self.quit_timeout = timeout;
        self
    }

    /// How long QEMU is given to exit after `quit` or a `SHUTDOWN` ([`EXIT_TIMEOUT`] by
    /// default).
    pub fn exit_timeout(mut self, timeout: Duration) -> Self {
        self.exit_timeout = timeout;
        self
    }

    /// The ladder as an engine, for a driver with QEMU's process and the VM's `SHUTDOWN`
    /// subscription. Its error is a [`VmError::Io`] when the process cannot be waited for
    /// or killed.
    pub fn engine(self) -> Engine<'static, VmResult<ShutdownOutcome>> {
        Engine::new(move |port| async move { self.climb(&port).await })
    }

    async fn climb(self, port: &Port) -> VmResult<ShutdownOutcome> {
        let mut seen = Seen(self.reason.clone());
        let mut rung = Rung::None;
        // SHUTDOWN events that came before (the guest powered off on its own).
        while let Ok(event) = port.next_shutdown(Duration::ZERO).await {
            seen.note(&event);
        }
        if exited(port, Duration::ZERO).await?.is_none() && seen.0.is_none() {
            rung = Rung::PowerDown;
            // Bounded like `quit` below: a hung QEMU must not hold us for the command timeout.
            let timeout = self.grace.max(POWERDOWN_MIN_TIMEOUT);
            let powerdown = port
                .execute_within(commands::system_powerdown(), Some(timeout))
                .await;
            if powerdown.is_ok() {
                seen.wait(port, deadline(port.now(), self.grace), false)
                    .await;
            }
        }
        if seen.0.is_some() && !self.no_shutdown {
            // QEMU exits by itself after a SHUTDOWN (no `-no-shutdown`): let it.
            self.let_exit(port, &mut seen).await?;
        }
        let mut quit_sent = false;
        if exited(port, Duration::ZERO).await?.is_none() {
            quit_sent = true;
            // `quit` may lose the race with an exiting QEMU: only an answered `quit` counts
            // (or QEMU's own word for it, below); the wait decides whether it worked.
            let quit = port.execute_within(commands::quit(), Some(self.quit_timeout));
            if quit.await.is_ok() {
                rung = Rung::Quit;
            }
            self.let_exit(port, &mut seen).await?;
        }
        let status = match exited(port, Duration::ZERO).await? {
            Some(status) => status,
            None => {
                rung = Rung::Kill;
                tracing::warn!("QEMU ignored quit; killing it");
                let killed = port.process(ProcessStep::Kill).await;
                killed
                    .map_err(io("kill QEMU"))?
                    .ok_or_else(|| io("kill QEMU")(std::io::Error::other("no exit status")))?
            }
        };
        // QEMU is gone: what it said before it went is in the socket already.
        seen.wait(port, deadline(port.now(), DRAIN_TIMEOUT), true)
            .await;
        if quit_sent && seen.0.as_deref() == Some("host-qmp-quit") {
            // QEMU quit on a QMP `quit`: ours, whose answer was lost as QEMU went.
            rung = rung.max(Rung::Quit);
        }
        Ok(ShutdownOutcome {
            status,
            ended_by: EndedBy::classify(seen.0.as_deref(), rung),
            reason: seen.0,
        })
    }

    /// Gives QEMU [`ShutdownLadder::exit_timeout`] to exit, noting `SHUTDOWN` events until
    /// its connection closes.
    async fn let_exit(&self, port: &Port, seen: &mut Seen) -> VmResult<()> {
        let until = deadline(port.now(), self.exit_timeout);
        seen.wait(port, until, true).await;
        port.process(ProcessStep::Wait(remaining(until, port.now())))
            .await
            .map_err(io("wait for QEMU"))?;
        Ok(())
    }
}

/// Whether QEMU has exited within `timeout`: its status.
async fn exited(port: &Port, timeout: Duration) -> VmResult<Option<ExitStatus>> {
    port.process(ProcessStep::Wait(timeout))
        .await
        .map_err(io("wait for QEMU"))
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io {
        what: what.into(),
        source,
    }
}

/// The reason of QEMU's first `SHUTDOWN` event, once seen.
struct Seen(Option<String>);

impl Seen {
    /// Keeps the reason of the first `SHUTDOWN` event (`{"guest": bool, "reason": "…"}`).
    fn note(&mut self, event: &Event) {
        if self.0.is_none() {
            self.0 = Some(shutdown_reason(event));
            tracing::debug!(reason = ?self.0, data = %event.data, "QEMU SHUTDOWN");
        }
    }

    /// Waits for a `SHUTDOWN` event (or, with `until_closed`, for the end of the QMP
    /// connection, noting the event on the way) until `until` (`None`: no deadline).
    async fn wait(&mut self, port: &Port, until: Option<Instant>, until_closed: bool) {
        loop {
            let left = remaining(until, port.now());
            if until.is_some() && left.is_zero() {
                return;
            }
            match port.next_shutdown(left).await {
                Ok(event) => {
                    self.note(&event);
                    if !until_closed {
                        return;
                    }
                }
                // Timed out, or QEMU closed the connection.
                Err(_) => return,
            }
        }
    }
}

/// The reason of a `SHUTDOWN` event (`{"guest": bool, "reason": "…"}`).
pub(crate) fn shutdown_reason(event: &Event) -> String {
    event
        .data
        .get("reason")
        .and_then(|r| r.as_str())
        .unwrap_or("unknown")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use hvarch_qmp::Timestamp;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::engine::{Driver, Outcome, Step, SyncDriver};

    /// A QEMU modelled step by step (no socket, no process, no clock): the ladder's engine
    /// alone. The same guests run on `Vm` and `AsyncVm` against a fake QMP server in
    /// [`crate::vm`]'s tests.
    #[derive(Default)]
    struct Model {
        /// The guest powers off on `system_powerdown`.
        powers_off: bool,
        /// QEMU obeys `quit`.
        quits: bool,
        /// `SHUTDOWN` events not yet handed over.
        events: VecDeque<Event>,
        exited: Option<ExitStatus>,
        /// The commands received.
        commands: Vec<String>,
    }

    fn shutdown(reason: &str) -> Event {
        Event {
            name: "SHUTDOWN".into(),
            data: json!({"guest": reason.starts_with("guest"), "reason": reason}),
            timestamp: Timestamp::default(),
        }
    }

    impl Model {
        fn exit(&mut self, reason: &str) {
            self.events.push_back(shutdown(reason));
            self.exited = Some(ExitStatus::from_raw(0));
        }
    }

    impl SyncDriver for Model {
        fn step(&mut self, step: Step) -> Outcome {
            match step {
                Step::Execute { .. } if self.exited.is_some() => {
                    Outcome::Reply(Err(hvarch_qmp::Error::Disconnected))
                }
                Step::Execute { command, timeout } => {
                    self.commands.push(command.name.clone());
                    match command.name.as_str() {
                        "system_powerdown" if self.powers_off => self.exit("guest-shutdown"),
                        "quit" if self.quits => self.exit("host-qmp-quit"),
                        "system_powerdown" => {}
                        _ => {
                            let what = command.name.clone();
                            let after = timeout.unwrap_or_default();
                            return Outcome::Reply(Err(hvarch_qmp::Error::Timeout { what, after }));
                        }
                    }
                    Outcome::Reply(Ok(json!({})))
                }
                Step::NextShutdown(after) => Outcome::Event(match self.events.pop_front() {
                    Some(event) => Ok(event),
                    None if self.exited.is_some() => Err(hvarch_qmp::Error::Disconnected),
                    None => Err(hvarch_qmp::Error::Timeout {
                        what: "SHUTDOWN".into(),
                        after,
                    }),
                }),
                Step::Process(ProcessStep::Wait(_)) => Outcome::Exit(Ok(self.exited)),
                Step::Process(ProcessStep::Kill) => {
                    let killed = *self
                        .exited
                        .get_or_insert(ExitStatus::from_raw(libc::SIGKILL));
                    Outcome::Exit(Ok(Some(killed)))
                }
                other => panic!("the ladder asked for {other:?}"),
            }
        }
    }

    /// Runs the ladder (grace `grace`, `-no-shutdown` when `no_shutdown`) on `model`: the
    /// commands QEMU received and what ended it.
    fn climb(mut model: Model, grace: Duration, no_shutdown: bool) -> (Vec<String>, EndedBy) {
        let ladder = ShutdownLadder::new(grace, no_shutdown);
        let outcome = model.run(ladder.engine()).expect("the ladder ends");
        (model.commands, outcome.ended_by)
    }

    #[test]
    fn each_guest_gets_its_exact_exchanges() {
        let off_already = || {
            let mut model = Model {
                quits: true,
                ..Model::default()
            };
            model.events.push_back(shutdown("guest-shutdown"));
            model
        };
        let killed = || Model {
            exited: Some(ExitStatus::from_raw(libc::SIGKILL)),
            ..Model::default()
        };
        let caught_sigterm = || {
            let mut model = Model::default();
            model.exit("host-signal");
            model
        };
        let cases: Vec<(&str, Model, bool, &[&str], EndedBy)> = vec![
            (
                "cooperating",
                Model {
                    powers_off: true,
                    ..Model::default()
                },
                false,
                &["system_powerdown"],
                EndedBy::PoweredOff,
            ),
            (
                "ignoring, QEMU quits",
                Model {
                    quits: true,
                    ..Model::default()
                },
                false,
                &["system_powerdown", "quit"],
                EndedBy::Quit,
            ),
            (
                "hung",
                Model::default(),
                false,
                &["system_powerdown", "quit"],
                EndedBy::Killed,
            ),
            (
                "off already, -no-shutdown",
                off_already(),
                true,
                &["quit"],
                EndedBy::PoweredOff,
            ),
            (
                "killed by someone else",
                killed(),
                false,
                &[],
                EndedBy::Other,
            ),
            (
                "caught a SIGTERM",
                caught_sigterm(),
                false,
                &[],
                EndedBy::Other,
            ),
        ];
        for (name, model, no_shutdown, commands, ended_by) in cases {
            let climbed = climb(model, Duration::from_millis(50), no_shutdown);
            assert_eq!(
                climbed,
                (commands.iter().map(|c| c.to_string()).collect(), ended_by),
                "{name}"
            );
        }
    }

    proptest! {
        /// Any grace, `Duration::MAX` included: the same exchanges and the same end.
        #[test]
        fn the_ladder_takes_any_grace(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let grace = Duration::new(secs, nanos);
            let cooperating = Model { powers_off: true, ..Model::default() };
            let climbed = climb(cooperating, grace, false);
            prop_assert_eq!(climbed, (vec!["system_powerdown".to_string()], EndedBy::PoweredOff));
            let hung = climb(Model::default(), grace, false);
            let commands = vec!["system_powerdown".to_string(), "quit".to_string()];
            prop_assert_eq!(hung, (commands, EndedBy::Killed));
        }
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
}
