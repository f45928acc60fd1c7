//! The async client on tokio (feature `tokio`): the same surface as [`Qmp`](crate::Qmp), with
//! cancel-safe futures.
//!
//! A reader task owns the read half; a writer task owns the write half and writes whole messages
//! from a queue, so dropping a command future can never leave a half-written line. A dropped
//! command's pending entry is removed by a guard; QEMU's late reply is discarded by id.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::client::{
    command_helpers, command_timeout, connection_accessors, event_timeout, greeting_timeout, lock,
    write_error, Connection, EventSink, Handshake, Negotiated, Registration,
};
use crate::config::Config;
use crate::deadline::deadline;
use crate::error::{Error, Result};
use crate::event::{Event, EventFilter};
use crate::message::Command;

type Waiter = oneshot::Sender<Result<Value>>;
type Sink = mpsc::UnboundedSender<Event>;

impl crate::client::Waiter for Waiter {
    fn deliver(self, result: Result<Value>) {
        // Never blocks; a caller that gave up dropped the receiver.
        let _ = self.send(result);
    }
}

impl EventSink for Sink {
    fn send(&self, event: Event) -> bool {
        mpsc::UnboundedSender::send(self, event).is_ok()
    }
}

struct WriteOp {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// How many commands may wait for the writer task; a command beyond that fails at once rather
/// than pile up (with its fds) behind a QEMU that does not read.
const WRITE_QUEUE: usize = 1024;

struct Inner {
    conn: Arc<Connection<Waiter, Sink>>,
    write_tx: mpsc::Sender<WriteOp>,
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
}

impl std::fmt::Debug for AsyncQmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.connection().fmt_client("AsyncQmp", f)
    }
}

/// Removes a pending command if its future is dropped before the reply.
struct CancelGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.conn.state).session.cancel(self.id);
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
        let (mut read_half, write_half) = stream.into_split();
        let handshake = handshake(&mut read_half, &write_half, config);
        let negotiated = tokio::time::timeout(config.greeting_timeout, handshake)
            .await
            .map_err(|_| greeting_timeout(config.greeting_timeout))??;
        let (write_tx, write_rx) = mpsc::channel(WRITE_QUEUE);
        let inner = Arc::new(Inner {
            conn: Arc::new(Connection::new(negotiated, control, config)),
            write_tx,
        });
        let reader = tokio::spawn(reader_task(Arc::clone(&inner), read_half));
        let writer = tokio::spawn(writer_task(Arc::downgrade(&inner), write_half, write_rx));
        Ok(AsyncQmp {
            inner,
            reader: Mutex::new(Some(reader)),
            writer: Mutex::new(Some(writer)),
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
            let mut state = lock(&self.inner.conn.state);
            let (id, bytes) = state.session.start_command(command, tx)?;
            if let Err(e) = self.inner.write_tx.try_send(WriteOp { bytes, fds }) {
                state.session.cancel(id);
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
                lock(&self.inner.conn.state).session.cancel(id);
                rx.try_recv()
                    .unwrap_or_else(|_| Err(command_timeout(&command.name, timeout)))
            }
        }
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
        self.inner.conn.shutdown();
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
        self.inner.conn.end(Error::Disconnected);
    }
}

impl Drop for AsyncQmp {
    fn drop(&mut self) {
        self.inner.conn.shutdown();
        if let Some(writer) = lock(&self.writer).take() {
            writer.abort();
        }
        // The reader task sees EOF and ends by itself, failing anything still pending.
    }
}

async fn handshake(
    reader: &mut OwnedReadHalf,
    writer: &OwnedWriteHalf,
    config: &Config,
) -> Result<Negotiated<Waiter>> {
    let mut handshake = Handshake::new(config);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let send = match reader.read(&mut buf).await {
            Ok(n) => handshake.on_read(buf.get(..n).filter(|b| !b.is_empty()))?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Io(e)),
        };
        if let Some(bytes) = send {
            send_all(writer.as_ref(), &bytes, &[]).await?;
        }
        if handshake.is_done() {
            return handshake.finish();
        }
    }
}

async fn reader_task(inner: Arc<Inner>, mut read_half: OwnedReadHalf) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut actions = Vec::new();
    loop {
        let read = match read_half.read(&mut buf).await {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            read => read.map(|n| buf.get(..n).unwrap_or_default()),
        };
        if lock(&inner.conn.state).on_read(read, &mut actions) {
            inner.conn.shutdown();
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
        let Some(timeout) = inner.upgrade().map(|i| i.conn.config().command_timeout) else {
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
                inner
                    .conn
                    .end(write_error(e, "writing queued QMP commands", timeout));
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
