//! The async client on tokio (feature `tokio`): the same surface as [`Qmp`](crate::Qmp), with
//! cancel-safe futures that never block a runtime thread beyond a short critical section.
//!
//! **Writing.** A caller queues its command in the session. When no other command is in flight
//! it writes whatever is ready itself, under the writer lock and without waiting: one
//! non-blocking `sendmsg` for all queued commands (descriptors in their own), no task hop. When
//! others are in flight QEMU is busy with them anyway, so the caller leaves the write to the
//! flusher task, which runs after every task woken by the same replies and writes all their
//! commands in one `sendmsg` (with 8 in flight this cuts the syscalls per round trip by about a
//! third). When the socket is full the rest goes to the flusher task too, which waits until
//! QEMU reads, at most `command_timeout`, and ends the session if it does not. A write is never
//! abandoned half-way, so dropping a command future can never leave a half-written line.
//!
//! **Reading.** A reader task reads, feeds the session and delivers replies and events in the
//! same critical section; a reply's value stays raw JSON until the caller decodes it into the
//! type it asked for, outside every lock. A dropped command's entry is removed by a guard;
//! QEMU's late reply is discarded by id.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use serde_json::Value;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::client::{
    command_helpers, command_timeout, connection_accessors, event_timeout, greeting_timeout, lock,
    peer_gone, reply_value, write_error, Connection, EventSink, Handshake, Negotiated,
    Registration,
};
use crate::config::Config;
use crate::deadline::deadline;
use crate::error::{Error, Result};
use crate::event::{Event, EventFilter};
use crate::message::Command;
use crate::protocol::RawReply;

type Waiter = oneshot::Sender<Result<RawReply>>;
type Sink = mpsc::UnboundedSender<Event>;

impl crate::client::Waiter for Waiter {
    fn deliver(self, result: Result<RawReply>) -> Option<Self> {
        // Never blocks; a caller that gave up dropped the receiver. Waking its task is only
        // queueing it: done here.
        let _ = self.send(result);
        None
    }

    fn wake(self) {}
}

impl EventSink for Sink {
    fn send(&self, event: Event) -> bool {
        mpsc::UnboundedSender::send(self, event).is_ok()
    }
}

/// Bytes the socket did not take yet: while there are any, only the flusher task writes.
struct Backlog {
    bytes: Vec<u8>,
    written: usize,
    /// Still to be attached (to the first byte written).
    fds: Vec<OwnedFd>,
}

struct Inner {
    conn: Arc<Connection<Waiter, Sink>>,
    /// The socket as the writers see it: written without waiting, and registered with the
    /// runtime only while a write waits for room (see [`wait_writable`]).
    writer: OwnedFd,
    backlog: Mutex<Option<Backlog>>,
    flush_wanted: Notify,
    /// A write found the peer gone: the reader task delivers what the peer sent before it
    /// went, then ends the session with this error.
    peer_gone: Mutex<Option<Error>>,
    peer_gone_wanted: Notify,
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
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AsyncQmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.connection().fmt_client("AsyncQmp", f)
    }
}

/// Removes a pending command if its future is dropped before the reply.
struct CancelGuard<'a> {
    inner: &'a Inner,
    id: Option<u64>,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.inner.conn.link().session.cancel(id);
        }
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
        // The reader has its own registration, for readability only: it can clear its
        // readiness, and nothing but arriving data wakes it. The writers' descriptor is
        // registered only while a write waits for room (see `wait_writable`).
        let reader = register(OwnedFd::from(stream.try_clone()?), Interest::READABLE)?;
        let writer = OwnedFd::from(stream);
        let handshake = handshake(&reader, &writer, config);
        let negotiated = tokio::time::timeout(config.greeting_timeout, handshake)
            .await
            .map_err(|_| greeting_timeout(config.greeting_timeout))??;
        let inner = Arc::new(Inner {
            conn: Arc::new(Connection::new(negotiated, control, config)),
            writer,
            backlog: Mutex::new(None),
            flush_wanted: Notify::new(),
            peer_gone: Mutex::new(None),
            peer_gone_wanted: Notify::new(),
        });
        let reader = tokio::spawn(reader_task(Arc::clone(&inner), reader));
        let flusher = tokio::spawn(flusher_task(Arc::clone(&inner)));
        Ok(AsyncQmp {
            inner,
            reader: Mutex::new(Some(reader)),
            flusher: Mutex::new(Some(flusher)),
        })
    }

    fn connection(&self) -> &Connection<Waiter, Sink> {
        &self.inner.conn
    }

    connection_accessors!();

    command_helpers!(AsyncEventSubscription, [async], [.await]);

    /// Executes a [`Command`] with its own timeout. Cancel-safe: dropping the future (or the
    /// timeout firing) leaves the connection in sync; a late reply is discarded.
    pub async fn execute_with_timeout(
        &self,
        command: &Command,
        timeout: Duration,
    ) -> Result<Value> {
        reply_value(&self.execute_with_fds(command, timeout, Vec::new()).await?)
    }

    async fn execute_with_fds(
        &self,
        command: &Command,
        timeout: Duration,
        fds: Vec<OwnedFd>,
    ) -> Result<RawReply> {
        let (tx, mut rx) = oneshot::channel();
        let (id, others_in_flight) = {
            let mut state = self.inner.conn.link();
            let id = state.session.submit(command, fds, tx)?;
            (id, state.session.in_flight() > 0)
        };
        let mut guard = CancelGuard {
            inner: &self.inner,
            id: Some(id),
        };
        if others_in_flight {
            // QEMU is busy with the others: let the flusher task, which runs after the tasks
            // woken with this one, write all their commands at once.
            self.inner.flush_wanted.notify_one();
        } else {
            self.inner.flush();
        }
        let result = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => {
                self.inner.conn.link().session.cancel(id);
                rx.try_recv()
                    .unwrap_or_else(|_| Err(command_timeout(&command.name, timeout)))
            }
        };
        // Answered or cancelled: nothing left for the guard to do.
        guard.id = None;
        result
    }

    /// Subscribes to events matching `filter` from now on.
    pub fn subscribe_filtered(&self, filter: EventFilter) -> AsyncEventSubscription {
        let (tx, rx) = mpsc::unbounded_channel();
        AsyncEventSubscription {
            rx,
            _registration: self.inner.conn.subscribe(filter.clone(), tx),
            filter,
        }
    }

    /// Closes the connection: pending commands fail with [`Error::Disconnected`], subscriptions
    /// end, the tasks finish. Idempotent.
    pub async fn close(&self) {
        self.inner.conn.end(Error::Disconnected);
        let reader = lock(&self.reader).take();
        if let Some(reader) = reader {
            let _ = reader.await;
        }
        let flusher = lock(&self.flusher).take();
        if let Some(flusher) = flusher {
            flusher.abort();
            let _ = flusher.await;
        }
    }
}

impl Drop for AsyncQmp {
    fn drop(&mut self) {
        self.inner.conn.end(Error::Disconnected);
        if let Some(flusher) = lock(&self.flusher).take() {
            flusher.abort();
        }
        // The reader task sees the end of the stream and ends by itself.
    }
}

impl Inner {
    /// Writes whatever the session has ready, without waiting: one `sendmsg` for all of it
    /// (descriptors in their own). Bytes the socket does not take go to the flusher task, which
    /// then writes everything until the backlog is gone. A write that fails ends the session.
    fn flush(&self) {
        loop {
            let mut backlog = match self.backlog.try_lock() {
                Ok(b) => b,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // Whoever holds it writes what was queued behind it before letting go.
                Err(TryLockError::WouldBlock) => return,
            };
            if backlog.is_some() {
                return;
            }
            loop {
                let Some(t) = self.conn.link().session.poll_transmit() else {
                    break;
                };
                let mut rest = Backlog {
                    bytes: t.bytes,
                    written: 0,
                    fds: t.fds,
                };
                match send_some(self.writer.as_fd(), &mut rest) {
                    Ok(true) => continue,
                    Ok(false) => {
                        *backlog = Some(rest);
                        self.flush_wanted.notify_one();
                        return;
                    }
                    Err(e) => {
                        drop(backlog);
                        self.write_failed(e);
                        return;
                    }
                }
            }
            drop(backlog);
            // A command queued while this caller held the lock has been left to it.
            if !self.conn.link().session.has_transmit() {
                return;
            }
        }
    }

    /// Ends the session after a write failed or timed out (a partial line would desynchronise
    /// the stream). Queued commands and their descriptors are dropped before anyone learns it.
    ///
    /// When the peer is gone (a QEMU that exited after its last events), the reader task ends
    /// it instead, once it has delivered what the peer sent before it went.
    fn write_failed(&self, e: io::Error) {
        warn!(error = %e, "QMP write failed; closing the connection");
        lock(&self.backlog).take();
        let timeout = self.conn.config().command_timeout;
        let gone = peer_gone(&e);
        let err = write_error(e, "writing QMP commands", timeout);
        if gone {
            *lock(&self.peer_gone) = Some(err);
            self.peer_gone_wanted.notify_one();
        } else {
            self.conn.end(err);
        }
    }
}

/// Registers `socket` with the runtime for `interest`.
fn register(socket: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open, and names the same descriptor, for as long as it lives
    // (the `AsyncFd` owns it and never replaces it).
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(io::Error::from)
}

/// Waits until `socket` takes bytes again (after a write found it full). It is registered with
/// the runtime, as a descriptor of its own, only for this wait: registered for writability all
/// along, the runtime would wake each time the peer has consumed what was written to it (QEMU:
/// every command), not only after the socket had been full.
async fn wait_writable(socket: &OwnedFd) -> io::Result<()> {
    let registered = register(socket.try_clone()?, Interest::WRITABLE)?;
    // A registration reports the readiness the socket has when it is made: room that came
    // between the full write and now is not missed.
    drop(registered.writable().await?);
    Ok(())
}

async fn handshake(
    reader: &AsyncFd<OwnedFd>,
    writer: &OwnedFd,
    config: &Config,
) -> Result<Negotiated<Waiter>> {
    let mut handshake = Handshake::new(config);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let send = match read_available(reader, &mut buf).await {
            Ok(n) => handshake.on_read(buf.get(..n).filter(|b| !b.is_empty()))?,
            Err(e) => return Err(Error::Io(e)),
        };
        if let Some(bytes) = send {
            let mut rest = Backlog {
                bytes,
                written: 0,
                fds: Vec::new(),
            };
            while !send_some(writer.as_fd(), &mut rest)? {
                wait_writable(writer).await?;
            }
        }
        if handshake.is_done() {
            return handshake.finish();
        }
    }
}

/// Writes as much of `rest` as the socket takes now (descriptors with the first byte);
/// returns whether all of it went.
fn send_some(socket: BorrowedFd<'_>, rest: &mut Backlog) -> io::Result<bool> {
    while rest.written < rest.bytes.len() {
        let bytes = rest.bytes.get(rest.written..).unwrap_or_default();
        let fds: Vec<BorrowedFd<'_>> = rest.fds.iter().map(AsFd::as_fd).collect();
        match crate::fdpass::send_with_fds(socket, bytes, &fds) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                rest.written += n;
                rest.fds.clear();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Waits until `socket` is readable and reads what is there. A read that empties the socket
/// (returns less than `buf` holds) clears tokio's readiness, so the next wait goes straight to
/// the reactor rather than trying a `recv` that would find nothing: one system call less per
/// reply. (Clearing keeps a hang-up, and an edge newer than this wait. A short read empties a
/// Unix stream socket unless it stopped at a message carrying descriptors or credentials,
/// which QEMU never sends.)
async fn read_available(socket: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut ready = socket.readable().await?;
        match crate::sys::recv_now(socket.get_ref().as_fd(), buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
            Ok(n) if n > 0 && n < buf.len() => {
                ready.clear_ready();
                return Ok(n);
            }
            read => return read,
        }
    }
}

async fn reader_task(inner: Arc<Inner>, socket: AsyncFd<OwnedFd>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut actions = Vec::new();
    loop {
        let read = tokio::select! {
            read = read_available(&socket, &mut buf) => read,
            () = inner.peer_gone_wanted.notified() => {
                let socket = socket.get_ref().as_fd();
                inner.conn.read_what_is_left(socket, &mut buf, &mut actions);
                let err = lock(&inner.peer_gone).take().unwrap_or(Error::Disconnected);
                inner.conn.end(err);
                return;
            }
        };
        let read = match read {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            read => read.map(|n| buf.get(..n).unwrap_or_default()),
        };
        let (closed, ready) = {
            let mut state = inner.conn.link();
            let closed = state.on_read(read, &mut actions);
            (closed, state.session.has_transmit())
        };
        if closed {
            inner.conn.shutdown();
            return;
        }
        // Replies freed slots: write the commands that waited for them.
        if ready {
            inner.flush();
        }
    }
}

/// Writes the backlog when the socket takes it again, each wait bounded by `command_timeout`,
/// then whatever queued meanwhile.
async fn flusher_task(inner: Arc<Inner>) {
    loop {
        inner.flush_wanted.notified().await;
        while lock(&inner.backlog).is_some() {
            let timeout = inner.conn.config().command_timeout;
            let writable = wait_writable(&inner.writer);
            // A zero timeout means no bound, as for the blocking client's socket.
            let ready = match deadline(timeout).filter(|_| !timeout.is_zero()) {
                Some(at) => tokio::time::timeout_at(at.into(), writable)
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
                None => writable.await,
            };
            let sent = ready.and_then(|()| {
                let mut backlog = lock(&inner.backlog);
                if let Some(rest) = backlog.as_mut() {
                    if send_some(inner.writer.as_fd(), rest)? {
                        *backlog = None;
                    }
                }
                Ok(())
            });
            if let Err(e) = sent {
                inner.write_failed(e);
                return;
            }
        }
        inner.flush();
    }
}

/// A stream of events from an [`AsyncQmp`]. Ends when the connection closes; dropping it
/// unsubscribes.
#[derive(Debug)]
pub struct AsyncEventSubscription {
    rx: mpsc::UnboundedReceiver<Event>,
    filter: EventFilter,
    _registration: Registration<Waiter, Sink>,
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
            Err(_) => Err(event_timeout(&self.filter, timeout)),
        }
    }

    /// The next queued event, if any, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}
