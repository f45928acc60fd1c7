//! One scenario, three runs: the fake QEMU of the engine suites and the [`scenarios!`] macro
//! that runs each scenario on the engines alone and once per driver.
//!
//! A scenario describes a fake QEMU as a rule (command name, arguments, index → [`Answer`])
//! and asserts the exact commands the flows sent ([`Log`]). [`scenarios!`] compiles every
//! scenario three times, against a `Fake` of each module:
//!
//! - [`pure`]: no socket, no thread, no clock. A scripted [`Driver`] answers each engine step
//!   by the rule at once; time is a fake clock that moves only by what the engine waits
//!   (sleeps, and the timeouts of steps that time out), so timeouts replay exactly.
//! - [`blocking`]: the engines on [`Blocking`] over a `Qmp` client talking to
//!   `hvarch_qmp::testing::FakeServer`, which answers by the same rule.
//! - [`tokio`] (feature `tokio`): the same over `AsyncQmp` with the tokio driver.
//!
//! Each module has a `Fake` with `new(rule)`, `with_timeout(rule, command_timeout)`, `log()`,
//! `driver()` and `hotplugger(arch, state)`, and a `finish` function that turns what a driver
//! returns into its result (the identity, or `block_on`): scenario bodies are written once.

#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hvarch::engine::{Outcome, Step, SyncDriver};
use hvarch_qmp::testing::{FakeConn, FakeServer};
use hvarch_qmp::{Event, Timestamp};
use serde_json::{json, Value};

/// How the fake QEMU answers one command.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `{"return": value}`.
    Ok(Value),
    /// An error reply of class `GenericError` with this description.
    Refuse(&'static str),
    /// An error reply of this class and description.
    Fail(&'static str, &'static str),
    /// `{}` then `DEVICE_DELETED` for the command's `id`.
    Deleted,
    /// `{}` and no event.
    Silent,
    /// No reply at all (the command times out on the client's side).
    NoReply,
    /// `DEVICE_DELETED` of this device first (a guest answering late), then the answer.
    DeletedFirst(&'static str, Box<Answer>),
    /// No reply, and the connection closed (QEMU went away).
    HangUp,
}

/// A fake QEMU's rule: command name, arguments, index of the command (from 0) → answer.
pub type Rule = Box<dyn FnMut(&str, &Value, usize) -> Answer + Send>;

/// The commands a fake QEMU received, with their arguments (`{}` for none), and how many
/// descriptors came with them.
#[derive(Clone, Default)]
pub struct Log {
    commands: Arc<Mutex<Vec<(String, Value)>>>,
    fds: Arc<AtomicUsize>,
}

impl Log {
    fn commands(&self) -> MutexGuard<'_, Vec<(String, Value)>> {
        self.commands.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, name: &str, arguments: &Value, fds: usize) {
        self.fds.fetch_add(fds, Ordering::SeqCst);
        self.commands().push((name.to_owned(), arguments.clone()));
    }

    /// The commands since the last call, names and arguments.
    pub fn take(&self) -> Vec<(String, Value)> {
        std::mem::take(&mut *self.commands())
    }

    /// The command names since the last call.
    pub fn names(&self) -> Vec<String> {
        self.take().into_iter().map(|(name, _)| name).collect()
    }

    /// The command names since the last call, each run of the same name once (a poll
    /// loop's count depends on the clock).
    pub fn runs(&self) -> Vec<String> {
        let mut names = self.names();
        names.dedup();
        names
    }

    /// How many descriptors were passed so far.
    pub fn fds(&self) -> usize {
        self.fds.load(Ordering::SeqCst)
    }
}

/// `DEVICE_DELETED`'s data for device `id`.
fn deleted_data(id: &Value) -> Value {
    json!({"device": id, "path": "/machine/peripheral/x"})
}

fn normalized(arguments: Option<&Value>) -> Value {
    match arguments {
        None | Some(Value::Null) => json!({}),
        Some(arguments) => arguments.clone(),
    }
}

/// Runs `rule` as a QMP server on a socket pair; returns the client's end.
fn serve(mut rule: Rule, log: Log) -> (UnixStream, FakeServer) {
    FakeServer::spawn(move |mut conn: FakeConn| {
        conn.handshake();
        let mut n = 0;
        while let Some(cmd) = conn.recv() {
            let name = cmd["execute"].as_str().unwrap_or_default().to_owned();
            let args = normalized(cmd.get("arguments"));
            log.push(&name, &args, conn.take_fds().len());
            let answer = rule(&name, &args, n);
            if matches!(answer, Answer::HangUp) {
                break;
            }
            send(&mut conn, &cmd, &args, answer);
            n += 1;
        }
    })
    .expect("spawn the fake QMP server")
}

fn send(conn: &mut FakeConn, cmd: &Value, args: &Value, answer: Answer) {
    match answer {
        Answer::Ok(value) => conn.reply(cmd, value),
        Answer::Refuse(desc) => conn.reply_error(cmd, "GenericError", Some(desc)),
        Answer::Fail(class, desc) => conn.reply_error(cmd, class, Some(desc)),
        Answer::Deleted => {
            conn.reply(cmd, json!({}));
            conn.event("DEVICE_DELETED", deleted_data(&args["id"]));
        }
        Answer::Silent => conn.reply(cmd, json!({})),
        Answer::NoReply | Answer::HangUp => {}
        Answer::DeletedFirst(id, then) => {
            conn.event("DEVICE_DELETED", deleted_data(&json!(id)));
            send(conn, cmd, args, *then);
        }
    }
}

/// Durations at the edges: none, the shortest, the longest, and any in between.
pub fn durations() -> impl proptest::strategy::Strategy<Value = Duration> {
    use proptest::prelude::*;
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::MAX),
        Just(Duration::new(u64::MAX, 0)),
        any::<u64>().prop_map(Duration::from_secs),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

/// What every fake has: `FakeDriver` (the type of its `driver()`), `new`, `with_timeout`
/// (over its own `start`), `logged`, `log` and `hotplugger`.
macro_rules! fake_common {
    ($driver:ident) => {
        /// This fake's driver.
        pub type FakeDriver<'a> = $driver<'a>;

        impl Fake {
            /// A fake answering by `rule`.
            pub fn new(rule: impl FnMut(&str, &Value, usize) -> Answer + Send + 'static) -> Fake {
                Fake::with_timeout(rule, COMMAND_TIMEOUT)
            }

            /// A fake answering by `rule`, whose client times commands out after
            /// `command_timeout`.
            pub fn with_timeout(
                rule: impl FnMut(&str, &Value, usize) -> Answer + Send + 'static,
                command_timeout: Duration,
            ) -> Fake {
                Fake::start(Box::new(rule), command_timeout)
            }

            /// A fake answering by `rule`, and its log.
            pub fn logged(
                rule: impl FnMut(&str, &Value, usize) -> Answer + Send + 'static,
            ) -> (Fake, Log) {
                let fake = Fake::new(rule);
                let log = fake.log.clone();
                (fake, log)
            }

            /// The log of the commands received.
            pub fn log(&self) -> Log {
                self.log.clone()
            }

            /// A hotplugger over this fake.
            pub fn hotplugger<'a>(
                &'a mut self,
                arch: &'a mut dyn hvarch::QemuArch,
                state: &'a mut hvarch::HotplugState,
            ) -> hvarch::Hotplugger<'a, FakeDriver<'a>> {
                hvarch::Hotplugger::with_driver(self.driver(), arch, state)
            }
        }
    };
}

/// The server side of a socket fake: the scripted server (joined on drop, after the client
/// that owns it closed its end) and its log.
struct Served {
    server: Option<FakeServer>,
    log: Log,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.join();
        }
    }
}

/// A fake QEMU on a socket: a `$qmp` client (connected by `$connect`), its standing
/// `DEVICE_DELETED` subscription (`$events`) and the common methods over driver `$driver`.
macro_rules! socket_fake {
    ($qmp:ty, $events:ty, $driver:ident, $connect:expr) => {
        /// A fake QEMU on a socket, a client and its standing `DEVICE_DELETED` subscription.
        pub struct Fake {
            // Dropped first: the client's end closes, then the server is joined.
            qmp: $qmp,
            deleted: $events,
            log: Log,
            _served: Served,
        }

        fake_common!($driver);

        impl Fake {
            fn start(rule: Rule, command_timeout: Duration) -> Fake {
                let (stream, served, config) = socket(rule, command_timeout);
                let qmp: $qmp = $connect(stream, &config);
                Fake {
                    deleted: qmp.subscribe_filtered(EventFilter::name("DEVICE_DELETED")),
                    qmp,
                    log: served.log.clone(),
                    _served: served,
                }
            }
        }
    };
}

/// A fake QMP server answering by `rule`, and a client configuration with
/// `command_timeout`: what the socket fakes start from.
fn socket(rule: Rule, command_timeout: Duration) -> (UnixStream, Served, hvarch_qmp::Config) {
    let log = Log::default();
    let (stream, server) = serve(rule, log.clone());
    let served = Served {
        server: Some(server),
        log,
    };
    (stream, served, config(command_timeout))
}

/// The command timeout of the fakes unless a scenario sets one.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

fn config(command_timeout: Duration) -> hvarch_qmp::Config {
    hvarch_qmp::Config {
        command_timeout,
        ..hvarch_qmp::Config::default()
    }
}

/// The engines alone, answered by a scripted driver.
pub mod pure {
    use super::*;

    /// A fake QEMU with no socket: the rule answers the engine's steps directly.
    pub struct Fake {
        rule: Rule,
        log: Log,
        /// `DEVICE_DELETED` events emitted and not yet handed over (the standing
        /// subscription of a real driver).
        deleted: Vec<Event>,
        now: Instant,
        command_timeout: Duration,
        count: usize,
        /// The fake hung up: every later command fails.
        gone: bool,
    }

    fake_common!(Scripted);

    impl Fake {
        fn start(rule: Rule, command_timeout: Duration) -> Fake {
            Fake {
                rule,
                log: Log::default(),
                deleted: Vec::new(),
                now: Instant::now(),
                command_timeout,
                count: 0,
                gone: false,
            }
        }

        /// A driver answering by the rule.
        pub fn driver(&mut self) -> Scripted<'_> {
            Scripted { fake: self }
        }

        fn wait(&mut self, duration: Duration) {
            self.now = self.now.checked_add(duration).unwrap_or(self.now);
        }

        fn timeout(&mut self, what: String, after: Duration) -> hvarch_qmp::Error {
            self.wait(after);
            hvarch_qmp::Error::Timeout { what, after }
        }

        fn emit_deleted(&mut self, id: &Value) -> Event {
            let event = Event {
                name: "DEVICE_DELETED".into(),
                data: deleted_data(id),
                timestamp: Timestamp::default(),
            };
            self.deleted.push(event.clone());
            event
        }

        /// The rule's answer to `name` as the client sees it: the reply, and whether the
        /// command's device was deleted.
        fn answer(
            &mut self,
            name: &str,
            args: &Value,
            fds: usize,
            timeout: Duration,
        ) -> (hvarch_qmp::Result<Value>, bool) {
            if self.gone {
                return (Err(hvarch_qmp::Error::Disconnected), false);
            }
            self.log.push(name, args, fds);
            let answer = (self.rule)(name, args, self.count);
            self.count += 1;
            self.settle(name, args, answer, timeout)
        }

        fn settle(
            &mut self,
            name: &str,
            args: &Value,
            answer: Answer,
            timeout: Duration,
        ) -> (hvarch_qmp::Result<Value>, bool) {
            let refused = |class: &str, desc: &str| hvarch_qmp::Error::Command {
                command: name.to_owned(),
                class: class.to_owned(),
                desc: desc.to_owned(),
            };
            match answer {
                Answer::Ok(value) => (Ok(value), false),
                Answer::Refuse(desc) => (Err(refused("GenericError", desc)), false),
                Answer::Fail(class, desc) => (Err(refused(class, desc)), false),
                Answer::Deleted => {
                    self.emit_deleted(&args["id"]);
                    (Ok(json!({})), true)
                }
                Answer::Silent => (Ok(json!({})), false),
                Answer::NoReply => {
                    let what = format!("command `{name}`");
                    (Err(self.timeout(what, timeout)), false)
                }
                Answer::DeletedFirst(id, then) => {
                    self.emit_deleted(&json!(id));
                    self.settle(name, args, *then, timeout)
                }
                Answer::HangUp => {
                    self.gone = true;
                    (Err(hvarch_qmp::Error::Disconnected), false)
                }
            }
        }

        fn step(&mut self, step: Step) -> Outcome {
            match step {
                Step::Execute { command, timeout } => {
                    let timeout = timeout.unwrap_or(self.command_timeout);
                    let args = normalized(Some(&command.arguments));
                    Outcome::Reply(self.answer(&command.name, &args, 0, timeout).0)
                }
                Step::GetFd { name, fd: _ } => {
                    let args = json!({ "fdname": name });
                    Outcome::Reply(self.answer("getfd", &args, 1, self.command_timeout).0)
                }
                Step::ExecuteAndWaitEvent {
                    command,
                    event,
                    timeout,
                } => {
                    let args = normalized(Some(&command.arguments));
                    let (reply, deleted) = self.answer(&command.name, &args, 0, timeout);
                    Outcome::Event(match reply {
                        Err(e) => Err(e),
                        Ok(_) if deleted => Ok(self.deleted.last().cloned().expect("emitted")),
                        Ok(_) => Err(self.timeout(format!("event {event}"), timeout)),
                    })
                }
                Step::TakeDeleted => Outcome::Deleted(std::mem::take(&mut self.deleted)),
                Step::Sleep(duration) => {
                    self.wait(duration);
                    Outcome::Slept
                }
                // Like the socket fakes' drivers: no SHUTDOWN subscription, no process.
                Step::NextShutdown(_) => Outcome::Event(Err(hvarch_qmp::Error::Disconnected)),
                Step::Process(_) => Outcome::Exit(Err(std::io::ErrorKind::Unsupported.into())),
            }
        }
    }

    /// The scripted driver: each step answered by the fake's rule, at once.
    pub struct Scripted<'f> {
        fake: &'f mut Fake,
    }

    impl SyncDriver for Scripted<'_> {
        fn step(&mut self, step: Step) -> Outcome {
            self.fake.step(step)
        }

        fn now(&self) -> Instant {
            self.fake.now
        }
    }

    /// What the scripted driver returns is the result.
    pub fn finish<T>(result: T) -> T {
        result
    }
}

/// The engines on the blocking driver, against the fake QMP server.
pub mod blocking {
    use super::*;
    use hvarch::engine::Blocking;
    use hvarch_qmp::{EventFilter, EventSubscription, Qmp};

    socket_fake!(Qmp, EventSubscription, Blocking, |stream, config| {
        Qmp::from_stream(stream, config).expect("negotiate")
    });

    impl Fake {
        /// The blocking driver on this fake's client.
        pub fn driver(&mut self) -> Blocking<'_> {
            Blocking::new(&self.qmp).with_deleted(&self.deleted)
        }
    }

    /// What the blocking driver returns is the result.
    pub fn finish<T>(result: T) -> T {
        result
    }
}

/// The engines on the tokio driver, against the fake QMP server.
#[cfg(feature = "tokio")]
pub mod tokio {
    use std::future::Future;
    use std::sync::OnceLock;

    use super::*;
    use hvarch::engine::Tokio;
    use hvarch_qmp::{AsyncEventSubscription, AsyncQmp, EventFilter};

    fn runtime() -> &'static ::tokio::runtime::Runtime {
        static RUNTIME: OnceLock<::tokio::runtime::Runtime> = OnceLock::new();
        RUNTIME.get_or_init(|| {
            ::tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime")
        })
    }

    socket_fake!(AsyncQmp, AsyncEventSubscription, Tokio, |stream, config| {
        finish(AsyncQmp::from_std(stream, config)).expect("negotiate")
    });

    impl Fake {
        /// The tokio driver on this fake's client.
        pub fn driver(&mut self) -> Tokio<'_> {
            Tokio::new(&self.qmp).with_deleted(&mut self.deleted)
        }
    }

    /// Runs what the tokio driver returns (a future) to its result.
    pub fn finish<F: Future>(future: F) -> F::Output {
        runtime().block_on(future)
    }
}

/// Compiles each scenario (a `fn name() { body }`) three times, as `#[test]`s of modules
/// `pure`, `blocking` and `tokio` (feature `tokio`), whose `Fake` and `finish` the body uses.
macro_rules! scenarios {
    ($($(#[$meta:meta])* fn $name:ident() $body:block)*) => {
        /// The scenarios on the engines alone (scripted driver).
        mod pure {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::support::pure::{finish, Fake};
            $($(#[$meta])* #[test] fn $name() $body)*
        }
        /// The scenarios on the blocking driver against the fake QMP server.
        mod blocking {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::support::blocking::{finish, Fake};
            $($(#[$meta])* #[test] fn $name() $body)*
        }
        /// The scenarios on the tokio driver against the fake QMP server.
        #[cfg(feature = "tokio")]
        mod tokio {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::support::tokio::{finish, Fake};
            $($(#[$meta])* #[test] fn $name() $body)*
        }
    };
}

pub(crate) use scenarios;
