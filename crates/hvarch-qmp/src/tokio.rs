//! The async client on tokio (feature `tokio`): the same surface as [`Qmp`](crate::Qmp), with
//! cancel-safe futures.
//!
//! A reader task owns the read half; a writer task owns the write half and writes whole messages
//! from a queue, so dropping a command future can never leave a half-written line. A dropped
//! command's pending entry is removed by a guard; QEMU's late reply is discarded by id.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, trace, warn};

use crate::blocking::{decode_reply, decode_value, lock, write_error};
use crate::commands::{self, MemoryHotplug};
use crate::config::{AddFdInfo, Config};
use crate::deadline::{deadline, remaining};
use crate::error::{Error, Result};
use crate::event::{Event, EventFilter};
use crate::message::{Command, Greeting};
use crate::protocol::{Action, Session, State};
use crate::version::QemuVersion;

type Waiter = oneshot::Sender<Result<Value>>;

struct Subscriber {
    id: u64,
    filter: EventFilter,
    tx: mpsc::UnboundedSender<Event>,
}

struct Shared {
    session: Session<Waiter>,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
}

struct WriteOp {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// How many commands may wait for the writer task; a command beyond that fails at once rather
/// than pile up (with its fds) behind a QEMU that does not read.
const WRITE_QUEUE: usize = 1024;

struct Inner {
    shared: Mutex<Shared>,
    write_tx: mpsc::Sender<WriteOp>,
    /// A dup of the socket used only to shut it down.
    control: std::os::unix::net::UnixStream,
    connected: AtomicBool,
    config: Config,
}

impl Inner {
    fn shutdown(&self) {
        self.connected.store(false, Ordering::SeqCst);
        let _ = self.control.shutdown(std::net::Shutdown::Both);
    }
}

/// An async QMP client on tokio. `Send + Sync`; share it with `Arc`. Dropping it closes the
/// connection.
///
/// ```no_run
/// # async fn demo() -> hvarch_qmp::Result<()> {
/// use hvarch_qmp::{AsyncQmp, Config};
/// let qmp = AsyncQmp::connect("/run/vm/qmp.sock", &Config::default()).await?;
/// let status = qmp.execute(&qapi_qmp::query_status {}).await?;
/// println!("{:?}", status.status);
/// qmp.close().await;
/// # Ok(()) }
/// ```
pub struct AsyncQmp {
    inner: Arc<Inner>,
    reader: Mutex<Option<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    greeting: Greeting,
    early_events: Mutex<Vec<Event>>,
}

impl std::fmt::Debug for AsyncQmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncQmp")
            .field("version", &self.greeting.version)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// Removes a pending command if its future is dropped before the reply.
struct CancelGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.shared).session.cancel(self.id);
    }
}

impl AsyncQmp {
    /// Connects to the QMP socket at `path`, reads the greeting and negotiates.
    pub async fn connect(path: impl AsRef<Path>, config: &Config) -> Result<AsyncQmp> {
        let stream = tokio::net::UnixStream::connect(path.as_ref()).await?;
        AsyncQmp::from_std(stream.into_std()?, config).await
    }

    /// Takes an already connected socket.
    pub async fn from_fd(fd: OwnedFd, config: &Config) -> Result<AsyncQmp> {
        AsyncQmp::from_std(std::os::unix::net::UnixStream::from(fd), config).await
    }

    /// Takes an already connected tokio stream.
    pub async fn from_stream(stream: tokio::net::UnixStream, config: &Config) -> Result<AsyncQmp> {
        AsyncQmp::from_std(stream.into_std()?, config).await
    }

    /// Takes an already connected std stream (made non-blocking here).
    pub async fn from_std(
        stream: std::os::unix::net::UnixStream,
        config: &Config,
    ) -> Result<AsyncQmp> {
        stream.set_nonblocking(true)?;
        let control = stream.try_clone()?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let (mut read_half, mut write_half) = stream.into_split();
        let mut session = Session::new(config.max_message_size, config.enable_oob);
        let mut early = Vec::new();
        let handshake = handshake(&mut session, &mut read_half, &mut write_half, &mut early);
        let greeting = match tokio::time::timeout(config.greeting_timeout, handshake).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Timeout {
                    what: "QMP greeting and negotiation".into(),
                    after: config.greeting_timeout,
                })
            }
        };
        let (write_tx, write_rx) = mpsc::channel(WRITE_QUEUE);
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared {
                session,
                subscribers: Vec::new(),
                next_subscriber: 1,
            }),
            write_tx,
            control,
            connected: AtomicBool::new(true),
            config: config.clone(),
        });
        let reader = tokio::spawn(reader_task(Arc::clone(&inner), read_half));
        let writer = tokio::spawn(writer_task(Arc::downgrade(&inner), write_half, write_rx));
        Ok(AsyncQmp {
            inner,
            reader: Mutex::new(Some(reader)),
            writer: Mutex::new(Some(writer)),
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
    pub async fn execute<C: qapi_spec::Command>(&self, command: &C) -> Result<C::Ok> {
        let value = self.execute_command(&Command::from_typed(command)?).await?;
        decode_reply::<C>(value)
    }

    /// Executes `name` with raw JSON `arguments`.
    pub async fn execute_raw(&self, name: &str, arguments: Value) -> Result<Value> {
        self.execute_command(&Command::new(name, arguments)).await
    }

    /// Executes a [`Command`] with the default timeout.
    pub async fn execute_command(&self, command: &Command) -> Result<Value> {
        self.execute_with_timeout(command, self.inner.config.command_timeout)
            .await
    }

    /// Executes a [`Command`] with its own timeout. Cancel-safe: dropping the future (or the
    /// timeout firing) leaves the connection in sync; a late reply is discarded.
    pub async fn execute_with_timeout(
        &self,
        command: &Command,
        timeout: Duration,
    ) -> Result<Value> {
        self.execute_with_fds(command, timeout, Vec::new()).await
    }

    async fn execute_with_fds(
        &self,
        command: &Command,
        timeout: Duration,
        fds: Vec<OwnedFd>,
    ) -> Result<Value> {
        let (tx, mut rx) = oneshot::channel();
        let id = {
            let mut shared = lock(&self.inner.shared);
            let (id, bytes) = shared.session.start_command(command, tx)?;
            if let Err(e) = self.inner.write_tx.try_send(WriteOp { bytes, fds }) {
                shared.session.cancel(id);
                return Err(match e {
                    mpsc::error::TrySendError::Full(_) => Error::Io(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!("{WRITE_QUEUE} QMP commands already wait to be sent"),
                    )),
                    mpsc::error::TrySendError::Closed(_) => Error::Disconnected,
                });
            }
            id
        };
        let _guard = CancelGuard {
            inner: &self.inner,
            id,
        };
        match tokio::time::timeout(timeout, &mut rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => {
                lock(&self.inner.shared).session.cancel(id);
                rx.try_recv().unwrap_or(Err(Error::Timeout {
                    what: format!("command `{}`", command.name),
                    after: timeout,
                }))
            }
        }
    }

    /// Subscribes to every event from now on.
    pub fn subscribe(&self) -> AsyncEventSubscription {
        self.subscribe_filtered(EventFilter::any())
    }

    /// Subscribes to events matching `filter` from now on.
    pub fn subscribe_filtered(&self, filter: EventFilter) -> AsyncEventSubscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut shared = lock(&self.inner.shared);
        let id = shared.next_subscriber;
        shared.next_subscriber += 1;
        if shared.session.state() != State::Closed {
            shared.subscribers.push(Subscriber {
                id,
                filter: filter.clone(),
                tx,
            });
        }
        AsyncEventSubscription {
            rx,
            id,
            filter,
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Waits up to `timeout` for the next event matching `filter` (events from now on).
    pub async fn wait_event(&self, filter: &EventFilter, timeout: Duration) -> Result<Event> {
        self.subscribe_filtered(filter.clone())
            .recv_timeout(timeout)
            .await
    }

    /// Registers a listener for `filter`, executes `command`, then waits for the event; all within
    /// `timeout`.
    pub async fn execute_and_wait_event(
        &self,
        command: &Command,
        filter: &EventFilter,
        timeout: Duration,
    ) -> Result<(Value, Event)> {
        let deadline = deadline(timeout);
        let mut sub = self.subscribe_filtered(filter.clone());
        let value = self.execute_with_timeout(command, timeout).await?;
        let event = sub
            .recv_timeout(remaining(deadline).unwrap_or(Duration::MAX))
            .await?;
        Ok((value, event))
    }

    /// `device_del` and wait for `DEVICE_DELETED` for that id.
    pub async fn device_del(&self, id: &str, timeout: Duration) -> Result<Event> {
        self.execute_and_wait_event(
            &commands::device_del(id),
            &EventFilter::device_deleted(id),
            timeout,
        )
        .await
        .map(|(_, e)| e)
    }

    /// `system_powerdown` and wait for `POWERDOWN`.
    pub async fn system_powerdown(&self, timeout: Duration) -> Result<Event> {
        self.execute_and_wait_event(
            &commands::system_powerdown(),
            &EventFilter::powerdown(),
            timeout,
        )
        .await
        .map(|(_, e)| e)
    }

    /// Passes `fd` to QEMU under `name` (`getfd`, SCM_RIGHTS). The fd is duplicated for sending.
    pub async fn getfd(&self, name: &str, fd: BorrowedFd<'_>) -> Result<()> {
        let owned = fd.try_clone_to_owned()?;
        self.execute_with_fds(
            &commands::getfd(name),
            self.inner.config.command_timeout,
            vec![owned],
        )
        .await
        .map(drop)
    }

    /// Adds `fd` to an fd set (`add-fd`, SCM_RIGHTS).
    pub async fn add_fd(
        &self,
        fdset_id: Option<u64>,
        opaque: Option<&str>,
        fd: BorrowedFd<'_>,
    ) -> Result<AddFdInfo> {
        let owned = fd.try_clone_to_owned()?;
        let cmd = commands::add_fd(fdset_id, opaque);
        let value = self
            .execute_with_fds(&cmd, self.inner.config.command_timeout, vec![owned])
            .await?;
        decode_value("add-fd", value)
    }

    /// Runs a [`MemoryHotplug`], removing the backend again if `device_add` fails.
    pub async fn hotplug_memory(&self, plan: &MemoryHotplug) -> Result<()> {
        self.execute_command(&plan.object_add).await?;
        if let Err(e) = self.execute_command(&plan.device_add).await {
            if let Err(undo) = self.execute_command(&plan.rollback).await {
                warn!(error = %undo, "rolling back the memory backend failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Closes the connection: pending commands fail with [`Error::Disconnected`], subscriptions
    /// end, the tasks finish. Idempotent.
    pub async fn close(&self) {
        self.inner.shutdown();
        let reader = lock(&self.reader).take();
        if let Some(reader) = reader {
            let _ = reader.await;
        }
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            writer.abort();
            let _ = writer.await;
        }
        // In case the reader ended without seeing EOF (e.g. it was aborted).
        end_session(&self.inner, Error::Disconnected);
    }
}

impl Drop for AsyncQmp {
    fn drop(&mut self) {
        self.inner.shutdown();
        if let Some(writer) = lock(&self.writer).take() {
            writer.abort();
        }
        // The reader task sees EOF and ends by itself, failing anything still pending.
    }
}

async fn handshake(
    session: &mut Session<Waiter>,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    early: &mut Vec<Event>,
) -> Result<Greeting> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut actions = Vec::new();
    let mut greeting = None;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => session.eof(&mut actions),
            Ok(n) => session.feed(buf.get(..n).unwrap_or_default(), &mut actions),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Io(e)),
        }
        let mut ready = false;
        for action in actions.drain(..) {
            match action {
                Action::Greeting(g) => {
                    greeting = Some(g);
                    send_all(writer.as_ref(), &session.negotiate()?, &[]).await?;
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

/// Acts on what the session produced. Called with the session lock held, in the same critical
/// section that fed the session: a caller whose timeout fires meanwhile either finds its reply
/// delivered or cancels before the reply was routed, never neither (`oneshot::send` and
/// unbounded sends never block). Returns whether the session closed.
fn dispatch(shared: &mut Shared, actions: &mut Vec<Action<Waiter>>) -> bool {
    let mut closed = false;
    for action in actions.drain(..) {
        match action {
            Action::Event(event) => {
                trace!(event = %event.name, "QMP event");
                shared
                    .subscribers
                    .retain(|s| !s.filter.matches(&event) || s.tx.send(event.clone()).is_ok());
            }
            Action::Reply { waiter, result, .. } => {
                crate::testing::reply_routed();
                let _ = waiter.send(result);
            }
            Action::Closed(err) => {
                debug!(reason = %err, "QMP session closed");
                shared.subscribers.clear();
                closed = true;
            }
            Action::Greeting(_) | Action::Ready => {}
        }
    }
    closed
}

/// Ends the session because of `err`: every pending command fails with it, subscriptions end.
fn end_session(inner: &Inner, err: Error) {
    inner.shutdown();
    let mut actions = Vec::new();
    let mut shared = lock(&inner.shared);
    shared.session.close_with(err, &mut actions);
    dispatch(&mut shared, &mut actions);
}

async fn reader_task(inner: Arc<Inner>, mut read_half: OwnedReadHalf) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut actions = Vec::new();
    loop {
        let read = read_half.read(&mut buf).await;
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
        // The session may also have been ended by a failed write or by `close`.
        if dispatch(&mut shared, &mut actions) || shared.session.state() == State::Closed {
            drop(shared);
            inner.shutdown();
            return;
        }
    }
}

async fn writer_task(
    inner: Weak<Inner>,
    write_half: OwnedWriteHalf,
    mut rx: mpsc::Receiver<WriteOp>,
) {
    while let Some(op) = rx.recv().await {
        let Some(timeout) = inner.upgrade().map(|i| i.config.command_timeout) else {
            return;
        };
        let fds: Vec<BorrowedFd<'_>> = op.fds.iter().map(AsFd::as_fd).collect();
        let write = send_all(write_half.as_ref(), &op.bytes, &fds);
        // A zero timeout means no bound, as for the blocking client's socket.
        let result = match deadline(timeout).filter(|_| !timeout.is_zero()) {
            Some(at) => tokio::time::timeout_at(at.into(), write)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
            None => write.await,
        };
        if let Err(e) = result {
            warn!(error = %e, "QMP write failed; closing the connection");
            // Queued commands and the fds they carry are dropped before anyone learns that
            // the session ended.
            drop(fds);
            drop(op);
            rx.close();
            while rx.try_recv().is_ok() {}
            if let Some(inner) = inner.upgrade() {
                end_session(
                    &inner,
                    write_error(e, "writing queued QMP commands", timeout),
                );
            }
            return;
        }
    }
}

/// Sends all of `bytes` (fds attached to the first of them) with `sendmsg(MSG_NOSIGNAL)`.
async fn send_all(
    stream: &tokio::net::UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut rest = bytes;
    let mut fds = fds;
    while !rest.is_empty() {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            crate::fdpass::send_with_fds(stream.as_fd(), rest, fds)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                rest = rest.get(n..).unwrap_or_default();
                fds = &[];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A stream of events from an [`AsyncQmp`]. Ends when the connection closes; dropping it
/// unsubscribes.
#[derive(Debug)]
pub struct AsyncEventSubscription {
    rx: mpsc::UnboundedReceiver<Event>,
    id: u64,
    filter: EventFilter,
    inner: Weak<Inner>,
}

impl AsyncEventSubscription {
    /// The next event; [`Error::Disconnected`] once the connection is closed. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Event> {
        self.rx.recv().await.ok_or(Error::Disconnected)
    }

    /// The next event within `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Event> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(Error::Disconnected),
            Err(_) => Err(Error::Timeout {
                what: format!("event {}", self.filter),
                after: timeout,
            }),
        }
    }

    /// The next queued event, if any, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Drop for AsyncEventSubscription {
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
