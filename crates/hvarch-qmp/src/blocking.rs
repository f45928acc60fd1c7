//! The blocking client: a reader thread, writers serialised through a mutex, a timeout on every
//! wait.

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tracing::{debug, trace, warn};

use crate::commands::{self, MemoryHotplug};
use crate::config::{AddFdInfo, Config};
use crate::deadline::{deadline, remaining};
use crate::error::{Error, Result};
use crate::event::{Event, EventFilter};
use crate::message::{Command, Greeting};
use crate::protocol::{Action, Session, State};
use crate::version::QemuVersion;

type Waiter = mpsc::SyncSender<Result<Value>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Subscriber {
    id: u64,
    filter: EventFilter,
    tx: mpsc::Sender<Event>,
}

struct Shared {
    session: Session<Waiter>,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
}

struct Inner {
    shared: Mutex<Shared>,
    writer: Mutex<UnixStream>,
    /// A dup of the socket used only to shut it down (never locked).
    control: UnixStream,
    connected: AtomicBool,
    config: Config,
}

impl Inner {
    fn shutdown(&self) {
        self.connected.store(false, Ordering::SeqCst);
        let _ = self.control.shutdown(Shutdown::Both);
    }
}

/// A blocking QMP client over a Unix socket. `Send + Sync`: share it between threads with `&` or
/// `Arc`. Dropping it closes the connection.
///
/// ```no_run
/// use hvarch_qmp::{Config, Qmp};
/// let qmp = Qmp::connect("/run/vm/qmp.sock", &Config::default())?;
/// let status = qmp.execute(&qapi_qmp::query_status {})?;
/// println!("QEMU {} is {:?}", qmp.version(), status.status);
/// # Ok::<(), hvarch_qmp::Error>(())
/// ```
pub struct Qmp {
    inner: Arc<Inner>,
    reader: Mutex<Option<JoinHandle<()>>>,
    greeting: Greeting,
    early_events: Mutex<Vec<Event>>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.greeting.version)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads the greeting and negotiates.
    pub fn connect(path: impl AsRef<Path>, config: &Config) -> Result<Qmp> {
        let stream = UnixStream::connect(path.as_ref())?;
        Qmp::from_stream(stream, config)
    }

    /// Takes an already connected socket (e.g. accepted from a listener handed to QEMU).
    pub fn from_fd(fd: OwnedFd, config: &Config) -> Result<Qmp> {
        Qmp::from_stream(UnixStream::from(fd), config)
    }

    /// Takes an already connected stream, reads the greeting and negotiates.
    pub fn from_stream(stream: UnixStream, config: &Config) -> Result<Qmp> {
        let mut session = Session::new(config.max_message_size, config.enable_oob);
        let mut reader = stream.try_clone()?;
        let mut writer = stream;
        let mut early = Vec::new();
        let greeting = handshake(&mut session, &mut reader, &mut writer, config, &mut early)?;
        reader.set_read_timeout(None)?;
        // A zero timeout would be refused by the socket (it means "none" to `set_*_timeout`).
        writer.set_write_timeout(Some(config.command_timeout).filter(|t| !t.is_zero()))?;
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared {
                session,
                subscribers: Vec::new(),
                next_subscriber: 1,
            }),
            control: writer.try_clone()?,
            writer: Mutex::new(writer),
            connected: AtomicBool::new(true),
            config: config.clone(),
        });
        let thread_inner = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("qmp-reader".into())
            .spawn(move || reader_loop(&thread_inner, reader))?;
        Ok(Qmp {
            inner,
            reader: Mutex::new(Some(handle)),
            greeting,
            early_events: Mutex::new(early),
        })
    }

    /// The server greeting.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// QEMU's version, from the greeting.
    pub fn version(&self) -> QemuVersion {
        self.greeting.version
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Events that arrived before the greeting or during negotiation (taken once).
    pub fn take_early_events(&self) -> Vec<Event> {
        std::mem::take(&mut *lock(&self.early_events))
    }

    /// Whether the connection is open and negotiated.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
            && lock(&self.inner.shared).session.state() == State::Ready
    }

    /// Executes a typed qapi-qmp command with the default timeout and decodes its reply.
    pub fn execute<C: qapi_spec::Command>(&self, command: &C) -> Result<C::Ok> {
        let value = self.execute_command(&Command::from_typed(command)?)?;
        decode_reply::<C>(value)
    }

    /// Executes `name` with raw JSON `arguments` (`Value::Null` or `{}` for none).
    pub fn execute_raw(&self, name: &str, arguments: Value) -> Result<Value> {
        self.execute_command(&Command::new(name, arguments))
    }

    /// Executes a [`Command`] with the default timeout.
    pub fn execute_command(&self, command: &Command) -> Result<Value> {
        self.execute_with_timeout(command, self.inner.config.command_timeout)
    }

    /// Executes a [`Command`] with its own timeout. On timeout the connection stays usable and a
    /// late reply is dropped.
    pub fn execute_with_timeout(&self, command: &Command, timeout: Duration) -> Result<Value> {
        self.execute_with_fds(command, timeout, &[])
    }

    fn execute_with_fds(
        &self,
        command: &Command,
        timeout: Duration,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Value> {
        let (tx, rx) = mpsc::sync_channel(1);
        let (id, bytes) = lock(&self.inner.shared)
            .session
            .start_command(command, tx)?;
        if let Err(e) = self.write(&bytes, fds) {
            lock(&self.inner.shared).session.cancel(id);
            // A partial write would desynchronise the stream: end the session.
            warn!(command = %command.name, error = %e, "QMP write failed; closing the connection");
            self.inner.shutdown();
            return Err(write_error(
                e,
                &format!("writing `{}`", command.name),
                self.inner.config.command_timeout,
            ));
        }
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::Disconnected),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.inner.shared).session.cancel(id);
                // The reply may have been delivered between the timeout and the cancel.
                rx.try_recv().unwrap_or(Err(Error::Timeout {
                    what: format!("command `{}`", command.name),
                    after: timeout,
                }))
            }
        }
    }

    fn write(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let writer = lock(&self.inner.writer);
        crate::fdpass::send_all(writer.as_fd(), bytes, fds)
    }

    /// Subscribes to every event from now on.
    pub fn subscribe(&self) -> EventSubscription {
        self.subscribe_filtered(EventFilter::any())
    }

    /// Subscribes to events matching `filter` from now on.
    pub fn subscribe_filtered(&self, filter: EventFilter) -> EventSubscription {
        let (tx, rx) = mpsc::channel();
        let mut shared = lock(&self.inner.shared);
        let id = shared.next_subscriber;
        shared.next_subscriber += 1;
        // A closed session gets no subscriber: the receiver sees the disconnection at once.
        if shared.session.state() != State::Closed {
            shared.subscribers.push(Subscriber {
                id,
                filter: filter.clone(),
                tx,
            });
        }
        EventSubscription {
            rx,
            id,
            filter,
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Waits up to `timeout` for the next event matching `filter` (events from now on).
    pub fn wait_event(&self, filter: &EventFilter, timeout: Duration) -> Result<Event> {
        self.subscribe_filtered(filter.clone())
            .recv_timeout(timeout)
    }

    /// Registers a listener for `filter`, then executes `command`, then waits for the event; all
    /// within `timeout`. The event cannot race past the listener.
    pub fn execute_and_wait_event(
        &self,
        command: &Command,
        filter: &EventFilter,
        timeout: Duration,
    ) -> Result<(Value, Event)> {
        let deadline = deadline(timeout);
        let sub = self.subscribe_filtered(filter.clone());
        let value = self.execute_with_timeout(command, timeout)?;
        let event = sub.recv_timeout(remaining(deadline).unwrap_or(Duration::MAX))?;
        Ok((value, event))
    }

    /// `device_del` and wait for `DEVICE_DELETED` for that id. A device the guest does not
    /// release (e.g. cold-plugged into a paused VM) ends in [`Error::Timeout`].
    pub fn device_del(&self, id: &str, timeout: Duration) -> Result<Event> {
        self.execute_and_wait_event(
            &commands::device_del(id),
            &EventFilter::device_deleted(id),
            timeout,
        )
        .map(|(_, e)| e)
    }

    /// `system_powerdown` and wait for `POWERDOWN`.
    pub fn system_powerdown(&self, timeout: Duration) -> Result<Event> {
        self.execute_and_wait_event(
            &commands::system_powerdown(),
            &EventFilter::powerdown(),
            timeout,
        )
        .map(|(_, e)| e)
    }

    /// Passes `fd` to QEMU under `name` (`getfd`, fd sent with SCM_RIGHTS).
    pub fn getfd(&self, name: &str, fd: BorrowedFd<'_>) -> Result<()> {
        self.execute_with_fds(
            &commands::getfd(name),
            self.inner.config.command_timeout,
            &[fd],
        )
        .map(drop)
    }

    /// Adds `fd` to an fd set (`add-fd`, fd sent with SCM_RIGHTS); a new set when `fdset_id` is
    /// `None`.
    pub fn add_fd(
        &self,
        fdset_id: Option<u64>,
        opaque: Option<&str>,
        fd: BorrowedFd<'_>,
    ) -> Result<AddFdInfo> {
        let cmd = commands::add_fd(fdset_id, opaque);
        let value = self.execute_with_fds(&cmd, self.inner.config.command_timeout, &[fd])?;
        decode_value("add-fd", value)
    }

    /// Runs a [`MemoryHotplug`]: `object-add`, then `device_add`; if `device_add` fails the
    /// backend is removed again and `device_add`'s error is returned.
    pub fn hotplug_memory(&self, plan: &MemoryHotplug) -> Result<()> {
        self.execute_command(&plan.object_add)?;
        if let Err(e) = self.execute_command(&plan.device_add) {
            if let Err(undo) = self.execute_command(&plan.rollback) {
                warn!(error = %undo, "rolling back the memory backend failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Closes the connection: pending commands fail with [`Error::Disconnected`], subscriptions
    /// end, the reader thread is joined. Idempotent.
    pub fn close(&self) {
        let handle = lock(&self.reader).take();
        if let Some(handle) = handle {
            self.inner.shutdown();
            if handle.join().is_err() {
                warn!("QMP reader thread panicked");
            }
            debug!("QMP connection closed");
        }
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.close();
    }
}

pub(crate) fn decode_reply<C: qapi_spec::Command>(value: Value) -> Result<C::Ok> {
    decode_value(C::NAME, value)
}

pub(crate) fn decode_value<T: serde::de::DeserializeOwned>(what: &str, value: Value) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|source| Error::Decode {
        what: what.to_owned(),
        raw: value,
        source,
    })
}

fn handshake(
    session: &mut Session<Waiter>,
    reader: &mut UnixStream,
    writer: &mut UnixStream,
    config: &Config,
    early: &mut Vec<Event>,
) -> Result<Greeting> {
    let deadline = deadline(config.greeting_timeout);
    let mut buf = vec![0u8; 64 * 1024];
    let mut actions = Vec::new();
    let mut greeting = None;
    loop {
        let remaining = remaining(deadline);
        if remaining.is_some_and(|r| r.is_zero()) {
            return Err(Error::Timeout {
                what: "QMP greeting and negotiation".into(),
                after: config.greeting_timeout,
            });
        }
        reader.set_read_timeout(remaining)?;
        writer.set_write_timeout(remaining)?;
        match reader.read(&mut buf) {
            Ok(0) => session.eof(&mut actions),
            Ok(n) => session.feed(buf.get(..n).unwrap_or_default(), &mut actions),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(Error::Io(e)),
        }
        let mut ready = false;
        for action in actions.drain(..) {
            match action {
                Action::Greeting(g) => {
                    greeting = Some(g);
                    crate::fdpass::send_all(writer.as_fd(), &session.negotiate()?, &[])?;
                }
                // Events read along with the negotiation reply are kept too.
                Action::Ready => ready = true,
                Action::Event(e) => early.push(e),
                Action::Reply { .. } => {}
                Action::Closed(err) => return Err(err),
            }
        }
        if ready {
            return greeting.ok_or_else(|| Error::Greeting("negotiated without a greeting".into()));
        }
    }
}

/// The error for a failed command write: a peer that went away is [`Error::Disconnected`]
/// (whether or not the reader has seen the end of the stream yet), a write that timed out is
/// [`Error::Timeout`], anything else [`Error::Io`].
pub(crate) fn write_error(e: io::Error, what: &str, timeout: Duration) -> Error {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::NotConnected => Error::Disconnected,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
            what: what.to_owned(),
            after: timeout,
        },
        _ => Error::Io(e),
    }
}

fn reader_loop(inner: &Inner, mut stream: UnixStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut actions = Vec::new();
    loop {
        let read = stream.read(&mut buf);
        let mut closed = false;
        {
            let mut shared = lock(&inner.shared);
            match read {
                Ok(0) => shared.session.eof(&mut actions),
                Ok(n) => shared
                    .session
                    .feed(buf.get(..n).unwrap_or_default(), &mut actions),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!(error = %e, "QMP read failed");
                    shared.session.eof(&mut actions);
                }
            }
            for action in actions.drain(..) {
                match action {
                    Action::Event(event) => {
                        trace!(event = %event.name, "QMP event");
                        shared.subscribers.retain(|s| {
                            !s.filter.matches(&event) || s.tx.send(event.clone()).is_ok()
                        });
                    }
                    // Delivered under the lock: a caller whose timeout fires now either finds
                    // its reply in the channel or cancels before the reader took the waiter,
                    // never neither. `try_send` on a one-slot channel never blocks; a caller
                    // that gave up has dropped the receiver and the reply is dropped.
                    Action::Reply { waiter, result, .. } => {
                        crate::testing::reply_routed();
                        let _ = waiter.try_send(result);
                    }
                    Action::Closed(err) => {
                        debug!(reason = %err, "QMP session closed");
                        shared.subscribers.clear();
                        closed = true;
                    }
                    Action::Greeting(_) | Action::Ready => {}
                }
            }
        }
        if closed {
            inner.shutdown();
            return;
        }
    }
}

/// A stream of events from a blocking [`Qmp`]. Ends (with [`Error::Disconnected`]) when the
/// connection closes; dropping it unsubscribes. Events queue until read.
#[derive(Debug)]
pub struct EventSubscription {
    rx: mpsc::Receiver<Event>,
    id: u64,
    filter: EventFilter,
    inner: Weak<Inner>,
}

impl EventSubscription {
    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => Error::Timeout {
                what: format!("event {}", self.filter),
                after: timeout,
            },
            mpsc::RecvTimeoutError::Disconnected => Error::Disconnected,
        })
    }

    /// Waits for the next event until the connection closes.
    pub fn recv(&self) -> Result<Event> {
        self.rx.recv().map_err(|_| Error::Disconnected)
    }

    /// The next queued event, if any, without waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Iterator for EventSubscription {
    type Item = Event;

    /// Blocks for the next event; `None` once the connection is closed.
    fn next(&mut self) -> Option<Event> {
        self.recv().ok()
    }
}

impl Drop for EventSubscription {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            lock(&inner.shared).subscribers.retain(|s| s.id != self.id);
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}
